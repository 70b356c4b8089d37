"""`cnmt loadtest`: bounded load on a local gateway; every request accounted for."""

from __future__ import annotations

import asyncio
import json
import sys
import threading
from pathlib import Path

import pytest
from aiohttp import web
from helpers import servers
from helpers.aio import run

from cnmt.errors import ConfigError
from cnmt.serving.launch import serve_app, url
from cnmt.serving.loadtest import check_loopback, percentile, read_sentences, run_load

SENTENCES = ["yi", "yi er", "yi er san", "si wu liu qi"]


def test_closed_loop_sends_the_bounded_count_and_reports_percentiles_and_devices() -> None:
    async def body():  # noqa: ANN202
        gw = await servers.start_gateway(None, policy="edge")
        try:
            return await run_load(gw.url, SENTENCES, concurrency=4, count=30)
        finally:
            await gw.close()

    report = run(body())
    assert (report.sent, report.ok, report.rejected, report.failed, report.lost) == (
        30,
        30,
        0,
        0,
        0,
    )
    assert report.devices == {"edge": 30}
    lat = report.latency_ms
    assert 0 < lat["p50"] <= lat["p95"] <= lat["p99"] <= lat["max"]
    assert report.throughput_rps == pytest.approx(30 / report.elapsed_s)
    assert "30 sent: 30 ok, 0 rejected (503), 0 failed, 0 lost" in report.table()


def test_open_loop_keeps_the_schedule() -> None:
    async def body():  # noqa: ANN202
        gw = await servers.start_gateway(None, policy="edge")
        try:
            return await run_load(gw.url, SENTENCES, rate=50.0, count=20)
        finally:
            await gw.close()

    report = run(body())
    assert report.sent == report.ok == 20
    assert report.elapsed_s >= 19 / 50.0  # the 20th request starts 19 intervals after the first
    assert report.mode == "open loop, 50 requests/s"


