"""Tokenizers, BPE and vocabularies of the RNN families, and cn2en's restricted unpickler."""

from __future__ import annotations

import collections
import importlib.util
import io
import os
import pickle
import subprocess
from pathlib import Path

import pytest

from cnmt.errors import ConfigError
from cnmt.runtime.tokenizers import (
    Bpe,
    Cn2enTokenizer,
    TextCodec,
    Vocabulary,
    WordTokenizer,
    remove_bpe,
)


def test_cn2en_tokenizer_splits_characters_and_keeps_latin_words() -> None:
    tokens = Cn2enTokenizer().split("  我们走吧。Tom说 “OK” 123 it's ")
    assert tokens == [
        "我",
        "们",
        "走",
        "吧",
        "。",
        "tom",
        "说",
        "“",
        "ok",
        "”",
        "1",
        "2",
        "3",
        "it's",
    ]


def test_cn2en_codec_drops_unknown_tokens_like_the_reference() -> None:
    codec = TextCodec(Cn2enTokenizer(), Vocabulary(["SOS", "EOS", "我", "们"]), unk=None)
    ids, unknown = codec.encode("我ｘ们")
    assert ids == [2, 3]
    assert unknown == ["ｘ"]


def test_word_codec_maps_unknown_tokens_to_unk() -> None:
    codec = TextCodec(
        WordTokenizer("en"), Vocabulary(["<unk>", "<blank>", "<s>", "</s>", "hello"]), unk=0
    )
    assert codec.encode("Hello zebra") == ([4, 0], ["zebra"])


def test_english_tokenizer_matches_moses_conventions_of_iwslt() -> None:
    tokens = WordTokenizer("en").split("It's 400-fold, don't you think? \"Yes\" & no.")
    assert tokens == [
        "it",
        "&apos;s",
        "400-fold",
        ",",
        "don",
        "&apos;t",
        "you",
        "think",
        "?",
        "&quot;",
        "yes",
        "&quot;",
        "&amp;",
        "no",
        ".",
    ]


def test_french_apostrophe_stays_with_the_article() -> None:
    assert WordTokenizer("fr").split("L'homme n'est pas là.") == [
        "l&apos;",
        "homme",
        "n&apos;",
        "est",
        "pas",
        "là",
        ".",
    ]


def test_already_tokenized_text_is_left_as_is() -> None:
    line = "es ist diese pyramide , die &quot; zwei &quot; heißt ."
    assert WordTokenizer("de").split(line) == line.split()


def test_detokenize_unescapes_entities() -> None:
    assert WordTokenizer("en").detokenize(["it", "&apos;s", "&quot;", "ok"]) == "it 's \" ok"


def test_bpe_applies_merges_by_rank(tmp_path: Path) -> None:
    codes = tmp_path / "codes"
    codes.write_text("#version: 0.2\nl o\nlo w</w>\ne r</w>\nn e\nne w\n", encoding="utf-8")
    bpe = Bpe.load(codes)
    assert bpe.apply(["low", "newer", "a", "lower"]) == [
        "low",
        "new@@",
        "er",
        "a",
        "lo@@",
        "w@@",
        "er",
    ]
    assert remove_bpe(["new@@", "er", "a", "lo@@", "w@@", "er"]) == ["newer", "a", "lower"]


