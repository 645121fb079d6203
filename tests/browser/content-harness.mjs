// The browser harness of the chat page's content renderers (src/http/page/
// markdown.js and content.js, with the vendored marked and DOMPurify). It
// serves the page's modules and a test page built from
// tests/browser/content-fixtures.json from a loopback server with the chat
// page's CSP, drives headless Chromium, and checks what a reader and the
// lead's integration rely on: Markdown renders its links and code while HTML
// and script URLs in it stay inert, citations sit at their offsets with a
// Sources list, workflows show live task status and open by keyboard, images
// render from data: URLs, streamed updates end in the same text as the final
// message, and every control has a name. It saves a screenshot per fixture
// (light), plus the whole page in dark and at phone width. It runs past the
// house's ~600 lines because each check carries its own fixtures and reasons;
// split across files, a check would no longer read on its own.
//
//   node tests/browser/content-harness.mjs [--artifacts <dir>] [--headed]
//
// Exits 0 when every check passes, 1 with the failed checks listed otherwise.

import { readFile } from "node:fs/promises";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { CSP, harnessFiles, assert, runHarness, until } from "./harness-lib.mjs";

const HERE = dirname(fileURLToPath(import.meta.url));
const FIXTURES = join(HERE, "content-fixtures.json");

// ---------------------------------------------------------------------------
// The test page: HTML, its stylesheet and its script; the page's own modules
// ---------------------------------------------------------------------------

const HARNESS_BODY = `  <h1>Content renderers</h1>
  <main id="items"></main>
  <h1>Scratch</h1>
  <div id="scratch"></div>`;

const HARNESS_CSS = `/* The test page around the content under test. */
body { margin: 0; padding: 16px; font: 15px system-ui, sans-serif; background: #ffffff; color: #18181b; max-width: 760px; }
@media (prefers-color-scheme: dark) { body { background: #17181b; color: #e4e4e7; } }
section { margin: 0 0 20px; padding: 10px 12px; border-radius: 10px; background: rgba(127, 127, 127, 0.08); }
h1 { font-size: 18px; }
section > h2 { font-size: 13px; font-weight: 500; margin: 0 0 8px; opacity: 0.7; }
`;

// The page's own script: it renders every fixture with the renderer its type
// needs and exposes the modules' API to the checks.
const HARNESS_PAGE_JS = `// The test page of content-harness.mjs.
import * as content from "./content.js";
import * as markdown from "./markdown.js";

function render(item, options) {
  switch (item?.type) {
    case "assistant_message": return content.renderAssistant(item);
    case "workflow": return content.renderWorkflow(item, options);
    case "task": return content.renderTask(item);
    case "generated_image": return content.renderGeneratedImage(item, options);
    default: throw new Error("no renderer for " + item?.type);
  }
}

function mount(name, item, options) {
  let slot = document.querySelector("#fx-" + name + " .slot");
  if (!slot) {
    const section = document.createElement("section");
    section.id = "fx-" + name;
    slot = document.createElement("div");
    slot.className = "slot";
    section.append(slot);
    document.getElementById("scratch").append(section);
  }
  slot.replaceChildren(render(item, options));
  return slot.firstElementChild;
}

const fixtures = await (await fetch("fixtures.json")).json();
window.harness = { ...content, ...markdown, render, mount, fixtures, item: (name) => structuredClone(fixtures.items.find((e) => e.name === name).item) };
for (const entry of fixtures.items) {
  const section = document.createElement("section");
  section.id = "fx-" + entry.name;
  const heading = document.createElement("h2");
  heading.textContent = entry.name + ": " + entry.title;
  const slot = document.createElement("div");
  slot.className = "slot";
  section.append(heading, slot);
  document.getElementById("items").append(section);
  mount(entry.name, entry.item);
}
window.harness.ready = true;
`;


// ---------------------------------------------------------------------------
// Checks
// ---------------------------------------------------------------------------

