"""MarianMT: export through optimum-onnx with validation, the ONNX Runtime decoder against
transformers (tokens, tokenizer, forced length, batching) and the errors users see."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from cnmt.errors import ConfigError
from cnmt.runtime import load_translator
from cnmt.runtime.manifest import load_manifest

pytestmark = pytest.mark.export

SMALL_CONFIG = "models/marian-en-zh-small"
REPO_CONFIGS = Path(__file__).resolve().parent.parent / "configs" / "models"
NEW_TOKENS = 20


@pytest.fixture(scope="module", autouse=True)
def _offline(data_dir: Path) -> Iterator[None]:
    """transformers never reaches the network here; the model configs read ${data}."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HF_HUB_OFFLINE", "1")
        patch.setenv("TRANSFORMERS_OFFLINE", "1")
        patch.setenv("CNMT_DATA", str(data_dir))
        yield


@dataclasses.dataclass(frozen=True)
class Exported:
    path: Path
    printed: str


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory, _offline: None) -> Exported:
    """A small random Marian EN-ZH exported (and validated) once for this module, by the CLI."""
    from cnmt.cli import main

    out = tmp_path_factory.mktemp("marian") / "small"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = main(["export", "--family", "marian", "--config", SMALL_CONFIG, "--out", str(out)])
    assert code == 0
    return Exported(out, printed.getvalue())


@pytest.fixture(scope="module")
def small_model(exported: Exported) -> Path:
    return exported.path


@pytest.fixture(scope="module")
def translator(small_model: Path):
    return load_translator(small_model, threads=1)


@pytest.fixture(scope="module")
def torch_side(small_model: Path):
    from transformers import MarianMTModel, MarianTokenizer

    source = small_model / "source"
    return MarianMTModel.from_pretrained(source).eval(), MarianTokenizer.from_pretrained(source)


@pytest.fixture(scope="module")
def tatoeba_english(data_dir: Path) -> list[str]:
    lines = (data_dir / "corpora" / "tatoeba-en-zh" / "all.en").read_text(encoding="utf-8")
    return [line for line in lines.splitlines() if line.strip()]


def _generate(model, input_ids: list[int], new_tokens: int, forced: bool = False) -> list[int]:
    import torch

    ids = torch.tensor([input_ids])
    extra = {"min_new_tokens": new_tokens} if forced else {}
    with torch.no_grad():
        out = model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            num_beams=1,
            do_sample=False,
            max_new_tokens=new_tokens,
            forced_eos_token_id=None,
            **extra,
        )[0, 1:].tolist()
    while out and out[-1] == model.config.pad_token_id:
        out.pop()
    return out


# --- export ----------------------------------------------------------------------------------


def test_export_writes_a_validated_manifest_with_tokenizer_files(small_model: Path) -> None:
    from cnmt.files import sha256_file

    manifest = load_manifest(small_model)
    assert manifest.family == "marian"
    assert set(manifest.graphs) == {"encoder", "decoder", "decoder_with_past"}
    assert {"source_spm", "target_spm", "vocab"} <= set(manifest.files)
    vocab = json.loads((small_model / "vocab.json").read_text(encoding="utf-8"))
    assert manifest.special_tokens["eos"] == vocab["</s>"] == 0
    assert manifest.special_tokens["pad"] == manifest.special_tokens["decoder_start"]
    assert manifest.special_tokens["pad"] == len(vocab) - 1 == manifest.extra["vocab_size"] - 1
    assert manifest.source_checksum == sha256_file(small_model / "source" / "model.safetensors")
    assert "past_key_values.0.encoder.key" in manifest.inputs["decoder_with_past"]
    report = manifest.extra["validation"]
    assert report["max_abs_logits_diff"] <= report["atol"]
    assert manifest.max_source_tokens == 511  # 512 positions, one for </s>


