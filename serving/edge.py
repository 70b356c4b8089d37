"""The gateway's local translator: one worker process, optionally under a CPU quota.

The edge device is emulated by running its translations in a separate process placed in a
cgroup with the CPU quota of the edge device profile (see :mod:`cnmt.profiling.cpu_quota`), so a
live gateway faces the same edge/cloud contrast that the profile measured. The gateway's own
event loop stays in the unthrottled parent process: only the model runs slowly.

The worker is a spawned process (no fork of a process that runs an event loop and threads)
connected by a pipe. Its translator is built in the worker by a picklable factory, e.g.
``functools.partial(load_translator, "cn2en", threads=1)``. The gateway's event loop watches
the pipe directly (``add_reader``), so a local translation costs one pipe write and one read
on top of the model's own time, with no thread hand-offs. Texts are sent one at a time (the
device translates one at a time anyway), so a write never waits on a full pipe. If the worker
dies, the next translation starts a new one and retries once.

A worker that cannot load its model when restarted (the model cache corrupted under a running
gateway, a disk gone) is the edge's fault, not the text's: the translation fails with
:class:`EdgeFailure` (the gateway sends it to the cloud), :attr:`EdgeWorker.up` turns false
(the gateway's ``/ready`` says so), the failure is logged at ERROR and counted
(:attr:`EdgeWorker.load_failures`), and the next restart waits an exponentially growing
backoff (``restart_backoff_s`` doubling up to ``max_restart_backoff_s``), during which local
translations fail at once instead of spawning a process per request. The first success
resets it.

The worker knows its own load: each translation is queued with the gateway's predicted
execution time, and :meth:`EdgeWorker.backlog_s` sums what is left of them (the running one's
prediction minus the time it has run, never below zero, plus every queued one's): the edge
backlog a load-aware policy adds to a new local request's own time.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import pickle
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from cnmt import processes
from cnmt.errors import CnmtError, CnmtRuntimeError
from cnmt.runtime.base import Translation, Translator
from cnmt.schedulers.edge_backlog import EdgeBacklog
from cnmt.serving.logs import configure_logging

log = logging.getLogger("cnmt.serving.edge")

TranslatorFactory = Callable[[], Translator]


@dataclass(frozen=True)
class QuotaSpec:
    """A CPU quota for the worker: ``fraction`` of one core in windows of ``period_us``."""

    fraction: float
    period_us: int = 10_000
    source: str = ""  # where the quota came from, for messages (e.g. the profile path)


class EdgeFailure(CnmtRuntimeError):
    """The local worker could not translate (it died, twice, or could not start)."""


class _WorkerDied(Exception):
    pass


# --- in the worker process -------------------------------------------------------------------


def _portable(exc: BaseException) -> BaseException:
    """``exc`` if it survives pickling, else a CnmtRuntimeError carrying its description."""
    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:
        return CnmtRuntimeError(f"{type(exc).__name__}: {exc}")


def _worker_main(factory: TranslatorFactory, procs_file: str | None, conn: Any) -> None:
    """Build the translator at full speed, then join the cgroup (writing the pid to
    cgroup.procs moves every thread of the process) and translate what arrives."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the gateway decides when the worker stops
    # The model logs what it drops of a client's text: control characters escaped.
    configure_logging("edge: %(levelname)s %(name)s: %(message)s")
    try:
        translator = factory()
        if procs_file is not None:
            try:
                with open(procs_file, "w") as f:
                    f.write(str(os.getpid()))
            except OSError as exc:
                raise CnmtRuntimeError(
                    f"edge worker cannot join cgroup {procs_file}: {exc}"
                ) from None
    except BaseException as exc:
        conn.send(("error", _portable(exc)))
        return
    conn.send(("ready", os.getpid()))
    while True:
        try:
            text = conn.recv()
        except (EOFError, OSError):
            return
        if text is None:
            return
        try:
            conn.send(("ok", translator.translate(text)))
        except Exception as exc:
            conn.send(("error", _portable(exc)))


# --- in the gateway --------------------------------------------------------------------------


