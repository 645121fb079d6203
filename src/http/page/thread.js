// The chat page's open thread: opening and closing it, its header (title,
// status, the composer's state), its viewer stream
// (`GET /chatkit/threads/{id}/events`, which carries every change to the
// thread, whoever made it: other tabs' turns as they stream, renames, locks
// and closes, deletion), refreshing it, loading earlier items, and applying
// its events and item updates.
//
// A fresh stream starts at the present, so on every (re)connect and on
// `resync` the page opens the stream first and then fetches what it shows;
// events that arrive during the fetch wait in the thread's queue.

import { api, authHeaders, identity } from "./api.js";
import { removeHistory, renderHistory, upsertHistory } from "./history.js";
import { applyContentUpdate } from "./content.js";
import { imageProgress, renderItems, renderOne } from "./items.js";
import {
  clearNotice,
  creating,
  current,
  newThreadState,
  setCurrent,
  setUrl,
  showNotice,
  titleOf,
  ui,
} from "./state.js";
import { applyWidgetUpdate } from "./widgets.js";

const live = window.ChatKitLive;
const ITEMS_PAGE = 100;
const ACTIVE_PLACEHOLDER = "Message (Enter to send, Shift+Enter for a new line)";
const LOCKED_PLACEHOLDER = "This thread is locked.";
const CLOSED_TEXT = "This conversation has been closed.";
const GONE_PLACEHOLDER = "This thread is gone: start a new chat.";
const MISSING = "This thread does not exist (it was deleted, or belongs to another user).";

// ---------------------------------------------------------------------------
// The header and the composer's state.
// ---------------------------------------------------------------------------

/** Renders the open thread's title, its rename and delete buttons, its status and the history's mark. */
export function renderThread() {
  const thread = current && current.thread;
  const title = thread ? titleOf(thread) || "Untitled" : current ? "Loading…" : "New chat";
  ui.title.textContent = title;
  document.title = `${current ? title : "New chat"} · chatkit-gateway`;
  const known = Boolean(thread) && !current.gone;
  ui.rename.hidden = !known || !ui.renameForm.hidden;
  ui.remove.hidden = !known || !ui.removeConfirm.hidden;
  if (!known) {
    ui.renameForm.hidden = true;
    ui.removeConfirm.hidden = true;
  }
  renderStatus();
  renderHistory();
}

/** Active: the composer works. Locked: it is disabled and shows the reason. Closed: a banner replaces it. */
export function renderStatus() {
  const status = (current && current.thread && current.thread.status) || { type: "active" };
  const gone = current !== null && (current.gone || current.thread === null);
  ui.thread.dataset.status = status.type;
  if (status.type === "closed") {
    ui.composer.hidden = true;
    ui.closedBanner.hidden = false;
    ui.closedBanner.textContent = status.reason || CLOSED_TEXT;
    ui.status.textContent = "Closed";
    return;
  }
  ui.composer.hidden = false;
  ui.closedBanner.hidden = true;
  if (status.type === "locked") {
    const reason = status.reason || LOCKED_PLACEHOLDER;
    ui.input.disabled = true;
    ui.input.placeholder = reason;
    ui.input.title = reason;
    ui.send.disabled = true;
    ui.status.textContent = `Locked: ${reason}`;
    return;
  }
  ui.input.disabled = gone || !identity;
  ui.input.placeholder = current !== null && current.gone ? GONE_PLACEHOLDER : ACTIVE_PLACEHOLDER;
  ui.input.removeAttribute("title");
  ui.send.disabled = gone || !identity || creating;
  ui.status.textContent = "";
}

/** Merges a thread's new metadata into its state, and into the history list. */
export function setThread(state, thread) {
  state.thread = Object.assign({}, state.thread || {}, thread);
  if (state === current) {
    renderThread();
  }
  upsertHistory(thread, false);
}

// ---------------------------------------------------------------------------
// Items and events.
// ---------------------------------------------------------------------------

function itemIndex(state, id) {
  return state.items.findIndex((item) => item.id === id);
}

