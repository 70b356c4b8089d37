"""The ``replay`` section of an experiment config (validated by :func:`cnmt.schema.build`).

::

    replay:
      model: bilstm-de-en              # must match the profiles' model
      requests: 100000
      seed: 0
      corpus:
        src_tokenizer: bpe:${data}/tokenizers/iwslt14-de-en-bpe10k/code
        tgt_tokenizer: bpe:${data}/tokenizers/iwslt14-de-en-bpe10k/code
        heldout_every: 10              # requests from lines i % 10 == 9 only
        parts:
          - src: ${data}/corpora/iwslt14-de-en/valid.de
            tgt: ${data}/corpora/iwslt14-de-en/valid.en
      devices:
        edge: ${config_dir}/../profiles/bilstm-de-en__edge-cpu-q25.json
        cloud: ${config_dir}/../profiles/bilstm-de-en__cloud-cpu.json
      link: {bandwidth_mbps: 100, loss_timeout_s: 1.0}
      connections:
        cp1: {trace: ${data}/rtt/ripe-atlas-2016/13746.csv, start: 0, samples: 2000}
      policies:
        - edge
        - cloud
        - oracle
        - {name: naive, params: {model: ${config_dir}/../lengths/iwslt14-de-en.json}}
        - cnmt
    length_estimator: {name: linear, params: {model: ${config_dir}/../lengths/iwslt14-de-en.json}}
    rtt_estimator: {name: last}
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from cnmt.datasets.link import DEFAULT_LOSS_TIMEOUT_S, RttSource
from cnmt.registry import ComponentSpec, Kind
from cnmt.schema import fail, ranged


@dataclass(frozen=True)
class CorpusPart:
    """One line-aligned file pair; ``output_lengths`` replaces the target side's M with a real
    model's output lengths (a cache written by `cnmt replay --cache-outputs`); ``share`` is the
    fraction of requests drawn from this part (default: in proportion to its lines)."""

    src: str
    tgt: str
    output_lengths: str | None = None
    share: float | None = ranged(None, low=0, high=1, above=True)

    def __post_init__(self) -> None:
        if self.share is not None and not 0 < self.share <= 1:
            raise ValueError(f"share must be in (0, 1], got {self.share}")


@dataclass(frozen=True)
class CorpusSpec:
    parts: list[CorpusPart]
    src_tokenizer: str = "words"
    tgt_tokenizer: str = "words"
    heldout_every: int | None = ranged(None, low=2, high=1000000)

    def __post_init__(self) -> None:
        if not self.parts:
            raise ValueError("parts: list at least one {src, tgt} file pair")
        shares = [p.share for p in self.parts]
        if any(s is not None for s in shares):
            if any(s is None for s in shares):
                raise ValueError("parts: give `share` for every part or for none")
            if abs(sum(shares) - 1.0) > 1e-6:  # type: ignore[arg-type]
                raise ValueError(
                    f"parts: the shares must add up to 1, they add up to {sum(shares)}"
                )  # type: ignore[arg-type]
        if self.heldout_every is not None and self.heldout_every < 2:
            raise ValueError(f"heldout_every must be >= 2 or null, got {self.heldout_every}")


@dataclass(frozen=True)
class ConnectionSpec(RttSource):
    """A connection profile: a window of an RTT trace (the link model's keys, see
    :mod:`cnmt.datasets.link`) and how requests arrive in it.

    ``arrivals``: ``spread`` spaces the requests evenly over the window's duration (the
    paper's method: one request every few seconds over days of trace, so no queue forms);
    ``interval`` sends one every ``interval_s`` seconds of trace time; ``poisson`` at ``rate``
    requests per second (exponential gaps); ``file`` at the times (seconds, one per line, in
    order) in ``arrivals_file``. Trace time wraps around the window.
    """

    arrivals: Literal["spread", "interval", "poisson", "file"] = "spread"
    interval_s: float | None = ranged(None, low=0, high=86400, above=True)
    rate: float | None = ranged(None, low=0, high=1000000, above=True)
    arrivals_file: str | None = None
    description: str = ""
    paper_profile: Literal["CP1", "CP2"] | None = None  # the paper's profile it stands for

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.trace is None:
            raise ValueError("a replayed connection needs a `trace` (a window of measured RTTs)")
        if self.arrivals == "interval" and (self.interval_s is None or self.interval_s <= 0):
            raise ValueError("arrivals: interval needs a positive `interval_s`")
        if self.arrivals == "poisson" and (self.rate is None or self.rate <= 0):
            raise ValueError("arrivals: poisson needs a positive `rate` (requests per second)")
        if self.arrivals == "file" and not self.arrivals_file:
            raise ValueError("arrivals: file needs `arrivals_file` (one time in seconds a line)")
        if self.samples is not None and self.samples < 2:
            raise ValueError(f"samples must be >= 2 or null (to the end), got {self.samples}")


@dataclass(frozen=True)
class LinkSpec:
    """The gateway-cloud link: bandwidth (the paper: 100 Mbps), the cost of a lost ping (one
    retransmission timeout, see :mod:`cnmt.datasets.link`) and the HTTP bytes around a text."""

    bandwidth_mbps: float = ranged(100.0, low=0, high=1000000, above=True)
    loss_timeout_s: float = ranged(DEFAULT_LOSS_TIMEOUT_S, low=0, high=600)
    overhead_bytes: int = ranged(400, low=0, high=1000000)

    def __post_init__(self) -> None:
        if self.bandwidth_mbps <= 0:
            raise ValueError(f"bandwidth_mbps must be positive, got {self.bandwidth_mbps}")
        if self.loss_timeout_s < 0 or self.overhead_bytes < 0:
            raise ValueError("loss_timeout_s and overhead_bytes must be >= 0")


@dataclass(frozen=True)
class QueueSpec:
    """Whether the devices are queues (see :mod:`cnmt.experiments.simulate`).

    Off (the paper's method, the default) every request finds both devices idle. On, the edge
    has ``edge_workers`` FIFO servers and the cloud ``cloud_workers``, shared with a Poisson
    stream of other gateways' requests at ``background_rate`` per second (drawn from the same
    corpus), so that a shared cloud fills up too.
    """

    enabled: bool = False
    edge_workers: int = ranged(1, low=1, high=4096)
    cloud_workers: int = ranged(1, low=1, high=4096)
    background_rate: float = ranged(0.0, low=0, high=1000000)

    def __post_init__(self) -> None:
        if self.edge_workers < 1 or self.cloud_workers < 1:
            raise ValueError("edge_workers and cloud_workers must be at least 1")
        if self.background_rate < 0:
            raise ValueError(f"background_rate must be >= 0, got {self.background_rate}")


@dataclass(frozen=True)
class DriftSpec:
    """From request ``at_fraction * requests`` on, ``device`` really runs ``factor`` times
    slower (its profile, and so the paper's fixed model, does not know)."""

    device: Literal["edge", "cloud"]
    at_fraction: float = ranged(low=0, high=1)
    factor: float = ranged(low=0, high=1000, above=True)

    def __post_init__(self) -> None:
        if not 0.0 <= self.at_fraction <= 1.0:
            raise ValueError(f"at_fraction must be in [0, 1], got {self.at_fraction}")
        if not self.factor > 0:
            raise ValueError(f"factor must be positive, got {self.factor}")


@dataclass(frozen=True)
class DevicesSpec:
    """Device profile files (`cnmt profile` output) of the model on the edge and the cloud
    (``cloud`` is the one-cloud shorthand of ``replay.clouds``)."""

    edge: str
    cloud: str | None = None


@dataclass(frozen=True)
class CloudSpec:
    """One cloud of several (``replay.clouds``): its name (what ``shares`` and the policies
    call it), its device profile, and its link. The first cloud's link is the replayed
    connection; every further cloud gives its own (``link``: a trace window, as a connection
    does, or a constant ``rtt_ms``), read at the same arrival times. ``time_factor`` runs the
    profile's times that many times slower (a smaller server emulated from a measured one, as
    a CPU quota emulates the edge): both the true times and the fit the scheduler knows.
    ``workers`` are its servers when the replay has queues (the first cloud's are
    ``queues.cloud_workers``)."""

    name: str
    profile: str
    link: RttSource | None = None
    time_factor: float = 1.0
    workers: int = 1

    def __post_init__(self) -> None:
        if not self.name or self.name == "edge":
            raise ValueError(f"a cloud needs a name other than 'edge', got {self.name!r}")
        if not self.time_factor > 0 or self.workers < 1:
            raise ValueError("time_factor must be positive and workers at least 1")


@dataclass(frozen=True)
class PolicySpec:
    """A device policy to replay, validated against the registry like every component.

    ``label`` names it in the results (default: its name); ``rtt_probe_s`` makes its gateway
    probe the link when no round trip was measured for that long (see
    :func:`cnmt.experiments.simulate.drive_core`); the other keys (``OVERRIDES``) override the
    config's top-level sections of the same name for this policy only.
    """

    policy: ComponentSpec
    label: str
    length_estimator: ComponentSpec | None = None
    rtt_estimator: ComponentSpec | None = None
    cloud_wait_estimator: ComponentSpec | None = None
    edge_latency: ComponentSpec | None = None
    cloud_latency: ComponentSpec | None = None
    rtt_probe_s: float | None = ranged(None, low=0, high=86400, above=True)


@dataclass(frozen=True)
class PolicyField:
    """Schema marker of one entry of ``replay.policies``: a name, or ``{name, params, label}``
    plus overrides of the scheduler sections for this policy alone (``OVERRIDES``)."""

    description = "a device policy (a name, or {name, params, label, and section overrides})"
    OVERRIDES = {
        "length_estimator": "length_estimator",
        "rtt_estimator": "rtt_estimator",
        "cloud_wait_estimator": "rtt_estimator",
        "edge_latency": "latency_model",
        "cloud_latency": "latency_model",
    }
    KEYS = ("name", "params", "label", "rtt_probe_s", *OVERRIDES)

    def build_value(self, value: Any, path: str, where: str) -> PolicySpec:
        if isinstance(value, str):
            value = {"name": value}
        if not isinstance(value, dict):
            fail(where, path, f"expected {self.description}, got {value!r}")
        unknown = sorted(str(k) for k in set(value) - set(self.KEYS))
        if unknown:
            fail(where, f"{path}.{unknown[0]}", f"unknown key; valid keys: {', '.join(self.KEYS)}")
        label = value.get("label")
        if label is not None and not isinstance(label, str):
            fail(where, f"{path}.label", f"expected a string, got {label!r}")
        probe = value.get("rtt_probe_s")
        if probe is not None and (
            isinstance(probe, bool) or not isinstance(probe, int | float) or not probe > 0
        ):
            fail(
                where,
                f"{path}.rtt_probe_s",
                f"expected a positive number of seconds, got {probe!r}",
            )
        policy = Kind("device_policy").build_value(
            {k: value[k] for k in ("name", "params") if k in value}, path, where
        )
        overrides = {
            key: Kind(kind).build_value(value[key], f"{path}.{key}", where)
            for key, kind in self.OVERRIDES.items()
            if value.get(key) is not None
        }
        probe_s = None if probe is None else float(probe)
        return PolicySpec(
            policy=policy, label=label or policy.name, rtt_probe_s=probe_s, **overrides
        )


Policy = Annotated[PolicySpec, PolicyField()]

DEFAULT_POLICIES = ("edge", "cloud", "oracle", "cnmt")


@dataclass(frozen=True)
class ReplayConfig:
    """``model`` is what the cloud runs and what tokenizes the corpus; ``edge_model`` what the
    edge runs when it differs (e.g. ``cn2en-int8`` against a ``cn2en`` cloud). Each device
    profile must be of its device's model."""

    model: str
    corpus: CorpusSpec
    devices: DevicesSpec
    connections: dict[str, ConnectionSpec]
    policies: list[Policy] | None = None  # None: DEFAULT_POLICIES
    requests: int = ranged(100_000, low=1, high=100000000)
    seed: int = ranged(0, low=0, high=9223372036854775807)
    link: LinkSpec = field(default_factory=LinkSpec)
    default_connection: str | None = None
    # The language pair of the paper's Table I this setup stands for (``cnmt reproduce`` puts
    # its numbers beside ours for the connections that name a paper_profile).
    paper_pair: Literal["DE-EN", "FR-EN", "EN-ZH"] | None = None
    queues: QueueSpec = field(default_factory=QueueSpec)
    drift: list[DriftSpec] = field(default_factory=list)
    # `cnmt reproduce` also replays each connection with Poisson arrivals and queues, at the
    # rates that keep edge-only busy this share of the time, with this many requests each.
    load_sweep: list[float] = field(default_factory=list)
    load_sweep_requests: int = ranged(20_000, low=1, high=100000000)
    clouds: list[CloudSpec] = field(default_factory=list)
    edge_model: str | None = None  # None: the same as model

    @property
    def models(self) -> dict[str, str]:
        """The model each device runs: ``{"edge": ..., "cloud": ...}``."""
        return {"edge": self.edge_model or self.model, "cloud": self.model}

    def __post_init__(self) -> None:
        if (self.devices.cloud is None) == (not self.clouds):
            raise ValueError(
                "give the cloud's profile as devices.cloud (one cloud) or list the clouds under "
                "`clouds` (each {name, profile, link}), not both"
            )
        names = [c.name for c in self.clouds]
        if len(set(names)) != len(names):
            raise ValueError(f"clouds: names must be unique, got {', '.join(names)}")
        if self.clouds and self.clouds[0].link is not None:
            raise ValueError("clouds: the first cloud's link is the connection; leave out its link")
        if any(c.link is None for c in self.clouds[1:]):
            raise ValueError("clouds: every cloud after the first needs its own `link`")
        if self.requests < 1:
            raise ValueError(f"requests must be >= 1, got {self.requests}")
        if not self.connections:
            raise ValueError("connections: define at least one connection profile")
        if self.default_connection is not None and self.default_connection not in self.connections:
            raise ValueError(
                f"default_connection {self.default_connection!r} is not one of the connections: "
                + ", ".join(self.connections)
            )
        if any(u <= 0 for u in self.load_sweep) or self.load_sweep_requests < 1:
            raise ValueError("load_sweep: utilizations must be positive, load_sweep_requests >= 1")
        labels = [p.label for p in self.policies or ()]
        duplicates = sorted({x for x in labels if labels.count(x) > 1})
        if duplicates:
            raise ValueError(f"policies: labels must be unique; repeated: {', '.join(duplicates)}")

    def policy_specs(self) -> list[PolicySpec]:
        """The policies to replay (the configured ones, else edge, cloud, oracle and cnmt)."""
        if self.policies is not None:
            return list(self.policies)
        field_ = PolicyField()
        return [field_.build_value(name, "replay.policies", "") for name in DEFAULT_POLICIES]
