"""Trace-driven replay: many requests through every device policy over one connection profile.

What a replay does, in order (all randomness from one seeded generator, so the same config
and seed give the same numbers):

1. **Requests.** ``requests`` sentence pairs are drawn uniformly, with replacement, from the
   corpus lines (only the held-out lines when ``heldout_every`` is set). N and M are counted
   with the corpus' tokenizers, or M is a real model's output length from a cache. Lines with
   no source token (nothing to translate) or, for corpus targets, no target token (a missing
   translation) are never drawn; how many were excluded is reported.
2. **Ground truth.** Each request's true execution time on the edge and on the cloud is drawn
   from the raw samples of the device profiles (:mod:`cnmt.experiments.groundtruth`), not from
   the fitted line the scheduler uses.
3. **Link.** Requests arrive in trace time (spread evenly over the window, or one every
   ``interval_s``). A request's true round trip is the RTT of the latest trace sample at its
   arrival. If that ping was lost, the exchange is charged one retransmission timeout
   (``loss_timeout_s``) on top of the last answered RTT: the packet was lost and resent. The
   transmission time adds the payload (request plus response, UTF-8 bytes plus
   ``overhead_bytes``) at ``bandwidth_mbps``.
4. **Policies.** Each policy decides every request in arrival order with its own RTT
   estimator, which learns only from that policy's own offloads: an offloaded exchange's round
   trip becomes a sample when it completes (arrival + transmission + cloud time), as on a live
   gateway, so the estimate is as fresh as the last offload. A request's latency is its
   execution time plus, when offloaded, its transmission time; totals are sums (no queueing).
5. **Table I.** Each policy's total against edge-only, cloud-only and the Oracle, in percent:
   ``100 * (total - reference) / reference`` (negative = faster).
"""

from __future__ import annotations

import heapq
import os
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from cnmt.config import Config, display_path
from cnmt.datasets.corpora import heldout_mask, read_parallel
from cnmt.datasets.link import serialisation_s
from cnmt.datasets.traces import RttTrace
from cnmt.errors import ConfigError
from cnmt.experiments.config import ConnectionSpec, CorpusSpec, ReplayConfig
from cnmt.experiments.groundtruth import TimeSampler
from cnmt.experiments.outputs import load_output_lengths
from cnmt.experiments.tokens import get_counter
from cnmt.plotting import pyplot
from cnmt.profiling.profiles import DeviceProfile
from cnmt.profiling.profiles import load as load_profile
from cnmt.registry import ComponentSpec
from cnmt.schedulers.base import (
    Device,
    DevicePolicy,
    LatencyModel,
    LengthEstimator,
    LinkState,
    RequestBatch,
    SchedulerState,
)
from cnmt.schedulers.rtt_estimators import RttEstimator

FORMAT = "cnmt-replay/1"
REFERENCES = ("edge", "cloud", "oracle")


# ----------------------------------------------------------------------------- requests


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


# ----------------------------------------------------------------------------- link


@dataclass(frozen=True)
class LinkTimeline:
    """Per request: arrival time (s, trace time), true RTT (s), and whether a loss hit it."""

    arrival_s: np.ndarray
    rtt_s: np.ndarray
    lossy: np.ndarray
    window: RttTrace
    info: dict[str, Any]


def link_timeline(spec: ConnectionSpec, count: int, loss_timeout_s: float) -> LinkTimeline:
    """Requests placed in the connection's RTT window, each with the RTT it pays."""
    timeline = spec.timeline(loss_timeout_s)
    window = timeline.window
    assert window is not None  # a replayed connection always has a trace
    if len(window) < 2:
        raise ConfigError(f"{spec.trace}: a connection window needs at least 2 samples")
    duration = timeline.duration_s
    if spec.arrivals == "spread":
        arrival = np.arange(count, dtype=float) * (duration / count)
    else:
        assert spec.interval_s is not None
        arrival = np.arange(count, dtype=float) * spec.interval_s
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
        "interarrival_s": float(duration / count) if spec.arrivals == "spread" else spec.interval_s,
        "trace_stats": window.summary(),
        "requests_hit_by_loss": int(lossy.sum()),
        "loss_timeout_s": loss_timeout_s,
    }
    return LinkTimeline(arrival, timeline.rtt_s[sample], lossy, window, info)


