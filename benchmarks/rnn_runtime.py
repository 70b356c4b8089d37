"""Side by side, per RNN family: torch greedy decode vs the ONNX Runtime decode loop, and how
much of the loop is Python overhead around ``session.run``.

Exports cn2en (trained) and the shipped BiLSTM / GRU configs (random weights) into a temporary
folder, then for each model times, interleaved and repeated, best of R:

- ``torch``: the torch model's step-by-step reference decode, ``S`` steps (EOS never stops it:
  the comparison is per step of the same work);
- ``ort loop``: the runtime's forced decode (``Translator.run_forced(N, S)``);
- ``ort run``: ``S`` bare ``decoder.run`` calls on fixed inputs (no loop bookkeeping).

Usage: python benchmarks/rnn_runtime.py [--steps 100] [--n 20] [--repeats 7] [--threads 1]
Needs the export extra (torch) and $CNMT_DATA (or ../shared/data). Timings on a shared CPU are
noisy; compare the ratios printed in one run.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np


def best_of(fn: Any, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def torch_steps(model: Any, source: list[int], bos: int, steps: int, family: str) -> None:
    import torch

    with torch.no_grad():
        src = torch.tensor([source])
        lengths = torch.tensor([len(source)])
        token = torch.tensor([bos])
        if family == "bilstm":
            memory, h, c = model.encoder(src, lengths)
            feed = torch.zeros(1, model.hidden_size)
            step = model.step()
            for _ in range(steps):
                log_probs, h, c, feed = step(token, h, c, feed, memory, lengths)
                token = log_probs.argmax(dim=1)
        else:
            hidden = model.encoder(src, lengths)
            for _ in range(steps):
                log_probs, hidden = model.decoder(token, hidden)
                token = log_probs.argmax(dim=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--n", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()

    import torch

    from cnmt.config import builtin_configs_root
    from cnmt.exporters.base import ExportRequest
    from cnmt.registry import get_components
    from cnmt.runtime import load_translator

    torch.set_num_threads(args.threads)
    root = builtin_configs_root() / "models"
    sources = {
        "cn2en": ExportRequest(out_dir=Path()),
        "bilstm": ExportRequest(out_dir=Path(), config=root / "bilstm-de-en.yaml"),
        "gru": ExportRequest(out_dir=Path(), config=root / "gru-fr-en.yaml"),
    }
    print(
        f"N={args.n}, {args.steps} decoder steps, {args.threads} thread(s), best of {args.repeats}"
    )
    print(
        f"{'model':8} {'torch ms':>9} {'ort loop ms':>12} {'ort run ms':>11} "
        f"{'torch/loop':>11} {'loop/run':>9}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        for family, request in sources.items():
            exporter = get_components().create("exporter", family)
            out = Path(tmp) / family
            request = ExportRequest(out_dir=out, config=request.config)
            exporter.export(request)
            built = exporter.build(request)
            built.model.eval()
            translator = load_translator(out, threads=args.threads)
            source = np.resize(translator._filler, args.n).tolist()
            encoded = translator.encoder.run(
                list(translator.encoder_outputs),
                {"src_ids": np.array([source]), "src_lengths": np.array([args.n])},
            )
            feeds = translator.initial_state(encoded, np.array([args.n]))
            feeds["input_ids"] = np.array([translator.bos])
            outputs = [translator.decoder_outputs[0], *(o for o, _ in translator.state_names())]
            run = translator.decoder.run

            def bare(
                feeds: dict[str, Any] = feeds, outputs: list[str] = outputs, run: Any = run
            ) -> None:
                for _ in range(args.steps):
                    run(outputs, feeds)

            cases = {
                "torch": lambda m=built.model, s=source, t=translator, f=family: torch_steps(
                    m, s, t.bos, args.steps, f
                ),
                "loop": lambda t=translator, s=args.steps: t.run_forced(args.n, s),
                "run": bare,
            }
            for fn in cases.values():
                fn()  # warm up
            results = {name: [] for name in cases}
            for _ in range(args.repeats):  # interleaved, so that load changes hit all three
                for name, fn in cases.items():
                    results[name].append(best_of(fn, 1))
            t_torch, t_loop, t_run = (min(results[k]) * 1000 for k in ("torch", "loop", "run"))
            print(
                f"{family:8} {t_torch:9.1f} {t_loop:12.1f} {t_run:11.1f} "
                f"{t_torch / t_loop:11.2f} {t_loop / t_run:9.2f}"
            )


if __name__ == "__main__":
    main()
