"""A cloud that lies, against a learning gateway: what the client sees and what the gateway
learns, per class of lie, 20 lying replies each (docs/hardening.md, "A cloud that lies").

A fake cloud answers 10 requests honestly, then lies; the gateway offloads every request
(policy `cloud`) and learns with an `online` cloud latency model, an `online_linear` length
estimator and an `ewma` RTT estimator, a scripted edge model (the test doubles of
``tests/helpers/``). One line per class: the answers' statuses and where the
lying phase's requests ran, how many answers were not strict JSON, whether ``/v1/models`` is,
the cloud model's coefficients and the RTT estimate afterwards, how often a redirect was
followed, and the growth of this process's RSS (the fake cloud's 50 MB body is made before it
is measured).

    python -P benchmarks/lying_cloud.py

It needs only the installed package and the checkout's ``tests/`` folder (found beside this
file, or given with ``--tests``), so the same script measures another version of the code:
install that version elsewhere and put it first on ``PYTHONPATH`` with its own ``tests/``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

MiB = 1 << 20
ROUNDS = 20


def honest(text: str, at: float) -> dict[str, Any]:
    n = len(text.split())
    return {
        "translation": text.upper() + " .",
        "n_tokens": n,
        "m_tokens": n + 1,
        "exec_s": 0.0005,
        "received_at": at,
        "sent_at": time.time(),
        "wait_s": 0.0,
        "pending": 0,
        "batch_size": 1,
    }


def raw(key: str, value: str) -> Callable[[str, float], bytes]:
    """An honest reply with ``key`` written as ``value``, verbatim."""

    def make(text: str, at: float) -> bytes:
        fields = honest(text, at)
        encoded = json.dumps(fields)
        return encoded.replace(f'"{key}": {json.dumps(fields[key])}', f'"{key}": {value}').encode()

    return make


_big: list[bytes] = []


def big(text: str, at: float) -> bytes:
    if not _big:
        _big.append(b'{"translation": "' + b"x" * (50 * MiB) + b'", "n_tokens": 1}')
    return _big[0]


CLASSES: dict[str, Callable[[str, float], bytes] | None] = {
    "m_tokens=10**200": raw("m_tokens", str(10**200)),
    "m_tokens=10**400": raw("m_tokens", str(10**400)),
    "5000-digit integer": raw("n_tokens", "9" * 5000),
    "5000 [": lambda text, at: b"[" * 5000,
    "exec_s=-1e9": raw("exec_s", "-1e9"),
    "exec_s=+1e9": raw("exec_s", "1e9"),
    "m_tokens=10**6": raw("m_tokens", str(10**6)),
    "50 MB translation": big,
    "307 redirect": None,
}


def rss() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * 4096


def strict(text: str) -> bool:
    def refuse(constant: str) -> None:
        raise ValueError(constant)

    try:
        json.loads(text, parse_constant=refuse)
    except ValueError:
        return False
    return True


async def one(servers: Any, name: str) -> str:
    from aiohttp import ClientSession, web

    from cnmt.schedulers import Device
    from cnmt.schedulers.latency_models import ProfileLatency
    from cnmt.schema import NoParams
    from cnmt.serving.launch import serve_app, url

    state = {"lying": False, "hits": 0}

    async def translate(request: web.Request) -> web.Response:
        at = time.time()
        text = (await request.json())["text"]
        if not state["lying"]:
            return web.json_response(honest(text, at))
        lie = CLASSES[name]
        if lie is None:
            raise web.HTTPTemporaryRedirect(location="/elsewhere")
        return web.Response(body=lie(text, at), content_type="application/json")

    async def elsewhere(request: web.Request) -> web.Response:
        state["hits"] += 1  # where a followed redirect takes the user's text
        return web.json_response(honest("STOLEN", time.time()))

    async def health(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "service": "cnmt-cloud", "pending": 0})

    app = web.Application()
    app.router.add_post("/v1/translate", translate)
    app.router.add_post("/elsewhere", elsewhere)
    app.router.add_get("/health", health)
    runner, port = await serve_app(app, "127.0.0.1", 0)
    gw = await servers.start_gateway(
        url("127.0.0.1", port),
        policy="cloud",  # every request offloaded: each lie reaches the gateway
        latency=("online", {}),
        length=("online_linear", {"gamma": 1.0, "delta": 1.0}),
        rtt=("ewma", {}),
        probe_initial_s=0.01,
        probe_max_s=0.02,
    )
    gw.gateway.latency[Device.EDGE] = ProfileLatency(NoParams(), servers.EDGE_LATENCY)
    statuses: Counter[int] = Counter()
    ran: Counter[str] = Counter()  # device (fallback) of the lying phase's answers
    not_strict = stolen = 0
    big("", 0.0)  # the fake cloud's own 50 MB, made before the gateway is measured
    before = rss()
    try:
        async with ClientSession() as session:
            for _ in range(10):
                async with session.post(
                    f"{gw.url}/v1/translate", json={"text": "zai jian ni hao"}
                ) as r:
                    await r.read()
            state["lying"] = True
            for _ in range(ROUNDS):
                async with session.post(
                    f"{gw.url}/v1/translate", json={"text": "zai jian ni hao"}
                ) as r:
                    body = await r.text()
                statuses[r.status] += 1
                if r.status == 200 and strict(body):
                    answer = json.loads(body)
                    ran[f"{answer['device']} ({answer['fallback']})"] += 1
                not_strict += not strict(body)
                stolen += "STOLEN" in body
                await asyncio.sleep(0.03)  # past the probe's backoff: the next one is a trial
            async with session.get(f"{gw.url}/v1/models") as r:
                models_strict = strict(await r.text())
    finally:
        await gw.close()
        await runner.cleanup()
    cloud = gw.gateway.latency[Device.CLOUD].current()
    rtt_ms = gw.gateway.rtt_estimator.estimate(0.0) * 1000
    return (
        f"{name}: answers {dict(statuses)} {dict(ran)}; non-strict JSON answers {not_strict}; "
        f"/v1/models strict {models_strict}; cloud model a_m={cloud.a_m:.3g} b={cloud.b:.3g}; "
        f"RTT estimate {rtt_ms:.3g} ms; redirect followed {state['hits']}; STOLEN answers "
        f"{stolen}; RSS growth {(rss() - before) / MiB:.0f} MiB"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--tests", type=Path, default=Path(__file__).resolve().parent.parent / "tests"
    )
    args = parser.parse_args()
    sys.path.insert(0, str(args.tests))
    from helpers import aio, servers

    async def every_class() -> None:
        for name in CLASSES:
            print(await one(servers, name), flush=True)

    aio.run(every_class(), timeout_s=600)


if __name__ == "__main__":
    main()
