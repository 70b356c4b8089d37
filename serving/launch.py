"""Start what a serving config describes: a cloud server, an emulated link, a gateway.

When a config launches both a gateway and a cloud, the cloud runs in its own process (a
separate "machine": its model threads never compete with the gateway's event loop for the
GIL); the link (a proxy, i.e. the network) and the gateway run in this process's event loop,
and the gateway's local translations in its own CPU-throttled worker process. Shutdown
reverses the start order: gateway, link, cloud.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import multiprocessing
import os
import signal
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

from aiohttp import web

from cnmt.config import Config
from cnmt.errors import CnmtError, CnmtRuntimeError, ConfigError
from cnmt.serving.auth import bearer_auth, read_keys
from cnmt.serving.limits import HardenedAppRunner
from cnmt.serving.logs import configure_logging
from cnmt.serving.settings import CloudSettings, GatewaySettings, LinkSettings, split_host_port

log = logging.getLogger("cnmt.serving.launch")

Say = Callable[[str], None]
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


def url(host: str, port: int, scheme: str = "http") -> str:
    return f"{scheme}://[{host}]:{port}" if ":" in host else f"{scheme}://{host}:{port}"


def prepare_model(model: str) -> None:
    """Export a built-in model into the cache if it is not there yet. The exporters (and torch)
    are imported only then: a gateway whose cache is filled never loads them."""
    from cnmt.runtime.models import unexported_builtin

    if unexported_builtin(model) is not None:
        from cnmt.exporters.builtins import ensure_exported

        ensure_exported(model)


def load_translators(model: str, providers: tuple[str, ...], threads: int, count: int) -> list[Any]:
    from cnmt.runtime import load_translator

    return [
        load_translator(model, providers=list(providers), threads=threads) for _ in range(count)
    ]


# --- the cloud, in its own process -----------------------------------------------------------


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
    our aiohttp server, or a Ray Serve cloud's driver (``engine: ray``)."""

    def __init__(self, settings: CloudSettings) -> None:
        self.settings = settings
        self._process: Any = None
        self.port: int | None = None

    async def start(self, timeout_s: float = 600.0) -> int:
        context = multiprocessing.get_context("spawn")
        parent_end, child_end = context.Pipe(duplex=False)
        ray = self.settings.engine == "ray"
        self._process = context.Process(
            target=_ray_cloud_process_main if ray else _cloud_process_main,
            args=(self.settings, child_end),
            name="cnmt-cloud",
            daemon=True,
        )
        self._process.start()
        child_end.close()
        loop = asyncio.get_running_loop()
        message = await loop.run_in_executor(None, _receive, parent_end, self._process, timeout_s)
        parent_end.close()
        kind, value = message
        if kind != "ready":
            await self.stop()
            raise CnmtRuntimeError(str(value))
        self.port = int(value)
        reap_on_exit(self._process, self._exited)
        return self.port

    def _exited(self, process: Any) -> None:
        log.error(
            "the cloud process (pid %s) exited with status %s; the gateway translates locally "
            "until a cloud answers again (restart `cnmt launch`, or start a cloud on %s)",
            process.pid,
            process.exitcode,
            self.port,
        )

    async def stop(self, timeout_s: float | None = None) -> None:
        # A Ray cloud shuts down Serve and its local Ray instance: allow more time.
        if timeout_s is None:
            timeout_s = 60.0 if self.settings.engine == "ray" else 10.0
        process, self._process = self._process, None
        if process is None:
            return
        stop_reaping(process)
        if process.is_alive():
            process.terminate()  # SIGTERM: the child shuts its server down cleanly
        await asyncio.get_running_loop().run_in_executor(None, process.join, timeout_s)
        if process.is_alive():
            log.warning("cloud process did not stop within %.0f s; killing it", timeout_s)
            process.kill()
            await asyncio.get_running_loop().run_in_executor(None, process.join, 5.0)


