// Echo server on the Node ChatKit backend SDK (npm chatkit-node-backend-sdk 1.1.2), to benchmark it
// beside chatkit-gateway and the Python reference (../echo_server.py) under the same load tester.
//
// It serves `POST /chatkit` on express with the SDK's `ChatKitServer`, wired the way the SDK's README
// shows, and answers every user message the way the gateway's echo responder and the Python peer do:
// an assistant message `echo: <text>` streamed in three text deltas, and the thread titled after its
// first message. Threads and items live in one SQLite file (better-sqlite3, WAL), scoped to the user
// named by the `x-user-id` header, with the same tables and paging as the Python peer's store.
//
// Three choices keep the comparison about the SDK rather than about logging: the SDK gets a logger
// that drops its per-request `info` and `debug` lines (its constructor takes one for that), express
// computes no ETag for the JSON answers, and the request body reaches `ChatKitServer.process` as the
// raw bytes it accepts rather than parsed and serialized again. The SDK itself is unchanged; it still
// prints one unconditional `DEBUG threads.create params` line to stdout per created thread.
//
// One event is the echo's own: the SDK does not send the `stream_options` event that openai-chatkit
// 1.6.5 (and the gateway) start each response with, and that the load tester requires, so `respond`
// sends it first.
//
// Usage:
//     node echo_server.mjs --port 8000 --db /tmp/node-peer.db

import { parseArgs } from "node:util";

import Database from "better-sqlite3";
import { ChatKitServer, NotFoundError, Store, StoreNotFoundError } from "chatkit-node-backend-sdk";
import express from "express";

const USER_HEADER = "x-user-id";
const TITLE_CHARS = 40;
const DELTA_COUNT = 3;
// The largest request body taken; the load tester's are well under a kilobyte.
const BODY_LIMIT = "1mb";

// A store on one SQLite file, every row scoped to its user.
//
// Pages follow insertion order (an autoincrement `seq`), newest first for `desc`; `after` is the id
// of the last row of the previous page, and a page's `after` is set only when more rows follow.
// Threads and items are kept as their JSON. better-sqlite3 is synchronous, which suits a one-process
// benchmark: each call is an indexed lookup or a WAL append without fsync (`synchronous=NORMAL`, as
// the gateway and the Python peer use), cheaper than a hop to a worker thread.
class SQLiteStore extends Store {
  constructor(path) {
    super();
    this.db = new Database(path);
    this.db.pragma("journal_mode = WAL");
    this.db.pragma("synchronous = NORMAL");
    this.db.pragma("busy_timeout = 5000");
    this.db.exec(`
      CREATE TABLE IF NOT EXISTS threads (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        id TEXT NOT NULL UNIQUE,
        user_id TEXT NOT NULL,
        data TEXT NOT NULL
      );
      CREATE INDEX IF NOT EXISTS threads_by_user ON threads (user_id, seq);
      CREATE TABLE IF NOT EXISTS items (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        id TEXT NOT NULL,
        thread_id TEXT NOT NULL,
        user_id TEXT NOT NULL,
        data TEXT NOT NULL,
        UNIQUE (thread_id, id)
      );
      CREATE INDEX IF NOT EXISTS items_by_thread ON items (thread_id, user_id, seq);
      CREATE TABLE IF NOT EXISTS attachments (
        id TEXT PRIMARY KEY,
        user_id TEXT NOT NULL,
        data TEXT NOT NULL
      );
    `);
    // Statements are prepared once; better-sqlite3 reuses them across calls.
    const sql = (text) => this.db.prepare(text);
    this.stmt = {
      loadThread: sql("SELECT data FROM threads WHERE id = ? AND user_id = ?"),
      // An id owned by another user is left alone rather than taken over.
      saveThread: sql(
        "INSERT INTO threads (id, user_id, data) VALUES (?, ?, ?) " +
          "ON CONFLICT (id) DO UPDATE SET data = excluded.data WHERE threads.user_id = excluded.user_id",
      ),
      deleteThread: sql("DELETE FROM threads WHERE id = ? AND user_id = ?"),
      deleteThreadItems: sql("DELETE FROM items WHERE thread_id = ? AND user_id = ?"),
      // An upsert keeps the first insertion's `seq`, so an item keeps its place in the thread.
      saveItem: sql(
        "INSERT INTO items (id, thread_id, user_id, data) VALUES (?, ?, ?, ?) " +
          "ON CONFLICT (thread_id, id) DO UPDATE SET data = excluded.data WHERE items.user_id = excluded.user_id",
      ),
      loadItem: sql("SELECT data FROM items WHERE thread_id = ? AND id = ? AND user_id = ?"),
      deleteItem: sql("DELETE FROM items WHERE thread_id = ? AND id = ? AND user_id = ?"),
      saveAttachment: sql(
        "INSERT INTO attachments (id, user_id, data) VALUES (?, ?, ?) " +
          "ON CONFLICT (id) DO UPDATE SET data = excluded.data WHERE attachments.user_id = excluded.user_id",
      ),
      loadAttachment: sql("SELECT data FROM attachments WHERE id = ? AND user_id = ?"),
      deleteAttachment: sql("DELETE FROM attachments WHERE id = ? AND user_id = ?"),
    };
    this.pages = new Map();
    this.deleteThreadWithItems = this.db.transaction((threadId, userId) => {
      this.stmt.deleteThreadItems.run(threadId, userId);
      this.stmt.deleteThread.run(threadId, userId);
    });
  }

