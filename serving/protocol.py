"""The wire format both servers share: a JSON request ``{"text": "..."}``, JSON answers, and
JSON errors ``{"error": "..."}`` whose message names the problem and the fix.

Every error is JSON, whoever raises it: :class:`RequestError` from the handlers, aiohttp's own
HTTP errors (404, 405, ...) through :func:`json_errors`, and the HTTP parser's 400s through
:mod:`cnmt.serving.limits`. A request body is parsed with limits (:func:`parse_text`): it must
arrive within ``body_timeout_s`` (else 408), be valid UTF-8 JSON nested at most
:data:`MAX_JSON_DEPTH` deep, and its text must be a string of Unicode scalar values (no lone
surrogate escapes such as ``"\\ud800"``, which no UTF-8 encoder can write back out).

A cloud's answer to a translation is one type, :class:`CloudAnswer`: both cloud engines write
it with :meth:`CloudAnswer.to_json` and the gateway's client reads it with
:meth:`CloudAnswer.from_json`, which checks every field before the gateway learns from it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from cnmt.runtime.manifest import MAX_TOKENS_LIMIT
from cnmt.serving.logs import escape_controls

JSON_CONTENT_TYPE = "application/json"
READ_CHUNK = 65536
# A request is {"text": "..."}: depth 1. The limit leaves room for clients that wrap extra
# fields, and keeps the parser's recursion (about 1,000 frames) far away.
MAX_JSON_DEPTH = 32
# The characters that decide a JSON text's nesting: brackets, and the quotes and backslashes
# that say whether a bracket is inside a string.
_JSON_STRUCTURE = re.compile(r'[\[\]{}"\\]')
# A cloud's queue length and batch size: anything beyond is not a real server's.
MAX_REPORTED_PENDING = 1_000_000
MAX_REPORTED_BATCH = MAX_TOKENS_LIMIT

log = logging.getLogger("cnmt.serving.protocol")


class RequestError(Exception):
    """A request the server refuses; ``status`` is the HTTP status, the message is for the user."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


def dumps(obj: Any) -> str:
    """Strict JSON (a NaN or Infinity is a bug, refused with ValueError, never sent)."""
    return json.dumps(obj, ensure_ascii=False, allow_nan=False)


