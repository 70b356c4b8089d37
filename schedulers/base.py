"""The types every scheduler shares, and the two component interfaces."""

from __future__ import annotations

import abc
import enum
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from cnmt.datasets.link import serialisation_s
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
        return self.rtt_s + float(serialisation_s(payload_bytes, self.bandwidth_bps))


@dataclass(frozen=True, slots=True)
class SchedulerState:
    """A snapshot of everything a device policy may look at, taken at time ``now`` (seconds)."""

    edge: LatencyModel
    cloud: LatencyModel
    link: LinkState
    now: float = 0.0


class LengthEstimator(abc.ABC):
    """Estimates M, the number of output tokens, before translating.

    ``needs_truth`` marks estimators that read ``request.m_true`` (offline evaluation only), so
    that a live gateway can reject them when it loads its config.
    """

    name: ClassVar[str]
    Params: ClassVar[type[Any]] = NoParams
    needs_truth: ClassVar[bool] = False

    def __init__(self, params: Any) -> None:
        self.params = params

    @abc.abstractmethod
    def estimate(self, request: Request) -> float:
        """Return the estimated output length in tokens; pure."""

    def estimate_many(self, n_tokens: np.ndarray, m_true: np.ndarray | None = None) -> np.ndarray:
        """Estimates for many inputs at once (float array); the default calls ``estimate``.

        Built-in estimators override this with a vectorized formula; it must agree with
        ``estimate`` element by element.
        """
        truths = m_true if m_true is not None else [None] * len(n_tokens)
        requests = (
            Request(int(n), m_true=None if t is None else int(t))
            for n, t in zip(n_tokens, truths, strict=True)
        )
        return np.array([self.estimate(r) for r in requests], dtype=float)


@dataclass(frozen=True)
class RequestBatch:
    """Many requests as arrays, for the vectorized fast paths of an offline replay.

    ``edge_s``, ``cloud_s`` and ``transmission_s`` are the ground truth (what really happened
    on each device and on the link); only the Oracle may look at them.
    """

    n_tokens: np.ndarray
    payload_bytes: np.ndarray
    m_true: np.ndarray
    edge_s: np.ndarray
    cloud_s: np.ndarray
    transmission_s: np.ndarray

    def __len__(self) -> int:
        return len(self.n_tokens)

    def request(self, i: int) -> Request:
        """Request ``i`` as the per-request interface sees it."""
        truth = GroundTruth(
            edge_s=float(self.edge_s[i]),
            cloud_s=float(self.cloud_s[i]),
            transmission_s=float(self.transmission_s[i]),
        )
        return Request(
            n_tokens=int(self.n_tokens[i]),
            payload_bytes=int(self.payload_bytes[i]),
            m_true=int(self.m_true[i]),
            truth=truth,
        )


class DevicePolicy(abc.ABC):
    """Chooses where a request runs.

    ``choose`` is the one method a policy must have. Two optional fast paths let an offline
    replay of 100,000 requests skip building a Request and a SchedulerState per request:

    * ``choose_many`` for policies whose decision does not depend on the link estimate
      (edge-only, cloud-only, Oracle): all decisions at once as a boolean array (True = edge).
    * ``rtt_thresholds`` for policies that run a request on the edge exactly when the RTT
      estimate is at least some per-request threshold (every rule of the form "edge iff
      T_edge <= T_cloud + RTT + payload time" is one). The replay then compares the running
      RTT estimate with a precomputed array, which is the only sequential part.

    Both return ``None`` by default, which means "call ``choose`` per request", so a
    third-party policy that implements only ``choose`` works unchanged (just slower). A policy
    that implements a fast path must agree with its own ``choose`` (tests check the built-ins).
    ``needs_truth`` marks policies that read the ground truth (offline evaluation only);
    ``uses_length_estimate`` is False for policies that ignore ``m_estimate``.
    """

    name: ClassVar[str]
    Params: ClassVar[type[Any]] = NoParams
    needs_truth: ClassVar[bool] = False
    uses_length_estimate: ClassVar[bool] = True

    def __init__(self, params: Any) -> None:
        self.params = params

    @abc.abstractmethod
    def choose(self, request: Request, m_estimate: float, state: SchedulerState) -> Device:
        """Return the device for this request; no I/O, no clock reads, no randomness."""

    def choose_many(
        self, batch: RequestBatch, m_estimate: np.ndarray, edge: LatencyModel, cloud: LatencyModel
    ) -> np.ndarray | None:
        """All decisions at once (True = edge) if they ignore the link estimate, else None."""
        return None

    def rtt_thresholds(
        self,
        batch: RequestBatch,
        m_estimate: np.ndarray,
        edge: LatencyModel,
        cloud: LatencyModel,
        bandwidth_bps: float,
    ) -> np.ndarray | None:
        """Per request, the smallest RTT estimate (s) at which it stays on the edge, or None."""
        return None
