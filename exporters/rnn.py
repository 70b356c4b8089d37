"""Exporters of the RNN families: BiLSTM (OpenNMT-py style), GRU (tutorial) and cn2en.

Every export follows the same steps: build the torch model (random weights from a ``model``
config, an OpenNMT-py checkpoint, or cn2en's trained weights), write its vocabularies, trace each
graph of the family's :class:`~cnmt.exporters.spec.ExportSpec` with ``torch.onnx.export``
(``dynamo=False``: the dynamo exporter mis-declares RNN output shapes), write the manifest, then
validate: open the directory with the runtime translator and check that (1) each graph's outputs
match torch within the spec's tolerance on batches of several lengths and (2) greedy decodes of a
few inputs give the same tokens as the torch reference. A failed validation raises
:class:`~cnmt.errors.CnmtRuntimeError` and leaves no output directory behind.

torch is imported inside methods only, so the plugin registry can list these classes without it.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import sys
import tempfile
import warnings
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar

from cnmt import __version__
from cnmt.errors import CnmtRuntimeError, ConfigError
from cnmt.exporters import spec as specs
from cnmt.exporters.base import (
    Exporter,
    ExportRequest,
    prepare_out_dir,
    publish,
    require_torch,
)
from cnmt.exporters.check_texts import CN2EN_CHECK_TEXTS, PRETRAINED_CHECK_TEXTS
from cnmt.exporters.model_config import Built, ModelConfig, VocabConfig, config_extra
from cnmt.exporters.quantize import apply_precision, read_check
from cnmt.files import sha256_file
from cnmt.runtime.manifest import Manifest, write_manifest
from cnmt.runtime.rnn import BiLstmTranslator, Cn2enTranslator, GruTranslator, RnnTranslator
from cnmt.runtime.session import SessionConfig
from cnmt.runtime.tokenizers import Bpe, Vocabulary, WordTokenizer

# OpenNMT-py's special tokens, in its order: ids 0..3 of every vocabulary built from a config.
SPECIALS = ("<unk>", "<blank>", "<s>", "</s>")
VALIDATION_STEPS = 40
CHECK_SENTENCES = 32


class RnnExporter(Exporter):
    """Shared export, write and validation steps; subclasses build the torch model."""

    spec: ClassVar[specs.ExportSpec]
    translator: ClassVar[type[RnnTranslator]]
    precisions = ("fp32", "int8")
    check_source: ClassVar[str] = "every 50th of the first 2000 lines of the config's corpus"

    def build(self, request: ExportRequest) -> Built:
        raise NotImplementedError

    def check_texts(self, request: ExportRequest) -> list[str]:
        """Source sentences for the int8 check: from the config's source corpus (real text in
        the model's language), every 50th of its first lines; the built-in ones of a packaged
        trained model (``--pretrained``); else none."""
        if request.config is None:
            _, texts = PRETRAINED_CHECK_TEXTS.get(request.pretrained or "", ("", ()))
            return list(texts)
        corpus = Path(load_model_config(request.config, self.family).source_vocab.corpus)
        with corpus.open(encoding="utf-8") as handle:
            lines = [line.strip() for _, line in zip(range(2000), handle, strict=False)]
        return [line for line in lines[::50] if line][:CHECK_SENTENCES]

    def check_source_of(self, request: ExportRequest) -> str:
        """Where :meth:`check_texts` took the sentences from, for the manifest."""
        if request.config is None and request.pretrained in PRETRAINED_CHECK_TEXTS:
            language, texts = PRETRAINED_CHECK_TEXTS[request.pretrained]
            return f"{len(texts)} built-in {language} sentences"
        return self.check_source

    def export(self, request: ExportRequest) -> Manifest:
        require_torch(f"exporting the {self.family} family")
        import torch

        check = None
        if request.precision != "fp32":
            check = read_check(
                request.check_texts,
                request.check_references,
                self.check_texts(request),
                default_source=self.check_source_of(request),
            )
        torch.manual_seed(request.seed)
        built = self.build(request)
        built.model.eval()
        staging = prepare_out_dir(request.out_dir, request.overwrite)
        try:
            manifest = self.write(built, staging, request)
            if request.validate:
                validate_export(built, staging, manifest, self.spec, self.translator)
            if request.precision != "fp32":
                manifest = apply_precision(staging, manifest, request.precision, check)
                write_manifest(staging, manifest)
            publish(staging, request.out_dir)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return manifest

    def write(self, built: Built, folder: Path, request: ExportRequest) -> Manifest:
        Vocabulary(built.source_tokens).save(folder / "source_vocab.json")
        Vocabulary(built.target_tokens).save(folder / "target_vocab.json")
        files = {"source_vocab": "source_vocab.json", "target_vocab": "target_vocab.json"}
        if built.bpe_codes is not None:
            if not Path(built.bpe_codes).is_file():
                raise ConfigError(
                    f"the BPE codes {built.bpe_codes} do not exist: they are read from the data "
                    "directory (set CNMT_DATA to the folder holding tokenizers/, or give the "
                    "model config's tokenizer.bpe_codes)"
                )
            shutil.copyfile(built.bpe_codes, folder / "bpe.codes")
            files["bpe_codes"] = "bpe.codes"
        for role, (file_name, contents) in built.assets.items():
            (folder / file_name).write_bytes(contents)
            files[role] = file_name
        graphs = built.model.graphs()
        examples = built.model.example_inputs()
        for graph in self.spec.graphs:
            export_graph(
                graphs[graph.role],
                examples[graph.role],
                folder / self.spec.file_name(graph.role),
                graph,
                self.opset_for(request),
            )
        manifest = Manifest(
            family=self.family,
            name=request.name or built.name,
            graphs={g.role: self.spec.file_name(g.role) for g in self.spec.graphs},
            inputs={g.role: list(g.inputs) for g in self.spec.graphs},
            outputs={g.role: list(g.outputs) for g in self.spec.graphs},
            files=files,
            special_tokens=built.special_tokens,
            opset=self.opset_for(request),
            source_checksum=built.source_checksum,
            max_source_tokens=built.max_source_tokens,
            max_output_tokens=built.max_output_tokens,
            cnmt_version=__version__,
            extra=built.extra,
        )
        write_manifest(folder, manifest)
        return manifest


def export_graph(
    module: Any, args: tuple[Any, ...], path: Path, graph: specs.GraphSpec, opset: int
) -> None:
    import torch

    with warnings.catch_warnings(), _stderr_kept_unless_failing():
        # Tracing warns about packed sequences and python ints (from Python and from C++, the
        # latter straight to file descriptor 2); validation checks the result instead.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            args,
            str(path),
            input_names=list(graph.inputs),
            output_names=list(graph.outputs),
            dynamic_axes=graph.dynamic_axes,
            opset_version=opset,
            do_constant_folding=True,
            dynamo=False,
        )


@contextlib.contextmanager
def _stderr_kept_unless_failing() -> Iterator[None]:
    """Hold back what C++ code writes to stderr; replay it only if the block raises."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        try:
            yield
        except BaseException:
            os.dup2(saved, 2)
            held.seek(0)
            sys.stderr.write(held.read().decode(errors="replace"))
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)


