"""MarianMT in the core environment (no torch): model configs, registration, light imports."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from cnmt.config import load_config
from cnmt.errors import ConfigError


def test_builtin_marian_config_has_the_opus_mt_en_zh_dimensions() -> None:
    marian = load_config("models/marian-en-zh-train-tokenizer")["marian"]
    dims = marian.dims
    assert (dims.d_model, dims.encoder_layers, dims.decoder_layers) == (512, 6, 6)
    assert (dims.attention_heads, dims.ffn_dim, dims.vocab_size) == (8, 2048, 65001)
    assert marian.train_tokenizer.source_vocab_size is None  # sized to fill 65001 ids
    assert all("${data}" not in f for f in marian.train_tokenizer.source_files)


def test_small_marian_config_extends_the_full_one() -> None:
    marian = load_config("models/marian-en-zh-small")["marian"]
    assert marian.dims.d_model == 64 and marian.dims.vocab_size is None
    assert marian.dims.max_position_embeddings == 512  # inherited
    assert marian.train_tokenizer.target_files[0].endswith("tatoeba-en-zh/all.zh")


@pytest.mark.parametrize(
    ("section", "message"),
    [
        (
            "marian:\n  tokenizer_dir: /tmp/tok\n  train_tokenizer: {source_files: [a], "
            "target_files: [b]}\n",
            "exactly one of tokenizer_dir and train_tokenizer",
        ),
        (
            "marian:\n  tokenizer_dir: /tmp/tok\n  dims: {d_model: 100, attention_heads: 8}\n",
            "d_model 100 must be a multiple of attention_heads 8",
        ),
        (
            "marian:\n  tokenizer_dir: /tmp/tok\n  dims: {layers: 3}\n",
            "marian.dims.layers: unknown key",
        ),
        (
            "marian:\n  tokenizer_dir: /tmp/tok\n  atol: 0\n",
            "marian.atol: 0.0 is out of range: 0 < x <= 1",
        ),
    ],
)
def test_bad_marian_config_names_the_key_and_the_problem(
    tmp_path: Path, section: str, message: str
) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(section, encoding="utf-8")
    with pytest.raises(ConfigError, match=message) as caught:
        load_config(path)
    assert str(path) in str(caught.value)


def test_marian_family_is_registered_for_translation_and_export(fresh_registry: None) -> None:
    from cnmt.registry import get_components

    components = get_components()
    assert "marian" in components.names("translator")
    assert "marian" in components.names("exporter")
    assert components.get("translator", "marian").cls.family == "marian"


def test_marian_modules_import_without_torch_or_transformers() -> None:
    code = (
        "import sys, cnmt.runtime.marian, cnmt.exporters.marian, cnmt.plugins.builtin_models\n"
        "heavy = [m for m in ('torch', 'transformers', 'optimum', 'sentencepiece') "
        "if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-P", "-c", code], check=True)
