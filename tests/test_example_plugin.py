"""The example third-party plugin in plugins/examples/cnmt-safety-margin.

The `plugin`-marked tests need it installed as a distribution (tox env `plugin`); the others
register its module directly, so the policy's behaviour is checked in every environment.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

from cnmt.cli import main
from cnmt.config import load_config
from cnmt.registry import Components, get_plugin_manager
from cnmt.schedulers import Device, LatencyModel, LinkState, Request, SchedulerState

EXAMPLE = Path(__file__).resolve().parent.parent / "plugins" / "examples" / "cnmt-safety-margin"

# Edge: 10 ms per output token. Cloud: 2 ms per output token. Link: 50 ms round trip.
STATE = SchedulerState(
    edge=LatencyModel(a_n=0.0, a_m=0.010, b=0.0),
    cloud=LatencyModel(a_n=0.0, a_m=0.002, b=0.0),
    link=LinkState(rtt_s=0.050, bandwidth_bps=100e6),
)


def load_example_module(monkeypatch: pytest.MonkeyPatch):
    spec = importlib.util.spec_from_file_location(
        "cnmt_safety_margin", EXAMPLE / "cnmt_safety_margin.py"
    )
    module = importlib.util.module_from_spec(spec)
    # dataclasses look their class's module up in sys.modules while executing it
    monkeypatch.setitem(sys.modules, "cnmt_safety_margin", module)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def policy_cls(monkeypatch):
    monkeypatch.setenv("CNMT_DISABLE_PLUGIN_AUTOLOAD", "1")  # registered here, installed or not
    pm = get_plugin_manager()
    pm.register(load_example_module(monkeypatch), name="safety_margin")
    return Components(pm).get("device_policy", "safety_margin").cls


def test_margin_keeps_borderline_requests_on_the_edge(policy_cls):
    # M=8: edge 80 ms vs cloud 66 ms: cnmt offloads, a 10% + 10 ms margin keeps it local.
    policy = policy_cls(policy_cls.Params(margin_s=0.010, margin_ratio=0.1))
    assert policy.choose(Request(n_tokens=8), 8.0, STATE) is Device.EDGE
    # M=40: edge 400 ms vs cloud 130 ms: a clear gain, offloaded.
    assert policy.choose(Request(n_tokens=40), 40.0, STATE) is Device.CLOUD


def test_zero_margin_decides_like_the_cnmt_rule(policy_cls):
    from cnmt.schedulers.device_policies import CnmtPolicy

    margin = policy_cls(policy_cls.Params(margin_s=0.0, margin_ratio=0.0))
    rule = CnmtPolicy(None)
    for m in range(1, 60):
        request = Request(n_tokens=m)
        assert margin.choose(request, float(m), STATE) == rule.choose(request, float(m), STATE)


def test_negative_margin_is_a_config_error(policy_cls, tmp_path):
    from cnmt.schema import build

    with pytest.raises(Exception, match="must not be negative"):
        build(policy_cls.Params, {"margin_s": -1.0}, path="device_policy.params")


@pytest.mark.plugin
def test_installed_plugin_is_listed_by_cnmt_plugins(capsys, fresh_registry, monkeypatch):
    monkeypatch.delenv("CNMT_DISABLE_PLUGIN_AUTOLOAD", raising=False)
    assert main(["plugins", "--json"]) == 0
    rows = {
        r["name"]: r for r in json.loads(capsys.readouterr().out) if r["kind"] == "device_policy"
    }
    assert rows["safety_margin"]["plugin"] == "safety_margin"
    assert rows["safety_margin"]["distribution"].startswith("cnmt-safety-margin ")


@pytest.mark.plugin
def test_installed_plugin_is_selected_from_yaml_and_decides(fresh_registry, monkeypatch):
    monkeypatch.delenv("CNMT_DISABLE_PLUGIN_AUTOLOAD", raising=False)
    config = load_config(EXAMPLE / "example.yaml")
    policy = config.create("device_policy")
    assert type(policy).__module__ == "cnmt_safety_margin"
    assert policy.params.margin_s == 0.010
    assert policy.choose(Request(n_tokens=40), 40.0, STATE) is Device.CLOUD
    assert policy.choose(Request(n_tokens=8), 8.0, STATE) is Device.EDGE
