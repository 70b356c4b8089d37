"""Device profiles: measured latency of one model on one device setting, and its linear fit.

A profile is a JSON file written by `cnmt profile`. It keeps every raw sample of a grid of
(N, M) cells, the least-squares fit ``T = a_n*N + a_m*M + b`` over them (what the scheduler
uses), a quality summary of the measurement (:class:`Quality`: regime, convergence, sanity,
host load) and, when measured, the timings of real requests (:class:`TimedRequest`: ground
truth for the replay, never used by the fit). Reading one needs neither torch nor onnxruntime.

Format ``cnmt-device-profile/2``; files of format ``/1`` (grid and fit only, measured back to
back per cell, no quality summary) are still read: their ``quality`` is None.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cnmt.errors import ConfigError
from cnmt.files import read_json, write_json
from cnmt.profiling.devices import CPU_PROVIDER, DeviceSetting
from cnmt.schedulers.base import LatencyModel
from cnmt.schedulers.posterior import FittedLatencyModel

FORMAT = "cnmt-device-profile/2"
READ_FORMATS = ("cnmt-device-profile/1", FORMAT)
REGIMES = ("isolated", "sustained")
CONFIDENCE = 0.95
"""Two-sided confidence level of every per-cell interval (fixed, so that profiles compare)."""
DEFAULT_RESOLUTION = 0.05
"""Relative resolution of the sanity check for profiles that do not record their own target."""

# Student t quantiles t(0.975, df) for df = 1..30; beyond, the Cornish-Fisher expansion below
# is within 1e-4 of the exact value (the project needs no scipy).
_T975 = (
    12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
    2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
    2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042,
)  # fmt: skip
_Z975 = 1.959964


def t_quantile(df: int) -> float:
    """The 97.5% quantile of Student's t with ``df`` degrees of freedom (df >= 1)."""
    if df < 1:
        raise ValueError(f"degrees of freedom must be at least 1, got {df}")
    if df <= len(_T975):
        return _T975[df - 1]
    z, v = _Z975, float(df)
    return (
        z
        + (z**3 + z) / (4 * v)
        + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * v**2)
        + (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / (384 * v**3)
    )


def ci_halfwidth(std: float, count: int) -> float:
    """Half-width of the 95% Student t interval of a mean of ``count`` samples with sample
    standard deviation ``std``; infinite below two samples (nothing is known of the noise)."""
    if count < 2:
        return math.inf
    return t_quantile(count - 1) * std / math.sqrt(count)


@dataclass(frozen=True)
class Cell:
    """All timed runs of one (N, M) grid point, in seconds, in the order they were measured."""

    n: int
    m: int
    seconds: tuple[float, ...]

    @property
    def count(self) -> int:
        return len(self.seconds)

    @property
    def mean(self) -> float:
        return float(np.mean(self.seconds))

    @property
    def std(self) -> float:
        """Sample standard deviation (n - 1 in the denominator); 0 for a single sample."""
        return float(np.std(self.seconds, ddof=1)) if self.count > 1 else 0.0

    @property
    def ci_s(self) -> float:
        """Half-width of the 95% confidence interval of :attr:`mean`, seconds."""
        return ci_halfwidth(self.std, self.count)

    @property
    def rel_ci(self) -> float:
        """:attr:`ci_s` over :attr:`mean`: the precision the cell's mean is known to."""
        return self.ci_s / self.mean if self.mean > 0 else math.inf


@dataclass(frozen=True)
class Fit:
    a_n: float
    a_m: float
    b: float
    r2: float
    mse: float

    @property
    def latency_model(self) -> LatencyModel:
        """The fit as a latency model, carrying its RMS residual (a posterior's prior spread)."""
        residual = math.sqrt(self.mse) if self.mse >= 0 else math.nan
        return FittedLatencyModel(a_n=self.a_n, a_m=self.a_m, b=self.b, residual_s=residual)

    def predict(self, n: np.ndarray, m: np.ndarray) -> np.ndarray:
        n, m = np.asarray(n, dtype=float), np.asarray(m, dtype=float)
        return self.a_n * n + self.a_m * m + self.b


def r2_mse(
    actual: np.ndarray, predicted: np.ndarray, weights: np.ndarray | None = None
) -> tuple[float, float]:
    """Coefficient of determination and mean squared error of ``predicted`` against ``actual``,
    each value weighing ``weights`` (default: equally)."""
    actual = np.asarray(actual, dtype=float)
    w = np.ones(len(actual)) if weights is None else np.asarray(weights, dtype=float)
    w = w / w.sum()
    residual = actual - np.asarray(predicted, dtype=float)
    total = actual - float(w @ actual)
    sst = float(w @ (total * total))
    mse = float(w @ (residual * residual))
    return (1.0 - mse / sst if sst > 0 else 1.0), mse


