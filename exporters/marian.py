"""MarianMT (EN-ZH): build or load it in torch, export it with optimum-onnx, check it against torch.

Sources of a model:

* ``pretrained``: a local Hugging Face directory (``config.json``, weights, ``source.spm``,
  ``target.spm``, ``vocab.json``) or a hub id such as ``Helsinki-NLP/opus-mt-en-zh``, fetched
  with ``huggingface_hub`` (this needs network; offline, the error says how to get a directory);
* ``config``: a model YAML with a ``marian`` section (:class:`MarianModelConfig`): random weights
  at the given dimensions, with a tokenizer trained with sentencepiece on real corpora
  (:mod:`cnmt.exporters.marian_tokenizer`) or a tokenizer directory the user gives. The
  checkpoint is saved under ``source/`` in the export.

The export (optimum-onnx, task ``text2text-generation-with-past``) gives an encoder, a decoder
without past and a decoder with past. It is validated right away: the runtime tokenizer must give
transformers' ids, the ONNX logits of teacher-forced steps must match torch's within ``atol``,
and the runtime's greedy tokens must equal ``generate(num_beams=1, do_sample=False)``. Any
difference raises :class:`ExportValidationError` and no manifest is written.

torch, transformers and optimum are imported inside functions only: the plugin registry imports
this module in the core environment to list the exporter.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

from cnmt.errors import CnmtRuntimeError, ConfigError
from cnmt.exporters.base import (
    Exporter,
    ExportRequest,
    prepare_out_dir,
    publish,
    require_torch,
)
from cnmt.exporters.check_texts import MARIAN_CHECK_TEXTS
from cnmt.exporters.marian_tokenizer import (
    EOS,
    OPTIONAL_TOKENIZER_FILES,
    PAD,
    TOKENIZER_FILES,
    UNK,
    TokenizerTraining,
    check_tokenizer_dir,
    train_tokenizer,
)
from cnmt.exporters.quantize import apply_precision, read_check
from cnmt.files import sha256_file
from cnmt.runtime.manifest import Manifest, write_manifest
from cnmt.runtime.manifest import replace as replace_manifest
from cnmt.schema import ranged

FAMILY = "marian"
# optimum-onnx's recommended minimum for Marian (it warns below); `cnmt export --opset` overrides.
MARIAN_OPSET = 18
HUB_ID = "Helsinki-NLP/opus-mt-en-zh"
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
GRAPHS = {
    "encoder": "encoder_model.onnx",
    "decoder": "decoder_model.onnx",
    "decoder_with_past": "decoder_with_past_model.onnx",
}
FILE_ROLES = {
    "source_spm": "source.spm",
    "target_spm": "target.spm",
    "vocab": "vocab.json",
    "target_vocab": "target_vocab.json",
    "tokenizer_config": "tokenizer_config.json",
}
# Real English sentences (everyday and formal) checked after every export.
VALIDATION_TEXTS = (
    "I would like a cup of tea, please.",
    "The committee adopted the draft resolution without a vote.",
    "Where is the nearest train station?",
    "She has been learning Chinese for three years.",
)
CHECK_TEXTS = (*VALIDATION_TEXTS, *MARIAN_CHECK_TEXTS)  # the int8 check's


class ExportValidationError(CnmtRuntimeError):
    """The exported graphs (or the runtime tokenizer) disagree with transformers."""


@dataclass(frozen=True)
class MarianDims:
    """Model dimensions; the defaults are those of Helsinki-NLP/opus-mt-en-zh."""

    d_model: int = ranged(512, low=1, high=16384)
    encoder_layers: int = ranged(6, low=1, high=64)
    decoder_layers: int = ranged(6, low=1, high=64)
    attention_heads: int = ranged(8, low=1, high=256)
    ffn_dim: int = ranged(2048, low=1, high=65536)
    # None: exactly the tokenizer's ids. opus-mt-en-zh has 65001 (two 32k spm models).
    vocab_size: int | None = ranged(65001, low=1, high=1000000)
    max_position_embeddings: int = ranged(512, low=1, high=65536)
    activation: Literal["swish", "relu", "gelu"] = "swish"

    def __post_init__(self) -> None:
        if self.d_model % self.attention_heads:
            raise ValueError(
                f"d_model {self.d_model} must be a multiple of attention_heads "
                f"{self.attention_heads}"
            )
        for name in ("d_model", "encoder_layers", "decoder_layers", "attention_heads", "ffn_dim"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        if self.max_position_embeddings < 2:
            raise ValueError("max_position_embeddings must be at least 2")


@dataclass(frozen=True)
class MarianModelConfig:
    """The ``marian`` section of a model YAML: a random-weight Marian and its tokenizer.

    Exactly one of ``tokenizer_dir`` (``source.spm``, ``target.spm``, ``vocab.json``) and
    ``train_tokenizer`` is given. ``atol`` bounds the logits difference of the validation.
    """

    dims: MarianDims = field(default_factory=MarianDims)
    tokenizer_dir: str | None = None
    train_tokenizer: TokenizerTraining | None = None
    seed: int = ranged(0, low=0, high=4294967295)
    atol: float = ranged(1e-3, low=0, high=1, above=True)
    validation_new_tokens: int = ranged(16, low=1, high=4096)

    def __post_init__(self) -> None:
        if (self.tokenizer_dir is None) == (self.train_tokenizer is None):
            raise ValueError("give exactly one of tokenizer_dir and train_tokenizer")
        if self.atol <= 0:
            raise ValueError("atol must be positive")
        if self.validation_new_tokens < 1:
            raise ValueError("validation_new_tokens must be at least 1")


# --- torch model -----------------------------------------------------------------------------


def build_random_marian(out_dir: str | os.PathLike[str], config: MarianModelConfig) -> Path:
    """Save a random-weight MarianMTModel and its tokenizer in Hugging Face format."""
    require_torch("building a random Marian model")
    import torch
    from transformers import GenerationConfig, MarianConfig, MarianMTModel

    folder = Path(out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    dims = config.dims
    if config.train_tokenizer is not None:
        id_count = train_tokenizer(folder, config.train_tokenizer, dims.vocab_size)
    else:
        source = Path(config.tokenizer_dir or "")
        vocab = check_tokenizer_dir(source)
        for name in (*TOKENIZER_FILES, *OPTIONAL_TOKENIZER_FILES):
            if (source / name).is_file():
                shutil.copyfile(source / name, folder / name)
        id_count = max(vocab.values()) + 1
    vocab = check_tokenizer_dir(folder)
    vocab_size = dims.vocab_size or id_count
    if vocab_size < id_count:
        raise ConfigError(
            f"dims.vocab_size {vocab_size} does not cover the tokenizer's ids (0..{id_count - 1});"
            f" set dims.vocab_size to at least {id_count} or null"
        )
    eos, pad = vocab[EOS], vocab[PAD]
    model_config = MarianConfig(
        vocab_size=vocab_size,
        d_model=dims.d_model,
        encoder_layers=dims.encoder_layers,
        decoder_layers=dims.decoder_layers,
        encoder_attention_heads=dims.attention_heads,
        decoder_attention_heads=dims.attention_heads,
        encoder_ffn_dim=dims.ffn_dim,
        decoder_ffn_dim=dims.ffn_dim,
        max_position_embeddings=dims.max_position_embeddings,
        activation_function=dims.activation,
        scale_embedding=True,
        share_encoder_decoder_embeddings=True,
        pad_token_id=pad,
        eos_token_id=eos,
        bos_token_id=eos,
        decoder_start_token_id=pad,
        forced_eos_token_id=eos,
    )
    torch.manual_seed(config.seed)
    model = MarianMTModel(model_config).eval()
    # The generation settings of the opus-mt models: never emit <pad>, at most 512 positions.
    model.generation_config = GenerationConfig(
        bad_words_ids=[[pad]],
        bos_token_id=eos,
        decoder_start_token_id=pad,
        eos_token_id=eos,
        forced_eos_token_id=eos,
        pad_token_id=pad,
        max_length=dims.max_position_embeddings,
        num_beams=4,
    )
    model.save_pretrained(folder, safe_serialization=True)
    about = {"weights": f"random (torch seed {config.seed})", "config": _plain(config)}
    (folder / "cnmt-source.json").write_text(json.dumps(about, indent=2) + "\n")
    return folder


def _plain(obj: Any) -> Any:
    return asdict(obj) if hasattr(obj, "__dataclass_fields__") else obj


def resolve_pretrained(name_or_path: str) -> Path:
    """A local Marian directory for a directory or a hub id (downloaded when there is network)."""
    path = Path(name_or_path).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise ConfigError(
                f"{path}: not a Hugging Face model directory (no config.json); give a directory "
                f"saved with save_pretrained or a hub id such as {HUB_ID}"
            )
        return path
    looks_like_hub_id = name_or_path.count("/") == 1 and not name_or_path.startswith((".", "/"))
    if not looks_like_hub_id:
        raise ConfigError(
            f"{name_or_path}: no such directory, and not a hub id (owner/name such as {HUB_ID})"
        )
    try:
        from huggingface_hub import snapshot_download

        return Path(
            snapshot_download(
                name_or_path,
                allow_patterns=[
                    "*.json",
                    "*.spm",
                    *WEIGHT_FILES,
                ],
            )
        )
    except Exception as exc:  # offline mode, no network, unknown repo: all end here
        offline = os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0")
        why = "HF_HUB_OFFLINE is set" if offline else "the hub is unreachable or the id is unknown"
        raise ConfigError(
            f"cannot download {name_or_path!r} from the Hugging Face hub ({why}: "
            f"{type(exc).__name__}). On a machine with network run `huggingface-cli download "
            f"{name_or_path} --local-dir DIR`, copy DIR here and pass it as a local DIR "
            "(--pretrained DIR), or export a random-weight model of the same size from a "
            "config: `cnmt export --family marian --config models/marian-en-zh --out DIR`"
        ) from None


def weights_checksum(source_dir: Path) -> str:
    for name in WEIGHT_FILES:
        if (source_dir / name).is_file():
            return sha256_file(source_dir / name)
    raise ConfigError(
        f"{source_dir}: no weights file ({' or '.join(WEIGHT_FILES)}); sharded checkpoints are "
        "not supported: save the model with save_pretrained(max_shard_size='10GB')"
    )


# --- export and validation -------------------------------------------------------------------


def _graph_io(path: Path) -> tuple[list[str], list[str], int]:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    return [i.name for i in model.graph.input], [o.name for o in model.graph.output], opset


def export_marian(
    source: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    name: str | None = None,
    opset: int = MARIAN_OPSET,
    validate: bool = True,
    validation_texts: Sequence[str] = VALIDATION_TEXTS,
    validation_new_tokens: int = 16,
    atol: float = 1e-3,
    overwrite: bool = False,
    build: MarianModelConfig | None = None,
    weights_note: str | None = None,
    precision: str = "fp32",
    check_texts: Path | None = None,
    check_references: Path | None = None,
) -> Manifest:
    """Export a Marian checkpoint (directory or hub id) to ``out_dir``; see the module doc.

    With ``build``, ``source`` is ignored: a random-weight model is built from that config
    into ``out_dir/source`` first.
    """
    require_torch("exporting Marian")
    check = None
    if precision != "fp32":
        source_note = f"{len(CHECK_TEXTS)} built-in English sentences"
        check = read_check(check_texts, check_references, CHECK_TEXTS, source_note)
    out = Path(out_dir)
    staging = prepare_out_dir(out, overwrite)
    try:
        if build is not None:
            source_dir = build_random_marian(staging / "source", build)
            weights_note = (
                weights_note or f"random (torch seed {build.seed}); checkpoint in source/"
            )
        else:
            source_dir = resolve_pretrained(os.fspath(source))
            weights_note = weights_note or f"pretrained {source}"
        manifest = _export_into(
            source_dir,
            staging,
            name=name or out.name,
            opset=opset,
            weights_note=weights_note,
        )
        if validate:
            report = validate_export(
                source_dir, staging, manifest, validation_texts, validation_new_tokens, atol
            )
            manifest = replace_manifest(manifest, extra={**manifest.extra, "validation": report})
        if precision != "fp32":
            manifest = apply_precision(staging, manifest, precision, check)
        write_manifest(staging, manifest)
        publish(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return manifest


def _export_into(
    source_dir: Path, staging: Path, *, name: str, opset: int, weights_note: str
) -> Manifest:
    import optimum.exporters.onnx as optimum_onnx
    from transformers import AutoConfig, GenerationConfig

    config = AutoConfig.from_pretrained(source_dir)
    if config.model_type != "marian":
        raise ConfigError(f"{source_dir}: model_type is {config.model_type!r}, not 'marian'")
    check_tokenizer_dir(source_dir)
    checksum = weights_checksum(source_dir)
    try:
        optimum_onnx.main_export(
            str(source_dir),
            output=staging,
            task="text2text-generation-with-past",
            opset=opset,
            device="cpu",
            no_post_process=True,  # keep decoder and decoder_with_past apart: no If node per step
            do_validation=False,  # validate_export checks more (tokens and every step's logits)
            library_name="transformers",
            local_files_only=True,
        )
    except Exception as exc:
        raise CnmtRuntimeError(
            f"optimum-onnx failed to export {source_dir}: {type(exc).__name__}: "
            f"{str(exc).strip()[:500]}"
        ) from exc
    for filename in (*TOKENIZER_FILES, *OPTIONAL_TOKENIZER_FILES):
        if (source_dir / filename).is_file():
            shutil.copyfile(source_dir / filename, staging / filename)
    inputs, outputs, opsets = {}, {}, set()
    for role, filename in GRAPHS.items():
        if not (staging / filename).is_file():
            raise CnmtRuntimeError(f"optimum-onnx did not write {filename} for {source_dir}")
        inputs[role], outputs[role], graph_opset = _graph_io(staging / filename)
        opsets.add(graph_opset)
    vocab = check_tokenizer_dir(staging)
    try:
        generation = GenerationConfig.from_pretrained(source_dir)
    except OSError:
        generation = GenerationConfig.from_model_config(config)
    suppressed = sorted({ids[0] for ids in (generation.bad_words_ids or []) if len(ids) == 1})
    max_length = min(
        generation.max_length or config.max_position_embeddings, config.max_position_embeddings
    )
    files = {role: f for role, f in FILE_ROLES.items() if (staging / f).is_file()}
    import onnxruntime
    import optimum
    import torch
    import transformers

    return Manifest(
        family=FAMILY,
        name=name,
        graphs=dict(GRAPHS),
        inputs=inputs,
        outputs=outputs,
        files=files,
        special_tokens={
            "eos": vocab[EOS],
            "unk": vocab[UNK],
            "pad": vocab[PAD],
            "decoder_start": int(config.decoder_start_token_id),
        },
        opset=max(opsets),
        source_checksum=checksum,
        # One position is </s> (source) or the decoder start token (output).
        max_source_tokens=config.max_position_embeddings - 1,
        max_output_tokens=max_length - 1,
        cnmt_version=_cnmt_version(),
        extra={
            "weights": weights_note,
            "vocab_size": int(config.vocab_size),
            "d_model": int(config.d_model),
            "encoder_layers": int(config.encoder_layers),
            "decoder_layers": int(config.decoder_layers),
            "attention_heads": int(config.encoder_attention_heads),
            "ffn_dim": int(config.encoder_ffn_dim),
            "suppressed_token_ids": suppressed,
            "exported_with": {
                "optimum": getattr(optimum, "__version__", "?"),
                "transformers": transformers.__version__,
                "torch": torch.__version__,
                "onnxruntime": onnxruntime.__version__,
            },
        },
    )


def _cnmt_version() -> str:
    from cnmt import __version__

    return __version__


def validate_export(
    source_dir: Path,
    model_dir: Path,
    manifest: Manifest,
    texts: Sequence[str],
    new_tokens: int = 16,
    atol: float = 1e-3,
) -> dict[str, Any]:
    """Compare the exported model with transformers; ExportValidationError on any difference.

    Checks per text: the runtime tokenizer's ids equal MarianTokenizer's; the logits of every
    teacher-forced decoder step (the first through ``decoder``, the rest through
    ``decoder_with_past``) are within ``atol`` of torch's; the runtime's greedy tokens equal
    ``generate(num_beams=1, do_sample=False, max_new_tokens=new_tokens)``. Returns what it
    measured (for the manifest).
    """
    import numpy as np
    import torch
    from transformers import MarianMTModel
    from transformers import MarianTokenizer as HfMarianTokenizer
    from transformers.utils import logging as hf_logging

    from cnmt.runtime.marian import MarianTranslator

    if not texts:
        raise ConfigError("validation needs at least one text")
    hf_logging.set_verbosity_error()
    model = MarianMTModel.from_pretrained(source_dir).eval()
    reference_tokenizer = HfMarianTokenizer.from_pretrained(source_dir)
    translator = MarianTranslator(model_dir, manifest, max_output_tokens=None)
    decoder = translator.decoder
    worst = 0.0
    for text in texts:
        expected_ids = reference_tokenizer(text).input_ids
        ours = translator.tokenizer.encode(text)
        if ours != expected_ids:
            raise ExportValidationError(
                f"tokenization of {text!r} differs from transformers' MarianTokenizer: "
                f"{ours} != {expected_ids}"
            )
        input_ids = torch.tensor([expected_ids])
        with torch.no_grad():
            generated = model.generate(
                input_ids=input_ids,
                attention_mask=torch.ones_like(input_ids),
                num_beams=1,
                do_sample=False,
                max_new_tokens=new_tokens,
                forced_eos_token_id=None,
            )[0, 1:].tolist()
            while generated and generated[-1] == decoder.pad_id:
                generated.pop()
            decoder_inputs = torch.tensor([[decoder.start_id, *generated[:-1]]])
            torch_logits = (
                model(
                    input_ids=input_ids,
                    attention_mask=torch.ones_like(input_ids),
                    decoder_input_ids=decoder_inputs,
                )
                .logits[0]
                .numpy()
            )
        array = np.asarray([expected_ids], dtype=np.int64)
        onnx_logits = decoder.teacher_forced_logits(
            array, np.ones_like(array), decoder_inputs.numpy()
        )[0]
        diff = float(np.abs(onnx_logits - torch_logits).max())
        worst = max(worst, diff)
        if not diff <= atol:
            step = int(np.abs(onnx_logits - torch_logits).max(axis=-1).argmax())
            graph = "decoder" if step == 0 else "decoder_with_past"
            raise ExportValidationError(
                f"ONNX logits differ from torch by {diff:.3g} (> atol {atol:g}) for {text!r}, "
                f"worst at decoder step {step} ({graph} graph): the export is wrong"
            )
        ours_generated = translator.generate_ids([text], new_tokens)[0]
        if ours_generated != generated:
            raise ExportValidationError(
                f"greedy tokens for {text!r} differ from transformers generate: "
                f"{ours_generated} != {generated} (max logits diff {diff:.3g})"
            )
    return {
        "texts": len(texts),
        "new_tokens": new_tokens,
        "max_abs_logits_diff": worst,
        "atol": atol,
    }


# --- the registered exporter -----------------------------------------------------------------


def load_model_config(path: str | os.PathLike[str]) -> MarianModelConfig:
    """The ``marian`` section of a model YAML (a file or a built-in name such as
    ``models/marian-en-zh``), with ``extends`` and ``${data}`` resolved."""
    from cnmt.config import load_config

    config = load_config(path)
    return config["marian"]


class MarianExporter(Exporter):
    """MarianMT through optimum-onnx (encoder, decoder, decoder with past), checked vs torch.

    Sources: ``pretrained`` (hub id or local directory), ``config`` (a model YAML: random
    weights), or neither (the default hub model, Helsinki-NLP/opus-mt-en-zh).
    """

    family: ClassVar[str] = FAMILY
    name: ClassVar[str] = FAMILY
    default_opset: ClassVar[int] = MARIAN_OPSET
    precisions: ClassVar[tuple[str, ...]] = ("fp32", "int8")

    def export(self, request: ExportRequest) -> Manifest:
        if request.checkpoint is not None:
            raise ConfigError(
                "the marian family exports Hugging Face directories, not a bare checkpoint "
                "file: use --pretrained DIR (saved with save_pretrained) or --config YAML"
            )
        if request.config is not None and request.pretrained is not None:
            raise ConfigError("give either --config (random weights) or --pretrained, not both")
        if request.config is not None:
            build = load_model_config(request.config)
            return export_marian(
                "",
                request.out_dir,
                name=request.name,
                opset=self.opset_for(request),
                validate=request.validate,
                validation_new_tokens=build.validation_new_tokens,
                atol=build.atol,
                overwrite=request.overwrite,
                build=_with_seed(build, request.seed),
                **_precision(request),
            )
        return export_marian(
            request.pretrained or HUB_ID,
            request.out_dir,
            name=request.name,
            opset=self.opset_for(request),
            validate=request.validate,
            overwrite=request.overwrite,
            **_precision(request),
        )


def _precision(request: ExportRequest) -> dict[str, Any]:
    return {
        "precision": request.precision,
        "check_texts": request.check_texts,
        "check_references": request.check_references,
    }


def _with_seed(config: MarianModelConfig, seed: int) -> MarianModelConfig:
    from dataclasses import replace

    return config if seed == 0 else replace(config, seed=seed)
