"""Reading the project's own JSON files (profiles, length models, caches) with clear errors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from cnmt.errors import ConfigError


def read_json(path: str | Path, *, what: str, missing: str, format: str) -> dict[str, Any]:
    """The JSON object in ``path``, whose ``format`` key must be ``format``.

    Every failure is a ConfigError naming the file: ``what`` names the kind of file ("device
    profile") and ``missing`` says how to make one when the file does not exist.
    """
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such {what}; {missing}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{path}: not a readable {what}: {exc}") from None
    if not isinstance(data, dict) or data.get("format") != format:
        raise ConfigError(f"{path}: not a {what} (expected format {format!r})")
    return data
