"""The gateway's side of a cloud exchange: send, time, validate the answer.

Every way an exchange can fail is one :class:`CloudFailure` with a short ``reason`` (used as a
metric label) and a detail for the log: ``timeout`` (no complete answer within the deadline),
``connection`` (refused, reset, closed), ``status`` (an HTTP error other than 422) and
``bad_response`` (an answer that is not the cloud protocol). The queueing fields ``wait_s``,
``pending`` and ``batch_size`` are optional (older clouds do not send them) but checked when
present. A 422 is not a fault: the model refused the text, and :class:`CloudRejected` carries
its message to the user.

Nothing the cloud says is believed before it is checked, since the gateway learns from it
(docs/hardening.md, "A cloud that lies"). An answer is ``bad_response`` unless

- its body is at most ``max_reply_bytes`` (read incrementally: a larger one is never held
  whole) and strict JSON (:mod:`cnmt.serving.strict_json`: bounded depth and integers, no
  NaN or Infinity);
- it is not a redirect: redirects are never followed (the user's text goes to the configured
  cloud and nowhere else), a 3xx is refused;
- each field has its type and a physically possible value: token counts within the model's
  limits (``m_tokens`` at most ``max_output_tokens``), ``0 <= exec_s``, ``0 <= wait_s``,
  ``0 <= sent_at - received_at``, and none of ``exec_s``, ``wait_s + exec_s`` and
  ``sent_at - received_at`` longer than the round trip the gateway measured around them
  (up to :data:`CLOCK_SLACK_S` and a relative :data:`CLOCK_RATE_SLACK` for two clocks' ticks).

A refused answer counts against the cloud's breaker like any failed exchange, and its values
reach no model. Error texts (a 422's, a 5xx's) are cut to :data:`MAX_ERROR_CHARS` characters.
"""

from __future__ import annotations

import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiohttp

from cnmt.datasets.link import serialisation_s
from cnmt.runtime.manifest import MAX_TOKENS_LIMIT
from cnmt.schedulers.base import PayloadModel
from cnmt.serving import strict_json
from cnmt.serving.auth import client_ssl_context, read_secret
from cnmt.serving.cloud import SERVICE
from cnmt.serving.protocol import JSON_CONTENT_TYPE, BadAnswer, CloudAnswer, dumps
from cnmt.serving.settings import (
    CLOUD_KEEPALIVE_S,
    DEFAULT_MAX_REPLY_BYTES,
    GatewaySettings,
)

# Durations the cloud measured on its clock may exceed the gateway's round trip around them
# only by what two clocks' resolutions and rates allow.
CLOCK_SLACK_S = 0.001
CLOCK_RATE_SLACK = 0.001
# How much of a cloud's error text reaches the user and the log.
MAX_ERROR_CHARS = 300


