"""Built-in output-length estimators."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from cnmt.errors import CnmtRuntimeError
from cnmt.schedulers.base import LengthEstimator, Request
from cnmt.schedulers.learning import (
    MAX_OBSERVED_TOKENS,
    MAX_STATE_COUNT,
    MAX_STATE_VALUE,
    RecursiveLeastSquares,
    physical_tokens,
)
from cnmt.schedulers.length_models import LengthModel, load_length_model
from cnmt.schema import ranged


class LinearLength(LengthEstimator):
    """M = gamma*N + delta, the paper's per-language-pair regression, clipped to >= min_tokens.

    gamma and delta come from `cnmt fit-length` on a parallel corpus, in the tokens of the
    model that will run: either ``model: PATH`` (the fitted file) or ``gamma`` and ``delta``
    given directly; not both.
    """

    name = "linear"

    @dataclass(frozen=True)
    class Params:
        model: str | None = None
        gamma: float | None = ranged(None, low=0, high=100)
        delta: float | None = ranged(None, low=-4096, high=4096)
        min_tokens: float = ranged(1.0, low=0, high=4096)

        def __post_init__(self) -> None:
            direct = (self.gamma is not None, self.delta is not None)
            if self.model is not None and any(direct):
                raise ValueError(
                    "give either `model` (a fitted file) or `gamma` and `delta`, not both"
                )
            if self.model is None and not all(direct):
                raise ValueError(
                    "needs `model: PATH` (written by `cnmt fit-length`) or both `gamma` and `delta`"
                )

    def __init__(self, params: Any) -> None:
        super().__init__(params)
        self.fitted = load_length_model(params.model) if params.model is not None else None
        if self.fitted is not None:
            self.gamma, self.delta = self.fitted.gamma, self.fitted.delta
        else:
            self.gamma, self.delta = float(params.gamma), float(params.delta)

    def estimate(self, request: Request) -> float:
        return max(self.params.min_tokens, self.gamma * request.n_tokens + self.delta)

    def estimate_many(self, n_tokens: np.ndarray, m_true: np.ndarray | None = None) -> np.ndarray:
        raw = self.gamma * np.asarray(n_tokens, dtype=float) + self.delta
        return np.maximum(self.params.min_tokens, raw)


class OnlineLinearLength(LinearLength):
    """M = gamma*N + delta from a fitted model as a prior, refitted on the model's own outputs.

    A length model fitted on a corpus' human translations is wrong wherever the running model
    writes differently (cn2en writes about half as many tokens as the human translations of
    long inputs). This estimator starts from it and refits ``gamma, delta`` after every
    translation from the observed ``(N, M)``, by least squares with forgetting and outlier
    clipping (:mod:`cnmt.schedulers.learning`): the prior weighs as much as ``prior_weight``
    pairs spread over ``prior_tokens`` values of N (and never less than ``floor_weight``), a
    pair ``k`` translations old counts ``forgetting^k``, and a residual beyond ``clip`` times
    the running scale (which starts at ``initial_scale`` tokens) counts as that large.

    A pair outside ``0..65536`` tokens is dropped and counted (:attr:`dropped`), as is one whose
    step would make the line predict fewer than 0 tokens (or fewer than the prior does) or
    more than 65,536 on the prior's design (``prior_tokens``).
    """

    name = "online_linear"
    learns = True

    @dataclass(frozen=True)
    class Params(LinearLength.Params):
        forgetting: float = ranged(0.995, low=0.5, high=1)
        prior_weight: float = ranged(10.0, low=0, high=1000000, above=True)
        floor_weight: float = ranged(1.0, low=0, high=1000000, above=True)
        clip: float = ranged(3.0, low=0, high=1000, above=True)
        initial_scale: float = ranged(2.0, low=0, high=4096, above=True)
        prior_tokens: tuple[float, ...] = (4.0, 16.0, 48.0)

        def __post_init__(self) -> None:
            super().__post_init__()
            if not 0.5 <= self.forgetting <= 1.0:
                raise ValueError(f"forgetting must be in [0.5, 1], got {self.forgetting}")
            if min(self.prior_weight, self.floor_weight, self.clip, self.initial_scale) <= 0:
                raise ValueError("prior_weight, floor_weight, clip and initial_scale: positive")
            if len(set(self.prior_tokens)) < 2 or min(self.prior_tokens) <= 0:
                raise ValueError("prior_tokens: give at least two different positive values")

    def __init__(self, params: Any) -> None:
        super().__init__(params)
        self._checked_at = tuple(params.prior_tokens)
        self._floor = min(0.0, *(self.gamma * n + self.delta for n in self._checked_at))
        self._dropped = 0
        self.rls = RecursiveLeastSquares(
            theta0=(self.gamma, self.delta),
            design=[(n, 1.0) for n in params.prior_tokens],
            prior_weight=params.prior_weight,
            floor_weight=params.floor_weight,
            forgetting=params.forgetting,
            clip=params.clip,
            initial_scale=params.initial_scale,
            admissible=self._physical,
        )

    def _physical(self, theta: Any) -> bool:
        gamma, delta = theta
        if not (math.isfinite(gamma) and math.isfinite(delta)):
            return False
        return all(
            self._floor <= gamma * n + delta <= MAX_OBSERVED_TOKENS for n in self._checked_at
        )

    def observe(self, n_tokens: int, m_tokens: int) -> None:
        if not physical_tokens(float(n_tokens), float(m_tokens)):
            self._dropped += 1
            return
        self.rls.observe((float(n_tokens), 1.0), float(m_tokens))
        self.gamma, self.delta = self.rls.theta

    @property
    def dropped(self) -> int:
        """Pairs refused: outside the physical range, or a step to an unphysical line."""
        return self._dropped + self.rls.rejected

    def state(self) -> dict[str, Any]:
        return self.rls.state()

    def restore(self, state: dict[str, Any]) -> None:
        self.rls.restore(state)
        self.gamma, self.delta = self.rls.theta


class OnlineMeanByLength(LengthEstimator):
    """M = the running mean of the outputs observed for inputs of about this length; the
    fitted line where there are few.

    The device policies' times are linear in M, so the expected time of a request with N input
    tokens needs ``E[M | N]``, the mean output length of inputs that long. A straight line is a
    good model of it for the paper's models, but not for every model: cn2en's outputs stop
    growing with long inputs, and a line refitted over a stream that mixes short and long
    requests (``online_linear``) then overestimates M for the short ones, which is exactly where
    the edge-or-cloud decisions are close. This estimator makes no assumption about the shape:
    requests fall into bins of N (one per token up to ``exact_up_to``, then bins ``1 +
    bin_growth`` times wider than the last), each bin keeps an exponentially forgetting sum and
    count of the observed M (a pair ``k`` observations of that bin old counts ``forgetting^k``),
    and the estimate is that bin's mean shrunk toward the fitted line, which weighs as much as
    ``prior_weight`` observations::

        M(N) = (prior_weight * (gamma * N + delta) + sum_bin) / (prior_weight + count_bin)

    A bin never observed answers with the line; a bin with many observations with its own
    mean. Each estimate and each update costs one dictionary lookup.
    """

    name = "online_mean_by_length"
    learns = True

    @dataclass(frozen=True)
    class Params(LinearLength.Params):
        forgetting: float = ranged(0.995, low=0.5, high=1)
        prior_weight: float = ranged(5.0, low=0, high=1000000, above=True)
        exact_up_to: int = ranged(32, low=1, high=4096)
        bin_growth: float = ranged(0.125, low=0, high=10, above=True)

        def __post_init__(self) -> None:
            super().__post_init__()
            if not 0.5 <= self.forgetting <= 1.0:
                raise ValueError(f"forgetting must be in [0.5, 1], got {self.forgetting}")
            if self.prior_weight <= 0:
                raise ValueError(f"prior_weight must be positive, got {self.prior_weight}")
            if self.exact_up_to < 1 or self.bin_growth <= 0:
                raise ValueError("exact_up_to must be >= 1 and bin_growth positive")

    def __init__(self, params: Any) -> None:
        super().__init__(params)
        self.line = LinearLength(params)  # the prior: the fitted M = gamma*N + delta
        self.bins: dict[int, list[float]] = {}  # bin -> [forgetting sum of M, forgetting count]
        self.observations = 0
        self.dropped = 0

    def bin_of(self, n_tokens: float) -> int:
        """The bin of an input length: N itself up to ``exact_up_to``, then geometric bins."""
        cap = self.params.exact_up_to
        if n_tokens <= cap:
            return int(n_tokens)
        return cap + 1 + int(math.log(n_tokens / cap) / math.log1p(self.params.bin_growth))

    def estimate(self, request: Request) -> float:
        n = request.n_tokens
        line = self.line.gamma * n + self.line.delta
        total, count = self.bins.get(self.bin_of(n), (0.0, 0.0))
        weight = self.params.prior_weight
        return max(self.params.min_tokens, (weight * line + total) / (weight + count))

    def observe(self, n_tokens: int, m_tokens: int) -> None:
        if not physical_tokens(float(n_tokens), float(m_tokens)):
            self.dropped += 1  # a count no model reads or writes: not learnt
            return
        entry = self.bins.setdefault(self.bin_of(n_tokens), [0.0, 0.0])
        lam = self.params.forgetting
        entry[0] = lam * entry[0] + float(m_tokens)
        entry[1] = lam * entry[1] + 1.0
        self.observations += 1

    def state(self) -> dict[str, Any]:
        return {
            "bins": {str(k): list(v) for k, v in sorted(self.bins.items())},
            "observations": self.observations,
        }

    def restore(self, state: dict[str, Any]) -> None:
        bins = {}
        for key, value in dict(state["bins"]).items():
            total, count = (float(v) for v in value)
            if not (math.isfinite(total) and math.isfinite(count)) or min(total, count) < 0:
                raise ValueError(f"bin {key}: sum and count must be finite and >= 0")
            if count > MAX_STATE_VALUE or total > count * MAX_OBSERVED_TOKENS:
                raise ValueError(f"bin {key}: a mean beyond {MAX_OBSERVED_TOKENS} tokens")
            if not (isinstance(key, str) and key.isdigit() and len(key) <= 9):
                raise ValueError(f"bin {key[:20]!r}: expected a bin number")
            bins[int(key)] = [total, count]
        observations = state["observations"]
        if isinstance(observations, bool) or not isinstance(observations, int):
            raise ValueError("observations must be an integer")
        if not 0 <= observations <= MAX_STATE_COUNT:
            raise ValueError(f"observations is {observations}, expected 0..{MAX_STATE_COUNT}")
        self.bins = bins
        self.observations = observations


@dataclass(frozen=True)
class MeanParams:
    """``mean_tokens`` directly, or ``model: PATH`` to take the fitted file's corpus mean of M."""

    mean_tokens: float | None = ranged(None, low=0, high=4096, above=True)
    model: str | None = None

    def __post_init__(self) -> None:
        if (self.mean_tokens is None) == (self.model is None):
            raise ValueError(
                "give exactly one of `mean_tokens` or `model` (a file from `cnmt fit-length`)"
            )
        if self.mean_tokens is not None and self.mean_tokens <= 0:
            raise ValueError(f"mean_tokens must be positive, got {self.mean_tokens}")

    def resolve(self) -> tuple[float, LengthModel | None]:
        """The mean M these parameters name, and the fitted model it came from (if ``model``)."""
        if self.model is not None:
            fitted = load_length_model(self.model)
            return fitted.mean_m, fitted
        return float(self.mean_tokens), None


class NaiveLength(LengthEstimator):
    """M = the corpus mean output length, whatever the input (the paper's Naive baseline)."""

    name = "naive"
    Params = MeanParams

    def __init__(self, params: Any) -> None:
        super().__init__(params)
        self.mean_tokens, self.fitted = params.resolve()

    def estimate(self, request: Request) -> float:
        return self.mean_tokens

    def estimate_many(self, n_tokens: np.ndarray, m_true: np.ndarray | None = None) -> np.ndarray:
        return np.full(len(n_tokens), self.mean_tokens, dtype=float)


class OracleLength(LengthEstimator):
    """M = the true output length; only for offline evaluation, where it is known."""

    name = "oracle"
    needs_truth = True

    def estimate(self, request: Request) -> float:
        if request.m_true is None:
            raise CnmtRuntimeError(
                "the oracle length estimator needs the true output length (m_true), which only "
                "offline evaluation has; choose 'linear' or 'naive' for a live gateway"
            )
        return float(request.m_true)

    def estimate_many(self, n_tokens: np.ndarray, m_true: np.ndarray | None = None) -> np.ndarray:
        if m_true is None:
            return super().estimate_many(n_tokens, m_true)  # raises the error above
        return np.asarray(m_true, dtype=float)
