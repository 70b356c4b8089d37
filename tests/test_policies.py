"""Device policies (hook cnmt_register_device_policies): the crossover, stale links, fast paths."""

from __future__ import annotations

import numpy as np
import pytest

from cnmt.errors import CnmtRuntimeError, ConfigError
from cnmt.registry import get_components
from cnmt.schedulers import (
    Device,
    GroundTruth,
    LatencyModel,
    LinkState,
    Request,
    RequestBatch,
    SchedulerState,
)
from cnmt.schema import build

# Hand-checked numbers: with M = N, T_edge = 0.03 N and T_cloud = 0.006 N + 0.01, so
# T_edge - T_cloud = 0.024 N - 0.01; over a 100 ms link the break-even is N = 4.58.
EDGE = LatencyModel(a_n=0.01, a_m=0.02, b=0.0)
CLOUD = LatencyModel(a_n=0.002, a_m=0.004, b=0.01)
FAST_LINK = LinkState(rtt_s=0.100, bandwidth_bps=1e12)


def policy(name: str, **params):
    cls = get_components().get("device_policy", name).cls
    return cls(build(cls.Params, params or None))


def state(link: LinkState = FAST_LINK) -> SchedulerState:
    return SchedulerState(edge=EDGE, cloud=CLOUD, link=link, now=0.0)


def test_builtin_policies_are_registered_through_the_hook():
    assert {"cnmt", "naive", "edge", "cloud", "oracle"} <= set(
        get_components().names("device_policy")
    )


def test_cnmt_keeps_a_request_just_below_break_even_on_the_edge_and_offloads_just_above():
    cnmt = policy("cnmt")
    # N = 4: edge 0.120 s vs cloud 0.034 + 0.100 s; N = 5: edge 0.150 s vs cloud 0.040 + 0.100 s.
    assert cnmt.choose(Request(n_tokens=4), m_estimate=4, state=state()) == Device.EDGE
    assert cnmt.choose(Request(n_tokens=5), m_estimate=5, state=state()) == Device.CLOUD


def test_a_tie_stays_on_the_edge():
    cnmt = policy("cnmt")
    # Binary-exact numbers: N = M = 2 gives edge 2.0 s and cloud 0.75 s + 1.25 s of link.
    edge, cloud = LatencyModel(0.5, 0.5, 0.0), LatencyModel(0.125, 0.125, 0.25)
    tie = SchedulerState(edge, cloud, LinkState(rtt_s=1.25, bandwidth_bps=1e12))
    assert cnmt.choose(Request(n_tokens=2), 2, tie) == Device.EDGE


def test_payload_time_counts_against_offloading():
    cnmt = policy("cnmt")
    slow = LinkState(rtt_s=0.100, bandwidth_bps=8_000.0)  # 1 kB/s: 20 bytes cost 20 ms
    assert cnmt.choose(Request(n_tokens=5, payload_bytes=0), 5, state(slow)) == Device.CLOUD
    assert cnmt.choose(Request(n_tokens=5, payload_bytes=20), 5, state(slow)) == Device.EDGE


def test_a_stale_rtt_estimate_makes_a_wrong_offload_that_a_fresh_one_avoids():
    cnmt, oracle = policy("cnmt"), policy("oracle")
    # The link got slow (500 ms) since the last offload measured 100 ms.
    truth = GroundTruth(edge_s=0.150, cloud_s=0.040, transmission_s=0.500)
    request = Request(n_tokens=5, m_true=5, truth=truth)
    stale = cnmt.choose(request, 5, state(LinkState(0.100, 1e12)))
    fresh = cnmt.choose(request, 5, state(LinkState(0.500, 1e12)))
    assert stale == Device.CLOUD  # costs 0.540 s
    assert fresh == Device.EDGE  # costs 0.150 s
    assert oracle.choose(request, 5, state()) == fresh


def test_naive_uses_the_mean_length_not_the_estimate():
    naive = policy("naive", mean_tokens=4.0)
    # With M fixed at 4, N = 5 costs edge 0.130 s vs cloud 0.036 + 0.100 s: stays on the edge,
    # although C-NMT with M = 5 offloads it.
    assert naive.choose(Request(n_tokens=5), m_estimate=5, state=state()) == Device.EDGE
    assert policy("cnmt").choose(Request(n_tokens=5), 5, state()) == Device.CLOUD


def test_naive_needs_exactly_one_source_of_its_mean():
    cls = get_components().get("device_policy", "naive").cls
    with pytest.raises(ConfigError, match="give exactly one of `mean_tokens` or `model`"):
        build(cls.Params, {})
    with pytest.raises(ConfigError, match="mean_tokens: 0.0 is out of range: 0 < x"):
        build(cls.Params, {"mean_tokens": 0})


def test_edge_and_cloud_only_ignore_everything():
    assert policy("edge").choose(Request(n_tokens=500), 500, state()) == Device.EDGE
    assert policy("cloud").choose(Request(n_tokens=1), 1, state()) == Device.CLOUD


