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

``--corpus NAME=PATH,...`` replaces the two corpora (paths relative to the data directory, or
absolute; one sentence a line). ``--profile-scale TARGET=FACTOR`` (``edge`` or ``cloud``,
repeatable) gives every config a copy of that device's profile with its times multiplied by
FACTOR: a stale prior, x4 (pessimistic) or x0.25 (optimistic), that a closed loop must
correct. ``--quota-phases 0.25,0.5,0.12`` adds, after the rates, a drift phase per config: the
edge worker's cgroup CPU quota is rewritten to each fraction of a core in turn, mid-run (the
gateway is not told), and ``--phase-rate`` requests/s of the first corpus run for
``--phase-duration`` seconds in each; the table gives each config's mean per phase and its
ratio to the better single device in the same phase. Needs the writable cgroup the edge
worker's quota lives in (``cnmt-<launch pid>-<n>``).

Usage: python benchmarks/bench_live_policies.py [--rates 10,30,60] [--duration 8]
       [--rounds 2] [--warmup 200] [--configs NAME=CONFIG,...] [--corpus NAME=PATH,...]
       [--profile-scale edge=4] [--quota-phases 0.25,0.5,0.12 --phase-rate 20
       --phase-duration 8] [--json OUT] [--plot OUT.png]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
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
import yaml

from cnmt.config import data_dir, load_config, resolve_config_path
from cnmt.files import read_json, write_json
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


