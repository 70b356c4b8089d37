"""What the closed loop's exploration costs and what its latency models refused, as
Prometheus metrics read when scraped (the gateway registers :class:`ExplorationMetrics`).

* ``cnmt_gateway_latency_model_dropped_observations_total{device}``: observations a latency
  model refused as physically impossible (``posterior`` counts them; others report 0);
* ``cnmt_gateway_explored_requests_total{device}``: with a policy that explores
  (``cnmt_explore``), requests sent to the device the posterior means did not choose;
* ``cnmt_gateway_exploration_expected_added_seconds_total``: their expected added time.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from cnmt.schedulers.base import Device, DevicePolicy
from cnmt.schedulers.latency_models import LatencyEstimator


class ExplorationMetrics(Collector):
    """Reads the latency models' ``dropped`` and the policy's ``exploration`` counters from
    ``owner`` (a gateway: its ``latency`` by device and its ``device_policy``), when scraped."""

    def __init__(self, owner: Any) -> None:
        self.owner = owner

    def collect(self) -> Any:
        latency: Mapping[Device, LatencyEstimator] = self.owner.latency
        policy: DevicePolicy = self.owner.device_policy
        dropped = CounterMetricFamily(
            "cnmt_gateway_latency_model_dropped_observations",
            "Observations a latency model refused as physically impossible (NaN, negative, "
            "absurdly long), per device (0 for models that check nothing).",
            labels=["device"],
        )
        for device, estimator in latency.items():
            dropped.add_metric([device.value], getattr(estimator, "dropped", 0))
        yield dropped
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
