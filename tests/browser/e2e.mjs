// End-to-end tests of the chat page (`GET /`) in headless Chromium, driven by
// playwright-core. tests/browser.rs starts the gateway (one or two replicas)
// and runs one scenario per process:
//
//   node tests/browser/e2e.mjs <scenario> --base <url> [--base <url>] --artifacts <dir> [--origin <origin>]
//
// `--origin` is the origin of the page the cross-origin scenarios
// (`cross-origin.mjs`) serve on loopback, other than the gateway's.
//
// Chromium is Debian's (`CHATKIT_CHROMIUM`, default /usr/bin/chromium); no
// browser is downloaded. Every wait is bounded; a failed wait names what it
// waited for, dumps what the tab shows and saves a screenshot of it.

import { mkdirSync } from "node:fs";
import { join } from "node:path";
import { chromium } from "playwright-core";
import { crossOriginScenarios } from "./cross-origin.mjs";
import { a11yScenarios } from "./a11y.mjs";
import { attachScenarios } from "./attach-e2e.mjs";
import { contentScenarios } from "./content-e2e.mjs";
import { interactScenarios } from "./interact-e2e.mjs";
import { widgetScenarios } from "./widgets-e2e.mjs";

const WAIT_MS = 15_000;
const SCENARIO_MS = 100_000;
const VIEWPORT = { width: 1100, height: 700 };

function usage(message) {
  console.error(`${message}\nusage: node e2e.mjs <scenario> --base <url> [--base <url>] --artifacts <dir>`);
  process.exit(2);
}

function parseArgs(argv) {
  const [scenario, ...rest] = argv;
  const options = { scenario, bases: [], artifacts: null, origin: null };
  for (let i = 0; i < rest.length; i += 2) {
    const [flag, value] = [rest[i], rest[i + 1]];
    if (value === undefined) {
      usage(`${flag} needs a value`);
    }
    if (flag === "--base") {
      options.bases.push(value.replace(/\/$/, ""));
    } else if (flag === "--artifacts") {
      options.artifacts = value;
    } else if (flag === "--origin") {
      options.origin = value.replace(/\/$/, "");
    } else {
      usage(`unknown flag ${flag}`);
    }
  }
  if (!scenario || options.bases.length === 0 || !options.artifacts) {
    usage("missing arguments");
  }
  return options;
}

// ---------------------------------------------------------------------------
// What the tests read of a tab: installed before the page's own scripts run.
// ---------------------------------------------------------------------------

function installProbes() {
  const byId = (id) => document.getElementById(id);
  const shown = (element) => Boolean(element) && !element.hidden && element.getClientRects().length > 0;
  window.__e2e = {
    messages: () =>
      [...document.querySelectorAll("#messages .message")].map((li) => ({
        role: li.classList.contains("user") ? "user" : li.classList.contains("assistant") ? "assistant" : "other",
        // Rendered Markdown ends its blocks with line breaks; the text is what counts.
        text: li.querySelector(".bubble").textContent.trim(),
      })),
    history: () =>
      [...document.querySelectorAll("#history li")].map((li) => ({
        id: li.dataset.threadId,
        title: li.querySelector(".title").textContent,
        badge: li.querySelector(".badge") ? li.querySelector(".badge").textContent : null,
      })),
    composer: () => ({
      shown: shown(byId("composer")),
      disabled: byId("input").disabled,
      placeholder: byId("input").placeholder,
      banner: shown(byId("closed-banner")) ? byId("closed-banner").textContent : null,
    }),
    live: () => byId("thread").dataset.live,
    title: () => byId("thread-title").textContent,
    notice: () => (shown(byId("notice")) ? byId("notice").textContent : null),
    // Records every text the assistant messages show, as the DOM changes.
    record() {
      window.__seen = [];
      const take = () => {
        for (const message of window.__e2e.messages()) {
          if (message.role === "assistant") {
            window.__seen.push(message.text);
          }
        }
      };
      new MutationObserver(take).observe(byId("messages"), { subtree: true, childList: true, characterData: true });
    },
  };
}

