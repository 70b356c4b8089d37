"""Runtime core without torch: manifests, sessions and providers, model lookup, registry hooks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest

import cnmt
from cnmt.errors import ConfigError
from cnmt.runtime.manifest import (
    MANIFEST_NAME,
    Manifest,
    file_path,
    graph_path,
    load_manifest,
    write_manifest,
)

REPO_ROOT = Path(__file__).resolve().parent.parent


def _manifest(**changes: object) -> Manifest:
    fields: dict[str, object] = dict(
        family="gru",
        name="toy",
        graphs={"encoder": "encoder.onnx", "decoder": "decoder.onnx"},
        inputs={"encoder": ["src_ids", "src_lengths"], "decoder": ["input_ids", "hidden"]},
        outputs={"encoder": ["hidden"], "decoder": ["log_probs", "hidden_out"]},
        files={"source_vocab": "vocab/source.json"},
        special_tokens={"bos": 2, "eos": 3},
        opset=17,
        source_checksum="ab" * 32,
        max_source_tokens=64,
        max_output_tokens=80,
        extra={"source_language": "fr", "nested": {"a": [1, 2]}},
    )
    fields.update(changes)
    return Manifest(**fields)  # type: ignore[arg-type]


def _model_dir(tmp_path: Path, manifest: Manifest | None = None) -> Path:
    folder = tmp_path / "model"
    (folder / "vocab").mkdir(parents=True)
    for name in ("encoder.onnx", "decoder.onnx", "vocab/source.json"):
        (folder / name).write_bytes(b"x")
    write_manifest(folder, manifest or _manifest())
    return folder


# -- manifest ---------------------------------------------------------------------------------


def test_manifest_round_trips_through_json(tmp_path: Path) -> None:
    folder = _model_dir(tmp_path)
    loaded = load_manifest(folder)
    assert loaded == _manifest()
    assert graph_path(folder, loaded, "decoder") == folder / "decoder.onnx"
    assert file_path(folder, loaded, "source_vocab") == folder / "vocab" / "source.json"
    assert loaded.special("eos") == 3


def test_missing_model_directory_names_it_and_the_export_command(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"no such model directory.*cnmt export"):
        load_manifest(tmp_path / "absent")


def test_directory_without_manifest_is_not_a_model(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=rf"{MANIFEST_NAME}: not found.*cnmt export"):
        load_manifest(tmp_path)


def test_corrupt_manifest_json_names_file_and_line(tmp_path: Path) -> None:
    folder = _model_dir(tmp_path)
    (folder / MANIFEST_NAME).write_text('{"family": "gru",\n  oops}', encoding="utf-8")
    with pytest.raises(
        ConfigError, match=r"manifest.json:2:\d+: not a model manifest: invalid JSON"
    ):
        load_manifest(folder)


def test_manifest_with_missing_field_names_the_key(tmp_path: Path) -> None:
    folder = _model_dir(tmp_path)
    data = json.loads((folder / MANIFEST_NAME).read_text(encoding="utf-8"))
    del data["opset"]
    (folder / MANIFEST_NAME).write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(ConfigError, match=r"opset: missing required key"):
        load_manifest(folder)


def test_manifest_of_a_newer_format_asks_for_a_re_export(tmp_path: Path) -> None:
    folder = _model_dir(tmp_path)
    data = json.loads((folder / MANIFEST_NAME).read_text(encoding="utf-8"))
    data["format_version"] = 99
    (folder / MANIFEST_NAME).write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(ConfigError, match=r"format_version 99 is not supported.*re-export"):
        load_manifest(folder)


def test_missing_graph_file_is_named(tmp_path: Path) -> None:
    folder = _model_dir(tmp_path)
    (folder / "decoder.onnx").unlink()
    with pytest.raises(ConfigError, match=r"graph 'decoder': .*decoder.onnx is missing"):
        load_manifest(folder)


def test_manifest_paths_must_stay_inside_the_model_directory(tmp_path: Path) -> None:
    folder = _model_dir(tmp_path, _manifest(files={"source_vocab": "../elsewhere.json"}))
    with pytest.raises(ConfigError, match=r"must be a path inside the model directory"):
        load_manifest(folder)


def test_unknown_graph_role_lists_the_roles_present(tmp_path: Path) -> None:
    folder = _model_dir(tmp_path)
    with pytest.raises(
        ConfigError, match=r"no graph 'decoder_with_past' \(has: decoder, encoder\)"
    ):
        graph_path(folder, load_manifest(folder), "decoder_with_past")


# -- sessions and providers -------------------------------------------------------------------


def test_unknown_provider_fails_listing_valid_names() -> None:
    from cnmt.runtime.session import resolve_providers

    with pytest.raises(
        ConfigError,
        match=r"unknown execution provider 'CUDAProvider'; valid: .*CPUExecutionProvider",
    ):
        resolve_providers(["CUDAProvider"])


def test_unavailable_provider_falls_back_with_a_warning_naming_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import onnxruntime

    from cnmt.runtime.session import ProviderFallbackWarning, resolve_providers

    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: ["CPUExecutionProvider"])
    with pytest.warns(ProviderFallbackWarning) as caught:
        chosen = resolve_providers(
            ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
        )
    assert chosen == ["CPUExecutionProvider"]
    messages = [str(w.message) for w in caught]
    assert len(messages) == 2
    assert "TensorrtExecutionProvider is not available" in messages[0]
    assert "CUDAExecutionProvider is not available" in messages[1]


def test_only_unavailable_providers_fall_back_to_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    import onnxruntime

    from cnmt.runtime.session import ProviderFallbackWarning, resolve_providers

    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: ["CPUExecutionProvider"])
    with pytest.warns(
        ProviderFallbackWarning, match="CUDAExecutionProvider.*falling back to CPUExecutionProvider"
    ):
        assert resolve_providers(["CUDAExecutionProvider"]) == ["CPUExecutionProvider"]


def test_available_providers_pass_without_warning() -> None:
    from cnmt.runtime.session import resolve_providers

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert resolve_providers(["CPUExecutionProvider", "CPUExecutionProvider"]) == [
            "CPUExecutionProvider"
        ]


def test_session_config_parses_cli_values_and_rejects_bad_threads() -> None:
    from cnmt.runtime.session import session_config

    config = session_config("CUDAExecutionProvider, CPUExecutionProvider", threads=2)
    assert config.providers == ("CUDAExecutionProvider", "CPUExecutionProvider")
    assert config.intra_op_threads == 2
    assert session_config(None).providers == ("CPUExecutionProvider",)
    with pytest.raises(ConfigError, match="thread counts"):
        session_config(None, threads=-1)


def test_corrupt_graph_file_is_a_config_error_naming_it(tmp_path: Path) -> None:
    from cnmt.runtime.session import create_session

    graph = tmp_path / "encoder.onnx"
    graph.write_bytes(b"not a protobuf at all")
    with pytest.raises(
        ConfigError, match=r"encoder.onnx: onnxruntime cannot load this graph.*cnmt export"
    ):
        create_session(graph)
    with pytest.raises(ConfigError, match=r"missing.onnx: ONNX graph not found"):
        create_session(tmp_path / "missing.onnx")


def test_manifest_without_a_precision_reads_as_fp32_and_an_unknown_one_is_refused(
    tmp_path: Path,
) -> None:
    folder = _model_dir(tmp_path, _manifest(precision="int8"))
    assert load_manifest(folder).precision == "int8"
    data = json.loads((folder / MANIFEST_NAME).read_text(encoding="utf-8"))
    del data["precision"]  # written before precisions existed
    (folder / MANIFEST_NAME).write_text(json.dumps(data), encoding="utf-8")
    assert load_manifest(folder).precision == "fp32"
    data["precision"] = "int4"
    (folder / MANIFEST_NAME).write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(ConfigError, match=r"precision is 'int4'; this cnmt reads fp32, int8, fp16"):
        load_manifest(folder)


# -- model lookup -----------------------------------------------------------------------------


def test_unknown_model_name_lists_the_built_in_models() -> None:
    from cnmt.runtime import load_translator

    with pytest.raises(
        ConfigError,
        match=(
            r"unknown model .cn2fr.*built-in model: bergamot-en-pt, bergamot-en-pt-int8, "
            "bergamot-pt-en, bergamot-pt-en-int8, bilstm-de-en, bilstm-de-en-int8, cn2en, "
            "cn2en-int8, gru-fr-en, gru-fr-en-int8"
        ),
    ):
        load_translator("cn2fr")


def test_missing_model_path_says_no_such_directory(tmp_path: Path) -> None:
    from cnmt.runtime import load_translator

    with pytest.raises(ConfigError, match=r"no such model directory"):
        load_translator(str(tmp_path / "models" / "absent"))


def test_model_directory_of_an_unknown_family_lists_known_families(tmp_path: Path) -> None:
    from cnmt.runtime import load_translator

    folder = _model_dir(tmp_path, _manifest(family="transformer-xl"))
    with pytest.raises(
        ConfigError,
        match=r"unknown model family 'transformer-xl'; known: .*bilstm.*cn2en.*gru",
    ):
        load_translator(folder)


def test_translate_command_rejects_unknown_model_with_exit_2(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from cnmt.cli import main

    assert main(["translate", "--model", "nonexistent-model", "hallo"]) == 2
    assert "unknown model 'nonexistent-model'" in capsys.readouterr().err


def test_translate_command_rejects_empty_text(capsys: pytest.CaptureFixture[str]) -> None:
    from cnmt.cli import main

    assert main(["translate", "--model", "cn2en", "ok", "   "]) == 2
    assert "text 2 is empty" in capsys.readouterr().err


def test_export_command_lists_families_for_an_unknown_one(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    from cnmt.cli import main

    assert main(["export", "--family", "lstm", "--out", str(tmp_path / "m")]) == 2
    err = capsys.readouterr().err
    valid = err.split("unknown model family 'lstm'; known: ")[1].strip().split(", ")
    assert {"bilstm", "cn2en", "gru"} <= set(valid)


# -- registry hooks ---------------------------------------------------------------------------


def test_plugins_can_add_families_through_both_hooks(fresh_registry: None) -> None:
    from cnmt.registry import Components, get_plugin_manager
    from cnmt.runtime.base import Translator

    class ToyTranslator(Translator):
        """A family offered by a third-party plugin."""

        family = name = "toy"

    class ToyExporter:
        """Its exporter."""

        family = name = "toy"

    class Plugin:
        @cnmt.hookimpl
        def cnmt_register_translators(self, register):  # noqa: ANN001
            register(ToyTranslator)

        @cnmt.hookimpl
        def cnmt_register_exporters(self, register):  # noqa: ANN001
            register(ToyExporter)

    pm = get_plugin_manager()
    pm.register(Plugin(), name="toy-plugin")
    components = Components(pm)
    assert components.get("translator", "toy").cls is ToyTranslator
    assert components.get("exporter", "toy").plugin == "toy-plugin"
    assert {"bilstm", "gru", "cn2en"} <= set(components.names("translator"))
    assert {"bilstm", "gru", "cn2en"} <= set(components.names("exporter"))


def test_plugins_command_lists_model_families(capsys: pytest.CaptureFixture[str]) -> None:
    from cnmt.cli import main

    assert main(["plugins"]) == 0
    rows = [line.split()[:2] for line in capsys.readouterr().out.splitlines()]
    for family in ("bilstm", "gru", "cn2en"):
        assert ["translator", family] in rows
        assert ["exporter", family] in rows


# -- the runtime needs neither torch nor (until a session opens) onnxruntime ------------------

NO_TORCH = textwrap.dedent(
    """
    import sys
    sys.modules["torch"] = None  # any `import torch` now raises ImportError
    import cnmt.runtime, cnmt.runtime.rnn, cnmt.runtime.tokenizers, cnmt.runtime.models
    import cnmt.exporters.rnn, cnmt.exporters.cn2en, cnmt.exporters.model_config
    from cnmt.registry import get_components
    print(",".join(get_components().names("translator")))
    from cnmt.errors import ConfigError
    try:
        cnmt.runtime.load_translator("cn2en")
    except ConfigError as exc:
        print(exc)
    from cnmt.exporters.builtins import ensure_exported
    try:
        ensure_exported("cn2en")
    except ConfigError as exc:
        print(exc)
    """
)


def test_runtime_and_registry_import_without_torch(tmp_path: Path) -> None:
    env = dict(os.environ, CNMT_CACHE=str(tmp_path / "cache"), PYTHONWARNINGS="ignore")
    done = subprocess.run(
        [sys.executable, "-P", "-c", NO_TORCH],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO_ROOT,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert {"bilstm", "cn2en", "gru"} <= set(lines[0].split(","))
    # The runtime opens a built-in model only from the cache, and says how to fill it.
    assert "is not exported into the model cache yet" in lines[1]
    assert "cnmt export --builtin cn2en" in lines[1]
    # Exporting it needs torch: the message says exactly what to install.
    assert "needs torch, which is not installed" in lines[2]
    assert "pip install 'cnmt[export]'" in lines[2]
    # The first use says, in one line, that it exports once and where to.
    cache = tmp_path / "cache" / "models" / "cn2en"
    assert f"cnmt: exporting cn2en into {cache}, once" in done.stderr


def test_missing_onnxruntime_says_what_to_install() -> None:
    code = (
        "import sys; sys.modules['onnxruntime'] = None\n"
        "from cnmt.runtime.session import create_session\n"
        "from cnmt.errors import ConfigError\n"
        "try:\n    create_session('x.onnx')\nexcept ConfigError as exc:\n    print(exc)\n"
    )
    done = subprocess.run(
        [sys.executable, "-P", "-c", code], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert "onnxruntime is not installed" in done.stdout
    assert "pip install 'cnmt[cpu]'" in done.stdout


def test_builtin_model_name_is_not_shadowed_by_a_same_named_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from cnmt.runtime import models

    (tmp_path / "cn2en").mkdir()  # e.g. where the user unpacked the cn2en wheel
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CNMT_CACHE", str(tmp_path / "empty-cache"))
    # The built-in is looked up in the cache, not in the same-named folder.
    with pytest.raises(ConfigError, match="built-in model 'cn2en'.*not exported"):
        models.load_translator("cn2en")


def test_each_built_in_model_names_its_int8_variant_and_back() -> None:
    from cnmt.runtime.models import BUILTIN_MODELS, builtin_dir, builtin_variant

    assert builtin_variant("cn2en", "int8") == "cn2en-int8"
    assert builtin_variant("cn2en-int8", "fp32") == "cn2en"
    assert builtin_variant("cn2en-int8", "int8") == "cn2en-int8"
    assert BUILTIN_MODELS["cn2en-int8"].precision == "int8"
    assert builtin_dir("cn2en-int8") != builtin_dir("cn2en")
    for name in ("gru-fr-en", "bilstm-de-en", "bergamot-en-pt", "bergamot-pt-en"):
        twin = BUILTIN_MODELS[builtin_variant(name, "int8")]
        assert (twin.name, twin.precision) == (f"{name}-int8", "int8")
        assert (twin.family, twin.pretrained) == (
            BUILTIN_MODELS[name].family,
            BUILTIN_MODELS[name].pretrained,
        )
    with pytest.raises(ConfigError, match=r"unknown built-in model 'opus'"):
        builtin_variant("opus", "int8")
