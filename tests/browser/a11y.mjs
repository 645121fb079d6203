// The accessibility scenario of e2e.mjs: axe-core (pinned in package.json)
// scans the chat page in the browser, with a thread holding messages (one
// with an image attached) and the echo's widget gallery, and attachment
// chips in the composer (one uploaded, one failed), and the scenario fails
// on any serious or critical violation, naming the rule and the elements.

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
