"""The edge gateway's Prometheus metrics: the counters, gauges and histograms it updates per
request, and the collectors read when scraped (the latency models' coefficients, the model's
warnings; beside them :mod:`cnmt.serving.exploration_metrics` and the edge worker's own).

:class:`GatewayMetrics` declares them all in the gateway's own registry (several gateways may
share a process); docs/serving.md lists what ``GET /metrics`` shows.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from cnmt.runtime.repeated_warnings import MODEL_WARNINGS
from cnmt.schedulers.core import DecisionCore
from cnmt.serving import metrics as m
from cnmt.serving.edge import EdgeWorker, EdgeWorkerMetrics
from cnmt.serving.exploration_metrics import ExplorationMetrics


class GatewayMetrics:
    """Every metric of one gateway, in :attr:`registry`. ``core`` and ``edge`` are read when
    scraped (the latency models, the worker's backlog); ``policy_owner`` is what
    :class:`~cnmt.serving.exploration_metrics.ExplorationMetrics` reads the device policy from
    (the gateway); ``cloud_exchanges`` counts the cloud exchanges waiting for an answer."""

    def __init__(
        self,
        core: DecisionCore,
        edge: EdgeWorker,
        policy_owner: Any,
        cloud_exchanges: Callable[[], float],
    ) -> None:
        r = self.registry = CollectorRegistry()
        self.requests = Counter(
            "cnmt_gateway_requests_total",
            "Requests answered with a translation, by the device that translated them.",
            ["device"],
            registry=r,
        )
        self.decisions = Counter(
            "cnmt_gateway_decisions_total",
            "Device policy decisions, by chosen device.",
            ["device"],
            registry=r,
        )
        self.fallbacks = Counter(
            "cnmt_gateway_fallbacks_total",
            "Requests translated on the other device than decided, by reason.",
            ["reason"],
            registry=r,
        )
        self.rejected = Counter(
            "cnmt_gateway_rejected_total",
            "Requests answered with an error, by HTTP status.",
            ["status"],
            registry=r,
        )
        self.latency = Histogram(
            "cnmt_gateway_latency_seconds",
            "Time from request arrival to answer, by the device that translated.",
            ["device"],
            buckets=m.LATENCY_BUCKETS_S,
            registry=r,
        )
        self.length_error = Histogram(
            "cnmt_gateway_length_estimate_error_tokens",
            "Estimated minus actual output length (tokens).",
            buckets=m.LENGTH_ERROR_BUCKETS,
            registry=r,
        )
        self.length_abs_error = Counter(
            "cnmt_gateway_length_estimate_abs_error_tokens_total",
            "Sum of |estimated - actual| output length over translated requests (tokens).",
            registry=r,
        )
        self.rtt_estimate = Gauge(
            "cnmt_gateway_rtt_estimate_seconds",
            "The RTT estimator's current estimate of the link.",
            registry=r,
        )
        self.rtt_sample = Histogram(
            "cnmt_gateway_rtt_sample_seconds",
            "RTT samples: cloud round trip minus the cloud's wait and execution and the "
            "serialisation time (and idle health probes' round trips with learn_from_probes).",
            buckets=m.LATENCY_BUCKETS_S,
            registry=r,
        )
        self.prediction_error = Histogram(
            "cnmt_gateway_exec_prediction_relative_error",
            "(predicted - observed) / observed execution time of each translated request, by "
            "the device that ran it; predicted with the latency model and M estimate the "
            "decision used.",
            ["device"],
            buckets=m.RELATIVE_ERROR_BUCKETS,
            registry=r,
        )
        self.edge_backlog = Gauge(
            "cnmt_gateway_edge_backlog_seconds",
            "Predicted time until the local worker is free (running and queued translations).",
            registry=r,
        )
        self.edge_backlog.set_function(edge.backlog_s)
        self.cloud_wait = Gauge(
            "cnmt_gateway_cloud_wait_estimate_seconds",
            "The expected wait of a request sent now in the cloud before it runs: this "
            "gateway's own offloads ahead of it, predicted, plus the estimate of what other "
            "clients add.",
            registry=r,
        )
        r.register(_LearnedModels(core))
        r.register(ExplorationMetrics(policy_owner))
        self.cloud_healthy = Gauge(
            "cnmt_gateway_cloud_healthy",
            "1 while the cloud is considered healthy, else 0.",
            registry=r,
        )
        self.pending = Gauge(
            "cnmt_gateway_pending_requests",
            "Requests inside the gateway (their body has arrived).",
            registry=r,
        )
        self.cloud_unhealthy = Counter(
            "cnmt_gateway_cloud_marked_unhealthy_total",
            "Times the cloud was marked unhealthy, by cause: a failed exchange, consecutive "
            "slow exchanges (the breaker), a failed health probe.",
            ["cause"],
            registry=r,
        )
        self.cloud_in_flight = Gauge(
            "cnmt_gateway_cloud_exchanges_in_flight",
            "Cloud exchanges waiting for an answer (at most max_cloud_exchanges).",
            registry=r,
        )
        self.cloud_in_flight.set_function(cloud_exchanges)
        r.register(EdgeWorkerMetrics(edge))
        r.register(_ModelWarnings())


class _LearnedModels(Collector):
    """The latency models' current coefficients and observation counts, read when scraped."""

    def __init__(self, core: DecisionCore) -> None:
        self.core = core

    def collect(self) -> Any:
        coefficients = GaugeMetricFamily(
            "cnmt_gateway_latency_model_coefficient",
            "The current T = a_n*N + a_m*M + b of each device's latency model (seconds, per "
            "token for a_n and a_m).",
            labels=["device", "coefficient"],
        )
        observations = GaugeMetricFamily(
            "cnmt_gateway_latency_model_observations",
            "Requests each device's latency model has learnt from (0 for a fixed profile).",
            labels=["device"],
        )
        dropped = CounterMetricFamily(
            "cnmt_gateway_latency_model_dropped",
            "Observations each device's latency model refused: outside the physical range, or "
            "a step that would have made the model unphysical.",
            labels=["device"],
        )
        for device, estimator in self.core.latency.items():
            model = estimator.current()
            for name, value in (("a_n", model.a_n), ("a_m", model.a_m), ("b", model.b)):
                coefficients.add_metric([device, name], value)
            observations.add_metric([device], estimator.observations)
            dropped.add_metric([device], estimator.dropped)
        yield coefficients
        yield observations
        yield dropped


class _ModelWarnings(Collector):
    """``cnmt_gateway_model_warnings_total``: the requests whose text made the model warn (by
    model and kind; the edge worker logs them at most once a minute), read when scraped."""

    def collect(self) -> Any:
        family = CounterMetricFamily(
            "cnmt_gateway_model_warnings",
            "Requests whose text made the model warn (source tokens it drops, ...), by model "
            "and kind; the log shows them at most once a minute, with the count.",
            labels=["model", "kind"],
        )
        for (model, kind), count in sorted(MODEL_WARNINGS.totals().items()):
            family.add_metric([model, kind], count)
        yield family
