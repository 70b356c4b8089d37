"""What a replay reports and how it is shown: each policy's line of the replay JSON
(:func:`policy_result`), the Markdown table of a result (:func:`markdown_table`), the one line
saying how requests arrived and whether the devices queued (:func:`describe_mode`) and the RTT
window's figure (:func:`plot_rtt_window`). The report (:mod:`cnmt.experiments.report`) and
``cnmt replay`` show a result with these.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from cnmt.datasets.traces import RttTrace
from cnmt.experiments import convergence
from cnmt.experiments.replay_policies import PolicyRun, describe_length
from cnmt.experiments.simulate import Queues, Simulation
from cnmt.plotting import pyplot
from cnmt.schedulers.base import RequestBatch
from cnmt.schedulers.core import DecisionComponents


def policy_result(
    run: PolicyRun,
    sim: Simulation,
    batch: RequestBatch,
    learners: DecisionComponents,
    queues: Queues | None = None,
) -> dict[str, Any]:
    """One policy's line of the replay JSON. A device's utilization is the share of its
    workers' time spent translating (1.0: every worker busy all the time)."""
    clouds = [c.name for c in learners.clouds]
    edge_workers = queues.edge_workers if queues is not None else 1
    cloud_workers = queues.cloud_workers if queues is not None else 1
    latency, on_edge = sim.latency_s, sim.on_edge
    chosen = sim.target_index()
    targets = sim.targets if sim.target is not None else ("edge", clouds[0])
    true_exec = (
        sim.exec_s if sim.exec_s is not None else np.where(on_edge, batch.edge_s, batch.cloud_s)
    )
    relative = (sim.predicted_s - true_exec) / true_exec
    edge_waits = sim.wait_s[on_edge]
    cloud_waits = sim.wait_s[~on_edge]
    out: dict[str, Any] = {
        "policy": run.policy.name,
        "total_s": float(latency.sum()),
        "mean_s": float(latency.mean()),
        "p50_s": float(np.percentile(latency, 50)),
        "p95_s": float(np.percentile(latency, 95)),
        "p99_s": float(np.percentile(latency, 99)),
        "share_edge": float(on_edge.mean()),
        "share_cloud": float(1.0 - on_edge.mean()),  # all clouds together
        "shares": {name: float((chosen == k).mean()) for k, name in enumerate(targets)},
        "requests_edge": int(on_edge.sum()),
        "requests_cloud": int((~on_edge).sum()),
        "length_estimator": describe_length(run) or None,
        "rtt_estimator": (
            run.rtt.name if sim.decided_by != "choose_many" and not run.policy.needs_truth else None
        ),
        "decided_by": sim.decided_by,
        "closed_loop": run.closed_loop,
        "devices": {
            "edge": {
                "utilization": sim.busy_s["edge"] / sim.span_s / edge_workers,
                "mean_queue_length": float(edge_waits.sum()) / sim.span_s,
                "mean_wait_s": float(edge_waits.mean()) if edge_waits.size else 0.0,
            },
            "cloud": {
                "utilization": sim.busy_s["cloud"] / sim.span_s / cloud_workers,
                "mean_queue_length": (float(cloud_waits.sum()) + sim.background_wait_s)
                / sim.span_s,
                "mean_wait_s": float(cloud_waits.mean()) if cloud_waits.size else 0.0,
            },
        },
    }
    if len(targets) > 2:  # several clouds: each one's own line beside "cloud", all of them
        for k, cloud in enumerate(learners.clouds, start=1):
            waits = sim.wait_s[chosen == k]
            workers = cloud.workers
            out["devices"][cloud.name] = {
                "utilization": sim.busy_s[cloud.name] / sim.span_s / workers,
                "mean_queue_length": float(waits.sum()) / sim.span_s,
                "mean_wait_s": float(waits.mean()) if waits.size else 0.0,
            }
    if np.isfinite(relative).any():
        out["median_relative_error"] = {
            device: float(np.median(np.abs(relative[mask & np.isfinite(relative)])))
            for device, mask in (("edge", on_edge), ("cloud", ~on_edge))
            if (mask & np.isfinite(relative)).any()
        }
    if run.closed_loop:
        learned = {}
        for target in learners.targets:
            device, model = target.name, target.latency
            if model.learns:
                c = model.current()
                learned[device] = {"a_n": c.a_n, "a_m": c.a_m, "b": c.b}
        length = learners.length
        if length is not None and length.learns:
            if hasattr(length, "gamma"):  # a line refitted: its coefficients
                learned["length"] = {"gamma": length.gamma, "delta": length.delta}
            else:  # means by input length: how many inputs lengths it has seen
                learned["length"] = {"bins": len(getattr(length, "bins", {}))}
        out["learned"] = learned
    out.update(convergence.policy_fields(sim, batch))  # per-window totals, exploration's cost
    return out


