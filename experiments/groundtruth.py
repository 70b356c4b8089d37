"""Ground-truth execution times for replayed requests, from a device profile's measurements.

The scheduler decides with the profile's fitted line; the replay must not grade it against
that same line, or a linear model would look perfect. So a request's true time on a device is
drawn from the measurements themselves, by one of two :class:`Sampler` s that
:func:`ground_truth` chooses between:

- :class:`RequestSampler`, when the profile holds enough *real requests* (``cnmt profile
  --requests``: corpus (N, M) pairs timed once each, never fitted): as in the paper, the
  scheduler's model comes from one set of inputs (the grid) and the ground truth from others.
- :class:`TimeSampler`, from the grid's cells otherwise (the fit's own samples):

1. the mean of each measured (N, M) cell is interpolated bilinearly at the request's (N, M)
   (linearly extrapolated from the outermost cells beyond the measured grid; such requests
   are counted as ``extrapolated``);
2. a residual is added: one raw sample of the nearest measured cell, drawn uniformly with the
   replay's seeded generator, minus that cell's mean. The spread of real repetitions (timer
   noise, cache effects, scheduler hiccups, the quota's bursts) thus carries over.

Where the grid has holes (not every N with every M), step 1 uses the nearest cell's mean
corrected by the fitted slopes: ``mean + a_n*(N - n_cell) + a_m*(M - m_cell)``. A time never
drops below a tenth of the fastest measured cell's mean.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from cnmt.profiling.profiles import DeviceProfile

NEIGHBOURS = 32
"""Measured requests a request's true time is drawn from (see :class:`RequestSampler`)."""
MIN_REQUESTS = 200
"""Fewer measured requests than this and the ground truth comes from the grid instead."""


class Sampler(Protocol):
    """True execution times of one model on one device, for the replay.

    ``sample`` draws one true time per request (seconds) with the replay's generator;
    ``mean_time`` is the *expected* time at each (N, M), the mean over what ``sample`` may
    draw there (what an expected-time Oracle knows: the true M, not the noise of one run);
    ``method`` says where the times come from (reports print it); ``extrapolated`` is True
    where (N, M) lies outside what was measured; no time is below ``floor_s``.
    """

    @property
    def method(self) -> str: ...

    @property
    def floor_s(self) -> float: ...

    def sample(self, n: np.ndarray, m: np.ndarray, rng: np.random.Generator) -> np.ndarray: ...

    def mean_time(self, n: np.ndarray, m: np.ndarray) -> np.ndarray: ...

    def extrapolated(self, n: np.ndarray, m: np.ndarray) -> np.ndarray: ...


def ground_truth(
    profile: DeviceProfile, *, neighbours: int = NEIGHBOURS, min_requests: int = MIN_REQUESTS
) -> Sampler:
    """The profile's measured requests when it has at least ``min_requests`` of them (and at
    least ``neighbours``), else its grid."""
    if len(profile.requests) >= max(min_requests, neighbours):
        return RequestSampler(profile, neighbours)
    return TimeSampler(profile)


