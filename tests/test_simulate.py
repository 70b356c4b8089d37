"""The replay's simulation: fast paths decide like the general loop, queues are FIFO, learning
only uses finished requests, and load-aware decisions pay off under load."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from cnmt.experiments.simulate import Queues, Stream, _fifo, simulate
from cnmt.registry import get_components
from cnmt.schedulers import (
    Device,
    DevicePolicy,
    LatencyModel,
    Request,
    RequestBatch,
    SchedulerState,
)
from cnmt.schedulers.cloud_backlog import OwnCloudBacklog
from cnmt.schedulers.core import DecisionComponents, TargetComponents
from cnmt.schedulers.rtt_estimators import WindowedMedian

EDGE = LatencyModel(a_n=0.004, a_m=0.012, b=0.02)
CLOUD = LatencyModel(a_n=0.001, a_m=0.003, b=0.01)
NO_WAIT = WindowedMedian.Params(initial_s=0.0)


def stream(size: int = 3000, rate: float = 4.0, seed: int = 11) -> Stream:
    """Requests whose true times follow the models, with noise; Poisson arrivals."""
    rng = np.random.default_rng(seed)
    n = rng.integers(1, 40, size)
    m = np.maximum(1, (n * rng.uniform(0.6, 1.4, size)).astype(int))
    edge = np.array([EDGE.predict(a, b) for a, b in zip(n, m, strict=True)])
    cloud = np.array([CLOUD.predict(a, b) for a, b in zip(n, m, strict=True)])
    rtt = rng.uniform(0.05, 0.3, size)
    batch = RequestBatch(
        n_tokens=n,
        payload_bytes=rng.integers(100, 900, size),
        m_true=m,
        edge_s=edge * rng.lognormal(0.0, 0.3, size),
        cloud_s=cloud * rng.lognormal(0.0, 0.3, size),
        transmission_s=rtt + 0.0001,
        edge_expected_s=edge,
        cloud_expected_s=cloud,
    )
    arrival = np.concatenate([[0.0], np.cumsum(rng.exponential(1.0 / rate, size - 1))])
    return Stream(batch, arrival, rtt, 1e8)


def learners(**names: str) -> DecisionComponents:
    """The components a replayed gateway decides with; ``run`` puts the policy in."""
    components = get_components()
    return DecisionComponents(
        policy=components.create("device_policy", "edge"),
        length=components.create("length_estimator", names.get("length", "linear"), None)
        if "length" in names
        else None,
        edge=TargetComponents(
            "edge", components.create("latency_model", names.get("edge", "profile"), prior=EDGE)
        ),
        clouds=(
            TargetComponents(
                "cloud",
                components.create("latency_model", names.get("cloud", "profile"), prior=CLOUD),
                rtt=components.create("rtt_estimator", "ewma"),
                wait=components.create(
                    "rtt_estimator", "median", WindowedMedian.Params(initial_s=0.0)
                ),
                bandwidth_bps=1e8,
            ),
        ),
    )


def run(
    chosen: DevicePolicy,
    s: Stream,
    parts: DecisionComponents,
    queues: Queues | None,
    m: np.ndarray | None,
    **options: Any,
) -> Any:
    """``simulate`` with ``chosen`` as the policy of ``parts``, whose gateway knows how many
    workers each device has."""
    parts.policy = chosen
    if queues is not None:
        parts.edge.workers, parts.clouds[0].workers = queues.edge_workers, queues.cloud_workers
    return simulate(parts, s, queues, m, **options)


class ChooseOnly(DevicePolicy):
    """Hides a policy's fast paths: the general loop decides by calling `choose`."""

    name = "choose-only"

    def __init__(self, inner: DevicePolicy) -> None:
        super().__init__(None)
        self.inner = inner
        self.needs_truth = inner.needs_truth
        self.uses_length_estimate = inner.uses_length_estimate

    def choose(self, request: Request, m_estimate: float, state: SchedulerState) -> Device:
        return self.inner.choose(request, m_estimate, state)


def policy(name: str, **params: Any) -> DevicePolicy:
    from cnmt.schema import build

    cls = get_components().get("device_policy", name).cls
    return cls(build(cls.Params, params or None))


QUEUES = {
    "none": None,
    "one": Queues(),
    "busy-cloud": Queues(
        background_arrival_s=np.sort(np.random.default_rng(3).uniform(0, 700, 4000)),
        background_exec_s=np.full(4000, 0.1),
    ),
    "workers": Queues(edge_workers=2, cloud_workers=3),
}


