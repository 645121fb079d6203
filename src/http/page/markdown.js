// The Markdown renderer of the gateway's chat page: it turns an assistant's
// Markdown (and a widget's Markdown component, through widgets.js's
// setMarkdownRenderer) into safe DOM. The vendored marked parses GitHub
// Flavoured Markdown with raw HTML shown as text; the vendored DOMPurify then
// sanitizes the result (no scripts, handlers, javascript: URLs, frames, forms
// or styles) and hands back a fragment this module finishes: links open in a
// new tab without an opener, images load only from data: URLs or this origin
// (the page's CSP would refuse any other), fenced code gets a Copy button, and
// an answer's annotations become numbered citation markers and a Sources list.
// It also exports the two URL checks content.js shares (webUrl, isPageImage).
//
// Streaming: the page re-renders a message on every text delta. Parsing and
// sanitizing the whole text again is linear in its length and takes a few
// milliseconds for answers up to ~20 KB, which is cheaper and simpler than
// patching the DOM; a caller that shows longer texts should render at most
// once per animation frame.

import { Marked } from "./vendor/marked.esm.js";
import DOMPurify from "./vendor/purify.es.mjs";

// ---------------------------------------------------------------------------
// Public API
// ---------------------------------------------------------------------------

let renderCount = 0;

/**
 * A numbering of the sources cited in one message: every distinct source gets
 * the next number the first time it is cited, so a message's parts can share
 * one numbering and one Sources list (pass it as `options.citations`).
 */
export function createCitations() {
  renderCount += 1;
  return { prefix: `c-src-${renderCount}`, byKey: new Map(), list: [] };
}

/**
 * Renders Markdown as a `div.c-markdown` element; it never throws. Options:
 * `annotations`: ChatKit `Annotation`s of this text (a citation marker goes at
 * each one's `index`, a character offset into `text`); `citations`: a shared
 * numbering from createCitations(); `sources`: whether to add the Sources list
 * after the text (default: yes, unless a shared numbering was given, whose
 * owner adds it with renderSources). Called with the text alone it fits
 * widgets.js's `setMarkdownRenderer(fn)`.
 */
export function renderMarkdown(text, options = {}) {
  const container = document.createElement("div");
  container.className = "c-markdown";
  const source = typeof text === "string" ? text : String(text ?? "");
  const citations = options?.citations ?? createCitations();
  const ownSources = options?.sources ?? !options?.citations;
  try {
    const marked = withMarkers(source, Array.isArray(options?.annotations) ? options.annotations : [], citations);
    const fragment = sanitize(parser().parse(marked));
    // Placeholders leave attributes before the URL checks below read them.
    moveAttributePlaceholders(fragment);
    finishLinks(fragment);
    finishImages(fragment);
    finishCode(fragment);
    finishTables(fragment);
    placeMarkers(fragment, citations);
    container.append(fragment);
  } catch (error) {
    // A parser or sanitizer failure shows the source as text, which is always safe.
    console.warn("markdown: rendering failed; showing plain text", error);
    container.replaceChildren(document.createTextNode(source));
    container.classList.add("c-markdown-plain");
  }
  if (ownSources) {
    const list = renderSources(citations);
    if (list) {
      container.append(list);
    }
  }
  return container;
}

/**
 * The Sources list of a numbering (a collapsed `details.c-sources`), or null
 * when nothing was cited: a link and its host for URL sources, the title and
 * file name for file sources, the title and description for entities.
 */
export function renderSources(citations) {
  if (!citations?.list?.length) {
    return null;
  }
  const details = el("details", "c-sources");
  const summary = el("summary", "c-sources-summary", `Sources (${citations.list.length})`);
  const list = el("ol", "c-source-list");
  citations.list.forEach((source, i) => {
    const item = el("li", "c-source");
    item.id = `${citations.prefix}-${i + 1}`;
    item.value = i + 1;
    const href = source.type === "url" ? webUrl(source.url) : null;
    const title = sourceTitle(source);
    if (href) {
      const link = externalLink(href, title);
      link.className = "c-source-title";
      item.append(link, el("span", "c-source-meta", new URL(href).host));
    } else {
      item.append(el("span", "c-source-title", title));
      const meta = source.type === "file" ? source.filename : source.description;
      if (typeof meta === "string" && meta && meta !== title) {
        item.append(el("span", "c-source-meta", meta));
      }
    }
    list.append(item);
  });
  details.append(summary, list);
  return details;
}

