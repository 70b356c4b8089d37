"""Built-in device policies."""

from __future__ import annotations

from typing import Any

import numpy as np

from cnmt.datasets.link import serialisation_s
from cnmt.errors import CnmtRuntimeError
from cnmt.schedulers.base import (
    Device,
    DevicePolicy,
    LatencyModel,
    Request,
    RequestBatch,
    SchedulerState,
)
from cnmt.schedulers.length_estimators import MeanParams


def edge_is_faster(request: Request, m_tokens: float, state: SchedulerState) -> bool:
    """The C-NMT rule: run locally iff T_edge <= T_tx + T_cloud at output length m_tokens."""
    n = request.n_tokens
    t_edge = state.edge.predict(n, m_tokens)
    t_cloud = state.cloud.predict(n, m_tokens) + state.link.transmission_s(request.payload_bytes)
    return t_edge <= t_cloud


def edge_rtt_thresholds(
    n_tokens: np.ndarray,
    m_tokens: np.ndarray,
    payload_bytes: np.ndarray,
    edge: LatencyModel,
    cloud: LatencyModel,
    bandwidth_bps: float,
) -> np.ndarray:
    """The C-NMT rule solved for the RTT: a request stays on the edge iff RTT >= threshold.

    ``T_edge <= T_cloud + RTT + 8*bytes/bandwidth``  <=>  ``RTT >= T_edge - T_cloud - 8*bytes/bw``.
    """
    n = np.asarray(n_tokens, dtype=float)
    m = np.asarray(m_tokens, dtype=float)
    t_edge = edge.a_n * n + edge.a_m * m + edge.b
    t_cloud = cloud.a_n * n + cloud.a_m * m + cloud.b
    payload_s = serialisation_s(np.asarray(payload_bytes, dtype=float), bandwidth_bps)
    return t_edge - t_cloud - payload_s


class CnmtPolicy(DevicePolicy):
    """The paper's rule with the estimated output length.

    Predicts the edge time ``aN_e*N + aM_e*M + b_e`` and the cloud time
    ``aN_c*N + aM_c*M + b_c`` plus the link's estimated round trip and payload time, with M from
    the configured length estimator, and runs locally when the edge is not slower (ties stay on
    the edge, which costs no network traffic).
    """

    name = "cnmt"

    def choose(self, request: Request, m_estimate: float, state: SchedulerState) -> Device:
        return Device.EDGE if edge_is_faster(request, m_estimate, state) else Device.CLOUD

    def rtt_thresholds(
        self,
        batch: RequestBatch,
        m_estimate: np.ndarray,
        edge: LatencyModel,
        cloud: LatencyModel,
        bandwidth_bps: float,
    ) -> np.ndarray:
        return edge_rtt_thresholds(
            batch.n_tokens, m_estimate, batch.payload_bytes, edge, cloud, bandwidth_bps
        )


class NaivePolicy(DevicePolicy):
    """The C-NMT rule with M fixed at the corpus mean output length, whatever the input.

    The paper's Naive baseline: it shows what the length regression is worth. The mean is
    ``mean_tokens``, or the ``mean_m`` of a fitted length model (``model: PATH``); the
    configured length estimator is ignored.
    """

    name = "naive"
    Params = MeanParams
    uses_length_estimate = False

    def __init__(self, params: Any) -> None:
        super().__init__(params)
        # `fitted` lets a replay check that the model counts tokens like its corpus.
        self.mean_tokens, self.fitted = params.resolve()

    def choose(self, request: Request, m_estimate: float, state: SchedulerState) -> Device:
        return Device.EDGE if edge_is_faster(request, self.mean_tokens, state) else Device.CLOUD

    def rtt_thresholds(
        self,
        batch: RequestBatch,
        m_estimate: np.ndarray,
        edge: LatencyModel,
        cloud: LatencyModel,
        bandwidth_bps: float,
    ) -> np.ndarray:
        mean = np.full(len(batch), self.mean_tokens)
        return edge_rtt_thresholds(
            batch.n_tokens, mean, batch.payload_bytes, edge, cloud, bandwidth_bps
        )


class EdgeOnly(DevicePolicy):
    """Every request runs on the edge gateway."""

    name = "edge"
    uses_length_estimate = False

    def choose(self, request: Request, m_estimate: float, state: SchedulerState) -> Device:
        return Device.EDGE

    def choose_many(
        self, batch: RequestBatch, m_estimate: np.ndarray, edge: LatencyModel, cloud: LatencyModel
    ) -> np.ndarray:
        return np.ones(len(batch), dtype=bool)


class CloudOnly(DevicePolicy):
    """Every request is offloaded to the cloud."""

    name = "cloud"
    uses_length_estimate = False

    def choose(self, request: Request, m_estimate: float, state: SchedulerState) -> Device:
        return Device.CLOUD

    def choose_many(
        self, batch: RequestBatch, m_estimate: np.ndarray, edge: LatencyModel, cloud: LatencyModel
    ) -> np.ndarray:
        return np.zeros(len(batch), dtype=bool)


class OraclePolicy(DevicePolicy):
    """Picks the device that really is faster for this request, from its ground truth.

    Needs ``request.truth`` (true edge time, cloud time and transmission time), which only an
    offline replay has. It bounds what any policy can achieve: no policy's total can be lower.
    """

    name = "oracle"
    needs_truth = True
    uses_length_estimate = False

    def choose(self, request: Request, m_estimate: float, state: SchedulerState) -> Device:
        truth = request.truth
        if truth is None:
            raise CnmtRuntimeError(
                "the oracle policy needs each request's true latencies, which only `cnmt replay` "
                "has; choose 'cnmt' for a live gateway"
            )
        return Device.EDGE if truth.edge_s <= truth.cloud_s + truth.transmission_s else Device.CLOUD

    def choose_many(
        self, batch: RequestBatch, m_estimate: np.ndarray, edge: LatencyModel, cloud: LatencyModel
    ) -> np.ndarray:
        return batch.edge_s <= batch.cloud_s + batch.transmission_s
