"""BiLSTM and GRU: export from the shipped configs, ONNX Runtime vs torch parity, decode modes,
export validation failures, OpenNMT-py checkpoints and the `cnmt export` command."""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import warnings
from pathlib import Path
from typing import Any

import pytest

from cnmt.cli import main
from cnmt.errors import CnmtRuntimeError, ConfigError
from cnmt.runtime import load_translator
from cnmt.runtime.manifest import load_manifest

pytestmark = [
    pytest.mark.export,
    pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="needs cnmt[export]"),
]

REPO_ROOT = Path(__file__).resolve().parent.parent
SHIPPED = REPO_ROOT / "configs" / "models"
MAX_OUTPUT = 30


def _small_config(tmp: Path, data_dir: Path, shipped: str, vocab: int, **model: Any) -> Path:
    """The shipped config with smaller vocabularies (for speed); dimensions stay as shipped."""
    import yaml

    overrides = {
        "source_vocab": {"size": vocab, "max_lines": 3000},
        "target_vocab": {"size": vocab, "max_lines": 3000},
        "max_output_tokens": MAX_OUTPUT,
        **model,
    }
    path = tmp / f"{shipped}.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "extends": str(SHIPPED / f"{shipped}.yaml"),
                "data_dir": str(data_dir),
                "model": overrides,
            }
        ),
        encoding="utf-8",
    )
    return path


@dataclasses.dataclass
class Exported:
    family: str
    config: Path
    out: Path
    built: Any  # the torch side, rebuilt from the same config


def _export(family: str, config: Path, out: Path) -> Exported:
    from cnmt.exporters.base import ExportRequest
    from cnmt.registry import get_components

    request = ExportRequest(out_dir=out, config=config)
    exporter = get_components().create("exporter", family)
    exporter.export(request)
    built = exporter.build(request)
    built.model.eval()
    return Exported(family, config, out, built)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> dict[str, Exported]:
    tmp = tmp_path_factory.mktemp("rnn")
    return {
        "bilstm": _export(
            "bilstm", _small_config(tmp, data_dir, "bilstm-de-en", 600), tmp / "bilstm"
        ),
        "gru": _export("gru", _small_config(tmp, data_dir, "gru-fr-en", 600), tmp / "gru"),
    }


def _sentences(data_dir: Path, corpus: str, count: int, every: int) -> list[str]:
    lines = (data_dir / "corpora" / corpus).read_text(encoding="utf-8").splitlines()
    return [line for line in lines[::every] if line.strip()][:count]


SOURCES = {"bilstm": "iwslt14-de-en/valid.de", "gru": "tatoeba-fr-en/all.fr"}


@pytest.mark.parametrize("family", ["bilstm", "gru"])
def test_config_export_is_reproducible_and_has_shipped_dimensions(
    models: dict[str, Exported], family: str
) -> None:
    exported = models[family]
    manifest = load_manifest(exported.out)
    assert manifest.source_checksum == exported.built.source_checksum  # same seed, same weights
    assert manifest.extra["hidden_size"] == {"bilstm": 500, "gru": 256}[family]
    assert manifest.extra["layers"] == {"bilstm": 2, "gru": 1}[family]
    assert len(exported.built.source_tokens) == 600
    assert manifest.max_output_tokens == MAX_OUTPUT


@pytest.mark.parametrize("family", ["bilstm", "gru"])
def test_onnx_greedy_equals_torch_greedy_on_corpus_sentences(
    models: dict[str, Exported], data_dir: Path, family: str
) -> None:
    exported = models[family]
    translator = load_translator(exported.out)
    for text in _sentences(data_dir, SOURCES[family], 8, 397):
        ids = translator.encode_text(text)
        expected = exported.built.model.greedy(ids, translator.bos, translator.eos, MAX_OUTPUT)
        result = translator.translate(text)
        assert translator.decode([ids]).ids[0] == expected, text
        assert result.text == translator.target.decode(expected)
        assert (result.source_tokens, result.output_tokens) == (len(ids), len(expected))


@pytest.mark.parametrize("family", ["bilstm", "gru"])
def test_batched_translation_equals_one_by_one(
    models: dict[str, Exported], data_dir: Path, family: str
) -> None:
    translator = load_translator(models[family].out)
    texts = _sentences(data_dir, SOURCES[family], 5, 101)
    assert len({translator.count_source_tokens(t) for t in texts}) > 1  # padding is exercised
    batched = translator.translate_batch(texts)
    single = [translator.translate(t) for t in texts]
    assert [(b.text, b.source_tokens, b.output_tokens) for b in batched] == [
        (s.text, s.source_tokens, s.output_tokens) for s in single
    ]


