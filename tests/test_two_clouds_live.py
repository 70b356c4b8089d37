"""A gateway with two clouds: it sends requests to both, and losing one loses no request.

Two scripted clouds on the loopback (the near one in this process, the far one in a child
process a test can kill) behind one gateway whose policy decides among the edge and both
clouds by the least predicted total; no link emulation: the RTT each cloud is predicted with
is its estimator's, learnt from its own exchanges.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from helpers.aio import run
from helpers.doubles import ScriptedTranslator, sentence
from helpers.live import GatewayAndCloud
from helpers.servers import ScriptedCloudProcess

from cnmt.schedulers.base import LatencyModel
from cnmt.serving.loadtest import run_load

# A slow edge, a near cloud faster on the shortest texts, a far one faster on the others (both
# round trips are the loopback's: the priors make the split, by margins of 30 ms and more,
# so that a slow loopback exchange on a loaded machine cannot move a request).
EDGE = LatencyModel(a_n=0.01, a_m=0.01, b=0.05)
NEAR = LatencyModel(a_n=0.004, a_m=0.004, b=0.001)
FAR = LatencyModel(a_n=0.0005, a_m=0.0005, b=0.05)
RTT = ("last", {"initial_s": 0.001})  # about the loopback's, before any exchange
SENTENCES = ["wir gehen", "guten morgen alle zusammen"] + [sentence(n) for n in (12, 20, 28)]


def test_the_gateway_sends_requests_to_both_clouds_by_the_least_predicted_total(
    gateway_and_cloud: GatewayAndCloud, scripted_cloud_process: Callable[[], ScriptedCloudProcess]
) -> None:
    async def body() -> list[dict]:
        far_url = scripted_cloud_process().start()
        async with gateway_and_cloud(
            ScriptedTranslator(label="near"),
            policy="cnmt",
            priors=(EDGE, NEAR),
            more_clouds={"far": (far_url, FAR)},
            rtt=RTT,
        ) as live:
            return [await live.translate(text) for text in SENTENCES * 4]

    answers = run(body())
    ran = {a["device"] for a in answers}
    assert {"cloud", "far"} <= ran, ran  # the near cloud is named `cloud`, the shorthand's name
    for answer in answers:
        assert answer["fallback"] is None
        assert set(answer["decision"]["predicted"]) == {"edge", "cloud", "far"}
        totals = {
            t: p["exec_ms"] + p["transmission_ms"]
            for t, p in answer["decision"]["predicted"].items()
        }
        assert answer["decided"] == min(totals, key=totals.__getitem__)
    short = [a for a in answers if a["n_tokens"] <= 2]
    long = [a for a in answers if a["n_tokens"] >= 20]
    assert {a["device"] for a in short} == {"cloud"} and {a["device"] for a in long} == {"far"}


def test_killing_one_of_two_clouds_loses_no_request(
    gateway_and_cloud: GatewayAndCloud, scripted_cloud_process: Callable[[], ScriptedCloudProcess]
) -> None:
    """The far cloud's process is killed while 120 requests arrive at 20/s: the exchanges in
    flight fall back to the edge, the far cloud is marked unhealthy and its requests run
    locally until it is back; every request is answered."""

    async def body() -> tuple[object, dict, dict]:
        far = scripted_cloud_process()
        far_url = far.start()
        async with gateway_and_cloud(
            ScriptedTranslator(label="near"),
            policy="cnmt",
            priors=(EDGE, NEAR),
            more_clouds={"far": (far_url, FAR)},
            rtt=RTT,
            cloud_timeout_s=1.0,
        ) as live:
            load = asyncio.ensure_future(
                run_load(live.url, SENTENCES, rate=20.0, count=120, timeout_s=30.0)
            )
            await asyncio.sleep(2.0)
            far.kill()
            report = await load
            return report, await live.get_json("/health"), await live.metrics()

    report, health, samples = run(body(), timeout_s=90.0)
    assert report.sent == report.ok == 120, report.to_json()
    assert report.rejected == report.failed == report.lost == 0, report.to_json()
    assert health["clouds"] == {"cloud": "healthy", "far": "unhealthy"}
    assert samples['cnmt_gateway_requests_total{device="far"}'] > 0  # before the kill
    assert samples['cnmt_gateway_requests_total{device="cloud"}'] > 0
    fallbacks = sum(v for k, v in samples.items() if k.startswith("cnmt_gateway_fallbacks_total"))
    assert fallbacks > 0  # the far cloud's requests after the kill ran locally
