"""What every exporter offers: turn a model source into an exported model directory.

This module must not import torch at module level: the plugin registry imports exporter classes
in the core environment (no torch) to list them. Exporters import torch inside their methods
and call :func:`require_torch` first for a clear message when it is missing.
"""

from __future__ import annotations

import abc
import importlib.util
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from cnmt.errors import ConfigError
from cnmt.runtime.manifest import MANIFEST_NAME, PRECISIONS, Manifest
from cnmt.schema import NoParams

EXPORT_INSTALL_HINT = "install the export tools with: pip install 'cnmt[export]'"
DEFAULT_OPSET = 17


@dataclass(frozen=True)
class ExportRequest:
    """What `cnmt export` asks of an exporter; an exporter uses the sources its family supports.

    Exactly one of ``config`` (a model YAML: random weights), ``checkpoint`` (a trained weights
    file) and ``pretrained`` (a hub id or local directory) is normally set; ``None`` everywhere
    means the family's default source (e.g. the installed cn2en package).
    """

    out_dir: Path
    config: Path | None = None
    checkpoint: Path | None = None
    pretrained: str | None = None
    name: str | None = None
    opset: int | None = None  # None: the family's default_opset
    seed: int = 0
    validate: bool = True
    overwrite: bool = False
    # int8: the fp32 export, then exporters.quantize's step; the check sentences (and their
    # references) default to the family's built-in ones.
    precision: str = "fp32"
    check_texts: Path | None = None
    check_references: Path | None = None

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS or self.precision == "fp16":
            raise ConfigError(f"precision {self.precision!r}: export writes fp32 or int8")


class Exporter(abc.ABC):
    """Exports one model family to ONNX graphs + manifest; registered with ``name = family``."""

    family: ClassVar[str]
    name: ClassVar[str]
    default_opset: ClassVar[int] = DEFAULT_OPSET
    # The precisions export() writes; int8 means the family runs exporters.quantize's step
    # and its translator offers greedy_outputs and teacher_forced_picks for the check.
    precisions: ClassVar[tuple[str, ...]] = ("fp32",)

    def check_precision(self, precision: str) -> None:
        """ConfigError, before any work, when this family cannot export ``precision``."""
        if precision not in self.precisions:
            raise ConfigError(
                f"--precision {precision}: the {self.family} family exports "
                f"{', '.join(self.precisions)} only"
            )

    def opset_for(self, request: ExportRequest) -> int:
        """The opset to export with: the request's, else this family's default."""
        return request.opset if request.opset is not None else self.default_opset

    Params = NoParams

    def __init__(self, params: Any = None) -> None:
        self.params = params

    @abc.abstractmethod
    def export(self, request: ExportRequest) -> Manifest:
        """Write graphs, vocabulary files and ``manifest.json`` into ``request.out_dir``.

        Validates the graphs against torch when ``request.validate`` (the default) and raises
        :class:`~cnmt.errors.CnmtRuntimeError` when they disagree.
        """

    def export_builtin(
        self, out_dir: Path, name: str, pretrained: str | None = None, precision: str = "fp32"
    ) -> Manifest:
        """Export the family's default source into ``out_dir``, replacing it (the runtime's
        built-in model cache calls this; it holds no ExportRequest of its own)."""
        self.check_precision(precision)
        return self.export(
            ExportRequest(
                out_dir=Path(out_dir),
                pretrained=pretrained,
                name=name,
                overwrite=True,
                precision=precision,
            )
        )


def require_torch(what: str = "exporting models") -> None:
    """ConfigError with the install command when torch is missing (checked without importing)."""
    if importlib.util.find_spec("torch") is None:
        raise ConfigError(f"{what} needs torch, which is not installed; {EXPORT_INSTALL_HINT}")


def prepare_out_dir(out_dir: Path, overwrite: bool) -> Path:
    """A fresh staging folder beside ``out_dir``; :func:`publish` moves it into place.

    Exporting into a staging folder means an interrupted export never leaves a directory that
    looks complete (the manifest is the last file written, and the move is atomic).
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and not overwrite:
        if (out_dir / MANIFEST_NAME).exists() or any(out_dir.iterdir()):
            raise ConfigError(
                f"{out_dir}: already exists and is not empty; choose another --out or pass "
                "--overwrite"
            )
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    staging.chmod(0o755)  # mkdtemp makes it private; an exported model is meant to be shared
    return staging


def publish(staging: Path, out_dir: Path) -> None:
    """Move a finished staging folder to ``out_dir``, replacing what was there."""
    out_dir = Path(out_dir)
    if out_dir.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old.", dir=out_dir.parent))
        os.replace(out_dir, old / "x")
        os.replace(staging, out_dir)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(staging, out_dir)
