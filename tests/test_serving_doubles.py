"""Test doubles for the serving tests, and the harness that runs real servers on loopback.

``ScriptedTranslator`` is a deterministic Translator whose timing and failures the tests
control: a fixed delay per translation, a word that makes it refuse the text (a model error),
and a word ``CRASH:<path>`` that kills the process it runs in once (a crashed edge worker). It
tokenizes on whitespace, so N is the number of words, and "translates" by upper-casing each
word and adding a final ``.`` token, so M = N + 1.

The serving tests import this module by its plain name (``import test_serving_doubles``, with
this folder on ``sys.path``) so that the gateway's spawned worker process, which inherits
``sys.path``, can unpickle a translator factory that names it. It holds no tests itself.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import multiprocessing
import os
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from cnmt.errors import ConfigError
from cnmt.registry import get_components
from cnmt.runtime.base import Translation, Translator
from cnmt.schedulers.base import LatencyModel
from cnmt.schedulers.defaults import DEFAULT_COMPONENTS
from cnmt.serving.auth import bearer_auth, read_keys
from cnmt.serving.cloud import CloudServer
from cnmt.serving.cloud_client import CloudClient
from cnmt.serving.edge import EdgeWorker
from cnmt.serving.gateway import Gateway
from cnmt.serving.launch import serve_app, url
from cnmt.serving.learned_state import learning_parts, restore
from cnmt.serving.settings import CloudSettings, GatewaySettings

# Latency models for the `cnmt` policy in tests: a slow edge, a fast cloud (seconds).
EDGE_LATENCY = LatencyModel(a_n=0.002, a_m=0.02, b=0.01)
CLOUD_LATENCY = LatencyModel(a_n=0.0002, a_m=0.002, b=0.002)

REFUSE = "REFUSE"
CRASH = "CRASH"


class ScriptedTranslator(Translator):
    family = "scripted"
    name = "scripted"

    def __init__(self, delay_s: float = 0.0, max_tokens: int = 50, label: str = "") -> None:
        self.delay_s = delay_s
        self.max_tokens = max_tokens
        self.label = label
        self.calls = 0

    @property
    def max_source_tokens(self) -> int:
        return self.max_tokens

    def count_source_tokens(self, text: str) -> int:
        return len(text.split())

    def translate(self, text: str) -> Translation:
        started = time.perf_counter()
        self.calls += 1
        words = text.split()
        if not words:
            raise ConfigError("empty text")
        if REFUSE in words:
            raise ConfigError(f"the word {REFUSE} is not in the vocabulary")
        for word in words:
            # CRASH:<path> kills the process running this translation if <path> exists, and
            # removes it: the process dies once, and a retry of the same text succeeds.
            if word.startswith(CRASH + ":") and os.path.exists(word[len(CRASH) + 1 :]):
                os.unlink(word[len(CRASH) + 1 :])
                os._exit(3)
        if self.delay_s:
            time.sleep(self.delay_s)
        out = [w.upper() for w in words] + ["."]
        text_out = " ".join(out) + (f" [{self.label}]" if self.label else "")
        return Translation(text_out, len(words), len(out), time.perf_counter() - started)

    def translate_batch(self, texts: Sequence[str]) -> list[Translation]:
        return [self.translate(t) for t in texts]

    def run_forced(self, n_tokens: int, m_tokens: int) -> None:
        time.sleep(self.delay_s)


class TimedTranslator(ScriptedTranslator):
    """A ScriptedTranslator that takes ``b + a_n*N + a_m*M`` seconds (sleeping), M = N + 1: a
    device whose true latency model is known."""

    def __init__(self, model: LatencyModel, label: str = "") -> None:
        super().__init__(0.0, label=label)
        self.model = model

    def translate(self, text: str) -> Translation:
        started = time.perf_counter()
        n = len(text.split())
        time.sleep(max(0.0, self.model.predict(n, n + 1)))
        result = super().translate(text)
        return Translation(result.text, n, n + 1, time.perf_counter() - started)


class EchoingTranslator(ScriptedTranslator):
    """A ScriptedTranslator that logs each text it translates at WARNING, raw, as cn2en logs the
    tokens it drops."""

    def translate(self, text: str) -> Translation:
        logging.getLogger("cnmt.runtime.echo").warning("translating %s", text)
        return super().translate(text)


def run(coro: Any, timeout_s: float = 60.0) -> Any:
    """Run one async test body with an overall deadline, so no test can hang."""

    async def bounded() -> Any:
        return await asyncio.wait_for(coro, timeout_s)

    return asyncio.run(bounded())


# --- servers ---------------------------------------------------------------------------------


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


class CloudProcess:
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
    **settings: Any,
) -> GatewayHandle:
    """A gateway on a free loopback port: scripted model in a real (unthrottled) worker process."""
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
    gateway = Gateway(
        tokenizer=ScriptedTranslator(),
        edge=edge,
        cloud=CloudClient.for_gateway(cloud_url, config) if cloud_url else None,
        length_estimator=length_estimator,
        device_policy=scheduler("device_policy", policy),
        rtt_estimator=scheduler("rtt_estimator", rtt[0], **rtt[1]),
        cloud_wait_estimator=DEFAULT_COMPONENTS["cloud_wait_estimator"].create(),
        edge_latency=edge_latency,
        cloud_latency=cloud_latency,
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


def model_unless(marker: str) -> Translator:
    """A translator factory that fails, as a corrupted model cache does, while ``marker``
    exists (so a restarted worker cannot load what the first one did)."""
    if os.path.exists(marker):
        raise ConfigError(f"{marker}/encoder.onnx: onnxruntime cannot load this graph")
    return ScriptedTranslator(label="edge")


def broken_model() -> Translator:
    """A translator factory whose model cannot be opened, as with a missing model directory."""
    raise ConfigError("/models/zh-en: no such model directory")


def metric_samples(text: str) -> dict[str, float]:
    """``/metrics`` parsed with prometheus-client's own parser: sample value by
    ``name{label="value",...}`` (labels sorted; no braces without labels)."""
    from prometheus_client.parser import text_string_to_metric_families

    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            samples[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return samples
