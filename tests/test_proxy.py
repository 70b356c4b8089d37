"""The emulated link: RTT/2 each way, a replayed trace, a bandwidth limit, bytes intact."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import test_serving_doubles as doubles  # noqa: E402

from cnmt.errors import ConfigError  # noqa: E402
from cnmt.serving.proxy import DelayProxy, RttSchedule, read_rtt_trace  # noqa: E402

run = doubles.run


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
        proxy = DelayProxy(("127.0.0.1", port), RttSchedule.constant(0.1))
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
        proxy = DelayProxy(("127.0.0.1", port), RttSchedule([0.04] + [0.3] * 100, step_s=0.6))
        await proxy.start()
        try:
            early, _ = await round_trip(proxy.port, b"early")
            await asyncio.sleep(max(0.0, 0.7 - (time.monotonic() - proxy.schedule.start)))
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
        proxy = DelayProxy(("127.0.0.1", port), RttSchedule.constant(0.0), bandwidth_bps=1e6)
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
        proxy = DelayProxy(("127.0.0.1", port), RttSchedule.constant(0.002))
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
        proxy = DelayProxy(("127.0.0.1", port), RttSchedule.constant(0.0))
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


def test_rtt_schedule_holds_each_value_for_one_step_and_loops() -> None:
    schedule = RttSchedule([0.01, 0.02, 0.03], step_s=2.0, offset=1, start=100.0)
    assert schedule.rtt_at(100.0) == 0.02
    assert schedule.rtt_at(101.9) == 0.02
    assert schedule.rtt_at(102.0) == 0.03
    assert schedule.rtt_at(104.5) == 0.01  # wrapped around
    assert schedule.rtt_at(50.0) == 0.02  # before the start: the first value


def test_reads_a_real_tyrell_trace(data_dir: Path) -> None:
    rtts = read_rtt_trace(data_dir / "rtt" / "tyrell" / "tyrell_roundtrip003.csv")
    assert len(rtts) > 100
    assert all(r >= 0 for r in rtts)
    median = sorted(rtts)[len(rtts) // 2]
    assert 0.05 < median < 0.5  # the 4G trace: a median of about 119 ms by its metadata


def test_reads_a_real_ripe_atlas_trace_without_its_lost_pings(data_dir: Path) -> None:
    folder = data_dir / "rtt" / "ripe-atlas-2016"
    path = sorted(folder.glob("*.csv"))[0]
    rtts = read_rtt_trace(path)
    assert len(rtts) > 1000
    assert all(r > 0 for r in rtts)  # lost pings (negative in the file) are not RTTs


def test_trace_reader_names_the_bad_line(tmp_path: Path) -> None:
    trace = tmp_path / "trace.csv"
    trace.write_text("120\n-3\n\n95.5\nabc\n")
    with pytest.raises(ConfigError, match=r"trace.csv:5: bad rtt 'abc'"):
        read_rtt_trace(trace)
    trace.write_text("120\n-3\n\n95.5\n")
    assert read_rtt_trace(trace) == [0.12, 0.0955]  # the lost ping (-3) dropped
    with pytest.raises(ConfigError, match="no such RTT trace"):
        read_rtt_trace(tmp_path / "missing.csv")
