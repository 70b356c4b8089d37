"""What both cloud engines share, tested without Ray: the queueing fields of the protocol (sent
by our aiohttp cloud, optional and checked in the gateway's client), the `cloud.engine` and
`cloud.ray` config sections (mistakes exit 2 before anything starts), and a load spread over
several gateways. The Ray Serve cloud itself is tested in test_ray_cloud.py (tox env `ray`)."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from helpers import servers
from helpers.aio import run

from cnmt.cli import main
from cnmt.serving.cloud_client import CloudFailure, parse_reply
from cnmt.serving.loadtest import run_load
from cnmt.serving.protocol import BadAnswer, CloudAnswer

REPO = Path(__file__).resolve().parent.parent
BASE = {
    "translation": "hi .",
    "n_tokens": 2,
    "m_tokens": 2,
    "exec_s": 0.01,
    "received_at": 100.0,
    "sent_at": 100.02,
}


def reply(**fields: Any) -> bytes:
    return json.dumps({**BASE, **fields}).encode()


def test_the_aiohttp_cloud_reports_waiting_pending_and_batch_size() -> None:
    async def body() -> list[Any]:
        runner, base = await servers.start_cloud(delay_s=0.2)  # one worker
        try:
            async with aiohttp.ClientSession() as session:

                async def send(text: str, after_s: float) -> Any:
                    await asyncio.sleep(after_s)
                    async with session.post(base + "/v1/translate", json={"text": text}) as r:
                        return await r.json()

                return await asyncio.gather(send("yi", 0.0), send("er", 0.05))
        finally:
            await runner.cleanup()

    first, second = run(body())
    assert (first["pending"], first["batch_size"]) == (0, 1)
    assert first["wait_s"] < 0.1
    # The second arrived while the first ran on the only worker: it waited for it.
    assert (second["pending"], second["batch_size"]) == (1, 1)
    assert 0.1 <= second["wait_s"] <= second["sent_at"] - second["received_at"]


def test_the_gateway_accepts_answers_with_or_without_the_queueing_fields() -> None:
    old = parse_reply(reply(), round_trip_s=0.05)
    assert (old.wait_s, old.pending, old.batch_size) == (None, None, None)
    new = parse_reply(reply(wait_s=0.004, pending=3, batch_size=8), round_trip_s=0.05)
    assert (new.wait_s, new.pending, new.batch_size) == (0.004, 3, 8)


@pytest.mark.parametrize(
    "fields",
    [
        {"wait_s": -0.1},
        {"wait_s": "0.1"},
        {"wait_s": None},
        {"pending": -1},
        {"pending": 1.5},
        {"batch_size": 0},
        {"batch_size": True},
    ],
)
def test_the_gateway_refuses_malformed_queueing_fields(fields: dict[str, Any]) -> None:
    with pytest.raises(CloudFailure) as caught:
        parse_reply(reply(**fields), round_trip_s=0.05)
    assert caught.value.reason == "bad_response"
    assert f"`{next(iter(fields))}`" in caught.value.detail


def test_a_cloud_answer_reads_back_as_written_and_leaves_out_what_it_does_not_know() -> None:
    full = CloudAnswer("hi .", 2, 2, 0.01, 100.0, 100.02, wait_s=0.004, pending=3, batch_size=8)
    assert CloudAnswer.from_json(json.loads(json.dumps(full.to_json()))) == full
    assert list(full.to_json()) == [*BASE, "wait_s", "pending", "batch_size"]  # the wire order
    older = CloudAnswer.from_json(BASE)
    assert (older.wait_s, older.pending, older.batch_size) == (None, None, None)
    assert older.to_json() == BASE  # no null for a field the cloud did not report


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({"translation": 3}, "`translation`"),
        ({"m_tokens": 51}, "`m_tokens`"),
        ({"exec_s": -0.01}, "`exec_s`"),
        ({"sent_at": 99.0}, "`sent_at`"),
    ],
)
def test_a_cloud_answer_that_breaks_the_protocol_names_the_field(
    fields: dict[str, Any], named: str
) -> None:
    with pytest.raises(BadAnswer, match=named):
        CloudAnswer.from_json({**BASE, **fields}, max_output_tokens=50)


@pytest.mark.parametrize(
    ("section", "message"),
    [
        (
            "cloud: {engine: rai}",
            "cloud.engine: 'rai' is not a valid choice; valid: 'aiohttp', 'ray'",
        ),
        ("cloud: {ray: {num_replicas: 2}}", "ray: only used with engine: ray"),
        ("cloud: {engine: ray, workers: 2}", "set ray.num_replicas (or ray.autoscaling) instead"),
        (
            "cloud: {engine: ray, reuse_port: true}",
            "workers and reuse_port are for engine: aiohttp",
        ),
        ("cloud: {engine: ray, ray: {replicas: 2}}", "cloud.ray.replicas: unknown key"),
        ("cloud: {engine: ray, ray: {num_replicas: '2'}}", "num_replicas: expected an integer"),
        ("cloud: {engine: ray, ray: {num_replicas: 0}}", "num_replicas: 0 is out of range: 1 <= x"),
        (
            "cloud: {engine: ray, ray: {address: 'http://head:10001'}}",
            "address: expected auto, ray://HEAD:10001 or HEAD:6379, got 'http://head:10001'",
        ),
        ("cloud: {engine: ray, ray: {address: 'head:99999'}}", "address: expected auto"),
        ("cloud: {engine: ray, ray: {address: 'ray://head'}}", "address: expected auto"),
        ("cloud: {engine: ray, ray: {address: auto, num_cpus: 2}}", "remove num_cpus"),
        (
            "cloud: {engine: ray, ray: {num_replicas: 2, autoscaling: {max_replicas: 3}}}",
            "either num_replicas (a fixed count) or autoscaling (a range), not both",
        ),
        (
            "cloud: {engine: ray, ray: {autoscaling: {min_replicas: 3, max_replicas: 2}}}",
            "max_replicas (2) must be at least 1 and at least min_replicas (3)",
        ),
        (
            "cloud: {engine: ray, ray: {max_batch_size: 64}}",
            "max_ongoing_requests (32) must be at least max_batch_size (64)",
        ),
        (
            "cloud: {engine: ray, ray: {batch_wait_timeout_s: -1}}",
            "batch_wait_timeout_s: -1.0 is out",
        ),
    ],
)
def test_bad_ray_cloud_configs_exit_2_naming_the_key_and_the_fix(
    tmp_path: Path, section: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(section + "\n")
    assert main(["launch", str(config)]) == 2
    err = capsys.readouterr().err
    assert message in err
    assert "Traceback" not in err


def test_ray_cloud_configs_accept_a_cluster_address_and_autoscaling(tmp_path: Path) -> None:
    from cnmt.config import load_config

    for address in ("auto", "ray://head.example:10001", "10.0.0.5:6379"):
        config = tmp_path / "config.yaml"
        config.write_text(
            f"cloud: {{engine: ray, ray: {{address: '{address}', "
            "autoscaling: {min_replicas: 0, max_replicas: 4}}}\n"
        )
        ray = load_config(config)["cloud"].ray
        assert (ray.address, ray.local, ray.autoscaling.max_replicas) == (address, False, 4)


@pytest.mark.skipif(importlib.util.find_spec("ray") is not None, reason="Ray is installed here")
def test_a_ray_cloud_without_ray_installed_says_which_extra_to_install(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("cloud: {engine: ray, port: 0, model: cn2en}\n")
    done = subprocess.run(
        [sys.executable, "-P", "-m", "cnmt", "launch", str(config)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
    )
    assert done.returncode == 1
    assert "pip install 'cnmt[ray]'" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_load_spread_over_two_gateways_reaches_both() -> None:
    async def body() -> tuple[Any, list[str]]:
        gateways = [await servers.start_gateway(None, policy="edge") for _ in range(2)]
        try:
            report = await run_load([g.url for g in gateways], ["yi er"], rate=200.0, count=40)
            metrics = []
            async with aiohttp.ClientSession() as session:
                for g in gateways:
                    async with session.get(g.url + "/metrics") as response:
                        metrics.append(await response.text())
            return report, metrics
        finally:
            for g in gateways:
                await g.close()

    report, metrics = run(body())
    assert (report.sent, report.ok, report.lost) == (40, 40, 0)
    assert "spread over 2 gateways" in report.mode
    served = [
        float(re.search(r'cnmt_gateway_requests_total\{device="edge"\} (\S+)', m).group(1))
        for m in metrics
    ]
    assert served == [20.0, 20.0]  # open loop: request i goes to gateway i mod 2
