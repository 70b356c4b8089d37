"""The YAML sections of a serving config: ``gateway``, ``cloud``, ``link`` and ``clouds``.

A config may hold any of them; ``cnmt launch`` starts what it finds. ``cloud`` and ``link``
(with ``gateway.cloud_profile``, ``gateway.cloud_url`` and ``gateway.cloud_workers``) are the
one-cloud shorthand of ``clouds``, a list of :class:`CloudEntry`, one per cloud, each with its
own server, link and profile. The scheduler
components the gateway uses are the usual component sections (``length_estimator``,
``device_policy``, ``rtt_estimator``). Port 0 means "any free port".
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from cnmt.datasets.link import DEFAULT_LOSS_TIMEOUT_S, RttSource
from cnmt.schema import ranged
from cnmt.serving.ray_settings import RayCloudSettings

CPU = "CPUExecutionProvider"
# Connection limits (cnmt.serving.limits): seconds a client may take for a request head after
# opening or after its previous answer, and for a body after its head.
DEFAULT_IDLE_TIMEOUT_S = 15.0
DEFAULT_BODY_TIMEOUT_S = 10.0
# A gateway closes a connection to the cloud after this long unused; the cloud must keep an
# idle connection open longer, or a request may go out on a connection it is closing.
CLOUD_KEEPALIVE_S = 4.0
MIN_CLOUD_IDLE_TIMEOUT_S = 5.0
# The largest cloud answer a gateway reads: a translation of at most 4,096 tokens is a few
# tens of KB; anything near this is not a real answer (cnmt.serving.cloud_client).
DEFAULT_MAX_REPLY_BYTES = 1024 * 1024


def _check_port(port: int) -> None:
    if not 0 <= port <= 65535:
        raise ValueError(f"port {port} out of range 0..65535 (0 = any free port)")


def _check_pair(key_a: str, a: str | None, key_b: str, b: str | None) -> None:
    if (a is None) != (b is None):
        raise ValueError(f"{key_a} and {key_b} go together: give both or neither")


def _check_one_of(key_a: str, a: str | None, key_b: str, b: str | None) -> None:
    if a is not None and b is not None:
        raise ValueError(f"give {key_a} or {key_b}, not both")


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
    gateway faces the same edge/cloud contrast as the profile. ``model`` is what the edge runs;
    ``cloud_model`` what the cloud runs (default: the same; e.g. the edge ``cn2en-int8``, the
    cloud ``cn2en``), and each profile must be of its device's model. ``cloud_url`` defaults to the
    link (or cloud) that the same config launches. ``cloud_timeout_s`` bounds a cloud exchange;
    past it the request is translated locally. ``max_pending`` bounds the requests inside the
    gateway; more get 503 with ``Retry-After: retry_after_s``. ``bandwidth_mbps`` is the link
    bandwidth the gateway assumes for the bodies' serialisation time, in its predictions and when
    it takes an RTT sample out of a cloud round trip.

    Hardening (docs/hardening.md): a connection must complete a request head within
    ``idle_timeout_s`` of opening or of its previous answer, and its body within
    ``body_timeout_s`` (else 408); a request counts against ``max_pending`` only once its body
    has arrived. At most ``max_cloud_exchanges`` requests wait on the cloud at once (past it a
    request runs on the edge); ``breaker_slow_count`` exchanges in a row that take
    ``breaker_slow_s`` (default: half of ``cloud_timeout_s``) or longer mark the cloud
    unhealthy, as does a failed exchange or, while nothing is offloaded for
    ``health_interval_s``, a failed health probe; each probe waits at most ``probe_timeout_s``.

    Learning (docs/serving.md, "The closed loop"): with ``learn_from_probes`` the round trip of
    each idle health probe is an RTT sample too, and a cloud that answers it with no pending
    request a cloud-wait sample of 0. The load-aware rule's cloud wait is this gateway's own
    offloads still ahead in the cloud, run at their predicted times through ``cloud_workers``
    FIFO servers (set it to how many requests the cloud runs at once), plus what the cloud-wait
    estimator learnt the other clients add. ``state_file`` keeps what the learning
    components have learnt across restarts, written every ``state_save_s`` seconds and on
    shutdown (:mod:`cnmt.serving.learned_state`). With ``calibrate_idle_s``, an idle gateway
    translates ``calibration_text`` once on each target (the edge, each cloud) whose learning
    latency model has observed nothing for ``calibrate_stale_s``, and learns from it
    (:mod:`cnmt.serving.calibration`).
    """

    edge_profile: str
    cloud_profile: str
    host: str = "127.0.0.1"
    port: int = ranged(8080, low=0, high=65535)
    model: str = "cn2en"
    cloud_model: str | None = None  # None: the same as model
    providers: tuple[str, ...] = (CPU,)
    threads: int = ranged(1, low=1, high=64)
    cloud_url: str | None = None
    cloud_timeout_s: float = ranged(2.0, low=0, high=600, above=True)
    max_pending: int = ranged(32, low=1, high=100000)
    retry_after_s: int = ranged(1, low=1, high=3600)
    max_body_bytes: int = ranged(16384, low=1, high=16777216)
    allow_unthrottled: bool = False
    probe_initial_s: float = ranged(0.25, low=0.001, high=600)
    probe_max_s: float = ranged(5.0, low=0.001, high=3600)
    bandwidth_mbps: float = ranged(100.0, low=0, high=1000000, above=True)
    idle_timeout_s: float = ranged(DEFAULT_IDLE_TIMEOUT_S, low=0.1, high=3600)
    body_timeout_s: float = ranged(DEFAULT_BODY_TIMEOUT_S, low=0.1, high=3600)
    max_cloud_exchanges: int = ranged(16, low=1, high=10000)
    breaker_slow_s: float | None = ranged(
        None, low=0, high=600, above=True
    )  # None: half of cloud_timeout_s
    breaker_slow_count: int = ranged(3, low=1, high=1000)
    health_interval_s: float = ranged(2.0, low=0.01, high=3600)
    probe_timeout_s: float = ranged(1.0, low=0.01, high=600)
    learn_from_probes: bool = False
    cloud_workers: int = ranged(1, low=1, high=4096)
    state_file: str | None = None
    state_save_s: float = ranged(60.0, low=1, high=86400)
    max_reply_bytes: int = ranged(DEFAULT_MAX_REPLY_BYTES, low=1024, high=67108864)
    cloud_ca_file: str | None = None
    cloud_client_cert_file: str | None = None
    cloud_client_key_file: str | None = None
    cloud_token_file: str | None = None
    cloud_token_env: str | None = None
    api_keys_file: str | None = None
    api_keys_env: str | None = None
    allow_unauthenticated: bool = False
    # Idle calibration of every target (cnmt.serving.calibration); None: off.
    calibrate_idle_s: float | None = ranged(None, low=0.01, high=86400)
    calibrate_stale_s: float = ranged(30.0, low=0.01, high=86400)
    calibration_text: str = "你好。"

    def __post_init__(self) -> None:
        _check_port(self.port)
        if self.calibrate_idle_s is not None and not self.calibrate_idle_s > 0:
            raise ValueError(
                f"calibrate_idle_s must be positive or null, got {self.calibrate_idle_s}"
            )
        if not self.calibrate_stale_s > 0 or not self.calibration_text.strip():
            raise ValueError("calibrate_stale_s must be positive, calibration_text not empty")
        _check_positive(
            max_reply_bytes=self.max_reply_bytes,
            state_save_s=self.state_save_s,
            threads=self.threads,
            cloud_timeout_s=self.cloud_timeout_s,
            max_pending=self.max_pending,
            retry_after_s=self.retry_after_s,
            max_body_bytes=self.max_body_bytes,
            probe_initial_s=self.probe_initial_s,
            probe_max_s=self.probe_max_s,
            bandwidth_mbps=self.bandwidth_mbps,
            idle_timeout_s=self.idle_timeout_s,
            body_timeout_s=self.body_timeout_s,
            max_cloud_exchanges=self.max_cloud_exchanges,
            breaker_slow_count=self.breaker_slow_count,
            health_interval_s=self.health_interval_s,
            probe_timeout_s=self.probe_timeout_s,
            cloud_workers=self.cloud_workers,
        )
        if self.probe_max_s < self.probe_initial_s:
            raise ValueError("probe_max_s must be at least probe_initial_s")
        if self.breaker_slow_s is not None and not 0 < self.breaker_slow_s < self.cloud_timeout_s:
            raise ValueError(
                f"breaker_slow_s ({self.breaker_slow_s:g}) must be positive and below "
                f"cloud_timeout_s ({self.cloud_timeout_s:g}): an exchange must count as slow "
                "before it times out"
            )
        if self.cloud_url is not None:
            check_http_url(self.cloud_url, "cloud_url")
        if self.state_file is not None:
            check_state_path(self.state_file)
        _check_pair(
            "cloud_client_cert_file",
            self.cloud_client_cert_file,
            "cloud_client_key_file",
            self.cloud_client_key_file,
        )
        _check_one_of(
            "cloud_token_file", self.cloud_token_file, "cloud_token_env", self.cloud_token_env
        )
        _check_one_of("api_keys_file", self.api_keys_file, "api_keys_env", self.api_keys_env)
        guarded = self.api_keys_file is not None or self.api_keys_env is not None
        check_exposure("host", self.host, guarded, self.allow_unauthenticated)

    @property
    def models(self) -> dict[str, str]:
        """The model each target runs: ``{"edge": ..., "cloud": ...}``."""
        return {"edge": self.model, "cloud": self.cloud_model or self.model}

    @property
    def slow_exchange_s(self) -> float:
        """When a cloud exchange counts as slow for the breaker."""
        if self.breaker_slow_s is not None:
            return self.breaker_slow_s
        return self.cloud_timeout_s / 2.0

    @property
    def bandwidth_bps(self) -> float:
        return self.bandwidth_mbps * 1e6


