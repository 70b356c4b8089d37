"""int8 export: every family quantizes, checks the int8 graphs against fp32 and translates; a
broken quantization fails loudly and leaves nothing; built-in int8 models are cached apart."""

from __future__ import annotations

import contextlib
import importlib.util
import io
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
]
needs_cn2en = pytest.mark.skipif(
    importlib.util.find_spec("cn2en") is None, reason="cn2en is not installed"
)

SHIPPED = Path(__file__).resolve().parent.parent / "configs" / "models"


def _small_rnn_config(tmp: Path, data_dir: Path, shipped: str) -> Path:
    """The shipped config with 600-token vocabularies and 30 output tokens (for speed)."""
    import yaml

    path = tmp / f"{shipped}.yaml"
    vocab = {"size": 600, "max_lines": 3000}
    path.write_text(
        yaml.safe_dump(
            {
                "extends": str(SHIPPED / f"{shipped}.yaml"),
                "data_dir": str(data_dir),
                "model": {"source_vocab": vocab, "target_vocab": vocab, "max_output_tokens": 30},
            }
        ),
        encoding="utf-8",
    )
    return path


def _export(*argv: str) -> tuple[int, str]:
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = main(["export", *argv])
    return code, printed.getvalue()


def _graph_bytes(folder: Path) -> int:
    manifest = load_manifest(folder)
    return sum((folder / name).stat().st_size for name in manifest.graphs.values())


@pytest.mark.parametrize(("family", "shipped"), [("bilstm", "bilstm-de-en"), ("gru", "gru-fr-en")])
def test_int8_export_of_a_config_model_is_checked_smaller_and_translates(
    tmp_path: Path, data_dir: Path, family: str, shipped: str
) -> None:
    config = str(_small_rnn_config(tmp_path, data_dir, shipped))
    assert _export("--family", family, "--config", config, "--out", str(tmp_path / "fp32"))[0] == 0
    code, printed = _export(
        "--family", family, "--config", config, "--precision", "int8", "--out", str(tmp_path / "q")
    )
    assert code == 0
    assert "int8: graphs" in printed
    fp32, int8 = load_manifest(tmp_path / "fp32"), load_manifest(tmp_path / "q")
    assert (fp32.precision, int8.precision) == ("fp32", "int8")
    assert int8.source_checksum == fp32.source_checksum  # the same weights, quantized
    check = int8.extra["quantization"]["check"]
    assert check["step_agreement"] >= check["thresholds"]["min_step_agreement"]
    assert _graph_bytes(tmp_path / "q") < 0.8 * _graph_bytes(tmp_path / "fp32")
    sentence = "das ist gut ." if family == "bilstm" else "je suis content ."
    result = load_translator(tmp_path / "q", threads=1).translate(sentence)
    assert 1 <= result.output_tokens <= 30 and result.text.strip()


@needs_cn2en
def test_builtin_int8_model_is_cached_apart_and_translates_like_fp32(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("CNMT_CACHE", str(tmp_path))
    code, printed = _export("--builtin", "cn2en", "--precision", "int8")
    assert code == 0
    folder = tmp_path / "models" / "cn2en-int8"
    assert f"to {folder}" in printed
    assert not (tmp_path / "models" / "cn2en").exists()  # the fp32 cache entry is untouched
    manifest = load_manifest(folder)
    assert manifest.precision == "int8" and manifest.name == "cn2en-int8"
    check = manifest.extra["quantization"]["check"]
    assert check["step_agreement"] >= 0.9 and check["chrf_vs_fp32"] >= 75
    assert main(["translate", "--model", "cn2en-int8", "我们走吧。"]) == 0
    assert capsys.readouterr().out.strip() == "let's go ."


@needs_cn2en
@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "sentence", "word"),
    [
        ("gru-fr-en", "Je suis très content.", "happy"),
        ("bilstm-de-en", "Ich bin sehr froh.", "glad"),
    ],
)
def test_trained_builtin_int8_twin_is_checked_on_built_in_sentences_and_translates(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, sentence: str, word: str
) -> None:
    from cnmt.exporters.check_texts import PRETRAINED_CHECK_TEXTS

    monkeypatch.setenv("CNMT_CACHE", str(tmp_path))
    assert _export("--builtin", name, "--precision", "int8")[0] == 0
    manifest = load_manifest(tmp_path / "models" / f"{name}-int8")
    assert manifest.precision == "int8" and manifest.name == f"{name}-int8"
    check = manifest.extra["quantization"]["check"]
    language, texts = PRETRAINED_CHECK_TEXTS[name]
    assert check["sentences"] == len(texts)
    assert check["sentences_from"] == f"{len(texts)} built-in {language} sentences"
    assert check["step_agreement"] >= 0.9 and check["chrf_vs_fp32"] >= 75
    assert _export("--builtin", name)[0] == 0
    int8 = load_translator(f"{name}-int8", threads=1).translate(sentence)
    fp32 = load_translator(name, threads=1).translate(sentence)
    assert int8.text == fp32.text and word in fp32.text.lower()