def fit_linear(cells: tuple[Cell, ...] | list[Cell]) -> Fit:
    """Least squares of T = a_n*N + a_m*M + b over every raw sample, each cell weighing the
    same; R^2 and MSE over the samples, weighted alike.

    Each sample weighs one over its cell's number of runs, which makes the coefficients those
    of a fit to the cell means, one point per (N, M). The method measures a noisy cell until
    its mean is known as well as a calm one's, so noisy cells hold many more samples; counted
    one by one they would pull the plane towards themselves (the small (N, M) under a quota,
    say) for no better knowledge of their mean. With equal runs per cell (format /1 profiles)
    this is plain least squares over the samples.
    """
    rows = [(c.n, c.m, s, 1.0 / len(c.seconds)) for c in cells for s in c.seconds]
    if len(rows) < 3:
        raise ValueError(f"need at least 3 samples to fit 3 coefficients, got {len(rows)}")
    data = np.asarray(rows, dtype=float)
    design = np.column_stack([data[:, 0], data[:, 1], np.ones(len(data))])
    root = np.sqrt(data[:, 3])
    coef, _, rank, _ = np.linalg.lstsq(design * root[:, None], data[:, 2] * root, rcond=None)
    if rank < 3:
        raise ValueError(
            "the samples cannot separate a_n, a_m and b: measure at least two values of N and "
            "two of M"
        )
    r2, mse = r2_mse(data[:, 2], design @ coef, data[:, 3])
    return Fit(a_n=float(coef[0]), a_m=float(coef[1]), b=float(coef[2]), r2=r2, mse=mse)


# ------------------------------------------------------------------------------------ sanity


@dataclass(frozen=True)
class Violation:
    """Two neighbouring cells out of physical order: ``upper`` has the larger M (``axis`` "M")
    or the larger N (``axis`` "N") but its mean time is lower than ``lower``'s by ``drop_s``,
    more than ``tolerance_s`` (see :func:`order_violations`)."""

    axis: str
    lower: tuple[int, int]
    upper: tuple[int, int]
    drop_s: float
    tolerance_s: float


def order_violations(
    cells: tuple[Cell, ...] | list[Cell], resolution: float = DEFAULT_RESOLUTION
) -> list[Violation]:
    """Neighbouring cells whose mean time decreases with M, or with N, beyond the noise.

    A model does more work for more input or output tokens, so no cell may be faster than its
    neighbour with the next smaller M (same N) or the next smaller N (same M). A pair is a
    violation when ``mean(lower) - mean(upper) > hypot(ci(lower), ci(upper)) + resolution *
    mean(lower)``: the combined 95% intervals say the drop is real, and it is larger than the
    precision the profile was measured to (``resolution``, its target relative half-width).
    The second term matters: a profile has some 60 neighbouring pairs, many of them ties (N
    barely changes an RNN's time), and at 95% about one tie in 40 would pass the first test by
    chance alone; with the second, a tie must be off by more than about 3.5 standard errors.
    Cells with fewer than two samples have an infinite interval and never violate.
    """
    by_cell = {(c.n, c.m): c for c in cells}
    found = []
    for axis in ("M", "N"):
        lines: dict[int, list[tuple[int, int]]] = {}
        for n, m in sorted(by_cell):
            lines.setdefault(n if axis == "M" else m, []).append((n, m))
        for line in lines.values():
            line.sort(key=lambda key: key[1] if axis == "M" else key[0])
            for lower_key, upper_key in zip(line, line[1:], strict=False):
                lower, upper = by_cell[lower_key], by_cell[upper_key]
                tolerance = math.hypot(lower.ci_s, upper.ci_s) + resolution * lower.mean
                drop = lower.mean - upper.mean
                if drop > tolerance:
                    found.append(Violation(axis, lower_key, upper_key, drop, tolerance))
    return found


# ----------------------------------------------------------------------------------- quality


@dataclass(frozen=True)
class HostLoad:
    """What other processes did to the host while a profile was measured, in CPUs (1.0 = one
    core kept busy): from ``/proc/stat``, all CPU time of the host minus the profiler's own.

    ``before`` covers a probe of ``probe_s`` seconds before the model was loaded, ``mean`` the
    whole measurement, ``peak`` its busiest window of a few seconds. ``busy`` is True when
    ``before`` or ``mean`` exceeded ``max_busy``: the timings are likely inflated.
    ``allowed_busy`` says the run was told to go on anyway (``--allow-busy``). None: not
    measurable here (no ``/proc/stat``).
    """

    probe_s: float
    before: float | None
    mean: float | None
    peak: float | None
    max_busy: float
    busy: bool
    allowed_busy: bool


