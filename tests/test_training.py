"""The training recipes (cnmt.training) and the trained built-ins they produced.

No test trains beyond a few steps: the smoke tests run the real scripts on a few thousand pairs
with a tiny model for a handful of updates and check what a user relies on (a seeded held-out
split, a checkpoint, an export the runtime translates with, the record in its manifest). The
built-in tests check the committed trained weights translate their test split well.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cnmt.errors import ConfigError
from cnmt.runtime import load_translator
from cnmt.runtime.manifest import load_manifest

pytestmark = [
    pytest.mark.export,
    pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="needs cnmt[export]"),
]

REPO_ROOT = Path(__file__).resolve().parent.parent
TINY = [
    "--max-pairs", "3000", "--test-pairs", "100", "--valid-pairs", "50",
    "--source-vocab", "300", "--target-vocab", "300", "--hidden", "32",
    "--max-steps", "6", "--epochs", "2", "--threads", "1", "--log-every", "2",
    "--no-news", "--eval-sentences", "20",
]  # fmt: skip


@pytest.fixture(scope="module")
def tiny_gru(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> Path:
    """OUT of `scripts/train-gru-fr-en` on a tiny model, a few steps."""
    out = tmp_path_factory.mktemp("gru") / "run"
    env = {**os.environ, "PYTHON": sys.executable, "CNMT_DATA": str(data_dir)}
    result = subprocess.run(
        ["bash", str(REPO_ROOT / "scripts" / "train-gru-fr-en"), "--out", str(out), *TINY],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "step 6:" in result.stderr  # progress is shown
    return out


@pytest.mark.slow
def test_training_script_writes_checkpoint_split_export_and_scores(tiny_gru: Path) -> None:
    assert (tiny_gru / "checkpoint.pt").is_file()
    split = json.loads((tiny_gru / "data" / "split.json").read_text())
    assert split["test"] == 100 and split["valid"] <= 50 and "Random(19)" in split["rule"]
    train_sources = set((tiny_gru / "data" / "train.fr").read_text().splitlines())
    test_sources = (tiny_gru / "data" / "test.fr").read_text().splitlines()
    assert len(test_sources) == 100 and not train_sources.intersection(test_sources)
    metrics = json.loads((tiny_gru / "metrics.json").read_text())
    assert set(metrics["sets"]["test"]) == {"bleu", "chrf", "sentences"}
    manifest = load_manifest(tiny_gru / "model")
    training = manifest.extra["training"]
    assert training["seed"] == 19 and training["config"]["max_steps"] == 6
    assert training["wall_minutes"] > 0 and training["data"]["test"] == 100
    assert manifest.files["source_spm"] == "source.spm"


@pytest.mark.slow
def test_the_export_of_a_trained_checkpoint_translates_raw_text(tiny_gru: Path) -> None:
    translator = load_translator(tiny_gru / "model")
    result = translator.translate_batch(["Je suis fatigué.", "Où est la gare ?"])
    assert [r.source_tokens > 0 and r.output_tokens > 0 for r in result] == [True, True]
    assert all(isinstance(r.text, str) and r.text for r in result)


@pytest.mark.slow
def test_the_split_is_seeded_and_keeps_test_sources_out_of_training() -> None:
    from cnmt.training.data import split_pairs

    pairs = [(f"s{i % 150}", f"t{i}") for i in range(400)] + [("", "x"), ("s1", "t1")]
    first = split_pairs(pairs, seed=5, test_pairs=30, valid_pairs=20)
    again = split_pairs(pairs, seed=5, test_pairs=30, valid_pairs=20)
    other = split_pairs(pairs, seed=6, test_pairs=30, valid_pairs=20)
    assert first.test == again.test and first.test != other.test
    test_sources = {s for s, _ in first.test}
    assert not test_sources.intersection(s for s, _ in first.train + first.valid)
    assert first.record["empty_side_dropped"] == 1 and first.record["distinct_pairs"] == 400
    with pytest.raises(ConfigError, match="not more than test_pairs"):
        split_pairs(pairs[:40], seed=5, test_pairs=30, valid_pairs=20)


@pytest.mark.slow
def test_a_sentencepiece_model_that_does_not_fit_the_vocabulary_is_refused(
    tiny_gru: Path, tmp_path: Path
) -> None:
    import shutil

    model = tmp_path / "model"
    shutil.copytree(tiny_gru / "model", model)
    vocab = json.loads((model / "target_vocab.json").read_text())
    (model / "target_vocab.json").write_text(json.dumps(vocab[:-1]))
    with pytest.raises(ConfigError, match=r"target.spm: the sentencepiece model has 300 pieces"):
        load_translator(model)


def test_a_checkpoint_that_is_not_a_trained_gru_is_refused(tmp_path: Path) -> None:
    import torch

    from cnmt.exporters.gru_trained import load_gru_checkpoint, packaged_checkpoint

    bad = tmp_path / "other.pt"
    torch.save({"model": {}}, bad)
    with pytest.raises(ConfigError, match="not a trained GRU checkpoint"):
        load_gru_checkpoint(bad)
    text = tmp_path / "notes.pt"
    text.write_text("not weights")
    with pytest.raises(ConfigError, match="notes.pt: not a torch checkpoint"):
        load_gru_checkpoint(text)
    with pytest.raises(ConfigError, match="ships trained weights for gru-fr-en only"):
        packaged_checkpoint("gru", "gru-de-en")


def _test_split(data_dir: Path, model: str, count: int) -> list[tuple[str, str]]:
    from cnmt.training.data import builtin_splits

    return builtin_splits(model, data_dir).test[:count]


def test_the_builtin_test_splits_are_rebuilt_as_the_recipes_split(data_dir: Path) -> None:
    from cnmt.training.data import BUILTIN_SPLIT, builtin_splits, read_pairs, split_pairs
    from cnmt.training.gru import GruTrainingConfig
    from cnmt.training.opennmt import BiLstmTrainingConfig

    for config in (GruTrainingConfig(), BiLstmTrainingConfig()):
        recipe = {k: getattr(config, k) for k in BUILTIN_SPLIT}
        assert recipe == BUILTIN_SPLIT, config.name
    folder = data_dir / "corpora" / "tatoeba-de-en"
    pairs = read_pairs(folder / "all.de", folder / "all.en", None)
    rebuilt = builtin_splits("bilstm-de-en", data_dir)
    assert (
        rebuilt.test == split_pairs(pairs, seed=19, test_pairs=2000, valid_pairs=500).test
        and len(rebuilt.test) == 2000
    )
    with pytest.raises(ConfigError, match="not a trained built-in; trained built-ins: gru-fr-en"):
        builtin_splits("cn2en", data_dir)


@pytest.mark.slow
def test_builtin_gru_fr_en_is_trained_and_translates_its_test_split(
    tmp_path: Path, data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sacrebleu

    from cnmt.exporters.builtins import export_builtin

    monkeypatch.setenv("CNMT_CACHE", str(tmp_path))
    folder = export_builtin("gru-fr-en")
    manifest = load_manifest(folder)
    assert manifest.extra["training"]["seed"] == 19
    assert manifest.extra["weights"].startswith("trained (float16")
    pairs = _test_split(data_dir, "gru-fr-en", 300)
    translator = load_translator("gru-fr-en", threads=1)
    hyps = [t.text for t in translator.translate_batch([s for s, _ in pairs])]
    # The full 2,000-pair split scores 31.2 BLEU (docs/models.md); 300 pairs vary a little.
    assert sacrebleu.corpus_bleu(hyps, [[r for _, r in pairs]]).score > 20


@pytest.mark.slow
def test_builtin_bilstm_de_en_is_an_opennmt_model_that_translates_its_test_split(
    tmp_path: Path, data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sacrebleu

    from cnmt.exporters.builtins import export_builtin

    monkeypatch.setenv("CNMT_CACHE", str(tmp_path))
    folder = export_builtin("bilstm-de-en")
    manifest = load_manifest(folder)
    assert manifest.extra["weights"] == "OpenNMT-py checkpoint bilstm-de-en.pt"
    assert manifest.extra["training"]["toolkit"].startswith("OpenNMT-py 3.5.1")
    pairs = _test_split(data_dir, "bilstm-de-en", 300)
    translator = load_translator("bilstm-de-en", threads=1)
    hyps = [t.text for t in translator.translate_batch([s for s, _ in pairs])]
    bleu = sacrebleu.corpus_bleu(hyps, [[r for _, r in pairs]], lowercase=True)
    assert bleu.score > 20


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("onmt") is None, reason="needs OpenNMT-py")
def test_bilstm_training_script_runs_opennmt_and_exports(tmp_path: Path, data_dir: Path) -> None:
    out = tmp_path / "run"
    env = {**os.environ, "PYTHON": sys.executable, "CNMT_DATA": str(data_dir)}
    result = subprocess.run(
        [
            "bash", str(REPO_ROOT / "scripts" / "train-bilstm-de-en"), "--out", str(out),
            "--max-pairs", "3000", "--test-pairs", "100", "--valid-pairs", "50",
            "--hidden", "32", "--train-steps", "4", "--save-every", "4",
            "--eval-sentences", "10", "--no-news",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    manifest = load_manifest(out / "model")
    assert manifest.extra["training"]["checkpoint"] == "model_step_4.pt"
    assert load_translator(out / "model").translate("Ich bin müde.").source_tokens > 0
