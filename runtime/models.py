"""Open a translator by model directory or built-in model name.

A *model directory* is what ``cnmt export`` writes: ONNX graphs, vocabulary files and a
``manifest.json`` whose ``family`` selects the Translator class registered through the
``cnmt_register_translators`` hook. A *built-in model* (``cn2en``) is exported on first use
into the cache (``$CNMT_CACHE``, else ``~/.cache/cnmt``) by the family's registered exporter,
which needs the export tools (torch); later uses only read the cache.

This module reaches exporters only through the plugin registry: the runtime never imports
torch itself, and with a model directory (or a filled cache) torch is never imported at all.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cnmt.errors import ConfigError
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


BUILTIN_MODELS: dict[str, BuiltinModel] = {
    "cn2en": BuiltinModel(
        name="cn2en",
        family="cn2en",
        description="trained ZH->EN GRU from the PyPI package cn2en (pip install cn2en==0.0.118)",
    ),
}


def cache_dir() -> Path:
    """Where built-in models are exported: $CNMT_CACHE, else ~/.cache/cnmt."""
    configured = os.environ.get(CACHE_ENV)
    return Path(configured) if configured else Path.home() / ".cache" / "cnmt"


def translator_class(family: str) -> type[Translator]:
    """The Translator registered for ``family``; ConfigError listing the known families."""
    from cnmt.plugins import get_components

    components = get_components()
    if family not in components.names("translator"):
        known = ", ".join(components.names("translator")) or "(none registered)"
        raise ConfigError(f"unknown model family {family!r}; known families: {known}")
    return components.get("translator", family).cls


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
    if path.is_dir() and (name not in BUILTIN_MODELS or (path / MANIFEST_NAME).is_file()):
        return open_model_dir(path, config)
    if name in BUILTIN_MODELS:
        return open_model_dir(ensure_builtin(BUILTIN_MODELS[name]), config)
    looks_like_path = os.sep in name or name.startswith(".") or path.suffix != ""
    what = f"{name}: no such model directory" if looks_like_path else f"unknown model {name!r}"
    raise ConfigError(
        f"{what}; give an exported model directory (`cnmt export ... --out DIR`) or a built-in "
        f"model: {', '.join(sorted(BUILTIN_MODELS))}"
    )


def open_model_dir(model_dir: Path, config: SessionConfig) -> Translator:
    manifest = load_manifest(model_dir)
    return translator_class(manifest.family).load(Path(model_dir), manifest, config)


def ensure_builtin(model: BuiltinModel) -> Path:
    """The cached export of a built-in model, exported now when the cache lacks it."""
    target = cache_dir() / "models" / model.name
    if (target / MANIFEST_NAME).is_file():
        return target
    from cnmt.plugins import get_components

    components = get_components()
    if model.family not in components.names("exporter"):
        known = ", ".join(components.names("exporter")) or "(none registered)"
        raise ConfigError(
            f"built-in model {model.name!r}: no exporter for family {model.family!r}"
            f" is registered (known: {known})"
        )
    exporter = components.create("exporter", model.family)
    try:
        exporter.export_builtin(target, name=model.name, pretrained=model.pretrained)
    except ConfigError as exc:
        raise ConfigError(
            f"built-in model {model.name!r} ({model.description}) is exported on first use into "
            f"{target}, and that failed: {exc}. Alternatively export it on a machine with the "
            f"export tools (`cnmt export --family {model.family} --out DIR`) and pass "
            "--model DIR"
        ) from None
    return target
