"""Token counters for corpora: N and M in the units of the model that will run.

A length model and a latency profile must count tokens the same way, so every experiment
names its counter with a spec string:

``words``
    Whitespace-separated words (for pre-tokenized corpora such as IWSLT'14).
``chars``
    cn2en's segmentation: a run of ASCII letters (with ``'`` and ``"``) after lowercasing is
    one token and every other non-space character is a token of its own. On Chinese text
    that counts characters; on English text it counts words and punctuation marks, which is
    what the cn2en GRU reads and writes.
``moses:LANG``
    The runtime's Moses-like word tokenizer for language LANG (lowercased; punctuation split
    off), which the GRU and BiLSTM families read.
``sentencepiece:PATH``
    Pieces of a SentencePiece model (needs the ``sentencepiece`` package).
``bpe:CODES``
    Subwords after applying subword-nmt BPE merge codes (``#version: 0.2`` files) to each
    whitespace word, the way ``subword-nmt apply-bpe`` splits pre-tokenized text;
    ``moses:LANG+bpe:CODES`` applies them to the Moses-like words instead (raw text).
``model:NAME_OR_DIR``
    The runtime translator's own source tokenizer (``Translator.count_source_tokens``) of a
    built-in model name or an exported model directory: exactly the N the model encodes
    (e.g. cn2en drops characters missing from its vocabulary). Source sides only; a text the
    model refuses (empty, too long) counts 0 and is never a request.

Counting never appends EOS: N and M are the tokens of the text, like ``Translation``'s.
"""

from __future__ import annotations

import abc
import contextlib
import functools
import logging
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from cnmt.config import data_dir, expand_data
from cnmt.errors import ConfigError
from cnmt.files import sha256_file

KINDS = (
    "words",
    "chars",
    "moses:LANG",
    "sentencepiece:PATH",
    "bpe:CODES",
    "moses:LANG+bpe:CODES",
    "model:NAME_OR_DIR",
)


class TokenCounter(abc.ABC):
    """Counts the tokens of one text; ``spec`` is the string that selected it."""

    spec: str

    @abc.abstractmethod
    def count(self, text: str) -> int: ...

    def count_many(self, texts: Iterable[str]) -> np.ndarray:
        return np.fromiter((self.count(t) for t in texts), dtype=np.int64)


class Words(TokenCounter):
    spec = "words"

    def split(self, text: str) -> list[str]:
        return text.split()

    def count(self, text: str) -> int:
        return len(text.split())


class Chars(TokenCounter):
    spec = "chars"

    def __init__(self) -> None:
        from cnmt.runtime.tokenizers import Cn2enTokenizer

        self._split = Cn2enTokenizer().split

    def count(self, text: str) -> int:
        return len(self._split(text))


class Moses(TokenCounter):
    """The runtime's Moses-like word tokenizer (lowercased), as the RNN families read text."""

    def __init__(self, language: str) -> None:
        from cnmt.runtime.tokenizers import WordTokenizer

        self.spec = f"moses:{language}"
        self.split = WordTokenizer(language, lowercase=True).split

    def count(self, text: str) -> int:
        return len(self.split(text))


class SentencePieceCount(TokenCounter):
    def __init__(self, path: str) -> None:
        self.spec = f"sentencepiece:{path}"
        try:
            import sentencepiece
        except ImportError:
            raise ConfigError(
                f"{self.spec}: needs the sentencepiece package: pip install sentencepiece"
            ) from None
        if not Path(path).is_file():
            raise ConfigError(f"{self.spec}: no such SentencePiece model file")
        self._sp = sentencepiece.SentencePieceProcessor()
        try:
            self._sp.Load(str(path))
        except (OSError, RuntimeError) as exc:
            raise ConfigError(f"{path}: not a SentencePiece model: {exc}") from None

    def count(self, text: str) -> int:
        return len(self._sp.EncodeAsIds(text))

    def count_many(self, texts: Iterable[str]) -> np.ndarray:
        return np.array([len(ids) for ids in self._sp.Encode(list(texts))], dtype=np.int64)


