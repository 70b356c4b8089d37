"""Hardening of both servers against cheap attacks and slow faults (issue 12), in one process:
slow clients, hostile bodies, error formats, logs, metrics, and the cloud breaker's logic on a
fake clock. The faults that need real processes are in test_faults.py, the property-based
tests in test_properties.py."""

from __future__ import annotations

import asyncio
import json
import logging
import multiprocessing
import os
import signal
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from helpers import doubles, servers
from helpers.aio import run, wait_until
from helpers.client import host_port, metric_samples, slow_body

from cnmt.serving.cloud_client import CloudFailure
from cnmt.serving.cloud_health import BUSY, UNHEALTHY, CloudHealth
from cnmt.serving.logs import escape_controls
from cnmt.serving.protocol import (
    MAX_JSON_DEPTH,
    RequestError,
    json_depth,
    parse_text,
)
from cnmt.serving.settings import CloudSettings, GatewaySettings

pytestmark = pytest.mark.slow  # real servers, slow clients and idle timeouts: seconds each


async def post(session: aiohttp.ClientSession, base: str, body: bytes) -> tuple[int, Any, str]:
    async with session.post(
        f"{base}/v1/translate", data=body, headers={"Content-Type": "application/json"}
    ) as response:
        return response.status, response.headers.get("Content-Type", ""), await response.text()


# --- slow clients -----------------------------------------------------------------------------


def test_forty_slow_body_connections_do_not_stop_a_concurrent_clients_requests() -> None:
    """Before: `pending` was counted before the body was read, so 32 slowloris connections took
    every slot and legitimate requests got 503. Now a request holds a slot only once its body
    has arrived, and a body that takes longer than body_timeout_s gets a JSON 408."""

    async def body() -> None:
        gw = await servers.start_gateway(None, policy="edge", max_pending=32, body_timeout_s=2.0)
        stop = asyncio.Event()
        try:
            slow = [asyncio.create_task(slow_body(gw.url, 10_000, 0.2, stop)) for _ in range(40)]
            await wait_until(lambda: len(gw.runner.server.connections) >= 40)
            statuses = []
            async with aiohttp.ClientSession() as s:
                for _ in range(20):
                    status, _, _ = await post(s, gw.url, json.dumps({"text": "ni hao"}).encode())
                    statuses.append(status)
            assert statuses == [200] * 20
            answers = await asyncio.gather(*slow)
        finally:
            stop.set()
            await gw.close()
        for answer in answers:  # each slow client was cut off with a JSON 408
            head, _, payload = answer.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 408"), head[:80]
            assert "body_timeout_s" in json.loads(payload)["error"]

    run(body())


@pytest.mark.parametrize("what", ["idle", "slow headers"])
def test_idle_and_slow_header_connections_are_closed_after_idle_timeout_s(what: str) -> None:
    """Before: a connection that sent nothing, or a header byte at a time, stayed open (aiohttp's
    default keep-alive of 75 s). Now both servers close it after their idle_timeout_s."""

    async def closed_after(base: str, limit_s: float) -> float:
        host, port = host_port(base)
        reader, writer = await asyncio.open_connection(host, port)
        started = time.monotonic()
        head = b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 200
        sent = 0
        while not reader.at_eof() and time.monotonic() - started < limit_s + 3.0:
            if what == "slow headers" and sent < len(head):
                writer.write(head[sent : sent + 1])  # one header byte every 0.2 s
                sent += 1
            try:
                assert await asyncio.wait_for(reader.read(1), 0.2) == b""
            except TimeoutError:
                pass
        writer.close()
        assert reader.at_eof(), f"{base}: still open after {limit_s + 3.0} s"
        return time.monotonic() - started

    async def body() -> None:
        gw = await servers.start_gateway(None, policy="edge", idle_timeout_s=1.0)
        cloud, cloud_url = await start_cloud_with(idle_timeout_s=5.0)
        try:
            gateway_s, cloud_s = await asyncio.gather(
                closed_after(gw.url, 1.0), closed_after(cloud_url, 5.0)
            )
        finally:
            await gw.close()
            await cloud.cleanup()
        assert 0.9 < gateway_s < 2.0
        assert 4.9 < cloud_s < 6.0

    run(body())


async def start_cloud_with(**settings: Any) -> tuple[Any, str]:
    from cnmt.serving.cloud import CloudServer
    from cnmt.serving.launch import serve_app, url

    server = CloudServer([doubles.ScriptedTranslator(label="cloud")], CloudSettings(**settings))
    runner, bound = await serve_app(server.app(), "127.0.0.1", 0)
    return runner, url("127.0.0.1", bound)


