#!/usr/bin/env python3
"""An example agent behind chatkit-gateway, built on openai-chatkit 1.6.5.

The agent is a plain `ChatKitServer` subclass; a small ASGI adapter (served by uvicorn, which
openai-chatkit already depends on) verifies the gateway's Standard Webhooks signature, turns each
request of the gateway's wire format v1 into the SDK's calls and streams the yielded events back
as `text/event-stream`.

    python examples/agent-python/agent.py --port 8787 --secret whsec_...

Without a model (the default) it answers deterministically, which is what the gateway's tests
run. Commands in a user message:

    /widget      a counter widget whose button updates it (sync or streamed action)
    /workflow    a workflow with two tasks
    /tool        a client tool call (`get_time`); the client's output is then answered
    /title TEXT  sets the thread's title
    /handoff     locks the thread, so the gateway refuses further input

With EXAMPLE_AGENT_MODEL_URL set (an OpenAI-compatible base URL), every other message is answered
by an Agents SDK agent through `stream_agent_response` instead.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import hmac
import json
import logging
import os
import time
from datetime import datetime
from pathlib import Path
from typing import Any, AsyncIterator, Callable

import uvicorn
from pydantic import TypeAdapter, ValidationError

from chatkit.actions import Action
from chatkit.errors import CustomStreamError, ErrorCode, StreamError
from chatkit.server import ChatKitServer, stream_widget
from chatkit.store import NotFoundError, Store
from chatkit.types import (
    AssistantMessageContent,
    AssistantMessageContentPartTextDelta,
    AssistantMessageItem,
    Attachment,
    ClientToolCallItem,
    CustomSummary,
    CustomTask,
    ErrorEvent,
    LockedStatus,
    Page,
    SyncCustomActionResponse,
    Thread,
    ThreadItem,
    ThreadItemAddedEvent,
    ThreadItemDoneEvent,
    ThreadItemReplacedEvent,
    ThreadItemUpdatedEvent,
    ThreadMetadata,
    ThreadStreamEvent,
    ThreadUpdatedEvent,
    UserMessageItem,
    UserMessageTextContent,
    WidgetItem,
    Workflow,
    WorkflowItem,
    WorkflowTaskAdded,
    WorkflowTaskUpdated,
)
from chatkit.widgets import WidgetTemplate

log = logging.getLogger("example-agent")

# How far a request's timestamp may be from now, as the Standard Webhooks libraries allow.
TIMESTAMP_TOLERANCE_SECS = 5 * 60

COUNTER = WidgetTemplate.from_file(str(Path(__file__).with_name("counter.widget")))

ITEM = TypeAdapter(ThreadItem)

HELP = "Try /widget, /workflow, /tool, /title <text> or /handoff."


class RequestStore(Store[dict]):
    """The thread and items one gateway request carries: the gateway keeps the real thread, so the
    SDK's store only lives as long as the request."""

    def __init__(self, thread: ThreadMetadata, items: list[ThreadItem]):
        self.threads = {thread.id: thread}
        self.items: dict[str, list[ThreadItem]] = {thread.id: list(items)}

    async def load_thread(self, thread_id: str, context: dict) -> ThreadMetadata:
        if thread_id not in self.threads:
            raise NotFoundError(f"thread {thread_id} is not in this request")
        return self.threads[thread_id]

    async def save_thread(self, thread: ThreadMetadata, context: dict) -> None:
        self.threads[thread.id] = thread

    async def load_thread_items(
        self, thread_id: str, after: str | None, limit: int, order: str, context: dict
    ) -> Page[ThreadItem]:
        items = list(self.items.get(thread_id, []))
        if order == "desc":
            items.reverse()
        if after is not None:
            ids = [item.id for item in items]
            items = items[ids.index(after) + 1 :] if after in ids else []
        page = items[:limit]
        return Page(data=page, has_more=len(items) > limit, after=page[-1].id if page else None)

    async def add_thread_item(self, thread_id: str, item: ThreadItem, context: dict) -> None:
        self.items.setdefault(thread_id, []).append(item)

    async def save_item(self, thread_id: str, item: ThreadItem, context: dict) -> None:
        items = self.items.setdefault(thread_id, [])
        for index, existing in enumerate(items):
            if existing.id == item.id:
                items[index] = item
                return
        items.append(item)

    async def load_item(self, thread_id: str, item_id: str, context: dict) -> ThreadItem:
        for item in self.items.get(thread_id, []):
            if item.id == item_id:
                return item
        raise NotFoundError(f"item {item_id} is not in this request")

    async def delete_thread_item(self, thread_id: str, item_id: str, context: dict) -> None:
        self.items[thread_id] = [item for item in self.items.get(thread_id, []) if item.id != item_id]

    async def delete_thread(self, thread_id: str, context: dict) -> None:
        self.threads.pop(thread_id, None)
        self.items.pop(thread_id, None)

    async def load_threads(self, limit: int, after: str | None, order: str, context: dict) -> Page[ThreadMetadata]:
        return Page(data=list(self.threads.values())[:limit], has_more=False)

    async def save_attachment(self, attachment: Attachment, context: dict) -> None:
        raise NotImplementedError("the gateway stores attachments")

    async def load_attachment(self, attachment_id: str, context: dict) -> Attachment:
        raise NotFoundError("the gateway stores attachments")

    async def delete_attachment(self, attachment_id: str, context: dict) -> None:
        raise NotImplementedError("the gateway stores attachments")


