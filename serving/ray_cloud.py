"""The cloud translation service on Ray Serve (``cloud.engine: ray``).

One Ray Serve deployment, :class:`TranslationReplica`, serves the cloud protocol of
:mod:`cnmt.serving.cloud` over Ray Serve's HTTP proxy, so a gateway talks to it exactly as to
our aiohttp server: ``POST /v1/translate`` answers ``translation``, ``n_tokens``, ``m_tokens``,
``exec_s``, ``received_at``, ``sent_at``, ``wait_s``, ``pending`` and ``batch_size`` (the same
:class:`cnmt.serving.protocol.CloudAnswer` the aiohttp cloud writes), errors are
the same JSON ``{"error": ...}`` with the same 4xx messages, and ``GET /health`` / ``GET /ready``
answer as a C-NMT cloud does (Ray's proxy adds its own ``/-/healthz`` and ``/-/routes``).

Ray does the scaling work: replicas (fixed or autoscaled), their placement and CPU/GPU
reservations, health checks and restarts, routing, backpressure (503 past ``max_pending``
queued requests), and dynamic batching with ``@serve.batch``. Each replica loads one translator
and translates each batch with the family's batched decode (``translate_batch``), which pads and
masks so that a sentence's output never depends on the sentences beside it.

In a replica, ``received_at`` is when the request reached the replica (time spent in Ray's proxy
and router counts as network for the gateway's RTT sample), ``wait_s`` the time from there to the
start of the batch it ran in, ``pending`` the requests inside this replica (waiting for a batch
or running) when it arrived, and ``batch_size`` the sentences in its batch.

This is the only module that imports Ray: the gateway and the core never need it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import signal
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

import ray
from ray import serve
from starlette.requests import Request
from starlette.responses import Response

from cnmt.errors import CnmtError, CnmtRuntimeError
from cnmt.runtime.base import Translation
from cnmt.serving.auth import OPEN_PATHS, authorized, read_secret
from cnmt.serving.cloud import SERVICE
from cnmt.serving.protocol import (
    JSON_CONTENT_TYPE,
    CloudAnswer,
    RequestError,
    body_too_large,
    check_length,
    dumps,
    parse_text,
)
from cnmt.serving.ray_settings import RayCloudSettings
from cnmt.serving.settings import CloudSettings

log = logging.getLogger("cnmt.serving.ray_cloud")

DEPLOYMENT = "translator"
ROUTES = "POST /v1/translate, GET /health, GET /ready"


@dataclass(frozen=True)
class _Job:
    text: str
    arrived: float  # time.perf_counter() when the request reached the replica


@dataclass(frozen=True)
class _Done:
    translation: Translation | None
    error: RequestError | None
    started: float  # time.perf_counter() when its model run started
    batch_size: int


def _json(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(dumps(data), status_code=status, headers=headers, media_type=JSON_CONTENT_TYPE)


def _error(exc: RequestError) -> Response:
    return _json({"error": exc.message}, exc.status, exc.headers)


async def _read_body(request: Request, max_body_bytes: int) -> bytes:
    """The body, refusing (413) one over ``max_body_bytes`` without reading it all (as
    :func:`cnmt.serving.protocol.read_body` does for aiohttp)."""
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > max_body_bytes:
        raise body_too_large(max_body_bytes)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_body_bytes:
            raise body_too_large(max_body_bytes)
        chunks.append(chunk)
    return b"".join(chunks)


def _model_error(exc: Exception) -> RequestError:
    if isinstance(exc, CnmtError):
        return RequestError(422, f"the model cannot translate this text: {exc}")
    log.error("translation failed", exc_info=exc)
    return RequestError(500, f"translation failed: {type(exc).__name__}: {exc}")


@serve.deployment(name=DEPLOYMENT)
class TranslationReplica:
    """One replica: one loaded translator, requests batched by ``@serve.batch``.

    The batch size and wait come as the deployment's ``user_config`` (Ray's way to retune
    replicas without restarting them), applied in :meth:`reconfigure`.

    ``@serve.batch`` gathers the requests that arrive within ``batch_wait_timeout_s`` of each
    other, but it forms its next batch when that window closes even while the model still runs
    the previous one: under a steady stream (many gateways, each request a few ms after the
    last) every batch it forms holds one or two sentences and waits behind the model, and
    batching gains nothing (measured: open loop at twice one replica's unbatched capacity, all
    80 batches of size 1). So its batches are not run as they come: they join one queue, and
    the model, whenever it is free, runs everything waiting there, up to ``max_batch_size``
    sentences, as one batch. Ray's window still decides how long a request waits for company
    while the model is idle.
    """

    def __init__(
        self,
        model: str,
        providers: Sequence[str],
        threads: int,
        max_body_bytes: int,
        token: str | None = None,
    ) -> None:
        from cnmt.runtime import load_translator

        self._token = token  # the cloud's bearer token (cnmt.serving.auth), None: open

        self._translator = load_translator(model, providers=list(providers), threads=threads)
        self._max_body_bytes = max_body_bytes
        # The model runs on one thread of its own: ONNX Runtime releases the GIL while a graph
        # runs, so the replica's event loop keeps accepting requests and queueing the next
        # batch; one batch runs at a time, so the translator is never used concurrently.
        self._model_thread = ThreadPoolExecutor(1, thread_name_prefix="cnmt-model")
        self._waiting: list[tuple[_Job, asyncio.Future[_Done]]] = []
        self._model_busy = False
        self._runner: asyncio.Task[None] | None = None  # held: the loop keeps only weak refs
        self._max_batch_size = 1
        self._inside = 0  # translation requests in this replica: Ray reports no per-request count

    def reconfigure(self, config: dict[str, Any]) -> None:
        self._max_batch_size = int(config["max_batch_size"])
        self._gather.set_max_batch_size(self._max_batch_size)
        self._gather.set_batch_wait_timeout_s(float(config["batch_wait_timeout_s"]))

    async def __call__(self, request: Request) -> Response:
        path = request.url.path.rstrip("/") or "/"
        routes = {"/v1/translate": "POST", "/health": "GET", "/ready": "GET"}
        if path not in routes:
            return _json({"error": f"no such endpoint {path!r}; this cloud serves {ROUTES}"}, 404)
        if request.method != routes[path]:
            return _json(
                {"error": f"{path} takes {routes[path]}, not {request.method}"},
                405,
                {"Allow": routes[path]},
            )
        if self._token is not None and path not in OPEN_PATHS:
            if not authorized(request.headers.get("authorization"), (self._token,)):
                return _json(
                    {
                        "error": "missing or wrong credentials; send `Authorization: Bearer "
                        "<token>` with the cloud's token"
                    },
                    401,
                    {"WWW-Authenticate": 'Bearer realm="the cloud"'},
                )
        if path == "/v1/translate":
            return await self._translate(request)
        # A replica receives traffic only once its constructor (the model load) has finished,
        # so alive and ready are the same here.
        return _json({"status": "ok", "service": SERVICE, "pending": self._inside})

    async def _translate(self, request: Request) -> Response:
        received_at = time.time()
        arrived = time.perf_counter()
        pending = self._inside
        self._inside += 1
        try:
            text = parse_text(await _read_body(request, self._max_body_bytes))
            try:
                n_tokens = self._translator.count_source_tokens(text)
            except CnmtError as exc:
                raise _model_error(exc) from None
            check_length(n_tokens, self._translator.max_source_tokens)
            queued: asyncio.Future[_Done] = await self._gather(_Job(text, arrived))
            done = await queued
            if done.error is not None:
                raise done.error
        except RequestError as exc:
            return _error(exc)
        finally:
            self._inside -= 1
        result = done.translation
        assert result is not None
        answer = CloudAnswer.of(
            result,
            received_at,
            time.time(),
            wait_s=max(0.0, done.started - arrived),
            pending=pending,
            batch_size=done.batch_size,
        )
        return _json(answer.to_json())

    # The defaults are replaced by the user_config in reconfigure() before any request.
    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.005)
    async def _gather(self, jobs: list[_Job]) -> list[asyncio.Future[_Done]]:
        """Queue a batch Ray formed; each request then awaits its own result."""
        loop = asyncio.get_running_loop()
        futures: list[asyncio.Future[_Done]] = [loop.create_future() for _ in jobs]
        self._waiting.extend(zip(jobs, futures, strict=True))
        if not self._model_busy:
            self._model_busy = True
            self._runner = loop.create_task(self._run_waiting())
        return futures

    async def _run_waiting(self) -> None:
        """Run what waits, up to ``max_batch_size`` sentences a batch, until nothing does."""
        loop = asyncio.get_running_loop()
        try:
            while self._waiting:
                taken = self._waiting[: self._max_batch_size]
                del self._waiting[: self._max_batch_size]
                jobs = [job for job, _ in taken]
                try:
                    results = await loop.run_in_executor(
                        self._model_thread, self._translate_jobs, jobs
                    )
                except Exception as exc:  # the executor itself failed: fail these, go on
                    failed = _Done(None, _model_error(exc), time.perf_counter(), len(jobs))
                    results = [failed] * len(jobs)
                for (_, future), result in zip(taken, results, strict=True):
                    if not future.done():  # a request whose client left was cancelled
                        future.set_result(result)
        finally:
            self._model_busy = False

    def _translate_jobs(self, jobs: list[_Job]) -> list[_Done]:
        started = time.perf_counter()
        try:
            results = self._translator.translate_batch([job.text for job in jobs])
        except Exception as exc:
            if len(jobs) == 1:
                return [_Done(None, _model_error(exc), started, 1)]
            # One sentence the model refuses must not fail the others beside it in the batch
            # (our aiohttp server would have refused only that one): each is run alone.
            return [self._translate_jobs([job])[0] for job in jobs]
        return [_Done(r, None, started, len(jobs)) for r in results]


def deployment_app(settings: CloudSettings) -> Any:
    """The Ray Serve application a cloud config describes (not started)."""
    cfg = ray_settings(settings)
    options: dict[str, Any] = dict(
        ray_actor_options={
            "num_cpus": cfg.num_cpus_per_replica,
            "num_gpus": cfg.num_gpus_per_replica,
        },
        max_ongoing_requests=cfg.max_ongoing_requests,
        max_queued_requests=settings.max_pending,
        health_check_period_s=cfg.health_check_period_s,
        health_check_timeout_s=cfg.health_check_timeout_s,
        user_config={
            "max_batch_size": cfg.max_batch_size,
            "batch_wait_timeout_s": cfg.batch_wait_timeout_s,
        },
    )
    if cfg.autoscaling is None:
        options["num_replicas"] = cfg.num_replicas
    else:
        options["autoscaling_config"] = {
            "min_replicas": cfg.autoscaling.min_replicas,
            "max_replicas": cfg.autoscaling.max_replicas,
            "target_ongoing_requests": cfg.autoscaling.target_ongoing_requests,
        }
    # The token travels to the replicas as an init argument (they may run on other nodes,
    # where the driver's token file is not).
    token = read_secret(settings.token_file, settings.token_env, "cloud.token")
    return TranslationReplica.options(**options).bind(
        settings.model, list(settings.providers), settings.threads, settings.max_body_bytes, token
    )


def ray_settings(settings: CloudSettings) -> RayCloudSettings:
    if settings.engine != "ray" or settings.ray is None:
        raise ValueError("not a Ray cloud: set cloud.engine: ray")
    return settings.ray


def free_port(host: str) -> int:
    """A port free on ``host`` now: Ray Serve's proxy cannot bind port 0 and report it."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def start(settings: CloudSettings, after_init: Callable[[], None] = lambda: None) -> int:
    """Start (or join) Ray, start Serve's HTTP proxy on the cloud's host and port, deploy the
    translator and wait until its replicas are up; returns the HTTP port. ``after_init`` runs
    once Ray is initialised (which installs Ray's own signal handlers in this process)."""
    cfg = ray_settings(settings)
    port = settings.port or free_port(settings.host)
    if cfg.local:
        ray.init(
            # "local": always a new instance of our own, never a cluster that `ray start` left
            # on this machine (which a plain ray.init() would join).
            address="local",
            num_cpus=cfg.num_cpus,
            include_dashboard=False,
            logging_level=logging.WARNING,
        )
    else:
        try:
            ray.init(address=cfg.address, logging_level=logging.WARNING)
        except (ConnectionError, RuntimeError, TimeoutError) as exc:
            hint = ""
            if cfg.address != "auto" and "RAY_AUTH_MODE" not in os.environ:
                # Ray 2.60 finds a cluster's token by itself only with address auto.
                hint = (
                    "; if the cluster uses token authentication (the default of `ray start "
                    "--head`), set RAY_AUTH_MODE=token and give its token (~/.ray/auth_token "
                    "or RAY_AUTH_TOKEN)"
                )
            raise CnmtRuntimeError(
                f"cloud.ray.address {cfg.address!r}: cannot join a Ray cluster there ({exc}); "
                "start one (`ray start --head`) or set cloud.ray.address: null for a local "
                f"Ray instance{hint}"
            ) from None
    after_init()
    logging.getLogger("ray.serve").setLevel(logging.WARNING)  # its INFO lines are chatter here
    serve.start(
        http_options={"host": settings.host, "port": port},
        logging_config={"log_level": "WARNING"},
    )
    serve.run(
        deployment_app(settings),
        name=cfg.app_name,
        route_prefix="/",
        logging_config={"log_level": "WARNING"},
    )
    return port


