/*
 * The chat page of chatkit-gateway: a worked example of the public protocol.
 *
 * This module starts the page: it wires the page's elements to the other
 * modules, follows the URL (which names the open thread) and opens the
 * streams. The page is split into ES modules by concern, embedded in the
 * binary with `include_str!` and served as they are, with no build step:
 *
 * - api.js: who the page acts for, and the operations on `POST /chatkit`;
 * - state.js: the shared state, element lookups, notices and the URL;
 * - history.js: the history list and its stream;
 * - thread.js: the open thread, its stream, its events and item updates;
 * - items.js: rendering items and widgets, and sending widgets' actions;
 * - composer.js: sending messages and running turns;
 * - attachments.js: the composer's attachments (upload, progress, retry,
 *   remove), drawn by attachment-chips.js, which also draws those of sent
 *   messages;
 * - turn-controls.js: Stop (and Escape) and the progress line of this tab's turns;
 * - interactive-items.js: client tool calls (answered by the page's hooks) and structured input forms;
 * - message-actions.js: Copy, feedback and Retry under a finished answer;
 * - thread-actions.js: rename and delete;
 * - hooks.js: the integrators' hooks (`window.chatkitPage`: widget actions, client tools).
 *
 * Everything goes through `POST /chatkit` and the two viewer streams, read
 * with chatkit-live.js (`ChatKitLive.subscribe`, a classic script the page
 * loads first, as ChatKit.js pages do):
 *
 * - the history stream (`GET /chatkit/events`) keeps the thread list live:
 *   `thread.created`, `thread.updated` (titles, status), `event: thread.deleted`;
 * - the open thread's stream (`GET /chatkit/threads/{id}/events`) carries
 *   every change to it, whoever made it: other tabs' turns as they stream,
 *   renames, locks and closes, deletion.
 *
 * Widgets render with widgets.js: their actions go where the action's config
 * says, as ChatKit.js sends them: a `handler: "client"` action to the page's
 * hook (`window.chatkitPage.actions`, see hooks.js), a `streaming: false` one
 * to `threads.sync_custom_action` (its `updated_item` replaces the widget
 * here; the gateway tells other tabs), and the rest to
 * `threads.custom_action` as a turn.
 *
 * A fresh stream starts at the present, so on every (re)connect and on
 * `resync` the page opens the stream first and then fetches what it shows.
 * The viewer stream is the one source of the items it streams: the turn
 * stream of a message sent from this tab adds only what is idempotent
 * (finished items, thread updates) and what no viewer sees (errors), so a
 * delta is never applied twice.
 */

import { AUTH, identity } from "./api.js";
import { send } from "./composer.js";
import { loadMoreHistory, watchHistory } from "./history.js";
// The hooks module sets `window.chatkitPage` as it loads, so integrators' scripts find it from the start.
import "./hooks.js";
import { showNotice, ui } from "./state.js";
import { askDelete, cancelDelete, deleteThread, endRename, saveRename, startRename } from "./thread-actions.js";
import { loadEarlier, newChat, openThread, renderThread } from "./thread.js";
import { refreshTimes } from "./time.js";

ui.composer.addEventListener("submit", (event) => {
  event.preventDefault();
  send();
});
ui.input.addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
    event.preventDefault();
    send();
  }
});
ui.newChat.addEventListener("click", () => newChat({ url: "push" }));
ui.historyMore.addEventListener("click", loadMoreHistory);
ui.loadEarlier.addEventListener("click", loadEarlier);
ui.rename.addEventListener("click", startRename);
ui.renameForm.addEventListener("submit", (event) => {
  event.preventDefault();
  saveRename();
});
ui.renameCancel.addEventListener("click", endRename);
ui.renameInput.addEventListener("keydown", (event) => {
  if (event.key === "Escape") {
    endRename();
  }
});
ui.remove.addEventListener("click", askDelete);
ui.removeNo.addEventListener("click", cancelDelete);
ui.removeYes.addEventListener("click", deleteThread);
window.addEventListener("hashchange", () => {
  // A client secret pasted into the address bar of an open page: start again with it.
  if (AUTH === "session" && new URLSearchParams(location.hash.slice(1)).has("client_secret")) {
    location.reload();
  }
});
window.addEventListener("popstate", () => {
  const threadId = new URLSearchParams(location.search).get("thread");
  if (threadId) {
    openThread(threadId);
  } else {
    newChat();
  }
});

/** Opens the history and the thread the URL names, or says how to sign in when the page cannot tell who it acts for. */
function start() {
  if (!identity) {
    ui.who.textContent = "Not signed in";
    showNotice(
      "This gateway authenticates with client secrets (CHATKIT_AUTH=session): open this page as " +
        "/#client_secret=<secret>, with a secret from POST /v1/chatkit/sessions.",
      "info",
    );
    renderThread();
    ui.input.disabled = true;
    ui.send.disabled = true;
    return;
  }
  ui.who.textContent = identity.label;
  watchHistory();
  // "5 minutes ago" stays true while the page stays open.
  setInterval(refreshTimes, 60_000);
  const initial = new URLSearchParams(location.search).get("thread");
  if (initial) {
    openThread(initial);
  } else {
    newChat();
  }
}

start();
