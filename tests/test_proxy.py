"""The emulated link: RTT/2 each way, a replayed trace, a bandwidth limit, bytes intact."""

from __future__ import annotations

import asyncio
import os
import time

import numpy as np
from helpers.aio import run

from cnmt.datasets.link import RttTimeline
from cnmt.datasets.traces import RttTrace
from cnmt.serving.proxy import DelayProxy


def stepped(rtts_s: list[float], step_s: float) -> RttTimeline:
    """A link whose RTT takes each value for ``step_s`` seconds, as a plain trace would."""
    ms = np.asarray(rtts_s, dtype=float) * 1000.0
    trace = RttTrace("test", "plain", ms, np.zeros(len(ms), dtype=bool), None)
    return RttTimeline.from_trace(trace, sample_period_s=step_s)


async def start_echo() -> tuple[asyncio.Server, int]:
    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


async def round_trip(port: int, payload: bytes) -> tuple[float, bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    started = time.perf_counter()
    writer.write(payload)
    await writer.drain()
    received = await reader.readexactly(len(payload))
    elapsed = time.perf_counter() - started
    writer.close()
    return elapsed, received


def test_proxy_adds_the_configured_round_trip_time() -> None:
    async def body() -> list[float]:
        echo, port = await start_echo()
        proxy = DelayProxy(("127.0.0.1", port), RttTimeline.constant(0.1))
        await proxy.start()
        try:
            return [(await round_trip(proxy.port, b"ping %d" % i))[0] for i in range(3)]
        finally:
            await proxy.close()
            echo.close()

    for elapsed in run(body()):
        assert elapsed >= 0.095  # 50 ms each way


def test_proxy_replays_an_rtt_trace_over_time() -> None:
    # 40 ms during the first 0.6 s, then 300 ms (for long enough that no loop comes back).
    async def body() -> tuple[float, float]:
        echo, port = await start_echo()
        proxy = DelayProxy(("127.0.0.1", port), stepped([0.04] + [0.3] * 100, step_s=0.6))
        await proxy.start()
        try:
            early, _ = await round_trip(proxy.port, b"early")
            await asyncio.sleep(max(0.0, 0.7 - (time.monotonic() - proxy.started_at)))
            late, _ = await round_trip(proxy.port, b"late")
            return early, late
        finally:
            await proxy.close()
            echo.close()

    early, late = run(body())
    assert early >= 0.038
    assert late >= 0.29


def test_proxy_limits_bandwidth() -> None:
    # 40 kB each way at 1 Mbit/s: at least 0.32 s per direction on the line.
    payload = os.urandom(40_000)

    async def body() -> tuple[float, bytes]:
        echo, port = await start_echo()
        proxy = DelayProxy(("127.0.0.1", port), RttTimeline.constant(0.0), bandwidth_bps=1e6)
        await proxy.start()
        try:
            return await round_trip(proxy.port, payload)
        finally:
            await proxy.close()
            echo.close()

    elapsed, received = run(body())
    assert received == payload
    assert elapsed >= 0.6


def test_proxy_delivers_every_byte_in_order() -> None:
    payload = os.urandom(3_000_000)

    async def body() -> bytes:
        echo, port = await start_echo()
        proxy = DelayProxy(("127.0.0.1", port), RttTimeline.constant(0.002))
        await proxy.start()
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)

            async def send() -> None:
                for start in range(0, len(payload), 4096):
                    writer.write(payload[start : start + 4096])
                    await writer.drain()

            sender = asyncio.create_task(send())
            received = await reader.readexactly(len(payload))
            await sender
            writer.close()
            return received
        finally:
            await proxy.close()
            echo.close()

    assert run(body()) == payload


def test_proxy_closes_the_client_when_upstream_is_unreachable() -> None:
    async def body() -> bytes:
        echo, port = await start_echo()
        echo.close()
        await echo.wait_closed()  # nothing listens on `port` any more
        proxy = DelayProxy(("127.0.0.1", port), RttTimeline.constant(0.0))
        await proxy.start()
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
            writer.write(b"hello")
            data = await reader.read()
            writer.close()
            return data
        finally:
            await proxy.close()

    assert run(body()) == b""
