"""Reading, writing and hashing the project's files: one way to do each, errors naming the file.

Every reader raises :class:`~cnmt.errors.ConfigError` whose message names the file, says what
kind of file was expected and how to make or fix one. Text is always UTF-8; a bad byte names
its line.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from pathlib import Path
from typing import Any

from cnmt.errors import ConfigError

PathLike = str | os.PathLike[str]


def read_json(
    path: PathLike,
    *,
    what: str,
    fix: str,
    format: str | tuple[str, ...] | None = None,
    expect: type = dict,
) -> Any:
    """The JSON value in ``path``, which must be an instance of ``expect``.

    ``what`` names the kind of file ("device profile"), ``fix`` says how to make a good one
    (it ends every message). With ``format``, the value must be an object whose ``format`` key
    equals it (the project's versioned files).
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such {what}; {fix}") from None
    except UnicodeDecodeError as exc:
        line = path.read_bytes()[: exc.start].count(b"\n") + 1
        raise ConfigError(f"{path}:{line}: not a {what}: not UTF-8 text; {fix}") from None
    except OSError as exc:
        raise ConfigError(
            f"{path}: cannot read this {what}: {exc.strerror or exc}; {fix}"
        ) from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(
            f"{path}:{exc.lineno}:{exc.colno}: not a {what}: invalid JSON ({exc.msg}); {fix}"
        ) from None
    except RecursionError:
        raise ConfigError(f"{path}: not a {what}: JSON nested too deeply; {fix}") from None
    except ValueError as exc:  # an integer of more digits than Python converts
        raise ConfigError(f"{path}: not a {what}: {str(exc)[:120]}; {fix}") from None
    if format is not None:
        accepted = (format,) if isinstance(format, str) else format
        if not isinstance(data, dict) or data.get("format") not in accepted:
            expected = " or ".join(repr(f) for f in accepted)
            raise ConfigError(f"{path}: not a {what} (expected format {expected}); {fix}")
    if not isinstance(data, expect):
        raise ConfigError(
            f"{path}: not a {what}: expected a JSON {_json_kind(expect)}, got "
            f"{_json_kind(type(data))}; {fix}"
        )
    return data


def _json_kind(tp: type) -> str:
    return {dict: "object", list: "array", str: "string"}.get(tp, tp.__name__)


def write_json(path: PathLike, data: Any, *, indent: int | None = 1, strict: bool = False) -> Path:
    """Write ``data`` as UTF-8 JSON, atomically (a reader never sees half a file), creating
    the folder if needed; ConfigError naming the path if it cannot be written. ``strict``
    refuses (ConfigError) data holding NaN or Infinity, which are not JSON."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        text = json.dumps(data, indent=indent, ensure_ascii=False, allow_nan=not strict) + "\n"
    except ValueError as exc:
        raise ConfigError(f"{path}: not written: the data holds {exc}") from None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):  # e.g. NotADirectoryError: no tmp was written
            tmp.unlink(missing_ok=True)
        raise ConfigError(f"{path}: cannot write it: {exc.strerror or exc}") from None
    return path


def read_lines(path: PathLike, *, what: str = "text file") -> list[str]:
    """The lines of a UTF-8 text file without their line endings (a final newline ends the
    last line, it does not start another)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such {what}") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read this {what}: {exc.strerror or exc}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise ConfigError(
            f"{path}:{line}: not UTF-8 text (byte {exc.start}); not a {what}"
        ) from None
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [line.rstrip("\r") for line in lines]


def sha256_file(path: PathLike) -> str:
    """The sha256 of a file's bytes, read in blocks (weights files are large)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