def test_latency_excludes_the_clients_upload_time() -> None:
    """Before: the latency histogram started when the request head arrived, so a slow upload
    counted as the gateway's latency."""

    async def body() -> None:
        gw = await servers.start_gateway(None, policy="edge")
        try:
            host, port = host_port(gw.url)
            reader, writer = await asyncio.open_connection(host, port)
            payload = json.dumps({"text": "ni hao"}).encode()
            writer.write(
                b"POST /v1/translate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                + f"Content-Length: {len(payload)}\r\n\r\n".encode()
                + payload[:5]
            )
            await writer.drain()
            await asyncio.sleep(1.0)  # the client takes a second to upload the rest
            writer.write(payload[5:])
            await writer.drain()
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0])
            answer = json.loads(await reader.readexactly(length))
            writer.close()
            async with aiohttp.ClientSession() as s, s.get(f"{gw.url}/metrics") as r:
                samples = metric_samples(await r.text())
        finally:
            await gw.close()
        assert answer["latency_ms"] < 500
        assert samples['cnmt_gateway_latency_seconds_sum{device="edge"}'] < 0.5

    run(body())


def test_a_client_that_aborts_mid_body_is_no_server_error(caplog: pytest.LogCaptureFixture) -> None:
    """Before: logged as an ERROR traceback and counted as rejected_total{status="500"}."""

    async def body() -> dict[str, float]:
        gw = await servers.start_gateway(None, policy="edge")
        try:
            host, port = host_port(gw.url)
            reader, writer = await asyncio.open_connection(host, port)
            writer.write(
                b'POST /v1/translate HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{"te'
            )
            await writer.drain()
            await asyncio.sleep(0.2)
            writer.close()
            await asyncio.sleep(0.3)
            async with aiohttp.ClientSession() as s, s.get(f"{gw.url}/metrics") as r:
                return metric_samples(await r.text())
        finally:
            await gw.close()

    with caplog.at_level(logging.INFO):
        samples = run(body())
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert samples.get('cnmt_gateway_rejected_total{status="500"}', 0) == 0
    assert samples['cnmt_gateway_rejected_total{status="400"}'] == 1


# --- hostile bodies ---------------------------------------------------------------------------

HOSTILE = [
    (b'{"text": "\\ud800"}', "lone surrogate"),
    (b'{"text": "ok \\udfff"}', "lone surrogate"),
    (b"[" * 5000 + b"]" * 5000, "nested 5000 levels"),
    (b'{"text": "x", "extra": ' + b"[" * 5000 + b"]" * 5000 + b"}", "nested"),
    (b"1" * 5000, "not usable JSON"),
]


@pytest.mark.parametrize(("body", "expected"), HOSTILE)
def test_hostile_bodies_get_a_json_400_from_the_gateway_and_the_cloud(
    body: bytes, expected: str
) -> None:
    """Before: a lone surrogate crashed the gateway (UnicodeEncodeError, 500); deep nesting
    raised RecursionError (500, and a non-JSON 500 from the cloud); a 5000-digit number was a
    ValueError (500)."""

    async def run_body() -> None:
        cloud, cloud_url = await servers.start_cloud()
        gw = await servers.start_gateway(cloud_url, policy="cloud")
        try:
            async with aiohttp.ClientSession() as s:
                for base in (gw.url, cloud_url):
                    status, content_type, text = await post(s, base, body)
                    assert status == 400, (base, status, text)
                    assert content_type.startswith("application/json")
                    assert expected in json.loads(text)["error"]
                    status, _, _ = await post(s, base, b'{"text": "still alive"}')
                    assert status == 200
        finally:
            await gw.close()
            await cloud.cleanup()

    run(run_body())


def test_json_depth_counts_brackets_outside_strings_only() -> None:
    assert json_depth('{"text": "[[[{{{"}') == 1
    assert json_depth('{"a": [[1], {"b": "\\"[["}]}') == 3
    assert json_depth('"\\\\"[') == 1  # an escaped backslash does not escape the quote
    assert json_depth("[" * 5000) == 5000
    started = time.perf_counter()
    json_depth('"\\"' * 6000)  # 18 KB of quotes and escapes: linear, not quadratic
    assert time.perf_counter() - started < 0.5


