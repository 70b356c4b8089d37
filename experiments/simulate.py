"""One device policy over a stream of requests: the world a gateway's decision core faces.

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

Steps 1 and 2 are the decision core's (:class:`cnmt.schedulers.core.DecisionCore`, the object
a live gateway drives too); this module simulates the world around it: the arrivals, the
devices' servers, the links of the edge's one or several clouds. The general loop
(:func:`drive_core`) does all of this for any policy and any number of clouds. Faster paths,
which ``tests/test_decision_core.py`` holds to the core's decisions on every shipped scenario,
cover the built-ins with one cloud: decisions taken at once (``choose_many``:
edge-only, cloud-only, the Oracles without queues) need no loop without queues and a
vectorized FIFO recursion with them; the paper's method (the C-NMT rule, fixed models, no
queues) needs only the RTT estimator in its loop; the C-NMT and Oracle rules with queues and
fixed models get a lean loop of their own.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import numpy as np

from cnmt.schedulers.base import (
    EDGE,
    CloudTruth,
    LinearRule,
    Request,
    RequestBatch,
    TruthRule,
)
from cnmt.schedulers.cloud_backlog import OwnCloudBacklog
from cnmt.schedulers.core import Decision, DecisionComponents, DecisionCore, Outcome
from cnmt.schedulers.edge_backlog import EdgeBacklog

# Between two requests, at most this many idle probes of the link are simulated (the latest
# ones): a sparse replay (requests minutes apart, probes every second) would otherwise spend
# nearly all its time probing. The built-in RTT estimators have forgotten the earlier probes
# anyway: `last` keeps one sample, `median` its window, `ewma` weighs a sample 64 probes old
# (1 - alpha)^64, under 2e-4 at the default alpha; only `median`'s floor (the lowest RTT it
# decays toward when stale) is taken over the simulated probes alone.
MAX_PROBES_BETWEEN = 64


class _CloudServers:
    """A cloud's FIFO servers (a heap of the times each is next free), shared with the
    background load, whose requests are admitted in arrival order up to a given time. Only the
    first cloud of a replay has the configured background load."""

    def __init__(self, queues: Queues | None, workers: int | None = None) -> None:
        if workers is None:
            workers = queues.cloud_workers if queues is not None else 1
        self.free = [0.0] * workers
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
    more_clouds: tuple[CloudPath, ...] = ()  # the clouds after the first (in ``batch``)

    def cloud_paths(self, first: str, workers: int) -> list[CloudPath]:
        """Every cloud's truth, the first one's taken from ``batch``."""
        batch = self.batch
        expected = batch.cloud_expected_s
        own = CloudPath(
            first,
            batch.cloud_s,
            expected if expected is not None else batch.cloud_s,
            self.rtt_s,
            batch.transmission_s,
            self.rtt_at,
            workers,
        )
        return [own, *self.more_clouds]


@dataclass(frozen=True)
class CloudPath:
    """One cloud as a replay knows it, per request: its true execution time (and its
    expectation), the true round trip an offload to it measures, the true transmission time
    (round trip plus payload), and its link's RTT at any time (what a probe measures)."""

    name: str
    exec_s: np.ndarray
    expected_s: np.ndarray
    rtt_s: np.ndarray
    transmission_s: np.ndarray
    rtt_at: Callable[[float], float] | None = None
    workers: int = 1


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
    # Per request the index of the target that ran it in ``targets`` (0: the edge); None for
    # the fast paths, which know the edge and one cloud only (then it is ``~on_edge``).
    target: np.ndarray | None = None
    targets: tuple[str, ...] = (EDGE, "cloud")
    decisions: list[Decision] | None = None  # the core's, when asked to keep them
    exec_s: np.ndarray | None = None  # the true execution time where each ran (the core's)

    def target_index(self) -> np.ndarray:
        return self.target if self.target is not None else (~self.on_edge).astype(np.int64)

    # Per request, whether the decision explored (a policy with ``last_explored``, such as
    # cnmt_explore), and the decision's expected added time when it did; None otherwise.
    explored: np.ndarray | None = None
    explored_expected_s: np.ndarray | None = None


