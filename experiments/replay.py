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
3. **Link.** Requests arrive in trace time: spread evenly over the window, one every
   ``interval_s``, as a Poisson process at ``rate`` per second, or at the times of a file
   (``arrivals``). A request's true round trip is the RTT of the latest trace sample at its
   arrival. If that ping was lost, the exchange is charged one retransmission timeout
   (``loss_timeout_s``) on top of the last answered RTT: the packet was lost and resent. The
   transmission time adds the payload (request plus response, UTF-8 bytes plus
   ``overhead_bytes``) at ``bandwidth_mbps``.
4. **Policies.** Each policy decides every request in arrival order with its own RTT
   estimator, which learns only from that policy's own offloads (and probes, with
   ``rtt_probe_s``): an offloaded exchange's round trip becomes a sample when it completes
   (arrival + transmission + cloud time), as on a live gateway, so the estimate is as fresh as
   the last offload. Its learning components (``online`` latency models, ``online_linear``)
   learn from each request once it has finished, never before. A request's latency is its
   execution time plus, when offloaded, its transmission time, plus with ``queues`` its wait
   for a free worker on the device (:mod:`cnmt.experiments.simulate`); without queues (the
   paper's method) every request finds both devices idle and totals are plain sums.
5. **Table I.** Each policy's total against edge-only, cloud-only and the Oracle, in percent:
   ``100 * (total - reference) / reference`` (negative = faster).
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from cnmt.config import Config, display_path
from cnmt.datasets.corpora import heldout_mask, read_parallel
from cnmt.datasets.link import RttTimeline, serialisation_s
from cnmt.datasets.traces import RttTrace
from cnmt.errors import ConfigError
from cnmt.experiments import convergence
from cnmt.experiments.config import (
    CloudSpec,
    ConnectionSpec,
    CorpusSpec,
    DriftSpec,
    ReplayConfig,
)
from cnmt.experiments.groundtruth import Sampler, ground_truth
from cnmt.experiments.outputs import load_output_lengths
from cnmt.experiments.simulate import CloudPath, Queues, Simulation, Stream, simulate
from cnmt.experiments.tokens import get_counter
from cnmt.files import read_lines
from cnmt.plotting import pyplot
from cnmt.profiling.profiles import DeviceProfile
from cnmt.profiling.profiles import load as load_profile
from cnmt.registry import ComponentSpec, get_components
from cnmt.schedulers.base import (
    DevicePolicy,
    LatencyModel,
    RequestBatch,
)
from cnmt.schedulers.core import DecisionComponents, DecisionSpecs, TargetSetup

FORMAT = "cnmt-replay/1"
REFERENCES = ("edge", "cloud", "oracle", "oracle_expected")


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


# ----------------------------------------------------------------------------- policies


@dataclass
class PolicyRun:
    """One policy to replay and the components its gateway decides and learns with (specs:
    every simulation of it starts from fresh instances)."""

    label: str
    policy: DevicePolicy
    specs: DecisionSpecs
    rtt_probe_s: float | None = None

    @property
    def length(self) -> ComponentSpec | None:
        return self.specs.length_estimator

    @property
    def rtt(self) -> ComponentSpec:
        return self.specs.rtt_estimator

    def components(self, edge: TargetSetup, clouds: list[TargetSetup]) -> DecisionComponents:
        """Fresh components (the policy instance is kept: it does not learn); a policy that
        ignores the length estimate decides without one."""
        made = self.specs.create(edge, clouds, policy=self.policy)
        if not self.policy.uses_length_estimate:
            made.length = None
        return made

    @property
    def closed_loop(self) -> bool:
        """Whether anything it decides with learns from what it observes."""
        classes = [
            get_components().get(spec.kind, spec.name).cls
            for spec in (
                self.specs.length_estimator,
                self.specs.edge_latency,
                self.specs.cloud_latency,
            )
            if spec is not None
        ]
        if self.policy.needs_truth:
            return False  # an Oracle decides from the truth, whatever its models learn
        return any(getattr(cls, "learns", False) for cls in classes)


def build_policies(config: Config, replay: ReplayConfig) -> list[PolicyRun]:
    """Every policy with its components: the policy's own overrides, else the config's
    top-level sections, else the defaults (validated when the config was loaded)."""
    runs = []
    for spec in replay.policy_specs():
        specs = DecisionSpecs.select(
            lambda key, spec=spec: spec.policy if key == "device_policy" else getattr(spec, key),
            config.get,
            source=config.source,
        )
        runs.append(
            PolicyRun(
                label=spec.label,
                policy=spec.policy.create(),
                specs=specs,
                rtt_probe_s=spec.rtt_probe_s,
            )
        )
    return runs


# ----------------------------------------------------------------------------- replay


def _describe_length(run: PolicyRun) -> str:
    """The estimator's name, with the fitted file's name when it has one (``linear:iwslt14``);
    empty for a policy that ignores the length estimate."""
    if run.length is None or not run.policy.uses_length_estimate:
        return ""
    model = getattr(run.length.params, "model", None)
    return f"{run.length.name}:{Path(model).stem}" if model else run.length.name


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
        key = "replay.edge_model" if role == "edge" else "replay.model"
        raise ConfigError(
            f"{path}: the {role} profile measured model {profile.model!r} but the {role} runs "
            f"{model!r} ({key}); point replay.devices.{role} at a profile of {model!r}"
        )
    return profile


def _pct(value: float, reference: float) -> float:
    return 100.0 * (value - reference) / reference if reference else float("nan")


def _check_length_units(runs: list[PolicyRun], spec: CorpusSpec, source: str) -> None:
    """A fitted length model must count tokens like the corpus the replay draws from."""
    for run in runs:
        length = run.length.create() if run.length is not None else None
        for fitted in (getattr(length, "fitted", None), getattr(run.policy, "fitted", None)):
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


def _apply_drift(
    drift: list[DriftSpec], device: str, times: np.ndarray, at: np.ndarray, arrival: np.ndarray
) -> np.ndarray:
    """``times`` with each drift of ``device`` applied from its moment on (``at``: when each
    time's request arrives; a drift starts at the arrival of request ``at_fraction * n``)."""
    out = times.copy()
    for d in drift:
        if d.device == device:
            start = arrival[min(int(d.at_fraction * len(arrival)), len(arrival) - 1)]
            out[at >= start] *= d.factor
    return out


def replay(
    config: Config,
    connection: str | None = None,
    trace_path: str | None = None,
    requests: int | None = None,
    seed: int | None = None,
    window_start: int | None = None,
    window_samples: int | None = None,
    arrival_rate: float | None = None,
    window_hours: float | None = None,
    queues: bool | None = None,
    labels: Collection[str] | None = None,
    fast_paths: bool = True,
    progress: Callable[[str, int, int], None] | None = None,
) -> ReplayOutcome:
    """Run one connection profile of ``config`` through every policy.

    ``progress(label, done, total)`` is called as each policy starts (``done`` of ``total``
    policies finished) and once more when the last one has finished (label ``""``).

    ``arrival_rate`` replays Poisson arrivals at that rate with queues on; ``window_hours``
    places the requests in that many hours of the trace window; ``queues`` turns the devices'
    queues on or off (default: the config's ``replay.queues.enabled``); ``labels`` replays only
    the policies of those labels; ``fast_paths=False`` drives the decision core for every
    policy (the fast paths are held to the same decisions by the tests).
    """
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
    if window_hours is not None:
        conn = replace(conn, samples=None, hours=window_hours)
    if arrival_rate is not None:
        conn = replace(conn, arrivals="poisson", rate=arrival_rate)
        queues = True if queues is None else queues
    if queues is not None:
        spec = replace(spec, queues=replace(spec.queues, enabled=queues))
    timings: dict[str, float] = {}
    started = time.perf_counter()

    edge_profile = _profile(spec.devices.edge, "edge", spec.models["edge"])
    first = spec.clouds[0] if spec.clouds else CloudSpec("cloud", str(spec.devices.cloud))
    cloud_profile = _profile(first.profile, "cloud", spec.models["cloud"])
    runs = build_policies(config, spec)
    if labels is not None:
        unknown = sorted(set(labels) - {run.label for run in runs})
        if unknown:
            raise ConfigError(
                f"{config.source}: no policy labelled {', '.join(map(repr, unknown))}; the "
                f"config's policies: {', '.join(run.label for run in runs)}"
            )
        runs = [run for run in runs if run.label in labels]
    _check_length_units(runs, spec.corpus, config.source)
    link = link_timeline(conn, spec.requests, spec.link.loss_timeout_s, spec.seed)
    lines = load_corpus_lines(spec.corpus)
    timings["load_s"] = time.perf_counter() - started

    rng = np.random.default_rng(spec.seed)
    pick = draw_requests(lines, spec.corpus, spec.requests, rng)
    n, m = lines.n[pick], lines.m[pick]
    edge_sampler, cloud_sampler = ground_truth(edge_profile), ground_truth(cloud_profile)
    arrival = link.arrival_s
    factor = first.time_factor
    edge_s = _apply_drift(spec.drift, "edge", edge_sampler.sample(n, m, rng), arrival, arrival)
    cloud_s = _apply_drift(
        spec.drift, "cloud", cloud_sampler.sample(n, m, rng) * factor, arrival, arrival
    )
    edge_expected = _apply_drift(spec.drift, "edge", edge_sampler.mean_time(n, m), arrival, arrival)
    cloud_expected = _apply_drift(
        spec.drift, "cloud", cloud_sampler.mean_time(n, m) * factor, arrival, arrival
    )
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
        edge_expected_s=edge_expected,
        cloud_expected_s=cloud_expected,
    )
    more_clouds, more_setups, more_info = _more_clouds(
        spec, n, m, arrival, true_bytes, bandwidth_bps, queued=spec.queues.enabled
    )
    stream = Stream(
        batch, arrival, link.rtt_s, bandwidth_bps, link.timeline.rtt_at, tuple(more_clouds)
    )
    queue_model, queue_info = _queues(spec, lines, cloud_sampler, arrival, factor)
    edge_lm = edge_profile.fit.latency_model
    cloud_lm = _scaled(cloud_profile.fit.latency_model, factor)
    timings["prepare_s"] = time.perf_counter() - started - timings["load_s"]

    policies: dict[str, Any] = {}
    estimators: dict[str, Any] = {}
    decisions: dict[str, np.ndarray] = {}
    targets: dict[str, np.ndarray] = {}
    edge_target = TargetSetup("edge", edge_lm, queue_model.edge_workers if queue_model else 1)
    cloud_targets = [
        TargetSetup(
            first.name, cloud_lm, queue_model.cloud_workers if queue_model else 1, bandwidth_bps
        ),
        *more_setups,
    ]
    for index, run in enumerate(runs):
        if progress is not None:
            progress(run.label, index, len(runs))
        began = time.perf_counter()
        learners = run.components(edge_target, cloud_targets)
        if run.policy.uses_length_estimate and learners.length is None:
            raise ConfigError(
                f"{config.source}: policy {run.label!r} needs an output-length estimator: "
                "add a `length_estimator:` section (e.g. {name: linear, params: {model: "
                "PATH}}) or give the policy its own"
            )
        m_est = None
        if run.policy.uses_length_estimate and learners.length is not None:
            if not learners.length.learns:
                m_est = np.asarray(learners.length.estimate_many(n, m), dtype=float)
        # A policy that draws gets its own seeded stream (the other draws stay as without it).
        policy_rng = np.random.default_rng([spec.seed, 4, index]) if run.policy.uses_rng else None
        sim = simulate(
            learners,
            stream,
            queue_model,
            m_est,
            probe_s=run.rtt_probe_s,
            fast_paths=fast_paths,
            rng=policy_rng,
        )
        decisions[run.label] = sim.on_edge
        targets[run.label] = sim.target_index()
        policies[run.label] = _policy_result(run, sim, batch, learners, queue_model)
        described = _describe_length(run)
        if described and described not in estimators and np.isfinite(sim.m_estimate).all():
            error = sim.m_estimate - m
            estimators[described] = {
                "mean_estimate": float(sim.m_estimate.mean()),
                "mae_tokens": float(np.abs(error).mean()),
                "bias_tokens": float(error.mean()),
                "mae_vs_corpus_tokens": float(np.abs(sim.m_estimate - lines.m_corpus[pick]).mean()),
            }
        timings[f"policy_{run.label}_s"] = time.perf_counter() - began
    if progress is not None:
        progress("", len(runs), len(runs))
    # How often each policy chose as the clairvoyant Oracle did (replayed, or without queues
    # computed from the truth).
    oracle = next((label for label, r in policies.items() if r["policy"] == "oracle"), None)
    if oracle is not None:
        for label, ran_on in targets.items():
            same = float((ran_on == targets[oracle]).mean())
            policies[label]["same_device_as_oracle"] = same
    elif queue_model is None and not more_clouds:
        reference = oracle_decisions(batch)
        for label, on_edge in decisions.items():
            policies[label]["same_device_as_oracle"] = float((on_edge == reference).mean())

    table = {}
    for label, result in policies.items():
        row = {}
        for ref in REFERENCES:
            ref_label = next((lbl for lbl, r in policies.items() if r["policy"] == ref), None)
            if ref_label is not None:
                row[f"vs_{ref}_pct"] = _pct(result["total_s"], policies[ref_label]["total_s"])
        table[label] = row

    def device_info(
        path: str, profile: DeviceProfile, sampler: Sampler, factor: float = 1.0
    ) -> dict[str, Any]:
        fit = profile.fit
        a_n, a_m, b = fit.a_n * factor, fit.a_m * factor, fit.b * factor
        extra = {"time_factor": factor} if factor != 1.0 else {}
        return {
            "profile": display_path(path),
            "device": profile.device.name,
            **extra,
            "fit": {"a_n": a_n, "a_m": a_m, "b": b, "r2": fit.r2, "mse": fit.mse},
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
        "models": spec.models,
        "connection_name": chosen,
        "connection": link.info,
        "requests": spec.requests,
        "seed": spec.seed,
        "queues": queue_info,
        "drift": [dataclasses.asdict(d) for d in spec.drift],
        "corpus": {
            **lines.info,
            "mean_n": float(n.mean()),
            "mean_m_true": float(m.mean()),
            "mean_m_corpus": float(lines.m_corpus[pick].mean()),
        },
        "devices": {
            "edge": device_info(spec.devices.edge, edge_profile, edge_sampler),
            first.name: device_info(first.profile, cloud_profile, cloud_sampler, factor),
            **more_info,
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
    return ReplayOutcome(result=result, timings=timings, window=link.window, targets=targets)


def oracle_decisions(batch: RequestBatch) -> np.ndarray:
    """The clairvoyant Oracle's decisions without queues (True = edge)."""
    return batch.edge_s <= batch.cloud_s + batch.transmission_s


def _scaled(model: LatencyModel, factor: float) -> LatencyModel:
    if factor == 1.0:
        return model
    return LatencyModel(model.a_n * factor, model.a_m * factor, model.b * factor)


def _more_clouds(
    spec: ReplayConfig,
    n: np.ndarray,
    m: np.ndarray,
    arrival: np.ndarray,
    true_bytes: np.ndarray,
    bandwidth_bps: float,
    queued: bool,
) -> tuple[list[CloudPath], list[TargetSetup], dict[str, Any]]:
    """The clouds after the first: per request each one's true time (its own random stream,
    so the other draws stay as with one cloud), its link's RTT at the request's arrival, the
    transmission time; what its gateway knows of it; what the report says of it."""
    paths, setups, info = [], [], {}
    for k, cloud in enumerate(spec.clouds[1:]):
        profile = _profile(cloud.profile, "cloud", spec.models["cloud"])
        sampler = ground_truth(profile)
        rng = np.random.default_rng([spec.seed, 3 + k])
        exec_s = sampler.sample(n, m, rng) * cloud.time_factor
        assert cloud.link is not None  # checked when the config was loaded
        timeline = cloud.link.timeline(spec.link.loss_timeout_s)
        rtt = timeline.rtt_s[timeline.index_at(arrival)]
        paths.append(
            CloudPath(
                cloud.name,
                exec_s,
                sampler.mean_time(n, m) * cloud.time_factor,
                rtt,
                rtt + serialisation_s(true_bytes, bandwidth_bps),
                timeline.rtt_at,
                cloud.workers,
            )
        )
        fit = _scaled(profile.fit.latency_model, cloud.time_factor)
        setups.append(TargetSetup(cloud.name, fit, cloud.workers if queued else 1, bandwidth_bps))
        info[cloud.name] = {
            "profile": display_path(cloud.profile),
            "device": profile.device.name,
            "time_factor": cloud.time_factor,
            "fit": {"a_n": fit.a_n, "a_m": fit.a_m, "b": fit.b, "r2": profile.fit.r2},
            "ground_truth": sampler.method,
            "extrapolated_share": float(sampler.extrapolated(n, m).mean()),
            "mean_true_s": float(exec_s.mean()),
            "mean_true_rtt_s": float(rtt.mean()),
            "trace": display_path(str(cloud.link.trace)) if cloud.link.trace else None,
        }
    return paths, setups, info


def _queues(
    spec: ReplayConfig,
    lines: CorpusLines,
    cloud: Sampler,
    arrival: np.ndarray,
    factor: float = 1.0,
) -> tuple[Queues | None, dict[str, Any]]:
    """The devices' queues (None without) and what the report says of them. The background
    load is drawn with its own random stream: other draws stay as without it."""
    q = spec.queues
    info: dict[str, Any] = {"enabled": q.enabled}
    if not q.enabled:
        return None, info
    span = float(arrival[-1] - arrival[0]) if len(arrival) > 1 else 0.0
    rng = np.random.default_rng([spec.seed, 2])
    count = rng.poisson(q.background_rate * span) if q.background_rate > 0 else 0
    at = np.sort(rng.uniform(float(arrival[0]), float(arrival[0]) + span, count))
    pick = draw_requests(lines, spec.corpus, count, rng) if count else np.zeros(0, np.int64)
    exec_s = cloud.sample(lines.n[pick], lines.m[pick], rng) * factor if count else np.zeros(0)
    exec_s = _apply_drift(spec.drift, "cloud", exec_s, at, arrival)
    info.update(
        edge_workers=q.edge_workers,
        cloud_workers=q.cloud_workers,
        background_rate=q.background_rate,
        background_requests=int(count),
    )
    return Queues(q.edge_workers, q.cloud_workers, at, exec_s), info


def _policy_result(
    run: PolicyRun,
    sim: Simulation,
    batch: RequestBatch,
    learners: DecisionComponents,
    queues: Queues | None = None,
) -> dict[str, Any]:
    clouds = [c.name for c in learners.clouds]
    """One policy's line of the replay JSON. A device's utilization is the share of its
    workers' time spent translating (1.0: every worker busy all the time)."""
    edge_workers = queues.edge_workers if queues is not None else 1
    cloud_workers = queues.cloud_workers if queues is not None else 1
    latency, on_edge = sim.latency_s, sim.on_edge
    chosen = sim.target_index()
    targets = sim.targets if sim.target is not None else ("edge", clouds[0])
    true_exec = (
        sim.exec_s if sim.exec_s is not None else np.where(on_edge, batch.edge_s, batch.cloud_s)
    )
    relative = (sim.predicted_s - true_exec) / true_exec
    edge_waits = sim.wait_s[on_edge]
    cloud_waits = sim.wait_s[~on_edge]
    out: dict[str, Any] = {
        "policy": run.policy.name,
        "total_s": float(latency.sum()),
        "mean_s": float(latency.mean()),
        "p50_s": float(np.percentile(latency, 50)),
        "p95_s": float(np.percentile(latency, 95)),
        "p99_s": float(np.percentile(latency, 99)),
        "share_edge": float(on_edge.mean()),
        "share_cloud": float(1.0 - on_edge.mean()),  # all clouds together
        "shares": {name: float((chosen == k).mean()) for k, name in enumerate(targets)},
        "requests_edge": int(on_edge.sum()),
        "requests_cloud": int((~on_edge).sum()),
        "length_estimator": _describe_length(run) or None,
        "rtt_estimator": (
            run.rtt.name if sim.decided_by != "choose_many" and not run.policy.needs_truth else None
        ),
        "decided_by": sim.decided_by,
        "closed_loop": run.closed_loop,
        "devices": {
            "edge": {
                "utilization": sim.busy_s["edge"] / sim.span_s / edge_workers,
                "mean_queue_length": float(edge_waits.sum()) / sim.span_s,
                "mean_wait_s": float(edge_waits.mean()) if edge_waits.size else 0.0,
            },
            "cloud": {
                "utilization": sim.busy_s["cloud"] / sim.span_s / cloud_workers,
                "mean_queue_length": (float(cloud_waits.sum()) + sim.background_wait_s)
                / sim.span_s,
                "mean_wait_s": float(cloud_waits.mean()) if cloud_waits.size else 0.0,
            },
        },
    }
    if len(targets) > 2:  # several clouds: each one's own line beside "cloud", all of them
        for k, cloud in enumerate(learners.clouds, start=1):
            waits = sim.wait_s[chosen == k]
            workers = cloud.workers
            out["devices"][cloud.name] = {
                "utilization": sim.busy_s[cloud.name] / sim.span_s / workers,
                "mean_queue_length": float(waits.sum()) / sim.span_s,
                "mean_wait_s": float(waits.mean()) if waits.size else 0.0,
            }
    if np.isfinite(relative).any():
        out["median_relative_error"] = {
            device: float(np.median(np.abs(relative[mask & np.isfinite(relative)])))
            for device, mask in (("edge", on_edge), ("cloud", ~on_edge))
            if (mask & np.isfinite(relative)).any()
        }
    if run.closed_loop:
        learned = {}
        for target in learners.targets:
            device, model = target.name, target.latency
            if model.learns:
                c = model.current()
                learned[device] = {"a_n": c.a_n, "a_m": c.a_m, "b": c.b}
        length = learners.length
        if length is not None and length.learns:
            if hasattr(length, "gamma"):  # a line refitted: its coefficients
                learned["length"] = {"gamma": length.gamma, "delta": length.delta}
            else:  # means by input length: how many inputs lengths it has seen
                learned["length"] = {"bins": len(getattr(length, "bins", {}))}
        out["learned"] = learned
    out.update(convergence.policy_fields(sim, batch))  # per-window totals, exploration's cost
    return out


@dataclass(frozen=True)
class ReplayOutcome:
    result: dict[str, Any]  # the replay JSON (deterministic for a config and seed)
    timings: dict[str, float]  # wall seconds per phase and policy (not deterministic)
    window: RttTrace  # the replayed RTT window, for plots
    # per policy label, per request: the index of the target that ran it (0: the edge)
    targets: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)


# ----------------------------------------------------------------------------- presentation


def markdown_table(result: dict[str, Any]) -> str:
    """Totals, tails, device split and Table I's percentages of one replay (with the gap to
    the expected-time Oracle when it was replayed, and each device's utilization with queues)."""
    expected = any(p["policy"] == "oracle_expected" for p in result["policies"].values())
    queued = result.get("queues", {}).get("enabled", False)
    head = "| policy | total (s) | mean (ms) | p95 (ms) | p99 (ms) | edge | vs edge | vs cloud "
    head += "| vs Oracle |" + (" vs E[Oracle] |" if expected else "")
    head += " edge busy | cloud busy |" if queued else ""
    rows = [head, "|---|" + "---:|" * (head.count("|") - 2)]

    def pct(value: float | None) -> str:
        if value is None:
            return ""
        return f"{0.0 if abs(value) < 0.05 else value:+.1f}%"  # no "-0.0%" from rounding

    for label, p in result["policies"].items():
        t = result["table"][label]
        row = (
            f"| {label} | {p['total_s']:.1f} | {p['mean_s'] * 1e3:.1f} | {p['p95_s'] * 1e3:.1f} | "
            f"{p['p99_s'] * 1e3:.1f} | {p['share_edge'] * 100:.1f}% | "
            f"{pct(t.get('vs_edge_pct'))} | {pct(t.get('vs_cloud_pct'))} | "
            f"{pct(t.get('vs_oracle_pct'))} |"
        )
        if expected:
            row += f" {pct(t.get('vs_oracle_expected_pct'))} |"
        if queued:
            devices = p["devices"]
            row += (
                f" {devices['edge']['utilization'] * 100:.0f}% |"
                f" {devices['cloud']['utilization'] * 100:.0f}% |"
            )
        rows.append(row)
    return "\n".join(rows)


def describe_mode(result: dict[str, Any]) -> str:
    """How requests arrived and whether the devices queued, as one line."""
    conn, queues = result["connection"], result.get("queues", {"enabled": False})
    gap = conn["interarrival_s"]
    arrivals = f"{conn['arrivals']} arrivals, one every {gap:.3g} s on average"
    if not queues["enabled"]:
        return f"{arrivals}; no queues (the paper's method: every request finds idle devices)"
    background = (
        f", a background load of {queues['background_rate']:g}/s at the cloud "
        f"({queues['background_requests']} requests)"
        if queues["background_rate"]
        else ""
    )
    return (
        f"{arrivals}; FIFO queues: {queues['edge_workers']} edge and "
        f"{queues['cloud_workers']} cloud worker(s){background}"
    )


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
