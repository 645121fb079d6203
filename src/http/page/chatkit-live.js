/*
 * chatkit-live.js: live multi-tab sync for pages served by chatkit-gateway.
 *
 * The gateway's viewer streams (`GET /chatkit/threads/{id}/events` and
 * `GET /chatkit/events`) are Server-Sent Events that need the same identity
 * as `POST /chatkit`: the user header in dev mode, `Authorization: Bearer
 * <client secret>` with sessions. `EventSource` cannot send headers, so this
 * script reads the streams with `fetch` and a small SSE parser, reconnects
 * with `Last-Event-ID`, and hands every event to a callback.
 *
 * With ChatKit.js (the `<openai-chatkit>` web component):
 *
 *   <script src="/chatkit-live.js"></script>
 *   <script>
 *     const chatkit = document.querySelector("openai-chatkit");
 *     const headers = { "x-user-id": "alice" }; // or { authorization: "Bearer " + clientSecret }
 *     chatkit.setOptions({ api: { url: "/chatkit", domainKey: "local-dev",
 *       fetch: (url, init) => fetch(url, { ...init, headers: { ...init?.headers, ...headers } }) } });
 *     ChatKitLive.connect(chatkit, { headers });
 *   </script>
 *
 * `connect` follows the thread the component shows (`chatkit.thread.change`),
 * subscribes to its viewer stream and calls `chatkit.fetchUpdates()` after
 * each saved change (a message, an answer, a rename, a lock), after `resync`
 * and after every reconnect, so a turn sent in another tab, a status change
 * made through the /v1 API or a rename made on another replica shows at
 * once. Calls are coalesced: one at a time, at most one every `minInterval`
 * milliseconds, and none while this tab's own answer streams in.
 *
 * `subscribe(url, handlers)` is the stream reader underneath; the gateway's
 * own chat page (`GET /`) uses it for both streams.
 */