def test_tampered_decoder_graph_fails_validation_loudly(small_model: Path, tmp_path: Path) -> None:
    import onnx
    from onnx import numpy_helper

    from cnmt.exporters.marian import ExportValidationError, validate_export

    copy = tmp_path / "tampered"
    shutil.copytree(small_model, copy)
    path = copy / "decoder_with_past_model.onnx"
    graph = onnx.load(str(path))
    # Perturb the last layer norm: every step after the first must change its logits.
    target = next(
        t for t in graph.graph.initializer if "layer_norm" in t.name and "weight" in t.name
    )
    array = numpy_helper.to_array(target) * 1.5
    target.CopyFrom(numpy_helper.from_array(array.astype(np.float32), target.name))
    onnx.save(graph, str(path))
    with pytest.raises(ExportValidationError, match="decoder_with_past"):
        validate_export(copy / "source", copy, load_manifest(copy), ["I like green tea."])


def test_tokenizer_that_differs_from_transformers_fails_validation(
    small_model: Path, tmp_path: Path
) -> None:
    from cnmt.exporters.marian import ExportValidationError, validate_export

    copy = tmp_path / "swapped"
    shutil.copytree(small_model, copy)
    # The runtime reads the model directory's spm; transformers reads source/: make them differ.
    shutil.copyfile(copy / "target.spm", copy / "source.spm")
    with pytest.raises(ExportValidationError, match="tokenization"):
        validate_export(copy / "source", copy, load_manifest(copy), ["Where is the station?"])


# --- decoding vs transformers ----------------------------------------------------------------


def test_greedy_tokens_equal_transformers_generate_on_real_sentences(
    translator, torch_side, tatoeba_english: list[str]
) -> None:
    model, hf_tokenizer = torch_side
    texts = [tatoeba_english[i] for i in (0, 7, 123, 4567, 20000, 28000)]
    for text in texts:
        expected = _generate(model, hf_tokenizer(text).input_ids, NEW_TOKENS)
        assert translator.generate_ids([text], NEW_TOKENS) == [expected], text


def test_translation_text_is_transformers_decode_of_the_same_tokens(
    small_model: Path, torch_side, tatoeba_english: list[str]
) -> None:
    from cnmt.runtime.marian import MarianTranslator

    model, hf_tokenizer = torch_side
    capped = MarianTranslator(small_model, load_manifest(small_model), max_output_tokens=30)
    text = tatoeba_english[42]
    expected = _generate(model, hf_tokenizer(text).input_ids, 30)
    result = capped.translate(text)
    assert result.text == hf_tokenizer.decode(expected, skip_special_tokens=True)
    assert result.source_tokens == len(hf_tokenizer(text).input_ids) - 1
    assert result.output_tokens == len([t for t in expected if t != model.config.eos_token_id])


def test_forced_decode_yields_exactly_m_tokens_as_generate_with_min_length(
    translator, torch_side
) -> None:
    model, _ = torch_side
    for n, m in ((3, 1), (12, 9), (30, 45)):
        source = translator.forced_input(n)
        assert source.shape == (1, n + 1)
        ours = translator.decoder.greedy(source, np.ones_like(source), m, forced=True)
        assert ours.shape == (1, m)
        assert translator.decoder.eos_id not in ours
        assert ours[0].tolist() == _generate(model, source[0].tolist(), m, forced=True)
        translator.run_forced(n, m)  # the profiler's entry point runs the same work


def test_batched_translation_equals_one_at_a_time(translator, tatoeba_english: list[str]) -> None:
    texts = [tatoeba_english[i] for i in (3, 500, 9000)] + [
        "The General Assembly decided to include the item in the provisional agenda of its "
        "sixty-second session."
    ]
    batched = translator.translate_batch(texts)
    single = [translator.translate(t) for t in texts]
    assert [r.text for r in batched] == [r.text for r in single]
    assert [r.output_tokens for r in batched] == [r.output_tokens for r in single]
    assert [r.source_tokens for r in batched] == [r.source_tokens for r in single]
    ids_batched = translator.generate_ids(texts, NEW_TOKENS)
    assert ids_batched == [translator.generate_ids([t], NEW_TOKENS)[0] for t in texts]


# --- tokenizer -------------------------------------------------------------------------------