# --------------------------------------------------------------------------------------------
# Validation


def validate_export(
    built: Built,
    model_dir: Path,
    manifest: Manifest,
    spec: specs.ExportSpec,
    translator_cls: type[RnnTranslator],
    tolerance: float | None = None,
    samples: int = 3,
) -> None:
    """Compare the exported graphs with the torch model; CnmtRuntimeError when they disagree."""
    import numpy as np
    import torch

    tolerance = spec.tolerance if tolerance is None else tolerance
    translator = translator_cls.load(model_dir, manifest, SessionConfig())
    model = built.model
    graphs = model.graphs()
    generator = torch.Generator().manual_seed(1234)
    vocab = len(built.source_tokens)
    worst = 0.0
    for batch, length in ((1, 7), (3, 11)):
        examples = model.example_inputs(batch, length)
        src = torch.randint(0, vocab, (batch, length), generator=generator)
        examples["encoder"] = (src, examples["encoder"][1])
        with torch.no_grad():
            encoded = graphs["encoder"](*examples["encoder"])
        encoded = encoded if isinstance(encoded, tuple) else (encoded,)
        worst = max(
            worst,
            compare_outputs(
                translator.encoder, spec.graph("encoder"), examples["encoder"], encoded, tolerance
            ),
        )
        decoder_args = _decoder_args(examples["decoder"], encoded, spec.family)
        with torch.no_grad():
            stepped = graphs["decoder"](*decoder_args)
        worst = max(
            worst,
            compare_outputs(
                translator.decoder, spec.graph("decoder"), decoder_args, stepped, tolerance
            ),
        )
    bos, eos = manifest.special("bos"), manifest.special("eos")
    specials = set(manifest.special_tokens.values())
    ordinary = [i for i in range(vocab) if i not in specials]
    rng = np.random.default_rng(99)
    steps = min(VALIDATION_STEPS, manifest.max_output_tokens)
    suffix = [eos] if translator.source_eos else []
    for i in range(samples):
        source = [int(t) for t in rng.choice(ordinary, size=3 + 4 * i)]
        expected = model.greedy(source + suffix, bos, eos, steps)
        got = translator.decode([source], max_steps=steps).ids[0]
        if got != expected:
            raise CnmtRuntimeError(
                f"export validation failed for {manifest.name!r}: ONNX Runtime's greedy decode of "
                f"source ids {source} gives {got[:12]}... but torch gives {expected[:12]}...; the "
                f"graphs in {model_dir} do not reproduce the model (largest log-prob difference "
                f"{worst:.2e})"
            )


