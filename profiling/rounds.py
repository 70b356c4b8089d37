"""Which cells each round of a profile visits, when a cell is done, what is measured again.

:class:`Session` is the parent's side of one profile, on any :class:`Runner` (the worker
process of :mod:`cnmt.profiling.measure`, or a synthetic device in tests); :class:`Method` is
how a profile is measured.

**Interleaved rounds.** Every round visits every cell that still needs runs, in a new order
shuffled with the seed, one timed ``run_forced(N, M)`` per visit. Slow drift of the machine
(thermal state, another process starting) thus spreads over the whole grid instead of lumping
into the cells measured at that moment: the old protocol (all repeats of a cell back to back)
produced cells like Marian's N = 16 taking 1.8 s where N = 32 took 1.2 s. The first round runs
``warmup`` untimed calls before each cell's first timed one (one-time costs: the memory arena
growing to the shape, first-call kernel selection, pages loaded lazily; they happen once per
shape per process, not per visit).

**Until the mean is known.** A cell leaves the rotation once it has ``min_runs`` runs and the
95% Student t interval of its mean is within ``target_rel_ci`` of the mean, or once it has
``max_runs``; the rounds stop when no cell is left or when ``budget_s`` is spent (checked
between rounds). Cells still wider than the target are listed in the profile's quality
summary.

**Sanity.** More tokens never take less time, so the grid is checked for neighbouring cells out
of order beyond their noise (:func:`cnmt.profiling.profiles.order_violations`). The cells of
each violating pair are measured again, in interleaved rounds of their own, until each has
twice the runs it had (at most two such passes, within a quarter of the budget more), and the
check is repeated: what remains is recorded, never hidden (a cell is never dropped or edited).
"""

from __future__ import annotations

import dataclasses
import math
import random
import time
from collections.abc import Callable, Sequence
from typing import Protocol

import numpy as np

from cnmt.errors import CnmtRuntimeError, ConfigError
from cnmt.profiling.devices import DeviceSetting
from cnmt.profiling.profiles import (
    REGIMES,
    Cell,
    Fit,
    TimedRequest,
    Violation,
    ci_halfwidth,
    order_violations,
)
from cnmt.profiling.worker import Item, RoundResult

REMEASURE_PASSES = 2
REQUEST_ROUND_S = 2.0
"""Predicted duration of one round of requests: short enough to stop near the budget."""


@dataclasses.dataclass(frozen=True)
class Method:
    """How a profile is measured (see the module docstring).

    ``regime`` "isolated" or "sustained"; ``warmup`` untimed runs of each cell in the first
    round; ``target_rel_ci`` the relative half-width of each cell's 95% interval to reach, with
    ``min_runs`` to ``max_runs`` timed runs per cell; ``budget_s`` the wall time of the grid's
    rounds (re-measuring cells out of order may take ``remeasure_share`` of it more);
    ``seed`` the shuffles.
    """

    regime: str = "isolated"
    warmup: int = 2
    target_rel_ci: float = 0.05
    min_runs: int = 5
    max_runs: int = 2000
    budget_s: float = 300.0
    seed: int = 0
    remeasure_share: float = 0.25

    def check(self) -> None:
        """ConfigError naming the command-line option of a value that cannot work."""
        if self.regime not in REGIMES:
            raise ConfigError(f"--regime: {self.regime!r} is not one of {', '.join(REGIMES)}")
        if self.warmup < 0:
            raise ConfigError(f"--warmup: {self.warmup} must be 0 or more")
        if not 0 < self.target_rel_ci < 1:
            raise ConfigError(f"--ci: {self.target_rel_ci} must be a fraction, e.g. 0.05")
        if self.min_runs < 2:
            raise ConfigError(
                f"--min-runs: {self.min_runs} must be at least 2 (one run says nothing of "
                "the noise)"
            )
        if self.max_runs < self.min_runs:
            raise ConfigError(f"--max-runs: {self.max_runs} is below --min-runs {self.min_runs}")
        if not self.budget_s > 0:
            raise ConfigError(f"--budget: {self.budget_s} must be a positive number of seconds")

    def pause_s(self, device: DeviceSetting) -> float:
        """The idle time before each timed run: one quota period when isolated, else none."""
        return device.cpu_period_us / 1e6 if self.regime == "isolated" else 0.0