def markdown_table(result: dict[str, Any]) -> str:
    """Totals, tails, device split and Table I's percentages of one replay (with the gap to
    the expected-time Oracle when it was replayed, and each device's utilization with queues)."""
    expected = any(p["policy"] == "oracle_expected" for p in result["policies"].values())
    queued = result.get("queues", {}).get("enabled", False)
    head = "| policy | total (s) | mean (ms) | p95 (ms) | p99 (ms) | edge | vs edge | vs cloud "
    head += "| vs Oracle |" + (" vs E[Oracle] |" if expected else "")
    head += " edge busy | cloud busy |" if queued else ""
    rows = [head, "|---|" + "---:|" * (head.count("|") - 2)]

    def pct(value: float | None) -> str:
        if value is None:
            return ""
        return f"{0.0 if abs(value) < 0.05 else value:+.1f}%"  # no "-0.0%" from rounding

    for label, p in result["policies"].items():
        t = result["table"][label]
        row = (
            f"| {label} | {p['total_s']:.1f} | {p['mean_s'] * 1e3:.1f} | {p['p95_s'] * 1e3:.1f} | "
            f"{p['p99_s'] * 1e3:.1f} | {p['share_edge'] * 100:.1f}% | "
            f"{pct(t.get('vs_edge_pct'))} | {pct(t.get('vs_cloud_pct'))} | "
            f"{pct(t.get('vs_oracle_pct'))} |"
        )
        if expected:
            row += f" {pct(t.get('vs_oracle_expected_pct'))} |"
        if queued:
            devices = p["devices"]
            row += (
                f" {devices['edge']['utilization'] * 100:.0f}% |"
                f" {devices['cloud']['utilization'] * 100:.0f}% |"
            )
        rows.append(row)
    return "\n".join(rows)


def describe_mode(result: dict[str, Any]) -> str:
    """How requests arrived and whether the devices queued, as one line."""
    conn, queues = result["connection"], result.get("queues", {"enabled": False})
    gap = conn["interarrival_s"]
    arrivals = f"{conn['arrivals']} arrivals, one every {gap:.3g} s on average"
    if not queues["enabled"]:
        return f"{arrivals}; no queues (the paper's method: every request finds idle devices)"
    background = (
        f", a background load of {queues['background_rate']:g}/s at the cloud "
        f"({queues['background_requests']} requests)"
        if queues["background_rate"]
        else ""
    )
    return (
        f"{arrivals}; FIFO queues: {queues['edge_workers']} edge and "
        f"{queues['cloud_workers']} cloud worker(s){background}"
    )


def plot_rtt_window(
    link_info: dict[str, Any], window: RttTrace, path: str | Path, title: str = ""
) -> None:
    """Fig. 4 style: the RTT of the replayed window over time, lost pings marked."""
    plt = pyplot()
    if window.times_s is not None:
        x, unit = window.times_s / 3600.0, "hours since window start"
    else:
        x, unit = np.arange(len(window)), "sample"
    fig, ax = plt.subplots(figsize=(7, 3))
    ax.plot(x, window.rtt_ms, lw=0.7, color="tab:blue", label="RTT")
    if window.lost.any():
        low = np.nanmin(window.rtt_ms)
        ax.plot(x[window.lost], np.full(int(window.lost.sum()), low), "rx", ms=4, label="lost ping")
    stats = window.summary()
    ax.axhline(
        stats["median_ms"],
        color="gray",
        lw=0.8,
        ls="--",
        label=f"median {stats['median_ms']:.1f} ms",
    )
    ax.set_xlabel(unit)
    ax.set_ylabel("RTT (ms)")
    w = link_info["window"]
    where = (
        f"{Path(link_info['trace']).name}, samples {w['start']}..{w['start'] + w['samples'] - 1}"
    )
    ax.set_title(f"{title}: {where}" if title else where, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
