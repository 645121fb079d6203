// The widget renderer of the gateway's chat page: it turns a ChatKit widget
// tree (the components of openai-chatkit's widgets.py: Card, ListView, Basic
// and everything they hold) into DOM, applies the streamed widget updates to a
// tree, and renders a tree as plain text. This file holds the public API,
// colours and layout, the containers, text and media; the form controls and
// actions live in widgets-forms.js and charts in widgets-chart.js. This file
// is still longer than the house's ~600 lines: its sections (API, tree
// helpers, colours and layout props, icons, containers, text, media) share
// the colour and layout helpers, and a fourth module would be one more file
// for the gateway to serve. No dependencies, no build step: the page loads it
// as an ES module under a CSP that allows only same-origin scripts (and styles
// set from script).

import { CONTROLS, bindForm, editableText, fireAction } from "./widgets-forms.js";
import { chartText, renderChart } from "./widgets-chart.js";

// ---------------------------------------------------------------------------
// Public API
// ---------------------------------------------------------------------------

let markdownRenderer = null;

/**
 * Sets the function that renders Markdown components (`fn(text) -> HTMLElement`),
 * or clears it with `null`. Until one is set, Markdown shows as plain text.
 */
export function setMarkdownRenderer(fn) {
  markdownRenderer = typeof fn === "function" ? fn : null;
}

let renderCount = 0;

/**
 * Renders a widget root (or any component) as an element. `ctx.onAction(action,
 * info)` receives every action a control fires; it never throws to the caller:
 * a component that cannot render shows its text instead.
 */
export function renderWidget(root, ctx = {}) {
  renderCount += 1;
  const env = {
    ctx: { itemId: ctx.itemId ?? null, onAction: typeof ctx.onAction === "function" ? ctx.onAction : () => undefined },
    // Field ids must be unique on a page that shows many widgets.
    uid: `w${renderCount}`,
    labelled: new Set(),
    root: null,
  };
  try {
    collectLabels(root, env.labelled);
  } catch {
    // A malformed tree only loses its label associations.
  }
  const element = renderNode(root, env);
  element.classList.add("w-root");
  env.root = element;
  return element;
}

/**
 * Applies one streamed widget update to a widget tree and returns the new tree.
 * It never changes `root`: the changed path is copied, the rest is shared. An
 * update it does not know returns `root` unchanged.
 */
export function applyWidgetUpdate(root, update) {
  if (!update || typeof update !== "object") {
    return root;
  }
  switch (update.type) {
    case "widget.root.updated":
      return update.widget ?? root;
    case "widget.component.updated":
      return mapById(root, update.component_id, () => update.component);
    case "widget.streaming_text.value_delta":
      return mapById(root, update.component_id, (node) => ({
        ...node,
        value: `${typeof node.value === "string" ? node.value : ""}${update.delta ?? ""}`,
      }));
    default:
      return root;
  }
}

/** A plain-text rendering of a widget tree, for copying and as a fallback. */
export function widgetText(root) {
  try {
    return textOf(root, 0).replace(/\n{3,}/g, "\n\n").trim();
  } catch {
    return "";
  }
}

// ---------------------------------------------------------------------------
// Tree helpers (pure)
// ---------------------------------------------------------------------------

/** The node's children as a list, whether the tree holds a list, one node or none. */
function childList(node) {
  const children = node?.children;
  if (Array.isArray(children)) {
    return children;
  }
  return children && typeof children === "object" ? [children] : [];
}

/** Copies the path to every node whose `id` is `id`, replacing that node by `change(node)`. */
function mapById(node, id, change) {
  if (!node || typeof node !== "object") {
    return node;
  }
  if (node.id === id) {
    return change(node);
  }
  const children = node.children;
  if (Array.isArray(children)) {
    let changed = false;
    const next = children.map((child) => {
      const mapped = mapById(child, id, change);
      changed ||= mapped !== child;
      return mapped;
    });
    return changed ? { ...node, children: next } : node;
  }
  if (children && typeof children === "object") {
    const mapped = mapById(children, id, change);
    return mapped !== children ? { ...node, children: mapped } : node;
  }
  return node;
}

function collectLabels(node, into) {
  if (!node || typeof node !== "object") {
    return;
  }
  if (node.type === "Label" && typeof node.fieldName === "string") {
    into.add(node.fieldName);
  }
  childList(node).forEach((child) => collectLabels(child, into));
}

// Containers whose children read side by side; the others stack them in lines.
const INLINE_TYPES = new Set(["Row", "ListViewItem", "Button"]);

