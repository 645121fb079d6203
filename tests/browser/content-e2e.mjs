// The turn-content scenario of e2e.mjs, against the echo responder's showcase
// turns: `/markdown` renders its link and code block and neutralizes its
// script tag and handler, `/cite` shows citation markers and its sources,
// `/workflow` shows every task complete, and `/image` shows the picture.

/** Sends `text` in the open thread (or a new chat) and waits until an item of `selector` shows. */
async function turnShowing(tab, text, selector, what) {
  await tab.send(text);
  await tab.until(what, (css) => document.querySelector(css) !== null, selector);
}

export function contentScenarios(assert) {
  return {
    async content(s) {
      const [base] = s.bases;
      const tab = await s.tab("content-tab", s.pageUrl(base));
      await turnShowing(tab, "/markdown", "#messages .message.assistant pre code", "the Markdown answer shows its code block");
      await tab.until("the thread is open", () => new URLSearchParams(location.search).has("thread"));
      const markdown = await tab.page.evaluate(() => {
        const bubble = document.querySelector("#messages .message.assistant .bubble");
        const link = bubble.querySelector('a[href="https://example.com/docs"]');
        return {
          link: link ? { text: link.textContent, rel: link.rel, target: link.target } : null,
          code: bubble.querySelector("pre code").textContent,
          scripts: bubble.querySelectorAll("script").length,
          handlers: [...bubble.querySelectorAll("*")].filter((e) => [...e.attributes].some((a) => a.name.startsWith("on"))).length,
          owned: window.__owned === true,
          copy: bubble.querySelector("pre") ? bubble.querySelector("button")?.getAttribute("aria-label") || bubble.querySelector("button")?.textContent : null,
        };
      });
      assert(markdown.link && markdown.link.text === "link to the docs", `the link renders: ${JSON.stringify(markdown)}`);
      assert(markdown.link.rel.includes("noopener") && markdown.link.target === "_blank", `the link opens safely: ${JSON.stringify(markdown)}`);
      assert(markdown.code.includes('println!("hello");'), `the code block renders: ${JSON.stringify(markdown)}`);
      assert(markdown.scripts === 0 && markdown.handlers === 0 && !markdown.owned, `the script and the handler are neutralized: ${JSON.stringify(markdown)}`);
      assert(Boolean(markdown.copy), "the code block has a named copy button");
      await tab.shot("content-markdown");

      await turnShowing(tab, "/cite", "#messages .message.assistant sup", "the cited answer shows its markers");
      const cited = await tab.page.evaluate(() => {
        const bubbles = [...document.querySelectorAll("#messages .message.assistant .bubble")];
        const bubble = bubbles[bubbles.length - 1];
        return {
          markers: [...bubble.querySelectorAll("sup")].map((e) => e.textContent.trim()),
          text: bubble.textContent,
          sourceLink: Boolean(bubble.querySelector('a[href="https://example.com/chatkit"]')),
        };
      });
      assert(cited.markers.length === 2, `two citation markers: ${JSON.stringify(cited)}`);
      assert(cited.sourceLink && cited.text.includes("storage.md"), `the sources list the page and the file: ${JSON.stringify(cited)}`);
      await tab.shot("content-cited");

      await turnShowing(tab, "/workflow", "#messages details.c-workflow", "the workflow shows");
      await tab.until("the workflow's three tasks are complete and its answer follows", () => {
        const flow = document.querySelector("#messages details.c-workflow");
        const texts = window.__e2e.messages().map((m) => m.text);
        return flow && flow.textContent.includes("Drafting the answer") && texts.includes("echo: the workflow is done") &&
          !flow.textContent.includes("Working");
      });
      // Done, the workflow is closed, as its item says; the keyboard opens it (a key press first puts
      // Chromium in keyboard mode).
      const open = () => tab.page.evaluate(() => document.querySelector("#messages details.c-workflow").open);
      assert((await open()) === false, "a finished workflow is closed");
      await tab.page.locator("#messages details.c-workflow summary").first().focus();
      await tab.page.keyboard.press("Shift");
      await tab.page.keyboard.press("Enter");
      await tab.until("the workflow opens by keyboard", () => document.querySelector("#messages details.c-workflow").open);
      await tab.shot("content-workflow");

      await turnShowing(tab, "/image", '#messages .message img[src^="data:image/png"]', "the generated image shows");
      const loaded = await tab.page.evaluate(() => {
        const images = [...document.querySelectorAll('#messages .message img[src^="data:image/png"]')];
        return images.every((img) => img.complete && img.naturalWidth === 24);
      });
      assert(loaded, "the image decoded");
      await tab.shot("content-image");
      s.finish();
    },
  };
}