class EdgeWorker:
    """Runs local translations in one worker process, optionally under a CPU quota.

    ``quota=None`` runs unthrottled. When the quota cannot be applied (no writable cgroup),
    :meth:`start` fails with the reason, unless ``allow_unthrottled`` is true: then it warns and
    runs unthrottled. Translations queue here and run one at a time, as on a single device.
    """

    def __init__(
        self,
        factory: TranslatorFactory,
        quota: QuotaSpec | None = None,
        allow_unthrottled: bool = False,
        start_timeout_s: float = 600.0,
        timer: Callable[[], float] = time.perf_counter,
        restart_backoff_s: float = 1.0,
        max_restart_backoff_s: float = 60.0,
    ) -> None:
        self.factory = factory
        self.restart_backoff_s = restart_backoff_s
        self.max_restart_backoff_s = max_restart_backoff_s
        self.load_failures = 0  # restarts whose worker could not load its model
        self.down_reason: str | None = None  # why the last restart failed, until one succeeds
        self._backoff_s = 0.0
        self._next_restart_at = 0.0
        self.quota_spec = quota
        self.allow_unthrottled = allow_unthrottled
        self.start_timeout_s = start_timeout_s
        self.timer = timer
        self.throttled = False
        self.pid: int | None = None
        self.restarts = 0
        self._quota: Any = None  # cnmt.profiling.cpu_quota.CpuQuota once created
        self._process: Any = None
        self._conn: Any = None
        # (text, its future, its job in the backlog)
        self._queue: collections.deque[tuple[str, asyncio.Future[Translation], int]] = (
            collections.deque()
        )
        self._current: asyncio.Future[Translation] | None = None
        self._current_job: int | None = None
        # The predicted work queued here; a gateway shares its decision core's (use_backlog).
        self.backlog = EdgeBacklog()
        self._restart_lock: asyncio.Lock | None = None
        self._generation = 0
        self._closing = False

    @property
    def started(self) -> bool:
        return self._conn is not None

    @property
    def up(self) -> bool:
        """False from a restart that could not load the model until one that could."""
        return self.down_reason is None

    @property
    def queued(self) -> int:
        """Translations waiting or running in the worker."""
        return len(self._queue) + (self._current is not None)

    def backlog_s(self) -> float:
        """The predicted time until the worker is free: what is left of the running
        translation's prediction plus the predictions of the queued ones (seconds)."""
        return self.backlog.at(self.timer())

    def use_backlog(self, backlog: EdgeBacklog, clock: Callable[[], float]) -> None:
        """Account the queued work in ``backlog`` (a decision core's), timed by ``clock``
        (the core's time), before any translation is queued."""
        if self.queued:
            raise RuntimeError("use_backlog() must come before the first translation")
        self.backlog, self.timer = backlog, clock

    # --- start and stop ---

    def _create_quota(self) -> None:
        spec = self.quota_spec
        if spec is None:
            return
        from cnmt.profiling.cpu_quota import CgroupUnavailable, CpuQuota

        try:
            self._quota = CpuQuota(spec.fraction, spec.period_us).create()
        except CgroupUnavailable as exc:
            source = f" (from {spec.source})" if spec.source else ""
            if not self.allow_unthrottled:
                raise CnmtRuntimeError(
                    f"cannot emulate the edge device: its CPU quota of {spec.fraction:g} core"
                    f"{source} needs a writable cgroup: {exc}. To run the gateway's local "
                    "translations unthrottled instead (faster than the edge profile predicts), "
                    "set `gateway.allow_unthrottled: true`"
                ) from None
            log.warning(
                "edge CPU quota %g%s not applied, running unthrottled: %s",
                spec.fraction,
                source,
                exc,
            )
            return
        self.throttled = True

    async def start(self) -> None:
        """Create the cgroup (if a quota is set), start the worker and load its model."""
        self._restart_lock = asyncio.Lock()
        self._create_quota()
        try:
            await self._spawn()
        except BaseException:
            self._remove_quota()
            raise

    async def _spawn(self) -> None:
        procs_file = str(self._quota.procs_file) if self._quota is not None else None
        # The worker's end is closed here: once it dies, reading ours gives EOF.
        process, parent = processes.spawn(
            _worker_main, (self.factory, procs_file), name="cnmt-edge", duplex=True
        )
        loop = asyncio.get_running_loop()
        try:
            kind, value = await loop.run_in_executor(
                None, processes.first_message, parent, process, self.start_timeout_s, "edge worker"
            )
        except BaseException:
            _stop_process(process, parent)
            raise
        if kind != "ready":
            _stop_process(process, parent)
            if isinstance(value, CnmtError):
                raise value
            raise EdgeFailure(f"the edge worker could not load its model: {value}")
        self._process, self._conn, self.pid = process, parent, int(value)
        self._generation += 1
        loop.add_reader(parent.fileno(), self._on_readable, parent)

    async def close(self) -> None:
        """Stop the worker (pending translations fail) and remove the cgroup."""
        self._closing = True
        process, conn = self._process, self._conn
        self._detach(_WorkerDied("the gateway is shutting down"))
        self._process = None
        if process is not None:
            if conn is not None:
                try:
                    conn.send(None)
                except OSError:
                    pass
            await asyncio.get_running_loop().run_in_executor(None, _stop_process, process, conn)
        self._remove_quota()

    def _remove_quota(self) -> None:
        if self._quota is not None:
            try:
                self._quota.remove()
            except CnmtError as exc:
                log.warning("could not remove the edge cgroup: %s", exc)
            self._quota = None

    def _detach(self, reason: Exception) -> None:
        """Forget the current worker; fail every translation given to it or queued for it."""
        if self._conn is not None:
            try:
                asyncio.get_running_loop().remove_reader(self._conn.fileno())
            except (OSError, ValueError):
                pass
        self._conn = None
        waiting = [self._current] if self._current is not None else []
        waiting += [future for _, future, _ in self._queue]
        self._current, self._current_job = None, None  # their callers finish their jobs
        self._queue.clear()
        for future in waiting:
            if not future.done():
                future.set_exception(reason)

    # --- translating ---

    async def translate(self, text: str, predicted_s: float = 0.0) -> Translation:
        """Translate in the worker. A model error (CnmtError) propagates; a dead worker is
        restarted and the translation retried once, then EdgeFailure. ``predicted_s`` is the
        translation's predicted execution time, counted in :meth:`backlog_s` until it ends."""
        for attempt in (1, 2):
            if self._closing:
                raise EdgeFailure("the gateway is shutting down")
            if self._conn is None:
                await self._restart(self._generation)
            generation = self._generation
            future: asyncio.Future[Translation] = asyncio.get_running_loop().create_future()
            job = self.backlog.add(max(0.0, predicted_s))
            self._queue.append((text, future, job))
            self._dispatch()
            try:
                return await future
            except _WorkerDied as exc:
                if attempt == 2 or self._closing:
                    raise EdgeFailure(
                        f"the edge worker died twice while translating: {exc}"
                    ) from None
                log.warning("edge worker died (%s); restarting it", exc)
                await self._restart(generation)
            finally:
                self.backlog.finish(job)  # done, failed or retried as a new job
        raise AssertionError("unreachable")

    def _dispatch(self) -> None:
        if self._current is not None or not self._queue or self._conn is None:
            return
        item = self._queue.popleft()
        text, future, job = item
        try:
            self._conn.send(text)
        except OSError as exc:
            self._queue.appendleft(item)
            self._detach(_WorkerDied(f"cannot write to the worker: {exc}"))
            return
        self._current, self._current_job = future, job
        self.backlog.start(job, self.timer())

    def _on_readable(self, conn: Any) -> None:
        try:
            kind, value = conn.recv()
        except (EOFError, OSError):
            code = self._process.exitcode if self._process is not None else None
            self._detach(_WorkerDied(f"the worker process exited (status {code})"))
            return
        future, self._current = self._current, None
        if self._current_job is not None:
            self.backlog.finish(self._current_job)  # free now, before its caller resumes
            self._current_job = None
        if future is not None and not future.done():
            if kind == "ok":
                future.set_result(value)
            else:
                future.set_exception(value)
        self._dispatch()

    async def _restart(self, generation: int) -> None:
        assert self._restart_lock is not None, "EdgeWorker.start() was not called"
        async with self._restart_lock:
            if generation != self._generation and self._conn is not None:
                return  # another request already restarted it
            wait_s = self._next_restart_at - self.timer()
            if self.down_reason is not None and wait_s > 0:
                raise EdgeFailure(
                    f"the edge worker is down ({self.down_reason}); next restart in {wait_s:.1f} s"
                )
            old, self._process = self._process, None
            if old is not None:
                self._detach(_WorkerDied("restarting"))
                await asyncio.get_running_loop().run_in_executor(None, _stop_process, old, None)
            self.restarts += 1
            try:
                await self._spawn()
            except (CnmtError, OSError) as exc:
                self._restart_failed(exc)
                raise EdgeFailure(
                    f"the edge worker could not be restarted: {self.down_reason}"
                ) from None
            if self.down_reason is not None:
                log.warning(
                    "the edge worker is up again after %d failed restarts", self.load_failures
                )
            self.down_reason, self._backoff_s = None, 0.0

    def _restart_failed(self, exc: BaseException) -> None:
        self.load_failures += 1
        self._backoff_s = min(
            self.max_restart_backoff_s, self._backoff_s * 2 or self.restart_backoff_s
        )
        self._next_restart_at = self.timer() + self._backoff_s
        reason = str(exc)
        self.down_reason = reason if len(reason) <= 300 else f"{reason[:297]}..."
        log.error(
            "the edge worker could not load its model after a restart: %s; local translations "
            "go to the cloud, next restart in %g s",
            self.down_reason,
            self._backoff_s,
        )


def _stop_process(process: Any, conn: Any, timeout_s: float = 5.0) -> None:
    """Stop a worker that was asked to exit (``None`` sent): ``timeout_s`` for it to do so,
    then SIGTERM, then SIGKILL."""
    processes.stop(process, timeout_s, wait_first_s=timeout_s)
    if conn is not None:
        conn.close()


class EdgeWorkerMetrics(Collector):
    """The worker's restarts, failed restarts and whether it is up, read when scraped."""

    def __init__(self, edge: EdgeWorker) -> None:
        self.edge = edge

    def collect(self) -> Any:
        yield CounterMetricFamily(
            "cnmt_gateway_edge_restarts",
            "Times the local translation worker died and was started again.",
            value=self.edge.restarts,
        )
        yield CounterMetricFamily(
            "cnmt_gateway_edge_load_failures",
            "Restarts of the local worker that could not load its model (an edge fault: its "
            "requests go to the cloud while it is down).",
            value=self.edge.load_failures,
        )
        yield GaugeMetricFamily(
            "cnmt_gateway_edge_up",
            "1 while the local worker can translate, 0 while its model fails to load.",
            value=1.0 if self.edge.up else 0.0,
        )
