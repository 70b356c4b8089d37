"""Fitting the output-length regression M = gamma*N + delta on a parallel corpus.

Before fitting, sentence pairs that would distort the regression are dropped with
Paracrawl-style rules, applied in this order; a pair is counted under the first rule that
drops it, so the per-rule counts add up to the pairs dropped:

1. ``empty``: either side has no token (missing translations, blank lines).
2. ``identical``: source and target are the same text (untranslated copies).
3. ``too_long``: either side is longer than ``max_tokens`` (misaligned paragraphs).
4. ``ratio``: the longer side has more than ``max_ratio`` times the tokens of the shorter
   (misalignments; the ratio is taken in the model's tokens).

gamma and delta are the ordinary least squares over the kept pairs; r2 and mse are over the
same pairs, and ``mean_m`` is their mean M (the Naive baseline's constant).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cnmt.config import portable
from cnmt.datasets.corpora import ParallelCorpus, heldout_mask
from cnmt.errors import ConfigError
from cnmt.experiments.tokens import get_counter
from cnmt.files import sha256_file
from cnmt.plotting import pyplot
from cnmt.schedulers.length_models import LengthModel

RULES = ("empty", "identical", "too_long", "ratio")


@dataclass(frozen=True)
class FilterRules:
    """Which pairs to drop before fitting; ``None`` disables a threshold rule."""

    max_tokens: int | None = 150
    max_ratio: float | None = 3.0
    drop_identical: bool = True

    def __post_init__(self) -> None:
        if self.max_tokens is not None and self.max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {self.max_tokens}")
        if self.max_ratio is not None and self.max_ratio < 1:
            raise ValueError(f"max_ratio must be >= 1, got {self.max_ratio}")


def filter_pairs(
    src: list[str] | tuple[str, ...],
    tgt: list[str] | tuple[str, ...],
    n: np.ndarray,
    m: np.ndarray,
    rules: FilterRules,
) -> tuple[np.ndarray, dict[str, int]]:
    """(kept mask, dropped count per rule) for pairs with token counts ``n`` and ``m``."""
    n = np.asarray(n)
    m = np.asarray(m)
    undecided = np.ones(len(n), dtype=bool)
    dropped: dict[str, int] = {}

    def drop(rule: str, hit: np.ndarray) -> None:
        hit = hit & undecided
        dropped[rule] = int(hit.sum())
        undecided[hit] = False

    drop("empty", (n == 0) | (m == 0))
    if rules.drop_identical:
        same = np.fromiter(
            (a.strip() == b.strip() for a, b in zip(src, tgt, strict=True)), bool, len(n)
        )
        drop("identical", same)
    else:
        dropped["identical"] = 0
    if rules.max_tokens is not None:
        drop("too_long", (n > rules.max_tokens) | (m > rules.max_tokens))
    else:
        dropped["too_long"] = 0
    if rules.max_ratio is not None:
        low = np.maximum(np.minimum(n, m), 1)
        drop("ratio", np.maximum(n, m) > rules.max_ratio * low)
    else:
        dropped["ratio"] = 0
    return undecided, dropped


@dataclass(frozen=True)
class LengthFit:
    model: LengthModel
    dropped: dict[str, int]
    per_n: list[dict[str, float]]  # {n, count, mean_m, std_m} for each N among the kept pairs

    def summary(self) -> dict[str, Any]:
        m = self.model
        return {
            "gamma": m.gamma,
            "delta": m.delta,
            "r2": m.r2,
            "mse": m.mse,
            "mean_m": m.mean_m,
            "pairs_total": m.pairs_total,
            "pairs_kept": m.pairs_kept,
            "pairs_dropped": m.pairs_total - m.pairs_kept,
            "dropped": self.dropped,
            "src_tokenizer": m.src_tokenizer,
            "tgt_tokenizer": m.tgt_tokenizer,
            "source": m.source,
            "per_n": self.per_n,
        }


def least_squares(n: np.ndarray, m: np.ndarray) -> tuple[float, float, float, float]:
    """(gamma, delta, r2, mse) of m ~ gamma*n + delta."""
    if len(n) < 2:
        raise ConfigError(
            f"need at least 2 sentence pairs to fit a line, {len(n)} left after filtering"
        )
    x = np.asarray(n, dtype=float)
    y = np.asarray(m, dtype=float)
    design = np.column_stack([x, np.ones_like(x)])
    (gamma, delta), *_ = np.linalg.lstsq(design, y, rcond=None)
    residual = y - (gamma * x + delta)
    sse = float(residual @ residual)
    sst = float(((y - y.mean()) ** 2).sum())
    return float(gamma), float(delta), (1.0 - sse / sst) if sst > 0 else 1.0, sse / len(y)


def per_n_stats(n: np.ndarray, m: np.ndarray) -> list[dict[str, float]]:
    rows = []
    for value in np.unique(n):
        sel = m[n == value].astype(float)
        rows.append(
            {
                "n": int(value),
                "count": int(len(sel)),
                "mean_m": float(sel.mean()),
                "std_m": float(sel.std()),
            }
        )
    return rows


def tokenizer_files(*specs: str) -> dict[str, str]:
    """sha256 of every file a tokenizer spec names, so a fitted model records its exact units."""
    files: dict[str, str] = {}
    for spec in specs:
        for piece in spec.replace("+bpe:", "\0bpe:").split("\0"):
            arg = piece.partition(":")[2]
            if arg and Path(arg).is_file():
                files[portable(arg)] = sha256_file(arg)
    return files


def fit_length(
    corpora: list[ParallelCorpus],
    src_tokenizer: str,
    tgt_tokenizer: str,
    rules: FilterRules = FilterRules(),
    heldout_every: int | None = None,
    m_override: list[np.ndarray] | None = None,
    m_source: str | None = None,
) -> LengthFit:
    """Count, filter and fit over one or more corpora (pooled).

    ``heldout_every`` leaves every k-th line of each corpus out (the replay's requests come
    from those). ``m_override`` replaces each corpus' target-side counts, e.g. with a model's
    real output lengths.
    """
    if tgt_tokenizer.startswith("model:") and m_override is None:
        raise ConfigError(
            f"--tgt-tokenizer {tgt_tokenizer}: a model's tokenizer counts source tokens only; "
            "count the target side with words, chars, moses:LANG, sentencepiece:PATH or bpe:CODES"
        )
    src_counter = get_counter(src_tokenizer)
    tgt_counter = get_counter(tgt_tokenizer)
    all_src: list[str] = []
    all_tgt: list[str] = []
    ns, ms = [], []
    for index, corpus in enumerate(corpora):
        train = ~heldout_mask(len(corpus), heldout_every)
        src = [s for s, keep in zip(corpus.src, train, strict=True) if keep]
        tgt = [t for t, keep in zip(corpus.tgt, train, strict=True) if keep]
        ns.append(src_counter.count_many(src))
        if m_override is not None:
            ms.append(np.asarray(m_override[index])[train])
        else:
            ms.append(tgt_counter.count_many(tgt))
        all_src += src
        all_tgt += tgt
    n, m = np.concatenate(ns), np.concatenate(ms)
    kept, dropped = filter_pairs(all_src, all_tgt, n, m, rules)
    gamma, delta, r2, mse = least_squares(n[kept], m[kept])
    source: dict[str, Any] = {
        "corpora": [
            {
                "src": portable(c.src_path),
                "tgt": portable(c.tgt_path),
                "src_sha256": sha256_file(c.src_path),
                "tgt_sha256": sha256_file(c.tgt_path),
                "lines": len(c),
            }
            for c in corpora
        ],
        "heldout_every": heldout_every,
        "filter": asdict(rules),
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "m_source": m_source or "corpus targets",
        "tokenizer_files": tokenizer_files(src_tokenizer, tgt_tokenizer),
    }
    model = LengthModel(
        gamma=gamma,
        delta=delta,
        mean_m=float(m[kept].mean()),
        r2=r2,
        mse=mse,
        src_tokenizer=portable(src_tokenizer),
        tgt_tokenizer=portable(tgt_tokenizer),
        pairs_total=int(len(n)),
        pairs_kept=int(kept.sum()),
        source=source,
    )
    return LengthFit(model=model, dropped=dropped, per_n=per_n_stats(n[kept], m[kept]))


def plot_length_fit(fit: LengthFit, path: str | Path, title: str = "") -> None:
    """Fig. 3 style: mean and std of M for each N, with the fitted line."""
    plt = pyplot()
    rows = fit.per_n
    n = np.array([r["n"] for r in rows])
    mean = np.array([r["mean_m"] for r in rows])
    std = np.array([r["std_m"] for r in rows])
    count = np.array([r["count"] for r in rows])
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.errorbar(n, mean, yerr=std, fmt="o", ms=3, lw=0.8, capsize=2, label="mean ± std of M per N")
    xs = np.array([0, n.max()])
    m = fit.model
    ax.plot(
        xs,
        m.gamma * xs + m.delta,
        "r-",
        label=f"M = {m.gamma:.3f}·N + {m.delta:.3f} (R²={m.r2:.3f})",
    )
    ax.set_xlabel(f"N (input tokens, {m.src_tokenizer.split(':')[0]})")
    ax.set_ylabel(f"M (output tokens, {m.tgt_tokenizer.split(':')[0]})")
    ax.set_title(title or f"{m.pairs_kept} of {m.pairs_total} pairs kept")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize=8)
    sparse = count < 5
    if sparse.any():
        ax.text(
            0.99,
            0.01,
            f"{int(sparse.sum())} N values with < 5 pairs",
            transform=ax.transAxes,
            ha="right",
            va="bottom",
            fontsize=7,
            color="gray",
        )
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