(function (global) {
  "use strict";

  /** Splits a text/event-stream body into messages, as the SSE specification reads it. */
  function createParser(onMessage) {
    let buffer = "";
    let data = [];
    let event = "";
    let lastEventId = null;
    let retry = null;
    function line(text) {
      if (text === "") {
        if (data.length > 0) {
          onMessage({ event: event || "message", data: data.join("\n"), id: lastEventId });
        }
        data = [];
        event = "";
        return;
      }
      if (text.startsWith(":")) {
        return;
      }
      const colon = text.indexOf(":");
      const field = colon === -1 ? text : text.slice(0, colon);
      let value = colon === -1 ? "" : text.slice(colon + 1);
      if (value.startsWith(" ")) {
        value = value.slice(1);
      }
      if (field === "data") {
        data.push(value);
      } else if (field === "event") {
        event = value;
      } else if (field === "id" && !value.includes("\0")) {
        lastEventId = value;
      } else if (field === "retry" && /^\d+$/.test(value)) {
        retry = Number(value);
      }
    }
    return {
      feed(chunk) {
        buffer += chunk;
        let end;
        while ((end = buffer.indexOf("\n")) !== -1) {
          const text = buffer.slice(0, end);
          buffer = buffer.slice(end + 1);
          line(text.endsWith("\r") ? text.slice(0, -1) : text);
        }
      },
      get lastEventId() {
        return lastEventId;
      },
      get retry() {
        return retry;
      },
    };
  }

  /**
   * Reads a whole SSE response, calling `onMessage({event, data, id})` for
   * each message; resolves with the parser (its `lastEventId` and `retry`)
   * when the body ends.
   */
  async function readStream(response, onMessage, signal) {
    const parser = createParser(onMessage);
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done || (signal && signal.aborted)) {
          break;
        }
        parser.feed(value);
      }
    } finally {
      reader.releaseLock();
    }
    return parser;
  }

  function headersOf(option) {
    const headers = typeof option === "function" ? option() : option;
    return Object.assign({}, headers || {});
  }

  function call(handler, ...args) {
    if (typeof handler === "function") {
      try {
        handler(...args);
      } catch (error) {
        console.error("chatkit-live: a handler failed", error);
      }
    }
  }

  /** The `message` of the gateway's JSON error body, else the status line. */
  async function errorMessage(response) {
    try {
      const body = await response.json();
      if (body && body.error && body.error.message) {
        return body.error.message;
      }
    } catch (_) {
      // Not JSON: the status line says enough.
    }
    return `HTTP ${response.status} ${response.statusText}`.trim();
  }

  /**
   * Subscribes to a viewer stream and keeps it open until `close()`.
   *
   * handlers:
   *   headers        object, or function returning one: the identity headers
   *   onOpen({reconnect})  the stream is open (again): fetch what it shows now
   *   onEvent(event, id)   a ChatKit event (`thread.updated`, `thread.item.done`, …)
   *   onResync(data)       `event: resync`: refetch what it shows
   *   onDeleted(data)      `event: thread.deleted` ({thread_id}); a thread stream then ends for good
   *   onSessionEnded(data) `event: session.ended` ({reason}); the stream ends for good
   *   onError({status, message})  refused (401, 403, 404, …): the stream ends for good
   *   onStatus(state)      "connecting", "open", "reconnecting" or "closed"
   *
   * A stream that ends or fails is reopened after the server's `retry:` hint
   * (1 s by default), doubling up to 10 s while attempts fail, with the last
   * event id in `Last-Event-ID` so that nothing is missed.
   */
  function subscribe(url, handlers) {
    const h = handlers || {};
    let lastEventId = null;
    let retryMs = 1000;
    let failures = 0;
    let opened = 0;
    let closed = false;
    let controller = null;
    let timer = null;
    // A thread's stream ends for good once its thread is deleted; the history stream goes on.
    const threadStream = /\/threads\/[^/]+\/events$/.test(url);

    function stop(state) {
      closed = true;
      if (timer) {
        clearTimeout(timer);
      }
      if (controller) {
        controller.abort();
      }
      call(h.onStatus, state || "closed");
    }

    function retryLater() {
      if (closed) {
        return;
      }
      call(h.onStatus, "reconnecting");
      const delay = Math.min(retryMs * 2 ** Math.min(failures, 4), Math.max(retryMs, 10000));
      failures += 1;
      timer = setTimeout(open, delay);
    }

    function dispatch(message) {
      if (closed) {
        return;
      }
      let data = null;
      try {
        data = JSON.parse(message.data);
      } catch (_) {
        data = message.data;
      }
      switch (message.event) {
        case "message":
          call(h.onEvent, data, message.id);
          break;
        case "resync":
          call(h.onResync, data);
          break;
        case "thread.deleted":
          call(h.onDeleted, data);
          if (threadStream) {
            stop();
          }
          break;
        case "session.ended":
          call(h.onSessionEnded, data);
          stop();
          break;
        default:
          // Named events this script does not know are left alone.
          break;
      }
    }

    async function open() {
      timer = null;
      if (closed) {
        return;
      }
      call(h.onStatus, opened === 0 ? "connecting" : "reconnecting");
      controller = new AbortController();
      const headers = headersOf(h.headers);
      headers.accept = "text/event-stream";
      if (lastEventId !== null) {
        headers["last-event-id"] = lastEventId;
      }
      let response;
      try {
        response = await fetch(url, { headers, signal: controller.signal, cache: "no-store" });
      } catch (_) {
        retryLater();
        return;
      }
      if (closed) {
        return;
      }
      if (!response.ok) {
        const message = await errorMessage(response);
        if (response.status >= 500 || response.status === 429) {
          // A replica stopping or unready: try again, perhaps elsewhere.
          retryLater();
        } else {
          stop("failed");
          call(h.onError, { status: response.status, message });
        }
        return;
      }
      failures = 0;
      opened += 1;
      call(h.onStatus, "open");
      call(h.onOpen, { reconnect: opened > 1 });
      try {
        const parser = await readStream(
          response,
          (message) => {
            if (message.id !== null) {
              lastEventId = message.id;
            }
            dispatch(message);
          },
          controller.signal,
        );
        if (parser.lastEventId !== null) {
          lastEventId = parser.lastEventId;
        }
        if (parser.retry !== null) {
          retryMs = parser.retry;
        }
      } catch (_) {
        // The connection broke; reopened below unless closed on purpose.
      }
      retryLater();
    }

    open();
    return {
      close() {
        stop();
      },
      get lastEventId() {
        return lastEventId;
      },
    };
  }

  /**
   * Keeps a ChatKit.js component in sync with its thread's viewer stream.
   *
   * options:
   *   headers      the identity headers (object or function), as for `subscribe`
   *   baseUrl      the gateway's origin, "" (same origin) by default
   *   threadId     the thread shown at start, if the component was given one
   *   minInterval  milliseconds between two `fetchUpdates()` calls (default 250)
   *   onStatus     called with the stream's state, as for `subscribe`
   *
   * Returns `{ close() }`.
   */
  function connect(chatkit, options) {
    const o = options || {};
    const base = (o.baseUrl || "").replace(/\/$/, "");
    const minInterval = o.minInterval === undefined ? 250 : o.minInterval;
    let threadId = null;
    let subscription = null;
    let responding = false;
    let running = false;
    let wanted = false;
    let lastRun = 0;

    // One call at a time, at most one every `minInterval`; a request made
    // meanwhile runs once the current call ends.
    function refresh() {
      wanted = true;
      if (running || responding) {
        return;
      }
      const wait = lastRun + minInterval - Date.now();
      if (wait > 0) {
        running = true;
        setTimeout(() => {
          running = false;
          refresh();
        }, wait);
        return;
      }
      wanted = false;
      running = true;
      lastRun = Date.now();
      Promise.resolve()
        .then(() => chatkit.fetchUpdates())
        .catch((error) => console.error("chatkit-live: fetchUpdates failed", error))
        .finally(() => {
          running = false;
          if (wanted) {
            refresh();
          }
        });
    }

    function follow(id) {
      if (id === threadId) {
        return;
      }
      if (subscription) {
        subscription.close();
        subscription = null;
      }
      threadId = id || null;
      if (!threadId) {
        return;
      }
      subscription = subscribe(`${base}/chatkit/threads/${encodeURIComponent(threadId)}/events`, {
        headers: o.headers,
        onStatus: o.onStatus,
        // A fresh stream starts at the present: fetch what happened before it.
        onOpen: refresh,
        onResync: refresh,
        onEvent(event) {
          // Items still streaming are not saved yet, so `fetchUpdates` could
          // not show them; their `thread.item.done` follows.
          if (event && (event.type === "thread.item.added" || event.type === "thread.item.updated")) {
            return;
          }
          refresh();
        },
        onDeleted() {
          threadId = null;
          subscription = null;
          if (typeof chatkit.setThreadId === "function") {
            chatkit.setThreadId(null);
          }
        },
      });
    }

    const listeners = {
      "chatkit.thread.change": (event) => follow(event.detail && event.detail.threadId),
      "chatkit.thread.load.end": (event) => follow(event.detail && event.detail.threadId),
      "chatkit.response.start": () => {
        responding = true;
      },
      "chatkit.response.end": () => {
        responding = false;
        if (wanted) {
          refresh();
        }
      },
    };
    for (const [name, listener] of Object.entries(listeners)) {
      chatkit.addEventListener(name, listener);
    }
    follow(o.threadId || null);
    return {
      close() {
        for (const [name, listener] of Object.entries(listeners)) {
          chatkit.removeEventListener(name, listener);
        }
        follow(null);
      },
    };
  }

  global.ChatKitLive = { subscribe, connect, readStream, createParser };
})(typeof window !== "undefined" ? window : globalThis);
