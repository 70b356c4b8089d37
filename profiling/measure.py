"""Characterization: time a translator on a grid of (N, M), fit ``T = a_n*N + a_m*M + b``, and
time real requests for the replay's ground truth.

The measurement runs in a *worker* subprocess so that a device's CPU quota (a cgroup, see
:mod:`cnmt.profiling.cpu_quota`) throttles the model and nothing else. The parent decides what
to time, round by round, and the worker times it: the parent reads the worker's events, keeps
the statistics, watches the host's load, draws the progress bar and fits.

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

**Regimes.** ``isolated``: a pause of one quota period (``cpu_period_us`` of the device, also
without a quota) before every timed run, so that each request finds an idle device with its
quota refilled: what sporadic live traffic sees, and what the replay assumes (no queues).
Under a quota, a run that needs less CPU than one period's quota then runs at full speed.
``sustained``: runs back to back, what a saturated device sees; under a quota every run pays
the quota's full slowdown.

**No system call inside a round (sustained).** Linux charges a CFS CPU quota at timer ticks
(every 4 ms at HZ=250) and at system calls. With a system call between runs, the stall the
quota owes tends to fall on that call, between the timed runs, instead of inside them:
``benchmarks/cpu_quota_throttling.py`` measured runs of 4 ms of CPU at a 25% quota taking 4.04x
their CPU time back to back but only 1.88x with one clock read between runs, while the process
as a whole ran at 4.0x in both cases. So the worker reports a whole round at once and makes no
system call between its runs (``perf_counter`` is a vDSO call, results go to preallocated
lists, the garbage collector is paused). Between rounds it does make system calls (it reports
the round and reads the next one) and waits for the parent, so every sustained round opens with
one untimed *lead-in* run that brings the quota's accounting back into the back-to-back rhythm.
In the isolated regime the pause before each run is a system call on purpose: it is the idle
time the regime is about; the worker then reads its CPU clock around each timed run (after the
pause, outside the timed interval), to report wall over CPU time of the timed runs alone.

**Real requests.** After the grid, ``RequestSet`` pairs (N, M) drawn from an experiment's corpus
(see `cnmt profile --requests`) are timed once each, in their drawn order (random), in rounds
of about two seconds, until all are timed or their budget is spent. They are stored in the
profile as ground truth for the replay and never enter the fit.

Worker protocol: the parent starts ``python -m cnmt.profiling.measure JOB_JSON``, writes one
round per line to the worker's stdin and reads one JSON object per line from its stdout
(anything else the worker prints goes to stderr)::

    -> {"round": [[N, M, untimed, timed], ...]}        (the worker runs them in this order)
    <- {"event": "ready", "family": ..., "providers": [...], "warnings": [...],
        "versions": {...}, "cgroup": {...}, "load_seconds": ..., "max_source_tokens": ...,
        "max_output_tokens": ..., "cpu_total_s": ...}  (once, first)
    <- {"event": "round", "seconds": [[...], ...], "wall_seconds": ..., "cpu_seconds": ...,
        "cpu_total_s": ...}                            (one per round: timed seconds per item)
    <- {"event": "done"}                               (after the parent closed stdin)
    <- {"event": "error", "error": "ConfigError" | "CnmtRuntimeError", "message": ...}

This module imports neither torch nor (in the parent) onnxruntime.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import importlib
import json
import math
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from cnmt.errors import CnmtError, CnmtRuntimeError, ConfigError
from cnmt.profiling.cpu_quota import JOIN_FAILED_EXIT, CgroupUnavailable, CpuQuota, popen_in_quota
from cnmt.profiling.devices import CPU_PROVIDER, DeviceSetting
from cnmt.profiling.host import (
    LoadMonitor,
    describe_machine,
    load_average,
    probe_other_cpus,
    process_cpu_seconds,
)
from cnmt.profiling.profiles import (
    REGIMES,
    Cell,
    DeviceProfile,
    Fit,
    HostLoad,
    Quality,
    RequestsQuality,
    TimedRequest,
    Violation,
    ci_halfwidth,
    fit_linear,
    order_violations,
    r2_mse,
)

BUSY_CPUS = 0.2
"""Other processes' CPU use (in CPUs) above which the host is too busy to measure on."""
REMEASURE_PASSES = 2
REQUEST_ROUND_S = 2.0
"""Predicted duration of one round of requests: short enough to stop near the budget."""
LOADER = "cnmt.runtime.models:load_translator"
"""How the worker opens a model: ``module:function``, called as ``f(model, config=...)``."""