def test_parse_text_accepts_pairs_and_limits() -> None:
    assert parse_text(b'{"text": "\\ud83d\\ude00 ok"}') == "\U0001f600 ok"
    nested = (
        b'{"text": "x", "meta": ' + b"[" * (MAX_JSON_DEPTH - 1) + b"]" * (MAX_JSON_DEPTH - 1) + b"}"
    )
    assert parse_text(nested) == "x"
    with pytest.raises(RequestError, match="nested 33 levels"):
        parse_text(b'{"text": "x", "meta": ' + b"[" * 32 + b"]" * 32 + b"}")


# --- every error is JSON ----------------------------------------------------------------------


def test_every_error_answer_is_json_including_aiohttps_own() -> None:
    """Before: 404, 405 and the HTTP parser's 400s (a huge URL or header) were text/plain."""

    async def body() -> None:
        cloud, cloud_url = await servers.start_cloud()
        gw = await servers.start_gateway(cloud_url)
        try:
            async with aiohttp.ClientSession() as s:
                for base in (gw.url, cloud_url):
                    async with s.get(f"{base}/v1/translate") as r:
                        assert r.status == 405 and r.headers["Allow"] == "POST"
                        assert "use POST" in (await r.json())["error"]
                    async with s.get(f"{base}/nowhere") as r:
                        assert r.status == 404
                        assert "/v1/translate" in (await r.json())["error"]
                    for request in (
                        b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
                        b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 9000 + b"\r\n\r\n",
                        b"NOT HTTP AT ALL\r\n\r\n",
                    ):
                        status, head, payload = await raw(base, request)
                        assert 400 <= status < 500, head
                        assert b"application/json" in head
                        assert "malformed HTTP request" in json.loads(payload)["error"]
        finally:
            await gw.close()
            await cloud.cleanup()

    run(body())


async def raw(base: str, request: bytes) -> tuple[int, bytes, bytes]:
    host, port = host_port(base)
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(request)
    await writer.drain()
    data = await asyncio.wait_for(reader.read(), 5.0)
    writer.close()
    head, _, payload = data.partition(b"\r\n\r\n")
    return int(head.split(b" ")[1]), head, payload


# --- logs and metrics -------------------------------------------------------------------------


def test_control_characters_are_escaped() -> None:
    assert escape_controls("a\x1b[31mred\x07\r\nfake: line\x9b") == (
        "a\\x1b[31mred\\x07\\r\\nfake: line\\x9b"
    )
    assert escape_controls("普通 text, tabs\tare escaped") == "普通 text, tabs\\tare escaped"


def test_control_characters_from_request_texts_do_not_reach_the_log_raw() -> None:
    """Before: a request's text reached the log raw (e.g. the tokens a model drops, a local
    failure's message), terminal escapes and forged lines included."""
    from cnmt.serving.logs import EscapingFormatter

    formatter = EscapingFormatter("cnmt launch: %(levelname)s: %(message)s")
    record = logging.LogRecord(
        "x", logging.WARNING, __file__, 1, "dropped %s", ("\x1b]0;owned\x07\nERROR: fake",), None
    )
    assert formatter.format(record) == (
        "cnmt launch: WARNING: dropped \\x1b]0;owned\\x07\\nERROR: fake"
    )


def test_the_edge_workers_logs_escape_control_characters(capfd: pytest.CaptureFixture[str]) -> None:
    """Before: the edge worker (a spawned process) logged through Python's last-resort handler,
    so cn2en's "dropped tokens" warning wrote a request's ESC raw to the terminal."""

    async def body() -> None:
        gw = await servers.start_gateway(
            None, policy="edge", edge_factory=doubles.EchoingTranslator
        )
        try:
            async with aiohttp.ClientSession() as s:
                text = json.dumps({"text": "ni \x1b]0;owned\x07 hao"}).encode()
                status, _, _ = await post(s, gw.url, text)
                assert status == 200
        finally:
            await gw.close()

    run(body())
    err = capfd.readouterr().err
    assert "translating 'ni \\x1b]0;owned\\x07 hao'" not in err  # not repr: the formatter's work
    assert "translating ni \\x1b]0;owned\\x07 hao" in err
    assert "\x1b" not in err


def test_metrics_count_edge_worker_restarts(tmp_path: Path) -> None:
    """Before: no metric counted the local worker's restarts."""

    async def body() -> dict[str, float]:
        gw = await servers.start_gateway(None, policy="edge")
        try:
            marker = tmp_path / "crash-once"
            marker.write_text("")
            async with aiohttp.ClientSession() as s:
                status, _, _ = await post(
                    s, gw.url, json.dumps({"text": f"hello CRASH:{marker}"}).encode()
                )
                assert status == 200
                async with s.get(f"{gw.url}/metrics") as r:
                    return metric_samples(await r.text())
        finally:
            await gw.close()

    samples = run(body())
    assert samples["cnmt_gateway_edge_restarts_total"] == 1


