"""Logs of the serving processes: text that clients sent is logged with its control characters
escaped.

The servers log what clients sent (tokens a model drops, error details). Written raw, an ESC
sequence would move the terminal's cursor or set its title, and a line feed would start a forged
log line; :class:`EscapingFormatter` writes them as escapes (``\\x1b``, ``\\n``). Every process
of the system logs through it: `cnmt launch` and `cnmt demo`, the cloud child and the edge
worker (:func:`configure_logging`).

A message is also cut to :data:`MAX_MESSAGE_CHARS` characters, saying how many were left out:
a request can make a model drop thousands of tokens, and one warning must not write 16 KB per
request. Messages name counts, not lists; this bound is for those that do not (yet). A
traceback below a message is kept whole.

Two formats: text for people, and JSON lines for machines (`cnmt launch --log-format json`, or
``CNMT_LOG_FORMAT=json``, which the child processes inherit): one object per record with its
time, level, logger and message, plus the record's structured ``fields`` (the gateway's
decision lines carry every number of the decision there).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import re
from typing import Any

LOG_FORMATS = ("text", "json")
LOG_FORMAT_ENV = "CNMT_LOG_FORMAT"

# C0 and C1 control characters and DEL; a line feed too (one log record, one line).
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
# Long enough for any message of the project's own, short enough for a terminal line or two.
MAX_MESSAGE_CHARS = 400


def escape_controls(text: str) -> str:
    """``text`` with control characters (ESC, CR, BEL, ...) written as escapes, so that text a
    client sent can be logged without steering the terminal or forging log lines."""
    return _CONTROL.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), text)


class EscapingFormatter(logging.Formatter):
    """A log formatter that writes control characters in messages as escapes and cuts long
    messages (see the module docstring)."""

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 (logging's name)
        record.message = bounded(escape_controls(record.message))
        return super().formatMessage(record)


def bounded(message: str, limit: int = MAX_MESSAGE_CHARS) -> str:
    """``message`` cut to ``limit`` characters, ending with how many were left out."""
    if len(message) <= limit:
        return message
    kept = limit - 40
    return f"{message[:kept]}... ({len(message) - kept:,} more characters)"


class JsonLinesFormatter(logging.Formatter):
    """One JSON object per record: ``time`` (UTC, ISO 8601), ``level``, ``logger``, ``process``
    (the text format's prefix: gateway, cloud, edge), ``message``, and the record's ``fields``
    (``extra={"fields": {...}}``) merged in. JSON escapes control characters by itself."""

    def __init__(self, process: str) -> None:
        super().__init__()
        self.process = process

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname.lower(),
            "logger": record.name,
            "process": self.process,
            "message": bounded(record.getMessage()),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            line.update(fields)
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False, allow_nan=False, default=str)


def configure_logging(format: str, log_format: str | None = None) -> None:
    """Warnings and errors to stderr, as text in ``format`` (control characters escaped) or,
    with ``log_format="json"`` (default: ``$CNMT_LOG_FORMAT``, else text), as JSON lines."""
    chosen = log_format or os.environ.get(LOG_FORMAT_ENV) or "text"
    if chosen not in LOG_FORMATS:
        chosen = "text"
    handler = logging.StreamHandler()
    if chosen == "json":
        handler.setFormatter(JsonLinesFormatter(format.split(":", 1)[0]))
    else:
        handler.setFormatter(EscapingFormatter(format))
    logging.basicConfig(level=logging.WARNING, handlers=[handler])