  // -- threads ------------------------------------------------------------------------------

  async loadThread(threadId, context) {
    const row = this.stmt.loadThread.get(threadId, context.userId);
    if (row === undefined) throw new StoreNotFoundError(`thread ${threadId} not found`);
    return JSON.parse(row.data);
  }

  async saveThread(thread, context) {
    // The server may hand over a full thread; only the metadata is kept, as the Store interface asks.
    const { id, title, created_at, status, metadata } = thread;
    const data = JSON.stringify({ id, title: title ?? null, created_at, status, metadata });
    this.stmt.saveThread.run(id, context.userId, data);
  }

  async loadThreads(limit, after, order, context) {
    return this.page("threads", "user_id = ?", [context.userId], after, limit, order);
  }

  async deleteThread(threadId, context) {
    this.deleteThreadWithItems(threadId, context.userId);
  }

  // -- items --------------------------------------------------------------------------------

  async loadThreadItems(threadId, after, limit, order, context) {
    return this.page("items", "thread_id = ? AND user_id = ?", [threadId, context.userId], after, limit, order);
  }

  async addThreadItem(threadId, item, context) {
    await this.saveItem(threadId, item, context);
  }

  async saveItem(threadId, item, context) {
    this.stmt.saveItem.run(item.id, threadId, context.userId, JSON.stringify(item));
  }

  async loadItem(threadId, itemId, context) {
    const row = this.stmt.loadItem.get(threadId, itemId, context.userId);
    if (row === undefined) throw new StoreNotFoundError(`item ${itemId} not found in thread ${threadId}`);
    return JSON.parse(row.data);
  }

  async deleteThreadItem(threadId, itemId, context) {
    this.stmt.deleteItem.run(threadId, itemId, context.userId);
  }

  // -- attachments (stored, though the echo benchmark sends none) ---------------------------

  async saveAttachment(attachment, context) {
    this.stmt.saveAttachment.run(attachment.id, context.userId, JSON.stringify(attachment));
  }

  async loadAttachment(attachmentId, context) {
    const row = this.stmt.loadAttachment.get(attachmentId, context.userId);
    if (row === undefined) throw new StoreNotFoundError(`attachment ${attachmentId} not found`);
    return JSON.parse(row.data);
  }

  async deleteAttachment(attachmentId, context) {
    this.stmt.deleteAttachment.run(attachmentId, context.userId);
  }

  // -- helpers ------------------------------------------------------------------------------

  // Up to `limit` rows of `table` within `scope` as a page. An `after` id that is not in scope
  // (deleted, or someone else's) gives an empty page.
  page(table, scope, args, after, limit, order) {
    const statement = this.pageStatement(table, scope, after !== null, order === "desc");
    const params = after === null ? [...args] : [...args, ...args, after];
    const wanted = Math.max(limit, 0);
    const rows = statement.all(...params, wanted + 1);
    const hasMore = rows.length > wanted;
    const kept = rows.slice(0, wanted);
    return {
      data: kept.map((row) => JSON.parse(row.data)),
      has_more: hasMore,
      after: hasMore && kept.length > 0 ? kept[kept.length - 1].id : null,
    };
  }

  // The paging statement for one shape of query, prepared the first time it is asked for.
  pageStatement(table, scope, hasAfter, newestFirst) {
    const key = `${table}|${scope}|${hasAfter}|${newestFirst}`;
    let statement = this.pages.get(key);
    if (statement === undefined) {
      let text = `SELECT id, data FROM ${table} WHERE ${scope}`;
      if (hasAfter) {
        text += ` AND seq ${newestFirst ? "<" : ">"} (SELECT seq FROM ${table} WHERE ${scope} AND id = ?)`;
      }
      text += ` ORDER BY seq ${newestFirst ? "DESC" : "ASC"} LIMIT ?`;
      statement = this.db.prepare(text);
      this.pages.set(key, statement);
    }
    return statement;
  }
}

// `text` in `parts` consecutive pieces of nearly equal length (some empty if it is shorter).
function split(text, parts) {
  const size = Math.ceil(text.length / parts);
  return Array.from({ length: parts }, (_, i) => text.slice(i * size, (i + 1) * size));
}

