"""Load an OpenNMT-py RNN checkpoint (``.pt``) as a BiLSTM (:mod:`cnmt.exporters.rnn_models`).

Supported: ``-encoder_type brnn -input_feed 1 -global_attention general`` (OpenNMT-py's RNN
defaults apart from the bidirectional encoder), any number of layers, no bridge, no coverage,
no copy attention. The checkpoint is read with ``torch.load(weights_only=True)`` (``opt``'s
``argparse.Namespace`` allowed), so it must hold plain data: ``model`` and ``generator`` state
dicts and ``vocab`` as OpenNMT-py 3 saves it (``{"src": [tokens], "tgt": [tokens]}``). Older
checkpoints keep torchtext objects in ``vocab``; load them with OpenNMT-py 3's converter first.
Dimensions (vocabularies, embedding and hidden sizes, layers) are read from the weight shapes.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from cnmt.errors import ConfigError
from cnmt.exporters.model_config import Built, ModelConfig, config_extra
from cnmt.files import sha256_file

# OpenNMT-py name -> ours; the LSTM weights keep their names.
RENAMES = {
    "encoder.embeddings.make_embedding.emb_luts.0.weight": "encoder.embeddings.weight",
    "decoder.embeddings.make_embedding.emb_luts.0.weight": "decoder.embeddings.weight",
    "decoder.attn.linear_in.weight": "decoder.attn.linear_in.weight",
    "decoder.attn.linear_out.weight": "decoder.attn.linear_out.weight",
}
_KEPT = re.compile(
    r"^(encoder\.rnn\.(weight|bias)_(ih|hh)_l\d+(_reverse)?"
    r"|decoder\.rnn\.layers\.\d+\.(weight|bias)_(ih|hh))$"
)
# Generator names: OpenNMT-py 1/2 save nn.Sequential(Linear, LogSoftmax), 3 a plain Linear.
_GENERATOR = {
    "0.weight": "generator.weight",
    "0.bias": "generator.bias",
    "weight": "generator.weight",
    "bias": "generator.bias",
}
FIX = "this loader supports OpenNMT-py brnn encoders with input feeding and general attention"


def read_checkpoint(path: Path) -> dict[str, Any]:
    import argparse

    import torch

    if not path.is_file():
        raise ConfigError(f"{path}: checkpoint not found")
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # unsafe globals, corrupt zip, not a torch file
        raise ConfigError(
            f"{path}: cannot read as a plain-data OpenNMT-py checkpoint "
            f"({str(exc).splitlines()[0]}); "
            "checkpoints of OpenNMT-py < 3 keep torchtext objects in `vocab`: convert them with "
            "OpenNMT-py 3 first"
        ) from None
    if not isinstance(checkpoint, dict) or "model" not in checkpoint:
        raise ConfigError(f"{path}: not an OpenNMT-py checkpoint (no `model` state dict)")
    return checkpoint


def convert_state(checkpoint: dict[str, Any], path: Path) -> dict[str, Any]:
    """OpenNMT-py state dicts -> our parameter names; unknown parameters are an error."""
    state: dict[str, Any] = {}
    for key, value in checkpoint["model"].items():
        if key in RENAMES:
            state[RENAMES[key]] = value
        elif _KEPT.match(key):
            state[key] = value
        elif key.startswith("generator."):
            state[_GENERATOR.get(key.removeprefix("generator."), key)] = value
        else:
            raise ConfigError(f"{path}: unsupported parameter {key!r} in `model`; {FIX}")
    for key, value in (checkpoint.get("generator") or {}).items():
        if key not in _GENERATOR:
            raise ConfigError(f"{path}: unsupported parameter {key!r} in `generator`; {FIX}")
        state[_GENERATOR[key]] = value
    for required in (
        "encoder.embeddings.weight",
        "decoder.embeddings.weight",
        "decoder.attn.linear_in.weight",
        "generator.weight",
    ):
        if required not in state:
            raise ConfigError(f"{path}: no parameter for {required}; {FIX}")
    if "encoder.rnn.weight_ih_l0_reverse" not in state:
        raise ConfigError(f"{path}: the encoder is not bidirectional (-encoder_type brnn); {FIX}")
    return state


def _vocab(checkpoint: dict[str, Any], side: str, path: Path) -> list[str]:
    vocab = checkpoint.get("vocab")
    tokens = vocab.get(side) if isinstance(vocab, dict) else None
    if isinstance(tokens, list) and tokens and isinstance(tokens[0], list | tuple):
        tokens = [t[0] for t in tokens]  # some versions store (token, count) pairs
    if not isinstance(tokens, list) or not all(isinstance(t, str) for t in tokens):
        raise ConfigError(
            f"{path}: `vocab` must map 'src' and 'tgt' to token lists (OpenNMT-py 3); got "
            f"{type(vocab).__name__}"
        )
    return tokens


def load_opennmt_checkpoint(path: Path, config: ModelConfig | None) -> Built:
    """A Built BiLSTM from an OpenNMT-py checkpoint; ``config`` (optional) supplies the
    tokenizer settings and limits, its vocabulary sections are ignored."""
    from cnmt.exporters.rnn_models import BiLstmSeq2Seq

    checkpoint = read_checkpoint(path)
    state = convert_state(checkpoint, path)
    source_tokens = _vocab(checkpoint, "src", path)
    target_tokens = _vocab(checkpoint, "tgt", path)
    source_vocab, embedding = state["encoder.embeddings.weight"].shape
    target_vocab = state["decoder.embeddings.weight"].shape[0]
    hidden = state["decoder.attn.linear_in.weight"].shape[0]
    layers = sum(1 for k in state if re.fullmatch(r"encoder\.rnn\.weight_ih_l\d+", k))
    feed = state["decoder.rnn.layers.0.weight_ih"].shape[1]
    if feed != state["decoder.embeddings.weight"].shape[1] + hidden:
        raise ConfigError(f"{path}: the decoder has no input feeding (-input_feed 1); {FIX}")
    if (len(source_tokens), len(target_tokens)) != (source_vocab, target_vocab):
        raise ConfigError(
            f"{path}: vocab sizes {len(source_tokens)}/{len(target_tokens)} do not match the "
            f"embeddings {source_vocab}/{target_vocab}"
        )
    model = BiLstmSeq2Seq(source_vocab, target_vocab, embedding, hidden, layers)
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise ConfigError(
            f"{path}: weights do not fit the BiLSTM architecture ({exc}); {FIX}"
        ) from None
    special_tokens = {}
    for role, token, tokens in (
        ("unk", "<unk>", target_tokens),
        ("pad", "<blank>", target_tokens),
        ("bos", "<s>", target_tokens),
        ("eos", "</s>", target_tokens),
    ):
        if token not in tokens:
            raise ConfigError(f"{path}: the target vocabulary has no {token} token")
        special_tokens[role] = tokens.index(token)
    for token, role in (("<unk>", "unk"), ("<blank>", "pad")):
        source_id = source_tokens.index(token) if token in source_tokens else None
        if source_id != special_tokens[role]:
            raise ConfigError(
                f"{path}: {token} has id {source_id} in the source vocabulary but "
                f"{special_tokens[role]} in the target vocabulary; this runtime needs them equal"
            )
    extra = config_extra(config)
    extra.update(
        hidden_size=hidden,
        embedding_size=int(embedding),
        layers=layers,
        weights=f"OpenNMT-py checkpoint {path.name}",
    )
    # What `cnmt.training.opennmt` adds: its recipe (data, seed, time), kept in the manifest.
    if isinstance(checkpoint.get("cnmt_training"), dict):
        extra["training"] = checkpoint["cnmt_training"]
    return Built(
        model=model,
        name=config.name if config else path.stem,
        source_tokens=source_tokens,
        target_tokens=target_tokens,
        special_tokens=special_tokens,
        source_checksum=sha256_file(path),
        max_source_tokens=config.max_source_tokens if config else 256,
        max_output_tokens=config.max_output_tokens if config else 250,
        extra=extra,
        bpe_codes=Path(config.bpe_codes) if config and config.bpe_codes else None,
    )
