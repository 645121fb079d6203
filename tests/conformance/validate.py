#!/usr/bin/env python3
"""Check a gateway transcript against the reference ChatKit SDK (openai-chatkit 1.6.5).

Usage:
    python validate.py TRANSCRIPT.jsonl
    python validate.py --self-test

The transcript is JSON Lines, one object per line:

    {"op": "<request type>", "kind": "response" | "event" | "viewer_event", "body": <JSON the server sent>}

Every body is validated with the reference pydantic types, re-serialized the way
the reference server does (by alias, without nulls, without attachment metadata)
and compared with what the gateway sent, key by key. Hidden context items,
attachment metadata and non-empty thread metadata are failures as well.

Prints one line per failure and a final `conformance: N passed, M failed` line.
Exits 1 if any line failed or the transcript is empty or unreadable, else 0.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from typing import Any, Callable, Iterable

REFERENCE_VERSION = "1.6.5"

try:
    import importlib.metadata

    from pydantic import BaseModel, TypeAdapter, ValidationError

    from chatkit import types as ck
except ImportError as exc:  # pragma: no cover - environment problem
    print(
        f"conformance: cannot import the reference SDK ({exc}); "
        f"install it with `pip install openai-chatkit=={REFERENCE_VERSION}`",
        file=sys.stderr,
    )
    sys.exit(1)


# Request types whose responses are SSE streams of ThreadStreamEvent.
STREAMING_OPS = frozenset(
    {
        "threads.create",
        "threads.add_user_message",
        "threads.add_client_tool_output",
        "threads.add_structured_input",
        "threads.retry_after_item",
        "threads.custom_action",
    }
)

# Non-streaming request types answered with `{}` by the reference server.
EMPTY_BODY_OPS = frozenset({"items.feedback", "threads.delete", "attachments.delete"})

EVENT_ADAPTER: TypeAdapter[Any] = TypeAdapter(ck.ThreadStreamEvent)

# Non-streaming request types answered with a model, and the reference type.
RESPONSE_ADAPTERS: dict[str, tuple[str, TypeAdapter[Any]]] = {
    "threads.get_by_id": ("Thread", TypeAdapter(ck.Thread)),
    "threads.update": ("Thread", TypeAdapter(ck.Thread)),
    "threads.list": ("Page[Thread]", TypeAdapter(ck.Page[ck.Thread])),
    "items.list": ("Page[ThreadItem]", TypeAdapter(ck.Page[ck.ThreadItem])),
    "attachments.create": ("Attachment", TypeAdapter(ck.Attachment)),
    "input.transcribe": ("TranscriptionResult", TypeAdapter(ck.TranscriptionResult)),
    "threads.sync_custom_action": (
        "SyncCustomActionResponse",
        TypeAdapter(ck.SyncCustomActionResponse),
    ),
}

HIDDEN_ITEM_TYPES = (ck.HiddenContextItem, ck.SDKHiddenContextItem)

Path = list[Any]  # JSON path segments: str keys and int indices
Failure = tuple[str, str]  # (rendered JSON path, what is wrong)


# --------------------------------------------------------------------------- #
# Helpers
# --------------------------------------------------------------------------- #


def render_path(parts: Iterable[Any]) -> str:
    out = "$"
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        elif isinstance(part, str) and part.isidentifier():
            out += f".{part}"
        else:
            out += "[" + json.dumps(str(part)) + "]"
    return out


def short(value: Any, limit: int = 80) -> str:
    try:
        text = json.dumps(value, sort_keys=True, ensure_ascii=False)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def reference_dump(obj: BaseModel) -> Any:
    """Serialize exactly like `ChatKitServer._serialize` and parse back to JSON values."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        text = obj.model_dump_json(
            by_alias=True,
            exclude_none=True,
            context={"exclude_metadata": True},
        )
    return json.loads(text)