function textOf(node, depth) {
  if (node == null || depth > 64) {
    return "";
  }
  if (typeof node !== "object") {
    return String(node);
  }
  switch (node.type) {
    case "Chart":
      return chartText(node);
    case "Image":
      return typeof node.alt === "string" ? node.alt : "";
    case "Icon":
    case "Divider":
    case "Spacer":
      return "";
    case "Select": {
      const options = Array.isArray(node.options) ? node.options : [];
      const chosen = options.find((o) => o && o.value === node.defaultValue);
      return String(chosen?.label ?? node.placeholder ?? "");
    }
    default:
      break;
  }
  const own = [node.value, node.label, node.title].find((v) => typeof v === "string" || typeof v === "number");
  const parts = own != null ? [String(own)] : [];
  if (node.status && typeof node.status.text === "string") {
    parts.unshift(node.status.text);
  }
  for (const child of childList(node)) {
    const text = textOf(child, depth + 1);
    if (text) {
      parts.push(text);
    }
  }
  for (const key of ["cancel", "confirm"]) {
    if (node[key] && typeof node[key].label === "string") {
      parts.push(node[key].label);
    }
  }
  return parts.join(INLINE_TYPES.has(node.type) ? " " : "\n");
}

// ---------------------------------------------------------------------------
// DOM helpers, colours and layout props
// ---------------------------------------------------------------------------

/** Creates an element with attributes (`class`, plain attributes, or `on*` listeners) and children. */
function h(tag, attrs = {}, ...children) {
  const element = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value == null || value === false) {
      continue;
    }
    if (key === "class") {
      element.className = value;
    } else if (key.startsWith("on") && typeof value === "function") {
      element.addEventListener(key.slice(2), value);
    } else {
      element.setAttribute(key, value === true ? "" : String(value));
    }
  }
  element.append(...children.filter((c) => c != null && c !== false));
  return element;
}

// The named colours of ChatKit's props, by the prop kind that accepts them;
// each maps to a CSS variable in widgets.css so the theme can change them.
const COLOR_TOKENS = {
  text: ["prose", "primary", "emphasis", "secondary", "tertiary", "success", "warning", "danger", "info", "discovery", "caution"],
  background: ["surface", "surface-secondary", "surface-tertiary", "surface-elevated", "surface-elevated-secondary"],
  border: ["default", "subtle", "strong"],
  chart: ["blue", "purple", "orange", "green", "red", "yellow", "pink"],
};
const TOKEN_SETS = Object.fromEntries(Object.entries(COLOR_TOKENS).map(([k, v]) => [k, new Set(v)]));

// Hue and saturation of the primitive palette (`blue-500`); the step sets the lightness.
const HUES = {
  gray: [220, 9], slate: [215, 20], zinc: [240, 5], red: [0, 72], orange: [25, 90], amber: [38, 92],
  yellow: [48, 90], lime: [85, 70], green: [142, 60], emerald: [160, 70], teal: [173, 70], cyan: [189, 80],
  sky: [199, 85], blue: [217, 85], indigo: [239, 75], violet: [258, 80], purple: [270, 70], fuchsia: [292, 75],
  pink: [330, 75], rose: [350, 80],
};

/**
 * A CSS colour for a ChatKit colour value of one prop kind: a token of that
 * kind (or a text token), a primitive like `blue-500`, `alpha-20`, or any CSS
 * colour string. Anything else gives `undefined`, so the default stays.
 */
