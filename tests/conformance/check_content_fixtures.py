"""Checks the content fixtures (tests/browser/content-fixtures.json: the turns the chat
page's content renderers are tested with, and the echo responder may send) against
openai-chatkit's pydantic types, so each one is an item a ChatKit server could send.

Every entry's `item` must validate as a `ThreadItem`, and serializing the validated
item must give back every field the fixture has: pydantic silently drops a field its
class does not define, so a misspelt field would otherwise pass. Exits non-zero,
naming the fixture, on the first invalid one.

Run with the conformance venv:
`.venv-conformance/bin/python tests/conformance/check_content_fixtures.py`.
"""

import json
import sys
from datetime import datetime
from pathlib import Path

from pydantic import TypeAdapter, ValidationError

from chatkit.types import ThreadItem

FIXTURES = Path(__file__).resolve().parents[2] / "tests" / "browser" / "content-fixtures.json"
ITEM = TypeAdapter(ThreadItem)


def missing_fields(fixture, dumped, path="item"):
    """The paths of the fixture's values that the validated item does not give back."""
    if isinstance(fixture, dict):
        if not isinstance(dumped, dict):
            return [path]
        problems = []
        for key, value in fixture.items():
            if key not in dumped:
                problems.append(f"{path}.{key} (not a field of the type)")
            elif key == "created_at":
                # Datetimes come back in pydantic's own ISO spelling; compare the instants.
                if datetime.fromisoformat(value) != datetime.fromisoformat(dumped[key]):
                    problems.append(f"{path}.{key}")
            else:
                problems.extend(missing_fields(value, dumped[key], f"{path}.{key}"))
        return problems
    if isinstance(fixture, list):
        if not isinstance(dumped, list) or len(fixture) != len(dumped):
            return [path]
        return [p for i, (a, b) in enumerate(zip(fixture, dumped)) for p in missing_fields(a, b, f"{path}[{i}]")]
    return [] if fixture == dumped else [f"{path} ({fixture!r} became {dumped!r})"]


def main():
    fixtures = json.loads(FIXTURES.read_text(encoding="utf-8"))
    entries = fixtures.get("items", [])
    if not entries:
        print(f"{FIXTURES}: no fixtures", file=sys.stderr)
        return 1
    names = set()
    for entry in entries:
        name = entry.get("name", "?")
        if name in names:
            print(f"content fixture {name}: duplicate name", file=sys.stderr)
            return 1
        names.add(name)
        try:
            validated = ITEM.validate_python(entry["item"])
        except (KeyError, ValidationError) as error:
            print(f"content fixture {name} is not a valid ThreadItem:\n{error}", file=sys.stderr)
            return 1
        problems = missing_fields(entry["item"], ITEM.dump_python(validated, mode="json"))
        if problems:
            print(f"content fixture {name}: fields lost in validation: {', '.join(problems)}", file=sys.stderr)
            return 1
        print(f"ok   {name} ({type(validated).__name__})")
    print(f"all {len(entries)} content fixtures are valid ThreadItems")
    return 0


if __name__ == "__main__":
    sys.exit(main())