// ---------------------------------------------------------------------------
// Helpers.
// ---------------------------------------------------------------------------

class Tab {
  constructor(page, name, artifacts) {
    this.page = page;
    this.name = name;
    this.artifacts = artifacts;
    this.errors = [];
    page.on("pageerror", (error) => this.errors.push(error.message));
    page.on("console", (message) => {
      if (message.type() === "error" || message.type() === "warning") {
        console.log(`[${name}] console.${message.type()}: ${message.text()}`);
      }
    });
  }

  async snapshot() {
    return this.page.evaluate(() => ({
      url: location.href,
      title: window.__e2e.title(),
      live: window.__e2e.live(),
      notice: window.__e2e.notice(),
      composer: window.__e2e.composer(),
      messages: window.__e2e.messages(),
      history: window.__e2e.history(),
    }));
  }

  async shot(name) {
    const path = join(this.artifacts, `${name}.png`);
    await this.page.screenshot({ path });
    console.log(`[${this.name}] screenshot ${path}`);
  }

  /** Waits (bounded) until `predicate(arg)`, run in the page, is true. */
  async until(what, predicate, arg) {
    try {
      await this.page.waitForFunction(predicate, arg, { timeout: WAIT_MS, polling: 50 });
    } catch (error) {
      const snapshot = await this.snapshot().catch((e) => `no snapshot: ${e.message}`);
      await this.shot(`failed-${this.name}`).catch(() => {});
      throw new Error(
        `${this.name}: ${what}: not seen within ${WAIT_MS} ms (${error.message.split("\n")[0]})\n` +
          `what the tab shows: ${JSON.stringify(snapshot, null, 2)}`,
      );
    }
    console.log(`[${this.name}] ${what}`);
  }

  threadId() {
    return new URL(this.page.url()).searchParams.get("thread");
  }

  async send(text) {
    await this.page.fill("#input", text);
    await this.page.press("#input", "Enter");
  }

  async untilLive() {
    await this.until("the thread's stream is open", () => window.__e2e.live() === "open");
  }

  async untilMessages(expected) {
    await this.until(
      `shows exactly ${JSON.stringify(expected)}`,
      (want) => JSON.stringify(window.__e2e.messages()) === JSON.stringify(want),
      expected,
    );
  }

  async untilHistoryTitle(threadId, title) {
    await this.until(
      `lists thread ${threadId} as "${title}"`,
      ([id, want]) => window.__e2e.history().some((t) => t.id === id && t.title === want),
      [threadId, title],
    );
  }

  assertNoErrors() {
    if (this.errors.length > 0) {
      throw new Error(`${this.name}: uncaught errors in the page: ${this.errors.join("; ")}`);
    }
  }
}

function assert(condition, message) {
  if (!condition) {
    throw new Error(`assertion failed: ${message}`);
  }
}

const turn = (user, assistant) => [
  { role: "user", text: user },
  { role: "assistant", text: `echo: ${assistant || user}` },
];

class Scenario {
  constructor(browser, options) {
    this.browser = browser;
    this.bases = options.bases;
    this.artifacts = options.artifacts;
    this.origin = options.origin;
    this.user = `e2e-${options.scenario}-${Math.random().toString(16).slice(2, 8)}`;
    this.tabs = [];
    this.context = null;
  }

  /** The browser context every tab of the scenario opens in (one profile, as tabs of one window). */
  async ensureContext() {
    if (!this.context) {
      this.context = await this.browser.newContext({ viewport: VIEWPORT });
      await this.context.addInitScript(installProbes);
    }
    return this.context;
  }

  async tab(name, url) {
    await this.ensureContext();
    const page = await this.context.newPage();
    const tab = new Tab(page, name, this.artifacts);
    this.tabs.push(tab);
    await page.goto(url, { timeout: WAIT_MS });
    console.log(`[${name}] opened ${url}`);
    return tab;
  }