# ----------------------------------------------------------------------------- policies


@dataclass
class PolicyRun:
    label: str
    policy: DevicePolicy
    length: LengthEstimator | None
    rtt: ComponentSpec  # each replay of the policy creates a fresh estimator from it
    length_name: str

    @property
    def rtt_name(self) -> str:
        return self.rtt.name


DEFAULT_RTT = ComponentSpec(kind="rtt_estimator", name="last", params=None)


def build_policies(config: Config, replay: ReplayConfig) -> list[PolicyRun]:
    """Instantiate every policy with its length and RTT estimators (validated when loaded)."""
    runs = []
    for spec in replay.policy_specs():
        length_spec = spec.length_estimator or config.get("length_estimator")
        rtt_spec = spec.rtt_estimator or config.get("rtt_estimator") or DEFAULT_RTT
        runs.append(
            PolicyRun(
                label=spec.label,
                policy=spec.policy.create(),
                length=length_spec.create() if length_spec is not None else None,
                rtt=rtt_spec,
                length_name=length_spec.name if length_spec is not None else "",
            )
        )
    return runs


def decide(
    run: PolicyRun,
    batch: RequestBatch,
    m_estimate: np.ndarray,
    edge: LatencyModel,
    cloud: LatencyModel,
    bandwidth_bps: float,
    arrival_s: np.ndarray,
    completion_s: np.ndarray,
    rtt_sample_s: np.ndarray,
) -> tuple[np.ndarray, str]:
    """(edge decisions, which path decided) for one policy over the whole batch."""
    policy = run.policy
    at_once = policy.choose_many(batch, m_estimate, edge, cloud)
    if at_once is not None:
        return np.asarray(at_once, dtype=bool), "choose_many"
    estimator: RttEstimator = run.rtt.create()
    thresholds = policy.rtt_thresholds(batch, m_estimate, edge, cloud, bandwidth_bps)
    count = len(batch)
    on_edge = np.zeros(count, dtype=bool)
    arrivals = arrival_s.tolist()
    done = completion_s.tolist()
    samples = rtt_sample_s.tolist()
    pending: list[tuple[float, float]] = []  # (completion time, rtt) of exchanges in flight
    observe, estimate = estimator.observe, estimator.estimate
    push, pop = heapq.heappush, heapq.heappop
    if thresholds is not None:
        limit = np.asarray(thresholds, dtype=float).tolist()
        for i in range(count):
            now = arrivals[i]
            while pending and pending[0][0] <= now:
                at, rtt = pop(pending)
                observe(rtt, at)
            if estimate(now) >= limit[i]:
                on_edge[i] = True
            else:
                push(pending, (done[i], samples[i]))
        return on_edge, "rtt_thresholds"
    estimates = m_estimate.tolist()
    for i in range(count):
        now = arrivals[i]
        while pending and pending[0][0] <= now:
            at, rtt = pop(pending)
            observe(rtt, at)
        state = SchedulerState(edge, cloud, LinkState(estimate(now), bandwidth_bps), now)
        if policy.choose(batch.request(i), estimates[i], state) == Device.EDGE:
            on_edge[i] = True
        else:
            push(pending, (done[i], samples[i]))
    return on_edge, "choose"


# ----------------------------------------------------------------------------- replay


def _describe_length(run: PolicyRun) -> str:
    """The estimator's name, with the fitted file's name when it has one (``linear:iwslt14``)."""
    if not run.length_name:
        return ""
    model = getattr(getattr(run.length, "params", None), "model", None)
    return f"{run.length_name}:{Path(model).stem}" if model else run.length_name


