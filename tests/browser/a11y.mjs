// The accessibility and layout scenarios of e2e.mjs: axe-core (pinned in
// package.json) scans the chat page in the browser, with a thread holding
// messages (one with an image attached, and their Copy, feedback and Retry
// buttons), the echo's widget gallery, a question form, a client tool call's
// card and attachment chips in the composer (one uploaded, one failed), and
// the scenario fails on any serious or critical violation, naming the rule
// and the elements; the page on a phone-sized screen keeps everything within
// its width, and the thread follows a streaming answer only while the reader
// is at the bottom.

import { createRequire } from "node:module";
import { pngBuffer } from "./attach-e2e.mjs";

const require = createRequire(import.meta.url);
const AXE = require.resolve("axe-core/axe.min.js");

/** Violations of these impacts fail the scan; minor and moderate ones are only printed. */
const FAILING = new Set(["serious", "critical"]);

/** Runs axe-core on the page and answers its violations, compactly. */
async function scan(page) {
  // The page's policy allows only its own scripts: this context bypasses it to add axe.
  await page.addScriptTag({ path: AXE });
  return page.evaluate(async () => {
    const results = await window.axe.run(document, { resultTypes: ["violations"] });
    return results.violations.map((v) => ({
      id: v.id,
      impact: v.impact,
      help: v.help,
      nodes: v.nodes.slice(0, 10).map((n) => `${n.target.join(" ")}: ${n.failureSummary.split("\n").slice(1).join(" ")}`),
    }));
  });
}

export function a11yScenarios(assert) {
  return {
    /**
     * The thread follows a streaming answer while the reader is at the bottom, and stays where the
     * reader scrolled to once they scroll up.
     */
    async autoscroll(s) {
      const [base] = s.bases;
      const tab = await s.tab("scroll-tab", s.pageUrl(base));
      // The gallery first, so that the thread is taller than the screen.
      await tab.send("/gallery");
      await tab.until("the gallery shows", () => document.querySelectorAll("#messages li.widget .w-root").length === 12);
      await tab.untilLive();
      const atBottom = () =>
        tab.page.evaluate(() => {
          const el = document.getElementById("scroller");
          return el.scrollHeight - el.scrollTop - el.clientHeight < 80;
        });
      const long = Array.from({ length: 60 }, (_, i) => `word${i}`).join(" ");
      await tab.send(long);
      await tab.until("the answer streams", () =>
        [...document.querySelectorAll("#messages .message.assistant.streaming")].some((li) => li.textContent.length > 0),
      );
      assert(await atBottom(), "the thread follows the answer while the reader is at the bottom");
      await tab.page.evaluate(() => {
        document.getElementById("scroller").scrollTop = 0;
      });
      await tab.until("the answer is done", (text) => window.__e2e.messages().some((m) => m.text === `echo: ${text}`), long);
      const top = await tab.page.evaluate(() => document.getElementById("scroller").scrollTop);
      assert(top < 80, `the thread stayed where the reader scrolled (scrollTop ${top})`);
      s.finish();
    },

    /** On a 375 px wide screen the history sits above the thread and nothing overflows sideways. */
    async narrow(s) {
      const [base] = s.bases;
      const context = await s.browser.newContext({ viewport: { width: 375, height: 740 } });
      const page = await context.newPage();
      page.setDefaultTimeout(15_000);
      await page.goto(s.pageUrl(base));
      for (const text of ["A message long enough to wrap on a narrow screen, and then some more words", "/gallery"]) {
        await page.fill("#input", text);
        await page.press("#input", "Enter");
        await page.waitForFunction(() => new URLSearchParams(location.search).has("thread"));
      }
      await page.waitForFunction(() => document.querySelectorAll("#messages li.widget .w-root").length === 12);
      const layout = await page.evaluate(() => {
        const box = (id) => document.getElementById(id).getBoundingClientRect();
        const wide = [...document.querySelectorAll("#messages .bubble")].filter(
          (b) => b.getBoundingClientRect().right > window.innerWidth + 1,
        );
        return {
          overflow: document.documentElement.scrollWidth - window.innerWidth,
          stacked: box("sidebar").bottom <= box("thread").top + 1,
          wide: wide.length,
          time: document.querySelector("#history time")?.textContent ?? null,
        };
      });
      await page.screenshot({ path: `${s.artifacts}/narrow.png` });
      assert(layout.overflow <= 0, `the page scrolls sideways by ${layout.overflow} px`);
      assert(layout.stacked, "the history list sits above the thread");
      assert(layout.wide === 0, `${layout.wide} messages reach past the screen's edge`);
      assert(layout.time === "just now", `the history shows when each thread started: ${layout.time}`);
      await context.close();
    },

    /** The page with messages and every widget family, in light and dark colour schemes, has no serious violations. */
    async a11y(s) {
      const [base] = s.bases;
      for (const colorScheme of ["light", "dark"]) {
        const context = await s.browser.newContext({ viewport: { width: 1100, height: 700 }, bypassCSP: true, colorScheme });
        const page = await context.newPage();
        page.setDefaultTimeout(15_000);
        await page.goto(s.pageUrl(base));
        // The first message carries an image, so the thread shows a sent attachment.
        await page.setInputFiles("#attach-input", { name: "gradient.png", mimeType: "image/png", buffer: pngBuffer() });
        await page.waitForFunction(() => document.querySelector('#attachments .attachment[data-state="done"]') !== null);
        for (const text of ["Hello there", "/gallery"]) {
          await page.fill("#input", text);
          await page.press("#input", "Enter");
          await page.waitForFunction(() => new URLSearchParams(location.search).has("thread"));
        }
        await page.waitForFunction(() => document.querySelectorAll("#messages li.widget .w-root").length === 12);
        // A question form and a tool call's card (left pending: no handler), with the answers' buttons.
        await page.fill("#input", "/ask");
        await page.press("#input", "Enter");
        await page.waitForFunction(() => document.querySelector("#messages form.si") !== null);
        await page.fill("#input", "/tool");
        await page.press("#input", "Enter");
        await page.waitForFunction(() => document.querySelector("#messages .tool-call") !== null);
        await page.waitForFunction(() => document.querySelector("#messages .message-attachments img")?.naturalWidth > 0);
        // And the composer holds a file's chip: one uploaded, one whose upload failed (its error and Retry).
        await page.route("**/chatkit/attachments/*/upload*", (route) =>
          route.request().postData()?.includes("fails") ? route.abort("failed") : route.continue(),
        );
        await page.setInputFiles("#attach-input", [
          { name: "notes.txt", mimeType: "text/plain", buffer: Buffer.from("notes\n") },
          { name: "broken.txt", mimeType: "text/plain", buffer: Buffer.from("this upload fails\n") },
        ]);
        await page.waitForFunction(
          () =>
            document.querySelector('#attachments .attachment[data-state="done"]') !== null &&
            document.querySelector('#attachments .attachment[data-state="failed"]') !== null,
        );
        const violations = await scan(page);
        for (const v of violations) {
          console.log(`[a11y ${colorScheme}] ${v.impact} ${v.id}: ${v.help}\n  ${v.nodes.join("\n  ")}`);
        }
        await page.screenshot({ path: `${s.artifacts}/a11y-${colorScheme}.png`, fullPage: true });
        const failing = violations.filter((v) => FAILING.has(v.impact));
        assert(
          failing.length === 0,
          `axe-core found serious or critical violations (${colorScheme}): ${failing.map((v) => v.id).join(", ")}`,
        );
        console.log(`[a11y ${colorScheme}] ${violations.length} minor or moderate violations, none serious`);
        await context.close();
      }
    },
  };
}