@dataclass(frozen=True)
class RequestsQuality:
    """How the profile's real requests were measured (see :class:`TimedRequest`).

    ``source`` says where the (N, M) pairs come from (the experiment config, its corpus, the
    seed); ``drawn`` pairs were drawn, ``out_of_range`` of them exceed the model's limits and
    were left out, ``timed`` were timed within ``budget_s`` (``seconds`` spent; ``stopped``
    "all timed" or "budget"). ``fit_r2`` and ``fit_mse`` evaluate the grid's fit on them: how
    well the scheduler's model predicts requests it was not fitted on (the paper's check).
    """

    source: dict[str, Any]
    drawn: int
    out_of_range: int
    timed: int
    budget_s: float
    seconds: float
    stopped: str
    fit_r2: float
    fit_mse: float


@dataclass(frozen=True)
class Quality:
    """How the grid of a profile was measured and how far its numbers can be trusted.

    ``regime``: "isolated" (a pause of ``pause_s``, at least one quota period, before every
    timed run: requests that find an idle device) or "sustained" (back to back). Cells were
    measured in ``rounds`` interleaved rounds until the 95% interval of each cell's mean was
    within ``target_rel_ci`` of it (at least ``min_runs``, at most ``max_runs`` runs) or
    ``budget_s`` was spent (``stopped``: "converged", "max runs" when some cells reached
    ``max_runs`` without converging, or "budget"); ``runs`` timed runs in
    ``seconds``. ``not_converged`` lists the cells whose interval stayed wider. The sanity
    check (:func:`order_violations` at ``target_rel_ci``) found ``violations_found``; their
    cells were measured again (``remeasure_rounds``, ``remeasure_runs``) and
    ``violations_remaining`` is what is left. ``host`` is the other processes' load,
    ``requests`` how the real requests were measured (None without).
    """

    regime: str
    pause_s: float
    target_rel_ci: float
    min_runs: int
    max_runs: int
    budget_s: float
    rounds: int
    runs: int
    seconds: float
    stopped: str
    not_converged: tuple[tuple[int, int], ...]
    violations_found: tuple[Violation, ...]
    remeasure_rounds: int
    remeasure_runs: int
    violations_remaining: tuple[Violation, ...]
    host: HostLoad
    requests: RequestsQuality | None = None


@dataclass(frozen=True)
class TimedRequest:
    """One real request timed once: ``run_forced(n, m)`` at the (N, M) of a corpus line."""

    n: int
    m: int
    seconds: float


# ----------------------------------------------------------------------------------- profile


@dataclass(frozen=True)
class DeviceProfile:
    """One characterization run: ``model`` measured on ``device``.

    ``providers_used`` are the execution providers the sessions really ran on (a provider that
    was requested but unusable is absent, and ``provider_warnings`` says why). ``machine``
    describes the host (CPU model, cores, memory, load average before and after), ``versions``
    the libraries, ``date`` the UTC start time, ``seed`` the shuffles of the rounds and
    ``warmup`` the untimed runs of each cell before its first timed one. ``quality`` (None in
    format /1 files) says how the grid was measured; ``requests`` are real requests timed for
    the replay's ground truth. ``repeats`` is format /1's fixed number of timed runs per cell
    (0 in /2, where each cell has as many as it needed).
    """

    model: str
    family: str
    device: DeviceSetting
    cells: tuple[Cell, ...]
    fit: Fit
    machine: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    date: str = ""
    warmup: int = 0
    repeats: int = 0
    providers_used: tuple[str, ...] = ()
    provider_warnings: tuple[str, ...] = ()
    model_checksum: str = ""
    seed: int = 0
    quality: Quality | None = None
    requests: tuple[TimedRequest, ...] = ()

    @property
    def label(self) -> str:
        return f"{self.model} @ {self.device.name}"

    @property
    def regime(self) -> str:
        """How the runs followed each other; format /1 measured every cell back to back."""
        return self.quality.regime if self.quality is not None else "sustained"


