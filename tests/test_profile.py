"""Characterization: the fit, the profile file, device settings, the worker and `cnmt profile`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cnmt.cli import main
from cnmt.errors import CnmtRuntimeError, ConfigError
from cnmt.profiling.cpu_quota import available
from cnmt.profiling.devices import DeviceSetting, load_device
from cnmt.profiling.profiles import Cell, DeviceProfile, fit_linear, load, save

GRID_N = (4, 8, 16)
GRID_M = (2, 6, 12)

# A real Translator whose work is linear in N and M (one small matrix-vector product per source
# token, three per output step), written to a module the worker process can import.
TOY_TRANSLATOR = """
from __future__ import annotations

import numpy as np

from cnmt.errors import ConfigError
from cnmt.runtime.base import Translation, Translator


class ToyTranslator(Translator):
    family = "toy"

    def __init__(self, fail_at_m: int | None = None) -> None:
        self.weights = np.random.default_rng(0).standard_normal((32, 32)) / 32
        self.fail_at_m = fail_at_m
        self.providers = ["CPUExecutionProvider"]

    @property
    def max_source_tokens(self) -> int:
        return 16

    def count_source_tokens(self, text: str) -> int:
        return len(text.split())

    def translate(self, text: str) -> Translation:
        return Translation(text, self.count_source_tokens(text), 0, 0.0)

    def run_forced(self, n_tokens: int, m_tokens: int) -> None:
        if m_tokens == self.fail_at_m:
            raise RuntimeError("decoder exploded")
        state = np.ones(32)
        for _ in range(n_tokens + 3 * m_tokens):
            state = np.tanh(self.weights @ state)


def open_toy(model: str, config) -> ToyTranslator:
    if model == "toy":
        return ToyTranslator()
    if model == "toy-failing":
        return ToyTranslator(fail_at_m=6)
    raise ConfigError(f"unknown model {model!r}; known: toy, toy-failing")
