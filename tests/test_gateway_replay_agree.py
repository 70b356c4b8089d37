"""The live gateway and the replay decide alike: both drive the same decision core, so over the
same requests, link samples and device times they choose the same target for every request.

The gateway runs with doubles for its local worker and its cloud (no process, no socket): each
answers at once with the stream's true times and moves the gateway's clock on by as much, as the
replay's simulated time moves. Requests arrive far enough apart that each has finished before
the next (the replay without queues), so both learn from every earlier request.
"""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
import pytest

from cnmt.datasets.link import serialisation_s
from cnmt.experiments.simulate import Stream, drive_core
from cnmt.registry import ComponentSpec, get_components
from cnmt.runtime.base import Translation, Translator
from cnmt.schedulers.base import LatencyModel, PayloadModel, RequestBatch
from cnmt.schedulers.core import DecisionCore, DecisionSpecs, TargetSetup
from cnmt.schedulers.edge_backlog import EdgeBacklog
from cnmt.serving.cloud_client import CloudReply
from cnmt.serving.gateway import Gateway
from cnmt.serving.protocol import dumps
from cnmt.serving.settings import GatewaySettings

EDGE_PRIOR = LatencyModel(a_n=0.003, a_m=0.01, b=0.015)
CLOUD_PRIOR = LatencyModel(a_n=0.001, a_m=0.003, b=0.01)
BANDWIDTH_BPS = 2e6  # slow enough that the payload's serialisation matters
COUNT = 300
LIVE_POLICIES = ("cnmt", "cnmt_load", "naive", "edge", "cloud")  # the Oracles need the truth


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class WordCounter(Translator):
    """Counts N as words (the gateway's tokenizer)."""

    family = name = "words"

    @property
    def max_source_tokens(self) -> int:
        return 1000

    def count_source_tokens(self, text: str) -> int:
        return len(text.split())

    def translate(self, text: str) -> Translation:
        raise AssertionError("the gateway's tokenizer only counts")

    def translate_batch(self, texts: Any) -> list[Translation]:
        raise AssertionError("the gateway's tokenizer only counts")

    def run_forced(self, n_tokens: int, m_tokens: int) -> None:
        raise AssertionError("the gateway's tokenizer only counts")


class World:
    """The stream's truth for the request now being served, shared by the two doubles."""

    def __init__(self, stream: Stream, clock: Clock) -> None:
        self.stream, self.clock, self.i = stream, clock, 0


class EdgeDouble:
    """A local worker that takes the stream's true edge time."""

    restarts = 0
    started = True

    def __init__(self, world: World) -> None:
        self.world, self.backlog = world, EdgeBacklog()

    def use_backlog(self, backlog: EdgeBacklog, clock: Any) -> None:
        self.backlog = backlog

    def backlog_s(self) -> float:
        return self.backlog.at(self.world.clock())

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        pass

    async def translate(self, text: str, predicted_s: float = 0.0) -> Translation:
        w, i = self.world, self.world.i
        seconds = float(w.stream.batch.edge_s[i])
        w.clock.now = w.clock.now + 0.0 + seconds  # as the replay: start + the edge's time
        return Translation(text.upper(), len(text.split()), int(w.stream.batch.m_true[i]), seconds)


class CloudDouble:
    """A cloud and its link: answers with the stream's true cloud time, after the request's
    true round trip plus its payload's serialisation."""

    def __init__(self, world: World) -> None:
        self.world = world

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        pass

    async def probe(self) -> bool:
        return True

    async def health(self) -> dict[str, Any]:
        return {"status": "ok", "pending": 0}

    async def translate(self, text: str) -> CloudReply:
        w, i = self.world, self.world.i
        batch = w.stream.batch
        request_bytes = len(dumps({"text": text}).encode("utf-8"))
        response_bytes = int(batch.payload_bytes[i]) - request_bytes  # as expected, exactly
        wire = PayloadModel.measured_bytes(request_bytes, response_bytes)
        rtt, exec_s = float(w.stream.rtt_s[i]), float(batch.cloud_s[i])
        serialisation = float(serialisation_s(wire, BANDWIDTH_BPS))
        w.clock.now = w.clock.now + float(batch.transmission_s[i]) + 0.0 + exec_s
        return CloudReply(
            translation=text.upper(),
            n_tokens=len(text.split()),
            m_tokens=int(batch.m_true[i]),
            exec_s=exec_s,
            received_at=0.0,
            sent_at=exec_s,
            round_trip_s=rtt + serialisation + exec_s,
            wire_bytes=wire,
            wait_s=0.0,
        )


