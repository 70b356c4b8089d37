"""The cloud translation server.

``POST /v1/translate`` with ``{"text": "..."}`` answers::

    {"translation": "let's go .", "n_tokens": 5, "m_tokens": 3, "exec_s": 0.0123,
     "received_at": 1718000000.125, "sent_at": 1718000000.139,
     "wait_s": 0.0004, "pending": 0, "batch_size": 1}

``received_at`` is taken when the request's body has arrived and ``sent_at`` just before the
answer is written, both on this server's clock (``time.time``); ``exec_s`` is the model's own
time. The gateway subtracts ``sent_at - received_at`` from the round trip it measured to get one
RTT sample of the link, so the two clocks never need to agree. The server keeps no state between
requests: replicas can share one address (``reuse_port``) behind any balancer.

The body is a :class:`cnmt.serving.protocol.CloudAnswer`, the one type both cloud engines write
and the gateway's client reads.

Queueing, in the fields both cloud engines report (the Ray Serve cloud too): ``wait_s`` is the
time from the request's arrival to the start of the model run that translated it (waiting for a
free worker), ``pending`` the requests already waiting or running in this server when it
arrived (itself not counted), ``batch_size`` the sentences in that model run (always 1 here).

``GET /health`` (alive), ``GET /ready`` (models loaded) and ``GET /metrics`` (Prometheus text).
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from cnmt.errors import CnmtError
from cnmt.runtime.base import Translation, Translator
from cnmt.serving import metrics as m
from cnmt.serving.auth import bearer_auth, read_secret, server_ssl_context
from cnmt.serving.limits import IDLE_TIMEOUT_KEY
from cnmt.serving.protocol import (
    CloudAnswer,
    RequestError,
    check_length,
    error_response,
    json_errors,
    json_response,
    overloaded,
    parse_text,
    read_body,
)
from cnmt.serving.settings import CloudSettings

log = logging.getLogger("cnmt.serving.cloud")

SERVICE = "cnmt-cloud"


def _translate_checked(translator: Translator, text: str) -> tuple[float, Translation]:
    """The model run's start (``time.perf_counter``) and its result."""
    started = time.perf_counter()
    check_length(translator.count_source_tokens(text), translator.max_source_tokens)
    return started, translator.translate(text)


class CloudServer:
    """Translates on ``len(translators)`` worker threads (ONNX Runtime releases the GIL while a
    graph runs), one model instance per thread, so no instance is ever used concurrently."""

    def __init__(
        self,
        translators: Sequence[Translator],
        settings: CloudSettings,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not translators:
            raise ValueError("the cloud server needs at least one translator")
        self.settings = settings
        self.clock = clock
        # Read now: a missing token file fails before the server listens.
        self._token = read_secret(settings.token_file, settings.token_env, "cloud.token")
        self._translators = list(translators)
        self._free: asyncio.Queue[Translator] | None = None
        self._pool = ThreadPoolExecutor(
            max_workers=len(translators), thread_name_prefix="cloud-translate"
        )
        self.pending = 0
        self.metrics = CollectorRegistry()
        self._requests = Counter(
            "cnmt_cloud_requests_total",
            "Translation requests answered, by HTTP status.",
            ["status"],
            registry=self.metrics,
        )
        self._exec = Histogram(
            "cnmt_cloud_exec_seconds",
            "Model execution time per translation.",
            buckets=m.LATENCY_BUCKETS_S,
            registry=self.metrics,
        )
        self._pending = Gauge(
            "cnmt_cloud_pending_requests",
            "Requests waiting for or inside a translation.",
            registry=self.metrics,
        )

    def app(self) -> web.Application:
        middlewares = [json_errors]
        if self._token is not None:
            middlewares.append(bearer_auth((self._token,), "the cloud"))
        app = web.Application(middlewares=middlewares)
        app[IDLE_TIMEOUT_KEY] = self.settings.idle_timeout_s
        app.router.add_post("/v1/translate", self.handle_translate)
        app.router.add_get("/health", self.handle_health)
        app.router.add_get("/ready", self.handle_health)
        app.router.add_get("/metrics", self.handle_metrics)
        app.on_startup.append(self._on_startup)
        app.on_cleanup.append(self._on_cleanup)
        return app

    def ssl_context(self) -> ssl.SSLContext | None:
        """The server's TLS context (``tls_cert_file``...), None to serve plain HTTP."""
        settings = self.settings
        if settings.tls_cert_file is None or settings.tls_key_file is None:
            return None
        return server_ssl_context(
            settings.tls_cert_file, settings.tls_key_file, settings.tls_client_ca_file
        )

    async def _on_startup(self, app: web.Application) -> None:
        self._free = asyncio.Queue()
        for translator in self._translators:
            self._free.put_nowait(translator)

    async def _on_cleanup(self, app: web.Application) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    async def handle_translate(self, request: web.Request) -> web.Response:
        settings = self.settings
        try:
            # The body first: an upload in progress holds no slot and is not the server's time.
            body = await read_body(request, settings.max_body_bytes, settings.body_timeout_s)
            received_at = self.clock()
            arrived = time.perf_counter()  # waiting for a model from here on: `wait_s`
            pending = self.pending
            if self.pending >= settings.max_pending:
                raise overloaded("the cloud server", self.pending, settings.retry_after_s)
            self.pending += 1
            self._pending.set(self.pending)
            try:
                started, result = await self._translate(parse_text(body))
            finally:
                self.pending -= 1
                self._pending.set(self.pending)
        except RequestError as exc:
            self._requests.labels(status=str(exc.status)).inc()
            return error_response(exc)
        self._requests.labels(status="200").inc()
        self._exec.observe(result.seconds)
        answer = CloudAnswer(
            translation=result.text,
            n_tokens=result.source_tokens,
            m_tokens=result.output_tokens,
            exec_s=result.seconds,
            received_at=received_at,
            sent_at=self.clock(),
            wait_s=max(0.0, started - arrived),
            pending=pending,
            batch_size=1,
        )
        return json_response(answer.to_json())

    async def _translate(self, text: str) -> tuple[float, Translation]:
        assert self._free is not None
        translator = await self._free.get()
        try:
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(self._pool, _translate_checked, translator, text)
        except RequestError:
            raise
        except CnmtError as exc:
            raise RequestError(422, f"the model cannot translate this text: {exc}") from None
        except Exception as exc:
            log.exception("translation failed")
            raise RequestError(500, f"translation failed: {type(exc).__name__}: {exc}") from None
        finally:
            self._free.put_nowait(translator)

    async def handle_health(self, request: web.Request) -> web.Response:
        return json_response({"status": "ok", "service": SERVICE, "pending": self.pending})

    async def handle_metrics(self, request: web.Request) -> web.Response:
        return m.response(self.metrics)