def user_text(item: UserMessageItem | None) -> str:
    if item is None:
        return ""
    return "".join(part.text for part in item.content if isinstance(part, UserMessageTextContent)).strip()


class ExampleAgent(ChatKitServer[dict]):
    """The agent itself: what the SDK calls for each operation."""

    def respond(
        self, thread: ThreadMetadata, input_user_message: UserMessageItem | None, context: dict
    ) -> AsyncIterator[ThreadStreamEvent]:
        return self._respond(thread, input_user_message, context)

    async def _respond(
        self, thread: ThreadMetadata, message: UserMessageItem | None, context: dict
    ) -> AsyncIterator[ThreadStreamEvent]:
        if message is None:
            # No new message: a client tool's output came back (or a retry of one).
            async for event in self._after_tool(thread, context):
                yield event
            return
        text = user_text(message)
        command, _, rest = text.partition(" ")
        if command == "/widget":
            async for event in stream_widget(
                thread, COUNTER.build({"count": 0}), copy_text="Counter: 0",
                generate_id=lambda kind: self.store.generate_item_id(kind, thread, context),
            ):
                yield event
        elif command == "/workflow":
            async for event in self._workflow(thread, context):
                yield event
        elif command == "/tool":
            yield ThreadItemDoneEvent(
                item=ClientToolCallItem(
                    id=self.store.generate_item_id("tool_call", thread, context),
                    thread_id=thread.id,
                    created_at=datetime.now(),
                    call_id=f"call_{int(time.time() * 1000)}",
                    name="get_time",
                    arguments={"timezone": "UTC"},
                )
            )
        elif command == "/title" and rest.strip():
            # The adapter sends `thread.updated` for the change, as `ChatKitServer.process` does.
            thread.title = rest.strip()
            async for event in self._say(thread, context, f"Titled the thread “{thread.title}”."):
                yield event
        elif command == "/handoff":
            async for event in self._say(thread, context, "A human takes it from here; this thread is now locked."):
                yield event
            thread.status = LockedStatus(reason="Handed off to a human agent.")
        elif MODEL_URL:
            async for event in self._model_answer(thread, context):
                yield event
        else:
            async for event in self._say(thread, context, f"You said: {text}. {HELP}"):
                yield event

    async def _say(self, thread: ThreadMetadata, context: dict, text: str) -> AsyncIterator[ThreadStreamEvent]:
        """Streams `text` word by word as one assistant message."""
        item = AssistantMessageItem(
            id=self.store.generate_item_id("message", thread, context),
            thread_id=thread.id,
            created_at=datetime.now(),
            content=[AssistantMessageContent(text="")],
        )
        yield ThreadItemAddedEvent(item=item)
        words = text.split(" ")
        for index, word in enumerate(words):
            delta = word if index == len(words) - 1 else word + " "
            yield ThreadItemUpdatedEvent(
                item_id=item.id, update=AssistantMessageContentPartTextDelta(content_index=0, delta=delta)
            )
        yield ThreadItemDoneEvent(item=item.model_copy(update={"content": [AssistantMessageContent(text=text)]}))

    async def _workflow(self, thread: ThreadMetadata, context: dict) -> AsyncIterator[ThreadStreamEvent]:
        workflow = WorkflowItem(
            id=self.store.generate_item_id("workflow", thread, context),
            thread_id=thread.id,
            created_at=datetime.now(),
            workflow=Workflow(type="custom", tasks=[], expanded=True),
        )
        yield ThreadItemAddedEvent(item=workflow)
        tasks = [
            CustomTask(title="Read the thread", content="Looked at the recent items.", status_indicator="loading"),
            CustomTask(title="Plan the answer", content="Two steps, both done.", status_indicator="loading"),
        ]
        for index, task in enumerate(tasks):
            yield ThreadItemUpdatedEvent(item_id=workflow.id, update=WorkflowTaskAdded(task_index=index, task=task))
            tasks[index] = task.model_copy(update={"status_indicator": "complete"})
            yield ThreadItemUpdatedEvent(
                item_id=workflow.id, update=WorkflowTaskUpdated(task_index=index, task=tasks[index])
            )
        done = Workflow(type="custom", tasks=tasks, summary=CustomSummary(title="Planned in two steps"))
        yield ThreadItemDoneEvent(item=workflow.model_copy(update={"workflow": done}))

    async def _after_tool(self, thread: ThreadMetadata, context: dict) -> AsyncIterator[ThreadStreamEvent]:
        items = await self.store.load_thread_items(thread.id, None, 1, "desc", context)
        last = items.data[0] if items.data else None
        if not isinstance(last, ClientToolCallItem) or last.status != "completed":
            raise CustomStreamError("There is no client tool output to answer.", allow_retry=False)
        async for event in self._say(thread, context, f"The client tool {last.name} answered {json.dumps(last.output)}."):
            yield event

    async def _model_answer(self, thread: ThreadMetadata, context: dict) -> AsyncIterator[ThreadStreamEvent]:
        """Answers with an Agents SDK agent on an OpenAI-compatible endpoint (EXAMPLE_AGENT_MODEL_URL)."""
        from agents import Agent, OpenAIChatCompletionsModel, Runner, set_tracing_disabled
        from agents.models.fake_id import FAKE_RESPONSES_ID
        from openai import AsyncOpenAI

        from chatkit.agents import AgentContext, simple_to_agent_input, stream_agent_response

        set_tracing_disabled(True)
        client = AsyncOpenAI(base_url=MODEL_URL, api_key=os.environ.get("OPENAI_API_KEY", "unused"))
        model = OpenAIChatCompletionsModel(model=os.environ.get("EXAMPLE_AGENT_MODEL", "gpt-4.1-mini"), openai_client=client)
        agent = Agent(name="Example", instructions="You are a helpful, brief assistant.", model=model)
        history = await self.store.load_thread_items(thread.id, None, 100, "asc", context)
        agent_context = AgentContext(thread=thread, store=self.store, request_context=context)
        result = Runner.run_streamed(agent, await simple_to_agent_input(history.data), context=agent_context)
        # Chat Completions models give every item the placeholder id `__fake_id__`; the gateway stores
        # items by id, so each item gets an id of its own here.
        current: str | None = None
        async for event in stream_agent_response(agent_context, result):
            item = getattr(event, "item", None)
            if item is not None and item.id == FAKE_RESPONSES_ID:
                if isinstance(event, ThreadItemAddedEvent) or current is None:
                    current = self.store.generate_item_id("message", thread, context)
                event = event.model_copy(update={"item": item.model_copy(update={"id": current})})
                if not isinstance(event, ThreadItemAddedEvent):
                    current = None
            elif getattr(event, "item_id", None) == FAKE_RESPONSES_ID and current is not None:
                event = event.model_copy(update={"item_id": current})
            yield event

    async def sync_action(
        self, thread: ThreadMetadata, action: Action[str, Any], sender: WidgetItem | None, context: dict
    ) -> SyncCustomActionResponse:
        return SyncCustomActionResponse(updated_item=incremented(action, sender))

    def action(
        self, thread: ThreadMetadata, action: Action[str, Any], sender: WidgetItem | None, context: dict
    ) -> AsyncIterator[ThreadStreamEvent]:
        return self._streamed_action(action, sender)

    async def _streamed_action(self, action: Action[str, Any], sender: WidgetItem | None) -> AsyncIterator[ThreadStreamEvent]:
        yield ThreadItemReplacedEvent(item=incremented(action, sender))


