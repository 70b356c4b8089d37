"""Train the BiLSTM DE-EN with OpenNMT-py, then export it through the OpenNMT-py loader.

``scripts/train-bilstm-de-en --out DIR`` (``python -m cnmt.training.opennmt``) runs, seeded:

1. **Data.** Tatoeba DE-EN split as the GRU's corpus is (:func:`cnmt.training.data.split_pairs`:
   a seeded shuffle, a test split whose sources never occur in training). Both sides go through
   the runtime's own tokenizer (lowercased, Moses-like, :class:`~cnmt.runtime.tokenizers.
   WordTokenizer`) and the IWSLT'14 joint BPE codes: exactly what the exported model's runtime
   does to its input, so training and serving see the same tokens.
2. **Training** with the real toolkit: ``onmt_build_vocab`` and ``onmt_train`` of OpenNMT-py
   3.5.1 (``-encoder_type brnn``, 2 layers, hidden 500, input feeding, global "general"
   attention), run as subprocesses of the Python that has OpenNMT-py (``--onmt-python``). Its
   checkpoints are genuine OpenNMT-py ones; the last one is kept, without the optimizer state.
3. **Export** through :func:`cnmt.exporters.opennmt.load_opennmt_checkpoint` with the
   ``models/bilstm-de-en`` config (tokenizer settings, BPE codes); the checkpoint carries this
   recipe's record under ``cnmt_training``, which the manifest keeps as ``extra.training``.
4. **Evaluation** of the export (ONNX Runtime, greedy) on the test split and newstest2013: the
   model writes lowercased tokens, so BLEU/chrF are given twice, on the reference tokenized by
   the model's own tokenizer (``tokenized``: sacrebleu with ``tokenize="none"``) and on the raw
   reference, case-insensitively (``raw_lc``).

OpenNMT-py 3.5.1 pins ``torch<2.3``; ``scripts/install-opennmt`` installs it with ``--no-deps``
next to the project's torch (see docs/models.md for why and what else it needs).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from cnmt.config import data_dir
from cnmt.errors import CnmtError, ConfigError
from cnmt.runtime.tokenizers import Bpe, WordTokenizer
from cnmt.training.data import log, read_pairs, split_pairs, translate_all, write_split

# OpenNMT-py 3.5.1 imports every transform module when it starts, and its terminology transform
# imports spacy at module level; no transform this recipe uses needs it, so when spacy is not
# installed an empty module stands in for it (a missing spacy would otherwise stop the import).
RUNNER = """import importlib.util, sys, types
if importlib.util.find_spec("spacy") is None:
    sys.modules["spacy"] = types.ModuleType("spacy")
