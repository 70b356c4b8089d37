"""The ``posterior`` latency model and the ``cnmt_explore`` policy: a model that knows what it
does not know (learns a wrong speed from a few requests, keeps physical, drops impossible
observations, grows uncertain while unobserved) and a policy that tries an uncertain device
at a bounded cost, and leaves a confident one alone."""

from __future__ import annotations

import json
import math
import random

import numpy as np
import pytest

from cnmt.registry import get_components
from cnmt.schedulers import Device, LatencyModel, LinkState, Request, SchedulerState
from cnmt.schedulers.posterior import FittedLatencyModel, PosteriorModel
from cnmt.schema import build

PRIOR = FittedLatencyModel(a_n=0.0002, a_m=0.004, b=-0.009, residual_s=0.01)


def posterior(prior: LatencyModel = PRIOR, **params):
    cls = get_components().get("latency_model", "posterior").cls
    return cls(build(cls.Params, params or None), prior=prior)


def explorer(**params):
    cls = get_components().get("device_policy", "cnmt_explore").cls
    return cls(build(cls.Params, params or None))


def scaled(model: LatencyModel, factor: float) -> LatencyModel:
    return LatencyModel(model.a_n * factor, model.a_m * factor, model.b * factor)


def feed(model, truth: LatencyModel, count: int, rng: random.Random, sizes=(2, 60)) -> None:
    for _ in range(count):
        n = rng.randint(*sizes)
        m = max(1, round(0.7 * n + rng.gauss(0.0, 2.0)))
        model.observe(n, m, max(1e-3, truth.predict(n, m)) * math.exp(rng.gauss(0.0, 0.15)))


def relative_error(model, truth: LatencyModel, points=((10, 7), (20, 14), (40, 28), (60, 42))):
    return max(abs(model.current().predict(n, m) / truth.predict(n, m) - 1.0) for n, m in points)


@pytest.mark.parametrize("factor", [0.25, 4.0])
def test_a_wrong_speed_is_learnt_from_a_handful_of_requests(factor):
    """x0.25 and x4 off: within 15% of typical sizes after 5 requests of any size (the speed
    scale), within 5% everywhere after 200."""
    model = posterior()
    truth = scaled(PRIOR, factor)
    rng = random.Random(3)
    feed(model, truth, 5, rng)
    assert relative_error(model, truth, points=((20, 14), (40, 28))) < 0.15
    feed(model, truth, 195, rng)
    # (the fed truth is clamped at 1 ms, which a line cannot follow at the smallest sizes)
    assert relative_error(model, truth, points=((20, 14), (40, 28), (60, 42))) < 0.07
    assert model.observations == 200 and model.dropped == 0


def test_requests_of_one_size_teach_the_speed_not_the_shape():
    """N = M = 10 only: the prediction there becomes right, the slopes keep the profile's
    ratio (scale first); varied sizes then teach a shape the profile did not have."""
    model = posterior()
    truth = LatencyModel(0.001, 0.002, 0.004)  # another shape altogether
    for _ in range(100):
        model.observe(10, 10, truth.predict(10, 10))
    learnt = model.current()
    assert learnt.predict(10, 10) == pytest.approx(truth.predict(10, 10), rel=0.02)
    assert learnt.a_m / learnt.a_n == pytest.approx(PRIOR.a_m / PRIOR.a_n, rel=0.25)
    feed(model, truth, 2000, random.Random(4), sizes=(2, 80))
    assert relative_error(model, truth) < 0.08


def test_predictions_stay_physical_whatever_it_observes():
    """Times that fall with N (a burst at small sizes): no slope below 0, no time below the
    floor, even for an empty request."""
    model = posterior(floor_s=1e-3)
    rng = random.Random(5)
    for _ in range(300):
        n = rng.randint(1, 60)
        model.observe(n, 5, max(0.002, 0.05 - 0.001 * n))
    learnt = model.current()
    assert learnt.a_n >= 0 and learnt.a_m >= 0
    assert learnt.predict(0, 0) >= 1e-3 and learnt.predict(200, 0) >= 1e-3


@pytest.mark.parametrize(
    "observation",
    [
        (10, 10, float("nan")),
        (10, 10, math.inf),
        (10, 10, -0.01),
        (10, 10, 0.0),
        (10, 10, 1e6),
        (float("nan"), 10, 0.05),
        (-3, 10, 0.05),
        (10, math.inf, 0.05),
    ],
)
def test_an_impossible_observation_is_dropped_and_counted(observation):
    model = posterior()
    before = model.current()
    model.observe(*observation)
    assert model.current() == before and model.dropped == 1 and model.observations == 0


