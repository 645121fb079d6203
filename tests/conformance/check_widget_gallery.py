"""Checks the widget gallery (src/responder/gallery.json: the echo responder's `/gallery`) against
openai-chatkit's pydantic widget types, so the gallery the chat page renders is
one a ChatKit server could send.

Every `gallery` entry must be a strictly valid widget root, and each component
in it must validate as its own class with no prop the class does not define
(pydantic would silently drop a misspelt prop, and a lenient union would hide a
wrong one behind `DynamicWidgetComponent`). The `degraded` entries only need to
pass as a `DynamicWidgetRoot`, which is how a server sends components this
renderer does not know. Exits non-zero on the first invalid fixture.

Run with the conformance venv: `.venv-conformance/bin/python tests/conformance/check_widget_gallery.py`;
tests/integration/conformance.rs does.
"""

import json
import sys
import warnings
from pathlib import Path

# The named widget classes are deprecated for direct use; validation is still what they are for here.
warnings.simplefilter("ignore", DeprecationWarning)

from pydantic import TypeAdapter, ValidationError  # noqa: E402

from chatkit import widgets  # noqa: E402

FIXTURES = Path(__file__).resolve().parents[2] / "src" / "responder" / "gallery.json"
STRICT_ROOT = TypeAdapter(widgets.StrictWidgetRoot)


def strict_class(node_type):
    """The widgets.py class for a component type, or None for a dynamic one."""
    if node_type == "Basic":
        return widgets.BasicRoot
    cls = getattr(widgets, node_type, None)
    if isinstance(cls, type) and issubclass(cls, widgets.WidgetComponentBase):
        return cls
    return None


def check_node(node, path):
    """Validates one component as its own class, then its children; returns the problems found."""
    problems = []
    cls = strict_class(node.get("type", ""))
    if cls is None:
        return [f"{path}: unknown component type {node.get('type')!r}"]
    allowed = set(cls.model_fields) | {f.alias for f in cls.model_fields.values() if f.alias}
    extra = set(node) - allowed
    if extra and cls is not widgets.BasicRoot:
        problems.append(f"{path} ({node['type']}): props the type does not define: {sorted(extra)}")
    try:
        cls.model_validate(node)
    except ValidationError as error:
        problems.append(f"{path} ({node['type']}): {error}")
    children = node.get("children")
    if isinstance(children, dict):
        children = [children]
    for index, child in enumerate(children or []):
        problems.extend(check_node(child, f"{path}.children[{index}]"))
    return problems


def main():
    data = json.loads(FIXTURES.read_text(encoding="utf-8"))
    problems = []
    for entry in data["gallery"]:
        name = entry["name"]
        try:
            STRICT_ROOT.validate_python(entry["widget"])
        except ValidationError as error:
            problems.append(f"gallery {name}: not a strict widget root: {error}")
        problems.extend(check_node(entry["widget"], f"gallery {name}"))
    for entry in data["degraded"]:
        try:
            widgets.DynamicWidgetRoot.model_validate(entry["widget"])
        except ValidationError as error:
            problems.append(f"degraded {entry['name']}: not a dynamic widget root: {error}")
    for problem in problems:
        print(problem, file=sys.stderr)
    if problems:
        print(f"{len(problems)} problem(s) in {FIXTURES}", file=sys.stderr)
        return 1
    print(f"{len(data['gallery'])} gallery and {len(data['degraded'])} degraded widget fixtures are valid")
    return 0


if __name__ == "__main__":
    sys.exit(main())
