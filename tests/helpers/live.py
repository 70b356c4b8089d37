"""One gateway in front of one scripted cloud on the loopback, for the live tests.

``gateway_and_cloud`` starts the cloud (a ``ScriptedTranslator`` unless the test gives it a
model), optionally a delaying link in front of it, then a gateway with doubles
(``servers.start_gateway``'s keywords), and yields a ``LiveGateway`` with an HTTP session;
leaving the block stops the gateway (which writes its state file, if it has one), the link and
the cloud, in that order, whatever the test body raised::

    async with gateway_and_cloud(TimedTranslator(CLOUD_TRUE), policy="cnmt") as live:
        answer = await live.translate("guten morgen")
        models = await live.get_json("/v1/models")
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from typing import Any

import aiohttp

from cnmt.datasets.link import RttTimeline
from cnmt.runtime.base import Translator
from cnmt.serving.gateway import Gateway
from cnmt.serving.launch import url
from cnmt.serving.proxy import DelayProxy
from helpers import client
from helpers.doubles import ScriptedTranslator
from helpers.servers import GatewayHandle, start_cloud, start_gateway


@dataclass
class LiveGateway:
    """A running gateway (``url``, and the ``gateway`` object to inspect or adjust), the URL of
    its cloud (``None`` without one) and a client session to talk to it."""

    handle: GatewayHandle
    cloud_url: str | None
    session: aiohttp.ClientSession

    @property
    def gateway(self) -> Gateway:
        return self.handle.gateway

    @property
    def url(self) -> str:
        return self.handle.url

    async def post(self, data: Any) -> tuple[int, dict[str, Any], Any]:
        """POST to /v1/translate: the status, the headers and the answer's JSON."""
        return await client.post(self.session, self.url, data)

    async def translate(self, text: str) -> dict[str, Any]:
        """The answer to one translation request, which must succeed."""
        status, _, answer = await self.post({"text": text})
        assert status == 200, answer
        return answer

    async def get_json(self, path: str) -> Any:
        return await client.get_json(self.session, self.url + path)

    async def metrics(self) -> dict[str, float]:
        """``/metrics``, sample value by ``name{label="value",...}``."""
        return client.metric_samples(await client.get_text(self.session, self.url + "/metrics"))


@asynccontextmanager
async def gateway_and_cloud(
    cloud: Translator | None = None,
    *,
    with_cloud: bool = True,
    link_rtt_s: float | None = None,
    **gateway: Any,
) -> AsyncIterator[LiveGateway]:
    """A scripted cloud serving ``cloud`` (default: a ``ScriptedTranslator`` labelled
    ``cloud``; none at all with ``with_cloud=False``), a link adding ``link_rtt_s`` of round
    trip in front of it if given, and a gateway in front of both built by
    ``start_gateway(cloud_url, **gateway)``."""
    async with AsyncExitStack() as stack:
        cloud_url = None
        if with_cloud:
            runner, cloud_url = await start_cloud(
                translator=cloud or ScriptedTranslator(label="cloud")
            )
            stack.push_async_callback(runner.cleanup)
            if link_rtt_s is not None:
                port = int(cloud_url.rsplit(":", 1)[1])
                link = DelayProxy(("127.0.0.1", port), RttTimeline.constant(link_rtt_s))
                await link.start()
                stack.push_async_callback(link.close)
                cloud_url = url("127.0.0.1", link.port)
        handle = await start_gateway(cloud_url, **gateway)
        stack.push_async_callback(handle.close)
        session = await stack.enter_async_context(aiohttp.ClientSession())
        yield LiveGateway(handle, cloud_url, session)


# The type of the ``gateway_and_cloud`` fixture, for a test's signature.
GatewayAndCloud = Callable[..., AbstractAsyncContextManager[LiveGateway]]