def _profile(path: str, role: str, model: str) -> DeviceProfile:
    path = os.path.normpath(path)
    if not Path(path).is_file():
        stem = Path(path).stem
        device = stem.split("__", 1)[1] if "__" in stem else "DEVICE"
        raise ConfigError(
            f"{role} device profile {path} does not exist yet; measure it with `cnmt profile "
            f"--model {model} --device {device} --out {path}`"
        )
    profile = load_profile(path)
    if profile.model != model:
        raise ConfigError(
            f"{path}: the {role} profile measured model {profile.model!r} but replay.model is "
            f"{model!r}; point replay.devices.{role} at a profile of {model!r}"
        )
    return profile


def _pct(value: float, reference: float) -> float:
    return 100.0 * (value - reference) / reference if reference else float("nan")


def _check_length_units(runs: list[PolicyRun], spec: CorpusSpec, source: str) -> None:
    """A fitted length model must count tokens like the corpus the replay draws from."""
    for run in runs:
        for fitted in (getattr(run.length, "fitted", None), getattr(run.policy, "fitted", None)):
            if fitted is not None:
                _same_units(fitted, spec, source, run.label)


def _same_units(fitted: Any, spec: CorpusSpec, source: str, label: str) -> None:
    from cnmt.experiments.tokens import same_tokenizer

    pairs = ((fitted.src_tokenizer, spec.src_tokenizer), (fitted.tgt_tokenizer, spec.tgt_tokenizer))
    hashes = fitted.source.get("tokenizer_files", {})
    for theirs, ours in pairs:
        if not same_tokenizer(theirs, ours, hashes):
            raise ConfigError(
                f"{source}: policy {label!r}: its length model counts tokens with "
                f"{theirs!r} but replay.corpus uses {ours!r}; fit the length model with the "
                "corpus' tokenizers (N and M must be in the running model's tokens)"
            )