# --- the cloud's health: breaker, bound and probes on a fake clock ---------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def health(clock: FakeClock, **overrides: Any) -> tuple[CloudHealth, list[tuple[bool, str]]]:
    changes: list[tuple[bool, str]] = []
    values: dict[str, Any] = dict(
        max_exchanges=3,
        slow_s=1.0,
        slow_count=2,
        probe_initial_s=0.01,
        probe_max_s=0.02,
        health_interval_s=60.0,
    )
    values.update(overrides)

    async def probe() -> bool:
        return False

    return (
        CloudHealth(
            probe=probe, clock=clock, on_change=lambda h, c: changes.append((h, c)), **values
        ),
        changes,
    )


def test_breaker_opens_on_consecutive_exchanges_stuck_past_slow_s_before_any_timeout() -> None:
    async def body() -> None:
        clock = FakeClock()
        guard, changes = health(clock)
        stuck = [guard.exchange() for _ in range(2)]
        for exchange in stuck:
            exchange.__enter__()
        assert guard.refusal() is None  # 2 in flight, 3 allowed, none slow yet
        clock.now += 1.5  # both still waiting: slow, though no timeout has fired
        assert guard.refusal() == UNHEALTHY
        assert changes == [(False, "slow")]
        await guard.close()

    run(body())


def test_a_fast_exchange_resets_the_count_of_slow_ones() -> None:
    async def body() -> None:
        clock = FakeClock()
        guard, changes = health(clock)
        for took in (1.2, 0.1, 1.2, 0.1, 1.3):
            with guard.exchange():
                clock.now += took
        assert guard.healthy and guard.consecutive_slow == 1 and changes == []
        with guard.exchange():
            clock.now += 2.0
        assert not guard.healthy and changes == [(False, "slow")]
        await guard.close()

    run(body())


def test_at_most_max_exchanges_wait_on_the_cloud() -> None:
    async def body() -> None:
        clock = FakeClock()
        guard, _ = health(clock)
        held = [guard.exchange() for _ in range(3)]
        for exchange in held:
            exchange.__enter__()
        with pytest.raises(CloudFailure) as refused, guard.exchange():
            pass
        assert refused.value.reason == BUSY
        held[0].__exit__(None, None, None)
        with guard.exchange():  # a slot freed
            pass
        await guard.close()

    run(body())


def test_a_failed_exchange_opens_the_breaker_and_a_probe_closes_it() -> None:
    async def body() -> None:
        clock = FakeClock()
        answers = [False, False, True]
        probes: list[float] = []

        async def probe() -> bool:
            probes.append(clock.now)
            return answers.pop(0)

        guard = CloudHealth(
            probe=probe,
            max_exchanges=3,
            slow_s=1.0,
            slow_count=2,
            probe_initial_s=0.01,
            probe_max_s=0.02,
            health_interval_s=60.0,
            clock=clock,
        )
        with pytest.raises(CloudFailure), guard.exchange():
            raise CloudFailure("connection", "refused")
        assert not guard.healthy and guard.refusal() == UNHEALTHY
        await wait_until(lambda: guard.available, 5.0)  # half-open after a good probe
        assert len(probes) == 3 and not guard.healthy
        with guard.exchange() as trial:
            assert trial.trial
            assert guard.refusal() == UNHEALTHY  # one trial at a time
            clock.now += 0.1
        assert guard.healthy and guard.refusal() is None
        await guard.close()

    run(body())


def test_a_slow_trial_opens_the_breaker_again_and_the_backoff_goes_on() -> None:
    """A cloud whose /health answers fast but whose translations are slow gets one trial
    exchange after each good probe, not max_exchanges of them."""

    async def body() -> None:
        clock = FakeClock()
        probes: list[float] = []

        async def probe() -> bool:
            probes.append(clock.now)
            return True

        guard = CloudHealth(
            probe=probe,
            max_exchanges=3,
            slow_s=1.0,
            slow_count=2,
            probe_initial_s=0.01,
            probe_max_s=0.04,
            health_interval_s=60.0,
            clock=clock,
        )
        guard.mark_unhealthy("test", cause="failure")
        for _ in range(3):
            await wait_until(lambda: guard.available, 5.0)
            with guard.exchange() as trial:
                assert trial.trial and guard.refusal() == UNHEALTHY
                clock.now += 1.5  # slow
            assert not guard.available
        assert guard._probe_delay == pytest.approx(0.04)  # 0.01 doubled three times, capped
        await guard.close()

    run(body())


