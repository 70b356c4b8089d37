"""The profiling worker's program: load a model, then time the rounds its parent sends.

:mod:`cnmt.profiling.measure` starts it as ``python -P -m cnmt.profiling.worker JOB_JSON``
(under the device's CPU quota, if any) and talks to it through its stdin and stdout; this
module is all that runs in the child, and it imports nothing of the parent's.

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

The worker imports onnxruntime (through the loader), never torch.
"""

from __future__ import annotations

import dataclasses
import gc
import importlib
import json
import os
import sys
import time
import traceback
import warnings
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from cnmt.errors import CnmtError, ConfigError

LOADER = "cnmt.runtime.models:load_translator"
"""How the worker opens a model: ``module:function``, called as ``f(model, config=...)``."""

Item = tuple[int, int, int, int]
"""One entry of a round: (N, M, untimed runs, timed runs), run in this order."""


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
    """Entry point of the worker process: ``python -m cnmt.profiling.worker JOB_JSON``, rounds
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
            raise ConfigError("usage: python -m cnmt.profiling.worker JOB_JSON (rounds on stdin)")
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
