"""Warnings a model repeats for many requests (source tokens it drops, say), counted and logged
at most once a minute.

A warning that fires once per request would fill a terminal (and a load test's progress bar):
the first occurrence is logged at once, later ones are only counted and summed into one line
per interval (``... in 37 more requests in the last 60 s, 41 since start``). The totals are
kept per process (:func:`totals`) for a server to export as a metric.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence

LOG_INTERVAL_S = 60.0
# A logged list of tokens shows at most this many, each cut to this many characters.
SHOWN_ITEMS = 10
SHOWN_CHARS = 24


def shorten(items: Sequence[str]) -> str:
    """``items`` for a log line of bounded length: the first few, each cut short, and a count
    of the rest."""
    shown = [
        item if len(item) <= SHOWN_CHARS else item[: SHOWN_CHARS - 1] + "…"
        for item in items[:SHOWN_ITEMS]
    ]
    rest = len(items) - len(shown)
    return " ".join(shown) + (f" (and {rest} more)" if rest > 0 else "")


class RepeatedWarnings:
    """Counts each (model, kind) of warning; logs the first at once, then at most one line per
    ``interval_s`` with how many came since the last line. Thread-safe; ``clock`` is injected
    for tests."""

    def __init__(
        self,
        logger: logging.Logger,
        interval_s: float = LOG_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.logger = logger
        self.interval_s = interval_s
        self.clock = clock
        self._lock = threading.Lock()
        self._seen: Counter[tuple[str, str]] = Counter()
        self._unlogged: Counter[tuple[str, str]] = Counter()
        self._logged_at: dict[tuple[str, str], float] = {}

    def seen(self, model: str, kind: str) -> None:
        """Count one occurrence without logging it (a gateway counting what its tokenizer
        sees; the worker that translates logs it)."""
        with self._lock:
            self._seen[(model, kind)] += 1

    def warn(self, model: str, kind: str, message: str) -> None:
        """Count one occurrence and log ``message`` if this kind was not logged within the
        interval (with the number of occurrences since the last line)."""
        key = (model, kind)
        with self._lock:
            self._seen[key] += 1
            self._unlogged[key] += 1
            now = self.clock()
            last = self._logged_at.get(key)
            if last is not None and now - last < self.interval_s:
                return
            count, self._unlogged[key] = self._unlogged[key], 0
            self._logged_at[key] = now
            total = self._seen[key]
        if last is None:
            note = f"; repeats are counted and logged at most once every {self.interval_s:g} s"
        else:
            note = (
                f"; {count} time(s) in the last {now - last:.0f} s, {total} since start "
                "(this is the latest)"
            )
        self.logger.warning("%s%s", message, note)

    def clear(self) -> None:
        """Forget every count and when each kind was last logged (a test's fresh start)."""
        with self._lock:
            self._seen.clear()
            self._unlogged.clear()
            self._logged_at.clear()

    def totals(self) -> dict[tuple[str, str], int]:
        """Every (model, kind) counted so far in this process, with its count."""
        with self._lock:
            return dict(self._seen)


MODEL_WARNINGS = RepeatedWarnings(logging.getLogger("cnmt.runtime"))
