"""`cnmt profile` end to end on a real exported model (a random-weight GRU from its config)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cnmt.cli import main
from cnmt.profiling.cpu_quota import available
from cnmt.profiling.profiles import load

pytestmark = pytest.mark.export


@pytest.fixture(scope="module")
def gru_dir(tmp_path_factory, data_dir) -> Path:
    pytest.importorskip("torch")
    from cnmt.config import resolve_config_path
    from cnmt.exporters.base import ExportRequest
    from cnmt.registry import get_components

    out = tmp_path_factory.mktemp("models") / "gru-fr-en"
    exporter = get_components().create("exporter", "gru")
    exporter.export(ExportRequest(out_dir=out, config=resolve_config_path("models/gru-fr-en")))
    return out


def profile_cli(capsys, model: Path, device: str, out: Path, *extra: str) -> str:
    code = main(
        [
            "profile",
            "--model",
            str(model),
            "--device",
            device,
            "--n",
            "2,6",
            "--m",
            "2,5",
            "--warmup",
            "1",
            "--min-runs",
            "2",
            "--max-runs",
            "2",
            "--allow-busy",  # the timings are not checked here, only what a profile records
            "--probe",
            "0.2",
            "--out",
            str(out),
            "--no-progress",
            *extra,
        ]
    )
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return captured.out


def test_profile_of_an_exported_gru_records_samples_fit_and_provenance(gru_dir, tmp_path, capsys):
    out = tmp_path / "cloud.json"
    printed = profile_cli(capsys, gru_dir, "cloud-cpu", out, "--plot", str(tmp_path / "p.png"))
    profile = load(out)
    manifest = json.loads((gru_dir / "manifest.json").read_text())
    assert (profile.model, profile.family) == ("gru-fr-en", "gru")
    assert profile.model_checksum == manifest["source_checksum"]
    assert profile.providers_used == ("CPUExecutionProvider",)
    assert sorted((c.n, c.m) for c in profile.cells) == [(2, 2), (2, 5), (6, 2), (6, 5)]
    remeasured = {k for v in profile.quality.violations_found for k in (v.lower, v.upper)}
    assert all(c.count == 2 or (c.n, c.m) in remeasured for c in profile.cells)
    assert profile.quality.regime == "isolated" and profile.quality.host.allowed_busy
    assert profile.versions["onnxruntime"] != "not loaded"
    assert f"R^2 = {profile.fit.r2:.4f}" in printed
    assert (tmp_path / "p.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.cgroup
@pytest.mark.skipif(available() is not None, reason=f"cgroup CPU quota unusable: {available()}")
def test_profile_on_the_emulated_edge_runs_the_model_in_a_quota(gru_dir, tmp_path, capsys):
    out = tmp_path / "edge.json"
    profile_cli(capsys, gru_dir, "edge-cpu-q25", out)
    profile = load(out)
    assert profile.device.cpu_quota == 0.25
    assert profile.machine["cgroup"]["version"] in ("v1", "v2")
    assert not Path(profile.machine["cgroup"]["path"]).exists()
