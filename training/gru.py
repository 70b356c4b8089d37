"""Train the GRU family (the paper's FR-EN model) on a parallel corpus, then export it.

``scripts/train-gru-fr-en --out DIR`` (``python -m cnmt.training.gru``) runs the whole recipe,
seeded; the defaults of :class:`GruTrainingConfig` are the recipe of the built-in ``gru-fr-en``:

1. **Data** (:mod:`cnmt.training.data`). Read the two line-aligned files, drop pairs with an
   empty side, keep the first of exact duplicates. A seeded shuffle (``random.Random(seed)``)
   puts the first ``test_pairs`` pairs in the test split and the next ``valid_pairs`` in the
   validation split; every other pair whose source sentence also occurs in the test split is
   dropped, so no test source is ever trained on. The splits are written to ``OUT/data`` with
   a ``split.json`` saying how.
2. **Subwords.** One SentencePiece unigram model per side, trained on the training split only;
   their ids are the vocabulary ids (``<unk>`` 0, ``<pad>`` 1, ``<s>`` 2, ``</s>`` 3, the GRU
   family's specials). Training pairs longer than ``max_length`` pieces on either side are left
   out (the test split is not filtered).
3. **Model.** :class:`~cnmt.exporters.rnn_models.GruSeq2Seq`, the module the GRU exporter traces:
   the encoder's final hidden state starts the decoder, no attention (the family has none).
4. **Training.** Teacher forcing over length-bucketed batches, Adam, label smoothing, dropout on
   the embeddings and the decoder outputs (training only: the exported graphs have none),
   gradient clipping, the learning rate halved each epoch from ``decay_from``. Progress every
   ``log_every`` steps; the greedy BLEU on the validation split after each epoch, and the
   checkpoint (``OUT/checkpoint.pt``) saved after each epoch that improves it.
5. **Export** through the GRU exporter (``cnmt export --family gru --checkpoint``), so the
   manifest records the training config, data, seed and wall time, and the exporter's own
   validation checks the ONNX graphs against torch.
6. **Evaluation** of the exported model with the runtime translator (ONNX Runtime, greedy): BLEU
   and chrF (sacrebleu, on detokenized text) on the test split and on each ``eval_sets`` entry,
   written to ``OUT/metrics.json``.

torch and sentencepiece are imported at module level: only ``cnmt train`` imports this module.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import sentencepiece as spm
import torch
import torch.nn.functional as F

from cnmt.config import data_dir
from cnmt.errors import CnmtError, ConfigError
from cnmt.exporters.rnn_models import GruSeq2Seq
from cnmt.training.data import log, read_pairs, split_pairs, translate_all, write_split

CHECKPOINT_FORMAT = "cnmt-gru-checkpoint-1"
UNK, PAD, BOS, EOS = 0, 1, 2, 3


@dataclass
class GruTrainingConfig:
    """Everything that decides the trained model (recorded in its manifest)."""

    name: str = "gru-fr-en"
    source_language: str = "fr"
    target_language: str = "en"
    source_corpus: str = ""
    target_corpus: str = ""
    seed: int = 19
    test_pairs: int = 2000
    valid_pairs: int = 500
    max_pairs: int | None = None  # use only the first pairs of the corpus (smoke tests)
    source_vocab_size: int = 8000
    target_vocab_size: int = 6000
    max_length: int = 40
    hidden_size: int = 256
    embedding_size: int = 256
    layers: int = 1
    dropout: float = 0.2
    label_smoothing: float = 0.1
    batch_tokens: int = 2000
    learning_rate: float = 1e-3
    decay_from: int = 4
    clip_norm: float = 1.0
    epochs: int = 6
    max_steps: int | None = None  # stop after this many updates (smoke tests)
    max_minutes: float | None = None  # stop at the end of the step that passes this wall time
    threads: int = 2
    device: str = "cpu"  # torch device to train on ("cuda" when one is there)
    log_every: int = 100
    max_source_tokens: int = 256
    max_output_tokens: int = 250
    eval_sets: list[dict[str, str]] = field(default_factory=list)
    eval_sentences: int | None = None  # evaluate only the first sentences of each set


# --------------------------------------------------------------------------------------------
# Subwords


def train_sentencepiece(text_file: Path, prefix: Path, vocab_size: int, seed: int) -> bytes:
    """A unigram SentencePiece model of ``text_file`` (the serialized model's bytes)."""
    spm.set_random_generator_seed(seed)
    spm.SentencePieceTrainer.train(
        input=str(text_file),
        model_prefix=str(prefix),
        vocab_size=vocab_size,
        model_type="unigram",
        character_coverage=1.0,
        unk_id=UNK,
        pad_id=PAD,
        bos_id=BOS,
        eos_id=EOS,
        num_threads=1,
        minloglevel=2,
    )
    return Path(f"{prefix}.model").read_bytes()


def processor(model: bytes) -> spm.SentencePieceProcessor:
    return spm.SentencePieceProcessor(model_proto=model)


def pieces(sp: spm.SentencePieceProcessor) -> list[str]:
    return [sp.id_to_piece(i) for i in range(sp.get_piece_size())]


# --------------------------------------------------------------------------------------------
# Batches and the training step


def batches(
    examples: Sequence[tuple[list[int], list[int]]], batch_tokens: int, rng: random.Random
) -> list[list[int]]:
    """Index batches of similar lengths, about ``batch_tokens`` target tokens each, shuffled."""
    order = sorted(
        range(len(examples)), key=lambda i: (len(examples[i][0]), len(examples[i][1]), rng.random())
    )
    out: list[list[int]] = []
    current: list[int] = []
    longest = 0
    for i in order:
        longest = max(longest, len(examples[i][1]) + 1)
        if current and longest * (len(current) + 1) > batch_tokens:
            out.append(current)
            current, longest = [], len(examples[i][1]) + 1
        current.append(i)
    if current:
        out.append(current)
    rng.shuffle(out)
    return out


def tensors(
    examples: Sequence[tuple[list[int], list[int]]], batch: Sequence[int], device: str = "cpu"
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Padded source, source lengths (on the CPU, as packing wants), decoder input and gold."""
    rows = [examples[i] for i in batch]
    src_len = max(len(s) for s, _ in rows)
    tgt_len = max(len(t) for _, t in rows) + 1
    src = torch.full((len(rows), src_len), PAD, dtype=torch.long)
    tgt_in = torch.full((len(rows), tgt_len), PAD, dtype=torch.long)
    tgt_out = torch.full((len(rows), tgt_len), PAD, dtype=torch.long)
    for b, (s, t) in enumerate(rows):
        src[b, : len(s)] = torch.tensor(s)
        tgt_in[b, : len(t) + 1] = torch.tensor([BOS, *t])
        tgt_out[b, : len(t) + 1] = torch.tensor([*t, EOS])
    lengths = torch.tensor([len(s) for s, _ in rows], dtype=torch.long)
    return src.to(device), lengths, tgt_in.to(device), tgt_out.to(device)


def teacher_forced_loss(
    model: GruSeq2Seq,
    src: torch.Tensor,
    lengths: torch.Tensor,
    tgt_in: torch.Tensor,
    tgt_out: torch.Tensor,
    dropout: float,
    label_smoothing: float,
) -> tuple[torch.Tensor, int]:
    """Mean token loss of one batch. The decoder's GRU runs over the whole target at once: it
    carries only its hidden state, so this equals the exported one-step graph fed step by step."""
    encoder, decoder = model.encoder, model.decoder
    embedded = F.dropout(encoder.embedding(src.t()), dropout, model.training)
    start = embedded.new_zeros(encoder.gru.num_layers, src.size(0), encoder.gru.hidden_size)
    packed = torch.nn.utils.rnn.pack_padded_sequence(embedded, lengths, enforce_sorted=False)
    _, hidden = encoder.gru(packed, start)
    inputs = F.dropout(F.relu(decoder.embedding(tgt_in.t())), dropout, model.training)
    outputs, _ = decoder.gru(inputs, hidden)
    logits = decoder.out(F.dropout(outputs, dropout, model.training))
    gold = tgt_out.t().reshape(-1)
    loss = F.cross_entropy(
        logits.reshape(-1, logits.size(-1)),
        gold,
        ignore_index=PAD,
        label_smoothing=label_smoothing,
    )
    return loss, int((gold != PAD).sum())


@torch.no_grad()
def greedy_batch(
    model: GruSeq2Seq, sources: Sequence[list[int]], max_steps: int, device: str = "cpu"
) -> list[list[int]]:
    """Batched greedy decode in torch (the validation BLEU during training)."""
    model.eval()
    lengths = torch.tensor([max(1, len(s)) for s in sources], dtype=torch.long)
    src = torch.full((len(sources), int(lengths.max())), PAD, dtype=torch.long)
    for b, s in enumerate(sources):
        src[b, : len(s)] = torch.tensor(s, dtype=torch.long)
    hidden = model.encoder(src.to(device), lengths)
    token = torch.full((len(sources),), BOS, dtype=torch.long, device=device)
    steps = []
    done = torch.zeros(len(sources), dtype=torch.bool, device=device)
    for _ in range(max_steps):
        log_probs, hidden = model.decoder(token, hidden)
        token = log_probs.argmax(dim=1)
        steps.append(token.masked_fill(done, EOS))
        done |= token == EOS
        if bool(done.all()):
            break
    model.train()
    out: list[list[int]] = []
    for row in torch.stack(steps, dim=1).tolist() if steps else [[] for _ in sources]:
        out.append(row[: row.index(EOS)] if EOS in row else row)
    return out


def corpus_scores(hypotheses: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    import sacrebleu

    bleu = sacrebleu.corpus_bleu(list(hypotheses), [list(references)])
    chrf = sacrebleu.corpus_chrf(list(hypotheses), [list(references)])
    return {"bleu": round(bleu.score, 2), "chrf": round(chrf.score, 2)}


# --------------------------------------------------------------------------------------------
# The recipe


def train(config: GruTrainingConfig, out_dir: Path, data_label: str = "") -> Path:
    """Run the whole recipe into ``out_dir``; returns the exported model directory."""
    started = time.perf_counter()
    torch.set_num_threads(max(1, config.threads))
    torch.manual_seed(config.seed)
    rng = random.Random(config.seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    data_dir = out_dir / "data"

    pairs = read_pairs(Path(config.source_corpus), Path(config.target_corpus), config.max_pairs)
    splits = split_pairs(pairs, config.seed, config.test_pairs, config.valid_pairs)
    split_files = {
        name: write_split(data_dir, name, getattr(splits, name), config)
        for name in ("train", "valid", "test")
    }
    record = {**splits.record, "files": split_files}
    (data_dir / "split.json").write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    log(f"data: {record['train']} train, {record['valid']} valid, {record['test']} test pairs")

    src_model = train_sentencepiece(
        data_dir / f"train.{config.source_language}",
        data_dir / f"spm.{config.source_language}",
        config.source_vocab_size,
        config.seed,
    )
    tgt_model = train_sentencepiece(
        data_dir / f"train.{config.target_language}",
        data_dir / f"spm.{config.target_language}",
        config.target_vocab_size,
        config.seed,
    )
    src_sp, tgt_sp = processor(src_model), processor(tgt_model)
    encoded = list(
        zip(
            src_sp.encode([s for s, _ in splits.train]),
            tgt_sp.encode([t for _, t in splits.train]),
            strict=True,
        )
    )
    examples = [
        (s, t)
        for s, t in encoded
        if 0 < len(s) <= config.max_length and len(t) <= config.max_length
    ]
    log(
        f"subwords: {src_sp.get_piece_size()} source / {tgt_sp.get_piece_size()} target pieces; "
        f"{len(examples)} training pairs of at most {config.max_length} pieces "
        f"({len(encoded) - len(examples)} longer left out)"
    )
    valid_src = src_sp.encode([s for s, _ in splits.valid])
    valid_ref = [t for _, t in splits.valid]

    model = GruSeq2Seq(
        src_sp.get_piece_size(),
        tgt_sp.get_piece_size(),
        config.embedding_size,
        config.hidden_size,
        config.layers,
    )
    model.to(config.device)
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=config.learning_rate)
    history: list[dict[str, Any]] = []
    best: float | None = None  # the validation BLEU of the checkpoint on disk
    step = 0
    stop = False
    for epoch in range(1, config.epochs + 1):
        if epoch >= config.decay_from:
            for group in optimizer.param_groups:
                group["lr"] = config.learning_rate * 0.5 ** (epoch - config.decay_from + 1)
        epoch_batches = batches(examples, config.batch_tokens, rng)
        loss_sum, token_sum, window_start = 0.0, 0, time.perf_counter()
        for number, batch in enumerate(epoch_batches, start=1):
            src, lengths, tgt_in, tgt_out = tensors(examples, batch, config.device)
            loss, tokens = teacher_forced_loss(
                model, src, lengths, tgt_in, tgt_out, config.dropout, config.label_smoothing
            )
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.clip_norm)
            optimizer.step()
            step += 1
            loss_sum += loss.item() * tokens
            token_sum += tokens
            if step % config.log_every == 0 or number == len(epoch_batches):
                elapsed = time.perf_counter() - started
                rate = token_sum / max(time.perf_counter() - window_start, 1e-9)
                log(
                    f"epoch {epoch}/{config.epochs} batch {number}/{len(epoch_batches)} "
                    f"step {step}: loss {loss_sum / max(token_sum, 1):.3f}, "
                    f"{rate:.0f} target tokens/s, {elapsed / 60:.1f} min"
                )
            over_time = (
                config.max_minutes is not None
                and time.perf_counter() - started > config.max_minutes * 60
            )
            if (config.max_steps is not None and step >= config.max_steps) or over_time:
                stop = True
                break
        hypotheses = greedy_batch(model, valid_src, config.max_length * 2, config.device)
        scores = corpus_scores(tgt_sp.decode(hypotheses), valid_ref)
        entry = {
            "epoch": epoch,
            "steps": step,
            "train_loss": round(loss_sum / max(token_sum, 1), 4),
            "valid": scores,
            "minutes": round((time.perf_counter() - started) / 60, 2),
            "complete": not stop,
        }
        improved = best is None or scores["bleu"] > best
        entry["kept"] = improved
        history.append(entry)
        log(
            f"epoch {epoch} done: valid BLEU {scores['bleu']}, chrF {scores['chrf']}, "
            f"{entry['minutes']} min{' (best so far: checkpoint kept)' if improved else ''}"
        )
        if not improved:
            if stop:
                break
            continue
        best = scores["bleu"]
        save_checkpoint(
            out_dir / "checkpoint.pt",
            model,
            config,
            src_model,
            tgt_model,
            training_record(config, record, history, started, data_label),
        )
        if stop:
            break

    checkpoint = out_dir / "checkpoint.pt"
    # The kept checkpoint's record gets the whole run: every epoch and the total training time.
    payload = torch.load(checkpoint, map_location="cpu", weights_only=True)
    payload["training"] = training_record(config, record, history, started, data_label)
    payload["training"]["selected_epoch"] = max(
        (e for e in history if e["kept"]), key=lambda e: e["epoch"]
    )["epoch"]
    torch.save(payload, checkpoint)
    model_dir = out_dir / "model"
    export_checkpoint(checkpoint, model_dir, config.name)
    log(f"exported {model_dir}")
    metrics = evaluate_export(model_dir, config, splits.test)
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
    for name, scores in metrics["sets"].items():
        log(f"{name}: BLEU {scores['bleu']}, chrF {scores['chrf']} ({scores['sentences']} lines)")
    log(f"total {(time.perf_counter() - started) / 60:.1f} min")
    return model_dir


def training_record(
    config: GruTrainingConfig,
    split: dict[str, Any],
    history: list[dict[str, Any]],
    started: float,
    data_label: str,
) -> dict[str, Any]:
    return {
        "config": asdict(config),
        "data": {"label": data_label, **{k: v for k, v in split.items() if k != "files"}},
        "seed": config.seed,
        "wall_minutes": round((time.perf_counter() - started) / 60, 2),
        "epochs": history,
        "threads": config.threads,
        "machine": machine(config.device),
    }


def machine(device: str) -> str:
    where = (
        torch.cuda.get_device_name(torch.device(device))
        if device.startswith("cuda")
        else f"{platform.machine()} CPU"
    )
    return f"{where}, torch {torch.__version__}"


def save_checkpoint(
    path: Path,
    model: GruSeq2Seq,
    config: GruTrainingConfig,
    source_spm: bytes,
    target_spm: bytes,
    training: dict[str, Any],
    half: bool = False,
) -> None:
    """The trained weights with everything the exporter needs (written atomically)."""
    state = {
        k: (v.detach().cpu().half() if half and v.is_floating_point() else v.detach().cpu().clone())
        for k, v in model.state_dict().items()
    }
    payload = {
        "format": CHECKPOINT_FORMAT,
        "state_dict": state,
        "source_spm": source_spm,
        "target_spm": target_spm,
        "hyper": {
            "hidden_size": config.hidden_size,
            "embedding_size": config.embedding_size,
            "layers": config.layers,
            "source_language": config.source_language,
            "target_language": config.target_language,
            "max_source_tokens": config.max_source_tokens,
            "max_output_tokens": config.max_output_tokens,
            "name": config.name,
        },
        "training": training,
    }
    partial = path.with_suffix(".partial")
    torch.save(payload, partial)
    partial.replace(path)


def export_checkpoint(checkpoint: Path, out_dir: Path, name: str) -> None:
    from cnmt.exporters.base import ExportRequest
    from cnmt.exporters.rnn import GruExporter

    GruExporter().export(
        ExportRequest(out_dir=out_dir, checkpoint=str(checkpoint), name=name, overwrite=True)
    )


def evaluate_export(
    model_dir: Path, config: GruTrainingConfig, test: Sequence[tuple[str, str]]
) -> dict[str, Any]:
    """BLEU/chrF of the exported model (ONNX Runtime) on the test split and the eval sets."""
    from cnmt.runtime.models import load_translator

    translator = load_translator(model_dir, threads=config.threads)
    sets: dict[str, tuple[list[str], list[str]]] = {
        "test": ([s for s, _ in test], [t for _, t in test])
    }
    for entry in config.eval_sets:
        src = Path(entry["source"]).read_text(encoding="utf-8").splitlines()
        ref = Path(entry["reference"]).read_text(encoding="utf-8").splitlines()
        sets[entry["name"]] = (src, ref)
    results: dict[str, Any] = {}
    for name, (src, ref) in sets.items():
        if config.eval_sentences is not None:
            src, ref = src[: config.eval_sentences], ref[: config.eval_sentences]
        hyps = translate_all(translator.translate_batch, src)
        results[name] = {**corpus_scores(hyps, ref), "sentences": len(src)}
        (model_dir.parent / f"hyp.{name}.{config.target_language}").write_text(
            "".join(h + "\n" for h in hyps), encoding="utf-8"
        )
    return {"model": str(model_dir), "decoding": "greedy, ONNX Runtime", "sets": results}


# --------------------------------------------------------------------------------------------
# The command


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    defaults = GruTrainingConfig()
    parser = argparse.ArgumentParser(
        prog="scripts/train-gru-fr-en",
        description=(
            "Train the GRU FR-EN (1 layer, hidden 256, SentencePiece 8000/6000) on Tatoeba FR-EN "
            "with a seeded held-out test split, export it with the GRU exporter and score the "
            "export (BLEU, chrF) on the test split and newstest2013. Writes OUT/checkpoint.pt "
            "(each epoch), OUT/model (the export), OUT/metrics.json and OUT/data (the splits)."
        ),
    )
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument(
        "--data", type=Path, help="data directory (default: $CNMT_DATA, else ../shared/data)"
    )
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--epochs", type=int, default=defaults.epochs)
    parser.add_argument(
        "--decay-from", type=int, default=defaults.decay_from, help="first epoch at half rate"
    )
    parser.add_argument("--max-minutes", type=float, help="stop training after this wall time")
    parser.add_argument("--max-steps", type=int, help="stop after this many updates (smoke test)")
    parser.add_argument("--max-pairs", type=int, help="read only the first pairs of the corpus")
    parser.add_argument("--test-pairs", type=int, default=defaults.test_pairs)
    parser.add_argument("--valid-pairs", type=int, default=defaults.valid_pairs)
    parser.add_argument("--source-vocab", type=int, default=defaults.source_vocab_size)
    parser.add_argument("--target-vocab", type=int, default=defaults.target_vocab_size)
    parser.add_argument("--hidden", type=int, default=defaults.hidden_size)
    parser.add_argument("--batch-tokens", type=int, default=defaults.batch_tokens)
    parser.add_argument("--threads", type=int, default=defaults.threads)
    parser.add_argument("--device", default=defaults.device, help="torch device: cpu, cuda")
    parser.add_argument("--learning-rate", type=float, default=defaults.learning_rate)
    parser.add_argument("--log-every", type=int, default=defaults.log_every)
    parser.add_argument(
        "--eval-sentences", type=int, help="score only the first sentences of each set"
    )
    parser.add_argument(
        "--no-news", action="store_true", help="do not score newstest2013 (smoke tests)"
    )
    return parser.parse_args(argv)


def config_from_args(args: argparse.Namespace) -> tuple[GruTrainingConfig, str]:
    root = args.data or data_dir()
    if root is None:
        raise ConfigError(
            "no data directory: give --data DIR or set CNMT_DATA to the folder holding "
            "corpora/tatoeba-fr-en and corpora/newstest2013"
        )
    corpora = Path(root) / "corpora"
    news = corpora / "newstest2013"
    eval_sets = (
        []
        if args.no_news
        else [
            {
                "name": "newstest2013",
                "source": str(news / "newstest2013.fr"),
                "reference": str(news / "newstest2013.en"),
            }
        ]
    )
    config = GruTrainingConfig(
        source_corpus=str(corpora / "tatoeba-fr-en" / "all.fr"),
        target_corpus=str(corpora / "tatoeba-fr-en" / "all.en"),
        seed=args.seed,
        epochs=args.epochs,
        decay_from=args.decay_from,
        max_minutes=args.max_minutes,
        max_steps=args.max_steps,
        max_pairs=args.max_pairs,
        test_pairs=args.test_pairs,
        valid_pairs=args.valid_pairs,
        source_vocab_size=args.source_vocab,
        target_vocab_size=args.target_vocab,
        hidden_size=args.hidden,
        embedding_size=args.hidden,
        batch_tokens=args.batch_tokens,
        threads=args.threads,
        device=args.device,
        learning_rate=args.learning_rate,
        log_every=args.log_every,
        eval_sentences=args.eval_sentences,
        eval_sets=eval_sets,
    )
    return config, "Tatoeba FR-EN (${data}/corpora/tatoeba-fr-en/all.{fr,en})"


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = parse_args(argv)
        config, label = config_from_args(args)
        train(config, args.out, data_label=label)
    except CnmtError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