class Runner(Protocol):
    """Runs rounds on a device: the worker process, or a synthetic device in tests."""

    def run(self, items: Sequence[Item]) -> RoundResult: ...


class RunningStats:
    """Count, mean and sample standard deviation of a stream (Welford's update, which stays
    exact where summing squares would cancel), for the convergence test of every round."""

    def __init__(self) -> None:
        self.count = 0
        self.mean = 0.0
        self._m2 = 0.0

    def add(self, value: float) -> None:
        self.count += 1
        delta = value - self.mean
        self.mean += delta / self.count
        self._m2 += delta * (value - self.mean)

    @property
    def rel_ci(self) -> float:
        if self.count < 2 or self.mean <= 0:
            return math.inf
        std = math.sqrt(max(self._m2, 0.0) / (self.count - 1))
        return ci_halfwidth(std, self.count) / self.mean


@dataclasses.dataclass(frozen=True)
class GridOutcome:
    """The grid's samples and how they were obtained (the grid part of :class:`Quality`)."""

    cells: tuple[Cell, ...]
    rounds: int
    runs: int
    seconds: float
    stopped: str
    not_converged: tuple[tuple[int, int], ...]
    violations_found: tuple[Violation, ...]
    remeasure_rounds: int
    remeasure_runs: int
    violations_remaining: tuple[Violation, ...]


@dataclasses.dataclass(frozen=True)
class RequestsOutcome:
    timed: tuple[TimedRequest, ...]
    seconds: float
    stopped: str


