"""The `features` length estimator: source-text features, a ridge fit, the registered component."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cnmt.errors import ConfigError
from cnmt.schedulers.base import Request
from cnmt.schedulers.features import (
    DENSE,
    features,
    fit_features,
    fit_features_cv,
    load_feature_model,
    save_feature_model,
)


def test_a_feature_row_counts_characters_punctuation_digits_and_hashed_words() -> None:
    row = features("Tom paid 25 euros, twice!", n_tokens=7, buckets=16)
    bias, n, chars, punctuation, digits = row[: len(DENSE)]
    assert (bias, n, chars, punctuation, digits) == (1.0, 7.0, 25.0, 2.0, 2.0)
    assert row[len(DENSE) :].sum() == 7  # tom paid 25 euros , twice !
    assert np.array_equal(row, features("Tom paid 25 euros, twice!", 7, 16))  # no salted hash
    chinese = features("我们走吧。", n_tokens=5, buckets=16)
    assert chinese[len(DENSE) :].sum() == 5  # one word per character and the full stop


def corpus(rows: int = 400) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Sentences whose output is N + 6 tokens when they contain 'please', else N: a length
    that N alone cannot tell."""
    rng = np.random.default_rng(0)
    words = ["open", "the", "door", "window", "now", "slowly", "box"]
    texts, n, m = [], [], []
    for _ in range(rows):
        size = int(rng.integers(2, 9))
        sentence = list(rng.choice(words, size))
        polite = bool(rng.integers(0, 2))
        if polite:
            sentence.append("please")
        texts.append(" ".join(sentence))
        n.append(len(sentence))
        m.append(len(sentence) + (6 if polite else 0))
    return texts, np.array(n), np.array(m, dtype=float)


def test_the_ridge_fit_learns_what_n_alone_cannot_tell() -> None:
    texts, n, m = corpus()
    model = fit_features(texts[:300], n[:300], m[:300], buckets=64, ridge=0.1)
    features_mae = np.abs(model.predict_many(texts[300:], n[300:]) - m[300:]).mean()
    line_mae = np.abs(model.gamma * n[300:] + model.delta - m[300:]).mean()
    assert features_mae < 0.3 < 2.0 < line_mae
    assert model.predict(None, 4) == pytest.approx(model.gamma * 4 + model.delta)


def test_cross_validation_keeps_the_bag_only_where_words_tell_the_length() -> None:
    texts, n, m = corpus()
    polite = fit_features_cv(texts, n, m, buckets=(0, 64), ridges=(0.1,), source={"model": "t"})
    assert polite.buckets == 64 and polite.ridge == 0.1 and polite.rows == len(texts)
    assert polite.source["model"] == "t" and polite.source["cross_validated_mae"] < 0.3
    # The same sentences whose length is N plus noise the words do not predict: a bag of 256
    # buckets over a few hundred rows fits the noise, and the folds see it.
    noisy = n + np.random.default_rng(1).integers(0, 4, len(n))
    plain = fit_features_cv(texts, n, noisy, buckets=(0, 256), ridges=(0.01,))
    assert plain.buckets == 0
    with pytest.raises(ValueError, match="at least 10 rows for 5 folds"):
        fit_features_cv(texts[:9], n[:9], m[:9])


def test_the_registered_estimator_reads_a_saved_model(tmp_path: Path, fresh_registry: None) -> None:
    from cnmt.registry import get_components

    texts, n, m = corpus()
    path = tmp_path / "features.json"
    save_feature_model(fit_features(texts, n, m, buckets=32), path)
    loaded = load_feature_model(path)
    from cnmt.schedulers.features import FeaturesLength

    params = FeaturesLength.Params(model=str(path))
    estimator = get_components().create("length_estimator", "features", params=params)
    polite = estimator.estimate(Request(4, text="open the door please"))
    plain = estimator.estimate(Request(4, text="open the door now"))
    assert polite - plain == pytest.approx(6.0, abs=1.0)
    assert estimator.estimate(Request(4)) == pytest.approx(loaded.gamma * 4 + loaded.delta)
    assert estimator.estimate_many(np.array([4]))[0] == pytest.approx(
        estimator.estimate(Request(4))
    )


def test_a_malformed_model_file_is_an_error_naming_it(tmp_path: Path) -> None:
    texts, n, m = corpus(20)
    path = tmp_path / "features.json"
    save_feature_model(fit_features(texts, n, m, buckets=8), path)
    path.write_text(path.read_text().replace('"buckets": 8', '"buckets": 9'))
    with pytest.raises(ConfigError, match="features.json: 13 weights for 9 buckets"):
        load_feature_model(path)
