"""Prometheus metrics of the servers, through the official client library (prometheus-client).

Each server owns a :class:`prometheus_client.CollectorRegistry` (several servers may share a
process, in tests and in `cnmt launch`) and exposes it on ``GET /metrics`` in the Prometheus
text format. The bucket bounds below are the project's choices.
"""

from __future__ import annotations

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

# Seconds: from a fast local translation to a slow offload over a congested link.
LATENCY_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# Tokens, signed (estimate minus actual): under- and over-estimates of the output length.
LENGTH_ERROR_BUCKETS = (-20.0, -10.0, -5.0, -2.0, -1.0, 0.0, 1.0, 2.0, 5.0, 10.0, 20.0)
# Relative error of a predicted execution time, (predicted - observed) / observed, signed: -0.5
# predicted half the time it took, 1.0 twice it.
RELATIVE_ERROR_BUCKETS = (-0.75, -0.5, -0.3, -0.1, 0.0, 0.1, 0.3, 0.5, 1.0, 2.0, 4.0)


def response(registry: CollectorRegistry) -> web.Response:
    """``GET /metrics``: every metric of ``registry`` in the Prometheus text format."""
    return web.Response(
        body=generate_latest(registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
    )