def test_oracle_picks_the_really_faster_device_and_refuses_without_truth():
    oracle = policy("oracle")
    slow_link = GroundTruth(edge_s=0.2, cloud_s=0.05, transmission_s=0.2)
    fast_link = GroundTruth(edge_s=0.2, cloud_s=0.05, transmission_s=0.1)
    assert oracle.choose(Request(5, truth=slow_link), 5, state()) == Device.EDGE
    assert oracle.choose(Request(5, truth=fast_link), 5, state()) == Device.CLOUD
    with pytest.raises(CnmtRuntimeError, match="only `cnmt replay` has"):
        oracle.choose(Request(5), 5, state())
    assert oracle.needs_truth and not policy("cnmt").needs_truth


def random_batch(rng: np.random.Generator, size: int = 400) -> RequestBatch:
    n = rng.integers(1, 60, size)
    return RequestBatch(
        n_tokens=n,
        payload_bytes=rng.integers(50, 2000, size),
        m_true=np.maximum(1, (n * rng.uniform(0.5, 1.5, size)).astype(int)),
        edge_s=rng.uniform(0.01, 2.0, size),
        cloud_s=rng.uniform(0.005, 0.5, size),
        transmission_s=rng.uniform(0.01, 0.6, size),
        edge_expected_s=rng.uniform(0.01, 2.0, size),
        cloud_expected_s=rng.uniform(0.005, 0.5, size),
    )


@pytest.mark.parametrize(
    "name,params",
    [
        ("cnmt", {}),
        ("cnmt_load", {}),
        ("naive", {"mean_tokens": 12.5}),
        ("edge", {}),
        ("cloud", {}),
        ("oracle", {}),
        ("oracle_expected", {}),
    ],
)
def test_fast_paths_agree_with_choose(name, params):
    rng = np.random.default_rng(7)
    batch = random_batch(rng)
    p = policy(name, **params)
    m_est = batch.n_tokens * 1.1 + 0.5
    bandwidth = 1e6
    rtt = rng.uniform(0.0, 0.8, len(batch))
    backlog = rng.uniform(0.0, 0.5, len(batch))
    wait = rng.uniform(0.0, 0.5, len(batch))
    rule, truth = p.linear_rule(), p.truth_rule()
    at_once = p.choose_many(batch, m_est)
    assert rule is not None or truth is not None or at_once is not None  # every built-in
    for i in range(len(batch)):
        state = SchedulerState(
            EDGE,
            CLOUD,
            LinkState(float(rtt[i]), bandwidth),
            edge_backlog_s=float(backlog[i]),
            cloud_wait_s=float(wait[i]),
        )
        request = batch.request(i, edge_wait_s=float(backlog[i]), cloud_wait_s=float(wait[i]))
        chosen = p.choose(request, float(m_est[i]), state) == Device.EDGE
        if rule is not None:
            assert rule.edge(request, float(m_est[i]), state) == chosen
        if truth is not None:
            assert truth.edge(request.truth) == chosen
    if at_once is not None:  # decisions at once: for requests that find the queues empty
        expected = [
            p.choose(batch.request(i), float(m_est[i]), state_at_rtt(float(rtt[i]))) == Device.EDGE
            for i in range(len(batch))
        ]
        assert np.asarray(at_once).dtype == bool and list(at_once) == expected


def state_at_rtt(rtt: float) -> SchedulerState:
    return SchedulerState(EDGE, CLOUD, LinkState(rtt, 1e6))


def test_the_load_aware_rule_is_cnmt_when_the_queues_are_empty_and_offloads_a_busy_edge():
    load, cnmt = policy("cnmt_load"), policy("cnmt")
    for n in range(1, 12):
        request = Request(n_tokens=n)
        assert load.choose(request, n, state()) == cnmt.choose(request, n, state())
    # N = 4 stays on an idle edge (0.120 s vs 0.134 s); with 50 ms already queued there it
    # would finish after the cloud, so it goes; a busy cloud (40 ms of wait) brings it back.
    busy_edge = SchedulerState(EDGE, CLOUD, FAST_LINK, edge_backlog_s=0.05)
    assert load.choose(Request(n_tokens=4), 4, busy_edge) == Device.CLOUD
    both = SchedulerState(EDGE, CLOUD, FAST_LINK, edge_backlog_s=0.05, cloud_wait_s=0.04)
    assert load.choose(Request(n_tokens=4), 4, both) == Device.EDGE


def test_the_expected_time_oracle_ignores_the_noise_of_the_run():
    noisy = GroundTruth(
        edge_s=0.30, cloud_s=0.05, transmission_s=0.1, edge_expected_s=0.12, cloud_expected_s=0.05
    )
    request = Request(5, truth=noisy)
    assert policy("oracle").choose(request, 5, state()) == Device.CLOUD  # saw this run's stall
    assert policy("oracle_expected").choose(request, 5, state()) == Device.EDGE


def test_unknown_policy_lists_the_valid_ones():
    with pytest.raises(
        ConfigError,
        match="unknown device policy 'fastest'; known: cloud, cnmt, cnmt_explore, cnmt_load, "
        "edge, naive",
    ):
        get_components().get("device_policy", "fastest")
