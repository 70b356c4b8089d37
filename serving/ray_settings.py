"""The ``cloud.ray`` YAML section: how a cloud with ``engine: ray`` runs on Ray Serve.

Plain data, validated like every other section; importing it never imports Ray (the gateway and
the config loader read it on machines without Ray). :mod:`cnmt.serving.ray_cloud` turns it into
a Ray Serve deployment.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

from cnmt.schema import ranged


@dataclass(frozen=True)
class RayAutoscaling:
    """Ray Serve's autoscaler: between ``min_replicas`` and ``max_replicas`` replicas, aiming at
    ``target_ongoing_requests`` requests inside each replica."""

    min_replicas: int = ranged(1, low=0, high=1024)
    max_replicas: int = ranged(2, low=1, high=1024)
    target_ongoing_requests: float = ranged(8.0, low=0, high=100000, above=True)

    def __post_init__(self) -> None:
        if self.min_replicas < 0:
            raise ValueError(f"min_replicas must be >= 0, got {self.min_replicas}")
        if self.max_replicas < max(self.min_replicas, 1):
            raise ValueError(
                f"max_replicas ({self.max_replicas}) must be at least 1 and at least "
                f"min_replicas ({self.min_replicas})"
            )
        if not self.target_ongoing_requests > 0:
            raise ValueError(
                f"target_ongoing_requests must be positive, got {self.target_ongoing_requests}"
            )


@dataclass(frozen=True)
class RayCloudSettings:
    """A Ray Serve cloud: where Ray runs, how many replicas, what each gets, how it batches.

    ``address`` null starts a private local Ray instance with ``num_cpus`` CPUs (null: all of
    this machine's) that lives and dies with `cnmt launch`; ``auto`` joins the Ray cluster this
    machine is part of (`ray start --head` / `ray start --address ...` ran here); ``ray://HOST:PORT``
    connects to a remote cluster's Ray Client server; ``HOST:PORT`` joins the cluster whose head
    (GCS) listens there. Each replica holds one translator with the cloud's ``providers`` and
    ``threads`` and asks Ray for ``num_cpus_per_replica`` CPUs and ``num_gpus_per_replica`` GPUs.
    ``num_replicas`` is fixed unless ``autoscaling`` is given. Requests are batched
    (``@serve.batch``): up to ``max_batch_size`` sentences, waiting at most
    ``batch_wait_timeout_s`` for a batch to fill; ``max_batch_size: 1`` turns batching off.
    ``max_ongoing_requests`` bounds the requests inside one replica (waiting for a batch or
    running); beyond them Ray queues up to the cloud's ``max_pending`` requests per proxy and
    answers 503 after that. ``health_check_period_s`` is how often Ray checks a replica.
    """

    address: str | None = None
    num_cpus: int | None = ranged(None, low=1, high=4096)
    app_name: str = "cnmt-cloud"
    num_replicas: int = ranged(1, low=1, high=1024)
    autoscaling: RayAutoscaling | None = None
    num_cpus_per_replica: float = ranged(1.0, low=0, high=1024)
    num_gpus_per_replica: float = ranged(0.0, low=0, high=64)
    max_batch_size: int = ranged(8, low=1, high=4096)
    batch_wait_timeout_s: float = ranged(0.005, low=0, high=60)
    max_ongoing_requests: int = ranged(32, low=1, high=100000)
    health_check_period_s: float = ranged(2.0, low=0, high=3600, above=True)
    health_check_timeout_s: float = ranged(10.0, low=0, high=3600, above=True)

    def __post_init__(self) -> None:
        if self.address is not None:
            check_ray_address(self.address)
            if self.num_cpus is not None:
                raise ValueError(
                    "num_cpus sizes a local Ray instance; with an address, the cluster's own "
                    "resources apply: remove num_cpus or set address: null"
                )
        if self.num_cpus is not None and self.num_cpus < 1:
            raise ValueError(f"num_cpus must be at least 1, got {self.num_cpus}")
        if not self.app_name or "/" in self.app_name:
            raise ValueError(
                f"app_name must be a non-empty name without '/', got {self.app_name!r}"
            )
        if self.num_replicas < 1:
            raise ValueError(f"num_replicas must be at least 1, got {self.num_replicas}")
        if self.autoscaling is not None and self.num_replicas != 1:
            raise ValueError(
                "give either num_replicas (a fixed count) or autoscaling (a range), not both"
            )
        if self.num_cpus_per_replica < 0 or self.num_gpus_per_replica < 0:
            raise ValueError("num_cpus_per_replica and num_gpus_per_replica must be >= 0")
        if self.max_batch_size < 1:
            raise ValueError(f"max_batch_size must be at least 1, got {self.max_batch_size}")
        if self.batch_wait_timeout_s < 0:
            raise ValueError(f"batch_wait_timeout_s must be >= 0, got {self.batch_wait_timeout_s}")
        if self.max_ongoing_requests < self.max_batch_size:
            raise ValueError(
                f"max_ongoing_requests ({self.max_ongoing_requests}) must be at least "
                f"max_batch_size ({self.max_batch_size}), or batches can never fill"
            )
        for key in ("health_check_period_s", "health_check_timeout_s"):
            if not getattr(self, key) > 0:
                raise ValueError(f"{key} must be positive, got {getattr(self, key)}")

    @property
    def local(self) -> bool:
        """True when `cnmt launch` starts (and stops) its own Ray instance."""
        return self.address is None


def check_ray_address(value: str) -> None:
    """ValueError unless ``value`` is ``auto``, ``ray://HOST:PORT`` or ``HOST:PORT``."""
    example = "auto, ray://HEAD:10001 or HEAD:6379"
    if value == "auto":
        return
    if "://" in value:
        parts = urlsplit(value)
        try:
            port = parts.port
        except ValueError:
            port = None
        if (
            parts.scheme != "ray"
            or not parts.hostname
            or port is None
            or parts.path not in ("", "/")
        ):
            raise ValueError(f"address: expected {example}, got {value!r}")
        return
    host, sep, port_text = value.rpartition(":")
    if not sep or not host or not port_text.isdigit() or not 0 < int(port_text) <= 65535:
        raise ValueError(f"address: expected {example}, got {value!r}")
