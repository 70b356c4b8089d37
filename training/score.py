"""Score the trained built-ins on their held-out Tatoeba test split and on newstest2013.

``python -m cnmt.training.score gru-fr-en bilstm-de-en`` exports each built-in into the model
cache if needed, rebuilds its test split with the recipe's seeded rule
(:func:`cnmt.training.data.split_pairs`, seed 19, 2,000 test pairs) and prints BLEU/chrF (the
scorers of the two recipes) as JSON. The data directory: ``--data``, else ``$CNMT_DATA``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from cnmt.config import data_dir
from cnmt.errors import CnmtError, ConfigError
from cnmt.exporters.builtins import ensure_exported
from cnmt.runtime.models import load_translator
from cnmt.training import data, gru, opennmt

# built-in -> (Tatoeba corpus, source language)
MODELS = {"gru-fr-en": ("tatoeba-fr-en", "fr"), "bilstm-de-en": ("tatoeba-de-en", "de")}


def score(name: str, root: Path, threads: int) -> dict:
    corpus, source = MODELS[name]
    corpora = root / "corpora"
    pairs = data.read_pairs(corpora / corpus / f"all.{source}", corpora / corpus / "all.en", None)
    test = data.split_pairs(pairs, seed=19, test_pairs=2000, valid_pairs=500).test
    news = corpora / "newstest2013"
    sets = {
        "test": ([s for s, _ in test], [t for _, t in test]),
        "newstest2013": (
            (news / f"newstest2013.{source}").read_text(encoding="utf-8").splitlines(),
            (news / "newstest2013.en").read_text(encoding="utf-8").splitlines(),
        ),
    }
    ensure_exported(name)
    translator = load_translator(name, threads=threads)
    results = {}
    for set_name, (src, ref) in sets.items():
        hyps = data.translate_all(translator.translate_batch, src)
        if name == "gru-fr-en":
            results[set_name] = {**gru.corpus_scores(hyps, ref), "sentences": len(ref)}
        else:
            results[set_name] = opennmt.scores(hyps, ref, "en")
    return results


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cnmt.training.score", description=__doc__)
    parser.add_argument("models", nargs="+", choices=sorted(MODELS))
    parser.add_argument("--data", type=Path)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    try:
        root = args.data or data_dir()
        if root is None:
            raise ConfigError("no data directory: give --data DIR or set CNMT_DATA")
        print(json.dumps({m: score(m, Path(root), args.threads) for m in args.models}, indent=2))
    except CnmtError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
