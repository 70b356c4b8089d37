"""The Ray Serve cloud against our aiohttp cloud, measured side by side in one run.

Three clouds are started with `cnmt launch`'s own code (:class:`cnmt.serving.launch.CloudProcess`)
on the same exported model and stay up together (idle but for the one being measured), loaded
from this process straight at each cloud's ``/v1/translate``:

* **batching**: requests/s of the Ray cloud with batching off (``max_batch_size: 1``) and on
  (``max_batch_size`` 16, ``batch_wait_timeout_s`` 10 ms) under a closed-loop load of 16
  concurrent clients (:func:`cnmt.serving.loadtest.run_load`, after 16 warm-up requests),
  ``--rounds`` runs each, alternating, and the ratio of their means (target: at least 1.5);
* **latency**: p50 of one request at a time (no load), each sentence sent to our aiohttp cloud
  and to the Ray cloud with batching off and on in turn, and the ratios Ray / aiohttp.

``--gateways G`` measures instead many gateways in front of one Ray cloud: for 1 and 2 replicas,
batching off and on, G gateways (`cnmt launch` of a gateway config, device policy ``cloud``) share
an open-loop load at each ``--rates`` value (requests/s, spread over the gateways in turn); it
prints the achieved throughput and the client-side latency per offered rate.

The default model is the shipped BiLSTM config (``configs/models/bilstm-de-en``: random weights,
so greedy decoding runs to the output limit and every request costs the same), exported once by
the project's exporter into the cache with ``--max-output-tokens`` (default 60) instead of 250,
so that a run takes minutes; ``--model DIR`` uses any exported model instead. Sentences: the
IWSLT'14 German side in ``$CNMT_DATA``. The latency comparison is repeated with a light model
(the shipped GRU config, ``gru-fr-en``, exported with 30 output tokens: a few ms per sentence,
like cn2en), where the hops a request takes weigh more than the model.

Usage: python benchmarks/bench_ray_cloud.py [--model DIR] [--replicas 1] [--threads 1]
       [--requests 64] [--rounds 2] [--gateways G --rates 2,4,8,16 --duration 10] [--json OUT]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
CLIENTS = 16


def shipped_model(config_name: str, family: str, max_output_tokens: int) -> Path:
    """A shipped model config exported once into the cache with a shorter output limit."""
    import yaml

    from cnmt.config import data_dir
    from cnmt.exporters.base import ExportRequest
    from cnmt.registry import get_components
    from cnmt.runtime.models import cache_dir

    out = cache_dir() / "bench" / f"{config_name}-m{max_output_tokens}"
    if (out / "manifest.json").is_file():
        return out
    folder = data_dir()
    if folder is None:
        sys.exit("bench_ray_cloud: set CNMT_DATA to the shared data directory (or give --model)")
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / f"{config_name}.yaml"
        config.write_text(
            yaml.safe_dump(
                {
                    "extends": str(REPO / "configs" / "models" / f"{config_name}.yaml"),
                    "data_dir": str(folder),
                    "model": {"max_output_tokens": max_output_tokens},
                }
            )
        )
        print(f"exporting {config.name} (max_output_tokens {max_output_tokens}) to {out} ...")
        get_components().create("exporter", family).export(
            ExportRequest(out_dir=out, config=config)
        )
    return out


def cloud_settings(args: argparse.Namespace, engine: str, model: Path, **ray: Any) -> Any:
    from cnmt.serving.ray_settings import RayCloudSettings
    from cnmt.serving.settings import CloudSettings

    common = dict(port=0, model=str(model), threads=args.threads, max_pending=4096)
    if engine == "aiohttp":
        return CloudSettings(**common)
    ray_settings = RayCloudSettings(num_cpus=os.cpu_count(), max_ongoing_requests=64, **ray)
    return CloudSettings(engine="ray", ray=ray_settings, **common)


class Cloud:
    """A cloud in its own process, as `cnmt launch` runs it."""

    def __init__(self, settings: Any) -> None:
        from cnmt.serving.launch import CloudProcess

        self.process = CloudProcess(settings)
        self.url = ""
        self.start_s = 0.0

    async def __aenter__(self) -> Cloud:
        started = time.perf_counter()
        port = await self.process.start()
        self.start_s = time.perf_counter() - started
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.process.stop()


async def interleaved_latency(
    urls: dict[str, str], sentences: list[str], count: int
) -> dict[str, dict[str, float]]:
    """One request at a time, each sentence to every cloud in turn (so that all see the same
    machine state); client-side milliseconds per cloud."""
    import aiohttp

    from cnmt.serving.loadtest import percentile

    times: dict[str, list[float]] = {name: [] for name in urls}
    async with aiohttp.ClientSession() as session:
        for i in range(count + 4):  # the first 4 rounds warm up
            for name, url in urls.items():
                started = time.perf_counter()
                async with session.post(url + "/v1/translate", json={"text": sentences[i]}) as r:
                    await r.read()
                    if r.status != 200:
                        raise SystemExit(f"bench_ray_cloud: {name} answered HTTP {r.status}")
                if i >= 4:
                    times[name].append((time.perf_counter() - started) * 1000.0)
    return {
        name: {"p50_ms": percentile(values, 50) or 0.0, "p95_ms": percentile(values, 95) or 0.0}
        for name, values in times.items()
    }


async def closed_loop(url: str, sentences: list[str], count: int) -> dict[str, Any]:
    from cnmt.serving.loadtest import run_load

    report = await run_load(url, sentences, concurrency=CLIENTS, count=count, timeout_s=300)
    if report.ok != report.sent:
        raise SystemExit(f"bench_ray_cloud: requests failed:\n{report.table()}")
    return {
        "rps": report.throughput_rps,
        "p50_ms": report.latency_ms["p50"],
        "p95_ms": report.latency_ms["p95"],
    }


OFF, ON = "ray, batching off", "ray, batching on"


async def compare(
    args: argparse.Namespace, model: Path, sentences: list[str], throughput: bool
) -> dict[str, Any]:
    """All three clouds up at once (idle but for the one being measured)."""
    from cnmt.serving.loadtest import run_load

    plans = {
        "aiohttp": cloud_settings(args, "aiohttp", model),
        OFF: cloud_settings(args, "ray", model, num_replicas=args.replicas, max_batch_size=1),
        ON: cloud_settings(
            args,
            "ray",
            model,
            num_replicas=args.replicas,
            max_batch_size=16,
            batch_wait_timeout_s=0.01,
        ),
    }
    clouds = {name: Cloud(settings) for name, settings in plans.items()}
    try:
        for name, cloud in clouds.items():
            await cloud.__aenter__()
            print(f"{name}: started in {cloud.start_s:.1f} s at {cloud.url}", flush=True)
        urls = {name: cloud.url for name, cloud in clouds.items()}
        results: dict[str, Any] = {
            "model": str(model),
            "start_s": {name: cloud.start_s for name, cloud in clouds.items()},
            "latency": await interleaved_latency(urls, sentences, args.latency_requests),
            "throughput": {OFF: [], ON: []},
        }
        if not throughput:
            return results
        for name in (OFF, ON):  # warm-up
            await run_load(urls[name], sentences, concurrency=CLIENTS, count=CLIENTS)
        for _ in range(args.rounds):  # alternate, so that drift in the machine's load is shared
            for name in (OFF, ON):
                result = await closed_loop(urls[name], sentences, args.requests)
                results["throughput"][name].append(result)
                print(f"{name}: {result['rps']:.2f} requests/s", flush=True)
    finally:
        for cloud in clouds.values():
            await cloud.__aexit__()
    return results


def print_compare(
    args: argparse.Namespace,
    results: dict[str, Any],
    light: dict[str, Any],
    load: tuple[float, float],
) -> None:
    print()
    print(
        f"Ray Serve cloud vs aiohttp cloud: model {args.model}, {args.threads} ONNX Runtime "
        f"thread(s) per model, Ray with {args.replicas} replica(s) on a local instance of "
        f"{os.cpu_count()} CPUs; the three clouds up at once, started by cnmt launch's "
        "CloudProcess; client: this process"
    )
    print(
        f"  throughput, closed loop of {CLIENTS} clients, {args.requests} requests per run, "
        f"{args.rounds} run(s) each, alternating (cnmt.serving.loadtest.run_load):"
    )
    total = {}
    for name, label in (
        (OFF, "batching off (max_batch_size 1)"),
        (ON, "batching on (max_batch_size 16, wait 10 ms)"),
    ):
        runs = results["throughput"][name]
        total[name] = sum(r["rps"] for r in runs) / len(runs)
        for i, r in enumerate(runs, 1):
            print(
                f"    ray, {label:44s} run {i}: {r['rps']:6.2f} requests/s   "
                f"p50 {r['p50_ms']:7.0f} ms   p95 {r['p95_ms']:7.0f} ms"
            )
    ratio = total[ON] / total[OFF]
    verdict = "met" if ratio >= 1.5 else "NOT met"
    print(
        f"    ratio batching on / off (mean requests/s {total[ON]:.2f} / {total[OFF]:.2f}): "
        f"{ratio:.2f} (target >= 1.5: {verdict})"
    )
    for measured in (results, light):
        latency = measured["latency"]
        print(
            f"  latency, one request at a time, {args.latency_requests} sentences, each sent to "
            f"the three clouds in turn (client side), model {measured['model']}:"
        )
        for name in ("aiohttp", OFF, ON):
            print(
                f"    {name:20s} p50 {latency[name]['p50_ms']:8.2f} ms   "
                f"p95 {latency[name]['p95_ms']:8.2f} ms"
            )
        ours = latency["aiohttp"]["p50_ms"]
        for name in (OFF, ON):
            p50 = latency[name]["p50_ms"]
            print(f"    ratio p50 {name} / aiohttp: {p50 / ours:.2f} ({p50 - ours:+.2f} ms)")
    start = results["start_s"]
    print(
        f"  start-up: aiohttp {start['aiohttp']:.1f} s, Ray {start[OFF]:.1f} s and "
        f"{start[ON]:.1f} s (ray.init, Serve, replicas loading the model)"
    )
    print(
        f"  load average (1 min) {load[0]:.2f} before, {load[1]:.2f} after, on "
        f"{os.cpu_count()} CPUs"
    )


# --- many gateways -----------------------------------------------------------------------------


class GatewayProcess:
    """`cnmt launch` of a gateway config (policy `cloud`) in front of ``cloud_url``."""

    def __init__(self, model: Path, cloud_url: str, folder: Path, index: int) -> None:
        config = folder / f"gateway-{index}.yaml"
        profiles = REPO / "configs" / "profiles"
        config.write_text(
            f"gateway: {{port: 0, model: {model}, threads: 1, cloud_url: {cloud_url},"
            f" edge_profile: {profiles / 'bilstm-de-en__edge-cpu-q25.json'},"
            f" cloud_profile: {profiles / 'bilstm-de-en__cloud-cpu.json'},"
            " cloud_timeout_s: 60, max_pending: 4096, allow_unthrottled: true}\n"
            "length_estimator: {name: naive, params: {mean_tokens: 20}}\n"
            "device_policy: {name: cloud}\nrtt_estimator: {name: last}\n"
        )
        self.process = subprocess.Popen(
            [sys.executable, "-P", "-m", "cnmt", "launch", str(config)],
            stderr=subprocess.PIPE,
            text=True,
            cwd=REPO,
        )
        self.url = ""

    def wait_ready(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            if found := re.search(r"gateway: (http://127\.0\.0\.1:\d+)", line):
                self.url = found.group(1)
            if "ready; stop with" in line:
                return
        raise SystemExit(f"bench_ray_cloud: a gateway did not start (exit {self.process.wait()})")

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(60)


async def many_gateways(args: argparse.Namespace, sentences: list[str]) -> list[dict[str, Any]]:
    from cnmt.serving.loadtest import run_load

    rows = []
    for replicas in (1, 2):
        for batch in (1, 16):
            settings = cloud_settings(
                args,
                "ray",
                args.model,
                num_replicas=replicas,
                max_batch_size=batch,
                batch_wait_timeout_s=0.01,
            )
            async with Cloud(settings) as cloud:
                with tempfile.TemporaryDirectory() as tmp:
                    gateways = [
                        GatewayProcess(args.model, cloud.url, Path(tmp), i)
                        for i in range(args.gateways)
                    ]
                    try:
                        for gateway in gateways:
                            await asyncio.to_thread(gateway.wait_ready)
                        urls = [g.url for g in gateways]
                        await run_load(urls, sentences, concurrency=len(urls) * 2, count=8)
                        for rate in args.rates:
                            report = await run_load(
                                urls,
                                sentences,
                                rate=rate,
                                duration_s=args.duration,
                                timeout_s=300,
                            )
                            row = {
                                "replicas": replicas,
                                "batching": "on" if batch > 1 else "off",
                                "offered_rps": rate,
                                "achieved_rps": report.throughput_rps,
                                "ok": report.ok,
                                "sent": report.sent,
                                "devices": report.devices,
                                "p50_ms": report.latency_ms["p50"],
                                "p95_ms": report.latency_ms["p95"],
                            }
                            rows.append(row)
                            print_row(row, flush=True)
                    finally:
                        for gateway in gateways:
                            gateway.stop()
    return rows


def print_row(row: dict[str, Any], flush: bool = False) -> None:
    def ms(value: float | None) -> str:
        return "-" if value is None else f"{value:.0f}"

    print(
        f"| {row['replicas']} | {row['batching']} | {row['offered_rps']:g} | "
        f"{row['achieved_rps']:.2f} | {row['ok']}/{row['sent']} | {ms(row['p50_ms'])} | "
        f"{ms(row['p95_ms'])} |",
        flush=flush,
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, help="an exported model directory")
    parser.add_argument(
        "--max-output-tokens",
        type=int,
        default=60,
        help="output limit of the default BiLSTM export (default %(default)s)",
    )
    parser.add_argument("--corpus", help="sentences, one per line (default: IWSLT'14 valid.de)")
    parser.add_argument(
        "--light-model",
        type=Path,
        help="a fast model for the latency comparison (default: the shipped GRU "
        "config with 30 output tokens)",
    )
    parser.add_argument("--light-corpus", help="its sentences (default: Tatoeba fr)")
    parser.add_argument("--replicas", type=int, default=1, help="Ray replicas (default 1)")
    parser.add_argument("--threads", type=int, default=1, help="ONNX Runtime threads per model")
    parser.add_argument(
        "--requests",
        type=int,
        default=64,
        help="requests of each closed-loop run (default %(default)s)",
    )
    parser.add_argument(
        "--latency-requests",
        type=int,
        default=30,
        help="requests sent one at a time per cloud (default %(default)s)",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=2,
        help="closed-loop runs per Ray cloud, alternating (default %(default)s)",
    )
    parser.add_argument("--gateways", type=int, help="measure G gateways in front of one Ray cloud")
    parser.add_argument("--rates", default="2,4,8,16", help="offered requests/s with --gateways")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per rate")
    parser.add_argument("--json", help="also write the results as JSON here")
    args = parser.parse_args()
    args.rates = [float(r) for r in args.rates.split(",")]
    from cnmt.config import data_dir
    from cnmt.serving.loadtest import read_sentences

    if args.model is None:
        args.model = shipped_model("bilstm-de-en", "bilstm", args.max_output_tokens)
    folder = data_dir()
    if folder is None and (args.corpus is None or (args.light_model and not args.light_corpus)):
        sys.exit("bench_ray_cloud: set CNMT_DATA to the shared data directory (or --corpus)")
    corpus = args.corpus or str(folder / "corpora" / "iwslt14-de-en" / "valid.de")
    sentences = read_sentences(corpus, limit=500, seed=0)
    print(f"sentences: {corpus} (500, shuffled with seed 0)")
    load_before = os.getloadavg()[0]
    if args.gateways:
        print(
            f"{args.gateways} gateways (policy cloud) in front of one Ray cloud, model "
            f"{args.model}, open loop spread over the gateways, {args.duration:g} s per rate; "
            "client-side latency through a gateway"
        )
        print(
            "| replicas | batching | offered req/s | achieved req/s | ok/sent | p50 ms | p95 ms |"
        )
        print("|---|---|---|---|---|---|---|")
        results: Any = asyncio.run(many_gateways(args, sentences))
        print(f"load average (1 min) {load_before:.2f} before, {os.getloadavg()[0]:.2f} after")
    else:
        results = asyncio.run(compare(args, args.model, sentences, throughput=True))
        light_model = args.light_model or shipped_model("gru-fr-en", "gru", 30)
        light_corpus = args.light_corpus or str(folder / "corpora" / "tatoeba-fr-en" / "all.fr")
        light_sentences = read_sentences(light_corpus, limit=500, seed=0)
        print(f"light model's sentences: {light_corpus} (500, shuffled with seed 0)")
        light = asyncio.run(compare(args, light_model, light_sentences, throughput=False))
        print_compare(args, results, light, (load_before, os.getloadavg()[0]))
        results = {"main": results, "light": light}
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
