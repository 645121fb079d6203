"""Echo server on the reference ChatKit Python SDK, to benchmark it against chatkit-gateway.

It serves `POST /chatkit` with `chatkit.server.ChatKitServer` from PyPI `openai-chatkit==1.6.5`
and answers every user message the way the gateway's built-in echo responder does: an assistant
message `echo: <text>` streamed in three text deltas, and the thread titled after its first
message. Threads and items live in one SQLite file (WAL), scoped to the user named by the
`x-user-id` header.

Two modes:

* shipped (default): the SDK as published, on uvicorn's plain asyncio event loop.
* `--tuned`: uvloop as the event loop, and the request validator that
  `ChatKitServer.process` builds for every request (`TypeAdapter[ChatKitReq](ChatKitReq)`,
  about 10 ms of schema building on this class of machine) built once and reused.

Both modes use the same app, store and uvicorn settings otherwise (h11 HTTP parser, access log
off, one worker process), so the difference between them is only those two changes.

Usage:
    python echo_server.py --port 8000 --db /tmp/ref.db [--tuned] [--workers 1]
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import sys
from dataclasses import dataclass
from datetime import datetime
from typing import Any, AsyncIterator

import pydantic
from fastapi import FastAPI, Request
from fastapi.responses import Response, StreamingResponse

import chatkit.server
from chatkit.server import ChatKitServer, StreamingResult
from chatkit.store import NotFoundError, Store
from chatkit.types import (
    AssistantMessageContent,
    AssistantMessageContentPartAdded,
    AssistantMessageContentPartDone,
    AssistantMessageContentPartTextDelta,
    AssistantMessageItem,
    Attachment,
    Page,
    Thread,
    ThreadItem,
    ThreadItemAddedEvent,
    ThreadItemDoneEvent,
    ThreadItemUpdatedEvent,
    ThreadMetadata,
    ThreadStreamEvent,
    UserMessageItem,
)

USER_HEADER = "x-user-id"
TITLE_CHARS = 40
DELTA_COUNT = 3


@dataclass(frozen=True)
class RequestContext:
    """What every store call and `respond` gets: whose data this request may touch."""

    user_id: str


# The store's own validators for the two union types it reads back. They belong to this
# store, not to the SDK, so they are built once in both modes.
_THREAD_ITEM = pydantic.TypeAdapter(ThreadItem)
_ATTACHMENT = pydantic.TypeAdapter(Attachment)


class SQLiteStore(Store[RequestContext]):
    """A `chatkit.store.Store` on one SQLite file, every row scoped to its user.

    Pages follow insertion order (an autoincrement `seq`), newest first for `desc`;
    `after` is the id of the last row of the previous page, and a page's `after` is set
    only when more rows follow. Models are stored as their JSON.

    The calls are plain synchronous `sqlite3` on the event loop thread, on one connection:
    each is a sub-millisecond indexed lookup or a WAL append without fsync
    (`synchronous=NORMAL`, as the gateway uses), cheaper than a hop to a worker thread.
    """

    def __init__(self, path: str):
        # isolation_level=None: autocommit, one implicit transaction per statement.
        self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.execute("PRAGMA busy_timeout=5000")
        self.db.executescript(
            """
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
            """
        )

    # -- threads -------------------------------------------------------------------------

    async def load_thread(self, thread_id: str, context: RequestContext) -> ThreadMetadata:
        row = self.db.execute(
            "SELECT data FROM threads WHERE id = ? AND user_id = ?", (thread_id, context.user_id)
        ).fetchone()
        if row is None:
            raise NotFoundError(f"thread {thread_id} not found")
        return ThreadMetadata.model_validate_json(row[0])

    async def save_thread(self, thread: ThreadMetadata, context: RequestContext) -> None:
        # The server hands over a full `Thread` on threads.create; only the metadata is kept.
        data = thread.model_dump_json(exclude={"items"}) if isinstance(thread, Thread) else thread.model_dump_json()
        # An id owned by another user is left alone rather than taken over.
        self.db.execute(
            "INSERT INTO threads (id, user_id, data) VALUES (?, ?, ?) "
            "ON CONFLICT (id) DO UPDATE SET data = excluded.data WHERE threads.user_id = excluded.user_id",
            (thread.id, context.user_id, data),
        )

    async def load_threads(
        self, limit: int, after: str | None, order: str, context: RequestContext
    ) -> Page[ThreadMetadata]:
        rows, has_more = self._page("threads", "user_id = ?", (context.user_id,), after, limit, order)
        data = [ThreadMetadata.model_validate_json(row[1]) for row in rows]
        return Page(data=data, has_more=has_more, after=rows[-1][0] if has_more and rows else None)

    async def delete_thread(self, thread_id: str, context: RequestContext) -> None:
        self.db.execute("BEGIN")
        try:
            self.db.execute("DELETE FROM items WHERE thread_id = ? AND user_id = ?", (thread_id, context.user_id))
            self.db.execute("DELETE FROM threads WHERE id = ? AND user_id = ?", (thread_id, context.user_id))
            self.db.execute("COMMIT")
        except BaseException:
            self.db.execute("ROLLBACK")
            raise

    # -- items ---------------------------------------------------------------------------

    async def load_thread_items(
        self, thread_id: str, after: str | None, limit: int, order: str, context: RequestContext
    ) -> Page[ThreadItem]:
        rows, has_more = self._page(
            "items", "thread_id = ? AND user_id = ?", (thread_id, context.user_id), after, limit, order
        )
        data = [_THREAD_ITEM.validate_json(row[1]) for row in rows]
        return Page(data=data, has_more=has_more, after=rows[-1][0] if has_more and rows else None)

    async def add_thread_item(self, thread_id: str, item: ThreadItem, context: RequestContext) -> None:
        await self.save_item(thread_id, item, context)

    async def save_item(self, thread_id: str, item: ThreadItem, context: RequestContext) -> None:
        # An upsert keeps the first insertion's `seq`, so an item keeps its place in the thread.
        self.db.execute(
            "INSERT INTO items (id, thread_id, user_id, data) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (thread_id, id) DO UPDATE SET data = excluded.data WHERE items.user_id = excluded.user_id",
            (item.id, thread_id, context.user_id, item.model_dump_json()),
        )

    async def load_item(self, thread_id: str, item_id: str, context: RequestContext) -> ThreadItem:
        row = self.db.execute(
            "SELECT data FROM items WHERE thread_id = ? AND id = ? AND user_id = ?",
            (thread_id, item_id, context.user_id),
        ).fetchone()
        if row is None:
            raise NotFoundError(f"item {item_id} not found in thread {thread_id}")
        return _THREAD_ITEM.validate_json(row[0])

    async def delete_thread_item(self, thread_id: str, item_id: str, context: RequestContext) -> None:
        self.db.execute(
            "DELETE FROM items WHERE thread_id = ? AND id = ? AND user_id = ?", (thread_id, item_id, context.user_id)
        )

    # -- attachments (stored, though the echo benchmark sends none) ------------------------

    async def save_attachment(self, attachment: Attachment, context: RequestContext) -> None:
        self.db.execute(
            "INSERT INTO attachments (id, user_id, data) VALUES (?, ?, ?) "
            "ON CONFLICT (id) DO UPDATE SET data = excluded.data WHERE attachments.user_id = excluded.user_id",
            (attachment.id, context.user_id, attachment.model_dump_json()),
        )

    async def load_attachment(self, attachment_id: str, context: RequestContext) -> Attachment:
        row = self.db.execute(
            "SELECT data FROM attachments WHERE id = ? AND user_id = ?", (attachment_id, context.user_id)
        ).fetchone()
        if row is None:
            raise NotFoundError(f"attachment {attachment_id} not found")
        return _ATTACHMENT.validate_json(row[0])

    async def delete_attachment(self, attachment_id: str, context: RequestContext) -> None:
        self.db.execute("DELETE FROM attachments WHERE id = ? AND user_id = ?", (attachment_id, context.user_id))

    # -- helpers -------------------------------------------------------------------------

    def _page(
        self, table: str, scope: str, args: tuple[Any, ...], after: str | None, limit: int, order: str
    ) -> tuple[list[tuple[str, str]], bool]:
        """Up to `limit` (id, data) rows of `table` within `scope`, and whether more follow.

        An `after` id that is not in scope (deleted, or someone else's) gives an empty page.
        """
        newest_first = order == "desc"
        sql = f"SELECT id, data FROM {table} WHERE {scope}"
        params: list[Any] = list(args)
        if after is not None:
            sql += f" AND seq {'<' if newest_first else '>'} (SELECT seq FROM {table} WHERE {scope} AND id = ?)"
            params += [*args, after]
        limit = max(limit, 0)
        sql += f" ORDER BY seq {'DESC' if newest_first else 'ASC'} LIMIT ?"
        params.append(limit + 1)
        rows = self.db.execute(sql, params).fetchall()
        return rows[:limit], len(rows) > limit


def _split(text: str, parts: int) -> list[str]:
    """`text` in `parts` consecutive pieces of nearly equal length (some empty if it is shorter)."""
    size = -(-len(text) // parts)  # ceiling division
    return [text[i * size : (i + 1) * size] for i in range(parts)]


class EchoServer(ChatKitServer[RequestContext]):
    """Answers each user message with `echo: <text>`, like the gateway's echo responder."""

    async def respond(
        self, thread: ThreadMetadata, input_user_message: UserMessageItem | None, context: RequestContext
    ) -> AsyncIterator[ThreadStreamEvent]:
        text = "".join(part.text for part in input_user_message.content) if input_user_message else ""
        answer = f"echo: {text}"
        item_id = self.store.generate_item_id("message", thread, context)
        created_at = datetime.now()

        yield ThreadItemAddedEvent(
            item=AssistantMessageItem(id=item_id, thread_id=thread.id, created_at=created_at, content=[])
        )
        yield ThreadItemUpdatedEvent(
            item_id=item_id,
            update=AssistantMessageContentPartAdded(content_index=0, content=AssistantMessageContent(text="")),
        )
        for delta in _split(answer, DELTA_COUNT):
            yield ThreadItemUpdatedEvent(
                item_id=item_id, update=AssistantMessageContentPartTextDelta(content_index=0, delta=delta)
            )
        full = AssistantMessageContent(text=answer)
        yield ThreadItemUpdatedEvent(
            item_id=item_id, update=AssistantMessageContentPartDone(content_index=0, content=full)
        )
        yield ThreadItemDoneEvent(
            item=AssistantMessageItem(id=item_id, thread_id=thread.id, created_at=created_at, content=[full])
        )

        # Changed after the last event, so the SDK saves the thread and sends `thread.updated`.
        title = text.strip()[:TITLE_CHARS]
        if thread.title is None and title:
            thread.title = title


def cache_request_validator() -> None:
    """Makes `ChatKitServer.process` reuse one request validator instead of building one per request.

    In openai-chatkit 1.6.5, `ChatKitServer.process` parses every request with
    `TypeAdapter[ChatKitReq](ChatKitReq).validate_json(request)`: it builds a fresh pydantic
    `TypeAdapter` for the whole request union each time, which costs about 10 ms of CPU, while
    validating with a ready one costs microseconds. The SDK offers no hook for this, so the tuned
    mode replaces the name `TypeAdapter` inside the `chatkit.server` module (and nowhere else) with
    the factory below: subscripting it is a no-op, and calling it with a type returns the adapter
    built for that type the first time. The SDK's code and behaviour are otherwise unchanged.
    """

    class CachedTypeAdapterFactory:
        def __init__(self) -> None:
            # Keyed by id(); the type is kept in the value so the id stays valid.
            self._built: dict[int, tuple[Any, pydantic.TypeAdapter[Any]]] = {}

        def __getitem__(self, _type_argument: Any) -> "CachedTypeAdapterFactory":
            return self

        def __call__(self, type_: Any, *args: Any, **kwargs: Any) -> pydantic.TypeAdapter[Any]:
            if args or kwargs:
                return pydantic.TypeAdapter(type_, *args, **kwargs)
            entry = self._built.get(id(type_))
            if entry is None:
                entry = (type_, pydantic.TypeAdapter(type_))
                self._built[id(type_)] = entry
            return entry[1]

    chatkit.server.TypeAdapter = CachedTypeAdapterFactory()  # type: ignore[attr-defined,assignment]


def create_app(db_path: str) -> FastAPI:
    server = EchoServer(store=SQLiteStore(db_path))
    app = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)

    def error(status: int, message: str) -> Response:
        return Response(content=json.dumps({"error": message}), status_code=status, media_type="application/json")

    @app.post("/chatkit")
    async def chatkit_endpoint(request: Request) -> Response:
        user_id = request.headers.get(USER_HEADER, "").strip()
        if not user_id:
            return error(401, f"missing {USER_HEADER} header")
        try:
            result = await server.process(await request.body(), RequestContext(user_id=user_id))
        except pydantic.ValidationError as e:
            return error(400, f"invalid request: {e.error_count()} validation errors")
        except NotFoundError as e:
            return error(404, str(e))
        if isinstance(result, StreamingResult):
            return StreamingResponse(result, media_type="text/event-stream")
        return Response(content=result.json, media_type="application/json")

    return app


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--db", required=True, help="SQLite database file (created if missing)")
    parser.add_argument("--tuned", action="store_true", help="uvloop and a cached request validator")
    # One process holds the store's connection; the benchmark measures one worker.
    parser.add_argument("--workers", type=int, default=1, choices=[1])
    parser.add_argument("--access-log", action="store_true", help="log every request (off by default)")
    args = parser.parse_args(argv)

    import uvicorn

    if args.tuned:
        cache_request_validator()
    uvicorn.run(
        create_app(args.db),
        host="127.0.0.1",
        port=args.port,
        workers=args.workers,
        # Named explicitly: uvicorn's "auto" would pick uvloop whenever it is installed.
        loop="uvloop" if args.tuned else "asyncio",
        http="h11",
        access_log=args.access_log,
        log_level="warning",
    )


if __name__ == "__main__":
    sys.exit(main())