def _period_for(fraction: float) -> int:
    """The shortest quota period (us) at which ``fraction`` of a core is a quota of 1 ms."""
    return math.ceil(1000 / fraction)


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

    def set_edge_quota(self, fraction: float) -> str:
        """Rewrite the CPU quota of this launch's edge worker cgroup; returns its path."""
        from cnmt.profiling.cpu_quota import default_root

        found = sorted(default_root().glob(f"cnmt-{self.process.pid}-*"))
        if not found:
            raise RuntimeError(
                f"no edge cgroup cnmt-{self.process.pid}-* under {default_root()}: the quota "
                "phases need a config whose edge runs under a CPU quota"
            )
        group = found[-1]
        # The kernel's shortest quota is 1 ms: a fraction whose quota would be shorter gets a
        # longer period (12% of a 4 ms period would be refused, or silently become 25%).
        if (group / "cpu.max").exists():  # cgroup v2: "quota period"
            period = max(int((group / "cpu.max").read_text().split()[1]), _period_for(fraction))
            (group / "cpu.max").write_text(f"{round(fraction * period)} {period}")
        else:
            period = max(int((group / "cpu.cfs_period_us").read_text()), _period_for(fraction))
            (group / "cpu.cfs_quota_us").write_text("-1")  # a period may not shrink below it
            (group / "cpu.cfs_period_us").write_text(str(period))
            (group / "cpu.cfs_quota_us").write_text(str(round(fraction * period)))
        return str(group)

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
    parser.add_argument("--corpus", help="NAME=PATH,... instead of the UN and Tatoeba sentences")
    parser.add_argument(
        "--profile-scale",
        action="append",
        default=[],
        metavar="TARGET=FACTOR",
        help="give every config a profile of TARGET (edge or cloud) with times x FACTOR",
    )
    parser.add_argument(
        "--quota-phases", help="edge CPU quotas (fractions of a core) for the drift phase"
    )
    parser.add_argument("--phase-rate", type=float, default=20.0, help="requests/s per phase")
    parser.add_argument("--phase-duration", type=float, default=8.0, help="seconds per phase")
    parser.add_argument("--json", type=Path, help="write every number here")
    parser.add_argument("--plot", type=Path, help="draw mean and p95 against the rate here")
    args = parser.parse_args()
    rates = [float(r) for r in args.rates.split(",")]
    configs = dict(DEFAULT_CONFIGS)
    if args.configs:
        configs = dict(item.split("=", 1) for item in args.configs.split(","))
    phases = [float(q) for q in args.quota_phases.split(",")] if args.quota_phases else []
    if any(not q > 0 for q in phases):
        print(f"--quota-phases: fractions of a core must be positive, got {args.quota_phases}")
        return 2
    try:
        scales = parse_scales(args.profile_scale)
    except ValueError as exc:
        print(f"--profile-scale: {exc}")
        return 2
    folder = data_dir()
    paths = dict(CORPORA)
    if args.corpus:
        paths = dict(item.split("=", 1) for item in args.corpus.split(","))
    if folder is None and any(not Path(p).is_absolute() for p in paths.values()):
        print("needs the data directory (CNMT_DATA) for the corpora's sentences")
        return 2
    if scales:
        scratch = Path(os.environ.get("TMPDIR", "/tmp")) / f"bench-live-{os.getpid()}"
        configs = {name: scaled_config(c, scales, scratch) for name, c in configs.items()}
    corpora = {
        name: read_sentences(Path(path) if Path(path).is_absolute() else folder / path, seed=7)
        for name, path in paths.items()
    }
    warmup = [s for pair in zip(*corpora.values(), strict=False) for s in pair]

    # results[config][corpus][rate] = outcomes pooled over rounds
    pooled: dict[str, dict[str, dict[float, list[Outcome]]]] = {
        name: {c: {r: [] for r in rates} for c in corpora} for name in configs
    }
    phased: dict[str, dict[float, list[Outcome]]] = {
        name: {q: [] for q in phases} for name in configs
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
                first = next(iter(corpora.values()))
                for quota in phases:
                    group = system.set_edge_quota(quota)
                    count = max(1, round(args.phase_rate * args.phase_duration))
                    outcomes = asyncio.run(open_loop(system.gateway, first, args.phase_rate, count))
                    phased[name][quota] += outcomes
                    s = summary(outcomes)
                    print(
                        f"  quota {quota:g} core ({group}): mean {_f(s['mean_ms'])} ms, "
                        f"edge {_pct(s['edge_share'])}",
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
    phase_results = {name: {str(q): summary(phased[name][q]) for q in phases} for name in configs}
    if phases:
        print(
            f"\nEdge CPU quota drift ({args.phase_rate:g} requests/s of {next(iter(corpora))}, "
            f"{args.phase_duration:g} s per phase; the quota rewritten mid-run)"
        )
        print("| config | " + " | ".join(f"{q:g} core: mean ms (x best)" for q in phases) + " |")
        print("|---|" + "---|" * len(phases))
        for name in configs:
            cells = []
            for q in phases:
                mean = phase_results[name][str(q)]["mean_ms"]
                best = _best_static(phase_results, str(q), None)
                ratio = f" ({mean / best[1]:.2f}x)" if best and mean is not None else ""
                cells.append(f"{_f(mean)}{ratio}")
            print(f"| {name} | " + " | ".join(cells) + " |")
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
                    "corpora": paths,
                    "profile_scale": scales,
                    "quota_phases": phases,
                    "phase_rate": args.phase_rate,
                    "phase_duration_s": args.phase_duration,
                    "phases": phase_results,
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


def _best_static(
    results: dict[str, Any], corpus: str, rate: str | None
) -> tuple[str, float] | None:
    """The better single device's (name, mean) at ``results[name][corpus][rate]`` (or at
    ``results[name][corpus]`` when ``rate`` is None: a quota phase)."""

    def cell(name: str) -> dict[str, Any]:
        return results[name][corpus] if rate is None else results[name][corpus][rate]

    means = [
        (name, cell(name)["mean_ms"])
        for name in SINGLE_DEVICE
        if name in results and cell(name)["mean_ms"] is not None
    ]
    return min(means, key=lambda item: item[1]) if means else None


def parse_scales(items: list[str]) -> dict[str, float]:
    """``["edge=4"]`` -> ``{"edge": 4.0}``; ValueError naming what is wrong."""
    scales: dict[str, float] = {}
    for item in items:
        target, _, factor = item.partition("=")
        if target not in ("edge", "cloud") or not factor:
            raise ValueError(f"expected edge=FACTOR or cloud=FACTOR, got {item!r}")
        value = float(factor)
        if not value > 0:
            raise ValueError(f"the factor must be positive, got {item!r}")
        scales[target] = value
    return scales


def scaled_profile(source: str, factor: float, out: Path) -> Path:
    """A copy of the profile ``source`` whose times (fit, cells, requests) are x ``factor``."""
    profile = read_json(Path(source), what="a device profile", fix="give an existing profile")
    fit = profile["fit"]
    for key in ("a_n", "a_m", "b"):
        fit[key] *= factor
    fit["mse"] *= factor * factor
    for cell in profile.get("cells", []):
        for key in ("mean_s", "std_s", "ci_s"):
            if key in cell:
                cell[key] *= factor
        cell["seconds"] = [v * factor for v in cell.get("seconds", [])]
    for request in profile.get("requests", []):
        request["seconds"] *= factor
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json(out, profile)
    return out


def scaled_config(config: str, scales: dict[str, float], scratch: Path) -> str:
    """A config that extends ``config`` with its gateway's profiles scaled (a file path)."""
    settings = load_config(config)["gateway"]
    overrides = {}
    for target, factor in scales.items():
        source = getattr(settings, f"{target}_profile")
        name = f"{Path(source).stem}-x{factor:g}.json"
        overrides[f"{target}_profile"] = str(scaled_profile(source, factor, scratch / name))
    path = scratch / f"{config.replace('/', '-')}.yaml"
    base = str(resolve_config_path(config))
    path.write_text(yaml.safe_dump({"extends": base, "gateway": overrides}), encoding="utf-8")
    return str(path)


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
