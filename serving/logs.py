"""Logs of the serving processes: text that clients sent is logged with its control characters
escaped.

The servers log what clients sent (tokens a model drops, error details). Written raw, an ESC
sequence would move the terminal's cursor or set its title, and a line feed would start a forged
log line; :class:`EscapingFormatter` writes them as escapes (``\\x1b``, ``\\n``). Every process
of the system logs through it: `cnmt launch` and `cnmt demo`, the cloud child and the edge
worker (:func:`configure_logging`).
"""

from __future__ import annotations

import logging
import re

# C0 and C1 control characters and DEL; a line feed too (one log record, one line).
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def escape_controls(text: str) -> str:
    """``text`` with control characters (ESC, CR, BEL, ...) written as escapes, so that text a
    client sent can be logged without steering the terminal or forging log lines."""
    return _CONTROL.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), text)


class EscapingFormatter(logging.Formatter):
    """A log formatter that writes control characters in messages as escapes."""

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 (logging's name)
        record.message = escape_controls(record.message)
        return super().formatMessage(record)


def configure_logging(format: str) -> None:
    """Warnings and errors to stderr in ``format``, control characters escaped."""
    handler = logging.StreamHandler()
    handler.setFormatter(EscapingFormatter(format))
    logging.basicConfig(level=logging.WARNING, handlers=[handler])