from onmt.bin import build_vocab, train
{"build_vocab": build_vocab.main, "train": train.main}[sys.argv.pop(1)]()
"""


@dataclass
class BiLstmTrainingConfig:
    """Everything that decides the trained model (recorded in its manifest)."""

    name: str = "bilstm-de-en"
    source_language: str = "de"
    target_language: str = "en"
    source_corpus: str = ""
    target_corpus: str = ""
    bpe_codes: str = ""
    model_config: str = "models/bilstm-de-en"
    seed: int = 19
    test_pairs: int = 2000
    valid_pairs: int = 500
    max_pairs: int | None = None
    max_length: int = 50
    source_vocab_size: int = 8000
    target_vocab_size: int = 6000
    hidden_size: int = 500
    layers: int = 2
    dropout: float = 0.3
    batch_tokens: int = 4096
    learning_rate: float = 1e-3
    train_steps: int = 6000
    save_every: int = 500
    max_minutes: float | None = None
    gpu: bool = False
    half: bool = False  # keep (and export) the checkpoint in fp16, as the repository stores it
    eval_sets: list[dict[str, str]] = field(default_factory=list)
    eval_sentences: int | None = None


def tokenize_file(source: Path, target: Path, language: str, bpe: Bpe) -> None:
    words = WordTokenizer(language, lowercase=True)
    with source.open(encoding="utf-8") as inp, target.open("w", encoding="utf-8") as out:
        for line in inp:
            out.write(" ".join(bpe.apply(words.split(line))) + "\n")


def onmt_config(config: BiLstmTrainingConfig, work: Path) -> dict[str, Any]:
    """The OpenNMT-py options of the recipe (written as YAML; JSON is valid YAML)."""
    options: dict[str, Any] = {
        "save_data": str(work / "onmt"),
        "src_vocab": str(work / "vocab.src"),
        "tgt_vocab": str(work / "vocab.tgt"),
        "src_vocab_size": config.source_vocab_size,
        "tgt_vocab_size": config.target_vocab_size,
        "overwrite": True,
        "data": {
            "corpus_1": {
                "path_src": str(work / "train.tok.src"),
                "path_tgt": str(work / "train.tok.tgt"),
            },
            "valid": {
                "path_src": str(work / "valid.tok.src"),
                "path_tgt": str(work / "valid.tok.tgt"),
            },
        },
        "encoder_type": "brnn",
        "decoder_type": "rnn",
        "rnn_type": "LSTM",
        "layers": config.layers,
        "hidden_size": config.hidden_size,
        "word_vec_size": config.hidden_size,
        "global_attention": "general",
        "input_feed": 1,
        "bridge": False,
        "dropout": [config.dropout],
        "batch_type": "tokens",
        "batch_size": config.batch_tokens,
        "valid_batch_size": 2048,
        "train_steps": config.train_steps,
        "valid_steps": config.save_every,
        "save_checkpoint_steps": config.save_every,
        "keep_checkpoint": 2,
        "report_every": 100,
        "optim": "adam",
        "learning_rate": config.learning_rate,
        "max_grad_norm": 5,
        "param_init": 0.1,
        "num_workers": 0,
        "seed": config.seed,
        "save_model": str(work / "model"),
    }
    if config.gpu:
        options.update(world_size=1, gpu_ranks=[0])
    return options


def run_onmt(python: str, runner: Path, verb: str, config_file: Path, timeout: float | None):
    """Run one OpenNMT-py entry point; on timeout stop it (its saved checkpoints stay)."""
    args = [python, str(runner), verb, "-config", str(config_file)]
    if verb == "build_vocab":
        args += ["-n_sample", "-1"]
    process = subprocess.Popen(args)
    try:
        code = process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.terminate()
        process.wait(timeout=60)
        log(f"onmt {verb}: stopped after {timeout / 60:.1f} min, as --max-minutes asks")
        return
    if code != 0:
        raise ConfigError(f"OpenNMT-py {verb} failed (exit code {code}); see its output above")


def latest_checkpoint(work: Path) -> Path:
    found = sorted(work.glob("model_step_*.pt"), key=lambda p: int(p.stem.rsplit("_", 1)[1]))
    if not found:
        raise ConfigError(f"OpenNMT-py saved no checkpoint in {work}; train for more steps")
    return found[-1]


def keep_checkpoint(source: Path, target: Path, record: dict[str, Any], half: bool) -> None:
    """The OpenNMT-py checkpoint without its optimizer state, with the recipe's record."""
    import torch

    checkpoint = torch.load(source, map_location="cpu", weights_only=False)
    checkpoint.pop("optim", None)
    if half:
        for part in [p for p in ("model", "generator") if isinstance(checkpoint.get(p), dict)]:
            checkpoint[part] = {
                k: v.half() if v.is_floating_point() else v for k, v in checkpoint[part].items()
            }
    checkpoint["cnmt_training"] = record
    torch.save(checkpoint, target)


