"""Trained checkpoints: the GRU format of ``cnmt.training.gru``, and the packaged weights.

A checkpoint is one ``torch.save`` file: the :class:`~cnmt.exporters.rnn_models.GruSeq2Seq`
state dict (fp32, or fp16 for the copy the package ships), the two SentencePiece models (their
bytes), the sizes and limits, and the training record (config, data, seed, wall time), which the
manifest keeps under ``extra.training``. The package ships two trained checkpoints, in fp16 to stay
small, exported into the cache on first use as the built-in models of the same names:
``weights/gru-fr-en.pt`` (this format) and ``weights/bilstm-de-en.pt`` (a genuine OpenNMT-py
3.5.1 checkpoint without its optimizer state, trained by ``cnmt.training.opennmt``).

torch and sentencepiece are imported inside functions only.
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any

from cnmt.errors import ConfigError
from cnmt.exporters.model_config import Built
from cnmt.files import sha256_file

CHECKPOINT_FORMAT = "cnmt-gru-checkpoint-1"
WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
# Packaged trained checkpoints by family, then built-in name (`--pretrained NAME`).
PACKAGED = {"gru": {"gru-fr-en": "gru-fr-en.pt"}, "bilstm": {"bilstm-de-en": "bilstm-de-en.pt"}}


def packaged_checkpoint(family: str, name: str) -> Path:
    """The shipped checkpoint of built-in ``name``; ConfigError naming the ones there are."""
    shipped = PACKAGED.get(family, {})
    if name not in shipped:
        raise ConfigError(
            f"--pretrained {name!r}: the {family} family ships trained weights for "
            f"{', '.join(sorted(shipped)) or 'no model'} only; give --checkpoint FILE (trained "
            "weights) or --config FILE (random weights)"
        )
    path = WEIGHTS_DIR / shipped[name]
    if not path.is_file():
        raise ConfigError(f"{path}: the packaged weights of {name!r} are missing; reinstall cnmt")
    return path


def load_gru_checkpoint(path: Path) -> Built:
    """A trained GRU from ``path`` with its SentencePiece models as files of the export."""
    import argparse

    import sentencepiece as spm
    import torch

    from cnmt.exporters.rnn_models import GruSeq2Seq

    if not path.is_file():
        raise ConfigError(f"--checkpoint {path}: no such file")
    if not zipfile.is_zipfile(path):
        raise ConfigError(
            f"--checkpoint {path}: not a torch checkpoint (torch.save writes a zip archive); give "
            "the checkpoint.pt that `scripts/train-gru-fr-en` wrote"
        )
    try:
        # argparse.Namespace allowed: an OpenNMT-py checkpoint given by mistake then reads, and
        # fails the format check below with a message that says what this family takes.
        with torch.serialization.safe_globals([argparse.Namespace]):
            payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a file that is not a checkpoint
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise ConfigError(
            f"--checkpoint {path}: not a plain-data torch checkpoint ({first})"
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise ConfigError(
            f"--checkpoint {path}: not a trained GRU checkpoint (format {CHECKPOINT_FORMAT!r}, "
            "as `python -m cnmt.training.gru` writes); for random weights give --config"
        )
    hyper: dict[str, Any] = payload["hyper"]
    source_sp = spm.SentencePieceProcessor(model_proto=payload["source_spm"])
    target_sp = spm.SentencePieceProcessor(model_proto=payload["target_spm"])
    source_tokens = [source_sp.id_to_piece(i) for i in range(source_sp.get_piece_size())]
    target_tokens = [target_sp.id_to_piece(i) for i in range(target_sp.get_piece_size())]
    model = GruSeq2Seq(
        len(source_tokens),
        len(target_tokens),
        int(hyper["embedding_size"]),
        int(hyper["hidden_size"]),
        int(hyper["layers"]),
    )
    state = {k: v.float() if v.is_floating_point() else v for k, v in payload["state_dict"].items()}
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise ConfigError(f"--checkpoint {path}: weights do not fit the GRU ({exc})") from None
    stored = {str(v.dtype).removeprefix("torch.") for v in payload["state_dict"].values()}
    specials = {
        "unk": source_sp.unk_id(),
        "pad": source_sp.pad_id(),
        "bos": target_sp.bos_id(),
        "eos": target_sp.eos_id(),
    }
    return Built(
        model=model,
        name=str(hyper["name"]),
        source_tokens=source_tokens,
        target_tokens=target_tokens,
        special_tokens=specials,
        source_checksum=sha256_file(path),
        max_source_tokens=int(hyper["max_source_tokens"]),
        max_output_tokens=int(hyper["max_output_tokens"]),
        extra={
            "source_language": hyper["source_language"],
            "target_language": hyper["target_language"],
            "lowercase": False,
            "source_eos": False,
            "tokenizer": "sentencepiece (one unigram model per side)",
            "hidden_size": int(hyper["hidden_size"]),
            "embedding_size": int(hyper["embedding_size"]),
            "layers": int(hyper["layers"]),
            "weights": f"trained ({', '.join(sorted(stored))} in {path.name})",
            "training": payload.get("training", {}),
        },
        assets={
            "source_spm": ("source.spm", bytes(payload["source_spm"])),
            "target_spm": ("target.spm", bytes(payload["target_spm"])),
        },
    )
