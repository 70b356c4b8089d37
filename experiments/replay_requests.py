"""The requests a replay sends, and when: corpus lines counted in the model's tokens
(:func:`load_corpus_lines`) and drawn as requests (:func:`draw_requests`), their arrival times
(:func:`arrival_times`) and their place on the connection's RTT trace with the round trip each
one pays (:func:`link_timeline`). Steps 1 and 3 of :mod:`cnmt.experiments.replay`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from cnmt.config import display_path
from cnmt.datasets.corpora import heldout_mask, read_parallel
from cnmt.datasets.link import RttTimeline
from cnmt.datasets.traces import RttTrace
from cnmt.errors import ConfigError
from cnmt.experiments.config import ConnectionSpec, CorpusSpec
from cnmt.experiments.outputs import load_output_lengths
from cnmt.experiments.tokens import get_counter
from cnmt.files import read_lines


@dataclass(frozen=True)
class CorpusLines:
    """Every eligible corpus line, over all parts: token counts and UTF-8 sizes."""

    n: np.ndarray
    m: np.ndarray
    m_corpus: np.ndarray  # the corpus' own target length (differs from m with model outputs)
    src_bytes: np.ndarray
    tgt_bytes: np.ndarray
    part: np.ndarray
    info: dict[str, Any]


def load_corpus_lines(spec: CorpusSpec, heldout_only: bool = True) -> CorpusLines:
    """Count tokens of the lines requests may be drawn from (held-out lines only, if set)."""
    tgt_counter = get_counter(spec.tgt_tokenizer)
    ns, ms, mcs, sbs, tbs, parts = [], [], [], [], [], []
    info: dict[str, Any] = {
        "src_tokenizer": display_path(spec.src_tokenizer),
        "tgt_tokenizer": display_path(spec.tgt_tokenizer),
        "heldout_every": spec.heldout_every,
        "parts": [],
    }
    for index, part in enumerate(spec.parts):
        corpus = read_parallel(part.src, part.tgt)
        pool = (
            heldout_mask(len(corpus), spec.heldout_every)
            if (heldout_only and spec.heldout_every)
            else np.ones(len(corpus), bool)
        )
        src = [s for s, keep in zip(corpus.src, pool, strict=True) if keep]
        tgt = [t for t, keep in zip(corpus.tgt, pool, strict=True) if keep]
        m_corpus = tgt_counter.count_many(tgt)
        if part.output_lengths:
            # The cache holds the N the model really encoded: no need to load the model here.
            cached_n, cached_m = load_output_lengths(part.output_lengths, part.src, len(corpus))
            m = cached_m[pool]
            n = (
                cached_n[pool]
                if cached_n is not None
                else get_counter(spec.src_tokenizer).count_many(src)
            )
            missing_target = np.zeros(len(n), dtype=bool)
        else:
            n = get_counter(spec.src_tokenizer).count_many(src)
            m = m_corpus
            missing_target = m_corpus == 0
        eligible = (n > 0) & ~missing_target
        ns.append(n[eligible])
        ms.append(m[eligible])
        mcs.append(m_corpus[eligible])
        sbs.append(np.array([len(s.encode()) for s, ok in zip(src, eligible, strict=True) if ok]))
        tbs.append(np.array([len(t.encode()) for t, ok in zip(tgt, eligible, strict=True) if ok]))
        parts.append(np.full(int(eligible.sum()), index))
        info["parts"].append(
            {
                "src": display_path(part.src),
                "tgt": display_path(part.tgt),
                "lines": len(corpus),
                "pool_lines": int(pool.sum()),
                "excluded_no_source_tokens": int((n == 0).sum()),
                "excluded_empty_target": int(((n > 0) & missing_target).sum()),
                "eligible_lines": int(eligible.sum()),
                "m_source": (
                    f"model outputs ({display_path(part.output_lengths)})"
                    if part.output_lengths
                    else "corpus targets"
                ),
            }
        )
        if not eligible.any():
            raise ConfigError(f"{part.src}: no line of this corpus part can be a request")
    return CorpusLines(
        n=np.concatenate(ns),
        m=np.concatenate(ms),
        m_corpus=np.concatenate(mcs),
        src_bytes=np.concatenate(sbs),
        tgt_bytes=np.concatenate(tbs),
        part=np.concatenate(parts),
        info=info,
    )


def draw_requests(
    lines: CorpusLines, spec: CorpusSpec, count: int, rng: np.random.Generator
) -> np.ndarray:
    """Indices into ``lines`` of ``count`` requests (uniform, or per part by ``share``)."""
    if spec.parts[0].share is None:
        return rng.integers(0, len(lines.n), size=count)
    shares = np.array([p.share for p in spec.parts], dtype=float)
    which = rng.choice(len(shares), size=count, p=shares / shares.sum())
    out = np.empty(count, dtype=np.int64)
    for index in range(len(shares)):
        members = np.flatnonzero(lines.part == index)
        chosen = which == index
        out[chosen] = members[rng.integers(0, len(members), size=int(chosen.sum()))]
    return out


@dataclass(frozen=True)
class LinkTimeline:
    """Per request: arrival time (s, trace time), true RTT (s), and whether a loss hit it."""

    arrival_s: np.ndarray
    rtt_s: np.ndarray
    lossy: np.ndarray
    window: RttTrace
    info: dict[str, Any]
    timeline: RttTimeline


def link_timeline(
    spec: ConnectionSpec, count: int, loss_timeout_s: float, seed: int = 0
) -> LinkTimeline:
    """Requests placed in the connection's RTT window, each with the RTT it pays."""
    timeline = spec.timeline(loss_timeout_s)
    window = timeline.window
    assert window is not None  # a replayed connection always has a trace
    if len(window) < 2:
        raise ConfigError(f"{spec.trace}: a connection window needs at least 2 samples")
    duration = timeline.duration_s
    arrival = arrival_times(spec, count, duration, seed)
    sample = timeline.index_at(arrival)
    lossy = timeline.lost[sample]
    info = {
        "trace": display_path(str(spec.trace)),
        "format": window.format,
        "description": spec.description,
        "window": {
            "start": spec.start,
            "samples": len(window),
            "duration_s": duration,
            "timestamps": window.times_s is not None,
            "start_epoch": window.start_epoch,
        },
        "arrivals": spec.arrivals,
        "interarrival_s": float(arrival[-1] - arrival[0]) / max(count - 1, 1),
        "trace_stats": window.summary(),
        "requests_hit_by_loss": int(lossy.sum()),
        "loss_timeout_s": loss_timeout_s,
    }
    return LinkTimeline(arrival, timeline.rtt_s[sample], lossy, window, info, timeline)


