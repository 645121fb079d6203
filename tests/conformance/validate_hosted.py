#!/usr/bin/env python3
"""Check the gateway's `/v1` REST answers against the hosted ChatKit API's types.

The reference is the `openai` Python SDK's `openai.types.beta.chatkit` (a
dependency of openai-chatkit, so the conformance venv has it).

Usage:
    python validate_hosted.py TRANSCRIPT.jsonl [--openapi OPENAPI.json]
    python validate_hosted.py --self-test
    python validate_hosted.py --sdk-walk BASE_URL

The transcript is JSON Lines, one object per line:

    {"kind": "<kind>", "label": "<what was called>", "body": <JSON the gateway answered>}

with these kinds and reference types:

    thread          ChatKitThread; an `items` field (the gateway's extension on
                    `GET /v1/chatkit/threads/{id}`) is checked as ChatKitThreadItemList
    thread_list     ChatKitThreadItemList's list envelope with ChatKitThread data
                    (the SDK pages threads with the same envelope)
    item_list       ChatKitThreadItemList
    thread_deleted  ThreadDeleteResponse
    session         ChatSession

Validation is strict: pydantic strict mode (no coercion of `"5"` to 5), and
every object the SDK types as a model must carry exactly the model's fields:
an unknown field is a failure (the SDK models would keep it as an "extra"), and
so is a missing optional field (the hosted API writes `null` rather than
leaving fields out). Free-form maps (`state_variables`) are not models and may
hold any key. A list's `first_id`/`last_id` must be the ids of its first and
last records, since the SDK pages on with `after=last_id`.

With `--openapi`, every body is also validated (JSON Schema 2020-12, as
OpenAPI 3.1 uses it) against the component schema the gateway's own OpenAPI
document gives for its answer, so that the document and the code agree.

With `--sdk-walk`, the `openai` SDK's own client (`client.beta.chatkit.threads`)
walks every thread and every thread's items at BASE_URL (e.g. the gateway's
`http://127.0.0.1:port/v1`) two at a time, oldest first, following its own
cursors, and prints `sdk-walk: {"threads": [ids], "items": {thread id: [ids]}}`.

Prints one line per failure and a final `hosted conformance: N passed, M failed`
line. Exits 1 if any line failed or the transcript is empty or unreadable, else 0.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Callable, List

try:
    import pydantic
    from pydantic import TypeAdapter, ValidationError

    from openai.types.beta import chatkit as ck
    from openai.types.beta.chatkit.chatkit_thread_item_list import ChatKitThreadItemList
except ImportError as exc:  # pragma: no cover - environment problem
    print(
        f"hosted conformance: cannot import the reference types ({exc}); "
        "install them with `pip install openai-chatkit==1.6.5` (which brings `openai`)",
        file=sys.stderr,
    )
    sys.exit(1)

# A page of threads: the item list's envelope (`object`, `first_id`, `last_id`,
# `has_more`) around ChatKitThread records.
ChatKitThreadList = pydantic.create_model(
    "ChatKitThreadList",
    __base__=ChatKitThreadItemList,
    data=(List[ck.ChatKitThread], ...),
)

ADAPTERS: dict[str, TypeAdapter[Any]] = {
    "thread": TypeAdapter(ck.ChatKitThread),
    "thread_list": TypeAdapter(ChatKitThreadList),
    "item_list": TypeAdapter(ChatKitThreadItemList),
    "thread_deleted": TypeAdapter(ck.ThreadDeleteResponse),
    "session": TypeAdapter(ck.ChatSession),
}

# The component schema of the gateway's OpenAPI document for each kind.
SCHEMA_NAMES = {
    "thread": "ChatKitThread",
    "thread_list": "ChatKitThreadList",
    "item_list": "ChatKitThreadItemList",
    "thread_deleted": "ThreadDeleteResponse",
    "session": "ChatSession",
}

Failure = str


def render(path: list[Any]) -> str:
    out = "$"
    for segment in path:
        out += f"[{segment}]" if isinstance(segment, int) else f".{segment}"
    return out


def exact_fields(value: Any, path: list[Any], failures: list[Failure]) -> None:
    """Every model in the validated tree has exactly its declared fields."""
    if isinstance(value, pydantic.BaseModel):
        declared = set(type(value).model_fields)
        extra = sorted((value.model_extra or {}).keys())
        if extra:
            failures.append(f"{render(path)}: unknown field(s) {extra} for {type(value).__name__}")
        missing = sorted(declared - value.model_fields_set)
        if missing:
            failures.append(f"{render(path)}: field(s) {missing} of {type(value).__name__} left out (write null)")
        for name in declared:
            exact_fields(getattr(value, name), path + [name], failures)
    elif isinstance(value, (list, tuple)):
        for index, element in enumerate(value):
            exact_fields(element, path + [index], failures)
    elif isinstance(value, dict):
        for key, element in value.items():
            exact_fields(element, path + [key], failures)


def check_list_ids(body: Any, path: list[Any], failures: list[Failure]) -> None:
    data = body.get("data") if isinstance(body, dict) else None
    if not isinstance(data, list):
        return
    first = data[0].get("id") if data else None
    last = data[-1].get("id") if data else None
    if body.get("first_id") != first:
        failures.append(f"{render(path + ['first_id'])}: {body.get('first_id')!r}, but the first record is {first!r}")
    if body.get("last_id") != last:
        failures.append(f"{render(path + ['last_id'])}: {body.get('last_id')!r}, but the last record is {last!r}")


def validate(kind: str, body: Any, path: list[Any], failures: list[Failure]) -> None:
    adapter = ADAPTERS.get(kind)
    if adapter is None:
        failures.append(f"{render(path)}: unknown kind {kind!r}")
        return
    if kind == "thread" and isinstance(body, dict) and "items" in body:
        body = dict(body)
        validate("item_list", body.pop("items"), path + ["items"], failures)
    if kind in ("thread_list", "item_list"):
        check_list_ids(body, path, failures)
    try:
        model = adapter.validate_python(body, strict=True)
    except ValidationError as error:
        for detail in error.errors():
            where = render(path + list(detail["loc"]))
            failures.append(f"{where}: {detail['msg']} (got {json.dumps(detail.get('input'))[:120]})")
        return
    exact_fields(model, path, failures)


def documented(openapi: dict[str, Any], kind: str, body: Any, failures: list[Failure]) -> None:
    """Validates a body against its component schema in the gateway's OpenAPI document."""
    import jsonschema  # openai-chatkit brings it (through openai-agents and mcp).

    name = SCHEMA_NAMES.get(kind)
    if name not in openapi.get("components", {}).get("schemas", {}):
        failures.append(f"the OpenAPI document has no schema {name!r} for {kind!r}")
        return
    # References are `#/components/schemas/...`: resolve them against the document's components.
    schema = {"$ref": f"#/components/schemas/{name}", "components": openapi["components"]}
    validator = jsonschema.Draft202012Validator(schema)
    for error in sorted(validator.iter_errors(body), key=lambda e: list(e.absolute_path)):
        failures.append(f"{render(list(error.absolute_path))}: not as documented ({name}): {error.message[:200]}")