@dataclass(frozen=True)
class CloudSettings:
    """The cloud translation server.

    ``workers`` translations run at once (each with its own loaded model); ``max_pending``
    bounds the requests waiting or running, beyond which it answers 503. With
    ``reuse_port: true`` several `cnmt launch` processes can serve the same port (stateless
    replicas behind one address, balanced by the kernel). A connection must complete a
    request head within ``idle_timeout_s`` (at least the gateways' 4 s keep-alive, so that no
    gateway sends on a connection the cloud is closing) and its body within
    ``body_timeout_s``.

    ``cpu_quota`` (a fraction of one core, in windows of ``cpu_period_us``) runs the cloud
    process in a cgroup, emulating a smaller server as the edge device is emulated (needs
    writable cgroups: root).

    ``engine: ray`` serves the same protocol from a Ray Serve deployment instead (replicas,
    batching, a cluster), configured by the ``ray`` mapping (:class:`RayCloudSettings`);
    ``workers`` and ``reuse_port`` are then Ray's business and must stay unset.
    """

    host: str = "127.0.0.1"
    port: int = ranged(8081, low=0, high=65535)
    model: str = "cn2en"
    providers: tuple[str, ...] = (CPU,)
    threads: int = ranged(1, low=1, high=64)
    workers: int = ranged(1, low=1, high=256)
    max_pending: int = ranged(64, low=1, high=100000)
    retry_after_s: int = ranged(1, low=1, high=3600)
    max_body_bytes: int = ranged(16384, low=1, high=16777216)
    reuse_port: bool = False
    idle_timeout_s: float = ranged(30.0, low=5, high=3600)
    body_timeout_s: float = ranged(DEFAULT_BODY_TIMEOUT_S, low=0.1, high=3600)
    engine: Literal["aiohttp", "ray"] = "aiohttp"
    ray: RayCloudSettings | None = None
    tls_cert_file: str | None = None
    tls_key_file: str | None = None
    tls_client_ca_file: str | None = None
    token_file: str | None = None
    token_env: str | None = None
    allow_unauthenticated: bool = False
    # A smaller server emulated on this host, as the edge is: the cloud process runs under a
    # cgroup CPU quota of this fraction of one core (needs root); None: unthrottled.
    cpu_quota: float | None = ranged(None, low=0.01, high=256)
    cpu_period_us: int = ranged(10_000, low=1000, high=1_000_000)

    @property
    def scheme(self) -> str:
        return "https" if self.tls_cert_file is not None else "http"

    def __post_init__(self) -> None:
        _check_port(self.port)
        _check_pair("tls_cert_file", self.tls_cert_file, "tls_key_file", self.tls_key_file)
        if self.tls_client_ca_file is not None and self.tls_cert_file is None:
            raise ValueError("tls_client_ca_file needs tls_cert_file and tls_key_file (TLS)")
        if self.engine == "ray" and self.tls_cert_file is not None:
            raise ValueError(
                "tls_cert_file: TLS is served by engine: aiohttp only; put a TLS-terminating "
                "proxy in front of a Ray cloud, and protect it with token_file"
            )
        _check_one_of("token_file", self.token_file, "token_env", self.token_env)
        guarded = self.token_file is not None or self.token_env is not None
        check_exposure("host", self.host, guarded, self.allow_unauthenticated)
        if self.engine == "ray" and self.cpu_quota is not None:
            raise ValueError("cpu_quota: emulates a server with engine: aiohttp only")
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
        if not self.idle_timeout_s >= MIN_CLOUD_IDLE_TIMEOUT_S:
            raise ValueError(
                f"idle_timeout_s must be at least {MIN_CLOUD_IDLE_TIMEOUT_S:g} s (longer than a "
                f"gateway keeps an idle connection to the cloud, {CLOUD_KEEPALIVE_S:g} s), got "
                f"{self.idle_timeout_s}"
            )
        _check_positive(
            body_timeout_s=self.body_timeout_s,
            threads=self.threads,
            workers=self.workers,
            max_pending=self.max_pending,
            retry_after_s=self.retry_after_s,
            max_body_bytes=self.max_body_bytes,
        )


