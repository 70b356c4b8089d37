"""Trace-driven replay and `cnmt reproduce`.

The device profiles here are hand-made TEST DATA (linear times plus seeded noise on a full
(N, M) grid), written to tmp_path; they stand in for `cnmt profile` output and say nothing
about any real device.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from cnmt.cli import main
from cnmt.config import load_config
from cnmt.errors import ConfigError
from cnmt.experiments.config import ConnectionSpec
from cnmt.experiments.groundtruth import TimeSampler
from cnmt.experiments.replay import link_timeline, replay
from cnmt.profiling.devices import DeviceSetting
from cnmt.profiling.profiles import Cell, DeviceProfile, fit_linear, save

GRID = (1, 10, 25, 50)


def write_profile(
    path: Path,
    a_n: float,
    a_m: float,
    b: float,
    noise: float = 0.05,
    seed: int = 0,
    model: str = "test-model",
    device: str = "test-device",
) -> Path:
    """TEST DATA: a profile whose cell means are a_n*N + a_m*M + b, 5 noisy repeats each."""
    rng = np.random.default_rng(seed)
    cells = []
    for n in GRID:
        for m in GRID:
            mean = a_n * n + a_m * m + b
            cells.append(
                Cell(n, m, tuple(float(v) for v in mean * (1 + noise * rng.standard_normal(5))))
            )
    cells = tuple(cells)
    save(
        DeviceProfile(
            model=model,
            family="test",
            device=DeviceSetting(name=device),
            cells=cells,
            fit=fit_linear(cells),
        ),
        path,
    )
    return path


def write_corpus(folder: Path, seed: int = 0, lines: int = 400) -> tuple[Path, Path]:
    rng = np.random.default_rng(seed)
    src, tgt = [], []
    for _ in range(lines):
        n = int(rng.integers(1, 45))
        m = max(1, int(round(0.9 * n + 1 + rng.normal(0, 2))))
        src.append(" ".join(f"w{i}" for i in range(n)))
        tgt.append(" ".join(f"v{i}" for i in range(m)))
    (folder / "c.src").write_text("\n".join(src) + "\n", encoding="utf-8")
    (folder / "c.tgt").write_text("\n".join(tgt) + "\n", encoding="utf-8")
    return folder / "c.src", folder / "c.tgt"


def write_ripe_csv(path: Path, rtts_ms: list[float]) -> Path:
    rows = ["epoch;rtt;cp"]
    for i, rtt in enumerate(rtts_ms):
        minutes = 4 * i
        rows.append(
            f"2016-11-{20 + minutes // 1440:02d} "
            f"{minutes % 1440 // 60:02d}:{minutes % 60:02d}:00;{rtt};0"
        )
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return path


def write_config(
    folder: Path,
    *,
    rtt: list[float] | None = None,
    policies=None,
    edge=(0.004, 0.012, 0.02),
    cloud=(0.001, 0.003, 0.01),
    rtt_estimator=None,
    requests: int = 3000,
    extra=None,
    name: str = "exp",
) -> Path:
    src, tgt = write_corpus(folder)
    write_profile(folder / "edge.json", *edge, seed=1)
    write_profile(folder / "cloud.json", *cloud, seed=2)
    rng = np.random.default_rng(3)
    trace = write_ripe_csv(
        folder / "trace.csv", rtt or [float(v) for v in rng.uniform(80, 260, 300).round(2)]
    )
    config = {
        "description": "test scenario",
        "replay": {
            "model": "test-model",
            "requests": requests,
            "seed": 0,
            "corpus": {"parts": [{"src": str(src), "tgt": str(tgt)}], "heldout_every": None},
            "devices": {"edge": str(folder / "edge.json"), "cloud": str(folder / "cloud.json")},
            "connections": {"cp": {"trace": str(trace), "start": 0, "samples": None}},
            "policies": policies
            or [
                "edge",
                "cloud",
                "oracle",
                {"name": "naive", "params": {"mean_tokens": 21.0}},
                "cnmt",
            ],
        },
        "length_estimator": {"name": "linear", "params": {"gamma": 0.9, "delta": 1.0}},
    }
    if rtt_estimator:
        config["rtt_estimator"] = rtt_estimator
    for key, value in (extra or {}).items():
        config["replay"][key] = value
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


def test_replay_reports_totals_device_split_and_table_i(tmp_path):
    result = replay(load_config(write_config(tmp_path))).result
    policies, table = result["policies"], result["table"]
    assert set(policies) == {"edge", "cloud", "oracle", "naive", "cnmt"}
    for p in policies.values():
        assert p["total_s"] > 0
        assert p["share_edge"] + p["share_cloud"] == pytest.approx(1.0)
        assert p["requests_edge"] + p["requests_cloud"] == 3000
    assert policies["edge"]["share_edge"] == 1.0 and policies["cloud"]["share_cloud"] == 1.0
    assert 0.05 < policies["oracle"]["share_edge"] < 0.95  # this test scenario has a real crossover
    for label in ("cnmt", "naive"):
        row = table[label]
        for ref in ("edge", "cloud", "oracle"):
            expected = (
                100
                * (policies[label]["total_s"] - policies[ref]["total_s"])
                / policies[ref]["total_s"]
            )
            assert row[f"vs_{ref}_pct"] == pytest.approx(expected)
    assert table["oracle"]["vs_oracle_pct"] == 0.0
    assert result["devices"]["edge"]["ground_truth"] == "bilinear"


def test_same_seed_gives_the_same_json_and_another_seed_differs(tmp_path):
    config = write_config(tmp_path)
    outs = []
    for seed, name in ((5, "a"), (5, "b"), (6, "c")):
        out = tmp_path / f"{name}.json"
        assert (
            main(
                [
                    "replay",
                    str(config),
                    "--seed",
                    str(seed),
                    "--requests",
                    "1500",
                    "--json",
                    str(out),
                ]
            )
            == 0
        )
        outs.append(out.read_text())
    assert outs[0] == outs[1]
    assert (
        json.loads(outs[0])["policies"]["cnmt"]["total_s"]
        != json.loads(outs[2])["policies"]["cnmt"]["total_s"]
    )


@pytest.mark.parametrize("seed", range(6))
def test_no_policy_beats_the_oracle(tmp_path, seed):
    rng = np.random.default_rng(100 + seed)
    edge = tuple(float(v) for v in rng.uniform([0.001, 0.002, 0.0], [0.02, 0.05, 0.1]))
    cloud = tuple(float(v) for v in rng.uniform([0.0002, 0.0005, 0.0], [0.005, 0.01, 0.05]))
    rtt = [float(v) for v in rng.uniform(1, 600, 200).round(2)]
    rtt[int(rng.integers(0, 200))] = -3  # a lost ping
    config = write_config(
        tmp_path,
        rtt=rtt,
        edge=edge,
        cloud=cloud,
        requests=2000,
        rtt_estimator={"name": "ewma"},
        policies=[
            "edge",
            "cloud",
            "oracle",
            {"name": "naive", "params": {"mean_tokens": 5.0}},
            "cnmt",
            {"name": "cnmt", "label": "cnmt-true-m", "length_estimator": {"name": "oracle"}},
        ],
    )
    result = replay(load_config(config), seed=seed).result
    oracle = result["policies"]["oracle"]["total_s"]
    for label, p in result["policies"].items():
        assert p["total_s"] >= oracle * (1 - 1e-12), label


def test_rtt_trace_option_swaps_the_trace_for_a_file_in_another_format(tmp_path):
    config = write_config(tmp_path)
    lan = tmp_path / "lan.txt"
    lan.write_text("\n".join(["5.1", "4.8", "6.0", "5.5"] * 50 + ["-1"]) + "\n", encoding="utf-8")
    out = tmp_path / "lan.json"
    assert (
        main(
            [
                "replay",
                str(config),
                "--rtt-trace",
                str(lan),
                "--requests",
                "2000",
                "--json",
                str(out),
            ]
        )
        == 0
    )
    result = json.loads(out.read_text())
    assert result["connection"]["trace"] == str(lan)
    assert result["connection"]["format"] == "plain"
    assert result["connection"]["trace_stats"]["lost"] == 1
    assert result["connection"]["window"] == {
        **result["connection"]["window"],
        "start": 0,
        "samples": 201,
    }
    # With a 5 ms link the cloud wins almost always; the default trace (80-260 ms) is different.
    assert result["policies"]["oracle"]["share_cloud"] > 0.9
    default = replay(load_config(config), requests=2000).result
    assert (
        default["policies"]["oracle"]["share_cloud"] < result["policies"]["oracle"]["share_cloud"]
    )


def test_policies_flag_replays_only_those_labels_and_names_the_valid_ones(
    tmp_path, capsys, data_dir
):
    out = tmp_path / "run.json"
    args = ["replay", "experiments/bilstm-de-en", "--requests", "500", "--json", str(out)]
    assert main([*args, "--policies", "oracle, cnmt"]) == 0
    assert list(json.loads(out.read_text())["policies"]) == ["oracle", "cnmt"]
    capsys.readouterr()
    assert main([*args, "--policies", "oracle,cnmtt"]) == 2
    err = capsys.readouterr().err
    assert "no policy labelled 'cnmtt'" in err and "cnmt-closed" in err
    assert main([*args, "--policies", " , "]) == 2
    assert "--policies: give at least one label" in capsys.readouterr().err


def test_a_missing_profile_is_reported_instead_of_numbers(tmp_path, capsys):
    config = write_config(tmp_path)
    (tmp_path / "edge.json").unlink()
    assert main(["replay", str(config), "--requests", "100"]) == 2
    err = capsys.readouterr().err
    assert "edge device profile" in err and "does not exist yet" in err and "cnmt profile" in err


def test_reproduce_skips_scenarios_without_profiles_and_reports_why(tmp_path, monkeypatch):
    ready = tmp_path / "ready"
    ready.mkdir()
    missing = tmp_path / "missing"
    missing.mkdir()
    good = write_config(ready, requests=500, name="ready")
    bad = write_config(missing, requests=500, name="missing")
    (missing / "cloud.json").unlink()
    monkeypatch.setattr("cnmt.experiments.report.experiment_configs", lambda: [str(good), str(bad)])
    out, js = tmp_path / "report", tmp_path / "all.json"
    assert main(["reproduce", "--out", str(out), "--json", str(js)]) == 0
    data = json.loads(js.read_text())
    assert set(data) == {"ready/cp", "missing/cp"}
    assert data["ready/cp"]["policies"]["cnmt"]["total_s"] > 0
    assert set(data["missing/cp"]) == {"skipped"}
    assert "cloud device profile" in data["missing/cp"]["skipped"]
    assert "does not exist yet" in data["missing/cp"]["skipped"]
    report = (out / "report.md").read_text()
    assert "## Table I: the paper's and ours" in report and "not included" not in report
    assert "## Our Table I, every scenario" in report and "## Skipped scenarios" in report
    assert list((out / "figures").glob("*__rtt.png"))
    assert main(["reproduce", "--out", str(out), "--json", str(js), "--strict"]) == 1


def test_reproduce_without_matplotlib_writes_the_report_says_why_and_makes_no_figures_folder(
    tmp_path, monkeypatch, capsys
):
    ready = tmp_path / "ready"
    ready.mkdir()
    good = write_config(ready, requests=500, name="ready")
    monkeypatch.setattr("cnmt.experiments.report.experiment_configs", lambda: [str(good)])
    monkeypatch.setattr("cnmt.experiments.report.plotting_available", lambda: False)
    out = tmp_path / "report"
    assert main(["reproduce", "--out", str(out)]) == 0
    report = (out / "report.md").read_text()
    assert "This report has no figures: matplotlib is not installed" in report
    assert "pip install 'cnmt[plots]'" in report and "![" not in report
    assert not (out / "figures").exists()
    assert "without figures" in capsys.readouterr().err


def test_unknown_policy_name_is_a_config_error_listing_the_valid_ones(tmp_path, capsys):
    config = write_config(tmp_path, policies=["edge", "fastest"])
    assert main(["replay", str(config)]) == 2
    err = capsys.readouterr().err
    assert "replay.policies[1].name" in err
    known = "cloud, cnmt, cnmt_explore, cnmt_load, edge, naive, oracle, oracle_expected"
    assert f"unknown device policy 'fastest'; known: {known}" in err


def test_unknown_connection_lists_the_defined_ones(tmp_path):
    with pytest.raises(ConfigError, match="no connection profile 'cp9'; defined: cp"):
        replay(load_config(write_config(tmp_path)), connection="cp9")


def test_ground_truth_comes_from_the_measured_samples_not_the_fit(tmp_path):
    profile_path = write_profile(tmp_path / "p.json", 0.004, 0.012, 0.02, noise=0.2, seed=4)
    from cnmt.profiling.profiles import load

    profile = load(profile_path)
    sampler = TimeSampler(profile)
    cell = next(c for c in profile.cells if (c.n, c.m) == (10, 25))
    n, m = np.full(500, 10), np.full(500, 25)
    assert sampler.mean_time(n[:1], m[:1])[0] == pytest.approx(np.mean(cell.seconds))
    drawn = sampler.sample(n, m, np.random.default_rng(0))
    assert set(np.round(drawn, 12)) <= set(np.round(cell.seconds, 12))  # on a cell: its own samples
    midway = sampler.mean_time(np.array([17.5]), np.array([25]))[0]
    low = np.mean(cell.seconds)
    high = np.mean(next(c for c in profile.cells if (c.n, c.m) == (25, 25)).seconds)
    assert midway == pytest.approx(low + (high - low) * 0.5)
    assert sampler.extrapolated(np.array([5, 80]), np.array([5, 5])).tolist() == [False, True]


def test_a_lost_ping_charges_a_timeout_on_the_last_answered_rtt(tmp_path):
    trace = write_ripe_csv(tmp_path / "t.csv", [100.0, -3, 120.0, 130.0])
    spec = ConnectionSpec(trace=str(trace), arrivals="interval", interval_s=240.0)
    timeline = link_timeline(spec, 4, loss_timeout_s=1.0)
    assert timeline.rtt_s.tolist() == pytest.approx([0.100, 1.100, 0.120, 0.130])
    assert timeline.lossy.tolist() == [False, True, False, False]
    assert timeline.info["requests_hit_by_loss"] == 1


def test_a_stuck_last_sample_estimate_costs_time_that_a_probing_median_recovers(tmp_path):
    # 100 ms, then a lost ping (1.1 s with the timeout), then 100 ms again for good.
    rtt = [100.0] * 20 + [-3] + [100.0] * 279
    policies = [
        "oracle",
        {"name": "cnmt", "label": "last", "rtt_estimator": {"name": "last"}},
        {
            "name": "cnmt",
            "label": "median",
            "rtt_estimator": {
                "name": "median",
                "params": {"window": 3, "max_age_s": 600, "decay_s": 600},
            },
        },
    ]
    result = replay(load_config(write_config(tmp_path, rtt=rtt, policies=policies))).result
    p = result["policies"]
    # After the loss, `last` believes the link costs 1.1 s and never offloads again to learn better.
    assert p["last"]["share_cloud"] < 0.2 < p["median"]["share_cloud"]
    assert p["median"]["total_s"] < p["last"]["total_s"]
    assert p["median"]["same_device_as_oracle"] > p["last"]["same_device_as_oracle"]


def test_length_model_in_other_units_than_the_corpus_is_refused(tmp_path):
    from cnmt.schedulers.length_models import LengthModel, save_length_model

    lm = tmp_path / "lm.json"
    save_length_model(LengthModel(1.0, 0.0, 10.0, 1.0, 0.0, "chars", "chars", 10, 10), lm)
    config = write_config(
        tmp_path, policies=["edge", {"name": "naive", "params": {"model": str(lm)}}]
    )
    with pytest.raises(
        ConfigError, match="counts tokens with 'chars' but replay.corpus uses 'words'"
    ):
        replay(load_config(config), requests=100)


def test_model_output_lengths_replace_corpus_targets_and_must_match_the_source(tmp_path):
    config_path = write_config(tmp_path)
    src = tmp_path / "c.src"
    lines = src.read_text().splitlines()
    cache = tmp_path / "outputs.json"
    cache.write_text(
        json.dumps(
            {
                "format": "cnmt-output-lengths/1",
                "model": "test-model",
                "src_sha256": hashlib.sha256(src.read_bytes()).hexdigest(),
                "output_tokens": [len(line.split()) * 2 for line in lines],
            }
        )
    )
    raw = yaml.safe_load(config_path.read_text())
    raw["replay"]["corpus"]["parts"][0]["output_lengths"] = str(cache)
    config_path.write_text(yaml.safe_dump(raw))
    result = replay(load_config(config_path), requests=2000).result
    corpus = result["corpus"]
    assert corpus["mean_m_true"] == pytest.approx(2 * corpus["mean_n"])
    assert abs(corpus["mean_m_corpus"] - corpus["mean_m_true"]) > 5
    assert "model outputs" in corpus["parts"][0]["m_source"]
    src.write_text("\n".join(lines[:-1]) + "\n")
    (tmp_path / "c.tgt").write_text(
        "\n".join((tmp_path / "c.tgt").read_text().splitlines()[:-1]) + "\n"
    )
    with pytest.raises(ConfigError, match="was made from another version"):
        replay(load_config(config_path), requests=100)


def test_replay_command_writes_markdown_and_the_rtt_plot(tmp_path, capsys):
    config = write_config(tmp_path)
    md, png = tmp_path / "t.md", tmp_path / "rtt.png"
    assert (
        main(
            ["replay", str(config), "--requests", "500", "--markdown", str(md), "--plot", str(png)]
        )
        == 0
    )
    assert "| policy | total (s)" in md.read_text()
    assert png.stat().st_size > 5_000
    assert "| cnmt |" in capsys.readouterr().out


def test_real_corpus_and_real_trace_replay(data_dir, tmp_path):
    write_profile(tmp_path / "edge.json", 0.004, 0.012, 0.02, seed=1)
    write_profile(tmp_path / "cloud.json", 0.001, 0.003, 0.01, seed=2)
    corpus = data_dir / "corpora" / "iwslt14-de-en"
    config = {
        "replay": {
            "model": "test-model",
            "requests": 5000,
            "corpus": {
                "heldout_every": 10,
                "parts": [{"src": str(corpus / "valid.de"), "tgt": str(corpus / "valid.en")}],
            },
            "devices": {"edge": str(tmp_path / "edge.json"), "cloud": str(tmp_path / "cloud.json")},
            "connections": {
                "cp": {
                    "trace": str(data_dir / "rtt/ripe-atlas-2016/11180.csv"),
                    "start": 2000,
                    "samples": 2000,
                }
            },
            "policies": ["edge", "cloud", "oracle", "cnmt"],
        },
        "length_estimator": {"name": "linear", "params": {"gamma": 1.0, "delta": 0.5}},
        "rtt_estimator": {"name": "median"},
    }
    path = tmp_path / "real.yaml"
    path.write_text(yaml.safe_dump(config))
    result = replay(load_config(path)).result
    assert result["corpus"]["parts"][0]["pool_lines"] == 728
    assert result["connection"]["trace_stats"]["lost"] == 4
    assert result["policies"]["cnmt"]["total_s"] >= result["policies"]["oracle"]["total_s"]


def test_extrapolating_a_falling_profile_never_gives_free_or_negative_work(tmp_path):
    # Cell means 0.15 - 0.002*N + 0.01*M: beyond N = 80 the linear extrapolation drops below 0.
    profile_path = write_profile(tmp_path / "p.json", -0.002, 0.01, 0.15, noise=0.0)
    from cnmt.profiling.profiles import load

    sampler = TimeSampler(load(profile_path))
    drawn = sampler.sample(np.array([200, 400]), np.array([1, 1]), np.random.default_rng(0))
    assert (drawn > 0).all()
    assert drawn.tolist() == pytest.approx([sampler.floor_s] * 2)


def test_a_stale_prior_is_corrected_by_the_exploring_closed_loop_and_its_cost_reported(tmp_path):
    """The edge really runs 4x faster than its profile says, from the first request: the paper's
    rule never finds out; the posterior closed loop tries the edge, learns it, and after the
    first window is nearer the Oracle. The replay keeps the per-window totals and what exploring
    cost, and the convergence table reads them."""
    from cnmt.experiments.convergence import WINDOW, scenario_rows, window_gaps

    explore = {
        "name": "cnmt_explore",
        "label": "explore",
        "edge_latency": {"name": "posterior"},
        "cloud_latency": {"name": "posterior"},
    }
    config = write_config(
        tmp_path,
        policies=["oracle", "cnmt", explore],
        extra={"drift": [{"device": "edge", "at_fraction": 0.0, "factor": 0.25}]},
    )
    result = replay(load_config(config)).result
    policies = result["policies"]
    for p in policies.values():
        assert len(p["window_total_s"]) == 3000 // WINDOW
        assert sum(p["window_total_s"]) == pytest.approx(p["total_s"], rel=1e-9)
    assert "exploration" not in policies["cnmt"]
    cost = policies["explore"]["exploration"]
    assert 0 < cost["requests"] <= 5 + 0.02 * 3000  # the budget and its burst
    assert cost["requests"] == cost["to_edge"] + cost["to_cloud"] == sum(cost["per_window"])
    assert policies["explore"]["share_edge"] > policies["cnmt"]["share_edge"] + 0.1
    rows = {row["label"]: row for row in scenario_rows(result, ["cnmt", "explore"])}
    assert rows["explore"]["gap_after_settle_pct"] < rows["cnmt"]["gap_after_settle_pct"] / 2
    assert rows["cnmt"]["explored_share"] is None
    assert window_gaps(result, "explore")[-1] < window_gaps(result, "cnmt")[-1]


def test_load_sweep_lines_that_coincide_stay_apart_and_say_which_they_lie_on() -> None:
    from cnmt.experiments.report import Scenario, SweepPoint, sweep_lines

    def point(rate: float, **means: float) -> SweepPoint:
        return SweepPoint(rate / 10, rate, {k: {"mean_s": v, "p99_s": v} for k, v in means.items()})

    scenario = Scenario("x/cp", "x.yaml", "cp")
    scenario.sweep = [
        point(1.0, edge=0.10, cloud=0.20, cnmt=0.08, **{"cnmt-load": 0.08}),
        point(5.0, edge=0.40, cloud=0.21, cnmt=0.15, **{"cnmt-load": 0.1502}),
    ]
    lines = sweep_lines(scenario)
    assert [(label, shown) for label, shown, _ in lines] == [
        ("edge", "edge"),
        ("cloud", "cloud"),
        ("cnmt", "cnmt"),
        ("cnmt-load", "cnmt-load (= cnmt)"),
    ]
    styles = [(style["marker"], style["linestyle"]) for _, _, style in lines]
    assert len(set(styles)) == len(styles)  # every policy has a marker and dash of its own
    assert lines[3][2]["fillstyle"] == "none" and lines[2][2]["fillstyle"] == "full"


def test_replay_reports_progress_once_per_policy_and_at_the_end(tmp_path):
    calls = []
    result = replay(load_config(write_config(tmp_path)), progress=lambda *a: calls.append(a)).result
    labels = list(result["policies"])
    total = len(labels)
    assert calls == [(label, i, total) for i, label in enumerate(labels)] + [("", total, total)]


def test_an_edge_running_another_model_needs_a_profile_of_that_model(tmp_path):
    path = write_config(tmp_path, requests=500, extra={"edge_model": "test-model-int8"})
    with pytest.raises(ConfigError, match=r"the edge runs 'test-model-int8' \(replay.edge_model\)"):
        replay(load_config(path), "cp")
    write_profile(tmp_path / "edge.json", 0.002, 0.006, 0.01, seed=1, model="test-model-int8")
    faster_edge = replay(load_config(path), "cp").result
    assert faster_edge["models"] == {"edge": "test-model-int8", "cloud": "test-model"}
    (tmp_path / "b").mkdir()
    same_edge = replay(load_config(write_config(tmp_path / "b", requests=500)), "cp").result
    share = {label: r["share_edge"] for label, r in faster_edge["policies"].items()}
    before = {label: r["share_edge"] for label, r in same_edge["policies"].items()}
    assert share["oracle"] > before["oracle"]  # a twice faster edge keeps more requests local


def test_the_int8_edge_scenario_runs_cn2en_int8_on_the_edge_only():
    config = load_config(Path(__file__).resolve().parent.parent / "benchmarks" / "int8-edge.yaml")
    assert config["replay"].models == {"edge": "cn2en-int8", "cloud": "cn2en"}
    assert config["replay"].devices.edge.endswith("cn2en-int8__edge-cpu-q06.json")
    assert config["replay"].devices.cloud.endswith("cn2en__cloud-cpu.json")
