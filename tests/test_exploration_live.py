"""The closed loop that explores, on a live gateway over loopback HTTP: an edge whose profile
says it is far slower than it is gets tried, learnt and then used, and /v1/models and /metrics
show what exploring cost. Scripted devices whose true latency is known (they sleep
``b + a_n*N + a_m*M``)."""

from __future__ import annotations

import asyncio
import functools
from typing import Any

import aiohttp
from helpers import client, doubles, servers
from helpers.aio import run
from helpers.live import GatewayAndCloud

from cnmt.registry import get_components
from cnmt.schedulers.base import Device, LatencyModel

EDGE_TRUE = LatencyModel(a_n=0.0002, a_m=0.0001, b=0.001)  # the edge: fast
CLOUD_TRUE = LatencyModel(a_n=0.0002, a_m=0.0001, b=0.004)
EDGE_STALE = LatencyModel(a_n=0.002, a_m=0.001, b=0.01)  # its profile: ten times slower
LENGTH = ("linear", {"gamma": 1.0, "delta": 1.0})  # M = N + 1: what the scripted models write


def test_a_stale_slow_edge_prior_is_explored_learnt_and_then_used(
    gateway_and_cloud: GatewayAndCloud,
) -> None:
    async def body() -> tuple[list[dict[str, Any]], dict[str, Any], dict[str, float]]:
        async with gateway_and_cloud(
            doubles.TimedTranslator(CLOUD_TRUE, label="cloud"),
            policy="cnmt",
            length=LENGTH,
            rtt=("last", {"initial_s": 0.001}),
            latency=("posterior", {}),
            priors=(EDGE_STALE, CLOUD_TRUE),
            edge_translator=functools.partial(doubles.TimedTranslator, EDGE_TRUE, label="edge"),
        ) as live:
            cls = get_components().get("device_policy", "cnmt_explore").cls
            # The stale prior makes the edge ~5x the cloud: allow trying it at that cost.
            live.gateway.device_policy = cls(cls.Params(seed=1, budget=0.1, max_added=10.0))
            answers = [await live.translate(doubles.sentence(3 + i % 9)) for i in range(80)]
            return answers, await live.get_json("/v1/models"), await live.metrics()

    answers, models, samples = run(body())
    assert answers[0]["device"] == "cloud"  # the stale prior: the edge looks slow
    late = answers[40:]
    assert sum(a["device"] == "edge" for a in late) >= 0.9 * len(late)
    exploration = models["exploration"]
    assert exploration["explored_edge"] >= 1 and exploration["decisions"] == 80
    assert exploration["share"] <= 0.1 + 5 / 80  # the budget, plus its initial burst
    edge = models["latency"]["edge"]
    assert edge["component"] == "posterior" and edge["dropped"] == 0
    assert edge["speed_sd"] is not None and edge["speed_sd"] < 0.6  # the prior: 1.0
    assert (
        samples['cnmt_gateway_explored_requests_total{device="edge"}']
        == exploration["explored_edge"]
    )
    assert samples["cnmt_gateway_exploration_expected_added_seconds_total"] > 0
    assert samples['cnmt_gateway_latency_model_dropped_total{device="edge"}'] == 0


def test_an_idle_gateway_calibrates_an_edge_it_never_used_and_learns_its_speed(
    gateway_and_cloud: GatewayAndCloud,
) -> None:
    """Everything runs on the cloud; once the gateway is idle, the edge translates one short
    calibration text and its posterior moves from the stale prior (10x slow) to the truth."""

    async def body() -> tuple[float, float, int, int]:
        async with gateway_and_cloud(
            doubles.TimedTranslator(CLOUD_TRUE, label="cloud"),
            policy="cloud",
            length=LENGTH,
            latency=("posterior", {}),
            priors=(EDGE_STALE, CLOUD_TRUE),
            edge_translator=functools.partial(doubles.TimedTranslator, EDGE_TRUE, label="edge"),
            calibrate_idle_s=0.2,
            calibrate_stale_s=0.2,
            calibration_text=doubles.sentence(6),
        ) as live:
            edge = live.gateway.latency[Device.EDGE]
            for i in range(5):
                answer = await live.translate(doubles.sentence(4 + i))
                assert answer["device"] == "cloud", answer
            before = edge.current().predict(6, 7)
            assert edge.observations == 0
            for _ in range(400):  # idle: the calibration runs within a second or so
                await asyncio.sleep(0.05)
                if edge.observations:
                    break
            await asyncio.sleep(0.6)  # and only once in this idle spell
            after = edge.current().predict(6, 7)
            return before, after, live.gateway.calibration.runs, edge.observations

    before, after, runs, observations = run(body())
    truth = EDGE_TRUE.predict(6, 7)
    assert runs == 1 and observations == 1
    assert abs(after - truth) < 0.5 * abs(before - truth)