def the_stream(seed: int = 4) -> tuple[Stream, list[str]]:
    rng = np.random.default_rng(seed)
    n = rng.integers(1, 45, COUNT)
    m = np.maximum(1, (n * rng.uniform(0.7, 1.4, COUNT)).astype(int))
    texts = [" ".join(f"w{k}" for k in range(int(count))) for count in n]
    payload = PayloadModel()
    expected = np.array([payload.expected_bytes(len(dumps({"text": t}).encode())) for t in texts])
    # The devices are 1.6x slower than their profiles (what the online models learn), noisy.
    edge = np.array([EDGE_PRIOR.predict(a, b) for a, b in zip(n, m, strict=True)]) * 1.6
    cloud = np.array([CLOUD_PRIOR.predict(a, b) for a, b in zip(n, m, strict=True)]) * 1.6
    rtt = np.where(np.arange(COUNT) % 97 < 50, 0.04, 0.3) * rng.lognormal(0.0, 0.2, COUNT)
    batch = RequestBatch(
        n_tokens=n,
        payload_bytes=expected,
        m_true=m,
        edge_s=edge * rng.lognormal(0.0, 0.25, COUNT),
        cloud_s=cloud * rng.lognormal(0.0, 0.25, COUNT),
        transmission_s=rtt + serialisation_s(expected, BANDWIDTH_BPS),
    )
    return Stream(batch, np.arange(COUNT) * 10.0, rtt, BANDWIDTH_BPS), texts


def specs(policy: str, latency: str) -> DecisionSpecs:
    linear = get_components().get("length_estimator", "online_linear").cls
    naive = get_components().get("device_policy", "naive").cls
    chosen = {
        "device_policy": ComponentSpec(
            "device_policy", policy, naive.Params(mean_tokens=18.0) if policy == "naive" else None
        ),
        "length_estimator": ComponentSpec(
            "length_estimator", "online_linear", linear.Params(gamma=0.8, delta=2.0)
        ),
        "rtt_estimator": ComponentSpec("rtt_estimator", "median", None),
        "edge_latency": ComponentSpec("latency_model", latency, None),
        "cloud_latency": ComponentSpec("latency_model", latency, None),
    }
    return DecisionSpecs.select(chosen.get)


def targets() -> tuple[TargetSetup, list[TargetSetup]]:
    return TargetSetup("edge", EDGE_PRIOR), [TargetSetup("cloud", CLOUD_PRIOR, 1, BANDWIDTH_BPS)]


def live_decisions(stream: Stream, texts: list[str], chosen: DecisionSpecs) -> list[dict]:
    clock = Clock()
    world = World(stream, clock)
    edge, clouds = targets()
    settings = GatewaySettings(
        edge_profile="(doubles)",
        cloud_profile="(doubles)",
        bandwidth_mbps=BANDWIDTH_BPS / 1e6,
        cloud_timeout_s=100.0,  # the doubles move the clock on: no exchange is slow by it
    )
    gateway = Gateway(
        tokenizer=WordCounter(),
        edge=EdgeDouble(world),  # type: ignore[arg-type]
        cloud=CloudDouble(world),  # type: ignore[arg-type]
        core=DecisionCore(chosen.create(edge, clouds)),
        settings=settings,
        clock=clock,
    )

    async def serve() -> list[dict]:
        await gateway.start()
        answers = []
        try:
            for i, text in enumerate(texts):
                world.i, clock.now = i, float(stream.arrival_s[i])
                answers.append(await gateway.translate(text))
        finally:
            await gateway.close()
        return answers

    return asyncio.run(serve())


@pytest.mark.parametrize("latency", ["profile", "online"])
@pytest.mark.parametrize("policy", LIVE_POLICIES)
def test_the_gateway_and_the_replay_decide_alike_for_every_request(policy, latency) -> None:
    stream, texts = the_stream()
    answers = live_decisions(stream, texts, specs(policy, latency))
    edge, clouds = targets()
    replayed = drive_core(
        specs(policy, latency).create(edge, clouds), stream, None, None, keep_decisions=True
    )
    assert replayed.decisions is not None
    assert [a["fallback"] for a in answers] == [None] * COUNT
    live = [a["decided"] for a in answers]
    assert live == [d.target for d in replayed.decisions]
    if policy in ("cnmt", "cnmt_load", "naive"):
        assert 0 < live.count("edge") < COUNT  # the link's two levels: both are chosen
    for answer, decision in zip(answers, replayed.decisions, strict=True):
        # the same Decision, serialised alike (the HTTP answer and the replay's output)
        _close(answer["decision"], decision.as_dict())


def _close(live: dict, replayed: dict) -> None:
    assert live["decided"] == replayed["decided"]
    assert live["m_estimated"] == pytest.approx(replayed["m_estimated"], abs=1e-3)
    for target, parts in replayed["predicted"].items():
        for key, value in parts.items():
            assert live["predicted"][target][key] == pytest.approx(value, abs=2e-3), key