  pageUrl(base, threadId) {
    const params = new URLSearchParams({ user: this.user });
    if (threadId) {
      params.set("thread", threadId);
    }
    return `${base}/?${params}`;
  }

  /** Starts a thread in `tab` (on a new chat) and waits for its answer; returns its id. */
  async startThread(tab, text) {
    await tab.send(text);
    await tab.until("the new thread is named in the URL", () => new URLSearchParams(location.search).has("thread"));
    await tab.untilMessages(turn(text));
    await tab.untilLive();
    return tab.threadId();
  }

  async setStatus(base, threadId, status) {
    const response = await fetch(`${base}/v1/chatkit/threads/${threadId}/status`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify(status),
    });
    const body = await response.text();
    assert(response.ok, `status change ${JSON.stringify(status)} answered ${response.status}: ${body}`);
    console.log(`[api] ${base} status of ${threadId} set to ${JSON.stringify(status)}`);
  }

  async chatkit(base, type, params) {
    const response = await fetch(`${base}/chatkit`, {
      method: "POST",
      headers: { "content-type": "application/json", "x-user-id": this.user },
      body: JSON.stringify({ type, params }),
    });
    const body = await response.text();
    assert(response.ok, `${type} answered ${response.status}: ${body}`);
    return body;
  }

  finish() {
    for (const tab of this.tabs) {
      tab.assertNoErrors();
    }
  }
}

/** Every text an assistant message showed is a prefix of a final answer, and one was a partial answer. */
async function assertStreamed(tab, final) {
  const seen = await tab.page.evaluate(() => window.__seen);
  const finals = (await tab.page.evaluate(() => window.__e2e.messages()))
    .filter((m) => m.role === "assistant")
    .map((m) => m.text);
  const garbled = seen.filter((text) => !finals.some((f) => f.startsWith(text)));
  assert(garbled.length === 0, `${tab.name} showed texts that are no prefix of an answer: ${JSON.stringify(garbled)}`);
  const partial = seen.filter((text) => text.length > 0 && text !== final && final.startsWith(text));
  assert(partial.length > 0, `${tab.name} never showed "${final}" part-way: ${JSON.stringify(seen)}`);
  console.log(`[${tab.name}] streamed in: ${JSON.stringify([...new Set(partial)])}`);
}

// ---------------------------------------------------------------------------
// Scenarios.
// ---------------------------------------------------------------------------