def error_path(loc: tuple[Any, ...], body: Any) -> tuple[Path, tuple[Any, ...] | None]:
    """Turn a pydantic error location into a JSON path into `body`.

    Locations of union members carry tags (discriminator values or class names)
    that are not keys of the document; drop those segments, guided by the body.
    Also returns the location prefix ending at the innermost object-level union
    member tag (None if there is none), to group errors by union member.
    """
    parts: Path = []
    member: tuple[Any, ...] | None = None
    current = body
    for index, segment in enumerate(loc):
        if isinstance(current, dict):
            if segment in current:
                parts.append(segment)
                current = current[segment]
            elif index == len(loc) - 1:
                parts.append(segment)  # e.g. a missing required key
            else:
                member = tuple(loc[: index + 1])  # a union tag, not part of the document
        elif isinstance(current, list) and isinstance(segment, int) and 0 <= segment < len(current):
            parts.append(segment)
            current = current[segment]
        # else: past a scalar, the remaining segments are union tags
    return parts, member


def validation_failures(exc: ValidationError, body: Any) -> list[Failure]:
    errors = [(err, *error_path(tuple(err.get("loc", ())), body)) for err in exc.errors(include_url=False)]

    # A plain (non-discriminated) union reports every member's errors. Members whose
    # `type` literal did not match are noise when some other member's did match.
    def type_mismatch(err: dict[str, Any]) -> bool:
        loc = err.get("loc", ())
        return err.get("type") == "literal_error" and bool(loc) and loc[-1] == "type"

    mismatched = {m for _, _, m in errors if m is not None and any(
        type_mismatch(e) for e, _, m2 in errors if m2 == m)}
    matched_unions = {m[:-1] for _, _, m in errors if m is not None and m not in mismatched}
    failures: list[Failure] = []
    for err, parts, member in errors:
        if member in mismatched and member[:-1] in matched_unions:
            continue
        detail = err.get("msg", "invalid")
        if "input" in err and err.get("type") != "missing":
            detail += f" (sent {short(err['input'], 60)})"
        failure = (render_path(parts), f"rejected by the reference types: {detail}")
        if failure not in failures:
            failures.append(failure)
    return failures


def diff(sent: Any, ref: Any, parts: Path, out: list[Failure]) -> None:
    """Compare the sent JSON with the reference re-serialization, as JSON values."""
    if isinstance(sent, dict) and isinstance(ref, dict):
        for key in sent:
            if key not in ref:
                path = render_path(parts + [key])
                if sent[key] is None:
                    out.append((path, "sent null; the reference omits null fields"))
                else:
                    out.append(
                        (path, f"unexpected key (sent {short(sent[key])}); the reference does not send it")
                    )
        for key in ref:
            if key not in sent:
                out.append(
                    (render_path(parts + [key]), f"missing key; the reference sends {short(ref[key])}")
                )
        for key in sent:
            if key in ref:
                diff(sent[key], ref[key], parts + [key], out)
        return
    if isinstance(sent, list) and isinstance(ref, list):
        if len(sent) != len(ref):
            out.append(
                (render_path(parts), f"array length differs: sent {len(sent)}, reference {len(ref)}")
            )
        for index, (s, r) in enumerate(zip(sent, ref)):
            diff(s, r, parts + [index], out)
        return
    if json_type(sent) != json_type(ref):
        out.append(
            (
                render_path(parts),
                f"type differs: sent {json_type(sent)} {short(sent)}, "
                f"reference {json_type(ref)} {short(ref)}",
            )
        )
        return
    if sent != ref:
        out.append((render_path(parts), f"value differs: sent {short(sent)}, reference {short(ref)}"))