def _decoder_args(
    example: tuple[Any, ...], encoded: tuple[Any, ...], family: str
) -> tuple[Any, ...]:
    import torch

    if family == "bilstm":
        ids, _, _, feed, _, lengths = example
        memory_bank, h, c = encoded
        feed = torch.randn(feed.shape, generator=torch.Generator().manual_seed(7)) * 0.5
        return (ids + 3, h, c, feed, memory_bank, lengths)
    ids, _ = example
    return (ids + 3, encoded[0])


def compare_outputs(
    session: Any, graph: specs.GraphSpec, args: tuple[Any, ...], expected: Any, tolerance: float
) -> float:
    expected = expected if isinstance(expected, tuple) else (expected,)
    feeds = {name: arg.numpy() for name, arg in zip(graph.inputs, args, strict=True)}
    got = session.run(list(graph.outputs), feeds)
    worst = 0.0
    for name, a, b in zip(graph.outputs, got, expected, strict=True):
        b = b.detach().numpy()
        if a.shape != b.shape:
            raise CnmtRuntimeError(
                f"export validation failed: {graph.role} output {name} has shape {a.shape} in ONNX "
                f"Runtime but {b.shape} in torch"
            )
        diff = float(abs(a - b).max()) if a.size else 0.0
        worst = max(worst, diff)
        if not diff <= tolerance:
            raise CnmtRuntimeError(
                f"export validation failed: {graph.role} output {name} differs from torch by "
                f"{diff:.3e} (tolerance {tolerance:.1e}); the exported graph does not match the "
                "model"
            )
    return worst


# --------------------------------------------------------------------------------------------
# Vocabularies and config-built models


def load_model_config(path: Path, family: str) -> ModelConfig:
    from cnmt.config import load_config

    config = load_config(path)
    model: ModelConfig = config["model"]
    if model.family != family:
        raise ConfigError(
            f"{config.source}: model.family is {model.family!r} but --family is {family!r}; "
            f"use `--family {model.family}` or another config"
        )
    return model


def tokenizer_for(
    language: str, config: ModelConfig | None, bpe: Bpe | None
) -> Callable[[str], list[str]]:
    words = WordTokenizer(language, config.lowercase if config else True)
    if bpe is None:
        return words.split
    return lambda line: bpe.apply(words.split(line))