class Session:
    """The parent's side of one profile: which cells each round visits, when to stop, what to
    measure again (see the module docstring). ``runner`` runs the rounds; ``clock`` measures
    the budgets; ``on_round(result, status)`` is called after every round (progress, load)."""

    def __init__(
        self,
        runner: Runner,
        method: Method,
        pause_s: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
        on_round: Callable[[RoundResult, str], None] | None = None,
    ) -> None:
        self.runner = runner
        self.method = method
        self.pause_s = pause_s
        self.clock = clock
        self.on_round = on_round or (lambda result, status: None)
        self.rng = random.Random(method.seed)
        self.wall_s = self.cpu_s = 0.0

    def _run(self, items: list[Item], status: str) -> RoundResult:
        if self.method.regime == "sustained" and items and items[0][2] == 0:
            n, m, _, timed = items[0]
            items = [(n, m, 1, timed), *items[1:]]  # the lead-in run (see cnmt.profiling.worker)
        result = self.runner.run(items)
        if len(result.seconds) != len(items) or any(
            len(s) != item[3] for s, item in zip(result.seconds, items, strict=True)
        ):
            raise CnmtRuntimeError("the profiling worker returned a round of the wrong shape")
        self.wall_s += result.wall_s
        self.cpu_s += result.cpu_s
        self.on_round(result, status)
        return result

    def _needs_runs(self, stats: RunningStats) -> bool:
        method = self.method
        if stats.count < method.min_runs:
            return True
        return stats.count < method.max_runs and stats.rel_ci > method.target_rel_ci

    def grid(self, ns: Sequence[int], ms: Sequence[int]) -> GridOutcome:
        """Measure every (N, M) in interleaved rounds, check the order, re-measure violators."""
        method = self.method
        keys = [(n, m) for n in sorted(set(ns)) for m in sorted(set(ms))]
        samples: dict[tuple[int, int], list[float]] = {key: [] for key in keys}
        stats = {key: RunningStats() for key in keys}

        def visit(cells: list[tuple[int, int]], warmup: int, status: str) -> None:
            self.rng.shuffle(cells)
            result = self._run([(n, m, warmup, 1) for n, m in cells], status)
            for key, seconds in zip(cells, result.seconds, strict=True):
                samples[key].extend(seconds)
                for value in seconds:
                    stats[key].add(value)

        def cells() -> tuple[Cell, ...]:
            return tuple(Cell(n, m, tuple(samples[n, m])) for n, m in keys)

        started = self.clock()
        rounds = 0
        stopped = "converged"
        while active := [key for key in keys if self._needs_runs(stats[key])]:
            if rounds and self.clock() - started >= method.budget_s:
                stopped = "budget"
                break
            done = len(keys) - len(active)
            status = f"grid round {rounds + 1}: {done}/{len(keys)} cells converged"
            visit(active, method.warmup if rounds == 0 else 0, status)
            rounds += 1
        seconds = self.clock() - started
        if stopped == "converged" and any(
            not cell.rel_ci <= method.target_rel_ci for cell in cells()
        ):
            stopped = "max runs"  # every cell done, some at --max-runs without converging

        found = order_violations(cells(), method.target_rel_ci)
        violations = found
        remeasure_rounds = remeasure_runs = 0
        started = self.clock()
        allowance = method.remeasure_share * method.budget_s
        for _ in range(REMEASURE_PASSES):
            if not violations or self.clock() - started >= allowance:
                break
            suspects = sorted({v.lower for v in violations} | {v.upper for v in violations})
            goal = {key: 2 * max(stats[key].count, method.min_runs) for key in suspects}
            status = f"re-measuring {len(suspects)} cells out of order"
            while active := [key for key in suspects if stats[key].count < goal[key]]:
                if self.clock() - started >= allowance:
                    break
                visit(active, 0, status)
                remeasure_rounds += 1
                remeasure_runs += len(active)
            violations = order_violations(cells(), method.target_rel_ci)
        final = cells()
        return GridOutcome(
            cells=final,
            rounds=rounds,
            runs=sum(c.count for c in final),
            seconds=seconds,
            stopped=stopped,
            not_converged=tuple((c.n, c.m) for c in final if not c.rel_ci <= method.target_rel_ci),
            violations_found=tuple(found),
            remeasure_rounds=remeasure_rounds,
            remeasure_runs=remeasure_runs,
            violations_remaining=tuple(violations),
        )

    def requests(
        self, n: Sequence[int], m: Sequence[int], budget_s: float, fit: Fit, floor_s: float
    ) -> RequestsOutcome:
        """Time each (N, M) once, in the given order, in rounds of about REQUEST_ROUND_S as the
        grid's ``fit`` predicts them (never below ``floor_s`` a run), until all are timed or
        ``budget_s`` is spent. The first round opens with one untimed run at the largest N
        and M, whose one-time costs the grid's warm-up may not have covered."""
        timed: list[TimedRequest] = []
        started = self.clock()
        if not n:
            return RequestsOutcome(timed=(), seconds=0.0, stopped="all timed")
        predicted = np.maximum(fit.predict(np.asarray(n), np.asarray(m)), floor_s) + self.pause_s
        index = 0
        while index < len(n) and self.clock() - started < budget_s:
            end, total = index + 1, predicted[index]
            while end < len(n) and total + predicted[end] <= REQUEST_ROUND_S:
                total += predicted[end]
                end += 1
            items: list[Item] = [(n[i], m[i], 0, 1) for i in range(index, end)]
            if index == 0:
                items.insert(0, (max(n), max(m), 1, 0))
            result = self._run(items, f"requests: {index}/{len(n)} timed")
            for i, seconds in zip(range(index, end), result.seconds[-(end - index) :], strict=True):
                timed.append(TimedRequest(int(n[i]), int(m[i]), seconds[0]))
            index = end
        return RequestsOutcome(
            timed=tuple(timed),
            seconds=self.clock() - started,
            stopped="all timed" if index == len(n) else "budget",
        )