def incremented(action: Action[str, Any], sender: WidgetItem | None) -> WidgetItem:
    """The counter widget after `counter.increment`; any other action is refused."""
    if action.type != "counter.increment" or not isinstance(sender, WidgetItem):
        raise CustomStreamError(f"This agent has no action `{action.type}` for this item.", allow_retry=False)
    count = int((action.payload or {}).get("count", 0)) + 1
    return sender.model_copy(update={"widget": COUNTER.build({"count": count}), "copy_text": f"Counter: {count}"})


MODEL_URL = os.environ.get("EXAMPLE_AGENT_MODEL_URL")


def serialize(model: Any) -> str:
    """JSON as `ChatKitServer` writes it: by alias, without nulls or attachment metadata."""
    return model.model_dump_json(by_alias=True, exclude_none=True, context={"exclude_metadata": True})


async def with_thread_updates(
    thread: ThreadMetadata, stream: Callable[[], AsyncIterator[ThreadStreamEvent]]
) -> AsyncIterator[ThreadStreamEvent]:
    """The events of `stream`, plus `thread.updated` whenever the agent changed the thread, and
    errors as `error` events: what `ChatKitServer._process_events` does, minus the store."""
    last = thread.model_copy(deep=True)

    def updated() -> ThreadUpdatedEvent:
        return ThreadUpdatedEvent(thread=Thread(**thread.model_dump(), items=Page()))

    try:
        async for event in stream():
            yield event
            if thread != last:
                last = thread.model_copy(deep=True)
                yield updated()
    except CustomStreamError as error:
        yield ErrorEvent(code="custom", message=error.message, allow_retry=error.allow_retry)
    except StreamError as error:
        yield ErrorEvent(code=error.code, allow_retry=error.allow_retry)
    except Exception:
        log.exception("the agent failed")
        yield ErrorEvent(code=ErrorCode.STREAM_ERROR, allow_retry=True)
    if thread != last:
        yield updated()


