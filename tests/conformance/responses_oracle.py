"""The reference's answer to a Responses API model stream, for the gateway's Responses mapping to be compared with.

    python responses_oracle.py FIXTURE.json [--client-tool NAME]...
    python responses_oracle.py --self-check FIXTURE.json...

A fixture (tests/fixtures/responses/) holds `user_text` and `events`, a Responses API stream as the OpenAI API sends it
over SSE. This runs openai-chatkit 1.6.5 end to end in process, as an integrator would: a `ChatKitServer` whose
`respond` runs an Agents SDK `Agent` through `Runner.run_streamed` and streams `stream_agent_response(...)`. The only
stand-in is the model, which replays the fixture's events instead of calling OpenAI. A real `threads.create` request
goes through `server.process`; the output is one JSON object, `{"events": [...], "items": [...]}`: every streamed event
as the SDK serialized it, then the thread's stored items, oldest first, as the SDK serializes items.

`--self-check` validates every event of each fixture with the `openai` package's own `ResponseStreamEvent` type and
checks that the completed response's `output` is what the stream's `output_item.done` events said, so that a fixture
is a stream the API could have sent.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import Any, AsyncIterator, get_args

from agents import Agent, FunctionTool, ImageGenerationTool, Model, Runner, StopAtTools, set_tracing_disabled
from openai.types.responses import ResponseStreamEvent
from openai.types.responses.response_output_text import Annotation
from pydantic import BaseModel, TypeAdapter, ValidationError

from chatkit.agents import AgentContext, ClientToolCall, simple_to_agent_input, stream_agent_response
from chatkit.server import ChatKitServer, StreamingResult
from chatkit.store import NotFoundError, Store
from chatkit.types import Attachment, Page, ThreadItem, ThreadMetadata

EVENT = TypeAdapter(ResponseStreamEvent)
OUTPUT_TEXT_ANNOTATION = TypeAdapter(Annotation)
# The union's member for each event type, so that a fixture's mistake is reported against the one type it meant
# rather than as the failures of all sixty members.
EVENT_TYPES = {
    get_args(cls.model_fields["type"].annotation)[0]: cls for cls in get_args(get_args(ResponseStreamEvent)[0])
}


class MemoryStore(Store[None]):
    """The least store that serves one turn: threads and items in dicts, items kept in insertion order."""

    def __init__(self) -> None:
        self.threads: dict[str, ThreadMetadata] = {}
        self.items: dict[str, dict[str, ThreadItem]] = {}

    async def load_thread(self, thread_id: str, context: None) -> ThreadMetadata:
        if thread_id not in self.threads:
            raise NotFoundError(thread_id)
        return self.threads[thread_id]

    async def save_thread(self, thread: ThreadMetadata, context: None) -> None:
        self.threads[thread.id] = thread.model_copy(deep=True)
        self.items.setdefault(thread.id, {})

    async def load_thread_items(
        self, thread_id: str, after: str | None, limit: int, order: str, context: None
    ) -> Page[ThreadItem]:
        items = list(self.items.get(thread_id, {}).values())
        if order == "desc":
            items.reverse()
        if after is not None:
            ids = [item.id for item in items]
            items = items[ids.index(after) + 1 :] if after in ids else []
        page = items[:limit]
        return Page(data=page, has_more=len(items) > limit, after=page[-1].id if page else None)

    async def add_thread_item(self, thread_id: str, item: ThreadItem, context: None) -> None:
        self.items.setdefault(thread_id, {})[item.id] = item.model_copy(deep=True)

    async def save_item(self, thread_id: str, item: ThreadItem, context: None) -> None:
        await self.add_thread_item(thread_id, item, context)

    async def load_item(self, thread_id: str, item_id: str, context: None) -> ThreadItem:
        try:
            return self.items[thread_id][item_id]
        except KeyError:
            raise NotFoundError(item_id) from None

    async def delete_thread(self, thread_id: str, context: None) -> None:
        self.threads.pop(thread_id, None)
        self.items.pop(thread_id, None)

    async def delete_thread_item(self, thread_id: str, item_id: str, context: None) -> None:
        self.items.get(thread_id, {}).pop(item_id, None)

    # One turn without attachments never reaches these; they exist because the base class requires them.
    async def load_threads(self, limit: int, after: str | None, order: str, context: None) -> Page[ThreadMetadata]:
        return Page(data=list(self.threads.values())[:limit])

    async def save_attachment(self, attachment: Attachment, context: None) -> None:
        raise NotImplementedError("the oracle takes no attachments")

    async def load_attachment(self, attachment_id: str, context: None) -> Attachment:
        raise NotFoundError(attachment_id)

    async def delete_attachment(self, attachment_id: str, context: None) -> None:
        pass


class ReplayModel(Model):
    """A model that streams a fixture's events, parsed into the `openai` types as the SDK's HTTP client would."""

    def __init__(self, events: list[dict[str, Any]]) -> None:
        self.events = [EVENT.validate_python(event) for event in events]
        self.calls = 0
        # The run's event queue, set once the run exists. A real model's events arrive over the network, far slower
        # than ChatKit takes them; a replay that runs ahead lets the Agents SDK end the run (a refusal, a failed
        # response) while events still wait in its queue, and it drops those. So each event waits until ChatKit
        # has taken and handled the previous ones, which makes the run what it is against the real API, every time.
        self.queue: asyncio.Queue[Any] | None = None

    async def caught_up(self) -> None:
        if self.queue is not None:
            await asyncio.wait_for(self.queue.join(), timeout=30)

    async def get_response(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError("the oracle only streams")

    async def stream_response(self, *args: Any, **kwargs: Any) -> AsyncIterator[Any]:
        # The fixture is one model call. A second call means the Agents SDK wanted another turn (it found no final
        # output); replaying the same stream would invent a second answer, so that is an error instead.
        self.calls += 1
        if self.calls > 1:
            raise RuntimeError("the agent called the model a second time; a fixture holds one model call")
        for event in self.events:
            await self.caught_up()
            yield event
        await self.caught_up()


def client_tool(name: str) -> FunctionTool:
    """A client tool as the reference's docs declare one: it records a `ClientToolCall` on the context, and the
    agent stops at it (`StopAtTools`) so that the client can answer. It takes whatever JSON object the model sends,
    so that any fixture's arguments pass through unchanged."""

    async def invoke(ctx: Any, arguments: str) -> None:
        ctx.context.client_tool_call = ClientToolCall(name=name, arguments=json.loads(arguments or "{}"))

    return FunctionTool(
        name=name,
        description=f"The client tool {name}.",
        params_json_schema={"type": "object", "additionalProperties": True},
        on_invoke_tool=invoke,
        strict_json_schema=False,
    )


