"""Presenting device profiles: a text summary and the latency-versus-M figure (paper Fig. 2a).

Every number shown comes from the profile files: the fit they store and their raw samples.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from cnmt.errors import ConfigError
from cnmt.plotting import pyplot
from cnmt.profiling.profiles import DeviceProfile, Violation, order_violations


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


def _count(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.3g} ms"


def _pairs(violations: Sequence[Violation], shown: int = 3) -> str:
    """``(N=16, M=8) 21.2 ms > (N=32, M=8) 9.44 ms; ...`` for the first ``shown`` violations."""
    texts = [
        f"(N={v.lower[0]}, M={v.lower[1]}) > (N={v.upper[0]}, M={v.upper[1]}) by {_ms(v.drop_s)}"
        for v in violations[:shown]
    ]
    more = len(violations) - shown
    return "; ".join(texts) + (f"; and {more} more" if more > 0 else "")


def _quality_lines(profile: DeviceProfile) -> list[str]:
    """What the quality summary says, or for a format /1 profile, what it lacks."""
    q = profile.quality
    if q is None:
        found = order_violations(profile.cells)
        lines = [
            f"  quality: none recorded (format /1: {profile.repeats} runs per cell back to back, "
            "no convergence, sanity or load check); re-measure it with `cnmt profile`"
        ]
        if found:
            lines.append(
                f"  sanity: {_count(len(found), 'neighbouring pair')} out of order beyond the "
                "noise: " + _pairs(found)
            )
        return lines
    counts = [c.count for c in profile.cells]
    pause = f"a {_ms(q.pause_s)} pause before every timed run" if q.pause_s else "back to back"
    lines = [f"  regime: {q.regime} ({pause})"]
    target = f"95% CI within ±{q.target_rel_ci:.0%} of the mean"
    if q.not_converged:
        by_cell = {(c.n, c.m): c for c in profile.cells}
        widest = sorted(q.not_converged, key=lambda k: -by_cell[k].rel_ci)[:3]
        detail = ", ".join(f"(N={n}, M={m}) ±{by_cell[n, m].rel_ci:.0%}" for n, m in widest)
        verdict = (
            f"NOT CONVERGED: {_count(len(q.not_converged), 'cell')} wider than the target "
            f"({detail})"
        )
    else:
        verdict = f"all {len(profile.cells)} cells converged"
    lines.append(
        f"  {q.rounds} interleaved rounds, {q.runs} timed runs ({min(counts)}..{max(counts)} per "
        f"cell, {_count(profile.warmup, 'warm-up run')} first) in {q.seconds:.0f} s of a "
        f"{q.budget_s:g} s budget, target {target}: {verdict}"
    )
    if q.violations_found:
        remeasured = (
            f"re-measured ({q.remeasure_rounds} rounds, +{q.remeasure_runs} runs)"
            if q.remeasure_runs
            else "not re-measured (no budget left)"
        )
        remaining = (
            f"{len(q.violations_remaining)} REMAIN: {_pairs(q.violations_remaining)}"
            if q.violations_remaining
            else "none remains"
        )
        lines.append(
            f"  sanity: {_count(len(q.violations_found), 'neighbouring pair')} out of order found "
            f"({_pairs(q.violations_found)}), {remeasured}: {remaining}"
        )
    else:
        lines.append("  sanity: no cell faster than its neighbour with a smaller N or M")
    h = q.host
    figures = ", ".join(
        f"{value:.2f} {label}"
        for label, value in (("before", h.before), ("on average", h.mean), ("at peak", h.peak))
        if value is not None
    )
    flag = (
        f": BUSY (above {h.max_busy:g}{', measured with --allow-busy' if h.allowed_busy else ''})"
        if h.busy
        else ""
    )
    used = f"CPUs used by other processes: {figures or 'unknown'}"
    lines.append(f"  host: {used}{flag}" + _load_average_text(profile.machine))
    r = q.requests
    if r is not None:
        where = r.source.get("config", "an unknown source")
        limits = f", {r.out_of_range} beyond the model's limits" if r.out_of_range else ""
        lines.append(
            f"  requests: {r.timed} real requests timed once each (of {r.drawn} drawn from "
            f"{where}{limits}) in {r.seconds:.0f} s ({r.stopped}); the fit on them: "
            f"R^2 = {r.fit_r2:.4f}, RMSE {_ms(float(np.sqrt(r.fit_mse)))}"
        )
    return lines


def _load_average_text(machine: dict) -> str:
    before, after = machine.get("load_average_before"), machine.get("load_average_after")
    if before and after:
        return f"; load average (1 min) {before[0]:g} before, {after[0]:g} after"
    return ""


def summary(profile: DeviceProfile, source: str = "") -> str:
    """The profile's provenance, quality summary, fit and table of mean ± standard deviation
    per (N, M) in ms; cells that did not converge are marked ``*``, cells of a pair out of
    order ``!``."""
    fit = profile.fit
    samples = sum(len(c.seconds) for c in profile.cells)
    machine = profile.machine
    cpus = machine.get("usable_cpus", machine.get("logical_cpus", "?"))
    date = profile.date or "at an unknown date"
    cpu = machine.get("cpu_model", "an unknown CPU")
    gpus = f", GPU {'; '.join(machine['gpus'])}" if machine.get("gpus") else ""
    rmse_ms = np.sqrt(fit.mse) * 1e3
    lines = [
        f"{profile.label}" + (f"  ({source})" if source else ""),
        f"  measured {date} on {cpu} ({cpus} CPUs{gpus}): {_device_line(profile)}",
    ]
    used, wanted = profile.providers_used, profile.device.providers
    if used and used[0] != wanted[0]:
        lines.append(
            f"  NOTE: ran on {used[0]}, not on the preferred {wanted[0]}: "
            + "; ".join(profile.provider_warnings or ("the provider was unavailable",))
        )
    lines += _quality_lines(profile)
    if profile.quality is None and (text := _load_average_text(machine)):
        lines.append("  host: " + text.removeprefix("; "))
    lines += [
        f"  fit: T = {fit.a_n * 1e3:.4g} ms * N {_signed(fit.a_m * 1e3)} ms * M "
        f"{_signed(fit.b * 1e3)} ms",
        f"  R^2 = {fit.r2:.4f}   MSE = {fit.mse * 1e6:.4g} ms^2 (RMSE {rmse_ms:.3g} ms) "
        f"over {samples} samples",
    ]
    q = profile.quality
    unconverged = set(q.not_converged) if q is not None else set()
    remaining = q.violations_remaining if q is not None else tuple(order_violations(profile.cells))
    out_of_order = {key for v in remaining for key in (v.lower, v.upper)}
    ns = sorted({c.n for c in profile.cells})
    ms = sorted({c.m for c in profile.cells})
    by_cell = {(c.n, c.m): c for c in profile.cells}

    def text(n: int, m: int) -> str:
        if (n, m) not in by_cell:
            return "-"
        cell = by_cell[n, m]
        marks = ("*" if (n, m) in unconverged else "") + ("!" if (n, m) in out_of_order else "")
        return f"{cell.mean * 1e3:.4g} ± {cell.std * 1e3:.2g}{marks}"

    rows = [[text(n, m) for m in ms] for n in ns]
    width = max(len(item) for row in rows for item in row) + 3
    legend = "; * = not converged" if unconverged else ""
    legend += "; ! = out of order" if out_of_order else ""
    lines.append(f"  mean ± standard deviation in ms; rows N, columns M{legend}")
    lines.append("  " + "N \\ M".ljust(7) + "".join(f"{m:>{width}}" for m in ms))
    for n, row in zip(ns, rows, strict=True):
        lines.append("  " + f"{n}".ljust(7) + "".join(f"{item:>{width}}" for item in row))
    return "\n".join(lines)


def mean_ratio(profile: DeviceProfile, reference: DeviceProfile) -> tuple[float, int] | None:
    """Mean time of ``profile`` over mean time of ``reference`` on their common (N, M) cells,
    and how many cells that is; None if they share none."""
    mine = {(c.n, c.m): c.mean for c in profile.cells}
    theirs = {(c.n, c.m): c.mean for c in reference.cells}
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
        mean = np.array([c.mean for c in cells]) * 1e3
        std = np.array([c.std for c in cells]) * 1e3
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