"""


@pytest.fixture
def toy_loader(tmp_path, monkeypatch) -> str:
    folder = tmp_path / "toy_module"
    folder.mkdir()
    (folder / "toy_translator.py").write_text(TOY_TRANSLATOR)
    # Beside what is already there: the worker must still find cnmt where it is installed.
    monkeypatch.setenv(
        "PYTHONPATH", os.pathsep.join(filter(None, (str(folder), os.environ.get("PYTHONPATH"))))
    )
    return "toy_translator:open_toy"


def synthetic_cells(
    a_n: float, a_m: float, b: float, noise: float = 0.0, repeats: int = 4
) -> list[Cell]:
    rng = np.random.default_rng(1)
    return [
        Cell(
            n,
            m,
            tuple(a_n * n + a_m * m + b + noise * rng.standard_normal() for _ in range(repeats)),
        )
        for n in GRID_N
        for m in GRID_M
    ]


def make_profile(name: str = "cloud-cpu", scale: float = 1.0) -> DeviceProfile:
    cells = tuple(synthetic_cells(2e-4 * scale, 3e-3 * scale, 1e-2 * scale, noise=1e-4))
    return DeviceProfile(
        model="gru-fr-en",
        family="gru",
        device=DeviceSetting(name=name, threads=2),
        cells=cells,
        fit=fit_linear(cells),
        machine={"cpu_model": "Test CPU", "logical_cpus": 2},
        versions={"python": "3.11"},
        date="2025-01-01T00:00:00+00:00",
        warmup=1,
        repeats=4,
        providers_used=("CPUExecutionProvider",),
        seed=3,
    )


# ----------------------------------------------------------------------------------------- fit


def test_fit_recovers_known_coefficients_exactly():
    fit = fit_linear(synthetic_cells(2e-4, 3e-3, 1e-2))
    assert fit.a_n == pytest.approx(2e-4, rel=1e-9)
    assert fit.a_m == pytest.approx(3e-3, rel=1e-9)
    assert fit.b == pytest.approx(1e-2, rel=1e-9)
    assert fit.r2 == pytest.approx(1.0)
    assert fit.mse == pytest.approx(0.0, abs=1e-20)


def test_fit_on_noisy_samples_reports_imperfect_r2_and_positive_mse():
    fit = fit_linear(synthetic_cells(2e-4, 3e-3, 1e-2, noise=2e-3))
    assert 0.5 < fit.r2 < 1.0
    assert fit.mse > 0
    assert fit.a_m == pytest.approx(3e-3, rel=0.2)
    assert fit.latency_model.predict(8, 10) == pytest.approx(fit.a_n * 8 + fit.a_m * 10 + fit.b)


def test_fit_refuses_a_grid_with_a_single_n():
    cells = [Cell(8, m, (0.01 * m,)) for m in (2, 4, 8)]
    with pytest.raises(ValueError, match="two values of N"):
        fit_linear(cells)


# ------------------------------------------------------------------------------- profile files


def test_profile_round_trips_through_save_and_load(tmp_path):
    profile = make_profile()
    path = tmp_path / "p.json"
    save(profile, path)
    assert load(path) == profile


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "not a device profile: invalid JSON"),
        ('{"format": "something-else"}', "not a device profile"),
        ('{"format": "cnmt-device-profile/1", "model": "m"}', "malformed device profile"),
    ],
)
def test_malformed_profile_is_a_config_error_naming_the_file(tmp_path, content, message):
    path = tmp_path / "broken.json"
    path.write_text(content)
    with pytest.raises(ConfigError, match=message) as info:
        load(path)
    assert str(path) in str(info.value)


def test_profile_with_an_empty_cell_is_rejected(tmp_path):
    path = tmp_path / "p.json"
    save(make_profile(), path)
    data = json.loads(path.read_text())
    data["cells"][0]["seconds"] = []
    path.write_text(json.dumps(data))
    with pytest.raises(ConfigError, match="at least one sample"):
        load(path)


# ------------------------------------------------------------------------------------ devices


def test_builtin_devices_describe_the_emulated_edge_and_the_cloud():
    edge = load_device("edge-cpu-q25")
    assert (edge.threads, edge.cpu_quota, edge.cpu_period_us) == (1, 0.25, 4_000)
    assert edge.providers == ("CPUExecutionProvider",)
    cloud = load_device("cloud-cpu")
    assert cloud.cpu_quota is None and cloud.threads == 2
    for gpu in ("cloud-cuda", "cloud-tensorrt"):
        assert load_device(gpu).providers[-1] == "CPUExecutionProvider"  # CPU fallback


def test_unknown_key_in_a_device_file_names_the_key_and_the_valid_ones(tmp_path):
    path = tmp_path / "dev.yaml"
    path.write_text("device:\n  name: x\n  cpu_qouta: 0.5\n")
    with pytest.raises(ConfigError, match="device.cpu_qouta: unknown key; valid keys: ") as info:
        load_device(path)
    assert str(path) in str(info.value) and "cpu_quota" in str(info.value)


def test_bad_device_values_are_config_errors(tmp_path):
    path = tmp_path / "dev.yaml"
    path.write_text("device:\n  name: x\n  cpu_quota: -1\n")
    with pytest.raises(ConfigError, match="device.cpu_quota: -1.0 is out of range: 0 < x"):
        load_device(path)
    path.write_text("device:\n  name: x\n  providers: CPUExecutionProvider\n")
    with pytest.raises(ConfigError, match="device.providers: expected a list"):
        load_device(path)


def test_unknown_device_name_lists_the_builtin_devices():
    with pytest.raises(ConfigError, match="edge-cpu-q25") as info:
        load_device("edge-cpu-q10")
    assert "cloud-cpu" in str(info.value)


# ------------------------------------------------------------------------------------- worker


# Timings of this machine vary (it may be busy): these tests check what was measured and how,
# never how long it took. Runs per cell are fixed (min = max) unless the sanity check had cells
# measured again, which a busy machine can cause.
FIXED = dict(warmup=1, min_runs=3, max_runs=3)


def any_host():
    """The probe's result is recorded, never a reason to refuse here."""
    from cnmt.profiling.measure import HostCheck

    return HostCheck(allow_busy=True, probe_s=0.2)


def remeasured(profile) -> set[tuple[int, int]]:
    return {key for v in profile.quality.violations_found for key in (v.lower, v.upper)}


