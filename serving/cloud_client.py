"""The gateway's side of a cloud exchange: send, time, validate the answer.

Every way an exchange can fail is one :class:`CloudFailure` with a short ``reason`` (used as a
metric label) and a detail for the log: ``timeout`` (no complete answer within the deadline),
``connection`` (refused, reset, closed), ``status`` (an HTTP error other than 422) and
``bad_response`` (an answer that is not the cloud protocol: not JSON, missing fields, wrong
types, timestamps that go backwards). The queueing fields ``wait_s``, ``pending`` and
``batch_size`` are optional (older clouds do not send them) but checked when present. A 422 is
not a fault: the model refused the text, and :class:`CloudRejected` carries its message to the
user.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiohttp

from cnmt.datasets.link import serialisation_s
from cnmt.schedulers.base import PayloadModel
from cnmt.serving.cloud import SERVICE
from cnmt.serving.protocol import JSON_CONTENT_TYPE, dumps
from cnmt.serving.settings import CLOUD_KEEPALIVE_S


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


@dataclass(frozen=True)
class CloudReply:
    """One successful exchange: the cloud's answer and the round trip the gateway measured."""

    text: str
    n_tokens: int
    m_tokens: int
    exec_s: float
    received_at: float
    sent_at: float
    round_trip_s: float
    wire_bytes: int = 0  # the payload: request plus response bodies (PayloadModel)
    # Queueing in the cloud, when it reports it (optional fields of the protocol).
    wait_s: float | None = None
    pending: int | None = None
    batch_size: int | None = None

    @property
    def server_s(self) -> float:
        """Time the request spent inside the cloud server, by the cloud's own clock."""
        return self.sent_at - self.received_at

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


def _number(data: dict[str, Any], key: str) -> float:
    value = data.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise CloudFailure("bad_response", f"`{key}` is {value!r}, expected a finite number")
    return float(value)


def _count(data: dict[str, Any], key: str) -> int:
    value = data.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise CloudFailure("bad_response", f"`{key}` is {value!r}, expected a token count")
    return value


def _optional_seconds(data: dict[str, Any], key: str) -> float | None:
    if key not in data:
        return None
    value = _number(data, key)
    if value < 0:
        raise CloudFailure("bad_response", f"`{key}` is {value!r}, expected seconds >= 0")
    return value


def _optional_count(data: dict[str, Any], key: str, minimum: int) -> int | None:
    if key not in data:
        return None
    value = _count(data, key)
    if value < minimum:
        raise CloudFailure("bad_response", f"`{key}` is {value!r}, expected at least {minimum}")
    return value


def parse_reply(body: bytes, round_trip_s: float, request_bytes: int = 0) -> CloudReply:
    try:
        data = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CloudFailure("bad_response", f"not JSON ({exc}): {body[:80]!r}") from None
    if not isinstance(data, dict):
        raise CloudFailure("bad_response", f"expected a JSON object, got {type(data).__name__}")
    text = data.get("translation")
    if not isinstance(text, str):
        raise CloudFailure("bad_response", f"`translation` is {text!r}, expected a string")
    reply = CloudReply(
        text=text,
        n_tokens=_count(data, "n_tokens"),
        m_tokens=_count(data, "m_tokens"),
        exec_s=_number(data, "exec_s"),
        received_at=_number(data, "received_at"),
        sent_at=_number(data, "sent_at"),
        round_trip_s=round_trip_s,
        wire_bytes=PayloadModel.measured_bytes(request_bytes, len(body)),
        wait_s=_optional_seconds(data, "wait_s"),
        pending=_optional_count(data, "pending", 0),
        batch_size=_optional_count(data, "batch_size", 1),
    )
    if reply.server_s < 0:
        raise CloudFailure("bad_response", "`sent_at` is earlier than `received_at`")
    return reply


class CloudClient:
    """Talks to one cloud base URL over a keep-alive connection pool.

    ``timer`` measures round trips (a monotonic clock); ``timeout_s`` bounds a whole exchange.
    """

    def __init__(
        self,
        base_url: str,
        timeout_s: float,
        timer: Callable[[], float] = time.perf_counter,
        probe_timeout_s: float = 2.0,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout_s = timeout_s
        self.probe_timeout_s = probe_timeout_s
        self.timer = timer
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        # No limit per host: the gateway's max_cloud_exchanges bounds the connections. An idle
        # connection is closed well before the cloud's idle timeout closes it (CLOUD_KEEPALIVE_S
        # < the cloud's idle_timeout_s), so no request goes out on a connection being closed.
        connector = aiohttp.TCPConnector(
            limit=0, force_close=False, keepalive_timeout=CLOUD_KEEPALIVE_S
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
                headers={"Content-Type": JSON_CONTENT_TYPE},
                timeout=timeout,
            ) as response:
                body = await response.read()
                status = response.status
        except TimeoutError:
            raise CloudFailure("timeout", f"no answer within {self.timeout_s:g} s") from None
        except aiohttp.ClientError as exc:
            raise CloudFailure("connection", f"{type(exc).__name__}: {exc}") from None
        round_trip = self.timer() - started
        if status == 422:
            raise CloudRejected(_error_message(body))
        if status != 200:
            raise CloudFailure("status", f"HTTP {status}: {_error_message(body)}")
        return parse_reply(body, round_trip, len(payload))

    async def probe(self) -> bool:
        """True if ``GET /health`` answers as a C-NMT cloud server does."""
        return await self.health() is not None

    async def health(self) -> dict[str, Any] | None:
        """``GET /health``'s answer if it is a C-NMT cloud server's (``status`` ok), else None."""
        timeout = aiohttp.ClientTimeout(total=self.probe_timeout_s)
        try:
            async with self.session.get(f"{self.base_url}/health", timeout=timeout) as response:
                if response.status != 200:
                    return None
                data = json.loads(await response.read())
        except (TimeoutError, aiohttp.ClientError, ValueError):
            return None
        if isinstance(data, dict) and data.get("service") == SERVICE and data.get("status") == "ok":
            return data
        return None


def _error_message(body: bytes) -> str:
    try:
        data = json.loads(body.decode("utf-8"))
        if isinstance(data, dict) and isinstance(data.get("error"), str):
            return data["error"]
    except (UnicodeDecodeError, json.JSONDecodeError):
        pass
    return body[:200].decode("utf-8", "replace")
