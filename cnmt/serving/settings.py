"""The YAML sections of a serving config: ``gateway``, ``cloud`` and ``link``.

A config may hold any of the three; ``cnmt launch`` starts what it finds. The scheduler
components the gateway uses are the usual component sections (``length_estimator``,
``device_policy``, ``rtt_estimator``). Port 0 means "any free port".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal
from urllib.parse import urlsplit

from cnmt.serving.ray_settings import RayCloudSettings

CPU = "CPUExecutionProvider"


def _check_port(port: int) -> None:
    if not 0 <= port <= 65535:
        raise ValueError(f"port {port} out of range 0..65535 (0 = any free port)")


def _check_positive(**values: float) -> None:
    for key, value in values.items():
        if not value > 0:
            raise ValueError(f"{key} must be positive, got {value}")


@dataclass(frozen=True)
class GatewaySettings:
    """The edge gateway: where it listens, its model, its cloud, its limits.

    ``edge_profile``/``cloud_profile`` are device profiles (`cnmt profile`) of the gateway's
    model: their fits are the latency models the device policy compares, and the edge
    profile's CPU quota is applied to the gateway's local translation worker, so the live
    gateway faces the same edge/cloud contrast as the profile. ``cloud_url`` defaults to the
    link (or cloud) that the same config launches. ``cloud_timeout_s`` bounds a cloud exchange;
    past it the request is translated locally. ``max_pending`` bounds the requests inside the
    gateway; more get 503 with ``Retry-After: retry_after_s``.
    """

    edge_profile: str
    cloud_profile: str
    host: str = "127.0.0.1"
    port: int = 8080
    model: str = "cn2en"
    providers: tuple[str, ...] = (CPU,)
    threads: int = 1
    cloud_url: str | None = None
    cloud_timeout_s: float = 2.0
    max_pending: int = 32
    retry_after_s: int = 1
    max_body_bytes: int = 16384
    allow_unthrottled: bool = False
    probe_initial_s: float = 0.25
    probe_max_s: float = 5.0
    bandwidth_bps: float = 100e6

    def __post_init__(self) -> None:
        _check_port(self.port)
        _check_positive(
            threads=self.threads,
            cloud_timeout_s=self.cloud_timeout_s,
            max_pending=self.max_pending,
            retry_after_s=self.retry_after_s,
            max_body_bytes=self.max_body_bytes,
            probe_initial_s=self.probe_initial_s,
            probe_max_s=self.probe_max_s,
            bandwidth_bps=self.bandwidth_bps,
        )
        if self.probe_max_s < self.probe_initial_s:
            raise ValueError("probe_max_s must be at least probe_initial_s")
        if self.cloud_url is not None:
            check_http_url(self.cloud_url, "cloud_url")


@dataclass(frozen=True)
class CloudSettings:
    """The cloud translation server.

    ``workers`` translations run at once (each with its own loaded model); ``max_pending``
    bounds the requests waiting or running, beyond which it answers 503. With
    ``reuse_port: true`` several `cnmt launch` processes can serve the same port (stateless
    replicas behind one address, balanced by the kernel).

    ``engine: ray`` serves the same protocol from a Ray Serve deployment instead (replicas,
    batching, a cluster), configured by the ``ray`` mapping (:class:`RayCloudSettings`);
    ``workers`` and ``reuse_port`` are then Ray's business and must stay unset.
    """

    host: str = "127.0.0.1"
    port: int = 8081
    model: str = "cn2en"
    providers: tuple[str, ...] = (CPU,)
    threads: int = 1
    workers: int = 1
    max_pending: int = 64
    retry_after_s: int = 1
    max_body_bytes: int = 16384
    reuse_port: bool = False
    engine: Literal["aiohttp", "ray"] = "aiohttp"
    ray: RayCloudSettings | None = None

    def __post_init__(self) -> None:
        _check_port(self.port)
        _check_positive(
            threads=self.threads,
            workers=self.workers,
            max_pending=self.max_pending,
            retry_after_s=self.retry_after_s,
            max_body_bytes=self.max_body_bytes,
        )
        if self.engine == "aiohttp" and self.ray is not None:
            raise ValueError("ray: only used with engine: ray (set engine: ray or remove it)")
        if self.engine == "ray":
            if self.workers != 1 or self.reuse_port:
                raise ValueError(
                    "workers and reuse_port are for engine: aiohttp; with engine: ray set "
                    "ray.num_replicas (or ray.autoscaling) instead"
                )
            if self.ray is None:
                object.__setattr__(self, "ray", RayCloudSettings())


@dataclass(frozen=True)
class LinkSettings:
    """The emulated gateway-cloud link: a TCP proxy that delays every byte by RTT/2 each way.

    Give either a constant ``rtt_ms`` or a measured ``trace`` (one RTT in milliseconds per line
    as in the tyrell traces, or RIPE Atlas CSV/JSON; ``trace_format`` auto-detects); its
    answered pings are replayed in order from sample ``trace_start``, each holding for
    ``trace_step_s`` seconds (real time, whatever the trace's own sampling interval), looping
    at the end. ``bandwidth_bps`` (optional) also limits each
    direction's throughput. ``upstream`` (``host:port``) defaults to the cloud that the same
    config launches.
    """

    host: str = "127.0.0.1"
    port: int = 8082
    upstream: str | None = None
    rtt_ms: float | None = None
    trace: str | None = None
    trace_format: Literal["auto", "plain", "ripe-csv", "ripe-json"] = "auto"
    trace_step_s: float = 1.0
    trace_start: int = 0
    bandwidth_bps: float | None = None

    def __post_init__(self) -> None:
        _check_port(self.port)
        if (self.rtt_ms is None) == (self.trace is None):
            raise ValueError("give exactly one of rtt_ms (a constant RTT) and trace (a file)")
        if self.rtt_ms is not None and self.rtt_ms < 0:
            raise ValueError(f"rtt_ms must be >= 0, got {self.rtt_ms}")
        _check_positive(trace_step_s=self.trace_step_s)
        if self.trace_start < 0:
            raise ValueError(f"trace_start must be >= 0, got {self.trace_start}")
        if self.bandwidth_bps is not None:
            _check_positive(bandwidth_bps=self.bandwidth_bps)
        if self.upstream is not None:
            split_host_port(self.upstream, "upstream")


def split_host_port(value: str, key: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) <= 65535:
        raise ValueError(f"{key}: expected host:port (e.g. 127.0.0.1:8081), got {value!r}")
    return host.strip("[]"), int(port)


def check_http_url(value: str, key: str) -> None:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(
            f"{key}: expected an http:// URL (e.g. http://127.0.0.1:8082), got {value!r}"
        )