class OracleServer(ChatKitServer[None]):
    def __init__(self, model: ReplayModel, client_tools: list[str]) -> None:
        super().__init__(MemoryStore())
        self.model = model
        tools: list[Any] = [client_tool(name) for name in client_tools]
        # The Agents SDK refuses an image_generation_call from a model whose agent lacks the hosted tool. Its settings
        # only go to the model, which the replay ignores.
        tools.append(ImageGenerationTool(tool_config={"type": "image_generation", "partial_images": 2}))
        self.agent = Agent[AgentContext](
            name="Assistant",
            instructions="You are a helpful assistant.",
            model=model,
            tools=tools,
            # "run_llm_again" is the Agents SDK's default.
            tool_use_behavior=StopAtTools(stop_at_tool_names=client_tools) if client_tools else "run_llm_again",
        )

    async def respond(self, thread: ThreadMetadata, input_user_message: Any, context: None) -> AsyncIterator[Any]:
        agent_context = AgentContext(thread=thread, store=self.store, request_context=context)
        items = await self.store.load_thread_items(thread.id, None, 100, "asc", context)
        result = Runner.run_streamed(self.agent, await simple_to_agent_input(items.data), context=agent_context)
        # A private field, but the one the reference's own tests drive runs through (tests/test_agents.py).
        self.model.queue = result._event_queue
        async for event in stream_agent_response(agent_context, result):
            yield event