const same = (a, b) => JSON.stringify(a) === JSON.stringify(b);

// Markdown that tries every way in we know of; none of it may survive as markup.
const HOSTILE = [
  "<script>alert('script')</script>",
  '<img src="x" onerror="alert(\'img\')">',
  "<iframe src=\"https://example.com\"></iframe>",
  "<style>body { display: none }</style>",
  '<form action="https://example.com"><input name="q"><button>Go</button></form>',
  '<a href="javascript:alert(1)">raw javascript link</a>',
  "[mixed case](JaVaScRiPt:alert('mixed'))",
  "[entity](&#106;avascript:alert('entity'))",
  "[data html](data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==)",
  "![image js](javascript:alert('img'))",
  "![remote image](https://images.invalid/cat.png)",
  '<svg onload="alert(\'svg\')"><circle r="4"/></svg>',
  "<details open ontoggle=\"alert('toggle')\">x</details>",
  "[ok](https://example.com/ok \"title\")",
  "- [x] done task",
].join("\n\n");

/** Everything inside `selector` that could run, load or escape: the checks want this empty. */
const dangerIn = (page, selector) => page.evaluate((sel) => {
  const found = [];
  for (const root of document.querySelectorAll(sel)) {
    for (const element of root.querySelectorAll("*")) {
      const tag = element.localName;
      if (["script", "iframe", "style", "form", "object", "embed", "svg", "link", "meta"].includes(tag)) {
        found.push(`<${tag}>`);
      }
      if (tag === "button" && !element.classList.contains("c-copy")) {
        found.push("<button>");
      }
      for (const attribute of element.attributes) {
        if (/^on/i.test(attribute.name) || attribute.name === "style" || attribute.name === "srcdoc") {
          found.push(`${tag}[${attribute.name}]`);
        }
        if (/^\s*(javascript|vbscript|data:text)/i.test(attribute.value) && ["href", "src", "action", "formaction", "xlink:href"].includes(attribute.name)) {
          found.push(`${tag}[${attribute.name}=${attribute.value.slice(0, 30)}]`);
        }
      }
      if (tag === "img" && !/^data:image\/|^http:\/\/127\.0\.0\.1/.test(element.getAttribute("src") ?? "")) {
        found.push(`img[src=${element.getAttribute("src")}]`);
      }
    }
  }
  return found;
}, selector);

