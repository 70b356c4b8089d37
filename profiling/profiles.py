"""Device profiles: measured latency of one model on one device setting, and its linear fit.

A profile is a JSON file written by `cnmt profile`. It keeps every raw sample (the ground truth
that experiments replay) and the least-squares fit ``T = a_n*N + a_m*M + b`` (what the
scheduler uses). Reading one needs neither torch nor onnxruntime.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cnmt.errors import ConfigError
from cnmt.files import read_json, write_json
from cnmt.profiling.devices import CPU_PROVIDER, DeviceSetting
from cnmt.schedulers.base import LatencyModel

FORMAT = "cnmt-device-profile/1"


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
    """One characterization run: ``model`` measured on ``device``.

    ``providers_used`` are the execution providers the sessions really ran on (a provider that
    was requested but unusable is absent, and ``provider_warnings`` says why). ``machine``
    describes the host (CPU model, cores, memory, load average before and after), ``versions``
    the libraries, ``date`` the UTC start time, and ``seed`` the shuffle of the grid order.
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

    @property
    def label(self) -> str:
        return f"{self.model} @ {self.device.name}"


def fit_linear(cells: tuple[Cell, ...] | list[Cell]) -> Fit:
    """Least squares of T = a_n*N + a_m*M + b over every raw sample; R^2 and MSE over them too."""
    rows = [(c.n, c.m, s) for c in cells for s in c.seconds]
    if len(rows) < 3:
        raise ValueError(f"need at least 3 samples to fit 3 coefficients, got {len(rows)}")
    data = np.asarray(rows, dtype=float)
    design = np.column_stack([data[:, 0], data[:, 1], np.ones(len(data))])
    coef, _, rank, _ = np.linalg.lstsq(design, data[:, 2], rcond=None)
    if rank < 3:
        raise ValueError(
            "the samples cannot separate a_n, a_m and b: measure at least two values of N and "
            "two of M"
        )
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
        "repeats": profile.repeats,
        "seed": profile.seed,
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
    write_json(path, to_json(profile))


def load(path: str | Path) -> DeviceProfile:
    """Read a profile file; a missing or malformed file raises ConfigError naming it."""
    path = Path(path)
    data = read_json(
        path, what="device profile", fix="measure one with `cnmt profile`", format=FORMAT
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
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ConfigError(f"{path}: malformed device profile: {exc!r}") from None