def policy_failures(obj: Any, raw: Any, parts: Path, out: list[Failure]) -> None:
    """Rules beyond the schema: no hidden items, no attachment metadata, thread metadata == {}."""
    if isinstance(obj, HIDDEN_ITEM_TYPES):
        out.append((render_path(parts), f"hidden item of type {obj.type!r} must never be sent"))
        return
    if isinstance(obj, ck.AttachmentBase) and isinstance(raw, dict) and "metadata" in raw:
        out.append((render_path(parts + ["metadata"]), "attachment carries a metadata key; it must be omitted"))
    if isinstance(obj, ck.ThreadMetadata) and isinstance(raw, dict) and "metadata" in raw:
        if not (isinstance(raw["metadata"], dict) and not raw["metadata"]):
            out.append(
                (render_path(parts + ["metadata"]), f"thread metadata must be {{}}, sent {short(raw['metadata'])}")
            )
    if isinstance(obj, BaseModel):
        for name, field in type(obj).model_fields.items():
            key = field.serialization_alias or field.alias or name
            sub = raw.get(key) if isinstance(raw, dict) else None
            policy_failures(getattr(obj, name, None), sub, parts + [key], out)
    elif isinstance(obj, (list, tuple)):
        for index, value in enumerate(obj):
            sub = raw[index] if isinstance(raw, list) and index < len(raw) else None
            policy_failures(value, sub, parts + [index], out)
    elif isinstance(obj, dict):
        for key, value in obj.items():
            sub = raw.get(key) if isinstance(raw, dict) else None
            policy_failures(value, sub, parts + [key], out)


def check_model(adapter: TypeAdapter[Any], body: Any) -> list[Failure]:
    try:
        obj = adapter.validate_json(json.dumps(body))
    except ValidationError as exc:
        return validation_failures(exc, body)
    failures: list[Failure] = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # deprecated fields warn on attribute access
        policy_failures(obj, body, [], failures)
    reported = {path for path, _ in failures}
    differences: list[Failure] = []
    diff(body, reference_dump(obj), [], differences)
    failures.extend(d for d in differences if d[0] not in reported)
    return failures


def check_entry(op: Any, kind: Any, body: Any) -> list[Failure]:
    """All failures for one transcript entry (empty list: it conforms)."""
    if not isinstance(op, str):
        return [("$", f"op must be a string, got {short(op)}")]
    if kind == "event":
        if op not in STREAMING_OPS:
            return [("$", f"unknown op {op!r} for kind 'event' (not a streaming request type)")]
        return check_model(EVENT_ADAPTER, body)
    if kind == "viewer_event":
        # A viewer stream's data frames are ChatKit events too (control
        # frames are named SSE events and never reach this check).
        return check_model(EVENT_ADAPTER, body)
    if kind == "response":
        if op in EMPTY_BODY_OPS:
            if isinstance(body, dict) and not body:
                return []
            return [("$", f"body must be exactly {{}}, sent {short(body)}")]
        if op in RESPONSE_ADAPTERS:
            return check_model(RESPONSE_ADAPTERS[op][1], body)
        return [("$", f"unknown op {op!r} for kind 'response'")]
    return [("$", f"unknown kind {short(kind)} (expected 'response', 'event' or 'viewer_event')")]


def check_line(text: str) -> tuple[str, list[Failure]]:
    """Parse one transcript line. Returns (op label, failures)."""
    try:
        record = json.loads(text)
    except json.JSONDecodeError as exc:
        return "?", [("-", f"line is not JSON: {exc}")]
    if not isinstance(record, dict):
        return "?", [("-", f"line is not a JSON object: {short(record)}")]
    op = record.get("op")
    label = op if isinstance(op, str) else "?"
    missing = [key for key in ("op", "kind", "body") if key not in record]
    if missing:
        return label, [("-", f"line lacks {', '.join(missing)}")]
    return f"{label} {record['kind']}", check_entry(op, record["kind"], record["body"])


def run(lines: list[str], emit: Callable[[str], None]) -> tuple[int, int]:
    """Check every non-blank line; emit one message per failure. Returns (passed, failed)."""
    passed = failed = 0
    for number, text in enumerate(lines, start=1):
        if not text.strip():
            continue
        label, failures = check_line(text)
        if failures:
            failed += 1
            for path, what in failures:
                emit(f"line {number}: {label}: {path}: {what}")
        else:
            passed += 1
    return passed, failed


# --------------------------------------------------------------------------- #
# Self-test
# --------------------------------------------------------------------------- #