def check_line(line: str, openapi: dict[str, Any] | None = None) -> list[Failure]:
    try:
        record = json.loads(line)
        kind, body = record["kind"], record["body"]
    except (ValueError, KeyError, TypeError) as error:
        return [f"unreadable transcript line ({error}): {line[:200]}"]
    failures: list[Failure] = []
    validate(kind, body, [], failures)
    if openapi is not None:
        documented(openapi, kind, body, failures)
    label = record.get("label", kind)
    return [f"{label} ({kind}): {failure}" for failure in failures]


def run(lines: list[str], out: Callable[[str], None], openapi: dict[str, Any] | None = None) -> int:
    passed = failed = 0
    for line in lines:
        if not line.strip():
            continue
        failures = check_line(line, openapi)
        if failures:
            failed += 1
            for failure in failures:
                out(failure)
        else:
            passed += 1
    out(f"hosted conformance: {passed} passed, {failed} failed")
    return 0 if passed > 0 and failed == 0 else 1


def self_test() -> int:
    """The validator accepts good answers and catches each kind of bad one."""
    item = {
        "id": "msg_1",
        "object": "chatkit.thread_item",
        "created_at": 1,
        "thread_id": "thr_1",
        "type": "chatkit.widget",
        "widget": "{}",
    }
    items = {"object": "list", "data": [item], "first_id": "msg_1", "last_id": "msg_1", "has_more": False}
    thread = {
        "id": "thr_1",
        "object": "chatkit.thread",
        "created_at": 1,
        "status": {"type": "active"},
        "title": None,
        "user": "u",
    }
    good = [
        ("thread", thread),
        ("thread", {**thread, "items": items}),
        ("thread_list", {"object": "list", "data": [thread], "first_id": "thr_1", "last_id": "thr_1", "has_more": True}),
        ("item_list", items),
        ("thread_deleted", {"id": "thr_1", "object": "chatkit.thread.deleted", "deleted": True}),
    ]
    bad = [
        ("thread", {**thread, "surprise": 1}),
        ("thread", {k: v for k, v in thread.items() if k != "title"}),
        ("thread", {**thread, "created_at": "1"}),
        ("thread", {**thread, "items": {**items, "data": [{**item, "copy_text": "x"}]}}),
        ("item_list", {**items, "last_id": "msg_0"}),
        ("item_list", {**items, "data": [{**item, "type": "widget"}]}),
        ("thread_deleted", {"id": "thr_1", "object": "thread.deleted", "deleted": True}),
    ]
    problems = []
    for kind, body in good:
        failures: list[Failure] = []
        validate(kind, body, [], failures)
        if failures:
            problems.append(f"a good {kind} was refused: {failures}")
    for kind, body in bad:
        failures = []
        validate(kind, body, [], failures)
        if not failures:
            problems.append(f"a bad {kind} passed: {json.dumps(body)}")
    for problem in problems:
        print(f"self-test: {problem}")
    print(f"hosted self-test: {'ok' if not problems else 'FAILED'}")
    return 0 if not problems else 1


