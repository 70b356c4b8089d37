"""Tokenizers and vocabularies of the RNN families (pure Python, shared with the exporters).

Three tokenizers:

- :class:`Cn2enTokenizer` reproduces the cn2en package's preprocessing exactly: lowercase, put
  spaces around every character that is not an ASCII letter, apostrophe, double quote or space
  (so each Chinese character, digit and punctuation mark is a token, Latin words stay whole),
  split on spaces; tokens missing from the vocabulary are *dropped*, as the reference does.
- :class:`WordTokenizer` approximates the Moses tokenizer that prepared IWSLT'14 (lowercase,
  punctuation split off, language-specific apostrophes, ``& ' "`` escaped as XML entities),
  optionally followed by subword-nmt BPE (:class:`Bpe`). Unknown tokens map to ``<unk>``.
- :class:`SentencePieceTokenizer` splits raw text into the pieces of a SentencePiece model and
  joins pieces back into detokenized text (the trained GRU FR-EN); its pieces, in id order, are
  the vocabulary.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from cnmt.errors import ConfigError
from cnmt.files import read_json, read_lines, write_json


class Vocabulary:
    """Tokens by id: ``tokens[i]`` is the token of id ``i``; stored as a JSON list."""

    def __init__(self, tokens: Sequence[str]) -> None:
        self.tokens: list[str] = list(tokens)
        self.index: dict[str, int] = {}
        for i, token in enumerate(self.tokens):
            self.index.setdefault(token, i)

    def __len__(self) -> int:
        return len(self.tokens)

    def __contains__(self, token: str) -> bool:
        return token in self.index

    def id(self, token: str) -> int:
        return self.index[token]

    def save(self, path: str | os.PathLike[str]) -> None:
        write_json(path, self.tokens, indent=None)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Vocabulary:
        fix = "export the model again with `cnmt export`"
        tokens = read_json(path, what="vocabulary", fix=fix, expect=list)
        if not tokens or not all(isinstance(t, str) for t in tokens):
            raise ConfigError(f"{path}: not a vocabulary: expected a JSON list of strings; {fix}")
        return cls(tokens)


class Cn2enTokenizer:
    """The cn2en package's normalisation and lookup (see the module docstring)."""

    _KEEP = frozenset("abcdefghijklmnopqrstuvwxyz'\" ")

    def split(self, text: str) -> list[str]:
        spaced = "".join(c if c in self._KEEP else f" {c} " for c in text.lower().strip())
        return [w for w in spaced.strip().split(" ") if w]

    def detokenize(self, tokens: Iterable[str]) -> str:
        return " ".join(tokens).strip()


_ENTITIES = (("&", "&amp;"), ("'", "&apos;"), ('"', "&quot;"), ("<", "&lt;"), (">", "&gt;"))
_WORD = r"\w+(?:-\w+)*"


class WordTokenizer:
    """Moses-like word splitting (see the module docstring); ``language`` picks the apostrophe
    rule: English attaches it to the following letters (``don 't``), French to the preceding
    ones (``l' homme``), other languages split it off on both sides."""

    def __init__(self, language: str, lowercase: bool = True) -> None:
        self.language = language
        self.lowercase = lowercase
        if language == "en":
            pattern = rf"'\w+|{_WORD}|[^\w\s]"
        elif language == "fr":
            pattern = rf"{_WORD}'|{_WORD}|[^\w\s]"
        else:
            pattern = rf"{_WORD}|[^\w\s]"
        self._pattern = re.compile(pattern)

    def split(self, text: str) -> list[str]:
        text = unescape(text)
        if self.lowercase:
            text = text.lower()
        if self.language == "en":
            text = re.sub(r"(\w)'(\w)", r"\1 '\2", text)
        elif self.language == "fr":
            text = re.sub(r"(\w)'(\w)", r"\1' \2", text)
        return [escape(t) for t in self._pattern.findall(text)]

    def detokenize(self, tokens: Iterable[str]) -> str:
        return unescape(" ".join(tokens))


def escape(token: str) -> str:
    for raw, entity in _ENTITIES:
        token = token.replace(raw, entity)
    return token


def unescape(text: str) -> str:
    for raw, entity in reversed(_ENTITIES):
        text = text.replace(entity, raw)
    return text


class SentencePieceTokenizer:
    """Pieces of a SentencePiece model (``sentencepiece`` imported on first use)."""

    def __init__(self, path: str | os.PathLike[str], fix: str) -> None:
        try:
            import sentencepiece
        except ImportError as exc:
            raise ConfigError(
                f"{path}: this model's tokenizer needs sentencepiece ({exc}); install it with: "
                "pip install 'sentencepiece>=0.2'"
            ) from None
        if not os.path.isfile(path):
            raise ConfigError(f"{path}: sentencepiece model not found; {fix}")
        self.processor = sentencepiece.SentencePieceProcessor()
        try:
            self.processor.Load(str(path))
        except (OSError, RuntimeError) as exc:
            raise ConfigError(
                f"{path}: not a valid sentencepiece model ({str(exc).strip()[:200]}); {fix}"
            ) from None

    def split(self, text: str) -> list[str]:
        return list(self.processor.encode(text, out_type=str))

    def detokenize(self, tokens: Iterable[str]) -> str:
        return str(self.processor.decode_pieces(list(tokens)))