// ---------------------------------------------------------------------------
// Parsing and sanitizing
// ---------------------------------------------------------------------------

let markedInstance = null;

/** The shared marked instance: GFM, raw HTML escaped so it reads as the text it is. */
function parser() {
  markedInstance ??= new Marked({
    async: false,
    gfm: true,
    breaks: false,
    renderer: {
      html({ text, block }) {
        const escaped = escapeHtml(text);
        return block ? `<p>${escaped}</p>` : escaped;
      },
    },
  });
  return markedInstance;
}

// Markdown needs text, lists, tables, code, quotes, links and images; nothing
// that runs, loads a document, submits or restyles the page is kept, even if a
// future marked emitted it.
const PURIFY_CONFIG = {
  USE_PROFILES: { html: true },
  FORBID_TAGS: [
    "style", "link", "meta", "base", "form", "button", "textarea", "select", "option", "iframe", "frame",
    "frameset", "object", "embed", "template", "svg", "math", "audio", "video", "source", "track", "dialog",
  ],
  FORBID_ATTR: ["style", "id", "name", "srcset", "form", "formaction", "tabindex", "autofocus"],
  ALLOW_DATA_ATTR: false,
  RETURN_DOM_FRAGMENT: true,
};

function sanitize(html) {
  const fragment = DOMPurify.sanitize(html, PURIFY_CONFIG);
  // Only the classes this module sets (and a code block's language) are kept, so
  // nothing in a message can borrow the page's own styles.
  for (const element of fragment.querySelectorAll("[class]")) {
    if (element.localName !== "code") {
      element.removeAttribute("class");
    }
  }
  // GFM task lists are the only inputs Markdown makes: read-only checkboxes.
  for (const input of fragment.querySelectorAll("input")) {
    if (input.type === "checkbox") {
      input.disabled = true;
    } else {
      input.remove();
    }
  }
  return fragment;
}

// ---------------------------------------------------------------------------
// Links, images, code and tables
// ---------------------------------------------------------------------------

/** Links to the web or mail open in a new tab without an opener; any other link becomes its text. */
function finishLinks(fragment) {
  for (const link of fragment.querySelectorAll("a")) {
    // DOMPurify drops a refused URL but keeps the element, so no href means refused.
    const href = link.getAttribute("href") ?? "";
    let url = null;
    try {
      url = href.trim() ? new URL(href, document.baseURI) : null;
    } catch {
      url = null;
    }
    if (!url || !["http:", "https:", "mailto:", "tel:"].includes(url.protocol)) {
      link.replaceWith(...link.childNodes);
      continue;
    }
    link.target = "_blank";
    link.rel = "noopener noreferrer nofollow";
  }
}

/** Images come from data: URLs or this origin; any other becomes a link to it, as the CSP would block it. */
function finishImages(fragment) {
  for (const image of fragment.querySelectorAll("img")) {
    const src = image.getAttribute("src") ?? "";
    if (isPageImage(src)) {
      image.alt ||= "";
      image.decoding = "async";
      continue;
    }
    const href = webUrl(src);
    const label = image.alt || "image";
    image.replaceWith(href ? externalLink(href, label) : document.createTextNode(label));
  }
}

let copyCount = 0;

