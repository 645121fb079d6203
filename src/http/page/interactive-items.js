// The chat page's items that wait for the user: client tool calls and
// structured input.
//
// A client tool call renders as a small card (its name, arguments, status and,
// once completed, its output). When a turn this tab sent ends with a pending
// call, the page answers it with the handler the page registered for the tool
// (`window.chatkitPage.tools`, see hooks.js) through
// `threads.add_client_tool_output`: only the sending tab answers, so a call is
// answered once however many tabs show the thread. The gateway records the
// output without an event (as the reference does), so this tab marks its copy
// of the call completed itself.
//
// A pending structured input renders as a form: radio buttons (or checkboxes
// when the question takes several values) for a multiple-choice question, a
// text field for a free-form one, Submit and Skip, both sent as
// `threads.add_structured_input` turns. The gateway replaces the item with
// its answered (or skipped) version, which renders read-only with the answers.
// The protocol's structured input has no "required" flag: every question may
// be left empty, which records it as skipped.

import { runTurn } from "./composer.js";
import { hookFor } from "./hooks.js";
import { current, showNotice } from "./state.js";
import { upsertItem } from "./thread.js";

let formCount = 0;

function el(tag, className, text) {
  const element = document.createElement(tag);
  if (className) {
    element.className = className;
  }
  if (text !== undefined) {
    element.textContent = text;
  }
  return element;
}

/** Pretty JSON for a card; a value JSON cannot write shows as its string. */
function json(value) {
  try {
    return JSON.stringify(value === undefined ? null : value, null, 2);
  } catch (_) {
    return String(value);
  }
}

// ---------------------------------------------------------------------------
// Client tool calls.
// ---------------------------------------------------------------------------

/** A client tool call's card. */
export function renderToolCall(item) {
  const completed = item.status === "completed";
  const card = el("section", "tool-call");
  card.dataset.status = completed ? "completed" : "pending";
  card.setAttribute("aria-label", `Tool call ${item.name}`);
  const head = el("div", "tool-head");
  head.append(el("span", "tool-label", "Tool call"), el("code", "tool-name", item.name));
  head.append(el("span", "tool-status", completed ? "completed" : "pending"));
  card.append(head, el("div", "tool-caption", "Arguments"), el("pre", "tool-args", json(item.arguments || {})));
  if (completed) {
    card.append(el("div", "tool-caption", "Output"), el("pre", "tool-output", json(item.output)));
  }
  return card;
}

/** After a turn this tab sent: answers the pending client tool call it ended with, if any. */
export async function answerPendingToolCall(turn, state) {
  const item = turn.last;
  if (turn.stopped || !state || !item || item.type !== "client_tool_call" || item.status !== "pending") {
    return;
  }
  const handler = hookFor("tools", item.name);
  if (!handler) {
    if (state === current) {
      showNotice(
        `No handler on this page for the client tool "${item.name}": the call stays pending. ` +
          `Register one as window.chatkitPage.tools.${item.name} (see hooks.js).`,
      );
    }
    return;
  }
  try {
    const output = await handler(item.arguments || {}, item);
    const result = output === undefined ? null : output;
    await runTurn("threads.add_client_tool_output", { thread_id: state.id, result }, state);
    upsertItem(state, Object.assign({}, item, { status: "completed", output: result }), true);
  } catch (error) {
    if (state === current) {
      showNotice(`The client tool "${item.name}" failed: ${error.message}`);
    }
  }
}

// ---------------------------------------------------------------------------
// Structured input.
// ---------------------------------------------------------------------------

/** A structured input item: a form while it is pending, its answers once answered or skipped. */
export function renderStructuredInput(item, state) {
  return item.status === "pending" ? questionForm(item, state) : answeredCard(item);
}

function answeredCard(item) {
  const card = el("section", "si si-done");
  const status = item.status === "skipped" ? "Skipped" : "Answered";
  card.setAttribute("aria-label", `Questions (${status.toLowerCase()})`);
  card.append(el("div", "si-status", status));
  const list = el("dl", "si-answers");
  for (const input of item.inputs || []) {
    const answer = input.answer;
    const values = answer && !answer.skipped && answer.values && answer.values.length > 0 ? answer.values : null;
    list.append(el("dt", "", input.question), el("dd", values ? "" : "si-skipped", values ? values.join(", ") : "skipped"));
  }
  card.append(list);
  return card;
}

function questionForm(item, state) {
  formCount += 1;
  const prefix = `si-${formCount}`;
  const form = el("form", "si");
  form.setAttribute("aria-label", "Questions");
  const fields = [];
  (item.inputs || []).forEach((input, index) => {
    const id = `${prefix}-${index}`;
    if (input.type === "multiple_choice") {
      const group = el("fieldset", "si-choice");
      group.append(el("legend", "", input.question));
      for (const option of input.options || []) {
        const label = el("label", "si-option");
        const box = el("input");
        box.type = input.multiple ? "checkbox" : "radio";
        box.name = id;
        box.value = option.value;
        label.append(box, document.createTextNode(` ${option.value}`));
        group.append(label);
      }
      form.append(group);
      fields.push([input.id, () => [...group.querySelectorAll("input:checked")].map((box) => box.value)]);
    } else {
      const wrap = el("div", "si-free");
      const label = el("label", "", input.question);
      label.htmlFor = id;
      const field = el("input");
      field.type = "text";
      field.id = id;
      field.autocomplete = "off";
      wrap.append(label);
      if (input.description) {
        const description = el("p", "si-description", input.description);
        description.id = `${id}-description`;
        field.setAttribute("aria-describedby", description.id);
        wrap.append(description);
      }
      wrap.append(field);
      form.append(wrap);
      fields.push([input.id, () => (field.value.trim() ? [field.value.trim()] : [])]);
    }
  });
  const buttons = el("div", "si-buttons");
  const submit = el("button", "", "Submit");
  submit.type = "submit";
  const skip = el("button", "", "Skip");
  skip.type = "button";
  buttons.append(submit, skip);
  form.append(buttons);

  const answer = async (input) => {
    const controls = [...form.elements];
    controls.forEach((control) => (control.disabled = true));
    try {
      await runTurn("threads.add_structured_input", { thread_id: state.id, item_id: item.id, input }, state);
    } catch (error) {
      controls.forEach((control) => (control.disabled = false));
      if (state === current) {
        showNotice(`Could not send the answers: ${error.message}`);
      }
    }
  };
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const answers = {};
    for (const [id, read] of fields) {
      const values = read();
      answers[id] = values.length > 0 ? { values } : { values: [], skipped: true };
    }
    answer({ status: "answered", answers });
  });
  skip.addEventListener("click", () => answer({ status: "skipped", answers: {} }));
  return form;
}
