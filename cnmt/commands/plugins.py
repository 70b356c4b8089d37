"""`cnmt plugins`: every registered component and config section, and the plugin it came from."""

from __future__ import annotations

import argparse
import dataclasses
import json
from typing import Any


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "plugins",
        help="list registered components and config sections (built-in and third-party)",
        description=(
            "List every registered component (kind, name, plugin, distribution) and every "
            "top-level config section."
        ),
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--params", action="store_true", help="also show each parameter schema")
    parser.set_defaults(func=run)


def rows() -> list[dict[str, Any]]:
    """One row per component and per config section, with parameter schemas."""
    from cnmt.registry import distribution_of, get_components, params_class
    from cnmt.schema import describe_fields

    components = get_components()
    pm = components.pm
    out = []
    for entry in components.all():
        out.append(
            {
                "kind": entry.kind,
                "name": entry.name,
                "plugin": entry.plugin,
                "distribution": distribution_of(pm, entry.plugin),
                "summary": entry.summary,
                "params": [dataclasses.asdict(f) for f in describe_fields(params_class(entry.cls))],
            }
        )
    for key, section in sorted(components.sections().items()):
        out.append(
            {
                "kind": "config_section",
                "name": key,
                "plugin": section.plugin,
                "distribution": distribution_of(pm, section.plugin),
                "summary": "",
                "params": [],
            }
        )
    return out


def run(args: argparse.Namespace) -> int:
    listed = rows()
    if args.json:
        print(json.dumps(listed, indent=2, default=str))
        return 0
    header = ("KIND", "NAME", "PLUGIN")
    keys = ("kind", "name", "plugin")
    widths = [max(len(h), *(len(r[k]) for r in listed)) for h, k in zip(header, keys, strict=True)]
    print("  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)) + "  DISTRIBUTION")
    for r in listed:
        cells = "  ".join(r[k].ljust(w) for k, w in zip(keys, widths, strict=True))
        print(f"{cells}  {r['distribution']}")
        if args.params and r["kind"] != "config_section":
            print(f"    {r['summary']}")
            for p in r["params"]:
                default = "required" if p["required"] else f"default {p['default']!r}"
                print(f"    - {p['name']}: {p['type']} ({default})")
    return 0