def replay(
    config: Config,
    connection: str | None = None,
    trace_path: str | None = None,
    requests: int | None = None,
    seed: int | None = None,
    window_start: int | None = None,
    window_samples: int | None = None,
) -> ReplayOutcome:
    """Run one connection profile of ``config`` through every policy."""
    spec: ReplayConfig = config["replay"]
    if requests is not None or seed is not None:
        spec = replace(
            spec, requests=requests or spec.requests, seed=spec.seed if seed is None else seed
        )
    names = list(spec.connections)
    chosen = connection or spec.default_connection or names[0]
    if chosen not in spec.connections:
        raise ConfigError(
            f"{config.source}: no connection profile {chosen!r}; defined: {', '.join(names)}"
        )
    conn = spec.connections[chosen]
    if trace_path is not None:
        # The configured window belongs to the configured trace: another trace is replayed
        # whole unless a window is given for it too.
        conn = replace(conn, trace=str(trace_path), format="auto", start=0, samples=None)
    if window_start is not None:
        conn = replace(conn, start=window_start)
    if window_samples is not None:
        conn = replace(conn, samples=window_samples)
    timings: dict[str, float] = {}
    started = time.perf_counter()

    edge_profile = _profile(spec.devices.edge, "edge", spec.model)
    cloud_profile = _profile(spec.devices.cloud, "cloud", spec.model)
    runs = build_policies(config, spec)
    _check_length_units(runs, spec.corpus, config.source)
    link = link_timeline(conn, spec.requests, spec.link.loss_timeout_s)
    lines = load_corpus_lines(spec.corpus)
    timings["load_s"] = time.perf_counter() - started

    rng = np.random.default_rng(spec.seed)
    pick = draw_requests(lines, spec.corpus, spec.requests, rng)
    n, m = lines.n[pick], lines.m[pick]
    edge_sampler, cloud_sampler = TimeSampler(edge_profile), TimeSampler(cloud_profile)
    edge_s = edge_sampler.sample(n, m, rng)
    cloud_s = cloud_sampler.sample(n, m, rng)
    bandwidth_bps = spec.link.bandwidth_mbps * 1e6
    true_bytes = lines.src_bytes[pick] + lines.tgt_bytes[pick] + spec.link.overhead_bytes
    # Before translating, the gateway knows the request's size, not the response's: it
    # expects a response as many times larger as the corpus' targets are on average.
    ratio = float(lines.tgt_bytes.sum()) / max(float(lines.src_bytes.sum()), 1.0)
    expected_bytes = (
        np.round(lines.src_bytes[pick] * (1.0 + ratio)).astype(np.int64) + spec.link.overhead_bytes
    )
    transmission_s = link.rtt_s + serialisation_s(true_bytes, bandwidth_bps)
    batch = RequestBatch(
        n_tokens=n,
        payload_bytes=expected_bytes,
        m_true=m,
        edge_s=edge_s,
        cloud_s=cloud_s,
        transmission_s=transmission_s,
    )
    completion_s = link.arrival_s + transmission_s + cloud_s
    edge_lm, cloud_lm = edge_profile.fit.latency_model, cloud_profile.fit.latency_model
    timings["prepare_s"] = time.perf_counter() - started - timings["load_s"]

    policies: dict[str, Any] = {}
    estimators: dict[str, Any] = {}
    oracle_edge = batch.edge_s <= batch.cloud_s + batch.transmission_s
    for run in runs:
        began = time.perf_counter()
        if run.policy.uses_length_estimate:
            if run.length is None:
                raise ConfigError(
                    f"{config.source}: policy {run.label!r} needs an output-length estimator: "
                    "add a `length_estimator:` section (e.g. {name: linear, params: {model: "
                    "PATH}}) or give the policy its own"
                )
            m_est = np.asarray(run.length.estimate_many(n, m), dtype=float)
        else:
            m_est = np.full(len(n), np.nan)
            run.length_name = ""
        on_edge, path = decide(
            run,
            batch,
            m_est,
            edge_lm,
            cloud_lm,
            bandwidth_bps,
            link.arrival_s,
            completion_s,
            link.rtt_s,
        )
        latency = np.where(on_edge, edge_s, cloud_s + transmission_s)
        policies[run.label] = {
            "policy": run.policy.name,
            "total_s": float(latency.sum()),
            "mean_s": float(latency.mean()),
            "p50_s": float(np.percentile(latency, 50)),
            "p95_s": float(np.percentile(latency, 95)),
            "p99_s": float(np.percentile(latency, 99)),
            "share_edge": float(on_edge.mean()),
            "share_cloud": float(1.0 - on_edge.mean()),
            "requests_edge": int(on_edge.sum()),
            "requests_cloud": int((~on_edge).sum()),
            "same_device_as_oracle": float((on_edge == oracle_edge).mean()),
            "length_estimator": _describe_length(run) or None,
            "rtt_estimator": run.rtt_name if path != "choose_many" else None,
            "decided_by": path,
        }
        described = _describe_length(run)
        if described and described not in estimators and np.isfinite(m_est).all():
            error = m_est - m
            estimators[described] = {
                "mean_estimate": float(m_est.mean()),
                "mae_tokens": float(np.abs(error).mean()),
                "bias_tokens": float(error.mean()),
                "mae_vs_corpus_tokens": float(np.abs(m_est - lines.m_corpus[pick]).mean()),
            }
        timings[f"policy_{run.label}_s"] = time.perf_counter() - began

    table = {}
    for label, result in policies.items():
        row = {}
        for ref in REFERENCES:
            ref_label = next((lbl for lbl, r in policies.items() if r["policy"] == ref), None)
            if ref_label is not None:
                row[f"vs_{ref}_pct"] = _pct(result["total_s"], policies[ref_label]["total_s"])
        table[label] = row

    def device_info(path: str, profile: DeviceProfile, sampler: TimeSampler) -> dict[str, Any]:
        fit = profile.fit
        return {
            "profile": display_path(path),
            "device": profile.device.name,
            "fit": {"a_n": fit.a_n, "a_m": fit.a_m, "b": fit.b, "r2": fit.r2, "mse": fit.mse},
            "ground_truth": sampler.method,
            "extrapolated_share": float(sampler.extrapolated(n, m).mean()),
            "mean_true_s": float((edge_s if sampler is edge_sampler else cloud_s).mean()),
        }

    timings["total_s"] = time.perf_counter() - started
    result = {
        "format": FORMAT,
        "config": display_path(config.source),
        "description": config.description,
        "model": spec.model,
        "connection_name": chosen,
        "connection": link.info,
        "requests": spec.requests,
        "seed": spec.seed,
        "corpus": {
            **lines.info,
            "mean_n": float(n.mean()),
            "mean_m_true": float(m.mean()),
            "mean_m_corpus": float(lines.m_corpus[pick].mean()),
        },
        "devices": {
            "edge": device_info(spec.devices.edge, edge_profile, edge_sampler),
            "cloud": device_info(spec.devices.cloud, cloud_profile, cloud_sampler),
        },
        "link": {
            "bandwidth_mbps": spec.link.bandwidth_mbps,
            "loss_timeout_s": spec.link.loss_timeout_s,
            "overhead_bytes": spec.link.overhead_bytes,
            "mean_true_rtt_s": float(link.rtt_s.mean()),
        },
        "length_estimators": estimators,
        "policies": policies,
        "table": table,
    }
    # Timings vary run to run; they are kept out of the JSON so that it is reproducible.
    return ReplayOutcome(result=result, timings=timings, window=link.window)


