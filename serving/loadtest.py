"""A load generator for the gateway (or a cloud server): real sentences, bounded, loopback only.

Two ways to send:

* closed loop (``concurrency=C``): C clients, each sends its next sentence as soon as its
  previous answer arrived; measures capacity.
* open loop (``rate=R``): requests start at R per second on a fixed schedule, whatever the
  answers do (a late answer does not delay the next request); measures behaviour under a load
  the gateway does not control.

Both stop after ``count`` requests or ``duration_s`` seconds, whichever comes first, and wait
for every answer (each bounded by ``timeout_s``). Every request ends in exactly one of: ok
(200 with a translation), rejected (an explicit 503 with Retry-After: the gateway shed it),
failed (any other HTTP status) or lost (no answer at all: connection error or timeout), so
``sent == ok + rejected + failed + lost``.

Several gateways (``base_url`` a list, `cnmt loadtest --url A --url B`) share the load in turn:
closed-loop client ``k`` talks to gateway ``k mod G``, open-loop request ``i`` goes to gateway
``i mod G``; the report covers them all (e.g. many edge gateways in front of one cloud).

Against a gateway, the report also gives, per device, the median relative error of the
gateway's predicted execution time (``predicted_exec_ms`` vs ``exec_ms`` in its answers): how
well its latency models describe what the devices really do.

With ``requests_out`` every request is also written as one JSON line (:func:`request_record`):
when it was sent, its status, where it ran and the answer's prediction fields, so that each of
the gateway's decisions can be read back next to what it measured.

Only loopback addresses are accepted: this is a tool for a system you launched on this machine,
never for someone else's server. Before the first request each gateway's ``/health`` is asked
once, so that a gateway that is not running is reported as such instead of as N lost requests.
"""

from __future__ import annotations

import asyncio
import collections
import ipaddress
import json
import math
import random
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp

from cnmt.errors import ConfigError
from cnmt.files import read_lines