def simulate(
    components: DecisionComponents,
    stream: Stream,
    queues: Queues | None,
    m_estimate: np.ndarray | None,
    *,
    probe_s: float | None = None,
    fast_paths: bool = True,
    rng: np.random.Generator | None = None,
) -> Simulation:
    """Play ``stream`` through the policy of ``components`` (see the module docstring);
    ``m_estimate`` holds the length estimates when they can be computed up front (an estimator
    that does not learn). ``fast_paths=False`` always drives the decision core (what the tests
    compare the fast paths with)."""
    policy = components.policy
    count = len(stream.batch)
    length = components.length
    edge, clouds = components.edge, components.clouds
    learning = not policy.needs_truth and (  # an Oracle ignores what the models learn
        probe_s is not None
        or edge.latency.learns
        or any(c.latency.learns for c in clouds)
        or (policy.uses_length_estimate and length is not None and length.learns)
    )
    fast = fast_paths and len(clouds) == 1 and not stream.more_clouds and not policy.uses_rng
    if fast and (queues is None or not policy.needs_truth):
        estimates = m_estimate if m_estimate is not None else np.full(count, np.nan)
        at_once = policy.choose_many(stream.batch, estimates)
        if at_once is not None:
            on_edge = np.asarray(at_once, dtype=bool)
            if queues is None:
                return _all_at_once(on_edge, stream, components, m_estimate)
            return _fixed_decisions_queued(on_edge, stream, components, queues, m_estimate)
    rule, truth = policy.linear_rule(), policy.truth_rule()
    if fast and not learning and (rule is not None or truth is not None):
        if m_estimate is None and rule is not None and rule.m_tokens is None:
            pass  # no estimates up front: the decision core
        elif queues is None and rule is not None:
            return _paper_method(rule, stream, components, m_estimate)
        elif queues is not None:
            return _rules_queued(rule, truth, stream, components, queues, m_estimate)
    return drive_core(components, stream, queues, m_estimate, probe_s=probe_s, rng=rng)


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
    on_edge: np.ndarray, stream: Stream, components: DecisionComponents, m: np.ndarray
) -> np.ndarray:
    """Fixed models' predicted execution time on the device that ran each request."""
    n = stream.batch.n_tokens.astype(float)
    e, c = components.edge.latency.current(), components.clouds[0].latency.current()
    return np.where(on_edge, e.a_n * n + e.a_m * m + e.b, c.a_n * n + c.a_m * m + c.b)


def _thresholds(
    rule: LinearRule, stream: Stream, components: DecisionComponents, m: np.ndarray
) -> list[float]:
    """Per request, the C-NMT rule with fixed models solved for the link: edge iff
    ``RTT [+ wait_c - backlog_e] >= T_edge - T_cloud - payload time``."""
    batch = stream.batch
    e, c = components.edge.latency.current(), components.clouds[0].latency.current()
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
    on_edge: np.ndarray,
    stream: Stream,
    components: DecisionComponents,
    m_estimate: np.ndarray | None,
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
        predicted_s=_predicted(on_edge, stream, components, m),
        decided_by="choose_many",
        busy_s=_busy(on_edge, batch),
        span_s=_span(stream, latency),
    )


def _paper_method(
    rule: LinearRule, stream: Stream, components: DecisionComponents, m_estimate: np.ndarray | None
) -> Simulation:
    """The paper's method, fast: the C-NMT rule with fixed models and idle devices. A request
    stays on the edge iff the RTT estimate (learnt only from finished offloads) is at least its
    threshold; the only sequential part is the estimator."""
    batch = stream.batch
    m = _estimates(m_estimate, len(batch), rule)
    threshold = _thresholds(rule, stream, components, m)
    on_edge = np.zeros(len(batch), dtype=bool)
    arrivals = stream.arrival_s.tolist()
    done = (stream.arrival_s + batch.transmission_s + batch.cloud_s).tolist()
    samples = stream.rtt_s.tolist()
    pending: list[tuple[float, float]] = []  # (completion time, rtt) of exchanges in flight
    observe, estimate = components.clouds[0].rtt.observe, components.clouds[0].rtt.estimate  # type: ignore[union-attr]
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
    sim = _all_at_once(on_edge, stream, components, m)
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
    components: DecisionComponents,
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
        predicted_s=_predicted(on_edge, stream, components, m),
        decided_by="choose_many",
        busy_s=_busy(on_edge, batch, float(background.sum())),
        span_s=_span(stream, latency),
        background_wait_s=float(merged[len(cloud_idx) :].sum()),
    )


