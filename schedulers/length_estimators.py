"""Built-in output-length estimators."""

from __future__ import annotations

from dataclasses import dataclass

from cnmt.schedulers.base import LengthEstimator, Request

from cnmt.errors import CnmtRuntimeError


class LinearLength(LengthEstimator):
    """M = gamma*N + delta, the paper's per-language-pair regression, clipped to >= min_tokens.

    gamma and delta come from `cnmt fit-length` on a parallel corpus, in the tokens of the
    model that will run.
    """

    name = "linear"

    @dataclass(frozen=True)
    class Params:
        gamma: float
        delta: float
        min_tokens: float = 1.0

    def estimate(self, request: Request) -> float:
        p = self.params
        return max(p.min_tokens, p.gamma * request.n_tokens + p.delta)


class NaiveLength(LengthEstimator):
    """M = the corpus mean output length, whatever the input (the paper's Naive baseline)."""

    name = "naive"

    @dataclass(frozen=True)
    class Params:
        mean_tokens: float

        def __post_init__(self) -> None:
            if self.mean_tokens <= 0:
                raise ValueError(f"mean_tokens must be positive, got {self.mean_tokens}")

    def estimate(self, request: Request) -> float:
        return self.params.mean_tokens


class OracleLength(LengthEstimator):
    """M = the true output length; only for offline evaluation, where it is known."""

    name = "oracle"

    def estimate(self, request: Request) -> float:
        if request.m_true is None:
            raise CnmtRuntimeError(
                "the oracle length estimator needs the true output length (m_true), which only "
                "offline evaluation has; choose 'linear' or 'naive' for a live gateway"
            )
        return float(request.m_true)
