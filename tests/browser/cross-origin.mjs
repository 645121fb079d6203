// The cross-origin scenarios of e2e.mjs: a page served from another loopback
// origin (`--origin`) talks to the gateway with `fetch` and chatkit-live.js,
// as an integrator's page running ChatKit.js would.

import { createServer } from "node:http";

/**
 * A blank page on `--origin` that loads the gateway's chatkit-live.js, as an
 * integrator's page would. A real server on loopback serves it: Chromium
 * treats a page it cannot place (one fulfilled by a route) as public, and
 * refuses its requests to loopback before CORS is even asked.
 */
async function crossOriginTab(s, base) {
  if (!s.origin) {
    throw new Error("this scenario needs --origin");
  }
  const html = `<!doctype html><html><head><script src="${base}/chatkit-live.js"></script></head>
    <body>A page on another origin</body></html>`;
  const server = createServer((_, response) => {
    response.writeHead(200, { "content-type": "text/html; charset=utf-8" });
    response.end(html);
  });
  await new Promise((resolve, reject) => {
    server.once("error", reject);
    server.listen(Number(new URL(s.origin).port), "127.0.0.1", resolve);
  });
  // The process may end while the server still listens.
  server.unref();
  const tab = await s.tab("cross-origin-tab", `${s.origin}/integrator-page`);
  await tab.until("chatkit-live.js loaded", () => typeof window.ChatKitLive === "object");
  return tab;
}

/** In the page: sends a turn to the gateway with `fetch` and reads its stream chunk by chunk. */
async function turnFromPage({ base, user, text }) {
  try {
    const response = await fetch(`${base}/chatkit`, {
      method: "POST",
      headers: { "content-type": "application/json", "x-user-id": user },
      body: JSON.stringify({
        type: "threads.create",
        params: { input: { content: [{ type: "input_text", text }], attachments: [], inference_options: {} } },
      }),
    });
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let body = "";
    let chunks = 0;
    for (;;) {
      const { done, value } = await reader.read();
      if (done) {
        break;
      }
      chunks += 1;
      body += decoder.decode(value, { stream: true });
    }
    const events = body
      .split("\n")
      .filter((line) => line.startsWith("data: "))
      .map((line) => JSON.parse(line.slice(6)));
    const deltas = events.filter((e) => e.update && typeof e.update.delta === "string").map((e) => e.update.delta);
    return { status: response.status, chunks, threadId: events[0].thread.id, deltas };
  } catch (error) {
    return { error: `${error.name}: ${error.message}` };
  }
}

/** In the page: subscribes to a viewer stream with chatkit-live.js, recording what it sees. */
function viewFromPage({ url, user }) {
  window.viewer = { states: [], events: [], errors: [] };
  ChatKitLive.subscribe(url, {
    headers: { "x-user-id": user },
    onStatus: (state) => window.viewer.states.push(state),
    onEvent: (event) => window.viewer.events.push(JSON.stringify(event)),
    onError: (error) => window.viewer.errors.push(error),
  });
}

/** The scenarios, with e2e.mjs's `assert`. */
export function crossOriginScenarios(assert) {
  return {
    /** A page on another, allowed origin: preflighted turn streamed chunk by chunk, and a viewer stream. */
    async cors(s) {
      const [base] = s.bases;
      const tab = await crossOriginTab(s, base);
      const text = "Hello across origins";
      const turn = await tab.page.evaluate(turnFromPage, { base, user: s.user, text });
      console.log(`[cross-origin-tab] turn: ${JSON.stringify(turn)}`);
      assert(!turn.error && turn.status === 200, `the cross-origin turn failed: ${JSON.stringify(turn)}`);
      assert(turn.deltas.join("") === `echo: ${text}`, `the answer streamed as ${JSON.stringify(turn.deltas)}`);
      assert(turn.chunks >= 2, `the answer arrived in ${turn.chunks} chunk(s), not streamed`);

      const url = `${base}/chatkit/threads/${turn.threadId}/events`;
      await tab.page.evaluate(viewFromPage, { url, user: s.user });
      await tab.until("the cross-origin viewer stream is open", () => window.viewer.states.includes("open"));
      const title = "Renamed while watched from another origin";
      await s.chatkit(base, "threads.update", { thread_id: turn.threadId, title });
      await tab.until("the rename reaches the viewer stream", (want) => window.viewer.events.some((e) => e.includes(want)), title);
      s.finish();
    },

    /** The same page when its origin is not allowed: the browser refuses the turn and the stream. */
    async "cors-refused"(s) {
      const [base] = s.bases;
      const tab = await crossOriginTab(s, base);
      const turn = await tab.page.evaluate(turnFromPage, { base, user: s.user, text: "Refused" });
      console.log(`[cross-origin-tab] turn: ${JSON.stringify(turn)}`);
      assert(turn.error && turn.error.startsWith("TypeError"), `the browser let the turn through: ${JSON.stringify(turn)}`);
      // The preflight failed, so the request itself was never sent: no thread exists.
      const listed = JSON.parse(await s.chatkit(base, "threads.list", {}));
      assert(listed.data.length === 0, `the refused turn reached the gateway: ${JSON.stringify(listed)}`);

      await tab.page.evaluate(viewFromPage, { url: `${base}/chatkit/events`, user: s.user });
      await tab.until("the viewer stream fails and retries", () => window.viewer.states.includes("reconnecting"));
      const states = await tab.page.evaluate(() => window.viewer.states);
      assert(!states.includes("open"), `the refused viewer stream opened: ${JSON.stringify(states)}`);
      tab.assertNoErrors();
    },
  };
}