def test_one_outlier_moves_it_a_bounded_step_and_a_real_change_is_followed():
    model = posterior()
    rng = random.Random(6)
    feed(model, PRIOR, 300, rng)
    settled = model.current().predict(20, 14)
    model.observe(20, 14, 50 * settled)  # one GC pause
    assert model.current().predict(20, 14) < 1.3 * settled
    slower = scaled(PRIOR, 3.0)
    feed(model, slower, 30, rng)  # a real change: followed within a few dozen requests
    assert relative_error(model, slower) < 0.1
    assert model.changes >= 1


def test_an_unobserved_device_grows_uncertain_up_to_the_prior_and_an_observed_one_does_not():
    model = posterior(drift_per_request=1e-3)
    feed(model, PRIOR, 200, random.Random(7))
    certain = model.scale_sd()
    assert certain < 0.1
    for step in range(100):
        model.elapse(float(step))
    assert model.scale_sd() == pytest.approx(math.sqrt(certain**2 + 0.1), rel=0.05)
    for step in range(100, 5000):
        model.elapse(float(step))
    assert model.scale_sd() == pytest.approx(model.params.scale_sd, rel=0.01)
    feed(model, PRIOR, 20, random.Random(8))
    assert model.scale_sd() < 0.15


def test_drift_per_second_uses_the_time_passed_in():
    model = posterior(drift_per_request=0.0, drift_per_s=1e-3)
    feed(model, PRIOR, 200, random.Random(9))
    model.elapse(0.0)
    before = model.scale_sd() ** 2
    model.elapse(100.0)
    assert model.scale_sd() ** 2 - before == pytest.approx(0.1, rel=0.05)


def test_the_posterior_round_trips_through_json():
    model = posterior()
    feed(model, scaled(PRIOR, 2.0), 50, random.Random(10))
    again = posterior()
    again.restore(json.loads(json.dumps(model.state())))
    assert again.current().predict(20, 14) == pytest.approx(model.current().predict(20, 14))
    assert again.current().sd(20, 14) == pytest.approx(model.current().sd(20, 14))
    with pytest.raises(ValueError, match="not finite"):
        again.restore({**model.state(), "mean": [float("nan"), 0.0, 0.0]})


def test_the_prior_spread_comes_from_the_profiles_residuals():
    noisy = posterior(FittedLatencyModel(PRIOR.a_n, PRIOR.a_m, PRIOR.b, residual_s=0.04))
    calm = posterior(FittedLatencyModel(PRIOR.a_n, PRIOR.a_m, PRIOR.b, residual_s=0.004))
    assert noisy.noise > 3 * calm.noise
    assert noisy.current().sd(40, 28) > calm.current().sd(40, 28)


def test_draws_are_log_normal_around_the_mean_and_never_below_zero():
    model = posterior().current()
    rng = np.random.default_rng(0)
    draws = np.array([model.draw(20, 14, rng) for _ in range(4000)])
    assert (draws > 0).all()
    assert draws.mean() == pytest.approx(model.predict(20, 14), rel=0.05)
    assert draws.std() == pytest.approx(model.sd(20, 14), rel=0.1)


# ----------------------------------------------------------------------------- the policy


def state(edge: LatencyModel, cloud: LatencyModel, rtt_s: float = 0.005) -> SchedulerState:
    return SchedulerState(edge=edge, cloud=cloud, link=LinkState(rtt_s=rtt_s))


def test_a_confident_posterior_is_not_explored_and_an_uncertain_one_is():
    edge, cloud = posterior(), posterior(FittedLatencyModel(0.0001, 0.001, 0.001, 0.001))
    feed(cloud, cloud.prior, 300, random.Random(11))
    policy = explorer(budget=1.0, burst=1000.0, max_added=5.0)
    request = Request(n_tokens=20, payload_bytes=200)
    # The edge's prior says ~2.7x slower than the cloud path, with a wide spread: tried.
    uncertain = [
        policy.choose(request, 14.0, state(edge.current(), cloud.current())) for _ in range(400)
    ]
    tried = uncertain.count(Device.EDGE)
    assert 4 <= tried <= 200 and policy.exploration.explored == tried
    # Once the edge is known to be slow, it is left alone.
    feed(edge, edge.prior, 300, random.Random(12))
    policy = explorer(budget=1.0, burst=1000.0, max_added=5.0)
    confident = [
        policy.choose(request, 14.0, state(edge.current(), cloud.current())) for _ in range(400)
    ]
    assert confident.count(Device.EDGE) == 0 and policy.exploration.explored == 0


