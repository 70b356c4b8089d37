"""Recursive least squares with forgetting and outlier clipping: how the online models learn.

A linear model ``y = theta . x`` is refitted after every observation ``(x, y)`` without
keeping the past: ``theta`` minimizes (with d = theta - theta0)

    sum_i  lambda^(t-i) * rho(y_i - theta . x_i)  +  lambda^t * d' P0^-1 d

where ``lambda`` (the forgetting factor, 0 < lambda <= 1) makes an observation ``k`` steps old
count ``lambda^k`` as much as the newest one (a memory of about ``1 / (1 - lambda)``
observations), and the prior ``theta0`` with precision ``P0^-1`` weighs as much as
``prior_weight`` observations spread over a typical design (its covariance), so that the first
few observations cannot swing the model far from what the profile measured.

``rho`` is Huber's loss: a residual larger than ``clip`` times the running scale of residuals
counts as if it were that large. One stall of a CPU quota or a garbage collection therefore moves
the model by a bounded step, while a real change (every observation off by as much) moves it
all the way within the memory. The scale is an exponentially weighted mean of the absolute
(clipped) residuals with the same forgetting, started at ``initial_scale``.

Pure Python on purpose: the models have two or three coefficients, and numpy's per-call
overhead would make each update ten times slower than these few multiplications.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any


class RecursiveLeastSquares:
    """An online linear regression (see the module docstring for the algorithm)."""

    def __init__(
        self,
        theta0: Sequence[float],
        design: Sequence[Sequence[float]],
        prior_weight: float,
        forgetting: float,
        clip: float,
        initial_scale: float,
    ) -> None:
        if not 0.0 < forgetting <= 1.0:
            raise ValueError(f"forgetting must be in (0, 1], got {forgetting}")
        if prior_weight <= 0 or clip <= 0 or initial_scale <= 0:
            raise ValueError("prior_weight, clip and initial_scale must be positive")
        self.theta = [float(v) for v in theta0]
        self.forgetting = forgetting
        self.clip = clip
        self.scale = initial_scale
        self.observations = 0
        self.clipped = 0
        # P0^-1 = prior_weight * mean(x x') over the design points; P0 is its inverse.
        d = len(self.theta)
        info = [[0.0] * d for _ in range(d)]
        for x in design:
            for i in range(d):
                for j in range(d):
                    info[i][j] += prior_weight * x[i] * x[j] / len(design)
        self.P = _inverse(info)

    def predict(self, x: Sequence[float]) -> float:
        return sum(t * v for t, v in zip(self.theta, x, strict=True))

    def observe(self, x: Sequence[float], y: float) -> None:
        """Fold one observation in: a weighted (clipped) RLS step, then the scale update."""
        if not math.isfinite(y):
            raise ValueError(f"an observation must be a finite number, got {y!r}")
        lam, P, d = self.forgetting, self.P, len(self.theta)
        residual = y - self.predict(x)
        limit = self.clip * self.scale
        if abs(residual) > limit:
            self.clipped += 1
            residual = math.copysign(limit, residual)
        Px = [sum(P[i][j] * x[j] for j in range(d)) for i in range(d)]
        denominator = lam + sum(x[i] * Px[i] for i in range(d))
        gain = [v / denominator for v in Px]
        self.theta = [self.theta[i] + gain[i] * residual for i in range(d)]
        self.P = [[(P[i][j] - gain[i] * Px[j]) / lam for j in range(d)] for i in range(d)]
        self.scale = lam * self.scale + (1.0 - lam) * abs(residual)
        self.observations += 1

    def state(self) -> dict[str, Any]:
        """Everything needed to continue learning later (see :meth:`restore`)."""
        return {
            "theta": list(self.theta),
            "P": [list(row) for row in self.P],
            "scale": self.scale,
            "observations": self.observations,
            "clipped": self.clipped,
        }

    def restore(self, state: dict[str, Any]) -> None:
        """Continue from a :meth:`state`; ValueError if it does not fit this model."""
        d = len(self.theta)
        theta = [float(v) for v in state["theta"]]
        P = [[float(v) for v in row] for row in state["P"]]
        if len(theta) != d or len(P) != d or any(len(row) != d for row in P):
            raise ValueError(f"expected {d} coefficients")
        if not all(math.isfinite(v) for v in (*theta, *(v for row in P for v in row))):
            raise ValueError("the state holds a value that is not finite")
        self.theta, self.P = theta, P
        self.scale = float(state["scale"])
        self.observations = int(state["observations"])
        self.clipped = int(state.get("clipped", 0))


def _inverse(matrix: list[list[float]]) -> list[list[float]]:
    """Gauss-Jordan inverse of a small, well-conditioned (positive definite) matrix."""
    d = len(matrix)
    work = [list(row) + [1.0 if i == j else 0.0 for j in range(d)] for i, row in enumerate(matrix)]
    for col in range(d):
        pivot = max(range(col, d), key=lambda r: abs(work[r][col]))
        if abs(work[pivot][col]) < 1e-300:
            raise ValueError("the prior's design does not determine every coefficient")
        work[col], work[pivot] = work[pivot], work[col]
        factor = work[col][col]
        work[col] = [v / factor for v in work[col]]
        for row in range(d):
            if row != col:
                scale = work[row][col]
                work[row] = [a - scale * b for a, b in zip(work[row], work[col], strict=True)]
    return [row[d:] for row in work]
