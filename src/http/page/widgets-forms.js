// The form controls of the widget renderer (Button, Input, Textarea, Select,
// DatePicker, Checkbox, RadioGroup, editable Text) and the way widget actions
// fire: the values of the named fields in the enclosing Form (or Card with
// `asForm`) are merged into a copy of the action's payload, dotted names nest,
// and the loading state follows the action's `loadingBehavior`. widgets.js
// dispatches here; everything it shares arrives as `kit`, so this module
// imports nothing back.

// ---------------------------------------------------------------------------
// Form values
// ---------------------------------------------------------------------------

// Names that would reach an object's prototype instead of a field.
const UNSAFE_KEYS = new Set(["__proto__", "prototype", "constructor"]);

function isPlainObject(value) {
  return value !== null && typeof value === "object" && !Array.isArray(value);
}

/** Sets `todo.title` as `{todo: {title}}`; a path through a non-object or an unsafe key is dropped. */
function setPath(target, name, value) {
  const keys = name.split(".");
  if (keys.some((k) => k === "" || UNSAFE_KEYS.has(k))) {
    return;
  }
  let node = target;
  for (const key of keys.slice(0, -1)) {
    if (!Object.hasOwn(node, key)) {
      node[key] = {};
    }
    if (!isPlainObject(node[key])) {
      return;
    }
    node = node[key];
  }
  node[keys[keys.length - 1]] = value;
}

/** The current value of one control, as ChatKit sends it: booleans for checkboxes, null for nothing chosen. */
function controlValue(control) {
  if (control.type === "checkbox") {
    return control.checked;
  }
  if ((control.tagName === "SELECT" || control.type === "date") && control.value === "") {
    return null;
  }
  return control.value;
}

/** The values of every named field whose nearest form is `form`. */
export function formValues(form) {
  const values = {};
  const radios = new Map();
  for (const control of form.querySelectorAll("[data-field]")) {
    if (control.closest("form") !== form) {
      continue;
    }
    const name = control.dataset.field;
    if (control.type === "radio") {
      // A radio group gives its checked value, or null when none is checked.
      if (control.checked || !radios.has(name)) {
        radios.set(name, control.checked ? control.value : null);
      }
      continue;
    }
    setPath(values, name, controlValue(control));
  }
  radios.forEach((value, name) => setPath(values, name, value));
  return values;
}

/**
 * A copy of `payload` with `values` merged in. A key the payload already has
 * wins, as in ChatKit.js, and the collision is reported, since it is likely a
 * naming mistake in the widget.
 */
function mergePayload(payload, values) {
  if (payload != null && !isPlainObject(payload)) {
    if (Object.keys(values).length) {
      console.warn("widgets: form values are not merged into a payload that is not an object", payload);
    }
    return payload;
  }
  const merged = payload == null ? {} : structuredClone(payload);
  const merge = (into, from, path) => {
    for (const [key, value] of Object.entries(from)) {
      if (!Object.hasOwn(into, key)) {
        into[key] = value;
      } else if (isPlainObject(into[key]) && isPlainObject(value)) {
        merge(into[key], value, `${path}${key}.`);
      } else {
        console.warn(`widgets: the form field ${path}${key} collides with the action payload; the payload wins`);
      }
    }
  };
  merge(merged, values, "");
  return merged;
}

// ---------------------------------------------------------------------------
// Actions and loading states
// ---------------------------------------------------------------------------

const BEHAVIORS = new Set(["auto", "none", "self", "container"]);

/** Marks an element busy (or not): controls are disabled, containers made inert. */
function setBusy(element, busy) {
  element.classList.toggle("w-busy", busy);
  if (busy) {
    element.setAttribute("aria-busy", "true");
  } else {
    element.removeAttribute("aria-busy");
  }
  const controls = "disabled" in element ? [element] : [];
  if (element.tagName === "FORM") {
    // A busy form keeps its fields readable but cannot be submitted again.
    controls.push(...element.querySelectorAll("button"));
  } else if (!controls.length) {
    element.inert = busy;
  }
  for (const control of controls) {
    if (busy) {
      control.wWasDisabled = control.disabled;
      control.disabled = true;
    } else {
      control.disabled = Boolean(control.wWasDisabled);
    }
  }
}

