"""Property-based tests of both servers (hypothesis): whatever body a client sends, of at most
``max_body_bytes``, the answer is a 2xx or a JSON 4xx, never a 5xx, and the server still serves
afterwards.

Three generators: arbitrary JSON values (nested arrays and objects of any scalars), request
objects whose ``text`` has arbitrary code points (lone surrogates included, as JSON escapes or
raw), and arbitrary bytes. The gateway (policy ``cloud``, so that a text crosses both servers)
and the cloud run once for the module, in one event loop on a background thread, with the
scripted model of the serving doubles; each example is one HTTP request. ``CNMT_PROPERTY_EXAMPLES``
sets the examples per test and server (default 1000: about 6,000 requests in all).
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest
from helpers.client import get_json
from helpers.servers import start_cloud, start_gateway
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

pytestmark = pytest.mark.slow

EXAMPLES = int(os.environ.get("CNMT_PROPERTY_EXAMPLES", "1000"))
MAX_BODY_BYTES = 16384  # both servers' default max_body_bytes
PROPERTY = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


class Servers:
    """A cloud and a gateway in an event loop of their own thread; ``post`` sends one body."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.cloud, self.cloud_url = self.call(start_cloud())
        self.gateway = self.call(start_gateway(self.cloud_url, policy="cloud"))
        self.session: aiohttp.ClientSession = self.call(self._session())
        self.urls = {"gateway": self.gateway.url, "cloud": self.cloud_url}

    async def _session(self) -> aiohttp.ClientSession:
        return aiohttp.ClientSession()

    def call(self, coro: Any, timeout_s: float = 60.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout_s)

    def post(self, server: str, body: bytes) -> tuple[int, str, bytes]:
        async def send() -> tuple[int, str, bytes]:
            async with self.session.post(
                f"{self.urls[server]}/v1/translate",
                data=body,
                headers={"Content-Type": "application/json"},
            ) as response:
                return response.status, response.content_type, await response.read()

        return self.call(send())

    def close(self) -> None:
        self.call(self.session.close())
        self.call(self.gateway.close())
        self.call(self.cloud.cleanup())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@pytest.fixture(scope="module")
def servers() -> Iterator[Servers]:
    running = Servers()
    try:
        yield running
    finally:
        running.close()


def assert_answered_well(servers: Servers, server: str, body: bytes) -> None:
    if len(body) > MAX_BODY_BYTES or b"CRASH:" in body:  # CRASH: is the doubles' kill switch
        return
    status, content_type, payload = servers.post(server, body)
    assert 200 <= status < 300 or 400 <= status < 500, (status, payload[:300])
    assert content_type == "application/json", (status, content_type, payload[:300])
    answer = json.loads(payload)
    if status >= 400:
        assert isinstance(answer["error"], str) and answer["error"]
    else:
        assert isinstance(answer["translation"], str)


def assert_still_serving(servers: Servers) -> None:
    for server in ("gateway", "cloud"):
        status, _, payload = servers.post(server, json.dumps({"text": "still here"}).encode())
        assert status == 200, payload
    health = servers.call(get_json(servers.session, f"{servers.gateway.url}/health"))
    assert health["status"] == "ok" and health["cloud"] == "healthy" and health["pending"] == 0


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=5)
        | st.dictionaries(st.text(max_size=8) | st.just("text"), children, max_size=5)
    ),
    max_leaves=30,
)
# Every code point; surrogates (Cs) and control characters (Cc) drawn often on purpose (among
# all code points they would be rare).
any_code_point = (
    st.characters(codec=None, categories=None, exclude_categories=())
    | st.characters(categories=["Cs"])
    | st.characters(categories=["Cc"])
)
# Joined by hand: st.text() leaves out surrogates whatever its alphabet.
texts = st.lists(any_code_point, max_size=80).map("".join)
# Bodies up to max_body_bytes: a random chunk repeated to a random size near the limit (drawing
# 16 KB byte by byte would make each example slow).
near_the_limit = st.builds(
    lambda chunk, size: (chunk * (size // len(chunk) + 1))[:size],
    st.binary(min_size=1, max_size=256),
    st.integers(MAX_BODY_BYTES - 1024, MAX_BODY_BYTES),
)


# Valid JSON that stresses the parser: deep nesting, numbers of thousands of digits.
hostile_json = st.one_of(
    st.integers(1, 6000).map(lambda n: "[" * n + "]" * n),
    st.integers(1, 3000).map(lambda n: '{"a":' * n + "1" + "}" * n),
    st.integers(1, 6000).map(lambda n: '{"text": "x", "n": ' + "7" * n + "}"),
    st.integers(1, 6000).map(lambda n: '{"text": ' + "[" * n + '"x"' + "]" * n + "}"),
)


@pytest.mark.parametrize("server", ["gateway", "cloud"])
@PROPERTY
@given(text=json_values.map(json.dumps) | hostile_json)
def test_any_json_value_gets_a_2xx_or_a_json_4xx(servers: Servers, server: str, text: str) -> None:
    assert_answered_well(servers, server, text.encode())


@pytest.mark.parametrize("server", ["gateway", "cloud"])
@PROPERTY
@given(text=texts, ascii_escapes=st.booleans(), extra=st.dictionaries(st.text(max_size=5), texts))
def test_any_code_points_in_the_text_get_a_2xx_or_a_json_4xx(
    servers: Servers, server: str, text: str, ascii_escapes: bool, extra: dict[str, str]
) -> None:
    request = {**extra, "text": text}
    # ensure_ascii writes a lone surrogate as a \\udXXX escape; otherwise it is written raw,
    # with surrogatepass: bytes no UTF-8 decoder accepts.
    body = json.dumps(request, ensure_ascii=ascii_escapes).encode("utf-8", "surrogatepass")
    assert_answered_well(servers, server, body)


@pytest.mark.parametrize("server", ["gateway", "cloud"])
@PROPERTY
@given(body=st.binary(max_size=2048) | near_the_limit)
def test_any_bytes_get_a_2xx_or_a_json_4xx(servers: Servers, server: str, body: bytes) -> None:
    assert_answered_well(servers, server, body)


def test_both_servers_serve_after_the_properties(servers: Servers) -> None:
    """Runs after the property tests in this module (same fixture): both still answer."""
    assert_still_serving(servers)
