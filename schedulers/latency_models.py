"""Per-device latency models: where the coefficients of ``T = a_n*N + a_m*M + b`` come from.

A latency model component is created per device with the profile's fit as its ``prior``; a
gateway (or a replay) asks it for the current coefficients before each decision
(:meth:`LatencyEstimator.current`, the snapshot a policy sees) and tells it what each request
that ran on its device really cost once the request has finished (:meth:`observe`): the edge
learns from its local worker's own execution time, the cloud from the ``exec_s`` each answer
reports. Nothing here reads a clock or does I/O.

Built-in: ``profile`` (the paper's: the offline fit, never changed) and ``online`` (the fit as
a prior, refined by every observation; recursive least squares with forgetting and outlier
clipping, :mod:`cnmt.schedulers.learning`). ``posterior`` (:mod:`cnmt.schedulers.posterior`)
keeps a Gaussian posterior over the coefficients instead, for policies that explore.
"""

from __future__ import annotations

import abc
import math
from dataclasses import dataclass
from typing import Any, ClassVar

from cnmt.schedulers.base import LatencyModel
from cnmt.schedulers.learning import (
    MAX_OBSERVED_S,
    RecursiveLeastSquares,
    physical_seconds,
    physical_tokens,
)
from cnmt.schema import NoParams, ranged


class LatencyEstimator(abc.ABC):
    """The latency model of one device: current coefficients, and learning from observations."""

    name: ClassVar[str]
    Params: ClassVar[type[Any]] = NoParams
    learns: ClassVar[bool] = False  # whether observe() changes the coefficients

    def __init__(self, params: Any, prior: LatencyModel) -> None:
        self.params = params
        self.prior = prior

    @abc.abstractmethod
    def current(self) -> LatencyModel:
        """The coefficients to decide with now (a frozen snapshot)."""

    def observe(self, n_tokens: float, m_tokens: float, seconds: float) -> None:  # noqa: B027
        """One request of N input and M output tokens ran on this device in ``seconds``."""

    def elapse(self, now: float) -> None:  # noqa: B027 (optional: no-op)
        """A decision is taken at ``now`` (seconds, the caller's clock): a model whose
        uncertainty grows while its device is not observed widens it (``posterior``)."""

    @property
    def observations(self) -> int:
        """How many observations the current coefficients have learnt from."""
        return 0

    @property
    def dropped(self) -> int:
        """Observations refused: outside the physical range, or a step that would have left
        the coefficients unphysical."""
        return 0

    def state(self) -> dict[str, Any]:
        """What to save to continue later (empty for a model that does not learn)."""
        return {}

    def restore(self, state: dict[str, Any]) -> None:  # noqa: B027 (optional: no-op)
        """Continue from a saved :meth:`state`; ValueError if it does not fit."""


class ProfileLatency(LatencyEstimator):
    """The offline fit of the device profile, unchanged whatever the device really does."""

    name = "profile"

    def current(self) -> LatencyModel:
        return self.prior


class OnlineLatency(LatencyEstimator):
    """The profile's fit as a prior, refitted after every observed request.

    Least squares on ``(N, M, 1) -> seconds``, updated per request
    (:mod:`cnmt.schedulers.learning`), with a forgetting factor (a memory of about
    ``1 / (1 - forgetting)`` requests, so a device that got slower or faster is followed) and
    Huber clipping of residuals beyond ``clip`` times their running scale (a quota stall or a
    GC pause moves the model by a bounded step). The prior weighs as much as ``prior_weight``
    requests spread over ``prior_tokens`` x ``prior_tokens`` values of (N, M), the range the
    profile measured, and never less than ``floor_weight`` of them (what the recent requests do
    not tell, such as the slope in N when they all have the same N, stays the profile's); the
    residual scale starts at ``initial_scale`` times the prior's prediction at the middle.

    What it learns stays physical: an observation with a negative, non-finite or absurd time
    (over an hour) or token count is dropped and counted, as is one whose step would make the
    model predict a time below zero (or below the prior's own minimum, for a prior that already
    does) on the prior's design (the range the profile measured), or give a coefficient beyond
    an hour (:attr:`dropped`). Only the measured range is checked: early steps, learnt from a
    few requests, extrapolate wildly far outside it and must not be refused for that.
    """

    name = "online"
    learns = True

    @dataclass(frozen=True)
    class Params:
        forgetting: float = ranged(0.99, low=0.5, high=1)
        prior_weight: float = ranged(2.0, low=0, high=1000000, above=True)
        floor_weight: float = ranged(1.0, low=0, high=1000000, above=True)
        clip: float = ranged(3.0, low=0, high=1000, above=True)
        initial_scale: float = ranged(0.25, low=0, high=100, above=True)
        prior_tokens: tuple[float, ...] = (4.0, 16.0, 48.0)

        def __post_init__(self) -> None:
            if not 0.5 <= self.forgetting <= 1.0:
                raise ValueError(f"forgetting must be in [0.5, 1], got {self.forgetting}")
            if min(self.prior_weight, self.floor_weight, self.clip, self.initial_scale) <= 0:
                raise ValueError("prior_weight, floor_weight, clip and initial_scale: positive")
            if len(set(self.prior_tokens)) < 2 or min(self.prior_tokens) <= 0:
                raise ValueError("prior_tokens: give at least two different positive values")

    def __init__(self, params: Any, prior: LatencyModel) -> None:
        super().__init__(params, prior)
        tokens = params.prior_tokens
        middle = sorted(tokens)[len(tokens) // 2]
        self._checked_at = [(n, m) for n in tokens for m in tokens]
        self._floor_s = min(0.0, min(prior.predict(n, m) for n, m in self._checked_at))
        self._dropped = 0
        self.rls = RecursiveLeastSquares(
            theta0=(prior.a_n, prior.a_m, prior.b),
            design=[(n, m, 1.0) for n in tokens for m in tokens],
            prior_weight=params.prior_weight,
            floor_weight=params.floor_weight,
            forgetting=params.forgetting,
            clip=params.clip,
            initial_scale=max(params.initial_scale * abs(prior.predict(middle, middle)), 1e-5),
            admissible=self._physical,
        )
        self._current = prior

    def _physical(self, theta: Any) -> bool:
        if not all(math.isfinite(v) and abs(v) <= MAX_OBSERVED_S for v in theta):
            return False
        model = LatencyModel(*theta)
        return all(model.predict(n, m) >= self._floor_s for n, m in self._checked_at)

    def current(self) -> LatencyModel:
        return self._current

    def observe(self, n_tokens: float, m_tokens: float, seconds: float) -> None:
        n, m, t = float(n_tokens), float(m_tokens), float(seconds)
        if not (physical_tokens(n, m) and physical_seconds(t)):
            self._dropped += 1
            return
        self.rls.observe((n, m, 1.0), t)
        a_n, a_m, b = self.rls.theta
        self._current = LatencyModel(a_n=a_n, a_m=a_m, b=b)

    @property
    def observations(self) -> int:
        return self.rls.observations

    @property
    def dropped(self) -> int:
        return self._dropped + self.rls.rejected

    def state(self) -> dict[str, Any]:
        return self.rls.state()

    def restore(self, state: dict[str, Any]) -> None:
        self.rls.restore(state)
        a_n, a_m, b = self.rls.theta
        self._current = LatencyModel(a_n=a_n, a_m=a_m, b=b)