def test_an_idle_cloud_is_probed_and_a_dead_one_marked_unhealthy() -> None:
    """Before: health was learnt only from offloads, so /health said "healthy" for a dead
    cloud as long as nothing was offloaded."""

    async def body() -> None:
        clock = FakeClock()
        guard, changes = health(clock, health_interval_s=0.05)
        guard.start()
        clock.now += 1.0  # nothing finished for longer than health_interval_s
        await wait_until(lambda: not guard.healthy, 5.0)
        assert changes[0] == (False, "probe")
        await guard.close()

    run(body())


def test_a_gateway_reports_a_dead_idle_cloud_on_health() -> None:
    async def body() -> None:
        cloud, cloud_url = await servers.start_cloud()
        gw = await servers.start_gateway(cloud_url, health_interval_s=0.1, probe_timeout_s=0.2)
        try:
            async with aiohttp.ClientSession() as s:
                async with s.get(f"{gw.url}/health") as r:
                    assert (await r.json())["cloud"] == "healthy"
                await cloud.cleanup()  # the cloud dies; nothing is offloaded
                await wait_until(lambda: not gw.gateway.cloud_healthy, 5.0)
                async with s.get(f"{gw.url}/health") as r:
                    assert (await r.json())["cloud"] == "unhealthy"
        finally:
            await gw.close()

    run(body())


# --- settings ---------------------------------------------------------------------------------


def test_new_settings_have_defaults_that_keep_configs_valid_and_check_their_values() -> None:
    settings = GatewaySettings(edge_profile="e", cloud_profile="c", cloud_timeout_s=0.3)
    assert settings.slow_exchange_s == pytest.approx(0.15)
    with pytest.raises(ValueError, match="below cloud_timeout_s"):
        GatewaySettings(edge_profile="e", cloud_profile="c", breaker_slow_s=2.0)
    with pytest.raises(ValueError, match="max_cloud_exchanges must be positive"):
        GatewaySettings(edge_profile="e", cloud_profile="c", max_cloud_exchanges=0)
    with pytest.raises(ValueError, match="at least 5 s"):
        CloudSettings(idle_timeout_s=1.0)


# --- processes: zombies and stale cgroups -----------------------------------------------------


def test_a_child_that_dies_is_reaped_at_once_not_when_launch_exits() -> None:
    """Before: a cloud child that died stayed a zombie until `cnmt launch` exited."""
    from cnmt.serving.launch import reap_on_exit

    async def body() -> None:
        process = multiprocessing.get_context("spawn").Process(
            target=os._exit, args=(9,), daemon=True
        )
        process.start()
        exited: list[int] = []
        reap_on_exit(process, lambda p: exited.append(p.exitcode))
        await wait_until(lambda: bool(exited))
        assert exited == [9]
        assert not Path(f"/proc/{process.pid}").exists()  # reaped: no zombie left

    run(body())


def test_a_dead_cloud_process_of_launch_is_reaped_and_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from cnmt.runtime.models import builtin_dir
    from cnmt.serving.launch import CloudProcess

    if not (builtin_dir("cn2en") / "manifest.json").is_file():
        pytest.skip("cn2en is not exported in this cache (scripts/install-cn2en)")

    async def body() -> None:
        cloud = CloudProcess(CloudSettings(port=0))
        await cloud.start()
        pid = cloud._process.pid
        try:
            os.kill(pid, signal.SIGKILL)
            await wait_until(lambda: not Path(f"/proc/{pid}").exists())
        finally:
            await cloud.stop()

    run(body())
    assert "the cloud process" in caplog.text and "exited with status -9" in caplog.text


def test_stale_cgroups_of_dead_processes_are_removed_at_start_up() -> None:
    """Before: a SIGKILLed `cnmt launch` left an empty cnmt-<pid>-<n> cgroup that no later
    launch removed."""
    from cnmt.profiling.cpu_quota import CpuQuota, available, default_root

    if available() is not None:
        pytest.skip(f"no writable cgroup here: {available()}")
    dead = multiprocessing.get_context("spawn").Process(target=os._exit, args=(9,))
    dead.start()
    dead.join()
    root = default_root()
    stale = root / f"cnmt-{dead.pid}-0"
    live = root / f"cnmt-{os.getpid()}-999999"
    stale.mkdir()
    live.mkdir()
    try:
        with CpuQuota(0.5):
            assert not stale.exists()
            assert live.exists()  # its process is alive: not ours to remove
    finally:
        for path in (stale, live):
            if path.exists():
                path.rmdir()