def reap_on_exit(process: Any, on_exit: Callable[[Any], None]) -> None:
    """Reap ``process`` (a started multiprocessing.Process) as soon as it exits, then call
    ``on_exit(process)``: a child that dies while this process goes on serving must not stay a
    zombie until it exits. Watches the process's sentinel in the running event loop."""
    loop = asyncio.get_running_loop()

    def exited() -> None:
        loop.remove_reader(process.sentinel)
        # The sentinel is ready once the child's end closed, i.e. it is exiting: a blocking
        # waitpid returns at once (bounded all the same). Then no zombie, and exitcode is known.
        process.join(1.0)
        on_exit(process)

    loop.add_reader(process.sentinel, exited)


def stop_reaping(process: Any) -> None:
    """Undo :func:`reap_on_exit` (before stopping ``process`` on purpose)."""
    try:
        asyncio.get_running_loop().remove_reader(process.sentinel)
    except (ValueError, OSError):
        pass  # already closed


def describe_cloud(settings: CloudSettings) -> str:
    """What ``cnmt launch`` prints about a cloud it started."""
    ray = settings.ray
    if settings.engine != "ray" or ray is None:
        return f"model {settings.model}, {settings.workers} worker(s), {settings.threads} thread(s)"
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


def _receive(conn: Connection, process: Any, timeout_s: float) -> tuple[str, Any]:
    """The cloud process's first message: ("ready", port) or ("error", why)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if conn.poll(0.2):
            try:
                return conn.recv()
            except EOFError:
                break  # it closed its end: it is exiting
        elif not process.is_alive():
            break
    else:
        return ("error", f"cloud: not ready after {timeout_s:.0f} s")
    process.join(5.0)
    return (
        "error",
        f"cloud: the cloud process exited with status {process.exitcode} before it was ready",
    )


# --- the gateway ---------------------------------------------------------------------------


def load_profile(path: str, key: str, model: str) -> Any:
    from cnmt.profiling.profiles import load

    try:
        return load(os.path.normpath(path))
    except ConfigError as exc:
        raise ConfigError(
            f"{key}: {exc}. The gateway's device policy needs the measured latency of its model "
            f"on the edge and on the cloud: measure both with `cnmt profile --model {model} "
            "--device DEVICE --out FILE` (see `cnmt profile devices`; `scripts/measure-profiles` "
            "does all built-in models) and point gateway.edge_profile / gateway.cloud_profile "
            "at the files"
        ) from None


def scheduler_specs(config: Config) -> Any:
    """The gateway's scheduler components as selected (a section left out takes the default a
    replay takes too): a :class:`cnmt.schedulers.core.DecisionSpecs`; ConfigError for a
    missing length estimator or one that only an offline replay can run."""
    from cnmt.registry import get_components
    from cnmt.schedulers.core import DecisionSpecs

    specs = DecisionSpecs.select(config.get, source=config.source)
    for key, spec in specs.items():
        if spec is None:
            raise ConfigError(f"{config.source}: a gateway needs a `{key}` section")
        if getattr(get_components().get(spec.kind, spec.name).cls, "needs_truth", False):
            raise ConfigError(
                f"{config.source}: {key}: {spec.name!r} needs each request's ground truth, "
                "which only an offline replay has; a live gateway cannot use it (choose e.g. "
                "`linear` / `cnmt`)"
            )
    return specs


def create_schedulers(
    config: Config, edge_prior: Any = None, cloud_prior: Any = None, settings: Any = None
) -> Any:
    """A live gateway's decision core from its config: length estimator, device policy, and
    the edge's and the cloud's latency models (priors: the profiles' fits; without them the
    unit model, to check that a config's components can be created) with the cloud's RTT and
    wait estimators."""
    from cnmt.schedulers.base import LatencyModel
    from cnmt.schedulers.core import DecisionCore, TargetSetup

    unit = LatencyModel(1.0, 1.0, 1.0)
    workers = settings.cloud_workers if settings is not None else 1
    bandwidth = settings.bandwidth_bps if settings is not None else 100e6
    components = scheduler_specs(config).create(
        TargetSetup("edge", edge_prior or unit),
        [TargetSetup("cloud", cloud_prior or unit, workers, bandwidth)],
    )
    # A policy that draws gets a generator of its own (seeded by the OS: a live gateway is not
    # replayed); the others none.
    rng = None
    if components.policy.uses_rng:
        import numpy as np

        rng = np.random.default_rng()
    return DecisionCore(components, rng=rng)


def build_gateway(
    config: Config, settings: GatewaySettings, cloud_url: str | None, say: Say
) -> Any:
    """A Gateway wired from a config (not started): profiles, schedulers and the learnt state
    first, so a bad one fails before any model is loaded."""
    from cnmt.schedulers.base import Device
    from cnmt.serving.cloud_client import CloudClient
    from cnmt.serving.edge import EdgeWorker, QuotaSpec
    from cnmt.serving.gateway import Gateway
    from cnmt.serving.learned_state import learning_parts, lock, restore

    specs = scheduler_specs(config)  # a bad one fails before anything is read
    models = settings.models
    edge_profile = load_profile(settings.edge_profile, "gateway.edge_profile", models["edge"])
    cloud_profile = load_profile(settings.cloud_profile, "gateway.cloud_profile", models["cloud"])
    for profile, target in ((edge_profile, "edge"), (cloud_profile, "cloud")):
        if profile.model != models[target]:
            log.warning(
                "gateway.%s_profile was measured for model %r, the %s runs %r: its decisions "
                "use another model's latencies",
                target,
                profile.model,
                target,
                models[target],
            )
    core = create_schedulers(
        config, edge_profile.fit.latency_model, cloud_profile.fit.latency_model, settings
    )
    state_parts = learning_parts(
        settings.model,
        edge_profile.device.name,
        cloud_profile.device.name,
        edge_latency=core.latency["edge"],
        cloud_latency=core.latency["cloud"],
        length_estimator=core.length,
    )
    restored: list[str] = []
    state_lock = None
    if settings.state_file is not None and state_parts:
        state_lock = lock(settings.state_file)  # one gateway per state file
        restored = restore(settings.state_file, state_parts)
    device = edge_profile.device
    if device.threads != settings.threads:
        log.warning(
            "gateway.threads is %d but the edge profile was measured with %d threads",
            settings.threads,
            device.threads,
        )
    quota = None
    if device.cpu_quota is not None:
        quota = QuotaSpec(device.cpu_quota, device.cpu_period_us, source=settings.edge_profile)
    prepare_model(settings.model)
    tokenizer = load_translators(settings.model, settings.providers, settings.threads, 1)[0]
    from cnmt.runtime import load_translator

    factory = functools.partial(
        load_translator,
        settings.model,
        providers=list(settings.providers),
        threads=settings.threads,
    )
    edge = EdgeWorker(factory, quota, allow_unthrottled=settings.allow_unthrottled)
    cloud = CloudClient.for_gateway(cloud_url, settings, tokenizer) if cloud_url else None
    learning = [part.key for part in state_parts]
    say(
        f"gateway: model {settings.model}, edge {edge_profile.label}"
        + (f" (CPU quota {device.cpu_quota:g} core)" if quota else " (unthrottled)")
        + f"; cloud {cloud_profile.label}; policy {specs.device_policy.name}, length "
        f"{specs.length_estimator.name}, RTT {specs.rtt_estimator.name}, latency "
        f"edge {specs.edge_latency.name} / cloud {specs.cloud_latency.name}"
        + (f"; learning {', '.join(learning)}" if learning else "")
        + (f" (restored from {settings.state_file}: {', '.join(restored)})" if restored else "")
    )
    return Gateway(
        tokenizer=tokenizer,
        edge=edge,
        cloud=cloud,
        core=core,
        settings=settings,
        state_parts=state_parts,
        state_lock=state_lock,
        devices={Device.EDGE: edge_profile.device.name, Device.CLOUD: cloud_profile.device.name},
    )


def build_timeline(settings: LinkSettings) -> Any:
    """The link's RTT over time (its trace is read now, so a bad file fails early)."""
    try:
        return settings.timeline(settings.loss_timeout_s)
    except ConfigError as exc:
        raise ConfigError(f"link.trace: {exc}") from None


def build_link(settings: LinkSettings, upstream: tuple[str, int], timeline: Any) -> Any:
    from cnmt.serving.proxy import DelayProxy

    bandwidth = settings.bandwidth_mbps
    return DelayProxy(
        upstream,
        timeline,
        host=settings.host,
        port=settings.port,
        bandwidth_bps=None if bandwidth is None else bandwidth * 1e6,
    )


# --- the whole system ------------------------------------------------------------------------


@dataclass(frozen=True)
class Endpoints:
    """Base URLs of what was launched (None for what the config does not launch)."""

    gateway: str | None = None
    cloud: str | None = None
    link: str | None = None


class System:
    """Everything one config launches. ``cloud_in_process`` runs the cloud in this event loop
    instead of a child process (used when the config launches only a cloud)."""

    def __init__(
        self,
        config: Config,
        *,
        gateway_port: int | None = None,
        cloud_port: int | None = None,
        link_port: int | None = None,
        say: Say = print,
    ) -> None:
        self.config = config
        self.say = say
        self.gateway_settings: GatewaySettings | None = config.get("gateway")
        self.cloud_settings: CloudSettings | None = config.get("cloud")
        self.link_settings: LinkSettings | None = config.get("link")
        if not (self.gateway_settings or self.cloud_settings or self.link_settings):
            raise ConfigError(
                f"{config.source}: nothing to launch; a serving config needs a `gateway`, `cloud` "
                "or `link` section (see `cnmt config show serving/default`)"
            )
        for port, attr in (
            (gateway_port, "gateway_settings"),
            (cloud_port, "cloud_settings"),
            (link_port, "link_settings"),
        ):
            current = getattr(self, attr)
            if port is not None and current is not None:
                setattr(self, attr, dataclasses.replace(current, port=port))
        self._check_wiring()
        self._cloud_process: CloudProcess | None = None
        self._cloud_runner: web.AppRunner | None = None
        self._link: Any = None
        self._gateway_runner: web.AppRunner | None = None
        self.gateway: Any = None
        self.endpoints = Endpoints()

    def _check_wiring(self) -> None:
        where = self.config.source
        if self.link_settings and self.link_settings.upstream is None and not self.cloud_settings:
            raise ConfigError(
                f"{where}: link.upstream: not set and the config launches no cloud; set it to the "
                "cloud's host:port"
            )
        gateway = self.gateway_settings
        if (
            gateway
            and gateway.cloud_url is None
            and not (self.link_settings or self.cloud_settings)
        ):
            raise ConfigError(
                f"{where}: gateway.cloud_url: not set and the config launches no link or cloud; "
                "set it to the cloud's (or the link's) URL, e.g. http://10.0.0.2:8081"
            )
        cloud = self.cloud_settings
        if gateway and cloud and gateway.models["cloud"] != cloud.model:
            # The gateway predicts the cloud's times from the cloud model's profile.
            raise ConfigError(
                f"{where}: the cloud runs {cloud.model!r} but the gateway expects "
                f"{gateway.models['cloud']!r} there (gateway.cloud_model, default gateway.model); "
                f"set gateway.cloud_model: {cloud.model} and a cloud_profile of that model"
            )

    async def start(self) -> Endpoints:
        """Start everything; on failure, stop what was started and re-raise."""
        try:
            await self._start()
        except BaseException:
            await self.stop()
            raise
        return self.endpoints

    async def _start(self) -> None:
        loop = asyncio.get_running_loop()
        gateway_cfg, cloud_cfg, link_cfg = (
            self.gateway_settings,
            self.cloud_settings,
            self.link_settings,
        )
        if cloud_cfg is not None and cloud_cfg.engine == "ray":
            check_ray_installed()
        timeline = await loop.run_in_executor(None, build_timeline, link_cfg) if link_cfg else None
        if gateway_cfg is not None:
            # Profiles and schedulers are checked before anything slow (build_gateway exports a
            # built-in model only after them), and the gateway's model is in the cache before
            # the cloud process opens the same cache.
            self.gateway = await loop.run_in_executor(
                None, build_gateway, self.config, gateway_cfg, None, self.say
            )
            # The edge worker next: a quota that cannot be applied fails before the cloud starts.
            await self.gateway.edge.start()
        if cloud_cfg is not None and (gateway_cfg is None or cloud_cfg.model != gateway_cfg.model):
            await loop.run_in_executor(None, prepare_model, cloud_cfg.model)
        cloud_url = link_url = None
        cloud_address: tuple[str, int] | None = None
        if cloud_cfg is not None:
            if gateway_cfg is not None or link_cfg is not None or cloud_cfg.engine == "ray":
                self._cloud_process = CloudProcess(cloud_cfg)
                port = await self._cloud_process.start()
            else:
                from cnmt.serving.cloud import CloudServer

                translators = await loop.run_in_executor(
                    None,
                    load_translators,
                    cloud_cfg.model,
                    cloud_cfg.providers,
                    cloud_cfg.threads,
                    cloud_cfg.workers,
                )
                server = CloudServer(translators, cloud_cfg)
                self._cloud_runner, port = await serve_app(
                    server.app(),
                    cloud_cfg.host,
                    cloud_cfg.port,
                    cloud_cfg.reuse_port,
                    server.ssl_context(),
                )
            cloud_address = (cloud_cfg.host, port)
            cloud_url = url(cloud_cfg.host, port, cloud_cfg.scheme)
            self.say(f"cloud:   {cloud_url}  ({describe_cloud(cloud_cfg)})")
        if link_cfg is not None:
            upstream = (
                split_host_port(link_cfg.upstream, "link.upstream")
                if link_cfg.upstream
                else cloud_address
            )
            assert upstream is not None
            self._link = build_link(link_cfg, upstream, timeline)
            await self._link.start()
            # The link forwards bytes: TLS between the gateway and the cloud passes through it.
            scheme = cloud_cfg.scheme if cloud_cfg is not None else "http"
            link_url = url(link_cfg.host, self._link.port, scheme)
            bandwidth = f", {link_cfg.bandwidth_mbps:g} Mbit/s" if link_cfg.bandwidth_mbps else ""
            self.say(
                f"link:    {link_url} -> {upstream[0]}:{upstream[1]}  "
                f"({link_cfg.describe()}{bandwidth})"
            )
        gateway_url = None
        if gateway_cfg is not None:
            from cnmt.serving.cloud_client import CloudClient

            target = gateway_cfg.cloud_url or link_url or cloud_url
            assert target is not None
            self.gateway.attach_cloud(
                CloudClient.for_gateway(target, gateway_cfg, self.gateway.tokenizer)
            )
            app = self.gateway.app()
            keys = read_keys(
                gateway_cfg.api_keys_file, gateway_cfg.api_keys_env, "gateway.api_keys"
            )
            if keys:
                app.middlewares.append(bearer_auth(keys, "the gateway"))
            self._gateway_runner, port = await serve_app(app, gateway_cfg.host, gateway_cfg.port)
            gateway_url = url(gateway_cfg.host, port)
            edge = self.gateway.edge
            mode = "throttled" if edge.throttled else "unthrottled"
            self.say(
                f"gateway: {gateway_url}  (cloud at {target}; local worker pid {edge.pid}, {mode})"
            )
        self.endpoints = Endpoints(gateway=gateway_url, cloud=cloud_url, link=link_url)

    async def stop(self) -> None:
        if self._gateway_runner is not None:
            await self._gateway_runner.cleanup()
            self._gateway_runner = None
        elif self.gateway is not None:
            await self.gateway.close()
        self.gateway = None
        if self._link is not None:
            await self._link.close()
            self._link = None
        if self._cloud_runner is not None:
            await self._cloud_runner.cleanup()
            self._cloud_runner = None
        if self._cloud_process is not None:
            await self._cloud_process.stop()
            self._cloud_process = None


async def run_until_signal(system: System, say: Say = print) -> None:
    """Start ``system``, serve until SIGINT or SIGTERM, then shut it down cleanly."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    received: list[str] = []

    def on_signal(sig: signal.Signals) -> None:
        received.append(sig.name)
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal, sig)
    try:
        await system.start()
        if not stop.is_set():
            say("ready; stop with Ctrl-C or SIGTERM")
            await stop.wait()
        say(f"{received[0] if received else 'stop'} received; shutting down")
    finally:
        await system.stop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
    say("stopped")
