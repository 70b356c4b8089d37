"""How long a client may take, and JSON for the HTTP parser's own errors: the connection limits
both servers (gateway and cloud) run with.

A client that is slow on purpose (a "slowloris") or by accident must not hold the server's
resources. Three bounds, from aiohttp's own machinery where it has one:

- ``idle_timeout_s`` (aiohttp's ``keepalive_timeout``): a connection must send a complete
  request head (request line and headers) within this many seconds of opening, or of the
  previous answer on it; otherwise it is closed. aiohttp's timer runs from the connection's
  start and from each answer, and fires only while the connection waits for a request head, so
  this one bound covers idle keep-alive connections and headers sent a byte at a time alike,
  and never cuts a request that is being answered.
- ``body_timeout_s``: a request body must arrive within this many seconds of its head, else
  408 (:func:`cnmt.serving.protocol.read_body`); the request is not counted against
  ``max_pending`` until its body is complete, so slow uploads cannot take the slots.
- aiohttp's request line and header field limits (8190 bytes each): a longer line is refused
  by the HTTP parser with a 400, which :class:`HardenedAppRunner` writes as a JSON error like
  every other error of the protocol.
- after answering a request whose body has not fully arrived (408, 413), the rest is read and
  dropped for at most :data:`LINGERING_S` seconds, then the connection is closed.

An app declares its idle timeout with ``app[IDLE_TIMEOUT_KEY]``;
:func:`cnmt.serving.launch.serve_app` runs it with :class:`HardenedAppRunner`.
"""

from __future__ import annotations

import logging
from http import HTTPStatus
from typing import Any

from aiohttp import web

from cnmt.serving.logs import escape_controls
from cnmt.serving.protocol import json_response
from cnmt.serving.settings import DEFAULT_IDLE_TIMEOUT_S

log = logging.getLogger("cnmt.serving.limits")

IDLE_TIMEOUT_KEY = web.AppKey("idle_timeout_s", float)
# After answering a request whose body has not all arrived (a 408, a 413), aiohttp reads and
# drops the rest for this long, so the client sees the answer rather than a reset; then closes.
LINGERING_S = 2.0


class _JsonErrorRequestHandler(web.RequestHandler):
    """aiohttp's connection handler, answering the HTTP parser's errors as JSON."""

    __slots__ = ()

    def handle_error(
        self,
        request: Any,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        """Called for a request the HTTP parser refused (400: a request line or header too
        long, broken framing) and for an exception that escaped the app (500)."""
        if status >= 500:
            log.error("error handling a request", exc_info=exc)
            error = "internal error while reading the request"
        else:
            # A malformed request is the client's problem: no traceback in the server's log.
            detail = escape_controls(message or str(exc or ""))[:200]
            log.info("refused a malformed HTTP request: %s", detail)
            error = (
                f"malformed HTTP request ({detail or HTTPStatus(status).phrase}); send a "
                "well-formed HTTP/1.1 request with a request line and each header under "
                "8190 bytes"
            )
        if request.writer.output_size > 0:  # an answer is already half-written: nothing to do
            raise ConnectionError("cannot answer with an error: a response was already sent")
        response = json_response({"error": error}, status=status)
        response.force_close()
        return response


class _JsonErrorServer(web.Server):
    def __call__(self) -> web.RequestHandler:
        # aiohttp has no option for the connection handler's class: this mirrors its
        # Server.__call__ with the subclass above.
        return _JsonErrorRequestHandler(self, loop=self._loop, **self._kwargs)


class HardenedAppRunner(web.AppRunner):
    """An AppRunner whose connections close after ``app[IDLE_TIMEOUT_KEY]`` seconds without a
    complete request head and whose HTTP parser errors are JSON (see the module docstring)."""

    def __init__(self, app: web.Application, **kwargs: Any) -> None:
        kwargs.setdefault("keepalive_timeout", app.get(IDLE_TIMEOUT_KEY, DEFAULT_IDLE_TIMEOUT_S))
        kwargs.setdefault("lingering_time", LINGERING_S)
        super().__init__(app, **kwargs)

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        # Same object, same state; only the factory of connection handlers differs.
        server.__class__ = _JsonErrorServer
        return server
