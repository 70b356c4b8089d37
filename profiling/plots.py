"""Presenting device profiles: a text summary and the latency-versus-M figure (paper Fig. 2a).

Every number shown comes from the profile files: the fit they store and their raw samples.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from cnmt.errors import ConfigError
from cnmt.plotting import pyplot
from cnmt.profiling.profiles import DeviceProfile


def _device_line(profile: DeviceProfile) -> str:
    d = profile.device
    quota = (
        f"quota {d.cpu_quota:g} of a core (period {d.cpu_period_us} us)"
        if d.cpu_quota
        else "no CPU quota"
    )
    used = ", ".join(profile.providers_used) or "unknown providers"
    threads = (
        f"{d.threads} thread{'s' if d.threads != 1 else ''}" if d.threads else "default threads"
    )
    return f"{used}, {threads}, {quota}"


def _signed(value: float) -> str:
    return f"- {-value:.4g}" if value < 0 else f"+ {value:.4g}"


def summary(profile: DeviceProfile, source: str = "") -> str:
    """The fit, its quality and the table of mean (standard deviation) times per (N, M), in ms."""
    fit = profile.fit
    samples = sum(len(c.seconds) for c in profile.cells)
    machine = profile.machine
    cpus = machine.get("usable_cpus", machine.get("logical_cpus", "?"))
    date = profile.date or "at an unknown date"
    cpu = machine.get("cpu_model", "an unknown CPU")
    rmse_ms = np.sqrt(fit.mse) * 1e3
    lines = [
        f"{profile.label}" + (f"  ({source})" if source else ""),
        f"  measured {date} on {cpu} ({cpus} CPUs): {_device_line(profile)}",
        f"  {len(profile.cells)} cells x {profile.repeats} repeats after {profile.warmup} "
        "warm-up runs each",
        f"  fit: T = {fit.a_n * 1e3:.4g} ms * N {_signed(fit.a_m * 1e3)} ms * M "
        f"{_signed(fit.b * 1e3)} ms",
        f"  R^2 = {fit.r2:.4f}   MSE = {fit.mse * 1e6:.4g} ms^2 (RMSE {rmse_ms:.3g} ms) "
        f"over {samples} samples",
    ]
    used, wanted = profile.providers_used, profile.device.providers
    if used and used[0] != wanted[0]:
        lines.insert(
            2,
            f"  NOTE: ran on {used[0]}, not on the preferred {wanted[0]}: "
            + "; ".join(profile.provider_warnings or ("the provider was unavailable",)),
        )
    before, after = machine.get("load_average_before"), machine.get("load_average_after")
    if before and after:
        lines.insert(
            3, f"  host load average (1 min) {before[0]:g} before, {after[0]:g} after the run"
        )
    ns = sorted({c.n for c in profile.cells})
    ms = sorted({c.m for c in profile.cells})
    by_cell = {(c.n, c.m): np.asarray(c.seconds) * 1e3 for c in profile.cells}
    rows = [
        [
            "-"
            if (n, m) not in by_cell
            else f"{by_cell[n, m].mean():.4g} ± {by_cell[n, m].std():.2g}"
            for m in ms
        ]
        for n in ns
    ]
    width = max(len(text) for row in rows for text in row) + 3
    lines.append("  mean ± standard deviation in ms; rows N, columns M")
    lines.append("  " + "N \\ M".ljust(7) + "".join(f"{m:>{width}}" for m in ms))
    for n, row in zip(ns, rows, strict=True):
        lines.append("  " + f"{n}".ljust(7) + "".join(f"{text:>{width}}" for text in row))
    return "\n".join(lines)


def mean_ratio(profile: DeviceProfile, reference: DeviceProfile) -> tuple[float, int] | None:
    """Mean time of ``profile`` over mean time of ``reference`` on their common (N, M) cells,
    and how many cells that is; None if they share none."""
    mine = {(c.n, c.m): float(np.mean(c.seconds)) for c in profile.cells}
    theirs = {(c.n, c.m): float(np.mean(c.seconds)) for c in reference.cells}
    common = sorted(set(mine) & set(theirs))
    if not common:
        return None
    return sum(mine[k] for k in common) / sum(theirs[k] for k in common), len(common)


def fixed_n(profiles: Sequence[DeviceProfile], n: int | None) -> int:
    """The N to compare several profiles at: ``n`` if all have it, else the largest common N."""
    common = set.intersection(*({c.n for c in p.cells} for p in profiles))
    if n is not None:
        if n not in common:
            raise ConfigError(
                f"--plot-n {n}: not measured in every profile; common values: "
                + (", ".join(map(str, sorted(common))) or "none")
            )
        return n
    if not common:
        raise ConfigError(
            "these profiles share no value of N, so they cannot be drawn at a fixed N; "
            "measure them with a common --n value"
        )
    return max(common)


def plot(profiles: Sequence[DeviceProfile], path: str | Path, n: int | None = None) -> Path:
    """Latency against M: mean with a +-1 standard deviation band and the fit as a dashed line.

    One profile without ``n``: one line per N. Several profiles (or ``n`` given): one line per
    profile at a fixed N (``n``, else the largest N they all measured), one colour each.
    """
    if not profiles:
        raise ValueError("plot needs at least one profile")
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.4), layout="constrained")
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    if len(profiles) == 1 and n is None:
        profile = profiles[0]
        series = [
            (profile, value, f"N = {value}") for value in sorted({c.n for c in profile.cells})
        ]
        title = f"{profile.label}"
    else:
        value = fixed_n(profiles, n)
        series = [(p, value, p.label) for p in profiles]
        title = f"N = {value} input tokens"
    for i, (profile, n_value, label) in enumerate(series):
        colour = colours[i % len(colours)]
        cells = sorted((c for c in profile.cells if c.n == n_value), key=lambda c: c.m)
        m = np.array([c.m for c in cells], dtype=float)
        mean = np.array([np.mean(c.seconds) for c in cells]) * 1e3
        std = np.array([np.std(c.seconds) for c in cells]) * 1e3
        ax.plot(m, mean, "o-", color=colour, label=label, markersize=4)
        ax.fill_between(m, mean - std, mean + std, color=colour, alpha=0.2, linewidth=0)
        fit = profile.fit
        m_line = np.linspace(m.min(), m.max(), 50)
        ax.plot(
            m_line,
            (fit.a_n * n_value + fit.a_m * m_line + fit.b) * 1e3,
            "--",
            color=colour,
            linewidth=1,
        )
    ax.plot([], [], "--", color="grey", linewidth=1, label="linear fit")
    ax.set_xlabel("M (output tokens)")
    ax.set_ylabel("execution time T (ms)")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
