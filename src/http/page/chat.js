/*
 * The chat page of chatkit-gateway: a worked example of the public protocol.
 *
 * One file on purpose, past the ~600 lines other sources keep to: the binary
 * embeds it with `include_str!` and serves it as is, with no build step, and a
 * page that loads one script needs no module loader.
 *
 * Everything goes through `POST /chatkit` and the two viewer streams, read
 * with chatkit-live.js (`ChatKitLive.subscribe`):
 *
 * - the history stream (`GET /chatkit/events`) keeps the thread list live:
 *   `thread.created`, `thread.updated` (titles, status), `event: thread.deleted`;
 * - the open thread's stream (`GET /chatkit/threads/{id}/events`) carries
 *   every change to it, whoever made it: other tabs' turns as they stream,
 *   renames, locks and closes, deletion.
 *
 * Widgets render with widgets.js (an ES module this script imports): their
 * actions go where the action's config says, as ChatKit.js sends them: a
 * `handler: "client"` action to the page's hook (`window.chatkitPage.actions`,
 * see below), a `streaming: false` one to `threads.sync_custom_action` (its
 * `updated_item` replaces the widget here; the gateway tells other tabs), and
 * the rest to `threads.custom_action` as a turn.
 *
 * A fresh stream starts at the present, so on every (re)connect and on
 * `resync` the page opens the stream first and then fetches what it shows.
 * The viewer stream is the one source of the items it streams: the turn
 * stream of a message sent from this tab adds only what is idempotent
 * (finished items, thread updates) and what no viewer sees (errors), so a
 * delta is never applied twice.
 */
