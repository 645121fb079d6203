// The accessibility scenario of e2e.mjs: axe-core (pinned in package.json)
// scans the chat page in the browser, with a thread holding messages (and
// their Copy, feedback and Retry buttons), the echo's widget gallery, a
// question form and a client tool call's card, and the scenario fails on any
// serious or critical violation, naming the rule and the elements.

import { createRequire } from "node:module";

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
