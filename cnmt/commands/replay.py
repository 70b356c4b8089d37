"""`cnmt replay CONFIG`: stream requests through every device policy over an RTT trace window."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "replay",
        help="replay requests through every policy over an RTT trace (the paper's Table I)",
        description=(
            "Draw requests from a corpus, give each a true execution time on the edge and the "
            "cloud from the measured device profiles and a true round trip from an RTT trace, "
            "and report the total latency of each device policy with its percent change "
            "against edge-only, cloud-only and the Oracle (the paper's Table I)."
        ),
    )
    parser.add_argument(
        "config", help="an experiment config (file or built-in name, e.g. experiments/bilstm-de-en)"
    )
    parser.add_argument(
        "--connection",
        metavar="NAME",
        help="which connection profile of the config (default: its default_connection, else "
        "the first)",
    )
    parser.add_argument(
        "--rtt-trace",
        metavar="FILE",
        help="replace the connection profile's trace by this file (RIPE CSV, RIPE JSON or one "
        "RTT per line; detected), replayed whole unless --window-* say otherwise",
    )
    parser.add_argument(
        "--window-start", type=int, metavar="I", help="first trace sample of the window"
    )
    parser.add_argument("--window-samples", type=int, metavar="K", help="window length in samples")
    parser.add_argument(
        "--window-hours",
        type=float,
        metavar="H",
        help="window length in hours of trace time instead (the paper: 4 or 5 hours for 100k "
        "requests, about 7 a second)",
    )
    parser.add_argument(
        "--arrival-rate",
        type=float,
        metavar="R",
        help="Poisson arrivals at R requests per second, with the devices' queues on",
    )
    queues = parser.add_mutually_exclusive_group()
    queues.add_argument(
        "--queues",
        dest="queues",
        action="store_const",
        const=True,
        help="the devices are FIFO queues (replay.queues in the config)",
    )
    queues.add_argument(
        "--no-queues",
        dest="queues",
        action="store_const",
        const=False,
        help="every request finds both devices idle (the paper's method)",
    )
    parser.add_argument(
        "--requests",
        type=int,
        metavar="N",
        help="number of requests (default: the config's, 100000)",
    )
    parser.add_argument("--seed", type=int, metavar="S", help="random seed (default: the config's)")
    parser.add_argument(
        "--policies",
        metavar="LABEL,...",
        help="replay only the config's policies with these labels (default: all of them)",
    )
    parser.add_argument(
        "--no-progress",
        action="store_true",
        help="no progress bar (one is shown on stderr when the replay takes over a second)",
    )
    parser.add_argument("--json", metavar="FILE", help="write the replay JSON here")
    parser.add_argument("--markdown", metavar="FILE", help="write the markdown table here")
    parser.add_argument(
        "--plot", metavar="PNG", help="write the Fig. 4 style plot of the RTT window"
    )
    parser.add_argument(
        "--cache-outputs",
        action="store_true",
        help="first run the real model over every corpus part that names an "
        "output_lengths cache and write the cache (needs the model's runtime)",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from cnmt.config import load_config
    from cnmt.errors import ConfigError
    from cnmt.experiments.replay import replay
    from cnmt.experiments.replay_output import describe_mode, markdown_table, plot_rtt_window

    config = load_config(args.config)
    if args.requests is not None and args.requests < 1:
        raise ConfigError(f"--requests must be >= 1, got {args.requests}")
    for flag in ("arrival_rate", "window_hours"):
        value = getattr(args, flag)
        if value is not None and not value > 0:
            raise ConfigError(f"--{flag.replace('_', '-')} must be positive, got {value}")
    if args.window_hours is not None and args.window_samples is not None:
        raise ConfigError("give --window-hours or --window-samples, not both")
    if args.cache_outputs:
        from cnmt.experiments.outputs import cache_output_lengths

        spec = config["replay"]
        for part in spec.corpus.parts:
            if part.output_lengths:
                data = cache_output_lengths(spec.model, part.src, part.output_lengths)
                print(
                    f"wrote {part.output_lengths}: {data['lines']} lines in {data['seconds']} s",
                    file=sys.stderr,
                )
    bar = PolicyProgress(disabled=args.no_progress)
    try:
        outcome = replay(
            config,
            connection=args.connection,
            trace_path=args.rtt_trace,
            requests=args.requests,
            seed=args.seed,
            window_start=args.window_start,
            window_samples=args.window_samples,
            arrival_rate=args.arrival_rate,
            window_hours=args.window_hours,
            queues=args.queues,
            labels=_labels(args.policies),
            progress=bar.update,
        )
    finally:
        bar.close()
    result = outcome.result
    table = markdown_table(result)
    conn = result["connection"]
    stats = conn["trace_stats"]
    names = ", ".join(config["replay"].connections)
    print(
        f"{result['model']}: {result['requests']} requests, seed {result['seed']}, connection "
        f"{result['connection_name']} (of {names})"
    )
    print(
        f"trace {_local(conn['trace'])} [{conn['format']}], window "
        f"{conn['window']['start']}+{conn['window']['samples']} "
        f"samples: median RTT {stats['median_ms']:.1f} ms, p95 {stats['p95_ms']:.1f} ms, "
        f"{stats['lost']} lost pings ({conn['requests_hit_by_loss']} requests hit)"
    )
    print(describe_mode(result))
    if result["drift"]:
        print(
            "drift: "
            + "; ".join(
                f"{d['device']} {d['factor']:g}x from {d['at_fraction']:.0%} of the requests"
                for d in result["drift"]
            )
        )
    print(table)
    t = outcome.timings
    policy_s = sum(v for k, v in t.items() if k.startswith("policy_"))
    print(
        f"time: load {t['load_s']:.2f} s, prepare {t['prepare_s']:.2f} s, "
        f"policies {policy_s:.2f} s "
        f"({result['requests'] * len(result['policies']) / max(policy_s, 1e-9):,.0f} "
        "decisions/s)",
        file=sys.stderr,
    )
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(result, handle, indent=1, ensure_ascii=False)
            handle.write("\n")
    if args.markdown:
        with open(args.markdown, "w", encoding="utf-8") as handle:
            handle.write(table + "\n")
    if args.plot:
        plot_rtt_window(
            conn, outcome.window, args.plot, title=f"connection {result['connection_name']}"
        )
    return 0


class PolicyProgress:
    """A tqdm bar on stderr over the replayed policies, shown only once a replay has run for a
    second (short ones print nothing), naming the policy being replayed."""

    def __init__(self, disabled: bool) -> None:
        self.disabled = disabled
        self.bar: Any = None

    def update(self, label: str, done: int, total: int) -> None:
        if self.disabled:
            return
        if self.bar is None:
            from tqdm import tqdm

            self.bar = tqdm(total=total, unit="policy", file=sys.stderr, delay=1.0, desc="replay")
        self.bar.set_postfix_str(label, refresh=False)
        self.bar.update(done - self.bar.n)  # update, not refresh: it keeps tqdm's delay

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _local(path: str) -> str:
    """A path as reports write it (``${data}/...``) as this machine opens it."""
    from cnmt.config import expand_data
    from cnmt.errors import ConfigError

    try:
        return expand_data(path)
    except ConfigError:
        return path


def _labels(option: str | None) -> list[str] | None:
    """The labels of ``--policies`` (None: every policy); ConfigError if it names none."""
    if option is None:
        return None
    from cnmt.errors import ConfigError

    labels = [label.strip() for label in option.split(",") if label.strip()]
    if not labels:
        raise ConfigError("--policies: give at least one label, e.g. --policies oracle,cnmt")
    return labels
