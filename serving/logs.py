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
"""

from __future__ import annotations

import logging
import re

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


def configure_logging(format: str) -> None:
    """Warnings and errors to stderr in ``format``, control characters escaped."""
    handler = logging.StreamHandler()
    handler.setFormatter(EscapingFormatter(format))
    logging.basicConfig(level=logging.WARNING, handlers=[handler])