Item = tuple[int, int, int, int]
"""One entry of a round: (N, M, untimed runs, timed runs), run in this order."""


class MachineBusy(CnmtRuntimeError):
    """Other processes use too much CPU for trustworthy timings."""


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


@dataclasses.dataclass(frozen=True)
class HostCheck:
    """When the host counts as busy: other processes above ``max_busy`` CPUs during a probe of
    ``probe_s`` seconds before the run (refused unless ``allow_busy``) or on average during it
    (flagged in the profile)."""

    max_busy: float = BUSY_CPUS
    allow_busy: bool = False
    probe_s: float = 2.0


@dataclasses.dataclass(frozen=True)
class RequestSet:
    """Real requests to time after the grid: their (N, M) in drawn order, where they come from
    (stored in the profile) and the wall time they may take."""

    n: tuple[int, ...]
    m: tuple[int, ...]
    source: dict[str, Any]
    budget_s: float

    def __post_init__(self) -> None:
        if len(self.n) != len(self.m):
            raise ValueError("a request set needs as many M as N")


@dataclasses.dataclass(frozen=True)
class Job:
    """How the worker opens the model: sent to it as JSON on its command line."""

    model: str
    providers: tuple[str, ...]
    threads: int
    allow_spinning: bool
    pause_s: float
    loader: str = LOADER

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str) -> Job:
        data = json.loads(text)
        data["providers"] = tuple(data["providers"])
        return cls(**data)


@dataclasses.dataclass(frozen=True)
class RoundResult:
    """What a round gave: the timed seconds of each item (in the round's order), the wall and
    CPU time it took (sustained: the whole round; isolated: the timed runs only, pauses
    excluded) and the worker's CPU time since it started."""

    seconds: list[list[float]]
    wall_s: float
    cpu_s: float
    cpu_total_s: float


class Runner(Protocol):
    """Runs rounds on a device: the worker process, or a synthetic device in tests."""

    def run(self, items: Sequence[Item]) -> RoundResult: ...


def session_config_for(device: DeviceSetting) -> Any:
    """The ONNX Runtime session settings a model gets on ``device`` (profiling and serving alike).

    Under a CPU quota, idle intra-op threads must not spin-wait: spinning burns the quota
    without doing work, which would make the emulated device slower than its quota says.
    """
    from cnmt.runtime.session import session_config

    return session_config(device.providers, device.threads, allow_spinning=device.cpu_quota is None)


def check_grid(ns: Sequence[int], ms: Sequence[int]) -> None:
    """ConfigError unless the grid can identify all three coefficients."""
    for flag, values in (("--n", ns), ("--m", ms)):
        if any(v < 1 for v in values):
            raise ConfigError(f"{flag}: token counts must be at least 1, got {list(values)}")
        if len(set(values)) < 2:
            raise ConfigError(
                f"{flag}: give at least two different values (e.g. 8,16,32,64): with one value "
                "the fit cannot separate its coefficient from the constant b"
            )


# ------------------------------------------------------------------------------------ session


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
            items = [(n, m, 1, timed), *items[1:]]  # the lead-in run (see the module docstring)
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


# ------------------------------------------------------------------------------------- parent


def resolve_model(model: str) -> tuple[str, dict[str, str]]:
    """The model directory to hand to the worker, and its manifest's name/family/checksum.

    A built-in model is opened from the cache (export it first: `cnmt profile` does); a name
    that is neither a directory nor a built-in goes to the worker unchanged, where
    ``load_translator`` reports it.
    """
    from cnmt.runtime.manifest import MANIFEST_NAME, load_manifest
    from cnmt.runtime.models import BUILTIN_MODELS, builtin_dir

    path = Path(model)
    if not path.is_dir() and model in BUILTIN_MODELS:
        path = builtin_dir(model)
    if path.is_dir() and (path / MANIFEST_NAME).is_file():
        manifest = load_manifest(path)
        info = {
            "name": manifest.name,
            "family": manifest.family,
            "checksum": manifest.source_checksum,
        }
        return str(path), info
    return model, {}