@pytest.mark.parametrize("family", ["bilstm", "gru"])
def test_forced_decode_runs_exactly_m_steps(models: dict[str, Exported], family: str) -> None:
    translator = load_translator(models[family].out)
    for n, m in ((1, 1), (9, 17), (40, MAX_OUTPUT + 25)):  # M may exceed max_output_tokens
        result = translator.forced(n, m)
        assert result.steps == m
        assert [len(row) for row in result.ids] == [m]
    translator.run_forced(3, 4)


@pytest.mark.parametrize("family", ["bilstm", "gru"])
def test_bad_inputs_get_clear_errors(models: dict[str, Exported], family: str) -> None:
    translator = load_translator(models[family].out)
    with pytest.raises(ConfigError, match="empty text"):
        translator.translate("  ")
    too_long = " ".join(["wort"] * 257)
    with pytest.raises(ConfigError, match=r"\d+ source tokens; .* at most 256 \(max_source_tokens"):
        translator.translate(too_long)
    with pytest.raises(ConfigError, match="N=300 exceeds max_source_tokens=256"):
        translator.forced(300, 5)
    if family == "gru":  # a word vocabulary: a text of unknown words only is refused
        for call in (translator.count_source_tokens, translator.translate):
            with pytest.raises(ConfigError, match="no token model .* knows: 'qqqzzz', 'xxyyzz'"):
                call("qqqzzz xxyyzz")
    else:  # subword pieces of it are known to the BiLSTM's vocabulary: nothing is dropped
        assert translator.translate("qqqzzz xxyyzz").source_tokens >= 2


def test_provider_fallback_warns_and_still_translates(models: dict[str, Exported]) -> None:
    import onnxruntime

    from cnmt.runtime import ProviderFallbackWarning

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("CUDA is available here: nothing falls back")
    with pytest.warns(ProviderFallbackWarning, match="CUDAExecutionProvider is not available"):
        translator = load_translator(
            models["gru"].out, providers=["CUDAExecutionProvider", "CPUExecutionProvider"]
        )
    assert translator.encoder.get_providers() == ["CPUExecutionProvider"]
    assert translator.translate("bonjour .").output_tokens >= 1


def test_translate_command_prints_translations_and_counts(
    models: dict[str, Exported], capsys: pytest.CaptureFixture[str]
) -> None:
    translator = load_translator(models["bilstm"].out)
    expected = translator.translate("das ist gut .")
    assert (
        main(
            [
                "translate",
                "--model",
                str(models["bilstm"].out),
                "--threads",
                "1",
                "--verbose",
                "das ist gut .",
            ]
        )
        == 0
    )
    captured = capsys.readouterr()
    assert captured.out == expected.text + "\n"
    assert f"# N={expected.source_tokens} M={expected.output_tokens} time=" in captured.err


# -- validation failures ----------------------------------------------------------------------


def _tiny_gru_config(tmp: Path, data_dir: Path) -> Path:
    return _small_config(tmp, data_dir, "gru-fr-en", 60, hidden_size=24)


def test_validation_fails_when_torch_weights_differ_from_the_graphs(
    tmp_path: Path, data_dir: Path
) -> None:
    import torch

    from cnmt.exporters import spec
    from cnmt.exporters.rnn import validate_export
    from cnmt.runtime.rnn import GruTranslator

    exported = _export("gru", _tiny_gru_config(tmp_path, data_dir), tmp_path / "gru")
    manifest = load_manifest(exported.out)
    validate_export(exported.built, exported.out, manifest, spec.GRU, GruTranslator)  # agrees
    with torch.no_grad():
        exported.built.model.decoder.gru.weight_hh_l0.mul_(1.5)
    with pytest.raises(CnmtRuntimeError, match=r"decoder output log_probs differs from torch"):
        validate_export(exported.built, exported.out, manifest, spec.GRU, GruTranslator)