def build_vocab(vocab: VocabConfig, key: str, tokenize: Callable[[str], list[str]]) -> list[str]:
    """SPECIALS, then the ``size - 4`` most frequent tokens of the corpus (ties: first seen)."""
    path = Path(vocab.corpus)
    if not path.is_file():
        raise ConfigError(
            f"model.{key}.corpus: {path} not found; point it at a text file (one sentence per "
            "line) "
            "or set CNMT_DATA to the data directory that `${data}` refers to"
        )
    counts: Counter[str] = Counter()
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle):
            if vocab.max_lines is not None and number >= vocab.max_lines:
                break
            counts.update(tokenize(line))
    for special in SPECIALS:
        counts.pop(special, None)
    return [*SPECIALS, *(t for t, _ in counts.most_common(vocab.size - len(SPECIALS)))]


def state_checksum(model: Any) -> str:
    """sha256 over parameter names and bytes: the identity of generated (random) weights."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().contiguous().numpy().tobytes())
    return digest.hexdigest()


def build_from_config(config: ModelConfig, make_model: Callable[[int, int], Any]) -> Built:
    from cnmt.exporters.rnn_models import init_uniform

    bpe = Bpe.load(config.bpe_codes) if config.bpe_codes else None
    source_tokens = build_vocab(
        config.source_vocab, "source_vocab", tokenizer_for(config.source_language, config, bpe)
    )
    target_tokens = build_vocab(
        config.target_vocab, "target_vocab", tokenizer_for(config.target_language, config, bpe)
    )
    model = make_model(len(source_tokens), len(target_tokens))
    init_uniform(model, config.init_range, config.seed)
    extra = config_extra(config)
    extra.update(
        hidden_size=config.hidden_size,
        embedding_size=config.embedding_dim,
        layers=config.layers,
        weights=f"random U(-{config.init_range}, {config.init_range}), seed {config.seed}",
    )
    return Built(
        model=model,
        name=config.name,
        source_tokens=source_tokens,
        target_tokens=target_tokens,
        special_tokens={"unk": 0, "pad": 1, "bos": 2, "eos": 3},
        source_checksum=state_checksum(model),
        max_source_tokens=config.max_source_tokens,
        max_output_tokens=config.max_output_tokens,
        extra=extra,
        bpe_codes=Path(config.bpe_codes) if config.bpe_codes else None,
    )


# --------------------------------------------------------------------------------------------
# The families


class BiLstmExporter(RnnExporter):
    """OpenNMT-py style BiLSTM: random weights from a `model` config, an OpenNMT-py .pt (with
    a config for the tokenizer settings), or ``--pretrained bilstm-de-en`` (the packaged trained
    model, the built-in)."""

    family = "bilstm"
    name = "bilstm"
    spec = specs.BILSTM
    translator = BiLstmTranslator

    def build(self, request: ExportRequest) -> Built:
        from cnmt.exporters import rnn_models
        from cnmt.exporters.gru_trained import packaged_checkpoint
        from cnmt.exporters.opennmt import load_opennmt_checkpoint

        if request.pretrained is not None:
            # The packaged OpenNMT-py model; its tokenizer settings are models/bilstm-de-en's
            # (lowercase, Moses-like, the IWSLT'14 BPE codes from the data directory).
            checkpoint = packaged_checkpoint(self.family, request.pretrained)
            from cnmt.config import resolve_config_path

            config_path = request.config or resolve_config_path(f"models/{request.pretrained}")
            config = load_model_config(Path(config_path), self.family)
            return load_opennmt_checkpoint(checkpoint, config)
        config = load_model_config(request.config, self.family) if request.config else None
        if request.checkpoint is not None:
            return load_opennmt_checkpoint(Path(request.checkpoint), config)
        if config is None:
            raise ConfigError(
                "the bilstm family needs --config FILE (e.g. --config models/bilstm-de-en) or "
                "--checkpoint MODEL.pt (an OpenNMT-py checkpoint)"
            )
        return build_from_config(
            config,
            lambda sv, tv: rnn_models.BiLstmSeq2Seq(
                sv, tv, config.embedding_dim, config.hidden_size, config.layers
            ),
        )


class GruExporter(RnnExporter):
    """GRU encoder-decoder without attention (seq2seq tutorial): random weights from a `model`
    config, or trained weights (a `cnmt.training.gru` checkpoint; ``--pretrained gru-fr-en``
    is the one the package ships, the built-in model)."""

    family = "gru"
    name = "gru"
    spec = specs.GRU
    translator = GruTranslator

    def build(self, request: ExportRequest) -> Built:
        from cnmt.exporters import rnn_models
        from cnmt.exporters.gru_trained import load_gru_checkpoint, packaged_checkpoint

        sources = [request.config, request.checkpoint, request.pretrained]
        if sum(s is not None for s in sources) > 1:
            raise ConfigError(
                "the gru family takes one of --config (random weights), --checkpoint (trained "
                "weights) and --pretrained NAME (the packaged trained weights)"
            )
        if request.checkpoint is not None:
            return load_gru_checkpoint(Path(request.checkpoint))
        if request.pretrained is not None:
            return load_gru_checkpoint(packaged_checkpoint(self.family, request.pretrained))
        if request.config is None:
            raise ConfigError(
                "the gru family needs --config FILE (random weights, e.g. --config "
                "models/gru-fr-en), --checkpoint FILE (trained by `scripts/train-gru-fr-en`) or "
                "--pretrained gru-fr-en (the packaged trained FR-EN model); the trained ZH->EN "
                "GRU of the cn2en package is --family cn2en"
            )
        config = load_model_config(request.config, self.family)
        return build_from_config(
            config,
            lambda sv, tv: rnn_models.GruSeq2Seq(
                sv, tv, config.embedding_dim, config.hidden_size, config.layers
            ),
        )


class Cn2enExporter(RnnExporter):
    """The trained ZH->EN GRU of the PyPI package cn2en (or a folder with its three files)."""

    family = "cn2en"
    name = "cn2en"
    spec = specs.CN2EN
    translator = Cn2enTranslator
    check_source = "24 built-in Chinese sentences"

    def check_texts(self, request: ExportRequest) -> list[str]:
        return list(CN2EN_CHECK_TEXTS)

    # The reference decodes at most 1000 steps; it sets no source limit, this is ours.
    MAX_SOURCE_TOKENS = 500
    MAX_OUTPUT_TOKENS = 1000

    def build(self, request: ExportRequest) -> Built:
        from cnmt.exporters import cn2en, rnn_models

        if request.config is not None:
            raise ConfigError(
                "the cn2en family exports the trained cn2en weights and takes no --config; use "
                "--family gru with --config for a GRU built from a config"
            )
        source = cn2en.locate(request.checkpoint or request.pretrained)
        source_tokens = cn2en.load_lang(source.folder / "input_lang.pkl")
        target_tokens = cn2en.load_lang(source.folder / "output_lang.pkl")
        encoder_state, decoder_state = cn2en.load_state(source)
        model = rnn_models.GruSeq2Seq(
            len(source_tokens), len(target_tokens), cn2en.HIDDEN, cn2en.HIDDEN, 1
        )
        try:
            model.encoder.load_state_dict(encoder_state)
            model.decoder.load_state_dict(decoder_state)
        except RuntimeError as exc:
            raise ConfigError(
                f"{source.weights}: weights do not fit cn2en's architecture ({exc})"
            ) from None
        return Built(
            model=model,
            name="cn2en",
            source_tokens=source_tokens,
            target_tokens=target_tokens,
            special_tokens={"bos": cn2en.SOS, "eos": cn2en.EOS},
            source_checksum=sha256_file(source.weights),
            max_source_tokens=self.MAX_SOURCE_TOKENS,
            max_output_tokens=self.MAX_OUTPUT_TOKENS,
            extra={
                "source_language": "zh",
                "target_language": "en",
                "source_eos": True,
                "tokenizer": "cn2en",
                "unknown_source_tokens": "dropped, as cn2en does",
                "hidden_size": cn2en.HIDDEN,
                "layers": 1,
                "source": str(source.folder),
            },
        )


__all__: Sequence[str] = (
    "BiLstmExporter",
    "Cn2enExporter",
    "GruExporter",
    "validate_export",
)