CLOUD_STALE = LatencyModel(a_n=0.002, a_m=0.001, b=0.04)  # the cloud's profile: ten times slower


def test_an_idle_gateway_calibrates_a_cloud_it_never_used_and_learns_its_speed(
    gateway_and_cloud: GatewayAndCloud,
) -> None:
    """The mirror case: everything runs on the edge; once the gateway is idle, the cloud
    translates the calibration text, its answer reports its execution time, and the cloud's
    posterior moves from the stale prior to the truth."""

    async def body() -> tuple[float, float, dict[str, int], int]:
        async with gateway_and_cloud(
            doubles.TimedTranslator(CLOUD_TRUE, label="cloud"),
            policy="edge",
            length=LENGTH,
            latency=("posterior", {}),
            priors=(EDGE_TRUE, CLOUD_STALE),
            edge_translator=functools.partial(doubles.TimedTranslator, EDGE_TRUE, label="edge"),
            calibrate_idle_s=0.2,
            calibrate_stale_s=0.2,
            calibration_text=doubles.sentence(6),
        ) as live:
            model = live.gateway.latency[Device.CLOUD]
            for i in range(5):
                answer = await live.translate(doubles.sentence(4 + i))
                assert answer["device"] == "edge", answer
            before = model.current().predict(6, 7)
            assert model.observations == 0
            for _ in range(400):  # idle: the calibration runs within a second or so
                await asyncio.sleep(0.05)
                if model.observations:
                    break
            await asyncio.sleep(0.6)  # and only once in this idle spell
            after = model.current().predict(6, 7)
            calibrations = (await live.get_json("/v1/models"))["calibrations"]
            return before, after, calibrations, model.observations

    before, after, calibrations, observations = run(body())
    truth = CLOUD_TRUE.predict(6, 7)
    assert calibrations["cloud"] == 1 and observations == 1
    assert abs(after - truth) < 0.5 * abs(before - truth)


def test_a_cloud_that_is_down_is_not_calibrated_and_costs_no_request() -> None:
    async def body() -> tuple[dict[str, int], list[str]]:
        runner, cloud_url = await servers.start_cloud(
            translator=doubles.TimedTranslator(CLOUD_TRUE, label="cloud")
        )
        gw = await servers.start_gateway(
            cloud_url,
            policy="edge",
            length=LENGTH,
            latency=("posterior", {}),
            priors=(EDGE_TRUE, CLOUD_STALE),
            edge_translator=functools.partial(doubles.TimedTranslator, EDGE_TRUE, label="edge"),
            calibrate_idle_s=0.2,
            calibrate_stale_s=0.2,
            calibration_text=doubles.sentence(6),
        )
        devices = []
        try:
            async with aiohttp.ClientSession() as session:
                for i in range(6):
                    if i == 3:  # the cloud goes away, then the gateway goes idle
                        await runner.cleanup()
                        await asyncio.sleep(1.5)  # idle: both targets' calibrations are due
                    status, _, answer = await client.post(
                        session, gw.url, {"text": doubles.sentence(4 + i)}
                    )
                    assert status == 200, answer
                    devices.append(answer["device"])
                calibrations = (await client.get_json(session, f"{gw.url}/v1/models"))[
                    "calibrations"
                ]
        finally:
            await gw.close()
        return calibrations, devices

    calibrations, devices = run(body())
    assert devices == ["edge"] * 6
    assert calibrations["edge"] >= 1  # the loop ran while the cloud was down ...
    assert calibrations["cloud"] == 0  # ... and a failed try is not a calibration