def to_json(profile: DeviceProfile) -> dict[str, Any]:
    """The profile as format /2 JSON. Per cell, ``runs``, ``mean_s``, ``std_s`` and ``ci_s``
    are written for readers of the file; they are derived from ``seconds`` and recomputed on
    reading."""
    d = profile.device
    data: dict[str, Any] = {
        "format": FORMAT,
        "model": profile.model,
        "family": profile.family,
        "model_checksum": profile.model_checksum,
        "device": {
            "name": d.name,
            "providers": list(d.providers),
            "threads": d.threads,
            "cpu_quota": d.cpu_quota,
            "cpu_period_us": d.cpu_period_us,
            "description": d.description,
        },
        "providers_used": list(profile.providers_used),
        "provider_warnings": list(profile.provider_warnings),
        "machine": profile.machine,
        "versions": profile.versions,
        "date": profile.date,
        "warmup": profile.warmup,
        "seed": profile.seed,
        "fit": dataclasses.asdict(profile.fit),
        "quality": dataclasses.asdict(profile.quality) if profile.quality is not None else None,
        "cells": [
            {
                "n": c.n,
                "m": c.m,
                "runs": c.count,
                "mean_s": c.mean,
                "std_s": c.std,
                "ci_s": c.ci_s if math.isfinite(c.ci_s) else None,
                "seconds": list(c.seconds),
            }
            for c in profile.cells
        ],
        "requests": [dataclasses.asdict(r) for r in profile.requests],
    }
    if profile.repeats:
        data["repeats"] = profile.repeats
    return data


def save(profile: DeviceProfile, path: str | Path) -> None:
    write_json(path, to_json(profile))


def _violations(items: list[dict[str, Any]]) -> tuple[Violation, ...]:
    return tuple(
        Violation(
            axis=str(v["axis"]),
            lower=(int(v["lower"][0]), int(v["lower"][1])),
            upper=(int(v["upper"][0]), int(v["upper"][1])),
            drop_s=float(v["drop_s"]),
            tolerance_s=float(v["tolerance_s"]),
        )
        for v in items
    )


def _quality(data: dict[str, Any] | None) -> Quality | None:
    if data is None:
        return None
    requests = data.get("requests")
    return Quality(
        regime=str(data["regime"]),
        pause_s=float(data["pause_s"]),
        target_rel_ci=float(data["target_rel_ci"]),
        min_runs=int(data["min_runs"]),
        max_runs=int(data["max_runs"]),
        budget_s=float(data["budget_s"]),
        rounds=int(data["rounds"]),
        runs=int(data["runs"]),
        seconds=float(data["seconds"]),
        stopped=str(data["stopped"]),
        not_converged=tuple((int(n), int(m)) for n, m in data["not_converged"]),
        violations_found=_violations(data["violations_found"]),
        remeasure_rounds=int(data["remeasure_rounds"]),
        remeasure_runs=int(data["remeasure_runs"]),
        violations_remaining=_violations(data["violations_remaining"]),
        host=HostLoad(**data["host"]),
        requests=RequestsQuality(**requests) if requests is not None else None,
    )


def load(path: str | Path) -> DeviceProfile:
    """Read a profile file (format /1 or /2); a missing or malformed file raises ConfigError
    naming it."""
    path = Path(path)
    data = read_json(
        path, what="device profile", fix="measure one with `cnmt profile`", format=READ_FORMATS
    )
    try:
        cells = tuple(
            Cell(int(c["n"]), int(c["m"]), tuple(float(s) for s in c["seconds"]))
            for c in data["cells"]
        )
        if not cells or any(not c.seconds for c in cells):
            raise ValueError("a profile needs cells, each with at least one sample")
        fit = Fit(**{k: float(data["fit"][k]) for k in ("a_n", "a_m", "b", "r2", "mse")})
        device_data = dict(data["device"])
        if "provider" in device_data:  # the first version of the format named one provider
            device_data.setdefault("providers", [device_data.pop("provider")])
        device_data["providers"] = tuple(device_data.get("providers", (CPU_PROVIDER,)))
        device = DeviceSetting(**device_data)
        quality = _quality(data.get("quality"))
        if quality is not None and quality.regime not in REGIMES:
            raise ValueError(f"quality.regime {quality.regime!r} is not one of {REGIMES}")
        return DeviceProfile(
            model=str(data["model"]),
            family=str(data["family"]),
            device=device,
            cells=cells,
            fit=fit,
            machine=dict(data.get("machine", {})),
            versions=dict(data.get("versions", {})),
            date=str(data.get("date", "")),
            warmup=int(data.get("warmup", 0)),
            repeats=int(data.get("repeats", 0)),
            providers_used=tuple(str(p) for p in data.get("providers_used", ())),
            provider_warnings=tuple(str(w) for w in data.get("provider_warnings", ())),
            model_checksum=str(data.get("model_checksum", "")),
            seed=int(data.get("seed", 0)),
            quality=quality,
            requests=tuple(
                TimedRequest(int(r["n"]), int(r["m"]), float(r["seconds"]))
                for r in data.get("requests", ())
            ),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ConfigError(f"{path}: malformed device profile: {exc!r}") from None
