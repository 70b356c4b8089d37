"""Idle calibration: when a device nobody has used for a while should run one short request.

The link estimate stays fresh through the gateway's idle health probes; compute has no such
probe, so a device the decisions avoid is learnt only by exploring it with users' requests.
When the gateway is idle anyway, a calibration run costs no user anything: the edge worker
translates one short sentence, the cloud's probe answer reports how long its own short
translation took, and the device's latency model observes ``(N, M, seconds)`` like any other
run. One run of any size is enough for the ``posterior`` model's speed scale
(:mod:`cnmt.schedulers.posterior`).

:class:`IdleCalibration` only decides *when*: a device is due once the gateway has had no
request for ``idle_s`` and the device has not been observed for ``stale_s``; at most one
calibration per device per idle spell. Pure: the caller passes the time in; the serving side
(running the translation, reading the probe's time) is the caller's.
"""

from __future__ import annotations

from dataclasses import dataclass

from cnmt.schedulers.base import Device


@dataclass
class IdleCalibration:
    """Tracks the last request and each device's last observation (seconds, caller's clock)."""

    idle_s: float = 5.0
    stale_s: float = 30.0

    def __post_init__(self) -> None:
        if not (self.idle_s > 0 and self.stale_s > 0):
            raise ValueError(
                f"idle_s and stale_s must be positive, got {self.idle_s}, {self.stale_s}"
            )
        self._last_request: float | None = None
        # By target name: the edge (``Device.EDGE``) and each cloud, however many.
        self._observed: dict[str, float] = {}
        self._calibrated: dict[str, float] = {}  # when each target's last calibration ran
        self.runs: dict[str, int] = {Device.EDGE: 0, Device.CLOUD: 0}

    def request(self, now: float) -> None:
        """A user request arrived at ``now`` (it ends any idle spell)."""
        self._last_request = now

    def observed(self, device: str, now: float) -> None:
        """``device`` finished a run at ``now`` (a user's or a calibration's)."""
        self._observed[device] = now

    def due(self, device: str, now: float) -> bool:
        """Whether ``device`` should run one calibration request now."""
        idle_since = self._last_request
        if idle_since is None or now - idle_since < self.idle_s:
            return False  # never used yet (the prior is all there is), or not idle
        last = self._observed.get(device)
        if last is not None and now - last < self.stale_s:
            return False
        calibrated = self._calibrated.get(device)
        return calibrated is None or calibrated < idle_since  # once per idle spell

    def started(self, device: str, now: float) -> None:
        """The caller started a calibration run on ``device`` at ``now``."""
        self._calibrated[device] = now
        self.runs[device] = self.runs.get(device, 0) + 1
