"""`cnmt launch` as a user runs it: a subprocess that serves until SIGTERM/SIGINT, and every
config mistake as a message naming the key and the fix (exit 2) before anything starts."""

from __future__ import annotations

import os
import re
import signal
import socket
from pathlib import Path

import pytest
from helpers.launched import Launched

from cnmt.cli import main
from cnmt.config import load_config

REPO = Path(__file__).resolve().parent.parent


def link_config(tmp_path: Path, port: int = 0) -> Path:
    config = tmp_path / "link.yaml"
    config.write_text(f"link:\n  port: {port}\n  upstream: 127.0.0.1:9\n  rtt_ms: 20\n")
    return config


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_launch_serves_until_a_signal_then_shuts_down_cleanly(
    tmp_path: Path, sig: signal.Signals
) -> None:
    # The config's port is taken, so the link only starts because --link-port overrides it.
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    launched = Launched(str(link_config(tmp_path, busy.getsockname()[1])), "--link-port", "0")
    try:
        started = launched.read_until("ready")
        port = int(re.search(r"link:\s+http://127.0.0.1:(\d+)", started).group(1))
        assert port != busy.getsockname()[1]
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            pass  # it really listens
        launched.process.send_signal(sig)
        code, output = launched.finish()
    finally:
        busy.close()
        if launched.process.poll() is None:
            launched.process.kill()
    assert code == 0, output
    assert f"{sig.name} received; shutting down" in output
    assert output.rstrip().endswith("cnmt launch: stopped")


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return str(path)


GATEWAY = """
gateway:
  port: 0
  edge_profile: {edge}
  cloud_profile: {cloud}
  cloud_url: http://127.0.0.1:9
length_estimator: {{name: naive, params: {{mean_tokens: 8}}}}
device_policy: {{name: {policy}}}
rtt_estimator: {{name: last}}
"""


def test_launch_names_a_missing_profile_and_how_to_measure_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write(
        tmp_path,
        GATEWAY.format(edge=tmp_path / "edge.json", cloud=tmp_path / "cloud.json", policy="cnmt"),
    )
    assert main(["launch", config]) == 2
    err = capsys.readouterr().err
    assert f"gateway.edge_profile: {tmp_path / 'edge.json'}: no such device profile" in err
    assert "cnmt profile --model cn2en --device DEVICE --out FILE" in err


