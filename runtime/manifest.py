"""The export manifest: ``manifest.json``, the description of an exported model directory.

``cnmt export`` writes one next to the ONNX graphs and vocabulary files; every runtime family
reads it to find its graphs, their input/output names, the tokenizer files and special token
ids. Paths inside a manifest are relative to the model directory, so a directory can be moved
or copied to another machine as a whole.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cnmt.errors import ConfigError
from cnmt.files import read_json, write_json
from cnmt.schema import build, to_plain

MANIFEST_NAME = "manifest.json"
FORMAT_VERSION = 1
# The longest input or output a manifest may declare: longer than any model of this project
# accepts (Marian's positional tables hold 512), and short enough that one decode cannot run
# for minutes. A larger value is a corrupt or hostile manifest, not a model.
MAX_TOKENS_LIMIT = 4096
# How the graphs store their weights: fp32 as exported, int8 (`cnmt export --precision int8`,
# ONNX Runtime dynamic quantization) or fp16 (written by scripts/gpu-check for a GPU); inputs
# and outputs stay fp32 in every case, so the decode loops need no change.
PRECISIONS = ("fp32", "int8", "fp16")


@dataclass(frozen=True)
class Manifest:
    """What an exported model directory holds.

    ``graphs`` maps a graph role (``encoder``, ``decoder``, ``decoder_with_past``, ...) to its
    ONNX file; ``inputs``/``outputs`` map the same roles to the graph's tensor names in order.
    ``files`` maps a tokenizer or vocabulary role (``source_vocab``, ``bpe_codes``, ...) to a
    file. ``special_tokens`` holds the ids of ``bos``/``eos``/``pad``/``unk`` (those a family
    uses). ``source_checksum`` is the sha256 of the source weights the graphs were exported from.
    ``precision`` is how the graphs hold their weights (:data:`PRECISIONS`); a manifest
    written before precisions existed reads as ``fp32``. ``extra`` holds family specifics
    (dimensions, tokenizer options; for int8, how it was quantized and checked).
    """

    family: str
    name: str
    graphs: dict[str, str]
    inputs: dict[str, list[str]]
    outputs: dict[str, list[str]]
    files: dict[str, str]
    special_tokens: dict[str, int]
    opset: int
    source_checksum: str
    max_source_tokens: int
    max_output_tokens: int
    format_version: int = FORMAT_VERSION
    cnmt_version: str = ""
    precision: str = "fp32"
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.format_version != FORMAT_VERSION:
            raise ValueError(
                f"format_version {self.format_version} is not supported (this cnmt reads "
                f"{FORMAT_VERSION}); re-export the model with this version of `cnmt export`"
            )
        if self.precision not in PRECISIONS:
            raise ValueError(
                f"precision is {self.precision!r}; this cnmt reads {', '.join(PRECISIONS)}"
            )
        for key in ("max_source_tokens", "max_output_tokens"):
            value = getattr(self, key)
            if not 1 <= value <= MAX_TOKENS_LIMIT:
                raise ValueError(f"{key} is {value}, must be between 1 and {MAX_TOKENS_LIMIT}")
        for token, value in self.special_tokens.items():
            if value < 0:
                raise ValueError(f"special_tokens.{token} is {value}, a token id must be >= 0")
        for role in self.graphs:
            if role not in self.inputs or role not in self.outputs:
                raise ValueError(f"graph {role!r} has no entry in `inputs` and `outputs`")

    def special(self, token: str) -> int:
        """The id of special token ``token`` (``bos``, ``eos``, ``pad``, ``unk``)."""
        try:
            return self.special_tokens[token]
        except KeyError:
            known = ", ".join(sorted(self.special_tokens)) or "(none)"
            raise ConfigError(
                f"manifest of {self.name!r}: no special token {token!r} (has: {known}); "
                "re-export the model"
            ) from None


def graph_path(model_dir: str | os.PathLike[str], manifest: Manifest, role: str) -> Path:
    """The ONNX file of graph ``role``; ConfigError listing the roles the manifest has."""
    return _entry(model_dir, manifest, manifest.graphs, "graph", role)


def file_path(model_dir: str | os.PathLike[str], manifest: Manifest, role: str) -> Path:
    """The tokenizer/vocabulary file of ``role``; ConfigError listing the roles it has."""
    return _entry(model_dir, manifest, manifest.files, "file", role)


def _entry(
    model_dir: str | os.PathLike[str],
    manifest: Manifest,
    table: Mapping[str, str],
    what: str,
    role: str,
) -> Path:
    try:
        return Path(model_dir) / table[role]
    except KeyError:
        known = ", ".join(sorted(table)) or "(none)"
        raise ConfigError(
            f"{Path(model_dir) / MANIFEST_NAME}: no {what} {role!r} (has: {known}); the "
            f"{manifest.family!r} family needs it: re-export the model with `cnmt export`"
        ) from None


def load_manifest(model_dir: str | os.PathLike[str]) -> Manifest:
    """Read and check ``model_dir/manifest.json`` and that every file it names exists."""
    folder = Path(model_dir)
    path = folder / MANIFEST_NAME
    fix = "export the model again with `cnmt export --family FAMILY ... --out DIR`"
    if not folder.is_dir():
        raise ConfigError(f"{folder}: no such model directory; {fix}")
    if not path.is_file():
        raise ConfigError(f"{path}: not found, so {folder} is not an exported model; {fix}")
    data = read_json(path, what="model manifest", fix=fix)
    try:
        manifest = build(Manifest, data, where=str(path))
    except ConfigError as exc:
        raise ConfigError(f"{exc}; {fix}") from None
    inside = folder.resolve()
    for kind, names in (("graph", manifest.graphs), ("file", manifest.files)):
        for role, relative in names.items():
            if Path(relative).is_absolute() or ".." in Path(relative).parts:
                raise ConfigError(
                    f"{path}: {kind} {role!r}: {relative!r} must be a path inside the model "
                    f"directory; {fix}"
                )
            # Symlinks resolved: a model directory must not read files from elsewhere.
            if not (folder / relative).resolve().is_relative_to(inside):
                raise ConfigError(
                    f"{path}: {kind} {role!r}: {relative!r} is a symlink that leads out of the "
                    f"model directory {folder}; copy the file into the directory instead"
                )
            if not (folder / relative).is_file():
                raise ConfigError(
                    f"{path}: {kind} {role!r}: {folder / relative} is missing; copy the whole "
                    f"model directory, or {fix}"
                )
    return manifest


def write_manifest(model_dir: str | os.PathLike[str], manifest: Manifest) -> Path:
    """Write ``manifest.json`` into ``model_dir`` (created if needed); returns its path."""
    folder = Path(model_dir)
    folder.mkdir(parents=True, exist_ok=True)
    return write_json(folder / MANIFEST_NAME, to_plain(manifest), indent=2)


def replace(manifest: Manifest, **changes: Any) -> Manifest:
    """A copy of ``manifest`` with some fields changed."""
    return dataclasses.replace(manifest, **changes)
