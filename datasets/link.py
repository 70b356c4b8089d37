"""The gateway-cloud link: one model of it, shared by the replay and the live emulated link.

A link has a round-trip time that changes over time and a bandwidth. Its RTT comes from a
constant (``rtt_ms``) or a window of a measured trace (``trace``, ``format``, ``start``,
``samples``); the replay (``replay.connections``) and the live proxy (the ``link`` section)
use the same keys and this module's rules:

* **Time.** Trace sample ``i`` holds from its time ``t_i`` until the next sample's. ``t_i`` is
  the trace's own timestamp (seconds since the window's first sample), or ``i *
  sample_period_s`` when ``sample_period_s`` is set or the trace has no timestamps (then 1 s by
  default). The window lasts until one sampling interval after its last sample, then starts
  over (it loops), so a run of any length only ever sees measured values.
* **Lost pings.** A lost ping stands for a lost packet: an exchange during it pays the last
  answered RTT plus one retransmission timeout, ``loss_timeout_s`` (1 s, RFC 6298's initial
  RTO). Lost pings before the window's first answered one are charged on that one.
* **Serialisation.** ``B`` bytes take ``8 * B / bandwidth`` seconds (:func:`serialisation_s`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from cnmt.datasets.traces import RttTrace, load_trace
from cnmt.errors import ConfigError
from cnmt.schema import ranged

DEFAULT_SAMPLE_PERIOD_S = 1.0
DEFAULT_LOSS_TIMEOUT_S = 1.0  # RFC 6298's initial retransmission timeout


def serialisation_s(nbytes: float | np.ndarray, bandwidth_bps: float) -> float | np.ndarray:
    """Seconds to put ``nbytes`` on a line of ``bandwidth_bps`` bits per second."""
    return 8.0 * nbytes / bandwidth_bps


@dataclass(frozen=True)
class RttSource:
    """Where a link's RTT comes from: a constant ``rtt_ms`` or a window of a ``trace``.

    ``start`` is the window's first sample and ``samples`` its length (null: to the end of the
    trace), or ``hours`` its length in time (the samples that start within that many hours);
    ``sample_period_s`` overrides the trace's timestamps (see the module docstring).
    """

    rtt_ms: float | None = ranged(None, low=0, high=60000)
    trace: str | None = None
    format: Literal["auto", "ripe-csv", "ripe-json", "plain"] = "auto"
    start: int = ranged(0, low=0, high=1000000000)
    samples: int | None = ranged(None, low=1, high=1000000000)
    sample_period_s: float | None = ranged(None, low=0, high=86400, above=True)
    hours: float | None = ranged(None, low=0, high=1000000, above=True)

    def __post_init__(self) -> None:
        if (self.rtt_ms is None) == (self.trace is None):
            raise ValueError("give exactly one of rtt_ms (a constant RTT) and trace (a file)")
        if self.rtt_ms is not None and self.rtt_ms < 0:
            raise ValueError(f"rtt_ms must be >= 0, got {self.rtt_ms}")
        if self.start < 0:
            raise ValueError(f"start must be >= 0, got {self.start}")
        if self.samples is not None and self.samples < 1:
            raise ValueError(f"samples must be >= 1 or null (to the end), got {self.samples}")
        if self.sample_period_s is not None and not self.sample_period_s > 0:
            raise ValueError(f"sample_period_s must be positive, got {self.sample_period_s}")
        if self.hours is not None and (not self.hours > 0 or self.samples is not None):
            raise ValueError("hours must be positive, and not given together with samples")

    def timeline(self, loss_timeout_s: float = DEFAULT_LOSS_TIMEOUT_S) -> RttTimeline:
        """The RTT over time this source describes (reads the trace now)."""
        if self.rtt_ms is not None:
            return RttTimeline.constant(self.rtt_ms / 1000.0)
        assert self.trace is not None
        window = load_trace(self.trace, self.format).window(self.start, self.samples)
        timeline = RttTimeline.from_trace(window, self.sample_period_s, loss_timeout_s)
        if self.hours is None:
            return timeline
        keep = int(np.searchsorted(timeline.times_s, self.hours * 3600.0, side="left"))
        if keep < 2:
            raise ConfigError(
                f"{self.trace}: a {self.hours:g}-hour window from sample {self.start} holds "
                f"{keep} sample(s); give more hours"
            )
        return RttTimeline.from_trace(window.window(0, keep), self.sample_period_s, loss_timeout_s)

    def describe(self) -> str:
        if self.rtt_ms is not None:
            return f"constant RTT {self.rtt_ms:g} ms"
        window = f"samples {self.start}.." + ("end" if self.samples is None else f"+{self.samples}")
        period = f", {self.sample_period_s:g} s per sample" if self.sample_period_s else ""
        return f"trace {self.trace} ({window}{period})"


@dataclass(frozen=True)
class RttTimeline:
    """RTT (seconds) as a function of time since the start of a window, looping at its end.

    ``times_s[i]`` is when sample ``i`` starts, ``rtt_s[i]`` what an exchange during it pays
    (lost pings already charged), ``lost[i]`` whether it was a lost ping.
    """

    times_s: np.ndarray
    rtt_s: np.ndarray
    lost: np.ndarray
    duration_s: float
    window: RttTrace | None = None

    @classmethod
    def constant(cls, rtt_s: float) -> RttTimeline:
        return cls(np.zeros(1), np.array([float(rtt_s)]), np.zeros(1, dtype=bool), 1.0)

    @classmethod
    def from_trace(
        cls,
        window: RttTrace,
        sample_period_s: float | None = None,
        loss_timeout_s: float = DEFAULT_LOSS_TIMEOUT_S,
    ) -> RttTimeline:
        if loss_timeout_s < 0:
            raise ConfigError(f"loss_timeout_s must be >= 0, got {loss_timeout_s}")
        if sample_period_s is None and window.times_s is not None and len(window) > 1:
            times = np.asarray(window.times_s, dtype=float)
            period = float(np.median(np.diff(times))) or DEFAULT_SAMPLE_PERIOD_S
        else:
            period = sample_period_s or DEFAULT_SAMPLE_PERIOD_S
            times = np.arange(len(window), dtype=float) * period
        answered = np.where(~window.lost, np.arange(len(window)), -1)
        if (answered < 0).all():
            raise ConfigError(f"{window.source}: every ping in the window was lost")
        last_answered = np.maximum.accumulate(answered)
        last_answered[last_answered < 0] = int(np.flatnonzero(~window.lost)[0])
        rtt = window.rtt_ms[last_answered] / 1000.0 + np.where(window.lost, loss_timeout_s, 0.0)
        duration = float(times[-1] - times[0]) + period
        return cls(times - times[0], rtt, window.lost.copy(), duration, window)

    def __len__(self) -> int:
        return len(self.rtt_s)

    def index_at(self, t_s: float | np.ndarray) -> np.ndarray:
        """The sample in effect at each time ``t_s`` (seconds since the window started)."""
        wrapped = np.mod(np.asarray(t_s, dtype=float), self.duration_s)
        return np.maximum(np.searchsorted(self.times_s, wrapped, side="right") - 1, 0)

    def rtt_at(self, t_s: float) -> float:
        """The RTT an exchange starting at time ``t_s`` pays."""
        return float(self.rtt_s[int(self.index_at(t_s))])