class Bpe:
    """Applies subword-nmt BPE codes (format ``#version: 0.2``) to words.

    Each word becomes its characters with ``</w>`` glued to the last one; the adjacent pair
    with the best (lowest) merge rank is merged everywhere in the word, until no pair has a
    rank. Pieces other than the last get the ``@@`` continuation mark; ``</w>`` is dropped.
    Results are cached per word, as words repeat far more often than they are new.
    """

    def __init__(self, ranks: dict[tuple[str, str], int]) -> None:
        self.ranks = ranks
        self._cache: dict[str, tuple[str, ...]] = {}

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Bpe:
        ranks: dict[tuple[str, str], int] = {}
        lines = read_lines(path, what="BPE codes file")
        start = 1 if lines and lines[0].startswith("#version:") else 0
        for number, line in enumerate(lines[start:], start=start + 1):
            parts = line.split(" ")
            if len(parts) != 2:
                raise ConfigError(
                    f"{path}:{number}: corrupt BPE codes (expected two symbols, got {line!r})"
                )
            ranks.setdefault((parts[0], parts[1]), len(ranks))
        return cls(ranks)

    def segment(self, word: str) -> tuple[str, ...]:
        cached = self._cache.get(word)
        if cached is not None:
            return cached
        pieces = self._merge(word)
        out = tuple(p + "@@" for p in pieces[:-1]) + (pieces[-1],)
        if len(self._cache) < 200_000:
            self._cache[word] = out
        return out

    def _merge(self, word: str) -> list[str]:
        if len(word) <= 1:
            return [word]
        symbols = [*word[:-1], word[-1] + "</w>"]
        ranks = self.ranks
        while len(symbols) > 1:
            best = None
            best_rank = None
            for pair in zip(symbols, symbols[1:], strict=False):
                rank = ranks.get(pair)
                if rank is not None and (best_rank is None or rank < best_rank):
                    best, best_rank = pair, rank
            if best is None:
                break
            merged: list[str] = []
            i = 0
            while i < len(symbols):
                if i + 1 < len(symbols) and symbols[i] == best[0] and symbols[i + 1] == best[1]:
                    merged.append(best[0] + best[1])
                    i += 2
                else:
                    merged.append(symbols[i])
                    i += 1
            symbols = merged
        last = symbols[-1].removesuffix("</w>")
        return [*symbols[:-1], last] if last else symbols[:-1]

    def apply(self, words: Iterable[str]) -> list[str]:
        out: list[str] = []
        for word in words:
            out.extend(self.segment(word))
        return out


def remove_bpe(tokens: Iterable[str]) -> list[str]:
    """Join ``@@``-continued pieces back into words."""
    words: list[str] = []
    pending = ""
    for token in tokens:
        if token.endswith("@@"):
            pending += token[:-2]
        else:
            words.append(pending + token)
            pending = ""
    if pending:
        words.append(pending)
    return words


def _shown(token: str, limit: int = 40) -> str:
    """A token as a message names it: its repr, cut (one "token" can be 8,000 combining marks)."""
    text = repr(token)
    return text if len(text) <= limit else f"{text[: limit - 12]}... ({len(token)} chars)"


def no_known_token(model: str, unknown: Sequence[str], shown: int = 10) -> str:
    """The message for a text none of whose tokens is in model ``model``'s source vocabulary
    (``unknown``: its tokens), naming them (as repr, so control characters stay visible)."""
    distinct = list(dict.fromkeys(unknown))
    if not distinct:
        return f"the text has no token model {model!r} can read; give a sentence to translate"
    names = ", ".join(_shown(t) for t in distinct[:shown])
    more = f" and {len(distinct) - shown} more" if len(distinct) > shown else ""
    return (
        f"the text has no token model {model!r} knows: {names}{more} "
        f"{'is' if len(distinct) == 1 else 'are'} not in its source vocabulary; write the "
        "text in the model's source language"
    )


@dataclass(frozen=True)
class TextCodec:
    """Text <-> ids for one side of a model: a tokenizer, optional BPE, a vocabulary.

    ``unk`` is the id unknown tokens map to; ``None`` drops them (cn2en's behaviour).
    """

    tokenizer: WordTokenizer | Cn2enTokenizer | SentencePieceTokenizer
    vocab: Vocabulary
    unk: int | None
    bpe: Bpe | None = None

    def tokens(self, text: str) -> list[str]:
        words = self.tokenizer.split(text)
        return self.bpe.apply(words) if self.bpe is not None else words

    def encode(self, text: str) -> tuple[list[int], list[str]]:
        """(ids, tokens that are not in the vocabulary). Unknown tokens become ``unk`` or,
        without one, are left out of the ids."""
        ids: list[int] = []
        unknown: list[str] = []
        index = self.vocab.index
        for token in self.tokens(text):
            found = index.get(token)
            if found is None:
                unknown.append(token)
                if self.unk is None:
                    continue
                found = self.unk
            ids.append(found)
        return ids, unknown

    def decode(self, ids: Iterable[int]) -> str:
        tokens = [self.vocab.tokens[i] for i in ids]
        if self.bpe is not None:
            tokens = remove_bpe(tokens)
        return self.tokenizer.detokenize(tokens)
