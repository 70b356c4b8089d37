"""Online models (hook cnmt_register_latency_models, and the online length estimator): they
converge to known coefficients, forget a step change, shrug off an outlier, and survive a
restart through their saved state."""

from __future__ import annotations

import json
import random

import pytest

from cnmt.errors import ConfigError
from cnmt.registry import get_components
from cnmt.schedulers import LatencyModel, Request
from cnmt.schema import build

PRIOR = LatencyModel(a_n=0.001, a_m=0.010, b=0.005)
TRUE = LatencyModel(a_n=0.002, a_m=0.004, b=0.003)


def online(**params: float):
    cls = get_components().get("latency_model", "online").cls
    return cls(build(cls.Params, params or None), prior=PRIOR)


def feed(model, truth: LatencyModel, count: int, rng: random.Random, noise: float = 0.1) -> None:
    for _ in range(count):
        n, m = rng.randint(2, 40), rng.randint(2, 40)
        model.observe(n, m, truth.predict(n, m) * (1.0 + rng.gauss(0.0, noise)))


def close(a: LatencyModel, b: LatencyModel, rel: float) -> bool:
    return all(
        abs(a.predict(n, m) - b.predict(n, m)) <= rel * b.predict(n, m)
        for n, m in ((10, 10), (20, 20), (40, 8), (8, 40))
    )


def test_latency_model_hook_registers_the_profile_and_online_models():
    """cnmt_register_latency_models: both built-ins, selected by name with a prior."""
    components = get_components()
    assert {"profile", "online"} <= set(components.names("latency_model"))
    fixed = components.create("latency_model", "profile", prior=PRIOR)
    fixed.observe(10, 10, 99.0)
    assert fixed.current() == PRIOR and not fixed.learns


def test_online_latency_starts_at_the_prior_and_converges_to_the_truth():
    model = online()
    assert model.current() == PRIOR
    feed(model, TRUE, 400, random.Random(1))
    assert close(model.current(), TRUE, rel=0.1)  # 10% noise, a memory of ~100 requests
    assert model.observations == 400


def test_online_latency_forgets_a_step_change():
    model = online()
    rng = random.Random(2)
    feed(model, TRUE, 400, rng)
    slower = LatencyModel(TRUE.a_n * 2, TRUE.a_m * 2, TRUE.b * 2)
    feed(model, slower, 400, rng)  # the device got twice as slow
    assert close(model.current(), slower, rel=0.1)


def test_one_outlier_moves_the_model_by_a_bounded_step():
    model = online()
    rng = random.Random(3)
    feed(model, TRUE, 300, rng)
    before = model.current()
    model.observe(20, 20, TRUE.predict(20, 20) * 50)  # a quota stall, a GC pause
    after = model.current()
    assert abs(after.predict(20, 20) - before.predict(20, 20)) < 0.1 * before.predict(20, 20)
    assert model.rls.clipped >= 1


def test_the_learnt_state_round_trips_through_json():
    model = online()
    feed(model, TRUE, 200, random.Random(4))
    saved = json.loads(json.dumps(model.state()))
    again = online()
    again.restore(saved)
    assert again.current() == model.current() and again.observations == 200
    feed(model, TRUE, 50, random.Random(5))
    feed(again, TRUE, 50, random.Random(5))
    assert again.current() == model.current()  # and it continues exactly the same
    with pytest.raises(ValueError, match="expected 3 coefficients"):
        again.restore({**saved, "b": [1.0, 2.0]})


def test_online_length_converges_to_the_models_own_outputs():
    cls = get_components().get("length_estimator", "online_linear").cls
    estimator = cls(build(cls.Params, {"gamma": 1.2, "delta": 1.0}))  # a corpus' human lengths
    rng = random.Random(6)
    for _ in range(600):  # the model writes about half as much
        n = rng.randint(2, 60)
        estimator.observe(n, max(1, round(0.5 * n + 2 + rng.gauss(0, 1))))
    assert estimator.gamma == pytest.approx(0.5, abs=0.05)
    assert estimator.estimate(Request(n_tokens=40)) == pytest.approx(22.0, abs=2.0)
    assert estimator.learns


def mean_by_length(**params):
    cls = get_components().get("length_estimator", "online_mean_by_length").cls
    return cls(build(cls.Params, {"gamma": 1.0, "delta": 0.0, **params}))


def saturating_outputs(n: int, rng: random.Random) -> int:
    """A model whose outputs stop growing past 12 input tokens (as cn2en's do)."""
    return max(1, round(min(n, 12) + rng.gauss(0, 1)))


def test_mean_by_length_learns_a_shape_a_line_cannot_fit():
    estimator = mean_by_length(prior_weight=1.0)  # a prior far off at N = 60 (60 vs 12)
    line_cls = get_components().get("length_estimator", "online_linear").cls
    line = line_cls(build(line_cls.Params, {"gamma": 1.0, "delta": 0.0}))
    rng = random.Random(7)
    for _ in range(4000):
        n = rng.choice([4, 6, 8, 40, 60, 80])  # short and long requests, mixed
        m = saturating_outputs(n, rng)
        estimator.observe(n, m)
        line.observe(n, m)
    for n, expected in ((4, 4.0), (8, 8.0), (60, 12.0)):
        assert estimator.estimate(Request(n_tokens=n)) == pytest.approx(expected, abs=0.6)
    # The refitted line, pulled by the long requests, misses the short ones by over a token.
    assert abs(line.estimate(Request(n_tokens=4)) - 4.0) > 1.0
    assert estimator.learns and estimator.observations == 4000


def test_mean_by_length_answers_with_the_line_where_it_saw_nothing_and_shrinks_toward_it():
    estimator = mean_by_length(prior_weight=5.0, forgetting=1.0)
    assert estimator.estimate(Request(n_tokens=20)) == pytest.approx(20.0)  # gamma*N + delta
    for _ in range(5):  # five observations weigh as much as the prior: halfway
        estimator.observe(20, 10)
    assert estimator.estimate(Request(n_tokens=20)) == pytest.approx(15.0)
    assert estimator.estimate(Request(n_tokens=7)) == pytest.approx(7.0)  # another bin: untouched
    # Long inputs share geometric bins (12.5% wide by default): 200 and 210 are one bin.
    assert estimator.bin_of(200) == estimator.bin_of(210) != estimator.bin_of(300)


def test_mean_by_length_forgets_a_change_and_round_trips_its_state():
    estimator = mean_by_length(forgetting=0.98, prior_weight=0.1)
    for _ in range(300):
        estimator.observe(10, 20)
    for _ in range(300):  # the model changed: it now writes 5 tokens for 10
        estimator.observe(10, 5)
    assert estimator.estimate(Request(n_tokens=10)) == pytest.approx(5.0, abs=0.1)
    saved = json.loads(json.dumps(estimator.state()))
    again = mean_by_length(forgetting=0.98, prior_weight=0.1)
    again.restore(saved)
    assert again.estimate(Request(n_tokens=10)) == estimator.estimate(Request(n_tokens=10))
    assert again.observations == 600
    with pytest.raises(ValueError, match="finite and >= 0"):
        again.restore({"bins": {"10": [float("nan"), 1.0]}, "observations": 1})


@pytest.mark.parametrize(
    "params, message",
    [
        ({"forgetting": 0.2}, "forgetting"),
        ({"prior_weight": 0.0}, "prior_weight"),
        ({"bin_growth": 0.0}, "bin_growth"),
    ],
)
def test_mean_by_length_refuses_bad_params(params, message):
    with pytest.raises(ConfigError, match=message):
        mean_by_length(**params)