def test_launch_refuses_schedulers_that_need_ground_truth(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write(tmp_path, GATEWAY.format(edge="e.json", cloud="c.json", policy="oracle"))
    assert main(["launch", config]) == 2
    assert "device_policy: 'oracle' needs each request's ground truth" in capsys.readouterr().err


def test_launch_needs_something_to_launch(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write(tmp_path, "device_policy: {name: cnmt}\n")
    assert main(["launch", config]) == 2
    assert "nothing to launch" in capsys.readouterr().err


def test_a_gateway_alone_needs_the_clouds_url(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = GATEWAY.format(edge="e.json", cloud="c.json", policy="cnmt").replace(
        "  cloud_url: http://127.0.0.1:9\n", ""
    )
    assert main(["launch", write(tmp_path, text)]) == 2
    assert (
        "gateway.cloud_url: not set and the config launches no link or cloud"
        in capsys.readouterr().err
    )


def test_the_int8_edge_config_runs_int8_on_the_edge_and_fp32_on_the_cloud() -> None:
    config = load_config("serving/edge-int8")
    assert config["gateway"].models == {"edge": "cn2en-int8", "cloud": "cn2en"}
    assert config["cloud"].model == "cn2en"
    assert config["edge_latency"].name == "posterior"  # the fp32 prior is relearnt on the edge


def test_a_cloud_running_another_model_than_the_gateway_expects_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = "extends: serving/edge-int8\ngateway: {cloud_model: cn2en-int8}\n"
    assert main(["launch", write(tmp_path, text)]) == 2
    err = capsys.readouterr().err
    assert "the cloud runs 'cn2en' but the gateway expects 'cn2en-int8' there" in err
    assert "set gateway.cloud_model: cn2en" in err


def test_a_link_alone_needs_its_upstream(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["launch", write(tmp_path, "link: {rtt_ms: 5}\n")]) == 2
    assert "link.upstream: not set" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ("link: {upstream: 'nowhere', rtt_ms: 5}", "expected host:port"),
        ("link: {upstream: '127.0.0.1:1', rtt_ms: 5, trace: t.csv}", "exactly one of rtt_ms"),
        ("cloud: {port: 70000}", "cloud.port: 70000 is out of range: 0 <= x <= 65,535"),
        ("cloud: {workers: 0}", "cloud.workers: 0 is out of range: 1 <= x <= 256"),
        (
            "gateway: {edge_profile: e, cloud_profile: c, cloud_url: 'ftp://x'}",
            "expected an http:// URL",
        ),
        ("gateway: {edge_profile: e, cloud_profile: c, max_pendng: 3}", "unknown key; valid keys:"),
    ],
)
def test_invalid_serving_sections_are_config_errors(
    tmp_path: Path, section: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["config", "validate", write(tmp_path, section + "\n")]) == 2
    assert message in capsys.readouterr().err


def test_launch_rejects_an_out_of_range_port_flag(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["launch", "--gateway-port", "99999"]) == 2
    assert "--gateway-port: 99999 out of range" in capsys.readouterr().err


@pytest.mark.parametrize(
    "name",
    [
        "serving/default",
        "serving/edge-only",
        "serving/cloud-only",
        "serving/tyrell-lan",
        "serving/tyrell-4g",
        "serving/cloud",
        "serving/gateway",
        "serving/edge-int8",
    ],
)
def test_builtin_serving_configs_are_valid(name: str) -> None:
    config = load_config(name)
    assert {"gateway", "cloud", "link"} & set(config.sections)


def test_default_config_launches_the_whole_system_with_cn2en_on_both_sides() -> None:
    config = load_config("serving/default")
    assert config["gateway"].model == config["cloud"].model == "cn2en"
    assert config["link"].rtt_ms is not None
    assert config["gateway"].edge_profile.endswith("profiles/cn2en__edge-cpu-q25.json")
    assert config["gateway"].cloud_profile.endswith("profiles/cn2en__cloud-cpu.json")
    # the closed loop that corrects a wrong prior: posteriors, the load-aware rule on their
    # draws, idle calibration of the edge; learning length model, probes
    assert config["device_policy"].name == "cnmt_explore"
    assert config["edge_latency"].name == config["cloud_latency"].name == "posterior"
    assert config["gateway"].calibrate_idle_s is not None
    assert config["length_estimator"].name == "online_linear"
    assert Path(config["length_estimator"].params.model).is_file()
    assert config["gateway"].learn_from_probes
    previous = load_config("serving/closed-loop-online")  # the previous loop, to compare
    assert previous["device_policy"].name == "cnmt_load"
    assert previous["edge_latency"].name == previous["cloud_latency"].name == "online"
    assert previous["gateway"].calibrate_idle_s is None
    paper = load_config("serving/paper-rule")  # the paper's fixed rule stays selectable
    assert paper["device_policy"].name == "cnmt"
    assert paper["edge_latency"].name == paper["cloud_latency"].name == "profile"
    assert paper["length_estimator"].name == "linear"
    assert not paper["gateway"].learn_from_probes


def test_default_config_points_at_shipped_cn2en_profiles() -> None:
    # `cnmt launch` and `cnmt demo` work out of the box only if these measured profiles ship.
    from cnmt.profiling.profiles import load

    config = load_config("serving/default")
    edge = load(os.path.normpath(config["gateway"].edge_profile))
    cloud = load(os.path.normpath(config["gateway"].cloud_profile))
    assert edge.model == cloud.model == "cn2en"
    assert edge.device.cpu_quota == 0.25 and cloud.device.cpu_quota is None
    assert edge.device.threads == config["gateway"].threads
    assert cloud.device.threads == config["cloud"].threads


def test_a_missing_link_trace_fails_before_anything_starts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = f"link: {{port: 0, upstream: '127.0.0.1:9', trace: {tmp_path / 'none.csv'}}}\n"
    assert main(["launch", write(tmp_path, text)]) == 2
    assert f"link.trace: {tmp_path / 'none.csv'}: no such RTT trace file" in capsys.readouterr().err