const scenarios = {
  /** Two tabs on one thread: a turn sent in the first streams into the second. */
  async turn(s) {
    const [base] = s.bases;
    const a = await s.tab("first-tab", s.pageUrl(base));
    const first = "Hello from the first tab";
    const threadId = await s.startThread(a, first);
    // The link names the thread: the second tab opens it.
    const b = await s.tab("second-tab", s.pageUrl(base, threadId));
    await b.untilLive();
    await b.untilMessages(turn(first));
    await b.untilHistoryTitle(threadId, first);
    await a.page.evaluate(() => window.__e2e.record());
    await b.page.evaluate(() => window.__e2e.record());

    const second = "Stream this answer into the other tab";
    await a.send(second);
    await b.until("shows the answer part-way", () =>
      [...document.querySelectorAll("#messages .message.assistant.streaming")].some((li) => li.textContent.length > 0),
    );
    await b.shot("turn-second-tab-streaming");
    const expected = [...turn(first), ...turn(second)];
    await b.untilMessages(expected);
    await a.untilMessages(expected);
    await assertStreamed(b, `echo: ${second}`);
    await assertStreamed(a, `echo: ${second}`);
    await a.shot("turn-first-tab");
    await b.shot("turn-second-tab");
    s.finish();
  },

  /** A lock through the status API disables both composers with the reason; unlocking enables them. */
  async lock(s) {
    const [base] = s.bases;
    const a = await s.tab("first-tab", s.pageUrl(base));
    const threadId = await s.startThread(a, "Please look at my order");
    const b = await s.tab("second-tab", s.pageUrl(base, threadId));
    await b.untilLive();
    await b.untilMessages(turn("Please look at my order"));

    const reason = "Under review by a moderator";
    await s.setStatus(base, threadId, { type: "locked", reason });
    for (const tab of [a, b]) {
      await tab.until(
        "the composer is disabled and shows the lock reason",
        (want) => {
          const c = window.__e2e.composer();
          return c.shown && c.disabled && c.placeholder === want && c.banner === null;
        },
        reason,
      );
      await tab.until("the history list marks the thread locked", (id) =>
        window.__e2e.history().some((t) => t.id === id && t.badge === "locked"),
      threadId);
      await tab.shot(`locked-${tab.name}`);
    }

    await s.setStatus(base, threadId, { type: "active" });
    for (const tab of [a, b]) {
      await tab.until("the composer works again", () => {
        const c = window.__e2e.composer();
        return c.shown && !c.disabled;
      });
    }
    await b.send("Unlocked now");
    const expected = [...turn("Please look at my order"), ...turn("Unlocked now")];
    await a.untilMessages(expected);
    await b.untilMessages(expected);
    s.finish();
  },

  /** Closing the thread replaces both composers with a banner showing the reason. */
  async close(s) {
    const [base] = s.bases;
    const a = await s.tab("first-tab", s.pageUrl(base));
    const threadId = await s.startThread(a, "Where is my parcel?");
    const b = await s.tab("second-tab", s.pageUrl(base, threadId));
    await b.untilLive();
    await b.untilMessages(turn("Where is my parcel?"));

    await s.setStatus(base, threadId, { type: "locked", reason: "Checking with the carrier" });
    for (const tab of [a, b]) {
      await tab.until("the composer is disabled", () => window.__e2e.composer().disabled);
    }
    const reason = "Resolved: the parcel was delivered";
    await s.setStatus(base, threadId, { type: "closed", reason });
    for (const tab of [a, b]) {
      await tab.until(
        "a banner with the reason replaces the composer",
        (want) => {
          const c = window.__e2e.composer();
          return !c.shown && c.banner === want;
        },
        reason,
      );
      await tab.shot(`closed-${tab.name}`);
    }
    // The thread still reads: its messages stay on screen.
    await a.untilMessages(turn("Where is my parcel?"));
    s.finish();
  },

  /** A rename in one tab shows in the other's history list; so does a deletion. */
  async rename(s) {
    const [base] = s.bases;
    const a = await s.tab("first-tab", s.pageUrl(base));
    const first = "Question about invoices";
    const threadId = await s.startThread(a, first);
    // The second tab is on a new chat: only its history list shows the thread.
    const b = await s.tab("second-tab", s.pageUrl(base));
    await b.untilHistoryTitle(threadId, first);
    await b.until("the history stream is open", () => document.getElementById("history-live").dataset.state === "open");

    const title = "Invoices for March";
    await a.page.click("#rename");
    await a.page.fill("#rename-input", title);
    await a.page.press("#rename-input", "Enter");
    await a.until("the header shows the new title", (want) => window.__e2e.title() === want, title);
    await b.untilHistoryTitle(threadId, title);
    await b.until(
      "the old title is gone from the history list",
      (old) => !window.__e2e.history().some((t) => t.title === old),
      first,
    );
    await b.shot("renamed-second-tab");
    await a.shot("renamed-first-tab");

    // Opening it from the history list names it in the URL.
    await b.page.click(`#history li[data-thread-id="${threadId}"] a`);
    await b.until("the URL names the opened thread", (id) => new URLSearchParams(location.search).get("thread") === id, threadId);
    await b.untilLive();
    await b.until("the header shows the title", (want) => window.__e2e.title() === want, title);
    await b.untilMessages(turn(first));

    // Deleting it in the second tab takes it away from the first.
    await b.page.click("#delete");
    await b.page.click("#delete-yes");
    await a.until("the thread left the history list", (id) => !window.__e2e.history().some((t) => t.id === id), threadId);
    await a.until("says the thread was deleted", () => (window.__e2e.notice() || "").includes("deleted"));
    await b.until("is back on a new chat", () => !new URLSearchParams(location.search).has("thread"));
    await a.shot("deleted-first-tab");
    s.finish();
  },

  /** Two tabs on two replicas sharing Redis: turns, renames and locks cross over. */
  async replicas(s) {
    assert(s.bases.length === 2, "the replicas scenario needs two --base URLs");
    const [one, two] = s.bases;
    const a = await s.tab("tab-on-replica-1", s.pageUrl(one));
    const first = "Hello across replicas";
    const threadId = await s.startThread(a, first);
    const b = await s.tab("tab-on-replica-2", s.pageUrl(two, threadId));
    await b.untilLive();
    await b.untilMessages(turn(first));
    await b.page.evaluate(() => window.__e2e.record());

    const second = "Sent through the first replica";
    await a.send(second);
    const expected = [...turn(first), ...turn(second)];
    await b.untilMessages(expected);
    await assertStreamed(b, `echo: ${second}`);
    await b.shot("replicas-turn-tab-on-replica-2");

    const title = "Renamed on the second replica";
    await b.page.click("#rename");
    await b.page.fill("#rename-input", title);
    await b.page.press("#rename-input", "Enter");
    await a.untilHistoryTitle(threadId, title);
    await a.until("the header shows the new title", (want) => window.__e2e.title() === want, title);

    const reason = "Locked on the second replica";
    await s.setStatus(two, threadId, { type: "locked", reason });
    await a.until(
      "the composer is disabled with the reason",
      (want) => {
        const c = window.__e2e.composer();
        return c.disabled && c.placeholder === want;
      },
      reason,
    );
    await a.shot("replicas-locked-tab-on-replica-1");
    const closed = "Closed on the first replica";
    await s.setStatus(one, threadId, { type: "closed", reason: closed });
    await b.until("a banner replaces the composer", (want) => window.__e2e.composer().banner === want, closed);
    await b.shot("replicas-closed-tab-on-replica-2");
    s.finish();
  },

  /** chatkit-live.js calls `fetchUpdates()` on a ChatKit.js element (a stand-in here) after each change. */
  async "chatkit-live"(s) {
    const [base] = s.bases;
    const body = await s.chatkit(base, "threads.create", {
      input: { content: [{ type: "input_text", text: "Hi" }], attachments: [], inference_options: {} },
    });
    const threadId = JSON.parse(body.split("\n").find((line) => line.startsWith("data: ")).slice(6)).thread.id;

    // A page of the gateway's origin with a stand-in for ChatKit.js's element.
    const stubUrl = `${base}/e2e-chatkit-stand-in`;
    const stub = `<!doctype html><html><body><openai-chatkit id="chat"></openai-chatkit>
      <script>
        window.calls = { fetchUpdates: 0, setThreadId: [] };
        customElements.define("openai-chatkit", class extends HTMLElement {
          fetchUpdates() { window.calls.fetchUpdates += 1; return Promise.resolve(); }
          setThreadId(id) { window.calls.setThreadId.push(id); return Promise.resolve(); }
        });
      </script>
      <script src="/chatkit-live.js"></script>
      <script>
        window.states = [];
        ChatKitLive.connect(document.getElementById("chat"), {
          headers: { "x-user-id": ${JSON.stringify(s.user)} },
          minInterval: 50,
          onStatus: (state) => window.states.push(state),
        });
      </script></body></html>`;
    const context = await s.ensureContext();
    await context.route(stubUrl, (route) => route.fulfill({ contentType: "text/html", body: stub }));
    const tab = await s.tab("chatkit-js-tab", stubUrl);
    const calls = () => tab.page.evaluate(() => window.calls.fetchUpdates);
    const untilMoreThan = (n, what) => tab.until(what, (k) => window.calls.fetchUpdates > k, n);
    const settle = () => new Promise((resolve) => setTimeout(resolve, 400));

    await tab.page.evaluate(
      (id) => document.getElementById("chat").dispatchEvent(new CustomEvent("chatkit.thread.change", { detail: { threadId: id } })),
      threadId,
    );
    await tab.until("the viewer stream is open", () => window.states.includes("open"));
    await untilMoreThan(0, "fetchUpdates() after the stream opened");
    await settle();

    let before = await calls();
    await s.chatkit(base, "threads.update", { thread_id: threadId, title: "Renamed elsewhere" });
    await untilMoreThan(before, "fetchUpdates() after a rename");
    await settle();

    before = await calls();
    await s.chatkit(base, "threads.add_user_message", {
      thread_id: threadId,
      input: { content: [{ type: "input_text", text: "From another tab" }], attachments: [], inference_options: {} },
    });
    await untilMoreThan(before, "fetchUpdates() after another tab's turn");
    await settle();
    const perTurn = (await calls()) - before;
    // The user message and the answer, saved: not one call per streamed delta.
    assert(perTurn >= 1 && perTurn <= 3, `a turn caused ${perTurn} fetchUpdates() calls, expected 1 to 3`);

    before = await calls();
    await s.setStatus(base, threadId, { type: "locked", reason: "Paused" });
    await untilMoreThan(before, "fetchUpdates() after a lock");
    await settle();

    // While this tab's own answer streams, nothing is fetched; afterwards, once.
    const chat = (name) =>
      tab.page.evaluate((event) => document.getElementById("chat").dispatchEvent(new CustomEvent(event)), name);
    await chat("chatkit.response.start");
    before = await calls();
    await s.setStatus(base, threadId, { type: "active" });
    await settle();
    assert((await calls()) === before, "fetchUpdates() was called while the tab's own answer streamed");
    await chat("chatkit.response.end");
    await untilMoreThan(before, "fetchUpdates() once the tab's own answer ended");

    await s.chatkit(base, "threads.delete", { thread_id: threadId });
    await tab.until("setThreadId(null) after the thread was deleted", () => window.calls.setThreadId.includes(null));
    s.finish();
  },
};

