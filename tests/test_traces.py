"""RTT trace loaders: every format, lost pings, malformed input, and the real traces."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from cnmt.datasets.traces import (
    detect_format,
    load_plain,
    load_ripe_csv,
    load_ripe_json,
    load_trace,
    ripe_results_url,
)
from cnmt.errors import ConfigError

# A hand-written sample in the RIPE Atlas API's ping-result format (test data, not a download).
RIPE_JSON_SAMPLE = [
    {
        "fw": 4790,
        "timestamp": 1525132800,
        "prb_id": 6222,
        "msm_id": 1437285,
        "type": "ping",
        "result": [{"rtt": 20.5}, {"rtt": 21.5}, {"rtt": 21.0}],
        "avg": 21.0,
        "sent": 3,
        "rcvd": 3,
    },
    {
        "fw": 4790,
        "timestamp": 1525133040,
        "prb_id": 6222,
        "msm_id": 1437285,
        "type": "ping",
        "result": [{"x": "*"}, {"x": "*"}, {"x": "*"}],
        "avg": -1,
        "sent": 3,
        "rcvd": 0,
    },
    {
        "fw": 4790,
        "timestamp": 1525133280,
        "prb_id": 6222,
        "msm_id": 1437285,
        "type": "ping",
        "result": [{"x": "*"}, {"rtt": 30.0}, {"rtt": 40.0}],
        "avg": 35.0,
        "sent": 3,
        "rcvd": 2,
    },
]


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_ripe_csv_reads_both_date_formats_and_keeps_lost_pings_as_lost(tmp_path):
    iso = write(
        tmp_path,
        "a.csv",
        "epoch;rtt;cp\n2016-11-20 00:00:00;150.5;0\n2016-11-20 00:04:00;-3;0\n"
        "2016-11-20 00:08:00;151.0;1\n",
    )
    dmy = write(
        tmp_path,
        "b.csv",
        "epoch;rtt;cp\n20/11/2016 00:00;150.5;0\n20/11/2016 00:04;-4;0\n20/11/2016 00:08;151.0;0\n",
    )
    for path in (iso, dmy):
        trace = load_ripe_csv(path)
        assert trace.times_s.tolist() == [0.0, 240.0, 480.0]
        assert trace.lost.tolist() == [False, True, False]
        assert trace.lost_count == 1
        assert trace.rtt_ms[0] == 150.5 and math.isnan(trace.rtt_ms[1])
    assert load_ripe_csv(iso).start_epoch == load_ripe_csv(dmy).start_epoch


def test_ripe_csv_bad_line_names_file_and_line(tmp_path):
    path = write(
        tmp_path,
        "bad.csv",
        "epoch;rtt;cp\n2016-11-20 00:00:00;150.5;0\n2016-11-20 00:04:00;fast;0\n",
    )
    with pytest.raises(ConfigError, match=r"bad\.csv:3: bad rtt 'fast'"):
        load_ripe_csv(path)
    path = write(tmp_path, "date.csv", "epoch;rtt;cp\nyesterday;150.5;0\n")
    with pytest.raises(ConfigError, match=r"date\.csv:2: bad epoch 'yesterday'"):
        load_ripe_csv(path)
    path = write(tmp_path, "cols.csv", "epoch;rtt;cp\n2016-11-20 00:00:00\n")
    with pytest.raises(ConfigError, match=r"cols\.csv:2: expected 'epoch;rtt;cp'"):
        load_ripe_csv(path)


def test_ripe_json_averages_answered_packets_and_marks_unanswered_results_lost(tmp_path):
    path = write(tmp_path, "m.json", json.dumps(RIPE_JSON_SAMPLE))
    trace = load_ripe_json(path)
    assert trace.format == "ripe-json"
    assert trace.times_s.tolist() == [0.0, 240.0, 480.0]
    assert trace.rtt_ms[0] == pytest.approx(21.0)
    assert trace.lost.tolist() == [False, True, False]
    assert trace.rtt_ms[2] == pytest.approx(35.0)  # mean of the two answered packets
    assert trace.start_epoch == 1525132800


def test_ripe_json_lines_and_out_of_order_results_are_sorted_by_time(tmp_path):
    lines = "\n".join(json.dumps(r) for r in reversed(RIPE_JSON_SAMPLE)) + "\n"
    trace = load_ripe_json(write(tmp_path, "m.jsonl", lines))
    assert trace.times_s.tolist() == [0.0, 240.0, 480.0]
    assert trace.lost.tolist() == [False, True, False]


def test_ripe_json_malformed_result_names_file_and_position(tmp_path):
    broken = [RIPE_JSON_SAMPLE[0], {"timestamp": 1525133040, "prb_id": 6222}]
    with pytest.raises(
        ConfigError, match=r"m\.json: result #2: a ping result needs `timestamp` and `result`"
    ):
        load_ripe_json(write(tmp_path, "m.json", json.dumps(broken)))
    lines = json.dumps(RIPE_JSON_SAMPLE[0]) + "\n{not json\n"
    with pytest.raises(ConfigError, match=r"m\.jsonl:2: invalid JSON"):
        load_ripe_json(write(tmp_path, "m.jsonl", lines))
    odd = [{"timestamp": 1, "result": [{"ttl": 3}]}]
    with pytest.raises(ConfigError, match="has neither `rtt` nor `x`"):
        load_ripe_json(write(tmp_path, "odd.json", json.dumps(odd)))


def test_plain_trace_has_no_timestamps_and_negative_values_are_lost(tmp_path):
    trace = load_plain(write(tmp_path, "t.csv", "5.5\n4.0\n\n-1\n6\n"))
    assert trace.times_s is None
    assert trace.lost.tolist() == [False, False, True, False]
    with pytest.raises(ConfigError, match=r"u\.csv:2: bad rtt 'n/a'"):
        load_plain(write(tmp_path, "u.csv", "5.5\nn/a\n"))


def test_a_trace_of_only_lost_pings_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="every ping in the trace was lost"):
        load_plain(write(tmp_path, "t.csv", "-3\n-3\n"))


def test_format_detection_by_content(tmp_path):
    assert detect_format(write(tmp_path, "x.txt", "epoch;rtt;cp\n")) == "ripe-csv"
    assert detect_format(write(tmp_path, "x.dat", json.dumps(RIPE_JSON_SAMPLE))) == "ripe-json"
    assert detect_format(write(tmp_path, "x.csv", "12.5\n")) == "plain"
    with pytest.raises(ConfigError, match=r"cannot tell the trace format"):
        detect_format(write(tmp_path, "y.csv", "hello;world\n"))
    with pytest.raises(ConfigError, match="no such RTT trace file"):
        load_trace(tmp_path / "missing.csv")


def test_window_selects_samples_and_rejects_windows_outside_the_trace(tmp_path):
    trace = load_plain(write(tmp_path, "t.csv", "\n".join(str(v) for v in range(1, 11)) + "\n"))
    window = trace.window(2, 3)
    assert window.rtt_ms.tolist() == [3.0, 4.0, 5.0]
    with pytest.raises(ConfigError, match="does not fit the trace's 10 samples"):
        trace.window(8, 5)
    with pytest.raises(ConfigError, match="outside the trace"):
        trace.window(10, None)


def test_ripe_api_url_carries_measurement_probe_and_times():
    url = ripe_results_url(1437285, [6222], start=1525132800, stop=1525219200)
    assert url.startswith("https://atlas.ripe.net/api/v2/measurements/1437285/results/?")
    assert "probe_ids=6222" in url and "start=1525132800" in url and "format=json" in url


@pytest.mark.slow
def test_every_real_ripe_trace_loads_with_its_lost_pings_counted(data_dir):
    folder = data_dir / "rtt" / "ripe-atlas-2016"
    files = sorted(folder.glob("*.csv"))
    assert files
    for path in files:
        trace = load_trace(path)
        assert trace.format == "ripe-csv"
        negative = sum(
            1 for line in path.read_text().splitlines()[1:] if line.split(";")[1].startswith("-")
        )
        assert trace.lost_count == negative, path.name
        ok = trace.rtt_ms[~trace.lost]
        assert (ok > 0).all() and np.isfinite(ok).all()
        assert (np.diff(trace.times_s) >= 0).all()


def test_real_tyrell_lan_trace_is_plain_and_fast(data_dir):
    trace = load_trace(data_dir / "rtt" / "tyrell" / "tyrell_roundtrip035.csv")
    assert trace.format == "plain"
    assert 2.0 < trace.summary()["median_ms"] < 10.0
