"""The range of every ranged numeric config key, from the schemas themselves.

Each top-level section's schema and each registered component's ``Params`` declares its ranges
with :func:`cnmt.schema.ranged`; :func:`markdown` turns them into the table in
docs/configuration.md ("Ranges"), and a test checks the page holds exactly that table, so the
documentation cannot drift from what ``cnmt config validate`` enforces. Regenerate it with
``python -P -m cnmt.ranges``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from cnmt.registry import get_components, params_class
from cnmt.schema import range_rows


def rows() -> list[tuple[str, str, str, Any, bool]]:
    """``(where, key, range, default, integer)``: sections first, then components by kind and
    name."""
    components = get_components()
    found: list[tuple[str, str, str, Any, bool]] = []
    for key, section in sorted(components.sections().items()):
        schema = section.load()
        if not dataclasses.is_dataclass(schema):  # a component selection: listed below
            continue
        for name, limits, default, integer in range_rows(schema):
            found.append((f"`{key}:`", name, limits, default, integer))
    for entry in components.all():
        for name, limits, default, integer in range_rows(params_class(entry.cls)):
            where = f"{entry.kind} `{entry.name}`"
            found.append((where, f"params.{name}", limits, default, integer))
    return found


def markdown() -> str:
    lines = ["| where | key | range | default |", "| --- | --- | --- | --- |"]
    for where, key, limits, default, _ in rows():
        shown = "null" if default is None else default
        lines.append(f"| {where} | `{key}` | {limits} | {shown} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(markdown(), end="")