def check_loopback(base_url: str) -> None:
    """ConfigError unless ``base_url`` is http(s) to a host that resolves only to loopback."""
    parts = urlsplit(base_url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"--url: expected http://HOST:PORT, got {base_url!r}")
    host = parts.hostname
    try:
        infos = socket.getaddrinfo(host, parts.port or 80, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise ConfigError(f"--url: cannot resolve {host!r}: {exc}") from None
    addresses = {info[4][0] for info in infos}
    outside = sorted(a for a in addresses if not ipaddress.ip_address(a.split("%")[0]).is_loopback)
    if outside:
        raise ConfigError(
            f"--url: {host} resolves to {', '.join(outside)}, which is not a loopback address; "
            "cnmt loadtest only loads servers on this machine (127.0.0.1, ::1, localhost)"
        )


def read_sentences(
    path: str | Path, limit: int | None = None, seed: int | None = None
) -> list[str]:
    """Non-empty lines of a corpus file, optionally shuffled with ``seed``, at most ``limit``."""
    lines = read_lines(path, what="corpus file (one sentence per line)")
    sentences = [line.strip() for line in lines if line.strip()]
    if not sentences:
        raise ConfigError(f"{path}: the corpus has no non-empty line")
    if seed is not None:
        random.Random(seed).shuffle(sentences)
    return sentences[:limit] if limit else sentences


# The fields of a gateway's answer that describe its decision, kept per request (--requests-out).
DECISION_FIELDS = (
    "request_id",
    "device",
    "decided",
    "fallback",
    "n_tokens",
    "m_estimated",
    "m_actual",
    "latency_ms",
    "exec_ms",
    "wait_ms",
    "predicted_ms",
    "predicted_exec_ms",
    "rtt_estimate_ms",
    "edge_backlog_ms",
    "cloud_wait_estimate_ms",
)


@dataclass
class Outcome:
    status: int | None  # None: no answer (lost)
    latency_s: float
    device: str | None = None
    fallback: str | None = None
    error: str | None = None
    exec_s: float | None = None  # a gateway's answer: the device's execution time
    predicted_exec_s: float | None = None  # and what its latency model predicted
    sent_at_s: float = 0.0  # seconds since the load test started
    url: str = ""
    answer: dict[str, object] = field(default_factory=dict)  # its DECISION_FIELDS


def request_record(outcome: Outcome) -> dict[str, object]:
    """One request as a JSON line of ``--requests-out``: when it was sent (seconds since the
    start), to which gateway, its HTTP status (``null``: no answer), the client-side latency, an
    error if any, and the decision fields of the gateway's answer."""
    return {
        "sent_at_s": round(outcome.sent_at_s, 6),
        "url": outcome.url,
        "status": outcome.status,
        "client_latency_ms": round(outcome.latency_s * 1000.0, 3),
        "error": outcome.error,
        **outcome.answer,
    }


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (0..100) by linear interpolation; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100.0
    low, high = math.floor(position), math.ceil(position)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


@dataclass
class LoadReport:
    """What a load test measured (client side: latency from sending to the full answer)."""

    url: str
    mode: str
    sent: int
    ok: int
    rejected: int
    failed: int
    lost: int
    elapsed_s: float
    throughput_rps: float
    latency_ms: dict[str, float | None]
    devices: dict[str, int]
    fallbacks: dict[str, int]
    errors: dict[str, int] = field(default_factory=dict)
    # per device: median |predicted - measured| / measured execution time, and over how many
    prediction_error: dict[str, float] = field(default_factory=dict)
    predictions: dict[str, int] = field(default_factory=dict)
    # every request, in the order the answers came (not in the JSON report: --requests-out)
    outcomes: list[Outcome] = field(default_factory=list, repr=False)

    def to_json(self) -> str:
        report = asdict(self)
        del report["outcomes"]
        return json.dumps(report, indent=2, ensure_ascii=False)

    def write_requests(self, path: str | Path) -> int:
        """Every request as one JSON line (:func:`request_record`), in the order they were
        sent; returns how many."""
        ordered = sorted(self.outcomes, key=lambda o: o.sent_at_s)
        with open(path, "w", encoding="utf-8") as out:
            for outcome in ordered:
                out.write(json.dumps(request_record(outcome), ensure_ascii=False) + "\n")
        return len(ordered)

    def table(self) -> str:
        lat = self.latency_ms

        def ms(key: str) -> str:
            value = lat.get(key)
            return "-" if value is None else f"{value:.1f}"

        split = ", ".join(
            f"{d} {n} ({100.0 * n / max(self.ok, 1):.0f}%)" for d, n in sorted(self.devices.items())
        )
        rows = [
            f"target      {self.url}  ({self.mode})",
            f"requests    {self.sent} sent: {self.ok} ok, {self.rejected} rejected (503), "
            f"{self.failed} failed, {self.lost} lost",
            f"time        {self.elapsed_s:.2f} s, "
            f"throughput {self.throughput_rps:.2f} translations/s",
            f"latency ms  p50 {ms('p50')}  p95 {ms('p95')}  p99 {ms('p99')}  "
            f"mean {ms('mean')}  max {ms('max')}",
            f"devices     {split or '-'}",
        ]
        if self.prediction_error:
            rows.append(
                "predicted   median |error| of the execution time: "
                + ", ".join(
                    f"{d} {e:.0%} (of {self.predictions[d]})"
                    for d, e in sorted(self.prediction_error.items())
                )
            )
        if self.fallbacks:
            rows.append(
                "fallbacks   " + ", ".join(f"{r} {n}" for r, n in sorted(self.fallbacks.items()))
            )
        if self.errors:
            rows.append(
                "errors      " + "; ".join(f"{e} x{n}" for e, n in sorted(self.errors.items()))
            )
        return "\n".join(rows)


def summarize(url: str, mode: str, outcomes: list[Outcome], elapsed_s: float) -> LoadReport:
    ok = [o for o in outcomes if o.status == 200]
    latencies = [o.latency_s * 1000.0 for o in ok]
    errors = collections.Counter(o.error for o in outcomes if o.error)
    relative: dict[str, list[float]] = collections.defaultdict(list)
    for o in ok:
        if o.device and o.exec_s and o.predicted_exec_s is not None:
            relative[o.device].append(abs(o.predicted_exec_s - o.exec_s) / o.exec_s)
    return LoadReport(
        url=url,
        mode=mode,
        sent=len(outcomes),
        ok=len(ok),
        rejected=sum(1 for o in outcomes if o.status == 503),
        failed=sum(1 for o in outcomes if o.status not in (None, 200, 503)),
        lost=sum(1 for o in outcomes if o.status is None),
        elapsed_s=elapsed_s,
        throughput_rps=len(ok) / elapsed_s if elapsed_s > 0 else 0.0,
        latency_ms={
            "p50": percentile(latencies, 50),
            "p95": percentile(latencies, 95),
            "p99": percentile(latencies, 99),
            "mean": sum(latencies) / len(latencies) if latencies else None,
            "max": max(latencies) if latencies else None,
        },
        devices=dict(collections.Counter(o.device or "?" for o in ok)),
        fallbacks=dict(collections.Counter(o.fallback for o in ok if o.fallback)),
        errors=dict(errors),
        prediction_error={d: percentile(v, 50) or 0.0 for d, v in sorted(relative.items())},
        predictions={d: len(v) for d, v in sorted(relative.items())},
        outcomes=outcomes,
    )


async def check_reachable(session: aiohttp.ClientSession, base_url: str, timeout_s: float) -> None:
    """ConfigError naming ``base_url`` when nothing answers its ``/health``: a load test of a
    gateway that is not running says so, instead of reporting every request lost."""
    url = base_url.rstrip("/") + "/health"
    try:
        async with session.get(url, timeout=aiohttp.ClientTimeout(total=timeout_s)) as response:
            await response.read()
    except TimeoutError:
        raise ConfigError(
            f"the gateway is not reachable at {base_url}: no answer to GET /health within "
            f"{timeout_s:g} s; is it running (`cnmt launch`), and is --url right?"
        ) from None
    except aiohttp.ClientError as exc:
        raise ConfigError(
            f"the gateway is not reachable at {base_url} ({type(exc).__name__}: {exc}); start "
            "one with `cnmt launch` (it prints its URL) or give its address with --url"
        ) from None


async def send_request(
    session: aiohttp.ClientSession, endpoint: str, text: str, timeout_s: float
) -> Outcome:
    started = time.perf_counter()
    try:
        async with session.post(
            endpoint, json={"text": text}, timeout=aiohttp.ClientTimeout(total=timeout_s)
        ) as response:
            body = await response.read()
            status = response.status
    except TimeoutError:
        return Outcome(
            None, time.perf_counter() - started, error=f"no answer within {timeout_s:g} s"
        )
    except aiohttp.ClientError as exc:
        return Outcome(None, time.perf_counter() - started, error=type(exc).__name__)
    latency = time.perf_counter() - started
    try:
        data = json.loads(body)
    except ValueError:
        data = None
    if not isinstance(data, dict):
        data = {}
    if status == 200:
        return Outcome(
            status,
            latency,
            device=data.get("device"),
            fallback=data.get("fallback"),
            exec_s=_seconds(data.get("exec_ms")),
            predicted_exec_s=_seconds(data.get("predicted_exec_ms")),
            answer={k: data[k] for k in DECISION_FIELDS if k in data},
        )
    message = str(data.get("error", body[:80]))
    return Outcome(status, latency, error=f"HTTP {status}: {message[:120]}")


def _seconds(ms: object) -> float | None:
    """A gateway's milliseconds field as seconds; None if absent (a cloud's answer)."""
    if isinstance(ms, bool) or not isinstance(ms, int | float) or not math.isfinite(ms):
        return None
    return float(ms) / 1000.0


async def run_load(
    base_url: str | Sequence[str],
    sentences: Sequence[str],
    *,
    concurrency: int | None = None,
    rate: float | None = None,
    count: int | None = None,
    duration_s: float | None = None,
    timeout_s: float = 30.0,
    progress: Callable[[int], None] | None = None,
) -> LoadReport:
    """Load ``base_url``'s ``/v1/translate`` with ``sentences`` (cycled); see the module doc."""
    if (concurrency is None) == (rate is None):
        raise ConfigError("give exactly one of --concurrency (closed loop) and --rate (open loop)")
    if count is None and duration_s is None:
        raise ConfigError("give --count or --duration (or both): a load test must be bounded")
    if concurrency is not None and concurrency < 1:
        raise ConfigError(f"--concurrency: {concurrency} must be at least 1")
    if rate is not None and not rate > 0:
        raise ConfigError(f"--rate: {rate} must be positive (requests per second)")
    if count is not None and count < 1:
        raise ConfigError(f"--count: {count} must be at least 1")
    if duration_s is not None and not duration_s > 0:
        raise ConfigError(f"--duration: {duration_s} must be positive (seconds)")
    if not sentences:
        raise ConfigError("no sentences to send")
    urls = [base_url] if isinstance(base_url, str) else list(base_url)
    if not urls:
        raise ConfigError("give at least one --url")
    for one_url in urls:
        check_loopback(one_url)
    endpoints = [u.rstrip("/") + "/v1/translate" for u in urls]
    outcomes: list[Outcome] = []
    issued = 0
    started = time.perf_counter()

    def next_text() -> str | None:
        nonlocal issued
        if count is not None and issued >= count:
            return None
        if duration_s is not None and time.perf_counter() - started >= duration_s:
            return None
        text = sentences[issued % len(sentences)]
        issued += 1
        return text

    async def send(endpoint: str, text: str) -> None:
        sent_at = time.perf_counter() - started
        outcome = await send_request(session, endpoint, text, timeout_s)
        outcome.sent_at_s, outcome.url = sent_at, endpoint
        outcomes.append(outcome)
        if progress is not None:
            progress(1)

    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        for one_url in urls:
            await check_reachable(session, one_url, min(timeout_s, 10.0))
        started = time.perf_counter()
        if concurrency is not None:
            mode = f"closed loop, concurrency {concurrency}"

            async def client(endpoint: str) -> None:
                while (text := next_text()) is not None:
                    await send(endpoint, text)

            await asyncio.gather(
                *(client(endpoints[k % len(endpoints)]) for k in range(concurrency))
            )
        else:
            assert rate is not None
            mode = f"open loop, {rate:g} requests/s"
            tasks: list[asyncio.Task[None]] = []

            async def one(text: str, endpoint: str) -> None:
                await send(endpoint, text)

            interval = 1.0 / rate
            while (text := next_text()) is not None:
                endpoint = endpoints[(issued - 1) % len(endpoints)]
                tasks.append(asyncio.create_task(one(text, endpoint)))
                due = started + issued * interval
                delay = due - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
            await asyncio.gather(*tasks)
    elapsed = time.perf_counter() - started
    if len(urls) > 1:
        mode += f", spread over {len(urls)} gateways"
    return summarize(" ".join(urls), mode, outcomes, elapsed)