def _rules_queued(
    rule: LinearRule | None,
    truth: TruthRule | None,
    stream: Stream,
    components: DecisionComponents,
    queues: Queues,
    m_estimate: np.ndarray | None,
) -> Simulation:
    """The C-NMT rule (fixed models) or an Oracle through the queues, in one lean loop."""
    batch = stream.batch
    count = len(batch)
    m = _estimates(m_estimate, count, rule)
    threshold = _thresholds(rule, stream, components, m) if rule is not None else None
    load_aware = rule is not None and rule.load_aware
    expected = truth is not None and truth.expected
    edge_t = (batch.edge_expected_s if expected else batch.edge_s).tolist()
    cloud_t = (batch.cloud_expected_s if expected else batch.cloud_s).tolist()
    e, c = components.edge.latency.current(), components.clouds[0].latency.current()
    guess = (e.a_n * batch.n_tokens + e.a_m * m + e.b).tolist()
    cloud_guess = (c.a_n * batch.n_tokens + c.a_m * m + c.b).tolist()
    arrival = stream.arrival_s.tolist()
    edge_s, cloud_s = batch.edge_s.tolist(), batch.cloud_s.tolist()
    transmission = batch.transmission_s.tolist()
    rtt_true = stream.rtt_s.tolist()
    cloud = _CloudServers(queues)
    edge_free, cloud_free = [0.0] * queues.edge_workers, cloud.free
    backlog = EdgeBacklog(queues.edge_workers)
    own = OwnCloudBacklog(queues.cloud_workers)
    on_edge = np.zeros(count, dtype=bool)
    waits = np.zeros(count)
    # (answer time, rtt sample, the cloud's reported wait less the own part predicted at sending)
    pending: list[tuple[float, float, float]] = []
    rtt, wait_estimator = components.clouds[0].rtt, components.clouds[0].wait
    rtt_observe, rtt_estimate = rtt.observe, rtt.estimate  # type: ignore[union-attr]
    wait_observe, wait_estimate = wait_estimator.observe, wait_estimator.estimate  # type: ignore[union-attr]
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
                backlog.add(guess[i], start, start + edge_s[i])
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
        predicted_s=_predicted(on_edge, stream, components, m),
        decided_by="linear_rule" if rule is not None else "truth_rule",
        busy_s=_busy(on_edge, batch, float(queues.background_exec_s.sum())),
        span_s=_span(stream, latency),
        background_wait_s=cloud.background_wait_s,
    )


# ----------------------------------------------------------------------------- the decision core


