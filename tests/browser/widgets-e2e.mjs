// The widget scenarios of e2e.mjs, against the echo responder: its `/gallery`
// (a widget per component family) rendered by the chat page, the counter
// widget's Increment through `threads.sync_custom_action` in two tabs, a
// streamed widget (`/live-widget`) updating live in two tabs, and a form
// widget whose values reach the server in the action's payload.

/** Every component type of openai-chatkit 1.6.5's widgets.py that the gallery holds. */
const COMPONENT_TYPES = [
  "Card", "ListView", "ListViewItem", "Basic", "Box", "Row", "Col", "Form", "Transition",
  "Text", "Title", "Caption", "Markdown", "Label", "Badge", "Button", "Image", "Icon", "Divider", "Spacer",
  "Input", "Textarea", "Select", "DatePicker", "Checkbox", "RadioGroup", "Chart",
];

/** The widget items the open thread shows, as the page renders them. */
function widgetProbe() {
  return [...document.querySelectorAll("#messages li.widget")].map((li) => ({
    id: li.dataset.itemId,
    root: li.querySelector(".w-root") ? li.querySelector(".w-root").dataset.widget : null,
    types: [...new Set([...li.querySelectorAll("[data-widget]")].map((e) => e.dataset.widget))],
    fallbacks: li.querySelectorAll("[data-widget-fallback]").length,
    text: li.textContent,
  }));
}

/** Sends `text` on a new chat and waits until the page names the new thread; returns its id. */
async function startWith(s, tab, text) {
  await tab.send(text);
  await tab.until("the new thread is named in the URL", () => new URLSearchParams(location.search).has("thread"));
  await tab.untilLive();
  return tab.threadId();
}

/** The text of the counter widget's count in a tab. */
function countIn(tab) {
  return tab.page.evaluate(() => {
    const count = document.querySelector('#messages li.widget [data-component-id="counter"]');
    return count ? count.textContent : null;
  });
}

