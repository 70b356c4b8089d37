"""Fitted output-length models: the file `cnmt fit-length` writes and the estimators read.

A length model is the regression ``M = gamma*N + delta`` of one language pair in the tokens of
one model, plus the corpus mean of M (what the Naive baseline uses) and where it came from.
Reading one needs only the standard library, so a gateway can load it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from cnmt.errors import ConfigError
from cnmt.files import read_json, write_json

FORMAT = "cnmt-length-model/1"


@dataclass(frozen=True)
class LengthModel:
    """``M = gamma*N + delta`` fitted on ``pairs_kept`` sentence pairs (``mean_m``: their mean
    M)."""

    gamma: float
    delta: float
    mean_m: float
    r2: float
    mse: float
    src_tokenizer: str
    tgt_tokenizer: str
    pairs_total: int
    pairs_kept: int
    source: dict[str, Any] = field(default_factory=dict)

    def predict(self, n_tokens: float) -> float:
        return self.gamma * n_tokens + self.delta


def save_length_model(
    model: LengthModel, path: str | Path, extra: dict[str, Any] | None = None
) -> None:
    """Write ``model`` (plus ``extra`` keys, e.g. per-N statistics, that loading ignores)."""
    data = {"format": FORMAT, **asdict(model), **(extra or {})}
    write_json(path, data)


def load_length_model(path: str | Path) -> LengthModel:
    """Read a length model; a missing or malformed file raises ConfigError naming it."""
    path = Path(path)
    data = read_json(
        path,
        what="length model",
        fix=f"fit one with `cnmt fit-length --out {path}`",
        format=FORMAT,
    )
    try:
        return LengthModel(
            gamma=float(data["gamma"]),
            delta=float(data["delta"]),
            mean_m=float(data["mean_m"]),
            r2=float(data["r2"]),
            mse=float(data["mse"]),
            src_tokenizer=str(data["src_tokenizer"]),
            tgt_tokenizer=str(data["tgt_tokenizer"]),
            pairs_total=int(data["pairs_total"]),
            pairs_kept=int(data["pairs_kept"]),
            source=dict(data.get("source", {})),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ConfigError(f"{path}: malformed length model: missing or bad {exc}") from None
