"""What the closed loop's exploration costs, as Prometheus metrics read when scraped (the
gateway registers :class:`ExplorationMetrics`; what the latency models refused is the gateway's
``cnmt_gateway_latency_model_dropped_total``).

* ``cnmt_gateway_explored_requests_total{device}``: with a policy that explores
  (``cnmt_explore``), requests sent to the device the posterior means did not choose;
* ``cnmt_gateway_exploration_expected_added_seconds_total``: their expected added time.
"""

from __future__ import annotations

from typing import Any

from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from cnmt.schedulers.base import DevicePolicy


class ExplorationMetrics(Collector):
    """Reads the policy's ``exploration`` counters from ``owner`` (a gateway: its
    ``device_policy``), when scraped."""

    def __init__(self, owner: Any) -> None:
        self.owner = owner

    def collect(self) -> Any:
        policy: DevicePolicy = self.owner.device_policy
        exploration = getattr(policy, "exploration", None)
        if exploration is not None:  # a policy that explores (cnmt_explore)
            explored = CounterMetricFamily(
                "cnmt_gateway_explored_requests",
                "Requests sent to the device the posterior means did not choose, to learn it, "
                "per device they were sent to.",
                labels=["device"],
            )
            explored.add_metric(["edge"], exploration.explored_edge)
            explored.add_metric(["cloud"], exploration.explored_cloud)
            yield explored
            yield CounterMetricFamily(
                "cnmt_gateway_exploration_expected_added_seconds",
                "The explored requests' expected added time: the posterior mean of the device "
                "tried less that of the one the means chose, summed.",
                value=exploration.expected_added_s,
            )
