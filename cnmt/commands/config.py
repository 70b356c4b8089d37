"""`cnmt config validate|show FILE`: check a config, or print it resolved."""

from __future__ import annotations

import argparse

import yaml


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "config",
        help="validate or show a YAML config",
        description="Validate a YAML config or print it with bases merged and variables filled in.",
    )
    actions = parser.add_subparsers(title="actions", metavar="ACTION", required=True)
    validate = actions.add_parser(
        "validate", help="check a config; exit 2 with the problem if invalid"
    )
    validate.add_argument("config", help="a YAML file or a built-in config name")
    validate.set_defaults(func=run_validate)
    show = actions.add_parser(
        "show", help="print the resolved config (bases merged, variables filled)"
    )
    show.add_argument("config", help="a YAML file or a built-in config name")
    show.set_defaults(func=run_show)
    listing = actions.add_parser("list", help="list the built-in configs")
    listing.set_defaults(func=run_list)


def run_validate(args: argparse.Namespace) -> int:
    from cnmt.config import load_config

    config = load_config(args.config)
    print(f"{config.source}: valid ({', '.join(sorted(config.sections)) or 'no sections'})")
    return 0


def run_show(args: argparse.Namespace) -> int:
    from cnmt.config import load_config

    config = load_config(args.config)
    print(f"# resolved from {config.source}")
    print(yaml.safe_dump(dict(config.raw), sort_keys=False, allow_unicode=True), end="")
    return 0


def run_list(args: argparse.Namespace) -> int:
    from cnmt.config import builtin_config_names

    for name in builtin_config_names():
        print(name)
    return 0
