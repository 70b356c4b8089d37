#!/usr/bin/env python3
"""The quality cost of int8: chrF (and BLEU) of a model's fp32 and int8 exports against the
references, side by side on the same sentences, with sacrebleu; and where int8 loses.

For each test set the script translates every source sentence with both exports (greedy, one
thread), scores both against the human references (corpus chrF and BLEU, sacrebleu's
defaults, on the output as `cnmt evaluate` scores it: word-level models detokenized and
case-insensitive), scores int8 against fp32, and splits the chrF drop by source length (N, in
the model's tokens), so that a drop concentrated in long inputs shows as such.

The test sets are those of the model that ``--sets`` names (default: the fp32 model's name):

- ``cn2en`` (the default; the built-ins ``cn2en`` and ``cn2en-int8``, exported on first use):
  Tatoeba ZH-EN every 10th line (the replay's held-out lines) and NTREX-128 (WMT19 news) ZH->EN;
- ``gru-fr-en``, ``bilstm-de-en``: the Tatoeba test split they were trained without
  (:func:`cnmt.training.data.builtin_splits`) and newstest2013 FR->EN / DE->EN;
- ``bergamot-en-pt``, ``bergamot-pt-en``: Tatoeba EN-PT test, every 13th line, and NTREX-128.

    python benchmarks/int8_quality.py                       # cn2en, 1000 + 500 sentences
    python benchmarks/int8_quality.py --limit 200           # quicker
    cnmt export --family gru --pretrained gru-fr-en --precision int8 --out gru-fr-en-int8 \\
        --check-texts valid.fr --check-references valid.en
    python benchmarks/int8_quality.py --fp32 gru-fr-en --int8 gru-fr-en-int8
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

# Per model: (name, source file, reference file) under the data directory, and how many lines
# to skip between two taken (1: every line; 0: the trained built-in's test split, files unused).
NEWSTEST = "corpora/newstest2013/newstest2013"
NTREX = "corpora/ntrex128/newstest2019"
SETS = {
    "cn2en": (
        ("tatoeba", "corpora/tatoeba-en-zh/all.zh", "corpora/tatoeba-en-zh/all.en", 10),
        (
            "news (NTREX-128)",
            "corpora/ntrex128/newstest2019.zh",
            "corpora/ntrex128/newstest2019.en",
            1,
        ),
    ),
    "gru-fr-en": (
        ("tatoeba test split", "corpora/tatoeba-fr-en/all.fr", "corpora/tatoeba-fr-en/all.en", 0),
        ("news (newstest2013)", f"{NEWSTEST}.fr", f"{NEWSTEST}.en", 1),
    ),
    **{
        f"bergamot-{a}-{b}": (
            ("tatoeba", f"corpora/tatoeba-en-pt/test.{a}", f"corpora/tatoeba-en-pt/test.{b}", 13),
            ("news (NTREX-128)", f"{NTREX}.{a}", f"{NTREX}.{b}", 1),
        )
        for a, b in (("en", "pt"), ("pt", "en"))
    },
    "bilstm-de-en": (
        ("tatoeba test split", "corpora/tatoeba-de-en/all.de", "corpora/tatoeba-de-en/all.en", 0),
        ("news (newstest2013)", f"{NEWSTEST}.de", f"{NEWSTEST}.en", 1),
    ),
}
BUCKETS = ((1, 10), (11, 20), (21, 40), (41, 10_000))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--fp32", default="cn2en", help="fp32 model (directory or built-in)")
    parser.add_argument("--int8", default="cn2en-int8", help="int8 model (directory or built-in)")
    parser.add_argument("--limit", type=int, default=1000, help="sentences per set at most (1000)")
    parser.add_argument(
        "--news-limit", type=int, default=500, help="sentences of the news set at most (500)"
    )
    parser.add_argument("--data", type=Path, help="data directory (default $CNMT_DATA)")
    parser.add_argument(
        "--sets", choices=sorted(SETS), help="whose test sets (default: the fp32 model's name)"
    )
    return parser.parse_args(argv)


def read_set(
    data: Path, model: str, source: str, reference: str, every: int, limit: int
) -> tuple[list, list]:
    if every == 0:
        from cnmt.training.data import builtin_splits

        test = builtin_splits(model, data).test[:limit]
        return [s for s, _ in test], [r for _, r in test]
    src = (data / source).read_text(encoding="utf-8").splitlines()
    ref = (data / reference).read_text(encoding="utf-8").splitlines()
    if len(src) != len(ref):
        raise SystemExit(f"{source} and {reference} have {len(src)} and {len(ref)} lines")
    pairs = [
        (s, r) for s, r in list(zip(src, ref, strict=True))[::every] if s.strip() and r.strip()
    ]
    pairs = pairs[:limit]
    return [s for s, _ in pairs], [r for _, r in pairs]


def translate_all(translator: Any, sources: list[str]) -> tuple[list[str], list[int], float]:
    from cnmt.experiments.quality import postprocess

    texts, lengths = [], []
    start = time.perf_counter()
    for source in sources:
        result = translator.translate(source)
        texts.append(postprocess(translator.manifest, result.text))
        lengths.append(result.source_tokens)
    return texts, lengths, time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    import logging

    import sacrebleu

    from cnmt.experiments.quality import writes_words
    from cnmt.exporters.builtins import ensure_exported
    from cnmt.runtime import load_translator

    args = parse_args(argv)
    data = args.data or Path(os.environ.get("CNMT_DATA", "../shared/data"))
    logging.getLogger("cnmt").setLevel(logging.ERROR)  # cn2en logs every dropped character
    for model in (args.fp32, args.int8):
        ensure_exported(model)
    fp32 = load_translator(args.fp32, threads=1)
    int8 = load_translator(args.int8, threads=1)
    model = args.sets or fp32.manifest.name
    if model not in SETS:
        raise SystemExit(f"no test sets for {model!r}: pass --sets ({', '.join(sorted(SETS))})")
    lowercase = writes_words(fp32.manifest)
    print(
        f"int8 quality: {fp32.manifest.name} ({fp32.manifest.precision}) vs "
        f"{int8.manifest.name} ({int8.manifest.precision}); sacrebleu {sacrebleu.__version__}, "
        "corpus scores against the references" + (", case-insensitive" if lowercase else "")
    )
    if fp32.manifest.source_checksum != int8.manifest.source_checksum:
        raise SystemExit("the two exports are not of the same weights")
    chrf = sacrebleu.metrics.CHRF(lowercase=lowercase)
    bleu = sacrebleu.metrics.BLEU(lowercase=lowercase)
    for name, source, reference, every in SETS[model]:
        limit = args.news_limit if name.startswith("news") else args.limit
        sources, refs = read_set(data, model, source, reference, every, limit)
        hyp32, lengths, t32 = translate_all(fp32, sources)
        hyp8, _, t8 = translate_all(int8, sources)
        chrf32 = chrf.corpus_score(hyp32, [refs]).score
        chrf8 = chrf.corpus_score(hyp8, [refs]).score
        bleu32 = bleu.corpus_score(hyp32, [refs]).score
        bleu8 = bleu.corpus_score(hyp8, [refs]).score
        agree = chrf.corpus_score(hyp8, [hyp32]).score
        same = sum(a == b for a, b in zip(hyp32, hyp8, strict=True)) / len(hyp32)
        taken = f"{model}'s test split" if every == 0 else f"{source}, one line in {every}"
        print(f"\n{name}: {len(sources)} sentences ({taken})")
        print(f"  chrF  fp32 {chrf32:6.2f}  int8 {chrf8:6.2f}  drop {chrf32 - chrf8:+.2f}")
        print(f"  BLEU  fp32 {bleu32:6.2f}  int8 {bleu8:6.2f}  drop {bleu32 - bleu8:+.2f}")
        print(f"  int8 vs fp32: identical outputs {same:.1%}, chrF {agree:.1f}")
        print(f"  time: int8/fp32 {t8 / t32:.2f} (one pass each, not a benchmark)")
        print("  chrF drop by source length N:")
        for low, high in BUCKETS:
            chosen = [i for i, n in enumerate(lengths) if low <= n <= high]
            if not chosen:
                continue
            pick = [refs[i] for i in chosen]
            a = chrf.corpus_score([hyp32[i] for i in chosen], [pick]).score
            b = chrf.corpus_score([hyp8[i] for i in chosen], [pick]).score
            label = f"{low}-{high}" if high < 10_000 else f">={low}"
            print(f"    N {label:>6}: {len(chosen):4} sentences  fp32 {a:6.2f}  int8 {b:6.2f}  "
                  f"drop {a - b:+.2f}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
