"""Ground truth for the replay: drawn from measured real requests by (N, M) neighbourhood, or
from the grid; expected times against devices with known noise; requests drawn from an
experiment's corpus as its replay draws them."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from cnmt.errors import ConfigError
from cnmt.experiments.groundtruth import (
    NEIGHBOURS,
    RequestSampler,
    TimeSampler,
    ground_truth,
)
from cnmt.profiling.devices import DeviceSetting
from cnmt.profiling.profiles import Cell, DeviceProfile, TimedRequest, fit_linear

A_N, A_M, B = 2e-4, 3e-3, 1e-2
CURVE = 4e-5  # s per N*M token pair: a surface the plane cannot follow, the neighbourhoods can


def truth(n: np.ndarray, m: np.ndarray) -> np.ndarray:
    """The synthetic device's expected time."""
    return A_N * n + A_M * m + B + CURVE * n * m


def device_profile(requests: int, noise_s: float = 2e-3, seed: int = 0) -> DeviceProfile:
    """TEST DATA: a grid and ``requests`` real requests from :func:`truth` plus Gaussian noise
    of ``noise_s`` (known, so that expectations can be checked)."""
    rng = np.random.default_rng(seed)
    cells = tuple(
        Cell(n, m, tuple(float(t) for t in truth(n, m) + noise_s * rng.standard_normal(8)))
        for n in (2, 8, 32, 64)
        for m in (2, 8, 32, 64)
    )
    n = rng.integers(1, 60, requests)
    m = rng.integers(1, 40, requests)
    t = truth(n, m) + noise_s * rng.standard_normal(requests)
    return DeviceProfile(
        model="toy",
        family="toy",
        device=DeviceSetting(name="edge"),
        cells=cells,
        fit=fit_linear(cells),
        requests=tuple(
            TimedRequest(int(a), int(b), float(c)) for a, b, c in zip(n, m, t, strict=True)
        ),
    )


def test_ground_truth_uses_measured_requests_when_there_are_enough():
    sampler = ground_truth(device_profile(4000))
    assert isinstance(sampler, RequestSampler)
    assert sampler.method == f"from 4000 measured requests, {NEIGHBOURS} nearest by (N, M)"
    few = ground_truth(device_profile(150))
    assert isinstance(few, TimeSampler) and few.method == "bilinear"
    assert isinstance(ground_truth(device_profile(150), min_requests=100), RequestSampler)


def test_expected_times_follow_the_measured_surface_within_the_known_noise():
    noise = 2e-3
    sampler = RequestSampler(device_profile(4000, noise_s=noise))
    n, m = np.meshgrid(np.arange(5, 56, 5), np.arange(4, 37, 4))
    n, m = n.ravel(), m.ravel()
    expected = sampler.mean_time(n, m)
    error = np.abs(expected - truth(n, m))
    # an average of 32 runs: its noise is noise / sqrt(32) = 0.35 ms (plus a little bend of
    # the surface inside each neighbourhood)
    assert error.mean() < 0.6e-3 and error.max() < 2e-3
    # the plane alone (what a linear fit knows) misses the bend by far more
    plane = sampler._plane_at(n.astype(float), m.astype(float))
    assert np.abs(plane - truth(n, m)).mean() > 3 * error.mean()


def test_drawn_times_average_to_the_expected_time_and_keep_the_noise():
    noise = 2e-3
    sampler = RequestSampler(device_profile(4000, noise_s=noise))
    n, m = np.full(40_000, 30), np.full(40_000, 20)
    drawn = sampler.sample(n, m, np.random.default_rng(1))
    expected = sampler.mean_time(n[:1], m[:1])[0]
    assert drawn.mean() == pytest.approx(expected, abs=4 * noise / np.sqrt(len(drawn)) + 1e-4)
    assert drawn.std() == pytest.approx(noise, rel=0.35)  # 32 residuals of known spread
    assert len(np.unique(drawn)) == NEIGHBOURS  # one draw among the neighbourhood's runs


def test_draws_are_reproducible_and_independent_of_how_requests_repeat():
    sampler = RequestSampler(device_profile(1000))
    rng = np.random.default_rng(5)
    n, m = rng.integers(1, 60, 5000), rng.integers(1, 40, 5000)
    first = sampler.sample(n, m, np.random.default_rng(9))
    assert np.array_equal(first, sampler.sample(n, m, np.random.default_rng(9)))
    # a request's expectation does not depend on the other requests of the batch
    alone = sampler.mean_time(n[:1], m[:1])
    assert sampler.mean_time(n, m)[0] == alone[0]


def with_requests(requests: tuple[TimedRequest, ...]) -> DeviceProfile:
    return DeviceProfile(**{**device_profile(0).__dict__, "requests": requests})


