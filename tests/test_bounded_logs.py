"""One log line is at most a few hundred characters: a request whose text makes a model log
what it drops (8,150 unknown combining marks, as in the attack round) writes a bounded line
that says how much was left out, and an error naming unknown tokens names few and counts the
rest."""

from __future__ import annotations

import json
import logging

import aiohttp
import pytest
from helpers import doubles, servers
from helpers.aio import run

from cnmt.runtime.tokenizers import no_known_token
from cnmt.serving.logs import MAX_MESSAGE_CHARS, EscapingFormatter

MARKS = "a" + "\u0301" * 8150  # one "word" of 8,150 combining acute accents


def test_a_long_message_is_cut_and_says_how_much_was_left_out() -> None:
    formatter = EscapingFormatter("%(levelname)s %(message)s")
    record = logging.LogRecord("x", logging.WARNING, __file__, 1, "dropped %s", (MARKS,), None)
    line = formatter.format(record)
    assert len(line) <= MAX_MESSAGE_CHARS + 20
    assert line.endswith("more characters)")
    short = logging.LogRecord("x", logging.WARNING, __file__, 1, "dropped %s", ("ok",), None)
    assert formatter.format(short) == "WARNING dropped ok"


def test_the_edge_worker_logs_a_request_of_8150_combining_marks_in_one_short_line(
    capfd: pytest.CaptureFixture[str],
) -> None:
    async def body() -> None:
        gw = await servers.start_gateway(
            None, policy="edge", edge_factory=doubles.EchoingTranslator, max_body_bytes=65536
        )
        try:
            async with aiohttp.ClientSession() as s:
                payload = json.dumps({"text": f"ni {MARKS} hao"})
                async with s.post(f"{gw.url}/v1/translate", data=payload) as r:
                    assert r.status == 200
        finally:
            await gw.close()

    run(body())
    lines = [line for line in capfd.readouterr().err.splitlines() if "translating" in line]
    assert lines and all(len(line) <= MAX_MESSAGE_CHARS + 40 for line in lines), [
        len(line) for line in lines
    ]


def test_an_error_naming_unknown_tokens_is_bounded() -> None:
    message = no_known_token("cn2en", [MARKS, *(f"w{i}" for i in range(5000))])
    assert len(message) < 500
    assert "and 4991 more" in message and "(8151 chars)" in message