class CloudFailure(Exception):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class CloudRejected(Exception):
    """The cloud's model refused the text (HTTP 422); ``message`` is its explanation."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass(frozen=True, kw_only=True)
class CloudReply(CloudAnswer):
    """One successful exchange: the cloud's answer (the protocol's one type,
    :class:`~cnmt.serving.protocol.CloudAnswer`) and what the gateway measured around it."""

    round_trip_s: float
    wire_bytes: int = 0  # the payload: request plus response bodies (PayloadModel)

    @property
    def text(self) -> str:
        """The translation."""
        return self.translation

    def rtt_sample(self, bandwidth_bps: float) -> float:
        """One sample of the rest of the cloud path: the round trip minus what the gateway's
        other models predict, the cloud's wait and execution (``wait_s + exec_s``; the whole
        time in the server, ``sent_at - received_at``, from a cloud that does not report its
        wait), and minus the bodies' serialisation at ``bandwidth_bps`` (the part of the
        exchange that :meth:`cnmt.schedulers.LinkState.transmission_s` adds back per request).
        What remains is the link plus the cloud's own HTTP handling, so the predicted and the
        measured cloud path add up the same parts."""
        serialisation = float(serialisation_s(self.wire_bytes, bandwidth_bps))
        in_cloud = self.server_s if self.wait_s is None else self.wait_s + self.exec_s
        return max(0.0, self.round_trip_s - in_cloud - serialisation)


def parse_reply(
    body: bytes,
    round_trip_s: float,
    request_bytes: int = 0,
    max_output_tokens: int = MAX_TOKENS_LIMIT,
) -> CloudReply:
    """The reply of one exchange that took ``round_trip_s`` on the gateway's clock, checked
    (see the module docstring: :meth:`CloudAnswer.from_json` checks the fields, then the
    durations against the round trip); CloudFailure ``bad_response`` naming the first breach."""
    try:
        data = strict_json.loads(body)
    except strict_json.StrictJsonError as exc:
        raise CloudFailure("bad_response", f"not strict JSON: {exc}") from None
    try:
        answer = CloudAnswer.from_json(data, max_output_tokens)
    except BadAnswer as exc:
        raise CloudFailure("bad_response", str(exc)) from None
    reply = CloudReply(
        **vars(answer),
        round_trip_s=round_trip_s,
        wire_bytes=PayloadModel.measured_bytes(request_bytes, len(body)),
    )
    _check_durations(reply)
    return reply


def _check_durations(reply: CloudReply) -> None:
    """The cloud's own durations are parts of the round trip measured around them (that
    each is non-negative, :meth:`CloudAnswer.from_json` checked)."""
    limit = reply.round_trip_s * (1.0 + CLOCK_RATE_SLACK) + CLOCK_SLACK_S
    parts = {
        "`exec_s`": reply.exec_s,
        "`sent_at - received_at`": reply.server_s,
        "`wait_s + exec_s`": (reply.wait_s or 0.0) + reply.exec_s,
    }
    for name, seconds in parts.items():
        if seconds > limit:
            raise CloudFailure(
                "bad_response",
                f"{name} is {seconds:.6g} s, longer than the whole round trip "
                f"({reply.round_trip_s:.6g} s) the gateway measured",
            )


class CloudClient:
    """Talks to one cloud base URL over a keep-alive connection pool.

    ``timer`` measures round trips (a monotonic clock); ``timeout_s`` bounds a whole exchange;
    an answer larger than ``max_reply_bytes`` or with more than ``max_output_tokens`` output
    tokens is refused (the module docstring lists every check).
    """

    def __init__(
        self,
        base_url: str,
        timeout_s: float,
        timer: Callable[[], float] = time.perf_counter,
        probe_timeout_s: float = 2.0,
        *,
        max_reply_bytes: int = DEFAULT_MAX_REPLY_BYTES,
        max_output_tokens: int = MAX_TOKENS_LIMIT,
        token: str | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout_s = timeout_s
        self.probe_timeout_s = probe_timeout_s
        self.max_reply_bytes = max_reply_bytes
        self.max_output_tokens = max_output_tokens
        self.ssl_context = ssl_context
        # The token goes in every request's headers and nowhere else (no log, no repr).
        self._headers = {} if token is None else {"Authorization": f"Bearer {token}"}
        self.timer = timer
        self._session: aiohttp.ClientSession | None = None

    @classmethod
    def for_gateway(
        cls, base_url: str, settings: GatewaySettings, model: object = None
    ) -> CloudClient:
        """The client a gateway with ``settings`` uses; ``model`` (a loaded Translator of the
        gateway's model) bounds the output tokens an answer may report to its own limit."""
        manifest = getattr(model, "manifest", None)
        limit = getattr(model, "max_output_tokens", None) or getattr(
            manifest, "max_output_tokens", None
        )
        context = None
        if base_url.startswith("https://"):
            context = client_ssl_context(
                settings.cloud_ca_file,
                settings.cloud_client_cert_file,
                settings.cloud_client_key_file,
            )
        return cls(
            base_url,
            settings.cloud_timeout_s,
            probe_timeout_s=settings.probe_timeout_s,
            max_reply_bytes=settings.max_reply_bytes,
            max_output_tokens=limit if isinstance(limit, int) else MAX_TOKENS_LIMIT,
            token=read_secret(
                settings.cloud_token_file, settings.cloud_token_env, "gateway.cloud_token"
            ),
            ssl_context=context,
        )

    async def start(self) -> None:
        # No limit per host: the gateway's max_cloud_exchanges bounds the connections. An idle
        # connection is closed well before the cloud's idle timeout closes it (CLOUD_KEEPALIVE_S
        # < the cloud's idle_timeout_s), so no request goes out on a connection being closed.
        connector = aiohttp.TCPConnector(
            limit=0,
            force_close=False,
            keepalive_timeout=CLOUD_KEEPALIVE_S,
            ssl=self.ssl_context if self.ssl_context is not None else True,
        )
        self._session = aiohttp.ClientSession(connector=connector)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("CloudClient used before start()")
        return self._session

    async def translate(self, text: str) -> CloudReply:
        payload = dumps({"text": text}).encode("utf-8")
        timeout = aiohttp.ClientTimeout(total=self.timeout_s)
        started = self.timer()
        try:
            async with self.session.post(
                f"{self.base_url}/v1/translate",
                data=payload,
                headers={"Content-Type": JSON_CONTENT_TYPE, **self._headers},
                timeout=timeout,
                allow_redirects=False,
            ) as response:
                status = response.status
                if 300 <= status < 400:  # the text goes to the configured cloud only
                    raise CloudFailure(
                        "bad_response", f"HTTP {status}: a redirect (never followed)"
                    )
                body = await strict_json.read_limited(response, self.max_reply_bytes)
        except TimeoutError:
            raise CloudFailure("timeout", f"no answer within {self.timeout_s:g} s") from None
        except strict_json.BodyTooLarge as exc:
            raise CloudFailure("bad_response", f"HTTP {status}: {exc}") from None
        except aiohttp.ClientError as exc:
            raise CloudFailure("connection", _short(f"{type(exc).__name__}: {exc}")) from None
        round_trip = self.timer() - started
        if status == 422:
            raise CloudRejected(_error_message(body))
        if status != 200:
            raise CloudFailure("status", f"HTTP {status}: {_error_message(body)}")
        return parse_reply(body, round_trip, len(payload), self.max_output_tokens)

    async def probe(self) -> bool:
        """True if ``GET /health`` answers as a C-NMT cloud server does."""
        return await self.health() is not None

    async def health(self) -> dict[str, Any] | None:
        """``GET /health``'s answer if it is a C-NMT cloud server's (``status`` ok), else None."""
        timeout = aiohttp.ClientTimeout(total=self.probe_timeout_s)
        try:
            async with self.session.get(
                f"{self.base_url}/health",
                headers=self._headers,
                timeout=timeout,
                allow_redirects=False,
            ) as response:
                if response.status != 200:
                    return None
                data = strict_json.loads(await strict_json.read_limited(response, MAX_HEALTH_BYTES))
        except (TimeoutError, aiohttp.ClientError, strict_json.StrictJsonError):
            return None
        if isinstance(data, dict) and data.get("service") == SERVICE and data.get("status") == "ok":
            return data
        return None


# A /health answer is a few fields.
MAX_HEALTH_BYTES = 64 * 1024


def _short(text: str) -> str:
    return text if len(text) <= MAX_ERROR_CHARS else f"{text[: MAX_ERROR_CHARS - 3]}..."


def _error_message(body: bytes) -> str:
    """A cloud's error text for the user and the log: its ``error`` field, cut short."""
    try:
        data = strict_json.loads(body)
        if isinstance(data, dict) and isinstance(data.get("error"), str):
            return _short(data["error"])
    except strict_json.StrictJsonError:
        pass
    return _short(body[:MAX_ERROR_CHARS].decode("utf-8", "replace"))
