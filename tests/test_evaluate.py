"""`cnmt evaluate`: sacrebleu scores, detokenization per family, length statistics, errors."""

from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from cnmt.cli import main
from cnmt.errors import ConfigError
from cnmt.runtime.base import Translation

needs_sacrebleu = pytest.mark.skipif(
    importlib.util.find_spec("sacrebleu") is None, reason="needs cnmt[eval] (sacrebleu)"
)


@dataclass
class FakeManifest:
    family: str
    name: str = "fake"
    extra: dict[str, Any] = field(default_factory=lambda: {"target_language": "en"})
    files: dict[str, str] = field(default_factory=dict)


class EchoTranslator:
    """Translates by a lookup table; counts tokens as words; refuses texts it does not know."""

    def __init__(self, family: str, table: dict[str, str]) -> None:
        self.manifest = FakeManifest(family)
        self.table = table

    def translate(self, text: str) -> Translation:
        if text not in self.table:
            raise ConfigError(f"text has too many source tokens: {text!r}")
        out = self.table[text]
        return Translation(out, len(text.split()), len(out.split()), 0.0)

    def count_target_tokens(self, text: str) -> int:
        return len(text.split())


def test_word_level_output_gets_its_punctuation_attached_back() -> None:
    from cnmt.experiments.quality import detokenize_words

    assert detokenize_words("let's go .") == "let's go."
    assert detokenize_words("i don't know , tom !") == "i don't know, tom!"
    assert detokenize_words("( yes ) 50 %") == "(yes) 50%"


def test_linear_fit_recovers_a_line_and_reports_its_error() -> None:
    from cnmt.experiments.quality import linear_fit

    fit = linear_fit([1, 2, 3, 4], [3, 5, 7, 9])
    assert fit["gamma"] == pytest.approx(2.0)
    assert fit["delta"] == pytest.approx(1.0)
    assert fit["mae"] == pytest.approx(0.0, abs=1e-9)


@needs_sacrebleu
def test_perfect_translations_score_100_and_lengths_match_the_references() -> None:
    from cnmt.experiments.quality import evaluate

    refs = ["The cat sat on the mat.", "It is raining today in Lisbon."]
    translator = EchoTranslator("bergamot", {"a b c": refs[0], "d e f g": refs[1]})
    result = evaluate(translator, ["a b c", "d e f g"], refs)
    assert result["bleu"] == pytest.approx(100.0)
    assert result["chrf"] == pytest.approx(100.0)
    assert result["lengths"]["m_over_reference"] == pytest.approx(1.0)
    assert result["lengths"]["mean_n"] == pytest.approx(3.5)
    assert result["sentences"] == 2 and not result["refused"]


@needs_sacrebleu
def test_word_families_are_scored_detokenized_and_case_insensitively() -> None:
    from cnmt.experiments.quality import evaluate

    translator = EchoTranslator("cn2en", {"我们走吧。": "let's go ."})
    result = evaluate(translator, ["我们走吧。"], ["Let's go."])
    assert result["lowercase"] is True
    assert result["chrf"] == pytest.approx(100.0)
    assert result["hypotheses"] == ["let's go."]


@needs_sacrebleu
def test_a_gru_with_sentencepiece_models_is_scored_as_cased_text() -> None:
    from cnmt.experiments.quality import evaluate

    translator = EchoTranslator("gru", {"Allons-y.": "let's go ."})
    translator.manifest.files["target_spm"] = "target.spm"  # as the trained gru-fr-en has
    result = evaluate(translator, ["Allons-y."], ["Let's go."])
    assert result["lowercase"] is False
    assert result["hypotheses"] == ["let's go ."]  # its text is kept as the model wrote it


@needs_sacrebleu
def test_a_refused_sentence_is_scored_empty_and_counted_and_empty_lines_skipped() -> None:
    from cnmt.experiments.quality import evaluate

    translator = EchoTranslator("bergamot", {"a b": "Good morning."})
    result = evaluate(translator, ["a b", "unknown", " "], ["Good morning.", "Hello.", "x"])
    assert result["sentences"] == 2
    assert result["hypotheses"] == ["Good morning.", ""]
    assert sum(result["refused"].values()) == 1
    assert result["skipped_empty"] == 1
    assert result["chrf"] < 100.0


def test_files_of_different_lengths_are_an_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "src.txt").write_text("a\nb\n", encoding="utf-8")
    (tmp_path / "ref.txt").write_text("a\n", encoding="utf-8")
    args = ["evaluate", "--model", "cn2en", "--src", str(tmp_path / "src.txt")]
    code = main([*args, "--ref", str(tmp_path / "ref.txt")])
    err = capsys.readouterr().err
    assert code == 2
    assert "has 2 lines but --ref" in err and "Traceback" not in err
    assert main([*args, "--ref", str(tmp_path / "src.txt"), "--limit", "0"]) == 2
    assert "--limit 0" in capsys.readouterr().err


@pytest.mark.export
@needs_sacrebleu
@pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="needs cnmt[export]")
@pytest.mark.skipif(importlib.util.find_spec("cn2en") is None, reason="cn2en is not installed")
def test_evaluates_cn2en_on_tatoeba_and_writes_the_json(
    tmp_path: Path, data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from cnmt.exporters.base import ExportRequest
    from cnmt.registry import get_components

    model = tmp_path / "cn2en"
    get_components().create("exporter", "cn2en").export(ExportRequest(out_dir=model))
    corpus = data_dir / "corpora" / "tatoeba-en-zh"
    out = tmp_path / "q.json"
    args = ["evaluate", "--model", str(model), "--src", str(corpus / "all.zh")]
    assert main([*args, "--ref", str(corpus / "all.en"), "--limit", "40", "--json", str(out)]) == 0
    result = json.loads(out.read_text(encoding="utf-8"))
    assert result["sentences"] == 40
    assert 0 < result["chrf"] < 100 and 0 <= result["bleu"] < 100
    assert result["precision"] == "fp32"  # the manifest's precision (fp32 or int8)
    assert result["lengths"]["fit_on_outputs"]["gamma"] > 0
    assert "BLEU" in capsys.readouterr().out
