"""The types every scheduler shares, and the two component interfaces."""

from __future__ import annotations

import abc
import enum
from dataclasses import dataclass
from typing import Any, ClassVar

from cnmt.schema import NoParams


class Device(enum.StrEnum):
    EDGE = "edge"
    CLOUD = "cloud"


@dataclass(frozen=True, slots=True)
class GroundTruth:
    """What really happened to a request; known only when evaluating offline (the Oracle)."""

    edge_s: float
    cloud_s: float
    transmission_s: float


@dataclass(frozen=True, slots=True)
class Request:
    """One translation request as the scheduler sees it.

    ``n_tokens`` is N in the tokens of the model that will run. ``payload_bytes`` is what
    crosses the link if the request is offloaded (request plus response). ``m_true`` and
    ``truth`` are filled only in offline evaluation.
    """

    n_tokens: int
    payload_bytes: int = 0
    m_true: int | None = None
    truth: GroundTruth | None = None


@dataclass(frozen=True, slots=True)
class LatencyModel:
    """Execution time of one model on one device: ``T = a_n*N + a_m*M + b`` seconds."""

    a_n: float
    a_m: float
    b: float

    def predict(self, n_tokens: float, m_tokens: float) -> float:
        return self.a_n * n_tokens + self.a_m * m_tokens + self.b


@dataclass(frozen=True, slots=True)
class LinkState:
    """The gateway's current view of the gateway-cloud link."""

    rtt_s: float
    bandwidth_bps: float = 100e6

    def transmission_s(self, payload_bytes: int) -> float:
        """Round trip plus serialisation of the payload at the link's bandwidth."""
        return self.rtt_s + 8.0 * payload_bytes / self.bandwidth_bps


@dataclass(frozen=True, slots=True)
class SchedulerState:
    """A snapshot of everything a device policy may look at, taken at time ``now`` (seconds)."""

    edge: LatencyModel
    cloud: LatencyModel
    link: LinkState
    now: float = 0.0


class LengthEstimator(abc.ABC):
    """Estimates M, the number of output tokens, before translating."""

    name: ClassVar[str]
    Params: ClassVar[type[Any]] = NoParams

    def __init__(self, params: Any) -> None:
        self.params = params

    @abc.abstractmethod
    def estimate(self, request: Request) -> float:
        """Return the estimated output length in tokens; pure."""


class DevicePolicy(abc.ABC):
    """Chooses where a request runs."""

    name: ClassVar[str]
    Params: ClassVar[type[Any]] = NoParams

    def __init__(self, params: Any) -> None:
        self.params = params

    @abc.abstractmethod
    def choose(self, request: Request, m_estimate: float, state: SchedulerState) -> Device:
        """Return the device for this request; no I/O, no clock reads, no randomness."""