(function () {
  "use strict";

  const live = window.ChatKitLive;
  const $ = (id) => document.getElementById(id);
  const meta = (name) => {
    const element = document.querySelector(`meta[name="${name}"]`);
    return element ? element.content : null;
  };

  const AUTH = meta("chatkit-auth") === "session" ? "session" : "header";
  const USER_HEADER = meta("chatkit-user-header") || "x-user-id";
  const USER_KEY = "chatkit-gateway.user";
  const SECRET_KEY = "chatkit-gateway.client_secret";
  const HISTORY_PAGE = 50;
  const ITEMS_PAGE = 100;
  const ACTIVE_PLACEHOLDER = "Message (Enter to send, Shift+Enter for a new line)";
  const LOCKED_PLACEHOLDER = "This thread is locked.";
  const CLOSED_TEXT = "This conversation has been closed.";
  const GONE_PLACEHOLDER = "This thread is gone: start a new chat.";

  const ui = {
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
   * The page's hooks, for integrators who serve their own copy of the page
   * (the policy allows same-origin scripts only). A script may set them before
   * or after this one runs:
   *
   *   window.chatkitPage = { actions: { "my.action": async (action, item) => {...} } };
   *
   * `actions` answers widget actions whose config says `handler: "client"`,
   * by action type; it gets the action (its payload holds the widget's form
   * values) and the widget item.
   */
  const hooks = (window.chatkitPage = Object.assign({ actions: {} }, window.chatkitPage || {}));

  /** The widget renderer, once its module has loaded (null until then: widgets show as text). */
  let widgets = null;
  import("./widgets.js")
    .then((module) => {
      widgets = module;
      if (current) {
        renderItems();
      }
    })
    .catch((error) => showNotice(`Could not load the widget renderer: ${error.message}`));

  // ------------------------------------------------------------------ //
  // Identity: the user header in dev mode, a client secret with sessions.
  // ------------------------------------------------------------------ //

  function randomId() {
    const bytes = new Uint8Array(4);
    crypto.getRandomValues(bytes);
    return "user_" + Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
  }

  /** The headers that say who this page acts for, or null when it cannot tell. */
  function identify() {
    const params = new URLSearchParams(location.search);
    if (AUTH === "header") {
      let user = (params.get("user") || "").trim();
      if (user) {
        localStorage.setItem(USER_KEY, user);
      } else {
        user = localStorage.getItem(USER_KEY) || randomId();
        localStorage.setItem(USER_KEY, user);
      }
      return { headers: { [USER_HEADER]: user }, label: `Signed in as ${user} (dev mode: ?user=<id> to switch)` };
    }
    const hash = new URLSearchParams(location.hash.slice(1));
    const fromHash = hash.get("client_secret");
    if (fromHash) {
      sessionStorage.setItem(SECRET_KEY, fromHash);
      // The secret stays out of the address bar, links and history.
      history.replaceState(history.state, "", location.pathname + location.search);
    }
    const secret = sessionStorage.getItem(SECRET_KEY);
    if (!secret) {
      return null;
    }
    return { headers: { authorization: `Bearer ${secret}` }, label: "Signed in with a client secret" };
  }

  const identity = identify();
  const authHeaders = () => Object.assign({}, identity ? identity.headers : {});

  // ------------------------------------------------------------------ //
  // The protocol: JSON operations and turn streams on POST /chatkit.
  // ------------------------------------------------------------------ //

  class ApiError extends Error {
    constructor(status, message) {
      super(message);
      this.status = status;
    }
  }

  async function post(type, params) {
    const headers = authHeaders();
    headers["content-type"] = "application/json";
    const response = await fetch("chatkit", { method: "POST", headers, body: JSON.stringify({ type, params }) });
    if (!response.ok) {
      let message = `${type} failed: HTTP ${response.status}`;
      try {
        const body = await response.json();
        if (body && body.error && body.error.message) {
          message = body.error.message;
        }
      } catch (_) {
        // Not JSON: keep the status.
      }
      throw new ApiError(response.status, message);
    }
    return response;
  }

  async function api(type, params) {
    const response = await post(type, params);
    return response.json();
  }

  function textInput(text) {
    return { content: [{ type: "input_text", text }], attachments: [], inference_options: {} };
  }

  // ------------------------------------------------------------------ //
  // State.
  // ------------------------------------------------------------------ //

  const threadList = {
    threads: [],
    after: null,
    hasMore: false,
    refreshing: 0,
    queue: [],
    subscription: null,
  };

  /** The open thread, or null for a new chat. */
  let current = null;
  /** Set while `threads.create` runs, so that a second Enter does not make a second thread. */
  let creating = false;

  function newThreadState(id, thread) {
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

  // ------------------------------------------------------------------ //
  // The URL names the open thread, so a thread opens in another tab by its link.
  // ------------------------------------------------------------------ //

  function urlFor(threadId) {
    const url = new URL(location.href);
    url.hash = "";
    if (threadId) {
      url.searchParams.set("thread", threadId);
    } else {
      url.searchParams.delete("thread");
    }
    return url.pathname + url.search;
  }

  function setUrl(threadId, mode) {
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

  // ------------------------------------------------------------------ //
  // Notices.
  // ------------------------------------------------------------------ //

  function showNotice(text, kind) {
    ui.notice.textContent = text;
    ui.notice.className = kind === "info" ? "info" : "";
    ui.notice.hidden = false;
  }

  function clearNotice() {
    ui.notice.hidden = true;
    ui.notice.textContent = "";
  }

  // ------------------------------------------------------------------ //
  // The history list.
  // ------------------------------------------------------------------ //

  function titleOf(thread) {
    return thread && thread.title ? thread.title : "";
  }

  function renderHistory() {
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
        link.addEventListener("click", (event) => {
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

  function upsertHistory(thread, atTop) {
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

  function removeHistory(threadId) {
    threadList.threads = threadList.threads.filter((t) => t.id !== threadId);
    renderHistory();
  }

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

  async function loadMoreHistory() {
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

  function watchHistory() {
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

  // ------------------------------------------------------------------ //
  // The open thread: items, title, status.
  // ------------------------------------------------------------------ //

  function plainText(item) {
    const parts = Array.isArray(item.content) ? item.content : [];
    if (item.type === "user_message") {
      return parts.map((p) => (p.type === "input_tag" ? `@${p.text}` : p.text || "")).join("");
    }
    return parts.map((p) => p.text || "").join("");
  }

  const HIDDEN_TYPES = new Set(["hidden_context_item", "sdk_hidden_context", "end_of_turn"]);

  function describe(item) {
    switch (item.type) {
      case "client_tool_call":
        return `Tool call: ${item.name}`;
      case "widget":
        return item.copy_text || "A widget";
      case "task":
        return `Task: ${(item.task && item.task.title) || item.task?.type || "task"}`;
      case "workflow":
        return "A workflow";
      case "structured_input":
        return "A question for you (answer it in ChatKit.js)";
      case "generated_image":
        return "A generated image";
      default:
        return item.type;
    }
  }

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
    if (item.type === "widget" && widgets) {
      li.classList.add("widget");
      bubble.replaceChildren(widgetElement(item));
      return li;
    }
    bubble.textContent = kind === "other" ? describe(item) : plainText(item);
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
      element = widgets.renderWidget(item.widget, {
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
        const handler = hooks.actions[config.type];
        if (typeof handler !== "function") {
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

  function keepScrolled(update) {
    const stick = nearBottom();
    update();
    if (stick) {
      ui.scroller.scrollTop = ui.scroller.scrollHeight;
    }
  }

  function renderItems() {
    keepScrolled(() => {
      const shown = current ? current.items.filter((item) => !HIDDEN_TYPES.has(item.type)) : [];
      ui.messages.replaceChildren(...shown.map((item) => renderItem(item)));
      ui.empty.hidden = shown.length > 0 || (current !== null && current.thread === null);
      ui.loadEarlier.hidden = !(current && current.hasEarlier);
    });
  }

  function renderOne(item) {
    const element = ui.messages.querySelector(`li[data-item-id="${CSS.escape(item.id)}"]`);
    if (!element) {
      renderItems();
      return;
    }
    keepScrolled(() => renderItem(item, element));
  }

  function renderThread() {
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
  function renderStatus() {
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

  function setThread(state, thread) {
    state.thread = Object.assign({}, state.thread || {}, thread);
    if (state === current) {
      renderThread();
    }
    upsertHistory(thread, false);
  }

  function itemIndex(state, id) {
    return state.items.findIndex((item) => item.id === id);
  }

  /** Adds or replaces an item; `done` marks it finished, after which no delta changes it. */
  function upsertItem(state, item, done) {
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

  function applyUpdate(state, itemId, update) {
    const index = itemIndex(state, itemId);
    if (index < 0 || state.done.has(itemId)) {
      return;
    }
    const item = state.items[index];
    if (!Array.isArray(item.content)) {
      item.content = [];
    }
    const at = update.content_index;
    switch (update.type) {
      case "assistant_message.content_part.added":
      case "assistant_message.content_part.done":
        item.content[at] = update.content;
        break;
      case "assistant_message.content_part.text_delta": {
        const part = item.content[at] || { type: "output_text", text: "", annotations: [] };
        part.text = (part.text || "") + update.delta;
        item.content[at] = part;
        break;
      }
      case "widget.root.updated":
      case "widget.component.updated":
      case "widget.streaming_text.value_delta":
        if (!widgets || !item.widget) {
          return;
        }
        item.widget = widgets.applyWidgetUpdate(item.widget, update);
        break;
      default:
        // Workflow and image updates: the finished item shows them.
        return;
    }
    if (state === current) {
      renderOne(item);
    }
  }

  /**
   * Applies one event of the open thread. `fromTurn` marks events of this
   * tab's own turn stream, of which only the idempotent ones count: the
   * viewer stream carries the rest.
   */
  function applyThreadEvent(state, event, fromTurn) {
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
        threadGone(state, "This thread does not exist (it was deleted, or belongs to another user).");
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

  async function loadEarlier() {
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

  function threadGone(state, message) {
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
          threadGone(state, "This thread does not exist (it was deleted, or belongs to another user).");
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
    current = null;
    ui.renameForm.hidden = true;
    ui.removeConfirm.hidden = true;
    ui.title.hidden = false;
  }

  /** Shows a thread: its stream opens first, then the fetch fills the view. */
  function openThread(threadId, options) {
    const o = options || {};
    if (current && current.id === threadId && !current.gone) {
      return;
    }
    closeCurrent();
    clearNotice();
    current = newThreadState(threadId, o.thread);
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

  function newChat(options) {
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

  // ------------------------------------------------------------------ //
  // Sending: a turn stream on POST /chatkit.
  // ------------------------------------------------------------------ //

  async function runTurn(type, params, state) {
    let target = state;
    const response = await post(type, params);
    await live.readStream(response, (message) => {
      if (message.event !== "message") {
        return;
      }
      const event = JSON.parse(message.data);
      if (event.type === "thread.created") {
        // The new thread becomes the open one, if the user is still on the new chat.
        upsertHistory(event.thread, true);
        creating = false;
        if (current === null) {
          target = openThread(event.thread.id, { url: "replace", thread: event.thread });
          renderStatus();
        }
        return;
      }
      if (target) {
        applyThreadEvent(target, event, true);
      }
    });
  }

  async function send() {
    const text = ui.input.value.trim();
    if (!text || ui.input.disabled || creating || !identity) {
      return;
    }
    const state = current;
    if (state && (state.gone || !state.thread)) {
      return;
    }
    ui.input.value = "";
    clearNotice();
    try {
      if (state) {
        await runTurn("threads.add_user_message", { thread_id: state.id, input: textInput(text) }, state);
      } else {
        creating = true;
        renderStatus();
        await runTurn("threads.create", { input: textInput(text) }, null);
      }
    } catch (error) {
      showNotice(error.message);
      if (!ui.input.value) {
        ui.input.value = text;
      }
    } finally {
      if (creating) {
        creating = false;
        renderStatus();
      }
    }
  }

  // ------------------------------------------------------------------ //
  // Rename and delete.
  // ------------------------------------------------------------------ //

  function startRename() {
    if (!current || !current.thread) {
      return;
    }
    ui.renameInput.value = titleOf(current.thread);
    ui.renameForm.hidden = false;
    ui.title.hidden = true;
    ui.rename.hidden = true;
    ui.renameInput.focus();
    ui.renameInput.select();
  }

  function endRename() {
    ui.renameForm.hidden = true;
    ui.title.hidden = false;
    renderThread();
  }

  async function saveRename() {
    const state = current;
    const title = ui.renameInput.value.trim();
    if (!state || !title) {
      endRename();
      return;
    }
    try {
      const thread = await api("threads.update", { thread_id: state.id, title });
      setThread(state, thread);
    } catch (error) {
      showNotice(`Could not rename the thread: ${error.message}`);
    }
    endRename();
  }

  async function deleteThread() {
    const state = current;
    ui.removeConfirm.hidden = true;
    if (!state) {
      return;
    }
    try {
      await api("threads.delete", { thread_id: state.id });
      removeHistory(state.id);
      if (current === state) {
        newChat({ url: "replace" });
      }
    } catch (error) {
      showNotice(`Could not delete the thread: ${error.message}`);
      renderThread();
    }
  }

  // ------------------------------------------------------------------ //
  // Wiring.
  // ------------------------------------------------------------------ //

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
  ui.remove.addEventListener("click", () => {
    ui.remove.hidden = true;
    ui.rename.hidden = true;
    ui.removeConfirm.hidden = false;
  });
  ui.removeNo.addEventListener("click", () => {
    ui.removeConfirm.hidden = true;
    renderThread();
  });
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
  const initial = new URLSearchParams(location.search).get("thread");
  if (initial) {
    openThread(initial);
  } else {
    newChat();
  }
})();
