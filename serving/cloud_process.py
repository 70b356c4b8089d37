"""The cloud server of `cnmt launch` in its own process: one per cloud a config launches.

A separate "machine": its model threads never compete with the gateway's event loop for the
GIL. The child loads its models, starts the server and says ``("ready", port)`` (or
``("error", why)``) through a pipe; it stops on SIGTERM, and by itself once the launching
process is gone. Starting, the handshake, stopping and reaping are :mod:`cnmt.processes`'.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import ssl
from multiprocessing.connection import Connection
from typing import Any

from aiohttp import web

from cnmt import processes
from cnmt.errors import CnmtError, CnmtRuntimeError
from cnmt.serving.limits import HardenedAppRunner
from cnmt.serving.logs import configure_logging
from cnmt.serving.settings import CloudSettings

log = logging.getLogger("cnmt.serving.launch")

SHUTDOWN_GRACE_S = 10.0


async def serve_app(
    app: web.Application,
    host: str,
    port: int,
    reuse_port: bool = False,
    ssl_context: ssl.SSLContext | None = None,
) -> tuple[web.AppRunner, int]:
    """Run ``app`` on ``host:port`` (0 = a free port); returns the runner and the bound port.
    The app's startup hooks run here, so their errors surface here."""
    # Requests in flight at shutdown get SHUTDOWN_GRACE_S to finish before they are cut.
    # Slow clients are bounded and the HTTP parser's errors are JSON: cnmt.serving.limits.
    runner = HardenedAppRunner(
        app, access_log=None, handle_signals=False, shutdown_timeout=SHUTDOWN_GRACE_S
    )
    await runner.setup()
    try:
        site = web.TCPSite(
            runner, host, port, reuse_port=reuse_port or None, ssl_context=ssl_context
        )
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        raise CnmtRuntimeError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    except BaseException:
        await runner.cleanup()
        raise
    bound = runner.addresses[0][1]
    return runner, int(bound)


def load_translators(model: str, providers: tuple[str, ...], threads: int, count: int) -> list[Any]:
    from cnmt.runtime import load_translator

    return [
        load_translator(model, providers=list(providers), threads=threads) for _ in range(count)
    ]


def _cloud_process_main(settings: CloudSettings, conn: Connection) -> None:
    configure_logging("cloud: %(levelname)s %(name)s: %(message)s")
    try:
        translators = load_translators(
            settings.model, settings.providers, settings.threads, settings.workers
        )
    except CnmtError as exc:
        conn.send(("error", f"cloud: {exc}"))
        return
    except Exception as exc:  # a broken model file: report it rather than die silently
        conn.send(("error", f"cloud: cannot load {settings.model!r}: {type(exc).__name__}: {exc}"))
        return
    asyncio.run(_cloud_process_serve(translators, settings, conn))


async def _cloud_process_serve(
    translators: list[Any], settings: CloudSettings, conn: Connection
) -> None:
    from cnmt.serving.cloud import CloudServer

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        server = CloudServer(translators, settings)
        runner, port = await serve_app(
            server.app(),
            settings.host,
            settings.port,
            settings.reuse_port,
            server.ssl_context(),
        )
    except CnmtError as exc:
        conn.send(("error", f"cloud: {exc}"))
        return
    conn.send(("ready", port))
    watcher = loop.create_task(_stop_when_orphaned(stop))
    await stop.wait()
    watcher.cancel()
    await runner.cleanup()


async def _stop_when_orphaned(stop: asyncio.Event, every_s: float = 1.0) -> None:
    """Set ``stop`` once the launching process is gone (killed without a chance to stop us):
    a cloud server nobody can shut down must not outlive it."""
    parent = os.getppid()
    while os.getppid() == parent:
        await asyncio.sleep(every_s)
    log.warning("the launching process exited; stopping the cloud server")
    stop.set()


def _ray_cloud_process_main(settings: CloudSettings, conn: Connection) -> None:
    # Imported here, in the child: the launching process (and its gateway) never imports Ray.
    from cnmt.serving.ray_cloud import process_main

    process_main(settings, conn)


def check_ray_installed() -> None:
    import importlib.util

    if importlib.util.find_spec("ray") is None or importlib.util.find_spec("ray.serve") is None:
        raise CnmtRuntimeError(
            "cloud.engine: ray needs Ray Serve, which is not installed: pip install 'cnmt[ray]' "
            "(or set cloud.engine: aiohttp)"
        )


