"""Real servers with doubles on the loopback: a scripted cloud (in this event loop, or in a child
process a test can kill like a crashed machine) and a gateway whose edge worker, decision core
and clouds are built from test doubles and latency models given directly (no profile files)."""

from __future__ import annotations

import asyncio
import functools
import multiprocessing
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from cnmt.registry import get_components
from cnmt.runtime.base import Translator
from cnmt.schedulers.base import LatencyModel
from cnmt.schedulers.core import DecisionComponents, DecisionCore, TargetComponents
from cnmt.schedulers.defaults import DEFAULT_COMPONENTS
from cnmt.serving.auth import bearer_auth, read_keys
from cnmt.serving.cloud import CloudServer
from cnmt.serving.cloud_client import CloudClient
from cnmt.serving.edge import EdgeWorker
from cnmt.serving.gateway import Gateway
from cnmt.serving.launch import serve_app, url
from cnmt.serving.learned_state import learning_parts, restore
from cnmt.serving.settings import CloudSettings, GatewaySettings
from helpers.doubles import CLOUD_LATENCY, EDGE_LATENCY, ScriptedTranslator


async def start_cloud(
    delay_s: float = 0.0,
    port: int = 0,
    max_pending: int = 64,
    label: str = "cloud",
    translator: Translator | None = None,
    **settings: Any,
) -> tuple[web.AppRunner, str]:
    """A cloud server with a scripted model in this event loop; returns its runner and URL
    (``https://`` with ``tls_cert_file``)."""
    config = CloudSettings(port=port, max_pending=max_pending, **settings)
    server = CloudServer([translator or ScriptedTranslator(delay_s, label=label)], config)
    runner, bound = await serve_app(
        server.app(), "127.0.0.1", port, ssl_context=server.ssl_context()
    )
    return runner, url("127.0.0.1", bound, config.scheme)


def _cloud_process_main(conn: Any, port: int, delay_s: float) -> None:
    async def serve() -> None:
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        runner, bound = await serve_app(
            CloudServer(
                [ScriptedTranslator(delay_s, label="cloud")], CloudSettings(port=port)
            ).app(),
            "127.0.0.1",
            port,
        )
        conn.send(bound)
        await stop.wait()
        await runner.cleanup()

    asyncio.run(serve())


class ScriptedCloudProcess:
    """A scripted cloud in a child process, so a test can kill it like a crashed machine."""

    def __init__(self, delay_s: float = 0.0) -> None:
        self.delay_s = delay_s
        self.process: Any = None
        self.port = 0

    def start(self, port: int = 0) -> str:
        context = multiprocessing.get_context("spawn")
        parent, child = context.Pipe(duplex=False)
        self.process = context.Process(
            target=_cloud_process_main, args=(child, port, self.delay_s), daemon=True
        )
        self.process.start()
        child.close()
        if not parent.poll(30):
            self.kill()
            raise RuntimeError("scripted cloud process did not start")
        self.port = parent.recv()
        return url("127.0.0.1", self.port)

    def kill(self) -> None:
        if self.process is not None and self.process.is_alive():
            self.process.kill()
            self.process.join(10)
        self.process = None


def scheduler(kind: str, name: str, **params: Any) -> Any:
    components = get_components()
    entry = components.get(kind, name)
    return components.create(kind, name, entry.cls.Params(**params) if params else None)


def latency_model(spec: tuple[str, dict[str, Any]], prior: LatencyModel) -> Any:
    """A latency model component (``profile``, ``online``) with its prior."""
    name, params = spec
    components = get_components()
    cls = components.get("latency_model", name).cls
    return components.create("latency_model", name, cls.Params(**params), prior=prior)


@dataclass
class GatewayHandle:
    gateway: Gateway
    runner: web.AppRunner
    url: str

    async def close(self) -> None:
        await self.runner.cleanup()


def gateway_settings(**overrides: Any) -> GatewaySettings:
    values: dict[str, Any] = dict(
        edge_profile="(latency models given directly)",
        cloud_profile="(latency models given directly)",
        port=0,
        cloud_timeout_s=2.0,
        probe_initial_s=0.05,
        probe_max_s=0.2,
    )
    values.update(overrides)
    return GatewaySettings(**values)


async def start_gateway(
    cloud_url: str | None,
    *,
    policy: str = "cloud",
    edge_delay_s: float = 0.0,
    length: tuple[str, dict[str, Any]] = ("linear", {"gamma": 1.0, "delta": 1.0}),
    rtt: tuple[str, dict[str, Any]] = ("last", {}),
    latency: tuple[str, dict[str, Any]] = ("profile", {}),
    priors: tuple[LatencyModel, LatencyModel] = (EDGE_LATENCY, CLOUD_LATENCY),
    clock: Callable[[], float] = time.monotonic,
    edge_factory: Callable[..., Translator] = ScriptedTranslator,
    edge_translator: Callable[[], Translator] | None = None,
    more_clouds: dict[str, tuple[str, LatencyModel]] | None = None,
    **settings: Any,
) -> GatewayHandle:
    """A gateway on a free loopback port: scripted model in a real (unthrottled) worker process.
    ``more_clouds``: further clouds by name, each (URL, latency model), after ``cloud_url``'s
    (named ``cloud``)."""
    config = gateway_settings(**settings)
    factory = edge_translator or functools.partial(edge_factory, edge_delay_s, label="edge")
    edge = EdgeWorker(factory)
    length_estimator = scheduler("length_estimator", length[0], **length[1])
    edge_latency = latency_model(latency, priors[0])
    cloud_latency = latency_model(latency, priors[1])
    parts = learning_parts(
        "scripted",
        "edge",
        "cloud",
        edge_latency=edge_latency,
        cloud_latency=cloud_latency,
        length_estimator=length_estimator,
    )
    if config.state_file is not None:
        restore(config.state_file, parts)
    core = DecisionCore(
        DecisionComponents(
            policy=scheduler("device_policy", policy),
            length=length_estimator,
            edge=TargetComponents("edge", edge_latency),
            clouds=(
                TargetComponents(
                    "cloud",
                    cloud_latency,
                    rtt=scheduler("rtt_estimator", rtt[0], **rtt[1]),
                    wait=DEFAULT_COMPONENTS["cloud_wait_estimator"].create(),
                    workers=config.cloud_workers,
                    bandwidth_bps=config.bandwidth_bps,
                ),
                *(
                    TargetComponents(
                        name,
                        latency_model(latency, prior),
                        rtt=scheduler("rtt_estimator", rtt[0], **rtt[1]),
                        wait=DEFAULT_COMPONENTS["cloud_wait_estimator"].create(),
                        bandwidth_bps=config.bandwidth_bps,
                    )
                    for name, (_, prior) in (more_clouds or {}).items()
                ),
            ),
        )
    )
    clients = {
        "cloud": CloudClient.for_gateway(cloud_url, config) if cloud_url else None,
        **{
            name: CloudClient.for_gateway(address, config)
            for name, (address, _) in (more_clouds or {}).items()
        },
    }
    gateway = Gateway(
        tokenizer=ScriptedTranslator(),
        edge=edge,
        cloud=clients,
        core=core,
        settings=config,
        state_parts=parts,
        clock=clock,
    )
    app = gateway.app()
    keys = read_keys(config.api_keys_file, config.api_keys_env, "gateway.api_keys")
    if keys:  # as cnmt launch does
        app.middlewares.append(bearer_auth(keys, "the gateway"))
    runner, bound = await serve_app(app, "127.0.0.1", 0)
    return GatewayHandle(gateway, runner, url("127.0.0.1", bound))