def test_sentencepiece_tokenization_equals_marian_tokenizer(
    translator, torch_side, tatoeba_english: list[str]
) -> None:
    _, hf_tokenizer = torch_side
    tricky = [
        "Hello world.",
        "a </s> b<unk>c <pad>",
        ">>cmn_Hans<< Where is it?",
        "  leading and   inner   spaces  ",
        "naïve café ☃ 😀 你好",
        "\tTabs\tand\nnewlines",
        "1,234.56 km/h -- (really?)",
    ]
    texts = tatoeba_english[::150] + tricky
    for text in texts:
        assert translator.tokenizer.encode(text) == hf_tokenizer(text).input_ids, text


def test_decode_equals_marian_tokenizer_decode_skipping_specials(translator, torch_side) -> None:
    _, hf_tokenizer = torch_side
    tokenizer = translator.tokenizer
    rng = np.random.default_rng(0)
    size = len(tokenizer.vocab)
    specials = [tokenizer.eos_id, tokenizer.unk_id, tokenizer.pad_id]
    for _ in range(50):
        ids = rng.integers(0, size, rng.integers(1, 25)).tolist()
        ids[rng.integers(0, len(ids))] = int(rng.choice(specials))
        assert tokenizer.decode(ids) == hf_tokenizer.decode(ids, skip_special_tokens=True), ids


def test_trained_tokenizer_fills_the_model_vocabulary_exactly(
    tmp_path: Path, data_dir: Path
) -> None:
    from cnmt.exporters.marian import TokenizerTraining, train_tokenizer

    corpus = data_dir / "corpora" / "tatoeba-en-zh"
    spec = TokenizerTraining(
        source_files=[str(corpus / "all.en")],
        target_files=[str(corpus / "all.zh")],
        target_vocab_size=3000,
        source_vocab_size=None,
        max_sentences=8000,
    )
    assert train_tokenizer(tmp_path, spec, model_vocab_size=4500) == 4500
    vocab = json.loads((tmp_path / "vocab.json").read_text(encoding="utf-8"))
    assert sorted(vocab.values()) == list(range(4500))
    assert vocab["</s>"] == 0 and vocab["<unk>"] == 1 and vocab["<pad>"] == 4499


# --- errors ----------------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["", "   ", "\n\t"])
def test_empty_text_is_a_clear_error(translator, text: str) -> None:
    with pytest.raises(ConfigError, match="empty text"):
        translator.translate(text)
    with pytest.raises(ConfigError, match="empty text"):
        translator.translate_batch(["fine", text])


def test_input_longer_than_the_model_accepts_is_an_error_not_truncated(translator) -> None:
    text = " ".join(["international"] * 400)
    assert translator.count_source_tokens(text) > translator.max_source_tokens
    with pytest.raises(ConfigError, match=r"longer than the 511 tokens.*split the text"):
        translator.translate(text)
    with pytest.raises(ConfigError, match="n_tokens=512"):
        translator.run_forced(512, 4)
    with pytest.raises(ConfigError, match="m_tokens=0"):
        translator.run_forced(4, 0)


@pytest.mark.parametrize(
    ("file", "damage", "message"),
    [
        ("target.spm", "delete", r"target\.spm.*missing"),
        ("source.spm", "garbage", r"source\.spm: not a valid sentencepiece model"),
        ("vocab.json", "truncate", r"vocab\.json:\d+:\d+: not a tokenizer file: invalid JSON"),
        ("decoder_with_past_model.onnx", "garbage", r"decoder_with_past_model\.onnx.*cannot load"),
        ("manifest.json", "delete", r"manifest\.json: not found"),
    ],
)
def test_missing_or_corrupt_model_files_name_the_file_and_the_fix(
    small_model: Path, tmp_path: Path, file: str, damage: str, message: str
) -> None:
    copy = tmp_path / "model"
    shutil.copytree(small_model, copy, ignore=shutil.ignore_patterns("source"))
    if damage == "delete":
        (copy / file).unlink()
    elif damage == "truncate":
        (copy / file).write_text('{"</s>": 0, "<unk>": ', encoding="utf-8")
    else:
        (copy / file).write_bytes(b"\x00not a real file\xff")
    with pytest.raises(ConfigError, match=message) as caught:
        load_translator(copy)
    assert "export" in str(caught.value)


