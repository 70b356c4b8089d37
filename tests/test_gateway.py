"""The edge gateway over real loopback HTTP: both paths, faults, overload, bad input, metrics."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from helpers import servers
from helpers.aio import run, wait_until
from helpers.client import get_text, metric_samples, post
from helpers.servers import ScriptedCloudProcess

from cnmt.datasets.link import RttTimeline
from cnmt.serving.launch import serve_app, url
from cnmt.serving.proxy import DelayProxy


def test_translates_locally_when_the_policy_chooses_the_edge() -> None:
    async def body() -> None:
        cloud, cloud_url = await servers.start_cloud()
        gw = await servers.start_gateway(cloud_url, policy="edge")
        try:
            async with aiohttp.ClientSession() as s:
                status, _, answer = await post(s, gw.url, {"text": "wo men zou ba"})
        finally:
            await gw.close()
            await cloud.cleanup()
        assert status == 200
        assert answer["translation"] == "WO MEN ZOU BA . [edge]"
        assert answer["device"] == "edge" and answer["decided"] == "edge"
        assert answer["fallback"] is None
        assert answer["n_tokens"] == 4
        assert answer["m_estimated"] == 5.0  # linear: 1.0 * 4 + 1.0
        assert answer["m_actual"] == 5
        assert answer["latency_ms"] > 0
        assert answer["rtt_sample_ms"] is None  # no cloud exchange, nothing learnt

    run(body())


def test_offloads_to_the_cloud_when_the_policy_chooses_the_cloud() -> None:
    async def body() -> None:
        cloud, cloud_url = await servers.start_cloud()
        gw = await servers.start_gateway(cloud_url, policy="cloud")
        try:
            async with aiohttp.ClientSession() as s:
                status, _, answer = await post(s, gw.url, {"text": "ni hao"})
        finally:
            await gw.close()
            await cloud.cleanup()
        assert status == 200
        assert answer["translation"] == "NI HAO . [cloud]"
        assert (answer["device"], answer["decided"], answer["fallback"]) == ("cloud", "cloud", None)
        assert answer["m_actual"] == 3
        assert answer["rtt_sample_ms"] is not None and answer["rtt_sample_ms"] >= 0

    run(body())


def test_cnmt_policy_sends_long_inputs_to_the_fast_cloud_and_short_ones_stay_local() -> None:
    # With the test latency models, T_edge - T_cloud = 0.0018*N + 0.018*M + 0.008 s; the RTT
    # estimate is 50 ms before any exchange, so the edge wins only for the shortest texts.
    async def body() -> None:
        cloud, cloud_url = await servers.start_cloud()
        gw = await servers.start_gateway(
            cloud_url,
            policy="cnmt",
            length=("linear", {"gamma": 1.0, "delta": 0.0}),
            rtt=("last", {"initial_s": 0.05}),
        )
        try:
            async with aiohttp.ClientSession() as s:
                _, _, short = await post(s, gw.url, {"text": "hao"})
                _, _, long = await post(s, gw.url, {"text": " ".join(["ci"] * 10)})
        finally:
            await gw.close()
            await cloud.cleanup()
        assert short["device"] == "edge"
        assert short["predicted_ms"]["edge"] <= short["predicted_ms"]["cloud"]
        assert long["device"] == "cloud"
        assert long["predicted_ms"]["edge"] > long["predicted_ms"]["cloud"]

    run(body())


def test_rtt_estimate_learns_the_links_delay_without_the_clouds_own_time() -> None:
    async def body() -> None:
        cloud, cloud_url = await servers.start_cloud(delay_s=0.2)
        host, port = cloud_url.removeprefix("http://").split(":")
        link = DelayProxy((host, int(port)), RttTimeline.constant(0.1))
        await link.start()
        gw = await servers.start_gateway(url("127.0.0.1", link.port), policy="cloud")
        try:
            async with aiohttp.ClientSession() as s:
                _, _, first = await post(s, gw.url, {"text": "yi"})
                _, _, second = await post(s, gw.url, {"text": "er san"})
                metrics = await get_text(s, f"{gw.url}/metrics")
        finally:
            await gw.close()
            await link.close()
            await cloud.cleanup()
        assert first["rtt_estimate_ms"] == 100.0  # the `last` estimator's initial value
        assert first["rtt_sample_ms"] >= 95.0
        # The cloud held each request >= 200 ms; the sample leaves that out of the link's RTT.
        assert first["latency_ms"] - first["rtt_sample_ms"] >= 200.0
        assert second["rtt_estimate_ms"] == first["rtt_sample_ms"]  # learnt from the exchange
        gauge = metric_samples(metrics)["cnmt_gateway_rtt_estimate_seconds"]
        assert gauge * 1000 == pytest.approx(second["rtt_sample_ms"], abs=0.01)

    run(body())


def test_rtt_estimate_uses_the_injected_clock() -> None:
    # A windowed median whose samples expire after 10 s: moving the injected clock ahead makes
    # the sample stale, and the estimate falls back to stale_s; no real time passes.
    now = [1000.0]

    async def body() -> None:
        cloud, cloud_url = await servers.start_cloud()
        gw = await servers.start_gateway(
            cloud_url,
            policy="cloud",
            clock=lambda: now[0],
            rtt=("median", {"window": 3, "max_age_s": 10.0, "stale_s": 0.0, "initial_s": 0.5}),
        )
        try:
            async with aiohttp.ClientSession() as s:
                _, _, first = await post(s, gw.url, {"text": "yi"})
                _, _, fresh = await post(s, gw.url, {"text": "er"})
                now[0] += 60.0
                _, _, stale = await post(s, gw.url, {"text": "san"})
        finally:
            await gw.close()
            await cloud.cleanup()
        assert first["rtt_estimate_ms"] == 500.0
        assert fresh["rtt_estimate_ms"] == first["rtt_sample_ms"]
        assert stale["rtt_estimate_ms"] == 0.0

    run(body())


def test_falls_back_to_the_edge_when_the_cloud_times_out() -> None:
    async def body() -> None:
        cloud, cloud_url = await servers.start_cloud(delay_s=1.5)
        gw = await servers.start_gateway(cloud_url, policy="cloud", cloud_timeout_s=0.3)
        try:
            async with aiohttp.ClientSession() as s:
                status, _, answer = await post(s, gw.url, {"text": "man ma"})
                health = await (await s.get(f"{gw.url}/health")).json()
                metrics = await get_text(s, f"{gw.url}/metrics")
        finally:
            await gw.close()
            await cloud.cleanup()
        assert status == 200
        assert answer["translation"] == "MAN MA . [edge]"
        assert (answer["device"], answer["decided"], answer["fallback"]) == (
            "edge",
            "cloud",
            "timeout",
        )
        assert answer["latency_ms"] >= 300.0  # it did wait for the deadline first
        assert health["cloud"] == "unhealthy"
        samples = metric_samples(metrics)
        assert samples['cnmt_gateway_fallbacks_total{reason="timeout"}'] == 1
        assert samples["cnmt_gateway_cloud_healthy"] == 0

    run(body())


GARBAGE = [
    pytest.param(200, b"<html>Bad Gateway</html>", "bad_response", id="html"),
    pytest.param(200, b"[1, 2, 3]", "bad_response", id="json-list"),
    pytest.param(200, b'{"translation": 42}', "bad_response", id="wrong-type"),
    pytest.param(
        200,
        b'{"translation": "x", "n_tokens": 1, "m_tokens": 1, "exec_s": 0.1}',
        "bad_response",
        id="no-timestamps",
    ),
    pytest.param(
        200,
        b'{"translation": "x", "n_tokens": 1, "m_tokens": 1, "exec_s": 0.1, '
        b'"received_at": 5, "sent_at": 4}',
        "bad_response",
        id="time-goes-backwards",
    ),
    pytest.param(200, b"\xff\xfe not utf-8", "bad_response", id="not-utf8"),
    pytest.param(500, b'{"error": "disk on fire"}', "status", id="http-500"),
    pytest.param(404, b"not found", "status", id="http-404"),
]


@pytest.mark.parametrize(("status", "payload", "reason"), GARBAGE)
def test_falls_back_to_the_edge_when_the_cloud_answers_garbage(
    status: int, payload: bytes, reason: str
) -> None:
    async def garbage(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(status=status, body=payload, content_type="application/json")

    async def healthy(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "service": "cnmt-cloud"})

    async def body() -> None:
        app = web.Application()
        app.router.add_post("/v1/translate", garbage)
        app.router.add_get("/health", healthy)
        runner, port = await serve_app(app, "127.0.0.1", 0)
        gw = await servers.start_gateway(url("127.0.0.1", port), policy="cloud")
        try:
            async with aiohttp.ClientSession() as s:
                code, _, answer = await post(s, gw.url, {"text": "zai jian"})
        finally:
            await gw.close()
            await runner.cleanup()
        assert code == 200
        assert answer["translation"] == "ZAI JIAN . [edge]"
        assert (answer["device"], answer["fallback"]) == ("edge", reason)

    run(body())


def test_no_request_is_lost_when_the_cloud_dies_during_a_load_and_the_probe_brings_it_back(
    scripted_cloud_process: Callable[..., ScriptedCloudProcess],
) -> None:
    cloud = scripted_cloud_process(delay_s=0.03)
    cloud_url = cloud.start()
    port = cloud.port

    async def body() -> None:
        gw = await servers.start_gateway(cloud_url, policy="cloud", cloud_timeout_s=1.0)
        answers: list[tuple[str, int, dict[str, Any]]] = []
        try:
            async with aiohttp.ClientSession() as s:

                async def client(worker: int) -> None:
                    for i in range(10):
                        text = f"ju zi {worker} {i}"
                        status, _, answer = await post(s, gw.url, {"text": text})
                        answers.append((text, status, answer))

                load = [asyncio.create_task(client(w)) for w in range(6)]
                await wait_until(lambda: len(answers) >= 10)
                cloud.kill()  # SIGKILL mid-load: connections reset, requests in flight fail
                await asyncio.gather(*load)
                assert not gw.gateway.cloud_healthy
                # A new cloud on the same port: the health probe must find it.
                await asyncio.get_running_loop().run_in_executor(None, cloud.start, port)
                await wait_until(lambda: gw.gateway.cloud_healthy)
                status, _, back = await post(s, gw.url, {"text": "hui lai le"})
        finally:
            await gw.close()
        assert len(answers) == 60
        lost = [(text, status, a) for text, status, a in answers if status != 200]
        assert lost == []
        for text, _, answer in answers:  # every answer is the translation of its own text
            assert answer["translation"] == f"{text.upper()} . [{answer['device']}]"
        devices = {a["device"] for _, _, a in answers}
        assert devices == {"cloud", "edge"}  # some before the kill, the rest locally
        fallbacks = {a["fallback"] for _, _, a in answers if a["device"] == "edge"}
        assert "cloud_unhealthy" in fallbacks  # after the first failure, no time wasted on it
        assert fallbacks <= {"connection", "cloud_unhealthy", "timeout", "status"}
        assert (status, back["device"], back["fallback"]) == (200, "cloud", None)

    run(body(), timeout_s=90)


def test_restarts_a_crashed_edge_worker_and_still_answers(tmp_path: Path) -> None:
    marker = tmp_path / "crash-once"
    marker.write_text("")

    async def body() -> None:
        gw = await servers.start_gateway(None, policy="edge")
        try:
            pid_before = gw.gateway.edge.pid
            async with aiohttp.ClientSession() as s:
                status, _, answer = await post(s, gw.url, {"text": f"a CRASH:{marker} b"})
            pid_after = gw.gateway.edge.pid
        finally:
            await gw.close()
        assert status == 200
        assert answer["device"] == "edge"
        assert not marker.exists()  # the first worker did die on it
        assert pid_after != pid_before
        assert gw.gateway.edge.restarts == 1

    run(body())


def test_answers_503_with_retry_after_when_the_queue_is_full() -> None:
    async def body() -> None:
        gw = await servers.start_gateway(
            None, policy="edge", edge_delay_s=0.3, max_pending=2, retry_after_s=3
        )
        try:
            async with aiohttp.ClientSession() as s:
                results = await asyncio.gather(
                    *(post(s, gw.url, {"text": f"ci {i}"}) for i in range(8))
                )
                metrics = await get_text(s, f"{gw.url}/metrics")
        finally:
            await gw.close()
        refused = [(h, a) for status, h, a in results if status == 503]
        served = [a for status, _, a in results if status == 200]
        assert len(refused) + len(served) == 8
        assert refused and len(served) >= 2
        for headers, answer in refused:
            assert headers["Retry-After"] == "3"
            assert "overloaded" in answer["error"]
        samples = metric_samples(metrics)
        assert samples['cnmt_gateway_rejected_total{status="503"}'] == len(refused)

    run(body())


BAD_INPUT = [
    pytest.param(b"{not json", 400, "not valid JSON", id="invalid-json"),
    pytest.param(b"", 400, "body is empty", id="empty-body"),
    pytest.param(b'["text"]', 400, "must be a JSON object", id="json-list"),
    pytest.param(b'{"txt": "hi"}', 400, "no `text` field", id="missing-text"),
    pytest.param(b'{"text": 42}', 400, "must be a string", id="number-text"),
    pytest.param(b'{"text": null}', 400, "must be a string", id="null-text"),
    pytest.param(b'{"text": ""}', 400, "`text` is empty", id="empty-text"),
    pytest.param(b'{"text": "  \\n "}', 400, "`text` is empty", id="blank-text"),
    pytest.param(b'{"text": "\xff\xfe"}', 400, "not valid UTF-8", id="invalid-utf8"),
    pytest.param(
        b'{"text": "' + b"x " * 5000 + b'"}', 413, "larger than 4096 bytes", id="oversized-body"
    ),
    pytest.param(b'{"text": "' + b"w " * 60 + b'"}', 422, "at most 50", id="too-many-tokens"),
    pytest.param(b'{"text": "a REFUSE b"}', 422, "cannot translate", id="model-refuses"),
]


def test_bad_input_gets_a_4xx_with_a_message_naming_the_problem() -> None:
    async def body() -> None:
        gw = await servers.start_gateway(None, policy="edge", max_body_bytes=4096)
        try:
            async with aiohttp.ClientSession() as s:
                for case in BAD_INPUT:
                    payload, expected_status, expected_message = case.values
                    status, _, answer = await post(s, gw.url, payload)
                    assert status == expected_status, case.id
                    assert expected_message in answer["error"], (case.id, answer)
                async with s.get(f"{gw.url}/v1/translate") as response:
                    assert response.status == 405
                status, _, ok = await post(s, gw.url, {"text": "still fine"})
        finally:
            await gw.close()
        assert status == 200 and ok["device"] == "edge"  # bad requests left the gateway working

    run(body())


def test_metrics_expose_requests_latency_length_errors_and_rtt_in_prometheus_format() -> None:
    async def body() -> str:
        cloud, cloud_url = await servers.start_cloud()
        gw = await servers.start_gateway(
            cloud_url, policy="edge", length=("linear", {"gamma": 1.0, "delta": 3.0})
        )
        try:
            async with aiohttp.ClientSession() as s:
                for text in ("yi", "yi er", "yi er san"):
                    await post(s, gw.url, {"text": text})
                async with s.get(f"{gw.url}/metrics") as response:
                    assert response.headers["Content-Type"].startswith("text/plain; version=")
                    return await response.text()
        finally:
            await gw.close()
            await cloud.cleanup()

    samples = metric_samples(run(body()))
    assert samples['cnmt_gateway_requests_total{device="edge"}'] == 3
    assert samples['cnmt_gateway_decisions_total{device="edge"}'] == 3
    assert samples['cnmt_gateway_latency_seconds_bucket{device="edge",le="+Inf"}'] == 3
    assert samples['cnmt_gateway_latency_seconds_count{device="edge"}'] == 3
    # Estimates 4, 5, 6 against actual lengths 2, 3, 4: every error is +2 tokens.
    assert samples['cnmt_gateway_length_estimate_error_tokens_bucket{le="1.0"}'] == 0
    assert samples['cnmt_gateway_length_estimate_error_tokens_bucket{le="2.0"}'] == 3
    assert samples["cnmt_gateway_length_estimate_error_tokens_count"] == 3
    assert samples["cnmt_gateway_length_estimate_abs_error_tokens_total"] == 6
    assert samples["cnmt_gateway_rtt_estimate_seconds"] == 0.1
    assert samples["cnmt_gateway_cloud_healthy"] == 1


def test_health_and_ready_endpoints() -> None:
    async def body() -> None:
        gw = await servers.start_gateway(None, policy="edge")
        try:
            async with aiohttp.ClientSession() as s:
                health = await (await s.get(f"{gw.url}/health")).json()
                ready = await s.get(f"{gw.url}/ready")
                assert ready.status == 200
        finally:
            await gw.close()
        assert health == {"status": "ok", "service": "cnmt-gateway", "cloud": "none", "pending": 0}

    run(body())


def test_a_cloud_decision_without_a_cloud_runs_locally() -> None:
    async def body() -> None:
        gw = await servers.start_gateway(None, policy="cloud")
        try:
            async with aiohttp.ClientSession() as s:
                status, _, answer = await post(s, gw.url, {"text": "ni hao"})
        finally:
            await gw.close()
        assert status == 200
        assert (answer["device"], answer["decided"], answer["fallback"]) == (
            "edge",
            "cloud",
            "no_cloud",
        )

    run(body())
