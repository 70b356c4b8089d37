"""The link model the replay and the live emulated link share: time, looping, lost pings."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cnmt.datasets.link import RttSource, RttTimeline, serialisation_s
from cnmt.datasets.traces import RttTrace
from cnmt.errors import ConfigError
from cnmt.experiments.config import ConnectionSpec
from cnmt.serving.settings import LinkSettings


def test_each_sample_holds_for_its_period_and_the_window_loops(tmp_path: Path) -> None:
    trace = tmp_path / "t.csv"
    trace.write_text("10\n20\n30\n")
    timeline = RttSource(trace=str(trace), sample_period_s=2.0).timeline()
    assert timeline.duration_s == 6.0
    assert [timeline.rtt_at(t) for t in (0.0, 1.9, 2.0, 5.9, 6.0, 8.5)] == [
        0.01,
        0.01,
        0.02,
        0.03,
        0.01,
        0.02,
    ]


def test_a_window_starts_where_asked(tmp_path: Path) -> None:
    trace = tmp_path / "t.csv"
    trace.write_text("10\n20\n30\n40\n")
    timeline = RttSource(trace=str(trace), start=1, samples=2).timeline()
    assert list(timeline.rtt_s) == [0.02, 0.03]


def test_a_lost_ping_costs_the_last_answered_rtt_plus_one_retransmission_timeout(
    tmp_path: Path,
) -> None:
    trace = tmp_path / "t.csv"
    trace.write_text("-3\n100\n-3\n-4\n50\n")
    timeline = RttSource(trace=str(trace)).timeline(loss_timeout_s=1.0)
    # Before the first answer: charged on the first answered RTT.
    assert timeline.rtt_s == pytest.approx([1.1, 0.1, 1.1, 1.1, 0.05])
    assert list(timeline.lost) == [True, False, True, True, False]


def test_timestamps_place_the_samples_unless_a_period_is_given() -> None:
    trace = RttTrace(
        "ripe",
        "ripe-csv",
        np.array([100.0, 200.0, 300.0]),
        np.zeros(3, bool),
        np.array([0.0, 240.0, 480.0]),
        0.0,
    )
    own = RttTimeline.from_trace(trace)
    assert own.duration_s == 720.0 and own.rtt_at(250.0) == 0.2
    fast = RttTimeline.from_trace(trace, sample_period_s=1.0)
    assert fast.duration_s == 3.0 and fast.rtt_at(1.5) == 0.2


def test_replay_and_live_link_read_one_trace_the_same_way(tmp_path: Path) -> None:
    trace = tmp_path / "t.csv"
    trace.write_text("10\n-3\n30\n40\n")
    keys = {"trace": str(trace), "start": 1, "samples": 3, "sample_period_s": 0.5}
    replayed = ConnectionSpec(**keys).timeline(0.8)
    live = LinkSettings(**keys, loss_timeout_s=0.8).timeline(0.8)
    assert np.array_equal(replayed.rtt_s, live.rtt_s)
    assert replayed.duration_s == live.duration_s == 1.5


def test_a_window_of_only_lost_pings_is_refused(tmp_path: Path) -> None:
    trace = tmp_path / "t.csv"
    trace.write_text("10\n-3\n-3\n")
    with pytest.raises(ConfigError, match="every ping in the window was lost"):
        RttSource(trace=str(trace), start=1).timeline()


def test_exactly_one_of_a_constant_and_a_trace() -> None:
    with pytest.raises(ValueError, match="exactly one of rtt_ms"):
        RttSource()
    with pytest.raises(ValueError, match="exactly one of rtt_ms"):
        RttSource(rtt_ms=5.0, trace="x.csv")
    assert RttSource(rtt_ms=5.0).timeline().rtt_at(123.0) == 0.005


def test_serialisation_is_eight_bits_per_byte_over_the_bandwidth() -> None:
    assert serialisation_s(1250, 1e6) == pytest.approx(0.01)
