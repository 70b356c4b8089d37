"""Built-in device policies."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from cnmt.errors import CnmtRuntimeError
from cnmt.schedulers.base import (
    EDGE,
    Device,
    DevicePolicy,
    GroundTruth,
    LinearRule,
    Request,
    RequestBatch,
    SchedulerState,
    TruthRule,
)
from cnmt.schedulers.length_estimators import MeanParams


def _device(edge: bool) -> Device:
    return Device.EDGE if edge else Device.CLOUD


class CnmtPolicy(DevicePolicy):
    """The paper's rule with the estimated output length.

    Predicts the edge time ``aN_e*N + aM_e*M + b_e`` and the cloud time
    ``aN_c*N + aM_c*M + b_c`` plus the link's estimated round trip and payload time, with M from
    the configured length estimator, and runs locally when the edge is not slower (ties stay on
    the edge, which costs no network traffic). It ignores the devices' queues, as the paper does.
    """

    name = "cnmt"
    RULE = LinearRule()

    def choose(self, request: Request, m_estimate: float, state: SchedulerState) -> Device:
        return _device(self.RULE.edge(request, m_estimate, state))

    def choose_target(self, request: Request, m_estimate: float, state: SchedulerState) -> str:
        return self.RULE.target(request, m_estimate, state)

    def linear_rule(self) -> LinearRule:
        return self.RULE


class CnmtLoadPolicy(DevicePolicy):
    """The C-NMT rule with the devices' queues: edge iff
    ``backlog_e + T_edge <= T_tx + wait_c + T_cloud``.

    ``backlog_e`` is the predicted remaining time of the requests already running or queued on
    the edge (a new local request starts after them) and ``wait_c`` the recent estimate of how
    long a request waits in the cloud before it runs (as the paper's predecessor CRIME adapted
    to the devices' loads). With both queues empty it decides exactly as ``cnmt``.
    """

    name = "cnmt_load"
    RULE = LinearRule(load_aware=True)

    def choose(self, request: Request, m_estimate: float, state: SchedulerState) -> Device:
        return _device(self.RULE.edge(request, m_estimate, state))

    def choose_target(self, request: Request, m_estimate: float, state: SchedulerState) -> str:
        return self.RULE.target(request, m_estimate, state)

    def linear_rule(self) -> LinearRule:
        return self.RULE


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
        self.rule = LinearRule(m_tokens=self.mean_tokens)

    def choose(self, request: Request, m_estimate: float, state: SchedulerState) -> Device:
        return _device(self.rule.edge(request, m_estimate, state))

    def choose_target(self, request: Request, m_estimate: float, state: SchedulerState) -> str:
        return self.rule.target(request, m_estimate, state)

    def linear_rule(self) -> LinearRule:
        return self.rule


class EdgeOnly(DevicePolicy):
    """Every request runs on the edge gateway."""

    name = "edge"
    uses_length_estimate = False

    def choose(self, request: Request, m_estimate: float, state: SchedulerState) -> Device:
        return Device.EDGE

    def choose_target(self, request: Request, m_estimate: float, state: SchedulerState) -> str:
        return EDGE

    def choose_many(self, batch: RequestBatch, m_estimate: np.ndarray) -> np.ndarray:
        return np.ones(len(batch), dtype=bool)


class CloudOnly(DevicePolicy):
    """Every request is offloaded to the cloud (with several clouds, to ``target``, by
    default the first one configured)."""

    name = "cloud"
    uses_length_estimate = False

    @dataclass(frozen=True)
    class Params:
        target: str | None = None

    def choose(self, request: Request, m_estimate: float, state: SchedulerState) -> Device:
        return Device.CLOUD

    def choose_target(self, request: Request, m_estimate: float, state: SchedulerState) -> str:
        names = [t.name for t in state.all_targets()[1:]]
        if self.params.target is None:
            return names[0]
        if self.params.target not in names:
            raise CnmtRuntimeError(
                f"policy cloud: target {self.params.target!r} is not a cloud of this gateway; "
                f"its clouds: {', '.join(names)}"
            )
        return self.params.target

    def choose_many(self, batch: RequestBatch, m_estimate: np.ndarray) -> np.ndarray:
        return np.zeros(len(batch), dtype=bool)


def _truth(request: Request) -> GroundTruth:
    if request.truth is None:
        raise CnmtRuntimeError(
            "the oracle policies need each request's true latencies, which only `cnmt replay` "
            "has; choose 'cnmt' or 'cnmt_load' for a live gateway"
        )
    return request.truth


class OraclePolicy(DevicePolicy):
    """Picks the device where the request really finishes first: the clairvoyant reference.

    Sees each request's true execution times, noise included, its true transmission time and
    the true waits of the devices' queues, which only an offline replay has. Without queues no
    policy's total can be lower. With queues it is greedy (each request goes where it finishes
    first, given those before it), a reference rather than the optimum of a scheduling problem.
    """

    name = "oracle"
    needs_truth = True
    uses_length_estimate = False

    RULE = TruthRule()

    def choose(self, request: Request, m_estimate: float, state: SchedulerState) -> Device:
        return _device(self.RULE.edge(_truth(request)))

    def choose_target(self, request: Request, m_estimate: float, state: SchedulerState) -> str:
        return self.RULE.target(_truth(request), state)

    def truth_rule(self) -> TruthRule:
        return self.RULE

    def choose_many(self, batch: RequestBatch, m_estimate: np.ndarray) -> np.ndarray:
        return batch.edge_s <= batch.cloud_s + batch.transmission_s


class ExpectedOraclePolicy(DevicePolicy):
    """Knows each request's true M and true transmission time, but only the expected execution
    times at that (N, M): the best any scheduler can do without foreseeing a run's noise.

    Its gap to ``oracle`` is noise no policy can know; a policy's gap to it is what a better
    scheduler could still win. Greedy with queues, like ``oracle``.
    """

    name = "oracle_expected"
    needs_truth = True
    uses_length_estimate = False

    RULE = TruthRule(expected=True)

    def choose(self, request: Request, m_estimate: float, state: SchedulerState) -> Device:
        return _device(self.RULE.edge(_truth(request)))

    def choose_target(self, request: Request, m_estimate: float, state: SchedulerState) -> str:
        return self.RULE.target(_truth(request), state)

    def truth_rule(self) -> TruthRule:
        return self.RULE

    def choose_many(self, batch: RequestBatch, m_estimate: np.ndarray) -> np.ndarray:
        if batch.edge_expected_s is None or batch.cloud_expected_s is None:
            raise CnmtRuntimeError("the expected-time Oracle needs the expected execution times")
        return batch.edge_expected_s <= batch.cloud_expected_s + batch.transmission_s