def _check_limits(ns: Sequence[int], ms: Sequence[int], ready: dict[str, Any]) -> None:
    for flag, values, limit, what in (
        ("--n", ns, ready.get("max_source_tokens"), "the longest input"),
        ("--m", ms, ready.get("max_output_tokens"), "the longest output"),
    ):
        if limit is not None and max(values) > limit:
            raise ConfigError(
                f"{flag} {max(values)} exceeds {what} of this model ({limit} tokens); "
                f"use values up to {limit}"
            )


def measure(
    model: str,
    device: DeviceSetting,
    ns: Sequence[int],
    ms: Sequence[int],
    method: Method | None = None,
    *,
    requests: RequestSet | None = None,
    host: HostCheck | None = None,
    progress: bool = True,
    loader: str = LOADER,
    python: str = sys.executable,
    on_warning: Callable[[str], None] | None = None,
) -> DeviceProfile:
    """Characterize ``model`` on ``device`` over the grid ``ns`` x ``ms`` (and time
    ``requests``); returns the profile.

    Once the model is loaded, before the first round, other processes' CPU use is probed for
    ``host.probe_s`` seconds: above ``host.max_busy`` the run is refused with
    :class:`MachineBusy` unless ``host.allow_busy``. ``loader`` names the function the worker
    opens the model with (default: an exported model directory or built-in name through
    ``load_translator``). ``on_warning`` receives messages worth showing (a busy host, provider
    fallbacks, the worker's stderr); default: printed to stderr.
    """
    method = method or Method()
    host = host or HostCheck()
    check_grid(ns, ms)
    method.check()
    warn = on_warning or (lambda message: print(f"cnmt profile: {message}", file=sys.stderr))
    quota = CpuQuota(device.cpu_quota, device.cpu_period_us) if device.cpu_quota else None
    pause_s = method.pause_s(device)
    with contextlib.ExitStack() as stack:
        if quota is not None:  # first: a machine without usable cgroups fails before any work
            stack.enter_context(quota)
        model_path, info = resolve_model(model) if loader == LOADER else (model, {})
        date = datetime.now(UTC).isoformat(timespec="seconds")
        machine = describe_machine(gpus=any(p != CPU_PROVIDER for p in device.providers))
        machine["load_average_before"] = load_average()
        if progress:
            where = f"in cgroup {quota.path}" if quota is not None else "unthrottled"
            print(f"cnmt profile: loading {model} in a worker process ({where})", file=sys.stderr)
        job = Job(
            model=model_path,
            providers=tuple(device.providers),
            threads=device.threads,
            allow_spinning=device.cpu_quota is None,
            pause_s=pause_s,
            loader=loader,
        )
        worker = stack.enter_context(WorkerProcess(job, quota, python, warn))
        ready = worker.ready
        if quota is not None and not any(
            p.endswith("/" + quota.name) for p in ready["cgroup"].values()
        ):
            raise CgroupUnavailable(
                f"the profiling worker is not in cgroup {quota.path} (its cgroups: "
                f"{ready['cgroup']}); the quota would not apply"
            )
        if quota is not None:
            machine["cgroup"] = {"path": str(quota.path), "version": quota.version}
        for message in ready["warnings"]:
            warn(message)
        _check_limits(ns, ms, ready)
        requests, out_of_range = _in_range(requests, ready)
        # The probe runs once the model is loaded (a bad model or grid fails first), while the
        # worker waits for its first round; its CPU time is subtracted all the same.
        pid = worker.proc.pid
        before = (
            probe_other_cpus(
                host.probe_s, lambda: time.process_time() + (process_cpu_seconds(pid) or 0.0)
            )
            if host.probe_s > 0
            else None
        )
        _check_host(before, host, warn)

        monitor = LoadMonitor()
        monitor.mark(float(ready["cpu_total_s"]) + time.process_time())
        budget = method.budget_s * (1 + method.remeasure_share)
        budget += requests.budget_s if requests is not None else 0.0
        bar = stack.enter_context(
            _progress(budget, f"{Path(str(model)).name} @ {device.name}", progress)
        )
        last = [time.monotonic()]

        def on_round(result: RoundResult, status: str) -> None:
            monitor.mark(result.cpu_total_s + time.process_time())
            now = time.monotonic()
            bar.update(round(now - last[0], 2))
            last[0] = now
            bar.set_postfix_str(status, refresh=False)

        session = Session(worker, method, pause_s, on_round=on_round)
        grid = session.grid(ns, ms)
        fit = fit_linear(grid.cells)
        timed = None
        if requests is not None:
            floor_s = min(c.mean for c in grid.cells)
            timed = session.requests(requests.n, requests.m, requests.budget_s, fit, floor_s)
        worker.finish()
    machine["load_average_after"] = load_average()
    # Wall over CPU time of the timed work: how hard a quota throttled the model, about
    # 1/quota when the quota is the bottleneck (1 or more when unthrottled but contended).
    machine["wall_seconds_per_cpu_second"] = (
        round(session.wall_s / session.cpu_s, 3) if session.cpu_s > 0 else None
    )
    host_load = _host_load(host, before, monitor)
    if host_load.busy and host_load.mean is not None and host_load.mean > host.max_busy:
        warn(
            f"WARNING: other processes kept {host_load.mean:.2f} CPUs busy on average during "
            f"the measurement (peak {host_load.peak:.2f}; above {host.max_busy:g}): these "
            "timings are inflated; the profile is flagged busy. Measure again on an idle "
            "machine for a profile you keep"
        )
    quality = Quality(
        regime=method.regime,
        pause_s=pause_s,
        target_rel_ci=method.target_rel_ci,
        min_runs=method.min_runs,
        max_runs=method.max_runs,
        budget_s=method.budget_s,
        rounds=grid.rounds,
        runs=grid.runs,
        seconds=round(grid.seconds, 3),
        stopped=grid.stopped,
        not_converged=grid.not_converged,
        violations_found=grid.violations_found,
        remeasure_rounds=grid.remeasure_rounds,
        remeasure_runs=grid.remeasure_runs,
        violations_remaining=grid.violations_remaining,
        host=host_load,
        requests=_requests_quality(requests, out_of_range, timed, fit),
    )
    versions = {
        "python": platform.python_version(),
        "cnmt": _version("cnmt"),
        "numpy": _version("numpy"),
        **ready["versions"],
    }
    return DeviceProfile(
        model=info.get("name", Path(str(model)).name),
        family=info.get("family", ready["family"]),
        device=device,
        cells=grid.cells,
        fit=fit,
        machine=machine,
        versions=versions,
        date=date,
        warmup=method.warmup,
        providers_used=tuple(ready["providers"]),
        provider_warnings=tuple(ready["warnings"]),
        model_checksum=info.get("checksum", ""),
        seed=method.seed,
        quality=quality,
        requests=timed.timed if timed is not None else (),
    )