TS = "2026-11-23T14:16:35.239443"
_DROP = object()  # marks a key to leave out of a fixture


def _thread(**overrides: Any) -> dict[str, Any]:
    thread: dict[str, Any] = {
        "id": "thr_1",
        "created_at": TS,
        "status": {"type": "active"},
        "metadata": {},
        "items": {"data": [], "has_more": False},
    }
    thread.update(overrides)
    return {k: v for k, v in thread.items() if v is not _DROP}



def _assistant(**content_overrides: Any) -> dict[str, Any]:
    content: dict[str, Any] = {"type": "output_text", "text": "hello", "annotations": []}
    content.update(content_overrides)
    content = {k: v for k, v in content.items() if v is not _DROP}
    return {"id": "msg_2", "thread_id": "thr_1", "created_at": TS, "type": "assistant_message", "content": [content]}


def _attachment(**overrides: Any) -> dict[str, Any]:
    attachment: dict[str, Any] = {"id": "atc_1", "name": "a.txt", "mime_type": "text/plain", "type": "file"}
    attachment.update(overrides)
    return {k: v for k, v in attachment.items() if v is not _DROP}


def _user(**overrides: Any) -> dict[str, Any]:
    item: dict[str, Any] = {
        "id": "msg_1",
        "thread_id": "thr_1",
        "created_at": TS,
        "type": "user_message",
        "content": [{"type": "input_text", "text": "hi"}],
        "attachments": [_attachment(thread_id="thr_1")],
        "inference_options": {},
    }
    item.update(overrides)
    return {k: v for k, v in item.items() if v is not _DROP}


def _hidden(kind: str) -> dict[str, Any]:
    return {"id": "hid_1", "thread_id": "thr_1", "created_at": TS, "type": kind, "content": "secret"}


