// The chat page's history list: the user's threads, newest first, kept live
// by the history stream (`GET /chatkit/events`: `thread.created`,
// `thread.updated` for titles and status, `event: thread.deleted`).

import { api, authHeaders } from "./api.js";
import { current, showNotice, threadList, titleOf, ui, urlFor } from "./state.js";
import { openThread, threadGone } from "./thread.js";
import { timeElement } from "./time.js";

const live = window.ChatKitLive;
const HISTORY_PAGE = 50;

export function renderHistory() {
  ui.history.replaceChildren(
    ...threadList.threads.map((thread) => {
      const li = document.createElement("li");
      li.dataset.threadId = thread.id;
      if (current && current.id === thread.id) {
        li.className = "current";
      }
      const link = document.createElement("a");
      link.href = urlFor(thread.id);
      const title = document.createElement("span");
      title.className = thread.title ? "title" : "title untitled";
      title.textContent = titleOf(thread) || "Untitled";
      link.append(title);
      const status = thread.status && thread.status.type;
      if (status === "locked" || status === "closed") {
        const badge = document.createElement("span");
        badge.className = "badge";
        badge.textContent = status;
        link.append(badge);
      }
      const created = timeElement(thread.created_at);
      if (created) {
        link.append(created);
      }
      link.addEventListener("click", (event) => {
        // A modified or middle click opens the link as the browser does (a new tab, say).
        if (event.button !== 0 || event.metaKey || event.ctrlKey || event.shiftKey || event.altKey) {
          return;
        }
        event.preventDefault();
        openThread(thread.id, { url: "push" });
      });
      li.append(link);
      return li;
    }),
  );
  ui.historyMore.hidden = !threadList.hasMore;
}

/** Updates a listed thread; a thread not listed yet is added at the top only when `atTop` says so. */
export function upsertHistory(thread, atTop) {
  const index = threadList.threads.findIndex((t) => t.id === thread.id);
  const entry = { id: thread.id, title: thread.title || null, status: thread.status, created_at: thread.created_at };
  if (index >= 0) {
    threadList.threads[index] = Object.assign(threadList.threads[index], entry);
  } else if (atTop) {
    threadList.threads.unshift(entry);
  } else {
    return;
  }
  renderHistory();
}

export function removeHistory(threadId) {
  threadList.threads = threadList.threads.filter((t) => t.id !== threadId);
  renderHistory();
}

/** Applies one event of the history stream, or queues it while a refresh runs. */
function applyHistoryEvent(event) {
  if (threadList.refreshing > 0) {
    threadList.queue.push(event);
    return;
  }
  if (event.type === "thread.created") {
    upsertHistory(event.thread, true);
  } else if (event.type === "thread.updated") {
    upsertHistory(event.thread, false);
  } else if (event.type === "deleted") {
    removeHistory(event.thread_id);
  }
}

/** Fetches the first page of threads, then replays what the stream brought meanwhile. */
async function refreshHistory() {
  threadList.refreshing += 1;
  try {
    const page = await api("threads.list", { limit: HISTORY_PAGE, order: "desc" });
    threadList.threads = page.data.map((t) => ({ id: t.id, title: t.title || null, status: t.status, created_at: t.created_at }));
    threadList.after = page.after || null;
    threadList.hasMore = Boolean(page.has_more);
  } catch (error) {
    showNotice(`Could not load the history: ${error.message}`);
  } finally {
    threadList.refreshing -= 1;
  }
  if (threadList.refreshing === 0) {
    const queued = threadList.queue.splice(0);
    renderHistory();
    queued.forEach(applyHistoryEvent);
  }
}

export async function loadMoreHistory() {
  if (!threadList.after) {
    return;
  }
  try {
    const page = await api("threads.list", { limit: HISTORY_PAGE, order: "desc", after: threadList.after });
    for (const t of page.data) {
      if (!threadList.threads.some((known) => known.id === t.id)) {
        threadList.threads.push({ id: t.id, title: t.title || null, status: t.status, created_at: t.created_at });
      }
    }
    threadList.after = page.after || null;
    threadList.hasMore = Boolean(page.has_more);
    renderHistory();
  } catch (error) {
    showNotice(`Could not load more threads: ${error.message}`);
  }
}

/** Opens the history stream; a fresh stream starts at the present, so each (re)connect refetches. */
export function watchHistory() {
  threadList.subscription = live.subscribe("chatkit/events", {
    headers: authHeaders,
    onStatus: (state) => {
      ui.historyLive.dataset.state = state;
    },
    onOpen: refreshHistory,
    onResync: refreshHistory,
    onEvent: applyHistoryEvent,
    onDeleted: (data) => {
      applyHistoryEvent({ type: "deleted", thread_id: data.thread_id });
      if (current && current.id === data.thread_id) {
        threadGone(current, "This thread was deleted.");
      }
    },
    onSessionEnded: (data) => showNotice(`Your session ended (${data.reason}); reload with a new client secret.`),
    onError: (error) => showNotice(`The history stream was refused: ${error.message}`),
  });
}