def sdk_walk(base_url: str) -> int:
    """Pages through threads and items with the SDK's client and prints what it met."""
    import openai

    client = openai.OpenAI(api_key="unused", base_url=base_url, max_retries=0)
    threads = [thread.id for thread in client.beta.chatkit.threads.list(limit=2, order="asc")]
    items = {
        thread: [item.id for item in client.beta.chatkit.threads.list_items(thread, limit=2, order="asc")]
        for thread in threads
    }
    print("sdk-walk: " + json.dumps({"threads": threads, "items": items}))
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("transcript", nargs="?", help="JSON Lines transcript")
    parser.add_argument("--self-test", action="store_true", help="check the validator itself")
    parser.add_argument("--openapi", help="the gateway's OpenAPI document, to validate against as well")
    parser.add_argument("--sdk-walk", metavar="BASE_URL", help="page through the API at BASE_URL with the SDK")
    args = parser.parse_args()
    if args.self_test:
        return self_test()
    if args.sdk_walk:
        return sdk_walk(args.sdk_walk)
    if not args.transcript:
        parser.error("a transcript path or --self-test is needed")
    try:
        with open(args.transcript, encoding="utf-8") as handle:
            lines = handle.read().splitlines()
        openapi = None
        if args.openapi:
            with open(args.openapi, encoding="utf-8") as handle:
                openapi = json.load(handle)
    except (OSError, ValueError) as error:
        print(f"hosted conformance: cannot read the input: {error}", file=sys.stderr)
        return 1
    return run(lines, print, openapi)


if __name__ == "__main__":
    sys.exit(main())
