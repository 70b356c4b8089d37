"""The wire format both servers share: a JSON request ``{"text": "..."}``, JSON answers, and
JSON errors ``{"error": "..."}`` whose message names the problem and the fix.
"""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

JSON_CONTENT_TYPE = "application/json"
READ_CHUNK = 65536


class RequestError(Exception):
    """A request the server refuses; ``status`` is the HTTP status, the message is for the user."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


def dumps(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False)


def json_response(
    data: Any, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    return web.json_response(data, status=status, headers=headers, dumps=dumps)


def error_response(exc: RequestError) -> web.Response:
    return json_response({"error": exc.message}, status=exc.status, headers=exc.headers)


async def read_body(request: web.Request, max_body_bytes: int) -> bytes:
    """The request body, refusing (413) one larger than ``max_body_bytes`` without reading it
    all into memory."""
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


def body_too_large(max_body_bytes: int) -> RequestError:
    return RequestError(
        413,
        f"request body is larger than {max_body_bytes} bytes; send one sentence per request "
        "(the server's max_body_bytes setting)",
    )


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
    try:
        data = json.loads(decoded)
    except json.JSONDecodeError as exc:
        raise RequestError(
            400,
            f"request body is not valid JSON ({exc.msg} at line {exc.lineno} column "
            f"{exc.colno}); {example}",
        ) from None
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
    return text


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
