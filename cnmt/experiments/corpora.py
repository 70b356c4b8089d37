"""Line-aligned parallel text: line i of the source file translates to line i of the target."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cnmt.errors import ConfigError


@dataclass(frozen=True)
class ParallelCorpus:
    src_path: str
    tgt_path: str
    src: tuple[str, ...]
    tgt: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.src)


def read_lines(path: str | Path) -> list[str]:
    """The lines of a UTF-8 text file without line endings; a bad byte names file and line."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such corpus file") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise ConfigError(f"{path}:{line}: not UTF-8 text (byte {exc.start})") from None
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()  # the final newline ends the last line, it does not start another
    return [line.rstrip("\r") for line in lines]


def read_parallel(src: str | Path, tgt: str | Path) -> ParallelCorpus:
    """Both sides of a corpus; their line counts must match."""
    src_lines, tgt_lines = read_lines(src), read_lines(tgt)
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
