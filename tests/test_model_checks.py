"""Model directories and texts the model cannot read (issue 12): special ids and limits checked
at load time, files confined to the model directory, and a text with no known token refused
(422 at the gateway) instead of translated from nothing. The RNN translator runs here on stand-in
sessions (only their input and output names and shapes are read at load time), so no ONNX
model is needed."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from cnmt.errors import ConfigError
from cnmt.runtime.manifest import (
    MAX_TOKENS_LIMIT,
    Manifest,
    load_manifest,
    write_manifest,
)
from cnmt.runtime.rnn import Cn2enTranslator, GruTranslator
from cnmt.runtime.tokenizers import Cn2enTokenizer, TextCodec, Vocabulary, WordTokenizer


@dataclasses.dataclass
class Port:
    name: str
    shape: list[Any] = dataclasses.field(default_factory=lambda: ["batch", "vocab"])


class StandInSession:
    """What a translator reads of an ONNX Runtime session when it loads: names and shapes."""

    def __init__(self, inputs: list[str], outputs: list[Port]) -> None:
        self.inputs = [Port(n) for n in inputs]
        self.outputs = outputs

    def get_inputs(self) -> list[Port]:
        return self.inputs

    def get_outputs(self) -> list[Port]:
        return self.outputs


SOURCE = ["<s>", "</s>", "我", "们", "走", "吧", "。"]
TARGET = ["<s>", "</s>", "let's", "go", "."]  # 5 ids: the stand-in decoder scores 5 by default


def manifest(**changes: Any) -> Manifest:
    values: dict[str, Any] = dict(
        family="cn2en",
        name="toy",
        graphs={"encoder": "encoder.onnx", "decoder": "decoder.onnx"},
        inputs={"encoder": ["src_ids", "src_lengths"], "decoder": ["input_ids", "hidden"]},
        outputs={"encoder": ["hidden"], "decoder": ["log_probs", "hidden_out"]},
        files={"source_vocab": "source.json", "target_vocab": "target.json"},
        special_tokens={"bos": 0, "eos": 1},
        opset=17,
        source_checksum="ab" * 32,
        max_source_tokens=64,
        max_output_tokens=80,
        extra={"source_eos": True},
    )
    values.update(changes)
    return Manifest(**values)


def translator(
    cls: type[GruTranslator] = Cn2enTranslator, decoder_width: Any = 5, **changes: Any
) -> GruTranslator:
    m = manifest(**changes)
    encoder = StandInSession(["src_ids", "src_lengths"], [Port("hidden")])
    decoder = StandInSession(
        ["input_ids", "hidden"], [Port("log_probs", ["batch", decoder_width]), Port("hidden_out")]
    )
    if cls is Cn2enTranslator:
        tokenizer: Any = Cn2enTokenizer()
        source = TextCodec(tokenizer, Vocabulary(SOURCE), None)
        target = TextCodec(tokenizer, Vocabulary(TARGET), None)
    else:
        unk = m.special_tokens.get("unk")
        source = TextCodec(WordTokenizer("fr"), Vocabulary(SOURCE), unk)
        target = TextCodec(WordTokenizer("en"), Vocabulary(TARGET), unk)
    return cls(m, encoder, decoder, source, target, bool(m.extra.get("source_eos")))


# --- texts the model cannot read ------------------------------------------------------------


@pytest.mark.parametrize("text", ["😀🙂", "hello world", "\x1b[0m"])
def test_a_text_with_no_token_the_model_knows_is_refused_naming_its_tokens(text: str) -> None:
    """Before: cn2en drops unknown tokens, so such a text became N = 0 tokens (EOS alone) and
    got an invented translation ("what is the")."""
    model = translator()
    with pytest.raises(ConfigError, match="no token model 'toy' knows") as error:
        model.count_source_tokens(text)
    first = model.source.tokens(text)[0]
    assert repr(first) in str(error.value)  # names what it could not read, escapes visible
    assert "\x1b" not in str(error.value)
    assert model.count_source_tokens("我们走吧😀") == 4  # one known token is enough


def test_with_an_unk_token_a_text_of_only_unknown_tokens_is_refused_too() -> None:
    model = translator(GruTranslator, family="gru", special_tokens={"bos": 0, "eos": 1, "unk": 2})
    with pytest.raises(ConfigError, match="'bonjour' is not in its source vocabulary"):
        model.count_source_tokens("bonjour")


# --- the manifest checked against vocabularies and graphs -----------------------------------


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (dict(special_tokens={"bos": 0, "eos": 5000}), "special_tokens.eos is 5000, outside"),
        (dict(special_tokens={"bos": 99, "eos": 1}), "special_tokens.bos is 99, outside"),
        (
            dict(special_tokens={"bos": 0, "eos": 1, "pad": 7}),
            "special_tokens.pad is 7, outside the source vocabulary's ids 0..6",
        ),
        (dict(decoder_width=300), "scores 300 target tokens but the target vocabulary has 5"),
    ],
)
def test_special_ids_and_graph_width_are_checked_at_load_time(
    changes: dict[str, Any], message: str
) -> None:
    """Before: an out-of-range eos started a system that answered every request with 500 and
    ONNX Runtime internals."""
    with pytest.raises(ConfigError, match=message):
        translator(**changes)
    translator(decoder_width="vocab")  # a symbolic width cannot be checked: accepted


def model_dir(tmp_path: Path, m: Manifest | None = None) -> Path:
    folder = tmp_path / "model"
    folder.mkdir()
    for name in ("encoder.onnx", "decoder.onnx", "source.json", "target.json"):
        (folder / name).write_bytes(b"x")
    write_manifest(folder, m or manifest())
    return folder


@pytest.mark.parametrize("key", ["max_source_tokens", "max_output_tokens"])
def test_a_huge_token_limit_in_a_manifest_is_refused(tmp_path: Path, key: str) -> None:
    folder = model_dir(tmp_path)
    text = (
        (folder / "manifest.json")
        .read_text()
        .replace(f'"{key}": {getattr(manifest(), key)}', f'"{key}": 1000000000')
    )
    (folder / "manifest.json").write_text(text)
    with pytest.raises(ConfigError, match=f"{key} is 1000000000, must be between 1 and"):
        load_manifest(folder)
    assert MAX_TOKENS_LIMIT >= 1000  # the built-in cn2en declares 1000 output tokens


def test_a_vocabulary_reached_through_a_symlink_out_of_the_model_directory_is_refused(
    tmp_path: Path,
) -> None:
    folder = model_dir(tmp_path)
    outside = tmp_path / "elsewhere.json"
    outside.write_text('["a"]')
    (folder / "source.json").unlink()
    (folder / "source.json").symlink_to(outside)
    with pytest.raises(ConfigError, match="symlink that leads out of the model directory"):
        load_manifest(folder)
    (folder / "source.json").unlink()
    (folder / "inner.json").write_text('["a"]')
    (folder / "source.json").symlink_to(folder / "inner.json")  # inside: fine
    load_manifest(folder)


def test_the_real_cn2en_model_refuses_a_text_it_cannot_read() -> None:
    from cnmt.runtime.models import builtin_dir

    if not (builtin_dir("cn2en") / "manifest.json").is_file():
        pytest.skip("cn2en is not exported in this cache (scripts/install-cn2en)")
    from cnmt.runtime import load_translator

    model = load_translator("cn2en")
    with pytest.raises(ConfigError, match="'😀' is not in its source vocabulary"):
        model.translate("😀")
    assert model.translate("我们走吧。").text
