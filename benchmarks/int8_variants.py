#!/usr/bin/env python3
"""Which int8 quantization for cn2en: dynamic per tensor (what `cnmt export --precision int8`
does), dynamic per channel, and static (QDQ, activation ranges calibrated on real sentences),
side by side in one run against the fp32 export.

Each variant is made from the fp32 built-in cn2en with ``onnxruntime.quantization``; static
quantization calibrates on Tatoeba lines that are not among the test sentences (the encoder on
their source ids, the decoder on the inputs of the fp32 greedy loop over them). Every variant
then translates the same test sentences (one line in 10 of Tatoeba ZH-EN, one thread): the
share of outputs identical to fp32, chrF against the fp32 outputs and against the references
(sacrebleu), and the time of a pass over the sentences (passes interleaved, fastest of
``--passes``; the ratio to fp32 is what to read on a shared machine).

    python benchmarks/int8_variants.py [--sentences 300] [--calibration 100] [--passes 3]
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sentences", type=int, default=300, help="test sentences (300)")
    parser.add_argument("--calibration", type=int, default=100, help="calibration sentences")
    parser.add_argument("--passes", type=int, default=3, help="timed passes per variant (3)")
    parser.add_argument("--data", type=Path, help="data directory (default $CNMT_DATA)")
    return parser.parse_args(argv)


class Feeds:
    """An onnxruntime CalibrationDataReader over recorded input dictionaries."""

    def __init__(self, feeds: list[dict[str, Any]]) -> None:
        self._feeds = iter(feeds)

    def get_next(self) -> dict[str, Any] | None:
        return next(self._feeds, None)


def record_feeds(translator: Any, texts: list[str]) -> dict[str, list[dict[str, Any]]]:
    """The inputs each graph of an RNN translator receives while it translates ``texts``."""
    recorded: dict[str, list[dict[str, Any]]] = {"encoder": [], "decoder": []}
    for role in recorded:
        session = getattr(translator, role)

        class Recording:
            def __init__(self, inner: Any, into: list[dict[str, Any]]) -> None:
                self._inner, self._into = inner, into

            def run(self, names: Any, feeds: dict[str, Any]) -> Any:
                self._into.append({k: v.copy() for k, v in feeds.items()})
                return self._inner.run(names, feeds)

            def __getattr__(self, name: str) -> Any:
                return getattr(self._inner, name)

        setattr(translator, role, Recording(session, recorded[role]))
    for text in texts:
        translator.translate(text)
    return recorded


def main(argv: list[str] | None = None) -> int:
    import sacrebleu
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_dynamic, quantize_static

    from cnmt.exporters.builtins import ensure_exported
    from cnmt.runtime import load_translator
    from cnmt.runtime.manifest import load_manifest, replace, write_manifest
    from cnmt.runtime.models import builtin_dir

    args = parse_args(argv)
    data = args.data or Path(os.environ.get("CNMT_DATA", "../shared/data"))
    logging.getLogger().setLevel(logging.ERROR)  # the quantizer's advice; cn2en's dropped chars
    logging.getLogger("cnmt").setLevel(logging.ERROR)
    zh = (data / "corpora/tatoeba-en-zh/all.zh").read_text(encoding="utf-8").splitlines()
    en = (data / "corpora/tatoeba-en-zh/all.en").read_text(encoding="utf-8").splitlines()
    pairs = [(s, r) for s, r in list(zip(zh, en, strict=True))[::10] if s.strip() and r.strip()]
    test = pairs[: args.sentences]
    calibration = [s for s, _ in list(zip(zh, en, strict=True))[5::10] if s.strip()]
    calibration = calibration[: args.calibration]  # lines 5, 15, ...: never a test line
    ensure_exported("cn2en")
    source = builtin_dir("cn2en")
    manifest = load_manifest(source)
    work = Path(tempfile.mkdtemp(prefix="cnmt-int8-variants-"))
    try:
        fp32 = load_translator(source, threads=1)
        recorded = record_feeds(load_translator(source, threads=1), calibration)
        folders = {}
        for name in ("dynamic per tensor", "dynamic per channel", "static QDQ"):
            folder = work / name.replace(" ", "-")
            shutil.copytree(source, folder)
            for role, relative in manifest.graphs.items():
                if name.startswith("dynamic"):
                    quantize_dynamic(
                        source / relative,
                        folder / relative,
                        weight_type=QuantType.QInt8,
                        per_channel=name.endswith("channel"),
                    )
                else:
                    quantize_static(
                        source / relative,
                        folder / relative,
                        Feeds(recorded[role]),
                        quant_format=QuantFormat.QDQ,
                        activation_type=QuantType.QUInt8,
                        weight_type=QuantType.QInt8,
                    )
            write_manifest(folder, replace(manifest, precision="int8"))
            folders[name] = folder
        variants = {"fp32": fp32}
        variants.update({n: load_translator(f, threads=1) for n, f in folders.items()})
        sources = [s for s, _ in test]
        refs = [r for _, r in test]
        outputs = {n: [t.translate(s).text for s in sources] for n, t in variants.items()}
        best = {n: float("inf") for n in variants}
        names = list(variants)
        for p in range(args.passes):
            for name in names[p % len(names) :] + names[: p % len(names)]:
                start = time.perf_counter()
                for text in sources:
                    variants[name].translate(text)
                best[name] = min(best[name], time.perf_counter() - start)
        sizes = {
            n: sum((f / g).stat().st_size for g in manifest.graphs.values()) / 1e6
            for n, f in {"fp32": source, **folders}.items()
        }
        print(
            f"cn2en int8 variants: {len(sources)} Tatoeba sentences (one line in 10), calibration "
            f"on {len(calibration)} other lines, one thread, fastest of {args.passes} interleaved "
            f"passes; sacrebleu {sacrebleu.__version__}"
        )
        print("variant               MB    = fp32  chrF vs fp32  chrF vs refs  time/fp32")
        for name in names:
            same = sum(a == b for a, b in zip(outputs[name], outputs["fp32"], strict=True))
            agree = sacrebleu.corpus_chrf(outputs[name], [outputs["fp32"]]).score
            quality = sacrebleu.corpus_chrf(outputs[name], [refs]).score
            print(
                f"{name:20} {sizes[name]:5.1f}  {same / len(sources):6.1%}  {agree:12.1f}  "
                f"{quality:12.2f}  {best[name] / best['fp32']:9.2f}"
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