/**
 * Fires a widget action from `source`: the enclosing form's values (or, outside
 * a form, the control's own `own` value) are merged into the payload, and the
 * `loadingBehavior` ("auto" resolves to `auto`, where the action is bound)
 * decides what shows as busy until `ctx.onAction`'s promise settles.
 */
export function fireAction(config, source, env, auto, own = {}) {
  if (!isPlainObject(config) || typeof config.type !== "string") {
    return Promise.resolve();
  }
  const form = source.closest("form");
  const values = form ? formValues(form) : own;
  const loadingBehavior = BEHAVIORS.has(config.loadingBehavior) ? config.loadingBehavior : "auto";
  const action = {
    type: config.type,
    payload: mergePayload(config.payload, values),
    handler: config.handler === "client" ? "client" : "server",
    loadingBehavior,
    streaming: config.streaming !== false,
  };
  const behavior = loadingBehavior === "auto" ? auto : loadingBehavior;
  const target = behavior === "self" ? source : behavior === "container" ? env.root ?? source.closest(".w-root") : null;
  let result;
  try {
    result = env.ctx.onAction(action, { itemId: env.ctx.itemId, element: source });
  } catch (error) {
    result = Promise.reject(error);
  }
  const settled = Promise.resolve(result).catch((error) => console.error("widgets: the action failed", error));
  if (target) {
    setBusy(target, true);
    settled.finally(() => setBusy(target, false));
  }
  return settled;
}

/**
 * Makes a <form> a widget form: a submit (a submit button, or Enter in a
 * single-line field) first passes the browser's validity checks, then fires
 * the submitter's own action or else `submitAction`.
 */
export function bindForm(form, submitAction, env, auto) {
  form.classList.add("w-form-scope");
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    if (event.target !== form) {
      return;
    }
    const submitter = event.submitter && event.submitter.form === form ? event.submitter : null;
    if (submitter?.wAction) {
      fireAction(submitter.wAction, submitter, env, submitter.wAuto ?? "self");
    } else {
      fireAction(submitAction, submitter ?? form, env, auto);
    }
  });
  form.addEventListener("keydown", (event) => {
    const field = event.target;
    if (event.key !== "Enter" || event.isComposing || field.tagName !== "INPUT" || field.closest("form") !== form) {
      return;
    }
    if (["checkbox", "radio", "button", "submit"].includes(field.type)) {
      return;
    }
    // Enter submits even a form with several fields and no submit button,
    // which the browser's implicit submission would not.
    event.preventDefault();
    form.requestSubmit();
  });
}

// ---------------------------------------------------------------------------
// Controls
// ---------------------------------------------------------------------------

/** Names a field, links it to its Label's id, and gives it an accessible name when no Label does. */
function field(control, p, env, kit, fallbackName) {
  const name = String(p.name ?? "");
  if (!name) {
    throw new TypeError("a form control needs a name");
  }
  control.dataset.field = name;
  if (control.type !== "radio") {
    control.name = name;
    control.id = kit.fieldId(env, name);
  }
  if (!env.labelled.has(name)) {
    control.setAttribute("aria-label", fallbackName ?? p.ariaLabel ?? p.placeholder ?? humanize(name));
  }
  control.required = Boolean(p.required);
  control.disabled = Boolean(p.disabled);
  return control;
}

function humanize(name) {
  const last = String(name).split(".").pop().replace(/[-_]+/g, " ").replace(/([a-z])([A-Z])/g, "$1 $2");
  return last.charAt(0).toUpperCase() + last.slice(1);
}

function controlClasses(base, p) {
  const variant = ["solid", "soft", "outline", "ghost"].includes(p.variant) ? p.variant : "outline";
  return `${base} w-control w-control-${variant}${typeof p.size === "string" ? ` w-size-${p.size}` : ""}${p.pill ? " w-pill" : ""}${p.block ? " w-block" : ""}`;
}

/** Selects a field's text when it takes focus, for `autoSelect`. */
function autoSelect(control, p) {
  if (p.autoSelect) {
    control.addEventListener("focus", () => control.select());
  }
}

const BUTTON_COLORS = ["primary", "secondary", "info", "discovery", "success", "caution", "warning", "danger"];

