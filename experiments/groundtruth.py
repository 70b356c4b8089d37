"""Ground-truth execution times for replayed requests, from a device profile's raw samples.

The scheduler decides with the profile's fitted line; the replay must not grade it against
that same line, or a linear model would look perfect. So a request's true time on a device is
drawn from the measurements themselves:

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

import numpy as np

from cnmt.profiling.profiles import DeviceProfile


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
