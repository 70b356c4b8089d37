"""The load-aware C-NMT rule deciding on posterior samples: exploration with a bounded cost.

A closed loop learns a device's speed only from the requests it sends there. When the prior
makes one device look slower than it is, the rule never sends it a request and never learns
otherwise. :class:`ExploringPolicy` (``cnmt_explore``) decides with Thompson sampling: for each
request it draws the expected execution time at the request's (N, M) from each device's
posterior (:meth:`cnmt.schedulers.posterior.PosteriorModel.draw`, what the ``posterior`` latency
model gives; log-normal, since a speed is a factor) and applies the ``cnmt_load`` rule to the
draws. A device the gateway is sure about is drawn
close to its mean, so the draw only changes the decision where the two devices are nearly
tied; a device it knows little about is drawn anywhere in its spread, and is tried as often
as it might be the faster one. Each try shrinks that spread, so trying stops by itself.

The decision with the posterior means is computed too. A request whose sampled decision
differs from it is *explored*. Exploring costs one credit from a bucket that refills by
``budget`` per request up to ``burst``: whatever the posteriors say, at most ``budget`` of the
requests in the long run (and ``burst`` in a row) are explored, and without credit the mean's
decision is taken. The budget is the cost bound, and it is the only one by default: a cap on
each try's expected added time, computed from the posterior means, refuses exactly the tries
that would correct a stale mean (a device whose prior is 4x too slow looks 4x too costly to
try). ``max_added`` sets such a cap for users who want one: no request is explored whose
expected added time (the means' difference) is over ``max_added`` times the expected time of
the mean's choice.

What exploring costs is counted in :attr:`ExploringPolicy.exploration`: the requests
explored, per device, and their expected added time (the posterior mean of the device tried
less that of the one the mean chose, at the request's (N, M), queues and link included).

The randomness is an injected, seeded :class:`numpy.random.Generator` (``params.seed`` by
default): the same requests in the same order give the same decisions. With latency models
that carry no posterior (``profile``, ``online``) it decides exactly as ``cnmt_load``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from cnmt.schedulers.base import (
    Device,
    DevicePolicy,
    LatencyModel,
    Request,
    SchedulerState,
)
from cnmt.schedulers.posterior import PosteriorModel
from cnmt.schema import ranged


@dataclass
class ExplorationCounters:
    """What exploring has cost so far (what the gateway's metrics and ``/v1/models`` show)."""

    decisions: int = 0
    explored: int = 0
    explored_edge: int = 0  # explored requests sent to the edge (the mean said cloud)
    explored_cloud: int = 0
    expected_added_s: float = 0.0  # sum over explored requests of mean(tried) - mean(other)
    skipped_no_credit: int = 0  # draws that would have explored, refused by the budget
    skipped_costly: int = 0  # draws that would have explored where it would cost too much

    def as_dict(self) -> dict[str, Any]:
        share = self.explored / self.decisions if self.decisions else 0.0
        return {
            "decisions": self.decisions,
            "explored": self.explored,
            "explored_edge": self.explored_edge,
            "explored_cloud": self.explored_cloud,
            "share": share,
            "expected_added_s": self.expected_added_s,
            "skipped_no_credit": self.skipped_no_credit,
            "skipped_costly": self.skipped_costly,
        }


class ExploringPolicy(DevicePolicy):
    """The ``cnmt_load`` rule on posterior draws (Thompson sampling), at most ``budget`` of the
    requests explored; see the module docstring."""

    name = "cnmt_explore"

    @dataclass(frozen=True)
    class Params:
        seed: int = ranged(0, low=0, high=2**63 - 1)
        budget: float = ranged(0.02, low=0, high=1)
        burst: float = ranged(5.0, low=1, high=1e6)
        max_added: float | None = ranged(None, low=0, high=1000, above=True)
        load_aware: bool = True

        def __post_init__(self) -> None:
            if not 0.0 <= self.budget <= 1.0:
                raise ValueError(f"budget must be in [0, 1], got {self.budget}")
            if self.burst < 1.0:
                raise ValueError(f"burst must be >= 1 (one exploration), got {self.burst}")
            if self.max_added is not None and not self.max_added > 0:
                raise ValueError(f"max_added must be positive, got {self.max_added}")

    def __init__(self, params: Any, rng: np.random.Generator | None = None) -> None:
        super().__init__(params)
        self.rng = rng if rng is not None else np.random.default_rng(params.seed)
        self.credit = float(params.burst)
        self.exploration = ExplorationCounters()
        self.last_explored = False  # whether the latest decision explored
        self.last_expected_added_s = 0.0

    def choose(self, request: Request, m_estimate: float, state: SchedulerState) -> Device:
        p = self.params
        counters = self.exploration
        counters.decisions += 1
        self.credit = min(p.burst, self.credit + p.budget)
        self.last_explored, self.last_expected_added_s = False, 0.0
        n, m = request.n_tokens, m_estimate
        transmission = state.link.transmission_s(request.payload_bytes)
        extra_edge = state.edge_backlog_s if p.load_aware else 0.0
        extra_cloud = transmission + (state.cloud_wait_s if p.load_aware else 0.0)
        mean_edge = state.edge.predict(n, m) + extra_edge
        mean_cloud = state.cloud.predict(n, m) + extra_cloud
        to_edge = mean_edge <= mean_cloud
        e, c = state.edge, state.cloud
        if not (isinstance(e, PosteriorModel) or isinstance(c, PosteriorModel)):
            return Device.EDGE if to_edge else Device.CLOUD
        draw_edge = _draw(e, n, m, self.rng) + extra_edge
        draw_cloud = _draw(c, n, m, self.rng) + extra_cloud
        sampled_edge = draw_edge <= draw_cloud
        added = abs(mean_edge - mean_cloud)
        costly = p.max_added is not None and added > p.max_added * min(mean_edge, mean_cloud)
        if sampled_edge != to_edge and costly:
            counters.skipped_costly += 1  # the user's cap: try it on a cheaper request
        elif sampled_edge != to_edge:
            if self.credit >= 1.0:
                self.credit -= 1.0
                counters.explored += 1
                counters.expected_added_s += added
                if sampled_edge:
                    counters.explored_edge += 1
                else:
                    counters.explored_cloud += 1
                self.last_explored, self.last_expected_added_s = True, added
                to_edge = sampled_edge
            else:
                counters.skipped_no_credit += 1
        return Device.EDGE if to_edge else Device.CLOUD


def _draw(model: LatencyModel, n: float, m: float, rng: np.random.Generator) -> float:
    return model.draw(n, m, rng) if isinstance(model, PosteriorModel) else model.predict(n, m)
