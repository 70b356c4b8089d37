"""Fault injection against a live gateway: the cloud killed, hung, slow or answering garbage, the
edge worker killed, slow clients, overload. Each fault runs under an open-loop load (the rate the
docs use, 20 requests/s) and asserts that no request is lost and none gets 503 below the
configured capacity. The cloud is a real process where the fault needs one (SIGKILL, SIGSTOP);
the load is `cnmt loadtest`'s own generator. Each test stays under about 20 s."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from helpers import servers
from helpers.aio import run, wait_until
from helpers.client import metric_samples, slow_body
from helpers.servers import ScriptedCloudProcess

from cnmt.serving.launch import serve_app, url
from cnmt.serving.loadtest import LoadReport, run_load

pytestmark = pytest.mark.slow

RATE = 20.0  # requests per second, as in the docs' load tests
SENTENCES = [f"zhe shi di {i} ge ju zi" for i in range(50)]
EDGE_DELAY_S = 0.02  # the scripted edge's time per translation


async def load_while(
    base: str, count: int, fault: Any, *, rate: float = RATE, timeout_s: float = 30.0
) -> LoadReport:
    """An open-loop load of ``count`` requests, with ``fault()`` (a coroutine) run beside it."""
    load = asyncio.create_task(
        run_load(base, SENTENCES, rate=rate, count=count, timeout_s=timeout_s)
    )
    await fault()
    return await load


def assert_nothing_lost(report: LoadReport) -> None:
    assert report.sent == report.ok, report.to_json()
    assert report.rejected == report.failed == report.lost == 0, report.to_json()


def test_a_hung_cloud_sigstop_costs_no_request_and_no_503(
    scripted_cloud_process: Callable[[], ScriptedCloudProcess],
) -> None:
    """The cloud process is stopped (SIGSTOP) for 10 s during 300 requests at 20/s. Before:
    requests kept going to it for cloud_timeout_s, ~40 piled up against max_pending = 32 and
    some got 503. Now at most max_cloud_exchanges wait on it, the breaker opens after
    breaker_slow_count exchanges slower than breaker_slow_s, and the rest run on the edge: every
    request gets 200, none later than cloud_timeout_s plus its edge time."""

    async def body() -> tuple[LoadReport, dict[str, float]]:
        cloud = scripted_cloud_process()
        cloud_url = cloud.start()
        gw = await servers.start_gateway(cloud_url, policy="cloud", edge_delay_s=EDGE_DELAY_S)
        try:

            async def hang() -> None:
                await asyncio.sleep(2.0)
                os.kill(cloud.process.pid, signal.SIGSTOP)
                await asyncio.sleep(10.0)
                os.kill(cloud.process.pid, signal.SIGCONT)

            report = await load_while(gw.url, 300, hang)
            async with aiohttp.ClientSession() as s, s.get(f"{gw.url}/metrics") as r:
                samples = metric_samples(await r.text())
        finally:
            await gw.close()
        return report, samples

    report, samples = run(body(), timeout_s=60)
    print(report.to_json())  # the measurement, shown with `pytest -s`
    assert_nothing_lost(report)
    timeout_s = servers.gateway_settings().cloud_timeout_s
    # its edge time: the edge's own time and its queue after the stuck exchanges time out
    assert report.latency_ms["max"] < (timeout_s + 1.0) * 1000.0, report.to_json()
    assert report.devices.get("edge", 0) > 150  # the hung cloud's share ran locally
    assert samples['cnmt_gateway_cloud_marked_unhealthy_total{cause="slow"}'] >= 1
    assert report.devices.get("cloud", 0) > 20  # and the cloud came back after SIGCONT


def test_a_killed_cloud_sigkill_costs_no_request(
    scripted_cloud_process: Callable[[], ScriptedCloudProcess],
) -> None:
    async def body() -> LoadReport:
        cloud = scripted_cloud_process()
        cloud_url = cloud.start()
        gw = await servers.start_gateway(cloud_url, policy="cloud", edge_delay_s=EDGE_DELAY_S)
        try:

            async def kill() -> None:
                await asyncio.sleep(1.5)
                cloud.kill()

            return await load_while(gw.url, 100, kill)
        finally:
            await gw.close()

    report = run(body())
    assert_nothing_lost(report)
    assert report.devices.get("edge", 0) > 50


def test_a_slow_cloud_trips_the_breaker_and_costs_no_request() -> None:
    """A cloud that answers, but in 1.5 s: slower than breaker_slow_s (1 s), faster than
    cloud_timeout_s (2 s). Nothing fails, yet the breaker moves the load to the edge."""

    async def body() -> tuple[LoadReport, dict[str, float]]:
        async def slow_translate(request: web.Request) -> web.Response:
            text = (await request.json())["text"]
            received_at = time.time()
            await asyncio.sleep(1.5)  # a slow link or a swamped server: every answer is late
            return web.json_response(
                {
                    "translation": text.upper(),
                    "n_tokens": len(text.split()),
                    "m_tokens": len(text.split()) + 1,
                    "exec_s": 0.01,
                    "received_at": received_at,
                    "sent_at": time.time(),
                }
            )

        runner, cloud_url = await fake_cloud(slow_translate)
        gw = await servers.start_gateway(cloud_url, policy="cloud", edge_delay_s=EDGE_DELAY_S)
        try:

            async def nothing() -> None:
                pass

            report = await load_while(gw.url, 120, nothing)
            async with aiohttp.ClientSession() as s, s.get(f"{gw.url}/metrics") as r:
                samples = metric_samples(await r.text())
        finally:
            await gw.close()
            await runner.cleanup()
        return report, samples

    report, samples = run(body())
    assert_nothing_lost(report)
    assert samples['cnmt_gateway_cloud_marked_unhealthy_total{cause="slow"}'] == 1
    # Only the exchanges before the breaker opened, and one trial per good probe, were late.
    assert report.devices.get("cloud", 0) <= 30, report.to_json()
    assert report.latency_ms["max"] < 2000.0


async def fake_cloud(translate: Any) -> tuple[web.AppRunner, str]:
    """A cloud that answers /health as a C-NMT cloud does and /v1/translate with ``translate``."""

    async def health(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "service": "cnmt-cloud"})

    app = web.Application()
    app.router.add_post("/v1/translate", translate)
    app.router.add_get("/health", health)
    runner, port = await serve_app(app, "127.0.0.1", 0)
    return runner, url("127.0.0.1", port)


@pytest.mark.parametrize(
    "garbage",
    [
        web.Response(text="<html>502 Bad Gateway</html>", status=200),
        web.Response(text='{"translation": 42}', content_type="application/json"),
        web.Response(text="oops", status=500),
    ],
    ids=["html", "wrong-types", "500"],
)
def test_a_cloud_answering_garbage_costs_no_request(garbage: web.Response) -> None:
    async def body() -> LoadReport:
        async def handler(request: web.Request) -> web.Response:
            await request.read()
            return web.Response(
                body=garbage.body, status=garbage.status, content_type=garbage.content_type
            )

        runner, cloud_url = await fake_cloud(handler)
        gw = await servers.start_gateway(cloud_url, policy="cloud")
        try:

            async def nothing() -> None:
                pass

            return await load_while(gw.url, 60, nothing)
        finally:
            await gw.close()
            await runner.cleanup()

    report = run(body())
    assert_nothing_lost(report)
    assert report.fallbacks  # each cloud answer was refused and the text translated locally


def test_a_killed_edge_worker_costs_no_request() -> None:
    async def body() -> tuple[LoadReport, dict[str, float]]:
        gw = await servers.start_gateway(None, policy="edge", edge_delay_s=EDGE_DELAY_S)
        try:

            async def kill_worker() -> None:
                for _ in range(2):  # a restart takes seconds (a new Python): two fit in 10 s
                    await asyncio.sleep(1.0)
                    pid = gw.gateway.edge.pid
                    assert pid is not None
                    os.kill(pid, signal.SIGKILL)
                    # the next request finds it dead and starts another: wait for its new pid
                    await wait_until(lambda killed=pid: gw.gateway.edge.pid != killed)

            report = await load_while(gw.url, 200, kill_worker)
            async with aiohttp.ClientSession() as s, s.get(f"{gw.url}/metrics") as r:
                samples = metric_samples(await r.text())
        finally:
            await gw.close()
        return report, samples

    report, samples = run(body())
    assert_nothing_lost(report)
    assert samples["cnmt_gateway_edge_restarts_total"] >= 2


def test_slow_clients_do_not_cost_a_concurrent_load_anything() -> None:
    """40 slowloris connections (a body byte every 0.5 s) beside 100 requests at 20/s."""

    async def body() -> tuple[LoadReport, list[bytes]]:
        gw = await servers.start_gateway(
            None, policy="edge", edge_delay_s=EDGE_DELAY_S, body_timeout_s=3.0
        )
        stop = asyncio.Event()
        try:
            slow = [asyncio.create_task(slow_body(gw.url, 1000, 0.5, stop)) for _ in range(40)]

            async def nothing() -> None:
                pass

            report = await load_while(gw.url, 100, nothing)
            answers = await asyncio.gather(*slow)
        finally:
            stop.set()
            await gw.close()
        return report, answers

    report, answers = run(body())
    print(report.to_json())
    assert_nothing_lost(report)
    assert all(a.startswith(b"HTTP/1.1 408") for a in answers)


def test_below_capacity_no_503_and_above_it_503_with_retry_after() -> None:
    """max_pending requests at once (a closed loop of that many clients) are all answered;
    twice as many get some 503, each with Retry-After, and no other error."""

    async def body() -> tuple[LoadReport, LoadReport]:
        gw = await servers.start_gateway(None, policy="edge", edge_delay_s=0.01, max_pending=8)
        try:
            below = await run_load(gw.url, SENTENCES, concurrency=8, count=80)
            above = await run_load(gw.url, SENTENCES, concurrency=24, count=120)
        finally:
            await gw.close()
        return below, above

    below, above = run(body())
    assert_nothing_lost(below)
    assert above.rejected > 0 and above.failed == above.lost == 0
    assert above.ok + above.rejected == above.sent