def _axis(grid: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(lower index, fraction along the interval, nearest index) of values on a sorted grid."""
    if len(grid) == 1:
        zeros = np.zeros(len(values), dtype=np.int64)
        return zeros, np.zeros(len(values)), zeros
    lower = np.clip(np.searchsorted(grid, values, side="right") - 1, 0, len(grid) - 2)
    frac = (values - grid[lower]) / (grid[lower + 1] - grid[lower])  # outside [0, 1]: extrapolate
    nearest = np.where(frac < 0.5, lower, lower + 1)
    nearest = np.where(values <= grid[0], 0, np.where(values >= grid[-1], len(grid) - 1, nearest))
    return lower, frac, nearest


@dataclass(frozen=True)
class TimeSampler:
    """Draws true execution times of one model on one device (see the module docstring)."""

    profile: DeviceProfile

    def __post_init__(self) -> None:
        cells = self.profile.cells
        ns = np.array(sorted({c.n for c in cells}), dtype=float)
        ms = np.array(sorted({c.m for c in cells}), dtype=float)
        means = np.full((len(ns), len(ms)), np.nan)
        width = max((len(c.seconds) for c in cells), default=1)
        samples = np.full((len(ns), len(ms), width), np.nan)
        counts = np.zeros((len(ns), len(ms)), dtype=np.int64)
        for c in cells:
            if not c.seconds:
                continue  # a cell without samples counts as not measured
            i, j = int(np.searchsorted(ns, c.n)), int(np.searchsorted(ms, c.m))
            values = np.asarray(c.seconds, dtype=float)
            means[i, j] = values.mean()
            samples[i, j, : len(values)] = values - values.mean()
            counts[i, j] = len(values)
        object.__setattr__(self, "_ns", ns)
        object.__setattr__(self, "_ms", ms)
        object.__setattr__(self, "_means", means)
        object.__setattr__(self, "_residuals", samples)
        object.__setattr__(self, "_counts", counts)

    @property
    def complete_grid(self) -> bool:
        return bool(np.isfinite(self._means).all())

    @property
    def method(self) -> str:
        return "bilinear" if self.complete_grid else "nearest cell + fitted slopes"

    def extrapolated(self, n: np.ndarray, m: np.ndarray) -> np.ndarray:
        """True where (N, M) lies outside the measured grid."""
        ns, ms = self._ns, self._ms
        return (n < ns[0]) | (n > ns[-1]) | (m < ms[0]) | (m > ms[-1])

    def mean_time(self, n: np.ndarray, m: np.ndarray) -> np.ndarray:
        """Interpolated mean execution time (seconds) at each (N, M)."""
        n = np.asarray(n, dtype=float)
        m = np.asarray(m, dtype=float)
        i, fn, ni = _axis(self._ns, n)
        j, fm, nj = _axis(self._ms, m)
        g = self._means
        if not self.complete_grid:
            fit = self.profile.fit
            ci, cj = self._nearest_measured(n, m)
            return g[ci, cj] + fit.a_n * (n - self._ns[ci]) + fit.a_m * (m - self._ms[cj])
        i1 = np.minimum(i + 1, len(self._ns) - 1)
        j1 = np.minimum(j + 1, len(self._ms) - 1)
        low = g[i, j] * (1 - fm) + g[i, j1] * fm
        high = g[i1, j] * (1 - fm) + g[i1, j1] * fm
        value = low * (1 - fn) + high * fn
        if len(self._ns) == 1:
            value = value + self.profile.fit.a_n * (n - self._ns[0])
        if len(self._ms) == 1:
            value = value + self.profile.fit.a_m * (m - self._ms[0])
        return value

    def _nearest_measured(self, n: np.ndarray, m: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Indices of the nearest measured cell, distances scaled by each axis' span."""
        measured = np.argwhere(np.isfinite(self._means))
        cn, cm = self._ns[measured[:, 0]], self._ms[measured[:, 1]]
        span_n = max(float(self._ns[-1] - self._ns[0]), 1.0)
        span_m = max(float(self._ms[-1] - self._ms[0]), 1.0)
        best = np.empty(len(n), dtype=np.int64)
        for start in range(0, len(n), 8192):  # bounded memory: chunk x cells distances
            dn = (n[start : start + 8192, None] - cn[None, :]) / span_n
            dm = (m[start : start + 8192, None] - cm[None, :]) / span_m
            best[start : start + 8192] = np.argmin(dn * dn + dm * dm, axis=1)
        return measured[best, 0], measured[best, 1]

    def sample(self, n: np.ndarray, m: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """One true execution time (seconds) per (N, M), residuals drawn with ``rng``."""
        n = np.asarray(n, dtype=float)
        m = np.asarray(m, dtype=float)
        mean = self.mean_time(n, m)
        if self.complete_grid:
            _, _, ci = _axis(self._ns, n)
            _, _, cj = _axis(self._ms, m)
        else:
            ci, cj = self._nearest_measured(n, m)
        counts = self._counts[ci, cj]
        pick = np.minimum((rng.random(len(n)) * counts).astype(np.int64), counts - 1)
        residual = self._residuals[ci, cj, pick]
        return np.maximum(mean + residual, self.floor_s)

    @property
    def floor_s(self) -> float:
        """No drawn time is below a tenth of the fastest measured cell's mean: extrapolating
        a fit with a negative slope far below the grid must not yield free (or negative) work."""
        positive = self._means[np.isfinite(self._means) & (self._means > 0)]
        return 0.1 * float(positive.min()) if positive.size else 1e-6


@dataclass(frozen=True)
class RequestSampler:
    """Draws true execution times from the real requests a profile measured, by (N, M)
    neighbourhood.

    1. A plane ``t = c_n*N + c_m*M + c`` is fitted by least squares on the requests themselves
       (not the grid: the ground truth owes nothing to what the scheduler was fitted on; if
       the requests cannot identify a plane, e.g. all of one N, the grid's fit stands in).
       Each request keeps its residual from that plane.
    2. A replayed request's neighbourhood is the ``neighbours`` measured requests nearest to
       its (N, M), distances in units of each axis' standard deviation over the requests
       (ties broken by measurement order, so the draw is reproducible).
    3. Its true time is the plane at its own (N, M) plus the residual of one neighbour drawn
       uniformly with the replay's generator: a neighbour's measured time, moved along the
       plane from the neighbour's (N, M) to the request's. The spread of real runs at that
       size (the quota's bursts, cache effects) thus carries over.

    ``mean_time`` is the plane plus the neighbourhood's mean residual: exactly the expectation
    of what ``sample`` draws (wherever the floor does not bite), and an average of
    ``neighbours`` measurements (its noise is the runs' standard deviation over
    sqrt(neighbours)), so it follows the measured surface's bends without being one run's
    luck. Outside the requests' range of N or M (``extrapolated``) the
    plane carries the time; no time is below a tenth of the fastest measured request.
    """

    profile: DeviceProfile
    neighbours: int = NEIGHBOURS

    def __post_init__(self) -> None:
        requests = self.profile.requests
        if len(requests) < max(self.neighbours, 3) or self.neighbours < 1:
            raise ValueError(
                f"{self.profile.label}: {len(requests)} measured requests cannot give "
                f"neighbourhoods of {self.neighbours}"
            )
        n = np.array([r.n for r in requests], dtype=float)
        m = np.array([r.m for r in requests], dtype=float)
        t = np.array([r.seconds for r in requests], dtype=float)
        design = np.column_stack([n, m, np.ones(len(n))])
        coef, _, rank, _ = np.linalg.lstsq(design, t, rcond=None)
        if rank < 3:
            fit = self.profile.fit
            coef = np.array([fit.a_n, fit.a_m, fit.b])
        object.__setattr__(self, "_n", n)
        object.__setattr__(self, "_m", m)
        object.__setattr__(self, "_plane", coef)
        object.__setattr__(self, "_residuals", t - design @ coef)
        object.__setattr__(self, "_scale", (max(float(n.std()), 1.0), max(float(m.std()), 1.0)))
        object.__setattr__(self, "_floor", 0.1 * float(t.min()) if t.min() > 0 else 1e-6)

    @property
    def method(self) -> str:
        return f"from {len(self._n)} measured requests, {self.neighbours} nearest by (N, M)"

    @property
    def floor_s(self) -> float:
        return self._floor

    def extrapolated(self, n: np.ndarray, m: np.ndarray) -> np.ndarray:
        """True where (N, M) lies outside the measured requests' range of N or of M."""
        n, m = np.asarray(n), np.asarray(m)
        return (n < self._n.min()) | (n > self._n.max()) | (m < self._m.min()) | (m > self._m.max())

    def _plane_at(self, n: np.ndarray, m: np.ndarray) -> np.ndarray:
        c_n, c_m, c = self._plane
        return c_n * n + c_m * m + c

    def _neighbourhoods(self, n: np.ndarray, m: np.ndarray) -> np.ndarray:
        """Indices of each (N, M)'s nearest measured requests, nearest first: [len(n), k].

        Replayed requests repeat few distinct (N, M) (a few hundred in the shipped corpora),
        so distances are computed once per distinct pair, in chunks to bound memory. Many
        requests lie at exactly the same distance (token counts are integers), so among those
        at the k-th distance the earlier measured come first: one well-defined neighbourhood,
        whatever the selection algorithm."""
        pairs, inverse = np.unique(np.column_stack([n, m]), axis=0, return_inverse=True)
        scale_n, scale_m = self._scale
        k = self.neighbours
        found = np.empty((len(pairs), k), dtype=np.int64)
        chunk = max(1, 4_000_000 // len(self._n))
        for start in range(0, len(pairs), chunk):
            part = pairs[start : start + chunk]
            dn = (part[:, :1] - self._n[None, :]) / scale_n
            dm = (part[:, 1:] - self._m[None, :]) / scale_m
            distance = dn * dn + dm * dm
            kth = np.partition(distance, k - 1, axis=1)[:, k - 1 : k]
            for row, (d, limit) in enumerate(zip(distance, kth, strict=True)):
                candidates = np.flatnonzero(d <= limit[0])  # index order: ties by measurement
                nearest = candidates[np.argsort(d[candidates], kind="stable")[:k]]
                found[start + row] = nearest
        return found[inverse.reshape(-1)]

    def mean_time(self, n: np.ndarray, m: np.ndarray) -> np.ndarray:
        """Expected execution time (seconds) at each (N, M): the plane plus the mean residual
        of its neighbourhood."""
        n, m = np.asarray(n, dtype=float), np.asarray(m, dtype=float)
        local = self._residuals[self._neighbourhoods(n, m)].mean(axis=1)
        return np.maximum(self._plane_at(n, m) + local, self.floor_s)

    def sample(self, n: np.ndarray, m: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """One true execution time (seconds) per (N, M), neighbours drawn with ``rng``."""
        n, m = np.asarray(n, dtype=float), np.asarray(m, dtype=float)
        near = self._neighbourhoods(n, m)
        pick = rng.integers(0, self.neighbours, size=len(n))
        residual = self._residuals[near[np.arange(len(n)), pick]]
        return np.maximum(self._plane_at(n, m) + residual, self.floor_s)
