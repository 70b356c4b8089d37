"""The real model end to end: cn2en through the gateway's edge and cloud paths, `cnmt launch`
of the default system and `cnmt demo`. Marked `export`: the first use of cn2en exports it
(torch). The gateway's latency models come from quick real profiles measured here."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import aiohttp
import pytest
from helpers.aio import run
from helpers.launched import Launched

from cnmt.config import load_config
from cnmt.profiling.cpu_quota import available
from cnmt.serving.launch import System

pytestmark = pytest.mark.export
REPO = Path(__file__).resolve().parent.parent
DEFAULT = REPO / "configs" / "serving" / "default.yaml"


@pytest.fixture(scope="module")
def profiles(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Quick real profiles of cn2en (2 x 2 grid, two runs per cell, on whatever load this
    machine has): the edge on edge-cpu-q25 where cgroups are writable, else unthrottled like
    the cloud."""
    folder = tmp_path_factory.mktemp("profiles")
    edge_device = "edge-cpu-q25" if available() is None else "cloud-cpu"
    paths = []
    for device, name in ((edge_device, "edge.json"), ("cloud-cpu", "cloud.json")):
        out = folder / name
        subprocess.run(
            [sys.executable, "-P", "-m", "cnmt", "profile", "--model", "cn2en", "--device", device,
             "--n", "2,8", "--m", "2,8", "--warmup", "1", "--min-runs", "2", "--max-runs", "2",
             "--allow-busy", "--probe", "0.2", "--out", str(out), "--no-progress"],
            check=True, capture_output=True, cwd=REPO,
        )  # fmt: skip
        paths.append(out)
    return paths[0], paths[1]


def system_config(tmp_path: Path, profiles: tuple[Path, Path], policy: str) -> Path:
    config = tmp_path / f"{policy}.yaml"
    config.write_text(
        f"extends: {DEFAULT}\n"
        f"gateway: {{edge_profile: {profiles[0]}, cloud_profile: {profiles[1]}}}\n"
        f"device_policy: {{name: {policy}}}\n"
    )
    return config


@pytest.mark.parametrize("policy", ["edge", "cloud"])
def test_cn2en_translates_through_each_path_of_the_gateway(
    tmp_path: Path, profiles: tuple[Path, Path], policy: str
) -> None:
    config = load_config(system_config(tmp_path, profiles, policy))

    async def body() -> tuple[dict, str]:
        system = System(config, gateway_port=0, cloud_port=0, link_port=0, say=lambda m: None)
        endpoints = await system.start()
        try:
            async with aiohttp.ClientSession() as s:
                url = f"{endpoints.gateway}/v1/translate"
                async with s.post(url, json={"text": "我们走吧。"}) as response:
                    assert response.status == 200
                    answer = await response.json()
                metrics = await (await s.get(f"{endpoints.gateway}/metrics")).text()
        finally:
            await system.stop()
        return answer, metrics

    answer, metrics = run(body(), timeout_s=300)
    assert answer["translation"] == "let's go ."
    assert (answer["device"], answer["decided"], answer["fallback"]) == (policy, policy, None)
    assert (answer["n_tokens"], answer["m_actual"]) == (5, 3)
    # The default length model (fitted on ZH-EN in cn2en's tokens): M = gamma*5 + delta.
    assert 2.0 < answer["m_estimated"] < 8.0
    assert f'cnmt_gateway_requests_total{{device="{policy}"}} 1' in metrics
    if policy == "cloud":
        assert answer["rtt_sample_ms"] >= 4.0  # the default link's 4.6 ms, less rounding
        assert answer["exec_ms"] > 0


def test_cnmt_launch_serves_the_default_system_and_stops_on_sigterm(
    tmp_path: Path, profiles: tuple[Path, Path]
) -> None:
    config = system_config(tmp_path, profiles, "cnmt")
    launched = Launched(str(config), "--gateway-port", "0", "--cloud-port", "0", "--link-port", "0")
    try:
        output = launched.read_until("ready", timeout_s=300)
        gateway = re.search(r"gateway: (http://127.0.0.1:\d+)", output).group(1)
        request = urllib.request.Request(
            f"{gateway}/v1/translate",
            data=json.dumps({"text": "今天天气很好。"}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=60) as response:
            answer = json.loads(response.read())
        launched.process.send_signal(signal.SIGTERM)
        code, output = launched.finish(timeout_s=60)
    finally:
        if launched.process.poll() is None:
            launched.process.kill()
    assert answer["translation"] and answer["device"] in ("edge", "cloud")
    assert answer["n_tokens"] == 7
    assert "cloud:" in output and "link:" in output
    assert code == 0, output
    assert output.rstrip().endswith("cnmt launch: stopped")


def test_cnmt_demo_runs_without_a_data_directory(
    tmp_path: Path, profiles: tuple[Path, Path]
) -> None:
    config = system_config(tmp_path, profiles, "cnmt")
    env = dict(os.environ, CNMT_DATA=str(tmp_path / "no-data"))
    (tmp_path / "no-data").mkdir()
    result = subprocess.run(
        [sys.executable, "-P", "-m", "cnmt", "demo", "--config", str(config), "--sentences", "3"],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "3 sentences from built-in sentences" in out
    assert "[1] 我们走吧。\n    -> let's go ." in out
    assert out.count("predicted: edge") == 3
    assert "3 of 3 translated" in out


def test_loadtest_against_the_real_gateway_loses_nothing(
    tmp_path: Path, profiles: tuple[Path, Path], data_dir: Path
) -> None:
    from cnmt.serving.loadtest import read_sentences, run_load

    config = load_config(system_config(tmp_path, profiles, "cnmt"))
    sentences = read_sentences(data_dir / "corpora" / "tatoeba-en-zh" / "all.zh", limit=200, seed=1)

    async def body():  # noqa: ANN202
        system = System(config, gateway_port=0, cloud_port=0, link_port=0, say=lambda m: None)
        endpoints = await system.start()
        try:
            return await run_load(endpoints.gateway, sentences, concurrency=4, count=60)
        finally:
            await system.stop()

    report = run(body(), timeout_s=300)
    assert (report.sent, report.ok, report.lost, report.failed) == (60, 60, 0, 0)
    assert sum(report.devices.values()) == 60
