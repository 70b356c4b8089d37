"""Characterization: time a translator on a grid of (N, M) and fit ``T = a_n*N + a_m*M + b``.

The measurement runs in a *worker* subprocess so that a device's CPU quota (a cgroup, see
:mod:`cnmt.profiling.cpu_quota`) throttles the model and nothing else: the parent only reads
events, draws the progress bar and fits. The worker joins the cgroup before its first
instruction, loads the translator with the device's providers and threads, then for every grid
cell, in an order shuffled with a fixed seed (so that slow drift of the machine spreads over the
grid instead of biasing large M), runs ``warmup`` untimed and ``repeats`` timed
``run_forced(N, M)`` calls back to back, timing each with ``time.perf_counter`` around the call
alone, and reports the cell once all its runs are done.

Why per cell: Linux charges a CFS CPU quota at timer ticks (every 4 ms at HZ=250) and at system
calls. With a system call between runs, the stall the quota owes tends to fall on that call,
between the timed runs, instead of inside them: ``benchmarks/cpu_quota_throttling.py`` measured
runs of 4 ms of CPU at a 25% quota taking 4.04x their CPU time back to back but only 1.88x with
one clock read between runs, while the process as a whole ran at 4.0x in both cases. So between
the runs of a cell the worker makes no system call (``perf_counter`` is a vDSO call).

Worker protocol: the parent starts ``python -m cnmt.profiling.measure JOB_JSON`` and reads one
JSON object per line from the worker's stdout (anything else the worker prints goes to stderr)::

    {"event": "ready", "family": ..., "providers": [...], "warnings": [...], "versions": {...},
     "cgroup": {...}, "load_seconds": ...}
    {"event": "cell", "n": N, "m": M, "warmup_seconds": [...], "seconds": [...],
     "wall_seconds": ..., "cpu_seconds": ...}       (one per cell; wall/CPU over all its runs)
    {"event": "done"}
    {"event": "error", "error": "ConfigError" | "CnmtRuntimeError", "message": ...}

This module imports neither torch nor (in the parent) onnxruntime.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import importlib
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cnmt.errors import CnmtError, CnmtRuntimeError, ConfigError
from cnmt.profiling.cpu_quota import JOIN_FAILED_EXIT, CgroupUnavailable, CpuQuota, popen_in_quota
from cnmt.profiling.devices import DeviceSetting
from cnmt.profiling.profiles import Cell, DeviceProfile, fit_linear

BUSY_LOAD = 0.5  # 1-minute load average from which a measurement is flagged as disturbed
LOADER = "cnmt.runtime.models:load_translator"
"""How the worker opens a model: ``module:function``, called as ``f(model, config=...)``."""


@dataclasses.dataclass(frozen=True)
class Job:
    """What the worker measures: sent to it as JSON on its command line."""

    model: str
    providers: tuple[str, ...]
    threads: int
    allow_spinning: bool
    cells: tuple[tuple[int, int], ...]  # in measurement order
    warmup: int
    repeats: int
    loader: str = LOADER

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str) -> Job:
        data = json.loads(text)
        data["providers"] = tuple(data["providers"])
        data["cells"] = tuple((int(n), int(m)) for n, m in data["cells"])
        return cls(**data)


def session_config_for(device: DeviceSetting) -> Any:
    """The ONNX Runtime session settings a model gets on ``device`` (profiling and serving alike).

    Under a CPU quota, idle intra-op threads must not spin-wait: spinning burns the quota
    without doing work, which would make the emulated device slower than its quota says.
    """
    from cnmt.runtime.session import session_config

    return session_config(device.providers, device.threads, allow_spinning=device.cpu_quota is None)


def measurement_order(ns: Sequence[int], ms: Sequence[int], seed: int) -> list[tuple[int, int]]:
    """Every (N, M) of the grid, shuffled reproducibly by ``seed``."""
    cells = [(n, m) for n in ns for m in ms]
    random.Random(seed).shuffle(cells)
    return cells


def check_grid(ns: Sequence[int], ms: Sequence[int], warmup: int, repeats: int) -> None:
    """ConfigError unless the grid can identify all three coefficients."""
    for flag, values in (("--n", ns), ("--m", ms)):
        if any(v < 1 for v in values):
            raise ConfigError(f"{flag}: token counts must be at least 1, got {list(values)}")
        if len(set(values)) < 2:
            raise ConfigError(
                f"{flag}: give at least two different values (e.g. 8,16,32,64): with one value "
                "the fit cannot separate its coefficient from the constant b"
            )
    if warmup < 0:
        raise ConfigError(f"--warmup: {warmup} must be 0 or more")
    if repeats < 1:
        raise ConfigError(f"--repeats: {repeats} must be at least 1")


# ------------------------------------------------------------------------------------- parent


def describe_machine() -> dict[str, Any]:
    """The host, as far as it matters for timings: CPU model, cores, memory, platform."""
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "logical_cpus": os.cpu_count(),
    }
    with contextlib.suppress(AttributeError):
        info["usable_cpus"] = len(os.sched_getaffinity(0))
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("model name", "Model", "Hardware"):
                info["cpu_model"] = value.strip()
                break
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                info["memory_gib"] = round(int(line.split()[1]) / 2**20, 1)
                break
    info.setdefault("cpu_model", platform.processor() or "unknown")
    return info


def _load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


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


def measure(
    model: str,
    device: DeviceSetting,
    ns: Sequence[int],
    ms: Sequence[int],
    *,
    warmup: int = 2,
    repeats: int = 5,
    seed: int = 0,
    progress: bool = True,
    loader: str = LOADER,
    python: str = sys.executable,
    on_warning: Callable[[str], None] | None = None,
) -> DeviceProfile:
    """Characterize ``model`` on ``device`` over the grid ``ns`` x ``ms``; returns the profile.

    ``loader`` names the function the worker opens the model with (default: an exported model
    directory or built-in name through ``load_translator``). ``on_warning`` receives messages
    worth showing (provider fallbacks, the worker's stderr); default: printed to stderr.
    """
    check_grid(ns, ms, warmup, repeats)
    warn = on_warning or (lambda message: print(f"cnmt profile: {message}", file=sys.stderr))
    quota = CpuQuota(device.cpu_quota, device.cpu_period_us) if device.cpu_quota else None
    with contextlib.ExitStack() as stack:
        if quota is not None:  # first: a machine without usable cgroups fails before any work
            stack.enter_context(quota)
        model_path, info = resolve_model(model) if loader == LOADER else (model, {})
        order = measurement_order(ns, ms, seed)
        job = Job(
            model=model_path,
            providers=tuple(device.providers),
            threads=device.threads,
            allow_spinning=device.cpu_quota is None,
            cells=tuple(order),
            warmup=warmup,
            repeats=repeats,
            loader=loader,
        )
        date = datetime.now(UTC).isoformat(timespec="seconds")
        machine = describe_machine()
        machine["load_average_before"] = load = _load_average()
        if load is not None and load[0] >= BUSY_LOAD:
            warn(
                f"the 1-minute load average is {load[0]} on {os.cpu_count()} CPUs: other processes "
                "compete with the model, so these timings will be inflated and noisy; measure "
                "on an idle machine for a profile you keep"
            )
        samples: dict[tuple[int, int], list[float]] = {cell: [] for cell in order}
        cpu_total = wall_total = 0.0
        if progress:
            where = f"in cgroup {quota.path}" if quota is not None else "unthrottled"
            print(f"cnmt profile: loading {model} in a worker process ({where})", file=sys.stderr)
        events = stack.enter_context(_worker_events(job, quota, python, warn))
        ready = next(events, None)
        if ready is None:
            raise CnmtRuntimeError("the profiling worker finished without loading the model")
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
        total = len(order) * (warmup + repeats)
        bar = stack.enter_context(
            _progress(total, f"{Path(str(model)).name} @ {device.name}", progress)
        )
        for event in events:
            cell = (event["n"], event["m"])
            samples[cell].extend(float(s) for s in event["seconds"])
            wall_total += float(event["wall_seconds"])
            cpu_total += float(event["cpu_seconds"])
            bar.update(warmup + repeats)
            bar.set_postfix_str(f"N={cell[0]} M={cell[1]}", refresh=False)
    machine["load_average_after"] = _load_average()
    # Wall over CPU time of all runs (warm-up included): how hard a quota throttled the model,
    # about 1/quota when the quota is the bottleneck (1 or more when unthrottled but contended).
    machine["wall_seconds_per_cpu_second"] = (
        round(wall_total / cpu_total, 3) if cpu_total > 0 else None
    )
    cells = tuple(Cell(n, m, tuple(samples[(n, m)])) for n, m in sorted(samples))
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
        cells=cells,
        fit=fit_linear(cells),
        machine=machine,
        versions=versions,
        date=date,
        warmup=warmup,
        repeats=repeats,
        providers_used=tuple(ready["providers"]),
        provider_warnings=tuple(ready["warnings"]),
        model_checksum=info.get("checksum", ""),
        seed=seed,
    )


def _version(distribution: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(distribution)
    except PackageNotFoundError:
        return "not installed"


@contextlib.contextmanager
def _progress(total: int, description: str, enabled: bool) -> Iterator[Any]:
    from tqdm import tqdm

    bar = tqdm(total=total, desc=description, unit="run", file=sys.stderr, disable=not enabled)
    try:
        yield bar
    finally:
        bar.close()


@contextlib.contextmanager
def _worker_events(
    job: Job, quota: CpuQuota | None, python: str, warn: Callable[[str], None]
) -> Iterator[Iterator[dict[str, Any]]]:
    """Start the worker and yield an iterator over its events: ``ready`` first, then each
    ``run``; it ends at ``done`` and raises the worker's error otherwise. The worker is killed
    if the caller stops early (an error, Ctrl-C)."""
    stderr = tempfile.TemporaryFile(mode="w+", encoding="utf-8", errors="replace")
    # -P: a checkout's cnmt/ folder in the working directory must not shadow the installed package
    args = [python, "-P", "-m", "cnmt.profiling.measure", job.to_json()]
    proc = popen_in_quota(args, quota, stdout=subprocess.PIPE, stderr=stderr, text=True)

    def worker_stderr() -> str:
        stderr.seek(0)
        return stderr.read().strip()

    def failure(message: str) -> CnmtError:
        tail = worker_stderr()[-2000:]
        detail = f"\n--- worker stderr (last lines) ---\n{tail}" if tail else ""
        if proc.returncode == JOIN_FAILED_EXIT and quota is not None:
            return CgroupUnavailable(
                f"the profiling worker could not join {quota.procs_file}{detail}"
            )
        return CnmtRuntimeError(f"{message}{detail}")

    def events() -> Iterator[dict[str, Any]]:
        assert proc.stdout is not None
        first = True
        for line in proc.stdout:
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                raise failure(
                    f"profiling worker wrote a line that is not an event: {line[:200]!r}"
                ) from None
            kind = event.get("event")
            if kind == "error":
                proc.wait()
                if event.get("error") == "ConfigError":
                    raise ConfigError(event["message"])
                if event.get("crashed"):  # not a CnmtError: the traceback on stderr helps
                    raise failure(f"the model failed while profiling: {event['message']}")
                raise CnmtRuntimeError(event["message"])
            if kind == "done":
                proc.wait()
                if proc.returncode != 0:
                    raise failure(
                        f"profiling worker exited with status {proc.returncode} after finishing"
                    )
                leftover = worker_stderr()
                if leftover:
                    warn(f"the profiling worker wrote to stderr:\n{leftover[-2000:]}")
                return
            if first != (kind == "ready"):
                raise failure(f"profiling worker sent an unexpected event {kind!r}")
            first = False
            yield event
        proc.wait()
        raise failure(f"profiling worker exited with status {proc.returncode} before finishing")

    try:
        yield events()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
        stderr.close()


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


def run_worker(job: Job, send: Callable[[dict[str, Any]], None]) -> None:
    """Load the model and time every cell of ``job``, reporting through ``send``."""
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
    limit = translator.max_source_tokens
    too_long = sorted({n for n, _ in job.cells if n > limit})
    if too_long:
        raise ConfigError(
            f"--n {too_long[0]} exceeds the longest input of this model ({limit} tokens); "
            f"use values up to {limit}"
        )
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
        }
    )
    for n, m in job.cells:
        gc.collect()
        gc.disable()  # a collection inside a timed call would be noise, not model time
        try:
            # No system call between the runs of a cell (no event sent, no CPU clock read): it
            # would attract the quota's stalls out of the timed calls (see the module docstring).
            seconds = []
            cpu_start, wall_start = time.process_time(), time.perf_counter()
            for _ in range(job.warmup + job.repeats):
                start = time.perf_counter()
                translator.run_forced(n, m)
                seconds.append(time.perf_counter() - start)
            wall, cpu = time.perf_counter() - wall_start, time.process_time() - cpu_start
        finally:
            gc.enable()
        send(
            {
                "event": "cell",
                "n": n,
                "m": m,
                "warmup_seconds": seconds[: job.warmup],
                "seconds": seconds[job.warmup :],
                "wall_seconds": wall,
                "cpu_seconds": cpu,
            }
        )
    send({"event": "done"})


def worker_main(argv: Sequence[str]) -> int:
    """Entry point of the worker process: ``python -m cnmt.profiling.measure JOB_JSON``."""
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
            raise ConfigError("usage: python -m cnmt.profiling.measure JOB_JSON")
        run_worker(Job.from_json(argv[0]), send)
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