class BpeCount(TokenCounter):
    """subword-nmt BPE codes applied to the words of ``words`` (whitespace) or ``moses:LANG``,
    with the runtime's implementation (so counts match the model's segmentation)."""

    def __init__(self, codes: str, words: Words | Moses) -> None:
        from cnmt.runtime.tokenizers import Bpe

        self.spec = f"bpe:{codes}" if isinstance(words, Words) else f"{words.spec}+bpe:{codes}"
        self._split = words.split
        self._bpe = Bpe.load(codes)

    def count(self, text: str) -> int:
        return sum(len(self._bpe.segment(word)) for word in self._split(text))


class ModelCount(TokenCounter):
    def __init__(self, name_or_dir: str) -> None:
        from cnmt.exporters.builtins import ensure_exported
        from cnmt.runtime import load_translator

        self.spec = f"model:{name_or_dir}"
        ensure_exported(name_or_dir)
        self._translator = load_translator(name_or_dir)

    def count(self, text: str) -> int:
        """N as the model encodes it; 0 for a text it refuses (empty or too long)."""
        from cnmt.errors import CnmtError

        try:
            return int(self._translator.count_source_tokens(text))
        except CnmtError:
            return 0

    def count_many(self, texts: Iterable[str]) -> np.ndarray:
        with quiet_runtime_logs():
            return super().count_many(texts)


@functools.cache
def get_counter(spec: str) -> TokenCounter:
    """The counter named by ``spec`` (one instance per spec); ConfigError lists valid specs."""
    base, plus, codes = spec.partition("+bpe:")
    if plus:
        words = get_counter(base)
        if not isinstance(words, Words | Moses) or not codes:
            raise ConfigError(f"tokenizer {spec!r}: BPE applies to `words` or `moses:LANG`")
        return BpeCount(codes, words)
    kind, _, arg = spec.partition(":")
    if kind == "words" and not arg:
        return Words()
    if kind == "chars" and not arg:
        return Chars()
    if kind in ("sentencepiece", "spm") and arg:
        return SentencePieceCount(arg)
    if kind == "moses" and arg:
        return Moses(arg)
    if kind == "bpe" and arg:
        return BpeCount(arg, Words())
    if kind == "model" and arg:
        return ModelCount(arg)
    raise ConfigError(f"unknown tokenizer {spec!r}; valid: {', '.join(KINDS)}")


def _file_identity(arg: str) -> str:
    """A tokenizer argument as comparable text: a file's content hash, else the normalized arg."""
    path = Path(arg)
    if path.is_file():
        return _sha256(str(path.resolve()))
    return os.path.normpath(arg) if "/" in arg else arg


@functools.lru_cache(maxsize=64)
def _sha256(path: str) -> str:
    return sha256_file(path)  # cached: one tokenizer file is compared many times per replay


def same_tokenizer(a: str, b: str, a_hashes: dict[str, str] | None = None) -> bool:
    """Whether two specs count the same tokens: same kinds, and files with the same content
    (so ``bpe:../data/code`` and ``bpe:/abs/data/code`` agree). ``a_hashes`` are sha256 sums
    recorded for ``a``'s files when a length model was fitted: they stand for those files, so
    a tokenizer retrained since then no longer matches."""

    def parts(spec: str, hashes: dict[str, str]) -> list[tuple[str, str]]:
        out = []
        for piece in spec.replace("+bpe:", "\0bpe:").split("\0"):
            kind, _, arg = piece.partition(":")
            if not arg:
                out.append((kind, ""))
            elif arg in hashes:  # what the file held when the model was fitted
                out.append((kind, hashes[arg]))
            else:
                out.append((kind, _file_identity(_expand(arg))))
        return out

    return parts(a, a_hashes or {}) == parts(b, {})


def _expand(arg: str) -> str:
    """A stored tokenizer argument with ``${data}`` expanded when a data directory is set (it
    stays as written otherwise, and then matches only itself)."""
    root = data_dir()
    return arg if root is None else expand_data(arg, root=root)


@contextlib.contextmanager
def quiet_runtime_logs() -> Iterator[None]:
    """Silence the runtime's per-sentence warnings (e.g. cn2en's dropped unknown characters)
    during bulk work: over a corpus they would bury the progress bar."""
    runtime_logger = logging.getLogger("cnmt.runtime")
    previous = runtime_logger.level
    runtime_logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        runtime_logger.setLevel(previous)