function resolveColor(value, kind = "text") {
  if (value && typeof value === "object") {
    const dark = window.matchMedia?.("(prefers-color-scheme: dark)").matches;
    return resolveColor(dark ? value.dark : value.light, kind);
  }
  if (typeof value !== "string" || value === "") {
    return undefined;
  }
  for (const k of [kind, "text", "background", "border"]) {
    if (TOKEN_SETS[k]?.has(value)) {
      return `var(--w-${k}-${value})`;
    }
  }
  const primitive = /^([a-z]+)-(\d{2,3})$/.exec(value);
  if (primitive && HUES[primitive[1]]) {
    const [hue, saturation] = HUES[primitive[1]];
    const step = Math.min(950, Math.max(50, Number(primitive[2])));
    return `hsl(${hue} ${saturation}% ${Math.round(97 - (step / 1000) * 95)}%)`;
  }
  const alpha = /^alpha-(\d{1,3})$/.exec(value);
  if (alpha) {
    return `color-mix(in srgb, currentColor ${Math.min(100, Number(alpha[1]))}%, transparent)`;
  }
  // Plain CSS colours pass through; nothing that could load a resource does.
  if (!/url\(|image/i.test(value) && globalThis.CSS?.supports?.("color", value)) {
    return value;
  }
  return undefined;
}

/**
 * Sets a colour prop on an element. A `{light, dark}` pair becomes two custom
 * properties that widgets.css picks between by theme, so it follows a theme change.
 */
function applyColor(element, property, value, kind) {
  if (value && typeof value === "object") {
    const light = resolveColor(value.light, kind);
    const dark = resolveColor(value.dark, kind);
    if (light || dark) {
      element.style.setProperty(`--w-${property}-l`, light ?? dark);
      element.style.setProperty(`--w-${property}-d`, dark ?? light);
      element.classList.add(`w-themed-${property}`);
    }
    return;
  }
  const color = resolveColor(value, kind);
  if (color) {
    const css = { color: "color", bg: "background", border: "borderColor" }[property];
    element.style[css] = color;
  }
}

/** A length: numbers are px, strings are CSS. */
function px(value) {
  if (typeof value === "number" && Number.isFinite(value)) {
    return `${value}px`;
  }
  return typeof value === "string" ? value : undefined;
}

/** A spacing: numbers are ChatKit spacing units (4px), strings are CSS. */
function space(value) {
  if (typeof value === "number" && Number.isFinite(value)) {
    return `${value * 4}px`;
  }
  return typeof value === "string" ? value : undefined;
}

/** Sets `padding` or `margin` from a unit, a CSS string or a `{top, right, bottom, left, x, y}` object. */
function applySpacing(element, property, value) {
  if (value && typeof value === "object") {
    const sides = { top: value.y, bottom: value.y, left: value.x, right: value.x };
    for (const side of ["top", "right", "bottom", "left"]) {
      const length = space(value[side] ?? sides[side]);
      if (length) {
        element.style[`${property}${side[0].toUpperCase()}${side.slice(1)}`] = length;
      }
    }
  } else if (space(value)) {
    element.style[property] = space(value);
  }
}

/** Sets width/height and their min/max forms, with `size`, `minSize` and `maxSize` as shorthands. */
function applySize(element, p) {
  const s = element.style;
  for (const [prefix, width, height] of [["", "width", "height"], ["min", "minWidth", "minHeight"], ["max", "maxWidth", "maxHeight"]]) {
    const both = px(p[prefix ? `${prefix}Size` : "size"]);
    const w = px(p[width]) ?? both;
    const hgt = px(p[height]) ?? both;
    if (w) {
      s[width] = w;
    }
    if (hgt) {
      s[height] = hgt;
    }
  }
  if (p.aspectRatio != null) {
    s.aspectRatio = String(p.aspectRatio);
  }
  if (p.flex != null) {
    s.flex = String(p.flex);
  }
}

const RADIUS = {
  "2xs": "2px", xs: "4px", sm: "6px", md: "8px", lg: "12px", xl: "16px", "2xl": "20px", "3xl": "24px",
  "4xl": "32px", full: "9999px", "100%": "100%", none: "0",
};

function borderValue(border) {
  if (typeof border === "number") {
    return `${border}px solid var(--w-border-default)`;
  }
  if (border && typeof border === "object" && typeof border.size === "number") {
    const color = resolveColor(border.color, "border") ?? "var(--w-border-default)";
    return `${border.size}px ${border.style ?? "solid"} ${color}`;
  }
  return undefined;
}

/** Sets `border` from a width, a `{size, color, style}` or per-edge `{top, …, x, y}`. */
function applyBorder(element, border) {
  const all = borderValue(border);
  if (all) {
    element.style.border = all;
    return;
  }
  if (!border || typeof border !== "object") {
    return;
  }
  const axes = { top: border.y, bottom: border.y, left: border.x, right: border.x };
  for (const side of ["top", "right", "bottom", "left"]) {
    const value = borderValue(border[side] ?? axes[side]);
    if (value) {
      element.style[`border${side[0].toUpperCase()}${side.slice(1)}`] = value;
    }
  }
}

const ALIGN = { start: "flex-start", center: "center", end: "flex-end", baseline: "baseline", stretch: "stretch" };
const JUSTIFY = {
  start: "flex-start", center: "center", end: "flex-end", between: "space-between", around: "space-around",
  evenly: "space-evenly", stretch: "stretch",
};

/** The flex layout props shared by Box, Row, Col, Form and (in part) ListViewItem. */
function applyLayout(element, p) {
  const s = element.style;
  if (p.gap != null) {
    s.gap = space(p.gap) ?? "";
  }
  if (p.padding != null) {
    applySpacing(element, "padding", p.padding);
  }
  if (p.margin != null) {
    applySpacing(element, "margin", p.margin);
  }
  if (ALIGN[p.align]) {
    s.alignItems = ALIGN[p.align];
  }
  if (JUSTIFY[p.justify]) {
    s.justifyContent = JUSTIFY[p.justify];
  }
  if (typeof p.wrap === "string") {
    s.flexWrap = p.wrap;
  }
  applySize(element, p);
  if (RADIUS[p.radius]) {
    s.borderRadius = RADIUS[p.radius];
  }
  if (p.border != null) {
    applyBorder(element, p.border);
  }
  if (p.background != null) {
    applyColor(element, "bg", p.background, "background");
  }
}

// ---------------------------------------------------------------------------
// Icons: a small built-in set drawn as 24×24 stroked paths
// ---------------------------------------------------------------------------

const ICON_PATHS = {
  check: "M5 12.5l4.5 4.5L19 7.5",
  x: "M6 6l12 12M18 6L6 18",
  plus: "M12 5v14M5 12h14",
  star: "M12 3.5l2.6 5.4 5.9.8-4.3 4.1 1 5.8L12 16.8l-5.2 2.8 1-5.8-4.3-4.1 5.9-.8z",
  info: "M12 21a9 9 0 100-18 9 9 0 000 18zM12 11v5M12 7.5v.5",
  warning: "M12 4L2.5 20h19zM12 10v4.5M12 17v.5",
  calendar: "M4 6.5h16V20H4zM4 10.5h16M8 4v4M16 4v4",
  clock: "M12 21a9 9 0 100-18 9 9 0 000 18zM12 7v5l3 2",
  mail: "M3.5 6h17v12h-17zM3.5 6.5l8.5 7 8.5-7",
  search: "M10.5 17a6.5 6.5 0 100-13 6.5 6.5 0 000 13zM15.5 15.5L20 20",
  user: "M12 12a4 4 0 100-8 4 4 0 000 8zM4.5 20a7.5 7.5 0 0115 0",
  "chevron-left": "M14.5 6l-6 6 6 6",
  "chevron-right": "M9.5 6l6 6-6 6",
  "check-circle": "M12 21a9 9 0 100-18 9 9 0 000 18zM8 12.5l2.8 2.7L16 9.5",
  "circle-question": "M12 21a9 9 0 100-18 9 9 0 000 18zM9.5 9.5a2.5 2.5 0 114 2c-1 .6-1.5 1.2-1.5 2.5M12 17v.5",
  "empty-circle": "M12 21a9 9 0 100-18 9 9 0 000 18z",
  "dots-horizontal": "M5.5 12h.5M12 12h.5M18 12h.5",
  "dots-vertical": "M12 5.5v.5M12 12v.5M12 18v.5",
  "external-link": "M14 4h6v6M20 4l-9 9M18 14v6H4V6h6",
  globe: "M12 21a9 9 0 100-18 9 9 0 000 18zM3 12h18M12 3c2.5 2.7 3.5 5.7 3.5 9s-1 6.3-3.5 9c-2.5-2.7-3.5-5.7-3.5-9s1-6.3 3.5-9z",
  "map-pin": "M12 21s-6.5-6-6.5-11a6.5 6.5 0 0113 0c0 5-6.5 11-6.5 11zM12 12.5a2.5 2.5 0 100-5 2.5 2.5 0 000 5z",
  phone: "M5 4h4l2 5-2.5 1.5a11 11 0 005 5L15 13l5 2v4a1.5 1.5 0 01-1.5 1.5A15.5 15.5 0 013.5 5.5 1.5 1.5 0 015 4z",
  play: "M7 4.5v15l12-7.5z",
  reload: "M19.5 12a7.5 7.5 0 11-2.2-5.3M19.5 4v4h-4",
  bolt: "M13 3L5 13.5h6L10 21l8-10.5h-6z",
  lightbulb: "M9 18h6M10 21h4M12 3a6 6 0 00-3.5 10.9c.6.5 1 1.2 1 2.1h5c0-.9.4-1.6 1-2.1A6 6 0 0012 3z",
  document: "M6 3h8l4 4v14H6zM14 3v4h4M9 12h6M9 16h6",
  sparkle: "M12 3l1.8 5.7L19.5 10.5l-5.7 1.8L12 18l-1.8-5.7L4.5 10.5l5.7-1.8z",
  chart: "M4 20h16M7 16v-5M12 16V6M17 16v-8",
  "settings-slider": "M4 7h10M18 7h2M4 17h2M10 17h10M16 5v4M8 15v4",
  book: "M5 4h10a3 3 0 013 3v13H8a3 3 0 01-3-3zM5 17a3 3 0 013-3h10",
  bug: "M8 9a4 4 0 018 0v5a4 4 0 01-8 0zM4 12h4M16 12h4M5 7l3 2M19 7l-3 2M5 18l3-2M19 18l-3-2",
  write: "M4 20h4L19 9l-4-4L4 16zM13.5 6.5l4 4",
};
// ChatKit's names that draw like one above, and the filled variants.
const ICON_ALIASES = {
  profile: "user", "profile-card": "user", name: "user", agent: "user", analytics: "chart", "book-open": "book",
  "book-closed": "book", notebook: "book", "notebook-pencil": "write", "write-alt": "write", "write-alt2": "write",
  "page-blank": "document", "square-text": "document", "sparkle-double": "sparkle", "lucide:check": "check",
  "lucide:x": "x", close: "x", alert: "warning", "check-circle-filled": "check-circle", "star-filled": "star",
};
const FILLED_ICONS = new Set(["star-filled", "check-circle-filled", "play", "bolt"]);
const ICON_SIZES = { xs: 12, sm: 14, md: 16, lg: 18, xl: 20, "2xl": 24, "3xl": 32 };

/**
 * An inline SVG icon. A decorative icon (inside a labelled button) is hidden
 * from assistive technology; a standalone one is an image named by `label`.
 * An unknown name draws a neutral dot, still named.
 */
function icon(name, { size, decorative = false, label } = {}) {
  const ns = "http://www.w3.org/2000/svg";
  const key = typeof name === "string" ? name : "";
  const path = ICON_PATHS[key] ?? ICON_PATHS[ICON_ALIASES[key]];
  const svg = document.createElementNS(ns, "svg");
  const pixels = ICON_SIZES[size] ?? 16;
  svg.setAttribute("viewBox", "0 0 24 24");
  svg.setAttribute("width", String(pixels));
  svg.setAttribute("height", String(pixels));
  svg.setAttribute("class", `w-icon${path ? "" : " w-icon-unknown"}`);
  if (decorative) {
    svg.setAttribute("aria-hidden", "true");
  } else {
    svg.setAttribute("role", "img");
    svg.setAttribute("aria-label", label ?? (key.replace(/^(lucide|vendor):/, "").replace(/-/g, " ") || "icon"));
  }
  const shape = document.createElementNS(ns, path ? "path" : "circle");
  if (path) {
    shape.setAttribute("d", path);
    shape.setAttribute("fill", FILLED_ICONS.has(key) ? "currentColor" : "none");
  } else {
    shape.setAttribute("cx", "12");
    shape.setAttribute("cy", "12");
    shape.setAttribute("r", "4");
    shape.setAttribute("fill", "currentColor");
  }
  svg.append(shape);
  return svg;
}

// ---------------------------------------------------------------------------
// Rendering: dispatch and the containers
// ---------------------------------------------------------------------------

/** Everything the control and chart modules need from this one, so they import nothing back. */
const KIT = { h, icon, px, space, resolveColor, applyColor, applySize, applyLayout, fieldId, render: renderNode, widgetText };

/**
 * Renders one component. Each render is guarded: a component whose props
 * break it, or an unknown type, shows as its text, and the rest still renders.
 */
function renderNode(node, env) {
  const type = node && typeof node === "object" && typeof node.type === "string" ? node.type : "";
  let element;
  try {
    const render = Object.hasOwn(RENDERERS, type) ? RENDERERS[type] : null;
    element = render ? render(node, env, KIT) : fallback(node, "unknown");
  } catch (error) {
    console.warn(`widgets: a ${type || "malformed"} component fell back to text:`, error);
    element = fallback(node, "broken");
  }
  element.dataset.widget = type || "unknown";
  if (node && (typeof node.id === "string" || typeof node.id === "number")) {
    element.dataset.componentId = String(node.id);
  }
  return element;
}

function fallback(node, why) {
  return h("span", { class: "w-fallback", "data-widget-fallback": why }, widgetText(node));
}

function appendChildren(parent, node, env) {
  for (const child of childList(node)) {
    parent.append(renderNode(child, env));
  }
  return parent;
}

/** The status line over a Card or ListView: a favicon or icon, then the text. */
function statusLine(status) {
  if (!status || typeof status !== "object") {
    return null;
  }
  const line = h("div", { class: "w-status" });
  if (typeof status.favicon === "string") {
    line.append(h("img", { class: `w-favicon${status.frame ? " w-frame" : ""}`, src: status.favicon, alt: "" }));
  } else if (status.icon) {
    line.append(icon(status.icon, { size: "sm", decorative: true }));
  }
  line.append(h("span", {}, String(status.text ?? "")));
  return line;
}

function themed(element, theme) {
  if (theme === "light" || theme === "dark") {
    element.classList.add(`w-theme-${theme}`);
  }
}

function Card(p, env) {
  const size = ["sm", "md", "lg", "full"].includes(p.size) ? p.size : "md";
  const card = h("div", { class: `w-card w-card-${size}` });
  themed(card, p.theme);
  applyColor(card, "bg", p.background, "background");
  const status = statusLine(p.status);
  const body = h(p.asForm ? "form" : "div", { class: "w-card-body" });
  if (p.padding != null) {
    applySpacing(body, "padding", p.padding);
    // Flush dividers and images reach the edge by this much.
    if (space(p.padding)) {
      body.style.setProperty("--w-pad", space(p.padding));
    }
  }
  appendChildren(body, p, env);

  const actions = [];
  if (p.cancel && typeof p.cancel === "object") {
    actions.push(cardButton(p.cancel, "secondary", false, env));
  }
  if (p.confirm && typeof p.confirm === "object") {
    actions.push(cardButton(p.confirm, "primary", Boolean(p.asForm), env));
  }
  const footer = actions.length ? h("div", { class: "w-card-actions" }, ...actions) : null;
  if (p.asForm) {
    // The footer sits inside the form, so its buttons carry the form's values
    // and the confirm button submits (and validates) it.
    bindForm(body, p.confirm?.action, env, "container");
    body.append(footer ?? "");
    card.append(status ?? "", body);
  } else {
    card.append(status ?? "", body, footer ?? "");
  }
  if (p.collapsed) {
    body.hidden = true;
    const toggle = h("button", { type: "button", class: "w-link", "aria-expanded": "false" }, "Show details");
    toggle.addEventListener("click", () => {
      body.hidden = !body.hidden;
      toggle.setAttribute("aria-expanded", String(!body.hidden));
      toggle.textContent = body.hidden ? "Show details" : "Hide details";
    });
    card.insertBefore(toggle, body);
  }
  return card;
}

function cardButton(cardAction, style, submit, env) {
  const button = h("button", { type: submit ? "submit" : "button", class: `w-btn w-btn-solid w-c-${style}` });
  button.textContent = String(cardAction.label ?? "");
  button.wAction = cardAction.action;
  button.wAuto = "container";
  button.addEventListener("click", () => {
    if (!(submit && button.form)) {
      fireAction(cardAction.action, button, env, "container");
    }
  });
  return button;
}

function ListView(p, env) {
  const view = h("div", { class: "w-listview" });
  themed(view, p.theme);
  const status = statusLine(p.status);
  const list = h("ul", { class: "w-list", role: "list" });
  const items = childList(p);
  const limit = typeof p.limit === "number" && p.limit >= 0 ? Math.floor(p.limit) : Infinity;
  items.forEach((item, index) => {
    const row = h("li", { class: "w-list-row" }, renderNode(item, env));
    row.hidden = index >= limit;
    list.append(row);
  });
  view.append(status ?? "", list);
  if (items.length > limit) {
    const more = h("button", { type: "button", class: "w-link w-show-more" }, "Show more");
    more.addEventListener("click", () => {
      const hidden = [...list.children].filter((row) => row.hidden);
      hidden.forEach((row) => {
        row.hidden = false;
      });
      more.remove();
      // Keyboard users continue where the new rows start.
      hidden[0]?.querySelector("button, [tabindex], input, select, textarea")?.focus();
    });
    view.append(more);
  }
  return view;
}

const INTERACTIVE = new Set(["Button", "Input", "Textarea", "Select", "DatePicker", "Checkbox", "RadioGroup", "Form"]);

function hasInteractive(node, depth = 0) {
  return depth < 32 && childList(node).some((c) => INTERACTIVE.has(c?.type) || c?.editable || hasInteractive(c, depth + 1));
}

function ListViewItem(p, env) {
  const clickable = p.onClickAction && typeof p.onClickAction === "object";
  // A clickable row is a real button unless it holds controls of its own,
  // which a button may not contain; then the row is a focusable group.
  const asButton = clickable && !hasInteractive(p);
  const item = h(asButton ? "button" : "div", { class: `w-lvi${clickable ? " w-lvi-clickable" : ""}` });
  if (asButton) {
    item.type = "button";
  } else if (clickable) {
    item.tabIndex = 0;
    item.setAttribute("role", "group");
  }
  applyLayout(item, { gap: p.gap ?? 3, align: p.align ?? "center" });
  appendChildren(item, p, env);
  if (clickable) {
    const fire = () => fireAction(p.onClickAction, item, env, "self");
    item.addEventListener("click", (event) => {
      // A control inside a row acts for itself, not for the row.
      if (asButton || !event.target.closest("button, input, select, textarea, label")) {
        fire();
      }
    });
    if (!asButton) {
      item.addEventListener("keydown", (event) => {
        if (event.target === item && (event.key === "Enter" || event.key === " ")) {
          event.preventDefault();
          fire();
        }
      });
    }
  }
  return item;
}

function flexBox(tag, direction) {
  return (p, env) => {
    const dir = p.direction === "row" || p.direction === "col" ? p.direction : direction;
    const box = h(tag, { class: `w-box w-${dir}` });
    applyLayout(box, p);
    return appendChildren(box, p, env);
  };
}

const Box = flexBox("div", "col");
const Row = flexBox("div", "row");
const Col = flexBox("div", "col");

function Form(p, env) {
  const form = flexBox("form", "col")(p, env);
  form.classList.add("w-form");
  bindForm(form, p.onSubmitAction, env, "self");
  return form;
}

function Basic(p, env) {
  const box = h("div", { class: "w-basic w-box w-col" });
  themed(box, p.theme);
  applyLayout(box, p);
  return appendChildren(box, p, env);
}

// What each Transition last showed, by widget item and position, so that only
// a change fades in: the chat page re-renders a whole widget on every streamed
// update, and fading unchanged content each time would flicker.
const transitionsSeen = new Map();
const TRANSITIONS_KEPT = 500;

function Transition(p, env) {
  const wrap = h("div", { class: "w-transition" });
  env.transitions = (env.transitions ?? 0) + 1;
  if (env.ctx.itemId != null) {
    const key = `${env.ctx.itemId}|${p.id ?? env.transitions}`;
    const shown = JSON.stringify(p.children ?? null);
    const before = transitionsSeen.get(key);
    if (before !== undefined && before !== shown) {
      wrap.classList.add("w-changed");
    }
    transitionsSeen.delete(key);
    transitionsSeen.set(key, shown);
    if (transitionsSeen.size > TRANSITIONS_KEPT) {
      transitionsSeen.delete(transitionsSeen.keys().next().value);
    }
  }
  return appendChildren(wrap, p, env);
}

// ---------------------------------------------------------------------------
// Text
// ---------------------------------------------------------------------------

/** The typography props of Text, Title, Caption and Label. */
function applyTypography(element, p, sizePrefix) {
  if (typeof p.size === "string") {
    element.classList.add(`w-${sizePrefix}-${p.size}`);
  }
  if (["normal", "medium", "semibold", "bold"].includes(p.weight)) {
    element.classList.add(`w-weight-${p.weight}`);
  }
  if (["start", "center", "end"].includes(p.textAlign)) {
    element.style.textAlign = p.textAlign;
  }
  if (p.italic) {
    element.style.fontStyle = "italic";
  }
  if (p.lineThrough) {
    element.style.textDecoration = "line-through";
  }
  if (p.truncate) {
    element.classList.add("w-truncate");
  }
  if (Number.isInteger(p.maxLines) && p.maxLines > 0) {
    element.classList.add("w-clamp");
    element.style.webkitLineClamp = String(p.maxLines);
  }
  if (Number.isInteger(p.minLines) && p.minLines > 0) {
    element.style.minHeight = `${p.minLines * 1.5}em`;
  }
  if (p.width != null) {
    element.style.width = px(p.width) ?? "";
  }
  if (p.color != null) {
    applyColor(element, "color", p.color, "text");
  }
}

function valueText(p) {
  if (typeof p.value !== "string" && typeof p.value !== "number") {
    throw new TypeError("the component has no text value");
  }
  return String(p.value);
}

function Text(p, env) {
  if (p.editable && typeof p.editable === "object") {
    return editableText(p, env, KIT);
  }
  const text = h("p", { class: `w-text${p.streaming ? " w-streaming" : ""}` }, valueText(p));
  applyTypography(text, p, "text");
  return text;
}

function Title(p) {
  const title = h("div", { class: "w-title", role: "heading", "aria-level": "3" }, valueText(p));
  applyTypography(title, p, "title");
  return title;
}

function Caption(p) {
  const caption = h("p", { class: "w-caption" }, valueText(p));
  applyTypography(caption, p, "caption");
  return caption;
}

function Markdown(p) {
  const source = valueText(p);
  if (markdownRenderer) {
    try {
      const rendered = markdownRenderer(source);
      if (rendered instanceof Node) {
        return h("div", { class: "w-markdown" }, rendered);
      }
    } catch (error) {
      console.warn("widgets: the Markdown renderer failed; showing plain text", error);
    }
  }
  // Until a vendored renderer is plugged in, the source shows as text with its
  // line breaks: never parsed as HTML, so nothing in it can run.
  return h("div", { class: "w-markdown w-markdown-plain" }, source);
}

function Label(p, env) {
  const id = fieldId(env, p.fieldName);
  // `for` names an input, select or textarea; a RadioGroup points back at the id instead.
  const label = h("label", { class: "w-label", for: id, id: `${id}-label` }, valueText(p));
  applyTypography(label, p, "text");
  return label;
}

/** The element id of a named field in this widget, shared by its Label. */
function fieldId(env, name) {
  return `${env.uid}-f-${String(name ?? "").replace(/[^A-Za-z0-9_.-]/g, "_")}`;
}

function Badge(p) {
  const color = ["secondary", "success", "danger", "warning", "info", "discovery"].includes(p.color) ? p.color : "secondary";
  const variant = ["solid", "soft", "outline"].includes(p.variant) ? p.variant : "soft";
  const size = ["sm", "md", "lg"].includes(p.size) ? p.size : "sm";
  if (typeof p.label !== "string" && typeof p.label !== "number") {
    throw new TypeError("a Badge needs a label");
  }
  return h("span", { class: `w-badge w-c-${color} w-badge-${variant} w-badge-${size}${p.pill ? " w-pill" : ""}` }, String(p.label));
}

// ---------------------------------------------------------------------------
// Media and spacing
// ---------------------------------------------------------------------------

function Image(p) {
  if (typeof p.src !== "string") {
    throw new TypeError("an Image needs a src");
  }
  // Under the page's CSP only data: and same-origin images load; others still
  // get an <img> so their alt text shows.
  // Remote images load lazily, as a long thread may hold many; data: URLs are already here.
  const lazy = p.src.startsWith("data:") ? null : "lazy";
  const img = h("img", { class: `w-image${p.frame ? " w-frame" : ""}${p.flush ? " w-flush" : ""}`, src: p.src, alt: p.alt ?? "", loading: lazy, decoding: "async" });
  const s = img.style;
  if (typeof p.fit === "string") {
    s.objectFit = p.fit;
  }
  if (typeof p.position === "string") {
    s.objectPosition = p.position;
  }
  applySize(img, p);
  if (RADIUS[p.radius]) {
    s.borderRadius = RADIUS[p.radius];
  }
  if (p.margin != null) {
    applySpacing(img, "margin", p.margin);
  }
  if (p.background != null) {
    applyColor(img, "bg", p.background, "background");
  }
  return img;
}

function Icon(p) {
  const wrap = h("span", { class: "w-icon-wrap" }, icon(p.name, { size: p.size }));
  if (p.color != null) {
    applyColor(wrap, "color", p.color, "text");
  }
  return wrap;
}

function Divider(p) {
  const hr = h("hr", { class: `w-divider${p.flush ? " w-flush" : ""}` });
  if (p.size != null) {
    hr.style.borderTopWidth = px(p.size) ?? "";
  }
  if (p.spacing != null) {
    hr.style.marginBlock = space(p.spacing) ?? "";
  }
  if (p.color != null) {
    applyColor(hr, "border", p.color, "border");
  }
  return hr;
}

function Spacer(p) {
  const spacer = h("div", { class: "w-spacer", "aria-hidden": "true" });
  if (p.minSize != null) {
    spacer.style.minWidth = px(p.minSize) ?? "";
    spacer.style.minHeight = px(p.minSize) ?? "";
  }
  return spacer;
}

const RENDERERS = {
  Card, ListView, ListViewItem, Basic, Box, Row, Col, Form, Transition,
  Text, Title, Caption, Markdown, Label, Badge, Image, Icon, Divider, Spacer,
  Chart: (p, env) => renderChart(p, KIT),
  ...CONTROLS,
};
