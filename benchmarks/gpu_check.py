#!/usr/bin/env python3
"""The GPU check, in one run: on a CUDA/TensorRT provider, parity with the CPU tokens, decode
speed beside the CPU, fp16 graphs, and cloud profiles; without a GPU, a clear note and exit 0.

What it does when ONNX Runtime has a usable GPU provider (``onnxruntime-gpu``, a device and its
CUDA/cuDNN/TensorRT libraries):

1. opens the model (default: the built-in cn2en, exported on first use) on the CPU and on each
   usable GPU provider (TensorRT, CUDA), at fp32, and at fp16 on CUDA: the graphs converted with
   ``onnxruntime.transformers.float16`` (inputs and outputs kept fp32, so the runtime's decode
   loops are unchanged), written beside the output as a model directory (precision fp16);
2. parity: every variant greedily translates check sentences (``--texts FILE`` or the model's
   own check sentences); it is compared with the CPU fp32 tokens as the int8 check compares
   (the share of steps with the CPU's token when fed the CPU's output, identical outputs, chrF);
3. decode speed: ``run_forced(N, M)`` over a small grid, every variant once per round in a
   rotating order, medians and each variant's speedup over the CPU;
4. cloud profiles: ``cnmt profile`` of each GPU variant on the built-in devices ``cloud-cuda``
   and ``cloud-tensorrt`` (short budgets), written to ``--out``.

Without a GPU provider, or when every one fails to start here, it says so and exits 0 (no GPU
is not an error of this script). Run it on the GPU machine from the repository root:

    scripts/gpu-check                                  # cn2en, results under gpu-check/
    scripts/gpu-check --model DIR --out /tmp/gpu        # an exported model directory
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

GPU_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")
CPU = "CPUExecutionProvider"
PROFILE_DEVICE = {
    "TensorrtExecutionProvider": "cloud-tensorrt",
    "CUDAExecutionProvider": "cloud-cuda",
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="cn2en", help="model directory or built-in (cn2en)")
    parser.add_argument("--out", type=Path, default=Path("gpu-check"), help="results folder")
    parser.add_argument("--texts", type=Path, help="check sentences, one a line")
    parser.add_argument("--n", default="8,32", help="forced source lengths N (default 8,32)")
    parser.add_argument("--m", default="8,32", help="forced output lengths M (default 8,32)")
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds per cell (5)")
    parser.add_argument(
        "--profile-budget", type=float, default=60.0, help="seconds per cloud profile (60)"
    )
    parser.add_argument("--no-profiles", action="store_true", help="skip the cloud profiles")
    args = parser.parse_args(argv)
    args.n_values = [int(v) for v in args.n.split(",")]
    args.m_values = [int(v) for v in args.m.split(",")]
    return args


def usable_gpu_providers() -> tuple[list[str], str]:
    """The GPU providers that start a session here, and why the others do not."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise SystemExit(
            f"gpu-check: onnxruntime is not installed for {sys.executable}, so no provider can "
            "be checked: install the project with pip install '.[gpu,export]' (or set PYTHON "
            "to the interpreter that has it)"
        ) from None

    available = ort.get_available_providers()
    listed = [p for p in GPU_PROVIDERS if p in available]
    if not listed:
        return [], (
            f"onnxruntime {ort.__version__} has no GPU execution provider here (available: "
            f"{', '.join(available)}); install onnxruntime-gpu on a machine with an NVIDIA GPU"
        )
    if importlib.util.find_spec("onnx") is None:
        raise SystemExit(
            f"gpu-check: {', '.join(listed)} listed, but the check needs the export tools "
            "(onnx, for the probe and the fp16 graphs): pip install 'cnmt[gpu,export]'"
        )
    usable, failed = [], []
    for provider in listed:
        # A provider in the build may still lack a device or its libraries: ONNX Runtime then
        # falls back to the CPU, which is what a one-node graph shows.
        if _starts(ort, provider):
            usable.append(provider)
        else:
            failed.append(provider)
    why = (
        f"{', '.join(failed)} listed but failed to start (no device or libraries)" if failed else ""
    )
    return usable, why


def _starts(ort: Any, provider: str) -> bool:
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "probe",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    try:
        session = ort.InferenceSession(
            onnx.shape_inference.infer_shapes(model).SerializeToString(), providers=[provider, CPU]
        )
    except Exception:
        return False
    return session.get_providers()[0] == provider


