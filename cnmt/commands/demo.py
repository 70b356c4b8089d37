"""`cnmt demo`: start cloud, link and gateway locally and translate a few real sentences."""

from __future__ import annotations

import argparse

DEFAULT_CONFIG = "serving/default"


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="run the whole system locally and show its decisions on a few sentences",
        description=(
            "Start the cloud server, the emulated link and the edge gateway of a serving config "
            "on free local ports, translate a handful of Chinese sentences through the gateway "
            "and print, for each, where it ran and why (the length estimate, the predicted edge "
            "and cloud times) and the measured timings; then stop everything. Sentences come "
            "from --corpus, else the Tatoeba ZH side in the data directory, else a built-in list."
        ),
    )
    parser.add_argument(
        "--config", default=DEFAULT_CONFIG, help="a serving config (default: %(default)s)"
    )
    parser.add_argument("--sentences", type=int, default=6, help="how many (default %(default)s)")
    parser.add_argument("--corpus", help="one sentence per line in the model's source language")
    parser.add_argument(
        "--seed", type=int, default=0, help="which sentences of the corpus (default %(default)s)"
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import asyncio

    from cnmt.config import display_path, load_config
    from cnmt.errors import ConfigError
    from cnmt.serving.demo import pick_sentences, run_demo
    from cnmt.serving.logs import configure_logging

    if args.sentences < 1:
        raise ConfigError(f"--sentences: {args.sentences} must be at least 1")
    configure_logging("cnmt demo: %(levelname)s: %(message)s")
    config = load_config(args.config)
    sentences, source = pick_sentences(args.sentences, args.corpus, args.seed)
    print(f"cnmt demo: {display_path(config.source)}; {len(sentences)} sentences from {source}")
    answers = asyncio.run(run_demo(config, sentences))
    return 0 if len(answers) == len(sentences) else 1