Object.assign(scenarios, crossOriginScenarios(assert), widgetScenarios(assert), a11yScenarios(assert), contentScenarios(assert));
Object.assign(scenarios, interactScenarios(assert), attachScenarios(assert));

// ---------------------------------------------------------------------------
// Main.
// ---------------------------------------------------------------------------

async function main() {
  const options = parseArgs(process.argv.slice(2));
  const scenario = scenarios[options.scenario];
  if (!scenario) {
    usage(`unknown scenario ${options.scenario}; known: ${Object.keys(scenarios).join(", ")}`);
  }
  mkdirSync(options.artifacts, { recursive: true });
  const executablePath = process.env.CHATKIT_CHROMIUM || "/usr/bin/chromium";
  const args = [
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
  ];
  if (typeof process.getuid === "function" && process.getuid() === 0) {
    // Chromium's sandbox refuses to run as root.
    args.push("--no-sandbox");
  }
  const browser = await chromium.launch({ executablePath, headless: true, args, timeout: 30_000 });
  const watchdog = setTimeout(() => {
    console.error(`scenario ${options.scenario} did not finish within ${SCENARIO_MS} ms`);
    process.exit(1);
  }, SCENARIO_MS);
  try {
    console.log(`${browser.browserType().name()} ${browser.version()} (${executablePath})`);
    await scenario(new Scenario(browser, options));
    console.log(`scenario ${options.scenario}: passed`);
  } finally {
    clearTimeout(watchdog);
    await browser.close();
  }
}

main().catch((error) => {
  console.error(error && error.stack ? error.stack : error);
  process.exit(1);
});