def _check_host(before: float | None, host: HostCheck, warn: Callable[[str], None]) -> None:
    if before is None:
        if host.probe_s > 0:
            warn(
                "cannot measure other processes' CPU use here (no /proc/stat): make sure the "
                "machine is idle, busy hosts inflate the timings"
            )
        return
    if before <= host.max_busy:
        return
    message = (
        f"other processes kept {before:.2f} CPUs busy during a {host.probe_s:g} s probe "
        f"(more than {host.max_busy:g}; this host has {os.cpu_count()} CPUs): the timings "
        "would be inflated and noisy"
    )
    if not host.allow_busy:
        raise MachineBusy(
            f"{message}; measure when the machine is idle, or pass --allow-busy to measure "
            "anyway (the profile records the load and is flagged busy)"
        )
    warn(f"WARNING: {message}; measuring anyway (--allow-busy), the profile is flagged busy")


def _host_load(host: HostCheck, before: float | None, monitor: LoadMonitor) -> HostLoad:
    before, mean, peak = (
        round(v, 3) if v is not None else None for v in (before, monitor.mean, monitor.peak)
    )
    busy = any(v is not None and v > host.max_busy for v in (before, mean))
    return HostLoad(
        probe_s=host.probe_s,
        before=before,
        mean=mean,
        peak=peak,
        max_busy=host.max_busy,
        busy=busy,
        allowed_busy=host.allow_busy,
    )