def test_worker_times_every_cell_and_the_fit_describes_the_samples(toy_loader):
    from cnmt.profiling.measure import Method, measure

    device = DeviceSetting(name="host", threads=1)
    profile = measure(
        "toy",
        device,
        GRID_N,
        GRID_M,
        Method(regime="sustained", **FIXED),
        host=any_host(),
        loader=toy_loader,
        progress=False,
        on_warning=lambda message: None,
    )
    assert sorted((c.n, c.m) for c in profile.cells) == [(n, m) for n in GRID_N for m in GRID_M]
    assert all(min(c.seconds) > 0 for c in profile.cells)
    assert all(c.count == 3 or (c.n, c.m) in remeasured(profile) for c in profile.cells)
    assert profile.family == "toy" and profile.model == "toy"
    assert profile.providers_used == ("CPUExecutionProvider",)
    assert profile.fit == fit_linear(profile.cells)
    assert profile.versions["python"] and profile.versions["numpy"] == np.__version__
    assert profile.machine["logical_cpus"] >= 1 and profile.date.endswith("+00:00")
    assert profile.warmup == 1 and profile.repeats == 0
    quality = profile.quality
    assert quality.regime == "sustained" and quality.pause_s == 0.0
    assert quality.rounds == 3 and quality.stopped in ("converged", "max runs")
    assert quality.runs == sum(c.count for c in profile.cells)
    assert quality.host.allowed_busy and quality.host.probe_s == 0.2
    assert quality.host.mean is None or quality.host.mean >= 0
    assert profile.machine["wall_seconds_per_cpu_second"] > 0
    assert profile.requests == () and quality.requests is None


def test_isolated_regime_pauses_one_period_before_every_timed_run(toy_loader):
    import time

    from cnmt.profiling.measure import Method, measure

    device = DeviceSetting(name="host", threads=1, cpu_period_us=50_000)
    started = time.monotonic()
    profile = measure(
        "toy",
        device,
        (2, 4),
        (2, 4),
        Method(regime="isolated", warmup=0, min_runs=2, max_runs=2),
        host=any_host(),
        loader=toy_loader,
        progress=False,
        on_warning=lambda message: None,
    )
    elapsed = time.monotonic() - started
    assert profile.quality.regime == "isolated" and profile.quality.pause_s == 0.05
    runs = sum(c.count for c in profile.cells)
    assert elapsed >= runs * 0.05  # a sleep never returns early
    # the pauses are idle time, not model time: each timed run is far shorter than a pause
    assert max(s for c in profile.cells for s in c.seconds) < 0.05


def test_real_requests_are_timed_once_each_and_those_beyond_the_models_limits_left_out(
    toy_loader,
):
    from cnmt.profiling.measure import Method, RequestSet, measure

    n = (3, 17, 5, 1, 16, 2)  # the toy model takes at most 16 input tokens
    m = (2, 4, 7, 9, 1, 3)
    source = {"config": "test", "seed": 0}
    profile = measure(
        "toy",
        DeviceSetting(name="host"),
        GRID_N,
        GRID_M,
        Method(regime="sustained", **FIXED),
        requests=RequestSet(n=n, m=m, source=source, budget_s=60.0),
        host=any_host(),
        loader=toy_loader,
        progress=False,
        on_warning=lambda message: None,
    )
    assert [(r.n, r.m) for r in profile.requests] == [(3, 2), (5, 7), (1, 9), (16, 1), (2, 3)]
    assert all(r.seconds > 0 for r in profile.requests)
    summary = profile.quality.requests
    assert (summary.drawn, summary.out_of_range, summary.timed) == (6, 1, 5)
    assert summary.stopped == "all timed" and summary.source == source
    assert summary.fit_r2 <= 1.0 and summary.fit_mse >= 0