def drive_core(
    components: DecisionComponents,
    stream: Stream,
    queues: Queues | None,
    m_estimate: np.ndarray | None,
    *,
    probe_s: float | None = None,
    rng: np.random.Generator | None = None,
    keep_decisions: bool = False,
) -> Simulation:
    """Any policy, learning or not, with or without queues, over the edge and any number of
    clouds: the world (arrivals, the devices' FIFO servers, the links) simulated here, every
    decision and every observation the :class:`~cnmt.schedulers.core.DecisionCore`'s, as on a
    live gateway (see the module docstring)."""
    core = DecisionCore(components, rng=rng)
    policy = components.policy
    batch = stream.batch
    count = len(batch)
    queued = queues is not None
    paths = stream.cloud_paths(components.clouds[0].name, queues.cloud_workers if queues else 1)
    if [p.name for p in paths] != [c.name for c in components.clouds]:
        raise ValueError(
            f"the stream's clouds {[p.name for p in paths]} are not the decision's "
            f"{[c.name for c in components.clouds]}"
        )
    if queues is not None and (
        components.edge.workers != queues.edge_workers
        or components.clouds[0].workers != queues.cloud_workers
    ):
        raise ValueError("the decision's workers per device are not the queues'")
    names = (EDGE, *(p.name for p in paths))
    index = {name: k for k, name in enumerate(names)}
    servers = [_CloudServers(queues if k == 0 else None, p.workers) for k, p in enumerate(paths)]
    exec_k = [p.exec_s.tolist() for p in paths]
    expected_k = [p.expected_s.tolist() for p in paths]
    transmission_k = [p.transmission_s.tolist() for p in paths]
    rtt_k = [p.rtt_s.tolist() for p in paths]
    n_list, m_true = batch.n_tokens.tolist(), batch.m_true.tolist()
    payload = batch.payload_bytes.tolist()
    given_m = _estimates(m_estimate, count, policy.linear_rule()).tolist()
    edge_s, arrival = batch.edge_s.tolist(), stream.arrival_s.tolist()
    edge_free = [0.0] * (queues.edge_workers if queues is not None else 1)
    target = np.zeros(count, dtype=np.int64)
    waits = np.zeros(count)
    exec_ran = np.zeros(count)
    transmission_ran = np.zeros(count)
    m_used = np.full(count, np.nan)
    predicted = np.full(count, np.nan)
    kept: list[Decision] | None = [] if keep_decisions else None
    events: list[tuple[float, int, Decision, Outcome]] = []  # (finish time, seq, ...)
    if probe_s is not None and any(p.rtt_at is None for p in paths):
        raise ValueError("probing the link needs each cloud's rtt_at")
    last_sample = [arrival[0] if count else 0.0] * len(paths)  # when each link was last measured
    explores = hasattr(policy, "last_explored")
    explored = np.zeros(count, dtype=bool) if explores else None
    explored_s = np.zeros(count) if explores else None
    for i in range(count):
        now = arrival[i]
        # 1. what finished by now
        while events and events[0][0] <= now:
            done, _, decision, outcome = heapq.heappop(events)
            core.observe(decision, outcome)
            if outcome.target != EDGE:
                last_sample[index[outcome.target] - 1] = done
        # 1b. while a link is not measured, probes of it every probe_s; those back by now
        if probe_s is not None:
            for k, path in enumerate(paths):
                sent = last_sample[k] + probe_s
                if now - sent > MAX_PROBES_BETWEEN * probe_s:  # see MAX_PROBES_BETWEEN
                    sent = now - MAX_PROBES_BETWEEN * probe_s
                while sent < now:
                    rtt = path.rtt_at(sent)  # type: ignore[misc]
                    if sent + rtt > now:
                        break
                    empty = False
                    if queued:  # the cloud's health answer: nothing pending means no wait
                        at_cloud = sent + rtt / 2.0
                        servers[k].admit_background(at_cloud)
                        empty = max(servers[k].free) <= at_cloud
                    core.observe_probe(path.name, rtt, sent + rtt, empty)
                    last_sample[k] = sent + rtt
                    sent = last_sample[k] + probe_s
        # 2. the queues' true waits (what the Oracles see), the decision
        edge_wait = 0.0
        cloud_waits = [0.0] * len(paths)
        if queued:
            edge_wait = max(0.0, edge_free[0] - now)
            for k, server in enumerate(servers):
                cloud_at = now + transmission_k[k][i] / 2.0
                server.admit_background(cloud_at)
                cloud_waits[k] = max(0.0, server.free[0] - cloud_at)
        if policy.needs_truth:
            request = batch.request(i, edge_wait, cloud_waits[0])
            if len(paths) > 1:
                more = tuple(
                    CloudTruth(
                        p.name, exec_k[k][i], expected_k[k][i], transmission_k[k][i], cloud_waits[k]
                    )
                    for k, p in enumerate(paths)
                )
                request = Request(
                    request.n_tokens,
                    request.payload_bytes,
                    request.m_true,
                    replace(request.truth, clouds=more),  # type: ignore[arg-type]
                )
        else:
            request = Request(n_list[i], payload[i])
        m_given = given_m[i]
        decision = core.decide(request, now, None if m_given != m_given else m_given)
        if kept is not None:
            kept.append(decision)
        m_used[i] = decision.m_estimate
        if explored is not None and policy.last_explored:  # type: ignore[attr-defined]
            explored[i] = True
            explored_s[i] = policy.last_expected_added_s  # type: ignore[attr-defined,index]
        k_target = index[decision.target]
        target[i] = k_target
        predicted[i] = decision.predicted[decision.target].exec_s
        # 3. the device
        if k_target == 0:
            waits[i] = edge_wait
            start = now + edge_wait
            done = start + edge_s[i]
            exec_ran[i] = edge_s[i]
            if queued:
                heapq.heapreplace(edge_free, done)
                core.queued_locally(decision, start, done)
            outcome = Outcome(EDGE, done, m_true[i], edge_s[i])
        else:
            k = k_target - 1
            wait = cloud_waits[k]
            waits[i] = wait
            run_s = exec_k[k][i]
            exec_ran[i], transmission_ran[i] = run_s, transmission_k[k][i]
            if queued:
                cloud_at = now + transmission_k[k][i] / 2.0
                heapq.heapreplace(servers[k].free, cloud_at + wait + run_s)
                core.offloaded(decision, decision.target, now)
            done = now + transmission_k[k][i] + wait + run_s
            outcome = Outcome(decision.target, done, m_true[i], run_s, wait, rtt_k[k][i])
        heapq.heappush(events, (done, i, decision, outcome))
    latency = exec_ran + transmission_ran + waits
    for server in servers:
        server.admit_background(math.inf)  # those after our last request waited too
    background = queues.background_exec_s if queues is not None else np.zeros(0)
    on_edge = target == 0
    busy = {EDGE: float(batch.edge_s[on_edge].sum())}
    for k, path in enumerate(paths):
        busy[path.name] = float(path.exec_s[target == k + 1].sum())
    busy[paths[0].name] += float(background.sum())
    busy["cloud"] = sum(busy[p.name] for p in paths) if len(paths) > 1 else busy[paths[0].name]
    return Simulation(
        on_edge=on_edge,
        latency_s=latency,
        wait_s=waits,
        m_estimate=m_used,
        predicted_s=predicted,
        decided_by="choose",
        busy_s=busy,
        span_s=_span(stream, latency),
        background_wait_s=servers[0].background_wait_s,
        target=target,
        targets=names,
        decisions=kept,
        exec_s=exec_ran,
        explored=explored,
        explored_expected_s=explored_s,
    )