def arrival_times(conn: ConnectionSpec, count: int, duration_s: float, seed: int) -> np.ndarray:
    """When each request reaches the gateway (seconds from the window's start)."""
    if conn.arrivals == "spread":
        return np.arange(count, dtype=float) * (duration_s / count)
    if conn.arrivals == "interval":
        assert conn.interval_s is not None
        return np.arange(count, dtype=float) * conn.interval_s
    if conn.arrivals == "poisson":
        assert conn.rate is not None
        # Its own random stream: the other draws (requests, true times) stay as without it.
        gaps = np.random.default_rng([seed, 1]).exponential(1.0 / conn.rate, count)
        return np.concatenate([[0.0], np.cumsum(gaps[:-1])])
    assert conn.arrivals_file is not None
    lines = [x for x in read_lines(conn.arrivals_file, what="arrival times file") if x.strip()]
    try:
        times = np.array([float(x) for x in lines])
    except ValueError as exc:
        raise ConfigError(f"{conn.arrivals_file}: not a number of seconds: {exc}") from None
    if len(times) < count or not np.all(np.isfinite(times)) or np.any(np.diff(times) < 0):
        raise ConfigError(
            f"{conn.arrivals_file}: needs at least {count} finite, non-decreasing times "
            f"(seconds, one a line); it has {len(times)}: lower --requests or add times"
        )
    return times[:count] - times[0]
