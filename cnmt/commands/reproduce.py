"""`cnmt reproduce`: run every experiment scenario; one report beside the paper's Table I."""

from __future__ import annotations

import argparse
import shlex
import sys


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "reproduce",
        help="run every experiment scenario; one report (markdown + plots) with our Table I",
        description=(
            "Replay every connection profile of every built-in experiment config "
            "(`cnmt config list` shows them under experiments/) and write one report. A "
            "scenario whose device profiles, length model or output cache do not exist yet is "
            "skipped and the report says why."
        ),
    )
    parser.add_argument(
        "--out",
        metavar="DIR",
        default="cnmt-reproduce",
        help="write report.md and figures/ here (default: ./cnmt-reproduce)",
    )
    parser.add_argument(
        "--json", metavar="FILE", help="write {scenario: replay JSON or {skipped: reason}}"
    )
    parser.add_argument(
        "--requests", type=int, metavar="N", help="requests per scenario (default: each config's)"
    )
    parser.add_argument(
        "--seed", type=int, metavar="S", help="random seed (default: each config's)"
    )
    parser.add_argument(
        "--only",
        action="append",
        metavar="GLOB",
        help="run only scenarios whose name (SETUP/CONNECTION) matches; repeatable",
    )
    parser.add_argument("--strict", action="store_true", help="exit 1 if any scenario was skipped")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from cnmt.errors import ConfigError
    from cnmt.experiments.report import reproduce

    if args.requests is not None and args.requests < 1:
        raise ConfigError(f"--requests must be >= 1, got {args.requests}")
    command = (
        "cnmt reproduce " + " ".join(shlex.quote(a) for a in sys.argv[2:])
        if len(sys.argv) > 2
        else "cnmt reproduce"
    )
    scenarios = reproduce(
        Path(args.out) if args.out else None,
        Path(args.json) if args.json else None,
        args.requests,
        args.seed,
        args.only,
        command,
    )
    if not scenarios:
        raise ConfigError("no scenario matches --only " + " ".join(args.only or []))
    ran = [s for s in scenarios if s.result is not None]
    print(
        f"{len(ran)} of {len(scenarios)} scenarios ran"
        + (f"; report: {args.out}/report.md" if args.out else "")
    )
    for s in scenarios:
        if s.result is None:
            print(f"  skipped {s.name}: {s.skipped}")
    return 1 if args.strict and len(ran) < len(scenarios) else 0
