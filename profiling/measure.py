"""Characterization: time a translator on a grid of (N, M), fit ``T = a_n*N + a_m*M + b``, and
time real requests for the replay's ground truth.

The measurement runs in a *worker* subprocess so that a device's CPU quota (a cgroup, see
:mod:`cnmt.profiling.cpu_quota`) throttles the model and nothing else. The parent decides what
to time, round by round, and the worker times it: the parent reads the worker's events, keeps
the statistics, watches the host's load, draws the progress bar and fits.

How the rounds go (interleaved, each cell until its mean is known, the sanity check and its
re-measurement) is :mod:`cnmt.profiling.rounds`'s.

**Regimes.** ``isolated``: a pause of one quota period (``cpu_period_us`` of the device, also
without a quota) before every timed run, so that each request finds an idle device with its
quota refilled: what sporadic live traffic sees, and what the replay assumes (no queues).
Under a quota, a run that needs less CPU than one period's quota then runs at full speed.
``sustained``: runs back to back, what a saturated device sees; under a quota every run pays
the quota's full slowdown.

**Real requests.** After the grid, ``RequestSet`` pairs (N, M) drawn from an experiment's corpus
(see `cnmt profile --requests`) are timed once each, in their drawn order (random), in rounds
of about two seconds, until all are timed or their budget is spent. They are stored in the
profile as ground truth for the replay and never enter the fit.

The timing itself runs in the worker's program, :mod:`cnmt.profiling.worker` (which also
describes the protocol between the two); the rounds are chosen by :class:`Session`
(:mod:`cnmt.profiling.rounds`). This module is the parent: it starts the worker
(:class:`WorkerProcess`), checks the host and the grid, and assembles the profile. It
imports neither torch nor onnxruntime.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from cnmt import processes
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
    DeviceProfile,
    Fit,
    HostLoad,
    Quality,
    RequestsQuality,
    fit_linear,
    r2_mse,
)
from cnmt.profiling.rounds import (
    REMEASURE_PASSES,
    REQUEST_ROUND_S,
    GridOutcome,
    Method,
    RequestsOutcome,
    Runner,
    RunningStats,
    Session,
)
from cnmt.profiling.worker import (
    LOADER,
    Item,
    Job,
    RoundResult,
    active_providers,
    run_worker,
    time_round,
    worker_main,
)

BUSY_CPUS = 0.2
"""Other processes' CPU use (in CPUs) above which the host is too busy to measure on."""


class MachineBusy(CnmtRuntimeError):
    """Other processes use too much CPU for trustworthy timings."""


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
        args = [python, "-P", "-m", "cnmt.profiling.worker", job.to_json()]
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
        # Stopped early (an error, Ctrl-C): the worker has no state worth a clean exit.
        processes.stop(self.proc, grace_s=1.0)
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


# Imported from here by the commands and the tests; the worker's and the rounds' names too.
__all__ = [
    "LOADER",
    "REMEASURE_PASSES",
    "REQUEST_ROUND_S",
    "GridOutcome",
    "HostCheck",
    "Item",
    "Job",
    "MachineBusy",
    "Method",
    "RequestSet",
    "RequestsOutcome",
    "RoundResult",
    "Runner",
    "RunningStats",
    "Session",
    "WorkerProcess",
    "active_providers",
    "check_grid",
    "measure",
    "resolve_model",
    "run_worker",
    "session_config_for",
    "time_round",
    "worker_main",
]

if __name__ == "__main__":  # the worker's entry point before the split, kept working
    sys.exit(worker_main(sys.argv[1:]))