# (description, op, kind, body, expected substring of a failure message or path; None = must pass)
SELF_TEST_CASES: list[tuple[str, Any, Any, Any, str | None]] = [
    # --- known good ---
    ("stream_options event", "threads.create", "event",
     {"type": "stream_options", "stream_options": {"allow_cancel": True}}, None),
    ("thread.created, naive datetime", "threads.create", "event",
     {"type": "thread.created", "thread": _thread()}, None),
    ("thread.created, UTC 'Z' datetime", "threads.create", "event",
     {"type": "thread.created", "thread": _thread(created_at="2026-11-23T14:16:35Z", title="T")}, None),
    ("user message item done", "threads.add_user_message", "event",
     {"type": "thread.item.done", "item": _user()}, None),
    ("assistant message added", "threads.create", "event",
     {"type": "thread.item.added", "item": _assistant()}, None),
    ("text delta", "threads.create", "event",
     {"type": "thread.item.updated", "item_id": "msg_2",
      "update": {"type": "assistant_message.content_part.text_delta", "content_index": 0, "delta": "he"}}, None),
    ("error event", "threads.retry_after_item", "event",
     {"type": "error", "code": "custom", "allow_retry": False}, None),
    ("end of turn", "threads.custom_action", "event",
     {"type": "thread.item.done",
      "item": {"id": "eot_1", "thread_id": "thr_1", "created_at": TS, "type": "end_of_turn"}}, None),
    ("threads.list page", "threads.list", "response",
     {"data": [_thread(title="T")], "has_more": True, "after": "thr_1"}, None),
    ("items.list page", "items.list", "response",
     {"data": [_user(), _assistant()], "has_more": False}, None),
    ("threads.get_by_id", "threads.get_by_id", "response",
     _thread(items={"data": [_user()], "has_more": False}), None),
    ("threads.update", "threads.update", "response", _thread(title="New"), None),
    ("attachments.create", "attachments.create", "response", _attachment(), None),
    ("image attachment", "attachments.create", "response",
     _attachment(type="image", mime_type="image/png", preview_url="https://example.com/p.png"), None),
    ("input.transcribe", "input.transcribe", "response", {"text": "hi"}, None),
    ("sync custom action, no item", "threads.sync_custom_action", "response", {}, None),
    ("sync custom action, item", "threads.sync_custom_action", "response", {"updated_item": _assistant()}, None),
    ("threads.delete {}", "threads.delete", "response", {}, None),
    ("items.feedback {}", "items.feedback", "response", {}, None),
    ("attachments.delete {}", "attachments.delete", "response", {}, None),
    # --- known bad ---
    ("null title", "threads.create", "event",
     {"type": "thread.created", "thread": _thread(title=None)}, "$.thread.title"),
    ("missing annotations default", "threads.create", "event",
     {"type": "thread.item.done", "item": _assistant(annotations=_DROP)}, "$.item.content[0].annotations"),
    ("unknown event type", "threads.create", "event",
     {"type": "thread.exploded", "thread": _thread()}, "rejected by the reference types"),
    ("sdk_hidden_context in items page", "items.list", "response",
     {"data": [_user(), _hidden("sdk_hidden_context")], "has_more": False}, "hidden item"),
    ("hidden_context_item event", "threads.create", "event",
     {"type": "thread.item.done", "item": _hidden("hidden_context_item")}, "hidden item"),
    ("hidden item inside a thread", "threads.get_by_id", "response",
     _thread(items={"data": [_hidden("sdk_hidden_context")], "has_more": False}), "$.items.data[0]"),
    ("attachment with metadata", "attachments.create", "response",
     _attachment(metadata={"k": "v"}), "$.metadata"),
    ("attachment metadata inside a user message", "threads.add_user_message", "event",
     {"type": "thread.item.done", "item": _user(attachments=[_attachment(metadata=None)])},
     "$.item.attachments[0].metadata"),
    ("{\"ok\": true} for threads.delete", "threads.delete", "response", {"ok": True}, "exactly {}"),
    ("null for items.feedback", "items.feedback", "response", None, "exactly {}"),
    ("thread metadata not empty", "threads.update", "response", _thread(metadata={"user": "u1"}), "$.metadata"),
    ("thread metadata missing", "threads.update", "response", _thread(metadata=_DROP), "$.metadata"),
    ("thread status missing", "threads.get_by_id", "response", _thread(status=_DROP), "$.status"),
    ("+00:00 offset", "threads.create", "event",
     {"type": "thread.created", "thread": _thread(created_at="2026-11-23T14:16:35+00:00")}, "$.thread.created_at"),
    ("millisecond fraction", "threads.update", "response",
     _thread(created_at="2026-11-23T14:16:35.239"), "$.created_at"),
    ("page without has_more", "threads.list", "response", {"data": []}, "$.has_more"),
    ("unknown extra field", "threads.create", "event",
     {"type": "stream_options", "stream_options": {"allow_cancel": True}, "seq": 1}, "$.seq"),
    ("number instead of boolean", "threads.create", "event",
     {"type": "stream_options", "stream_options": {"allow_cancel": 1}}, "$.stream_options.allow_cancel"),
    ("wrong field type", "input.transcribe", "response", {"text": 3}, "$.text"),
    ("bad field inside a plain union", "threads.create", "event",
     {"type": "thread.item.updated", "item_id": "msg_2",
      "update": {"type": "assistant_message.content_part.text_delta", "content_index": "x", "delta": "he"}},
     "$.update.content_index"),
    ("user message without inference_options", "items.list", "response",
     {"data": [_user(inference_options=_DROP)], "has_more": False}, "$.data[0].inference_options"),
    ("unknown op", "threads.explode", "response", {}, "unknown op"),
    ("event from a non-streaming op", "threads.list", "event",
     {"type": "stream_options", "stream_options": {"allow_cancel": True}}, "unknown op"),
    ("response for a streaming op", "threads.create", "response", _thread(), "unknown op"),
    ("unknown kind", "threads.create", "chunk",
     {"type": "stream_options", "stream_options": {"allow_cancel": True}}, "unknown kind"),
]

