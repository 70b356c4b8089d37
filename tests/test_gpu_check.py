"""scripts/gpu-check without a GPU: it says so clearly and exits 0, measuring nothing."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent

onnxruntime = pytest.importorskip("onnxruntime")
has_gpu = any(
    p in onnxruntime.get_available_providers()
    for p in ("CUDAExecutionProvider", "TensorrtExecutionProvider")
)


def _gpu_check() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "gpu_check", REPO_ROOT / "benchmarks/gpu_check.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(has_gpu, reason="this onnxruntime has a GPU provider")
def test_without_a_gpu_provider_the_script_says_so_and_exits_0(tmp_path: Path) -> None:
    done = subprocess.run(
        ["bash", str(REPO_ROOT / "scripts" / "gpu-check"), "--out", str(tmp_path / "out")],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", "PYTHON": sys.executable},
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "gpu-check: no GPU here: onnxruntime" in done.stdout
    assert "Nothing was measured" in done.stdout
    assert not (tmp_path / "out").exists()


@pytest.mark.skipif(has_gpu, reason="this onnxruntime has a GPU provider")
@pytest.mark.skipif(importlib.util.find_spec("onnx") is None, reason="needs onnx (cnmt[export])")
def test_a_listed_provider_that_cannot_start_counts_as_no_gpu(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    module = _gpu_check()
    real = onnxruntime.get_available_providers()
    monkeypatch.setattr(
        onnxruntime, "get_available_providers", lambda: ["CUDAExecutionProvider", *real]
    )
    assert module.main(["--out", str(tmp_path / "out")]) == 0
    printed = capsys.readouterr().out
    assert "no GPU here: CUDAExecutionProvider listed but failed to start" in printed
