"""The cloud server over loopback HTTP: answer and timestamps, limits, errors, metrics."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
from helpers import doubles, servers
from helpers.aio import run
from helpers.client import metric_samples, post

from cnmt.serving.cloud import CloudServer
from cnmt.serving.cloud_client import CloudClient
from cnmt.serving.launch import serve_app, url
from cnmt.serving.settings import CloudSettings


def test_answers_with_translation_token_counts_and_its_own_timestamps() -> None:
    async def body() -> tuple[float, float, Any]:
        runner, base = await servers.start_cloud(delay_s=0.05)
        try:
            async with aiohttp.ClientSession() as s:
                before = time.time()
                status, _, answer = await post(s, base, {"text": "wo ai ni"})
                after = time.time()
        finally:
            await runner.cleanup()
        assert status == 200
        return before, after, answer

    before, after, answer = run(body())
    assert answer["translation"] == "WO AI NI . [cloud]"
    assert (answer["n_tokens"], answer["m_tokens"]) == (3, 4)
    assert answer["exec_s"] >= 0.05
    assert before <= answer["received_at"] <= answer["sent_at"] <= after
    assert answer["sent_at"] - answer["received_at"] >= answer["exec_s"]


def test_the_client_turns_the_timestamps_into_an_rtt_sample() -> None:
    async def body() -> Any:
        runner, base = await servers.start_cloud(delay_s=0.1)
        client = CloudClient(base, timeout_s=5.0)
        await client.start()
        try:
            return await client.translate("ni hao"), await client.probe()
        finally:
            await client.close()
            await runner.cleanup()

    reply, healthy = run(body())
    assert healthy
    assert reply.text == "NI HAO . [cloud]"
    assert reply.round_trip_s >= reply.server_s >= 0.1
    # the cloud's wait and execution come off the round trip; its HTTP handling stays in it
    assert reply.wait_s is not None and reply.server_s >= reply.wait_s + reply.exec_s
    assert reply.rtt_sample(100e6) == max(
        0.0,
        reply.round_trip_s - reply.wait_s - reply.exec_s - 8.0 * reply.wire_bytes / 100e6,
    )
    assert reply.wire_bytes > len('{"text": "ni hao"}')


def test_serves_several_requests_at_once_with_several_workers() -> None:
    translators = [doubles.ScriptedTranslator(0.3) for _ in range(3)]

    async def body() -> list[int]:
        server = CloudServer(translators, CloudSettings(port=0, workers=3))
        runner, port = await serve_app(server.app(), "127.0.0.1", 0)
        try:
            async with aiohttp.ClientSession() as s:
                results = await asyncio.gather(
                    *(post(s, url("127.0.0.1", port), {"text": f"t {i}"}) for i in range(3))
                )
        finally:
            await runner.cleanup()
        return [status for status, _, _ in results]

    assert run(body()) == [200, 200, 200]
    # Each request held its model for 0.3 s, so the three ran on three different instances.
    assert [t.calls for t in translators] == [1, 1, 1]


def test_cloud_sheds_load_with_503_and_retry_after() -> None:
    async def body() -> list[tuple[int, dict[str, str], Any]]:
        runner, base = await servers.start_cloud(delay_s=0.3, max_pending=1)
        try:
            async with aiohttp.ClientSession() as s:
                return await asyncio.gather(*(post(s, base, {"text": f"t {i}"}) for i in range(4)))
        finally:
            await runner.cleanup()

    results = run(body())
    refused = [(h, a) for status, h, a in results if status == 503]
    assert refused and any(status == 200 for status, _, _ in results)
    for headers, answer in refused:
        assert headers["Retry-After"] == "1"
        assert "overloaded" in answer["error"]


def test_cloud_rejects_bad_input_and_texts_the_model_refuses() -> None:
    async def body() -> list[tuple[int, Any]]:
        runner, base = await servers.start_cloud()
        try:
            async with aiohttp.ClientSession() as s:
                cases = [
                    b"nope",
                    b'{"text": 1}',
                    b'{"text": "a REFUSE"}',
                    b'{"text": "' + b"w " * 80 + b'"}',
                ]
                return [
                    (status, answer)
                    for status, _, answer in [await post(s, base, c) for c in cases]
                ]
        finally:
            await runner.cleanup()

    (s1, a1), (s2, a2), (s3, a3), (s4, a4) = run(body())
    assert s1 == 400 and "not valid JSON" in a1["error"]
    assert s2 == 400 and "must be a string" in a2["error"]
    assert s3 == 422 and "REFUSE is not in the vocabulary" in a3["error"]
    assert s4 == 422 and "at most 50" in a4["error"]


def test_cloud_health_and_metrics() -> None:
    async def body() -> tuple[Any, str]:
        runner, base = await servers.start_cloud()
        try:
            async with aiohttp.ClientSession() as s:
                await post(s, base, {"text": "yi"})
                await post(s, base, b"{")
                health = await (await s.get(f"{base}/health")).json()
                metrics = await (await s.get(f"{base}/metrics")).text()
        finally:
            await runner.cleanup()
        return health, metrics

    health, metrics = run(body())
    assert health == {"status": "ok", "service": "cnmt-cloud", "pending": 0}
    samples = metric_samples(metrics)
    assert samples['cnmt_cloud_requests_total{status="200"}'] == 1
    assert samples['cnmt_cloud_requests_total{status="400"}'] == 1
    assert samples["cnmt_cloud_exec_seconds_count"] == 1
