"""The Ray Serve cloud (``cloud.engine: ray``) against a real local Ray instance (2 CPUs).

One cloud is launched for the module with `cnmt launch`, as a user runs it: two replicas of a
BiLSTM exported from the shipped config (smaller vocabularies, for speed), batching on. It is
compared with our aiohttp cloud on the same model, put behind real gateways (`cnmt launch` of a
gateway config), has a replica killed in the middle of a load, and is stopped with SIGINT. The
built-in `serving/default-ray` system is launched and stopped with SIGTERM. Tox env ``ray``.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from helpers.aio import run
from helpers.launched import Launched

from cnmt.serving.cloud_client import CloudClient
from cnmt.serving.loadtest import run_load

pytestmark = [
    pytest.mark.ray,
    pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="needs cnmt[ray]"),
    pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="needs cnmt[export]"),
]

REPO = Path(__file__).resolve().parent.parent
PROFILES = REPO / "configs" / "profiles"
MAX_OUTPUT = 30


# --- set-up: a model, the reference aiohttp cloud, the Ray cloud ----------------------------


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> Path:
    """The shipped BiLSTM config (attention over padded, masked batches) with 600-word
    vocabularies and at most 30 output tokens, exported by the project's exporter."""
    import yaml

    from cnmt.exporters.base import ExportRequest
    from cnmt.registry import get_components

    tmp = tmp_path_factory.mktemp("ray-model")
    config = tmp / "bilstm.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "extends": str(REPO / "configs" / "models" / "bilstm-de-en.yaml"),
                "data_dir": str(data_dir),
                "model": {
                    "source_vocab": {"size": 600, "max_lines": 3000},
                    "target_vocab": {"size": 600, "max_lines": 3000},
                    "max_output_tokens": MAX_OUTPUT,
                },
            }
        )
    )
    out = tmp / "bilstm"
    get_components().create("exporter", "bilstm").export(ExportRequest(out_dir=out, config=config))
    return out


@pytest.fixture(scope="module")
def sentences(data_dir: Path) -> list[str]:
    lines = (data_dir / "corpora" / "iwslt14-de-en" / "valid.de").read_text().splitlines()
    picked = [line for line in lines[::211] if line.strip()][:16]
    assert len({len(s.split()) for s in picked}) > 4  # lengths differ: batches are padded
    return picked


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RayCloud:
    """`cnmt launch` of a Ray cloud on a port reserved up front, started on demand (so that a
    gateway can be started against it while it is down)."""

    def __init__(self, config: Path, port: int) -> None:
        self.config = config
        self.url = f"http://127.0.0.1:{port}"
        self.launched: Launched | None = None

    def start(self) -> None:
        if self.launched is None:
            self.launched = Launched(str(self.config))
            self.launched.read_until("ready; stop with", timeout_s=180)

    def stop(self, sig: signal.Signals) -> tuple[int, str]:
        assert self.launched is not None
        self.launched.process.send_signal(sig)
        return self.launched.finish(timeout_s=90)


@pytest.fixture(scope="module")
def ray_cloud(model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RayCloud]:
    folder = tmp_path_factory.mktemp("ray-cloud")
    port = free_port()
    config = folder / "cloud-ray.yaml"
    config.write_text(
        f"extends: {REPO / 'configs' / 'serving' / 'cloud-ray.yaml'}\n"
        "cloud:\n"
        f"  host: 127.0.0.1\n  port: {port}\n  model: {model}\n  threads: 1\n"
        "  ray: {num_cpus: 2, num_replicas: 2, max_batch_size: 8, batch_wait_timeout_s: 0.01,"
        " health_check_period_s: 1.0}\n"
    )
    cloud = RayCloud(config, port)
    yield cloud
    if cloud.launched is not None and cloud.launched.process.poll() is None:
        cloud.stop(signal.SIGTERM)