def stop(settings: CloudSettings) -> None:
    """Undo :func:`start`: a local Ray instance is shut down whole; on a shared cluster only our
    application is deleted and this driver disconnects."""
    if not ray.is_initialized():
        return
    cfg = ray_settings(settings)
    try:
        if cfg.local:
            serve.shutdown()
        else:
            serve.delete(cfg.app_name)
    finally:
        ray.shutdown()


class _Stop(Exception):
    """SIGTERM or SIGINT arrived while Ray was still starting."""


def process_main(settings: CloudSettings, conn: Connection) -> None:
    """The cloud process of `cnmt launch` (see :class:`cnmt.serving.cloud_process.CloudProcess`):
    start, report ``("ready", port)`` or ``("error", why)``, serve until SIGTERM/SIGINT or until
    the launching process is gone, then stop and leave nothing running."""
    logging.basicConfig(level=logging.WARNING, format="cloud: %(levelname)s %(name)s: %(message)s")
    stopping = threading.Event()
    starting = True

    def on_signal(signum: int, frame: Any) -> None:
        stopping.set()
        if starting:
            raise _Stop

    def handle_signals() -> None:
        # Ray's core worker replaces SIGTERM's handler with one that only logs and exits,
        # which would skip the clean shutdown below: ours go (back) on top.
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, on_signal)

    handle_signals()
    parent = os.getppid()
    if os.path.isdir(settings.model):  # the replicas do not run in this working directory
        settings = dataclasses.replace(settings, model=os.path.abspath(settings.model))
    # Ray puts the driver's working directory first on every worker's sys.path: started in a
    # source checkout, the replicas would import its cnmt/ folder instead of the installed
    # package (whose subpackages live elsewhere in the checkout). An empty directory is safe.
    neutral = tempfile.mkdtemp(prefix="cnmt-ray-")
    os.chdir(neutral)
    try:
        try:
            if ray_settings(settings).local:
                check_model(settings)
            port = start(settings, after_init=handle_signals)
            starting = False
        except _Stop:
            stop(settings)
            return
        except Exception as exc:
            message = f"cloud (Ray Serve): {type(exc).__name__}: {exc}"
            if isinstance(exc, CnmtError):
                message = f"cloud: {exc}"
            conn.send(("error", message))
            stop(settings)
            return
        conn.send(("ready", port))
        while not stopping.wait(1.0):
            if os.getppid() != parent:
                log.warning("the launching process exited; stopping the Ray cloud")
                break
        stop(settings)
    finally:
        os.rmdir(neutral)


def check_model(settings: CloudSettings) -> None:
    """Open the model once here, before any replica does: a missing or broken model fails in
    seconds with our message (Ray would retry the replicas' constructors many times), and a
    built-in model is exported into the cache once instead of by every replica at the same time.
    """
    from cnmt.runtime import load_translator

    load_translator(settings.model, providers=list(settings.providers), threads=settings.threads)
