"""The client side of the serving tests: post a translation, read JSON and text, parse
``/metrics``, and a slow client (a slowloris) that sends its body a byte at a time."""

from __future__ import annotations

import asyncio
import re
from typing import Any

import aiohttp


async def post(
    session: aiohttp.ClientSession, base: str, data: Any
) -> tuple[int, dict[str, Any], Any]:
    """POST ``data`` (JSON, or raw bytes) to ``base``'s /v1/translate: the status, the headers
    and the answer's JSON (whatever its Content-Type)."""
    kwargs = {"json": data} if not isinstance(data, bytes) else {"data": data}
    async with session.post(f"{base}/v1/translate", **kwargs) as response:
        return response.status, dict(response.headers), await response.json(content_type=None)


async def get_json(session: aiohttp.ClientSession, address: str) -> Any:
    async with session.get(address) as response:
        assert response.status == 200
        return await response.json()


async def get_text(session: aiohttp.ClientSession, address: str) -> str:
    async with session.get(address) as response:
        assert response.status == 200
        return await response.text()


def metric_samples(text: str) -> dict[str, float]:
    """``/metrics`` parsed with prometheus-client's own parser: sample value by
    ``name{label="value",...}`` (labels sorted; no braces without labels)."""
    from prometheus_client.parser import text_string_to_metric_families

    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            samples[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return samples


def host_port(base: str) -> tuple[str, int]:
    host, port = base.removeprefix("http://").rsplit(":", 1)
    return host, int(port)


async def slow_body(base: str, declared: int, every_s: float, stop: asyncio.Event) -> bytes:
    """A slowloris: headers at once, then the body one byte per ``every_s`` until the server
    answers or closes, or ``stop``; returns what the server sent back."""
    host, port = host_port(base)
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(
        f"POST /v1/translate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Content-Length: {declared}\r\n\r\n".encode()
    )
    answer = asyncio.ensure_future(read_answer(reader))
    try:
        for _ in range(declared):
            if stop.is_set() or answer.done():
                break
            writer.write(b" ")
            await writer.drain()
            await asyncio.wait([answer], timeout=every_s)
    except ConnectionError:
        pass  # closed by the server: the answer, if any, is in the reader's buffer
    try:
        return await asyncio.wait_for(answer, 5.0)
    except (ConnectionError, TimeoutError, asyncio.IncompleteReadError):
        return b""
    finally:
        writer.close()


async def read_answer(reader: asyncio.StreamReader) -> bytes:
    """One HTTP answer: its head and its Content-Length body."""
    head = await reader.readuntil(b"\r\n\r\n")
    length = re.search(rb"Content-Length: (\d+)", head, re.IGNORECASE)
    return head + (await reader.readexactly(int(length[1])) if length else b"")
