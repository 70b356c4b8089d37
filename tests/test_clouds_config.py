"""The `clouds` list of a serving config: checked before anything starts, every error naming
the key at fault; `cloud` + `link` stay the one-cloud shorthand."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from cnmt.config import load_config
from cnmt.errors import ConfigError
from cnmt.serving.launch import System

CLOUD = "{name: near, cloud: {port: 0}, link: {port: 0, rtt_ms: 2.0}}"
OTHER = "{name: far, cloud: {port: 0}, link: {port: 0, rtt_ms: 15.0}}"


def system(tmp_path: Path, body: str, **ports: int) -> System:
    path = tmp_path / "clouds.yaml"
    path.write_text("extends: serving/default\n" + body)
    return System(load_config(path), say=str, **ports)


def test_a_config_without_clouds_has_the_one_cloud_named_cloud() -> None:
    system = System(load_config("serving/default"), say=str)
    assert [c.name for c in system.clouds] == ["cloud"]
    assert system.cloud_settings is not None and system.cloud_settings.port == 8081
    assert system.link_settings is not None and system.link_settings.rtt_ms == 4.6


def test_the_two_clouds_config_lists_a_near_and_a_far_cloud_each_with_its_link() -> None:
    system = System(load_config("serving/two-clouds"), cloud_port=0, link_port=0, say=str)
    near, far = system.clouds
    assert (near.name, far.name) == ("near", "far")
    assert near.cloud is not None and near.cloud.cpu_quota == 0.75 and near.time_factor == 1.35
    assert near.link is not None and far.link is not None
    assert near.link.rtt_ms < far.link.rtt_ms
    assert {near.cloud.port, near.link.port} == {0}  # 0 applies to every cloud


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (f"clouds: [{CLOUD}]\n", "clouds: give one cloud as `cloud` + `link` or several"),
        (f"cloud: null\nlink: null\nclouds: [{CLOUD}, {CLOUD}]\n", "each with a unique name"),
        ("cloud: null\nlink: null\nclouds: []\n", "expected at least one cloud"),
        ("cloud: null\nlink: null\nclouds: [{name: edge}]\n", "clouds[0]: name: a cloud needs"),
        ("cloud: null\nlink: null\nclouds: [{name: x, lnk: {}}]\n", "clouds[0].lnk: unknown key"),
        (
            "cloud: null\nlink: null\nclouds: [{name: x, workers: 0}]\n",
            "clouds[0].workers: 0 is out of range",
        ),
        ("cloud: null\nlink: null\nclouds: [{name: x}]\n", "clouds[0].url: not set"),
        (
            "cloud: null\nlink: null\nclouds: [{name: x, link: {rtt_ms: 2}}]\n",
            "clouds[0].link.upstream: not set",
        ),
        (
            "cloud: null\nlink: null\nclouds: [{name: x, model: a, cloud: {model: b}}]\n",
            "clouds[0]: model: 'a' but the cloud launched for it runs 'b'",
        ),
    ],
)
def test_a_bad_clouds_list_fails_naming_its_key(tmp_path: Path, body: str, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        system(tmp_path, body)


def test_a_fixed_port_for_several_clouds_is_refused_and_zero_is_not(tmp_path: Path) -> None:
    body = f"cloud: null\nlink: null\nclouds: [{CLOUD}, {OTHER}]\n"
    with pytest.raises(ConfigError, match="--cloud-port 9000: the config launches 2 clouds"):
        system(tmp_path, body, cloud_port=9000)
    assert [c.name for c in system(tmp_path, body, cloud_port=0, link_port=0).clouds] == [
        "near",
        "far",
    ]
