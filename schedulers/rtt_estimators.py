"""Round-trip-time estimators: the gateway's view of the link, fed by its own cloud exchanges.

An estimator only learns from requests that were offloaded: each exchange yields one sample,
the round trip the gateway measured minus the time the cloud spent translating (both from the
exchange's timestamps). Between offloads the estimate goes stale, exactly as on a live gateway.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Any, ClassVar

from cnmt.schema import NoParams


class RttEstimator(abc.ABC):
    """Turns timestamped RTT samples into the current RTT estimate (seconds)."""

    name: ClassVar[str]
    Params: ClassVar[type[Any]] = NoParams

    def __init__(self, params: Any) -> None:
        self.params = params

    @abc.abstractmethod
    def observe(self, rtt_s: float, at: float) -> None:
        """Record one measured round trip of ``rtt_s`` seconds, completed at time ``at``."""

    @abc.abstractmethod
    def estimate(self, now: float) -> float:
        """The RTT estimate at time ``now``; pure given the samples observed so far."""


class LastSample(RttEstimator):
    """The most recent sample, as the paper's gateway does; ``initial_s`` before any sample."""

    name = "last"

    @dataclass(frozen=True)
    class Params:
        initial_s: float = 0.1

    def __init__(self, params: Any) -> None:
        super().__init__(params)
        self._last = float(params.initial_s)

    def observe(self, rtt_s: float, at: float) -> None:
        self._last = rtt_s

    def estimate(self, now: float) -> float:
        return self._last