def json_response(
    data: Any, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    return web.json_response(data, status=status, headers=headers, dumps=dumps)


def error_response(exc: RequestError) -> web.Response:
    response = json_response({"error": exc.message}, status=exc.status, headers=exc.headers)
    if exc.headers.get("Connection") == "close":
        response.force_close()
    return response


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """aiohttp's own HTTP errors (no such endpoint, wrong method, ...) as JSON errors, with
    their headers (``Allow`` for a 405); an exception no handler caught as a JSON 500."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return json_response(
            {"error": _http_error_message(request, exc)},
            status=exc.status,
            headers={k: v for k, v in exc.headers.items() if k.lower() in _KEPT_HEADERS},
        )
    except Exception as exc:  # a bug, not the user's fault: say so, keep serving
        log.exception("request failed")
        return json_response(
            {"error": f"internal error: {type(exc).__name__}: {escape_controls(str(exc))}"},
            status=500,
        )


_KEPT_HEADERS = ("allow", "retry-after")


def _http_error_message(request: web.Request, exc: web.HTTPException) -> str:
    if isinstance(exc, web.HTTPMethodNotAllowed):
        allowed = ", ".join(sorted(exc.allowed_methods))
        return f"method {request.method} is not allowed on {request.path}; use {allowed}"
    if isinstance(exc, web.HTTPNotFound):
        return f"no such endpoint {request.path!r}; the endpoints are {endpoints(request.app)}"
    return f"{exc.status} {exc.reason}: {exc.text or exc.reason}"


def endpoints(app: web.Application) -> str:
    """The routes ``app`` serves, as ``POST /v1/translate, GET /health, ...`` (read from its
    router, so that the list a 404 gives is never out of date)."""
    seen: list[str] = []
    for route in app.router.routes():
        info = route.resource.canonical if route.resource is not None else ""
        if route.method == "HEAD":  # aiohttp adds a HEAD beside every GET
            continue
        entry = f"{route.method} {info}"
        if entry not in seen:
            seen.append(entry)
    return ", ".join(seen)


async def read_body(
    request: web.Request, max_body_bytes: int, timeout_s: float | None = None
) -> bytes:
    """The request body, refusing (413) one larger than ``max_body_bytes`` without reading it
    all into memory, (408) one that has not fully arrived within ``timeout_s`` (a slow or
    stalled client must not hold the server's resources), and (400) one the client abandoned
    half-way."""
    try:
        async with asyncio.timeout(timeout_s):
            return await _read_body(request, max_body_bytes)
    except TimeoutError:
        raise RequestError(
            408,
            f"the request body did not arrive within {timeout_s:g} s (the server's "
            "body_timeout_s setting); send the whole body at once",
            headers={"Connection": "close"},
        ) from None
    except (ConnectionError, HttpProcessingError) as exc:
        # The client closed the connection (or broke the framing) before its body ended:
        # nobody is left to read an answer, and it is not the server's fault.
        log.info("request body abandoned by the client: %s", exc)
        raise RequestError(
            400, "the request body ended before its declared length; send the whole body"
        ) from None


def body_too_large(max_body_bytes: int) -> RequestError:
    """The 413 both cloud engines and the gateway answer to a body over the limit."""
    return RequestError(
        413,
        f"request body is larger than {max_body_bytes} bytes; send one sentence per request "
        "(the server's max_body_bytes setting)",
    )


async def _read_body(request: web.Request, max_body_bytes: int) -> bytes:
    too_large = body_too_large(max_body_bytes)
    if request.content_length is not None and request.content_length > max_body_bytes:
        raise too_large
    chunks: list[bytes] = []
    size = 0
    while True:
        chunk = await request.content.read(READ_CHUNK)
        if not chunk:
            break
        size += len(chunk)
        if size > max_body_bytes:
            raise too_large
        chunks.append(chunk)
    return b"".join(chunks)


def parse_text(body: bytes) -> str:
    """The ``text`` of a translation request body; RequestError (400) naming what is wrong."""
    example = 'send a JSON object such as {"text": "我们走吧。"}'
    try:
        decoded = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RequestError(
            400, f"request body is not valid UTF-8 (bad byte at offset {exc.start}); {example}"
        ) from None
    if not decoded.strip():
        raise RequestError(400, f"request body is empty; {example}")
    depth = json_depth(decoded)
    if depth > MAX_JSON_DEPTH:
        raise RequestError(
            400,
            f"request body is JSON nested {depth} levels deep (at most {MAX_JSON_DEPTH}); "
            f"{example}",
        )
    try:
        data = json.loads(decoded)
    except json.JSONDecodeError as exc:
        raise RequestError(
            400,
            f"request body is not valid JSON ({exc.msg} at line {exc.lineno} column "
            f"{exc.colno}); {example}",
        ) from None
    except ValueError as exc:  # e.g. an integer of more digits than Python converts
        raise RequestError(400, f"request body is not usable JSON ({exc}); {example}") from None
    if not isinstance(data, dict):
        raise RequestError(
            400, f"request body must be a JSON object, got {type(data).__name__}; {example}"
        )
    if "text" not in data:
        raise RequestError(400, f"request has no `text` field; {example}")
    text = data["text"]
    if not isinstance(text, str):
        raise RequestError(400, f"`text` must be a string, got {type(text).__name__}; {example}")
    if not text.strip():
        raise RequestError(400, f"`text` is empty; {example}")
    surrogate = _LONE_SURROGATE.search(text)
    if surrogate is not None:
        raise RequestError(
            400,
            f"`text` has a lone surrogate \\u{ord(surrogate.group()):04x} at character "
            f"{surrogate.start()}: escapes \\ud800-\\udfff must come in high-low pairs that "
            "form one character; send the text as UTF-8",
        )
    return text


# json.loads joins valid surrogate pairs, so any surrogate left in a string is a lone one.
_LONE_SURROGATE = re.compile(r"[\ud800-\udfff]")


def json_depth(text: str) -> int:
    """How deep the arrays and objects of a JSON text nest, counted in one pass without
    recursion (so a hostile body cannot exhaust the parser's stack); brackets inside strings
    do not count. For invalid JSON the count is only an estimate: the parser then refuses it."""
    depth = deepest = 0
    in_string = False
    escaped_at = -1  # the position a backslash inside a string escapes
    for match in _JSON_STRUCTURE.finditer(text):
        char, at = match.group(), match.start()
        if at == escaped_at:
            continue
        if in_string:
            if char == "\\":
                escaped_at = at + 1
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif char in "]}":
            depth -= 1
    return deepest


def check_length(n_tokens: int, max_tokens: int) -> None:
    """Refuse (422) a text longer than the model accepts."""
    if n_tokens > max_tokens:
        raise RequestError(
            422,
            f"`text` has {n_tokens} source tokens but the model accepts at most {max_tokens}; "
            "split it into shorter sentences",
        )


def overloaded(what: str, pending: int, retry_after_s: int) -> RequestError:
    return RequestError(
        503,
        f"{what} is overloaded ({pending} requests pending, the max_pending limit); retry after "
        f"{retry_after_s} s",
        headers={"Retry-After": str(retry_after_s)},
    )


class BadAnswer(ValueError):
    """A cloud answer that is not the protocol; the message names the first bad field."""


@dataclass(frozen=True)
class CloudAnswer:
    """The body of a cloud's answer to ``POST /v1/translate``, on the wire::

        {"translation": "let's go .", "n_tokens": 5, "m_tokens": 3, "exec_s": 0.0123,
         "received_at": 1718000000.125, "sent_at": 1718000000.139,
         "wait_s": 0.0004, "pending": 0, "batch_size": 1}

    ``received_at`` and ``sent_at`` are on the cloud's clock (seconds), ``exec_s`` the model's
    own time. The queueing fields ``wait_s``, ``pending`` and ``batch_size`` are optional (older
    clouds do not send them): None is left out of the body, and an absent field reads as None.
    """

    translation: str
    n_tokens: int
    m_tokens: int
    exec_s: float
    received_at: float
    sent_at: float
    wait_s: float | None = None
    pending: int | None = None
    batch_size: int | None = None

    @property
    def server_s(self) -> float:
        """Time the request spent inside the cloud server, by the cloud's own clock."""
        return self.sent_at - self.received_at

    def to_json(self) -> dict[str, Any]:
        """The answer as the JSON object a cloud sends (optional fields only when known)."""
        body: dict[str, Any] = {
            "translation": self.translation,
            "n_tokens": self.n_tokens,
            "m_tokens": self.m_tokens,
            "exec_s": self.exec_s,
            "received_at": self.received_at,
            "sent_at": self.sent_at,
        }
        for key in ("wait_s", "pending", "batch_size"):
            value = getattr(self, key)
            if value is not None:
                body[key] = value
        return body

    @classmethod
    def from_json(cls, data: Any, max_output_tokens: int = MAX_TOKENS_LIMIT) -> CloudAnswer:
        """The answer in ``data`` (a parsed JSON value), every field checked: its type and a
        physically possible value (token counts within the model's limits, ``m_tokens`` at most
        ``max_output_tokens``; ``0 <= exec_s``, ``0 <= wait_s``, ``received_at <= sent_at``).
        BadAnswer naming the first field that is not."""
        if not isinstance(data, dict):
            raise BadAnswer(f"expected a JSON object, got {type(data).__name__}")
        text = data.get("translation")
        if not isinstance(text, str):
            raise BadAnswer(f"`translation` is {_shown(text)}, expected a string")
        answer = cls(
            translation=text,
            n_tokens=_count(data, "n_tokens"),
            m_tokens=_count(data, "m_tokens", max_output_tokens),
            exec_s=_number(data, "exec_s"),
            received_at=_number(data, "received_at"),
            sent_at=_number(data, "sent_at"),
            wait_s=_optional_seconds(data, "wait_s"),
            pending=_optional_count(data, "pending", 0, MAX_REPORTED_PENDING),
            batch_size=_optional_count(data, "batch_size", 1, MAX_REPORTED_BATCH),
        )
        if answer.exec_s < 0:
            raise BadAnswer(f"`exec_s` is {answer.exec_s:g}, expected >= 0")
        if answer.server_s < 0:
            raise BadAnswer("`sent_at` is earlier than `received_at`")
        return answer


def _shown(value: Any) -> str:
    """A value as an error message shows it: its repr, cut short."""
    text = repr(value)
    return text if len(text) <= 60 else f"{text[:57]}..."


def _number(data: dict[str, Any], key: str) -> float:
    value = data.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise BadAnswer(f"`{key}` is {_shown(value)}, expected a finite number")
    return float(value)


def _count(data: dict[str, Any], key: str, maximum: int = MAX_TOKENS_LIMIT) -> int:
    value = data.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= maximum:
        raise BadAnswer(f"`{key}` is {_shown(value)}, expected a count in 0..{maximum}")
    return value


def _optional_seconds(data: dict[str, Any], key: str) -> float | None:
    if key not in data:
        return None
    value = _number(data, key)
    if value < 0:
        raise BadAnswer(f"`{key}` is {value!r}, expected seconds >= 0")
    return value


def _optional_count(data: dict[str, Any], key: str, minimum: int, maximum: int) -> int | None:
    if key not in data:
        return None
    value = _count(data, key, maximum)
    if value < minimum:
        raise BadAnswer(f"`{key}` is {value!r}, expected at least {minimum}")
    return value
