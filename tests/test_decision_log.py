"""What a newcomer sees of each request: one decision line per request at INFO (text or JSON),
warnings about unphysical learnt models, repeated model warnings counted, a 404 listing every
route."""

from __future__ import annotations

import json
import logging

import aiohttp
import pytest
from helpers import doubles, servers
from helpers.aio import run

from cnmt.runtime.repeated_warnings import RepeatedWarnings, shorten
from cnmt.schedulers.base import LatencyModel
from cnmt.serving.decision_log import decision_line
from cnmt.serving.gateway import model_warnings, request_id
from cnmt.serving.logs import JsonLinesFormatter

DECISIONS = "cnmt.serving.decisions"


async def _post(session: aiohttp.ClientSession, base: str, text: str, **headers: str) -> dict:
    async with session.post(f"{base}/v1/translate", json={"text": text}, headers=headers) as r:
        assert r.status == 200
        answer = await r.json()
        assert r.headers["X-Request-Id"] == answer["request_id"]
        return answer


def test_the_gateway_logs_each_decision_with_its_predictions_and_what_it_measured(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def body() -> list[dict]:
        cloud, cloud_url = await servers.start_cloud()
        gw = await servers.start_gateway(cloud_url, policy="cnmt")
        answers = []
        try:
            async with aiohttp.ClientSession() as s:
                answers.append(await _post(s, gw.url, "yi", **{"X-Request-Id": "client-7"}))
                # long: the slow edge's a_m makes the cloud the cheaper device
                answers.append(await _post(s, gw.url, " ".join(["yi"] * 30)))
                await cloud.cleanup()  # the cloud goes away: the next offload falls back
                answers.append(await _post(s, gw.url, " ".join(["er"] * 30)))
        finally:
            await gw.close()
        return answers

    with caplog.at_level(logging.INFO, logger=DECISIONS):
        answers = run(body())
    records = [r for r in caplog.records if r.name == DECISIONS]
    assert len(records) == 3
    assert answers[0]["request_id"] == "client-7"
    for record, answer in zip(records, answers, strict=True):
        fields = record.fields  # type: ignore[attr-defined]
        for key in ("request_id", "n_tokens", "m_estimated", "decided", "device", "fallback"):
            assert fields[key] == answer[key], key
        assert fields["predicted_ms"] == answer["predicted_ms"]
        assert fields["decision"] == answer["decision"]  # the core's Decision, serialised once
        assert set(fields["decision"]["predicted"]) == {"edge", "cloud"}
        assert fields["latency_ms"] == answer["latency_ms"] > 0
        message = record.getMessage()
        assert message.startswith(f"request {answer['request_id']} N={answer['n_tokens']} ")
        assert f"-> {answer['device']} (" in message
    assert records[0].fields["device"] == "edge"  # type: ignore[attr-defined]
    assert records[1].fields["decided"] == records[1].fields["device"] == "cloud"  # type: ignore[attr-defined]
    third = records[2]
    assert third.fields["decided"] == "cloud" and third.fields["device"] == "edge"  # type: ignore[attr-defined]
    assert third.fields["why"] == "fallback" and third.fields["fallback"]  # type: ignore[attr-defined]
    assert f"(fallback {third.fields['fallback']}, policy chose cloud)" in third.getMessage()  # type: ignore[attr-defined]


def test_no_decision_line_is_made_when_info_is_off(caplog: pytest.LogCaptureFixture) -> None:
    async def body() -> None:
        gw = await servers.start_gateway(None, policy="edge")
        try:
            async with aiohttp.ClientSession() as s:
                await _post(s, gw.url, "yi er")
        finally:
            await gw.close()

    with caplog.at_level(logging.WARNING, logger=DECISIONS):
        run(body())
    assert not [r for r in caplog.records if r.name == DECISIONS]


def test_json_log_lines_carry_every_field_of_the_decision() -> None:
    answer = {
        "request_id": "ab12",
        "n_tokens": 12,
        "m_estimated": 10.25,
        "predicted_ms": {"edge": 45.1, "cloud": 30.2},
        "decided": "cloud",
        "device": "cloud",
        "fallback": None,
        "latency_ms": 33.0,
        "exec_ms": 10.1,
        "wait_ms": 0.2,
        "m_actual": 11,
    }
    record = logging.LogRecord(
        DECISIONS, logging.INFO, __file__, 1, "%s", (decision_line(answer),), None
    )
    record.fields = {**answer, "why": "policy"}
    line = json.loads(JsonLinesFormatter("cnmt launch").format(record))
    assert line["level"] == "info" and line["logger"] == DECISIONS
    assert line["process"] == "cnmt launch" and line["time"].endswith("+00:00")
    assert line["predicted_ms"] == {"edge": 45.1, "cloud": 30.2} and line["why"] == "policy"
    assert line["message"] == (
        "request ab12 N=12 M~10.2 predicted edge 45.1 ms, cloud 30.2 ms -> cloud (policy); "
        "took 33.0 ms, cloud exec 10.1 ms, wait 0.2 ms"
    )


def test_a_client_request_id_is_kept_only_when_it_is_a_plain_token() -> None:
    assert request_id("abc-123.x") == "abc-123.x"
    for bad in ("", "a b", "x" * 65, "\x1b]0;owned", None):
        made = request_id(bad)
        assert made != bad and len(made) == 12 and made.isalnum()


def test_v1_models_warns_while_a_learnt_model_predicts_a_negative_time() -> None:
    falling = LatencyModel(a_n=-0.00042, a_m=0.0001, b=-0.0134)  # as seen in the tour
    found = model_warnings("edge", falling, max_tokens=100)
    assert any("a_n = -0.4200 ms/token is negative" in w for w in found)
    assert any("predicts -13.7 ms for N = M = 1" in w for w in found)
    assert model_warnings("cloud", doubles.CLOUD_LATENCY, max_tokens=100) == []

    async def body() -> dict:
        gw = await servers.start_gateway(
            None, policy="edge", priors=(falling, doubles.CLOUD_LATENCY)
        )
        try:
            async with aiohttp.ClientSession() as s, s.get(f"{gw.url}/v1/models") as r:
                return await r.json()
        finally:
            await gw.close()

    models = run(body())
    assert models["warnings"] and all(w.startswith("edge: ") for w in models["warnings"])


def test_an_unknown_path_lists_every_route_the_gateway_serves() -> None:
    async def body() -> tuple[int, dict]:
        gw = await servers.start_gateway(None, policy="edge")
        try:
            async with aiohttp.ClientSession() as s, s.get(f"{gw.url}/v2/translate") as r:
                return r.status, await r.json()
        finally:
            await gw.close()

    status, answer = run(body())
    assert status == 404
    for route in (
        "POST /v1/translate",
        "GET /health",
        "GET /ready",
        "GET /v1/models",
        "GET /metrics",
    ):
        assert route in answer["error"]
    assert "HEAD" not in answer["error"]


def test_a_repeated_model_warning_is_logged_once_a_minute_with_its_count(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = [0.0]
    warnings = RepeatedWarnings(logging.getLogger("test.repeated"), clock=lambda: now[0])
    with caplog.at_level(logging.WARNING, logger="test.repeated"):
        for second in (0.0, 1.0, 2.0, 30.0, 59.0):
            now[0] = second
            warnings.warn("cn2en", "dropped_source_tokens", "cn2en: dropped 1 token")
        warnings.seen("cn2en", "dropped_source_tokens")  # counted by a tokenizer, not logged
        now[0] = 61.0
        warnings.warn("cn2en", "dropped_source_tokens", "cn2en: dropped 2 tokens")
    lines = [r.getMessage() for r in caplog.records if r.name == "test.repeated"]
    assert len(lines) == 2
    assert lines[0].startswith("cn2en: dropped 1 token; repeats are counted")
    assert "5 time(s) in the last 61 s, 7 since start" in lines[1]
    assert warnings.totals() == {("cn2en", "dropped_source_tokens"): 7}


def test_a_logged_token_list_stays_short() -> None:
    marks = ["\u0301" * 3] * 8150 + ["x" * 100]
    text = shorten(marks)
    assert len(text) < 200 and text.endswith("(and 8141 more)")
    assert shorten(["a", "b"]) == "a b"
