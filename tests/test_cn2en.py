"""cn2en: the trained ZH->EN GRU, exported to ONNX, reproduces the cn2en package sentence by
sentence."""

from __future__ import annotations

import importlib.util
import logging
import os
from pathlib import Path
from typing import Any

import pytest

from cnmt.cli import main
from cnmt.errors import ConfigError
from cnmt.runtime import load_translator
from cnmt.runtime.manifest import load_manifest

pytestmark = [
    pytest.mark.export,
    pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="needs cnmt[export]"),
    pytest.mark.skipif(importlib.util.find_spec("cn2en") is None, reason="cn2en is not installed"),
]

SAMPLE_EVERY = 700  # a fixed sample: every 700th line of Tatoeba's 29,156 Chinese sentences


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from cnmt.exporters.base import ExportRequest
    from cnmt.registry import get_components

    out = tmp_path_factory.mktemp("cn2en") / "cn2en"
    get_components().create("exporter", "cn2en").export(ExportRequest(out_dir=out))
    return out


@pytest.fixture(scope="module")
def translator(exported: Path) -> Any:
    return load_translator(exported)


@pytest.fixture(scope="module")
def reference() -> Any:
    """The cn2en package itself (imported in tests only: it loads matplotlib and picks a device)."""
    os.environ.setdefault("MPLBACKEND", "Agg")
    from cn2en.model import Model

    return Model()


@pytest.fixture(scope="module")
def sentences(data_dir: Path) -> list[str]:
    lines = (
        (data_dir / "corpora" / "tatoeba-en-zh" / "all.zh").read_text(encoding="utf-8").splitlines()
    )
    sample = [line for line in lines[::SAMPLE_EVERY] if line.strip()]
    assert len(sample) >= 40
    return sample


def test_onnx_translations_equal_the_cn2en_package_on_tatoeba(
    translator: Any, reference: Any, sentences: list[str]
) -> None:
    pairs = [(s, translator.translate(s).text, reference.translate(s)) for s in sentences]
    mismatches = [pair for pair in pairs if pair[1] != pair[2]]
    assert not mismatches


def test_lets_go_through_the_cli_exports_the_built_in_model_on_first_use(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("CNMT_CACHE", str(tmp_path / "cache"))
    assert main(["translate", "--model", "cn2en", "我们走吧。"]) == 0
    assert capsys.readouterr().out == "let's go .\n"
    cached = tmp_path / "cache" / "models" / "cn2en"
    assert load_manifest(cached).family == "cn2en"
    command = ["translate", "--model", "cn2en", "--verbose", "我们走吧。", "我不知道。"]
    assert main(command) == 0
    captured = capsys.readouterr()
    assert captured.out == "let's go .\ni don't know .\n"
    assert "# N=5 M=3 time=" in captured.err


def test_unknown_characters_are_dropped_like_the_reference_and_logged(
    translator: Any, reference: Any, caplog: pytest.LogCaptureFixture
) -> None:
    text = "ｘｙ我们走吧。"
    with caplog.at_level(logging.WARNING, logger="cnmt.runtime"):
        result = translator.translate(text)
    assert result.text == reference.translate(text)
    assert result.source_tokens == 5
    assert "dropped 2 source token(s) not in the vocabulary" in caplog.text
    assert "ｘ ｙ" in caplog.text
    # Nothing known at all: the reference would invent a sentence from EOS alone; we refuse,
    # naming the unknown characters (the gateway answers 422).
    with pytest.raises(ConfigError, match="no token model 'cn2en' knows: 'ｘ', 'ｙ', 'ｚ'"):
        translator.translate("ｘｙｚ")


def test_batched_rows_finish_independently(translator: Any, sentences: list[str]) -> None:
    texts = sentences[:8]
    single = [translator.translate(t) for t in texts]
    assert len({r.output_tokens for r in single}) > 1  # rows reach EOS at different steps
    batched = translator.translate_batch(texts)
    assert [(b.text, b.output_tokens) for b in batched] == [
        (s.text, s.output_tokens) for s in single
    ]


def test_forced_decode_ignores_eos(translator: Any) -> None:
    ids = translator.encode_text("我们走吧。")
    natural = translator.decode([ids])
    assert natural.steps == 4  # "let's", "go", "." then EOS
    forced = translator.decode([ids], forced_steps=12)
    assert forced.steps == 12 and len(forced.ids[0]) == 12
    assert forced.ids[0][:3] == natural.ids[0]
    assert forced.ids[0][3] == translator.eos  # it went on past EOS
    assert translator.forced(30, 50).steps == 50


def test_too_long_and_empty_texts_are_refused(translator: Any) -> None:
    with pytest.raises(ConfigError, match=r"501 source tokens; model 'cn2en' accepts at most 500"):
        translator.translate("我" * 501)
    with pytest.raises(ConfigError, match="empty text"):
        translator.translate("")
    assert translator.count_source_tokens("我" * 500) == 500


def test_manifest_records_the_source_weights_checksum(exported: Path) -> None:
    from cnmt.exporters.cn2en import locate
    from cnmt.files import sha256_file

    manifest = load_manifest(exported)
    assert manifest.source_checksum == sha256_file(locate().weights)
    assert manifest.special_tokens == {"bos": 0, "eos": 1}
    assert manifest.extra["source_eos"] is True
