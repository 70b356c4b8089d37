"""The `cnmt` command line.

Each module in :mod:`cnmt.commands` adds one subcommand through ``register(subparsers)`` and
sets ``func`` (which returns an exit code) on its parser. Heavy imports (torch, onnxruntime)
happen inside the command functions, so ``cnmt --help`` stays fast. Exit codes: 0 success,
2 usage or configuration error (a message, no traceback), 1 runtime failure.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
import traceback
from collections.abc import Sequence

from cnmt import __version__, commands
from cnmt.errors import CnmtError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cnmt",
        description="C-NMT: collaborative edge-cloud inference of neural machine translation.",
    )
    parser.add_argument("--version", action="version", version=f"cnmt {__version__}")
    parser.add_argument(
        "--debug",
        action="store_true",
        help="on an error, print the Python traceback too (for bug reports)",
    )
    subparsers = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)
    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        importlib.import_module(f"{commands.__name__}.{info.name}").register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except CnmtError as exc:
        if args.debug:
            traceback.print_exc()
        print(f"cnmt: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("cnmt: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
