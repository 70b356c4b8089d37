"""Whether the gateway may offload now: the cloud's health, a circuit breaker and a bound on
concurrent cloud exchanges.

A cloud that crashes refuses connections at once, but a cloud that hangs (stopped, swapping,
a dead link that drops packets) answers nothing: every exchange sent to it waits the whole
``cloud_timeout_s`` before it falls back to the edge, and at a steady request rate those waits
pile up. :class:`CloudHealth` bounds the damage three ways:

1. **Bound on concurrent exchanges.** At most ``max_exchanges`` requests wait on the cloud at
   once; past it a request is not offloaded (fallback reason ``cloud_busy``) and runs on the
   edge. A hung cloud therefore holds at most ``max_exchanges`` of the gateway's
   ``max_pending`` slots.
2. **Circuit breaker on consecutive slow exchanges.** An exchange is *slow* once it has taken
   ``slow_s`` seconds, whether it has finished or is still waiting: an exchange still in flight
   is judged each time another request asks to offload, so a hung cloud is detected
   ``slow_s`` after the first stuck exchange, not ``cloud_timeout_s`` after it. ``slow_count``
   slow exchanges in a row (an exchange that finishes faster resets the count) open the
   breaker: the cloud is marked unhealthy. A failed exchange (timeout, refused connection,
   HTTP error, an answer that is not the protocol) marks it unhealthy at once. A 422 is an
   answer, not a fault.
3. **Active health probes, then one trial.** While the breaker is open, a prober sends
   ``GET /health`` (each bounded by the client's probe timeout) with exponential backoff from
   ``probe_initial_s`` to ``probe_max_s``. A good answer half-opens the breaker: the next
   request the policy sends to the cloud is a trial, the only exchange admitted (others run on
   the edge). A trial that answers faster than ``slow_s`` closes the breaker; one that fails or
   is slow opens it again, and the backoff goes on (a cloud whose ``/health`` is fast but whose
   translations are slow must not get ``max_exchanges`` requests after every probe). While the
   breaker is closed and no exchange has finished for ``health_interval_s``, the cloud is
   probed too, so ``/health`` and the ``cloud_healthy`` gauge tell the truth when nothing is
   offloaded; a half-open breaker with nothing to try closes on such a probe.

Time comes from the injected ``clock`` (monotonic seconds), so the breaker's logic is tested
with a fake clock and no sleeping; only the two background probe loops sleep.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field

from cnmt.serving.cloud_client import CloudFailure
from cnmt.serving.logs import escape_controls

log = logging.getLogger("cnmt.serving.cloud_health")

BUSY = "cloud_busy"
UNHEALTHY = "cloud_unhealthy"


CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"


@dataclass(eq=False)
class Exchange:
    """One cloud exchange in flight: when it started, whether it was counted slow, and whether
    it is the trial of a half-open breaker."""

    started: float
    trial: bool = False
    counted_slow: bool = field(default=False)


class CloudHealth:
    """The gateway's view of one cloud (see the module docstring for the algorithm).

    ``probe`` sends one health probe (True: the cloud answered as a C-NMT cloud does).
    ``on_change(healthy, cause)`` is told of every change of state, e.g. to set a gauge.
    """

    def __init__(
        self,
        *,
        probe: Callable[[], Awaitable[bool]],
        max_exchanges: int,
        slow_s: float,
        slow_count: int,
        probe_initial_s: float,
        probe_max_s: float,
        health_interval_s: float,
        clock: Callable[[], float] = time.monotonic,
        on_change: Callable[[bool, str], None] = lambda healthy, cause: None,
    ) -> None:
        self.probe = probe
        self.max_exchanges = max_exchanges
        self.slow_s = slow_s
        self.slow_count = slow_count
        self.probe_initial_s = probe_initial_s
        self.probe_max_s = probe_max_s
        self.health_interval_s = health_interval_s
        self.clock = clock
        self.on_change = on_change
        self.state = CLOSED
        self.consecutive_slow = 0
        self._probe_delay = probe_initial_s
        self.in_flight: set[Exchange] = set()
        self.last_finished = clock()
        self._prober: asyncio.Task[None] | None = None
        self._watcher: asyncio.Task[None] | None = None

    @property
    def healthy(self) -> bool:
        """The breaker is closed: exchanges go ahead up to ``max_exchanges``."""
        return self.state == CLOSED

    @property
    def available(self) -> bool:
        """An exchange may be tried: the breaker is closed or half-open."""
        return self.state != OPEN

    # --- admission ---

    def refusal(self) -> str | None:
        """None if a new exchange may start now, else the fallback reason: ``cloud_unhealthy``
        (the breaker is open, or half-open with its trial in flight) or ``cloud_busy``
        (``max_exchanges`` are in flight)."""
        self._count_stuck()
        if self.state == OPEN or (self.state == HALF_OPEN and self.in_flight):
            return UNHEALTHY
        if len(self.in_flight) >= self.max_exchanges:
            return BUSY
        return None

    @contextlib.contextmanager
    def exchange(self) -> Iterator[Exchange]:
        """Admit and account for one exchange: CloudFailure (``cloud_busy`` or
        ``cloud_unhealthy``) if it may not start; on exit, a CloudFailure raised inside marks
        the cloud unhealthy, anything else (an answer, a 422) counts as an answer."""
        refused = self.refusal()
        if refused is not None:
            raise CloudFailure(refused, _REFUSALS[refused].format(self=self))
        exchange = Exchange(started=self.clock(), trial=self.state == HALF_OPEN)
        self.in_flight.add(exchange)
        try:
            yield exchange
        except CloudFailure as exc:
            self._finish(exchange, failed=True)
            self.mark_unhealthy(str(exc), cause="failure")
            raise
        except asyncio.CancelledError:  # the request was abandoned: no verdict on the cloud
            self.in_flight.discard(exchange)
            raise
        except BaseException:
            self._finish(exchange)
            raise
        else:
            self._finish(exchange)

    def _finish(self, exchange: Exchange, failed: bool = False) -> None:
        self.in_flight.discard(exchange)
        now = self.clock()
        self.last_finished = now
        if now - exchange.started >= self.slow_s:
            self._count_slow(exchange)
        elif not exchange.counted_slow:
            self.consecutive_slow = 0
            if exchange.trial and not failed and self.state == HALF_OPEN:
                self._close("a trial exchange answered in time")

    def _count_stuck(self) -> None:
        now = self.clock()
        for exchange in sorted(self.in_flight, key=lambda e: e.started):
            if now - exchange.started >= self.slow_s:
                self._count_slow(exchange)

    def _count_slow(self, exchange: Exchange) -> None:
        if exchange.counted_slow:
            return
        exchange.counted_slow = True
        self.consecutive_slow += 1
        if exchange.trial and self.state == HALF_OPEN:
            self.mark_unhealthy(
                f"the trial exchange took longer than {self.slow_s:g} s (breaker_slow_s)",
                cause="slow",
            )
        elif self.consecutive_slow >= self.slow_count and self.state == CLOSED:
            self.mark_unhealthy(
                f"{self.consecutive_slow} cloud exchanges in a row took longer than "
                f"{self.slow_s:g} s (breaker_slow_s)",
                cause="slow",
            )

    # --- state ---

    def mark_unhealthy(self, why: str, cause: str) -> None:
        """Open the breaker: no exchange starts until a probe, then a trial, succeed."""
        if self.state == CLOSED:
            log.warning("cloud marked unhealthy: %s", escape_controls(why))
            self.on_change(False, cause)
        elif self.state == HALF_OPEN:
            log.warning("cloud still unhealthy: %s", escape_controls(why))
        self.state = OPEN
        if self._prober is None or self._prober.done():
            self._prober = asyncio.get_running_loop().create_task(self._probe_until_healthy())

    def _close(self, why: str) -> None:
        log.warning("cloud is healthy again: %s", why)
        self.state = CLOSED
        self.consecutive_slow = 0
        self._probe_delay = self.probe_initial_s
        self.last_finished = self.clock()
        self.on_change(True, "probe")

    async def _probe_until_healthy(self) -> None:
        while self.state == OPEN:
            await asyncio.sleep(self._probe_delay)
            self._probe_delay = min(self._probe_delay * 2.0, self.probe_max_s)
            if await self.probe() and self.state == OPEN:
                self.state = HALF_OPEN  # the next offload is the trial
                self.last_finished = self.clock()
                return

    async def _probe_while_idle(self) -> None:
        while True:
            await asyncio.sleep(self.health_interval_s)
            idle = self.clock() - self.last_finished >= self.health_interval_s
            if not idle or self.state == OPEN or (self.state == HALF_OPEN and self.in_flight):
                continue
            answered = await self.probe()
            if self.state == CLOSED and not answered:
                self.mark_unhealthy(
                    "it did not answer a health probe while nothing was offloaded", cause="probe"
                )
            elif self.state == HALF_OPEN and answered and not self.in_flight:
                self._close("it answered its health probes and nothing was offloaded")

    # --- lifecycle ---

    def start(self) -> None:
        """Start probing while idle (call from the event loop)."""
        if self._watcher is None:
            self._watcher = asyncio.get_running_loop().create_task(self._probe_while_idle())

    async def close(self) -> None:
        for task in (self._watcher, self._prober):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._watcher = self._prober = None


_REFUSALS = {
    BUSY: "{self.max_exchanges} cloud exchanges already in flight (max_cloud_exchanges)",
    UNHEALTHY: "the cloud is marked unhealthy until a health probe succeeds",
}
