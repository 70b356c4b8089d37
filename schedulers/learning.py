"""Online least squares with forgetting, a floor of prior information, and outlier clipping:
how the online models learn.

A linear model ``y = theta . x`` is refitted after every observation ``(x, y)`` from two running
sums, the information matrix ``A`` and vector ``b`` (``theta`` solves ``A theta = b``):

    A <- lambda * A + w * x x'  + (1 - lambda) * floor_weight * D
    b <- lambda * b + w * x y   + (1 - lambda) * floor_weight * D theta0

``lambda`` (the forgetting factor, 0 < lambda <= 1) makes an observation ``k`` steps old count
``lambda^k`` as much as the newest (a memory of about ``1 / (1 - lambda)`` observations). ``D``
is the information one observation spread over a typical design carries (the mean of ``x x'``
over the design points), so the prior ``theta0`` starts with the weight of ``prior_weight``
observations (``A = prior_weight * D``) and never falls below ``floor_weight`` of them: plain
exponential forgetting lets ``A`` shrink without bound in directions the recent observations do
not excite (requests that all have about the same N and M), after which one noisy observation
swings the model anywhere ("wind-up"); the floor keeps those directions at the prior instead.

``w`` is Huber's weight: a residual larger than ``clip`` times the running scale of residuals
counts as if it were that large (``w = clip * scale / |residual|``). One stall of a CPU quota or
a garbage collection therefore moves the model by a bounded step, while a real change (every
observation off by as much) moves it all the way within the memory. The scale is the mean of
the absolute (clipped) residuals so far, ``initial_scale`` counting as one of them, until the
memory is full; from then on an exponentially weighted mean with the same forgetting. Growing
the scale as fast as the evidence allows matters when the prior is far off: with a scale that
forgot as slowly as the model, every residual of a profile 3x too fast would be clipped for
about a hundred observations, and the model would crawl toward the truth.

A lie cannot move the model far (docs/hardening.md). An observation is used only if it is
finite (the callers drop what is outside their physical range before it gets here); a step
after which the coefficients would not be ``admissible`` (the caller's test: finite, and
physical for what they model) is undone and counted in ``rejected``, so the model keeps the
last coefficients that were. :meth:`restore` refuses a state that no run of this class could
have written: ``A`` not symmetric positive definite, values beyond :data:`MAX_STATE_VALUE`, a
negative or fractional count, a scale that is not positive.

Pure Python on purpose: the models have two or three coefficients, and numpy's per-call
overhead would make each update several times slower than these few multiplications.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

# The largest magnitude any saved sum may have: observations are bounded (at most some 10^5
# tokens, an hour), so a larger value did not come from a run of the model.
MAX_STATE_VALUE = 1e18
MAX_STATE_COUNT = 10**15
# What a physical observation can be: no model reads or writes more tokens (exported models
# allow at most 4,096), no translation of one sentence takes an hour.
MAX_OBSERVED_TOKENS = 65_536
MAX_OBSERVED_S = 3_600.0


def physical_tokens(*counts: float) -> bool:
    """Each count is a finite number of tokens in 0..MAX_OBSERVED_TOKENS."""
    return all(math.isfinite(c) and 0 <= c <= MAX_OBSERVED_TOKENS for c in counts)


def physical_seconds(seconds: float) -> bool:
    """A finite duration in 0..MAX_OBSERVED_S."""
    return math.isfinite(seconds) and 0 <= seconds <= MAX_OBSERVED_S


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
        floor_weight: float = 1.0,
        admissible: Callable[[Sequence[float]], bool] | None = None,
    ) -> None:
        if not 0.0 < forgetting <= 1.0:
            raise ValueError(f"forgetting must be in (0, 1], got {forgetting}")
        if min(prior_weight, clip, initial_scale, floor_weight) <= 0:
            raise ValueError("prior_weight, floor_weight, clip and initial_scale must be positive")
        d = len(theta0)
        self.theta = [float(v) for v in theta0]
        self.forgetting = forgetting
        self.clip = clip
        self.scale = initial_scale
        self.observations = 0
        self.clipped = 0
        self.rejected = 0  # steps undone: the coefficients would not have been admissible
        self.admissible = admissible or _all_finite
        # D: the mean information of one observation over the design points.
        unit = [
            [sum(x[i] * x[j] for x in design) / len(design) for j in range(d)] for i in range(d)
        ]
        self._floor_A = [[floor_weight * v for v in row] for row in unit]
        self._floor_b = _times(self._floor_A, self.theta)
        self.A = [[prior_weight * v for v in row] for row in unit]
        self.b = _times(self.A, self.theta)
        _solve(self.A, self.b)  # the design must determine every coefficient

    def predict(self, x: Sequence[float]) -> float:
        return sum(t * v for t, v in zip(self.theta, x, strict=True))

    def observe(self, x: Sequence[float], y: float) -> bool:
        """Fold one observation in: a (clipped) weighted step, then the scale update. False
        (and nothing changed) when the step would leave the coefficients inadmissible."""
        if not math.isfinite(y) or not all(math.isfinite(v) for v in x):
            raise ValueError(f"an observation must be finite numbers, got {x!r} -> {y!r}")
        lam, d = self.forgetting, len(self.theta)
        residual = y - self.predict(x)
        limit = self.clip * self.scale
        weight = 1.0
        if abs(residual) > limit:
            self.clipped += 1
            weight = limit / abs(residual)
        keep = 1.0 - lam
        A = [
            [
                lam * self.A[i][j] + weight * x[i] * x[j] + keep * self._floor_A[i][j]
                for j in range(d)
            ]
            for i in range(d)
        ]
        b = [lam * self.b[i] + weight * x[i] * y + keep * self._floor_b[i] for i in range(d)]
        try:
            theta = _solve(A, b)
        except ValueError:
            theta = [math.nan] * d
        if not self.admissible(theta):
            self.rejected += 1
            return False
        self.A, self.b, self.theta = A, b, theta
        rate = max(keep, 1.0 / (self.observations + 2))
        self.scale += rate * (min(abs(residual), limit) - self.scale)
        self.observations += 1
        return True

    def state(self) -> dict[str, Any]:
        """Everything needed to continue learning later (see :meth:`restore`)."""
        return {
            "A": [list(row) for row in self.A],
            "b": list(self.b),
            "scale": self.scale,
            "observations": self.observations,
            "clipped": self.clipped,
            "rejected": self.rejected,
        }

    def restore(self, state: dict[str, Any]) -> None:
        """Continue from a :meth:`state`; ValueError if it does not fit this model."""
        d = len(self.theta)
        A = [[_number(v, "A") for v in _list(row, "A")] for row in _list(state["A"], "A")]
        b = [_number(v, "b") for v in _list(state["b"], "b")]
        if len(b) != d or len(A) != d or any(len(row) != d for row in A):
            raise ValueError(f"expected {d} coefficients")
        if not _positive_definite(A):
            raise ValueError("A is not a symmetric positive definite matrix")
        scale = _number(state["scale"], "scale")
        if not scale > 0:
            raise ValueError(f"scale is {scale:g}, expected a positive number")
        observations = _count(state["observations"], "observations")
        clipped = _count(state.get("clipped", 0), "clipped")
        rejected = _count(state.get("rejected", 0), "rejected")
        theta = _solve(A, b)
        if not self.admissible(theta):
            shown = ", ".join(f"{v:.4g}" for v in theta)
            raise ValueError(f"its coefficients ({shown}) are outside the physical range")
        self.theta = theta
        self.A, self.b = A, b
        self.scale = scale
        self.observations, self.clipped, self.rejected = observations, clipped, rejected


def _all_finite(theta: Sequence[float]) -> bool:
    return all(math.isfinite(v) for v in theta)


def _list(value: Any, key: str) -> list[Any]:
    if not isinstance(value, list):
        raise ValueError(f"{key} must be a list, got {type(value).__name__}")
    return value


def _number(value: Any, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{key} holds {type(value).__name__}, expected numbers")
    if isinstance(value, int) and abs(value) > MAX_STATE_VALUE:
        raise ValueError(f"{key} holds an integer of {len(str(abs(value)))} digits")
    number = float(value)
    if not (math.isfinite(number) and abs(number) <= MAX_STATE_VALUE):
        raise ValueError(f"{key} holds {number:g}, outside +-{MAX_STATE_VALUE:g}")
    return number


def _count(value: Any, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_STATE_COUNT:
        shown = repr(value) if len(repr(value)) < 40 else f"{repr(value)[:37]}..."
        raise ValueError(f"{key} is {shown}, expected an integer in 0..{MAX_STATE_COUNT}")
    return value


def _positive_definite(matrix: list[list[float]]) -> bool:
    """Symmetric (to rounding) with a Cholesky factorisation: an information matrix."""
    d = len(matrix)
    for i in range(d):
        for j in range(i):
            if abs(matrix[i][j] - matrix[j][i]) > 1e-9 * max(1.0, abs(matrix[i][j])):
                return False
    lower = [[0.0] * d for _ in range(d)]
    for i in range(d):
        for j in range(i + 1):
            rest = matrix[i][j] - sum(lower[i][k] * lower[j][k] for k in range(j))
            if i == j:
                if not rest > 0:
                    return False
                lower[i][i] = math.sqrt(rest)
            else:
                lower[i][j] = rest / lower[j][j]
    return True


def _times(matrix: list[list[float]], vector: Sequence[float]) -> list[float]:
    return [sum(a * v for a, v in zip(row, vector, strict=True)) for row in matrix]


def _solve(matrix: list[list[float]], vector: Sequence[float]) -> list[float]:
    """``x`` with ``matrix x = vector``: Gaussian elimination with partial pivoting, for the
    small positive definite systems here."""
    d = len(vector)
    work = [list(row) + [float(v)] for row, v in zip(matrix, vector, strict=True)]
    for col in range(d):
        pivot = max(range(col, d), key=lambda r: abs(work[r][col]))
        if abs(work[pivot][col]) < 1e-300:
            raise ValueError("the design does not determine every coefficient")
        work[col], work[pivot] = work[pivot], work[col]
        for row in range(col + 1, d):
            factor = work[row][col] / work[col][col]
            work[row] = [a - factor * b for a, b in zip(work[row], work[col], strict=True)]
    solution = [0.0] * d
    for row in range(d - 1, -1, -1):
        rest = sum(work[row][k] * solution[k] for k in range(row + 1, d))
        solution[row] = (work[row][d] - rest) / work[row][row]
    return solution