export function widgetScenarios(assert) {
  return {
    /** `/gallery`: every component family renders, none falls back to text; a screenshot of each. */
    async gallery(s) {
      const [base] = s.bases;
      const tab = await s.tab("gallery-tab", s.pageUrl(base));
      await startWith(s, tab, "/gallery");
      await tab.until("shows the twelve gallery widgets, rendered", () => {
        const items = [...document.querySelectorAll("#messages li.widget")];
        return items.length === 12 && items.every((li) => li.querySelector(".w-root"));
      });
      const widgets = await tab.page.evaluate(widgetProbe);
      const seen = new Set(widgets.flatMap((w) => w.types));
      const missing = COMPONENT_TYPES.filter((type) => !seen.has(type));
      assert(missing.length === 0, `component types not rendered: ${missing.join(", ")}`);
      const degraded = widgets.filter((w) => w.fallbacks > 0).map((w) => w.text.slice(0, 60));
      assert(degraded.length === 0, `gallery widgets that fell back to text: ${JSON.stringify(degraded)}`);
      const chart = await tab.page.evaluate(() => {
        const svg = document.querySelector('#messages [data-widget="Chart"] svg');
        return svg ? { rects: svg.querySelectorAll("rect").length, paths: svg.querySelectorAll("path").length } : null;
      });
      assert(chart && chart.rects > 0 && chart.paths > 0, `the chart draws bars and paths: ${JSON.stringify(chart)}`);
      const items = tab.page.locator("#messages li.widget");
      for (let i = 0; i < widgets.length; i += 1) {
        const name = `gallery-${String(i + 1).padStart(2, "0")}-${widgets[i].root}`;
        await items.nth(i).scrollIntoViewIfNeeded();
        await items.nth(i).screenshot({ path: `${s.artifacts}/${name}.png` });
      }
      console.log(`[gallery-tab] ${widgets.length} widget screenshots, types: ${[...seen].sort().join(", ")}`);
      s.finish();
    },

    /** The counter's Increment (a `streaming: false` action) updates the count in place, here and in a second tab. */
    async counter(s) {
      const [base] = s.bases;
      const a = await s.tab("first-tab", s.pageUrl(base));
      const threadId = await startWith(s, a, "/widget");
      await a.until("the counter shows 0", () =>
        document.querySelector('#messages [data-component-id="counter"]')?.textContent === "count: 0",
      );
      const b = await s.tab("second-tab", s.pageUrl(base, threadId));
      await b.untilLive();
      await b.until("the second tab shows the counter at 0", () =>
        document.querySelector('#messages [data-component-id="counter"]')?.textContent === "count: 0",
      );
      const before = await a.page.evaluate(() => document.querySelectorAll("#messages li").length);
      for (const expected of ["count: 1", "count: 2"]) {
        await a.page.getByRole("button", { name: "Increment" }).click();
        for (const tab of [a, b]) {
          await tab.until(`the counter shows "${expected}"`, (want) =>
            document.querySelector('#messages [data-component-id="counter"]')?.textContent === want, expected);
        }
      }
      const after = await a.page.evaluate(() => document.querySelectorAll("#messages li").length);
      assert(after === before, `the widget changed in place: ${before} items before, ${after} after`);
      assert((await countIn(b)) === "count: 2", "the second tab followed");
      await a.shot("counter-first-tab");
      await b.shot("counter-second-tab");
      s.finish();
    },

    /** `/live-widget` (paced): its status text grows delta by delta and its badge is replaced, in both tabs. */
    async "live-widget"(s) {
      const [base] = s.bases;
      const a = await s.tab("first-tab", s.pageUrl(base));
      const threadId = await startWith(s, a, "Hello");
      const b = await s.tab("second-tab", s.pageUrl(base, threadId));
      await b.untilLive();
      for (const tab of [a, b]) {
        await tab.page.evaluate(() => {
          // Every status text the widget showed, as the DOM changes.
          window.__statuses = [];
          new MutationObserver(() => {
            const status = document.querySelector('#messages [data-component-id="status"]');
            if (status) {
              window.__statuses.push(status.textContent);
            }
          }).observe(document.getElementById("messages"), { subtree: true, childList: true, characterData: true });
        });
      }
      await a.send("/live-widget");
      const final = "Reading the store, asking the fan-out, all good.";
      for (const tab of [a, b]) {
        await tab.until("the status streams into the widget", () =>
          window.__statuses.some((text) => text.length > 0 && text !== "Reading the store, asking the fan-out, all good."),
        );
        await tab.until("the widget ends with its full status and the replaced badge", (want) => {
          const status = document.querySelector('#messages [data-component-id="status"]');
          const badge = document.querySelector('#messages [data-component-id="state"]');
          return status?.textContent === want && badge?.textContent === "ready";
        }, final);
        const seen = await tab.page.evaluate(() => [...new Set(window.__statuses)]);
        const partial = seen.filter((text) => text && text !== final);
        assert(partial.every((text) => final.startsWith(text)), `${tab.name} showed only prefixes: ${JSON.stringify(seen)}`);
        assert(partial.length >= 1, `${tab.name} showed the status part-way: ${JSON.stringify(seen)}`);
      }
      await b.shot("live-widget-second-tab");
      s.finish();
    },

    /** A form widget's fields reach the server in the submitted action's payload, dotted names nested. */
    async "widget-form"(s) {
      const [base] = s.bases;
      const tab = await s.tab("form-tab", s.pageUrl(base));
      await startWith(s, tab, "/gallery");
      const form = tab.page.locator('#messages [data-widget="Form"]').first();
      await form.waitFor({ timeout: 15_000 });
      await form.scrollIntoViewIfNeeded();
      await form.getByPlaceholder("What needs doing?").fill("Buy milk");
      await form.getByPlaceholder("Optional notes").fill("two litres");
      await form.getByRole("checkbox", { name: "Done" }).check();
      await form.getByRole("radio", { name: "Large" }).check();
      await form.getByRole("button", { name: "Save" }).click();
      await tab.until("the echo answers the submitted action", () =>
        window.__e2e.messages().some((m) => m.role === "assistant" && m.text.startsWith("action: todo.update ")),
      );
      const answer = await tab.page.evaluate(() =>
        window.__e2e.messages().find((m) => m.role === "assistant" && m.text.startsWith("action: todo.update ")).text,
      );
      const payload = JSON.parse(answer.slice("action: todo.update ".length));
      assert(payload.id === "todo-1", `the action's own payload is kept: ${answer}`);
      const todo = payload.todo || {};
      assert(
        todo.list === "work" && todo.title === "Buy milk" && todo.notes === "two litres" && todo.done === true &&
          todo.size === "l",
        `the form's values, nested by their dotted names: ${answer}`,
      );
      assert(payload.owner === "Sam", `an editable Text's value is a field too: ${answer}`);
      await tab.shot("widget-form-answered");
      s.finish();
    },
  };
}
