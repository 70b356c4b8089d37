"""Round-trip-time estimators: the gateway's view of the link, fed by its own cloud exchanges.

An estimator only learns from requests that were offloaded: each exchange yields one sample,
the round trip the gateway measured minus the time the cloud spent translating and minus the
payload's serialisation time (all from the exchange's timestamps and sizes). Between offloads
the estimate goes stale, exactly as on a live gateway.

Using one (the live gateway and the offline replay do the same)::

    from cnmt.registry import get_components

    rtt = get_components().create("rtt_estimator", "ewma")   # default params
    rtt.observe(0.152, at=t_done)          # after each offloaded exchange completes
    link_rtt = rtt.estimate(now=t_next)    # before each decision

Estimators are pure: time is always passed in (seconds on any monotonic clock), nothing reads
a clock, and the same calls give the same estimates. Each gateway (or each replayed policy)
owns its own instance.
"""

from __future__ import annotations

import abc
import math
import statistics
from collections import deque
from dataclasses import dataclass
from typing import Any, ClassVar

from cnmt.schema import NoParams, ranged


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


def check_sample(rtt_s: float) -> float:
    """A finite, non-negative round trip; anything else is a caller's bug (e.g. a lost ping)."""
    value = float(rtt_s)
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"an RTT sample must be a finite number of seconds >= 0, got {rtt_s!r}")
    return value


@dataclass(frozen=True)
class InitialParams:
    initial_s: float = ranged(0.1, low=0, high=60)

    def __post_init__(self) -> None:
        if self.initial_s < 0:
            raise ValueError(f"initial_s must be >= 0, got {self.initial_s}")


class LastSample(RttEstimator):
    """The most recent sample, as the paper's gateway does; ``initial_s`` before any sample."""

    name = "last"
    Params = InitialParams

    def __init__(self, params: Any) -> None:
        super().__init__(params)
        self._last = float(params.initial_s)

    def observe(self, rtt_s: float, at: float) -> None:
        self._last = check_sample(rtt_s)

    def estimate(self, now: float) -> float:
        return self._last


class Ewma(RttEstimator):
    """Exponentially weighted moving average of the samples (TCP's smoothed RTT).

    ``srtt <- (1 - alpha) * srtt + alpha * sample``; the first sample replaces ``initial_s``.
    alpha = 1/8 is RFC 6298's choice: one congestion spike moves the estimate by an eighth of
    its size, so a single slow exchange does not send every following request to the edge.
    """

    name = "ewma"

    @dataclass(frozen=True)
    class Params:
        alpha: float = ranged(0.125, low=0, high=1, above=True)
        initial_s: float = ranged(0.1, low=0, high=60)

        def __post_init__(self) -> None:
            if not 0.0 < self.alpha <= 1.0:
                raise ValueError(f"alpha must be in (0, 1], got {self.alpha}")
            if self.initial_s < 0:
                raise ValueError(f"initial_s must be >= 0, got {self.initial_s}")

    def __init__(self, params: Any) -> None:
        super().__init__(params)
        self._srtt = float(params.initial_s)
        self._seen = False

    def observe(self, rtt_s: float, at: float) -> None:
        sample = check_sample(rtt_s)
        if self._seen:
            self._srtt += self.params.alpha * (sample - self._srtt)
        else:
            self._srtt, self._seen = sample, True

    def estimate(self, now: float) -> float:
        return self._srtt


class WindowedMedian(RttEstimator):
    """Median of the last ``window`` samples; once they are stale, it decays toward the floor.

    The median ignores isolated spikes (a retransmission, a busy cloud) that would drag a
    mean. An estimate learnt only from offloads can get stuck, though: after a burst of slow
    samples every request stays on the edge and no new sample arrives to correct it. So once
    the newest sample is older than ``max_age_s``, the estimate decays exponentially (time
    constant ``decay_s``) from the window's median toward the lowest RTT ever observed (the
    link's floor). The requests that gain most from the cloud cross their break-even first,
    get offloaded and measure the link again; on a link that stays near its floor the decay
    changes nothing. With ``stale_s`` set, a stale estimate is that fixed value instead (0 makes
    the next request a probe, whatever it is). ``max_age_s: null`` never lets samples go stale
    (a plain windowed median).
    """

    name = "median"

    @dataclass(frozen=True)
    class Params:
        window: int = ranged(5, low=1, high=10000)
        max_age_s: float | None = ranged(30.0, low=0, high=1000000, above=True)
        decay_s: float = ranged(60.0, low=0, high=1000000, above=True)
        stale_s: float | None = ranged(None, low=0, high=60)
        initial_s: float = ranged(0.1, low=0, high=60)

        def __post_init__(self) -> None:
            if self.window < 1:
                raise ValueError(f"window must be >= 1, got {self.window}")
            if self.max_age_s is not None and self.max_age_s <= 0:
                raise ValueError(f"max_age_s must be positive or null, got {self.max_age_s}")
            if self.decay_s <= 0:
                raise ValueError(f"decay_s must be positive, got {self.decay_s}")
            if self.initial_s < 0 or (self.stale_s is not None and self.stale_s < 0):
                raise ValueError("initial_s and stale_s must be >= 0")

    def __init__(self, params: Any) -> None:
        super().__init__(params)
        self._samples: deque[float] = deque(maxlen=params.window)
        self._median = float(params.initial_s)
        self._floor = math.inf
        self._newest = -math.inf

    def observe(self, rtt_s: float, at: float) -> None:
        sample = check_sample(rtt_s)
        self._samples.append(sample)
        self._median = float(statistics.median(self._samples))  # once per sample, not per read
        self._floor = min(self._floor, sample)
        self._newest = max(self._newest, float(at))

    def estimate(self, now: float) -> float:
        if not self._samples:
            return float(self.params.initial_s)
        median = self._median
        max_age = self.params.max_age_s
        overdue = now - self._newest - max_age if max_age is not None else 0.0
        if overdue <= 0:
            return median
        if self.params.stale_s is not None:
            return float(self.params.stale_s)
        return self._floor + (median - self._floor) * math.exp(-overdue / self.params.decay_s)
