"""The edge gateway: decides per request whether to translate locally or offload to the cloud.

``POST /v1/translate`` with ``{"text": "..."}``. For each request the gateway

1. counts N, the input length in the model's tokens (the model's own tokenizer);
2. asks its decision core (:class:`cnmt.schedulers.core.DecisionCore`, the same object a
   replay drives) for a :class:`~cnmt.schedulers.core.Decision` at ``now`` from the injected
   clock: the core estimates M, snapshots each target's latency model (``edge_latency`` /
   ``cloud_latency``: the profile's fit, or an ``online`` model learning from this gateway's
   own requests), the RTT estimate, the edge's backlog (what is left of the predicted times of
   the local translations running or queued, kept in the core and fed by the worker,
   :mod:`cnmt.schedulers.edge_backlog`) and the cloud's expected wait (this gateway's own
   offloads still ahead at their predicted times, :mod:`cnmt.schedulers.cloud_backlog`, plus
   the ``cloud_wait_estimator``'s estimate of what other clients add), predicts each target's
   total and its parts, and applies the device policy;
3. translates in the local worker (:mod:`cnmt.serving.edge`) or sends the text to the cloud;
4. once the translation is back, the core observes what happened, and nothing before (an
   observation exists only once its request has finished): the device's latency model its
   ``(N, M, seconds)`` (the edge the worker's own execution time, the cloud the ``exec_s`` it
   reports), the length estimator ``(N, M)``, and after a cloud exchange the cloud-wait
   estimator the reported ``wait_s`` (less the own part) and the RTT estimator one sample of
   the rest of the cloud path: the round trip the gateway measured minus the cloud's wait and
   execution and minus the serialisation of the payload the exchange carried, request plus
   response (:class:`cnmt.schedulers.base.PayloadModel`, the definition the prediction uses
   too: a response expected as large as its request). So the predicted cloud path, wait +
   T_cloud + RTT + serialisation, sums the same parts the measured one does. With
   ``learn_from_probes`` the idle health probes (every ``health_interval_s`` while nothing is
   offloaded) are RTT samples too, and a cloud that reports no pending request a cloud-wait
   sample of 0, so neither estimate stays stuck at what the last offload saw.

It answers::

    {"request_id": "tour-1", "translation": "let's go .", "device": "cloud", "decided": "cloud",
     "fallback": null,
     "n_tokens": 5, "m_estimated": 4.9, "m_actual": 3, "latency_ms": 61.2, "exec_ms": 11.0,
     "wait_ms": 0.2, "rtt_estimate_ms": 48.1, "rtt_sample_ms": 49.0,
     "predicted_ms": {"edge": 80.3, "cloud": 62.0}, "predicted_exec_ms": 10.1,
     "edge_backlog_ms": 0.0, "cloud_wait_estimate_ms": 0.3,
     "decision": {"decided": "cloud", "n_tokens": 5, "m_estimated": 4.9, "predicted": {
         "edge": {"total_ms": 80.3, "transmission_ms": 0.0, "wait_ms": 0.0, "exec_ms": 80.3},
         "cloud": {"total_ms": 62.3, "transmission_ms": 51.9, "wait_ms": 0.3, "exec_ms": 10.1}}}}

``decision`` is the core's :class:`~cnmt.schedulers.core.Decision` as
:func:`~cnmt.schedulers.core.decision_fields` writes it (what a log line can show too).

``request_id`` is the client's ``X-Request-Id`` when it is a plain token, else a new one (it is
also the answer's ``X-Request-Id`` header and starts the request's decision line,
:mod:`cnmt.serving.decision_log`). ``decided`` is the policy's choice, ``device`` where the text
was really translated.
``predicted_ms`` are the decision's predicted execution times (the cloud's plus its
transmission), ``predicted_exec_ms`` the prediction for the device that ran it (to compare
with ``exec_ms``), ``wait_ms`` the measured wait before the translation ran (the cloud's
report; locally, the time in the worker's queue).

What the gateway learns is visible: ``GET /v1/models`` shows each device's current and prior
coefficients, the length model, the estimates and the median prediction error of the recent
requests; ``GET /metrics`` exports the coefficients and a histogram of the relative prediction
error per device. With ``state_file`` set it is saved and restored across restarts
(:mod:`cnmt.serving.learned_state`).

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
``GET /v1/models`` (what it has learnt), ``GET /metrics`` (Prometheus text).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import re
import time
import uuid
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from cnmt.errors import CnmtError
from cnmt.runtime.base import Translator
from cnmt.schedulers.base import (
    EDGE,
    Device,
    DevicePolicy,
    LengthEstimator,
    Request,
)
from cnmt.schedulers.core import Decision, DecisionCore, Outcome, decision_fields
from cnmt.schedulers.rtt_estimators import RttEstimator
from cnmt.serving import metrics as m
from cnmt.serving.calibration import IdleCalibrationLoop
from cnmt.serving.cloud_client import CloudClient, CloudFailure, CloudRejected
from cnmt.serving.cloud_health import CloudHealth
from cnmt.serving.decision_log import log_decision
from cnmt.serving.edge import EdgeFailure, EdgeWorker
from cnmt.serving.gateway_metrics import GatewayMetrics
from cnmt.serving.learned_state import Part, StateLock, save
from cnmt.serving.limits import IDLE_TIMEOUT_KEY
from cnmt.serving.logs import escape_controls
from cnmt.serving.model_report import (
    LatencyModels,
    cloud_report,
    latency_report,
    model_warnings,
)
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
# How many recent requests per device /v1/models summarises the prediction error over.
RECENT_ERRORS = 200


# A client's own X-Request-Id is kept when it is this simple (it goes into the log line).
_CLIENT_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")


def request_id(header: str | None) -> str:
    """The request's id: the client's ``X-Request-Id`` when it is a plain token of at most 64
    characters, else a new random one."""
    if header is not None and _CLIENT_REQUEST_ID.fullmatch(header):
        return header
    return uuid.uuid4().hex[:12]


def _ms(seconds: float | None) -> float | None:
    """Milliseconds for an answer; None for no value (and for a non-finite one: strict JSON)."""
    if seconds is None or not math.isfinite(seconds):
        return None
    return round(seconds * 1000.0, 3)


class Gateway:
    """One edge gateway. ``tokenizer`` is a translator loaded in the gateway process, used only
    to count N (cheap); ``edge`` runs the translations. ``clock`` gives ``now`` to the scheduler
    and the RTT estimator; ``timer`` measures durations (both monotonic seconds)."""

    def __init__(
        self,
        *,
        tokenizer: Translator,
        edge: EdgeWorker,
        cloud: CloudClient | Mapping[str, CloudClient | None] | None,
        core: DecisionCore,
        settings: GatewaySettings,
        state_parts: Sequence[Part] = (),
        state_lock: StateLock | None = None,
        devices: dict[Device, str] | None = None,
        clock: Callable[[], float] = time.monotonic,
        timer: Callable[[], float] = time.perf_counter,
    ) -> None:
        names = [c.name for c in core.components.clouds]
        clients = dict(cloud) if isinstance(cloud, Mapping) else {names[0]: cloud}
        if set(clients) - set(names):
            raise ValueError(f"clouds {sorted(set(clients) - set(names))} are not the core's")
        self.tokenizer = tokenizer
        self.edge = edge
        # Every cloud of the core, in its order: its client (None: not attached) and its health.
        self.clouds: dict[str, CloudClient | None] = {n: clients.get(n) for n in names}
        self.core = core
        self.settings = settings
        self.state_parts = list(state_parts)
        self.state_lock = state_lock  # held until close(): one gateway per state file
        self.devices = {EDGE: "edge", **{n: n for n in names}}
        self.devices.update({str(k): v for k, v in (devices or {}).items()})
        self.clock = clock
        self.timer = timer
        edge.use_backlog(core.edge_backlog, clock)  # the core's, in the core's time
        self.pending = 0
        self.ready = False
        # |predicted - observed| / observed of the last requests per device, for /v1/models
        self.recent_errors: dict[str, deque[float]] = {
            target: deque(maxlen=RECENT_ERRORS) for target in (EDGE, *names)
        }
        self._saver: asyncio.Task[None] | None = None
        self._healthy: dict[str, bool] = {}  # what each cloud's breaker last reported
        self.calibration: IdleCalibrationLoop | None = None
        self._init_metrics()
        self.healths = {name: self._new_cloud_health(name) for name in names}

    @property
    def first_cloud(self) -> str:
        return next(iter(self.clouds))

    @property
    def cloud(self) -> CloudClient | None:
        """The first cloud's client (the only one of a gateway with one cloud)."""
        return self.clouds[self.first_cloud]

    @property
    def cloud_health(self) -> CloudHealth:
        return self.healths[self.first_cloud]

    # The core's components, by what they are for (read-only views).
    @property
    def length_estimator(self) -> LengthEstimator:
        assert self.core.length is not None
        return self.core.length

    @property
    def device_policy(self) -> DevicePolicy:
        return self.core.policy

    @device_policy.setter
    def device_policy(self, policy: DevicePolicy) -> None:
        self.core.use_policy(policy)

    @property
    def rtt_estimator(self) -> RttEstimator:
        return self.core.clouds[self.first_cloud].rtt  # type: ignore[return-value]

    @property
    def cloud_wait_estimator(self) -> RttEstimator:
        return self.core.clouds[self.first_cloud].wait  # type: ignore[return-value]

    @property
    def latency(self) -> LatencyModels:
        """Each target's latency model, by name; assigning one replaces it in the core."""
        return LatencyModels(self.core)

    def _new_cloud_health(self, name: str) -> CloudHealth:
        settings = self.settings

        async def probe() -> bool:
            client = self.clouds[name]
            if client is None:
                return False
            started = self.timer()
            health = await client.health()
            if health is not None and settings.learn_from_probes:
                # A health answer costs the cloud next to nothing: its round trip is the link's;
                # an empty cloud: a request sent now waits 0.
                at, sample = self.clock(), self.timer() - started
                self.core.observe_probe(name, sample, at, health.get("pending") == 0)
                self._rtt_observed(name, sample, at)
            return health is not None

        def on_change(healthy: bool, cause: str) -> None:
            self._healthy[name] = healthy
            self._health_changed()
            if not healthy:
                self.metrics.cloud_unhealthy.labels(cause=cause).inc()

        health = CloudHealth(
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
        return health

    def _health_changed(self) -> None:
        """``cnmt_gateway_cloud_healthy``: 1 while every attached cloud is healthy."""
        attached = [n for n, c in self.clouds.items() if c is not None]
        healthy = bool(attached) and all(self._healthy.get(n, True) for n in attached)
        self.metrics.cloud_healthy.set(1.0 if healthy else 0.0)

    def available(self, name: str) -> bool:
        """Cloud ``name`` is attached and may be tried: its breaker is closed or half-open."""
        return self.clouds[name] is not None and self.healths[name].available

    @property
    def cloud_healthy(self) -> bool:
        """The first cloud is attached and may be tried."""
        return self.available(self.first_cloud)

    # --- metrics -------------------------------------------------------------------------------

    def _init_metrics(self) -> None:
        self.metrics = GatewayMetrics(
            self.core,
            self.edge,
            policy_owner=self,
            cloud_exchanges=lambda: sum(
                len(h.in_flight) for h in getattr(self, "healths", {}).values()
            ),
        )
        self.metrics.rtt_estimate.set(self.core.link(self.first_cloud, self.clock()).rtt_s)
        self.metrics.cloud_healthy.set(
            1.0 if any(c is not None for c in self.clouds.values()) else 0.0
        )

    # --- lifecycle -----------------------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application(middlewares=[json_errors])
        app[IDLE_TIMEOUT_KEY] = self.settings.idle_timeout_s
        app.router.add_post("/v1/translate", self.handle_translate)
        app.router.add_get("/health", self.handle_health)
        app.router.add_get("/ready", self.handle_ready)
        app.router.add_get("/v1/models", self.handle_models)
        app.router.add_get("/metrics", self.handle_metrics)
        app.on_startup.append(lambda _app: self.start())
        app.on_cleanup.append(lambda _app: self.close())
        return app

    async def start(self) -> None:
        """Start the local worker and the cloud client; probe the cloud once."""
        if not self.edge.started:
            await self.edge.start()
        for name, client in self.clouds.items():
            if client is None:
                continue
            await client.start()
            if not await client.probe():
                self.healths[name].mark_unhealthy(
                    f"the cloud {name} did not answer its health probe at startup", cause="probe"
                )
            self.healths[name].start()
        if self.settings.state_file is not None and self.state_parts:
            self._saver = asyncio.get_running_loop().create_task(self._save_periodically())
        self.calibration = IdleCalibrationLoop.start_for(self)  # None unless calibrate_idle_s
        self.ready = True

    async def close(self) -> None:
        self.ready = False
        if self.calibration is not None:
            await self.calibration.close()
        if self._saver is not None:
            self._saver.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._saver
            self._saver = None
        self.save_state()
        if self.state_lock is not None:
            self.state_lock.release()
        for name, client in self.clouds.items():
            await self.healths[name].close()
            if client is not None:
                await client.close()
        await self.edge.close()

    def save_state(self) -> None:
        """Write what the gateway has learnt to ``state_file`` (if set); a failure is logged,
        never fatal: serving goes on with what is in memory."""
        path = self.settings.state_file
        if path is None or not self.state_parts:
            return
        try:
            save(path, self.state_parts)
        except CnmtError as exc:
            log.error("could not save the learnt state: %s", exc)

    async def _save_periodically(self) -> None:
        while True:
            await asyncio.sleep(self.settings.state_save_s)
            self.save_state()

    def attach_cloud(self, cloud: CloudClient) -> None:
        """Set the cloud once its address is known (before :meth:`start`)."""
        if self.ready:
            raise RuntimeError("attach_cloud() must come before start()")
        self.attach_clouds({self.first_cloud: cloud})

    def attach_clouds(self, clouds: Mapping[str, CloudClient]) -> None:
        """Set the clouds, by name, once their addresses are known (before :meth:`start`)."""
        if self.ready:
            raise RuntimeError("attach_clouds() must come before start()")
        for name, client in clouds.items():
            if name not in self.clouds:
                raise ValueError(f"no cloud {name!r}; the clouds: {', '.join(self.clouds)}")
            self.clouds[name] = client
            self.healths[name] = self._new_cloud_health(name)
            self._healthy.pop(name, None)
        self._health_changed()

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
            self.metrics.pending.set(self.pending)
            try:
                text = parse_text(body)
                answer = await self.translate(
                    text, started, request_id(request.headers.get("X-Request-Id"))
                )
            finally:
                self.pending -= 1
                self.metrics.pending.set(self.pending)
        except RequestError as exc:
            self.metrics.rejected.labels(status=str(exc.status)).inc()
            return error_response(exc)
        except Exception as exc:  # a bug, not the user's fault: say so, keep serving
            log.exception("request failed")
            self.metrics.rejected.labels(status="500").inc()
            message = escape_controls(f"internal error: {type(exc).__name__}: {exc}")
            return error_response(RequestError(500, message))
        log_decision(answer)
        return json_response(answer, headers={"X-Request-Id": answer["request_id"]})

    async def translate(
        self, text: str, started: float | None = None, request_id: str | None = None
    ) -> dict[str, Any]:
        """Decide, translate and account for one text; RequestError for what the user must fix."""
        if started is None:
            started = self.timer()
        if request_id is None:
            request_id = uuid.uuid4().hex[:12]
        try:
            n_tokens = self.tokenizer.count_source_tokens(text)
        except CnmtError as exc:
            raise RequestError(422, f"the model cannot tokenize this text: {exc}") from None
        check_length(n_tokens, self.tokenizer.max_source_tokens)
        request_bytes = len(dumps({"text": text}).encode("utf-8"))  # what CloudClient sends
        request = Request(
            n_tokens,
            payload_bytes=self.core.payload.expected_bytes(request_bytes),
            text=text,  # for length estimators that read the source (`features`)
        )
        try:
            decision = self.core.decide(request, self.clock())
        except (CnmtError, ValueError) as exc:
            log.error("scheduler failed: %s", exc)
            raise RequestError(500, f"the gateway's scheduler failed: {exc}") from None
        decided = decision.target
        self.metrics.decisions.labels(device=decided).inc()
        try:
            device, fallback, outcome = await self._run(text, decision)
        except RequestError:
            self.core.forget(decision)
            raise
        self.core.observe(decision, outcome.outcome)  # learn once it has finished
        if outcome.rtt_sample_s is not None:
            self._rtt_observed(device, outcome.rtt_sample_s, outcome.at)

        latency = self.timer() - started
        m_actual = outcome.m_tokens
        m_estimated = decision.m_estimate
        predicted = decision.predicted
        exec_predicted = predicted[device].exec_s
        if outcome.exec_s > 0:
            error = (exec_predicted - outcome.exec_s) / outcome.exec_s
            self.metrics.prediction_error.labels(device=device).observe(error)
            self.recent_errors[device].append(abs(error))
        if fallback is not None:
            self.metrics.fallbacks.labels(reason=fallback).inc()
        self.metrics.requests.labels(device=device).inc()
        self.metrics.latency.labels(device=device).observe(latency)
        self.metrics.length_error.observe(m_estimated - m_actual)
        self.metrics.length_abs_error.inc(abs(m_estimated - m_actual))
        # The cloud the fields of one cloud describe: the one that ran it, else the decided
        # one, else the first.
        cloud_name = next((t for t in (device, decided) if t in self.clouds), self.first_cloud)
        cloud = predicted[cloud_name]
        edge = predicted[EDGE]
        return {
            "request_id": request_id,
            "translation": outcome.text,
            "device": device,
            "decided": decided,
            "fallback": fallback,
            "n_tokens": n_tokens,
            "m_estimated": round(m_estimated, 3),
            "m_actual": m_actual,
            "latency_ms": _ms(latency),
            "exec_ms": _ms(outcome.exec_s),
            "wait_ms": _ms(outcome.wait_s),
            "rtt_estimate_ms": _ms(cloud.rtt_s),
            "rtt_sample_ms": _ms(outcome.rtt_sample_s),
            "predicted_ms": {
                target: _ms(p.exec_s + p.transmission_s) for target, p in predicted.items()
            },
            "predicted_exec_ms": _ms(exec_predicted),
            "edge_backlog_ms": _ms(edge.wait_s),
            "cloud_wait_estimate_ms": _ms(cloud.wait_s),
            "decision": decision_fields(decision),
        }

    def _healthy_clouds(self, decision: Decision) -> list[str]:
        """The clouds that may be tried now, the least predicted total first."""
        names = [n for n in self.clouds if self.available(n)]
        return sorted(names, key=lambda n: decision.predicted[n].total_s)

    async def _run(self, text: str, decision: Decision) -> tuple[str, str | None, _Finished]:
        """Run the decision where it can run: (target, fallback reason or None, outcome). An
        offload that cannot be tried or fails runs locally; a local translation whose worker
        died goes to the healthy cloud with the least predicted total."""
        decided = decision.target
        device, fallback = decided, None
        outcome: _Finished | None = None
        if decided != EDGE:
            if not self.available(decided):
                device = EDGE
                fallback = "cloud_unhealthy" if self.clouds[decided] else "no_cloud"
            else:
                try:
                    outcome = await self._offload(text, decision, decided)
                except CloudFailure as exc:
                    device, fallback = EDGE, exc.reason
        if device == EDGE:
            try:
                outcome = await self._translate_locally(text, decision)
            except CnmtError as exc:
                healthy = self._healthy_clouds(decision)
                if isinstance(exc, EdgeFailure) and decided == EDGE and healthy:
                    log.warning("local translation failed (%s); offloading instead", exc)
                    try:
                        outcome = await self._offload(text, decision, healthy[0])
                    except CloudFailure as cloud_exc:
                        raise RequestError(
                            503,
                            f"both devices failed: local worker ({exc}); cloud ({cloud_exc})",
                            headers={"Retry-After": str(self.settings.retry_after_s)},
                        ) from None
                    device, fallback = healthy[0], "edge_failure"
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
        assert outcome is not None
        return device, fallback, outcome

    async def _translate_locally(self, text: str, decision: Decision) -> _Finished:
        """One local translation, queued in the worker at the decision's predicted time."""
        queued = self.timer()
        local = await self.edge.translate(text, decision.predicted[EDGE].exec_s)
        waited = max(0.0, self.timer() - queued - local.seconds)
        return _Finished(
            local.text, Outcome(EDGE, self.clock(), local.output_tokens, local.seconds, waited)
        )

    async def _offload(self, text: str, decision: Decision, target: str) -> _Finished:
        """One exchange with cloud ``target``; a failure marks that cloud unhealthy
        (CloudFailure), and CloudRejected (the model refused the text) becomes a 422. The RTT
        sample subtracts the payload the exchange really carried
        (:class:`~cnmt.schedulers.base.PayloadModel`)."""
        client = self.clouds[target]
        assert client is not None
        try:
            with self.healths[target].exchange():  # CloudFailure if busy, unhealthy or failing
                # Only an admitted exchange joins the cloud's queue.
                self.core.offloaded(decision, target, self.clock())
                reply = await client.translate(text)
        except CloudRejected as exc:
            raise RequestError(
                422, f"the model cannot translate this text: {exc.message}"
            ) from None
        sample = reply.rtt_sample(self.settings.bandwidth_bps)
        outcome = Outcome(target, self.clock(), reply.m_tokens, reply.exec_s, reply.wait_s, sample)
        return _Finished(reply.text, outcome)

    def _rtt_observed(self, target: str, sample: float, at: float) -> None:
        self.metrics.rtt_sample.observe(sample)
        if target == self.first_cloud:
            self.metrics.rtt_estimate.set(self.core.link(target, at).rtt_s)

    async def handle_health(self, request: web.Request) -> web.Response:
        def state(name: str) -> str:
            if self.clouds[name] is None:
                return "none"
            # a half-open breaker is not healthy yet
            return "healthy" if self.healths[name].healthy else "unhealthy"

        answer = {
            "status": "ok",
            "service": SERVICE,
            "cloud": state(self.first_cloud),
            "pending": self.pending,
        }
        if len(self.clouds) > 1:
            answer["clouds"] = {name: state(name) for name in self.clouds}
        return json_response(answer)

    async def handle_ready(self, request: web.Request) -> web.Response:
        if not self.ready:
            return json_response(
                {"ready": False, "error": "the local worker is starting"}, status=503
            )
        if not self.edge.up:
            return json_response(
                {"ready": False, "error": f"the local worker is down: {self.edge.down_reason}"},
                status=503,
            )
        return json_response({"ready": True})

    def models(self) -> dict[str, Any]:
        """What the gateway decides with now and how well it has predicted (``/v1/models``)."""
        now = self.clock()
        state = self.core.state(now)
        latency = {}
        warnings: list[str] = []
        for device, estimator in self.latency.items():
            warnings += model_warnings(
                device, estimator.current(), self.tokenizer.max_source_tokens
            )
            latency[device] = latency_report(
                estimator, self.devices[device], self.recent_errors[device]
            )
        length: dict[str, Any] = {
            "component": self.length_estimator.name,
            "learns": self.length_estimator.learns,
        }
        for key in ("gamma", "delta"):  # the linear estimators' M = gamma*N + delta
            value = getattr(self.length_estimator, key, None)
            if isinstance(value, int | float):
                length[key] = round(float(value), 6)
        exploration = getattr(self.device_policy, "exploration", None)
        return {
            "latency": latency,
            "length": length,
            "exploration": exploration.as_dict() if exploration is not None else None,
            "calibrations": self.calibration.runs_by_target if self.calibration else None,
            "rtt_estimate_ms": _ms(state.link.rtt_s),
            "cloud_wait_estimate_ms": _ms(state.cloud_wait_s),
            # Each cloud's link, wait and health (the two keys above are the first cloud's).
            "clouds": {
                name: cloud_report(
                    self.core, name, now, self.devices[name], self.healths[name].healthy, client
                )
                for name, client in self.clouds.items()
            },
            "edge_backlog_ms": _ms(state.edge_backlog_s),
            "state_file": self.settings.state_file,
            "warnings": warnings,
        }

    async def handle_models(self, request: web.Request) -> web.Response:
        return json_response(self.models())

    async def handle_metrics(self, request: web.Request) -> web.Response:
        now = self.clock()
        self.metrics.rtt_estimate.set(self.core.link(self.first_cloud, now).rtt_s)
        self.metrics.cloud_wait.set(self.core.cloud_wait_s(self.first_cloud, now))
        return m.response(self.metrics.registry)


@dataclass(frozen=True)
class _Finished:
    """A finished translation, wherever it ran: its text and what the core learns from."""

    text: str
    outcome: Outcome

    @property
    def m_tokens(self) -> int:
        return self.outcome.m_tokens

    @property
    def exec_s(self) -> float:
        return self.outcome.exec_s

    @property
    def wait_s(self) -> float | None:
        return self.outcome.wait_s

    @property
    def rtt_sample_s(self) -> float | None:
        return self.outcome.rtt_sample_s

    @property
    def at(self) -> float:
        return self.outcome.at