def test_hub_id_offline_says_how_to_get_a_local_directory(tmp_path: Path) -> None:
    from cnmt.exporters.base import ExportRequest
    from cnmt.exporters.marian import MarianExporter

    request = ExportRequest(out_dir=tmp_path / "out", pretrained="Helsinki-NLP/opus-mt-en-zh")
    with pytest.raises(ConfigError, match=r"HF_HUB_OFFLINE.*local DIR"):
        MarianExporter().export(request)
    assert not (tmp_path / "out").exists()


def test_pretrained_path_that_is_not_a_model_directory_is_an_error(tmp_path: Path) -> None:
    from cnmt.exporters.marian import resolve_pretrained

    with pytest.raises(ConfigError, match="no config.json"):
        resolve_pretrained(str(tmp_path))
    with pytest.raises(ConfigError, match="no such directory"):
        resolve_pretrained(str(tmp_path / "missing" / "model"))


def test_export_and_translate_commands_report_the_validated_model(
    exported: Exported, capsys: pytest.CaptureFixture[str]
) -> None:
    from cnmt.cli import main

    assert "exported marian model 'small'" in exported.printed
    assert "validated against torch: yes" in exported.printed
    assert main(["translate", "--model", str(exported.path), "--verbose", "I like tea."]) == 0
    printed = capsys.readouterr()
    assert "# N=4 M=" in printed.out + printed.err


def test_export_command_rejects_a_bare_checkpoint_for_marian(tmp_path: Path) -> None:
    from cnmt.cli import main

    checkpoint = tmp_path / "weights.pt"
    checkpoint.write_bytes(b"")
    args = ["export", "--family", "marian", "--checkpoint", str(checkpoint), "--out"]
    assert main([*args, str(tmp_path / "out")]) == 2


# --- a real OPUS-MT tokenizer ----------------------------------------------------------------


def test_real_opus_mt_sentencepiece_models_tokenize_like_transformers(data_dir: Path) -> None:
    from transformers import MarianTokenizer as HfMarianTokenizer

    from cnmt.runtime.marian import MarianTokenizer

    folder = data_dir / "tokenizers" / "opus-mt-tc-big-fr-en"
    ours = MarianTokenizer(
        folder / "source.spm",
        folder / "target.spm",
        folder / "vocab.json",
        tokenizer_config=folder / "tokenizer_config.json",
    )
    reference = HfMarianTokenizer.from_pretrained(folder)
    french = (data_dir / "corpora" / "tatoeba-fr-en" / "all.fr").read_text(encoding="utf-8")
    for text in french.splitlines()[::2000] + ["J'ai adoré l'Angleterre. </s> ☃"]:
        assert ours.encode(text) == reference(text).input_ids, text
    rng = np.random.default_rng(1)
    for _ in range(30):
        ids = rng.integers(0, len(ours.vocab), 20).tolist() + [ours.eos_id, ours.pad_id]
        assert ours.decode(ids) == reference.decode(ids, skip_special_tokens=True), ids


def test_export_with_a_user_supplied_tokenizer_directory(tmp_path: Path, data_dir: Path) -> None:
    """A random model around the real OPUS-MT fr-en tokenizer (</s> is id 43311 there)."""
    import yaml

    from cnmt.exporters.base import ExportRequest
    from cnmt.exporters.marian import MarianExporter

    config = tmp_path / "fr-en.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "extends": str(REPO_CONFIGS / "marian-en-zh-small.yaml"),
                "marian": {
                    "tokenizer_dir": str(data_dir / "tokenizers" / "opus-mt-tc-big-fr-en"),
                    "train_tokenizer": None,
                    "dims": {
                        "d_model": 16,
                        "attention_heads": 2,
                        "ffn_dim": 32,
                        "encoder_layers": 1,
                        "decoder_layers": 1,
                    },
                },
            }
        ),
        encoding="utf-8",
    )
    out = tmp_path / "fr-en"
    manifest = MarianExporter().export(ExportRequest(out_dir=out, config=config))
    assert manifest.special_tokens["eos"] == 43311
    assert manifest.extra["vocab_size"] == 53017
    translator = load_translator(out)
    assert translator.translate("Je voudrais un café, s'il vous plaît.").source_tokens > 0
