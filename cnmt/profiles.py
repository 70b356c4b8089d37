"""Device profiles: measured latency of one model on one device setting, and its linear fit.

A profile is a JSON file written by `cnmt profile`. It keeps every raw sample (the ground truth
that experiments replay) and the least-squares fit ``T = a_n*N + a_m*M + b`` (what the
scheduler uses). Reading one needs neither torch nor onnxruntime.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cnmt.errors import ConfigError
from cnmt.schedulers.base import LatencyModel

FORMAT = "cnmt-device-profile/1"


@dataclass(frozen=True)
class DeviceSetting:
    """Where a profile was measured: provider, threads and (for an emulated edge) CPU quota."""

    name: str
    provider: str = "CPUExecutionProvider"
    threads: int = 1
    cpu_quota: float | None = None  # fraction of one core, e.g. 0.25; None = unthrottled
    cpu_period_us: int = 10_000


@dataclass(frozen=True)
class Cell:
    """All timed repetitions of one (N, M) grid point, in seconds."""

    n: int
    m: int
    seconds: tuple[float, ...]


@dataclass(frozen=True)
class Fit:
    a_n: float
    a_m: float
    b: float
    r2: float
    mse: float

    @property
    def latency_model(self) -> LatencyModel:
        return LatencyModel(a_n=self.a_n, a_m=self.a_m, b=self.b)


@dataclass(frozen=True)
class DeviceProfile:
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


def fit_linear(cells: tuple[Cell, ...] | list[Cell]) -> Fit:
    """Least squares of T = a_n*N + a_m*M + b over every raw sample; R^2 and MSE over them too."""
    rows = [(c.n, c.m, s) for c in cells for s in c.seconds]
    if len(rows) < 3:
        raise ValueError(f"need at least 3 samples to fit 3 coefficients, got {len(rows)}")
    data = np.asarray(rows, dtype=float)
    design = np.column_stack([data[:, 0], data[:, 1], np.ones(len(data))])
    coef, *_ = np.linalg.lstsq(design, data[:, 2], rcond=None)
    residual = data[:, 2] - design @ coef
    total = data[:, 2] - data[:, 2].mean()
    sst = float(total @ total)
    mse = float(residual @ residual) / len(data)
    r2 = 1.0 - float(residual @ residual) / sst if sst > 0 else 1.0
    return Fit(a_n=float(coef[0]), a_m=float(coef[1]), b=float(coef[2]), r2=r2, mse=mse)


def to_json(profile: DeviceProfile) -> dict[str, Any]:
    d = profile.device
    return {
        "format": FORMAT,
        "model": profile.model,
        "family": profile.family,
        "device": {
            "name": d.name,
            "provider": d.provider,
            "threads": d.threads,
            "cpu_quota": d.cpu_quota,
            "cpu_period_us": d.cpu_period_us,
        },
        "machine": profile.machine,
        "versions": profile.versions,
        "date": profile.date,
        "warmup": profile.warmup,
        "repeats": profile.repeats,
        "fit": {
            "a_n": profile.fit.a_n,
            "a_m": profile.fit.a_m,
            "b": profile.fit.b,
            "r2": profile.fit.r2,
            "mse": profile.fit.mse,
        },
        "cells": [{"n": c.n, "m": c.m, "seconds": list(c.seconds)} for c in profile.cells],
    }


def save(profile: DeviceProfile, path: str | Path) -> None:
    Path(path).write_text(json.dumps(to_json(profile), indent=1) + "\n", encoding="utf-8")


def load(path: str | Path) -> DeviceProfile:
    """Read a profile file; a missing or malformed file raises ConfigError naming it."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such device profile; measure one with `cnmt profile`") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{path}: not a readable device profile: {exc}") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ConfigError(f"{path}: not a device profile (expected format {FORMAT!r})")
    try:
        cells = tuple(Cell(int(c["n"]), int(c["m"]), tuple(float(s) for s in c["seconds"])) for c in data["cells"])
        fit = Fit(**{k: float(data["fit"][k]) for k in ("a_n", "a_m", "b", "r2", "mse")})
        device = DeviceSetting(**data["device"])
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
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ConfigError(f"{path}: malformed device profile: {exc!r}") from None
