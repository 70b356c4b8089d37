"""Caches of a real model's output lengths, so a replay's M is what the model really produces.

A corpus' target side is a human translation; a model's greedy output can be shorter or
longer (or loop until its length limit). Running the model once over a corpus part and
caching each line's output length lets the replay use the model's true M while the length
model stays fitted on corpus lengths, which measures the difference between the two.
"""

from __future__ import annotations

import datetime as dt
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from cnmt.config import portable
from cnmt.errors import CnmtError, ConfigError
from cnmt.experiments.tokens import quiet_runtime_logs
from cnmt.files import read_json, read_lines, sha256_file, write_json

FORMAT = "cnmt-output-lengths/1"
FIX = "make it with `cnmt replay CONFIG --cache-outputs` (runs the model over the corpus part)"


def load_output_lengths(
    path: str, src_path: str, lines: int
) -> tuple[np.ndarray | None, np.ndarray]:
    """(N as the model encoded each line, or None if not cached; M it produced), from a cache
    made from exactly this ``src_path`` (same checksum and line count)."""
    data = read_json(path, what="output-length cache", fix=FIX, format=FORMAT)
    if (
        data.get("src_sha256") != sha256_file(src_path)
        or len(data.get("output_tokens", [])) != lines
    ):
        raise ConfigError(
            f"{path}: was made from another version of {src_path} (checksum or line count "
            f"differs); {FIX}"
        )
    sources = data.get("source_tokens")
    return (
        None if sources is None else np.asarray(sources, dtype=np.int64),
        np.asarray(data["output_tokens"], dtype=np.int64),
    )


def cache_output_lengths(
    model: str, src_path: str, out_path: str, limit: int | None = None
) -> dict[str, Any]:
    """Translate every line of ``src_path`` with ``model`` (via cnmt.runtime) and cache M per line.

    Empty lines get M = 0 without running the model. ``limit`` translates only the first lines
    (for a quick look; the replay needs the whole file and checks its line count).
    """
    from tqdm import tqdm

    from cnmt.exporters.builtins import ensure_exported
    from cnmt.runtime import load_translator

    ensure_exported(model)
    translator = load_translator(model)
    lines = read_lines(src_path, what="corpus file")
    if limit is not None:
        lines = lines[:limit]
    sources: list[int] = []
    lengths: list[int] = []
    refused: dict[str, int] = {}
    examples: list[dict[str, Any]] = []
    began = time.perf_counter()
    with quiet_runtime_logs():
        for text in tqdm(
            lines, desc=f"{model} over {Path(src_path).name}", unit="line", file=sys.stderr
        ):
            try:
                result = translator.translate(text)
            except CnmtError as exc:
                # Empty or over-long lines: a gateway would reject them too; never requests.
                reason = str(exc).split(":")[0][:60]
                refused[reason] = refused.get(reason, 0) + 1
                sources.append(0)
                lengths.append(0)
                continue
            sources.append(int(result.source_tokens))
            lengths.append(int(result.output_tokens))
            if len(examples) < 5:
                examples.append(
                    {
                        "src": text,
                        "output": result.text,
                        "n": result.source_tokens,
                        "m": result.output_tokens,
                    }
                )
    data = {
        "format": FORMAT,
        "model": model,
        "src": portable(str(src_path)),
        "src_sha256": sha256_file(src_path),
        "lines": len(lengths),
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "seconds": round(time.perf_counter() - began, 1),
        "max_output_tokens": max(lengths, default=0),
        "refused_lines": refused,
        "examples": examples,
        "source_tokens": sources,
        "output_tokens": lengths,
    }
    write_json(out_path, data, indent=None)
    return data
