"""`cnmt plugins`: every registered component, its kind and the plugin it came from."""

from __future__ import annotations

import argparse
import json

from cnmt.schema import describe_fields


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "plugins",
        help="list registered components (built-in and third-party)",
        description="List every registered component: kind, name, plugin and distribution.",
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--params", action="store_true", help="also show each parameter schema")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from cnmt.plugins import collect, distribution_of, get_plugin_manager, params_class

    pm = get_plugin_manager()
    rows = []
    for entry in collect(pm).all():
        rows.append(
            {
                "kind": entry.kind,
                "name": entry.name,
                "plugin": entry.plugin,
                "distribution": distribution_of(pm, entry.plugin),
                "summary": entry.summary,
                "params": [
                    {"name": n, "type": t, "default": None if d is _missing() else d}
                    for n, t, d in describe_fields(params_class(entry.cls))
                ],
            }
        )
    if args.json:
        print(json.dumps(rows, indent=2, default=str))
        return 0
    widths = [max(len(r[k]) for r in rows) for k in ("kind", "name", "plugin")]
    header = ("KIND", "NAME", "PLUGIN")
    widths = [max(w, len(h)) for w, h in zip(widths, header, strict=True)]
    print("  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)) + "  DISTRIBUTION")
    for r in rows:
        cells = (r["kind"], r["name"], r["plugin"])
        print("  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + "  " + r["distribution"])
        if args.params:
            print(f"    {r['summary']}")
            for p in r["params"]:
                default = "required" if p["default"] is None else f"default {p['default']!r}"
                print(f"    - {p['name']}: {p['type']} ({default})")
    return 0


def _missing() -> object:
    import dataclasses

    return dataclasses.MISSING
