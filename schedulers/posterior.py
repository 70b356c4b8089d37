"""A latency model that knows what it does not know: a Kalman filter over ``(a_n, a_m, b)``.

The ``online`` model (:mod:`cnmt.schedulers.latency_models`) gives one point estimate, learnt
only from the requests its device ran. A device the prior makes look slow is then never tried,
and a wrong prior is never corrected. ``posterior`` keeps, per device, a Gaussian posterior over
the coefficients ``theta = (a_n, a_m, b)`` of ``T = a_n*N + a_m*M + b``: a mean and a 3x3
covariance, from which a policy that explores (:mod:`cnmt.schedulers.exploration`) draws.

**The prior.** The mean is the profile's fit. The covariance has two parts:

* the *speed scale*: ``scale_sd^2 * theta0 theta0'``, uncertainty along the fit itself. A
  device may run at another speed than on the day it was profiled (another load, another
  quota, another machine), and all its coefficients then change by the same factor. One
  observation of any size informs this direction, since ``x . theta0`` is the profile's own
  prediction: the model first learns one number, how much faster or slower than its profile
  the device is;
* the *shape*: the covariance of a fit to ``shape_requests`` runs spread over the design
  ``prior_tokens x prior_tokens``, each with the profile's relative residual (``noise``, from
  the profile's RMS residual when the prior carries it, :class:`FittedLatencyModel`). Only
  requests of varied N and M move these directions, so the full shape is learnt once they
  have been seen, and never from a stream of one size.

**Observations.** ``observe(N, M, seconds)`` is a Kalman update with a relative noise
(``noise`` times the prediction, plus the floor): a run of 200 ms varies more than one of
2 ms. A standardised innovation beyond ``clip`` counts as that large (one GC pause or quota
stall moves the model a bounded step). When the latest ``change_after`` runs agree on a log
error far beyond what the noise and the posterior allow (a t-test on them), they are not
outliers but a change of speed: the scale's variance is widened to the size of the error they
show, and the model follows at once. An observation outside the physical range
(not finite, not positive, over ``max_s``, or N or M negative) never reaches the coefficients:
it is dropped and counted (``dropped``).

**Time.** ``elapse(now)`` is called once per decision. It adds process noise along the speed
scale: ``drift_per_request`` of variance in relative speed per decision (plus
``drift_per_s`` per second since the last call), up to the prior's ``scale_sd^2``. A device
that is not observed therefore becomes less certain the longer it is not, until a policy that
explores tries it again; one that is observed stays certain.

**Memory.** Off by default (every observation counts alike, the speed alone drifts);
``memory: K`` moves the covariance ``1/K`` of the way back to the prior's at each observation,
so the fit follows the latest ~K runs of a device that is not quite linear.

**Physical.** The coefficients a policy sees (:meth:`PosteriorLatency.current`) have no
negative slope (the mean conditioned on a negative slope being 0) and predict no time below
``floor_s``; the filter keeps the unconstrained Gaussian inside, so that the constraint does
not bias what it learns. Pure Python: three coefficients, where numpy's per-call overhead would
cost more than the arithmetic.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from cnmt.schedulers.base import LatencyModel
from cnmt.schedulers.latency_models import LatencyEstimator
from cnmt.schema import ranged

Matrix = tuple[tuple[float, float, float], tuple[float, float, float], tuple[float, float, float]]
_ZERO: Matrix = ((0.0, 0.0, 0.0), (0.0, 0.0, 0.0), (0.0, 0.0, 0.0))


@dataclass(frozen=True, slots=True)
class FittedLatencyModel(LatencyModel):
    """A profile's fit with its RMS residual (seconds): what a posterior takes its prior
    spread from. Decides exactly as the plain :class:`LatencyModel`."""

    residual_s: float = math.nan


@dataclass(frozen=True, slots=True)
class PosteriorModel(LatencyModel):
    """The posterior's physical mean, with its covariance: a :class:`LatencyModel` any policy
    can decide with, from which a policy that explores can also draw (:meth:`draw`).

    ``predict`` never returns less than ``floor_s``. ``cov`` is the covariance of the
    unconstrained coefficients (seconds^2 per token^2 ...), ``noise`` the relative noise of one
    run, ``observations`` how many observations it has learnt from.
    """

    cov: Matrix = _ZERO
    floor_s: float = 0.0
    noise: float = 0.0
    observations: int = 0

    def predict(self, n_tokens: float, m_tokens: float) -> float:
        return max(self.floor_s, self.a_n * n_tokens + self.a_m * m_tokens + self.b)

    def sd(self, n_tokens: float, m_tokens: float) -> float:
        """Standard deviation of the expected time at (N, M) under the posterior (seconds)."""
        x = (float(n_tokens), float(m_tokens), 1.0)
        return math.sqrt(max(0.0, _quad(self.cov, x)))

    def draw(self, n_tokens: float, m_tokens: float, rng: np.random.Generator) -> float:
        """One Thompson draw of the expected time at (N, M): log-normal, with the posterior's
        mean and standard deviation there. Log-normal rather than Gaussian because a speed is a
        factor: a Gaussian as wide as its mean gives "nearly free" a chance it does not have
        (an edge 30x slower than the cloud would be drawn faster one time in six)."""
        mean = self.predict(n_tokens, m_tokens)
        relative = self.sd(n_tokens, m_tokens) / mean
        spread = math.sqrt(math.log1p(relative * relative))
        return mean * math.exp(spread * float(rng.standard_normal()) - spread * spread / 2.0)


class PosteriorLatency(LatencyEstimator):
    """The profile's fit as a Gaussian prior, refined per observation by a Kalman filter whose
    uncertainty grows while the device is not observed (see the module docstring)."""

    name = "posterior"
    learns = True

    @dataclass(frozen=True)
    class Params:
        scale_sd: float = ranged(1.0, low=0, high=5, above=True)
        shape_requests: float = ranged(20.0, low=0, high=1e6, above=True)
        noise: float | None = ranged(None, low=0, high=5, above=True)
        drift_per_request: float = ranged(1e-4, low=0, high=1)
        drift_per_s: float = ranged(0.0, low=0, high=1)
        clip: float = ranged(3.0, low=0, high=100, above=True)
        change_after: int = ranged(8, low=3, high=10000)
        floor_s: float = ranged(1e-4, low=0, high=60, above=True)
        max_s: float = ranged(600.0, low=0, high=86400, above=True)
        memory: float | None = ranged(None, low=2, high=1e9)
        prior_tokens: tuple[float, ...] = (4.0, 16.0, 48.0)

        def __post_init__(self) -> None:
            if not 0.0 < self.scale_sd <= 5.0:
                raise ValueError(f"scale_sd must be in (0, 5], got {self.scale_sd}")
            if min(self.shape_requests, self.clip, self.floor_s, self.max_s) <= 0:
                raise ValueError("shape_requests, clip, floor_s and max_s must be positive")
            if self.noise is not None and not 0.0 < self.noise < 5.0:
                raise ValueError(f"noise must be in (0, 5) or null, got {self.noise}")
            if min(self.drift_per_request, self.drift_per_s) < 0:
                raise ValueError("drift_per_request and drift_per_s must be >= 0")
            if self.memory is not None and not self.memory >= 2:
                raise ValueError(f"memory must be >= 2 observations or null, got {self.memory}")
            if self.change_after < 3:
                raise ValueError(f"change_after must be >= 3, got {self.change_after}")
            if len(set(self.prior_tokens)) < 2 or min(self.prior_tokens) <= 0:
                raise ValueError("prior_tokens: give at least two different positive values")

    def __init__(self, params: Any, prior: LatencyModel) -> None:
        super().__init__(params, prior)
        theta0 = (float(prior.a_n), float(prior.a_m), float(prior.b))
        if not all(math.isfinite(v) for v in theta0):
            raise ValueError(f"the prior's coefficients must be finite, got {theta0}")
        tokens = params.prior_tokens
        design = [(float(n), float(m), 1.0) for n in tokens for m in tokens]
        typical = [max(params.floor_s, _dot(theta0, x)) for x in design]
        self.noise = params.noise if params.noise is not None else _profile_noise(prior, typical)
        # The shape: the covariance of a fit to shape_requests runs over the design.
        info = [[0.0] * 3 for _ in range(3)]
        for x, t in zip(design, typical, strict=True):
            weight = params.shape_requests / len(design) / (self.noise * t) ** 2
            for i in range(3):
                for j in range(3):
                    info[i][j] += weight * x[i] * x[j]
        shape = _inverse(_freeze(info))
        scale = _outer(theta0, params.scale_sd**2)
        self.mean = theta0
        self.cov = _add(shape, scale)
        self._prior_cov = self.cov
        self.observations_count = 0
        self._dropped = 0
        self.clipped = 0
        self.changes = 0  # times a run of large innovations widened the scale
        self._recent: list[float] = []  # log(seconds / predicted) of the latest observations
        self._last_now: float | None = None
        self._current = self._snapshot()

    # -- what a policy sees

    def current(self) -> PosteriorModel:
        return self._current

    @property
    def observations(self) -> int:
        return self.observations_count

    @property
    def dropped(self) -> int:
        return self._dropped

    def scale_sd(self) -> float:
        """The relative standard deviation of the device's speed along the current mean."""
        return math.sqrt(max(0.0, self._scale_variance()))

    # -- time and observations

    def elapse(self, now: float) -> None:
        """One decision at ``now``: widen the speed scale's variance by the process noise."""
        p = self.params
        added = p.drift_per_request
        if self._last_now is not None and p.drift_per_s > 0:
            added += p.drift_per_s * max(0.0, now - self._last_now)
        self._last_now = now
        room = p.scale_sd**2 - self._scale_variance()
        if added <= 0 or room <= 0:
            return
        self.cov = _add(self.cov, _outer(self._physical_mean(), min(added, room)))
        self._current = self._snapshot()

    def observe(self, n_tokens: float, m_tokens: float, seconds: float) -> None:
        p = self.params
        n, m, y = float(n_tokens), float(m_tokens), float(seconds)
        if not (
            math.isfinite(n) and math.isfinite(m) and math.isfinite(y) and n >= 0 and m >= 0
        ) or not (0.0 < y <= p.max_s):
            self._dropped += 1  # e.g. a NaN, negative or hour-long "execution time"
            return
        x = (n, m, 1.0)
        if p.memory is not None:
            # Forget: each observation moves the covariance 1/memory of the way back toward
            # the prior's, so the fit follows the latest `memory` runs of a device that is not
            # quite linear, and stays bounded in directions the runs do not excite.
            keep = 1.0 - 1.0 / p.memory
            self.cov = _freeze(
                [
                    [keep * self.cov[i][j] + (1.0 - keep) * self._prior_cov[i][j] for j in range(3)]
                    for i in range(3)
                ]
            )
        predicted = self._current.predict(n, m)
        innovation = y - _dot(self.mean, x)
        spread = _quad(self.cov, x)
        noise_s2 = (self.noise * predicted + p.floor_s) ** 2
        variance = spread + noise_s2
        z = innovation / math.sqrt(variance)
        if abs(z) > p.clip:
            # Huber: as if the run were noisier, so that it lies `clip` deviations out. The
            # step and the certainty gained are both bounded.
            self.clipped += 1
            variance = (innovation / p.clip) ** 2
        self._recent.append(math.log(y / predicted))
        if len(self._recent) > p.change_after:
            self._recent.pop(0)
        bias = self._changed_by()
        if bias is not None:
            # Not outliers: the device changed speed. Widen the scale to the error the recent
            # runs agree on, and take this one at face value.
            self.cov = _add(self.cov, _outer(self._physical_mean(), math.expm1(abs(bias)) ** 2))
            spread = _quad(self.cov, x)
            variance = spread + noise_s2
            self.changes += 1
            self._recent.clear()
        # The run-to-run noise follows what the coefficients' spread does not explain.
        unexplained = (innovation * innovation - spread) / (predicted * predicted)
        limit = (p.clip * self.noise) ** 2
        rate = max(1.0 / 200.0, 1.0 / (self.observations_count + p.shape_requests))
        squared = self.noise**2 + rate * (min(max(unexplained, 0.0), limit) - self.noise**2)
        self.noise = min(1.0, max(0.01, math.sqrt(squared)))
        px = _times(self.cov, x)
        gain = [v / variance for v in px]
        self.mean = tuple(mu + k * innovation for mu, k in zip(self.mean, gain, strict=True))  # type: ignore[assignment]
        self.cov = _symmetric(
            tuple(tuple(self.cov[i][j] - gain[i] * px[j] for j in range(3)) for i in range(3))  # type: ignore[arg-type]
        )
        self.observations_count += 1
        self._current = self._snapshot()

    # -- saving

    def state(self) -> dict[str, Any]:
        return {
            "mean": list(self.mean),
            "cov": [list(row) for row in self.cov],
            "observations": self.observations_count,
            "dropped": self.dropped,
        }

    def restore(self, state: dict[str, Any]) -> None:
        mean = [float(v) for v in state["mean"]]
        cov = [[float(v) for v in row] for row in state["cov"]]
        if len(mean) != 3 or len(cov) != 3 or any(len(row) != 3 for row in cov):
            raise ValueError("expected 3 coefficients and a 3x3 covariance")
        if not all(math.isfinite(v) for v in (*mean, *(v for row in cov for v in row))):
            raise ValueError("the state holds a value that is not finite")
        self.mean = (mean[0], mean[1], mean[2])
        self.cov = _symmetric(_freeze(cov))
        _cholesky(self.cov)  # ValueError if it is not a covariance
        self.observations_count = int(state.get("observations", 0))
        self._dropped = int(state.get("dropped", 0))
        self._current = self._snapshot()

    # -- internals

    def _physical_mean(self) -> tuple[float, float, float]:
        return _physical(self.mean, self.cov)

    def _changed_by(self) -> float | None:
        """The log speed change the latest ``change_after`` runs agree on, if they do: their
        mean log error is over 5 standard errors from 0 (the spread among them, or half the
        noise if they agree more closely) and over twice the scale's standard deviation."""
        k = len(self._recent)
        if k < self.params.change_after:
            return None
        mean = sum(self._recent) / k
        spread = math.sqrt(sum((v - mean) ** 2 for v in self._recent) / (k - 1))
        error = max(spread, self.noise / 2.0) / math.sqrt(k)
        if abs(mean) > 5.0 * error and abs(mean) > 2.0 * self.scale_sd():
            return mean
        return None

    def _scale_variance(self) -> float:
        mu = self._physical_mean()
        norm = _dot(mu, mu)
        return _quad(self.cov, mu) / (norm * norm) if norm > 0 else 0.0

    def _snapshot(self) -> PosteriorModel:
        a_n, a_m, b = self._physical_mean()
        return PosteriorModel(
            a_n,
            a_m,
            b,
            cov=self.cov,
            floor_s=self.params.floor_s,
            noise=self.noise,
            observations=self.observations_count,
        )


