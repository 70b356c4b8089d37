"""Caches of a real model's output lengths, so a replay's M is what the model really produces.

A corpus' target side is a human translation; a model's greedy output can be shorter or
longer (or loop until its length limit). Running the model once over a corpus part and
caching each line's output length lets the replay use the model's true M while the length
model stays fitted on corpus lengths, which measures the difference between the two.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import logging
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from cnmt.errors import CnmtError
from cnmt.experiments.corpora import read_lines
from cnmt.experiments.lengthfit import portable

FORMAT = "cnmt-output-lengths/1"


@contextlib.contextmanager
def quiet_runtime_logs() -> Iterator[None]:
    """Silence the runtime's per-sentence warnings (e.g. cn2en's dropped unknown characters)
    during bulk work: over a corpus they would bury the progress bar."""
    runtime_logger = logging.getLogger("cnmt.runtime")
    previous = runtime_logger.level
    runtime_logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        runtime_logger.setLevel(previous)


def cache_output_lengths(model: str, src_path: str, out_path: str, limit: int | None = None) -> dict[str, Any]:
    """Translate every line of ``src_path`` with ``model`` (via cnmt.runtime) and cache M per line.

    Empty lines get M = 0 without running the model. ``limit`` translates only the first lines
    (for a quick look; the replay needs the whole file and checks its line count).
    """
    from tqdm import tqdm

    from cnmt.runtime import load_translator

    translator = load_translator(model)
    lines = read_lines(src_path)
    if limit is not None:
        lines = lines[:limit]
    sources: list[int] = []
    lengths: list[int] = []
    refused: dict[str, int] = {}
    examples: list[dict[str, Any]] = []
    began = time.perf_counter()
    with quiet_runtime_logs():
        for text in tqdm(lines, desc=f"{model} over {Path(src_path).name}", unit="line", file=sys.stderr):
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
                examples.append({"src": text, "output": result.text, "n": result.source_tokens, "m": result.output_tokens})
    data = {
        "format": FORMAT,
        "model": model,
        "src": portable(str(src_path)),
        "src_sha256": hashlib.sha256(Path(src_path).read_bytes()).hexdigest(),
        "lines": len(lengths),
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "seconds": round(time.perf_counter() - began, 1),
        "max_output_tokens": max(lengths, default=0),
        "refused_lines": refused,
        "examples": examples,
        "source_tokens": sources,
        "output_tokens": lengths,
    }
    Path(out_path).write_text(json.dumps(data, ensure_ascii=False) + "\n", encoding="utf-8")
    return data