def test_a_busy_host_is_refused_unless_allowed_and_then_flagged(toy_loader, monkeypatch):
    import cnmt.profiling.measure as measure_module
    from cnmt.profiling.measure import HostCheck, MachineBusy, Method, measure

    monkeypatch.setattr(measure_module, "probe_other_cpus", lambda seconds, own: 1.5)
    args = ("toy", DeviceSetting(name="host"), (2, 4), (2, 4), Method(**FIXED))
    with pytest.raises(MachineBusy, match=r"kept 1.50 CPUs busy .* pass --allow-busy"):
        measure(*args, host=HostCheck(max_busy=0.2), loader=toy_loader, progress=False)
    warnings: list[str] = []
    profile = measure(
        *args,
        host=HostCheck(max_busy=0.2, allow_busy=True),
        loader=toy_loader,
        progress=False,
        on_warning=warnings.append,
    )
    host = profile.quality.host
    assert host.busy and host.allowed_busy and host.before == 1.5 and host.max_busy == 0.2
    assert any("measuring anyway (--allow-busy)" in w for w in warnings)


@pytest.mark.cgroup
@pytest.mark.skipif(available() is not None, reason=f"cgroup CPU quota unusable: {available()}")
def test_worker_on_a_quota_device_runs_inside_its_cgroup_which_is_removed_after(toy_loader):
    from cnmt.profiling.measure import Method, measure

    device = DeviceSetting(name="edge", threads=1, cpu_quota=0.5)
    profile = measure(
        "toy",
        device,
        (2, 4),
        (2, 4),
        Method(warmup=0, min_runs=2, max_runs=2),
        host=any_host(),
        loader=toy_loader,
        progress=False,
        on_warning=lambda message: None,
    )
    cgroup = Path(profile.machine["cgroup"]["path"])
    assert cgroup.name.startswith("cnmt-")
    assert not cgroup.exists()


def test_model_errors_from_the_worker_reach_the_caller(toy_loader):
    from cnmt.profiling.measure import measure

    device = DeviceSetting(name="host")
    with pytest.raises(ConfigError, match="unknown model 'nope'; known: toy"):
        measure("nope", device, GRID_N, GRID_M, loader=toy_loader, progress=False)


def test_a_model_crash_reports_the_exception_and_the_worker_traceback(toy_loader):
    from cnmt.profiling.measure import Method, measure

    with pytest.raises(CnmtRuntimeError, match="RuntimeError: decoder exploded") as info:
        measure(
            "toy-failing",
            DeviceSetting(name="host"),
            GRID_N,
            GRID_M,
            Method(**FIXED),
            host=any_host(),
            loader=toy_loader,
            progress=False,
            on_warning=lambda message: None,
        )
    assert "Traceback" in str(info.value)


def test_input_longer_than_the_model_accepts_is_refused_before_timing(toy_loader):
    from cnmt.profiling.measure import measure

    with pytest.raises(ConfigError, match="--n 32 exceeds the longest input of this model"):
        measure(
            "toy", DeviceSetting(name="host"), (8, 32), GRID_M, loader=toy_loader, progress=False
        )


@pytest.mark.parametrize(
    ("ns", "ms", "message"),
    [
        ((8,), (2, 4), "--n: give at least two different values"),
        ((8, 16), (4, 4), "--m: give at least two different values"),
        ((0, 16), (2, 4), "at least 1"),
    ],
)
def test_grids_that_cannot_be_fitted_are_refused(ns, ms, message):
    from cnmt.profiling.measure import check_grid

    with pytest.raises(ConfigError, match=message):
        check_grid(ns, ms)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"regime": "bursty"}, "--regime: 'bursty' is not one of isolated, sustained"),
        ({"warmup": -1}, "--warmup"),
        ({"target_rel_ci": 0.0}, "--ci"),
        ({"min_runs": 1}, "--min-runs: 1 must be at least 2"),
        ({"min_runs": 5, "max_runs": 4}, "--max-runs: 4 is below --min-runs 5"),
        ({"budget_s": 0}, "--budget"),
    ],
)
def test_impossible_methods_are_refused(changes, message):
    from cnmt.profiling.measure import Method

    with pytest.raises(ConfigError, match=message):
        Method(**changes).check()


# ---------------------------------------------------------------------------------------- CLI


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_profile_show_prints_fit_quality_and_the_table(tmp_path, capsys):
    path = tmp_path / "cloud.json"
    save(make_profile(), path)
    code, out, _ = run_cli(capsys, "profile", "show", str(path))
    assert code == 0
    fit = load(path).fit
    assert f"R^2 = {fit.r2:.4f}" in out and "MSE" in out
    assert "gru-fr-en @ cloud-cpu" in out
    assert "rows N, columns M" in out


