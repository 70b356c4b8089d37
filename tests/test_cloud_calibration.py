"""Idle calibration of a cloud: a gateway that sends everything to the edge learns, once idle,
how fast its cloud really is from one short calibration translation whose answer reports the
cloud's execution time. Scripted devices whose true latency is known (they sleep
``b + a_n*N + a_m*M``)."""

from __future__ import annotations

import asyncio
import functools
import sys
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent))
import test_serving_doubles as doubles  # noqa: E402
from test_gateway import post  # noqa: E402

from cnmt.schedulers.base import Device, LatencyModel  # noqa: E402

EDGE_TRUE = LatencyModel(a_n=0.0002, a_m=0.0001, b=0.002)
CLOUD_TRUE = LatencyModel(a_n=0.0001, a_m=0.00005, b=0.001)  # the cloud: fast
CLOUD_STALE = LatencyModel(a_n=0.001, a_m=0.0005, b=0.01)  # its profile: ten times slower
LENGTH = ("linear", {"gamma": 1.0, "delta": 1.0})  # M = N + 1: what the scripted models write


def sentence(n: int) -> str:
    return " ".join(f"w{i}" for i in range(n))


def test_an_idle_gateway_calibrates_a_cloud_it_never_used_and_learns_its_speed() -> None:
    async def body() -> tuple[float, float, dict[str, int], int]:
        translator = doubles.TimedTranslator(CLOUD_TRUE, label="cloud")
        cloud, cloud_url = await doubles.start_cloud(translator=translator)
        gw = await doubles.start_gateway(
            cloud_url,
            policy="edge",
            length=LENGTH,
            latency=("posterior", {}),
            priors=(EDGE_TRUE, CLOUD_STALE),
            edge_translator=functools.partial(doubles.TimedTranslator, EDGE_TRUE, label="edge"),
            calibrate_idle_s=0.2,
            calibrate_stale_s=0.2,
            calibration_text=sentence(6),
        )
        model = gw.gateway.latency[Device.CLOUD]
        try:
            async with aiohttp.ClientSession() as s:
                for i in range(5):
                    status, _, answer = await post(s, gw.url, {"text": sentence(4 + i)})
                    assert status == 200 and answer["device"] == "edge", answer
                before = model.current().predict(6, 7)
                assert model.observations == 0
                for _ in range(400):  # idle: the calibration runs within a second or so
                    await asyncio.sleep(0.05)
                    if model.observations:
                        break
                await asyncio.sleep(0.6)  # and only once in this idle spell
                after = model.current().predict(6, 7)
                async with s.get(f"{gw.url}/v1/models") as response:
                    calibrations = (await response.json())["calibrations"]
        finally:
            await gw.close()
            await cloud.cleanup()
        return before, after, calibrations, model.observations

    before, after, calibrations, observations = doubles.run(body())
    truth = CLOUD_TRUE.predict(6, 7)
    assert calibrations["cloud"] == 1 and observations == 1
    assert abs(after - truth) < 0.5 * abs(before - truth)


def test_a_cloud_that_is_down_is_not_calibrated_and_the_gateway_keeps_serving() -> None:
    async def body() -> tuple[dict[str, int], list[str]]:
        translator = doubles.TimedTranslator(CLOUD_TRUE, label="cloud")
        cloud, cloud_url = await doubles.start_cloud(translator=translator)
        gw = await doubles.start_gateway(
            cloud_url,
            policy="edge",
            length=LENGTH,
            latency=("posterior", {}),
            priors=(EDGE_TRUE, CLOUD_STALE),
            edge_translator=functools.partial(doubles.TimedTranslator, EDGE_TRUE, label="edge"),
            calibrate_idle_s=0.2,
            calibrate_stale_s=0.2,
            calibration_text=sentence(6),
            probe_initial_s=5.0,
            probe_max_s=5.0,
        )
        devices = []
        try:
            async with aiohttp.ClientSession() as s:
                for i in range(6):
                    if i == 3:  # the cloud goes away, then the gateway goes idle
                        await cloud.cleanup()
                        await asyncio.sleep(1.5)  # idle: both targets' calibrations are due
                    status, _, answer = await post(s, gw.url, {"text": sentence(4 + i)})
                    assert status == 200, answer
                    devices.append(answer["device"])
                async with s.get(f"{gw.url}/v1/models") as response:
                    calibrations = (await response.json())["calibrations"]
        finally:
            await gw.close()
        return calibrations, devices

    calibrations, devices = doubles.run(body())
    assert devices == ["edge"] * 6
    assert calibrations["edge"] >= 1  # the loop ran while the cloud was down ...
    assert calibrations["cloud"] == 0  # ... and a failed try is not a calibration
