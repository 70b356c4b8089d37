"""Parallel corpora: line-aligned text files, line i of the source translating line i of the
target."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cnmt.errors import ConfigError
from cnmt.files import read_lines


@dataclass(frozen=True)
class ParallelCorpus:
    src_path: str
    tgt_path: str
    src: tuple[str, ...]
    tgt: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.src)


def read_parallel(src: str | Path, tgt: str | Path) -> ParallelCorpus:
    """Both sides of a corpus; their line counts must match."""
    src_lines, tgt_lines = read_lines(src, what="corpus file"), read_lines(tgt, what="corpus file")
    if len(src_lines) != len(tgt_lines):
        raise ConfigError(
            f"{src} has {len(src_lines)} lines but {tgt} has {len(tgt_lines)}: a parallel corpus "
            "needs line i of one side to translate line i of the other"
        )
    if not src_lines:
        raise ConfigError(f"{src}: the corpus is empty")
    return ParallelCorpus(str(src), str(tgt), tuple(src_lines), tuple(tgt_lines))


def heldout_mask(size: int, every: int | None) -> np.ndarray:
    """True for the held-out lines: every ``every``-th line (i % every == every - 1).

    The replay draws requests from these lines and `cnmt fit-length --heldout-every` fits on
    the others, so the length model never sees the sentences it is evaluated on.
    """
    mask = np.zeros(size, dtype=bool)
    if every:
        if every < 2:
            raise ConfigError(f"heldout_every must be >= 2, got {every}")
        mask[every - 1 :: every] = True
    return mask