@dataclass(frozen=True)
class LinkSettings(RttSource):
    """The emulated gateway-cloud link: a TCP proxy that delays every byte by RTT/2 each way.

    The RTT is the link model's (:mod:`cnmt.datasets.link`, the same keys and rules as a
    replayed connection): a constant ``rtt_ms``, or a window of a measured ``trace`` replayed
    in real time from when the link starts, looping at its end; ``sample_period_s`` sets how
    long each trace sample holds (a RIPE trace's own 240 s spacing is slow for a live run).
    ``bandwidth_mbps`` (optional) also limits each direction's throughput. ``upstream``
    (``host:port``) defaults to the cloud that the same config launches.
    """

    host: str = "127.0.0.1"
    port: int = ranged(8082, low=0, high=65535)
    upstream: str | None = None
    bandwidth_mbps: float | None = ranged(None, low=0, high=1000000, above=True)
    loss_timeout_s: float = ranged(DEFAULT_LOSS_TIMEOUT_S, low=0, high=600)

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_port(self.port)
        if self.bandwidth_mbps is not None:
            _check_positive(bandwidth_mbps=self.bandwidth_mbps)
        if self.loss_timeout_s < 0:
            raise ValueError(f"loss_timeout_s must be >= 0, got {self.loss_timeout_s}")
        if self.upstream is not None:
            split_host_port(self.upstream, "upstream")