def _in_range(requests: RequestSet | None, ready: dict[str, Any]) -> tuple[RequestSet | None, int]:
    """The requests the model can run (1 <= N, M up to its limits), and how many were not."""
    if requests is None:
        return None, 0
    n, m = np.asarray(requests.n), np.asarray(requests.m)
    keep = (n >= 1) & (m >= 1)
    for values, limit in ((n, ready.get("max_source_tokens")), (m, ready.get("max_output_tokens"))):
        if limit is not None:
            keep &= values <= limit
    kept = dataclasses.replace(
        requests, n=tuple(int(v) for v in n[keep]), m=tuple(int(v) for v in m[keep])
    )
    return kept, int((~keep).sum())


def _requests_quality(
    requests: RequestSet | None,
    out_of_range: int,
    timed: RequestsOutcome | None,
    fit: Fit,
) -> RequestsQuality | None:
    if requests is None or timed is None:
        return None
    if timed.timed:
        actual = np.array([r.seconds for r in timed.timed])
        predicted = fit.predict(
            np.array([r.n for r in timed.timed]), np.array([r.m for r in timed.timed])
        )
        r2, mse = r2_mse(actual, predicted)
    else:
        r2 = mse = math.nan
    return RequestsQuality(
        source=requests.source,
        drawn=len(requests.n) + out_of_range,
        out_of_range=out_of_range,
        timed=len(timed.timed),
        budget_s=requests.budget_s,
        seconds=round(timed.seconds, 3),
        stopped=timed.stopped,
        fit_r2=r2,
        fit_mse=mse,
    )


def _version(distribution: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(distribution)
    except PackageNotFoundError:
        return "not installed"


@contextlib.contextmanager
def _progress(total_s: float, description: str, enabled: bool) -> Iterator[Any]:
    """A progress bar over the time budgets (seconds): the rounds stop when every cell's mean
    is known, usually before the budget is spent."""
    from tqdm import tqdm

    bar = tqdm(
        total=round(total_s),
        desc=description,
        unit="s",
        file=sys.stderr,
        disable=not enabled,
        bar_format="{l_bar}{bar}| {n:.0f}/{total_fmt} s budget [{elapsed}{postfix}]",
    )
    try:
        yield bar
    finally:
        bar.close()


class WorkerProcess:
    """The worker subprocess as a :class:`Runner`: started in ``quota`` (if any), it loads the
    model (its ``ready`` event is :attr:`ready`), runs the rounds it is given, and ends at
    :meth:`finish`. Used as a context manager, it is killed if the caller stops early (an
    error, Ctrl-C)."""

    def __init__(
        self, job: Job, quota: CpuQuota | None, python: str, warn: Callable[[str], None]
    ) -> None:
        self.quota = quota
        self.warn = warn
        self._stderr = tempfile.TemporaryFile(mode="w+", encoding="utf-8", errors="replace")
        # -P: a checkout's cnmt/ folder in the working directory must not shadow the installed
        # package
        args = [python, "-P", "-m", "cnmt.profiling.measure", job.to_json()]
        self.proc = popen_in_quota(
            args,
            quota,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            text=True,
        )
        self.ready: dict[str, Any] = {}

    def __enter__(self) -> WorkerProcess:
        try:
            self.ready = self._expect("ready")
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def run(self, items: Sequence[Item]) -> RoundResult:
        stdin = self.proc.stdin
        assert stdin is not None
        try:
            stdin.write(json.dumps({"round": [list(item) for item in items]}) + "\n")
            stdin.flush()
        except (BrokenPipeError, OSError):
            self.proc.wait()
            self._raise_pending_error()
            raise self._failure(
                f"profiling worker exited with status {self.proc.returncode} mid-measurement"
            ) from None
        event = self._expect("round")
        return RoundResult(
            seconds=[[float(s) for s in item] for item in event["seconds"]],
            wall_s=float(event["wall_seconds"]),
            cpu_s=float(event["cpu_seconds"]),
            cpu_total_s=float(event["cpu_total_s"]),
        )

    def finish(self) -> None:
        """Tell the worker there is nothing more to run and wait for it to end cleanly."""
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self._expect("done")
        self.proc.wait()
        if self.proc.returncode != 0:
            raise self._failure(
                f"profiling worker exited with status {self.proc.returncode} after finishing"
            )
        leftover = self._worker_stderr()
        if leftover:
            self.warn(f"the profiling worker wrote to stderr:\n{leftover[-2000:]}")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe is not None:
                with contextlib.suppress(OSError):
                    pipe.close()
        self._stderr.close()

    def _worker_stderr(self) -> str:
        self._stderr.seek(0)
        return self._stderr.read().strip()

    def _failure(self, message: str) -> CnmtError:
        tail = self._worker_stderr()[-2000:]
        detail = f"\n--- worker stderr (last lines) ---\n{tail}" if tail else ""
        if self.proc.returncode == JOIN_FAILED_EXIT and self.quota is not None:
            return CgroupUnavailable(
                f"the profiling worker could not join {self.quota.procs_file}{detail}"
            )
        return CnmtRuntimeError(f"{message}{detail}")

    def _raise_pending_error(self) -> None:
        """A worker that died while being written to may have said why on stdout."""
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with contextlib.suppress(json.JSONDecodeError):
                event = json.loads(line)
                if event.get("event") == "error":
                    self._raise_error(event)

    def _raise_error(self, event: dict[str, Any]) -> None:
        self.proc.wait()
        if event.get("error") == "ConfigError":
            raise ConfigError(event["message"])
        if event.get("crashed"):  # not a CnmtError: the traceback on stderr helps
            raise self._failure(f"the model failed while profiling: {event['message']}")
        raise CnmtRuntimeError(event["message"])

    def _expect(self, kind: str) -> dict[str, Any]:
        """The worker's next event, which must be ``kind``; its error event raised."""
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            self.proc.wait()
            raise self._failure(
                f"profiling worker exited with status {self.proc.returncode} before finishing"
            )
        try:
            event = json.loads(line)
        except json.JSONDecodeError:
            raise self._failure(
                f"profiling worker wrote a line that is not an event: {line[:200]!r}"
            ) from None
        if event.get("event") == "error":
            self._raise_error(event)
        if event.get("event") != kind:
            raise self._failure(
                f"profiling worker sent an unexpected event {event.get('event')!r} "
                f"(expected {kind!r})"
            )
        return event


# ------------------------------------------------------------------------------------- worker


def _import_loader(spec: str) -> Callable[..., Any]:
    module_name, _, function = spec.partition(":")
    try:
        return getattr(importlib.import_module(module_name), function)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"profiler loader {spec!r} cannot be imported: {exc}") from None


