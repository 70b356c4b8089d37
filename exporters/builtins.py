"""Built-in models: export one into the model cache the first time something needs it.

``cnmt.runtime`` opens a built-in model (``cn2en``) from the cache and never exports; the
commands that open models (`cnmt translate`, `cnmt demo`, `cnmt launch`, `cnmt profile`, the
experiments that run a model) call :func:`ensure_exported` first, which runs the family's
registered exporter once. It needs the export tools (torch).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from cnmt.errors import ConfigError
from cnmt.registry import get_components
from cnmt.runtime.models import BUILTIN_MODELS, builtin_dir, unexported_builtin


def export_builtin(name: str) -> Path:
    """Export built-in model ``name`` into the cache (replacing what is there); its folder."""
    if name not in BUILTIN_MODELS:
        raise ConfigError(
            f"unknown built-in model {name!r}; built-in: {', '.join(sorted(BUILTIN_MODELS))}"
        )
    model = BUILTIN_MODELS[name]
    target = builtin_dir(name)
    try:
        exporter = get_components().create("exporter", model.family, label="model family")
        exporter.export_builtin(
            target, name=model.name, pretrained=model.pretrained, precision=model.precision
        )
    except ConfigError as exc:
        precision = "" if model.precision == "fp32" else f" --precision {model.precision}"
        raise ConfigError(
            f"built-in model {name!r} ({model.description}) is exported on first use into "
            f"{target}, and that failed: {exc}. Alternatively export it on a machine with the "
            f"export tools (`cnmt export --family {model.family}{precision} --out DIR`) and "
            "pass DIR as the model"
        ) from None
    return target


def ensure_exported(name_or_dir: str | os.PathLike[str]) -> None:
    """Export ``name_or_dir`` into the cache if it is a built-in model not exported yet."""
    missing = unexported_builtin(name_or_dir)
    if missing is not None:
        # Seconds without a word look like a hang: say what happens, and that it is once.
        print(
            f"cnmt: exporting {missing.name} into {builtin_dir(missing.name)}, once "
            "(later runs open it from there)",
            file=sys.stderr,
            flush=True,
        )
        export_builtin(missing.name)