def test_validation_with_zero_tolerance_catches_a_tiny_difference(
    tmp_path: Path, data_dir: Path
) -> None:
    import torch

    from cnmt.exporters import spec
    from cnmt.exporters.rnn import validate_export
    from cnmt.runtime.rnn import GruTranslator

    exported = _export("gru", _tiny_gru_config(tmp_path, data_dir), tmp_path / "gru")
    manifest = load_manifest(exported.out)
    with torch.no_grad():
        exported.built.model.decoder.out.bias[5] += 1e-6  # far below the family tolerance
    validate_export(exported.built, exported.out, manifest, spec.GRU, GruTranslator)
    with pytest.raises(CnmtRuntimeError, match=r"differs from torch by .*\(tolerance 0.0e\+00\)"):
        validate_export(
            exported.built, exported.out, manifest, spec.GRU, GruTranslator, tolerance=0.0
        )


def test_failed_export_leaves_no_output_directory(tmp_path: Path, data_dir: Path) -> None:
    import torch

    from cnmt.exporters.base import ExportRequest
    from cnmt.exporters.rnn import GruExporter

    class Drifting(GruExporter):
        """Writes correct graphs, then its torch model drifts before validation."""

        def write(self, built: Any, folder: Path, request: ExportRequest) -> Any:
            manifest = super().write(built, folder, request)
            with torch.no_grad():
                built.model.encoder.embedding.weight.mul_(-1.0)
            return manifest

    out = tmp_path / "gru"
    with pytest.raises(CnmtRuntimeError, match="export validation failed"):
        Drifting().export(ExportRequest(out_dir=out, config=_tiny_gru_config(tmp_path, data_dir)))
    assert not out.exists()
    assert list(tmp_path.iterdir()) == [tmp_path / "gru-fr-en.yaml"]  # no staging left behind


# -- OpenNMT-py checkpoints --------------------------------------------------------------------


def _opennmt_checkpoint(model: Any, src: list[str], tgt: list[str], layers: int) -> dict[str, Any]:
    """Our random module's weights under OpenNMT-py 3's names (written out literally)."""
    state = model.state_dict()
    onmt = {
        "encoder.embeddings.make_embedding.emb_luts.0.weight": state["encoder.embeddings.weight"],
        "decoder.embeddings.make_embedding.emb_luts.0.weight": state["decoder.embeddings.weight"],
        "decoder.attn.linear_in.weight": state["decoder.attn.linear_in.weight"],
        "decoder.attn.linear_out.weight": state["decoder.attn.linear_out.weight"],
    }
    for k in range(layers):
        for suffix in ("", "_reverse"):
            for kind in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                onmt[f"encoder.rnn.{kind}_l{k}{suffix}"] = state[f"encoder.rnn.{kind}_l{k}{suffix}"]
        for kind in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
            onmt[f"decoder.rnn.layers.{k}.{kind}"] = state[f"decoder.rnn.layers.{k}.{kind}"]
    return {
        "model": onmt,
        "generator": {"0.weight": state["generator.weight"], "0.bias": state["generator.bias"]},
        "vocab": {"src": src, "tgt": tgt},
        "opt": argparse.Namespace(encoder_type="brnn", layers=layers, global_attention="general"),
    }


@pytest.fixture(scope="module")
def opennmt(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Path, list[str], list[str]]:
    import torch

    from cnmt.exporters.rnn_models import BiLstmSeq2Seq, init_uniform

    src = ["<unk>", "<blank>", "<s>", "</s>", *[f"q{i}" for i in range(40)]]
    tgt = ["<unk>", "<blank>", "<s>", "</s>", *[f"w{i}" for i in range(50)]]
    model = BiLstmSeq2Seq(len(src), len(tgt), 16, 20, 2)
    init_uniform(model, 0.3, seed=5)
    model.eval()
    path = tmp_path_factory.mktemp("onmt") / "model_step_1000.pt"
    torch.save(_opennmt_checkpoint(model, src, tgt, 2), path)
    return model, path, src, tgt


