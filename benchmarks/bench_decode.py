#!/usr/bin/env python3
"""Decode speed, side by side in one run: our ONNX Runtime decoders vs their reference engines.

MarianMT EN-ZH at full opus-mt-en-zh size (random weights, built and exported into the cache
on first use): our ORT greedy loop vs transformers ``generate`` (PyTorch eager) vs CTranslate2
(fp32, converted from the same checkpoint), all on the same input ids, the same thread count
and forced to exactly M output tokens (EOS masked): ORT forced mode, ``min_new_tokens =
max_new_tokens = M`` with ``forced_eos_token_id=None``, and ``min_decoding_length =
max_decoding_length = M``. Also the RNN families (BiLSTM DE-EN, GRU FR-EN): ORT vs their torch
modules, when the RNN exporters are installed, and the trained cn2en GRU when cn2en is.

``--int8`` adds the int8 rows: our int8 export (``cnmt export --precision int8`` of the same
weights) beside our fp32 one, and CTranslate2 int8 (``compute_type="int8"`` on the same
converted checkpoint) beside CTranslate2 fp32, for Marian; our int8 beside our fp32 for each RNN
family. A summary then prints the speedups int8 over fp32 and CTranslate2 int8 over ours int8.

Each cell (N source tokens x M output tokens) warms every engine up once, then runs R rounds;
each round runs every engine once, in a rotating order, so that a load spike hits all of them.
The table shows medians and the ratio engine / ours (above 1: ours is faster). Every number is
measured here, in this run; on a busy machine they are noisy, so the load average is printed.

    python benchmarks/bench_decode.py --threads 2            # full grid, < 10 min
    python benchmarks/bench_decode.py --threads 2 --quick    # small grid, a minute or two
    python benchmarks/bench_decode.py --threads 1 --quick --int8 --engines ours,ctranslate2
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

MARIAN_CONFIG = "models/marian-en-zh"
SETTLE_SECONDS = 0.3
# None: the family's default source (cn2en: the installed package's trained weights).
RNN_CONFIGS: dict[str, str | None] = {
    "bilstm": "models/bilstm-de-en",
    "gru": "models/gru-fr-en",
    "cn2en": None,
}
INT8 = "-int8"  # an engine's int8 variant: ours-int8, ctranslate2-int8, ...


@dataclass
class Cell:
    model: str
    n: int
    m: int
    seconds: dict[str, list[float]] = field(default_factory=dict)
    same_tokens: dict[str, bool] = field(default_factory=dict)

    def median_ms(self, engine: str) -> float:
        return statistics.median(self.seconds[engine]) * 1000

    def best_ms(self, engine: str) -> float:
        return min(self.seconds[engine]) * 1000


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Models are built and exported into --cache-dir on first use (about 2 minutes).",
    )
    parser.add_argument("--threads", type=int, default=2, help="threads for every engine (2)")
    parser.add_argument("--quick", action="store_true", help="N=8, M in {8, 32}, 3 rounds")
    parser.add_argument("--n", default="8,32", help="source lengths N (default 8,32)")
    parser.add_argument("--m", default="8,32,64", help="forced output lengths M (default 8,32,64)")
    parser.add_argument(
        "--rounds", type=int, help="timed rounds per cell (default 7; 3 with --quick)"
    )
    parser.add_argument(
        "--engines",
        default="ours,transformers,ctranslate2",
        help="Marian engines to time (default ours,transformers,ctranslate2)",
    )
    parser.add_argument(
        "--no-rnn", action="store_true", help="skip the RNN families (BiLSTM, GRU, cn2en)"
    )
    parser.add_argument(
        "--int8",
        action="store_true",
        help="also time our int8 exports (and CTranslate2 int8 for Marian) beside fp32",
    )
    parser.add_argument(
        "--ort-spinning",
        action="store_true",
        help="Marian: let idle ONNX Runtime worker threads spin (off by default: on a busy "
        "machine spinning threads fight the other load and Marian decode times doubled; the RNN "
        "families always use the default session settings, spinning on, since their tiny "
        "per-step ops suffer more from waking blocked threads)",
    )
    parser.add_argument(
        "--cache-dir", type=Path, help="default: $CNMT_CACHE/bench or ~/.cache/cnmt/bench"
    )
    parser.add_argument("--json", type=Path, help="also write every raw sample to this JSON file")
    parser.add_argument("--plot", type=Path, help="also plot ms vs M per engine (needs matplotlib)")
    args = parser.parse_args(argv)
    if args.quick:
        args.n, args.m = "8", "8,32"
    if args.rounds is None:
        args.rounds = 3 if args.quick else 7
    try:
        args.n_values = [int(v) for v in args.n.split(",")]
        args.m_values = [int(v) for v in args.m.split(",")]
    except ValueError:
        parser.error("--n and --m take comma-separated integers, e.g. --n 8,32")
    if min(args.n_values + args.m_values) < 1 or args.threads < 1 or args.rounds < 1:
        parser.error("N, M, --threads and --rounds must be positive")
    args.engine_list = [e.strip() for e in args.engines.split(",") if e.strip()]
    unknown = set(args.engine_list) - {"ours", "transformers", "ctranslate2"}
    if unknown or "ours" not in args.engine_list:
        parser.error("--engines: a list of ours, transformers, ctranslate2 that includes ours")
    return args


def progress(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def cache_root(args: argparse.Namespace) -> Path:
    if args.cache_dir:
        return args.cache_dir
    from cnmt.runtime.models import cache_dir

    return cache_dir() / "bench"


def ort_config(args: argparse.Namespace) -> Any:
    from cnmt.runtime.session import SessionConfig

    return SessionConfig(intra_op_threads=args.threads, allow_spinning=args.ort_spinning)


# --- Marian ----------------------------------------------------------------------------------


def ensure_marian(root: Path, precision: str = "fp32") -> Path:
    from cnmt.runtime.manifest import MANIFEST_NAME

    out = root / ("marian-en-zh-random" + ("" if precision == "fp32" else f"-{precision}"))
    if (out / MANIFEST_NAME).is_file() and (out / "source" / "config.json").is_file():
        return out
    from cnmt.exporters.marian import export_marian, load_model_config

    progress(f"building and exporting full-size random Marian EN-ZH ({precision}) into {out} ...")
    start = time.perf_counter()
    config = load_model_config(MARIAN_CONFIG)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        export_marian("", out, build=config, atol=config.atol, overwrite=True, precision=precision)
    progress(f"exported and validated in {time.perf_counter() - start:.0f} s")
    return out


def ensure_ctranslate2(root: Path, source: Path, checksum: str) -> Path:
    import ctranslate2

    out = root / f"marian-en-zh-random-ct2-fp32-{checksum[:12]}"
    if not (out / "model.bin").is_file():
        progress(f"converting the same checkpoint to CTranslate2 fp32 in {out} ...")
        converter = ctranslate2.converters.TransformersConverter(str(source))
        converter.convert(str(out), quantization=None, force=True)
    return out


def marian_engines(args: argparse.Namespace, root: Path) -> tuple[Any, dict[str, Callable]]:
    """Our translator and, per engine, ``make(n, m) -> run() -> list[int]`` (the M tokens)."""
    import numpy as np

    from cnmt.runtime import load_translator

    model_dir = ensure_marian(root)
    translator = load_translator(model_dir, config=ort_config(args))

    def decode_with(model: Any) -> Callable[[int, int], Callable[[], list[int]]]:
        def make(n: int, m: int) -> Callable[[], list[int]]:
            source = translator.forced_input(n)
            mask = np.ones_like(source)
            return lambda: model.decoder.greedy(source, mask, m, forced=True)[0].tolist()

        return make

    engines: dict[str, Callable] = {"ours": decode_with(translator)}
    if args.int8:
        quantized = load_translator(ensure_marian(root, "int8"), config=ort_config(args))
        if quantized.manifest.source_checksum != translator.manifest.source_checksum:
            raise SystemExit("the int8 Marian export is not of the same weights: delete the cache")
        engines["ours" + INT8] = decode_with(quantized)
    if "transformers" in args.engine_list:
        import torch
        from transformers import MarianMTModel

        torch.set_num_threads(args.threads)
        model = MarianMTModel.from_pretrained(model_dir / "source").eval()

        def transformers_generate(n: int, m: int) -> Callable[[], list[int]]:
            source = torch.from_numpy(translator.forced_input(n))
            mask = torch.ones_like(source)

            def run() -> list[int]:
                with torch.inference_mode():
                    out = model.generate(
                        input_ids=source,
                        attention_mask=mask,
                        num_beams=1,
                        do_sample=False,
                        min_new_tokens=m,
                        max_new_tokens=m,
                        forced_eos_token_id=None,
                    )
                return out[0, 1:].tolist()

            return run

        engines["transformers"] = transformers_generate
    if "ctranslate2" in args.engine_list:
        import ctranslate2

        ct2_dir = ensure_ctranslate2(
            root, model_dir / "source", translator.manifest.source_checksum
        )
        pieces = {i: p for p, i in translator.tokenizer.vocab.items()}
        piece_ids = translator.tokenizer.vocab

        def ctranslate2_with(compute_type: str) -> Callable[[int, int], Callable[[], list[int]]]:
            # int8: CTranslate2 quantizes the same converted weights when it loads them.
            ct2 = ctranslate2.Translator(
                str(ct2_dir),
                device="cpu",
                compute_type=compute_type,
                intra_threads=args.threads,
                inter_threads=1,
            )

            def make(n: int, m: int) -> Callable[[], list[int]]:
                tokens = [pieces[int(i)] for i in translator.forced_input(n)[0]]
                assert tokens[-1] == "</s>"

                def run() -> list[int]:
                    result = ct2.translate_batch(
                        [tokens], beam_size=1, min_decoding_length=m, max_decoding_length=m
                    )
                    return [piece_ids[p] for p in result[0].hypotheses[0]]

                return run

            return make

        engines["ctranslate2"] = ctranslate2_with("float32")
        if args.int8:
            engines["ctranslate2" + INT8] = ctranslate2_with("int8")
    return translator, engines


# --- RNN families ----------------------------------------------------------------------------


def rnn_engines(
    args: argparse.Namespace, root: Path
) -> tuple[dict[str, dict[str, Callable]], list[str]]:
    """Per RNN family, ours (ORT forced) and torch (the exporter's reference greedy, EOS never
    matched so it runs exactly M steps). Families that cannot be set up are reported, not fatal."""
    engines: dict[str, dict[str, Callable]] = {}
    missing: list[str] = []
    try:
        import torch

        from cnmt.exporters.base import ExportRequest
        from cnmt.registry import get_components
        from cnmt.runtime import load_translator
        from cnmt.runtime.manifest import MANIFEST_NAME

        components = get_components()
    except Exception as exc:  # the RNN side is optional here
        return {}, [f"RNN families: cannot load the registry ({type(exc).__name__}: {exc})"]
    for family, config in RNN_CONFIGS.items():
        try:
            exporter = components.create("exporter", family)
            out = root / family
            request = ExportRequest(
                out_dir=out, config=Path(config) if config else None, overwrite=True
            )
            precisions = ["fp32", "int8"] if args.int8 else ["fp32"]
            for precision in precisions:
                folder = out if precision == "fp32" else root / f"{family}{INT8}"
                if not (folder / MANIFEST_NAME).is_file():
                    progress(f"exporting {family} ({precision}) into {folder} ...")
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        exporter.export(
                            dataclasses.replace(request, out_dir=folder, precision=precision)
                        )
            torch.manual_seed(request.seed)
            model = exporter.build(request).model.eval()
            translator = load_translator(out, threads=args.threads)
            bos = translator.manifest.special("bos")
            first_ordinary = max(translator.manifest.special_tokens.values()) + 1

            def ours(n: int, m: int, t: Any = translator) -> Callable[[], Any]:
                return lambda: t.run_forced(n, m)

            def reference(
                n: int, m: int, model: Any = model, bos: int = bos, start: int = first_ordinary
            ) -> Callable[[], Any]:
                source = list(range(start, start + n))
                return lambda: model.greedy(source, bos, -1, m)  # eos -1: never stops early

            engines[family] = {"ours": ours, "torch": reference}
            if args.int8:
                quantized = load_translator(root / f"{family}{INT8}", threads=args.threads)
                engines[family]["ours" + INT8] = partial(_forced_run, quantized)
        except Exception as exc:
            missing.append(f"{family}: not benchmarked ({type(exc).__name__}: {exc})")
    return engines, missing


def _forced_run(translator: Any, n: int, m: int) -> Callable[[], Any]:
    return lambda: translator.run_forced(n, m)


# --- timing ----------------------------------------------------------------------------------


def time_cell(cell: Cell, runs: dict[str, Callable[[], Any]], rounds: int, check_m: bool) -> None:
    names = list(runs)
    tokens = {}
    for name in names:  # warm-up; also the tokens each engine produced
        tokens[name] = runs[name]()
        if check_m and len(tokens[name]) != cell.m:
            raise SystemExit(f"{name} produced {len(tokens[name])} tokens, not M={cell.m}")
    if check_m:
        cell.same_tokens = {name: tokens[name] == tokens["ours"] for name in names}
    cell.seconds = {name: [] for name in names}
    for r in range(rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            # Let the previous engine's idle worker threads stop spinning (OpenMP in torch and
            # CTranslate2, ONNX Runtime's pool): otherwise they steal cores from the next one.
            time.sleep(SETTLE_SECONDS)
            start = time.perf_counter()
            runs[name]()
            cell.seconds[name].append(time.perf_counter() - start)


def print_table(title: str, cells: list[Cell], engines: list[str]) -> None:
    others = [e for e in engines if e != "ours"]
    header = ["N", "M", *[f"{e} ms" for e in engines], *[f"{e}/ours" for e in others]]
    rows = []
    for cell in cells:
        ours = cell.median_ms("ours")
        row = [str(cell.n), str(cell.m)]
        row += [f"{cell.median_ms(e):.1f}" for e in engines]
        row += [f"{cell.median_ms(e) / ours:.2f}x" for e in others]
        rows.append(row)
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    print(f"\n{title}")
    print("  ".join(h.rjust(w) for h, w in zip(header, widths, strict=True)))
    for row in rows:
        print("  ".join(v.rjust(w) for v, w in zip(row, widths, strict=True)))


def print_int8_summary(marian_cells: list[Cell], rnn_cells: dict[str, list[Cell]]) -> None:
    """Per cell the int8 speedups (of the medians and of the fastest runs: on a shared machine
    the fastest run is the one least slowed by other processes), then the issue's targets on
    the worst cell of this run."""
    ours_int8, ct2_int8 = "ours" + INT8, "ctranslate2" + INT8
    print(
        "\nint8 vs fp32 (median ratio, and best-run ratio in brackets; > 1 means the first is "
        "slower)"
    )
    print("model     N   M    ours fp32/int8     ct2 fp32/int8  ct2 int8/ours int8")
    worst: dict[str, tuple[float, float]] = {}

    def ratio(cell: Cell, slow: str, fast: str, key: str) -> str:
        median = cell.median_ms(slow) / cell.median_ms(fast)
        best = cell.best_ms(slow) / cell.best_ms(fast)
        low = worst.get(key, (median, best))
        worst[key] = (min(low[0], median), min(low[1], best))
        return f"{median:.2f}x ({best:.2f}x)"

    for model, cells in (("marian", marian_cells), *rnn_cells.items()):
        for cell in cells:
            if ours_int8 not in cell.seconds:
                continue
            speedup = ratio(cell, "ours", ours_int8, model)
            ct2 = against = "-"
            if ct2_int8 in cell.seconds:
                ct2 = ratio(cell, "ctranslate2", ct2_int8, "ct2 fp32/int8")
                against = ratio(cell, ct2_int8, ours_int8, "ct2")
            print(f"{model:8} {cell.n:2} {cell.m:3}  {speedup:>16}  {ct2:>16}  {against:>18}")
    print("\nint8 targets (worst cell of this run: median ratio, best-run ratio):")
    for model, (median, best) in worst.items():
        if model == "ct2 fp32/int8":
            continue
        if model == "ct2":
            verdict = "met" if min(median, best) >= 1 else "NOT met"
            print(
                f"  ours int8 Marian vs CTranslate2 int8: {median:.2f}x, {best:.2f}x "
                f"(target >= 1: {verdict})"
            )
            continue
        target = 1.5 if model == "marian" else 1.3
        verdict = "met" if min(median, best) >= target else "NOT met"
        print(
            f"  {model} int8 over fp32: {median:.2f}x, {best:.2f}x (target >= {target}: {verdict})"
        )


def plot(path: Path, cells: list[Cell], engines: list[str], threads: int) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise SystemExit("--plot needs matplotlib: pip install 'cnmt[plots]'") from None
    n_values = sorted({c.n for c in cells})
    fig, axes = plt.subplots(1, len(n_values), figsize=(5 * len(n_values), 4), squeeze=False)
    for ax, n in zip(axes[0], n_values, strict=True):
        chosen = sorted((c for c in cells if c.n == n), key=lambda c: c.m)
        for engine in engines:
            ax.plot(
                [c.m for c in chosen], [c.median_ms(engine) for c in chosen], "o-", label=engine
            )
        ax.set_title(f"Marian EN-ZH, N={n}, {threads} threads")
        ax.set_xlabel("M (forced output tokens)")
        ax.set_ylabel("median ms per sentence")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"\nplot: {path}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    root = cache_root(args)
    root.mkdir(parents=True, exist_ok=True)
    from tqdm import tqdm

    load_before = os.getloadavg()
    cores = os.cpu_count()
    translator, marian = marian_engines(args, root)
    rnn, missing = (
        ({}, ["RNN families: skipped (--no-rnn)"]) if args.no_rnn else rnn_engines(args, root)
    )
    marian_cells = [Cell("marian", n, m) for n in args.n_values for m in args.m_values]
    rnn_cells = {f: [Cell(f, n, m) for n in args.n_values for m in args.m_values] for f in rnn}
    total = len(marian_cells) + sum(len(c) for c in rnn_cells.values())
    with tqdm(total=total, desc="cells", file=sys.stderr) as bar:
        for cell in marian_cells:
            runs = {name: make(cell.n, cell.m) for name, make in marian.items()}
            time_cell(cell, runs, args.rounds, check_m=True)
            bar.update()
        for family, cells in rnn_cells.items():
            for cell in cells:
                runs = {name: make(cell.n, cell.m) for name, make in rnn[family].items()}
                time_cell(cell, runs, args.rounds, check_m=False)
                bar.update()
    load_after = os.getloadavg()

    import onnxruntime

    versions = [f"onnxruntime {onnxruntime.__version__}"]
    for module in ("torch", "transformers", "ctranslate2"):
        if module in sys.modules:
            versions.append(f"{module} {sys.modules[module].__version__}")
    print(
        f"decode benchmark: {platform.processor() or platform.machine()}, {cores} cores, "
        f"{args.threads} threads per engine (ONNX Runtime spinning for Marian "
        f"{'on' if args.ort_spinning else 'off'}, for RNNs on), {args.rounds} rounds per cell "
        "(median), "
        f"{', '.join(versions)}"
    )
    print(
        f"load average (1 min) before {load_before[0]:.2f}, after {load_after[0]:.2f}"
        + (
            " -- the machine was busy: ratios are noisy"
            if max(load_before[0], load_after[0]) > 0.25 * (cores or 1)
            else ""
        )
    )
    print(
        f"Marian: {translator.manifest.name}, {translator.manifest.extra.get('weights')}, "
        f"vocab {translator.manifest.extra.get('vocab_size')}, d_model "
        f"{translator.manifest.extra.get('d_model')}; forced length M, batch 1"
    )
    engines = list(marian)
    print_table(
        "MarianMT EN-ZH (ms per sentence; engine/ours > 1 means ours is faster)",
        marian_cells,
        engines,
    )
    differing = [
        f"N={c.n} M={c.m}: {e}"
        for c in marian_cells
        for e, same in c.same_tokens.items()
        if not same
    ]
    print(
        "same output tokens as ours in every cell: "
        + ("yes" if not differing else "no (" + "; ".join(differing) + ")")
    )
    for family, cells in rnn_cells.items():
        print_table(
            f"{family} (ORT vs torch modules, ms; torch/ours > 1 means ours is faster)",
            cells,
            list(rnn[family]),
        )
    for line in missing:
        print(line)
    if args.int8:
        print_int8_summary(marian_cells, rnn_cells)
    at_32 = [c for c in marian_cells if c.m == 32]
    if at_32:
        print("\ntargets at M=32 (medians of this run):")
        if "transformers" in marian:
            worst = min(c.median_ms("transformers") / c.median_ms("ours") for c in at_32)
            print(
                f"  ours vs transformers generate: >= {worst:.2f}x faster "
                f"(target 3x: {'met' if worst >= 3 else 'NOT met'})"
            )
        if "ctranslate2" in marian:
            worst = min(c.median_ms("ctranslate2") / c.median_ms("ours") for c in at_32)
            print(
                f"  ours vs CTranslate2 fp32: ctranslate2/ours >= {worst:.2f}x "
                f"(target >= 1: {'met' if worst >= 1 else 'NOT met'})"
            )
    if args.json:
        raw = {
            "threads": args.threads,
            "load_average": [load_before[0], load_after[0]],
            "cells": [c.__dict__ for c in marian_cells]
            + [c.__dict__ for cells in rnn_cells.values() for c in cells],
        }
        args.json.write_text(json.dumps(raw, indent=1) + "\n")
        print(f"raw samples: {args.json}")
    if args.plot:
        plot(args.plot, marian_cells, engines, args.threads)
    return 0


if __name__ == "__main__":
    sys.exit(main())
