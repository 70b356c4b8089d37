"""A model that fails to load after a worker restart is the edge's fault, not the user's: the
request goes to the healthy cloud (fallback ``edge_failure``), ``/ready`` turns false, the
restarts back off instead of spawning a worker per request, and the log and ``/metrics`` say
so; once the model loads again, the edge serves and is ready again."""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import signal
from pathlib import Path

import aiohttp
import pytest
from helpers import doubles, servers
from helpers.aio import run
from helpers.client import metric_samples


def test_a_model_that_fails_to_load_after_a_restart_sends_requests_to_the_cloud(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    marker = tmp_path / "corrupted"

    async def body() -> None:
        cloud_runner, cloud_url = await servers.start_cloud()
        gw = await servers.start_gateway(
            cloud_url,
            policy="edge",
            edge_translator=functools.partial(doubles.model_unless, str(marker)),
        )
        edge = gw.gateway.edge
        edge.restart_backoff_s = 0.5
        try:
            async with aiohttp.ClientSession() as s:

                async def translate(text: str) -> dict:
                    async with s.post(f"{gw.url}/v1/translate", json={"text": text}) as r:
                        assert r.status == 200, await r.text()
                        return await r.json()

                async def ready() -> int:
                    async with s.get(f"{gw.url}/ready") as r:
                        return r.status

                assert (await translate("ni hao"))["device"] == "edge"
                marker.write_text("the model cache is corrupted")
                pid = edge.pid
                assert pid is not None
                os.kill(pid, signal.SIGKILL)
                for _ in range(500):  # the gateway sees the pipe close at once
                    if not edge.started:
                        break
                    await asyncio.sleep(0.01)
                answers = [await translate(f"ni hao {i}") for i in range(5)]
                assert all(
                    (a["device"], a["decided"], a["fallback"]) == ("cloud", "edge", "edge_failure")
                    for a in answers
                ), answers
                assert await ready() == 503
                # one failed restart, then the backoff: no worker spawned per request
                assert edge.load_failures == 1
                async with s.get(f"{gw.url}/metrics") as r:
                    samples = metric_samples(await r.text())
                assert samples["cnmt_gateway_edge_load_failures_total"] == 1
                assert samples["cnmt_gateway_edge_up"] == 0
                marker.unlink()  # repaired
                await asyncio.sleep(0.6)  # past the backoff
                assert (await translate("zai jian"))["device"] == "edge"
                assert await ready() == 200
        finally:
            await gw.close()
            await cloud_runner.cleanup()

    with caplog.at_level(logging.ERROR, logger="cnmt.serving.edge"):
        run(body())
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert any("could not load its model after a restart" in m for m in errors), errors
    assert all(len(m) < 600 for m in errors)
