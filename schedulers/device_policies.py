"""Built-in device policies."""

from __future__ import annotations

from dataclasses import dataclass

from cnmt.schedulers.base import Device, DevicePolicy, Request, SchedulerState

from cnmt.errors import CnmtRuntimeError


def edge_is_faster(request: Request, m_tokens: float, state: SchedulerState) -> bool:
    """The C-NMT rule: run locally iff T_edge <= T_tx + T_cloud at output length m_tokens."""
    n = request.n_tokens
    t_edge = state.edge.predict(n, m_tokens)
    t_cloud = state.cloud.predict(n, m_tokens) + state.link.transmission_s(request.payload_bytes)
    return t_edge <= t_cloud


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


class NaivePolicy(DevicePolicy):
    """The C-NMT rule with M fixed at the corpus mean output length, whatever the input.

    The paper's Naive baseline: it shows what the length regression is worth.
    """

    name = "naive"

    @dataclass(frozen=True)
    class Params:
        mean_tokens: float

        def __post_init__(self) -> None:
            if self.mean_tokens <= 0:
                raise ValueError(f"mean_tokens must be positive, got {self.mean_tokens}")

    def choose(self, request: Request, m_estimate: float, state: SchedulerState) -> Device:
        return Device.EDGE if edge_is_faster(request, self.params.mean_tokens, state) else Device.CLOUD


class EdgeOnly(DevicePolicy):
    """Every request runs on the edge gateway."""

    name = "edge"

    def choose(self, request: Request, m_estimate: float, state: SchedulerState) -> Device:
        return Device.EDGE


class CloudOnly(DevicePolicy):
    """Every request is offloaded to the cloud."""

    name = "cloud"

    def choose(self, request: Request, m_estimate: float, state: SchedulerState) -> Device:
        return Device.CLOUD


class OraclePolicy(DevicePolicy):
    """Picks the device that really is faster for this request, from its ground truth.

    Needs ``request.truth`` (true edge time, cloud time and transmission time), which only an
    offline replay has. It bounds what any policy can achieve.
    """

    name = "oracle"

    def choose(self, request: Request, m_estimate: float, state: SchedulerState) -> Device:
        truth = request.truth
        if truth is None:
            raise CnmtRuntimeError(
                "the oracle policy needs each request's true latencies, which only `cnmt replay` "
                "has; choose 'cnmt' for a live gateway"
            )
        return Device.EDGE if truth.edge_s <= truth.cloud_s + truth.transmission_s else Device.CLOUD