class Refusal(Exception):
    """A request the adapter refuses, answered as `{"error": {"message"}}` with `status`."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


def verify(secret: bytes, headers: dict[str, str], body: bytes) -> None:
    """Checks the Standard Webhooks signature and timestamp of a request."""
    msg_id, stamp, signatures = (headers.get(name) for name in ("webhook-id", "webhook-timestamp", "webhook-signature"))
    if not (msg_id and stamp and signatures):
        raise Refusal(401, "The request is not signed (webhook-id, webhook-timestamp, webhook-signature).")
    if not stamp.isdigit() or abs(time.time() - int(stamp)) > TIMESTAMP_TOLERANCE_SECS:
        raise Refusal(401, "The request's webhook-timestamp is too old or too new.")
    expected = base64.b64encode(hmac.new(secret, f"{msg_id}.{stamp}.".encode() + body, hashlib.sha256).digest())
    if not any(hmac.compare_digest(expected, part.split(",", 1)[-1].encode()) for part in signatures.split()):
        raise Refusal(401, "The agent refused the request: its signature does not match (check CHATKIT_AGENT_SECRET).")


def parse_turn(body: dict[str, Any]) -> tuple[ThreadMetadata, ExampleAgent, dict]:
    """The thread, an agent whose store holds the request's items, and the request context."""
    try:
        thread = ThreadMetadata.model_validate(body["thread"])
        items = [ITEM.validate_python(item) for item in body["items"]]
    except (KeyError, TypeError, ValidationError) as error:
        raise Refusal(400, f"The request's thread or items do not parse: {error}") from error
    context = {"user": body.get("user"), "request_id": body.get("request_id"), "locale": body.get("locale")}
    return thread, ExampleAgent(RequestStore(thread, items)), context


