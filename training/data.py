"""What both training recipes share: the parallel corpus, its seeded split, batch translation.

The split rule (:func:`split_pairs`) is the one every trained built-in's test split comes from;
it needs nothing but the standard library.
"""

from __future__ import annotations

import hashlib
import random
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cnmt.errors import ConfigError


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def read_pairs(source: Path, target: Path, limit: int | None) -> list[tuple[str, str]]:
    for path in (source, target):
        if not path.is_file():
            raise ConfigError(
                f"{path}: corpus file not found; point source_corpus/target_corpus at line-aligned "
                "text files or set CNMT_DATA to the data directory that `${data}` refers to"
            )
    src = source.read_text(encoding="utf-8").split("\n")
    tgt = target.read_text(encoding="utf-8").split("\n")
    if src and src[-1] == "":
        src.pop()
    if tgt and tgt[-1] == "":
        tgt.pop()
    if len(src) != len(tgt):
        raise ConfigError(
            f"{source} has {len(src)} lines but {target} has {len(tgt)}; a parallel corpus "
            "needs line-aligned files"
        )
    pairs = list(zip(src, tgt, strict=True))
    return pairs[:limit] if limit is not None else pairs


@dataclass
class Splits:
    train: list[tuple[str, str]]
    valid: list[tuple[str, str]]
    test: list[tuple[str, str]]
    record: dict[str, Any]


def split_pairs(
    pairs: Sequence[tuple[str, str]], seed: int, test_pairs: int, valid_pairs: int
) -> Splits:
    """The seeded split of the module docstring (step 1)."""
    seen: set[tuple[str, str]] = set()
    unique: list[tuple[str, str]] = []
    empty = 0
    for s, t in pairs:
        s, t = s.strip(), t.strip()
        if not s or not t:
            empty += 1
            continue
        if (s, t) not in seen:
            seen.add((s, t))
            unique.append((s, t))
    order = list(range(len(unique)))
    random.Random(seed).shuffle(order)
    held = test_pairs + valid_pairs
    if len(unique) <= held:
        raise ConfigError(
            f"the corpus has {len(unique)} distinct pairs, not more than test_pairs + "
            f"valid_pairs = {held}; use a larger corpus or smaller splits"
        )
    test = [unique[i] for i in order[:test_pairs]]
    test_sources = {s for s, _ in test}
    valid = [unique[i] for i in order[test_pairs:held] if unique[i][0] not in test_sources]
    train = [unique[i] for i in order[held:] if unique[i][0] not in test_sources]
    record = {
        "rule": (
            "strip both sides; drop pairs with an empty side; keep the first of exact duplicate "
            f"pairs; shuffle with random.Random({seed}); test = the first "
            f"{test_pairs}, valid = the next {valid_pairs}, train = the rest; "
            "valid and train pairs whose source sentence is a test source dropped"
        ),
        "pairs_read": len(pairs),
        "empty_side_dropped": empty,
        "distinct_pairs": len(unique),
        "test": len(test),
        "valid": len(valid),
        "train": len(train),
    }
    return Splits(train=train, valid=valid, test=test, record=record)


# The corpus (under the data directory's corpora/) and source language of each trained built-in,
# with the defaults its recipe split it by (training.gru, training.opennmt): the target is English.
BUILTIN_CORPORA = {"gru-fr-en": ("tatoeba-fr-en", "fr"), "bilstm-de-en": ("tatoeba-de-en", "de")}
BUILTIN_SPLIT = {"seed": 19, "test_pairs": 2000, "valid_pairs": 500}


def builtin_splits(name: str, data_dir: Path) -> Splits:
    """The splits a trained built-in (``gru-fr-en``, ``bilstm-de-en``) was trained and tested on,
    rebuilt from the data directory by the same rule, so that an evaluation needs no training
    run's ``OUT/data``."""
    if name not in BUILTIN_CORPORA:
        raise ConfigError(
            f"{name!r} is not a trained built-in; trained built-ins: {', '.join(BUILTIN_CORPORA)}"
        )
    corpus, source = BUILTIN_CORPORA[name]
    folder = Path(data_dir) / "corpora" / corpus
    pairs = read_pairs(folder / f"all.{source}", folder / "all.en", None)
    return split_pairs(pairs, **BUILTIN_SPLIT)


def write_split(folder: Path, name: str, pairs: Sequence[tuple[str, str]], config: Any) -> dict:
    folder.mkdir(parents=True, exist_ok=True)
    files = {}
    for side, language in ((0, config.source_language), (1, config.target_language)):
        path = folder / f"{name}.{language}"
        path.write_text("".join(p[side] + "\n" for p in pairs), encoding="utf-8")
        files[language] = {"file": path.name, "sha256": sha256_bytes(path.read_bytes())}
    return files


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def translate_all(
    translate_batch: Callable[[Sequence[str]], Sequence[Any]], sources: Sequence[str]
) -> list[str]:
    """Translations in input order, decoded in batches of similar length."""
    order = sorted(range(len(sources)), key=lambda i: len(sources[i]))
    out = [""] * len(sources)
    for start in range(0, len(order), 64):
        chunk = order[start : start + 64]
        texts = [sources[i] if sources[i].strip() else "." for i in chunk]
        for i, translation in zip(chunk, translate_batch(texts), strict=True):
            out[i] = translation.text
    return out
