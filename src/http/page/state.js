// The chat page's shared state: the element lookups every module uses, the
// thread list, the open thread, the notice line and the URL that names the
// open thread. Other modules read `current` and `creating` as live bindings
// and change them only through the setters here, since an ES module's
// importers cannot assign to its exports.

const $ = (id) => document.getElementById(id);

/** The page's elements, looked up once: modules run after the document is parsed. */
export const ui = {
  who: $("who"),
  newChat: $("new-chat"),
  history: $("history"),
  historyMore: $("history-more"),
  historyLive: $("history-live"),
  thread: $("thread"),
  title: $("thread-title"),
  status: $("thread-status"),
  threadLive: $("thread-live"),
  rename: $("rename"),
  renameForm: $("rename-form"),
  renameInput: $("rename-input"),
  renameCancel: $("rename-cancel"),
  remove: $("delete"),
  removeConfirm: $("delete-confirm"),
  removeYes: $("delete-yes"),
  removeNo: $("delete-no"),
  notice: $("notice"),
  scroller: $("scroller"),
  loadEarlier: $("load-earlier"),
  messages: $("messages"),
  empty: $("empty"),
  composer: $("composer"),
  input: $("input"),
  send: $("send"),
  closedBanner: $("closed-banner"),
};

/**
 * The history list: the threads shown, the cursor of the next page, and the
 * events its stream brought while a refresh ran (applied once it ends).
 */
export const threadList = {
  threads: [],
  after: null,
  hasMore: false,
  refreshing: 0,
  queue: [],
  subscription: null,
};

/** The open thread, or null for a new chat. */
export let current = null;

/** Makes `state` the open thread (null for a new chat). */
export function setCurrent(state) {
  current = state;
}

/** Set while `threads.create` runs, so that a second Enter does not make a second thread. */
export let creating = false;

export function setCreating(value) {
  creating = value;
}

/**
 * A thread's state: its items, the ids of finished items (no delta changes
 * them), the events its stream brought during a refresh, and the cursor of
 * its earlier items.
 */
export function newThreadState(id, thread) {
  return {
    id,
    thread: thread || null,
    items: [],
    done: new Set(),
    refreshing: 0,
    queue: [],
    earlierCursor: null,
    hasEarlier: false,
    subscription: null,
    gone: false,
  };
}

/** A thread's title, or "" for one without a title yet. */
export function titleOf(thread) {
  return thread && thread.title ? thread.title : "";
}

// ---------------------------------------------------------------------------
// Notices.
// ---------------------------------------------------------------------------

export function showNotice(text, kind) {
  ui.notice.textContent = text;
  ui.notice.className = kind === "info" ? "info" : "";
  ui.notice.hidden = false;
}

export function clearNotice() {
  ui.notice.hidden = true;
  ui.notice.textContent = "";
}

// ---------------------------------------------------------------------------
// The URL names the open thread, so a thread opens in another tab by its link.
// ---------------------------------------------------------------------------

export function urlFor(threadId) {
  const url = new URL(location.href);
  url.hash = "";
  if (threadId) {
    url.searchParams.set("thread", threadId);
  } else {
    url.searchParams.delete("thread");
  }
  return url.pathname + url.search;
}

/** Puts the thread in the address bar: `mode` is "push" (a new history entry) or "replace". */
export function setUrl(threadId, mode) {
  const target = urlFor(threadId);
  if (target === location.pathname + location.search) {
    return;
  }
  if (mode === "push") {
    history.pushState({ thread: threadId }, "", target);
  } else {
    history.replaceState({ thread: threadId }, "", target);
  }
}