def parse_action(body: dict[str, Any]) -> tuple[Action[str, Any], WidgetItem | None]:
    try:
        action = Action[str, Any].model_validate(body["action"])
        sender = ITEM.validate_python(body["sender"]) if body.get("sender") else None
    except (KeyError, TypeError, ValidationError) as error:
        raise Refusal(400, f"The request's action or sender does not parse: {error}") from error
    return action, sender if isinstance(sender, WidgetItem) else None


class Adapter:
    """The ASGI app: one POST per operation of the gateway's wire format v1."""

    def __init__(self, secret: str):
        self.secret = base64.b64decode(secret.removeprefix("whsec_"))

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            return
        if scope["method"] == "GET" and scope["path"] == "/healthz":
            await reply(send, 200, {"status": "ok"})
            return
        try:
            if scope["method"] != "POST":
                raise Refusal(405, "The agent answers POST requests only.")
            raw = await read_body(receive)
            headers = {name.decode("latin-1").lower(): value.decode("latin-1") for name, value in scope["headers"]}
            verify(self.secret, headers, raw)
            try:
                body = json.loads(raw)
            except ValueError as error:
                raise Refusal(400, f"The body is not JSON: {error}") from error
            if not isinstance(body, dict) or body.get("version") != 1:
                raise Refusal(400, "This agent speaks wire format version 1 only.")
            await self.dispatch(body, send)
        except Refusal as refusal:
            await reply(send, refusal.status, {"error": {"message": refusal.message}})

    async def dispatch(self, body: dict[str, Any], send: Callable) -> None:
        op = body.get("op")
        if op == "feedback":
            await reply(send, 200, {})
        elif op == "transcribe":
            raise Refusal(400, "This example agent does not transcribe audio.")
        elif op == "respond":
            thread, agent, context = parse_turn(body)
            try:
                item = ITEM.validate_python(body["item"]) if body.get("item") else None
            except ValidationError as error:
                raise Refusal(400, f"The request's item does not parse: {error}") from error
            message = item if isinstance(item, UserMessageItem) and body.get("input") != "client_tool_output" else None
            await stream(send, with_thread_updates(thread, lambda: agent.respond(thread, message, context)))
        elif op == "action":
            thread, agent, context = parse_turn(body)
            action, sender = parse_action(body)
            await stream(send, with_thread_updates(thread, lambda: agent.action(thread, action, sender, context)))
        elif op == "sync_action":
            thread, agent, context = parse_turn(body)
            action, sender = parse_action(body)
            try:
                answer = await agent.sync_action(thread, action, sender, context)
            except CustomStreamError as error:
                raise Refusal(400, error.message) from error
            await reply(send, 200, json.loads(serialize(answer)))
        else:
            raise Refusal(400, f"Unknown op `{op}`.")


async def read_body(receive: Callable) -> bytes:
    chunks = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            return b"".join(chunks)


async def reply(send: Callable, status: int, body: Any) -> None:
    data = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": data})


async def stream(send: Callable, events: AsyncIterator[ThreadStreamEvent]) -> None:
    """Streams events as `data: <json>` lines, the way `ChatKitServer.process` does."""
    await send(
        {"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]}
    )
    async for event in events:
        await send({"type": "http.response.body", "body": f"data: {serialize(event)}\n\n".encode(), "more_body": True})
    await send({"type": "http.response.body", "body": b""})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8787)
    parser.add_argument("--secret", default=os.environ.get("CHATKIT_AGENT_SECRET"), help="the gateway's whsec_ secret")
    args = parser.parse_args()
    if not args.secret or not args.secret.startswith("whsec_"):
        parser.error("--secret (or CHATKIT_AGENT_SECRET) must be the gateway's whsec_… secret")
    logging.basicConfig(level=logging.INFO)
    # One line per model request is noise next to the agent's own log.
    logging.getLogger("httpx2").setLevel(logging.WARNING)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    uvicorn.run(Adapter(args.secret), host=args.host, port=args.port, lifespan="off", log_level="warning")


if __name__ == "__main__":
    main()
