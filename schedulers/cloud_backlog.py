"""The cloud's queue as far as this gateway filled it: its own offloads' predicted work.

The load-aware rule needs the wait a request sent now would have in the cloud. The cloud
reports each request's wait with its answer, but a report describes the queue as it was when
that request arrived, and it comes back only after the request ran: after a burst the recent
reports still say "long wait" while the queue has already drained, and a rule that trusts them
sends requests to a slower edge for nothing (measured in the replay: with the reports alone,
``cnmt_load`` was up to 2% slower than the paper's rule on MarianMT, whose edge is 8x slower).

Most of what a gateway's requests wait behind is its own earlier offloads, and those it knows
the moment it sends them. :class:`OwnCloudBacklog` runs them through a copy of the cloud's
FIFO servers (``workers`` of them), each taking its predicted execution time from the moment it
was sent: :meth:`~OwnCloudBacklog.at` is how long a request sent now would wait behind them.
What other clients of the same cloud send is not in it; the gateway learns that part from the
reports, each minus the own part predicted when its request was sent (the value
:meth:`~OwnCloudBacklog.add` returns), and the rule's cloud wait is the sum of the two.

Pure: the caller passes the time in (the gateway its clock, the replay its simulated time).
The half link on the way to the cloud is left out on purpose: it delays every request alike and
the RTT estimate already counts it.
"""

from __future__ import annotations

import heapq


class OwnCloudBacklog:
    """A gateway's own offloads through ``workers`` FIFO servers, at their predicted times."""

    def __init__(self, workers: int = 1) -> None:
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        self._free = [0.0] * workers  # a heap: when each server is next free

    def at(self, now: float) -> float:
        """The predicted wait of a request sent at ``now`` behind this gateway's own offloads."""
        return max(0.0, self._free[0] - now)

    def add(self, now: float, predicted_s: float) -> float:
        """An offload sent at ``now`` that will run ``predicted_s``; returns its own predicted
        wait (to take out of the wait the cloud reports for it)."""
        wait = self.at(now)
        heapq.heapreplace(self._free, now + wait + max(0.0, predicted_s))
        return wait