def scores(hypotheses: Sequence[str], references: Sequence[str], language: str) -> dict:
    """BLEU/chrF on the reference tokenized as the model tokenizes, and on the raw reference
    (case-insensitive: the model writes lowercase)."""
    import sacrebleu

    hyps = list(hypotheses)
    words = WordTokenizer(language, lowercase=True)
    tokenized = [words.detokenize(words.split(r)) for r in references]
    lowered = [r.lower() for r in references]
    bleu_tok = sacrebleu.corpus_bleu(hyps, [tokenized], tokenize="none").score
    bleu_raw = sacrebleu.corpus_bleu(hyps, [list(references)], lowercase=True).score
    return {
        "tokenized": {
            "bleu": round(bleu_tok, 2),
            "chrf": round(sacrebleu.corpus_chrf(hyps, [tokenized]).score, 2),
        },
        "raw_lc": {
            "bleu": round(bleu_raw, 2),
            "chrf": round(sacrebleu.corpus_chrf(hyps, [lowered]).score, 2),
        },
        "sentences": len(references),
    }


def train(config: BiLstmTrainingConfig, out_dir: Path, onmt_python: str) -> Path:
    started = time.perf_counter()
    out_dir.mkdir(parents=True, exist_ok=True)
    work = out_dir / "onmt"
    work.mkdir(exist_ok=True)
    pairs = read_pairs(Path(config.source_corpus), Path(config.target_corpus), config.max_pairs)
    splits = split_pairs(pairs, config.seed, config.test_pairs, config.valid_pairs)
    data = out_dir / "data"
    files = {
        n: write_split(data, n, getattr(splits, n), config) for n in ("train", "valid", "test")
    }
    record_split = {**splits.record, "files": files}
    (data / "split.json").write_text(json.dumps(record_split, indent=2) + "\n", encoding="utf-8")
    bpe = Bpe.load(config.bpe_codes)
    for name in ("train", "valid"):
        for side, language in (("src", config.source_language), ("tgt", config.target_language)):
            tokenize_file(data / f"{name}.{language}", work / f"{name}.tok.{side}", language, bpe)
    # Long pairs cost much and teach little at this size: keep those within max_length tokens.
    src = (work / "train.tok.src").read_text(encoding="utf-8").splitlines()
    tgt = (work / "train.tok.tgt").read_text(encoding="utf-8").splitlines()
    kept = [
        (s, t)
        for s, t in zip(src, tgt, strict=True)
        if 0 < len(s.split()) <= config.max_length and 0 < len(t.split()) <= config.max_length
    ]
    (work / "train.tok.src").write_text("".join(s + "\n" for s, _ in kept), encoding="utf-8")
    (work / "train.tok.tgt").write_text("".join(t + "\n" for _, t in kept), encoding="utf-8")
    log(f"data: {len(kept)} training pairs (of {len(src)}), {len(splits.test)} test pairs")
    options = onmt_config(config, work)
    config_file = work / "onmt.yaml"
    config_file.write_text(json.dumps(options, indent=2) + "\n", encoding="utf-8")
    runner = work / "onmt_run.py"
    runner.write_text(RUNNER, encoding="utf-8")
    run_onmt(onmt_python, runner, "build_vocab", config_file, None)
    train_start = time.perf_counter()
    budget = None if config.max_minutes is None else config.max_minutes * 60
    run_onmt(onmt_python, runner, "train", config_file, budget)
    last = latest_checkpoint(work)
    record = {
        "toolkit": "OpenNMT-py 3.5.1 (onmt_build_vocab, onmt_train)",
        "config": asdict(config),
        "onmt_options": options,
        "data": {
            "label": "Tatoeba DE-EN (${data}/corpora/tatoeba-de-en/all.{de,en})",
            **{k: v for k, v in splits.record.items() if k != "files"},
            "train_pairs_within_max_length": len(kept),
        },
        "seed": config.seed,
        "checkpoint": last.name,
        "training_minutes": round((time.perf_counter() - train_start) / 60, 2),
        "wall_minutes": round((time.perf_counter() - started) / 60, 2),
    }
    kept_file = out_dir / "checkpoint.pt"
    keep_checkpoint(last, kept_file, record, half=config.half)
    model_dir = out_dir / "model"
    export(kept_file, model_dir)
    metrics = evaluate(model_dir, config, splits.test)
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
    log(json.dumps(metrics["sets"]))
    return model_dir