@pytest.mark.parametrize("queues", sorted(QUEUES))
@pytest.mark.parametrize(
    "name,params",
    [
        ("cnmt", {}),
        ("cnmt_load", {}),
        ("naive", {"mean_tokens": 20.0}),
        ("edge", {}),
        ("cloud", {}),
        ("oracle", {}),
        ("oracle_expected", {}),
    ],
)
def test_every_fast_path_decides_like_the_general_loop(name, params, queues):
    s = stream()
    m = s.batch.n_tokens * 1.0
    fast = run(policy(name, **params), s, learners(), QUEUES[queues], m)
    core = run(policy(name, **params), s, learners(), QUEUES[queues], m, fast_paths=False)
    two_devices = run(ChooseOnly(policy(name, **params)), s, learners(), QUEUES[queues], m)
    for general in (core, two_devices):
        assert general.decided_by == "choose"
        assert np.array_equal(fast.on_edge, general.on_edge)
        assert np.allclose(fast.latency_s, general.latency_s, rtol=0, atol=1e-9)
        assert np.allclose(fast.wait_s, general.wait_s, rtol=0, atol=1e-9)


def test_the_closed_form_fifo_equals_the_recursion():
    rng = np.random.default_rng(5)
    arrival = np.cumsum(rng.exponential(1.0, 500))
    service = rng.exponential(0.9, 500)
    free, waits = 0.0, []
    for a, s in zip(arrival, service, strict=True):
        start = max(a, free)
        waits.append(start - a)
        free = start + s
    assert np.allclose(_fifo(arrival, service, 1), waits)
    assert np.allclose(_fifo(arrival, service, 1000), 0.0)  # enough servers: nobody waits


def test_without_queues_latency_is_execution_plus_transmission_only():
    s = stream(rate=1000.0)  # far more than the devices could serve: no queue is simulated
    sim = run(policy("cnmt"), s, learners(), None, s.batch.n_tokens * 1.0)
    expected = np.where(sim.on_edge, s.batch.edge_s, s.batch.cloud_s + s.batch.transmission_s)
    assert np.array_equal(sim.latency_s, expected) and not sim.wait_s.any()


def test_with_queues_a_request_waits_for_the_one_before_it():
    s = stream(size=3, rate=1e6)  # three at once
    sim = run(policy("edge"), s, learners(), Queues(), None)
    edge = s.batch.edge_s
    assert sim.wait_s == pytest.approx([0.0, edge[0], edge[0] + edge[1]], abs=1e-4)
    assert sim.latency_s == pytest.approx(sim.wait_s + edge)


def test_the_oracle_with_queues_sends_each_request_where_it_finishes_first():
    s = stream(rate=20.0)
    sim = run(policy("oracle"), s, learners(), Queues(), None)
    edge_only = run(policy("edge"), s, learners(), Queues(), None)
    cloud_only = run(policy("cloud"), s, learners(), Queues(), None)
    assert sim.latency_s.mean() < min(edge_only.latency_s.mean(), cloud_only.latency_s.mean())


def test_learning_only_sees_requests_that_finished_before_the_decision():
    class Spy:
        """A latency model that records when it learns, and what it was told."""

        learns = True

        def __init__(self, prior: LatencyModel) -> None:
            self.prior, self.seen = prior, []

        def current(self) -> LatencyModel:
            return self.prior

        def observe(self, n: float, m: float, seconds: float) -> None:
            self.seen.append((n, m, seconds))

    s = stream(size=400, rate=50.0)
    spied = learners()
    spied.edge.latency = Spy(EDGE)  # type: ignore[assignment]
    spied.clouds[0].latency = Spy(CLOUD)  # type: ignore[assignment]
    sim = run(policy("cnmt"), s, spied, Queues(), s.batch.n_tokens * 1.0)
    finished = s.arrival_s + sim.latency_s
    # every observation is of a request that ran there and finished before the last arrival
    ran_on = {True: spied.edge.latency.seen, False: spied.clouds[0].latency.seen}  # type: ignore[attr-defined]
    for on_edge, seen in ran_on.items():
        idx = np.flatnonzero((sim.on_edge == on_edge) & (finished <= s.arrival_s[-1]))
        expected = sorted(
            (
                int(s.batch.n_tokens[i]),
                int(s.batch.m_true[i]),
                float(s.batch.edge_s[i] if on_edge else s.batch.cloud_s[i]),
            )
            for i in idx
        )
        assert sorted(seen) == expected


