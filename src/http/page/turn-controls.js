// The chat page's controls of the turns this tab runs: the Send button that
// becomes Stop while a turn the gateway lets the client cancel streams
// (`stream_options.allow_cancel`), Escape to stop, the status line that shows
// the turn's `progress_update` events, and a polite live region for short
// announcements ("Copied").
//
// Stopping aborts the turn's `fetch`: the gateway sees its client leave,
// cancels the turn and keeps the partial answer, which the viewer stream
// finishes in every tab. A user's own stop is no error.
//
// composer.js's `runTurn` calls `startTurn` before posting, `observeTurn` for
// every event of the turn stream and `endTurn` when the stream ends.

import { current, ui } from "./state.js";

/** The turns this tab runs, oldest first. */
const running = [];

/** Shows the progress of this tab's turn on the open thread; empty (and so silent) otherwise. */
const progressLine = document.createElement("div");
progressLine.id = "turn-progress";
progressLine.setAttribute("role", "status");

/** Announces short confirmations to assistive technology; visually hidden. */
const announcer = document.createElement("div");
announcer.id = "announcer";
announcer.className = "sr-only";
announcer.setAttribute("role", "status");
announcer.setAttribute("aria-live", "polite");

ui.composer.before(progressLine);
ui.composer.after(announcer);

/**
 * Starts tracking a turn this tab posts on `state` (null while
 * `threads.create` has no thread yet); answers the turn, whose `signal` goes
 * to the request.
 */
export function startTurn(state) {
  const controller = new AbortController();
  const turn = { state, controller, signal: controller.signal, allowCancel: false, stopped: false, progress: "", last: null };
  running.push(turn);
  renderControls();
  return turn;
}

/** Notes what an event of the turn's own stream says about the turn; `target` is the thread it acts on now. */
export function observeTurn(turn, event, target) {
  turn.state = target;
  switch (event.type) {
    case "stream_options":
      turn.allowCancel = Boolean(event.stream_options && event.stream_options.allow_cancel);
      break;
    case "progress_update":
      turn.progress = event.text || "";
      break;
    case "thread.item.done":
      // The turn's last finished item: a pending client tool call there is for this tab to answer.
      turn.last = event.item;
      return;
    default:
      return;
  }
  renderControls();
}

/** Stops tracking a turn: its progress line clears and the composer returns to Send. */
export function endTurn(turn) {
  const index = running.indexOf(turn);
  if (index >= 0) {
    running.splice(index, 1);
  }
  renderControls();
}

/** The newest turn of this tab on the open thread, or null. */
function openTurn() {
  for (let i = running.length - 1; i >= 0; i -= 1) {
    if (running[i].state === current) {
      return running[i];
    }
  }
  return null;
}

/** Stops this tab's cancellable turn on the open thread; answers whether there was one. */
export function stopTurn() {
  const turn = openTurn();
  if (!turn || !turn.allowCancel || turn.stopped) {
    return false;
  }
  turn.stopped = true;
  turn.controller.abort();
  return true;
}

/** Says `text` in the polite live region (again, even when it is the same text as last time). */
export function announce(text) {
  announcer.textContent = "";
  // A new text node in the next frame is what screen readers notice as a change.
  requestAnimationFrame(() => {
    announcer.textContent = text;
  });
}

/** Send or Stop, and the progress line, for the open thread. */
function renderControls() {
  const turn = openTurn();
  const stoppable = Boolean(turn && turn.allowCancel && !turn.stopped);
  if (stoppable && ui.send.dataset.mode !== "stop") {
    ui.send.dataset.mode = "stop";
    ui.send.type = "button";
    ui.send.textContent = "Stop";
  } else if (!stoppable && ui.send.dataset.mode === "stop") {
    delete ui.send.dataset.mode;
    ui.send.type = "submit";
    ui.send.textContent = "Send";
  }
  progressLine.textContent = turn ? turn.progress : "";
}

ui.send.addEventListener("click", (event) => {
  if (ui.send.dataset.mode === "stop") {
    event.preventDefault();
    stopTurn();
  }
});

// Escape stops the turn from anywhere on the page, except in controls that use Escape themselves.
document.addEventListener("keydown", (event) => {
  if (event.key !== "Escape" || event.defaultPrevented || event.isComposing) {
    return;
  }
  const target = event.target instanceof Element ? event.target : null;
  if (target && target.closest(".w-root, #rename-form, select, dialog")) {
    return;
  }
  if (stopTurn()) {
    event.preventDefault();
  }
});

// Another thread opened (thread.js names it on #thread): Send or Stop follows it.
new MutationObserver(renderControls).observe(ui.thread, { attributes: true, attributeFilter: ["data-thread-id"] });