/** Adds or replaces an item; `done` marks it finished, after which no delta changes it. */
export function upsertItem(state, item, done) {
  const index = itemIndex(state, item.id);
  if (done) {
    state.done.add(item.id);
  }
  if (index >= 0) {
    state.items[index] = item;
    if (state === current) {
      renderOne(item);
    }
  } else {
    state.items.push(item);
    if (state === current) {
      renderItems();
    }
  }
}

/** Applies one streamed update to an unfinished item. */
function applyUpdate(state, itemId, update) {
  const index = itemIndex(state, itemId);
  if (index < 0 || state.done.has(itemId)) {
    return;
  }
  const item = state.items[index];
  let next;
  if (update.type.startsWith("widget.")) {
    next = item.widget ? Object.assign({}, item, { widget: applyWidgetUpdate(item.widget, update) }) : item;
  } else {
    // Message parts, annotations, workflow tasks and image progress (content.js).
    next = applyContentUpdate(item, update);
    if (update.type === "generated_image.updated" && typeof update.progress === "number") {
      imageProgress.set(next, update.progress);
    }
  }
  if (next === item) {
    return;
  }
  // A new object for every change: items.js keeps an item's rendering for as long as it is the same object.
  state.items[index] = next;
  if (state === current) {
    renderOne(next);
  }
}

/**
 * Applies one event of the open thread. `fromTurn` marks events of this
 * tab's own turn stream, of which only the idempotent ones count (finished
 * items, thread updates) and what no viewer sees (errors): the viewer stream
 * carries the rest, so a delta is never applied twice.
 */
export function applyThreadEvent(state, event, fromTurn) {
  if (state.refreshing > 0) {
    state.queue.push([event, fromTurn]);
    return;
  }
  switch (event.type) {
    case "thread.created":
    case "thread.updated":
      setThread(state, event.thread);
      break;
    case "thread.item.added":
      if (!fromTurn && !state.done.has(event.item.id)) {
        upsertItem(state, event.item, false);
      }
      break;
    case "thread.item.updated":
      if (!fromTurn) {
        applyUpdate(state, event.item_id, event.update);
      }
      break;
    case "thread.item.done":
    case "thread.item.replaced":
      upsertItem(state, event.item, true);
      break;
    case "thread.item.removed": {
      const index = itemIndex(state, event.item_id);
      if (index >= 0) {
        state.items.splice(index, 1);
        state.done.add(event.item_id);
        if (state === current) {
          renderItems();
        }
      }
      break;
    }
    case "error":
      if (state === current) {
        showNotice(event.message || "Something went wrong. Try again.");
      }
      break;
    case "notice":
      if (state === current) {
        showNotice(event.message, event.level === "danger" ? "error" : "info");
      }
      break;
    default:
      break;
  }
}

// ---------------------------------------------------------------------------
// Fetching.
// ---------------------------------------------------------------------------

/**
 * Fetches the thread and its newest items, then replays what its stream
 * brought meanwhile. Items still streaming (not saved yet, so not in the
 * answer) are kept.
 */
async function refreshThread(state) {
  state.refreshing += 1;
  try {
    const [thread, page] = await Promise.all([
      api("threads.get_by_id", { thread_id: state.id }),
      api("items.list", { thread_id: state.id, limit: ITEMS_PAGE, order: "desc" }),
    ]);
    const fetched = page.data.slice().reverse();
    const ids = new Set(fetched.map((item) => item.id));
    const streaming = state.items.filter((item) => !ids.has(item.id) && !state.done.has(item.id));
    fetched.forEach((item) => state.done.add(item.id));
    state.items = fetched.concat(streaming);
    state.hasEarlier = Boolean(page.has_more);
    state.earlierCursor = page.after || null;
    state.thread = Object.assign({}, thread, { items: undefined });
    upsertHistory(thread, false);
  } catch (error) {
    if (error.status === 404) {
      threadGone(state, MISSING);
    } else if (state === current) {
      showNotice(`Could not load the thread: ${error.message}`);
    }
  } finally {
    state.refreshing -= 1;
  }
  if (state.refreshing === 0) {
    const queued = state.queue.splice(0);
    if (state === current) {
      renderThread();
      renderItems();
    }
    queued.forEach(([event, fromTurn]) => applyThreadEvent(state, event, fromTurn));
  }
}

