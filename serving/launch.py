"""Start what a serving config describes: its clouds, an emulated link per cloud, a gateway.

When a config launches both a gateway and a cloud, each cloud runs in its own process
(:mod:`cnmt.serving.cloud_process`: a separate "machine", whose model threads never compete
with the gateway's event loop for the GIL); the links (proxies, i.e. the network) and the
gateway run in this process's event loop, and the gateway's local translations in its own
CPU-throttled worker process. ``cloud`` + ``link`` describe one cloud (named ``cloud``);
``clouds`` lists several, each with its own server, link and profile. Shutdown reverses the
start order: gateway, links, clouds.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import os
import signal
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from cnmt.config import Config
from cnmt.errors import ConfigError
from cnmt.processes import reap_on_exit, stop_reaping
from cnmt.serving.auth import bearer_auth, read_keys
from cnmt.serving.cloud_process import (
    SHUTDOWN_GRACE_S,
    CloudProcess,
    check_ray_installed,
    describe_cloud,
    load_translators,
    serve_app,
)
from cnmt.serving.settings import (
    CloudEntry,
    CloudSettings,
    GatewaySettings,
    LinkSettings,
    split_host_port,
)

log = logging.getLogger("cnmt.serving.launch")

Say = Callable[[str], None]
SHORTHAND_CLOUD = "cloud"  # the name of the one cloud of `cloud:` + `link:`

# Imported from here by tests and benchmarks.
__all__ = [
    "SHUTDOWN_GRACE_S",
    "CloudProcess",
    "Endpoints",
    "System",
    "build_gateway",
    "create_schedulers",
    "load_translators",
    "reap_on_exit",
    "run_until_signal",
    "serve_app",
    "stop_reaping",
    "url",
]


def url(host: str, port: int, scheme: str = "http") -> str:
    return f"{scheme}://[{host}]:{port}" if ":" in host else f"{scheme}://{host}:{port}"


def prepare_model(model: str) -> None:
    """Export a built-in model into the cache if it is not there yet. The exporters (and torch)
    are imported only then: a gateway whose cache is filled never loads them."""
    from cnmt.runtime.models import unexported_builtin

    if unexported_builtin(model) is not None:
        from cnmt.exporters.builtins import ensure_exported

        ensure_exported(model)


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
    config: Config,
    edge_prior: Any = None,
    cloud_prior: Any = None,
    settings: Any = None,
    clouds: Sequence[Any] | None = None,
) -> Any:
    """A live gateway's decision core from its config: length estimator, device policy, and
    the edge's and each cloud's latency models (priors: the profiles' fits; without them the
    unit model, to check that a config's components can be created) with each cloud's RTT and
    wait estimators. ``clouds`` are the clouds' :class:`~cnmt.schedulers.core.TargetSetup`;
    without them one cloud, ``cloud``, with ``cloud_prior``."""
    from cnmt.schedulers.base import LatencyModel
    from cnmt.schedulers.core import DecisionCore, TargetSetup

    unit = LatencyModel(1.0, 1.0, 1.0)
    if clouds is None:
        workers = settings.cloud_workers if settings is not None else 1
        bandwidth = settings.bandwidth_bps if settings is not None else 100e6
        clouds = [TargetSetup(SHORTHAND_CLOUD, cloud_prior or unit, workers, bandwidth)]
    components = scheduler_specs(config).create(TargetSetup("edge", edge_prior or unit), clouds)
    # A policy that draws gets a generator of its own (seeded by the OS: a live gateway is not
    # replayed); the others none.
    rng = None
    if components.policy.uses_rng:
        import numpy as np

        rng = np.random.default_rng()
    return DecisionCore(components, rng=rng)


def shorthand_cloud(
    gateway: GatewaySettings | None, cloud: CloudSettings | None, link: LinkSettings | None
) -> CloudEntry:
    """The one cloud of ``cloud:`` + ``link:`` (and the gateway's ``cloud_*`` keys) as an
    item of ``clouds``."""
    return CloudEntry(
        name=SHORTHAND_CLOUD,
        cloud_profile=gateway.cloud_profile if gateway is not None else None,
        cloud=cloud,
        link=link,
        url=gateway.cloud_url if gateway is not None else None,
        workers=gateway.cloud_workers if gateway is not None else None,
        model=(gateway.models["cloud"] if gateway is not None else None) if cloud is None else None,
    )


def cloud_model(entry: CloudEntry, gateway: GatewaySettings) -> str:
    """The model cloud ``entry`` runs."""
    if entry.cloud is not None:
        return entry.cloud.model
    return entry.model or gateway.models["cloud"]


def scaled(model: Any, factor: float) -> Any:
    """Latency model ``model`` run ``factor`` times slower."""
    if factor == 1.0:
        return model
    return dataclasses.replace(
        model, a_n=model.a_n * factor, a_m=model.a_m * factor, b=model.b * factor
    )


def build_gateway(
    config: Config,
    settings: GatewaySettings,
    cloud_url: str | None,
    say: Say,
    clouds: Sequence[CloudEntry] | None = None,
) -> Any:
    """A Gateway wired from a config (not started): profiles, schedulers and the learnt state
    first, so a bad one fails before any model is loaded. ``clouds`` are the gateway's clouds
    (default: the one cloud of ``gateway.cloud_profile``, at ``cloud_url``); their clients are
    attached once their addresses are known."""
    from cnmt.schedulers.base import Device
    from cnmt.schedulers.core import TargetSetup
    from cnmt.serving.cloud_client import CloudClient
    from cnmt.serving.edge import EdgeWorker, QuotaSpec
    from cnmt.serving.gateway import Gateway
    from cnmt.serving.learned_state import learning_parts, lock, restore

    specs = scheduler_specs(config)  # a bad one fails before anything is read
    if clouds is None:
        clouds = [shorthand_cloud(settings, None, None)]
    several = len(clouds) > 1
    edge_profile = load_profile(settings.edge_profile, "gateway.edge_profile", settings.model)
    profiles = {}
    for index, entry in enumerate(clouds):
        key = f"clouds[{index}].cloud_profile" if several else "gateway.cloud_profile"
        path = entry.cloud_profile or settings.cloud_profile
        profiles[entry.name] = load_profile(path, key, cloud_model(entry, settings))
    checked = [("edge", "gateway.edge_profile", edge_profile, settings.model)] + [
        (
            e.name,
            f"clouds[{i}].cloud_profile" if several else "gateway.cloud_profile",
            profiles[e.name],
            cloud_model(e, settings),
        )
        for i, e in enumerate(clouds)
    ]
    for target, key, profile, model in checked:
        if profile.model != model:
            log.warning(
                "%s was measured for model %r, the %s runs %r: its decisions use another "
                "model's latencies",
                key,
                profile.model,
                target,
                model,
            )
    core = create_schedulers(
        config,
        edge_profile.fit.latency_model,
        settings=settings,
        clouds=[
            TargetSetup(
                e.name,
                scaled(profiles[e.name].fit.latency_model, e.time_factor),
                e.queue_workers,
                settings.bandwidth_bps,
            )
            for e in clouds
        ],
    )
    first = clouds[0].name
    state_parts = learning_parts(
        settings.model,
        edge_profile.device.name,
        profiles[first].device.name,
        edge_latency=core.latency["edge"],
        cloud_latency=core.latency[first],
        length_estimator=core.length,
        more_clouds=[
            (e.name, core.latency[e.name], cloud_model(e, settings), profiles[e.name].device.name)
            for e in clouds[1:]
        ],
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
    cloud_labels = ", ".join(
        (f"{name} " if several else "") + profile.label for name, profile in profiles.items()
    )
    say(
        f"gateway: model {settings.model}, edge {edge_profile.label}"
        + (f" (CPU quota {device.cpu_quota:g} core)" if quota else " (unthrottled)")
        + f"; {'clouds' if several else 'cloud'} {cloud_labels}; policy "
        f"{specs.device_policy.name}, length {specs.length_estimator.name}, RTT "
        f"{specs.rtt_estimator.name}, latency edge {specs.edge_latency.name} / cloud "
        f"{specs.cloud_latency.name}"
        + (f"; learning {', '.join(learning)}" if learning else "")
        + (f" (restored from {settings.state_file}: {', '.join(restored)})" if restored else "")
    )
    devices: dict[Any, str] = {Device.EDGE: edge_profile.device.name}
    devices.update({name: profile.device.name for name, profile in profiles.items()})
    return Gateway(
        tokenizer=tokenizer,
        edge=edge,
        cloud=cloud,
        core=core,
        settings=settings,
        state_parts=state_parts,
        state_lock=state_lock,
        devices=devices,
    )


def build_timeline(settings: LinkSettings, key: str = "link") -> Any:
    """The link's RTT over time (its trace is read now, so a bad file fails early)."""
    try:
        return settings.timeline(settings.loss_timeout_s)
    except ConfigError as exc:
        raise ConfigError(f"{key}.trace: {exc}") from None


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
    """Base URLs of what was launched (None for what the config does not launch); with several
    clouds, ``cloud`` and ``link`` are the first's and ``clouds``/``links`` every one's, by
    name."""

    gateway: str | None = None
    cloud: str | None = None
    link: str | None = None
    clouds: dict[str, str] = dataclasses.field(default_factory=dict)
    links: dict[str, str] = dataclasses.field(default_factory=dict)


@dataclass
class _Launched:
    """What was started for one cloud."""

    process: CloudProcess | None = None
    runner: web.AppRunner | None = None
    link: Any = None


class System:
    """Everything one config launches. A config that launches only a cloud runs it in this
    event loop instead of a child process."""

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
        cloud: CloudSettings | None = config.get("cloud")
        link: LinkSettings | None = config.get("link")
        listed: list[CloudEntry] | None = config.get("clouds")
        where = config.source
        if listed is not None and (cloud is not None or link is not None):
            raise ConfigError(
                f"{where}: clouds: give one cloud as `cloud` + `link` or several as `clouds`, "
                "not both (a config that extends one with a cloud sets cloud: null and link: null)"
            )
        if listed is not None:
            names = [entry.name for entry in listed]
            if not names or len(set(names)) != len(names):
                raise ConfigError(
                    f"{where}: clouds: expected at least one cloud, each with a unique name; "
                    f"got {names}"
                )
        if not (self.gateway_settings or cloud or link or listed):
            raise ConfigError(
                f"{where}: nothing to launch; a serving config needs a `gateway`, `cloud`, "
                "`link` or `clouds` section (see `cnmt config show serving/default`)"
            )
        if gateway_port is not None and self.gateway_settings is not None:
            self.gateway_settings = dataclasses.replace(self.gateway_settings, port=gateway_port)
        self.shorthand = listed is None
        entries = listed or [shorthand_cloud(self.gateway_settings, cloud, link)]
        self.clouds = [
            self._with_ports(entry, cloud_port, link_port, len(entries)) for entry in entries
        ]
        self._check_wiring()
        self._launched: dict[str, _Launched] = {}
        self._gateway_runner: web.AppRunner | None = None
        self.gateway: Any = None
        self.endpoints = Endpoints()

    @property
    def cloud_settings(self) -> CloudSettings | None:
        """The first cloud's server settings (the only one's, with `cloud:`)."""
        return self.clouds[0].cloud if self.clouds else None

    @property
    def link_settings(self) -> LinkSettings | None:
        return self.clouds[0].link if self.clouds else None

    def _with_ports(
        self, entry: CloudEntry, cloud_port: int | None, link_port: int | None, count: int
    ) -> CloudEntry:
        """``--cloud-port``/``--link-port`` applied: to the one cloud, or 0 (any free port)
        to every cloud of several."""
        for port, flag in ((cloud_port, "--cloud-port"), (link_port, "--link-port")):
            if port and count > 1:
                raise ConfigError(
                    f"{self.config.source}: {flag} {port}: the config launches {count} clouds; "
                    f"set each one's port under clouds[i] (or pass {flag} 0: any free ports)"
                )
        cloud, link = entry.cloud, entry.link
        if cloud_port is not None and cloud is not None:
            cloud = dataclasses.replace(cloud, port=cloud_port)
        if link_port is not None and link is not None:
            link = dataclasses.replace(link, port=link_port)
        return dataclasses.replace(entry, cloud=cloud, link=link)

    def _key(self, index: int, key: str) -> str:
        """Where a cloud's key is in the config: ``link`` or ``clouds[1].link``."""
        return key if self.shorthand else f"clouds[{index}].{key}"

    def _check_wiring(self) -> None:
        where = self.config.source
        gateway = self.gateway_settings
        for index, entry in enumerate(self.clouds):
            if entry.link and entry.link.upstream is None and not entry.cloud:
                raise ConfigError(
                    f"{where}: {self._key(index, 'link.upstream')}: not set and the config "
                    "launches no cloud for it; set it to the cloud's host:port"
                )
            if gateway and entry.url is None and not (entry.link or entry.cloud):
                key = "gateway.cloud_url" if self.shorthand else f"clouds[{index}].url"
                raise ConfigError(
                    f"{where}: {key}: not set and the config launches no link or cloud; "
                    "set it to the cloud's (or the link's) URL, e.g. http://10.0.0.2:8081"
                )
            if gateway and self.shorthand and entry.cloud:
                if gateway.models["cloud"] != entry.cloud.model:
                    # The gateway predicts the cloud's times from the cloud model's profile.
                    raise ConfigError(
                        f"{where}: the cloud runs {entry.cloud.model!r} but the gateway "
                        f"expects {gateway.models['cloud']!r} there (gateway.cloud_model, "
                        f"default gateway.model); set gateway.cloud_model: {entry.cloud.model} "
                        "and a cloud_profile of that model"
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
        gateway_cfg = self.gateway_settings
        if any(e.cloud is not None and e.cloud.engine == "ray" for e in self.clouds):
            check_ray_installed()
        timelines = {
            entry.name: await loop.run_in_executor(
                None, build_timeline, entry.link, self._key(index, "link")
            )
            for index, entry in enumerate(self.clouds)
            if entry.link is not None
        }
        if gateway_cfg is not None:
            # Profiles and schedulers are checked before anything slow (build_gateway exports a
            # built-in model only after them), and the gateway's model is in the cache before
            # the cloud processes open the same cache.
            self.gateway = await loop.run_in_executor(
                None, build_gateway, self.config, gateway_cfg, None, self.say, self.clouds
            )
            # The edge worker next: a quota that cannot be applied fails before a cloud starts.
            await self.gateway.edge.start()
        targets: dict[str, str] = {}
        clouds: dict[str, str] = {}
        links: dict[str, str] = {}
        several = len(self.clouds) > 1
        for entry in self.clouds:
            launched = self._launched[entry.name] = _Launched()
            label = f"{entry.name}: " if several else ""
            cloud_cfg, link_cfg = entry.cloud, entry.link
            cloud_address: tuple[str, int] | None = None
            if cloud_cfg is not None:
                port = await self._start_cloud(entry, launched)
                cloud_address = (cloud_cfg.host, port)
                clouds[entry.name] = url(cloud_cfg.host, port, cloud_cfg.scheme)
                self.say(f"cloud:   {label}{clouds[entry.name]}  ({describe_cloud(cloud_cfg)})")
            if link_cfg is not None:
                upstream = (
                    split_host_port(link_cfg.upstream, "link.upstream")
                    if link_cfg.upstream
                    else cloud_address
                )
                assert upstream is not None
                launched.link = build_link(link_cfg, upstream, timelines[entry.name])
                await launched.link.start()
                # The link forwards bytes: TLS between the gateway and the cloud passes through.
                scheme = cloud_cfg.scheme if cloud_cfg is not None else "http"
                links[entry.name] = url(link_cfg.host, launched.link.port, scheme)
                bandwidth = (
                    f", {link_cfg.bandwidth_mbps:g} Mbit/s" if link_cfg.bandwidth_mbps else ""
                )
                self.say(
                    f"link:    {label}{links[entry.name]} -> {upstream[0]}:{upstream[1]}  "
                    f"({link_cfg.describe()}{bandwidth})"
                )
            target = entry.url or links.get(entry.name) or clouds.get(entry.name)
            if target is not None:
                targets[entry.name] = target
        gateway_url = await self._start_gateway(targets) if gateway_cfg is not None else None
        first = self.clouds[0].name
        self.endpoints = Endpoints(
            gateway=gateway_url,
            cloud=clouds.get(first),
            link=links.get(first),
            clouds=clouds,
            links=links,
        )

    async def _start_cloud(self, entry: CloudEntry, launched: _Launched) -> int:
        """Start cloud ``entry``'s server; returns its port. In a child process, unless the
        config launches nothing but this one (aiohttp) cloud."""
        cloud_cfg = entry.cloud
        assert cloud_cfg is not None
        loop = asyncio.get_running_loop()
        gateway_cfg = self.gateway_settings
        if gateway_cfg is None or cloud_cfg.model != gateway_cfg.model:
            await loop.run_in_executor(None, prepare_model, cloud_cfg.model)
        alone = gateway_cfg is None and entry.link is None and len(self.clouds) == 1
        if not alone or cloud_cfg.engine == "ray":
            launched.process = CloudProcess(cloud_cfg, entry.name)
            return await launched.process.start()
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
        launched.runner, port = await serve_app(
            server.app(),
            cloud_cfg.host,
            cloud_cfg.port,
            cloud_cfg.reuse_port,
            server.ssl_context(),
        )
        return port

    async def _start_gateway(self, targets: dict[str, str]) -> str:
        """Attach each cloud's client to the gateway and serve it; returns its URL."""
        from cnmt.serving.cloud_client import CloudClient

        gateway_cfg = self.gateway_settings
        assert gateway_cfg is not None
        self.gateway.attach_clouds(
            {
                name: CloudClient.for_gateway(target, gateway_cfg, self.gateway.tokenizer)
                for name, target in targets.items()
            }
        )
        app = self.gateway.app()
        keys = read_keys(gateway_cfg.api_keys_file, gateway_cfg.api_keys_env, "gateway.api_keys")
        if keys:
            app.middlewares.append(bearer_auth(keys, "the gateway"))
        self._gateway_runner, port = await serve_app(app, gateway_cfg.host, gateway_cfg.port)
        gateway_url = url(gateway_cfg.host, port)
        edge = self.gateway.edge
        mode = "throttled" if edge.throttled else "unthrottled"
        where = (
            ", ".join(f"{n} at {t}" for n, t in targets.items())
            if len(targets) > 1
            else (f"cloud at {next(iter(targets.values()))}" if targets else "no cloud")
        )
        self.say(f"gateway: {gateway_url}  ({where}; local worker pid {edge.pid}, {mode})")
        return gateway_url

    def cloud_pid(self, name: str) -> int | None:
        """The pid of cloud ``name``'s process (None: not in a child process)."""
        launched = self._launched.get(name)
        return launched.process.pid if launched and launched.process else None

    async def stop(self) -> None:
        if self._gateway_runner is not None:
            await self._gateway_runner.cleanup()
            self._gateway_runner = None
        elif self.gateway is not None:
            await self.gateway.close()
        self.gateway = None
        launched, self._launched = self._launched, {}
        for one in launched.values():
            if one.link is not None:
                await one.link.close()
        for one in launched.values():
            if one.runner is not None:
                await one.runner.cleanup()
        # The clouds stop together: each may take its grace period.
        await asyncio.gather(*(o.process.stop() for o in launched.values() if o.process))


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