def test_corrupt_bpe_codes_name_the_line(tmp_path: Path) -> None:
    codes = tmp_path / "codes"
    codes.write_text("#version: 0.2\na b\nthree symbols here\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"codes:3: corrupt BPE codes"):
        Bpe.load(codes)


def test_bpe_with_iwslt_codes_segments_like_subword_nmt(data_dir: Path) -> None:
    # Expected pieces produced by subword-nmt's apply_bpe with the same codes file.
    bpe = Bpe.load(data_dir / "tokenizers" / "iwslt14-de-en-bpe10k" / "code")
    assert bpe.segment("muttermilch") == ("mutter@@", "mil@@", "ch")
    assert bpe.segment("grenzwerts") == ("gren@@", "z@@", "wer@@", "ts")
    assert bpe.segment("unbelievably") == ("un@@", "belie@@", "v@@", "ably")
    assert bpe.segment("400-fache") == ("40@@", "0-@@", "fa@@", "che")
    assert bpe.segment("a") == ("a",)


def test_vocabulary_round_trips_and_rejects_corrupt_files(tmp_path: Path) -> None:
    path = tmp_path / "vocab.json"
    Vocabulary(["SOS", "EOS", "", "我"]).save(path)
    loaded = Vocabulary.load(path)
    assert loaded.tokens == ["SOS", "EOS", "", "我"] and loaded.id("我") == 3
    path.write_text('{"not": "a list"}', encoding="utf-8")
    with pytest.raises(ConfigError, match=r"vocab.json: not a vocabulary.*cnmt export"):
        Vocabulary.load(path)
    with pytest.raises(ConfigError, match=r"no such vocabulary"):
        Vocabulary.load(tmp_path / "absent.json")


# -- cn2en's pickled vocabularies -------------------------------------------------------------


class Exploit:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, ("echo pwned > /dev/null",))


def test_lang_unpickler_rejects_any_other_class(tmp_path: Path) -> None:
    from cnmt.exporters.cn2en import load_lang

    path = tmp_path / "input_lang.pkl"
    path.write_bytes(pickle.dumps(Exploit()))
    with pytest.raises(
        ConfigError, match=r"not a cn2en vocabulary pickle.*refusing to load (posix|os)\.system"
    ):
        load_lang(path)


class Lang:
    """Same class name as cn2en's, but from another module: must be refused too."""


def test_lang_unpickler_refuses_a_lang_class_from_another_module() -> None:
    from cnmt.exporters.cn2en import LangUnpickler

    data = pickle.dumps(Lang())
    with pytest.raises(pickle.UnpicklingError, match=r"refusing to load .*\.Lang"):
        LangUnpickler(io.BytesIO(data)).load()
    with pytest.raises(pickle.UnpicklingError, match=r"refusing to load collections.OrderedDict"):
        LangUnpickler(io.BytesIO(pickle.dumps(collections.OrderedDict()))).load()


@pytest.mark.skipif(importlib.util.find_spec("cn2en") is None, reason="cn2en is not installed")
def test_cn2en_vocabularies_load_without_importing_the_package() -> None:
    import sys

    from cnmt.exporters.cn2en import load_lang, locate

    source = locate()
    source_tokens = load_lang(source.folder / "input_lang.pkl")
    target_tokens = load_lang(source.folder / "output_lang.pkl")
    assert source_tokens[:2] == ["SOS", "EOS"] and target_tokens[:2] == ["SOS", "EOS"]
    assert (len(source_tokens), len(target_tokens)) == (3277, 5820)
    assert "我" in source_tokens and "go" in target_tokens
    # In a fresh interpreter: other tests import cn2en's own model module on purpose (as the
    # reference to compare with), so this process's sys.modules proves nothing.
    code = (
        "import sys\n"
        "from cnmt.exporters.cn2en import load_lang, locate\n"
        "load_lang(locate().folder / 'input_lang.pkl')\n"
        "loaded = [m for m in sys.modules if m == 'cn2en' or m.startswith('cn2en.')]\n"
        "assert not loaded, loaded\n"
    )
    subprocess.run([sys.executable, "-P", "-c", code], check=True)


def test_locate_explains_how_to_install_cn2en(tmp_path: Path) -> None:
    from cnmt.exporters.cn2en import locate

    with pytest.raises(
        ConfigError,
        match=r"missing model.pth, input_lang.pkl, output_lang.pkl.*"
        r"pip install --no-deps cn2en==0.0.118",
    ):
        locate(tmp_path)