@dataclass(frozen=True)
class CloudEntry:
    """One cloud of several (an item of ``clouds``): what the gateway calls it (``name``: the
    ``device`` of its answers, its key in ``/v1/models`` and in the decision), the profile of
    its device (``cloud_profile``, of the model it runs; default ``gateway.cloud_profile``),
    the cloud server this config launches for it (``cloud``; leave it out for a cloud that
    runs elsewhere) and the emulated link in front of it (``link``: ``rtt_ms`` or a
    ``trace``; leave it out to reach the cloud directly). ``url`` is where the gateway sends
    its requests (default: the link, else the cloud). ``workers`` is how many requests it
    runs at once as the gateway's queue model sees it (default: ``cloud.workers``, else 1).
    ``model`` is the model it runs when this config does not launch it (default:
    ``gateway.cloud_model``, else ``gateway.model``). ``time_factor`` scales the profile's fit
    (the latency model's prior): a smaller server emulated from a measured one
    (``cloud.cpu_quota``) runs that many times slower, as the replay's
    ``clouds[].time_factor`` does; the online models learn the rest."""

    name: str
    cloud_profile: str | None = None
    cloud: CloudSettings | None = None
    link: LinkSettings | None = None
    url: str | None = None
    workers: int | None = ranged(None, low=1, high=4096)
    model: str | None = None
    time_factor: float = ranged(1.0, low=0, high=1000, above=True)

    def __post_init__(self) -> None:
        if not self.name or self.name == "edge" or not self.name.replace("-", "_").isidentifier():
            raise ValueError(
                f"name: a cloud needs a name of letters, digits, '-' or '_' other than 'edge', "
                f"got {self.name!r}"
            )
        if self.url is not None:
            check_http_url(self.url, "url")
        if self.cloud is not None and self.model is not None and self.model != self.cloud.model:
            raise ValueError(
                f"model: {self.model!r} but the cloud launched for it runs {self.cloud.model!r}; "
                "leave model out (it is cloud.model)"
            )
        if self.workers is not None:
            _check_positive(workers=self.workers)
        _check_positive(time_factor=self.time_factor)

    @property
    def queue_workers(self) -> int:
        """The servers the gateway queues this cloud's requests through."""
        if self.workers is not None:
            return self.workers
        return self.cloud.workers if self.cloud is not None else 1


def check_state_path(value: str) -> None:
    """A state file the gateway can write: not a folder, and the nearest existing folder above
    it a folder (a regular file there would make every save fail)."""
    path = Path(value)
    if path.is_dir():
        raise ValueError(f"state_file: {value} is a folder; give a file path inside it")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise ValueError(
                    f"state_file: {value}: {parent} is a file, not a folder; point "
                    "state_file into a folder"
                )
            return


def is_loopback(host: str) -> bool:
    """True for an address only this machine can reach (127.0.0.0/8, ::1, ``localhost``)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


def check_exposure(key: str, host: str, authenticated: bool, allow_unauthenticated: bool) -> None:
    """ValueError (a config error) for a server on a non-loopback address that nobody guards."""
    if authenticated or allow_unauthenticated or is_loopback(host):
        return
    raise ValueError(
        f"{key}: listening on {host} without authentication lets anyone who can reach it use it; "
        "set a token (cloud: token_file or token_env; gateway: api_keys_file or api_keys_env), "
        "or set allow_unauthenticated: true if a firewall or a private network keeps strangers "
        "out"
    )


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
