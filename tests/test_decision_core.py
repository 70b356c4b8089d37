"""The decision core: the replay's fast paths decide as the core does on every shipped scenario,
the paper's rule is the two-target case of "least predicted total", and a decision carries its
predicted parts."""

from __future__ import annotations

import numpy as np
import pytest

from cnmt.config import load_config
from cnmt.errors import ConfigError
from cnmt.experiments.replay import replay
from cnmt.experiments.report import plan
from cnmt.registry import ComponentSpec, get_components
from cnmt.schedulers.base import LatencyModel, LinkState, PayloadModel, Request, SchedulerState
from cnmt.schedulers.core import (
    DecisionCore,
    DecisionSpecs,
    Outcome,
    TargetSetup,
    decision_fields,
)
from cnmt.schedulers.edge_backlog import EdgeBacklog

EDGE = LatencyModel(a_n=0.004, a_m=0.012, b=0.02)
NEAR = LatencyModel(a_n=0.002, a_m=0.006, b=0.01)
FAR = LatencyModel(a_n=0.0005, a_m=0.0015, b=0.005)


@pytest.mark.slow
@pytest.mark.parametrize("queues", [False, True], ids=["paper-method", "queues"])
def test_the_fast_paths_decide_as_the_core_on_every_shipped_scenario(data_dir, queues) -> None:
    scenarios = [s for s in plan() if s.skipped is None]
    assert scenarios
    for scenario in scenarios:
        config = load_config(scenario.config)
        args = dict(requests=1500, queues=queues)
        fast = replay(config, scenario.connection, **args)
        core = replay(config, scenario.connection, fast_paths=False, **args)
        assert fast.targets.keys() == core.targets.keys()
        for label, chosen in fast.targets.items():
            assert np.array_equal(chosen, core.targets[label]), f"{scenario.name} {label}"
            got, want = fast.result["policies"][label], core.result["policies"][label]
            assert got["total_s"] == pytest.approx(want["total_s"], rel=1e-9)


def core_for(policy: str, clouds: dict[str, LatencyModel]) -> DecisionCore:
    linear = get_components().get("length_estimator", "linear").cls
    chosen = {
        "device_policy": ComponentSpec("device_policy", policy, None),
        "length_estimator": ComponentSpec(
            "length_estimator", "linear", linear.Params(gamma=1.1, delta=0.5)
        ),
    }
    specs = DecisionSpecs.select(chosen.get)
    made = specs.create(
        TargetSetup("edge", EDGE), [TargetSetup(name, model) for name, model in clouds.items()]
    )
    return DecisionCore(made)


def test_the_paper_rule_is_the_two_target_case_of_the_least_predicted_total() -> None:
    rng = np.random.default_rng(3)
    two = core_for("cnmt", {"cloud": FAR})
    policy = two.policy
    for _ in range(300):
        n = int(rng.integers(1, 60))
        rtt = float(rng.uniform(0.0, 0.4))
        two.clouds["cloud"].rtt.observe(rtt, 0.0)
        request = Request(n, int(rng.integers(10, 900)))
        decision = two.decide(request, now=1.0)
        state = SchedulerState(EDGE, FAR, LinkState(rtt))
        m = decision.m_estimate
        assert (decision.target == "edge") == (policy.choose(request, m, state) == "edge")
        totals = {t: p.exec_s + p.transmission_s for t, p in decision.predicted.items()}
        assert decision.target == min(totals, key=lambda t: (totals[t], t != "edge"))


def test_with_two_clouds_the_rule_picks_the_least_predicted_total() -> None:
    core = core_for("cnmt", {"near": NEAR, "far": FAR})
    core.clouds["near"].rtt.observe(0.005, 0.0)
    core.clouds["far"].rtt.observe(0.200, 0.0)
    short, long = core.decide(Request(2, 50), 1.0), core.decide(Request(200, 50), 1.0)
    assert {short.target, long.target} <= {"edge", "near", "far"}
    for decision in (short, long):
        totals = {t: p.exec_s + p.transmission_s for t, p in decision.predicted.items()}
        assert decision.target == min(totals, key=totals.__getitem__)
    assert long.target == "far"  # the fast cloud pays for its long round trip on long inputs
    fields = decision_fields(long)
    assert fields["decided"] == "far" and set(fields["predicted"]) == {"edge", "near", "far"}
    far = fields["predicted"]["far"]
    assert far["total_ms"] == pytest.approx(
        far["transmission_ms"] + far["wait_ms"] + far["exec_ms"], abs=2e-3
    )


def test_a_two_device_policy_is_refused_with_several_clouds(monkeypatch) -> None:
    from cnmt.schedulers.base import Device, DevicePolicy

    class TwoDevices(DevicePolicy):
        name = "two-devices"

        def choose(self, request, m_estimate, state):
            return Device.CLOUD

    parts = core_for("cnmt", {"near": NEAR, "far": FAR}).components
    parts.policy = TwoDevices(None)
    with pytest.raises(ConfigError, match="decides between the edge and one cloud"):
        DecisionCore(parts)
    one = core_for("cnmt", {"cloud": FAR}).components
    one.policy = TwoDevices(None)
    assert DecisionCore(one).decide(Request(3, 10), 0.0).target == "cloud"


