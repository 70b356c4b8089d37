"""The Ray Serve cloud against our aiohttp cloud, measured side by side in one run.

Each cloud is started with `cnmt launch`'s own code (:class:`cnmt.serving.launch.CloudProcess`)
on the same exported model, one after the other (never two at once: they would share the
CPUs), and loaded from this process with :func:`cnmt.serving.loadtest.run_load` straight at the
cloud's ``/v1/translate``:

* **batching**: requests/s of the Ray cloud with batching off (``max_batch_size: 1``) and on
  (``max_batch_size`` 16, ``batch_wait_timeout_s`` 10 ms) under a closed-loop load of 16
  concurrent clients (after 16 warm-up requests), and their ratio (target: at least 1.5);
* **latency**: p50 of one request at a time (no load) through our aiohttp cloud and through the
  Ray cloud (batching off and on), and the ratios Ray / aiohttp.

``--gateways G`` measures instead many gateways in front of one Ray cloud: for 1 and 2 replicas,
batching off and on, G gateways (`cnmt launch` of a gateway config, device policy ``cloud``) share
an open-loop load at each ``--rates`` value (requests/s, spread over the gateways in turn); it
prints the achieved throughput and the client-side latency per offered rate.

The default model is the shipped BiLSTM config (``configs/models/bilstm-de-en``: random weights,
so greedy decoding runs to the output limit and every request costs the same), exported once by
the project's exporter into the cache with ``--max-output-tokens`` (default 60) instead of 250,
so that a run takes minutes; ``--model DIR`` uses any exported model instead. Sentences: the
IWSLT'14 German side in ``$CNMT_DATA``.

Usage: python benchmarks/bench_ray_cloud.py [--model DIR] [--replicas 1] [--threads 1]
       [--requests 64] [--gateways G --rates 2,4,8,16 --duration 10] [--json OUT]
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


def bilstm_model(max_output_tokens: int) -> Path:
    """The shipped BiLSTM config exported once into the cache with a shorter output limit."""
    import yaml

    from cnmt.config import data_dir
    from cnmt.exporters.base import ExportRequest
    from cnmt.exporters.rnn import export_family
    from cnmt.runtime.models import cache_dir

    out = cache_dir() / "bench" / f"bilstm-de-en-m{max_output_tokens}"
    if (out / "manifest.json").is_file():
        return out
    folder = data_dir()
    if folder is None:
        sys.exit("bench_ray_cloud: set CNMT_DATA to the shared data directory (or give --model)")
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "bilstm.yaml"
        config.write_text(
            yaml.safe_dump(
                {
                    "extends": str(REPO / "configs" / "models" / "bilstm-de-en.yaml"),
                    "data_dir": str(folder),
                    "model": {"max_output_tokens": max_output_tokens},
                }
            )
        )
        print(f"exporting {config.name} (max_output_tokens {max_output_tokens}) to {out} ...")
        export_family("bilstm", ExportRequest(out_dir=out, config=config))
    return out


def cloud_settings(args: argparse.Namespace, engine: str, **ray: Any) -> Any:
    from cnmt.serving.ray_settings import RayCloudSettings
    from cnmt.serving.settings import CloudSettings

    common = dict(port=0, model=str(args.model), threads=args.threads, max_pending=4096)
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


async def one_at_a_time(url: str, sentences: list[str], count: int) -> dict[str, Any]:
    from cnmt.serving.loadtest import run_load

    await run_load(url, sentences, concurrency=1, count=4)  # warm-up
    return asdict_report(await run_load(url, sentences, concurrency=1, count=count))


async def closed_loop(url: str, sentences: list[str], count: int) -> dict[str, Any]:
    from cnmt.serving.loadtest import run_load

    await run_load(url, sentences, concurrency=CLIENTS, count=CLIENTS)  # warm-up
    return asdict_report(
        await run_load(url, sentences, concurrency=CLIENTS, count=count, timeout_s=300)
    )


def asdict_report(report: Any) -> dict[str, Any]:
    if report.ok != report.sent:
        raise SystemExit(f"bench_ray_cloud: requests failed:\n{report.table()}")
    return {
        "sent": report.sent,
        "rps": report.throughput_rps,
        "p50_ms": report.latency_ms["p50"],
        "p95_ms": report.latency_ms["p95"],
    }


async def compare(args: argparse.Namespace, sentences: list[str]) -> dict[str, Any]:
    results: dict[str, Any] = {}
    plans = [
        ("aiohttp", cloud_settings(args, "aiohttp")),
        ("ray, batching off", cloud_settings(args, "ray", num_replicas=args.replicas,
                                             max_batch_size=1)),
        ("ray, batching on", cloud_settings(args, "ray", num_replicas=args.replicas,
                                            max_batch_size=16, batch_wait_timeout_s=0.01)),
    ]  # fmt: skip
    for name, settings in plans:
        async with Cloud(settings) as cloud:
            print(f"{name}: started in {cloud.start_s:.1f} s at {cloud.url}", flush=True)
            result = {"start_s": cloud.start_s}
            result["alone"] = await one_at_a_time(cloud.url, sentences, args.latency_requests)
            if name != "aiohttp":
                result["loaded"] = await closed_loop(cloud.url, sentences, args.requests)
            results[name] = result
    return results


def print_compare(args: argparse.Namespace, results: dict[str, Any], load: tuple[float, float]) -> None:
    off, on, ours = results["ray, batching off"], results["ray, batching on"], results["aiohttp"]
    print()
    print(
        f"Ray Serve cloud vs aiohttp cloud: model {args.model}, {args.threads} ONNX Runtime "
        f"thread(s) per model, Ray with {args.replicas} replica(s) on a local instance of "
        f"{os.cpu_count()} CPUs; client: cnmt.serving.loadtest.run_load from this process"
    )
    print(f"  throughput, closed loop of {CLIENTS} clients, {args.requests} requests per run:")
    for name, result in (("batching off (max_batch_size 1)", off),
                         ("batching on (max_batch_size 16, wait 10 ms)", on)):  # fmt: skip
        loaded = result["loaded"]
        print(
            f"    ray, {name:44s} {loaded['rps']:7.2f} requests/s   p50 {loaded['p50_ms']:8.1f} ms"
            f"   p95 {loaded['p95_ms']:8.1f} ms"
        )
    ratio = on["loaded"]["rps"] / off["loaded"]["rps"]
    verdict = "met" if ratio >= 1.5 else "NOT met"
    print(f"    ratio batching on / off: {ratio:.2f} (target >= 1.5: {verdict})")
    print(f"  latency, one request at a time, {args.latency_requests} requests (client side):")
    for name, result in (("aiohttp cloud", ours), ("ray, batching off", off),
                         ("ray, batching on", on)):  # fmt: skip
        alone = result["alone"]
        print(f"    {name:20s} p50 {alone['p50_ms']:8.2f} ms   p95 {alone['p95_ms']:8.2f} ms")
    for name in ("ray, batching off", "ray, batching on"):
        p50 = results[name]["alone"]["p50_ms"]
        print(f"    ratio p50 {name} / aiohttp: {p50 / ours['alone']['p50_ms']:.2f} "
              f"({p50 - ours['alone']['p50_ms']:+.2f} ms)")  # fmt: skip
    print(f"  start-up: aiohttp {ours['start_s']:.1f} s, Ray {off['start_s']:.1f} s and "
          f"{on['start_s']:.1f} s (ray.init, Serve, replicas loading the model)")  # fmt: skip
    print(f"  load average (1 min) {load[0]:.2f} before, {load[1]:.2f} after, on "
          f"{os.cpu_count()} CPUs")  # fmt: skip


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
            settings = cloud_settings(args, "ray", num_replicas=replicas, max_batch_size=batch,
                                      batch_wait_timeout_s=0.01)  # fmt: skip
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
                                urls, sentences, rate=rate, duration_s=args.duration,
                                timeout_s=300,
                            )  # fmt: skip
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
    parser.add_argument("--max-output-tokens", type=int, default=60,
                        help="output limit of the default BiLSTM export (default %(default)s)")  # fmt: skip
    parser.add_argument("--corpus", help="sentences, one per line (default: IWSLT'14 valid.de)")
    parser.add_argument("--replicas", type=int, default=1, help="Ray replicas (default 1)")
    parser.add_argument("--threads", type=int, default=1, help="ONNX Runtime threads per model")
    parser.add_argument("--requests", type=int, default=64,
                        help="requests of each closed-loop run (default %(default)s)")  # fmt: skip
    parser.add_argument("--latency-requests", type=int, default=30,
                        help="requests sent one at a time per cloud (default %(default)s)")  # fmt: skip
    parser.add_argument("--gateways", type=int, help="measure G gateways in front of one Ray cloud")
    parser.add_argument("--rates", default="2,4,8,16", help="offered requests/s with --gateways")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per rate")
    parser.add_argument("--json", help="also write the results as JSON here")
    args = parser.parse_args()
    args.rates = [float(r) for r in args.rates.split(",")]
    from cnmt.config import data_dir
    from cnmt.serving.loadtest import read_sentences

    if args.model is None:
        args.model = bilstm_model(args.max_output_tokens)
    corpus = args.corpus
    if corpus is None:
        folder = data_dir()
        if folder is None:
            sys.exit("bench_ray_cloud: set CNMT_DATA to the shared data directory (or --corpus)")
        corpus = str(folder / "corpora" / "iwslt14-de-en" / "valid.de")
    sentences = read_sentences(corpus, limit=500, seed=0)
    print(f"sentences: {corpus} (500, shuffled with seed 0)")
    load_before = os.getloadavg()[0]
    if args.gateways:
        print(f"{args.gateways} gateways (policy cloud) in front of one Ray cloud, model "
              f"{args.model}, open loop spread over the gateways, {args.duration:g} s per rate; "
              "client-side latency through a gateway")  # fmt: skip
        print("| replicas | batching | offered req/s | achieved req/s | ok/sent | p50 ms | p95 ms |")
        print("|---|---|---|---|---|---|---|")
        results: Any = asyncio.run(many_gateways(args, sentences))
        print(f"load average (1 min) {load_before:.2f} before, {os.getloadavg()[0]:.2f} after")
    else:
        results = asyncio.run(compare(args, sentences))
        print_compare(args, results, (load_before, os.getloadavg()[0]))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
