"""The live system under load, one policy configuration beside the other, in one run.

Launches each serving config in turn (`cnmt launch`, a subprocess, on free ports): by default
the paper's rule (`serving/paper-rule`), the same fixed models with the load-aware rule
(`serving/paper-rule-load`), the closed loop (`serving/default`), edge-only and cloud-only.
Each gets the same warm-up (``--warmup`` requests from both corpora at ``--warmup-rate``, so
that a learning gateway has seen that many requests), then the same open-loop load at each
``--rates`` value for ``--duration`` seconds, first with long sentences (the Chinese side of
the UN dev set) and then with short ones (Tatoeba's), the same sentences in the same order for
every config. ``--rounds`` repeats the whole sequence, alternating the order of the configs,
and the tables pool the rounds' requests.

For every (corpus, rate) it prints, per config, the mean and p95 latency measured by the client,
the share translated on the edge, the median relative error of the gateway's predicted
execution time per device (``predicted_exec_ms`` vs ``exec_ms`` in each answer), and the
requests rejected or lost; then, for each config that is not a single device, the ratio of its
mean to the better of edge-only's and cloud-only's. ``--json`` keeps every number and
``--plot`` draws mean and p95 against the rate.

Usage: python benchmarks/bench_live_policies.py [--rates 10,30,60] [--duration 8]
       [--rounds 2] [--warmup 200] [--configs NAME=CONFIG,...] [--json OUT] [--plot OUT.png]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import aiohttp

from cnmt.config import data_dir
from cnmt.serving.loadtest import Outcome, percentile, read_sentences, send_request

DEFAULT_CONFIGS = {
    "paper rule": "serving/paper-rule",
    "paper rule + load": "serving/paper-rule-load",
    "closed loop": "serving/default",
    "edge-only": "serving/edge-only",
    "cloud-only": "serving/cloud-only",
}
CORPORA = {
    "UN (long)": "corpora/un-v1.0/devset.zh",
    "Tatoeba (short)": "corpora/tatoeba-en-zh/all.zh",
}
SINGLE_DEVICE = ("edge-only", "cloud-only")


class Launched:
    """`cnmt launch CONFIG` on free ports; the gateway's URL from its output."""

    def __init__(self, config: str) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "cnmt", "launch", config, "--gateway-port", "0"]
            + ["--cloud-port", "0", "--link-port", "0"],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=dict(os.environ, PYTHONUNBUFFERED="1"),
        )
        self.output: list[str] = []
        self.ready = threading.Event()
        self.gateway = ""
        threading.Thread(target=self._read, daemon=True).start()
        if not self.ready.wait(300) or not self.gateway:
            self.stop()
            raise RuntimeError(f"{config} did not start:\n{''.join(self.output)}")

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.output.append(line)
            found = re.search(r"gateway: (http://\S+)", line)
            if found:
                self.gateway = found.group(1)
            if "ready;" in line:
                self.ready.set()
        self.ready.set()

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)


async def open_loop(url: str, sentences: list[str], rate: float, count: int) -> list[Outcome]:
    """``count`` requests at ``rate`` per second on a fixed schedule; every outcome."""
    endpoint = url + "/v1/translate"
    outcomes: list[Outcome] = []
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:

        async def one(text: str) -> None:
            outcomes.append(await send_request(session, endpoint, text, 30.0))

        started = time.perf_counter()
        tasks = []
        for i in range(count):
            delay = started + i / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(sentences[i % len(sentences)])))
        await asyncio.gather(*tasks)
    return outcomes


