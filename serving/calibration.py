"""Idle calibration of every target: one short translation when an idle gateway's model of a
target is stale, so that a target the decisions avoid is learnt without a user paying for it.

With ``gateway.calibrate_idle_s`` set, the gateway runs :class:`IdleCalibrationLoop` beside its
worker. It polls the gateway: any request inside it, or any observation its latency models made
that was not a calibration, is activity. Once the gateway has been idle ``calibrate_idle_s``
and a target's latency model (one that learns) has observed nothing for ``calibrate_stale_s``
(the decision is :class:`cnmt.schedulers.calibration.IdleCalibration`'s), that target
translates ``calibration_text`` once, at most once per idle spell:

- the edge worker runs it, and the edge model observes its ``(N, M, seconds)`` like any local
  run;
- a cloud runs it as the gateway's probe of its compute: a translation request like a user's,
  through the cloud's breaker (a cloud that is down or busy is not calibrated), whose answer
  reports the cloud's own execution time. The cloud's model observes ``(N, M, exec_s)``, and
  the exchange's round trip, less what the cloud spent, is a link sample like an idle health
  probe's.

The idle health probes keep the link fresh; this keeps compute fresh. A failed calibration is
logged and changes nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from cnmt.errors import CnmtError
from cnmt.schedulers.base import Device
from cnmt.schedulers.calibration import IdleCalibration
from cnmt.serving.cloud_client import CloudFailure, CloudRejected

log = logging.getLogger("cnmt.serving.calibration")


class IdleCalibrationLoop:
    """The background loop of one gateway (``owner``: its clock, pending count, tokenizer, edge
    worker, clouds, their health, the decision core and the latency models)."""

    def __init__(self, owner: Any, idle_s: float, stale_s: float, text: str) -> None:
        self.owner = owner
        self.schedule = IdleCalibration(idle_s=idle_s, stale_s=stale_s)
        self.text = text
        self.poll_s = max(0.02, min(idle_s, stale_s) / 4.0)
        self.targets = [t for t in owner.latency if owner.latency[t].learns]
        self.runs_by_target = dict.fromkeys(self.targets, 0)
        # Each model's observations, less our own, when last polled: a change is activity.
        # From the start on; the prior counts as fresh then.
        self._seen = self._counts()
        now = owner.clock()
        for target in self.targets:
            self.schedule.observed(target, now)
        self._task: asyncio.Task[None] | None = None

    @property
    def runs(self) -> int:
        """Calibrations run on the edge (what the edge's tests and ``/v1/models`` read)."""
        return self.runs_by_target.get(Device.EDGE, 0)

    def _counts(self) -> dict[str, int]:
        latency = self.owner.latency
        return {t: latency[t].observations - self.runs_by_target[t] for t in self.targets}

    @classmethod
    def start_for(cls, owner: Any) -> IdleCalibrationLoop | None:
        """Start it if the owner's settings ask for it and some target's model learns."""
        settings = owner.settings
        if settings.calibrate_idle_s is None:
            return None
        if not any(owner.latency[t].learns for t in owner.latency):
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
                log.exception("idle calibration failed")

    async def step(self) -> list[str]:
        """Note activity; run the calibrations that are due. Returns the targets calibrated."""
        owner = self.owner
        now = owner.clock()
        seen = self._counts()
        if owner.pending > 0 or seen != self._seen:
            self.schedule.request(now)
        for target in self.targets:
            if seen[target] != self._seen[target]:
                self.schedule.observed(target, now)
        self._seen = seen
        calibrated = []
        for target in self.targets:
            if owner.pending > 0:
                break  # a user arrived meanwhile: they come first
            if not self.schedule.due(target, owner.clock()):
                continue
            if target != Device.EDGE and not owner.available(target):
                continue  # a cloud that is down is the health probe's job
            self.schedule.started(target, owner.clock())
            ran = await (self._edge() if target == Device.EDGE else self._cloud(target))
            if ran:
                self.runs_by_target[target] += 1
                calibrated.append(target)
            self._seen = self._counts()
            self.schedule.observed(target, owner.clock())
        return calibrated

    async def _edge(self) -> bool:
        owner = self.owner
        edge = owner.latency[Device.EDGE]
        try:
            n_tokens = owner.tokenizer.count_source_tokens(self.text)
            guess = edge.current().predict(n_tokens, n_tokens)
            local = await owner.edge.translate(self.text, guess)
        except CnmtError as exc:
            log.warning("edge calibration failed: %s", exc)
            return False
        edge.observe(n_tokens, local.output_tokens, local.seconds)
        log.info("edge calibration: %d tokens in %.1f ms", n_tokens, local.seconds * 1e3)
        return True

    async def _cloud(self, target: str) -> bool:
        owner = self.owner
        client = owner.clouds[target]
        try:
            with owner.healths[target].exchange():  # the breaker's rules, as for a user's
                reply = await client.translate(self.text)
        except (CloudFailure, CloudRejected) as exc:
            log.warning("calibration of cloud %s failed: %s", target, exc)
            return False
        owner.latency[target].observe(reply.n_tokens, reply.m_tokens, reply.exec_s)
        at = owner.clock()
        owner.core.observe_probe(
            target, reply.rtt_sample(owner.settings.bandwidth_bps), at, reply.pending == 0
        )
        log.info(
            "cloud %s calibration: %d tokens in %.1f ms", target, reply.n_tokens, reply.exec_s * 1e3
        )
        return True
