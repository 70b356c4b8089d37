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

This module runs the replay (:func:`replay`); the requests are drawn and placed on the trace in
:mod:`cnmt.experiments.replay_requests`, the policies built in
:mod:`cnmt.experiments.replay_policies`, and each policy's result line and a result's
presentation (table, figure) are written in :mod:`cnmt.experiments.replay_output`.
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
from cnmt.datasets.link import serialisation_s
from cnmt.datasets.traces import RttTrace
from cnmt.errors import ConfigError
from cnmt.experiments.config import CloudSpec, DriftSpec, ReplayConfig
from cnmt.experiments.groundtruth import Sampler, ground_truth
from cnmt.experiments.replay_output import policy_result
from cnmt.experiments.replay_policies import build_policies, check_length_units, describe_length
from cnmt.experiments.replay_requests import (
    CorpusLines,
    draw_requests,
    link_timeline,
    load_corpus_lines,
)
from cnmt.experiments.simulate import CloudPath, Queues, Stream, simulate
from cnmt.profiling.profiles import DeviceProfile
from cnmt.profiling.profiles import load as load_profile
from cnmt.schedulers.base import LatencyModel, RequestBatch
from cnmt.schedulers.core import TargetSetup

FORMAT = "cnmt-replay/1"
REFERENCES = ("edge", "cloud", "oracle", "oracle_expected")


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
    check_length_units(runs, spec.corpus, config.source)
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
        policies[run.label] = policy_result(run, sim, batch, learners, queue_model)
        described = describe_length(run)
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


@dataclass(frozen=True)
class ReplayOutcome:
    result: dict[str, Any]  # the replay JSON (deterministic for a config and seed)
    timings: dict[str, float]  # wall seconds per phase and policy (not deterministic)
    window: RttTrace  # the replayed RTT window, for plots
    # per policy label, per request: the index of the target that ran it (0: the edge)
    targets: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