SELF_TEST_BAD_LINES: list[tuple[str, str, str]] = [
    ("not JSON", "{op: threads.list", "not JSON"),
    ("not an object", "[1, 2]", "not a JSON object"),
    ("no body", json.dumps({"op": "threads.delete", "kind": "response"}), "lacks body"),
]


def self_test(verbose: bool = False) -> int:
    misjudged = 0

    def judge(description: str, text: str, expect: str | None) -> None:
        nonlocal misjudged
        _, failures = check_line(text)
        messages = [f"{path}: {what}" for path, what in failures]
        if expect is None:
            ok = not failures
            verdict = "pass" if ok else "MISJUDGED (expected pass): " + "; ".join(messages)
        else:
            ok = any(expect in m for m in messages)
            verdict = (
                "caught"
                if ok
                else f"MISJUDGED (expected a failure mentioning {expect!r}): "
                + ("; ".join(messages) if messages else "it passed")
            )
        if not ok:
            misjudged += 1
        if verbose or not ok:
            print(f"self-test: {description}: {verdict}")

    for description, op, kind, body, expect in SELF_TEST_CASES:
        judge(description, json.dumps({"op": op, "kind": kind, "body": body}), expect)
    for description, text, expect in SELF_TEST_BAD_LINES:
        judge(description, text, expect)

    # Whole-transcript behaviour: counting, blank lines, empty transcript.
    good = json.dumps({"op": "threads.delete", "kind": "response", "body": {}})
    bad = json.dumps({"op": "threads.delete", "kind": "response", "body": {"ok": True}})
    emitted: list[str] = []
    counts = run([good, "", bad, good], emitted.append)
    if counts != (2, 1) or len(emitted) != 1 or not emitted[0].startswith("line 3: "):
        misjudged += 1
        print(f"self-test: transcript counting: MISJUDGED: counts {counts}, messages {emitted}")
    elif verbose:
        print("self-test: transcript counting: ok")
    if exit_code(*run(["", "  "], emitted.append)) != 1:
        misjudged += 1
        print("self-test: empty transcript: MISJUDGED (must fail)")
    elif verbose:
        print("self-test: empty transcript: ok")

    total = len(SELF_TEST_CASES) + len(SELF_TEST_BAD_LINES) + 2
    print(f"self-test: {total - misjudged} of {total} checks judged correctly")
    return 1 if misjudged else 0


# --------------------------------------------------------------------------- #
# Entry point
# --------------------------------------------------------------------------- #


def exit_code(passed: int, failed: int) -> int:
    return 1 if failed or (passed + failed) == 0 else 0


def check_reference_version() -> str | None:
    try:
        installed = importlib.metadata.version("openai-chatkit")
    except importlib.metadata.PackageNotFoundError:
        return "openai-chatkit is importable but not installed as a distribution"
    if installed != REFERENCE_VERSION:
        return f"openai-chatkit {installed} is installed; conformance is defined against {REFERENCE_VERSION}"
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("transcript", nargs="?", help="JSON Lines transcript written by the conformance test")
    parser.add_argument("--self-test", action="store_true", help="check the validator against built-in cases")
    parser.add_argument("-v", "--verbose", action="store_true", help="with --self-test, print every case")
    args = parser.parse_args(argv)

    problem = check_reference_version()
    if problem:
        print(f"conformance: {problem}", file=sys.stderr)
        return 1
    if args.self_test:
        return self_test(args.verbose)
    if not args.transcript:
        parser.error("a transcript path is required (or --self-test)")

    try:
        with open(args.transcript, encoding="utf-8") as handle:
            lines = handle.read().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        print(f"conformance: cannot read {args.transcript}: {exc}")
        print("conformance: 0 passed, 0 failed")
        return 1

    passed, failed = run(lines, print)
    if passed + failed == 0:
        print(f"conformance: transcript {args.transcript} is empty")
    print(f"conformance: {passed} passed, {failed} failed")
    return exit_code(passed, failed)


if __name__ == "__main__":
    sys.exit(main())
