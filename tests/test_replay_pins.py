"""With queueing off (the paper's method), every shipped scenario reproduces the numbers the
replay gave before queues, learning and load-aware policies existed. The decisions (each
policy's edge share) must agree exactly; the totals to a relative 1e-9, because summing the same
floats in another order (another CPU's SIMD width, another numpy) moves the last bits.

The pinned totals (``tests/data/paper-method-pins.json``) were made by that earlier replay
(commit 195b8e4) with the device profiles committed then. When the committed profiles are
re-measured, the pins must be regenerated on purpose:
``python -P tests/test_replay_pins.py --regenerate`` (and the change said in the commit).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from cnmt.config import load_config
from cnmt.experiments.replay import replay
from cnmt.experiments.report import plan

pytestmark = pytest.mark.slow  # replays every shipped scenario at its pinned size

PINS = Path(__file__).resolve().parent / "data" / "paper-method-pins.json"


def replayed(name: str, requests: int) -> dict:
    scenario = next(s for s in plan([name]))
    return replay(
        load_config(scenario.config), scenario.connection, requests=requests, queues=False
    ).result


def test_every_shipped_scenario_reproduces_the_paper_method_numbers(data_dir) -> None:
    pins = json.loads(PINS.read_text(encoding="utf-8"))
    # every shipped scenario of the paper's method (drift scenarios came later, on purpose)
    shipped = {s.name for s in plan() if not load_config(s.config)["replay"].drift}
    assert shipped == set(pins["scenarios"])
    for name, policies in pins["scenarios"].items():
        result = replayed(name, pins["requests"])
        assert result["queues"] == {"enabled": False}
        for label, pinned in policies.items():
            got = result["policies"][label]
            assert got["share_edge"] == pinned["share_edge"], f"{name} {label}: decisions differ"
            assert got["total_s"] == pytest.approx(pinned["total_s"], rel=1e-9, abs=0.0), (
                f"{name} {label}: total"
            )


if __name__ == "__main__":
    if sys.argv[1:] != ["--regenerate"]:
        sys.exit("usage: python -P tests/test_replay_pins.py --regenerate")
    pins = json.loads(PINS.read_text(encoding="utf-8"))
    for name, policies in pins["scenarios"].items():
        result = replayed(name, pins["requests"])
        for label in policies:
            got = result["policies"][label]
            policies[label] = {"total_s": got["total_s"], "share_edge": got["share_edge"]}
    pins["made_by"] = "tests/test_replay_pins.py --regenerate, after re-measuring the profiles"
    PINS.write_text(json.dumps(pins, indent=1) + "\n", encoding="utf-8")
    pytest.main([__file__, "-q"])
