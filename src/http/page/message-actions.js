// The chat page's buttons under a finished assistant message: Copy (its plain
// text to the clipboard, announced as "Copied"), thumbs up and thumbs down
// (`items.feedback`, the choice shown by `aria-pressed`), and, on the last
// answer, Retry (`threads.retry_after_item` with the user message before it).
//
// As in the reference, a retry deletes the items after that user message
// without announcing it: the page that retries drops them itself before the
// new answer streams in.

import { api } from "./api.js";
import { runTurn } from "./composer.js";
import { renderItems } from "./items.js";
import { current, showNotice } from "./state.js";
import { announce } from "./turn-controls.js";

/** The feedback this tab gave, by item id: the protocol has no way to read it back. */
const feedbackGiven = new Map();

function button(text, label, onClick) {
  const element = document.createElement("button");
  element.type = "button";
  element.textContent = text;
  if (label) {
    element.setAttribute("aria-label", label);
    element.title = label;
  }
  element.addEventListener("click", onClick);
  return element;
}

const SVG = "http://www.w3.org/2000/svg";

/**
 * A thumb drawn here (emoji fonts are not everywhere): a cuff and a hand,
 * turned over for thumbs down; filled when its button is pressed (interact.css).
 */
function thumbIcon(down) {
  const svg = document.createElementNS(SVG, "svg");
  svg.setAttribute("viewBox", "0 0 16 16");
  svg.setAttribute("width", "14");
  svg.setAttribute("height", "14");
  svg.setAttribute("aria-hidden", "true");
  svg.setAttribute("focusable", "false");
  const shape = document.createElementNS(SVG, "g");
  if (down) {
    shape.setAttribute("transform", "rotate(180 8 8)");
  }
  const cuff = document.createElementNS(SVG, "rect");
  for (const [name, value] of [["x", "1"], ["y", "7"], ["width", "3"], ["height", "8"], ["rx", "0.5"]]) {
    cuff.setAttribute(name, value);
  }
  const hand = document.createElementNS(SVG, "path");
  hand.setAttribute("d", "M5.5 7 L8 1.5 C9.4 1.5 10.1 2.5 9.7 3.9 L9.1 6.5 H13.4 C14.4 6.5 15.2 7.4 15 8.4 L14 13.6 C13.8 14.4 13.2 15 12.4 15 H5.5 Z");
  shape.append(cuff, hand);
  svg.append(shape);
  return svg;
}

/** The text of an assistant message, as its parts hold it. */
function messageText(item) {
  const parts = Array.isArray(item.content) ? item.content : [];
  return parts.map((part) => part.text || "").join("\n\n");
}

/** The user message the last answer replies to, when `item` is the thread's last assistant message; else null. */
function retryTarget(state, item) {
  const last = state.items.findLast((known) => known.type === "assistant_message");
  if (!last || last.id !== item.id) {
    return null;
  }
  const index = state.items.indexOf(last);
  return state.items.slice(0, index).findLast((known) => known.type === "user_message") || null;
}

/** The action bar of a finished assistant message on `state`, or null for any other item. */
export function messageActions(item, state) {
  if (!state || item.type !== "assistant_message" || !state.done.has(item.id)) {
    return null;
  }
  const bar = document.createElement("div");
  bar.className = "message-actions";
  bar.setAttribute("role", "group");
  bar.setAttribute("aria-label", "Answer actions");
  bar.append(button("Copy", "Copy answer", () => copy(item)));
  const thumbs = [
    ["positive", "Thumbs up"],
    ["negative", "Thumbs down"],
  ].map(([kind, label]) => {
    const thumb = button("", label, () => giveFeedback(state, item, kind, thumbs));
    thumb.append(thumbIcon(kind === "negative"));
    thumb.dataset.kind = kind;
    thumb.setAttribute("aria-pressed", String(feedbackGiven.get(item.id) === kind));
    return thumb;
  });
  bar.append(...thumbs);
  const user = retryTarget(state, item);
  if (user) {
    bar.append(button("Retry", "Retry this answer", () => retry(state, user)));
  }
  return bar;
}

async function copy(item) {
  try {
    if (!navigator.clipboard || !navigator.clipboard.writeText) {
      throw new Error("this page has no clipboard access");
    }
    await navigator.clipboard.writeText(messageText(item));
    announce("Copied");
  } catch (error) {
    showNotice(`Could not copy the answer: ${error.message}`);
  }
}

async function giveFeedback(state, item, kind, thumbs) {
  try {
    await api("items.feedback", { thread_id: state.id, item_ids: [item.id], kind });
    feedbackGiven.set(item.id, kind);
    // In place: re-rendering the message would move the focus off the button.
    thumbs.forEach((thumb) => thumb.setAttribute("aria-pressed", String(thumb.dataset.kind === kind)));
  } catch (error) {
    if (state === current) {
      showNotice(`Could not send the feedback: ${error.message}`);
    }
  }
}

/** Drops what follows `user` here (the gateway deletes it silently), then streams the new answer. */
async function retry(state, user) {
  const index = state.items.indexOf(user);
  if (index < 0) {
    return;
  }
  const dropped = state.items.splice(index + 1);
  // A late event for a dropped item must not bring it back.
  dropped.forEach((item) => state.done.add(item.id));
  if (state === current) {
    renderItems();
  }
  try {
    await runTurn("threads.retry_after_item", { thread_id: state.id, item_id: user.id }, state);
  } catch (error) {
    // Refused (an HTTP error): nothing was deleted, so what was dropped comes back.
    if (error.status && state.items.indexOf(user) === index) {
      state.items.splice(index + 1, 0, ...dropped);
      if (state === current) {
        renderItems();
      }
    }
    if (state === current) {
      showNotice(`Could not retry: ${error.message}`);
    }
  }
}
