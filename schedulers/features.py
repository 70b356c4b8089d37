"""Output length from source-text features: the `features` length estimator.

The paper predicts M from N alone and names richer predictors as future work. This one reads
the source text too: N (the model's tokens), the number of characters, punctuation marks and
digits, and a hashed bag of the source's words (Chinese: characters), ``buckets`` counters
indexed by CRC32 of the lowercased word (CRC32, not ``hash()``: Python salts string hashes per
process, and a fitted model must mean the same in the gateway that loads it). A ridge
regression over them is trained on the *model's own* outputs (``cnmt`` learns what the running
model writes, not what a human translator wrote).

The regression is solved in closed form with numpy (``(X^T X + lambda D) w = X^T y``, the
intercept unpenalised): a few thousand rows and a few hundred columns need nothing more, and a
pure scheduler may not import scikit-learn's estimators. A request without its text (a replay
that draws only N) gets the N-only line fitted beside the features.
"""

from __future__ import annotations

import math
import re
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cnmt.errors import ConfigError
from cnmt.files import read_json, write_json
from cnmt.schedulers.base import LengthEstimator, Request
from cnmt.schema import ranged

FORMAT = "cnmt-feature-length/1"
_WORDS = re.compile(r"[\u3400-\u9fff\uf900-\ufaff]|[^\W\d_]+|\d+|[^\w\s]")
_PUNCTUATION = re.compile(r"[^\w\s]")
DENSE = ("bias", "n_tokens", "characters", "punctuation", "digits")


def features(text: str, n_tokens: int, buckets: int) -> np.ndarray:
    """The feature row of one source: the dense counts, then the hashed bag of words."""
    row = np.zeros(len(DENSE) + buckets, dtype=np.float64)
    row[0] = 1.0
    row[1] = float(n_tokens)
    row[2] = float(len(text))
    row[3] = float(len(_PUNCTUATION.findall(text)))
    row[4] = float(sum(c.isdigit() for c in text))
    if buckets:
        for word in _WORDS.findall(text.lower()):
            row[len(DENSE) + zlib.crc32(word.encode("utf-8")) % buckets] += 1.0
    return row


def design(texts: Sequence[str], n_tokens: Sequence[int], buckets: int) -> np.ndarray:
    return np.stack([features(t, int(n), buckets) for t, n in zip(texts, n_tokens, strict=True)])


@dataclass(frozen=True)
class FeatureLengthModel:
    """Ridge weights over :func:`features`, and the N-only line for requests without text."""

    weights: tuple[float, ...]
    buckets: int
    ridge: float
    gamma: float
    delta: float
    rows: int
    source: dict[str, Any]

    def predict(self, text: str | None, n_tokens: int) -> float:
        if text is None:
            return self.gamma * n_tokens + self.delta
        return float(features(text, n_tokens, self.buckets) @ np.asarray(self.weights))

    def predict_many(self, texts: Sequence[str], n_tokens: Sequence[int]) -> np.ndarray:
        return design(texts, n_tokens, self.buckets) @ np.asarray(self.weights)


def fit_features(
    texts: Sequence[str],
    n_tokens: Sequence[int],
    m_tokens: Sequence[int],
    buckets: int = 256,
    ridge: float = 10.0,
    source: dict[str, Any] | None = None,
) -> FeatureLengthModel:
    """Ridge regression of ``m_tokens`` on the features of ``texts`` (a model's own outputs)."""
    if len(texts) < 2:
        raise ValueError("fit_features needs at least two (text, N, M) rows")
    if buckets < 0 or ridge < 0:
        raise ValueError("buckets and ridge must be >= 0")
    x = design(texts, n_tokens, buckets)
    y = np.asarray(m_tokens, dtype=np.float64)
    # Standardise the columns so that one ridge penalty fits counts of different scales.
    scale = x.std(axis=0)
    scale[0] = 1.0
    scale[scale == 0] = 1.0
    xs = x / scale
    penalty = np.full(x.shape[1], ridge)
    penalty[0] = 0.0
    weights = np.linalg.solve(xs.T @ xs + np.diag(penalty), xs.T @ y) / scale
    n = np.asarray(n_tokens, dtype=np.float64)
    gamma, delta = np.polyfit(n, y, 1) if np.ptp(n) > 0 else (0.0, float(y.mean()))
    return FeatureLengthModel(
        weights=tuple(float(w) for w in weights),
        buckets=buckets,
        ridge=ridge,
        gamma=float(gamma),
        delta=float(delta),
        rows=len(texts),
        source=dict(source or {}),
    )


