"""Strict JSON for what a peer sends: bounded size, depth and numbers, nothing but RFC 8259.

Python's :func:`json.loads` accepts more than JSON (``NaN``, ``Infinity``, ``-Infinity``),
turns a number too large for a float into ``inf`` without a word, recurses once per nesting
level (5,000 ``[`` exhaust the stack: ``RecursionError``) and converts integers of any length
up to 4,300 digits (each one quadratic work; beyond, ``ValueError``). A cloud that lies, or a
proxy that mangles, must cost the gateway neither a 500 nor a poisoned model, so what it
sends is read here: at most ``max_bytes`` read incrementally (:func:`read_limited`, a huge
body never sits in memory), nesting counted without recursion before parsing, integers of at
most :data:`MAX_INT_DIGITS` digits, no non-finite number. Each breach is one
:class:`StrictJsonError` whose message says what was wrong, short enough for a log line.

The standard library's parser does the parsing (its hooks refuse what JSON does not allow);
only the limits are ours.
"""

from __future__ import annotations

import json
import math
from typing import Any, NoReturn

from aiohttp import ClientResponse

from cnmt.serving.protocol import MAX_JSON_DEPTH, READ_CHUNK, json_depth

# The protocol's integers are token counts and queue lengths: 18 digits is already absurd,
# and an integer this long converts in microseconds.
MAX_INT_DIGITS = 18


class StrictJsonError(ValueError):
    """A peer's body that is not strict, bounded JSON; the message says why."""


class BodyTooLarge(StrictJsonError):
    """A peer's body over the limit (not read beyond it)."""


def _refuse_constant(name: str) -> NoReturn:
    raise StrictJsonError(f"`{name}` is not JSON (a non-finite number)")


def _bounded_int(digits: str) -> int:
    if len(digits.lstrip("-")) > MAX_INT_DIGITS:
        raise StrictJsonError(
            f"an integer of {len(digits.lstrip('-'))} digits (at most {MAX_INT_DIGITS})"
        )
    return int(digits)


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise StrictJsonError(f"the number {text[:40]}{'...' if len(text) > 40 else ''} overflows")
    return value


def loads(body: bytes, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """The JSON value of ``body`` (UTF-8), or StrictJsonError naming what breaks the rules."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise StrictJsonError(f"not UTF-8 (bad byte at offset {exc.start})") from None
    depth = json_depth(text)
    if depth > max_depth:
        raise StrictJsonError(f"nested {depth} levels deep (at most {max_depth})")
    try:
        return json.loads(
            text,
            parse_constant=_refuse_constant,
            parse_int=_bounded_int,
            parse_float=_finite_float,
        )
    except StrictJsonError:
        raise
    except json.JSONDecodeError as exc:
        raise StrictJsonError(f"not JSON ({exc.msg} at offset {exc.pos})") from None
    except (ValueError, RecursionError) as exc:  # a last line of defence: never a 500
        raise StrictJsonError(f"not usable JSON ({type(exc).__name__})") from None


async def read_limited(response: ClientResponse, max_bytes: int) -> bytes:
    """A response's body, refusing (BodyTooLarge) one over ``max_bytes`` as soon as its
    ``Content-Length`` says so or its chunks pass the limit: never more than ``max_bytes`` plus
    one chunk in memory."""
    declared = response.content_length
    if declared is not None and declared > max_bytes:
        raise BodyTooLarge(f"a body of {declared} bytes declared (at most {max_bytes})")
    chunks: list[bytes] = []
    size = 0
    while True:
        chunk = await response.content.read(READ_CHUNK)
        if not chunk:
            return b"".join(chunks)
        size += len(chunk)
        if size > max_bytes:
            raise BodyTooLarge(f"a body over {max_bytes} bytes")
        chunks.append(chunk)
