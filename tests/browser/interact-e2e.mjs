// The turn-interaction scenarios of e2e.mjs: a client tool call answered by a
// handler the page registers, structured input forms answered and skipped,
// Stop (by the button and, keyboard only, by Escape) against the paced echo,
// Retry on the last answer, feedback and Copy.

/** What the paced echo of tests/integration/browser.rs says before its answer (`PACED_PROGRESS`). */
const PACED_PROGRESS = "Echoing slowly…";

/** A text long enough that the paced echo streams it for several seconds. */
const LONG_TEXT = Array.from({ length: 40 }, (_, i) => `word${i + 1}`).join(" ");

/** Sends `text` on a new chat and waits until the page names the new thread; answers its id. */
async function startWith(tab, text) {
  await tab.send(text);
  await tab.until("the new thread is named in the URL", () => new URLSearchParams(location.search).has("thread"));
  await tab.untilLive();
  return tab.threadId();
}

/** The assistant answers the tab shows, in order. */
function answers(tab) {
  return tab.page.evaluate(() => window.__e2e.messages().filter((m) => m.role === "assistant").map((m) => m.text));
}

/** The composer's button: its text, accessible name and mode. */
function sendButton(tab) {
  return tab.page.evaluate(() => {
    const button = document.getElementById("send");
    return { text: button.textContent, mode: button.dataset.mode || "send", type: button.type };
  });
}

/** Waits until the composer's button is Stop, while the answer shows part-way. */
async function untilStoppable(tab) {
  await tab.until("the composer's button is Stop while the answer streams", () => {
    const button = document.getElementById("send");
    const answer = document.querySelector("#messages .message.assistant.streaming .bubble");
    return button.textContent === "Stop" && answer !== null && answer.textContent.trim().length > "echo: ".length;
  });
}

/** After a stop: the answer stops streaming as a strict prefix of the full one, Send is back, no notice. */
async function assertStopped(tab, assert, full) {
  await tab.until("the composer is back to Send", () => document.getElementById("send").textContent === "Send");
  await tab.until("the partial answer is finished", () => {
    const answers = document.querySelectorAll("#messages .message.assistant");
    return answers.length === 1 && !answers[0].classList.contains("streaming");
  });
  const [partial] = await answers(tab);
  assert(partial.length < full.length && full.startsWith(partial), `the answer stopped part-way: "${partial}"`);
  assert((await tab.page.evaluate(() => window.__e2e.notice())) === null, "no notice after the user's own stop");
  const progress = await tab.page.evaluate(() => document.getElementById("turn-progress").textContent);
  assert(progress === "", `the progress line is cleared: "${progress}"`);
  const button = await sendButton(tab);
  assert(button.type === "submit" && button.mode === "send", `the button sends again: ${JSON.stringify(button)}`);
  return partial;
}