def fp16_copy(model_dir: Path, out: Path) -> Path:
    """``model_dir`` with every graph converted to fp16 (fp32 inputs and outputs kept)."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    from cnmt.runtime.manifest import load_manifest, replace, write_manifest

    manifest = load_manifest(model_dir)
    target = out / f"{manifest.name}-fp16"
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    for relative in manifest.files.values():
        (target / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(model_dir / relative, target / relative)
    for relative in manifest.graphs.values():
        graph = convert_float_to_float16(onnx.load(str(model_dir / relative)), keep_io_types=True)
        onnx.save(graph, str(target / relative))
    write_manifest(target, replace(manifest, name=f"{manifest.name}-fp16", precision="fp16"))
    return target


def check_texts(args: argparse.Namespace, family: str) -> list[str]:
    if args.texts:
        return [line for line in args.texts.read_text(encoding="utf-8").splitlines() if line]
    if family == "cn2en":
        from cnmt.exporters.check_texts import CN2EN_CHECK_TEXTS

        return list(CN2EN_CHECK_TEXTS)
    if family == "marian":
        from cnmt.exporters.marian import CHECK_TEXTS

        return list(CHECK_TEXTS)
    raise SystemExit(f"give --texts FILE: no built-in check sentences for the {family} family")


def time_variants(
    variants: dict[str, Any], n_values: list[int], m_values: list[int], rounds: int
) -> dict[tuple[int, int], dict[str, float]]:
    """Median seconds of run_forced(N, M) per cell and variant, rounds in rotating order."""
    cells: dict[tuple[int, int], dict[str, float]] = {}
    names = list(variants)
    for n in n_values:
        for m in m_values:
            runs: dict[str, Callable[[], None]] = {
                name: partial(t.run_forced, n, m) for name, t in variants.items()
            }
            for run in runs.values():
                run()  # warm-up (TensorRT builds its engines on the first run)
            samples: dict[str, list[float]] = {name: [] for name in names}
            for r in range(rounds):
                for name in names[r % len(names) :] + names[: r % len(names)]:
                    start = time.perf_counter()
                    runs[name]()
                    samples[name].append(time.perf_counter() - start)
            cells[(n, m)] = {name: statistics.median(v) for name, v in samples.items()}
    return cells


def profile(model: Path, device: str, out: Path, budget: float) -> str:
    command = [
        sys.executable, "-m", "cnmt.cli", "profile", "--model", str(model), "--device", device,
        "--out", str(out), "--budget", str(budget), "--no-progress",
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        return f"FAILED ({done.stderr.strip().splitlines()[-1] if done.stderr.strip() else '?'})"
    return f"written {out}"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    providers, why = usable_gpu_providers()
    if not providers:
        print(f"gpu-check: no GPU here: {why}. Nothing was measured.")
        return 0
    if why:
        print(f"gpu-check: {why}; measuring {', '.join(providers)}")
    from cnmt.exporters.builtins import ensure_exported
    from cnmt.exporters.quantize import measure_agreement
    from cnmt.runtime import load_translator
    from cnmt.runtime.models import BUILTIN_MODELS, builtin_dir

    ensure_exported(args.model)
    model_dir = builtin_dir(args.model) if args.model in BUILTIN_MODELS else Path(args.model)
    args.out.mkdir(parents=True, exist_ok=True)
    models = {"fp32": model_dir}
    if "CUDAExecutionProvider" in providers:
        models["fp16"] = fp16_copy(model_dir, args.out)
    variants: dict[str, Any] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        variants["cpu fp32"] = load_translator(model_dir, providers=[CPU], threads=2)
        for provider in providers:
            short = provider.removesuffix("ExecutionProvider")
            for precision, folder in models.items():
                if precision == "fp16" and provider != "CUDAExecutionProvider":
                    continue  # TensorRT picks its own precisions from the fp32 graph
                variants[f"{short} {precision}"] = load_translator(
                    folder, providers=[provider, CPU], threads=2
                )
    cpu = variants["cpu fp32"]
    texts = check_texts(args, cpu.manifest.family)
    steps = min(64, cpu.manifest.max_output_tokens)
    report: dict[str, Any] = {"model": str(model_dir), "providers": providers, "parity": {}}
    print(f"gpu-check: {cpu.manifest.name} on {', '.join(providers)}; {len(texts)} sentences")
    print("\nparity with the CPU fp32 tokens")
    print("variant          same token per step  identical outputs  chrF vs CPU")
    for name, translator in variants.items():
        if name == "cpu fp32":
            continue
        measures, _, _ = measure_agreement(cpu, translator, texts, steps)
        report["parity"][name] = measures
        print(
            f"{name:16} {measures['step_agreement']:19.1%}  {measures['identical_outputs']:17.1%}"
            f"  {measures['chrf_vs_fp32']:11.1f}"
        )
    cells = time_variants(variants, args.n_values, args.m_values, args.rounds)
    report["decode_ms"] = {
        f"{n}x{m}": {k: v * 1000 for k, v in t.items()} for (n, m), t in cells.items()
    }
    print("\ndecode (median ms of run_forced; speedup over the CPU fp32 in brackets)")
    for (n, m), times in cells.items():
        base = times["cpu fp32"]
        row = ", ".join(f"{k} {v * 1000:.1f} ({base / v:.2f}x)" for k, v in times.items())
        print(f"  N={n} M={m}: {row}")
    if not args.no_profiles:
        print("\ncloud profiles")
        report["profiles"] = {}
        for provider in providers:
            device = PROFILE_DEVICE[provider]
            for precision, folder in models.items():
                if precision == "fp16" and provider != "CUDAExecutionProvider":
                    continue
                target = args.out / f"{cpu.manifest.name}-{precision}__{device}.json"
                result = profile(folder, device, target, args.profile_budget)
                report["profiles"][f"{device} {precision}"] = result
                print(f"  {device} {precision}: {result}")
    (args.out / "gpu-check.json").write_text(json.dumps(report, indent=1) + "\n")
    print(f"\nreport: {args.out / 'gpu-check.json'}")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sys.exit(main())
