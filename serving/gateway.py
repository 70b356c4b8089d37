"""The edge gateway: decides per request whether to translate locally or offload to the cloud.

``POST /v1/translate`` with ``{"text": "..."}``. For each request the gateway

1. counts N, the input length in the model's tokens (the model's own tokenizer);
2. estimates M with the configured length estimator;
3. asks the configured device policy, a pure function of the request, M, a snapshot of the
   scheduler state (edge and cloud latency models, the current RTT estimate) and ``now`` from
   the injected clock;
4. translates in the local worker (:mod:`cnmt.serving.edge`) or sends the text to the cloud;
5. after a cloud exchange, feeds the RTT estimator one sample: the round trip it measured
   minus the time the cloud says it held the request (``sent_at - received_at``) and minus
   the bodies' serialisation time at the configured ``bandwidth_mbps``.

It answers::

    {"translation": "let's go .", "device": "cloud", "decided": "cloud", "fallback": null,
     "n_tokens": 5, "m_estimated": 4.9, "m_actual": 3, "latency_ms": 61.2, "exec_ms": 11.0,
     "rtt_estimate_ms": 48.1, "rtt_sample_ms": 49.0,
     "predicted_ms": {"edge": 80.3, "cloud": 62.0}}

``decided`` is the policy's choice, ``device`` where the text was really translated.

Faults never lose a request. A cloud exchange that times out (``cloud_timeout_s``), cannot
connect, answers an HTTP error or an answer that is not the protocol is translated locally
instead (``fallback`` names the reason); the cloud is then marked unhealthy, requests the policy
sends to the cloud run locally, and a background probe (``GET /health``, exponential backoff
from ``probe_initial_s`` to ``probe_max_s``) brings it back. A cloud that hangs is caught
sooner, and never holds more than ``max_cloud_exchanges`` requests (past it they run locally,
fallback ``cloud_busy``): see :mod:`cnmt.serving.cloud_health`. A local worker that dies is
restarted; if it dies again the request goes to a healthy cloud. At most ``max_pending``
requests whose body has arrived are inside the gateway at once; more get 503 with
``Retry-After``. Slow clients are bounded by :mod:`cnmt.serving.limits`.

``GET /health`` (alive, and the cloud's state), ``GET /ready`` (the local worker is up),
``GET /metrics`` (Prometheus text).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from cnmt.errors import CnmtError
from cnmt.runtime.base import Translator
from cnmt.schedulers.base import (
    Device,
    DevicePolicy,
    LatencyModel,
    LengthEstimator,
    LinkState,
    Request,
    SchedulerState,
)
from cnmt.schedulers.rtt_estimators import RttEstimator
from cnmt.serving import metrics as m
from cnmt.serving.cloud_client import CloudClient, CloudFailure, CloudRejected
from cnmt.serving.cloud_health import CloudHealth
from cnmt.serving.edge import EdgeFailure, EdgeWorker
from cnmt.serving.limits import IDLE_TIMEOUT_KEY
from cnmt.serving.logs import escape_controls
from cnmt.serving.protocol import (
    RequestError,
    check_length,
    dumps,
    error_response,
    json_errors,
    json_response,
    overloaded,
    parse_text,
    read_body,
)
from cnmt.serving.settings import GatewaySettings

log = logging.getLogger("cnmt.serving.gateway")

SERVICE = "cnmt-gateway"


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000.0, 3)


class Gateway:
    """One edge gateway. ``tokenizer`` is a translator loaded in the gateway process, used only
    to count N (cheap); ``edge`` runs the translations. ``clock`` gives ``now`` to the scheduler
    and the RTT estimator; ``timer`` measures durations (both monotonic seconds)."""

    def __init__(
        self,
        *,
        tokenizer: Translator,
        edge: EdgeWorker,
        cloud: CloudClient | None,
        length_estimator: LengthEstimator,
        device_policy: DevicePolicy,
        rtt_estimator: RttEstimator,
        edge_latency: LatencyModel,
        cloud_latency: LatencyModel,
        settings: GatewaySettings,
        clock: Callable[[], float] = time.monotonic,
        timer: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.tokenizer = tokenizer
        self.edge = edge
        self.cloud = cloud
        self.length_estimator = length_estimator
        self.device_policy = device_policy
        self.rtt_estimator = rtt_estimator
        self.edge_latency = edge_latency
        self.cloud_latency = cloud_latency
        self.settings = settings
        self.clock = clock
        self.timer = timer
        self.pending = 0
        self.ready = False
        self._init_metrics()
        self.cloud_health = self._new_cloud_health()

    def _new_cloud_health(self) -> CloudHealth:
        settings = self.settings

        async def probe() -> bool:
            return self.cloud is not None and await self.cloud.probe()

        def on_change(healthy: bool, cause: str) -> None:
            self.m_cloud_healthy.set(1.0 if healthy else 0.0)
            if not healthy:
                self.m_cloud_unhealthy.labels(cause=cause).inc()

        self.m_cloud_healthy.set(1.0 if self.cloud is not None else 0.0)
        return CloudHealth(
            probe=probe,
            max_exchanges=settings.max_cloud_exchanges,
            slow_s=settings.slow_exchange_s,
            slow_count=settings.breaker_slow_count,
            probe_initial_s=settings.probe_initial_s,
            probe_max_s=settings.probe_max_s,
            health_interval_s=settings.health_interval_s,
            clock=self.clock,
            on_change=on_change,
        )

    @property
    def cloud_healthy(self) -> bool:
        """A cloud is attached and may be tried: its breaker is closed or half-open."""
        return self.cloud is not None and self.cloud_health.available

    # --- metrics -------------------------------------------------------------------------------

    def _init_metrics(self) -> None:
        r = self.metrics = CollectorRegistry()
        self.m_requests = Counter(
            "cnmt_gateway_requests_total",
            "Requests answered with a translation, by the device that translated them.",
            ["device"],
            registry=r,
        )
        self.m_decisions = Counter(
            "cnmt_gateway_decisions_total",
            "Device policy decisions, by chosen device.",
            ["device"],
            registry=r,
        )
        self.m_fallbacks = Counter(
            "cnmt_gateway_fallbacks_total",
            "Requests translated on the other device than decided, by reason.",
            ["reason"],
            registry=r,
        )
        self.m_rejected = Counter(
            "cnmt_gateway_rejected_total",
            "Requests answered with an error, by HTTP status.",
            ["status"],
            registry=r,
        )
        self.m_latency = Histogram(
            "cnmt_gateway_latency_seconds",
            "Time from request arrival to answer, by the device that translated.",
            ["device"],
            buckets=m.LATENCY_BUCKETS_S,
            registry=r,
        )
        self.m_length_error = Histogram(
            "cnmt_gateway_length_estimate_error_tokens",
            "Estimated minus actual output length (tokens).",
            buckets=m.LENGTH_ERROR_BUCKETS,
            registry=r,
        )
        self.m_length_abs_error = Counter(
            "cnmt_gateway_length_estimate_abs_error_tokens_total",
            "Sum of |estimated - actual| output length over translated requests (tokens).",
            registry=r,
        )
        self.m_rtt_estimate = Gauge(
            "cnmt_gateway_rtt_estimate_seconds",
            "The RTT estimator's current estimate of the link.",
            registry=r,
        )
        self.m_rtt_sample = Histogram(
            "cnmt_gateway_rtt_sample_seconds",
            "RTT samples: cloud round trip minus the cloud's own time.",
            buckets=m.LATENCY_BUCKETS_S,
            registry=r,
        )
        self.m_cloud_healthy = Gauge(
            "cnmt_gateway_cloud_healthy",
            "1 while the cloud is considered healthy, else 0.",
            registry=r,
        )
        self.m_pending = Gauge(
            "cnmt_gateway_pending_requests",
            "Requests inside the gateway (their body has arrived).",
            registry=r,
        )
        self.m_cloud_unhealthy = Counter(
            "cnmt_gateway_cloud_marked_unhealthy_total",
            "Times the cloud was marked unhealthy, by cause: a failed exchange, consecutive "
            "slow exchanges (the breaker), a failed health probe.",
            ["cause"],
            registry=r,
        )
        self.m_cloud_in_flight = Gauge(
            "cnmt_gateway_cloud_exchanges_in_flight",
            "Cloud exchanges waiting for an answer (at most max_cloud_exchanges).",
            registry=r,
        )
        self.m_cloud_in_flight.set_function(lambda: len(self.cloud_health.in_flight))
        r.register(_EdgeRestarts(self.edge))
        self.m_rtt_estimate.set(self.rtt_estimator.estimate(self.clock()))

    # --- lifecycle -----------------------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application(middlewares=[json_errors])
        app[IDLE_TIMEOUT_KEY] = self.settings.idle_timeout_s
        app.router.add_post("/v1/translate", self.handle_translate)
        app.router.add_get("/health", self.handle_health)
        app.router.add_get("/ready", self.handle_ready)
        app.router.add_get("/metrics", self.handle_metrics)
        app.on_startup.append(lambda _app: self.start())
        app.on_cleanup.append(lambda _app: self.close())
        return app

    async def start(self) -> None:
        """Start the local worker and the cloud client; probe the cloud once."""
        if not self.edge.started:
            await self.edge.start()
        if self.cloud is not None:
            await self.cloud.start()
            if not await self.cloud.probe():
                self.cloud_health.mark_unhealthy(
                    "the cloud did not answer its health probe at startup", cause="probe"
                )
            self.cloud_health.start()
        self.ready = True

    async def close(self) -> None:
        self.ready = False
        await self.cloud_health.close()
        if self.cloud is not None:
            await self.cloud.close()
        await self.edge.close()

    def attach_cloud(self, cloud: CloudClient) -> None:
        """Set the cloud once its address is known (before :meth:`start`)."""
        if self.ready:
            raise RuntimeError("attach_cloud() must come before start()")
        self.cloud = cloud
        self.cloud_health = self._new_cloud_health()

    # --- requests ------------------------------------------------------------------------------

    async def handle_translate(self, request: web.Request) -> web.Response:
        settings = self.settings
        try:
            # The body first: a client still uploading holds no slot, and its upload time is
            # not the gateway's latency.
            body = await read_body(request, settings.max_body_bytes, settings.body_timeout_s)
            started = self.timer()
            if self.pending >= settings.max_pending:
                raise overloaded("the gateway", self.pending, settings.retry_after_s)
            self.pending += 1
            self.m_pending.set(self.pending)
            try:
                text = parse_text(body)
                answer = await self.translate(text, started)
            finally:
                self.pending -= 1
                self.m_pending.set(self.pending)
        except RequestError as exc:
            self.m_rejected.labels(status=str(exc.status)).inc()
            return error_response(exc)
        except Exception as exc:  # a bug, not the user's fault: say so, keep serving
            log.exception("request failed")
            self.m_rejected.labels(status="500").inc()
            message = escape_controls(f"internal error: {type(exc).__name__}: {exc}")
            return error_response(RequestError(500, message))
        return json_response(answer)

    async def translate(self, text: str, started: float | None = None) -> dict[str, Any]:
        """Decide, translate and account for one text; RequestError for what the user must fix."""
        if started is None:
            started = self.timer()
        try:
            n_tokens = self.tokenizer.count_source_tokens(text)
        except CnmtError as exc:
            raise RequestError(422, f"the model cannot tokenize this text: {exc}") from None
        check_length(n_tokens, self.tokenizer.max_source_tokens)
        request = Request(
            n_tokens=n_tokens, payload_bytes=len(dumps({"text": text}).encode("utf-8"))
        )
        now = self.clock()
        link = LinkState(
            rtt_s=self.rtt_estimator.estimate(now), bandwidth_bps=self.settings.bandwidth_bps
        )
        state = SchedulerState(edge=self.edge_latency, cloud=self.cloud_latency, link=link, now=now)
        try:
            m_estimated = float(self.length_estimator.estimate(request))
            decided = Device(self.device_policy.choose(request, m_estimated, state))
        except (CnmtError, ValueError) as exc:
            log.error("scheduler failed: %s", exc)
            raise RequestError(500, f"the gateway's scheduler failed: {exc}") from None
        self.m_decisions.labels(device=decided.value).inc()

        device, fallback = decided, None
        text_out: str | None = None
        m_actual = 0
        exec_s = 0.0
        rtt_sample: float | None = None
        if decided is Device.CLOUD:
            if not self.cloud_healthy:
                device, fallback = Device.EDGE, "cloud_unhealthy" if self.cloud else "no_cloud"
            else:
                try:
                    reply = await self._offload(text)
                except CloudFailure as exc:
                    device, fallback = Device.EDGE, exc.reason
                else:
                    text_out, m_actual, exec_s = reply.text, reply.m_tokens, reply.exec_s
                    rtt_sample = reply.rtt_sample(self.settings.bandwidth_bps)
        if device is Device.EDGE:
            try:
                local = await self.edge.translate(text)
            except CnmtError as exc:
                if isinstance(exc, EdgeFailure) and decided is Device.EDGE and self.cloud_healthy:
                    log.warning("local translation failed (%s); offloading instead", exc)
                    try:
                        reply = await self._offload(text)
                    except CloudFailure as cloud_exc:
                        raise RequestError(
                            503,
                            f"both devices failed: local worker ({exc}); cloud ({cloud_exc})",
                            headers={"Retry-After": str(self.settings.retry_after_s)},
                        ) from None
                    device, fallback = Device.CLOUD, "edge_failure"
                    text_out, m_actual, exec_s = reply.text, reply.m_tokens, reply.exec_s
                    rtt_sample = reply.rtt_sample(self.settings.bandwidth_bps)
                elif isinstance(exc, EdgeFailure):
                    raise RequestError(
                        503,
                        f"local translation failed and the cloud is unavailable: {exc}",
                        headers={"Retry-After": str(self.settings.retry_after_s)},
                    ) from None
                else:
                    raise RequestError(
                        422, f"the model cannot translate this text: {exc}"
                    ) from None
            else:
                text_out, m_actual, exec_s = local.text, local.output_tokens, local.seconds
        assert text_out is not None

        latency = self.timer() - started
        if fallback is not None:
            self.m_fallbacks.labels(reason=fallback).inc()
        self.m_requests.labels(device=device.value).inc()
        self.m_latency.labels(device=device.value).observe(latency)
        self.m_length_error.observe(m_estimated - m_actual)
        self.m_length_abs_error.inc(abs(m_estimated - m_actual))
        return {
            "translation": text_out,
            "device": device.value,
            "decided": decided.value,
            "fallback": fallback,
            "n_tokens": n_tokens,
            "m_estimated": round(m_estimated, 3),
            "m_actual": m_actual,
            "latency_ms": _ms(latency),
            "exec_ms": _ms(exec_s),
            "rtt_estimate_ms": _ms(link.rtt_s),
            "rtt_sample_ms": _ms(rtt_sample),
            "predicted_ms": {
                "edge": _ms(self.edge_latency.predict(n_tokens, m_estimated)),
                "cloud": _ms(
                    self.cloud_latency.predict(n_tokens, m_estimated)
                    + link.transmission_s(request.payload_bytes)
                ),
            },
        }

    async def _offload(self, text: str) -> Any:
        """One cloud exchange; on success the RTT estimator learns from it, on failure the cloud
        is marked unhealthy. CloudRejected (the model refused the text) becomes a 422."""
        assert self.cloud is not None
        try:
            with self.cloud_health.exchange():  # CloudFailure if busy, unhealthy or failing
                reply = await self.cloud.translate(text)
        except CloudRejected as exc:
            raise RequestError(
                422, f"the model cannot translate this text: {exc.message}"
            ) from None
        at = self.clock()
        sample = reply.rtt_sample(self.settings.bandwidth_bps)
        self.rtt_estimator.observe(sample, at)
        self.m_rtt_sample.observe(sample)
        self.m_rtt_estimate.set(self.rtt_estimator.estimate(at))
        return reply

    async def handle_health(self, request: web.Request) -> web.Response:
        healthy = self.cloud_health.healthy  # a half-open breaker is not healthy yet
        cloud = "none" if self.cloud is None else ("healthy" if healthy else "unhealthy")
        return json_response(
            {"status": "ok", "service": SERVICE, "cloud": cloud, "pending": self.pending}
        )

    async def handle_ready(self, request: web.Request) -> web.Response:
        if not self.ready:
            return json_response(
                {"ready": False, "error": "the local worker is starting"}, status=503
            )
        return json_response({"ready": True})

    async def handle_metrics(self, request: web.Request) -> web.Response:
        self.m_rtt_estimate.set(self.rtt_estimator.estimate(self.clock()))
        return m.response(self.metrics)


class _EdgeRestarts(Collector):
    """``cnmt_gateway_edge_restarts_total``, read from the worker's own count when scraped."""

    def __init__(self, edge: EdgeWorker) -> None:
        self.edge = edge

    def collect(self) -> Any:
        yield CounterMetricFamily(
            "cnmt_gateway_edge_restarts",
            "Times the local translation worker died and was started again.",
            value=self.edge.restarts,
        )