def export(checkpoint: Path, model_dir: Path) -> None:
    from cnmt.config import resolve_config_path
    from cnmt.exporters.base import ExportRequest
    from cnmt.exporters.rnn import BiLstmExporter

    BiLstmExporter().export(
        ExportRequest(
            out_dir=model_dir,
            checkpoint=checkpoint,
            config=resolve_config_path("models/bilstm-de-en"),
            overwrite=True,
        )
    )


def evaluate(
    model_dir: Path, config: BiLstmTrainingConfig, test: Sequence[tuple[str, str]]
) -> dict[str, Any]:
    from cnmt.runtime.models import load_translator

    translator = load_translator(model_dir, threads=4)
    sets = {"test": ([s for s, _ in test], [t for _, t in test])}
    for entry in config.eval_sets:
        sets[entry["name"]] = (
            Path(entry["source"]).read_text(encoding="utf-8").splitlines(),
            Path(entry["reference"]).read_text(encoding="utf-8").splitlines(),
        )
    results = {}
    for name, (src, ref) in sets.items():
        if config.eval_sentences is not None:
            src, ref = src[: config.eval_sentences], ref[: config.eval_sentences]
        hyps = translate_all(translator.translate_batch, src)
        results[name] = scores(hyps, ref, config.target_language)
        (model_dir.parent / f"hyp.{name}.{config.target_language}").write_text(
            "".join(h + "\n" for h in hyps), encoding="utf-8"
        )
    return {"model": str(model_dir), "decoding": "greedy, ONNX Runtime", "sets": results}


def main(argv: Sequence[str] | None = None) -> int:
    defaults = BiLstmTrainingConfig()
    parser = argparse.ArgumentParser(
        prog="scripts/train-bilstm-de-en",
        description="Train the BiLSTM DE-EN with OpenNMT-py on Tatoeba DE-EN, export, score.",
    )
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--data", type=Path)
    parser.add_argument("--onmt-python", default=sys.executable)
    parser.add_argument("--gpu", action="store_true")
    parser.add_argument("--half", action="store_true", help="keep the checkpoint in fp16")
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--train-steps", type=int, default=defaults.train_steps)
    parser.add_argument("--save-every", type=int, default=defaults.save_every)
    parser.add_argument("--max-minutes", type=float)
    parser.add_argument("--max-pairs", type=int)
    parser.add_argument("--test-pairs", type=int, default=defaults.test_pairs)
    parser.add_argument("--valid-pairs", type=int, default=defaults.valid_pairs)
    parser.add_argument("--hidden", type=int, default=defaults.hidden_size)
    parser.add_argument("--layers", type=int, default=defaults.layers)
    parser.add_argument("--batch-tokens", type=int, default=defaults.batch_tokens)
    parser.add_argument("--eval-sentences", type=int)
    parser.add_argument("--no-news", action="store_true")
    args = parser.parse_args(argv)
    try:
        root = args.data or data_dir()
        if root is None:
            raise ConfigError("no data directory: give --data DIR or set CNMT_DATA")
        corpora = Path(root) / "corpora"
        news = corpora / "newstest2013"
        config = BiLstmTrainingConfig(
            source_corpus=str(corpora / "tatoeba-de-en" / "all.de"),
            target_corpus=str(corpora / "tatoeba-de-en" / "all.en"),
            bpe_codes=str(Path(root) / "tokenizers" / "iwslt14-de-en-bpe10k" / "code"),
            seed=args.seed,
            train_steps=args.train_steps,
            save_every=args.save_every,
            max_minutes=args.max_minutes,
            max_pairs=args.max_pairs,
            test_pairs=args.test_pairs,
            valid_pairs=args.valid_pairs,
            hidden_size=args.hidden,
            layers=args.layers,
            batch_tokens=args.batch_tokens,
            gpu=args.gpu,
            half=args.half,
            eval_sentences=args.eval_sentences,
            eval_sets=[]
            if args.no_news
            else [
                {
                    "name": "newstest2013",
                    "source": str(news / "newstest2013.de"),
                    "reference": str(news / "newstest2013.en"),
                }
            ],
        )
        train(config, args.out, args.onmt_python)
    except CnmtError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
