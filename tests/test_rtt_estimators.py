"""RTT estimators (hook cnmt_register_rtt_estimators): hand-checked estimates, staleness, purity."""

from __future__ import annotations

import math

import pytest

from cnmt.errors import ConfigError
from cnmt.registry import get_components
from cnmt.schema import build


def make(name: str, **params):
    components = get_components()
    cls = components.get("rtt_estimator", name).cls
    return cls(build(cls.Params, params))


def test_builtin_estimators_are_registered_through_the_hook():
    assert {"last", "ewma", "median"} <= set(get_components().names("rtt_estimator"))


def test_last_returns_initial_then_the_latest_sample():
    est = make("last", initial_s=0.2)
    assert est.estimate(now=0.0) == 0.2
    est.observe(0.150, at=1.0)
    est.observe(0.090, at=2.0)
    assert est.estimate(now=100.0) == 0.090


def test_ewma_starts_at_first_sample_then_moves_an_alpha_fraction():
    est = make("ewma", alpha=0.25, initial_s=0.5)
    assert est.estimate(0.0) == 0.5
    est.observe(0.100, at=1.0)
    assert est.estimate(1.0) == pytest.approx(0.100)
    est.observe(0.300, at=2.0)
    assert est.estimate(2.0) == pytest.approx(0.100 + 0.25 * 0.200)


def test_median_ignores_a_single_spike():
    est = make("median", window=3, max_age_s=None)
    for at, rtt in enumerate((0.100, 1.300, 0.110)):
        est.observe(rtt, at=float(at))
    assert est.estimate(3.0) == pytest.approx(0.110)
    est.observe(0.120, at=4.0)  # window of 3: the first sample falls out
    assert est.estimate(5.0) == pytest.approx(0.120)


def test_median_decays_toward_the_floor_once_its_samples_are_stale():
    est = make("median", window=3, max_age_s=60.0, decay_s=30.0, initial_s=0.2)
    assert est.estimate(0.0) == 0.2  # no sample yet
    for at, rtt in ((0.0, 0.100), (10.0, 1.300), (20.0, 1.200)):
        est.observe(rtt, at)
    assert est.estimate(now=80.0) == pytest.approx(1.200)  # newest sample exactly 60 s old
    # 30 s overdue: one time constant from the median (1.2 s) toward the floor (0.1 s).
    assert est.estimate(now=110.0) == pytest.approx(0.100 + 1.100 * math.exp(-1.0))
    assert est.estimate(now=1000.0) == pytest.approx(0.100, abs=1e-9)
    est.observe(0.900, at=1000.0)  # a probe's sample makes the window fresh again
    assert est.estimate(now=1001.0) == pytest.approx(1.200)  # median of 1.3, 1.2, 0.9


def test_median_with_stale_s_falls_back_to_that_value():
    est = make("median", window=3, max_age_s=10.0, stale_s=0.0)
    est.observe(0.3, at=0.0)
    assert est.estimate(now=10.0) == 0.3
    assert est.estimate(now=10.5) == 0.0


def test_median_without_max_age_never_goes_stale():
    est = make("median", window=3, max_age_s=None)
    est.observe(0.5, at=0.0)
    assert est.estimate(now=1e9) == 0.5


def test_estimators_reject_lost_or_negative_samples():
    for name in ("last", "ewma", "median"):
        est = make(name)
        for bad in (-0.003, math.nan, math.inf):
            with pytest.raises(ValueError, match="finite number of seconds"):
                est.observe(bad, at=0.0)


def test_same_observations_give_same_estimates():
    samples = [(0.1 + 0.01 * (i % 7), float(i)) for i in range(50)]
    for name in ("last", "ewma", "median"):
        a, b = make(name), make(name)
        for rtt, at in samples:
            a.observe(rtt, at)
            b.observe(rtt, at)
        assert a.estimate(60.0) == b.estimate(60.0)


def test_bad_params_are_config_errors_naming_the_key():
    with pytest.raises(ConfigError, match="alpha: 0.0 is out of range: 0 < x <= 1"):
        make("ewma", alpha=0.0)
    with pytest.raises(ConfigError, match="window: 0 is out of range: 1 <= x"):
        make("median", window=0)
    with pytest.raises(ConfigError, match="decay_s: 0.0 is out of range: 0 < x"):
        make("median", decay_s=0)
    with pytest.raises(
        ConfigError, match="unknown rtt estimator 'kalman'; known: ewma, last, median"
    ):
        get_components().get("rtt_estimator", "kalman")
