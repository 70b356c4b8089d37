"""The edge's backlog: what is left of the predicted times of its local requests.

A load-aware rule adds it to a new local request's own time (it starts after them). Each local
request is queued with the decision's predicted execution time; the backlog at ``now`` is the
sum of those predictions for the requests not finished, less what the running ones have run
(never more than their prediction), spread over the edge's ``workers``.

One class for the live gateway and the replay, which learn about a request at different
moments: the live worker reports when a request starts (:meth:`EdgeBacklog.start`) and ends
(:meth:`EdgeBacklog.finish`); the replay knows both times when it queues the request and passes
them to :meth:`EdgeBacklog.add`. Pure: the caller passes the time in.
"""

from __future__ import annotations

from collections import OrderedDict


class EdgeBacklog:
    """The predicted remaining work of the edge's queued and running requests."""

    def __init__(self, workers: int = 1) -> None:
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        self.workers = workers
        # job -> [predicted, start or None, done or None], in queue order
        self._jobs: OrderedDict[int, list[float | None]] = OrderedDict()
        self._queued = 0.0  # the sum of the predictions in _jobs
        self._next = 0

    def add(self, predicted_s: float, start: float | None = None, done: float | None = None) -> int:
        """Queue one request predicted to run ``predicted_s``; with ``start`` and ``done`` when
        they are already known (a replay). Returns the job's key for :meth:`start` and
        :meth:`finish`."""
        job = self._next
        self._next += 1
        self._jobs[job] = [predicted_s, start, done]
        self._queued += predicted_s
        return job

    def start(self, job: int, at: float) -> None:
        """The request ``job`` started running at ``at``."""
        self._jobs[job][1] = at

    def finish(self, job: int) -> None:
        """The request ``job`` finished (or failed): it no longer counts."""
        entry = self._jobs.pop(job, None)
        if entry is not None:
            self._queued -= entry[0]  # type: ignore[operator]
        if not self._jobs:
            self._queued = 0.0  # no rounding left over once the queue is empty

    def at(self, now: float) -> float:
        """The backlog at ``now`` (seconds, per worker)."""
        jobs = self._jobs
        while jobs:
            job, (predicted, _, done) = next(iter(jobs.items()))
            if done is None or done > now:
                break
            del jobs[job]
            self._queued -= predicted  # type: ignore[operator]
        backlog = self._queued
        for k, (predicted, start, _) in enumerate(jobs.values()):
            if k == self.workers:
                break
            if start is not None and start <= now:
                backlog -= min(predicted, now - start)  # type: ignore[type-var, operator]
        return max(0.0, backlog) / self.workers

    def __len__(self) -> int:
        return len(self._jobs)