def fit_features_cv(
    texts: Sequence[str],
    n_tokens: Sequence[int],
    m_tokens: Sequence[int],
    buckets: Sequence[int] = (0, 32, 64, 128, 256),
    ridges: Sequence[float] = (10.0, 100.0),
    folds: int = 5,
    source: dict[str, Any] | None = None,
) -> FeatureLengthModel:
    """:func:`fit_features` with the bag size and ridge penalty that predict best on the rows
    given, chosen by ``folds``-fold cross-validation (mean absolute error of the estimate clipped
    at 1, as the estimator clips it), then refitted on every row.

    A bigger bag is not always better: with a couple of thousand short sentences, 256 buckets
    let the regression fit words seen a few times (bilstm-de-en's Tatoeba rows, docs/quality.md).
    The choice uses only these rows, never the sentences an evaluation holds apart."""
    if len(texts) < 2 * folds:
        raise ValueError(f"fit_features_cv needs at least {2 * folds} rows for {folds} folds")
    if not buckets or not ridges:
        raise ValueError("fit_features_cv needs at least one bag size and one ridge penalty")
    fold = np.arange(len(texts)) % folds
    y = np.asarray(m_tokens, dtype=np.float64)
    n = np.asarray(n_tokens)
    best: tuple[float, int, float] | None = None
    for size in buckets:
        for ridge in ridges:
            errors = []
            for k in range(folds):
                train, test = np.flatnonzero(fold != k), np.flatnonzero(fold == k)
                model = fit_features(
                    [texts[i] for i in train], n[train], y[train], buckets=size, ridge=ridge
                )
                guess = model.predict_many([texts[i] for i in test], n[test])
                errors.append(np.abs(np.maximum(guess, 1.0) - y[test]).sum())
            score = float(sum(errors)) / len(texts)
            if best is None or score < best[0]:
                best = (score, size, ridge)
    _, size, ridge = best  # type: ignore[misc]
    chosen = {**dict(source or {}), "cross_validated_mae": round(best[0], 4), "folds": folds}
    return fit_features(texts, n_tokens, m_tokens, buckets=size, ridge=ridge, source=chosen)


def save_feature_model(model: FeatureLengthModel, path: str | Path) -> None:
    write_json(path, {"format": FORMAT, **model.__dict__, "weights": list(model.weights)})


def load_feature_model(path: str | Path) -> FeatureLengthModel:
    data = read_json(
        path,
        what="feature length model",
        fix="fit one with benchmarks/length_estimators.py --save-features DIR",
        format=FORMAT,
    )
    try:
        model = FeatureLengthModel(
            weights=tuple(float(w) for w in data["weights"]),
            buckets=int(data["buckets"]),
            ridge=float(data["ridge"]),
            gamma=float(data["gamma"]),
            delta=float(data["delta"]),
            rows=int(data["rows"]),
            source=dict(data.get("source", {})),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ConfigError(f"{path}: malformed feature length model ({exc})") from None
    if len(model.weights) != len(DENSE) + model.buckets or not all(
        math.isfinite(w) for w in model.weights
    ):
        raise ConfigError(f"{path}: {len(model.weights)} weights for {model.buckets} buckets")
    return model


class FeaturesLength(LengthEstimator):
    """M from source-text features by a ridge regression fitted on the model's own outputs
    (see the module docstring); clipped to >= ``min_tokens``."""

    name = "features"

    @dataclass(frozen=True)
    class Params:
        model: str
        min_tokens: float = ranged(1.0, low=0, high=4096)

    def __init__(self, params: Any) -> None:
        super().__init__(params)
        self.fitted = load_feature_model(params.model)

    def estimate(self, request: Request) -> float:
        value = self.fitted.predict(request.text, request.n_tokens)
        return max(self.params.min_tokens, value)

    def estimate_many(self, n_tokens: np.ndarray, m_true: np.ndarray | None = None) -> np.ndarray:
        raw = self.fitted.gamma * np.asarray(n_tokens, dtype=float) + self.fitted.delta
        return np.maximum(self.params.min_tokens, raw)