def _profile_noise(prior: LatencyModel, typical: list[float]) -> float:
    """The relative noise of one run: the profile's RMS residual over its typical prediction
    (0.2 when the prior does not carry its residual), kept within [0.02, 1]."""
    residual = getattr(prior, "residual_s", math.nan)
    if not (isinstance(residual, float) and math.isfinite(residual) and residual > 0):
        return 0.2
    middle = sorted(typical)[len(typical) // 2]
    return min(1.0, max(0.02, residual / middle))


def _physical(theta: tuple[float, float, float] | Any, cov: Matrix) -> tuple[float, float, float]:
    """``theta`` conditioned on each negative slope being 0 (the Gaussian's most likely point
    with no negative slope): ``theta - P[:, S] P[S, S]^-1 theta[S]``, S the negative slopes."""
    t = [float(v) for v in theta]
    for _ in range(2):  # conditioning on one slope can push the other below 0
        negative = [i for i in (0, 1) if t[i] < 0]
        if not negative:
            break
        if len(negative) == 1:
            i = negative[0]
            factor = t[i] / cov[i][i] if cov[i][i] > 0 else 0.0
            t = [t[k] - cov[k][i] * factor for k in range(3)]
            t[i] = 0.0
        else:
            a, b_, c = cov[0][0], cov[0][1], cov[1][1]
            det = a * c - b_ * b_
            if det <= 0:
                t[0] = t[1] = 0.0
                break
            w0 = (c * t[0] - b_ * t[1]) / det
            w1 = (a * t[1] - b_ * t[0]) / det
            t[2] -= cov[2][0] * w0 + cov[2][1] * w1
            t[0] = t[1] = 0.0
    return (max(0.0, t[0]), max(0.0, t[1]), t[2])


def _dot(a: tuple[float, ...] | list[float], b: tuple[float, ...] | list[float]) -> float:
    return a[0] * b[0] + a[1] * b[1] + a[2] * b[2]


def _times(m: Matrix, x: tuple[float, ...]) -> list[float]:
    return [_dot(row, x) for row in m]


def _quad(m: Matrix, x: tuple[float, ...]) -> float:
    return _dot(x, _times(m, x))


def _outer(v: tuple[float, ...], scale: float) -> Matrix:
    return _freeze([[scale * v[i] * v[j] for j in range(3)] for i in range(3)])


def _add(a: Matrix, b: Matrix) -> Matrix:
    return _freeze([[a[i][j] + b[i][j] for j in range(3)] for i in range(3)])


def _symmetric(m: Matrix) -> Matrix:
    return _freeze([[(m[i][j] + m[j][i]) / 2.0 for j in range(3)] for i in range(3)])


def _freeze(rows: list[list[float]] | Any) -> Matrix:
    return tuple(tuple(float(v) for v in row) for row in rows)  # type: ignore[return-value]


def _inverse(m: Matrix) -> Matrix:
    """The inverse of a 3x3 matrix by cofactors; ValueError when it is singular."""
    (a, b, c), (d, e, f), (g, h, i) = m
    co = (
        (e * i - f * h, -(d * i - f * g), d * h - e * g),
        (-(b * i - c * h), a * i - c * g, -(a * h - b * g)),
        (b * f - c * e, -(a * f - c * d), a * e - b * d),
    )
    det = a * co[0][0] + b * co[0][1] + c * co[0][2]
    if not abs(det) > 0:
        raise ValueError("the design does not determine every coefficient")
    return _freeze([[co[j][k] / det for j in range(3)] for k in range(3)])


def _cholesky(m: Matrix) -> Matrix:
    """Lower-triangular ``L`` with ``L L' = m``; directions of (numerically) zero variance get
    zero. ValueError for a matrix with a clearly negative variance."""
    L = [[0.0] * 3 for _ in range(3)]
    scale = max(abs(m[k][k]) for k in range(3)) or 1.0
    for i in range(3):
        for j in range(i + 1):
            s = m[i][j] - sum(L[i][k] * L[j][k] for k in range(j))
            if i == j:
                if s < -1e-9 * scale:
                    raise ValueError("the covariance is not positive semi-definite")
                L[i][j] = math.sqrt(max(s, 0.0))
            else:
                L[i][j] = s / L[j][j] if L[j][j] > 0 else 0.0
    return _freeze(L)