def test_check_with_references_reports_the_chrf_of_both_precisions(tmp_path: Path) -> None:
    texts = ["我们走吧。", "我不知道。", "今天天气很好。", "谢谢你的帮助。"]
    references = [
        "let's go.",
        "i don't know.",
        "the weather is nice today.",
        "thanks for your help.",
    ]
    (tmp_path / "zh.txt").write_text("\n".join(texts) + "\n", encoding="utf-8")
    (tmp_path / "en.txt").write_text("\n".join(references) + "\n", encoding="utf-8")
    code, _ = _export(
        "--family", "cn2en", "--precision", "int8", "--out", str(tmp_path / "q"),
        "--check-texts", str(tmp_path / "zh.txt"), "--check-references", str(tmp_path / "en.txt"),
    )  # fmt: skip
    assert code == 0
    check = load_manifest(tmp_path / "q").extra["quantization"]["check"]
    assert check["sentences"] == 4 and check["sentences_from"] == str(tmp_path / "zh.txt")
    assert check["chrf_fp32"] - check["chrf_int8"] <= check["thresholds"]["max_chrf_drop"]


def _scrambled(quantize: Any) -> Any:
    """quantize_graph, then every int8 weight replaced by random values: a broken quantizer."""

    def broken(source: Path, target: Path, per_channel: bool) -> None:
        import numpy as np
        import onnx
        from onnx import numpy_helper

        quantize(source, target, per_channel)
        model = onnx.load(str(target))
        rng = np.random.default_rng(0)
        for tensor in model.graph.initializer:
            if tensor.data_type == onnx.TensorProto.INT8:
                values = numpy_helper.to_array(tensor)
                noise = rng.integers(-127, 128, values.shape, dtype=np.int8)
                tensor.CopyFrom(numpy_helper.from_array(noise, tensor.name))
        onnx.save(model, str(target))

    return broken


@needs_cn2en
def test_broken_quantization_fails_loudly_and_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from cnmt.exporters import quantize

    monkeypatch.setattr(quantize, "quantize_graph", _scrambled(quantize.quantize_graph))
    out = tmp_path / "models" / "cn2en-int8"
    code, _ = _export("--family", "cn2en", "--precision", "int8", "--out", str(out))
    assert code == 1
    error = capsys.readouterr().err
    assert "int8 export of 'cn2en' rejected" in error and "of the steps < 0.9" in error
    assert list((tmp_path / "models").iterdir()) == []  # no output, no staging or scratch left


@needs_cn2en
def test_quantizer_failure_names_the_graph(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import onnxruntime.quantization

    from cnmt.errors import CnmtRuntimeError

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise ValueError("unsupported node")

    monkeypatch.setattr(onnxruntime.quantization, "quantize_dynamic", refuse)
    from cnmt.exporters.base import ExportRequest
    from cnmt.registry import get_components

    exporter = get_components().create("exporter", "cn2en")
    with pytest.raises(CnmtRuntimeError, match=r"quantizing the encoder graph .*unsupported node"):
        exporter.export(ExportRequest(out_dir=tmp_path / "q", precision="int8"))
    assert list(tmp_path.iterdir()) == []


@needs_cn2en
def test_check_options_need_int8_and_matching_lines(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "zh.txt").write_text("我们走吧。\n你好\n", encoding="utf-8")
    (tmp_path / "en.txt").write_text("let's go.\n", encoding="utf-8")
    out = str(tmp_path / "q")
    assert _export("--family", "cn2en", "--out", out, "--check-texts", str(tmp_path / "zh.txt"))[0]
    assert "go with --precision int8" in capsys.readouterr().err
    code, _ = _export(
        "--family", "cn2en", "--precision", "int8", "--out", out,
        "--check-texts", str(tmp_path / "zh.txt"), "--check-references", str(tmp_path / "en.txt"),
    )  # fmt: skip
    assert code == 2
    assert "has 1 lines but --check-texts" in capsys.readouterr().err
    assert not (tmp_path / "q").exists()


@pytest.mark.slow
def test_marian_int8_export_is_checked_and_translates(
    tmp_path: Path, data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    out = tmp_path / "marian-int8"
    code, printed = _export(
        "--family", "marian", "--config", "models/marian-en-zh-small", "--precision", "int8",
        "--out", str(out),
    )  # fmt: skip
    assert code == 0 and "validated against torch: yes" in printed
    manifest = load_manifest(out)
    assert manifest.precision == "int8"
    assert (
        manifest.extra["validation"]["max_abs_logits_diff"] <= manifest.extra["validation"]["atol"]
    )
    assert set(manifest.extra["quantization"]["graph_bytes"]) == set(manifest.graphs)
    translator = load_translator(out, threads=1)
    result = translator.translate("Where is the nearest train station?")
    assert result.source_tokens == 8 and result.output_tokens >= 1


def test_a_family_without_an_int8_step_refuses_int8_before_any_work() -> None:
    from cnmt.exporters.base import Exporter

    class Fp32Only(Exporter):
        """A plugin family whose translator cannot be checked against fp32."""

        family = name = "fp32-only"

        def export(self, request: Any) -> Any:
            raise AssertionError("export ran although its precision was refused")

    with pytest.raises(ConfigError, match="--precision int8: the fp32-only family exports fp32"):
        Fp32Only().check_precision("int8")
    Fp32Only().check_precision("fp32")