def summary(outcomes: list[Outcome]) -> dict[str, Any]:
    ok = [o for o in outcomes if o.status == 200]
    latency = [o.latency_s * 1000.0 for o in ok]
    errors: dict[str, list[float]] = {"edge": [], "cloud": []}
    for o in ok:
        if o.device in errors and o.exec_s and o.predicted_exec_s is not None:
            errors[o.device].append(abs(o.predicted_exec_s - o.exec_s) / o.exec_s)
    return {
        "sent": len(outcomes),
        "ok": len(ok),
        "rejected": sum(o.status == 503 for o in outcomes),
        "failed_or_lost": sum(o.status not in (200, 503) for o in outcomes),
        "mean_ms": statistics.fmean(latency) if latency else None,
        "p95_ms": percentile(latency, 95),
        "edge_share": sum(o.device == "edge" for o in ok) / len(ok) if ok else None,
        "median_rel_error": {d: (statistics.median(v) if v else None) for d, v in errors.items()},
        "predictions": {d: len(v) for d, v in errors.items()},
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rates", default="10,30,60", help="requests/s (default %(default)s)")
    parser.add_argument("--duration", type=float, default=8.0, help="seconds per rate")
    parser.add_argument("--rounds", type=int, default=2, help="repetitions (default 2)")
    parser.add_argument("--warmup", type=int, default=200, help="warm-up requests per config")
    parser.add_argument("--warmup-rate", type=float, default=20.0, help="their rate per second")
    parser.add_argument(
        "--configs",
        help="NAME=CONFIG,... (default: "
        + ",".join(f"{k}={v}" for k, v in DEFAULT_CONFIGS.items())
        + "); names edge-only and cloud-only are the single-device references",
    )
    parser.add_argument("--json", type=Path, help="write every number here")
    parser.add_argument("--plot", type=Path, help="draw mean and p95 against the rate here")
    args = parser.parse_args()
    rates = [float(r) for r in args.rates.split(",")]
    configs = dict(DEFAULT_CONFIGS)
    if args.configs:
        configs = dict(item.split("=", 1) for item in args.configs.split(","))
    folder = data_dir()
    if folder is None:
        print("needs the data directory (CNMT_DATA) for the UN and Tatoeba sentences")
        return 2
    corpora = {name: read_sentences(folder / path, seed=7) for name, path in CORPORA.items()}
    warmup = [s for pair in zip(*corpora.values(), strict=False) for s in pair]

    # results[config][corpus][rate] = outcomes pooled over rounds
    pooled: dict[str, dict[str, dict[float, list[Outcome]]]] = {
        name: {c: {r: [] for r in rates} for c in corpora} for name in configs
    }
    order = list(configs)
    total = args.rounds * len(order) * len(corpora) * len(rates)
    done = 0
    began = time.perf_counter()
    for round_index in range(args.rounds):
        for name in order if round_index % 2 == 0 else order[::-1]:
            print(f"[round {round_index + 1}] {name}: launching {configs[name]}", flush=True)
            system = Launched(configs[name])
            try:
                asyncio.run(open_loop(system.gateway, warmup, args.warmup_rate, args.warmup))
                for corpus, sentences in corpora.items():
                    for rate in rates:
                        count = max(1, round(rate * args.duration))
                        outcomes = asyncio.run(open_loop(system.gateway, sentences, rate, count))
                        pooled[name][corpus][rate] += outcomes
                        done += 1
                        s = summary(outcomes)
                        print(
                            f"  [{done}/{total}, {time.perf_counter() - began:.0f} s] {corpus} "
                            f"{rate:g}/s: mean {s['mean_ms']:.1f} ms, p95 {s['p95_ms']:.1f} ms, "
                            f"edge {s['edge_share']:.0%}",
                            flush=True,
                        )
            finally:
                system.stop()

    results = {
        name: {
            corpus: {str(rate): summary(pooled[name][corpus][rate]) for rate in rates}
            for corpus in corpora
        }
        for name in configs
    }
    print()
    print(
        f"Live latency measured by the client (open loop, {args.duration:g} s per rate, "
        f"{args.rounds} round(s) pooled, after {args.warmup} warm-up requests), "
        f"{platform.node()}, {time.strftime('%Y-%m-%d %H:%M')}"
    )
    for corpus in corpora:
        for rate in rates:
            print(f"\n{corpus}, {rate:g} requests/s")
            print("| config | mean ms | p95 ms | on edge | median rel. error edge / cloud | "
                  "rejected + lost |")  # fmt: skip
            print("|---|---|---|---|---|---|")
            for name in configs:
                s = results[name][corpus][str(rate)]
                err = s["median_rel_error"]
                print(
                    f"| {name} | {_f(s['mean_ms'])} | {_f(s['p95_ms'])} | "
                    f"{_pct(s['edge_share'])} | {_pct(err['edge'])} / {_pct(err['cloud'])} | "
                    f"{s['rejected'] + s['failed_or_lost']} |"
                )
            best = _best_static(results, corpus, str(rate))
            if best is not None:
                for name in configs:
                    if name in SINGLE_DEVICE:
                        continue
                    mean = results[name][corpus][str(rate)]["mean_ms"]
                    if mean is not None:
                        print(f"{name} / best single device ({best[0]}): {mean / best[1]:.2f}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(
            json.dumps(
                {
                    "configs": configs,
                    "rates": rates,
                    "duration_s": args.duration,
                    "rounds": args.rounds,
                    "warmup": args.warmup,
                    "host": platform.node(),
                    "date": time.strftime("%Y-%m-%dT%H:%M:%S"),
                    "results": results,
                },
                indent=1,
            )
        )
        print(f"\nwrote {args.json}")
    if args.plot:
        plot(results, list(corpora), rates, args.plot)
        print(f"wrote {args.plot}")
    return 0


def _best_static(results: dict[str, Any], corpus: str, rate: str) -> tuple[str, float] | None:
    means = [
        (name, results[name][corpus][rate]["mean_ms"])
        for name in SINGLE_DEVICE
        if name in results and results[name][corpus][rate]["mean_ms"] is not None
    ]
    return min(means, key=lambda item: item[1]) if means else None


def _f(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.0%}"


def plot(results: dict[str, Any], corpora: list[str], rates: list[float], out: Path) -> None:
    from cnmt.plotting import pyplot

    plt = pyplot()
    fig, axes = plt.subplots(1, len(corpora), figsize=(5.5 * len(corpora), 4), squeeze=False)
    for ax, corpus in zip(axes[0], corpora, strict=True):
        for name, by_corpus in results.items():
            cells = [by_corpus[corpus][str(r)] for r in rates]
            (line,) = ax.plot(rates, [c["mean_ms"] for c in cells], marker="o", label=name)
            ax.plot(rates, [c["p95_ms"] for c in cells], linestyle="--", color=line.get_color())
        ax.set_title(f"{corpus}: mean (solid) and p95 (dashed)")
        ax.set_xlabel("offered load, requests/s")
        ax.set_ylabel("latency at the client, ms (measured)")
        ax.set_yscale("log")
        ax.grid(True, alpha=0.3)
        ax.legend()
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)


if __name__ == "__main__":
    sys.exit(main())
