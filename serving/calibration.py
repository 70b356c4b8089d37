"""Idle calibration of the edge: one short translation when an idle gateway's edge model is
stale, so that a device the decisions avoid is learnt without a user paying for it.

With ``gateway.calibrate_idle_s`` set (and a learning edge latency model), the gateway runs
:class:`EdgeCalibration` beside its worker. It polls the gateway: any request inside it, or
any observation its latency models made that was not a calibration, is activity. Once the
gateway has been idle ``calibrate_idle_s`` and the edge model has observed nothing for
``calibrate_stale_s`` (the decision is :class:`cnmt.schedulers.calibration.IdleCalibration`'s),
the worker translates ``calibration_text`` once, and the edge model observes its
``(N, M, seconds)`` like any local run: at most once per idle spell. A failed calibration is
logged and changes nothing. The cloud's side (its probe reporting its own execution time) is
not implemented.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from cnmt.errors import CnmtError
from cnmt.schedulers.base import Device
from cnmt.schedulers.calibration import IdleCalibration

log = logging.getLogger("cnmt.serving.calibration")


class EdgeCalibration:
    """The background loop of one gateway (``owner``: its clock, pending count, tokenizer, edge
    worker and latency models)."""

    def __init__(self, owner: Any, idle_s: float, stale_s: float, text: str) -> None:
        self.owner = owner
        self.schedule = IdleCalibration(idle_s=idle_s, stale_s=stale_s)
        self.text = text
        self.poll_s = max(0.02, min(idle_s, stale_s) / 4.0)
        self.runs = 0
        # The models' observations (the edge's less our own) when last polled: a change is
        # activity. From the start on; the prior counts as fresh then.
        self._seen = self._counts()
        self.schedule.observed(Device.EDGE, owner.clock())
        self._task: asyncio.Task[None] | None = None

    def _counts(self) -> tuple[int, int]:
        latency = self.owner.latency
        return (latency[Device.EDGE].observations - self.runs, latency[Device.CLOUD].observations)

    @classmethod
    def start_for(cls, owner: Any) -> EdgeCalibration | None:
        """Start it if the owner's settings ask for it and its edge model learns."""
        settings = owner.settings
        if settings.calibrate_idle_s is None or not owner.latency[Device.EDGE].learns:
            return None
        calibration = cls(
            owner, settings.calibrate_idle_s, settings.calibrate_stale_s, settings.calibration_text
        )
        calibration._task = asyncio.get_running_loop().create_task(calibration._loop())
        return calibration

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.poll_s)
            try:
                await self.step()
            except Exception:  # a calibration must never take the gateway down
                log.exception("edge calibration failed")

    async def step(self) -> bool:
        """Note activity; run one calibration if it is due. Returns whether it ran."""
        owner = self.owner
        now = owner.clock()
        edge = owner.latency[Device.EDGE]
        seen = self._counts()
        if owner.pending > 0 or seen != self._seen:
            self.schedule.request(now)
        if seen[0] != self._seen[0]:
            self.schedule.observed(Device.EDGE, now)
        self._seen = seen
        if not self.schedule.due(Device.EDGE, now):
            return False
        self.schedule.started(Device.EDGE, now)
        try:
            n_tokens = owner.tokenizer.count_source_tokens(self.text)
            guess = edge.current().predict(n_tokens, n_tokens)
            local = await owner.edge.translate(self.text, guess)
        except CnmtError as exc:
            log.warning("edge calibration failed: %s", exc)
            return False
        edge.observe(n_tokens, local.output_tokens, local.seconds)
        self.runs += 1
        self._seen = self._counts()
        self.schedule.observed(Device.EDGE, owner.clock())
        log.info("edge calibration: %d tokens in %.1f ms", n_tokens, local.seconds * 1e3)
        return True
