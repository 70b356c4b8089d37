"""`cnmt loadtest`: send real sentences to a gateway on this machine and report what happened."""

from __future__ import annotations

import argparse
import sys

DEFAULT_CORPUS = "${data}/corpora/tatoeba-en-zh/all.zh"


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "loadtest",
        help="load a local gateway with real sentences; throughput, latency percentiles, devices",
        description=(
            "Send sentences from a corpus to a gateway's /v1/translate, either from N concurrent "
            "clients (--concurrency, closed loop) or at a fixed rate (--rate, open loop), for "
            "--count requests or --duration seconds. Reports throughput, p50/p95/p99 latency, "
            "the edge/cloud split and every request that was rejected (503), failed or lost. "
            "Loopback addresses only."
        ),
    )
    parser.add_argument(
        "--url",
        action="append",
        help="the gateway (default: http://127.0.0.1:8080); repeat it to spread the load over "
        "several gateways in turn",
    )
    parser.add_argument(
        "--corpus",
        default=DEFAULT_CORPUS,
        help="one sentence per line, in the model's source language (default: %(default)s)",
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--concurrency", type=int, help="closed loop: this many clients (default 4)")
    mode.add_argument("--rate", type=float, help="open loop: requests per second")
    parser.add_argument(
        "--count", type=int, help="stop after this many requests (default 200 without --duration)"
    )
    parser.add_argument("--duration", type=float, metavar="SECONDS", help="stop after this long")
    parser.add_argument(
        "--timeout",
        type=float,
        default=30.0,
        help="per-request deadline in seconds (default %(default)s)",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=0,
        help="shuffle the corpus with this seed (default %(default)s)",
    )
    parser.add_argument(
        "--json", metavar="PATH", help="also write the report as JSON to PATH ('-' = stdout only)"
    )
    parser.add_argument(
        "--requests-out",
        metavar="FILE",
        help="also write every request as a JSON line to FILE: when it was sent, its status, "
        "where it ran, its latency and the gateway's predictions for it",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import asyncio
    from pathlib import Path

    from tqdm import tqdm

    from cnmt.config import expand_data
    from cnmt.serving.loadtest import check_loopback, read_sentences, run_load

    corpus = expand_data(args.corpus, what="--corpus (or give --corpus FILE, one sentence a line)")
    urls = args.url or ["http://127.0.0.1:8080"]
    for url in urls:
        check_loopback(url)
    concurrency = args.concurrency if args.concurrency is not None or args.rate is not None else 4
    count = args.count if args.count is not None or args.duration is not None else 200
    sentences = read_sentences(corpus, seed=args.seed)
    bar = tqdm(total=count, unit="req", file=sys.stderr, disable=args.no_progress, desc="loadtest")
    try:
        report = asyncio.run(
            run_load(
                urls,
                sentences,
                concurrency=concurrency,
                rate=args.rate,
                count=count,
                duration_s=args.duration,
                timeout_s=args.timeout,
                progress=bar.update,
            )
        )
    finally:
        bar.close()
    if args.json == "-":
        print(report.to_json())
    else:
        print(report.table())
        if args.json:
            Path(args.json).write_text(report.to_json() + "\n", encoding="utf-8")
            print(f"report written to {args.json}")
    if args.requests_out:
        written = report.write_requests(args.requests_out)
        print(f"{written} requests written to {args.requests_out}", file=sys.stderr)
    return 0 if report.lost == 0 else 1