def active_providers(translator: Any) -> list[str]:
    """The execution providers the translator's ONNX Runtime sessions really run on.

    The Translator interface does not expose its sessions, so this takes a ``providers``
    attribute if the translator has one, and otherwise collects ``get_providers()`` of every
    session object (anything with that method) among its attributes, searched up to three
    objects deep (a translator holding a decoder holding sessions), through lists and dicts.
    """
    declared = getattr(translator, "providers", None)
    if isinstance(declared, list | tuple) and all(isinstance(p, str) for p in declared):
        return list(declared)
    found: list[str] = []
    seen: set[int] = set()

    def visit(value: Any, depth: int) -> None:
        if id(value) in seen or depth > 3:
            return
        seen.add(id(value))
        get = getattr(value, "get_providers", None)
        if callable(get) and not isinstance(value, type):
            found.extend(p for p in get() if p not in found)
        elif isinstance(value, dict):
            for item in value.values():
                visit(item, depth + 1)
        elif isinstance(value, list | tuple):
            for item in value:
                visit(item, depth + 1)
        elif hasattr(value, "__dict__") and not isinstance(value, type):
            for item in vars(value).values():
                visit(item, depth + 1)

    visit(translator, 0)
    return found


def _cgroups() -> dict[str, str]:
    try:
        from cnmt.profiling.cpu_quota import cgroup_of

        return cgroup_of()
    except OSError:
        return {}