def test_the_neighbourhood_is_the_nearest_measured_requests():
    bump = (20, 5)  # one slow measured request on an exact plane
    requests = tuple(
        TimedRequest(n, m, 0.01 * n + 0.002 * m + (1.0 if (n, m) == bump else 0.0))
        for n in range(1, 41)
        for m in range(1, 11)
    )
    profile = with_requests(requests)
    # one neighbour: a measured (N, M) gets exactly its own measured time
    alone = RequestSampler(profile, neighbours=1)
    assert alone.mean_time(np.array([20]), np.array([5]))[0] == pytest.approx(1.21)
    assert alone.mean_time(np.array([30]), np.array([5]))[0] == pytest.approx(0.31, abs=0.01)
    # five: N is spread wider than M here, so the neighbours are N-2..N+2 at the same M; the
    # bump reaches (22, 5) but not (23, 5)
    five = RequestSampler(profile, neighbours=5)
    at = five.mean_time(np.array([20, 22, 23, 20]), np.array([5, 5, 5, 6]))
    plane = five._plane_at(np.array([20.0, 22, 23, 20]), np.array([5.0, 5, 5, 6]))
    assert (at - plane).tolist() == pytest.approx([0.2, 0.2, 0.0, 0.0], abs=0.01)
    drawn = five.sample(np.full(500, 22), np.full(500, 5), np.random.default_rng(0))
    assert set(np.round(drawn - plane[1], 2)) == {0.0, 1.0}  # the bump is one of five
    assert five.extrapolated(np.array([20, 41, 20]), np.array([5, 5, 11])).tolist() == [
        False,
        True,
        True,
    ]
    assert five.floor_s == pytest.approx(0.1 * 0.012)


def test_requests_that_cannot_identify_a_plane_lean_on_the_grids_fit():
    profile = with_requests(tuple(TimedRequest(n, 10, 0.01 * n) for n in range(1, 101)))
    sampler = RequestSampler(profile, neighbours=3)
    fit = profile.fit
    assert sampler._plane.tolist() == [fit.a_n, fit.a_m, fit.b]
    # still the measured times, moved along the grid's plane between neighbours
    expected = sampler.mean_time(np.array([50]), np.array([10]))[0]
    assert expected == pytest.approx(0.5, abs=2 * fit.a_n + 1e-9)


def test_too_few_requests_for_a_neighbourhood_is_an_error():
    with pytest.raises(ValueError, match="20 measured requests cannot give neighbourhoods of 32"):
        RequestSampler(device_profile(20))


def test_grid_ground_truth_averages_to_the_cell_means_under_known_noise():
    profile = device_profile(0, noise_s=3e-3, seed=2)
    sampler = TimeSampler(profile)
    cell = next(c for c in profile.cells if (c.n, c.m) == (8, 32))
    n, m = np.full(20_000, 8), np.full(20_000, 32)
    drawn = sampler.sample(n, m, np.random.default_rng(3))
    assert sampler.mean_time(n[:1], m[:1])[0] == pytest.approx(cell.mean)
    assert drawn.mean() == pytest.approx(cell.mean, abs=4 * 3e-3 / np.sqrt(20_000) + 1e-5)


# ------------------------------------------------------------------ requests of an experiment


def test_requests_are_drawn_from_the_replays_own_pool(data_dir):
    from cnmt.commands.profile import request_set
    from cnmt.config import load_config
    from cnmt.experiments.replay import load_corpus_lines

    drawn = request_set("experiments/gru-fr-en", "gru-fr-en", 300, seed=3, budget_s=60.0)
    assert len(drawn.n) == len(drawn.m) == 300 and drawn.budget_s == 60.0
    lines = load_corpus_lines(load_config("experiments/gru-fr-en")["replay"].corpus)
    pool = set(zip(lines.n.tolist(), lines.m.tolist(), strict=True))
    assert set(zip(drawn.n, drawn.m, strict=True)) <= pool  # held-out lines, counted alike
    assert drawn.source["config"] == "configs/experiments/gru-fr-en.yaml"
    assert drawn.source["seed"] == 3 and drawn.source["corpus"]["heldout_every"] == 10
    again = request_set("experiments/gru-fr-en", "gru-fr-en", 300, seed=3, budget_s=60.0)
    assert again == drawn


@pytest.mark.export  # cn2en counts the tokens: exported into the cache on first use
@pytest.mark.skipif(
    importlib.util.find_spec("torch") is None or importlib.util.find_spec("cn2en") is None,
    reason="needs cnmt[export] and cn2en",
)
def test_requests_of_a_scenario_with_an_int8_edge_serve_the_int8_model(data_dir):
    from cnmt.commands.profile import request_set

    scenario = str(Path(__file__).resolve().parent.parent / "benchmarks" / "int8-edge.yaml")
    drawn = request_set(scenario, "cn2en-int8", 50, seed=0, budget_s=1.0)
    assert len(drawn.n) == 50 and drawn.source["model"] == "cn2en"


def test_requests_of_another_model_or_without_a_replay_are_refused(data_dir):
    from cnmt.commands.profile import request_set

    with pytest.raises(ConfigError, match="its replay runs 'gru-fr-en' on the edge and 'gru-"):
        request_set("experiments/gru-fr-en", "cn2en", 10, seed=0, budget_s=1.0)
    with pytest.raises(ConfigError, match="has no `replay` section"):
        request_set("serving/default", None, 10, seed=0, budget_s=1.0)
    with pytest.raises(ConfigError, match="--requests-count must be at least 1"):
        request_set("experiments/gru-fr-en", None, 0, seed=0, budget_s=1.0)
