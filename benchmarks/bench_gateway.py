"""The edge gateway's own overhead on a local translation, measured side by side in one run.

For each sentence, one right after the other so that both see the same machine state:

* direct: ``translator.translate(text)`` timed inside a separate worker process with the same
  device setting as the gateway's edge (threads, and the CPU quota cgroup if the device has
  one); only the call itself is timed;
* gateway: ``POST /v1/translate`` to a gateway whose device policy is ``edge``; its
  ``latency_ms`` runs from the arrival of the request in the gateway to the answer (body,
  parse, token count, length estimate, decision, pipe to the worker and back, metrics, the
  JSON answer). The client-side time (adds this benchmark's own loopback HTTP round trip) and
  the gateway's time minus the model's own time in the worker (``latency_ms - exec_ms``: the
  overhead in absolute terms) are reported beside it.

Prints p50/p95/mean of each and the ratios gateway / direct (target for p50: at most 1.05).

The default device is the host CPU with one thread and no quota: the gateway's overhead
alone. ``--device edge-cpu-q25`` measures under the emulated edge's cgroup quota (needs root);
there, CFS bandwidth throttling (the worker waits for the next 10 ms period once its 2.5 ms
budget is spent) falls on either path depending on the phase of the period, which makes the
medians bimodal: compare the means.

Usage: python benchmarks/bench_gateway.py [--model cn2en] [--device DEVICE] [--sentences 100]
       [--rounds 3] [--corpus FILE] [--json OUT]
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import multiprocessing
import os
import statistics
import sys
import time
from typing import Any

import aiohttp


def _direct_main(
    conn: Any, model: str, providers: list[str], threads: int, procs_file: str | None
) -> None:
    """Load the model, join the cgroup, then answer each text sent with translate()'s time."""
    from cnmt.runtime import load_translator

    translator = load_translator(model, providers=providers, threads=threads)
    if procs_file is not None:
        with open(procs_file, "w") as f:
            f.write(str(os.getpid()))
    conn.send("ready")
    while (text := conn.recv()) is not None:
        started = time.perf_counter()
        translator.translate(text)
        conn.send(time.perf_counter() - started)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100.0
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def device_setting(name: str) -> Any:
    from cnmt.profiling.devices import DeviceSetting, load_device

    if name == "host-1-thread":
        return DeviceSetting(name="host-1-thread", threads=1)
    return load_device(name)


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    from cnmt.profiling.cpu_quota import CpuQuota
    from cnmt.registry import get_components
    from cnmt.runtime import load_translator
    from cnmt.schedulers.base import LatencyModel
    from cnmt.schedulers.core import DecisionComponents, DecisionCore, TargetComponents
    from cnmt.serving.demo import pick_sentences
    from cnmt.serving.edge import EdgeWorker, QuotaSpec
    from cnmt.serving.gateway import Gateway
    from cnmt.serving.launch import serve_app, url
    from cnmt.serving.settings import GatewaySettings

    device = device_setting(args.device)
    providers = list(device.providers)
    sentences, source = pick_sentences(args.sentences, args.corpus, seed=0)

    # Direct: its own process, in its own cgroup with the device's quota if it has one.
    direct_quota = None
    if device.cpu_quota:
        direct_quota = CpuQuota(device.cpu_quota, device.cpu_period_us).create()
    context = multiprocessing.get_context("spawn")
    parent, child = context.Pipe()
    procs_file = str(direct_quota.procs_file) if direct_quota else None
    direct = context.Process(
        target=_direct_main,
        args=(child, args.model, providers, device.threads, procs_file),
        daemon=True,
    )
    direct.start()
    child.close()
    loop = asyncio.get_running_loop()
    assert await loop.run_in_executor(None, parent.recv) == "ready"

    # Gateway: the edge policy, no cloud, its worker with the same device setting.
    components = get_components()
    quota = None
    if device.cpu_quota:
        quota = QuotaSpec(device.cpu_quota, device.cpu_period_us, source=args.device)
    factory = functools.partial(
        load_translator, args.model, providers=providers, threads=device.threads
    )
    naive = components.get("length_estimator", "naive").cls
    unused = LatencyModel(0.0, 0.0, 0.0)  # the edge policy never looks at latency models
    gateway = Gateway(
        tokenizer=load_translator(args.model, providers=providers, threads=device.threads),
        edge=EdgeWorker(factory, quota),
        cloud=None,
        core=DecisionCore(
            DecisionComponents(
                policy=components.create("device_policy", "edge"),
                length=naive(naive.Params(mean_tokens=10.0)),
                edge=TargetComponents(
                    "edge", components.create("latency_model", "profile", prior=unused)
                ),
                clouds=(
                    TargetComponents(
                        "cloud",
                        components.create("latency_model", "profile", prior=unused),
                        rtt=components.create("rtt_estimator", "last"),
                        wait=components.create("rtt_estimator", "last"),
                    ),
                ),
            )
        ),
        settings=GatewaySettings(edge_profile="(unused)", cloud_profile="(unused)", port=0),
    )
    runner, port = await serve_app(gateway.app(), "127.0.0.1", 0)
    endpoint = f"{url('127.0.0.1', port)}/v1/translate"

    def direct_call(text: str) -> float:
        parent.send(text)
        return parent.recv()

    load_before = os.getloadavg()[0]
    direct_s: list[float] = []
    server_s: list[float] = []
    client_s: list[float] = []
    overhead_s: list[float] = []
    try:
        async with aiohttp.ClientSession() as session:
            for round_index in range(args.rounds + 1):  # round 0 warms both paths up
                for text in sentences:
                    direct_time = direct_call(text)
                    started = time.perf_counter()
                    async with session.post(endpoint, json={"text": text}) as response:
                        answer = await response.json()
                    client_time = time.perf_counter() - started
                    assert answer["device"] == "edge", answer
                    if round_index == 0:
                        continue
                    direct_s.append(direct_time)
                    client_s.append(client_time)
                    server_s.append(answer["latency_ms"] / 1000.0)
                    overhead_s.append((answer["latency_ms"] - answer["exec_ms"]) / 1000.0)
                if round_index:
                    print(f"round {round_index}/{args.rounds} done", file=sys.stderr)
    finally:
        await runner.cleanup()
        parent.send(None)
        direct.join(10)
        if direct_quota is not None:
            direct_quota.remove()
    load_after = os.getloadavg()[0]

    def stats(values: list[float]) -> dict[str, float]:
        return {
            "p50_ms": 1000 * percentile(values, 50),
            "p95_ms": 1000 * percentile(values, 95),
            "mean_ms": 1000 * statistics.fmean(values),
        }

    result: dict[str, Any] = {
        "model": args.model,
        "device": device.name,
        "cpu_quota": device.cpu_quota,
        "threads": device.threads,
        "sentences": len(sentences),
        "sentence_source": source,
        "rounds": args.rounds,
        "direct": stats(direct_s),
        "gateway_server_side": stats(server_s),
        "gateway_client_side": stats(client_s),
        "gateway_minus_model": stats(overhead_s),
        "load_average_1min": [load_before, load_after],
    }
    direct_stats = result["direct"]
    for side in ("server", "client"):
        gateway_stats = result[f"gateway_{side}_side"]
        result[f"ratio_p50_{side}_side"] = gateway_stats["p50_ms"] / direct_stats["p50_ms"]
        result[f"ratio_mean_{side}_side"] = gateway_stats["mean_ms"] / direct_stats["mean_ms"]
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="cn2en", help="built-in model or exported directory")
    parser.add_argument(
        "--device",
        default="host-1-thread",
        help="host-1-thread (default: one thread, no quota) or a device setting such as "
        "edge-cpu-q25 (see `cnmt profile devices`)",
    )
    parser.add_argument("--sentences", type=int, default=100, help="distinct sentences (100)")
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds over them (3)")
    parser.add_argument("--corpus", help="sentences, one per line (default: Tatoeba ZH, data dir)")
    parser.add_argument("--json", help="write the result as JSON here")
    args = parser.parse_args()
    result = asyncio.run(bench(args))
    quota = f"quota {result['cpu_quota']:g} core" if result["cpu_quota"] else "no quota"
    n = result["sentences"] * result["rounds"]
    print(
        f"gateway overhead: {result['model']} on {result['device']} ({quota}, "
        f"{result['threads']} thread(s)); {n} translations per path from "
        f"{result['sentence_source']}"
    )
    for key, label in (
        ("direct", "direct translate()"),
        ("gateway_server_side", "gateway (server side)"),
        ("gateway_client_side", "gateway (client side)"),
        ("gateway_minus_model", "gateway minus model time"),
    ):
        s = result[key]
        print(
            f"  {label:24s} p50 {s['p50_ms']:7.3f} ms   p95 {s['p95_ms']:7.3f} ms   "
            f"mean {s['mean_ms']:7.3f} ms"
        )
    print(
        f"  ratio gateway/direct: p50 {result['ratio_p50_server_side']:.3f} server side "
        f"(target <= 1.05), {result['ratio_p50_client_side']:.3f} client side; mean "
        f"{result['ratio_mean_server_side']:.3f} server side, "
        f"{result['ratio_mean_client_side']:.3f} client side"
    )
    before, after = result["load_average_1min"]
    print(
        f"  load average (1 min) {before:.2f} before, {after:.2f} after, on {os.cpu_count()} CPUs"
    )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2, ensure_ascii=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