const CHECKS = {
  async "Markdown renders a link and a code block; HTML and script URLs in it stay inert"(page, run) {
    const result = await page.evaluate(() => {
      const root = document.querySelector("#fx-markdown");
      const link = [...root.querySelectorAll("a")].find((a) => a.textContent === "ChatKit docs");
      const code = root.querySelector(".c-code pre code");
      return {
        link: link && { href: link.getAttribute("href"), target: link.target, rel: link.rel },
        codeClass: code?.className,
        code: code?.textContent,
        heading: root.querySelector(".c-assistant h2")?.textContent,
        listItems: root.querySelectorAll("li").length,
        inline: root.querySelector(":not(pre) > code")?.textContent,
        text: root.querySelector(".c-assistant").textContent,
        plainUrl: [...root.querySelectorAll("a")].some((a) => a.href === "https://example.com/plain"),
        jsLink: [...root.querySelectorAll(".c-assistant p")].find((p) => p.textContent.startsWith("a javascript link"))?.innerHTML.slice(0, 40),
      };
    });
    assert(result.link?.href === "https://openai.github.io/chatkit-js/", `the docs link: ${JSON.stringify(result.link)}`);
    assert(result.link.target === "_blank" && same(result.link.rel.split(" ").sort(), ["nofollow", "noopener", "noreferrer"]), `the link's target/rel: ${JSON.stringify(result.link)}`);
    assert(result.codeClass === "language-python" && result.code.startsWith("def greet(name: str) -> str:\n    return"), `the code block: ${JSON.stringify(result)}`);
    assert(result.heading === "Getting started" && result.listItems === 2 && result.inline === "inline code", `Markdown structure: ${JSON.stringify(result)}`);
    assert(result.plainUrl, "GFM did not autolink the plain URL");
    // Raw HTML shows as the text it is, so a reader sees what the model wrote.
    assert(result.text.includes('<script>alert("script tag")</script>') && result.text.includes("onerror="), "raw HTML was not shown as text");
    // marked makes it a link; DOMPurify drops its URL and markdown.js leaves the text.
    assert(result.jsLink === "a javascript link and a plain URL <a hre", `the javascript: link: ${result.jsLink}`);
    const danger = await dangerIn(page, "#fx-markdown");
    assert(danger.length === 0, `dangerous markup survived: ${danger.join(", ")}`);
    assert(run.dialogs.length === 0, `a dialog opened: ${run.dialogs.join(", ")}`);
  },

  async "hostile Markdown (tags, handlers, script and data URLs, remote images) is neutralized"(page, run) {
    const result = await page.evaluate((text) => {
      const element = window.harness.renderMarkdown(text);
      element.id = "hostile";
      document.getElementById("scratch").append(element);
      return {
        links: [...element.querySelectorAll("a")].map((a) => [a.textContent, a.getAttribute("href"), a.rel]),
        checkbox: [...element.querySelectorAll("input")].map((i) => [i.type, i.disabled, i.checked]),
        text: element.textContent,
      };
    }, HOSTILE);
    // Let any handler that slipped through get its chance to fire before counting dialogs.
    await page.evaluate(() => new Promise((done) => requestAnimationFrame(() => setTimeout(done, 0))));
    const danger = await dangerIn(page, "#hostile");
    assert(danger.length === 0, `dangerous markup survived: ${danger.join(", ")}`);
    const hrefs = result.links.map(([, href]) => href);
    assert(same(hrefs, ["https://images.invalid/cat.png", "https://example.com/ok"]), `links left: ${JSON.stringify(result.links)}`);
    assert(result.links.every(([, , rel]) => rel.includes("noopener")), `a link without rel: ${JSON.stringify(result.links)}`);
    assert(["mixed case", "entity", "data html", "raw javascript link"].every((t) => result.text.includes(t)), `unsafe links lost their text: ${result.text}`);
    assert(same(result.checkbox, [["checkbox", true, true]]), `task list checkbox: ${JSON.stringify(result.checkbox)}`);
    assert(run.dialogs.length === 0, `a dialog opened: ${run.dialogs.join(", ")}`);
  },

  async "code blocks have a named Copy button that copies the code"(page) {
    const section = page.locator("#fx-markdown");
    const button = section.getByRole("button", { name: "Copy python code" });
    assert((await button.count()) === 1, "no button named \"Copy python code\"");
    await button.focus();
    const outline = await button.evaluate((e) => getComputedStyle(e).outlineStyle);
    assert(outline !== "none", "the focused Copy button shows no outline");
    await page.keyboard.press("Enter");
    await until(page, "the Copy button to confirm", () => document.querySelector("#fx-markdown .c-copy").textContent === "Copied");
    const copied = await page.evaluate(() => navigator.clipboard.readText());
    assert(copied === 'def greet(name: str) -> str:\n    return f"Hello, {name}!"\n', `the clipboard holds ${JSON.stringify(copied)}`);
    const status = await section.getByRole("status").first().textContent();
    assert(status.includes("copied"), `the copy was not announced: ${JSON.stringify(status)}`);
  },

  async "citations show [n] markers at their offsets and a Sources list"(page) {
    const result = await page.evaluate(() => {
      const root = document.querySelector("#fx-citations");
      const part = root.querySelector(".c-markdown p");
      const sources = root.querySelector("details.c-sources");
      return {
        text: part.textContent,
        markers: [...root.querySelectorAll(".c-cite a")].map((a) => [a.textContent, a.getAttribute("href"), a.getAttribute("aria-label"), a.target]),
        summary: sources?.querySelector("summary")?.textContent,
        open: sources?.open,
        entries: [...(sources?.querySelectorAll("li") ?? [])].map((li) => [li.value, li.textContent, li.querySelector("a")?.getAttribute("href") ?? null]),
      };
    });
    const expected = "Rust's borrow checker prevents data races at compile time.[1] The Q1 report shows revenue grew 12%.[2] See also the language reference.[3][1]";
    assert(result.text === expected, `marked text:\n  ${result.text}\nexpected:\n  ${expected}`);
    const book = "https://doc.rust-lang.org/book/ch16-00-concurrency.html";
    assert(result.markers[0][1] === book && result.markers[0][3] === "_blank", `marker [1]: ${JSON.stringify(result.markers[0])}`);
    assert(/^#c-src-\d+-2$/.test(result.markers[1][1]) && result.markers[1][2] === "Source 2: Q1 Report", `marker [2]: ${JSON.stringify(result.markers[1])}`);
    assert(result.summary === "Sources (3)" && result.open === false, `Sources summary: ${result.summary}, open ${result.open}`);
    assert(same(result.entries.map(([n, , href]) => [n, href]), [[1, book], [2, null], [3, "https://doc.rust-lang.org/reference/"]]), `Sources entries: ${JSON.stringify(result.entries)}`);
    assert(result.entries[1][1].includes("Q1 Report") && result.entries[1][1].includes("q1_report.pdf"), `the file source: ${result.entries[1][1]}`);
    // A file source's marker opens the collapsed list and jumps to its entry.
    await page.locator("#fx-citations .c-cite a", { hasText: "[2]" }).click();
    await until(page, "the Sources list to open", () => document.querySelector("#fx-citations details.c-sources").open);
    const hash = await page.evaluate(() => location.hash);
    assert(/^#c-src-\d+-2$/.test(hash), `the jump went to ${hash}`);
  },

  async "citation offsets count code points and never break links or code"(page) {
    const result = await page.evaluate(() => {
      const { renderMarkdown } = window.harness;
      const source = (url, title) => ({ type: "url", url, title });
      const emoji = renderMarkdown("😀😀 ok.", { annotations: [{ type: "annotation", index: 2, source: source("https://a.example/", "A") }] });
      const text = "See [the docs](https://example.com/docs) now.\n\n```\nlet x = 1;\n```\n";
      const inUrl = text.indexOf("example.com") + 3;
      const inCode = text.indexOf("x = 1");
      const tricky = renderMarkdown(text, { annotations: [
        { type: "annotation", index: inUrl, source: source("https://b.example/", "B") },
        { type: "annotation", index: inCode, source: { type: "entity", id: "ent_1", title: "Entity one" } },
        { type: "annotation", index: null, source: { type: "file", filename: "notes.txt", title: "Notes" } },
      ] });
      return {
        emoji: emoji.querySelector("p").textContent,
        link: tricky.querySelector("p a:not(.c-cite-link)").getAttribute("href"),
        paragraph: tricky.querySelector("p").textContent,
        code: tricky.querySelector("pre code").textContent,
        afterCode: tricky.querySelector(".c-code").nextElementSibling?.textContent,
        sources: [...tricky.querySelectorAll(".c-sources li")].map((li) => li.textContent),
      };
    });
    assert(result.emoji === "😀😀[1] ok.", `emoji offsets: ${result.emoji}`);
    assert(result.link === "https://example.com/docs", `a marker broke the link: ${result.link}`);
    assert(result.paragraph === "See the docs[1] now.", `the marker inside the URL: ${result.paragraph}`);
    assert(result.code === "let x = 1;\n" && result.afterCode === "[2]", `the marker inside code: ${JSON.stringify(result)}`);
    assert(same(result.sources, ["Bb.example", "Entity one", "Notesnotes.txt"]), `sources: ${JSON.stringify(result.sources)}`);
  },

  async "a workflow shows task status, toggles by keyboard, and updates move a task to complete"(page) {
    const fixture = await page.evaluate(() => {
      const root = document.querySelector("#fx-workflow details.c-workflow");
      return {
        open: root.open,
        summary: root.querySelector(".c-workflow-title").textContent,
        types: [...root.querySelectorAll(".c-task")].map((t) => [t.dataset.taskType, t.dataset.status]),
        thought: root.querySelector(".c-thought")?.textContent.trim(),
        thoughtStrong: root.querySelector(".c-thought strong")?.textContent,
        queries: [...root.querySelectorAll(".c-query")].map((q) => q.textContent),
        sources: [...root.querySelectorAll(".c-task-sources a")].map((a) => [a.textContent, a.rel]),
        searchTitle: root.querySelector('[data-task-type="web_search"] .c-task-title').textContent,
      };
    });
    assert(fixture.open && fixture.summary === "Researched Rust concurrency", `fixture workflow: ${JSON.stringify(fixture)}`);
    assert(same(fixture.types, [["thought", "complete"], ["web_search", "complete"], ["custom", "complete"]]), `tasks: ${JSON.stringify(fixture.types)}`);
    assert(fixture.thoughtStrong === "data races" && fixture.thought.startsWith("The user asks"), `the thought: ${JSON.stringify(fixture)}`);
    assert(same(fixture.queries, ["rust data races", "rust send sync"]) && fixture.sources.length === 2 && fixture.sources[0][1].includes("noopener"), `search task: ${JSON.stringify(fixture)}`);
    assert(fixture.searchTitle === "Searched for “rust data races”", `search title: ${fixture.searchTitle}`);

    // A running workflow: one task loading, one complete, collapsed.
    const running = await page.evaluate(() => {
      const { item, mount } = window.harness;
      const workflow = item("workflow");
      workflow.id = "wf_running";
      workflow.workflow = { type: "reasoning", expanded: false, tasks: [
        { type: "web_search", status_indicator: "loading", queries: ["rust atomics"], sources: [] },
        { type: "file", status_indicator: "complete", title: "Read the report", sources: [{ type: "file", filename: "q1_report.pdf", title: "Q1 Report" }] },
      ] };
      window.running = workflow;
      const root = mount("running", workflow);
      return {
        summary: root.querySelector(".c-workflow-title").textContent,
        busy: root.getAttribute("aria-busy"),
        open: root.open,
        statuses: [...root.querySelectorAll(".c-task > .c-status")].map((s) => [s.getAttribute("role"), s.getAttribute("aria-label")]),
        file: root.querySelector('[data-task-type="file"] .c-task-sources')?.textContent,
      };
    });
    assert(running.summary === "Working…" && running.busy === "true" && running.open === false, `running workflow: ${JSON.stringify(running)}`);
    assert(same(running.statuses, [["img", "In progress"], ["img", "Done"]]), `status icons: ${JSON.stringify(running.statuses)}`);
    assert(running.file === "Q1 Reportq1_report.pdf", `file task sources: ${running.file}`);
    assert(await page.locator("#fx-running summary .c-status-loading").isVisible(), "the collapsed workflow's summary shows no spinner");

    // The summary is a keyboard control: Enter opens, Space closes.
    const summary = page.locator("#fx-running summary");
    // A key press first puts Chromium in keyboard mode (the citation check clicked
    // last), where :focus-visible applies as it does for a keyboard user.
    await page.keyboard.press("Shift");
    await summary.focus();
    const outline = await summary.evaluate((e) => getComputedStyle(e).outlineStyle);
    assert(outline !== "none", "the focused workflow summary shows no outline");
    await page.keyboard.press("Enter");
    await until(page, "Enter to open the workflow", () => document.querySelector("#fx-running details").open);
    assert(await page.locator("#fx-running .c-task .c-status-loading").isVisible(), "the open workflow shows no spinner on its loading task");
    await page.keyboard.press("Space");
    await until(page, "Space to close the workflow", () => !document.querySelector("#fx-running details").open);

    const updated = await page.evaluate(() => {
      const { applyContentUpdate, mount } = window.harness;
      const before = JSON.stringify(window.running);
      const done = { type: "web_search", status_indicator: "complete", queries: ["rust atomics"], sources: [{ type: "url", url: "https://doc.rust-lang.org/std/sync/atomic/", title: "std::sync::atomic" }] };
      let next = applyContentUpdate(window.running, { type: "workflow.task.updated", task_index: 0, task: done });
      const kept = next.workflow.tasks[1] === window.running.workflow.tasks[1];
      next = applyContentUpdate(next, { type: "thread.item.updated", item_id: "wf_running", update: { type: "workflow.task.added", task_index: 2, task: { type: "thought", status_indicator: "complete", content: "Enough sources." } } });
      const replayed = applyContentUpdate(next, { type: "workflow.task.added", task_index: 2, task: next.workflow.tasks[2] });
      next = { ...next, workflow: { ...next.workflow, summary: { duration: 75 } } };
      const root = mount("running", next, { expanded: true });
      return {
        pure: JSON.stringify(window.running) === before,
        kept,
        replayedLength: replayed.workflow.tasks.length,
        statuses: [...root.querySelectorAll(".c-task")].map((t) => t.dataset.status),
        summary: root.querySelector(".c-workflow-title").textContent,
        busy: root.hasAttribute("aria-busy"),
        open: root.open,
        badIndex: applyContentUpdate(next, { type: "workflow.task.updated", task_index: 9, task: done }) === next,
        wrongItem: applyContentUpdate({ type: "assistant_message", content: [] }, { type: "workflow.task.added", task_index: 0, task: done }).content.length,
      };
    });
    assert(updated.pure && updated.kept, `applyContentUpdate changed its input or copied an unchanged task: ${JSON.stringify(updated)}`);
    assert(same(updated.statuses, ["complete", "complete", "complete"]), `statuses after the updates: ${JSON.stringify(updated.statuses)}`);
    assert(updated.replayedLength === 3, `a replayed task.added duplicated the task: ${updated.replayedLength} tasks`);
    assert(updated.summary === "Thought for 1m 15s" && !updated.busy && updated.open, `the finished workflow: ${JSON.stringify(updated)}`);
    assert(updated.badIndex && updated.wrongItem === 0, `updates that do not fit changed the item: ${JSON.stringify(updated)}`);
  },

  async "a generated image renders from a data: URL, with a placeholder until it exists"(page) {
    const result = await page.evaluate(async () => {
      const { applyContentUpdate, item, mount } = window.harness;
      const image = document.querySelector("#fx-generated-image img");
      await image.decode();
      const out = { src: image.getAttribute("src").slice(0, 22), alt: image.alt, width: image.naturalWidth };
      const pending = { ...item("generated-image"), id: "img_pending", image: null };
      let root = mount("pending-image", pending);
      out.placeholder = [root.querySelector('[role="status"]')?.textContent, root.getAttribute("aria-busy"), root.querySelectorAll("img").length];
      root = mount("pending-image", pending, { progress: 0.5 });
      out.progress = root.textContent;
      const next = applyContentUpdate(pending, { type: "generated_image.updated", image: item("generated-image").image, progress: 1 });
      root = mount("pending-image", next);
      out.updated = root.querySelector("img")?.getAttribute("src") === item("generated-image").image.url && pending.image === null;
      root = mount("pending-image", { ...pending, image: { id: "x", url: "https://images.invalid/remote.png" } });
      out.remote = [root.querySelectorAll("img").length, root.querySelector("a")?.getAttribute("href"), root.querySelector("a")?.rel];
      root = mount("pending-image", { ...pending, image: { id: "x", url: "javascript:alert(1)" } });
      out.script = [root.querySelectorAll("img, a").length, root.querySelector('[role="status"]') !== null];
      return out;
    });
    assert(result.src === "data:image/png;base64," && result.alt === "Generated image" && result.width === 32, `the image: ${JSON.stringify(result)}`);
    assert(same(result.placeholder, ["Generating image…", "true", 0]), `the placeholder: ${JSON.stringify(result.placeholder)}`);
    assert(result.progress === "Generating image… 50%", `progress: ${result.progress}`);
    assert(result.updated, "generated_image.updated did not set the image (or changed its input)");
    assert(same(result.remote, [0, "https://images.invalid/remote.png", "noopener noreferrer nofollow"]), `a remote image: ${JSON.stringify(result.remote)}`);
    assert(same(result.script, [0, true]), `a javascript: image URL: ${JSON.stringify(result.script)}`);
  },

  async "streamed deltas applied one by one end in the same DOM text as the final message"(page) {
    const result = await page.evaluate(() => {
      const { applyContentUpdate, item, mount, renderAssistant } = window.harness;
      const out = {};
      for (const name of ["markdown", "citations"]) {
        const final = item(name);
        const part = final.content[0];
        let streamed = { ...final, id: `${final.id}_stream`, content: [] };
        const updates = [{ type: "assistant_message.content_part.added", content_index: 0, content: { type: "output_text", text: "", annotations: [] } }];
        for (let i = 0; i < part.text.length; i += 7) {
          updates.push({ type: "assistant_message.content_part.text_delta", content_index: 0, delta: part.text.slice(i, i + 7) });
        }
        part.annotations.forEach((annotation, i) => updates.push({ type: "assistant_message.content_part.annotation_added", content_index: 0, annotation_index: i, annotation }));
        let renders = 0;
        for (const update of updates) {
          streamed = applyContentUpdate(streamed, update);
          mount(`stream-${name}`, streamed);
          renders += 1;
        }
        const beforeDone = document.querySelector(`#fx-stream-${name} .c-assistant`).textContent;
        streamed = applyContentUpdate(streamed, { type: "assistant_message.content_part.done", content_index: 0, content: part });
        const element = mount(`stream-${name}`, streamed);
        out[name] = {
          renders,
          same: element.textContent === renderAssistant(final).textContent,
          beforeDone: beforeDone === element.textContent,
          text: streamed.content[0].text === part.text,
          annotations: JSON.stringify(streamed.content[0].annotations) === JSON.stringify(part.annotations),
          scripts: document.querySelectorAll(`#fx-stream-${name} script`).length,
        };
      }
      // A delta for a part that does not exist yet pads the content, as chatkit's server does.
      const padded = applyContentUpdate({ type: "assistant_message", content: [] }, { type: "assistant_message.content_part.text_delta", content_index: 1, delta: "late" });
      out.padded = padded.content.map((c) => c.text);
      return out;
    });
    for (const name of ["markdown", "citations"]) {
      const r = result[name];
      assert(r.renders > 10 && r.text && r.annotations, `${name}: the streamed item differs from the final one: ${JSON.stringify(r)}`);
      assert(r.same && r.beforeDone, `${name}: the streamed DOM text differs from the final message's: ${JSON.stringify(r)}`);
      assert(r.scripts === 0, `${name}: a streamed render made a script element`);
    }
    assert(same(result.padded, ["", "late"]), `padding: ${JSON.stringify(result.padded)}`);
  },

  async "re-rendering a ~20 KB answer on a delta stays cheap"(page) {
    const ms = await page.evaluate(() => {
      const { renderMarkdown } = window.harness;
      const block = "## Section\n\nSome *text* with a [link](https://example.com) and `code`.\n\n- item one\n- item two\n\n```js\nconst x = 1;\n```\n\n";
      const text = block.repeat(Math.ceil(20_000 / block.length));
      renderMarkdown(text);
      const start = performance.now();
      for (let i = 0; i < 10; i += 1) {
        renderMarkdown(text.slice(0, text.length - i));
      }
      return (performance.now() - start) / 10;
    });
    console.log(`     (one render of 20 KB of Markdown: ${ms.toFixed(1)} ms)`);
    assert(ms < 250, `rendering 20 KB took ${ms.toFixed(1)} ms`);
  },

  async "renderMarkdown works as widgets.js's Markdown hook"(page) {
    const result = await page.evaluate(async () => {
      const widgets = await import("./widgets.js");
      if (typeof widgets.setMarkdownRenderer !== "function") {
        return { missing: true };
      }
      widgets.setMarkdownRenderer(window.harness.renderMarkdown);
      try {
        const root = widgets.renderWidget({ type: "Card", children: [{ type: "Markdown", value: "**bold** <script>alert(1)</script>" }] }, {});
        return { strong: root.querySelector("strong")?.textContent, scripts: root.querySelectorAll("script").length, markdown: root.querySelectorAll(".c-markdown").length };
      } finally {
        widgets.setMarkdownRenderer(null);
      }
    });
    assert(!result.missing, "widgets.js no longer exports setMarkdownRenderer");
    assert(result.strong === "bold" && result.scripts === 0 && result.markdown === 1, `the widget's Markdown: ${JSON.stringify(result)}`);
  },

  async "malformed items and updates degrade without throwing"(page) {
    const result = await page.evaluate(() => {
      const h = window.harness;
      const elements = [
        h.renderAssistant(null), h.renderAssistant({ content: [null, 5, { text: 7 }, { text: "ok", annotations: [null, { index: 1 }, { source: "x" }] }] }),
        h.renderWorkflow(null), h.renderWorkflow({ workflow: { tasks: [null, { type: "mystery" }, { type: "thought" }] } }),
        h.renderTask(null), h.renderTask({ task: { type: "custom", title: "Solo", content: "*hi*", status_indicator: "loading" } }),
        h.renderGeneratedImage(null), h.renderMarkdown(null), h.renderMarkdown(42),
      ];
      const item = { type: "assistant_message", content: [] };
      return {
        elements: elements.every((e) => e instanceof HTMLElement),
        texts: [elements[1].textContent.trim(), elements[3].querySelectorAll(".c-task").length, elements[5].textContent.trim(), elements[5].querySelectorAll(".c-status").length],
        same: [null, undefined, 5, {}, { type: "nope" }, { type: "assistant_message.content_part.text_delta", content_index: -1, delta: "x" }].every((u) => h.applyContentUpdate(item, u) === item),
        nullItem: h.applyContentUpdate(null, { type: "generated_image.updated", image: {} }),
      };
    });
    assert(result.elements, "a malformed item did not render as an element");
    assert(same(result.texts, ["ok", 2, "Solohi", 0]), `malformed items rendered as ${JSON.stringify(result.texts)}`);
    assert(result.same && result.nullItem === null, `no-op updates changed the item: ${JSON.stringify(result)}`);
  },
};

// ---------------------------------------------------------------------------
// Screenshots and the run
// ---------------------------------------------------------------------------

runHarness({
  name: "content harness",
  artifacts: "content",
  prefix: "content",
  files: harnessFiles({
    title: "Content renderers",
    stylesheet: "content.css",
    body: HARNESS_BODY,
    css: HARNESS_CSS,
    script: HARNESS_PAGE_JS,
    extra: { "/fixtures.json": { type: "application/json", path: FIXTURES } },
  }),
  checks: CHECKS,
  fixtures: async () => JSON.parse(await readFile(FIXTURES, "utf-8")).items.map((entry) => entry.name),
  // Open the Sources lists so the pictures show them.
  beforeScreenshots: (page) =>
    page.evaluate(() => document.querySelectorAll("details.c-sources").forEach((d) => {
      d.open = true;
    })),
  clipboard: true,
});
