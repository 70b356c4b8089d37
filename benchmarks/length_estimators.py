"""Output-length estimators on real models: MAE on a split kept apart (every 5th sentence).

For each model, translate a fixed sample of its Tatoeba test set once (cached in --cache) to get
N and the model's own M per sentence, then compare on the held-out fifth. The trained built-ins
(gru-fr-en, bilstm-de-en) use the 2,000-pair test split they were trained without
(:func:`cnmt.training.data.builtin_splits`); the others every k-th line of a Tatoeba file:

- ``linear (references)``: the paper's M = gamma*N + delta fitted on the human references'
  lengths (in the model's target tokens) of the training part;
- ``linear (own outputs)``: the same line fitted on the model's outputs of the training part;
- ``online_linear``: the references' line as a prior, refitted after every held-out sentence
  from the model's output (the estimate is made before the sentence's M is seen);
- ``features``: the `features` estimator (ridge regression over N, characters, punctuation,
  digits and a hashed bag of words), trained on the model's outputs of the training part; its
  bag size and ridge penalty are chosen by 5-fold cross-validation on the training part
  (``fit_features_cv``), unless ``--buckets`` and ``--ridge`` fix them.

    python benchmarks/length_estimators.py \\
        --models cn2en,bergamot-en-pt,bergamot-pt-en,gru-fr-en,bilstm-de-en \\
        --cache /tmp/cnmt-lengths [--save-features DIR]

Needs the models (cnmt[export] for the first export, cnmt[bergamot] for Bergamot).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

CORPORA = {  # model: (source file, reference file, every k-th line; 0: the model's test split)
    "cn2en": ("tatoeba-en-zh/all.zh", "tatoeba-en-zh/all.en", 10),
    "bergamot-en-pt": ("tatoeba-en-pt/test.en", "tatoeba-en-pt/test.pt", 5),
    "bergamot-pt-en": ("tatoeba-en-pt/test.pt", "tatoeba-en-pt/test.en", 5),
    "gru-fr-en": ("tatoeba-fr-en/all.fr", "tatoeba-fr-en/all.en", 0),
    "bilstm-de-en": ("tatoeba-de-en/all.de", "tatoeba-de-en/all.en", 0),
}


def sample(model: str, data: Path) -> tuple[list[str], list[str]]:
    """The model's source sentences and their references, in a fixed order."""
    from cnmt.files import read_lines

    src, ref, every = CORPORA[model]
    if every == 0:
        from cnmt.training.data import builtin_splits

        test = builtin_splits(model, data).test
        return [s for s, _ in test], [r for _, r in test]
    return read_lines(data / "corpora" / src)[::every], read_lines(data / "corpora" / ref)[::every]


def outputs(model: str, cache: Path, data: Path) -> dict[str, list]:
    path = cache / f"{model}.json"
    if path.is_file():
        return json.loads(path.read_text(encoding="utf-8"))
    from tqdm import tqdm

    from cnmt.errors import CnmtError
    from cnmt.experiments.tokens import quiet_runtime_logs
    from cnmt.exporters.builtins import ensure_exported
    from cnmt.runtime import load_translator

    sources, references = sample(model, data)
    ensure_exported(model)
    translator = load_translator(model, threads=1)
    rows: dict[str, list] = {"text": [], "n": [], "m": [], "ref_m": []}
    with quiet_runtime_logs():
        for text, reference in tqdm(
            list(zip(sources, references, strict=True)), desc=model, file=sys.stderr
        ):
            if not text.strip() or not reference.strip():
                continue
            try:
                result = translator.translate(text)
            except CnmtError:
                continue
            rows["text"].append(text)
            rows["n"].append(result.source_tokens)
            rows["m"].append(result.output_tokens)
            rows["ref_m"].append(translator.count_target_tokens(reference))
    cache.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(rows), encoding="utf-8")
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--models", default="cn2en,bergamot-en-pt,bergamot-pt-en,gru-fr-en,bilstm-de-en"
    )
    parser.add_argument("--cache", type=Path, default=Path("/tmp/cnmt-lengths"))
    parser.add_argument("--data", type=Path, default=Path(os.environ.get("CNMT_DATA", "")))
    parser.add_argument("--save-features", type=Path, metavar="DIR")
    parser.add_argument("--buckets", type=int, help="bag size (default: cross-validated)")
    parser.add_argument("--ridge", type=float, help="ridge penalty (default: cross-validated)")
    args = parser.parse_args()

    from cnmt.schedulers.base import Request
    from cnmt.schedulers.features import fit_features, fit_features_cv, save_feature_model
    from cnmt.schedulers.length_estimators import OnlineLinearLength

    print(f"{'model':16} {'test':>5} {'mean M':>7} | MAE: {'linear (refs)':>13} "
          f"{'linear (own)':>12} {'online_linear':>13} {'features':>9} "
          "(buckets, ridge)")  # fmt: skip
    for model in args.models.split(","):
        rows = outputs(model, args.cache, args.data)
        n = np.asarray(rows["n"], dtype=float)
        m = np.asarray(rows["m"], dtype=float)
        ref_m = np.asarray(rows["ref_m"], dtype=float)
        texts = rows["text"]
        test = np.arange(len(n)) % 5 == 0
        train = ~test

        truth = m[test]

        def mae(estimate: np.ndarray, truth: np.ndarray = truth) -> float:
            return float(np.abs(np.maximum(estimate, 1.0) - truth).mean())

        g_ref, d_ref = np.polyfit(n[train], ref_m[train], 1)
        g_own, d_own = np.polyfit(n[train], m[train], 1)
        online = OnlineLinearLength(OnlineLinearLength.Params(gamma=g_ref, delta=d_ref))
        online_estimates = []
        for ni, mi in zip(n[test], m[test], strict=True):
            online_estimates.append(online.estimate(Request(int(ni))))
            online.observe(int(ni), int(mi))
        train_texts = [t for t, keep in zip(texts, train, strict=True) if keep]
        test_texts = [t for t, keep in zip(texts, test, strict=True) if keep]
        source = {"model": model, "corpus": CORPORA[model][0], "rows": int(train.sum())}
        fit_n, fit_m = n[train].astype(int), m[train]
        if args.buckets is None and args.ridge is None:
            fitted = fit_features_cv(train_texts, fit_n, fit_m, source=source)
        else:
            buckets = 256 if args.buckets is None else args.buckets
            ridge = 10.0 if args.ridge is None else args.ridge
            fitted = fit_features(train_texts, fit_n, fit_m, buckets, ridge, source=source)
        results = (
            mae(g_ref * n[test] + d_ref),
            mae(g_own * n[test] + d_own),
            mae(np.asarray(online_estimates)),
            mae(fitted.predict_many(test_texts, n[test].astype(int))),
        )
        print(
            f"{model:16} {int(test.sum()):5d} {m[test].mean():7.2f} |      "
            + " ".join(f"{v:{w}.3f}" for v, w in zip(results, (13, 12, 13, 9), strict=True))
            + f" ({fitted.buckets}, {fitted.ridge:g})"
        )
        if args.save_features:
            args.save_features.mkdir(parents=True, exist_ok=True)
            save_feature_model(fitted, args.save_features / f"features-{model}.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