/** Prepends the open thread's previous page of items, keeping what the reader sees in place. */
export async function loadEarlier() {
  const state = current;
  if (!state || !state.earlierCursor) {
    return;
  }
  try {
    const page = await api("items.list", {
      thread_id: state.id,
      limit: ITEMS_PAGE,
      order: "desc",
      after: state.earlierCursor,
    });
    const older = page.data.slice().reverse().filter((item) => itemIndex(state, item.id) < 0);
    older.forEach((item) => state.done.add(item.id));
    state.items = older.concat(state.items);
    state.hasEarlier = Boolean(page.has_more);
    state.earlierCursor = page.after || null;
    if (state === current) {
      const height = ui.scroller.scrollHeight;
      renderItems();
      ui.scroller.scrollTop += ui.scroller.scrollHeight - height;
    }
  } catch (error) {
    showNotice(`Could not load earlier messages: ${error.message}`);
  }
}

// ---------------------------------------------------------------------------
// Opening and closing.
// ---------------------------------------------------------------------------

/** Marks a thread deleted or missing: its stream ends and, if it is open, the view says so. */
export function threadGone(state, message) {
  state.gone = true;
  if (state.subscription) {
    state.subscription.close();
    state.subscription = null;
  }
  if (state === current) {
    showNotice(message, "info");
    ui.thread.dataset.live = "gone";
    ui.threadLive.dataset.state = "none";
    renderThread();
    renderItems();
  }
}

function watchThread(state) {
  state.subscription = live.subscribe(`chatkit/threads/${encodeURIComponent(state.id)}/events`, {
    headers: authHeaders,
    onStatus: (streamState) => {
      if (state === current && !state.gone) {
        ui.threadLive.dataset.state = streamState;
        ui.thread.dataset.live = streamState;
      }
    },
    // A fresh stream starts at the present: open it, then fetch.
    onOpen: () => refreshThread(state),
    onResync: () => refreshThread(state),
    onEvent: (event) => applyThreadEvent(state, event, false),
    onDeleted: () => {
      removeHistory(state.id);
      threadGone(state, "This thread was deleted.");
    },
    onSessionEnded: (data) => showNotice(`Your session ended (${data.reason}); reload with a new client secret.`),
    onError: (error) => {
      if (error.status === 404) {
        threadGone(state, MISSING);
      } else {
        showNotice(`The thread's stream was refused: ${error.message}`);
      }
    },
  });
}

function closeCurrent() {
  if (current && current.subscription) {
    current.subscription.close();
  }
  setCurrent(null);
  ui.renameForm.hidden = true;
  ui.removeConfirm.hidden = true;
  ui.title.hidden = false;
}

/**
 * Shows a thread: its stream opens first, then the fetch fills the view.
 * `options.url` ("push" or "replace") puts it in the address bar;
 * `options.thread` is its metadata when the caller has it already.
 */
export function openThread(threadId, options) {
  const o = options || {};
  if (current && current.id === threadId && !current.gone) {
    return;
  }
  closeCurrent();
  clearNotice();
  setCurrent(newThreadState(threadId, o.thread));
  ui.thread.dataset.threadId = threadId;
  ui.thread.dataset.live = "connecting";
  if (o.url) {
    setUrl(threadId, o.url);
  }
  renderThread();
  renderItems();
  watchThread(current);
  return current;
}

/** Shows a new chat: no thread until the first message creates one. */
export function newChat(options) {
  const o = options || {};
  closeCurrent();
  if (!o.keepNotice) {
    clearNotice();
  }
  delete ui.thread.dataset.threadId;
  ui.thread.dataset.live = "none";
  ui.threadLive.dataset.state = "none";
  if (o.url) {
    setUrl(null, o.url);
  }
  renderThread();
  renderItems();
  ui.input.focus();
}