class CloudProcess:
    """The cloud server in a child process (spawned, so it shares no state with this one):
    our aiohttp server, or a Ray Serve cloud's driver (``engine: ray``). ``name`` is the
    cloud's, for the log."""

    def __init__(self, settings: CloudSettings, name: str = "cloud") -> None:
        self.settings = settings
        self.name = name
        self._process: Any = None
        self._quota: Any = None
        self.port: int | None = None

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    async def start(self, timeout_s: float = 600.0) -> int:
        ray = self.settings.engine == "ray"
        self._create_quota()
        self._process, conn = processes.spawn(
            _ray_cloud_process_main if ray else _cloud_process_main,
            (self.settings,),
            name=f"cnmt-{self.name}",
        )
        if self._quota is not None:
            # Every thread it has or starts later (the model's) runs in the cgroup; the first
            # moments of its start-up, before this, run unthrottled: no request runs yet.
            try:
                self._quota.add_pid(self._process.pid)
            except CnmtError:
                conn.close()
                await self.stop()
                raise
        loop = asyncio.get_running_loop()
        try:
            kind, value = await loop.run_in_executor(
                None, processes.first_message, conn, self._process, timeout_s, self.name
            )
        finally:
            conn.close()
        if kind != "ready":
            await self.stop()
            raise CnmtRuntimeError(str(value))
        self.port = int(value)
        processes.reap_on_exit(self._process, self._exited)
        return self.port

    def _create_quota(self) -> None:
        settings = self.settings
        if settings.cpu_quota is None:
            return
        from cnmt.profiling.cpu_quota import CgroupUnavailable, CpuQuota

        try:
            self._quota = CpuQuota(settings.cpu_quota, settings.cpu_period_us).create()
        except CgroupUnavailable as exc:
            raise CnmtRuntimeError(
                f"cannot emulate the {self.name}'s server: its cpu_quota of "
                f"{settings.cpu_quota:g} core needs a writable cgroup: {exc}. Run as root, or "
                "remove cpu_quota (the cloud then runs unthrottled)"
            ) from None

    def _remove_quota(self) -> None:
        quota, self._quota = self._quota, None
        if quota is not None:
            try:
                quota.remove()
            except CnmtError as exc:
                log.warning("could not remove the %s's cgroup: %s", self.name, exc)

    def _exited(self, process: Any) -> None:
        log.error(
            "the %s process (pid %s) exited with status %s; the gateway translates elsewhere "
            "until it answers again (restart `cnmt launch`, or start a cloud on %s)",
            self.name,
            process.pid,
            process.exitcode,
            self.port,
        )

    async def stop(self, timeout_s: float | None = None) -> None:
        # A Ray cloud shuts down Serve and its local Ray instance: allow more time.
        if timeout_s is None:
            timeout_s = 60.0 if self.settings.engine == "ray" else 10.0
        process, self._process = self._process, None
        if process is not None:
            processes.stop_reaping(process)
            if await processes.stop_async(process, timeout_s):
                log.warning(
                    "the %s process did not stop in %.0f s; killed it", self.name, timeout_s
                )
        self._remove_quota()


def describe_cloud(settings: CloudSettings) -> str:
    """What ``cnmt launch`` prints about a cloud it started."""
    ray = settings.ray
    if settings.engine != "ray" or ray is None:
        quota = f", CPU quota {settings.cpu_quota:g} core" if settings.cpu_quota is not None else ""
        return (
            f"model {settings.model}, {settings.workers} worker(s), {settings.threads} "
            f"thread(s){quota}"
        )
    what = f"model {settings.model}, {settings.threads} thread(s)"
    replicas = (
        f"{ray.autoscaling.min_replicas}-{ray.autoscaling.max_replicas} replicas (autoscaled)"
        if ray.autoscaling
        else f"{ray.num_replicas} replica(s)"
    )
    batching = (
        f"batches of up to {ray.max_batch_size} within {ray.batch_wait_timeout_s * 1000:g} ms"
        if ray.max_batch_size > 1
        else "no batching"
    )
    where = "local Ray" if ray.local else f"Ray cluster {ray.address}"
    return f"Ray Serve on {where}: {what} each, {replicas}, {batching}"
