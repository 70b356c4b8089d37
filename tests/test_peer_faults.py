"""Fault injection for peers: a fake cloud that speaks the protocol and lies, one class of lie
per test (the attack round of issue 21), against a live gateway that learns (an ``online``
cloud latency model, an ``online_linear`` length estimator, an ``ewma`` RTT estimator).

Each test runs the same script. Honest replies first (the gateway learns the link and the
cloud); then the liar answers until it has sent 100 lying replies (the breaker lets one trial
through per good probe, so this takes a few hundred requests); then honest again for 50
requests. It asserts, for every class: no answer with a 5xx (or any error: no request lost);
every answer, ``/v1/models`` and the state file strict JSON; the learnt models finite and
physical, and exactly what they were before the liar came (nothing it said was learnt), so the
decisions for every N are the same as before; the redirect never followed; the gateway's
memory bounded; and the honest cloud used again within the 50 requests after the liar left.

``python -P -m pytest -s tests/test_peer_faults.py`` prints one line per class: the table in
docs/hardening.md ("A cloud that lies").
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from helpers import doubles, servers
from helpers.aio import run
from helpers.client import metric_samples

from cnmt.schedulers import Device, Request
from cnmt.schedulers.latency_models import ProfileLatency
from cnmt.schema import NoParams
from cnmt.serving import strict_json
from cnmt.serving.launch import serve_app, url

pytestmark = pytest.mark.slow

LIES_WANTED = 100
HONEST_AFTER = 50
BIG = 50 * 1024 * 1024  # the attack round's 50 MB translation
BIG_ERROR = 20 * 1024 * 1024  # and its 20 MB 422 text
MiB = 1024 * 1024
# A gateway's memory after the liar may exceed what it was before by this much at most (the
# unvalidated gateway grew by 240 MB per 50 MB exchange).
MEMORY_GROWTH_LIMIT = 64 * MiB


def honest_fields(text: str, received_at: float) -> dict[str, Any]:
    n = len(text.split())
    return {
        "translation": text.upper() + " .",
        "n_tokens": n,
        "m_tokens": n + 1,
        "exec_s": 0.0005,
        "received_at": received_at,
        "sent_at": time.time(),
        "wait_s": 0.0,
        "pending": 0,
        "batch_size": 1,
    }


Lie = Callable[[web.Request, str, float], Awaitable[web.StreamResponse]]


def lying_json(**changes: Any) -> Lie:
    async def lie(request: web.Request, text: str, received_at: float) -> web.StreamResponse:
        fields = {**honest_fields(text, received_at), **changes}
        if "sent_at_offset" in fields:
            fields["sent_at"] = received_at + fields.pop("sent_at_offset")
        return web.Response(body=json.dumps(fields).encode(), content_type="application/json")

    return lie


def lying_raw(make: Callable[[str, float], bytes], status: int = 200) -> Lie:
    async def lie(request: web.Request, text: str, received_at: float) -> web.StreamResponse:
        return web.Response(body=make(text, received_at), status=status)

    return lie


def with_raw_field(key: str, raw: bytes) -> Callable[[str, float], bytes]:
    def make(text: str, received_at: float) -> bytes:
        fields = honest_fields(text, received_at)
        encoded = json.dumps(fields).encode()
        return encoded.replace(
            f'"{key}": {json.dumps(fields[key])}'.encode(), f'"{key}": '.encode() + raw
        )

    return make


_big: dict[str, bytes] = {}


def big_translation(text: str, received_at: float) -> bytes:
    if "t" not in _big:
        _big["t"] = b'{"translation": "' + b"x" * BIG + b'", "n_tokens": 1}'
    return _big["t"]


def big_error(text: str, received_at: float) -> bytes:
    if "e" not in _big:
        _big["e"] = b'{"error": "' + b"e" * BIG_ERROR + b'"}'
    return _big["e"]


async def streamed_big_translation(
    request: web.Request, text: str, received_at: float
) -> web.StreamResponse:
    """50 MB without a Content-Length, in 1 MiB chunks, until the gateway hangs up."""
    response = web.StreamResponse(headers={"Content-Type": "application/json"})
    await response.prepare(request)
    chunk = b"x" * MiB
    try:
        await response.write(b'{"translation": "')
        for _ in range(BIG // MiB):
            await response.write(chunk)
        await response.write(b'"}')
    except (ConnectionError, RuntimeError):
        pass  # the gateway stopped reading: as it should
    return response


async def redirect(request: web.Request, text: str, received_at: float) -> web.StreamResponse:
    raise web.HTTPTemporaryRedirect(location="/elsewhere")


def garbage(text: str, received_at: float) -> bytes:
    return random.Random(len(text)).randbytes(2000)


CLASSES: dict[str, Lie] = {
    "m_tokens=10**200": lying_json(m_tokens=10**200),
    "m_tokens=10**400": lying_json(m_tokens=10**400),
    "m_tokens=10**6": lying_json(m_tokens=10**6),
    "5000-digit integer": lying_raw(with_raw_field("n_tokens", b"9" * 5000)),
    "5000 [": lying_raw(lambda text, at: b"[" * 5000),
    "NaN exec_s": lying_raw(with_raw_field("exec_s", b"NaN")),
    "exec_s=-1e9": lying_json(exec_s=-1e9),
    "exec_s=+1e9": lying_json(exec_s=1e9),
    "sent_at-received_at=1e9": lying_json(sent_at_offset=1e9),
    "sent_at<received_at": lying_json(sent_at_offset=-5.0),
    "50 MB translation": lying_raw(big_translation),
    "50 MB streamed": streamed_big_translation,
    "20 MB 422 text": lying_raw(big_error, status=422),
    "307 redirect": redirect,
    "garbage bytes": lying_raw(garbage),
}


class FakeCloud:
    """Speaks the cloud protocol; lies with ``lie`` while ``lying`` is set."""

    def __init__(self, lie: Lie) -> None:
        self.lie = lie
        self.lying = False
        self.lies_sent = 0
        self.redirect_hits = 0

    async def translate(self, request: web.Request) -> web.StreamResponse:
        received_at = time.time()
        text = (await request.json())["text"]
        if self.lying:
            self.lies_sent += 1
            return await self.lie(request, text, received_at)
        return web.json_response(honest_fields(text, received_at))

    async def elsewhere(self, request: web.Request) -> web.Response:
        self.redirect_hits += 1  # where a followed redirect would take the user's text
        return web.json_response(honest_fields("STOLEN", time.time()))

    async def health(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "service": "cnmt-cloud", "pending": 0})

    async def start(self) -> tuple[web.AppRunner, str]:
        app = web.Application(client_max_size=2 * MiB)
        app.router.add_post("/v1/translate", self.translate)
        app.router.add_post("/elsewhere", self.elsewhere)
        app.router.add_get("/health", self.health)
        runner, port = await serve_app(app, "127.0.0.1", 0)
        return runner, url("127.0.0.1", port)


def rss_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def strict(text: str) -> Any:
    return strict_json.loads(text.encode("utf-8"))


def learnt(gateway: Any) -> dict[str, Any]:
    """Everything the decisions read, as numbers."""
    cloud = gateway.latency[Device.CLOUD].current()
    length = gateway.length_estimator
    return {
        "cloud": (cloud.a_n, cloud.a_m, cloud.b),
        "length": (length.gamma, length.delta),
        "rtt": gateway.rtt_estimator.estimate(0.0),
        "wait": gateway.cloud_wait_estimator.estimate(0.0),
    }


def decisions(gateway: Any) -> list[str]:
    state = gateway.core.state(gateway.clock())
    out = []
    for n in range(1, 50):
        request = Request(n_tokens=n, payload_bytes=20 + 6 * n)
        m = gateway.length_estimator.estimate(request)
        out.append(gateway.device_policy.choose(request, m, state).value)
    return out


def physical(values: dict[str, Any], gateway: Any) -> bool:
    numbers = [*values["cloud"], *values["length"], values["rtt"], values["wait"]]
    model = gateway.latency[Device.CLOUD].current()
    return all(math.isfinite(v) for v in numbers) and all(
        model.predict(n, m) >= 0 for n in (4, 16, 48) for m in (4, 16, 48)
    )


def same(a: dict[str, Any], b: dict[str, Any]) -> bool:
    flat_a = [*a["cloud"], *a["length"], a["rtt"], a["wait"]]
    flat_b = [*b["cloud"], *b["length"], b["rtt"], b["wait"]]
    return all(
        math.isclose(x, y, rel_tol=1e-9, abs_tol=1e-12) for x, y in zip(flat_a, flat_b, strict=True)
    )


async def post(session: aiohttp.ClientSession, base: str, text: str) -> tuple[int, Any]:
    async with session.post(f"{base}/v1/translate", json={"text": text}) as response:
        return response.status, strict(await response.text())


def run_class(name: str, tmp_path: Path) -> dict[str, Any]:
    fake = FakeCloud(CLASSES[name])
    if "MB" in name:  # the fake cloud's own big body is made before the gateway is measured
        big_translation("", 0.0)
        big_error("", 0.0)

    async def body() -> dict[str, Any]:
        runner, cloud_url = await fake.start()
        gw = await servers.start_gateway(
            cloud_url,
            policy="cnmt",
            latency=("online", {}),
            length=("online_linear", {"gamma": 1.0, "delta": 1.0}),
            rtt=("ewma", {}),
            probe_initial_s=0.01,
            probe_max_s=0.02,
            state_file=str(tmp_path / "state.json"),
        )
        # The edge's model stays the profile: the liar's fallbacks run there, and a fixed edge
        # keeps the decisions a function of what was learnt from the cloud alone.
        gw.gateway.latency[Device.EDGE] = ProfileLatency(NoParams(), doubles.EDGE_LATENCY)
        statuses: Counter[int] = Counter()
        devices: Counter[str] = Counter()
        fallbacks: Counter[str] = Counter()
        stolen = 0
        try:
            async with aiohttp.ClientSession() as session:

                async def send(i: int) -> Any:
                    nonlocal stolen
                    status, answer = await post(session, gw.url, f"zai jian {i % 7} ni hao")
                    statuses[status] += 1
                    if status == 200:
                        devices[answer["device"]] += 1
                        fallbacks[str(answer["fallback"])] += 1
                        stolen += "STOLEN" in answer["translation"]
                    return answer

                for i in range(20):  # honest: the gateway learns the link and the cloud
                    await send(i)
                before, decided_before = learnt(gw.gateway), decisions(gw.gateway)
                observations = gw.gateway.latency[Device.CLOUD].observations
                rss_before = rss_bytes()
                fake.lying = True
                sent = 0
                started = time.perf_counter()
                while fake.lies_sent < LIES_WANTED and sent < 5000:
                    await send(sent)
                    sent += 1
                    await asyncio.sleep(0.002)  # let the probes run
                lying_s = time.perf_counter() - started
                rss_growth = rss_bytes() - rss_before
                after = learnt(gw.gateway)
                await asyncio.sleep(0.05)  # the failed offloads' own backlog drains
                decided_after = decisions(gw.gateway)
                learnt_during_lies = gw.gateway.latency[Device.CLOUD].observations - observations
                async with session.get(f"{gw.url}/v1/models") as response:
                    models = strict(await response.text())
                async with session.get(f"{gw.url}/metrics") as response:
                    samples = metric_samples(await response.text())
                fake.lying = False
                back_on_cloud = None
                for i in range(HONEST_AFTER):
                    answer = await send(i)
                    if answer.get("device") == "cloud" and back_on_cloud is None:
                        back_on_cloud = i + 1
                gw.gateway.save_state()
                saved = strict((tmp_path / "state.json").read_text())
        finally:
            await gw.close()
            await runner.cleanup()
        return {
            "statuses": statuses,
            "devices": devices,
            "fallbacks": fallbacks,
            "stolen": stolen,
            "requests_while_lying": sent,
            "lying_s": lying_s,
            "lies": fake.lies_sent,
            "before": before,
            "after": after,
            "decided_same": decided_before == decided_after,
            "decided": Counter(decided_before),
            "learnt_during_lies": learnt_during_lies,
            "physical": physical(after, gw.gateway),
            "models": models,
            "samples": samples,
            "rss_growth": rss_growth,
            "back_on_cloud": back_on_cloud,
            "saved": saved,
            "redirect_hits": fake.redirect_hits,
        }

    return run(body(), timeout_s=180.0)


@pytest.mark.parametrize("name", list(CLASSES))
def test_a_lying_cloud_costs_no_request_and_teaches_the_gateway_nothing(
    name: str, tmp_path: Path
) -> None:
    result = run_class(name, tmp_path)
    samples = result["samples"]
    bad = samples.get('cnmt_gateway_fallbacks_total{reason="bad_response"}', 0.0)
    unhealthy = samples.get('cnmt_gateway_cloud_marked_unhealthy_total{cause="failure"}', 0.0)
    print(
        f"\n{name}: {result['lies']} lying replies over {result['requests_while_lying']} "
        f"requests ({result['lying_s']:.1f} s); answers {dict(result['statuses'])}; "
        f"bad_response {bad:g}, breaker opened {unhealthy:g}; learnt from lies "
        f"{result['learnt_during_lies']}; models unchanged "
        f"{same(result['before'], result['after'])}; decisions the same "
        f"{result['decided_same']}; redirect followed "
        f"{result['redirect_hits']}; RSS growth {result['rss_growth'] / MiB:.1f} MiB; cloud used "
        f"again after {result['back_on_cloud']} honest requests"
    )
    assert result["lies"] >= LIES_WANTED
    assert set(result["statuses"]) == {200}, result["statuses"]  # no 5xx, nothing lost
    assert bad >= LIES_WANTED  # each lie refused as a bad response, the breaker told
    assert unhealthy >= 1
    assert result["learnt_during_lies"] == 0
    assert result["physical"]
    assert same(result["before"], result["after"])
    assert result["decided_same"] and result["decided"]["cloud"] > 0
    assert result["redirect_hits"] == 0 and result["stolen"] == 0
    assert result["rss_growth"] < MEMORY_GROWTH_LIMIT
    assert result["back_on_cloud"] is not None and result["back_on_cloud"] <= HONEST_AFTER
    latency = result["models"]["latency"]["cloud"]
    assert all(math.isfinite(v) for v in latency["current"].values())
    assert result["saved"]["format"] == "cnmt-gateway-state/1"