def test_the_load_aware_rule_cuts_the_tail_when_the_edge_is_busy():
    s = stream(size=6000, rate=10.0)  # both devices busy: the cloud at ~0.8, the edge ~0.4
    m = s.batch.n_tokens * 1.0
    plain = run(policy("cnmt"), s, learners(), Queues(), m)
    aware = run(policy("cnmt_load"), s, learners(), Queues(), m)
    assert plain.busy_s["cloud"] / plain.span_s > 0.7 and plain.busy_s["edge"] > 0
    assert np.percentile(aware.latency_s, 99) < 0.85 * np.percentile(plain.latency_s, 99)
    assert aware.latency_s.mean() < plain.latency_s.mean()
    idle = stream(size=3000)
    idle = Stream(idle.batch, np.arange(3000) * 100.0, idle.rtt_s, idle.bandwidth_bps)
    # one request every 100 s: no queue forms, and it decides as the paper's rule
    assert np.array_equal(
        run(policy("cnmt_load"), idle, learners(), Queues(), idle.batch.n_tokens * 1.0).on_edge,
        run(policy("cnmt"), idle, learners(), Queues(), idle.batch.n_tokens * 1.0).on_edge,
    )


def test_online_models_learn_what_the_profile_did_not_know():
    s = stream(size=4000, rate=2.0)
    slow_cloud = s.batch.cloud_s * 3.0  # the cloud really is 3x slower than its profile
    batch = RequestBatch(**{**s.batch.__dict__, "cloud_s": slow_cloud})
    s = Stream(batch, s.arrival_s, s.rtt_s, s.bandwidth_bps)
    fixed = run(policy("cnmt"), s, learners(), None, s.batch.n_tokens * 1.0)
    online = learners(edge="online", cloud="online")
    closed = run(policy("cnmt"), s, online, None, s.batch.n_tokens * 1.0)
    learned = online.clouds[0].latency.current()
    assert learned.predict(20, 20) == pytest.approx(3.0 * CLOUD.predict(20, 20), rel=0.15)
    assert closed.latency_s.mean() < fixed.latency_s.mean()


def test_the_own_cloud_backlog_is_a_fifo_of_predicted_times():
    one = OwnCloudBacklog(1)
    assert one.add(0.0, 1.0) == 0.0 and one.at(0.5) == pytest.approx(0.5)
    assert one.add(0.5, 1.0) == pytest.approx(0.5)  # behind the first
    assert one.at(0.5) == pytest.approx(1.5) and one.at(3.0) == 0.0
    two = OwnCloudBacklog(2)
    assert two.add(0.0, 1.0) == 0.0 and two.add(0.0, 2.0) == 0.0  # one server each
    assert two.at(0.0) == pytest.approx(1.0) and two.add(0.0, 1.0) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="workers"):
        OwnCloudBacklog(0)


def slow_edge_busy_cloud() -> Stream:
    """An edge 8x slower than the cloud, and a cloud busy about half of the time: every
    request belongs on the cloud unless its queue is long, and bursts make it long briefly."""
    s = stream(size=6000, rate=6.0, seed=5)
    batch = RequestBatch(
        **{
            **s.batch.__dict__,
            "edge_s": s.batch.cloud_s * 8.0,
            "edge_expected_s": s.batch.cloud_expected_s * 8.0,
        }
    )
    return Stream(batch, s.arrival_s, s.rtt_s, s.bandwidth_bps)


def slow_edge_learners() -> DecisionComponents:
    made = learners()
    eight = LatencyModel(CLOUD.a_n * 8.0, CLOUD.a_m * 8.0, CLOUD.b * 8.0)
    made.edge.latency = get_components().create("latency_model", "profile", prior=eight)
    return made


def test_the_load_aware_rule_does_not_flee_a_cloud_queue_that_has_drained(monkeypatch):
    """The cloud's reported waits lag: they describe the queue when each request arrived and come
    back after it ran. With its own offloads' backlog, which it knows the moment it sends them,
    the load-aware rule is no slower than the paper's rule where only the cloud queues; without
    it (the reports alone) it sends requests to the slow edge after every burst."""
    s = slow_edge_busy_cloud()
    m = s.batch.n_tokens * 1.0
    plain = run(policy("cnmt"), s, slow_edge_learners(), Queues(), m)
    aware = run(policy("cnmt_load"), s, slow_edge_learners(), Queues(), m)
    assert 0.3 < plain.busy_s["cloud"] / plain.span_s < 0.8
    assert aware.latency_s.mean() <= plain.latency_s.mean()
    monkeypatch.setattr(OwnCloudBacklog, "at", lambda self, now: 0.0)
    monkeypatch.setattr(OwnCloudBacklog, "add", lambda self, now, predicted_s: 0.0)
    reports_only = run(policy("cnmt_load"), s, slow_edge_learners(), Queues(), m)
    assert reports_only.latency_s.mean() > aware.latency_s.mean()