function Button(p, env, kit) {
  const color = BUTTON_COLORS.includes(p.color) ? p.color : p.style === "secondary" ? "secondary" : "primary";
  const variant = ["solid", "soft", "outline", "ghost"].includes(p.variant) ? p.variant : p.style === "secondary" ? "outline" : "solid";
  const size = typeof p.size === "string" ? ` w-size-${p.size}` : "";
  const flags = `${p.pill ? " w-pill" : ""}${p.block ? " w-block" : ""}${p.uniform ? " w-uniform" : ""}`;
  const button = kit.h("button", { type: p.submit ? "submit" : "button", class: `w-btn w-btn-${variant} w-c-${color}${size}${flags}` });
  const label = typeof p.label === "string" || typeof p.label === "number" ? String(p.label) : "";
  if (p.iconStart) {
    button.append(kit.icon(p.iconStart, { size: p.iconSize ?? "md", decorative: true }));
  }
  if (label) {
    button.append(kit.h("span", {}, label));
  } else {
    // An icon-only button is named by its icon.
    button.setAttribute("aria-label", humanize(p.iconStart ?? p.iconEnd ?? p.onClickAction?.type ?? "button"));
  }
  if (p.iconEnd) {
    button.append(kit.icon(p.iconEnd, { size: p.iconSize ?? "md", decorative: true }));
  }
  button.disabled = Boolean(p.disabled);
  button.wAction = isPlainObject(p.onClickAction) ? p.onClickAction : null;
  button.addEventListener("click", () => {
    // Inside a form, a submit button submits it: the submit handler fires its
    // action after the browser's validity checks.
    if (!(p.submit && button.form)) {
      fireAction(p.onClickAction, button, env, "self");
    }
  });
  return button;
}

const INPUT_TYPES = new Set(["number", "email", "text", "password", "tel", "url"]);

function Input(p, env, kit) {
  const input = kit.h("input", { type: INPUT_TYPES.has(p.inputType) ? p.inputType : "text", class: controlClasses("w-input", p) });
  field(input, p, env, kit);
  input.defaultValue = p.defaultValue == null ? "" : String(p.defaultValue);
  applyTextConstraints(input, p);
  autoSelect(input, p);
  return input;
}

function applyTextConstraints(control, p) {
  if (typeof p.placeholder === "string") {
    control.placeholder = p.placeholder;
  }
  if (typeof p.pattern === "string" && control.tagName === "INPUT") {
    control.pattern = p.pattern;
  }
  control.autocomplete = typeof p.autoComplete === "string" ? p.autoComplete : "off";
}

function Textarea(p, env, kit) {
  const area = kit.h("textarea", { class: controlClasses("w-textarea", p), rows: Number.isInteger(p.rows) ? p.rows : 3 });
  field(area, p, env, kit);
  area.defaultValue = p.defaultValue == null ? "" : String(p.defaultValue);
  applyTextConstraints(area, p);
  autoSelect(area, p);
  if (typeof p.pattern === "string") {
    // <textarea> has no `pattern`, so the same check runs as a custom validity.
    let pattern = null;
    try {
      pattern = new RegExp(`^(?:${p.pattern})$`, "u");
    } catch {
      // An invalid pattern is ignored, as the browser ignores it on an input.
    }
    const check = () => area.setCustomValidity(pattern && area.value && !pattern.test(area.value) ? "Please match the requested format." : "");
    area.addEventListener("input", check);
    check();
  }
  if (p.autoResize) {
    const maxRows = Number.isInteger(p.maxRows) ? p.maxRows : 12;
    area.addEventListener("input", () => {
      area.rows = Math.min(maxRows, Math.max(area.rows, area.value.split("\n").length));
    });
  }
  return area;
}

function Select(p, env, kit) {
  if (!Array.isArray(p.options)) {
    throw new TypeError("a Select needs options");
  }
  const select = kit.h("select", { class: controlClasses("w-select", p) });
  field(select, p, env, kit);
  const hasDefault = p.options.some((o) => isPlainObject(o) && o.value === p.defaultValue);
  if (p.placeholder || p.clearable || !hasDefault) {
    // The empty choice shows the placeholder; it can be chosen again only when clearable.
    const empty = kit.h("option", { value: "" }, String(p.placeholder ?? (p.clearable ? "None" : "Choose…")));
    empty.disabled = !p.clearable;
    select.append(empty);
  }
  for (const option of p.options) {
    if (!isPlainObject(option)) {
      continue;
    }
    const element = kit.h("option", { value: String(option.value ?? "") }, String(option.label ?? option.value ?? ""));
    element.disabled = Boolean(option.disabled);
    if (typeof option.description === "string") {
      element.title = option.description;
      element.textContent += ` — ${option.description}`;
    }
    select.append(element);
  }
  select.value = hasDefault ? String(p.defaultValue) : "";
  for (const option of select.options) {
    option.defaultSelected = option.selected;
  }
  onChange(select, p, env, () => controlValue(select));
  return select;
}

