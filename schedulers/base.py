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
    """What really happens to a request on each device; known only offline (the Oracles).

    ``edge_s`` and ``cloud_s`` are its true execution times (noise included),
    ``edge_expected_s`` and ``cloud_expected_s`` their expectations at its true (N, M) (what
    the expected-time Oracle knows), ``transmission_s`` its true round trip plus payload time,
    and ``edge_wait_s`` / ``cloud_wait_s`` how long it would wait in each device's queue if sent
    there now (0 in a replay without queues).
    """

    edge_s: float
    cloud_s: float
    transmission_s: float
    edge_expected_s: float = float("nan")
    cloud_expected_s: float = float("nan")
    edge_wait_s: float = 0.0
    cloud_wait_s: float = 0.0


@dataclass(frozen=True, slots=True)
class Request:
    """One translation request as the scheduler sees it.

    ``n_tokens`` is N in the tokens of the model that will run. ``payload_bytes`` is what
    crosses the link if the request is offloaded (request plus response). ``m_true`` and
    ``truth`` are filled only in offline evaluation. ``text`` is the source sentence where the
    caller has it (the ``features`` length estimator reads it; the others need N only).
    """

    n_tokens: int
    payload_bytes: int = 0
    m_true: int | None = None
    truth: GroundTruth | None = None
    text: str | None = None


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
    """A snapshot of everything a device policy may look at, taken at time ``now`` (seconds).

    ``edge`` and ``cloud`` are the latency models' current coefficients. ``edge_backlog_s`` is
    the predicted remaining time of the requests already running or queued on the edge (a new
    local request starts after them); ``cloud_wait_s`` the gateway's recent estimate of how long
    a request waits in the cloud before it runs, learnt from what the cloud reports.
    """

    edge: LatencyModel
    cloud: LatencyModel
    link: LinkState
    now: float = 0.0
    edge_backlog_s: float = 0.0
    cloud_wait_s: float = 0.0


class LengthEstimator(abc.ABC):
    """Estimates M, the number of output tokens, before translating.

    ``needs_truth`` marks estimators that read ``request.m_true`` (offline evaluation only), so
    that a live gateway can reject them when it loads its config.
    """

    name: ClassVar[str]
    Params: ClassVar[type[Any]] = NoParams
    needs_truth: ClassVar[bool] = False
    learns: ClassVar[bool] = False  # whether observe() changes the estimates

    def __init__(self, params: Any) -> None:
        self.params = params

    @abc.abstractmethod
    def estimate(self, request: Request) -> float:
        """Return the estimated output length in tokens; pure."""

    def observe(self, n_tokens: int, m_tokens: int) -> None:  # noqa: B027 (optional: no-op)
        """A request of ``n_tokens`` was translated into ``m_tokens``: what a learning estimator
        learns from, once the translation has finished (the others ignore it)."""

    def state(self) -> dict[str, Any]:
        """What to save to continue learning later (empty for estimators that do not learn)."""
        return {}

    def restore(self, state: dict[str, Any]) -> None:  # noqa: B027 (optional: no-op)
        """Continue from a saved :meth:`state`; ValueError if it does not fit."""

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
    edge_expected_s: np.ndarray | None = None
    cloud_expected_s: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.n_tokens)

    def request(self, i: int, edge_wait_s: float = 0.0, cloud_wait_s: float = 0.0) -> Request:
        """Request ``i`` as the per-request interface sees it (with the queues' true waits)."""
        nan = float("nan")
        truth = GroundTruth(
            edge_s=float(self.edge_s[i]),
            cloud_s=float(self.cloud_s[i]),
            transmission_s=float(self.transmission_s[i]),
            edge_expected_s=nan if self.edge_expected_s is None else float(self.edge_expected_s[i]),
            cloud_expected_s=nan
            if self.cloud_expected_s is None
            else float(self.cloud_expected_s[i]),
            edge_wait_s=edge_wait_s,
            cloud_wait_s=cloud_wait_s,
        )
        return Request(
            n_tokens=int(self.n_tokens[i]),
            payload_bytes=int(self.payload_bytes[i]),
            m_true=int(self.m_true[i]),
            truth=truth,
        )


@dataclass(frozen=True, slots=True)
class LinearRule:
    """A policy that is the C-NMT rule, declared so that a replay can evaluate it fast:

    edge iff ``[backlog_e +] T_edge(N, M) <= T_cloud(N, M) + RTT + payload time [+ wait_c]``

    with the state's latency models, M the length estimate (or the fixed ``m_tokens``), and
    the bracketed load terms only when ``load_aware``. Ties stay on the edge.
    """

    m_tokens: float | None = None
    load_aware: bool = False

    def edge(self, request: Request, m_estimate: float, state: SchedulerState) -> bool:
        """The rule itself (what ``choose`` of such a policy returns)."""
        n, m = request.n_tokens, m_estimate if self.m_tokens is None else self.m_tokens
        t_edge = state.edge.predict(n, m)
        t_cloud = state.cloud.predict(n, m) + state.link.transmission_s(request.payload_bytes)
        if self.load_aware:
            t_edge += state.edge_backlog_s
            t_cloud += state.cloud_wait_s
        return t_edge <= t_cloud


@dataclass(frozen=True, slots=True)
class TruthRule:
    """A policy that is an Oracle, declared so that a replay can evaluate it fast: edge iff
    ``wait_e + T_edge <= T_tx + wait_c + T_cloud`` with the request's true transmission time,
    the queues' true waits, and its true execution times (``expected``: their expectations)."""

    expected: bool = False

    def edge(self, truth: GroundTruth) -> bool:
        """The rule itself (what ``choose`` of such a policy returns)."""
        if self.expected:
            t_edge, t_cloud = truth.edge_expected_s, truth.cloud_expected_s
        else:
            t_edge, t_cloud = truth.edge_s, truth.cloud_s
        return truth.edge_wait_s + t_edge <= truth.transmission_s + truth.cloud_wait_s + t_cloud


class DevicePolicy(abc.ABC):
    """Chooses where a request runs.

    ``choose`` is the one method a policy must have. Two optional fast paths let an offline
    replay of 100,000 requests skip building a Request and a SchedulerState per request:

    * ``choose_many`` for policies whose decision depends on neither the link estimate nor
      the queues (edge-only, cloud-only, the Oracles without queues): all decisions at once as
      a boolean array (True = edge).
    * ``linear_rule`` for policies that are the C-NMT rule (:class:`LinearRule`) and
      ``truth_rule`` for the Oracles (:class:`TruthRule`): the replay then evaluates the rule
      inline with plain arithmetic.

    They return ``None`` by default, which means "call ``choose`` per request", so a
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

    def choose_many(self, batch: RequestBatch, m_estimate: np.ndarray) -> np.ndarray | None:
        """All decisions at once (True = edge) if they ignore link and queues, else None."""
        return None

    def linear_rule(self) -> LinearRule | None:
        """The C-NMT rule this policy is, if it is one (see :class:`LinearRule`), else None."""
        return None

    def truth_rule(self) -> TruthRule | None:
        """The Oracle this policy is, if it is one (see :class:`TruthRule`), else None."""
        return None
