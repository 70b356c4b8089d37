"""An emulated network link: a TCP proxy that delays traffic by a replayed RTT trace.

Kernel traffic shaping (netem) is not available to an unprivileged test, so the link is a
user-space proxy between the gateway and the cloud. Every chunk of bytes read on one side is
written to the other side ``RTT(t)/2`` seconds after it arrived, where ``RTT(t)`` is the link
model's RTT (:mod:`cnmt.datasets.link`, the same as the replay's: trace time, looping, lost
pings) at arrival time ``t`` since the proxy started: a request and its answer together pay one
RTT. Chunks
of one direction of one connection keep their order (a chunk is never delivered before the one
read before it, as on a real in-order link). With a bandwidth limit, each direction is a shared
serial line: a chunk starts transmitting when the previous one (of any connection) has left
and takes ``8 * bytes / bandwidth`` seconds; its one-way delay counts from the end of that.

Connection set-up is not delayed (the proxy accepts at once and connects upstream at once), so
a keep-alive HTTP exchange costs exactly one RTT, the quantity the gateway estimates.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import logging
import threading
import time
from collections.abc import Callable

from cnmt.datasets.link import RttTimeline, serialisation_s

log = logging.getLogger("cnmt.serving.proxy")

CHUNK = 65536


class _PreciseTimer:
    """Wakes asyncio futures at given times with sub-millisecond precision.

    asyncio's own timers wait in epoll, whose timeout is in whole milliseconds, so a 2.3 ms
    delay ends anywhere up to 1 ms late: too coarse for a LAN-like link of a few ms. This
    thread keeps the due times in a heap, sleeps on a condition variable (microsecond
    timeouts) until the earliest one and hands each expiry back to the event loop.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, clock: Callable[[], float]) -> None:
        self._loop = loop
        self._clock = clock
        self._heap: list[tuple[float, int, asyncio.Future[None]]] = []
        self._condition = threading.Condition()
        self._sequence = itertools.count()
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name="cnmt-link-timer", daemon=True)
        self._thread.start()

    def sleep_until(self, due: float) -> asyncio.Future[None]:
        future: asyncio.Future[None] = self._loop.create_future()
        with self._condition:
            heapq.heappush(self._heap, (due, next(self._sequence), future))
            self._condition.notify()
        return future

    def _run(self) -> None:
        with self._condition:
            while not self._stopped:
                if not self._heap:
                    self._condition.wait()
                    continue
                wait = self._heap[0][0] - self._clock()
                if wait > 0:
                    self._condition.wait(wait)
                    continue
                _, _, future = heapq.heappop(self._heap)
                try:
                    self._loop.call_soon_threadsafe(_wake, future)
                except RuntimeError:  # the loop is closed: nobody waits any more
                    return

    def stop(self) -> None:
        with self._condition:
            self._stopped = True
            self._condition.notify()
        self._thread.join(5.0)


def _wake(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class _Direction:
    """One direction of the link, shared by every connection (the bandwidth is shared)."""

    def __init__(self, bandwidth_bps: float | None) -> None:
        self.bandwidth_bps = bandwidth_bps
        self.free_at = 0.0

    def departure(self, now: float, nbytes: int) -> float:
        """When the chunk has been fully put on the line."""
        if self.bandwidth_bps is None:
            return now
        start = max(now, self.free_at)
        self.free_at = start + float(serialisation_s(nbytes, self.bandwidth_bps))
        return self.free_at


class DelayProxy:
    """Listens on ``host:port`` and forwards every connection to ``upstream`` through the
    emulated link. ``port=0`` picks a free port (see :attr:`port` after :meth:`start`)."""

    def __init__(
        self,
        upstream: tuple[str, int],
        timeline: RttTimeline,
        host: str = "127.0.0.1",
        port: int = 0,
        bandwidth_bps: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.upstream = upstream
        self.timeline = timeline
        self.started_at = 0.0
        self.host = host
        self.requested_port = port
        self.clock = clock
        self._up = _Direction(bandwidth_bps)
        self._down = _Direction(bandwidth_bps)
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.port: int | None = None
        self.connections = 0
        self._timer: _PreciseTimer | None = None

    async def start(self) -> None:
        self.started_at = self.clock()
        self._timer = _PreciseTimer(asyncio.get_running_loop(), self.clock)
        self._server = await asyncio.start_server(self._handle, self.host, self.requested_port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._timer is not None:
            self._timer.stop()
            self._timer = None

    async def _handle(
        self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter
    ) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self.connections += 1
        try:
            try:
                up_reader, up_writer = await asyncio.open_connection(*self.upstream)
            except OSError as exc:
                log.warning("link: cannot reach upstream %s:%s: %s", *self.upstream, exc)
                client_writer.close()
                return
            try:
                await asyncio.gather(
                    self._pump(client_reader, up_writer, self._up),
                    self._pump(up_reader, client_writer, self._down),
                    return_exceptions=True,
                )
            finally:
                up_writer.close()
        except asyncio.CancelledError:
            # Only close() cancels a connection. Ending normally matters: asyncio's stream
            # server asks a finished handler task for its exception, which a cancelled task
            # raises instead of returning (logged as an error on Python 3.11).
            pass
        finally:
            client_writer.close()
            self._tasks.discard(task)

    async def _pump(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, line: _Direction
    ) -> None:
        """Read chunks as they come, deliver each at its due time, in order; pass EOF on."""
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def deliver() -> None:
            while True:
                due, data = await queue.get()
                if due > self.clock():
                    assert self._timer is not None
                    await self._timer.sleep_until(due)
                if not data:
                    with contextlib.suppress(OSError, RuntimeError):
                        if writer.can_write_eof():
                            writer.write_eof()
                    return
                writer.write(data)
                await writer.drain()

        sender = asyncio.get_running_loop().create_task(deliver())
        last_due = 0.0
        try:
            while True:
                try:
                    data = await reader.read(CHUNK)
                except (ConnectionError, OSError):
                    data = b""
                now = self.clock()
                due = max(
                    last_due,
                    line.departure(now, len(data))
                    + self.timeline.rtt_at(now - self.started_at) / 2.0,
                )
                last_due = due
                queue.put_nowait((due, data))
                if not data:
                    break
            await sender
        except (ConnectionError, OSError):
            pass
        finally:
            if not sender.done():
                sender.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await sender
