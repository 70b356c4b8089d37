"""Length estimators (hook cnmt_register_length_estimators), token counters, outlier filter, fit."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cnmt.cli import main
from cnmt.datasets.corpora import ParallelCorpus, heldout_mask, read_parallel
from cnmt.errors import ConfigError
from cnmt.experiments.lengthfit import FilterRules, filter_pairs, fit_length
from cnmt.experiments.tokens import get_counter
from cnmt.registry import get_components
from cnmt.schedulers import Request
from cnmt.schedulers.length_models import LengthModel, load_length_model, save_length_model
from cnmt.schema import build


def estimator(name: str, **params):
    cls = get_components().get("length_estimator", name).cls
    return cls(build(cls.Params, params or None))


def fitted_file(tmp_path, gamma=1.25, delta=2.0, mean_m=9.0):
    path = tmp_path / "lm.json"
    save_length_model(
        LengthModel(
            gamma,
            delta,
            mean_m,
            r2=0.9,
            mse=1.0,
            src_tokenizer="words",
            tgt_tokenizer="words",
            pairs_total=10,
            pairs_kept=9,
        ),
        path,
    )
    return path


def test_builtin_length_estimators_are_registered_through_the_hook():
    assert {"linear", "naive", "oracle"} <= set(get_components().names("length_estimator"))


def test_linear_from_gamma_delta_or_from_a_fitted_file(tmp_path):
    direct = estimator("linear", gamma=1.25, delta=2.0)
    from_file = estimator("linear", model=str(fitted_file(tmp_path)))
    for est in (direct, from_file):
        assert est.estimate(Request(n_tokens=8)) == pytest.approx(12.0)
        assert est.estimate_many(np.array([0, 8])).tolist() == pytest.approx([2.0, 12.0])
    clipped = estimator("linear", gamma=0.5, delta=-3.0, min_tokens=1.0)
    assert clipped.estimate(Request(n_tokens=2)) == 1.0


def test_linear_params_must_say_where_gamma_and_delta_come_from(tmp_path):
    cls = get_components().get("length_estimator", "linear").cls
    with pytest.raises(ConfigError, match="needs `model: PATH`"):
        build(cls.Params, {"gamma": 1.0})
    with pytest.raises(ConfigError, match="not both"):
        build(cls.Params, {"model": "x.json", "gamma": 1.0, "delta": 0.0})
    with pytest.raises(ConfigError, match="no such length model; fit one with `cnmt fit-length"):
        estimator("linear", model=str(tmp_path / "missing.json"))
    (tmp_path / "bad.json").write_text('{"format": "something-else"}')
    with pytest.raises(ConfigError, match="not a length model"):
        load_length_model(tmp_path / "bad.json")


def test_naive_is_the_corpus_mean_and_oracle_the_truth(tmp_path):
    assert estimator("naive", mean_tokens=7.5).estimate(Request(n_tokens=100)) == 7.5
    assert estimator("naive", model=str(fitted_file(tmp_path))).estimate_many(
        np.array([1, 2])
    ).tolist() == [9.0, 9.0]
    oracle = estimator("oracle")
    assert oracle.estimate(Request(n_tokens=3, m_true=11)) == 11.0
    assert oracle.estimate_many(np.array([3, 4]), np.array([11, 12])).tolist() == [11.0, 12.0]
    assert oracle.needs_truth
    with pytest.raises(Exception, match="needs the true output length"):
        oracle.estimate(Request(n_tokens=3))


def test_token_counters_count_like_the_models(tmp_path):
    assert get_counter("words").count("es ist diese pyramide .") == 5
    # cn2en: one token per Chinese character and punctuation mark, latin words whole.
    assert get_counter("chars").count("我们走吧。") == 5
    assert get_counter("chars").count("Let's go.") == 3
    assert get_counter("moses:fr").count("Je t'aime, l'homme.") == 7
    codes = tmp_path / "codes"
    codes.write_text("#version: 0.2\nl o\nlo w</w>\n", encoding="utf-8")
    bpe = get_counter(f"bpe:{codes}")
    assert bpe.count("low") == 1  # l o w</w> -> lo w</w> -> low</w>
    assert bpe.count("low lower") == 1 + 4  # lower: lo w e r
    with pytest.raises(ConfigError, match="unknown tokenizer 'spaces'; valid: words, chars"):
        get_counter("spaces")


def test_sentencepiece_counter_on_the_real_opus_mt_model(data_dir):
    pytest.importorskip("sentencepiece")
    spm = get_counter(f"sentencepiece:{data_dir}/tokenizers/opus-mt-tc-big-fr-en/source.spm")
    counts = spm.count_many(["Bonjour le monde.", "Je t'aime."])
    assert counts.tolist() == [spm.count("Bonjour le monde."), spm.count("Je t'aime.")]
    assert (counts >= 3).all()


def test_outlier_filter_counts_each_dropped_pair_under_its_first_rule():
    src = ["a b", "", "same text", "x " * 20, "one", "a b c d", "hello there"]
    tgt = ["c d", "", "same text", "y", "w " * 9, "e f g h", "hallo"]
    n = np.array([len(s.split()) for s in src])
    m = np.array([len(t.split()) for t in tgt])
    kept, dropped = filter_pairs(src, tgt, n, m, FilterRules(max_tokens=15, max_ratio=3.0))
    # "" is empty AND identical: counted once, as empty.
    assert dropped == {"empty": 1, "identical": 1, "too_long": 1, "ratio": 1}
    assert kept.tolist() == [True, False, False, False, False, True, True]
    kept, dropped = filter_pairs(
        src, tgt, n, m, FilterRules(max_tokens=None, max_ratio=None, drop_identical=False)
    )
    assert dropped == {"empty": 1, "identical": 0, "too_long": 0, "ratio": 0}


def synthetic_corpus(
    gamma: float, delta: float, rng: np.random.Generator, noise: float
) -> ParallelCorpus:
    src, tgt = [], []
    for _ in range(3000):
        n = int(rng.integers(1, 40))
        m = max(1, int(round(gamma * n + delta + rng.normal(0, noise))))
        src.append(" ".join(f"s{i}" for i in range(n)))
        tgt.append(" ".join(f"t{i}" for i in range(m)))
    return ParallelCorpus("synthetic.src", "synthetic.tgt", tuple(src), tuple(tgt))


def test_fit_recovers_a_known_line(monkeypatch):
    monkeypatch.setattr("cnmt.experiments.lengthfit.sha256_file", lambda path: "test")
    exact = fit_length(
        [synthetic_corpus(1.5, 2.0, np.random.default_rng(0), 0.0)], "words", "words"
    )
    assert exact.model.gamma == pytest.approx(1.5, abs=0.02)
    assert exact.model.delta == pytest.approx(2.0, abs=0.3)  # rounding to whole tokens
    assert exact.model.r2 > 0.999
    noisy = fit_length(
        [synthetic_corpus(0.8, 3.0, np.random.default_rng(1), 2.0)],
        "words",
        "words",
        rules=FilterRules(max_ratio=None),
    )
    assert noisy.model.gamma == pytest.approx(0.8, abs=0.03)
    assert noisy.model.delta == pytest.approx(3.0, abs=0.5)
    assert noisy.model.pairs_kept == noisy.model.pairs_total == 3000


def test_heldout_lines_are_left_out_of_the_fit():
    mask = heldout_mask(25, 10)
    assert np.flatnonzero(mask).tolist() == [9, 19]
    assert not heldout_mask(25, None).any()


def test_parallel_corpus_sides_must_align(tmp_path):
    (tmp_path / "a").write_text("one\ntwo\n", encoding="utf-8")
    (tmp_path / "b").write_text("eins\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="has 2 lines but .* has 1"):
        read_parallel(tmp_path / "a", tmp_path / "b")
    (tmp_path / "c").write_bytes(b"ok\n\xff\n")
    with pytest.raises(ConfigError, match=r"c:2: not UTF-8"):
        read_parallel(tmp_path / "c", tmp_path / "a")


def test_fit_length_command_on_the_real_iwslt_corpus(data_dir, tmp_path, capsys):
    corpus = data_dir / "corpora" / "iwslt14-de-en"
    out, summary, plot = tmp_path / "lm.json", tmp_path / "fit.json", tmp_path / "fit.png"
    code = main(
        [
            "fit-length",
            "--src",
            str(corpus / "valid.de"),
            "--tgt",
            str(corpus / "valid.en"),
            "--tokenizer",
            "words",
            "--heldout-every",
            "10",
            "--out",
            str(out),
            "--json",
            str(summary),
            "--plot",
            str(plot),
        ]
    )
    assert code == 0
    data = json.loads(summary.read_text())
    for key in ("gamma", "delta", "r2", "mse", "pairs_total", "pairs_kept", "dropped", "mean_m"):
        assert key in data
    assert data["pairs_total"] == 7283 - 728  # every 10th line held out
    assert data["pairs_kept"] == data["pairs_total"] - sum(data["dropped"].values())
    assert data["dropped"]["identical"] > 0  # the sample has untranslated lines
    assert 0.8 < data["gamma"] < 1.3 and data["r2"] > 0.8  # DE and EN have similar lengths
    model = load_length_model(out)
    assert model.gamma == data["gamma"] and model.src_tokenizer == "words"
    assert plot.stat().st_size > 10_000
    assert "kept" in capsys.readouterr().out


def test_fit_length_rejects_unpaired_files_with_exit_2(tmp_path, capsys):
    code = main(
        ["fit-length", "--src", "a", "--src", "b", "--tgt", "c", "--out", str(tmp_path / "x")]
    )
    assert code == 2
    assert "give one --tgt per --src (got 2 --src and 1 --tgt)" in capsys.readouterr().err


def test_tokenizer_specs_compare_by_kind_and_file_content(tmp_path, data_dir):
    from cnmt.experiments.tokens import same_tokenizer

    codes = data_dir / "tokenizers" / "iwslt14-de-en-bpe10k" / "code"
    copy = tmp_path / "code"
    copy.write_bytes(codes.read_bytes())
    assert same_tokenizer(f"moses:de+bpe:{codes}", f"moses:de+bpe:{copy}")
    assert same_tokenizer("bpe:${data}/tokenizers/iwslt14-de-en-bpe10k/code", f"bpe:{codes}")
    assert not same_tokenizer(f"moses:de+bpe:{codes}", f"moses:en+bpe:{codes}")
    assert not same_tokenizer("words", "chars")
    other = tmp_path / "other"
    other.write_text("#version: 0.2\na b\n")
    assert not same_tokenizer(f"bpe:{codes}", f"bpe:{other}")
    # A fitted model's recorded hash stands in for a path that does not resolve here.
    import hashlib

    recorded = {"gone/code": hashlib.sha256(codes.read_bytes()).hexdigest()}
    assert same_tokenizer("bpe:gone/code", f"bpe:{codes}", recorded)
    # A file retrained since the fit no longer matches what was recorded for it.
    assert not same_tokenizer(f"bpe:{other}", f"bpe:{other}", {str(other): recorded["gone/code"]})


@pytest.mark.export
def test_model_counter_counts_what_the_cn2en_runtime_encodes():
    from cnmt.runtime import load_translator

    counter = get_counter("model:cn2en")
    translator = load_translator("cn2en")
    for text in ("我们走吧。", "你好。", "联合国的任何改革都不应重新定义《宪章》的这些原则。"):
        assert counter.count(text) == translator.count_source_tokens(text)
    assert counter.count("   ") == 0  # refused by the model: never a request
