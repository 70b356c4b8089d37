"""`cnmt reproduce`: run every experiment scenario; one report beside the paper's Table I."""

from __future__ import annotations

import argparse
import shlex


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
    where = parser.add_mutually_exclusive_group()
    where.add_argument(
        "--out",
        metavar="DIR",
        default="cnmt-reproduce",
        help="write report.md and figures/ here (default: ./cnmt-reproduce)",
    )
    where.add_argument(
        "--docs",
        metavar="PAGE",
        help="write the documentation's results page instead (e.g. docs/results.md), its "
        "figures in figures/results/ beside it",
    )
    parser.add_argument(
        "--json",
        metavar="FILE",
        help="write {scenario: replay JSON (with its load_sweep, if any) or {skipped: reason}}",
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
    from cnmt.experiments.report import Output, reproduce

    if args.requests is not None and args.requests < 1:
        raise ConfigError(f"--requests must be >= 1, got {args.requests}")
    command = " ".join(shlex.quote(part) for part in _command_line(args))
    if args.docs:
        page = Path(args.docs)
        if page.suffix != ".md":
            raise ConfigError(f"--docs {page}: give a markdown page (e.g. docs/results.md)")
        output = Output(page, page.parent / "figures" / "results")
    else:
        output = Output(Path(args.out) / "report.md", Path(args.out) / "figures")
    scenarios = reproduce(
        output,
        Path(args.json) if args.json else None,
        args.requests,
        args.seed,
        args.only,
        command,
    )
    if not scenarios:
        raise ConfigError("no scenario matches --only " + " ".join(args.only or []))
    ran = [s for s in scenarios if s.result is not None]
    print(f"{len(ran)} of {len(scenarios)} scenarios ran" + f"; report: {output.markdown}")
    for s in scenarios:
        if s.result is None:
            print(f"  skipped {s.name}: {s.skipped}")
    return 1 if args.strict and len(ran) < len(scenarios) else 0


def _command_line(args: argparse.Namespace) -> list[str]:
    """The command that reproduces this run, as the report prints it."""
    line = ["cnmt", "reproduce"]
    line += ["--docs", args.docs] if args.docs else ["--out", args.out]
    for flag in ("requests", "seed"):
        if getattr(args, flag) is not None:
            line += [f"--{flag}", str(getattr(args, flag))]
    for pattern in args.only or []:
        line += ["--only", pattern]
    return line