async def _start_hanging_up_server() -> tuple[web.AppRunner, str]:
    """A server whose /health answers but which hangs up on every translation request."""

    async def hang_up(request: web.Request) -> web.Response:
        assert request.transport is not None
        request.transport.close()
        await asyncio.sleep(1.0)
        return web.Response()

    app = web.Application()

    async def health(_request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    app.router.add_get("/health", health)
    app.router.add_post("/v1/translate", hang_up)
    runner, port = await serve_app(app, "127.0.0.1", 0)
    return runner, url("127.0.0.1", port)


def test_counts_rejected_and_lost_requests_separately() -> None:
    async def body():  # noqa: ANN202
        gw = await servers.start_gateway(None, policy="edge", edge_delay_s=0.2, max_pending=1)
        try:
            busy = await run_load(gw.url, SENTENCES, concurrency=4, count=12)
        finally:
            await gw.close()
        runner, address = await _start_hanging_up_server()
        try:
            dead = await run_load(address, SENTENCES, concurrency=2, count=4, timeout_s=2.0)
        finally:
            await runner.cleanup()
        return busy, dead

    busy, dead = run(body())
    assert busy.rejected > 0 and busy.ok > 0 and busy.lost == 0
    assert busy.sent == busy.ok + busy.rejected + busy.failed + busy.lost == 12
    assert any("HTTP 503" in e for e in busy.errors)
    assert (dead.sent, dead.lost, dead.ok) == (4, 4, 0)
    assert dead.latency_ms["p50"] is None


def test_a_gateway_that_is_not_running_is_named_instead_of_counted_as_lost() -> None:
    async def body() -> str:
        gw = await servers.start_gateway(None, policy="edge")
        address = gw.url
        await gw.close()  # nothing listens there any more
        return address

    address = run(body())
    with pytest.raises(ConfigError, match=f"the gateway is not reachable at {address}") as caught:
        asyncio.run(run_load(address, SENTENCES, concurrency=1, count=3))
    assert "cnmt launch" in str(caught.value) and "--url" in str(caught.value)


def test_requests_out_has_one_line_per_request_with_the_decision_fields(tmp_path: Path) -> None:
    async def body():  # noqa: ANN202
        cloud, cloud_url = await servers.start_cloud()
        gw = await servers.start_gateway(cloud_url, policy="cnmt")
        try:
            return await run_load(gw.url, SENTENCES, rate=40.0, count=8)
        finally:
            await gw.close()
            await cloud.cleanup()

    report = run(body())
    out = tmp_path / "requests.jsonl"
    assert report.write_requests(out) == 8
    lines = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert len(lines) == 8
    sent = [line["sent_at_s"] for line in lines]
    assert sent == sorted(sent) and sent[-1] >= 7 / 40.0 - 1e-3  # the open loop's schedule
    for line in lines:
        assert line["status"] == 200 and line["error"] is None
        assert line["device"] in ("edge", "cloud") and line["decided"] in ("edge", "cloud")
        assert set(line["predicted_ms"]) == {"edge", "cloud"}
        assert line["client_latency_ms"] >= line["latency_ms"] > 0
        assert line["n_tokens"] > 0 and line["m_actual"] == line["n_tokens"] + 1  # M = N + 1
    assert len({line["request_id"] for line in lines}) == 8
    assert "outcomes" not in json.loads(report.to_json())


@pytest.mark.parametrize(
    "address",
    ["http://127.0.0.1:8080", "http://localhost:1", "http://[::1]:8080", "http://127.8.9.10"],
)
def test_accepts_loopback_addresses(address: str) -> None:
    check_loopback(address)


@pytest.mark.parametrize(
    ("address", "message"),
    [
        ("http://10.1.2.3:8080", "not a loopback address"),
        ("http://192.168.0.1", "not a loopback address"),
        ("ftp://127.0.0.1", "expected http://HOST:PORT"),
        ("127.0.0.1:8080", "expected http://HOST:PORT"),
    ],
)
def test_refuses_anything_but_loopback(address: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        check_loopback(address)


def test_refuses_unbounded_or_ambiguous_loads() -> None:
    with pytest.raises(ConfigError, match="must be bounded"):
        asyncio.run(run_load("http://127.0.0.1:1", SENTENCES, concurrency=1))
    with pytest.raises(ConfigError, match="exactly one of --concurrency"):
        asyncio.run(run_load("http://127.0.0.1:1", SENTENCES, concurrency=1, rate=2.0, count=1))
    with pytest.raises(ConfigError, match="not a loopback"):
        asyncio.run(run_load("http://10.0.0.1:1", SENTENCES, concurrency=1, count=1))


def test_percentile_interpolates() -> None:
    assert percentile([], 50) is None
    assert percentile([5.0], 99) == 5.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.5
    assert percentile(list(range(101)), 95) == 95.0


def test_reads_non_empty_lines_and_shuffles_by_seed(tmp_path: Path) -> None:
    corpus = tmp_path / "c.zh"
    corpus.write_text("一\n\n二\n  \n三\n四\n", encoding="utf-8")
    assert read_sentences(corpus) == ["一", "二", "三", "四"]
    assert read_sentences(corpus, seed=1) == read_sentences(corpus, seed=1)
    assert sorted(read_sentences(corpus, seed=1)) == sorted(["一", "二", "三", "四"])
    assert len(read_sentences(corpus, limit=2)) == 2
    with pytest.raises(ConfigError, match="no such corpus"):
        read_sentences(tmp_path / "missing.zh")


def test_cli_loads_a_gateway_with_real_sentences_and_writes_json(
    tmp_path: Path, data_dir: Path
) -> None:
    out = tmp_path / "report.json"

    async def body() -> tuple[int, str]:
        gw = await servers.start_gateway(None, policy="edge")
        try:
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-P",
                "-m",
                "cnmt",
                "loadtest",
                "--url",
                gw.url,
                "--corpus",
                str(data_dir / "corpora" / "tatoeba-en-zh" / "all.zh"),
                "--concurrency",
                "3",
                "--count",
                "25",
                "--json",
                str(out),
                "--no-progress",
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
            )
            output, _ = await process.communicate()
            return process.returncode, output.decode()
        finally:
            await gw.close()

    code, output = run(body())
    assert code == 0, output
    assert "25 sent: 25 ok" in output
    report = json.loads(out.read_text())
    assert report["sent"] == report["ok"] == 25 and report["lost"] == 0
    assert report["devices"] == {"edge": 25}
    assert set(report["latency_ms"]) == {"p50", "p95", "p99", "mean", "max"}


def test_cli_exits_1_when_requests_are_lost_and_2_when_nothing_listens(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    corpus = tmp_path / "c.txt"
    corpus.write_text("a\nb\n")
    from cnmt.cli import main

    def loadtest(address: str) -> int:
        return main(
            ["loadtest", "--url", address, "--corpus", str(corpus), "--count", "2"]
            + ["--timeout", "2", "--no-progress"]
        )

    assert loadtest("http://127.0.0.1:9") == 2
    assert "the gateway is not reachable at http://127.0.0.1:9" in capsys.readouterr().err
    loop = asyncio.new_event_loop()
    runner, address = loop.run_until_complete(_start_hanging_up_server())
    serving = threading.Thread(target=loop.run_forever, daemon=True)
    serving.start()
    try:
        assert loadtest(address) == 1
    finally:
        loop.call_soon_threadsafe(loop.stop)
        serving.join(5)
        loop.run_until_complete(runner.cleanup())
        loop.close()
