// The chat page's item list: how each thread item renders (user messages as
// text, with their attachments through attachment-chips.js; assistant
// messages, workflows, tasks and generated images through content.js,
// Markdown sanitized; widgets through the widget renderer; client tool calls and structured input through interactive-items.js, with the
// buttons of message-actions.js under finished answers; other items as a
// short description),
// the list itself and its scrolling, and the widget glue that sends a
// widget's action where its config says, as ChatKit.js sends it: a
// `handler: "client"` action to the page's hook (`window.chatkitPage.actions`,
// see hooks.js), a `streaming: false` one to `threads.sync_custom_action` (its
// `updated_item` replaces the widget here; the gateway tells other tabs), and
// the rest to `threads.custom_action` as a turn.

import { api } from "./api.js";
import { renderMessageAttachments } from "./attachment-chips.js";
import { runTurn } from "./composer.js";
import { hookFor } from "./hooks.js";
import { current, showNotice, ui } from "./state.js";
import { upsertItem } from "./thread.js";
import { renderAssistant, renderGeneratedImage, renderTask, renderWorkflow } from "./content.js";
import { renderStructuredInput, renderToolCall } from "./interactive-items.js";
import { renderMarkdown } from "./markdown.js";
import { messageActions } from "./message-actions.js";
import { renderWidget, setMarkdownRenderer } from "./widgets.js";

// Widgets' Markdown components render as the messages' Markdown does.
setMarkdownRenderer((text) => renderMarkdown(text));

/** The progress of a generated image still being made, by item object (thread.js sets it from its updates). */
export const imageProgress = new WeakMap();

/**
 * The rendered content of assistant messages, workflows, tasks and images, by
 * item object: thread.js replaces an item's object on every change, so a
 * re-rendered list renders only what changed (Markdown is not free).
 */
const renderedContent = new WeakMap();

/** Workflows the user opened or closed, by item id: the choice outlives the item's own `expanded`. */
const workflowChoice = new Map();

/** An element for an item content.js renders, or null for other types. */
function contentElement(item) {
  let element = renderedContent.get(item);
  if (element) {
    return element;
  }
  switch (item.type) {
    case "assistant_message":
      element = renderAssistant(item);
      break;
    case "workflow": {
      // The item's own `expanded` decides (open while it works, closed once done), unless the user chose.
      const choice = workflowChoice.get(item.id);
      const details = renderWorkflow(item, choice === undefined ? {} : { expanded: choice });
      details.querySelector("summary")?.addEventListener("click", () => workflowChoice.set(item.id, !details.open));
      element = details;
      break;
    }
    case "task":
      element = renderTask(item);
      break;
    case "generated_image":
      element = renderGeneratedImage(item, { progress: imageProgress.get(item) });
      break;
    // Kept while the item is the same object, as widgets are, so a half-filled form survives a re-render.
    case "client_tool_call":
      element = renderToolCall(item);
      break;
    case "structured_input":
      element = renderStructuredInput(item, current);
      break;
    default:
      return null;
  }
  renderedContent.set(item, element);
  return element;
}

/** Items the protocol keeps for the model, never shown. */
const HIDDEN_TYPES = new Set(["hidden_context_item", "sdk_hidden_context", "end_of_turn"]);

function plainText(item) {
  const parts = Array.isArray(item.content) ? item.content : [];
  if (item.type === "user_message") {
    return parts.map((p) => (p.type === "input_tag" ? `@${p.text}` : p.text || "")).join("");
  }
  return parts.map((p) => p.text || "").join("");
}

/** A line for the items this page does not render yet. */
function describe(item) {
  return item.type;
}

/** Renders an item into `element` (its existing element, or a new one). */
function renderItem(item, element) {
  const li = element || document.createElement("li");
  li.dataset.itemId = item.id;
  const kind = item.type === "user_message" ? "user" : item.type === "assistant_message" ? "assistant" : "other";
  li.className = `message ${kind}`;
  if (kind === "assistant" && !current.done.has(item.id)) {
    li.classList.add("streaming");
  }
  let bubble = li.firstElementChild;
  if (!bubble) {
    bubble = document.createElement("div");
    bubble.className = "bubble";
    li.append(bubble);
  }
  if (item.type === "widget") {
    li.classList.add("widget");
    bubble.replaceChildren(widgetElement(item));
    return li;
  }
  const content = contentElement(item);
  if (content) {
    li.classList.add("rich");
    bubble.replaceChildren(content);
    // A finished answer's Copy, feedback and Retry buttons follow its bubble.
    li.querySelector(":scope > .message-actions")?.remove();
    const actions = messageActions(item, current);
    if (actions) {
      li.append(actions);
    }
    return li;
  }
  bubble.textContent = kind === "other" ? describe(item) : plainText(item);
  if (item.type === "user_message" && Array.isArray(item.attachments) && item.attachments.length > 0) {
    bubble.append(renderMessageAttachments(item.attachments, bubble.textContent !== ""));
  }
  return li;
}

/**
 * A widget item's element. It is kept for as long as the item's widget tree
 * is the same object, so that re-rendering the list keeps what the user typed
 * into a form; a streamed update or a replaced item brings a new tree.
 */
const renderedWidgets = new WeakMap();

function widgetElement(item) {
  let element = renderedWidgets.get(item.widget);
  if (!element) {
    const state = current;
    element = renderWidget(item.widget, {
      itemId: item.id,
      onAction: (action) => widgetAction(state, item.id, action),
    });
    renderedWidgets.set(item.widget, element);
  }
  return element;
}

/** Sends a widget's action where its config says (see the top of this file). */
async function widgetAction(state, itemId, config) {
  const item = state.items.find((known) => known.id === itemId);
  const action = { type: config.type, payload: config.payload || {} };
  try {
    if (config.handler === "client") {
      const handler = hookFor("actions", config.type);
      if (!handler) {
        throw new Error(`No handler on this page for the client action "${config.type}".`);
      }
      await handler(action, item);
    } else if (config.streaming === false) {
      const answer = await api("threads.sync_custom_action", { thread_id: state.id, item_id: itemId, action });
      if (answer && answer.updated_item) {
        upsertItem(state, answer.updated_item, true);
      }
    } else {
      await runTurn("threads.custom_action", { thread_id: state.id, item_id: itemId, action }, state);
    }
  } catch (error) {
    if (state === current) {
      showNotice(error.message);
    }
  }
}

function nearBottom() {
  const s = ui.scroller;
  return s.scrollHeight - s.scrollTop - s.clientHeight < 80;
}

/** Runs `update`, then keeps the list scrolled to the bottom if it was there: a reader scrolled up stays put. */
function keepScrolled(update) {
  const stick = nearBottom();
  update();
  if (stick) {
    ui.scroller.scrollTop = ui.scroller.scrollHeight;
  }
}

/** Renders the open thread's whole item list. */
export function renderItems() {
  keepScrolled(() => {
    const shown = current ? current.items.filter((item) => !HIDDEN_TYPES.has(item.type)) : [];
    ui.messages.replaceChildren(...shown.map((item) => renderItem(item)));
    ui.empty.hidden = shown.length > 0 || (current !== null && current.thread === null);
    ui.loadEarlier.hidden = !(current && current.hasEarlier);
  });
}

/** Re-renders one item of the open thread in place, or the whole list when it is not shown yet. */
export function renderOne(item) {
  const element = ui.messages.querySelector(`li[data-item-id="${CSS.escape(item.id)}"]`);
  if (!element) {
    renderItems();
    return;
  }
  keepScrolled(() => renderItem(item, element));
}
