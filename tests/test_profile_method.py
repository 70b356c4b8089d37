"""The measurement method of `cnmt profile` on synthetic devices: interleaved rounds, convergence,
budgets, the sanity check and its re-measurement, real requests, the host's load, the profile
format /2 and every shipped profile's quality.

A synthetic device computes each run's time from a formula (no timing of this machine, which may
be busy) and advances a fake clock by what it ran, so budgets are exact too.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pytest

from cnmt.profiling.devices import DeviceSetting
from cnmt.profiling.host import LoadMonitor, busy_cpu_seconds
from cnmt.profiling.measure import Item, Method, RoundResult, Session
from cnmt.profiling.profiles import (
    Cell,
    DeviceProfile,
    HostLoad,
    Quality,
    RequestsQuality,
    TimedRequest,
    Violation,
    ci_halfwidth,
    fit_linear,
    load,
    order_violations,
    save,
    t_quantile,
)

REPO = Path(__file__).resolve().parent.parent
GRID_N = (4, 8, 16)
GRID_M = (2, 6, 12)
UNIT_S = 1e-3


def work(n: int, m: int) -> float:
    """The synthetic model: one unit per input token, three per output token."""
    return UNIT_S * (n + 3 * m)


class SyntheticDevice:
    """A Runner whose run k of cell (N, M) takes ``time_of(n, m, k)`` seconds (k counts the
    cell's timed runs from 0), with a fake clock advanced by every run, untimed ones included,
    and by the pause before each timed run."""

    def __init__(
        self, time_of: Callable[[int, int, int], float] | None = None, pause_s: float = 0.0
    ) -> None:
        self.time_of = time_of or (lambda n, m, k: work(n, m))
        self.pause_s = pause_s
        self.now = 0.0
        self.rounds: list[list[Item]] = []
        self.visits: dict[tuple[int, int], int] = {}

    def clock(self) -> float:
        return self.now

    def run(self, items: Sequence[Item]) -> RoundResult:
        self.rounds.append(list(items))
        seconds = []
        for n, m, untimed, timed in items:
            self.now += untimed * work(n, m)
            out = []
            for _ in range(timed):
                k = self.visits.get((n, m), 0)
                self.visits[n, m] = k + 1
                out.append(self.time_of(n, m, k))
                self.now += self.pause_s + out[-1]
            seconds.append(out)
        total = sum(sum(s) for s in seconds)
        return RoundResult(seconds, total, total, self.now)


def session(device: SyntheticDevice, **method: object) -> Session:
    return Session(device, Method(**method), device.pause_s, clock=device.clock)  # type: ignore[arg-type]


def noisy(relative: dict[tuple[int, int], float], default: float, seed: int = 0):
    """Times with multiplicative Gaussian noise of the given relative size per cell."""
    rng = np.random.default_rng(seed)

    def time_of(n: int, m: int, k: int) -> float:
        spread = relative.get((n, m), default)
        return work(n, m) * max(0.05, 1.0 + spread * rng.standard_normal())

    return time_of


# --------------------------------------------------------------------------- interleaved rounds


def test_every_round_visits_every_cell_once_in_a_new_shuffled_order():
    device = SyntheticDevice()
    outcome = session(device, min_runs=4, max_runs=4, warmup=2).grid(GRID_N, GRID_M)
    grid = sorted((n, m) for n in GRID_N for m in GRID_M)
    assert len(device.rounds) == outcome.rounds == 4
    orders = [[(n, m) for n, m, _, _ in items] for items in device.rounds]
    assert all(sorted(order) == grid for order in orders)
    assert len({tuple(order) for order in orders}) == 4  # a new order every round
    assert all(timed == 1 for items in device.rounds for *_, timed in items)
    # warm-up runs before each cell's first timed run only; isolated rounds need no lead-in
    assert [untimed for *_, untimed, _ in device.rounds[0]] == [2] * 9
    assert all(untimed == 0 for items in device.rounds[1:] for *_, untimed, _ in items)
    assert all(c.count == 4 for c in outcome.cells) and outcome.runs == 36
    assert outcome.stopped == "converged" and outcome.not_converged == ()


def test_the_seed_fixes_the_orders():
    def orders(seed: int) -> list[list[Item]]:
        device = SyntheticDevice()
        session(device, min_runs=3, max_runs=3, seed=seed).grid(GRID_N, GRID_M)
        return device.rounds

    assert orders(1) == orders(1)
    assert orders(1) != orders(2)


def test_sustained_rounds_open_with_one_untimed_lead_in_run():
    device = SyntheticDevice()
    session(device, regime="sustained", min_runs=3, max_runs=3, warmup=0).grid(GRID_N, GRID_M)
    for items in device.rounds:
        assert items[0][2] == 1  # the lead-in
        assert all(untimed == 0 for _, _, untimed, _ in items[1:])


def test_noisy_cells_are_measured_until_their_interval_is_tight_and_others_leave_early():
    noisy_cell = (16, 6)
    device = SyntheticDevice(noisy({noisy_cell: 0.3}, default=0.01))
    outcome = session(device, min_runs=5, target_rel_ci=0.05).grid(GRID_N, GRID_M)
    counts = {(c.n, c.m): c.count for c in outcome.cells}
    assert counts[noisy_cell] > 40  # (1.96 * 0.3 / 0.05)^2 ~ 140 on average
    assert all(count == 5 for cell, count in counts.items() if cell != noisy_cell)
    assert all(c.rel_ci <= 0.05 for c in outcome.cells)
    assert outcome.stopped == "converged" and outcome.not_converged == ()
    # late rounds visit only the cell that still needs runs
    assert [(n, m) for n, m, _, _ in device.rounds[-1]] == [noisy_cell]


def test_the_budget_stops_the_rounds_and_unconverged_cells_are_listed():
    device = SyntheticDevice(noisy({}, default=1.0))
    outcome = session(device, budget_s=0.5, max_runs=10_000).grid(GRID_N, GRID_M)
    assert outcome.stopped == "budget"
    assert 0.5 <= outcome.seconds < 0.5 + 9 * work(16, 12) * 5  # stops within one round
    assert outcome.not_converged  # 100% noise needs ~1500 runs per cell
    assert set(outcome.not_converged) == {(c.n, c.m) for c in outcome.cells if c.rel_ci > 0.05}


def test_max_runs_caps_a_cell_that_never_converges():
    device = SyntheticDevice(noisy({}, default=1.0))
    outcome = session(device, min_runs=3, max_runs=20, budget_s=1e9).grid(GRID_N, GRID_M)
    assert all(c.count == 20 for c in outcome.cells)
    assert outcome.stopped == "max runs"  # nothing left to run: every cell at max_runs
    assert len(outcome.not_converged) == 9


# --------------------------------------------------------------------------------- sanity


def test_a_non_monotone_device_is_caught_remeasured_and_what_remains_is_recorded():
    slow = (8, 6)  # three times the work it should take: slower than (8, 12) and (16, 6)

    def time_of(n: int, m: int, k: int) -> float:
        return work(n, m) * (3.0 if (n, m) == slow else 1.0)

    device = SyntheticDevice(time_of)
    outcome = session(device, min_runs=5, max_runs=5).grid(GRID_N, GRID_M)
    pairs = {(v.axis, v.lower, v.upper) for v in outcome.violations_found}
    assert pairs == {("M", slow, (8, 12)), ("N", slow, (16, 6))}
    suspects = {slow, (8, 12), (16, 6)}
    counts = {(c.n, c.m): c.count for c in outcome.cells}
    assert {cell for cell, count in counts.items() if count > 5} == suspects
    assert all(counts[cell] == 20 for cell in suspects)  # doubled, twice (two passes)
    assert outcome.remeasure_runs == 45 and outcome.remeasure_rounds == 15
    # the device really is non-monotone: the violations remain, recorded
    remaining = {(v.axis, v.lower, v.upper) for v in outcome.violations_remaining}
    assert remaining == pairs
    # re-measurement rounds visit only the suspects, shuffled
    assert {(n, m) for n, m, *_ in device.rounds[-1]} <= suspects


def test_a_transient_slowdown_of_one_cell_is_remeasured_away():
    slow = (8, 6)  # twice as slow during its first 5 runs only (another process, say)

    def time_of(n: int, m: int, k: int) -> float:
        return work(n, m) * (2.0 if (n, m) == slow and k < 5 else 1.0)

    outcome = session(SyntheticDevice(time_of), min_runs=5, max_runs=5).grid(GRID_N, GRID_M)
    assert {(v.lower, v.upper) for v in outcome.violations_found} == {
        (slow, (8, 12)),
        (slow, (16, 6)),
    }
    assert outcome.violations_remaining == ()
    by_cell = {(c.n, c.m): c for c in outcome.cells}
    assert by_cell[slow].count == 10 and by_cell[8, 12].count == 10


def test_order_violations_need_a_drop_beyond_the_intervals_and_the_resolution():
    def cell(n: int, m: int, values: Sequence[float]) -> Cell:
        return Cell(n, m, tuple(values))

    exact = [cell(8, 2, [1.0] * 4), cell(8, 4, [0.96] * 4)]  # 4% < 5% resolution
    assert order_violations(exact, resolution=0.05) == []
    found = order_violations(exact, resolution=0.01)
    assert [(v.axis, v.lower, v.upper) for v in found] == [("M", (8, 2), (8, 4))]
    assert found[0].drop_s == pytest.approx(0.04) and found[0].tolerance_s == pytest.approx(0.01)
    # a wide interval hides the same drop
    wide = [cell(8, 2, [0.5, 1.5, 1.0, 1.0]), cell(8, 4, [0.96] * 4)]
    assert order_violations(wide, resolution=0.01) == []
    # one sample: no interval, never a violation
    assert order_violations([cell(2, 2, [1.0]), cell(4, 2, [0.1])], resolution=0.0) == []
    # along N, and only between neighbours of the measured grid
    cells = [cell(2, 2, [1.0] * 3), cell(4, 2, [2.0] * 3), cell(8, 2, [1.5] * 3)]
    assert [(v.axis, v.lower, v.upper) for v in order_violations(cells)] == [("N", (4, 2), (8, 2))]


def test_the_fit_counts_every_cell_once_however_many_runs_it_needed():
    plane = [Cell(n, m, (work(n, m),) * 5) for n in GRID_N for m in GRID_M]
    # one cell 10% above the plane: measured 5 times, or 500 times (a noisy cell would be)
    few = [*plane[:-1], Cell(16, 12, (1.1 * work(16, 12),) * 5)]
    many = [*plane[:-1], Cell(16, 12, (1.1 * work(16, 12),) * 500)]
    a, b = fit_linear(few), fit_linear(many)
    assert (b.a_n, b.a_m, b.b) == pytest.approx((a.a_n, a.a_m, a.b), rel=1e-9)
    assert (b.r2, b.mse) == pytest.approx((a.r2, a.mse), rel=1e-9)
    means = [Cell(c.n, c.m, (c.mean,)) for c in many]
    assert fit_linear(means).a_m == pytest.approx(a.a_m, rel=1e-9)


def test_t_quantiles_and_intervals():
    assert t_quantile(1) == pytest.approx(12.706)
    assert t_quantile(30) == pytest.approx(2.042)
    assert t_quantile(31) == pytest.approx(2.0395, abs=2e-4)
    assert t_quantile(120) == pytest.approx(1.9799, abs=2e-4)
    assert t_quantile(10**6) == pytest.approx(1.95996, abs=1e-4)
    assert ci_halfwidth(1.0, 1) == math.inf
    assert ci_halfwidth(2.0, 4) == pytest.approx(3.182 * 2.0 / 2.0)
    cell = Cell(1, 1, (1.0, 2.0, 3.0))
    assert (cell.count, cell.mean, cell.std) == (3, 2.0, 1.0)
    assert cell.ci_s == pytest.approx(4.303 / math.sqrt(3))
    assert cell.rel_ci == pytest.approx(cell.ci_s / 2.0)


# ------------------------------------------------------------------------------- requests


def test_requests_are_timed_once_each_in_drawn_order_in_short_rounds():
    device = SyntheticDevice()
    s = session(device)
    fit = fit_linear(s.grid(GRID_N, GRID_M).cells)
    device.rounds.clear()
    rng = np.random.default_rng(0)
    n = tuple(int(v) for v in rng.integers(1, 40, 3000))
    m = tuple(int(v) for v in rng.integers(1, 30, 3000))
    outcome = s.requests(n, m, budget_s=1e9, fit=fit, floor_s=1e-3)
    assert outcome.stopped == "all timed"
    assert [(r.n, r.m) for r in outcome.timed] == list(zip(n, m, strict=True))
    assert all(r.seconds == pytest.approx(work(r.n, r.m)) for r in outcome.timed)
    # the first round opens with one untimed run at the largest N and M
    assert device.rounds[0][0] == (max(n), max(m), 1, 0)
    # rounds of about two seconds as the fit predicts them
    durations = [sum(work(n, m) for n, m, _, timed in items if timed) for items in device.rounds]
    assert len(device.rounds) > 10 and max(durations) <= 2.0 + 1e-9


def test_no_request_in_range_times_nothing():
    device = SyntheticDevice()
    s = session(device)
    fit = fit_linear(s.grid(GRID_N, GRID_M).cells)
    rounds = len(device.rounds)
    outcome = s.requests((), (), budget_s=10.0, fit=fit, floor_s=1e-3)
    assert outcome.timed == () and outcome.stopped == "all timed"
    assert len(device.rounds) == rounds


def test_the_requests_budget_stops_timing_early():
    device = SyntheticDevice()
    s = session(device)
    fit = fit_linear(s.grid(GRID_N, GRID_M).cells)
    n, m = (20,) * 5000, (20,) * 5000  # 80 ms each: 400 s in all
    outcome = s.requests(n, m, budget_s=10.0, fit=fit, floor_s=1e-3)
    assert outcome.stopped == "budget"
    assert 10.0 <= outcome.seconds <= 12.0 and 100 < len(outcome.timed) < 160


# ------------------------------------------------------------------------------ host load


def test_load_monitor_subtracts_the_profilers_own_cpu_time():
    now, busy = [0.0], [100.0]
    monitor = LoadMonitor(window_s=2.0, read=lambda: busy[0], clock=lambda: now[0])
    own = 0.0
    for _ in range(10):  # 1 s steps: our worker uses 1 CPU, others 0.5 then 1.5
        now[0] += 1.0
        other = 0.5 if now[0] <= 5 else 1.5
        own += 1.0
        busy[0] += 1.0 + other
        monitor.mark(own)
    assert monitor.mean == pytest.approx((4 * 0.5 + 5 * 1.5) / 9)
    assert monitor.peak == pytest.approx(1.5)


def test_busy_cpu_seconds_reads_proc_stat(tmp_path):
    stat = tmp_path / "stat"
    stat.write_text("cpu  100 5 50 1000 20 1 2 7 0 0\ncpu0 1 2 3 4\n")
    import os

    assert busy_cpu_seconds(stat) == pytest.approx(165 / os.sysconf("SC_CLK_TCK"))
    assert busy_cpu_seconds(tmp_path / "missing") is None


# ------------------------------------------------------------------------------- format /2


def quality(**changes: object) -> Quality:
    values: dict[str, object] = dict(
        regime="isolated",
        pause_s=0.01,
        target_rel_ci=0.05,
        min_runs=5,
        max_runs=2000,
        budget_s=300.0,
        rounds=7,
        runs=63,
        seconds=12.5,
        stopped="converged",
        not_converged=((4, 12),),
        violations_found=(Violation("M", (4, 2), (4, 6), 0.002, 0.001),),
        remeasure_rounds=3,
        remeasure_runs=12,
        violations_remaining=(),
        host=HostLoad(2.0, 0.01, 0.02, 0.05, 0.2, False, False),
        requests=RequestsQuality(
            source={"config": "configs/experiments/x.yaml", "seed": 0},
            drawn=10,
            out_of_range=1,
            timed=9,
            budget_s=60.0,
            seconds=1.5,
            stopped="all timed",
            fit_r2=0.97,
            fit_mse=1e-6,
        ),
    )
    values.update(changes)
    return Quality(**values)  # type: ignore[arg-type]


def v2_profile(**changes: object) -> DeviceProfile:
    cells = tuple(Cell(n, m, (work(n, m), work(n, m) * 1.01)) for n in GRID_N for m in GRID_M)
    values: dict[str, object] = dict(
        model="toy",
        family="toy",
        device=DeviceSetting(name="edge", cpu_quota=0.25),
        cells=cells,
        fit=fit_linear(cells),
        machine={"cpu_model": "Test CPU", "logical_cpus": 2},
        date="2026-01-01T00:00:00+00:00",
        warmup=2,
        seed=1,
        quality=quality(),
        requests=(TimedRequest(3, 4, 0.015), TimedRequest(9, 1, 0.012)),
    )
    values.update(changes)
    return DeviceProfile(**values)  # type: ignore[arg-type]


def test_format_2_round_trips_with_quality_requests_and_cell_statistics(tmp_path):
    profile = v2_profile()
    path = tmp_path / "p.json"
    save(profile, path)
    assert load(path) == profile
    data = json.loads(path.read_text())
    assert data["format"] == "cnmt-device-profile/2"
    first = data["cells"][0]
    cell = profile.cells[0]
    assert (first["runs"], first["mean_s"], first["std_s"]) == (2, cell.mean, cell.std)
    assert first["ci_s"] == pytest.approx(cell.ci_s)
    assert data["requests"][0] == {"n": 3, "m": 4, "seconds": 0.015}
    assert data["quality"]["violations_found"][0]["lower"] == [4, 2]


def test_format_1_files_are_still_read_without_quality(tmp_path):
    path = tmp_path / "old.json"
    save(v2_profile(quality=None, requests=(), repeats=5), path)
    data = json.loads(path.read_text())
    data["format"] = "cnmt-device-profile/1"
    for key in ("quality", "requests"):
        del data[key]
    path.write_text(json.dumps(data))
    profile = load(path)
    assert profile.quality is None and profile.requests == () and profile.repeats == 5
    assert profile.regime == "sustained"


def test_show_prints_the_quality_summary(tmp_path, capsys):
    from cnmt.cli import main

    path = tmp_path / "p.json"
    save(v2_profile(), path)
    assert main(["profile", "show", str(path)]) == 0
    out = capsys.readouterr().out
    assert "regime: isolated (a 10 ms pause before every timed run)" in out
    assert "7 interleaved rounds, 63 timed runs" in out
    assert "NOT CONVERGED: 1 cell wider than the target ((N=4, M=12)" in out
    assert "sanity: 1 neighbouring pair out of order found" in out and "none remains" in out
    assert "host: CPUs used by other processes: 0.01 before, 0.02 on average, 0.05 at peak" in out
    assert "requests: 9 real requests timed once each (of 10 drawn from" in out
    assert "* = not converged" in out


def test_show_flags_a_busy_host_and_remaining_violations(tmp_path, capsys):
    from cnmt.cli import main

    remaining = (Violation("N", (4, 6), (8, 6), 0.003, 0.001),)
    profile = v2_profile(
        quality=quality(
            violations_remaining=remaining,
            host=HostLoad(2.0, 0.9, 1.1, 1.6, 0.2, True, True),
        )
    )
    path = tmp_path / "p.json"
    save(profile, path)
    assert main(["profile", "show", str(path)]) == 0
    out = capsys.readouterr().out
    assert "BUSY (above 0.2, measured with --allow-busy)" in out
    assert "1 REMAIN: (N=4, M=6) > (N=8, M=6) by 3 ms" in out
    assert "! = out of order" in out


# ------------------------------------------------------------------------- shipped profiles


SHIPPED = sorted((REPO / "configs" / "profiles").glob("*.json"))


def shipped_problems(paths: Sequence[Path]) -> list[str]:
    """What keeps each shipped profile from being trustworthy ground truth."""
    problems = []
    for path in paths:
        profile = load(path)
        q = profile.quality
        if q is None:
            problems.append(f"{path.name}: no quality summary (format /1: re-measure it)")
            continue
        found = order_violations(profile.cells, q.target_rel_ci)
        if found or q.violations_remaining:
            problems.append(f"{path.name}: cells out of order: {found or q.violations_remaining}")
        if q.host.busy:
            problems.append(f"{path.name}: measured on a busy host ({q.host})")
    return problems


def test_the_shipped_profile_check_catches_a_profile_out_of_order(tmp_path):
    cells = [Cell(n, m, (work(n, m),) * 3) for n in GRID_N for m in GRID_M]
    cells[1] = Cell(cells[1].n, cells[1].m, (1.0,) * 3)  # (4, 6) far slower than (4, 12)
    path = tmp_path / "bad.json"
    save(v2_profile(cells=tuple(cells), fit=fit_linear(cells)), path)
    assert len(shipped_problems([path])) == 1 and "out of order" in shipped_problems([path])[0]


def test_every_shipped_profile_has_its_quality_summary_and_no_cell_out_of_order():
    assert SHIPPED
    assert shipped_problems(SHIPPED) == []