/** Wraps each fenced block in a frame with its language and a Copy button. */
function finishCode(fragment) {
  for (const pre of fragment.querySelectorAll("pre")) {
    const code = pre.querySelector("code") ?? pre;
    const language = /^language-([\w+#.-]{1,32})$/.exec(code.getAttribute("class") ?? "")?.[1] ?? "";
    code.removeAttribute("class");
    if (language) {
      code.className = `language-${language}`;
    }
    copyCount += 1;
    const frame = el("div", "c-code");
    const bar = el("div", "c-code-bar");
    const label = el("span", "c-code-lang", language || "text");
    const button = el("button", "c-copy", "Copy");
    button.type = "button";
    button.setAttribute("aria-label", language ? `Copy ${language} code` : "Copy code");
    const status = el("span", "c-sr-only");
    status.setAttribute("role", "status");
    button.addEventListener("click", () => copyCode(code, button, status));
    bar.append(label, button, status);
    pre.replaceWith(frame);
    pre.classList.add("c-pre");
    frame.append(bar, pre);
  }
}

/** Copies a block's text (read when clicked, so citation markers moved out of it never count). */
async function copyCode(code, button, status) {
  const text = code.textContent;
  try {
    if (!navigator.clipboard?.writeText) {
      throw new Error("no clipboard API");
    }
    await navigator.clipboard.writeText(text);
    button.textContent = "Copied";
    status.textContent = "Code copied to the clipboard";
  } catch {
    // Without clipboard access (an insecure origin, a denied permission) the
    // code is selected, so the keyboard's copy shortcut still works.
    window.getSelection()?.selectAllChildren(code);
    button.textContent = "Selected";
    status.textContent = "Copying was refused; the code is selected instead";
  }
  setTimeout(() => {
    button.textContent = "Copy";
    status.textContent = "";
  }, 2000);
}

/** Wide tables scroll inside their own box instead of widening the message. */
function finishTables(fragment) {
  for (const table of fragment.querySelectorAll("table")) {
    const wrap = el("div", "c-table-wrap");
    table.replaceWith(wrap);
    wrap.append(table);
  }
}

// ---------------------------------------------------------------------------
// Citations
// ---------------------------------------------------------------------------

// A citation's place in the text is held by a private-use character pair
// around its number while marked and DOMPurify run, then swapped for the
// marker element: text cannot carry elements through the sanitizer, and these
// characters pass through both untouched (the source's own are replaced first).
const OPEN = "\uE000";
const CLOSE = "\uE001";
const PLACEHOLDER = /\uE000(\d+)\uE001/g;
const ENCODED_PLACEHOLDER = /%EE%80%80(\d+)%EE%80%81/gi;
const HAS_ENCODED_PLACEHOLDER = /%EE%80%80\d+%EE%80%81/i;

/** The number of `source` in `citations`, adding it if it is new. */
function cite(citations, source) {
  const key = sourceKey(source);
  let number = citations.byKey.get(key);
  if (!number) {
    citations.list.push(source);
    number = citations.list.length;
    citations.byKey.set(key, number);
  }
  return number;
}

function sourceKey(source) {
  switch (source.type) {
    case "url":
      return `url:${source.url}`;
    case "file":
      return `file:${source.filename}:${source.title}`;
    case "entity":
      return `entity:${source.id}`;
    default:
      return `other:${JSON.stringify(source)}`;
  }
}

/**
 * The text with a placeholder at each annotation's offset. Sources are
 * numbered in the order their first citation appears in the text; annotations
 * without an offset are numbered after those and only listed. Offsets count
 * Unicode code points, as Python (ChatKit's server side) counts string length.
 */
function withMarkers(text, annotations, citations) {
  const clean = text.replace(/[\uE000\uE001]/g, "\uFFFD");
  const valid = annotations
    .map((annotation, order) => ({ annotation, order }))
    .filter(({ annotation }) => annotation?.source && typeof annotation.source === "object");
  const position = (annotation) => (Number.isInteger(annotation.index) && annotation.index >= 0 ? annotation.index : Infinity);
  valid.sort((a, b) => position(a.annotation) - position(b.annotation) || a.order - b.order);
  const places = [];
  const offsets = codeUnitOffsets(clean);
  for (const { annotation } of valid) {
    const number = cite(citations, annotation.source);
    const at = position(annotation);
    if (at !== Infinity && !places.some((p) => p.at === at && p.number === number)) {
      places.push({ at, number, unit: offsets(at) });
    }
  }
  let out = "";
  let from = 0;
  for (const { unit, number } of places) {
    out += `${clean.slice(from, unit)}${OPEN}${number}${CLOSE}`;
    from = unit;
  }
  return out + clean.slice(from);
}

/** Maps code-point offsets to UTF-16 offsets (the identity unless the text has surrogate pairs). */
function codeUnitOffsets(text) {
  if (!/[\uD800-\uDBFF]/.test(text)) {
    return (at) => Math.min(at, text.length);
  }
  return (at) => {
    let unit = 0;
    for (let point = 0; point < at && unit < text.length; point += 1) {
      const code = text.charCodeAt(unit);
      unit += code >= 0xd800 && code <= 0xdbff && unit + 1 < text.length ? 2 : 1;
    }
    return unit;
  };
}

/**
 * Takes the placeholders out of attributes (marked puts one into a link's URL
 * when an offset falls inside it) and puts them back as text just after the
 * element, where placeMarkers turns them into markers like any other.
 */
function moveAttributePlaceholders(fragment) {
  for (const element of fragment.querySelectorAll("*")) {
    let moved = "";
    for (const attribute of [...element.attributes]) {
      const value = attribute.value;
      if (value.includes(OPEN) || HAS_ENCODED_PLACEHOLDER.test(value)) {
        const cleaned = value
          .replace(PLACEHOLDER, (_, n) => ((moved += `${OPEN}${n}${CLOSE}`), ""))
          .replace(ENCODED_PLACEHOLDER, (_, n) => ((moved += `${OPEN}${n}${CLOSE}`), ""));
        element.setAttribute(attribute.name, cleaned);
      }
    }
    if (moved) {
      element.after(moved);
    }
  }
}

/**
 * Swaps every placeholder for its marker. A placeholder inside a link or a
 * code block moves to just after it: markers cannot nest in links, and copied
 * code must stay clean.
 */
function placeMarkers(fragment, citations) {
  const walker = document.createTreeWalker(fragment, NodeFilter.SHOW_TEXT);
  const nodes = [];
  while (walker.nextNode()) {
    if (walker.currentNode.data.includes(OPEN)) {
      nodes.push(walker.currentNode);
    }
  }
  for (const node of nodes) {
    const outer = node.parentElement?.closest("a, pre");
    if (outer) {
      const numbers = [];
      node.data = node.data.replace(PLACEHOLDER, (_, n) => (numbers.push(Number(n)), ""));
      afterOuter(outer).after(...numbers.map((n) => marker(citations, n)));
      continue;
    }
    const parts = [];
    let from = 0;
    for (const match of node.data.matchAll(PLACEHOLDER)) {
      parts.push(node.data.slice(from, match.index), marker(citations, Number(match[1])));
      from = match.index + match[0].length;
    }
    parts.push(node.data.slice(from));
    node.replaceWith(...parts.filter((part) => part !== ""));
  }
}

/** The element a moved marker follows: a code block's frame rather than its `pre`. */
function afterOuter(element) {
  return element.closest(".c-code") ?? element;
}

/** A superscript `[n]`: a link to the source for URL sources, to its Sources entry otherwise. */
function marker(citations, number) {
  const source = citations.list[number - 1];
  const sup = el("sup", "c-cite");
  const title = source ? sourceTitle(source) : `Source ${number}`;
  const href = source?.type === "url" ? webUrl(source.url) : null;
  let link;
  if (href) {
    link = externalLink(href, `[${number}]`);
  } else {
    const id = `${citations.prefix}-${number}`;
    link = el("a", null, `[${number}]`);
    link.href = `#${id}`;
    // The Sources list starts collapsed; open it so the jump lands on a visible entry.
    link.addEventListener("click", () => {
      document.getElementById(id)?.closest("details")?.setAttribute("open", "");
    });
  }
  link.className = "c-cite-link";
  link.title = title;
  link.setAttribute("aria-label", `Source ${number}: ${title}`);
  sup.append(link);
  return sup;
}

function sourceTitle(source) {
  const title = [source.title, source.filename, source.label, source.url, source.id].find((v) => typeof v === "string" && v.trim());
  return title ? title.trim() : "Untitled source";
}

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/** An element with an optional class and text; content.js builds with it too. */
export function el(tag, className, text) {
  const element = document.createElement(tag);
  if (className) {
    element.className = className;
  }
  if (text !== undefined) {
    element.textContent = text;
  }
  return element;
}

/** A link that opens `href` (already checked to be http(s)) in a new tab without an opener. */
function externalLink(href, text) {
  const link = el("a", null, text);
  link.href = href;
  link.target = "_blank";
  link.rel = "noopener noreferrer nofollow";
  return link;
}

/** `value` as an absolute http(s) URL (relative to the page), or null for any other scheme or none. */
export function webUrl(value) {
  if (typeof value !== "string" || !value.trim()) {
    return null;
  }
  try {
    const url = new URL(value, document.baseURI);
    return url.protocol === "http:" || url.protocol === "https:" ? url.href : null;
  } catch {
    return null;
  }
}

/** Whether the page's CSP lets `src` load as an image: a data: image or a same-origin URL. */
export function isPageImage(src) {
  if (typeof src !== "string" || !src.trim()) {
    return false;
  }
  if (/^data:image\/[a-z0-9.+-]+[;,]/i.test(src)) {
    return true;
  }
  try {
    const url = new URL(src, document.baseURI);
    return (url.protocol === "http:" || url.protocol === "https:") && url.origin === location.origin;
  } catch {
    return false;
  }
}

function escapeHtml(text) {
  return String(text).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
}