def test_observing_an_offload_teaches_that_clouds_link_and_wait_only() -> None:
    core = core_for("cnmt_load", {"near": NEAR, "far": FAR})
    decision = core.decide(Request(10, 100), 0.0)
    own = core.offloaded(decision, "far", 0.0)
    assert own == 0.0 and core.cloud_wait_s("far", 0.0) > 0  # its own offload is ahead now
    core.observe(decision, Outcome("far", 1.0, 11, 0.02, wait_s=0.3, rtt_sample_s=0.15))
    assert core.link("far", 1.0).rtt_s == pytest.approx(0.15)
    assert core.link("near", 1.0).rtt_s != pytest.approx(0.15)
    assert core.clouds["far"].wait.estimate(1.0) == pytest.approx(0.3)
    assert core.clouds["near"].wait.estimate(1.0) == 0.0


def test_one_payload_definition_for_the_prediction_and_the_sample() -> None:
    payload = PayloadModel(response_ratio=1.5, overhead_bytes=40)
    assert payload.expected_bytes(100) == 100 + 150 + 40
    assert PayloadModel.measured_bytes(100, 170) == 270


def test_the_edge_backlog_counts_what_is_left_of_the_predictions() -> None:
    live = EdgeBacklog()
    first, second = live.add(1.0), live.add(0.5)
    assert live.at(0.0) == pytest.approx(1.5)
    live.start(first, 0.0)
    assert live.at(0.4) == pytest.approx(1.1)  # 0.6 left of the first, the second queued
    assert live.at(5.0) == pytest.approx(0.5)  # overdue: never below its own prediction gone
    live.finish(first)
    live.start(second, 5.0)
    live.finish(second)
    assert live.at(6.0) == 0.0 and len(live) == 0
    replayed = EdgeBacklog(workers=2)
    replayed.add(1.0, start=0.0, done=1.0)
    replayed.add(1.0, start=0.0, done=1.0)
    assert replayed.at(0.5) == pytest.approx(0.5) and replayed.at(1.0) == 0.0


@pytest.mark.slow
def test_the_two_clouds_replay_uses_every_target_and_the_closed_loop_beats_each_one(
    data_dir,
) -> None:
    config = load_config("experiments/bilstm-de-en-two-clouds")
    labels = ["cloud-far", "cloud-near", "edge", "oracle", "cnmt", "cnmt-closed"]
    result = replay(config, requests=20000, labels=labels).result
    policies = result["policies"]
    assert set(result["devices"]) == {"edge", "far", "near"}
    oracle = policies["oracle"]["shares"]
    assert set(oracle) == {"edge", "far", "near"} and min(oracle.values()) > 0.005
    assert sum(oracle.values()) == pytest.approx(1.0)
    assert policies["cloud-near"]["shares"]["near"] == 1.0
    assert policies["cloud-far"]["shares"]["far"] == 1.0
    best_single = min(policies[x]["total_s"] for x in ("edge", "cloud-far", "cloud-near"))
    for label in ("cnmt", "cnmt-closed"):
        total = policies[label]["total_s"]
        assert total < 0.99 * best_single, label
        assert total < 1.025 * policies["oracle"]["total_s"], label
        assert policies[label]["share_edge"] == pytest.approx(policies[label]["shares"]["edge"])


def test_a_replay_config_lists_its_clouds_or_gives_one(tmp_path) -> None:
    from cnmt.experiments.config import CloudSpec, DevicesSpec, ReplayConfig

    base = dict(model="m", corpus=None, connections={"c": None})
    with pytest.raises(ValueError, match="not both"):
        ReplayConfig(
            devices=DevicesSpec("e.json", "c.json"), clouds=[CloudSpec("a", "a.json")], **base
        )
    with pytest.raises(ValueError, match="devices.cloud"):
        ReplayConfig(devices=DevicesSpec("e.json"), **base)
    with pytest.raises(ValueError, match="needs its own `link`"):
        ReplayConfig(
            devices=DevicesSpec("e.json"),
            clouds=[CloudSpec("a", "a.json"), CloudSpec("b", "b.json")],
            **base,
        )


def test_a_policy_that_draws_gets_the_cores_seeded_generator_and_nothing_global() -> None:
    from cnmt.schedulers.base import DevicePolicy

    class Coin(DevicePolicy):
        """Offloads with probability one half (a stand-in for an exploring policy)."""

        name = "coin"
        uses_rng = True

        def choose(self, request, m_estimate, state):
            raise AssertionError("a policy among targets is asked for choose_target")

        def choose_target(self, request, m_estimate, state):
            names = [t.name for t in state.targets]
            return names[int(state.rng.integers(0, len(names)))]

    def decisions(seed: int) -> list[str]:
        parts = core_for("cnmt", {"near": NEAR, "far": FAR}).components
        parts.policy = Coin(None)
        core = DecisionCore(parts, rng=np.random.default_rng(seed))
        return [core.decide(Request(5, 100), float(t)).target for t in range(60)]

    assert decisions(1) == decisions(1) != decisions(2)
    assert set(decisions(1)) == {"edge", "near", "far"}
    parts = core_for("cnmt", {"cloud": FAR}).components
    parts.policy = Coin(None)
    with pytest.raises(ConfigError, match="seeded generator"):
        DecisionCore(parts)
