"""How fast the replay runs, and what one live scheduling decision costs next to a translation.

    python benchmarks/bench_replay.py [--requests 100000] [--repeats 3]

1. Replays ``--requests`` IWSLT'14 requests over a RIPE Atlas window through the five policies
   (edge, cloud, oracle, naive, cnmt with the windowed-median RTT estimator) and prints the
   wall time per phase and the requests per second (best of ``--repeats``); then again with
   Poisson arrivals at ``--rate`` per second and both devices as FIFO queues, through six
   policies (the same and ``cnmt_load``). Device profiles:
   the BiLSTM's measured profiles when `configs/profiles/` has them; otherwise two synthetic
   linear profiles written to a temporary folder (labelled as such: the replay's speed does
   not depend on the latency values).
2. Times one live decision as a gateway makes it (count N with the real BPE tokenizer, estimate
   M, read the RTT estimate, apply the C-NMT rule, record a sample) and one cn2en translation
   through `cnmt.runtime` when that model can be opened, and prints their ratio.

Numbers are wall-clock on whatever machine runs this; on a shared CPU they vary by tens of
percent between runs.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

REPO = Path(__file__).resolve().parent.parent


def data_dir() -> Path:
    root = Path(os.environ.get("CNMT_DATA", REPO.parent / "shared" / "data"))
    if not root.is_dir():
        sys.exit(f"data directory {root} not found: set CNMT_DATA")
    return root


def profiles(folder: Path) -> tuple[str, str, str]:
    """(edge path, cloud path, what they are)."""
    measured = REPO / "configs" / "profiles"
    edge, cloud = (
        measured / "bilstm-de-en__edge-cpu-q25.json",
        measured / "bilstm-de-en__cloud-cpu.json",
    )
    if edge.is_file() and cloud.is_file():
        return str(edge), str(cloud), "measured BiLSTM profiles"
    from cnmt.profiling.devices import DeviceSetting
    from cnmt.profiling.profiles import Cell, DeviceProfile, fit_linear, save

    rng = np.random.default_rng(0)
    paths = []
    for name, (a_n, a_m, b) in (("edge", (0.004, 0.012, 0.02)), ("cloud", (0.001, 0.003, 0.01))):
        cells = tuple(
            Cell(
                n,
                m,
                tuple(
                    float(v) for v in (a_n * n + a_m * m + b) * (1 + 0.05 * rng.standard_normal(10))
                ),
            )
            for n in (1, 8, 16, 32, 64, 128)
            for m in (1, 8, 16, 32, 64, 128)
        )
        path = folder / f"{name}.json"
        save(
            DeviceProfile(
                "bilstm-de-en",
                "synthetic",
                DeviceSetting(name=f"synthetic-{name}"),
                cells,
                fit_linear(cells),
            ),
            path,
        )
        paths.append(str(path))
    return paths[0], paths[1], "SYNTHETIC profiles (measured ones not found)"


def bench_replay(requests: int, repeats: int, rate: float | None = None) -> None:
    from cnmt.config import load_config
    from cnmt.experiments.replay import replay

    data = data_dir()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        edge, cloud, what = profiles(folder)
        lengths = str(REPO / "configs" / "lengths" / "iwslt14-de-en.json")
        bpe = f"{data}/tokenizers/iwslt14-de-en-bpe10k/code"
        config = {
            "replay": {
                "model": "bilstm-de-en",
                "requests": requests,
                "corpus": {
                    "src_tokenizer": f"moses:de+bpe:{bpe}",
                    "tgt_tokenizer": f"moses:en+bpe:{bpe}",
                    "heldout_every": 10,
                    "parts": [
                        {
                            "src": f"{data}/corpora/iwslt14-de-en/valid.de",
                            "tgt": f"{data}/corpora/iwslt14-de-en/valid.en",
                        }
                    ],
                },
                "devices": {"edge": edge, "cloud": cloud},
                "connections": {
                    "cp1": {
                        "trace": f"{data}/rtt/ripe-atlas-2016/15271.csv",
                        "start": 1000,
                        "samples": 2000,
                    }
                },
                "policies": [
                    "edge",
                    "cloud",
                    "oracle",
                    {"name": "naive", "params": {"model": lengths}},
                    "cnmt",
                ],
            },
            "length_estimator": {"name": "linear", "params": {"model": lengths}},
            "rtt_estimator": {"name": "median", "params": {"window": 5, "max_age_s": 30}},
        }
        if rate is not None:
            config["replay"]["connections"]["cp1"].update(arrivals="poisson", rate=rate)
            config["replay"]["queues"] = {"enabled": True}
            config["replay"]["policies"].append("cnmt_load")
        policies = len(config["replay"]["policies"])
        path = folder / "bench.yaml"
        path.write_text(yaml.safe_dump(config))
        loaded = load_config(path)
        runs = []
        for _ in range(repeats):
            began = time.perf_counter()
            outcome = replay(loaded)
            runs.append((time.perf_counter() - began, outcome.timings))
        cold_wall, cold = runs[0]
        wall, timings = min(runs, key=lambda r: r[0])
        mode = "no queues" if rate is None else f"Poisson arrivals at {rate:g}/s, FIFO queues"
        print(f"replay of {requests:,} requests x {policies} policies, {mode} ({what}):")
        print(
            f"  first run (tokenizers loaded, corpus counted): {cold_wall:.3f} s, of which load "
            f"{cold['load_s']:.3f} s"
        )
        print(f"  best of {repeats} (token counters cached in the process):")
        print(f"  load (trace, corpus, token counts): {timings['load_s']:.3f} s")
        print(f"  prepare (sampling, ground truth):    {timings['prepare_s']:.3f} s")
        for key, value in timings.items():
            if key.startswith("policy_"):
                print(
                    f"  {key.removeprefix('policy_').removesuffix('_s'):<8} {value:.3f} s  "
                    f"({requests / value:,.0f} requests/s)"
                )
        print(
            f"  total {wall:.3f} s = {requests / wall:,.0f} requests/s end to end "
            f"({policies * requests / wall:,.0f} decisions/s)"
        )


def bench_decision_vs_translation(samples: int) -> None:
    from cnmt.registry import get_components
    from cnmt.runtime.tokenizers import Bpe, WordTokenizer
    from cnmt.schedulers import LatencyModel, LinkState, Request, SchedulerState

    data = data_dir()
    components = get_components()
    policy = components.create("device_policy", "cnmt")
    length = components.create(
        "length_estimator",
        "linear",
        components.get("length_estimator", "linear").cls.Params(
            model=str(REPO / "configs/lengths/iwslt14-de-en.json")
        ),
    )
    rtt = components.create("rtt_estimator", "median")
    words, bpe = WordTokenizer("de"), Bpe.load(f"{data}/tokenizers/iwslt14-de-en-bpe10k/code")
    edge, cloud = LatencyModel(0.004, 0.012, 0.02), LatencyModel(0.001, 0.003, 0.01)
    text = "es enthielt das zwei- , drei- , bis 400-fache des grenzwerts an schadstoffen ."
    bpe.apply(words.split(text))  # warm the BPE cache like a running gateway

    def decide(now: float) -> None:
        n = len(bpe.apply(words.split(text)))
        m = length.estimate(Request(n))
        state = SchedulerState(edge, cloud, LinkState(rtt.estimate(now), 100e6), now)
        policy.choose(Request(n, payload_bytes=len(text.encode())), m, state)
        rtt.observe(0.1, now)

    loops = 20_000
    times = []
    for _ in range(5):
        began = time.perf_counter()
        for i in range(loops):
            decide(float(i))
        times.append((time.perf_counter() - began) / loops)
    decision = min(times)
    print(
        f"one live decision (tokenize + estimate M + RTT + rule + observe): {decision * 1e6:.1f} us"
    )
    try:
        from cnmt.runtime import load_translator

        translator = load_translator("cn2en")
    except Exception as exc:  # noqa: BLE001 - report why the comparison is missing, whatever it is
        print(f"cn2en translation: not measured ({type(exc).__name__}: {exc})")
        return
    sentences = ["我们走吧。", "我不知道他是不是医生。", "你明天早上几点起床？"]
    for s in sentences:
        translator.translate(s)
    per_sentence = []
    for s in sentences:
        runs = []
        for _ in range(samples):
            began = time.perf_counter()
            translator.translate(s)
            runs.append(time.perf_counter() - began)
        per_sentence.append(statistics.median(runs))
    translation = statistics.mean(per_sentence)
    print(
        f"one cn2en translation (median of {samples}, mean over {len(sentences)} short "
        f"sentences): {translation * 1e3:.2f} ms"
    )
    print(
        f"decision / translation = {decision / translation:.4f} "
        f"({translation / decision:,.0f}x cheaper)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--rate",
        type=float,
        default=6.0,
        help="arrivals per second of the queued run (default %(default)s: the committed BiLSTM "
        "edge is busy most of the time)",
    )
    parser.add_argument(
        "--translations", type=int, default=20, help="timed translations per sentence"
    )
    args = parser.parse_args()
    bench_replay(args.requests, args.repeats)
    bench_replay(args.requests, args.repeats, args.rate)
    bench_decision_vs_translation(args.translations)


if __name__ == "__main__":
    main()