@pytest.fixture(scope="module")
def reference(model: Path, sentences: list[str]) -> dict[str, dict[str, Any]]:
    """Our aiohttp cloud's answers for each sentence, sent one at a time."""
    from cnmt.runtime import load_translator
    from cnmt.serving.cloud import CloudServer
    from cnmt.serving.launch import serve_app, url
    from cnmt.serving.settings import CloudSettings

    async def answers() -> dict[str, dict[str, Any]]:
        server = CloudServer([load_translator(model, threads=1)], CloudSettings(port=0))
        runner, port = await serve_app(server.app(), "127.0.0.1", 0)
        try:
            return {s: (await post(url("127.0.0.1", port), {"text": s}))[1] for s in sentences}
        finally:
            await runner.cleanup()

    return run(answers())


async def post(base: str, payload: Any, path: str = "/v1/translate") -> tuple[int, Any]:
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    async with aiohttp.ClientSession() as session:
        async with session.post(base + path, data=body, timeout=aiohttp.ClientTimeout(30)) as r:
            return r.status, await r.json(content_type=None)


def gateway_config(folder: Path, model: Path, cloud_url: str, name: str = "gateway") -> Path:
    config = folder / f"{name}.yaml"
    config.write_text(
        f"""
gateway:
  port: 0
  model: {model}
  threads: 1
  edge_profile: {PROFILES / "bilstm-de-en__edge-cpu-q25.json"}
  cloud_profile: {PROFILES / "bilstm-de-en__cloud-cpu.json"}
  cloud_url: {cloud_url}
  cloud_timeout_s: 10.0
  allow_unthrottled: true
  probe_initial_s: 0.1
  probe_max_s: 0.5
length_estimator: {{name: naive, params: {{mean_tokens: 8}}}}
device_policy: {{name: cloud}}
rtt_estimator: {{name: last}}
"""
    )
    return config


class GatewayProcess:
    def __init__(self, config: Path) -> None:
        self.launched = Launched(str(config))
        started = self.launched.read_until("ready; stop with", timeout_s=120)
        self.url = re.search(r"gateway: (http://127\.0\.0\.1:\d+)", started).group(1)

    def close(self) -> None:
        self.launched.process.send_signal(signal.SIGTERM)
        self.launched.finish()


