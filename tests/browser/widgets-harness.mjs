// The browser harness of the chat page's widget renderer (src/http/page/widgets*.js).
// It serves the renderer, its CSS and a gallery page built from
// src/responder/gallery.json from a loopback server with the chat
// page's CSP, drives headless Chromium through the gallery, and checks what a
// user and the lead's integration rely on: every component family renders,
// unknown and malformed components degrade to text without a page error,
// forms send their values, actions show their loading states, streamed
// updates apply, and ListView's "Show more" works. It saves a screenshot per
// gallery entry (light), plus the whole gallery in dark and at phone width.
//
//   node tests/browser/widgets-harness.mjs [--artifacts <dir>] [--headed]
//
// Exits 0 when every check passes, 1 with the failed checks listed otherwise.

import { readFile } from "node:fs/promises";
import { join } from "node:path";
import { CSP, harnessFiles, ROOT, assert, runHarness, until } from "./harness-lib.mjs";

const GALLERY = join(ROOT, "src/responder/gallery.json");

// ---------------------------------------------------------------------------
// The gallery page: HTML, its stylesheet and its script, all served files
// ---------------------------------------------------------------------------

const HARNESS_BODY = `  <h1>Widget gallery</h1>
  <main id="gallery"></main>
  <h1>Degraded</h1>
  <main id="degraded"></main>`;

const HARNESS_CSS = `/* The gallery page around the widgets under test. */
body { margin: 0; padding: 16px; font: 14px system-ui, sans-serif; background: #f4f4f5; color: #18181b; }
@media (prefers-color-scheme: dark) { body { background: #121212; color: #e4e4e7; } }
section { margin: 0 0 20px; padding: 8px; }
h1 { font-size: 18px; }
h2 { font-size: 13px; font-weight: 500; margin: 0 0 8px; opacity: 0.7; }
`;

// The page's own script: it renders every fixture and records the actions
// the widgets fire; `hold` keeps their promises pending until `release()`.
const HARNESS_PAGE_JS = `// The widget gallery page of widgets-harness.mjs.
import * as widgets from "./widgets.js";

const state = { actions: [], pending: [], hold: false, fixtures: null };

function onAction(action, info) {
  state.actions.push({
    action,
    itemId: info.itemId,
    widget: info.element?.dataset?.widget ?? null,
    componentId: info.element?.dataset?.componentId ?? null,
  });
  return state.hold ? new Promise((resolve) => state.pending.push(resolve)) : Promise.resolve();
}

function mount(name, widget) {
  const slot = document.querySelector("#fx-" + name + " .slot");
  slot.replaceChildren(widgets.renderWidget(widget, { itemId: "item-" + name, onAction }));
  return slot.firstElementChild;
}

window.harness = {
  ...widgets,
  state,
  mount,
  release() {
    state.pending.splice(0).forEach((resolve) => resolve());
  },
};

const fixtures = await (await fetch("fixtures.json")).json();
state.fixtures = fixtures;
for (const group of ["gallery", "degraded"]) {
  for (const entry of fixtures[group]) {
    const section = document.createElement("section");
    section.id = "fx-" + entry.name;
    const heading = document.createElement("h2");
    heading.textContent = entry.name + ": " + entry.title;
    const slot = document.createElement("div");
    slot.className = "slot";
    section.append(heading, slot);
    document.getElementById(group).append(section);
    mount(entry.name, entry.widget);
  }
}
window.harness.ready = true;
`;

// ---------------------------------------------------------------------------
// Checks
// ---------------------------------------------------------------------------

function same(actual, expected) {
  return JSON.stringify(sortKeys(actual)) === JSON.stringify(sortKeys(expected));
}

function sortKeys(value) {
  if (Array.isArray(value)) {
    return value.map(sortKeys);
  }
  if (value && typeof value === "object") {
    return Object.fromEntries(Object.keys(value).sort().map((k) => [k, sortKeys(value[k])]));
  }
  return value;
}

const actions = (page) => page.evaluate(() => window.harness.state.actions);
const clearActions = (page) => page.evaluate(() => {
  window.harness.state.actions.length = 0;
});
const lastAction = async (page) => (await actions(page)).at(-1);

const ALL_TYPES = [
  "Card", "ListView", "ListViewItem", "Basic", "Box", "Row", "Col", "Form", "Text", "Title", "Caption", "Markdown",
  "Label", "Badge", "Button", "Image", "Icon", "Divider", "Spacer", "Input", "Textarea", "Select", "DatePicker",
  "Checkbox", "RadioGroup", "Chart", "Transition",
];