@dataclass(frozen=True)
class ReplayOutcome:
    result: dict[str, Any]  # the replay JSON (deterministic for a config and seed)
    timings: dict[str, float]  # wall seconds per phase and policy (not deterministic)
    window: RttTrace  # the replayed RTT window, for plots


# ----------------------------------------------------------------------------- presentation


def markdown_table(result: dict[str, Any]) -> str:
    """Totals, device split and Table I's percentages of one replay."""
    rows = [
        "| policy | total (s) | mean (ms) | p95 (ms) | edge | cloud | vs edge | vs cloud "
        "| vs Oracle |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]

    def pct(value: float | None) -> str:
        return "" if value is None else f"{value:+.1f}%"

    for label, p in result["policies"].items():
        t = result["table"][label]
        rows.append(
            f"| {label} | {p['total_s']:.1f} | {p['mean_s'] * 1e3:.1f} | {p['p95_s'] * 1e3:.1f} | "
            f"{p['share_edge'] * 100:.1f}% | {p['share_cloud'] * 100:.1f}% | "
            f"{pct(t.get('vs_edge_pct'))} | {pct(t.get('vs_cloud_pct'))} | "
            f"{pct(t.get('vs_oracle_pct'))} |"
        )
    return "\n".join(rows)


def plot_rtt_window(
    link_info: dict[str, Any], window: RttTrace, path: str | Path, title: str = ""
) -> None:
    """Fig. 4 style: the RTT of the replayed window over time, lost pings marked."""
    plt = pyplot()
    if window.times_s is not None:
        x, unit = window.times_s / 3600.0, "hours since window start"
    else:
        x, unit = np.arange(len(window)), "sample"
    fig, ax = plt.subplots(figsize=(7, 3))
    ax.plot(x, window.rtt_ms, lw=0.7, color="tab:blue", label="RTT")
    if window.lost.any():
        low = np.nanmin(window.rtt_ms)
        ax.plot(x[window.lost], np.full(int(window.lost.sum()), low), "rx", ms=4, label="lost ping")
    stats = window.summary()
    ax.axhline(
        stats["median_ms"],
        color="gray",
        lw=0.8,
        ls="--",
        label=f"median {stats['median_ms']:.1f} ms",
    )
    ax.set_xlabel(unit)
    ax.set_ylabel("RTT (ms)")
    w = link_info["window"]
    where = (
        f"{Path(link_info['trace']).name}, samples {w['start']}..{w['start'] + w['samples'] - 1}"
    )
    ax.set_title(f"{title}: {where}" if title else where, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