def test_profile_show_plots_several_profiles_on_one_png(tmp_path, capsys):
    edge, cloud = tmp_path / "edge.json", tmp_path / "cloud.json"
    save(make_profile("edge-cpu-q25", scale=4.0), edge)
    save(make_profile("cloud-cpu"), cloud)
    png = tmp_path / "figs" / "cmp.png"
    code, out, _ = run_cli(capsys, "profile", "show", str(edge), str(cloud), "--plot", str(png))
    assert code == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "gru-fr-en @ edge-cpu-q25 / gru-fr-en @ cloud-cpu: 4.00x the mean time" in out


def test_plot_at_an_n_that_was_not_measured_is_a_usage_error(tmp_path, capsys):
    path = tmp_path / "p.json"
    save(make_profile(), path)
    code, _, err = run_cli(
        capsys, "profile", "show", str(path), "--plot", str(tmp_path / "x.png"), "--plot-n", "5"
    )
    assert code == 2
    assert "--plot-n 5: not measured in every profile; common values: 4, 8, 16" in err


def test_measuring_without_model_device_or_out_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as info:
        main(["profile", "--model", "cn2en"])
    assert info.value.code == 2
    assert "measuring needs --device, --out" in capsys.readouterr().err


def test_unknown_device_exits_2_listing_builtin_devices(tmp_path, capsys):
    code, _, err = run_cli(
        capsys, "profile", "--model", "m", "--device", "laptop", "--out", str(tmp_path / "p.json")
    )
    assert code == 2 and "built-in: cloud-cpu, cloud-cuda" in err


def test_missing_model_exits_2_with_the_loader_message(tmp_path, capsys):
    missing = tmp_path / "no-model"
    code, _, err = run_cli(
        capsys,
        "profile",
        "--model",
        str(missing),
        "--device",
        "cloud-cpu",
        "--out",
        str(tmp_path / "p.json"),
    )
    assert code == 2
    assert f"{missing}: no such model directory" in err
    assert not (tmp_path / "p.json").exists()


def test_quota_device_without_writable_cgroups_exits_1_saying_what_to_do(tmp_path):
    env = {**os.environ, "CNMT_CGROUP_ROOT": str(tmp_path / "no-cgroups")}
    result = subprocess.run(
        [
            sys.executable,
            "-P",
            "-m",
            "cnmt",
            "profile",
            "--model",
            "cn2en",
            "--device",
            "edge-cpu-q25",
            "--out",
            str(tmp_path / "p.json"),
            "--no-progress",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert result.returncode == 1, result.stderr
    assert "no such cgroup directory" in result.stderr and "run as root" in result.stderr
    assert "Traceback" not in result.stderr


def test_help_describes_measure_show_and_devices(capsys):
    with pytest.raises(SystemExit):
        main(["profile", "--help"])
    out = capsys.readouterr().out
    assert "cnmt profile show" in out and "--compare" in out and "devices" in out


def test_show_flags_a_profile_that_ran_on_a_fallback_provider(tmp_path, capsys):
    import dataclasses

    profile = dataclasses.replace(
        make_profile("cloud-cuda"),
        device=DeviceSetting(
            name="cloud-cuda", providers=("CUDAExecutionProvider", "CPUExecutionProvider")
        ),
        provider_warnings=("CUDAExecutionProvider is not available in this onnxruntime build",),
    )
    path = tmp_path / "cuda.json"
    save(profile, path)
    code, out, _ = run_cli(capsys, "profile", "show", str(path))
    assert code == 0
    assert "NOTE: ran on CPUExecutionProvider, not on the preferred CUDAExecutionProvider" in out


def test_unwritable_out_folder_is_refused_before_measuring(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    out = blocker / "p.json"
    code, _, err = run_cli(
        capsys, "profile", "--model", "m", "--device", "cloud-cpu", "--out", str(out)
    )
    assert code == 2 and "cannot create its folder" in err