const CHECKS = {
  async "every component family renders"(page) {
    const found = await page.evaluate(() => [...new Set([...document.querySelectorAll("#gallery [data-widget]")].map((e) => e.dataset.widget))]);
    const missing = ALL_TYPES.filter((type) => !found.includes(type));
    assert(missing.length === 0, `no rendered element for: ${missing.join(", ")}`);
    const fallbacks = await page.evaluate(() => [...document.querySelectorAll("#gallery [data-widget-fallback]")].map((e) => `${e.dataset.widget}: ${e.textContent}`));
    assert(fallbacks.length === 0, `valid gallery components fell back to text: ${fallbacks.join(" | ")}`);
    const ids = await page.evaluate(() => document.querySelectorAll("#gallery [data-component-id]").length);
    assert(ids >= 5, `only ${ids} elements carry data-component-id`);
  },

  async "chart draws bars, a line, an area, a legend and an accessible table"(page) {
    const chart = await page.evaluate(() => {
      const root = document.querySelector('#fx-chart [data-widget="Chart"]');
      const svg = root.querySelector("svg");
      return {
        bars: root.querySelectorAll("rect.w-chart-bar").length,
        lines: root.querySelectorAll("path.w-chart-line").length,
        areas: root.querySelectorAll("path.w-chart-area").length,
        areaPath: root.querySelector("path.w-chart-area")?.getAttribute("d") ?? "",
        role: svg.getAttribute("role"),
        title: document.getElementById(svg.getAttribute("aria-labelledby"))?.textContent ?? "",
        legend: [...root.querySelectorAll(".w-legend-item")].map((e) => e.textContent),
        tableRows: root.querySelectorAll("table.w-sr-only tbody tr").length,
        ticks: [...root.querySelectorAll("text.w-chart-tick")].map((e) => e.textContent),
        barHeights: [...root.querySelectorAll("rect.w-chart-bar")].map((r) => Number(r.getAttribute("height"))),
      };
    });
    assert(chart.bars === 10, `expected 10 bars (2 stacked series × 5 days), drew ${chart.bars}`);
    assert(chart.barHeights.every((height) => height > 0), `a bar has no height: ${chart.barHeights}`);
    assert(chart.lines === 1 && chart.areas === 1, `expected 1 line and 1 area, drew ${chart.lines} and ${chart.areas}`);
    assert(/Z$/.test(chart.areaPath), `the area path is not closed: ${chart.areaPath}`);
    assert(chart.role === "img" && chart.title.includes("Online"), `the chart's SVG is not a named image: ${chart.role} "${chart.title}"`);
    assert(same(chart.legend, ["Online", "In store", "Target", "Returns"]), `legend: ${chart.legend}`);
    assert(chart.tableRows === 5, `the hidden data table has ${chart.tableRows} rows`);
    assert(chart.ticks.includes("Mo") && chart.ticks.includes("Fr"), `x-axis labels were not mapped: ${chart.ticks}`);
  },

  async "unknown components and malformed props degrade to text"(page) {
    const unknown = await page.evaluate(() => {
      const e = document.querySelector('#fx-unknown-component [data-widget="Sparkline"]');
      return e && { fallback: e.dataset.widgetFallback, text: e.textContent, after: document.querySelector("#fx-unknown-component").textContent };
    });
    assert(unknown && unknown.fallback === "unknown" && unknown.text === "A sparkline of 7 days", `unknown component: ${JSON.stringify(unknown)}`);
    assert(unknown.after.includes("Still rendered after the unknown component"), "the component after the unknown one is missing");
    const broken = await page.evaluate(() => [...document.querySelectorAll("#fx-broken-props [data-widget-fallback]")].map((e) => [e.dataset.widget, e.dataset.widgetFallback, e.textContent]));
    assert(same(broken, [["Chart", "broken", "Quarterly revenue"], ["Select", "broken", "Select without options"], ["Text", "broken", ""]]), `broken props: ${JSON.stringify(broken)}`);
    const text = await page.evaluate(() => document.querySelector("#fx-broken-props").textContent);
    assert(text.includes("Still rendered after the broken components"), "the component after the broken ones is missing");
    // Roots that are not widgets at all still give an element, never an exception.
    const odd = await page.evaluate(() => {
      const inputs = [null, undefined, "just text", 42, [], { type: "Card", children: "oops" }, { type: "Card", children: [null, 5, { type: 3 }, { type: "Row", children: { type: "Text", value: "single child" } }] }, { type: "ListView", children: [{ type: "ListViewItem" }], limit: "auto" }, { type: "Chart" }];
      return inputs.map((input) => {
        const element = window.harness.renderWidget(input, { onAction() {} });
        return [element instanceof HTMLElement, element.textContent, window.harness.widgetText(input)];
      });
    });
    assert(odd.every(([isElement]) => isElement), `a malformed root did not render as an element: ${JSON.stringify(odd)}`);
    assert(odd[6][1].includes("single child"), `a single child object was not rendered: ${JSON.stringify(odd[6])}`);
  },

  async "a form sends its values, nested by dotted names, on submit"(page) {
    const form = page.locator("#fx-form");
    await clearActions(page);
    const title = form.getByRole("textbox", { name: "Title" });
    await title.press("Enter");
    let sent = await actions(page);
    assert(sent.length === 0, `the form submitted with an empty required field: ${JSON.stringify(sent)}`);
    assert(await title.evaluate((e) => !e.validity.valid), "the empty required title is not invalid");

    await title.fill("Write the widget renderer");
    await form.getByRole("textbox", { name: "Notes" }).fill("Two lines\nof notes");
    await form.getByRole("combobox", { name: "Priority" }).selectOption("high");
    const change = await lastAction(page);
    assert(change?.action.type === "todo.priority_changed", `Select's onChangeAction did not fire: ${JSON.stringify(change)}`);
    assert(change.action.payload.todo?.priority === "high" && change.action.payload.todo?.title === "Write the widget renderer", `the change action lacks the form values: ${JSON.stringify(change.action.payload)}`);
    assert(change.action.loadingBehavior === "auto" && change.action.handler === "server" && change.action.streaming === true, `the action's defaults: ${JSON.stringify(change.action)}`);
    await form.getByLabel("Due").fill("2025-06-30");
    await form.getByRole("radio", { name: "Large" }).check();
    await form.getByRole("checkbox", { name: "Done" }).check();
    await form.getByRole("textbox", { name: "Owner" }).fill("Ana");
    await clearActions(page);
    await title.press("Enter");
    const expected = {
      id: "todo-1",
      todo: { list: "work", title: "Write the widget renderer", notes: "Two lines\nof notes", priority: "high", due: "2025-06-30", size: "l", done: true },
      owner: "Ana",
      email: "",
    };
    sent = await actions(page);
    assert(sent.length === 1 && sent[0].action.type === "todo.update", `Enter did not submit once: ${JSON.stringify(sent)}`);
    assert(same(sent[0].action.payload, expected), `submitted payload ${JSON.stringify(sent[0].action.payload)}, expected ${JSON.stringify(expected)}`);
    assert(sent[0].itemId === "item-form" && sent[0].widget === "Form", `the action's info: ${JSON.stringify(sent[0])}`);

    await clearActions(page);
    await form.getByRole("button", { name: "Save" }).click();
    await until(page, "the Save button's submit to settle", () => window.harness.state.actions.length === 1 && !document.querySelector('#fx-form [aria-busy="true"]'));
    sent = await actions(page);
    assert(same(sent[0].action.payload, expected), `Save sent ${JSON.stringify(sent[0].action.payload)}`);
    assert(sent[0].componentId === "todo-save", `the submitter was not the Save button: ${JSON.stringify(sent[0])}`);

    // An invalid email blocks the submit, as the browser's validity says.
    await form.getByRole("textbox", { name: "Email (optional)" }).fill("not-an-email");
    await clearActions(page);
    await form.getByRole("button", { name: "Save" }).click();
    assert((await actions(page)).length === 0, "the form submitted with an invalid email");
    await form.getByRole("textbox", { name: "Email (optional)" }).fill("");
  },

  async "Card confirm and cancel fire their actions; asForm validates and carries fields"(page) {
    const card = page.locator("#fx-card");
    await clearActions(page);
    await card.getByRole("button", { name: "Discard" }).click();
    let action = (await lastAction(page))?.action;
    assert(action?.type === "event.discard" && action.payload.id === "evt-1", `cancel: ${JSON.stringify(action)}`);
    await page.evaluate(() => {
      window.harness.state.hold = true;
    });
    await card.getByRole("button", { name: "Add event" }).click();
    action = (await lastAction(page))?.action;
    assert(action?.type === "event.add" && same(action.payload, { id: "evt-1" }), `confirm: ${JSON.stringify(action)}`);
    const busy = await page.evaluate(() => {
      const root = document.querySelector("#fx-card .w-root");
      return { inert: root.inert, busy: root.getAttribute("aria-busy") };
    });
    assert(busy.inert && busy.busy === "true", `confirm's auto loading is not the whole card: ${JSON.stringify(busy)}`);
    await page.evaluate(() => window.harness.release());
    await until(page, "the card to leave its loading state", () => !document.querySelector("#fx-card .w-root").inert);
    await page.evaluate(() => {
      window.harness.state.hold = false;
    });

    const formCard = page.locator("#fx-card-form");
    await clearActions(page);
    await formCard.getByRole("button", { name: "Book" }).click();
    assert((await actions(page)).length === 0, "an asForm card confirmed with its required field empty");
    await formCard.getByRole("textbox", { name: "Name" }).fill("Ada");
    await formCard.getByRole("button", { name: "Book" }).click();
    await until(page, "the booking action", () => window.harness.state.actions.length === 1);
    action = (await lastAction(page)).action;
    assert(action.type === "table.book" && same(action.payload, { restaurant: "Chez Panisse", guest: { name: "Ada" }, guests: "2" }), `asForm confirm: ${JSON.stringify(action)}`);
    await until(page, "the card to settle", () => !document.querySelector("#fx-card-form .w-root").inert);
    await formCard.getByRole("button", { name: "Cancel" }).click();
    action = (await lastAction(page)).action;
    assert(action.type === "table.cancel" && same(action.payload, { guest: { name: "Ada" }, guests: "2" }), `asForm cancel: ${JSON.stringify(action)}`);
  },

  async "loadingBehavior shows busy states while the action is pending"(page) {
    const state = (id) => page.evaluate((componentId) => {
      const button = document.querySelector(`[data-component-id="${componentId}"]`);
      const root = button.closest(".w-root");
      return { disabled: button.disabled, busy: button.getAttribute("aria-busy"), rootInert: root.inert, rootBusy: root.getAttribute("aria-busy") };
    }, id);
    await page.evaluate(() => {
      window.harness.state.hold = true;
    });
    try {
      for (const [id, expected] of [
        ["btn-self", { disabled: true, busy: "true", rootInert: false, rootBusy: null }],
        ["btn-auto", { disabled: true, busy: "true", rootInert: false, rootBusy: null }],
        ["btn-container", { disabled: false, busy: null, rootInert: true, rootBusy: "true" }],
        ["btn-none", { disabled: false, busy: null, rootInert: false, rootBusy: null }],
      ]) {
        await clearActions(page);
        await page.locator(`[data-component-id="${id}"]`).click();
        const fired = await lastAction(page);
        assert(fired?.componentId === id, `${id} did not fire: ${JSON.stringify(fired)}`);
        const pending = await state(id);
        assert(same(pending, expected), `${id} while pending: ${JSON.stringify(pending)}, expected ${JSON.stringify(expected)}`);
        await page.evaluate(() => window.harness.release());
        await until(page, `${id} to leave its loading state`, (componentId) => {
          const button = document.querySelector(`[data-component-id="${componentId}"]`);
          return !button.disabled && !button.closest(".w-root").inert && !button.hasAttribute("aria-busy");
        }, id);
      }
      const none = (await actions(page)).at(-1).action;
      assert(none.handler === "client" && none.loadingBehavior === "none", `btn-none's action: ${JSON.stringify(none)}`);
      // A button that starts disabled stays disabled after an action elsewhere settles.
      assert(await page.getByRole("button", { name: "Disabled" }).isDisabled(), "the disabled button was enabled");
    } finally {
      await page.evaluate(() => {
        window.harness.state.hold = false;
        window.harness.release();
      });
    }
  },

  async "applyWidgetUpdate streams text, replaces a component and replaces the root"(page) {
    const result = await page.evaluate(() => {
      const { applyWidgetUpdate, mount, state } = window.harness;
      const byName = (name) => state.fixtures.gallery.find((e) => e.name === name).widget;
      const out = {};
      // Text deltas, re-rendered after each one as the chat page would.
      const original = byName("text");
      const before = JSON.stringify(original);
      let root = original;
      const seen = [];
      for (const [delta, done] of [["Hello", false], [", ", false], ["world", true]]) {
        root = applyWidgetUpdate(root, { type: "widget.streaming_text.value_delta", component_id: "stream-text", delta, done });
        mount("text", root);
        seen.push(document.querySelector('#fx-text [data-component-id="stream-text"]').textContent);
      }
      root = applyWidgetUpdate(root, { type: "widget.streaming_text.value_delta", component_id: "stream-md", delta: "\nMore.", done: true });
      mount("text", root);
      out.seen = seen;
      out.markdown = document.querySelector('#fx-text [data-component-id="stream-md"]').textContent;
      out.pure = JSON.stringify(original) === before;
      out.shared = root.children[0] === original.children[0];
      // One component replaced inside a Transition.
      const transition = applyWidgetUpdate(byName("transition"), {
        type: "widget.component.updated",
        component_id: "status-row",
        component: { type: "Row", id: "status-row", gap: 2, children: [{ type: "Icon", name: "check", color: "success" }, { type: "Text", value: "Approved" }] },
      });
      mount("transition", transition);
      const changed = document.querySelector('#fx-transition [data-widget="Transition"]');
      out.transition = changed.textContent;
      out.fades = changed.classList.contains("w-changed");
      // The same tree rendered again (another update elsewhere in the widget) does not fade again.
      mount("transition", transition);
      out.fadesAgain = document.querySelector('#fx-transition [data-widget="Transition"]').classList.contains("w-changed");
      // The whole root replaced.
      const replaced = applyWidgetUpdate(byName("basic"), { type: "widget.root.updated", widget: { type: "Card", children: [{ type: "Text", value: "A new root" }] } });
      mount("basic", replaced);
      out.rootType = document.querySelector("#fx-basic .w-root").dataset.widget;
      out.rootText = document.querySelector("#fx-basic .w-root").textContent;
      // Updates that change nothing give back the same tree.
      const basic = byName("basic");
      out.unknownSame = applyWidgetUpdate(basic, { type: "widget.unknown" }) === basic;
      out.missingSame = applyWidgetUpdate(basic, { type: "widget.component.updated", component_id: "nope", component: {} }) === basic;
      out.garbageSame = applyWidgetUpdate(basic, null) === basic;
      // Put the gallery back for the screenshots.
      mount("text", original);
      mount("transition", byName("transition"));
      mount("basic", basic);
      return out;
    });
    assert(same(result.seen, ["Streaming: Hello", "Streaming: Hello, ", "Streaming: Hello, world"]), `text deltas showed as ${JSON.stringify(result.seen)}`);
    assert(result.markdown.endsWith("never runs')</script>\nMore."), `the Markdown delta: ${JSON.stringify(result.markdown)}`);
    assert(result.pure, "applyWidgetUpdate changed the tree it was given");
    assert(result.shared, "applyWidgetUpdate copied an unchanged subtree");
    assert(result.transition === "Approved", `the replaced component shows ${JSON.stringify(result.transition)}`);
    assert(result.fades && !result.fadesAgain, `the Transition fades on a change only: ${result.fades} then ${result.fadesAgain}`);
    assert(result.rootType === "Card" && result.rootText === "A new root", `the replaced root: ${result.rootType} ${result.rootText}`);
    assert(result.unknownSame && result.missingSame && result.garbageSame, `no-op updates: ${JSON.stringify(result)}`);
  },

  async "ListView limits its rows; Show more reveals them; rows work by keyboard"(page) {
    const list = page.locator("#fx-list-view");
    const visible = () => list.locator("li.w-list-row:visible").count();
    assert((await visible()) === 3, `ListView limit 3 shows ${await visible()} rows`);
    await clearActions(page);
    await list.getByRole("button", { name: "Blue line" }).click();
    let fired = await lastAction(page);
    assert(fired?.action.type === "line.select" && fired.action.payload.id === "blue" && fired.widget === "ListViewItem", `row click: ${JSON.stringify(fired)}`);
    await until(page, "the row to settle", () => !document.querySelector('#fx-list-view [aria-busy="true"]'));
    await list.getByRole("button", { name: "Blue line" }).focus();
    await page.keyboard.press("Tab");
    const focused = await page.evaluate(() => ({ text: document.activeElement.textContent, outline: getComputedStyle(document.activeElement).outlineStyle }));
    assert(focused.text === "Orange line" && focused.outline !== "none", `Tab did not reach the next row with a visible focus: ${JSON.stringify(focused)}`);
    await page.keyboard.press("Enter");
    fired = await lastAction(page);
    assert(fired?.action.payload.id === "orange", `Enter on a row: ${JSON.stringify(fired)}`);
    await list.getByRole("button", { name: "Show more" }).click();
    assert((await visible()) === 5, `Show more left ${await visible()} rows visible`);
    assert((await list.getByRole("button", { name: "Show more" }).count()) === 0, "Show more stayed after showing everything");
  },

  async "every control has an accessible name and is keyboard reachable"(page) {
    const unnamed = await page.evaluate(() => {
      const nameOf = (e) => {
        const labelled = e.getAttribute("aria-labelledby");
        return (e.getAttribute("aria-label") || (labelled && document.getElementById(labelled)?.textContent) || [...(e.labels ?? [])].map((l) => l.textContent).join(" ") || (e.tagName === "BUTTON" ? e.textContent : "")).trim();
      };
      return [...document.querySelectorAll(".w-root button, .w-root input, .w-root select, .w-root textarea, .w-root [role=radiogroup], .w-root [tabindex]")]
        .filter((e) => !nameOf(e) || (e.tabIndex < 0 && e.getAttribute("role") !== "radiogroup"))
        .map((e) => e.outerHTML.slice(0, 120));
    });
    assert(unnamed.length === 0, `controls without a name or tab stop: ${unnamed.join("\n  ")}`);
  },

  async "Markdown is plain text until a renderer is set"(page) {
    const result = await page.evaluate(() => {
      const { renderWidget, setMarkdownRenderer, state } = window.harness;
      const widget = state.fixtures.gallery.find((e) => e.name === "text").widget;
      const plain = document.querySelector('#fx-text [data-widget="Markdown"]');
      const out = { scripts: document.querySelectorAll("#gallery script").length, plainHasBreaks: plain.textContent.includes("\n\n1.") };
      setMarkdownRenderer((text) => {
        const element = document.createElement("article");
        element.className = "md-test";
        element.textContent = text.toUpperCase();
        return element;
      });
      out.custom = renderWidget(widget, {}).querySelector('[data-widget="Markdown"] .md-test')?.textContent.slice(0, 11);
      setMarkdownRenderer(() => {
        throw new Error("renderer broke");
      });
      out.afterThrow = renderWidget(widget, {}).querySelector('[data-widget="Markdown"]').textContent.slice(0, 11);
      setMarkdownRenderer(null);
      return out;
    });
    assert(result.scripts === 0, "Markdown source made a script element");
    assert(result.plainHasBreaks, "plain Markdown lost its line breaks");
    assert(result.custom === "END OF WEEK", `the set Markdown renderer was not used: ${result.custom}`);
    assert(result.afterThrow === "End of week", `a throwing Markdown renderer did not fall back: ${result.afterThrow}`);
  },

  async "widgetText renders trees as plain text"(page) {
    const texts = await page.evaluate(() => {
      const { widgetText, state } = window.harness;
      const byName = (name) => state.fixtures.gallery.find((e) => e.name === name).widget;
      return { card: widgetText(byName("card")), chart: widgetText(byName("chart")), list: widgetText(byName("list-view")), garbage: [widgetText(null), widgetText({ children: 5 }), widgetText("x")] };
    });
    assert(texts.card.includes("Design review") && texts.card.includes("Add event") && texts.card.startsWith("Calendar"), `card text: ${JSON.stringify(texts.card)}`);
    assert(texts.chart.includes("Mo: Online 12, In store 8, Target 18, Returns 2"), `chart text: ${JSON.stringify(texts.chart)}`);
    assert(texts.list.split("\n").includes("Orange line"), `list text: ${JSON.stringify(texts.list)}`);
    assert(same(texts.garbage, ["", "", "x"]), `garbage text: ${JSON.stringify(texts.garbage)}`);
  },
};

// ---------------------------------------------------------------------------
// Screenshots and the run
// ---------------------------------------------------------------------------

runHarness({
  name: "widgets harness",
  artifacts: "widgets",
  prefix: "gallery",
  files: harnessFiles({
    title: "Widget gallery",
    stylesheet: "widgets.css",
    body: HARNESS_BODY,
    css: HARNESS_CSS,
    script: HARNESS_PAGE_JS,
    extra: { "/fixtures.json": { type: "application/json", path: GALLERY } },
  }),
  checks: CHECKS,
  fixtures: async () => {
    const fixtures = JSON.parse(await readFile(GALLERY, "utf-8"));
    return [...fixtures.gallery, ...fixtures.degraded].map((entry) => entry.name);
  },
  // The only console errors allowed are the CSP refusing the remote image, which the images fixture shows on purpose.
  allowedConsole: /images\.invalid|Content Security Policy.*img-src/i,
});