def time_round(translator: Any, items: Sequence[Item], pause_s: float) -> RoundResult:
    """Run one round: for each item, its untimed runs, then its timed runs, each timed with
    ``perf_counter`` around the call alone; with ``pause_s``, a sleep of that long before every
    timed run (see the module docstring for the system calls each regime allows)."""
    results = [[0.0] * timed for _, _, _, timed in items]  # preallocated: no allocation later
    run = translator.run_forced
    gc.collect()
    gc.disable()  # a collection inside a timed call would be noise, not model time
    try:
        if pause_s > 0:
            wall = cpu = 0.0
            for (n, m, untimed, timed), out in zip(items, results, strict=True):
                for _ in range(untimed):
                    run(n, m)
                for k in range(timed):
                    time.sleep(pause_s)
                    cpu_start = time.process_time()
                    start = time.perf_counter()
                    run(n, m)
                    out[k] = time.perf_counter() - start
                    cpu += time.process_time() - cpu_start
                    wall += out[k]
        else:
            cpu_start, wall_start = time.process_time(), time.perf_counter()
            for (n, m, untimed, timed), out in zip(items, results, strict=True):
                for _ in range(untimed):
                    run(n, m)
                for k in range(timed):
                    start = time.perf_counter()
                    run(n, m)
                    out[k] = time.perf_counter() - start
            wall = time.perf_counter() - wall_start
            cpu = time.process_time() - cpu_start
    finally:
        gc.enable()
    return RoundResult(results, wall, cpu, time.process_time())


def run_worker(job: Job, send: Callable[[dict[str, Any]], None], rounds: Iterable[str]) -> None:
    """Load the model, then time every round read from ``rounds`` (JSON lines), reporting
    through ``send``."""
    from cnmt.runtime.session import SessionConfig

    config = SessionConfig(
        providers=job.providers,
        intra_op_threads=job.threads,
        allow_spinning=job.allow_spinning,
    )
    loader = _import_loader(job.loader)
    started = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        translator = loader(job.model, config=config)
    load_seconds = time.perf_counter() - started
    manifest = getattr(translator, "manifest", None)
    ort = sys.modules.get("onnxruntime")
    send(
        {
            "event": "ready",
            "family": getattr(translator, "family", type(translator).__name__),
            "providers": active_providers(translator),
            "warnings": list(dict.fromkeys(str(w.message) for w in caught)),
            "versions": {"onnxruntime": getattr(ort, "__version__", "not loaded")},
            "cgroup": _cgroups(),
            "load_seconds": load_seconds,
            "max_source_tokens": translator.max_source_tokens,
            "max_output_tokens": getattr(manifest, "max_output_tokens", None),
            "cpu_total_s": time.process_time(),
        }
    )
    for line in rounds:
        items = [tuple(int(v) for v in item) for item in json.loads(line)["round"]]
        result = time_round(translator, items, job.pause_s)  # type: ignore[arg-type]
        send(
            {
                "event": "round",
                "seconds": result.seconds,
                "wall_seconds": result.wall_s,
                "cpu_seconds": result.cpu_s,
                "cpu_total_s": result.cpu_total_s,
            }
        )
    send({"event": "done"})


def worker_main(argv: Sequence[str]) -> int:
    """Entry point of the worker process: ``python -m cnmt.profiling.measure JOB_JSON``, rounds
    on stdin."""
    # Events go to a private copy of stdout; everything else that writes to fd 1 (native
    # libraries included) is sent to stderr so that it cannot corrupt the event stream.
    events = os.fdopen(os.dup(1), "w", encoding="utf-8", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr

    def send(event: dict[str, Any]) -> None:
        events.write(json.dumps(event) + "\n")
        events.flush()

    try:
        if len(argv) != 1:
            raise ConfigError("usage: python -m cnmt.profiling.measure JOB_JSON (rounds on stdin)")
        run_worker(Job.from_json(argv[0]), send, sys.stdin)
        return 0
    except CnmtError as exc:
        kind = "ConfigError" if isinstance(exc, ConfigError) else "CnmtRuntimeError"
        send({"event": "error", "error": kind, "message": str(exc)})
        return exc.exit_code
    except Exception as exc:  # a model that crashes: report it, with the traceback on stderr
        traceback.print_exc()
        message = f"{type(exc).__name__}: {exc}"
        send({"event": "error", "error": "CnmtRuntimeError", "message": message, "crashed": True})
        return 1
    finally:
        events.close()


if __name__ == "__main__":
    sys.exit(worker_main(sys.argv[1:]))