def test_opennmt_checkpoint_exports_and_decodes_like_the_original_module(
    opennmt: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model, path, src, tgt = opennmt
    out = tmp_path / "onmt"
    assert main(["export", "--family", "bilstm", "--checkpoint", str(path), "--out", str(out)]) == 0
    assert "validated against torch: yes" in capsys.readouterr().out
    translator = load_translator(out)
    manifest = load_manifest(out)
    assert manifest.special_tokens == {"unk": 0, "pad": 1, "bos": 2, "eos": 3}
    assert (manifest.extra["hidden_size"], manifest.extra["layers"]) == (20, 2)
    for source in ([4, 5, 6], [10, 30, 7, 7, 40, 41, 43], [4]):
        expected = model.greedy(source, 2, 3, 250)
        assert translator.decode([source]).ids[0] == expected
    text = " ".join(src[i] for i in (10, 30, 7))
    assert translator.translate(text).text == " ".join(
        tgt[i] for i in model.greedy([10, 30, 7], 2, 3, 250)
    )


def test_opennmt_checkpoint_with_unsupported_parameters_is_refused(
    opennmt: Any, tmp_path: Path
) -> None:
    import torch

    from cnmt.exporters.base import ExportRequest
    from cnmt.exporters.rnn import BiLstmExporter

    model, _, src, tgt = opennmt
    checkpoint = _opennmt_checkpoint(model, src, tgt, 2)
    checkpoint["model"]["decoder.attn.v.weight"] = torch.zeros(1, 20)  # "mlp" attention
    path = tmp_path / "mlp.pt"
    torch.save(checkpoint, path)
    with pytest.raises(
        ConfigError, match=r"unsupported parameter 'decoder.attn.v.weight'.*general attention"
    ):
        BiLstmExporter().export(ExportRequest(out_dir=tmp_path / "out", checkpoint=path))


def test_opennmt_checkpoint_with_pickled_objects_is_refused(opennmt: Any, tmp_path: Path) -> None:
    import torch

    from cnmt.exporters.base import ExportRequest
    from cnmt.exporters.rnn import BiLstmExporter

    model, _, src, tgt = opennmt
    checkpoint = _opennmt_checkpoint(model, src, tgt, 2)
    checkpoint["vocab"] = {"src": Path("torchtext-field"), "tgt": tgt}  # not plain data
    path = tmp_path / "old.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.save(checkpoint, path)
    with pytest.raises(
        ConfigError, match=r"old.pt: cannot read as a plain-data OpenNMT-py checkpoint"
    ):
        BiLstmExporter().export(ExportRequest(out_dir=tmp_path / "out", checkpoint=path))


# -- the export command's usage errors ---------------------------------------------------------


def test_export_command_usage_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = str(tmp_path / "m")
    assert main(["export", "--family", "bilstm", "--out", out]) == 2
    assert (
        "needs --config FILE (e.g. --config models/bilstm-de-en) or --checkpoint"
        in capsys.readouterr().err
    )
    assert main(["export", "--family", "gru", "--config", "models/bilstm-de-en", "--out", out]) == 2
    assert "model.family is 'bilstm' but --family is 'gru'" in capsys.readouterr().err
    assert main(["export", "--family", "gru", "--config", "models/nope", "--out", out]) == 2
    assert "models/nope: no such config file" in capsys.readouterr().err
    assert not Path(out).exists()


def test_export_refuses_to_overwrite_without_the_flag(
    models: dict[str, Exported], capsys: pytest.CaptureFixture[str]
) -> None:
    exported = models["gru"]
    code = main(
        ["export", "--family", "gru", "--config", str(exported.config), "--out", str(exported.out)]
    )
    assert code == 2
    assert (
        "already exists and is not empty; choose another --out or pass --overwrite"
        in capsys.readouterr().err
    )


def test_missing_corpus_names_the_config_key(tmp_path: Path, data_dir: Path) -> None:
    from cnmt.exporters.base import ExportRequest
    from cnmt.exporters.rnn import GruExporter

    config = _small_config(
        tmp_path, data_dir, "gru-fr-en", 60, source_vocab={"corpus": str(tmp_path / "none.fr")}
    )
    with pytest.raises(ConfigError, match=r"model.source_vocab.corpus: .*none.fr not found"):
        GruExporter().export(ExportRequest(out_dir=tmp_path / "o", config=config))


def test_missing_bpe_codes_are_a_config_error_naming_the_data_directory(tmp_path: Path) -> None:
    import types

    from cnmt.exporters.rnn import BiLstmExporter

    built = types.SimpleNamespace(
        source_tokens=["<unk>", "a"],
        target_tokens=["<s>", "</s>", "a"],
        bpe_codes=str(tmp_path / "no-data" / "tokenizers" / "code"),
        assets={},
    )
    with pytest.raises(ConfigError, match="do not exist: they are read from the data directory"):
        BiLstmExporter().write(built, tmp_path, None)  # type: ignore[arg-type]