def test_exploration_never_exceeds_its_budget_and_counts_its_expected_cost():
    edge, cloud = posterior(scale_sd=3.0), posterior(scale_sd=3.0)
    policy = explorer(budget=0.05, burst=2.0, seed=4)
    request = Request(n_tokens=20, payload_bytes=200)
    for _ in range(2000):
        policy.choose(request, 14.0, state(edge.current(), cloud.current()))
    counters = policy.exploration
    assert counters.decisions == 2000
    assert counters.explored <= 2.0 + 0.05 * 2000 and counters.skipped_no_credit > 0
    assert counters.explored == counters.explored_edge + counters.explored_cloud
    assert counters.expected_added_s > 0
    assert counters.as_dict()["share"] == pytest.approx(counters.explored / 2000)


def test_the_same_seed_gives_the_same_decisions_and_plain_models_decide_as_cnmt_load():
    edge, cloud = posterior(), posterior(FittedLatencyModel(0.0001, 0.001, 0.001, 0.001))
    request = Request(n_tokens=20, payload_bytes=200)
    runs = []
    for _ in range(2):
        policy = explorer(seed=7, budget=1.0, burst=100.0)
        runs.append(
            [
                policy.choose(request, 14.0, state(edge.current(), cloud.current()))
                for _ in range(200)
            ]
        )
    assert runs[0] == runs[1]
    load = get_components().create("device_policy", "cnmt_load")
    plain = explorer(budget=1.0)
    for n in (2, 10, 40, 80):
        s = state(LatencyModel(0.0002, 0.004, 0.001), LatencyModel(0.0001, 0.001, 0.001), 0.03)
        r = Request(n_tokens=n, payload_bytes=300)
        assert plain.choose(r, 0.7 * n, s) == load.choose(r, 0.7 * n, s)
    assert plain.exploration.explored == 0


def test_posterior_model_decides_with_its_physical_mean():
    model = PosteriorModel(0.0, 0.001, -0.5, floor_s=2e-3)
    assert model.predict(10, 10) == pytest.approx(2e-3)
    assert isinstance(model, LatencyModel)


def test_a_try_that_would_cost_more_than_max_added_is_not_taken():
    """The same uncertain edge, 2.7x the cloud path: with max_added 1 (at most doubling a
    request's expected time) it is never tried on that request, and the refusals are counted."""
    edge, cloud = posterior(), posterior(FittedLatencyModel(0.0001, 0.001, 0.001, 0.001))
    policy = explorer(budget=1.0, burst=1000.0, max_added=1.0)
    request = Request(n_tokens=20, payload_bytes=200)
    chosen = [
        policy.choose(request, 14.0, state(edge.current(), cloud.current())) for _ in range(400)
    ]
    assert chosen.count(Device.EDGE) == 0 and policy.exploration.skipped_costly > 0


# ----------------------------------------------------------------------------- idle calibration


def test_idle_calibration_is_due_once_per_idle_spell_for_a_stale_device():
    from cnmt.schedulers.calibration import IdleCalibration

    calibration = IdleCalibration(idle_s=5.0, stale_s=30.0)
    assert not calibration.due(Device.EDGE, 100.0)  # no request yet: nothing to calibrate for
    calibration.request(0.0)
    calibration.observed(Device.CLOUD, 1.0)  # everything ran on the cloud
    assert not calibration.due(Device.EDGE, 3.0)  # not idle yet
    assert calibration.due(Device.EDGE, 6.0)  # idle, the edge never observed
    assert not calibration.due(Device.CLOUD, 6.0)  # observed 5 s ago: fresh
    calibration.started(Device.EDGE, 6.0)
    calibration.observed(Device.EDGE, 6.1)
    assert not calibration.due(Device.EDGE, 50.0)  # once per idle spell
    assert calibration.due(Device.CLOUD, 50.0)  # stale by now
    calibration.request(60.0)
    assert not calibration.due(Device.EDGE, 62.0)
    assert calibration.due(Device.EDGE, 100.0)  # a new idle spell, the edge stale again
    assert calibration.runs[Device.EDGE] == 1


def test_one_short_calibration_run_corrects_a_stale_speed():
    """What a calibration is for: one run of a short request teaches the posterior the speed."""
    model = posterior()
    truth = scaled(PRIOR, 0.25)
    model.observe(8, 6, truth.predict(8, 6))
    assert relative_error(model, truth, points=((20, 14), (40, 28))) < 0.3