@pytest.fixture(scope="module")
def gateway(
    ray_cloud: RayCloud, model: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    """A gateway (policy `cloud`) in front of the Ray cloud, started while the cloud is down."""
    started = GatewayProcess(
        gateway_config(tmp_path_factory.mktemp("gateway"), model, ray_cloud.url)
    )
    yield started
    started.close()


def descendants(pid: int) -> dict[int, str]:
    """Every live process below ``pid`` (from /proc), with its command line."""
    parents: dict[int, int] = {}
    commands: dict[int, str] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            command = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:
            continue
        parents[int(entry)] = int(stat.rsplit(")", 1)[1].split()[1])
        commands[int(entry)] = command.decode(errors="replace").strip()
    found: dict[int, str] = {}
    frontier = [pid]
    while frontier:
        parent = frontier.pop()
        for child, its_parent in parents.items():
            if its_parent == parent and child not in found:
                found[child] = commands[child]
                frontier.append(child)
    return found


def alive(pids: set[int]) -> set[int]:
    living = set()
    for pid in pids:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z":
            living.add(pid)
    return living


def replicas(cloud: RayCloud) -> set[int]:
    assert cloud.launched is not None
    tree = descendants(cloud.launched.process.pid)
    return {pid for pid, command in tree.items() if command.startswith("ray::ServeReplica")}


def wait_for(condition: Any, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.25)
    raise AssertionError(f"not within {timeout_s:g} s: {what}")


def gateway_health(gateway: GatewayProcess) -> dict[str, Any]:
    async def get() -> dict[str, Any]:
        async with aiohttp.ClientSession() as session:
            async with session.get(gateway.url + "/health") as response:
                return await response.json()

    return run(get())


# --- tests -------------------------------------------------------------------------------------


def test_the_gateway_and_the_core_never_import_ray() -> None:
    code = (
        "import sys, cnmt.serving.gateway, cnmt.serving.launch, cnmt.serving.settings, "
        "cnmt.serving.cloud_client, cnmt.config; "
        "sys.exit('ray imported' if 'ray' in sys.modules else 0)"
    )
    subprocess.run([sys.executable, "-P", "-c", code], check=True, cwd=REPO)


def test_a_gateway_started_while_the_ray_cloud_is_down_serves_edge_only_then_finds_it(
    gateway: GatewayProcess, ray_cloud: RayCloud, sentences: list[str]
) -> None:
    assert ray_cloud.launched is None  # the gateway fixture started first, against nothing
    assert gateway_health(gateway)["cloud"] == "unhealthy"
    status, answer = run(post(gateway.url, {"text": sentences[0]}))
    assert status == 200, answer
    assert (answer["decided"], answer["device"], answer["fallback"]) == (
        "cloud",
        "edge",
        "cloud_unhealthy",
    )
    ray_cloud.start()
    wait_for(lambda: gateway_health(gateway)["cloud"] == "healthy", 10, "the gateway's probe")
    status, answer = run(post(gateway.url, {"text": sentences[0]}))
    assert (status, answer["device"], answer["fallback"]) == (200, "cloud", None)


def test_the_ray_cloud_answers_exactly_as_the_aiohttp_cloud(
    ray_cloud: RayCloud, reference: dict[str, dict[str, Any]], sentences: list[str]
) -> None:
    ray_cloud.start()
    for text in sentences:
        status, answer = run(post(ray_cloud.url, {"text": text}))
        assert status == 200, answer
        expected = reference[text]
        assert (answer["translation"], answer["n_tokens"], answer["m_tokens"]) == (
            expected["translation"],
            expected["n_tokens"],
            expected["m_tokens"],
        )
        # Both engines report queueing; the aiohttp server never batches.
        assert expected["batch_size"] == 1 and expected["pending"] == 0
        assert answer["batch_size"] == 1 and answer["pending"] == 0  # sent one at a time
        assert 0 <= answer["wait_s"] <= answer["sent_at"] - answer["received_at"]


def test_a_sentence_translates_identically_alone_and_in_a_batch(
    ray_cloud: RayCloud, reference: dict[str, dict[str, Any]], sentences: list[str]
) -> None:
    ray_cloud.start()

    async def burst() -> list[tuple[int, Any]]:
        return await asyncio.gather(*(post(ray_cloud.url, {"text": s}) for s in sentences))

    answers = run(burst())
    assert all(status == 200 for status, _ in answers), answers
    sizes = [answer["batch_size"] for _, answer in answers]
    assert max(sizes) > 1, f"no request was batched: batch sizes {sizes}"
    assert max(answer["pending"] for _, answer in answers) > 0
    for text, (_, answer) in zip(sentences, answers, strict=True):
        assert answer["translation"] == reference[text]["translation"], text
        assert answer["m_tokens"] == reference[text]["m_tokens"]


def test_requests_arriving_while_the_model_runs_join_the_next_batch(
    ray_cloud: RayCloud, reference: dict[str, dict[str, Any]], sentences: list[str]
) -> None:
    """A steady stream, each request a third of a model run after the last (and longer than
    the cloud's 10 ms batch window): the requests that queued during a run form the next
    batch, instead of one batch each behind the model. The gap comes from the runs measured
    on this machine, so the premise holds at any speed."""
    ray_cloud.start()
    run_s = statistics.median(reference[text]["exec_s"] for text in sentences)
    gap_s = max(0.012, run_s / 3)

    async def stream() -> list[tuple[int, Any]]:
        tasks = []
        for text in sentences * 2:
            tasks.append(asyncio.create_task(post(ray_cloud.url, {"text": text})))
            await asyncio.sleep(gap_s)
        return await asyncio.gather(*tasks)

    answers = run(stream())
    assert all(status == 200 for status, _ in answers), answers
    runs = [a["exec_s"] for _, a in answers]
    assert statistics.median(runs) > gap_s, (runs, gap_s)  # the premise: a run outlasts the gap
    sizes = [answer["batch_size"] for _, answer in answers]
    assert sum(1 for size in sizes if size > 1) >= len(sizes) // 2, sizes
    for text, (_, answer) in zip(sentences * 2, answers, strict=True):
        assert answer["translation"] == reference[text]["translation"], text


BAD_REQUESTS = [
    b"\xff\xfe not utf-8",
    b"",
    b"{not json",
    b'["a list"]',
    b'{"txt": "hallo"}',
    b'{"text": 42}',
    b'{"text": "   "}',
    json.dumps({"text": "x" * 20000}).encode(),  # over max_body_bytes: 413
    json.dumps({"text": " ".join(["wir"] * 300)}).encode(),  # over max_source_tokens: 422
]


def test_bad_requests_get_the_same_status_and_message_from_both_engines(
    ray_cloud: RayCloud, model: Path
) -> None:
    from cnmt.runtime import load_translator
    from cnmt.serving.cloud import CloudServer
    from cnmt.serving.launch import serve_app, url
    from cnmt.serving.settings import CloudSettings

    ray_cloud.start()

    async def compare() -> None:
        server = CloudServer([load_translator(model, threads=1)], CloudSettings(port=0))
        runner, port = await serve_app(server.app(), "127.0.0.1", 0)
        try:
            for body in BAD_REQUESTS:
                ours = await post(url("127.0.0.1", port), body)
                theirs = await post(ray_cloud.url, body)
                assert ours[0] in (400, 413, 422)
                assert theirs == ours, body[:40]
        finally:
            await runner.cleanup()

    run(compare())


def test_health_and_ready_answer_as_a_cnmt_cloud(ray_cloud: RayCloud) -> None:
    ray_cloud.start()

    async def check() -> None:
        client = CloudClient(ray_cloud.url, timeout_s=5.0)
        await client.start()
        try:
            assert await client.probe()
            for path in ("/ready", "/-/healthz"):  # ours, and Ray's proxy's own
                async with client.session.get(ray_cloud.url + path) as response:
                    assert response.status == 200, path
        finally:
            await client.close()

    run(check())


def test_two_gateways_share_the_ray_cloud_and_translate_as_the_aiohttp_cloud(
    ray_cloud: RayCloud,
    gateway: GatewayProcess,
    model: Path,
    reference: dict[str, dict[str, Any]],
    sentences: list[str],
    tmp_path: Path,
) -> None:
    ray_cloud.start()
    second = GatewayProcess(gateway_config(tmp_path, model, ray_cloud.url, "second"))
    try:

        async def through(gateway_url: str) -> list[tuple[int, Any]]:
            return await asyncio.gather(*(post(gateway_url, {"text": s}) for s in sentences))

        for gateway_url in (gateway.url, second.url):
            for text, (status, answer) in zip(sentences, run(through(gateway_url)), strict=True):
                assert (status, answer["device"], answer["fallback"]) == (200, "cloud", None)
                assert answer["translation"] == reference[text]["translation"]
        report = run(
            run_load([gateway.url, second.url], sentences, concurrency=4, count=40, timeout_s=30)
        )
    finally:
        second.close()
    assert (report.ok, report.lost, report.failed, report.rejected) == (40, 0, 0, 0)
    assert report.devices == {"cloud": 40}


def test_a_replica_killed_mid_load_loses_no_request(
    ray_cloud: RayCloud, gateway: GatewayProcess, sentences: list[str]
) -> None:
    ray_cloud.start()
    before = replicas(ray_cloud)
    assert len(before) == 2, before
    victim = min(before)
    done = 0
    killed = threading.Event()

    def progress(n: int) -> None:
        nonlocal done
        done += n
        if done == 40 and not killed.is_set():
            os.kill(victim, signal.SIGKILL)  # the replica's process dies mid-load
            killed.set()

    report = run(
        run_load(gateway.url, sentences, concurrency=6, count=240, timeout_s=60, progress=progress),
        timeout_s=240,
    )
    print(f"\nreplica {victim} killed after 40 answers:\n{report.table()}")
    assert killed.is_set()
    assert (report.sent, report.ok, report.lost, report.failed, report.rejected) == (
        240,
        240,
        0,
        0,
        0,
    ), report.table()
    # Ray starts a replacement; the gateway's probe finds the cloud healthy and offloads again.
    wait_for(lambda: len(replicas(ray_cloud) - {victim}) == 2, 90, "Ray replacing the replica")
    wait_for(lambda: gateway_health(gateway)["cloud"] == "healthy", 30, "the gateway's probe")
    status, answer = run(post(gateway.url, {"text": sentences[1]}))
    assert (status, answer["device"]) == (200, "cloud")


def test_launch_stops_the_ray_cloud_on_sigint_leaving_nothing_running(ray_cloud: RayCloud) -> None:
    ray_cloud.start()
    assert ray_cloud.launched is not None
    tree = descendants(ray_cloud.launched.process.pid)
    assert any("raylet" in command for command in tree.values())  # Ray really runs below it
    code, output = ray_cloud.stop(signal.SIGINT)
    assert code == 0, output
    assert "SIGINT received; shutting down" in output
    assert output.rstrip().endswith("cnmt launch: stopped")
    wait_for(lambda: not alive(set(tree)), 30, f"every Ray process gone: {alive(set(tree))}")


def test_the_builtin_default_ray_system_translates_and_stops_on_sigterm(
    model: Path, sentences: list[str], tmp_path: Path, reference: dict[str, dict[str, Any]]
) -> None:
    config = tmp_path / "default-ray.yaml"
    config.write_text(
        f"extends: {REPO / 'configs' / 'serving' / 'default-ray.yaml'}\n"
        f"gateway: {{port: 0, model: {model}, allow_unthrottled: true,"
        f" edge_profile: {PROFILES / 'bilstm-de-en__edge-cpu-q25.json'},"
        f" cloud_profile: {PROFILES / 'bilstm-de-en__cloud-cpu.json'}}}\n"
        f"cloud: {{port: 0, model: {model}}}\n"
        "link: {port: 0}\n"
        "device_policy: {name: cloud}\n"
        "length_estimator: {name: naive, params: {mean_tokens: 8}}\n"
    )
    launched = Launched(str(config))
    try:
        started = launched.read_until("ready; stop with", timeout_s=180)
        assert "Ray Serve on local Ray" in started
        gateway_url = re.search(r"gateway: (http://127\.0\.0\.1:\d+)", started).group(1)
        status, answer = run(post(gateway_url, {"text": sentences[2]}))
        assert (status, answer["device"]) == (200, "cloud"), answer
        assert answer["translation"] == reference[sentences[2]]["translation"]
        tree = descendants(launched.process.pid)
        launched.process.send_signal(signal.SIGTERM)
        code, output = launched.finish(timeout_s=90)
    finally:
        if launched.process.poll() is None:
            launched.process.kill()
    assert code == 0, output
    assert output.rstrip().endswith("cnmt launch: stopped")
    wait_for(lambda: not alive(set(tree)), 30, f"every process gone: {alive(set(tree))}")


def test_the_ray_cloud_joins_an_existing_cluster_and_leaves_it_running(
    model: Path,
    sentences: list[str],
    reference: dict[str, dict[str, Any]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # `ray start --head` enables token authentication and saves the token in ~/.ray; a driver
    # given the head's address explicitly must be told to send it.
    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    gcs_port, http_port = free_port(), free_port()
    head = subprocess.Popen(
        [sys.executable, "-m", "ray.scripts.scripts", "start", "--head", "--block",
         f"--port={gcs_port}", "--num-cpus=2", "--include-dashboard=false",
         "--disable-usage-stats"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=tmp_path,
    )  # fmt: skip
    config = tmp_path / "cluster.yaml"
    config.write_text(
        f"extends: {REPO / 'configs' / 'serving' / 'cloud-ray-cluster.yaml'}\n"
        f"cloud: {{host: 127.0.0.1, port: {http_port}, model: {model},"
        f" ray: {{address: '127.0.0.1:{gcs_port}', autoscaling: {{max_replicas: 1}}}}}}\n"
    )
    cloud = RayCloud(config, http_port)
    try:
        wait_for(lambda: any("raylet" in c for c in descendants(head.pid).values()), 60, "head up")
        cloud.start()
        status, answer = run(post(cloud.url, {"text": sentences[3]}))
        assert (status, answer["translation"]) == (200, reference[sentences[3]]["translation"])
        code, output = cloud.stop(signal.SIGTERM)
        assert code == 0, output
        # Only our application is gone: the cluster, and Serve's proxy on it, keep running.
        assert head.poll() is None

        async def status_of(method: str, path: str) -> int:
            async with aiohttp.ClientSession() as session:
                async with session.request(method, cloud.url + path, json={"text": "x"}) as r:
                    return r.status

        assert run(status_of("POST", "/v1/translate")) == 404  # our route is gone
        assert run(status_of("GET", "/-/healthz")) == 200  # Serve's proxy is not
    finally:
        if cloud.launched is not None and cloud.launched.process.poll() is None:
            cloud.launched.process.kill()
        tree = descendants(head.pid)
        head.send_signal(signal.SIGTERM)
        head.wait(60)
        # `ray start` records its cluster for later `ray.init()` calls; it is gone now.
        current = Path(tempfile.gettempdir()) / "ray" / "ray_current_cluster"
        if current.is_file() and current.read_text().strip().endswith(f":{gcs_port}"):
            current.unlink()
        wait_for(
            lambda: not alive(set(tree)), 30, f"the cluster's processes gone: {alive(set(tree))}"
        )


# --- the cloud's bearer token on the Ray route ------------------------------------------------


def _request(path: str, method: str, authorization: str | None) -> Any:
    from starlette.requests import Request

    headers = [(b"content-type", b"application/json")]
    if authorization is not None:
        headers.append((b"authorization", authorization.encode()))
    body = json.dumps({"text": "hallo welt"}).encode()

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    scope = {
        "type": "http",
        "method": method,
        "path": path,
        "headers": headers,
        "query_string": b"",
        "scheme": "http",
        "server": ("127.0.0.1", 80),
        "root_path": "",
    }
    return Request(scope, receive)


def test_a_ray_replica_with_a_token_answers_401_without_it(model: Path) -> None:
    """The replica's own check (the Ray route has no aiohttp middleware): a missing or wrong
    token gets 401 with ``WWW-Authenticate``; the probes' ``/health`` needs none."""
    from cnmt.serving.ray_cloud import TranslationReplica

    replica = TranslationReplica.func_or_class(
        str(model), ["CPUExecutionProvider"], 1, 16384, "t0k"
    )

    async def body() -> list[tuple[int, str | None]]:
        out = []
        for path, method, auth in (
            ("/v1/translate", "POST", None),
            ("/v1/translate", "POST", "Bearer wrong"),
            ("/health", "GET", None),
        ):
            response = await replica(_request(path, method, auth))
            out.append((response.status_code, response.headers.get("www-authenticate")))
        return out

    statuses = run(body())
    assert [status for status, _ in statuses] == [401, 401, 200]
    assert statuses[0][1] is not None and statuses[0][1].startswith("Bearer")