async def run(fixture: dict[str, Any], client_tools: list[str]) -> dict[str, Any]:
    server = OracleServer(ReplayModel(fixture["events"]), client_tools)
    request = {"type": "threads.create", "params": {"input": {
        "content": [{"type": "input_text", "text": fixture["user_text"]}],
        "attachments": [],
        "inference_options": {},
    }}}
    result = await server.process(json.dumps(request).encode(), None)
    assert isinstance(result, StreamingResult), "threads.create streams"
    events = []
    async for chunk in result:
        # Each chunk is one SSE frame, `data: <json>\n\n`, exactly the bytes the server would send.
        assert chunk.startswith(b"data: ") and chunk.endswith(b"\n\n"), chunk
        events.append(json.loads(chunk[len(b"data: ") : -2]))
    (thread_id,) = server.store.threads
    stored = await server.store.load_thread_items(thread_id, None, 1000, "asc", None)
    # Serialized as the server serializes items in its answers (`ChatKitServer._serialize`).
    items = [
        json.loads(item.model_dump_json(by_alias=True, exclude_none=True, context={"exclude_metadata": True}))
        for item in stored.data
    ]
    return {"events": events, "items": items}


# Keys the API sends that the pinned openai 3.0.0 types do not declare (newer releases declare the image ones). They
# stay in the fixtures because a consumer of the real stream meets them; any other unknown key is a fixture's typo.
SENT_BUT_UNDECLARED = {"obfuscation", "store", "background", "output_format", "quality", "revised_prompt", "size"}


def unknown_fields(value: Any, where: str = "") -> list[str]:
    """The dotted paths of the keys a parsed model kept as extras (its type does not declare them), less the keys
    the API is known to send anyway."""
    if isinstance(value, BaseModel):
        found = [f"{where}{key}" for key in (value.model_extra or {}) if key not in SENT_BUT_UNDECLARED]
        for key in type(value).model_fields:
            found += unknown_fields(getattr(value, key), f"{where}{key}.")
        return found
    if isinstance(value, list):
        return [field for n, element in enumerate(value) for field in unknown_fields(element, f"{where}{n}.")]
    return []


def self_check(path: str) -> list[str]:
    """What is wrong with one fixture, as sentences; empty when it is a stream the API could have sent."""
    with open(path) as f:
        fixture = json.load(f)
    problems = [f"{path}: missing {key}" for key in ("description", "user_text", "events") if key not in fixture]
    events = fixture.get("events", [])
    for n, raw in enumerate(events):
        if raw.get("type") not in EVENT_TYPES:
            problems.append(f"{path}: event {n} has an unknown type {raw.get('type')!r}")
            continue
        try:
            TypeAdapter(EVENT_TYPES[raw["type"]]).validate_python(raw)
            parsed = EVENT.validate_python(raw)
            if raw["type"] == "response.output_text.annotation.added":
                # openai 3.0.0 leaves this event's annotation untyped; the reference reads it as an output-text one.
                parsed = OUTPUT_TEXT_ANNOTATION.validate_python(raw["annotation"])
        except ValidationError as error:
            problems.append(f"{path}: event {n} ({raw['type']}) does not parse: {error}")
            continue
        if raw.get("sequence_number") != n:
            problems.append(f"{path}: event {n} has sequence_number {raw.get('sequence_number')}")
        # The openai models keep unknown keys instead of refusing them, so a misspelt field is caught here.
        for field in unknown_fields(parsed):
            problems.append(f"{path}: event {n} ({raw['type']}) has a field the openai type lacks: {field}")
    done = [e["item"] for e in events if e.get("type") == "response.output_item.done"]
    ends = [e for e in events if e.get("type") in ("response.completed", "response.failed", "response.incomplete")]
    if not events or events[0].get("type") != "response.created" or len(ends) != 1 or ends[0] is not events[-1]:
        problems.append(f"{path}: must start with response.created and end with one terminal response event")
    elif ends[0]["type"] == "response.completed" and ends[0]["response"]["output"] != done:
        problems.append(f"{path}: response.completed's output differs from the output_item.done items")
    return problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("fixtures", nargs="+")
    parser.add_argument("--client-tool", action="append", default=[], help="a client tool the agent declares")
    parser.add_argument("--self-check", action="store_true", help="validate the fixtures instead of running them")
    args = parser.parse_args()
    # Tracing would try to export spans to OpenAI; the run never leaves this process.
    set_tracing_disabled(True)
    if args.self_check:
        problems = [problem for path in args.fixtures for problem in self_check(path)]
        print("\n".join(problems) or f"{len(args.fixtures)} fixtures valid")
        return 1 if problems else 0
    if len(args.fixtures) != 1:
        parser.error("runs one fixture at a time")
    with open(args.fixtures[0]) as f:
        fixture = json.load(f)
    print(json.dumps(asyncio.run(run(fixture, args.client_tool)), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
