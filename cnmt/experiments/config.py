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
          - {src: ${data}/corpora/iwslt14-de-en/valid.de, tgt: ${data}/corpora/iwslt14-de-en/valid.en}
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
from typing import Any, Literal


@dataclass(frozen=True)
class CorpusPart:
    """One line-aligned file pair; ``output_lengths`` replaces the target side's M with a real
    model's output lengths (a cache written by `cnmt replay --cache-outputs`); ``share`` is the
    fraction of requests drawn from this part (default: in proportion to its lines)."""

    src: str
    tgt: str
    output_lengths: str | None = None
    share: float | None = None

    def __post_init__(self) -> None:
        if self.share is not None and not 0 < self.share <= 1:
            raise ValueError(f"share must be in (0, 1], got {self.share}")


@dataclass(frozen=True)
class CorpusSpec:
    parts: list[CorpusPart]
    src_tokenizer: str = "words"
    tgt_tokenizer: str = "words"
    heldout_every: int | None = None

    def __post_init__(self) -> None:
        if not self.parts:
            raise ValueError("parts: list at least one {src, tgt} file pair")
        shares = [p.share for p in self.parts]
        if any(s is not None for s in shares):
            if any(s is None for s in shares):
                raise ValueError("parts: give `share` for every part or for none")
            if abs(sum(shares) - 1.0) > 1e-6:  # type: ignore[arg-type]
                raise ValueError(f"parts: the shares must add up to 1, they add up to {sum(shares)}")  # type: ignore[arg-type]
        if self.heldout_every is not None and self.heldout_every < 2:
            raise ValueError(f"heldout_every must be >= 2 or null, got {self.heldout_every}")


@dataclass(frozen=True)
class ConnectionSpec:
    """A connection profile: a window of an RTT trace and how requests arrive in it.

    ``arrivals: spread`` spaces the requests evenly over the window's duration; ``interval``
    sends one every ``interval_s`` seconds of trace time (wrapping around the window).
    ``sample_period_s`` is the spacing of samples in traces without timestamps.
    """

    trace: str
    format: Literal["auto", "ripe-csv", "ripe-json", "plain"] = "auto"
    start: int = 0
    samples: int | None = None
    arrivals: Literal["spread", "interval"] = "spread"
    interval_s: float | None = None
    sample_period_s: float = 1.0
    description: str = ""

    def __post_init__(self) -> None:
        if self.arrivals == "interval" and (self.interval_s is None or self.interval_s <= 0):
            raise ValueError("arrivals: interval needs a positive `interval_s`")
        if self.start < 0:
            raise ValueError(f"start must be >= 0, got {self.start}")
        if self.samples is not None and self.samples < 2:
            raise ValueError(f"samples must be >= 2 or null (to the end), got {self.samples}")
        if self.sample_period_s <= 0:
            raise ValueError(f"sample_period_s must be positive, got {self.sample_period_s}")


@dataclass(frozen=True)
class LinkSpec:
    """The gateway-cloud link: bandwidth (the paper: 100 Mbps), the cost of a lost packet
    (one retransmission timeout; RFC 6298's initial RTO is 1 s) and HTTP overhead bytes."""

    bandwidth_mbps: float = 100.0
    loss_timeout_s: float = 1.0
    overhead_bytes: int = 400

    def __post_init__(self) -> None:
        if self.bandwidth_mbps <= 0:
            raise ValueError(f"bandwidth_mbps must be positive, got {self.bandwidth_mbps}")
        if self.loss_timeout_s < 0 or self.overhead_bytes < 0:
            raise ValueError("loss_timeout_s and overhead_bytes must be >= 0")


@dataclass(frozen=True)
class DevicesSpec:
    """Device profile files (`cnmt profile` output) of the model on the edge and the cloud."""

    edge: str
    cloud: str


@dataclass(frozen=True)
class PolicySpec:
    """A device policy to replay; ``label`` names it in the results (default: ``name``).

    ``length_estimator`` and ``rtt_estimator`` ({name, params}) override the config's
    top-level sections for this policy only.
    """

    name: str
    label: str | None = None
    params: dict[str, Any] | None = None
    length_estimator: dict[str, Any] | None = None
    rtt_estimator: dict[str, Any] | None = None


DEFAULT_POLICIES: list[str | PolicySpec] = ["edge", "cloud", "oracle", "cnmt"]


@dataclass(frozen=True)
class ReplayConfig:
    model: str
    corpus: CorpusSpec
    devices: DevicesSpec
    connections: dict[str, ConnectionSpec]
    policies: list[str | PolicySpec] = field(default_factory=lambda: list(DEFAULT_POLICIES))
    requests: int = 100_000
    seed: int = 0
    link: LinkSpec = field(default_factory=LinkSpec)
    default_connection: str | None = None

    def __post_init__(self) -> None:
        if self.requests < 1:
            raise ValueError(f"requests must be >= 1, got {self.requests}")
        if not self.connections:
            raise ValueError("connections: define at least one connection profile")
        if self.default_connection is not None and self.default_connection not in self.connections:
            raise ValueError(
                f"default_connection {self.default_connection!r} is not one of the connections: "
                + ", ".join(self.connections)
            )
        labels = [p if isinstance(p, str) else (p.label or p.name) for p in self.policies]
        duplicates = sorted({x for x in labels if labels.count(x) > 1})
        if duplicates:
            raise ValueError(f"policies: labels must be unique; repeated: {', '.join(duplicates)}")
