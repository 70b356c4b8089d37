"""Convergence of a closed loop: its gap to the Oracle per window of requests, and what its
exploration cost.

A total over 20,000 requests hides how long a wrong prior costs: a loop that is 30% off for
the first 500 requests and exact afterwards has the same total as one 0.75% off throughout.
The replay therefore keeps, per policy, the total latency of each window of
:data:`WINDOW` requests (``window_total_s``) and, for a policy that explores
(``cnmt_explore``), which requests it explored and what that cost (``exploration``).
:func:`scenario_rows` turns a replay into the convergence table (gap to the Oracle overall,
after the first :data:`SETTLE` requests, exploration share overall and after them) and
:func:`plot_convergence` into the convergence curves (gap per window, one line per policy).

:mod:`cnmt.experiments.scenarios` replays the shipped scenarios (``configs/scenarios/``) and
writes both.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from cnmt.schedulers.base import RequestBatch

WINDOW = 1000  # requests per window of the convergence curve
SETTLE = 2000  # requests after which a closed loop should have corrected its prior


def policy_fields(sim: Any, batch: RequestBatch) -> dict[str, Any]:
    """The replay JSON's per-policy convergence fields: ``window_total_s`` (the total latency
    of each window of WINDOW requests, the last one possibly shorter) and, for a policy that
    explores, ``exploration``: requests explored (overall, after SETTLE, per window), their
    true added latency (their latency less that of the other device for the same request,
    both idle: execution plus the link for the cloud) and the added time the decisions
    expected (posterior means)."""
    latency = sim.latency_s
    starts = np.arange(0, len(latency), WINDOW)
    out: dict[str, Any] = {"window_total_s": np.add.reduceat(latency, starts).tolist()}
    if getattr(sim, "explored", None) is None or not len(latency):
        return out
    explored = sim.explored
    to_cloud = batch.cloud_s + batch.transmission_s
    ran = np.where(sim.on_edge, batch.edge_s, to_cloud)
    other = np.where(sim.on_edge, to_cloud, batch.edge_s)
    added = (ran - other)[explored]
    later = explored[SETTLE:]
    out["exploration"] = {
        "requests": int(explored.sum()),
        "share": float(explored.mean()),
        "share_after_settle": float(later.mean()) if len(later) else None,
        "per_window": np.add.reduceat(explored.astype(int), starts).tolist(),
        "to_edge": int((explored & sim.on_edge).sum()),
        "to_cloud": int((explored & ~sim.on_edge).sum()),
        "added_s": float(added.sum()),
        "added_mean_ms": float(added.mean() * 1e3) if len(added) else 0.0,
        "added_share_of_total": float(added.sum() / latency.sum()),
        "expected_added_s": float(sim.explored_expected_s.sum()),
    }
    return out


def window_gaps(result: dict[str, Any], label: str, reference: str = "oracle") -> list[float]:
    """Per window, ``100 * (total - reference total) / reference total`` of policy ``label``."""
    ref = _label_of(result, reference)
    mine = np.asarray(result["policies"][label]["window_total_s"])
    theirs = np.asarray(result["policies"][ref]["window_total_s"])
    return (100.0 * (mine - theirs) / theirs).tolist()


def gap_after(result: dict[str, Any], label: str, start: int, reference: str = "oracle") -> float:
    """The gap to the reference over the requests from ``start`` on (whole windows)."""
    ref = _label_of(result, reference)
    first = start // WINDOW
    mine = sum(result["policies"][label]["window_total_s"][first:])
    theirs = sum(result["policies"][ref]["window_total_s"][first:])
    return 100.0 * (mine - theirs) / theirs


def scenario_rows(result: dict[str, Any], labels: list[str]) -> list[dict[str, Any]]:
    """One row per policy label: its gap to the Oracle overall and after SETTLE requests, its
    share on the edge, and, for a policy that explores, its exploration share and cost."""
    rows = []
    for label in labels:
        policy = result["policies"][label]
        explore = policy.get("exploration")
        expected = any(p["policy"] == "oracle_expected" for p in result["policies"].values())
        rows.append(
            {
                "label": label,
                "gap_pct": gap_after(result, label, 0),
                "gap_after_settle_pct": gap_after(result, label, SETTLE),
                "expected_gap_pct": (
                    gap_after(result, label, 0, "oracle_expected") if expected else None
                ),
                "expected_gap_after_settle_pct": (
                    gap_after(result, label, SETTLE, "oracle_expected") if expected else None
                ),
                "share_edge": policy["share_edge"],
                "explored_share": explore["share"] if explore else None,
                "explored_share_after_settle": explore["share_after_settle"] if explore else None,
                "explored_added_pct": 100.0 * explore["added_share_of_total"] if explore else None,
            }
        )
    return rows


def plot_convergence(result: dict[str, Any], labels: list[str], title: str, path: Path) -> None:
    """Gap to the Oracle per window of WINDOW requests, one line per policy (matplotlib)."""
    from cnmt.plotting import pyplot

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7.0, 3.6))
    for label in labels:
        gaps = window_gaps(result, label)
        x = (np.arange(len(gaps)) + 1) * WINDOW / 1000.0
        ax.plot(x, gaps, marker="o", markersize=3, label=label)
    ax.axhline(2.0, color="grey", linestyle=":", linewidth=1)
    ax.axvline(SETTLE / 1000.0, color="grey", linestyle=":", linewidth=1)
    ax.set_xlabel(f"requests (thousands; each point: the window of {WINDOW} ending there)")
    ax.set_ylabel("gap to the Oracle (%)")
    ax.set_yscale("symlog", linthresh=2.0)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _label_of(result: dict[str, Any], policy: str) -> str:
    for label, entry in result["policies"].items():
        if entry["policy"] == policy:
            return label
    raise KeyError(f"the replay has no {policy!r} policy")


def _fmt(value: float | None, digits: int = 2, suffix: str = "%") -> str:
    return "-" if value is None else f"{value:+.{digits}f}{suffix}"


def markdown(scenarios: list[dict[str, Any]]) -> str:
    """The convergence table of every scenario (one line per scenario and policy)."""
    head = (
        "| scenario | policy | vs Oracle | after 2,000 | vs E[Oracle] | after 2,000 | edge | "
        "explored | explored after 2,000 | exploration's added latency |\n"
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"
    )
    lines = [head]
    for s in scenarios:
        for row in s["rows"]:
            share = row["explored_share"]
            later = row["explored_share_after_settle"]
            lines.append(
                f"| {s['name']} | {row['label']} | {_fmt(row['gap_pct'])} | "
                f"{_fmt(row['gap_after_settle_pct'])} | {_fmt(row['expected_gap_pct'])} | "
                f"{_fmt(row['expected_gap_after_settle_pct'])} | {100 * row['share_edge']:.1f}% | "
                f"{'-' if share is None else f'{100 * share:.2f}%'} | "
                f"{'-' if later is None else f'{100 * later:.2f}%'} | "
                f"{_fmt(row['explored_added_pct'])} |"
            )
    return "\n".join(lines) + "\n"
