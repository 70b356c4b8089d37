"""`cnmt launch [CONFIG]`: start the gateway, cloud and emulated link a serving config describes."""

from __future__ import annotations

import argparse
import sys

DEFAULT_CONFIG = "serving/default"


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "launch",
        help="start an edge gateway, a cloud server and/or an emulated link from a config",
        description=(
            "Start what a serving config describes (sections `gateway`, `cloud`, `link`) and "
            "serve until interrupted (Ctrl-C or SIGTERM shut everything down cleanly). Without "
            f"CONFIG, the built-in `{DEFAULT_CONFIG}`: the whole system on this machine, with "
            "the cn2en model on both sides and an emulated link between them."
        ),
    )
    parser.add_argument(
        "config",
        nargs="?",
        default=DEFAULT_CONFIG,
        help=f"a YAML file or a built-in config name (default: {DEFAULT_CONFIG})",
    )
    parser.add_argument(
        "--gateway-port", type=int, metavar="PORT", help="override gateway.port (0 = any free port)"
    )
    parser.add_argument("--cloud-port", type=int, metavar="PORT", help="override cloud.port")
    parser.add_argument("--link-port", type=int, metavar="PORT", help="override link.port")
    parser.add_argument(
        "--quiet",
        action="store_true",
        help="print only warnings and errors (no start-up lines, no per-request decision lines)",
    )
    parser.add_argument(
        "--log-format",
        choices=("text", "json"),
        default="text",
        help="text for people (default), or JSON lines for machines: one object per line, the "
        "decision lines with every field of the decision (the children log alike)",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import asyncio
    import logging
    import os

    from cnmt.config import load_config
    from cnmt.errors import ConfigError
    from cnmt.serving.decision_log import log as decisions_log
    from cnmt.serving.launch import System, run_until_signal
    from cnmt.serving.logs import LOG_FORMAT_ENV, configure_logging

    for flag in ("gateway_port", "cloud_port", "link_port"):
        port = getattr(args, flag)
        if port is not None and not 0 <= port <= 65535:
            raise ConfigError(
                f"--{flag.replace('_', '-')}: {port} out of range 0..65535 (0 = any free port)"
            )
    os.environ[LOG_FORMAT_ENV] = args.log_format  # the cloud and edge children inherit it
    configure_logging("cnmt launch: %(levelname)s: %(message)s", args.log_format)
    if not args.quiet:  # one INFO line per request: what was decided, why, and what it took
        decisions_log.setLevel(logging.INFO)

    def say(message: str) -> None:
        if not args.quiet:
            print(f"cnmt launch: {message}", file=sys.stderr, flush=True)

    config = load_config(args.config)
    system = System(
        config,
        gateway_port=args.gateway_port,
        cloud_port=args.cloud_port,
        link_port=args.link_port,
        say=say,
    )
    asyncio.run(run_until_signal(system, say))
    return 0