export function interactScenarios(assert) {
  return {
    /** A tool handler registered after load answers `/tool`; a missing one leaves the call pending with a notice. */
    async tool(s) {
      const [base] = s.bases;
      const tab = await s.tab("tool-tab", s.pageUrl(base));
      // Replacing the whole object after the page started: the page reads it at call time.
      await tab.page.evaluate(() => {
        window.chatkitPage = { tools: {} };
      });
      const threadId = await startWith(tab, "/tool");
      await tab.until("a notice names the tool without a handler", () =>
        (window.__e2e.notice() || "").includes('"get_time"'),
      );
      await tab.until("the call's card shows pending", () => {
        const card = document.querySelector("#messages .tool-call");
        return card && card.dataset.status === "pending" && card.querySelector(".tool-name").textContent === "get_time";
      });
      const args = await tab.page.evaluate(() => JSON.parse(document.querySelector("#messages .tool-args").textContent));
      assert(JSON.stringify(args) === JSON.stringify({ tz: "UTC" }), `the card shows the arguments: ${JSON.stringify(args)}`);

      await tab.page.evaluate(() => {
        window.__toolCalls = [];
        window.chatkitPage.tools.get_time = async (args, item) => {
          window.__toolCalls.push({ args, name: item.name });
          return { time: "12:34", zone: args.tz };
        };
      });
      await tab.send("/tool");
      await tab.until("the answer carries the handler's result", () =>
        window.__e2e.messages().some((m) => m.role === "assistant" && m.text === 'tool output: {"time":"12:34","zone":"UTC"}'),
      );
      await tab.until("the answered call's card shows completed with its output", () => {
        const card = [...document.querySelectorAll("#messages .tool-call")].pop();
        return card && card.dataset.status === "completed" && card.querySelector(".tool-output").textContent.includes("12:34");
      });
      const calls = await tab.page.evaluate(() => window.__toolCalls);
      assert(calls.length === 1 && calls[0].args.tz === "UTC" && calls[0].name === "get_time", `one call: ${JSON.stringify(calls)}`);
      // The store holds the call completed with the handler's result.
      const items = JSON.parse(await s.chatkit(base, "items.list", { thread_id: threadId, limit: 50 })).data;
      const stored = items.filter((item) => item.type === "client_tool_call" && item.status === "completed");
      assert(stored.length === 1 && stored[0].output.time === "12:34", `stored call: ${JSON.stringify(stored)}`);
      await tab.shot("tool");
      s.finish();
    },

    /** `/ask` answered (blue, a reason), then another skipped; both read-only with their answers. */
    async ask(s) {
      const [base] = s.bases;
      const tab = await s.tab("ask-tab", s.pageUrl(base));
      await startWith(tab, "/ask");
      await tab.until("the question form shows", () => document.querySelector("#messages form.si") !== null);
      const form = tab.page.locator("#messages form.si");
      await form.getByRole("radio", { name: "blue" }).check();
      await form.getByRole("textbox", { name: "Why?" }).fill("it is calm");
      await tab.shot("ask-form");
      await form.getByRole("button", { name: "Submit" }).click();
      await tab.until("the answers come back", () =>
        window.__e2e.messages().some((m) => m.role === "assistant" && m.text === "answers: color=blue; why=it is calm"),
      );
      await tab.until("the answered item shows read-only", () => {
        const done = document.querySelector("#messages .si-done");
        return done && !document.querySelector("#messages form.si") && done.textContent.includes("blue") && done.textContent.includes("it is calm");
      });

      await tab.send("/ask");
      await tab.until("a second form shows", () => document.querySelector("#messages form.si") !== null);
      await tab.page.locator("#messages form.si").getByRole("button", { name: "Skip" }).click();
      await tab.until("the skipped answers come back", () =>
        window.__e2e.messages().some((m) => m.role === "assistant" && m.text === "answers: color=skipped; why=skipped"),
      );
      await tab.until("the skipped item shows read-only", () => {
        const cards = document.querySelectorAll("#messages .si-done");
        return cards.length === 2 && cards[1].querySelector(".si-status").textContent === "Skipped";
      });
      await tab.shot("ask-done");
      s.finish();
    },

    /** Stop mid-answer: it stops, the partial answer stays (and is stored), the composer is back to Send. */
    async stop(s) {
      const [base] = s.bases;
      const tab = await s.tab("stop-tab", s.pageUrl(base));
      await startWith(tab, "hello");
      await tab.untilMessages([
        { role: "user", text: "hello" },
        { role: "assistant", text: "echo: hello" },
      ]);
      await tab.until("no progress once the turn ended", () => document.getElementById("turn-progress").textContent === "");
      await tab.send(LONG_TEXT);
      await tab.until("the progress line shows the turn's progress", (want) =>
        document.getElementById("turn-progress").textContent === want, PACED_PROGRESS);
      await untilStoppable(tab);
      const role = await tab.page.getByRole("button", { name: "Stop" }).count();
      assert(role === 1, "the Stop button is named Stop");
      await tab.shot("stop-streaming");
      await tab.page.getByRole("button", { name: "Stop" }).click();
      await tab.until("the long answer stops streaming", () =>
        document.querySelectorAll("#messages .message.assistant.streaming").length === 0 &&
        document.getElementById("send").textContent === "Send",
      );
      const shown = (await answers(tab)).pop();
      const full = `echo: ${LONG_TEXT}`;
      assert(shown.length < full.length && full.startsWith(shown), `the answer stopped part-way: "${shown}"`);
      assert((await tab.page.evaluate(() => window.__e2e.notice())) === null, "no notice after the user's own stop");
      const button = await sendButton(tab);
      assert(button.type === "submit" && button.mode === "send", `the button sends again: ${JSON.stringify(button)}`);
      assert((await tab.page.evaluate(() => document.getElementById("turn-progress").textContent)) === "", "progress cleared");
      await tab.shot("stop-stopped");

      // Reloaded, the thread shows the partial answer as stored.
      await tab.page.reload();
      await tab.untilLive();
      await tab.untilMessages([
        { role: "user", text: "hello" },
        { role: "assistant", text: "echo: hello" },
        { role: "user", text: LONG_TEXT },
        { role: "assistant", text: shown },
      ]);
      s.finish();
    },

    /** Keyboard only: Tab reaches the message field, Enter sends, Escape stops. */
    async "keyboard-stop"(s) {
      const [base] = s.bases;
      const tab = await s.tab("keyboard-tab", s.pageUrl(base));
      await tab.page.evaluate(() => document.activeElement && document.activeElement.blur());
      let reached = false;
      for (let i = 0; i < 30 && !reached; i += 1) {
        await tab.page.keyboard.press("Tab");
        reached = await tab.page.evaluate(() => document.activeElement && document.activeElement.id === "input");
      }
      assert(reached, "Tab reaches the message field");
      await tab.page.keyboard.type(LONG_TEXT);
      await tab.page.keyboard.press("Enter");
      await tab.until("the new thread is named in the URL", () => new URLSearchParams(location.search).has("thread"));
      await untilStoppable(tab);
      await tab.page.keyboard.press("Escape");
      await assertStopped(tab, assert, `echo: ${LONG_TEXT}`);
      s.finish();
    },

    /** Retry on the last answer: the old answer goes, a new one comes, here and in the store. */
    async retry(s) {
      const [base] = s.bases;
      const tab = await s.tab("retry-tab", s.pageUrl(base));
      const threadId = await startWith(tab, "again please");
      const expected = [
        { role: "user", text: "again please" },
        { role: "assistant", text: "echo: again please" },
      ];
      await tab.untilMessages(expected);
      await tab.until("the answer has its Retry button", () =>
        document.querySelector('#messages .message.assistant button[aria-label="Retry this answer"]') !== null,
      );
      const before = await tab.page.evaluate(() => document.querySelector("#messages .message.assistant").dataset.itemId);
      await tab.page.getByRole("button", { name: "Retry this answer" }).click();
      await tab.until(
        "a new answer replaced the old one",
        ([old]) => {
          const answers = [...document.querySelectorAll("#messages .message.assistant")];
          return answers.length === 1 && answers[0].dataset.itemId !== old && !answers[0].classList.contains("streaming");
        },
        [before],
      );
      await tab.untilMessages(expected);
      const items = JSON.parse(await s.chatkit(base, "items.list", { thread_id: threadId, limit: 50 })).data;
      const assistants = items.filter((item) => item.type === "assistant_message");
      assert(assistants.length === 1 && assistants[0].id !== before, `the store holds only the new answer: ${JSON.stringify(assistants)}`);
      s.finish();
    },

    /** Thumbs set `aria-pressed` and send `items.feedback`; Copy puts the text on the clipboard and announces it. */
    async "feedback-copy"(s) {
      const [base] = s.bases;
      const context = await s.ensureContext();
      await context.grantPermissions(["clipboard-read", "clipboard-write"], { origin: new URL(base).origin });
      const tab = await s.tab("feedback-tab", s.pageUrl(base));
      const feedback = [];
      tab.page.on("requestfinished", async (request) => {
        const body = request.postData();
        if (body && body.includes('"items.feedback"')) {
          const response = await request.response();
          feedback.push({ body: JSON.parse(body), status: response ? response.status() : null });
        }
      });
      await startWith(tab, "rate me");
      await tab.untilMessages([
        { role: "user", text: "rate me" },
        { role: "assistant", text: "echo: rate me" },
      ]);
      const itemId = await tab.page.evaluate(() => document.querySelector("#messages .message.assistant").dataset.itemId);
      const threadId = tab.threadId();
      const pressed = () =>
        tab.page.evaluate(() =>
          [...document.querySelectorAll("#messages .message.assistant .message-actions [aria-pressed]")].map(
            (b) => `${b.getAttribute("aria-label")}=${b.getAttribute("aria-pressed")}`,
          ),
        );
      assert(JSON.stringify(await pressed()) === '["Thumbs up=false","Thumbs down=false"]', "no choice at first");

      await tab.page.getByRole("button", { name: "Thumbs up" }).click();
      await tab.until("thumbs up is pressed", () => document.querySelector('[aria-label="Thumbs up"]').getAttribute("aria-pressed") === "true");
      await tab.page.getByRole("button", { name: "Thumbs down" }).click();
      await tab.until("thumbs down is pressed", () => document.querySelector('[aria-label="Thumbs down"]').getAttribute("aria-pressed") === "true");
      assert(JSON.stringify(await pressed()) === '["Thumbs up=false","Thumbs down=true"]', "one choice at a time");
      await tab.shot("feedback");
      const deadline = Date.now() + 5_000;
      while (feedback.length < 2 && Date.now() < deadline) {
        await new Promise((resolve) => setTimeout(resolve, 50));
      }
      const kinds = feedback.map((f) => `${f.body.params.kind}:${f.status}`);
      assert(JSON.stringify(kinds) === '["positive:200","negative:200"]', `the feedback requests: ${JSON.stringify(feedback)}`);
      const target = feedback[0].body.params;
      assert(target.thread_id === threadId && JSON.stringify(target.item_ids) === JSON.stringify([itemId]), `feedback names the answer: ${JSON.stringify(target)}`);

      await tab.page.getByRole("button", { name: "Copy answer" }).click();
      await tab.until("the copy is announced", () => document.getElementById("announcer").textContent === "Copied");
      const copied = await tab.page.evaluate(() => navigator.clipboard.readText());
      assert(copied === "echo: rate me", `the clipboard holds the answer: "${copied}"`);
      s.finish();
    },
  };
}