/** Fires `onChangeAction` on change; outside a form it carries the control's own value under its name. */
function onChange(control, p, env, value) {
  if (!isPlainObject(p.onChangeAction)) {
    return;
  }
  control.addEventListener("change", (event) => {
    const source = event.target;
    const own = {};
    setPath(own, String(p.name), value());
    fireAction(p.onChangeAction, source, env, "none", own);
  });
}

/** The `YYYY-MM-DD` part of a date or datetime string, or "". */
function isoDate(value) {
  const match = typeof value === "string" ? /^\d{4}-\d{2}-\d{2}/.exec(value) : null;
  return match ? match[0] : "";
}

function DatePicker(p, env, kit) {
  const input = kit.h("input", { type: "date", class: controlClasses("w-date", p) });
  field(input, p, env, kit);
  input.defaultValue = isoDate(p.defaultValue);
  if (isoDate(p.min)) {
    input.min = isoDate(p.min);
  }
  if (isoDate(p.max)) {
    input.max = isoDate(p.max);
  }
  onChange(input, p, env, () => controlValue(input));
  return input;
}

function Checkbox(p, env, kit) {
  const label = typeof p.label === "string" ? p.label : null;
  const box = kit.h("input", { type: "checkbox", class: "w-checkbox-input" });
  field(box, p, env, kit, label ?? undefined);
  if (label) {
    // The visible label names the box; no aria-label duplicates it.
    box.removeAttribute("aria-label");
  }
  box.defaultChecked = Boolean(p.defaultChecked);
  onChange(box, p, env, () => box.checked);
  return kit.h("label", { class: `w-checkbox${p.disabled ? " w-disabled" : ""}` }, box, label ? kit.h("span", {}, label) : null);
}

function RadioGroup(p, env, kit) {
  const name = String(p.name ?? "");
  if (!name) {
    throw new TypeError("a RadioGroup needs a name");
  }
  const direction = p.direction === "row" ? "row" : "col";
  const group = kit.h("div", { class: `w-radiogroup w-${direction}`, role: "radiogroup", id: kit.fieldId(env, name) });
  if (env.labelled.has(name)) {
    group.setAttribute("aria-labelledby", `${kit.fieldId(env, name)}-label`);
  } else {
    group.setAttribute("aria-label", p.ariaLabel ?? humanize(name));
  }
  if (p.required) {
    group.setAttribute("aria-required", "true");
  }
  const options = Array.isArray(p.options) ? p.options : [];
  for (const option of options) {
    if (!isPlainObject(option)) {
      continue;
    }
    const radio = kit.h("input", { type: "radio", class: "w-radio-input", value: String(option.value ?? "") });
    radio.dataset.field = name;
    // The native group name is scoped to this widget, so two widgets on one
    // page with the same field name do not share a selection.
    radio.name = `${env.uid}:${name}`;
    radio.defaultChecked = option.value === p.defaultValue;
    radio.disabled = Boolean(p.disabled || option.disabled);
    radio.required = Boolean(p.required);
    group.append(kit.h("label", { class: `w-radio${radio.disabled ? " w-disabled" : ""}` }, radio, kit.h("span", {}, String(option.label ?? option.value ?? ""))));
  }
  onChange(group, p, env, () => group.querySelector("input:checked")?.value ?? null);
  return group;
}

/** A Text with `editable` props: a single-line input holding the text, named for forms. */
export function editableText(p, env, kit) {
  const editable = p.editable;
  const input = kit.h("input", { type: "text", class: "w-input w-control w-control-outline w-text-input" });
  field(input, { ...editable, disabled: false }, env, kit);
  input.defaultValue = typeof p.value === "string" ? p.value : "";
  applyTextConstraints(input, editable);
  autoSelect(input, editable);
  return input;
}

/** The renderers of this module, by component type. */
export const CONTROLS = { Button, Input, Textarea, Select, DatePicker, Checkbox, RadioGroup };