// Answers each user message with `echo: <text>`, like the gateway's echo responder.
class EchoServer extends ChatKitServer {
  async *respond(thread, inputUserMessage, context) {
    const text = inputUserMessage
      ? inputUserMessage.content.map((part) => (typeof part.text === "string" ? part.text : "")).join("")
      : "";
    const answer = `echo: ${text}`;
    const itemId = this.store.generateItemId("message", thread, context);
    const createdAt = new Date().toISOString();
    const item = (content) => ({
      type: "assistant_message",
      id: itemId,
      thread_id: thread.id,
      created_at: createdAt,
      content,
    });

    // openai-chatkit 1.6.5 starts every response with `stream_options` (ahead of the answer, after the user
    // message); chatkit-node-backend-sdk 1.1.2 has no such event, so the echo sends it where the Python SDK
    // would. The SDK's event loop passes an event type it does not know on unchanged.
    yield { type: "stream_options", stream_options: { allow_cancel: true } };
    yield { type: "thread.item.added", item: item([]) };
    yield {
      type: "thread.item.updated",
      item_id: itemId,
      update: {
        type: "assistant_message.content_part.added",
        content_index: 0,
        content: { type: "output_text", text: "", annotations: [] },
      },
    };
    for (const delta of split(answer, DELTA_COUNT)) {
      yield {
        type: "thread.item.updated",
        item_id: itemId,
        update: { type: "assistant_message.content_part.text_delta", content_index: 0, delta },
      };
    }
    const full = { type: "output_text", text: answer, annotations: [] };
    yield {
      type: "thread.item.updated",
      item_id: itemId,
      update: { type: "assistant_message.content_part.done", content_index: 0, content: full },
    };
    yield { type: "thread.item.done", item: item([full]) };

    // Changed after the last event, so the SDK saves the thread and sends `thread.updated`.
    const title = text.trim().slice(0, TITLE_CHARS);
    if (!thread.title && title) thread.title = title;
  }
}

// The SDK's default logger prints a line per request; warnings and errors still go to stderr.
const quietLogger = {
  info() {},
  debug() {},
  warn: (message, extra) => console.warn(`[WARN] ${message}`, extra ?? ""),
  error: (message, extra) => console.error(`[ERROR] ${message}`, extra ?? ""),
};

function isNotFound(error) {
  return error instanceof NotFoundError || error instanceof StoreNotFoundError;
}

// Writes the SDK's event stream. The first chunk is awaited before the headers go out, so a request
// that fails up front (an unknown thread) still gets a plain error status; a failure after that can
// only cut the stream short.
async function sendStream(res, result) {
  const chunks = result[Symbol.asyncIterator]();
  const first = await chunks.next();
  res.status(200);
  res.setHeader("Content-Type", "text/event-stream");
  res.setHeader("Cache-Control", "no-cache");
  if (!first.done) res.write(first.value);
  try {
    for (let next = await chunks.next(); !next.done; next = await chunks.next()) {
      res.write(next.value);
    }
    res.end();
  } catch (error) {
    quietLogger.error("stream failed after it started", { error: String(error) });
    res.destroy();
  }
}

function createApp(dbPath) {
  const server = new EchoServer(new SQLiteStore(dbPath), undefined, quietLogger);
  const app = express();
  app.disable("x-powered-by");
  app.set("etag", false);

  const error = (res, status, message) => res.status(status).json({ error: message });

  app.post("/chatkit", express.raw({ type: () => true, limit: BODY_LIMIT }), async (req, res) => {
    const userId = (req.get(USER_HEADER) ?? "").trim();
    if (!userId) return error(res, 401, `missing ${USER_HEADER} header`);
    const body = Buffer.isBuffer(req.body) ? req.body : Buffer.alloc(0);
    let result;
    try {
      result = await server.process(body, { userId });
      if (result.isStreaming) return await sendStream(res, result);
      return res.json(result.toJSON());
    } catch (e) {
      if (res.headersSent) return res.destroy();
      if (e instanceof SyntaxError) return error(res, 400, `invalid request: ${e.message}`);
      if (isNotFound(e)) return error(res, 404, e.message);
      quietLogger.error("request failed", { error: String(e) });
      return error(res, 500, "internal error");
    }
  });
  return app;
}

function main() {
  const { values } = parseArgs({
    options: {
      port: { type: "string", default: "8000" },
      db: { type: "string" },
    },
  });
  if (!values.db) {
    console.error("usage: node echo_server.mjs --port PORT --db FILE");
    process.exit(2);
  }
  const port = Number.parseInt(values.port, 10);
  const listener = createApp(values.db).listen(port, "127.0.0.1", () => {
    console.error(`chatkit-node-backend-sdk echo server on http://127.0.0.1:${port}/chatkit`);
  });
  // Closes the listener on SIGTERM, as the load-test scripts stop their servers, so the process exits.
  process.on("SIGTERM", () => {
    listener.close(() => process.exit(0));
    listener.closeIdleConnections();
    setTimeout(() => process.exit(0), 2000).unref();
  });
}

main();
