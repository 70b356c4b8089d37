"""The tokenizer of a random-weight Marian model: source and target sentencepiece (unigram)
models trained on real corpora and joined into Marian's ``vocab.json``
(:class:`TokenizerTraining`, :func:`train_tokenizer`), and the check of a tokenizer directory
the user gives (:func:`check_tokenizer_dir`). :mod:`cnmt.exporters.marian` builds the model on
it; sentencepiece is imported inside the functions only.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from cnmt.errors import ConfigError
from cnmt.files import read_json
from cnmt.schema import ranged

TOKENIZER_FILES = ("source.spm", "target.spm", "vocab.json")
OPTIONAL_TOKENIZER_FILES = ("target_vocab.json", "tokenizer_config.json", "special_tokens_map.json")
EOS, UNK, PAD = "</s>", "<unk>", "<pad>"


@dataclass(frozen=True)
class TokenizerTraining:
    """Train source and target sentencepiece (unigram) models on text files.

    Marian's ``vocab.json`` joins both: ``</s>``, ``<unk>``, the source pieces, the target
    pieces not already there, ``<pad>``. ``source_vocab_size: null`` sizes the source model so
    that this joint vocabulary has exactly ``dims.vocab_size`` ids (the opus-mt-en-zh layout:
    65001, ``<pad>`` = 65000 last); the source training is then repeated a few times, since the
    overlap between the two sides (digits, punctuation, Latin words in Chinese text) is only
    known after training. ``hard_vocab_limit: false`` lets a corpus too small for a requested
    size give fewer pieces instead of failing.
    """

    source_files: list[str]
    target_files: list[str]
    target_vocab_size: int = ranged(32000, low=1, high=1000000)
    source_vocab_size: int | None = ranged(None, low=1, high=1000000)
    source_character_coverage: float = ranged(1.0, low=0, high=1, above=True)
    target_character_coverage: float = ranged(0.9995, low=0, high=1, above=True)
    hard_vocab_limit: bool = True
    max_sentences: int = ranged(0, low=0, high=1000000000)  # per side; 0 = every line
    source_lang: str = "en"
    target_lang: str = "zh"

    def __post_init__(self) -> None:
        if not self.source_files or not self.target_files:
            raise ValueError("give at least one source and one target file")
        if min(self.source_vocab_size or 100, self.target_vocab_size) < 100:
            raise ValueError("vocabulary sizes must be at least 100")
        if self.max_sentences < 0:
            raise ValueError("max_sentences must be 0 (all) or positive")


def _corpus_lines(files: Sequence[str], limit: int) -> Iterator[str]:
    count = 0
    for name in files:
        path = Path(name)
        if not path.is_file():
            raise ConfigError(f"tokenizer training file {path} not found; check the data path")
        with path.open(encoding="utf-8") as handle:
            for line in handle:
                line = line.strip()
                if not line:
                    continue
                yield line
                count += 1
                if limit and count >= limit:
                    return


def _train_spm(
    files: Sequence[str], vocab_size: int, coverage: float, limit: int, hard_limit: bool
) -> bytes:
    import sentencepiece as spm

    model = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=_corpus_lines(files, limit),
            model_writer=model,
            vocab_size=vocab_size,
            model_type="unigram",
            character_coverage=coverage,
            hard_vocab_limit=hard_limit,
            num_threads=os.cpu_count() or 1,
            minloglevel=2,
        )
    except RuntimeError as exc:
        raise ConfigError(
            f"sentencepiece training of {vocab_size} pieces on {', '.join(files)} failed: "
            f"{str(exc).strip()[:300]} (a corpus this small cannot give that many pieces: add "
            "text, lower the vocabulary size or set dims.vocab_size: null; or raise the size "
            "when the error asks for it)"
        ) from None
    return model.getvalue()


def _pieces(proto: bytes) -> list[str]:
    import sentencepiece as spm

    processor = spm.SentencePieceProcessor(model_proto=proto)
    return [
        processor.id_to_piece(i)
        for i in range(processor.get_piece_size())
        if not (processor.is_unknown(i) or processor.is_control(i))
    ]


def train_tokenizer(
    out_dir: str | os.PathLike[str], spec: TokenizerTraining, model_vocab_size: int | None = None
) -> int:
    """Write ``source.spm``, ``target.spm``, ``vocab.json`` and ``tokenizer_config.json``.

    Returns the number of ids in ``vocab.json`` (``<pad>`` is the last one). With
    ``model_vocab_size`` that number must come out equal to it (see :class:`TokenizerTraining`).
    """
    folder = Path(out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    limit = spec.max_sentences
    target_proto = _train_spm(
        spec.target_files,
        spec.target_vocab_size,
        spec.target_character_coverage,
        limit,
        spec.hard_vocab_limit,
    )
    target_pieces = _pieces(target_proto)
    specials = 3  # </s>, <unk>, <pad>

    def joint(proto: bytes) -> list[str]:
        return list(dict.fromkeys([*_pieces(proto), *target_pieces]))

    if spec.source_vocab_size is not None:
        source_proto = _train_spm(
            spec.source_files,
            spec.source_vocab_size,
            spec.source_character_coverage,
            limit,
            spec.hard_vocab_limit,
        )
        pieces = joint(source_proto)
        if model_vocab_size is not None and len(pieces) + specials != model_vocab_size:
            raise ConfigError(
                f"the trained tokenizer has {len(pieces) + specials} ids but dims.vocab_size is "
                f"{model_vocab_size}: set train_tokenizer.source_vocab_size: null to size the "
                "source side to fit, or dims.vocab_size: null"
            )
    else:
        if model_vocab_size is None:
            raise ConfigError(
                "train_tokenizer.source_vocab_size: null needs dims.vocab_size to fill; set one"
            )
        wanted = model_vocab_size - specials
        size = wanted - len(target_pieces) + 3  # + spm's own <unk>, <s>, </s>
        tried: list[tuple[int, int]] = []
        for _ in range(6):
            if size < 100:
                raise ConfigError(
                    f"the target tokenizer alone has {len(target_pieces)} pieces, too many for "
                    f"dims.vocab_size {model_vocab_size}: lower target_vocab_size"
                )
            source_proto = _train_spm(
                spec.source_files, size, spec.source_character_coverage, limit, True
            )
            pieces = joint(source_proto)
            tried.append((size, len(pieces)))
            if len(pieces) == wanted:
                break
            size += wanted - len(pieces)
        else:
            raise ConfigError(
                f"could not size the source tokenizer so that the joint vocabulary has "
                f"{model_vocab_size} ids (tried source size -> joint pieces: {tried}); change "
                "target_vocab_size or set source_vocab_size"
            )
    (folder / "source.spm").write_bytes(source_proto)
    (folder / "target.spm").write_bytes(target_proto)
    vocab = {EOS: 0, UNK: 1}
    for piece in pieces:
        vocab.setdefault(piece, len(vocab))
    vocab[PAD] = len(vocab)
    (folder / "vocab.json").write_text(
        json.dumps(vocab, ensure_ascii=False, indent=1) + "\n", encoding="utf-8"
    )
    tokenizer_config = {
        "source_lang": spec.source_lang,
        "target_lang": spec.target_lang,
        "unk_token": UNK,
        "eos_token": EOS,
        "pad_token": PAD,
        "model_max_length": 512,
        "separate_vocabs": False,
        "tokenizer_class": "MarianTokenizer",
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2) + "\n")
    return len(vocab)


def check_tokenizer_dir(folder: Path) -> dict[str, int]:
    """The vocab.json of a Marian tokenizer directory; ConfigError naming any missing file."""
    missing = [name for name in TOKENIZER_FILES if not (folder / name).is_file()]
    if missing:
        raise ConfigError(
            f"{folder}: not a Marian tokenizer directory, missing {', '.join(missing)} (a Marian "
            "model needs source.spm, target.spm and vocab.json)"
        )
    vocab = read_json(
        folder / "vocab.json", what="Marian vocabulary", fix="give a Marian tokenizer directory"
    )
    for token in (EOS, UNK, PAD):
        if token not in vocab:
            raise ConfigError(f"{folder / 'vocab.json'}: special token {token!r} is missing")
    return vocab
