"""One device policy over a stream of requests: decisions, queues, and what the gateway learns.

The replay (:mod:`cnmt.experiments.replay`) prepares the requests: arrival times, N, the true
M, the true execution time on each device (and its expectation), the true transmission time.
:func:`simulate` then plays them in arrival order through one policy, as a live gateway would:

1. **Learning, only from the past.** Before deciding at time ``t``, every request that has
   *finished* by ``t`` is observed: an offloaded one gives the RTT estimator its round trip
   minus the cloud's own time (its wait and execution) and the payload time, the cloud-wait
   estimator its reported wait less the part the gateway's own earlier offloads predicted
   (what other clients caused), and the cloud's latency model its ``(N, M, exec)``; a local one
   gives the edge's latency model its ``(N, M, exec)``; both give a learning length estimator
   ``(N, M)``. An observation never exists before its request finished.
2. **The decision** is the policy's, on the state a live gateway would have: the latency
   models' current coefficients, the RTT estimate at ``t``, the edge's backlog (the
   *predicted* remaining time of its running and queued requests, predicted when each was
   queued), the cloud's expected wait (the gateway's own offloads' predicted backlog,
   :mod:`cnmt.schedulers.cloud_backlog`, plus the cloud-wait estimate) and, for the Oracles
   only, the request's truth (with the true waits of the queues).
3. **The devices.** Without queues (the paper's method) every request finds both devices idle:
   its latency is its execution time, plus the transmission time when offloaded. With queues,
   each device is a FIFO with ``workers`` servers: a request waits for a free server, in the
   order the gateway sent them; an offloaded request reaches the cloud half a transmission
   after it left, where other gateways' requests (a Poisson background load) compete for the
   same servers, and its answer takes the other half back. Latency = wait + execution (+ the
   transmission).

The general loop (:func:`_general`) does all of this for any policy. Faster paths, which tests
hold to the same decisions, cover the built-ins: decisions taken at once (``choose_many``:
edge-only, cloud-only, the Oracles without queues) need no loop without queues and a
vectorized FIFO recursion with them; the paper's method (the C-NMT rule, fixed models, no
queues) needs only the RTT estimator in its loop; the C-NMT and Oracle rules with queues and
fixed models get a lean loop of their own.
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from cnmt.schedulers.base import (
    Device,
    DevicePolicy,
    LengthEstimator,
    LinearRule,
    LinkState,
    Request,
    RequestBatch,
    SchedulerState,
    TruthRule,
)
from cnmt.schedulers.cloud_backlog import OwnCloudBacklog
from cnmt.schedulers.latency_models import LatencyEstimator
from cnmt.schedulers.rtt_estimators import RttEstimator

# Between two requests, at most this many idle probes of the link are simulated (the latest
# ones): a sparse replay (requests minutes apart, probes every second) would otherwise spend
# nearly all its time probing. The built-in RTT estimators have forgotten the earlier probes
# anyway: `last` keeps one sample, `median` its window, `ewma` weighs a sample 64 probes old
# (1 - alpha)^64, under 2e-4 at the default alpha; only `median`'s floor (the lowest RTT it
# decays toward when stale) is taken over the simulated probes alone.
MAX_PROBES_BETWEEN = 64


class _CloudServers:
    """The cloud's FIFO servers (a heap of the times each is next free), shared with the
    background load, whose requests are admitted in arrival order up to a given time."""

    def __init__(self, queues: Queues | None) -> None:
        self.free = [0.0] * (queues.cloud_workers if queues is not None else 1)
        self._arrival = queues.background_arrival_s.tolist() if queues is not None else []
        self._exec = queues.background_exec_s.tolist() if queues is not None else []
        self._next = 0
        self.background_wait_s = 0.0

    def admit_background(self, until: float) -> None:
        """Queue every background request that has arrived by ``until``."""
        arrival, free = self._arrival, self.free
        while self._next < len(arrival) and arrival[self._next] <= until:
            start = max(arrival[self._next], free[0])
            self.background_wait_s += start - arrival[self._next]
            heapq.heapreplace(free, start + self._exec[self._next])
            self._next += 1


class _EdgeBacklog:
    """What a live ``EdgeWorker.backlog_s`` reports, from the replay's side: the predicted
    times of the local requests not yet done, less what the running ones have already run,
    per edge worker."""

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self._jobs: deque[tuple[float, float, float]] = deque()  # (start, done, predicted)
        self._queued = 0.0  # sum of the predictions in _jobs

    def add(self, start: float, done: float, predicted: float) -> None:
        self._jobs.append((start, done, predicted))
        self._queued += predicted

    def at(self, now: float) -> float:
        jobs = self._jobs
        while jobs and jobs[0][1] <= now:
            self._queued -= jobs.popleft()[2]
        backlog = self._queued
        for k, (start, _, predicted) in enumerate(jobs):
            if k == self.workers:
                break
            if start <= now:
                backlog -= min(predicted, now - start)
        return max(0.0, backlog) / self.workers


@dataclass(frozen=True)
class Queues:
    """The devices as FIFO queues: servers per device and the cloud's background load
    (arrival times at the cloud and execution times of other gateways' requests)."""

    edge_workers: int = 1
    cloud_workers: int = 1
    background_arrival_s: np.ndarray = field(default_factory=lambda: np.zeros(0))
    background_exec_s: np.ndarray = field(default_factory=lambda: np.zeros(0))


@dataclass(frozen=True)
class Stream:
    """The requests, in arrival order (arrays of one length), and the link's RTT at any time
    (what a probe of the link measures)."""

    batch: RequestBatch  # N, expected payload, true M and the truth (times, transmission)
    arrival_s: np.ndarray
    rtt_s: np.ndarray  # the true round trip an offload measures (transmission minus payload)
    bandwidth_bps: float
    rtt_at: Callable[[float], float] | None = None


@dataclass
class Learners:
    """What one policy's gateway learns with: fresh instances per simulated policy.

    ``rtt_probe_s``: when no round trip has been measured for that long, the gateway probes
    the link (a tiny request answered at once) every ``rtt_probe_s`` until one is: the RTT
    estimate then never goes stale while everything runs on the edge, and a probe that finds
    the cloud empty (no request waiting or running) is a cloud-wait sample of 0, as a live
    gateway's ``learn_from_probes`` does. None: no probes (the paper's gateway learns only from
    offloads).
    """

    length: LengthEstimator | None
    rtt: RttEstimator
    cloud_wait: RttEstimator
    edge: LatencyEstimator
    cloud: LatencyEstimator
    rtt_probe_s: float | None = None


@dataclass
class Simulation:
    """What happened to every request under one policy."""

    on_edge: np.ndarray
    latency_s: np.ndarray
    wait_s: np.ndarray  # the queue wait on the device that ran it
    m_estimate: np.ndarray
    predicted_s: np.ndarray  # the decision's predicted execution time on the device that ran it
    decided_by: str
    busy_s: dict[str, float]
    span_s: float
    background_wait_s: float = 0.0
    # Per request, whether the decision explored (a policy with ``last_explored``, such as
    # cnmt_explore), and the decision's expected added time when it did; None otherwise.
    explored: np.ndarray | None = None
    explored_expected_s: np.ndarray | None = None


def simulate(
    policy: DevicePolicy,
    stream: Stream,
    learners: Learners,
    queues: Queues | None,
    m_estimate: np.ndarray | None,
) -> Simulation:
    """Play ``stream`` through ``policy`` (see the module docstring); ``m_estimate`` holds the
    length estimates when they can be computed up front (an estimator that does not learn)."""
    count = len(stream.batch)
    learning = not policy.needs_truth and (  # an Oracle ignores what the models learn
        learners.rtt_probe_s is not None
        or learners.edge.learns
        or learners.cloud.learns
        or (policy.uses_length_estimate and learners.length is not None and learners.length.learns)
    )
    if queues is None or not policy.needs_truth:
        estimates = m_estimate if m_estimate is not None else np.full(count, np.nan)
        at_once = policy.choose_many(stream.batch, estimates)
        if at_once is not None:
            on_edge = np.asarray(at_once, dtype=bool)
            if queues is None:
                return _all_at_once(on_edge, stream, learners, m_estimate)
            return _fixed_decisions_queued(on_edge, stream, learners, queues, m_estimate)
    rule, truth = policy.linear_rule(), policy.truth_rule()
    if not learning and (rule is not None or truth is not None):
        if m_estimate is None and rule is not None and rule.m_tokens is None:
            pass  # no estimates up front: the general loop
        elif queues is None and rule is not None:
            return _paper_method(rule, stream, learners, m_estimate)
        elif queues is not None:
            return _rules_queued(rule, truth, stream, learners, queues, m_estimate)
    return _general(policy, stream, learners, queues, m_estimate)


# ----------------------------------------------------------------------------- shared parts


def _estimates(
    m_estimate: np.ndarray | None, count: int, rule: LinearRule | None = None
) -> np.ndarray:
    """The M each decision used (the rule's fixed M when it has one)."""
    if rule is not None and rule.m_tokens is not None:
        return np.full(count, float(rule.m_tokens))
    if m_estimate is None:
        return np.full(count, np.nan)
    return np.asarray(m_estimate, dtype=float).copy()


def _predicted(
    on_edge: np.ndarray, stream: Stream, learners: Learners, m: np.ndarray
) -> np.ndarray:
    """Fixed models' predicted execution time on the device that ran each request."""
    n = stream.batch.n_tokens.astype(float)
    e, c = learners.edge.current(), learners.cloud.current()
    return np.where(on_edge, e.a_n * n + e.a_m * m + e.b, c.a_n * n + c.a_m * m + c.b)


def _thresholds(rule: LinearRule, stream: Stream, learners: Learners, m: np.ndarray) -> list[float]:
    """Per request, the C-NMT rule with fixed models solved for the link: edge iff
    ``RTT [+ wait_c - backlog_e] >= T_edge - T_cloud - payload time``."""
    batch = stream.batch
    e, c = learners.edge.current(), learners.cloud.current()
    n = batch.n_tokens.astype(float)
    payload_s = 8.0 * batch.payload_bytes / stream.bandwidth_bps
    return ((e.a_n - c.a_n) * n + (e.a_m - c.a_m) * m + (e.b - c.b) - payload_s).tolist()


def _span(stream: Stream, latency: np.ndarray) -> float:
    if not len(latency):
        return 1e-12
    finish = float(np.max(stream.arrival_s + latency))
    return max(finish - float(stream.arrival_s[0]), 1e-12)


def _busy(on_edge: np.ndarray, batch: RequestBatch, background_s: float = 0.0) -> dict[str, float]:
    return {
        "edge": float(batch.edge_s[on_edge].sum()),
        "cloud": float(batch.cloud_s[~on_edge].sum()) + background_s,
    }


# ----------------------------------------------------------------------------- fast paths


def _all_at_once(
    on_edge: np.ndarray, stream: Stream, learners: Learners, m_estimate: np.ndarray | None
) -> Simulation:
    """Without queues, decisions taken at once need no loop: every request's latency is its
    execution time, plus the transmission time when offloaded."""
    batch = stream.batch
    latency = np.where(on_edge, batch.edge_s, batch.cloud_s + batch.transmission_s)
    m = _estimates(m_estimate, len(batch))
    return Simulation(
        on_edge=on_edge,
        latency_s=latency,
        wait_s=np.zeros(len(batch)),
        m_estimate=m,
        predicted_s=_predicted(on_edge, stream, learners, m),
        decided_by="choose_many",
        busy_s=_busy(on_edge, batch),
        span_s=_span(stream, latency),
    )


def _paper_method(
    rule: LinearRule, stream: Stream, learners: Learners, m_estimate: np.ndarray | None
) -> Simulation:
    """The paper's method, fast: the C-NMT rule with fixed models and idle devices. A request
    stays on the edge iff the RTT estimate (learnt only from finished offloads) is at least its
    threshold; the only sequential part is the estimator."""
    batch = stream.batch
    m = _estimates(m_estimate, len(batch), rule)
    threshold = _thresholds(rule, stream, learners, m)
    on_edge = np.zeros(len(batch), dtype=bool)
    arrivals = stream.arrival_s.tolist()
    done = (stream.arrival_s + batch.transmission_s + batch.cloud_s).tolist()
    samples = stream.rtt_s.tolist()
    pending: list[tuple[float, float]] = []  # (completion time, rtt) of exchanges in flight
    observe, estimate = learners.rtt.observe, learners.rtt.estimate
    push, pop = heapq.heappush, heapq.heappop
    for i in range(len(batch)):
        now = arrivals[i]
        while pending and pending[0][0] <= now:
            at, sample = pop(pending)
            observe(sample, at)
        if estimate(now) >= threshold[i]:
            on_edge[i] = True
        else:
            push(pending, (done[i], samples[i]))
    sim = _all_at_once(on_edge, stream, learners, m)
    sim.decided_by = "linear_rule"
    return sim


def _fifo(arrival: np.ndarray, service: np.ndarray, workers: int) -> np.ndarray:
    """Waits of a FIFO with ``workers`` servers, requests served in the given order (their
    arrival times need not be sorted). One server: the Lindley recursion
    ``D_k = max(A_k, D_(k-1)) + S_k`` in closed form, ``D_k = C_k + max_(j<=k)(A_j - C_(j-1))``
    with ``C`` the cumulative service."""
    if not len(arrival):
        return np.zeros(0)
    if workers == 1:
        served = np.cumsum(service)
        departure = served + np.maximum.accumulate(arrival - (served - service))
        return departure - service - arrival
    free = [0.0] * workers
    waits = np.empty(len(arrival))
    for k, (a, s) in enumerate(zip(arrival.tolist(), service.tolist(), strict=True)):
        start = max(a, free[0])
        waits[k] = start - a
        heapq.heapreplace(free, start + s)
    return waits


def _fixed_decisions_queued(
    on_edge: np.ndarray,
    stream: Stream,
    learners: Learners,
    queues: Queues,
    m_estimate: np.ndarray | None,
) -> Simulation:
    """Decisions taken at once (edge-only, cloud-only) through the queues, vectorized: each
    device is a FIFO fed by its requests (the cloud also by the background load, merged by
    the time they reach it)."""
    batch = stream.batch
    waits = np.zeros(len(batch))
    edge_idx = np.flatnonzero(on_edge)
    waits[edge_idx] = _fifo(stream.arrival_s[edge_idx], batch.edge_s[edge_idx], queues.edge_workers)
    cloud_idx = np.flatnonzero(~on_edge)
    ours_at = stream.arrival_s[cloud_idx] + batch.transmission_s[cloud_idx] / 2.0
    bg_at = queues.background_arrival_s
    at = np.concatenate([ours_at, bg_at])
    service = np.concatenate([batch.cloud_s[cloud_idx], queues.background_exec_s])
    # The order the general loop serves them in: ours in the order the gateway sent them
    # (each after every background request that reached the cloud by the time it did, or by
    # the time an earlier one of ours did), the background load by arrival.
    key = np.concatenate([np.maximum.accumulate(ours_at) if len(ours_at) else ours_at, bg_at])
    kind = np.concatenate([np.ones(len(ours_at)), np.zeros(len(bg_at))])
    order = np.lexsort((np.arange(len(at)), kind, key))
    merged = np.empty(len(at))
    merged[order] = _fifo(at[order], service[order], queues.cloud_workers)
    waits[cloud_idx] = merged[: len(cloud_idx)]
    latency = np.where(on_edge, batch.edge_s + waits, batch.cloud_s + batch.transmission_s + waits)
    m = _estimates(m_estimate, len(batch))
    background = queues.background_exec_s
    return Simulation(
        on_edge=on_edge,
        latency_s=latency,
        wait_s=waits,
        m_estimate=m,
        predicted_s=_predicted(on_edge, stream, learners, m),
        decided_by="choose_many",
        busy_s=_busy(on_edge, batch, float(background.sum())),
        span_s=_span(stream, latency),
        background_wait_s=float(merged[len(cloud_idx) :].sum()),
    )


def _rules_queued(
    rule: LinearRule | None,
    truth: TruthRule | None,
    stream: Stream,
    learners: Learners,
    queues: Queues,
    m_estimate: np.ndarray | None,
) -> Simulation:
    """The C-NMT rule (fixed models) or an Oracle through the queues, in one lean loop."""
    batch = stream.batch
    count = len(batch)
    m = _estimates(m_estimate, count, rule)
    threshold = _thresholds(rule, stream, learners, m) if rule is not None else None
    load_aware = rule is not None and rule.load_aware
    expected = truth is not None and truth.expected
    edge_t = (batch.edge_expected_s if expected else batch.edge_s).tolist()
    cloud_t = (batch.cloud_expected_s if expected else batch.cloud_s).tolist()
    e, c = learners.edge.current(), learners.cloud.current()
    guess = (e.a_n * batch.n_tokens + e.a_m * m + e.b).tolist()
    cloud_guess = (c.a_n * batch.n_tokens + c.a_m * m + c.b).tolist()
    arrival = stream.arrival_s.tolist()
    edge_s, cloud_s = batch.edge_s.tolist(), batch.cloud_s.tolist()
    transmission = batch.transmission_s.tolist()
    rtt_true = stream.rtt_s.tolist()
    cloud = _CloudServers(queues)
    edge_free, cloud_free = [0.0] * queues.edge_workers, cloud.free
    backlog = _EdgeBacklog(queues.edge_workers)
    own = OwnCloudBacklog(queues.cloud_workers)
    on_edge = np.zeros(count, dtype=bool)
    waits = np.zeros(count)
    # (answer time, rtt sample, the cloud's reported wait less the own part predicted at sending)
    pending: list[tuple[float, float, float]] = []
    rtt_observe, rtt_estimate = learners.rtt.observe, learners.rtt.estimate
    wait_observe, wait_estimate = learners.cloud_wait.observe, learners.cloud_wait.estimate
    replace, push, pop = heapq.heapreplace, heapq.heappush, heapq.heappop
    for i in range(count):
        now = arrival[i]
        cloud_at = now + transmission[i] / 2.0
        cloud.admit_background(cloud_at)
        edge_wait = max(0.0, edge_free[0] - now)
        cloud_wait = max(0.0, cloud_free[0] - cloud_at)
        if threshold is not None:
            while pending and pending[0][0] <= now:
                at, sample, wait = pop(pending)
                rtt_observe(sample, at)
                if load_aware:
                    wait_observe(wait, at)
            link = rtt_estimate(now)
            if load_aware:
                link += own.at(now) + wait_estimate(now) - backlog.at(now)
            edge = link >= threshold[i]
        else:
            edge = edge_wait + edge_t[i] <= transmission[i] + cloud_wait + cloud_t[i]
        if edge:
            on_edge[i] = True
            waits[i] = edge_wait
            start = now + edge_wait
            replace(edge_free, start + edge_s[i])
            if load_aware:
                backlog.add(start, start + edge_s[i], guess[i])
        else:
            waits[i] = cloud_wait
            replace(cloud_free, cloud_at + cloud_wait + cloud_s[i])
            if threshold is not None:
                own_wait = own.add(now, cloud_guess[i]) if load_aware else 0.0
                done = now + transmission[i] + cloud_wait + cloud_s[i]
                push(pending, (done, rtt_true[i], max(0.0, cloud_wait - own_wait)))
    latency = np.where(on_edge, batch.edge_s + waits, batch.cloud_s + batch.transmission_s + waits)
    cloud.admit_background(math.inf)  # those after our last request waited too
    return Simulation(
        on_edge=on_edge,
        latency_s=latency,
        wait_s=waits,
        m_estimate=m,
        predicted_s=_predicted(on_edge, stream, learners, m),
        decided_by="linear_rule" if rule is not None else "truth_rule",
        busy_s=_busy(on_edge, batch, float(queues.background_exec_s.sum())),
        span_s=_span(stream, latency),
        background_wait_s=cloud.background_wait_s,
    )


# ----------------------------------------------------------------------------- the general loop


def _general(
    policy: DevicePolicy,
    stream: Stream,
    learners: Learners,
    queues: Queues | None,
    m_estimate: np.ndarray | None,
) -> Simulation:
    """Any policy, learning or not, with or without queues: see the module docstring."""
    batch = stream.batch
    count = len(batch)
    rule, truth = policy.linear_rule(), policy.truth_rule()
    length = learners.length if policy.uses_length_estimate else None
    learn_length = length is not None and length.learns
    edge_lm, cloud_lm = learners.edge, learners.cloud
    learn_edge = edge_lm.learns
    queued = queues is not None
    uses_load = queued and truth is None and (rule is None or rule.load_aware)
    m_used = _estimates(m_estimate, count, rule)
    n_list = batch.n_tokens.tolist()
    m_true = batch.m_true.tolist()
    m_list = m_used.tolist()
    edge_s, cloud_s = batch.edge_s.tolist(), batch.cloud_s.tolist()
    transmission = batch.transmission_s.tolist()
    rtt_true = stream.rtt_s.tolist()
    arrival = stream.arrival_s.tolist()
    cloud = _CloudServers(queues)
    edge_free, cloud_free = [0.0] * (queues.edge_workers if queues is not None else 1), cloud.free
    edge_backlog = _EdgeBacklog(len(edge_free))
    own = OwnCloudBacklog(len(cloud_free))
    on_edge = np.zeros(count, dtype=bool)
    waits = np.zeros(count)
    predicted = np.full(count, np.nan)
    explores = hasattr(policy, "last_explored")
    elapses = [f for f in (getattr(lm, "elapse", None) for lm in (edge_lm, cloud_lm)) if f]
    explored = np.zeros(count, dtype=bool) if explores else None
    explored_s = np.zeros(count) if explores else None
    events: list[tuple[float, int, tuple[Any, ...]]] = []  # (finish time, seq, observation)
    probe_s, rtt_at = learners.rtt_probe_s, stream.rtt_at
    if probe_s is not None and rtt_at is None:
        raise ValueError("probing the link needs the stream's rtt_at")
    last_sample = arrival[0] if count else 0.0  # when the last round trip was measured
    for i in range(count):
        now = arrival[i]
        # 1. what finished by now
        while events and events[0][0] <= now:
            done, _, obs = heapq.heappop(events)
            if obs[0] == "cloud":
                _, n_obs, m_obs, exec_obs, wait_obs, rtt_obs = obs
                learners.rtt.observe(rtt_obs, done)
                last_sample = done
                learners.cloud_wait.observe(wait_obs, done)
                cloud_lm.observe(n_obs, m_obs, exec_obs)
            else:
                _, n_obs, m_obs, exec_obs = obs
                edge_lm.observe(n_obs, m_obs, exec_obs)
            if learn_length:
                length.observe(n_obs, m_obs)  # type: ignore[union-attr]
        # 1b. while nothing is measured, probes of the link every probe_s; those back by now
        if probe_s is not None:
            sent = last_sample + probe_s
            if now - sent > MAX_PROBES_BETWEEN * probe_s:  # see MAX_PROBES_BETWEEN
                sent = now - MAX_PROBES_BETWEEN * probe_s
            while sent < now:
                rtt = rtt_at(sent)  # type: ignore[misc]
                if sent + rtt > now:
                    break
                learners.rtt.observe(rtt, sent + rtt)
                if queued:  # the cloud's health answer: nothing pending means no wait
                    at_cloud = sent + rtt / 2.0
                    cloud.admit_background(at_cloud)
                    if max(cloud_free) <= at_cloud:
                        learners.cloud_wait.observe(0.0, sent + rtt)
                last_sample = sent + rtt
                sent = last_sample + probe_s
        # 2. the state
        n = n_list[i]
        if learn_length and (rule is None or rule.m_tokens is None):
            m = float(length.estimate(Request(n_tokens=n)))  # type: ignore[union-attr]
            m_used[i] = m
        else:
            m = m_list[i]
        cloud_at = now + transmission[i] / 2.0
        edge_wait = cloud_wait = backlog = 0.0
        if queued:
            cloud.admit_background(cloud_at)
            edge_wait = max(0.0, edge_free[0] - now)
            cloud_wait = max(0.0, cloud_free[0] - cloud_at)
            if uses_load:
                backlog = edge_backlog.at(now)
        for elapse in elapses:  # models whose uncertainty grows with unobserved decisions
            elapse(now)
        e, c = edge_lm.current(), cloud_lm.current()
        state = SchedulerState(
            e,
            c,
            LinkState(learners.rtt.estimate(now), stream.bandwidth_bps),
            now,
            edge_backlog_s=backlog,
            cloud_wait_s=own.at(now) + learners.cloud_wait.estimate(now) if uses_load else 0.0,
        )
        # 3. the decision
        if policy.needs_truth:
            request = batch.request(i, edge_wait, cloud_wait)
        else:
            request = Request(n, int(batch.payload_bytes[i]))
        edge = policy.choose(request, m, state) == Device.EDGE
        if explored is not None and policy.last_explored:  # type: ignore[attr-defined]
            explored[i] = True
            explored_s[i] = policy.last_expected_added_s  # type: ignore[attr-defined,index]
        # 4. the device
        if edge:
            on_edge[i] = True
            guess = e.predict(n, m)
            predicted[i] = guess
            waits[i] = edge_wait
            start = now + edge_wait
            done = start + edge_s[i]
            heapq.heapreplace(edge_free, done)
            if uses_load:
                edge_backlog.add(start, done, guess if guess == guess else edge_s[i])
            if learn_edge or learn_length:
                heapq.heappush(events, (done, i, ("edge", n, m_true[i], edge_s[i])))
        else:
            guess = c.predict(n, m)
            predicted[i] = guess
            waits[i] = cloud_wait
            own_wait = 0.0
            if queued:
                heapq.heapreplace(cloud_free, cloud_at + cloud_wait + cloud_s[i])
                if uses_load:
                    own_wait = own.add(now, guess if guess == guess else cloud_s[i])
            done = now + transmission[i] + cloud_wait + cloud_s[i]
            reported = max(0.0, cloud_wait - own_wait)  # the wait others caused, as learnt
            obs = ("cloud", n, m_true[i], cloud_s[i], reported, rtt_true[i])
            heapq.heappush(events, (done, i, obs))
    latency = np.where(on_edge, batch.edge_s + waits, batch.cloud_s + batch.transmission_s + waits)
    cloud.admit_background(math.inf)  # those after our last request waited too
    background = queues.background_exec_s if queues is not None else np.zeros(0)
    return Simulation(
        on_edge=on_edge,
        latency_s=latency,
        wait_s=waits,
        m_estimate=m_used,
        predicted_s=predicted,
        decided_by="choose",
        busy_s=_busy(on_edge, batch, float(background.sum())),
        span_s=_span(stream, latency),
        background_wait_s=cloud.background_wait_s,
        explored=explored,
        explored_expected_s=explored_s,
    )
