"""`cnmt reproduce`: every experiment scenario, one report, the paper's Table I beside ours.

A *scenario* is one connection profile of one experiment config (``experiments/<setup>.yaml``
under the built-in configs): its name is ``<setup>/<connection>``. A scenario whose inputs do
not exist yet (a device profile not measured, a length model not fitted, a model's output
cache not made) is skipped, and the report and JSON say why instead of showing numbers.

The report is markdown with figures beside it: ``--out DIR`` writes ``DIR/report.md`` and
``DIR/figures/``; ``--docs PAGE`` writes the documentation's results page and its figures
(``figures/results/`` next to the page). Every number in it comes from the run; the paper's
numbers come from its Table I (``configs/paper/c-nmt-table1.json``, cited there).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import fnmatch
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cnmt.config import builtin_config_names, builtin_configs_root, display_path, load_config
from cnmt.errors import CnmtError, ConfigError
from cnmt.files import read_json, write_json
from cnmt.plotting import INSTALL_HINT
from cnmt.plotting import available as plotting_available

PAPER_TABLE = "paper/c-nmt-table1.json"
PAPER_FORMAT = "cnmt-paper-table/1"
OVERWHELMING_SHARE = 0.95
EXTRAPOLATION_WARNING = 0.05


@dataclass
class SweepPoint:
    """One arrival rate of a load sweep: edge-only's utilization there, and the replay."""

    utilization: float
    rate: float
    policies: dict[str, Any]
    mode: str = ""  # how requests arrived and queued (describe_mode)


@dataclass
class Scenario:
    name: str
    config: str
    connection: str
    result: dict[str, Any] | None = None
    skipped: str | None = None
    seconds: float = 0.0
    figure: str | None = None
    paper: tuple[str, str] | None = None  # (language pair, connection profile) of Table I
    sweep: list[SweepPoint] = field(default_factory=list)
    sweep_figure: str | None = None


@dataclass(frozen=True)
class Output:
    """Where the report goes: the markdown file, and the folder its figures go to (linked
    relative to the markdown file)."""

    markdown: Path
    figures: Path
    # False where matplotlib is missing: the report is written without figures and says so.
    draw: bool = True

    def link(self, figure: Path) -> str:
        return figure.relative_to(self.markdown.parent).as_posix()


def paper_table() -> dict[str, Any]:
    """The paper's Table I and setup, as the project carries them (with their citation)."""
    return read_json(
        builtin_configs_root() / PAPER_TABLE,
        what="paper table",
        fix="reinstall cnmt (the file is package data)",
        format=PAPER_FORMAT,
    )


def experiment_configs() -> list[str]:
    return builtin_config_names("experiments")


def plan(only: list[str] | None = None) -> list[Scenario]:
    """Every (config, connection) scenario; ``only`` keeps names matching any glob."""
    scenarios: list[Scenario] = []
    names = set(builtin_config_names())
    for name in experiment_configs():
        # A built-in config's name (experiments/SETUP), else a file's stem.
        setup = name.removeprefix("experiments/") if name in names else Path(name).stem
        try:
            spec = load_config(name)["replay"]
        except CnmtError as exc:
            scenarios.append(Scenario(f"{setup}/*", name, "", skipped=str(exc)))
            continue
        for conn_name, conn in spec.connections.items():
            paper = None
            if spec.paper_pair and conn.paper_profile:
                paper = (spec.paper_pair, conn.paper_profile)
            scenarios.append(Scenario(f"{setup}/{conn_name}", name, conn_name, paper=paper))
    labels = [s.name for s in scenarios]
    repeated = sorted({n for n in labels if labels.count(n) > 1})
    if repeated:
        raise ConfigError(
            f"two experiment configs give the same scenario names: {', '.join(repeated)}"
        )
    if only:
        scenarios = [s for s in scenarios if any(fnmatch.fnmatch(s.name, pat) for pat in only)]
    return scenarios


def run_all(
    scenarios: list[Scenario],
    output: Output | None,
    requests: int | None = None,
    seed: int | None = None,
) -> None:
    from cnmt.experiments.replay import replay
    from cnmt.experiments.replay_output import plot_rtt_window

    for scenario in scenarios:
        if scenario.skipped:
            continue
        began = time.perf_counter()
        try:
            outcome = replay(
                load_config(scenario.config), scenario.connection, requests=requests, seed=seed
            )
        except CnmtError as exc:
            scenario.skipped = str(exc)
            print(f"{scenario.name}: skipped: {exc}", file=sys.stderr)
            continue
        scenario.result = outcome.result
        if output is not None and output.draw:
            path = output.figures / (scenario.name.replace("/", "__") + "__rtt.png")
            plot_rtt_window(outcome.result["connection"], outcome.window, path, scenario.name)
            scenario.figure = output.link(path)
        run_sweep(scenario, output, requests, seed)
        scenario.seconds = time.perf_counter() - began
        print(f"{scenario.name}: {scenario.seconds:.1f} s", file=sys.stderr)


SWEEP_POLICIES = ("edge", "cloud", "oracle", "cnmt", "cnmt-load", "cnmt-closed")
SWEEP_MARKERS = ("o", "s", "^", "v", "D", "x")
SWEEP_DASHES = ("-", "--", "-.", ":")


def run_sweep(
    scenario: Scenario, output: Output | None, requests: int | None, seed: int | None
) -> None:
    """The load sweep of a scenario whose config asks for one: Poisson arrivals with queues,
    at the rates that keep edge-only busy each configured share of the time (its mean true
    edge time, from the scenario's own replay, sets them), with the config's
    ``load_sweep_requests`` (or ``requests``, when fewer)."""
    from cnmt.experiments.replay import replay
    from cnmt.experiments.replay_output import describe_mode

    config = load_config(scenario.config)
    spec = config["replay"]
    if not spec.load_sweep or scenario.result is None:
        return
    mean_edge_s = scenario.result["devices"]["edge"]["mean_true_s"]
    for utilization in spec.load_sweep:
        rate = utilization / mean_edge_s
        outcome = replay(
            config,
            scenario.connection,
            requests=min(spec.load_sweep_requests, requests or spec.load_sweep_requests),
            seed=seed,
            arrival_rate=rate,
            labels=[label for label in SWEEP_POLICIES if label in scenario.result["policies"]],
        )
        scenario.sweep.append(
            SweepPoint(utilization, rate, outcome.result["policies"], describe_mode(outcome.result))
        )
        print(f"  {scenario.name} at edge-only utilization {utilization:g}", file=sys.stderr)
    if output is not None and output.draw:
        path = output.figures / (scenario.name.replace("/", "__") + "__load.png")
        plot_sweep(scenario, path)
        scenario.sweep_figure = output.link(path)


def sweep_lines(scenario: Scenario) -> list[tuple[str, str, dict[str, Any]]]:
    """(policy label, legend text, matplotlib line style) of each swept policy. Policies that
    decide alike draw the same line: each has its own marker and dash, drawn smaller and hollow
    on top, and its legend says which policy it lies on (``cnmt-load (= cnmt)``)."""
    labels = [label for label in SWEEP_POLICIES if label in scenario.sweep[0].policies]
    drawn: dict[str, list[float]] = {}
    lines = []
    for index, label in enumerate(labels):
        means = [p.policies[label]["mean_s"] for p in scenario.sweep]
        same = [o for o, theirs in drawn.items() if np.allclose(means, theirs, rtol=0.005)]
        drawn[label] = means
        style = {
            "marker": SWEEP_MARKERS[index % len(SWEEP_MARKERS)],
            "linestyle": SWEEP_DASHES[index % len(SWEEP_DASHES)],
            "ms": 6 - index * 0.6,
            "fillstyle": "none" if same else "full",
        }
        lines.append((label, f"{label} (= {same[0]})" if same else label, style))
    return lines


def plot_sweep(scenario: Scenario, path: Path) -> None:
    """Mean and p99 latency of each policy against the arrival rate."""
    from cnmt.plotting import pyplot

    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    rates = [p.rate for p in scenario.sweep]
    per_rate = scenario.sweep[0].utilization / rates[0]  # edge-only utilization per req/s
    for label, shown, style in sweep_lines(scenario):
        for ax, key in zip(axes, ("mean_s", "p99_s"), strict=True):
            values = [p.policies[label][key] * 1e3 for p in scenario.sweep]
            ax.plot(rates, values, label=shown, **style)
    for ax, what in zip(axes, ("mean", "p99"), strict=True):
        ax.set_yscale("log")
        ax.set_xlabel("arrival rate (requests/s)")
        ax.set_ylabel(f"{what} latency (ms)")
        ax.grid(alpha=0.3, which="both")
        top = ax.secondary_xaxis("top", functions=(lambda r: r * per_rate, lambda u: u / per_rate))
        top.set_xlabel("edge-only utilization", fontsize=8)
    axes[1].legend(fontsize=7)
    fig.suptitle(f"{scenario.name}: Poisson arrivals, FIFO queues", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def length_figures(scenarios: list[Scenario], output: Output) -> dict[str, str]:
    """Fig. 3 of every fitted length model the scenarios used (from the per-N stats it stores)."""
    from cnmt.experiments.lengthfit import LengthFit, plot_length_fit
    from cnmt.schedulers.length_models import load_length_model

    done: dict[str, str] = {}
    for scenario in scenarios:
        if scenario.result is None:
            continue
        section = load_config(scenario.config).get("length_estimator")
        path = getattr(getattr(section, "params", None), "model", None)
        if not path or display_path(path) in done:
            continue
        raw = read_json(path, what="length model", fix="fit it with `cnmt fit-length`")
        if "per_n" not in raw:
            continue
        fit = LengthFit(
            model=load_length_model(path), dropped=raw.get("dropped", {}), per_n=raw["per_n"]
        )
        figure = output.figures / f"length__{Path(path).stem}.png"
        plot_length_fit(fit, figure, title=f"{Path(path).stem}: {fit.model.pairs_kept} pairs")
        done[display_path(path)] = output.link(figure)
    return done


# ----------------------------------------------------------------------------- markdown


def _signed(value: float) -> str:
    return f"{'-' if value < 0 else '+'} {abs(value):.3g}"


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:+.1f}%"


def paper_section(scenarios: list[Scenario], paper: dict[str, Any]) -> list[str]:
    """Table I of the paper beside ours, for the scenarios that stand for one of its cells."""
    lines = [
        "## Table I: the paper's and ours",
        "",
        f"The paper's numbers: {paper['citation']}. {paper['what']}. Ours: the same three "
        "references (edge-only for the gateway, cloud-only for the server, the Oracle), from "
        "this run.",
        "",
        "| pair | profile | strategy | paper vs GW | ours vs edge | paper vs server "
        "| ours vs cloud | paper vs Oracle | ours vs Oracle | ours vs E[Oracle] | our scenario |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for s in scenarios:
        if s.paper is None:
            continue
        pair, profile = s.paper
        for strategy, label in (("naive", "Naive"), ("cnmt", "C-NMT")):
            theirs = paper["table"].get(pair, {}).get(strategy, {}).get(profile)
            ours = s.result["table"].get(strategy, {}) if s.result is not None else {}
            cells = []
            for i, key in enumerate(("vs_edge_pct", "vs_cloud_pct", "vs_oracle_pct")):
                cells += [_pct(theirs[i]) if theirs else "n/a", _pct(ours.get(key))]
            cells.append(_pct(ours.get("vs_oracle_expected_pct")))
            note = s.name if s.result is not None else f"{s.name} (skipped)"
            lines.append(f"| {pair} | {profile} | {label} | " + " | ".join(cells) + f" | {note} |")
    setup = paper["setup"]
    lines += [
        "",
        "How the setups differ (read the columns with these in mind):",
        "",
        f"- Devices. The paper: edge {setup['edge']}; cloud {setup['cloud']}. Ours: the same "
        "CPU for both, the edge emulated by a cgroup CPU quota (a quarter or 6% of one core) "
        "and the cloud unthrottled (see each scenario's device profiles below).",
        f"- Link. The paper: {setup['link']}. Ours: other RIPE Atlas probes of 2016 (and "
        "tyrell traces) chosen for a slow and a faster WAN; the same 100 Mbps.",
        f"- Models. The paper: {'; '.join(f'{k}: {v}' for k, v in setup['models'].items())}, "
        "trained, with their real outputs. Ours for BiLSTM, GRU and Marian: the same "
        "architectures with random weights, so their outputs are meaningless and a request's "
        "true M is the length of the corpus' human translation; their latency depends on N "
        "and M only, which is what the policies see. FR-EN and EN-ZH draw requests from other "
        "corpora than OPUS-100's train split (not available offline).",
        f"- Fits. The paper: latency model fitted on {setup['latency_model_fit']}; length "
        f"model on {setup['length_model_fit']}. Ours: on a grid of forced (N, M) runs and on "
        "the corpus lines the replay does not draw requests from.",
        "- Oracle. The paper's Oracle, as ours (`oracle`), picks the faster device knowing "
        "each request's true times. Ours also reports the expected-time Oracle "
        "(`oracle_expected`, E[Oracle]: true M and RTT, expected execution times): a policy's "
        "gap to it is what a better scheduler could still win, and the difference between "
        "the two Oracles is run-to-run noise no policy can know.",
    ]
    return lines


def our_table(scenarios: list[Scenario]) -> list[str]:
    lines = [
        "## Our Table I, every scenario",
        "",
        "C-NMT is the paper's rule (`cnmt`); closed loop is `cnmt-closed` (learning latency "
        "and length models, the load-aware rule, the link probed when idle). Each scenario's "
        "arrivals and queues are listed under the table.",
        "",
        "| scenario | C-NMT vs edge | vs cloud | vs Oracle | vs E[Oracle] | Naive vs Oracle "
        "| closed loop vs Oracle | vs E[Oracle] | Oracle on edge |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for s in scenarios:
        if s.result is None:
            lines.append(f"| {s.name} | skipped: see below |" + "  |" * 7)
            continue
        table = s.result["table"]
        cn, nv, cl = (table.get(k, {}) for k in ("cnmt", "naive", "cnmt-closed"))
        share = s.result["policies"].get("oracle", {}).get("share_edge")
        one_sided = share is not None and max(share, 1 - share) > OVERWHELMING_SHARE
        lines.append(
            f"| {s.name} | {_pct(cn.get('vs_edge_pct'))} | {_pct(cn.get('vs_cloud_pct'))} | "
            f"{_pct(cn.get('vs_oracle_pct'))} | {_pct(cn.get('vs_oracle_expected_pct'))} | "
            f"{_pct(nv.get('vs_oracle_pct'))} | {_pct(cl.get('vs_oracle_pct'))} | "
            f"{_pct(cl.get('vs_oracle_expected_pct'))} | "
            f"{'n/a' if share is None else f'{share * 100:.1f}%'}"
            f"{' (one-sided)' if one_sided else ''} |"
        )
    from cnmt.experiments.replay_output import describe_mode

    modes = sorted({describe_mode(s.result) for s in scenarios if s.result is not None})
    lines += ["", "Arrivals and queues: " + "; or ".join(modes) + "."] if modes else []
    lines += [
        "",
        '"Oracle on edge" is the share of requests the Oracle runs on the edge; where it is '
        f"above {OVERWHELMING_SHARE:.0%} or below {1 - OVERWHELMING_SHARE:.0%} (one-sided) one "
        "device wins almost always and the scenario says little about the policies.",
    ]
    return lines


def drift_section(scenarios: list[Scenario]) -> list[str]:
    """Each drift scenario beside the same setup and connection without drift: what a stale
    model costs, and what learning recovers (gaps to the Oracle, in points)."""
    by_key = {
        (s.result["model"], s.connection): s
        for s in scenarios
        if s.result is not None and not s.result["drift"]
    }
    lines: list[str] = []
    for s in scenarios:
        if s.result is None or not s.result["drift"]:
            continue
        base = by_key.get((s.result["model"], s.connection))
        if base is None or base.result is None:
            continue
        drift = "; ".join(
            f"the {d['device']} {d['factor']:g}x slower from {d['at_fraction']:.0%} of the run"
            for d in s.result["drift"]
        )
        lines += [
            f"### {s.name} ({drift}) against {base.name}",
            "",
            "| policy | gap to Oracle without drift | with drift | change (points) |",
            "|---|---:|---:|---:|",
        ]
        for label, row in s.result["table"].items():
            before = base.result["table"].get(label, {}).get("vs_oracle_pct")
            after = row.get("vs_oracle_pct")
            if before is None or after is None or label.startswith("oracle"):
                continue
            lines.append(f"| {label} | {_pct(before)} | {_pct(after)} | {after - before:+.1f} |")
        lines.append("")
    if lines:
        lines = ["## Drift: a device that changes speed mid-run", "", *lines]
    return lines


def sweep_section(s: Scenario) -> list[str]:
    """A scenario's load sweep: mean and p99 per policy at each rate, and how the load-aware
    rule compares with the paper's and with the better single device."""
    if not s.sweep:
        return []
    labels = [label for label in SWEEP_POLICIES if label in s.sweep[0].policies]
    lines = [
        f"### Load sweep: {s.name}",
        "",
        f"{s.sweep[0].mode}; at the rates that keep edge-only busy the given "
        "share of the time. Mean / p99 latency in ms.",
        "",
        "| edge-only busy | rate (req/s) | "
        + " | ".join(labels)
        + " | cnmt-load / cnmt mean | p99 | cnmt-load / best single mean |",
        "|---:|---:|" + "---:|" * (len(labels) + 3),
    ]
    for point in s.sweep:
        p = point.policies
        cells = [
            f"{p[label]['mean_s'] * 1e3:.0f} / {p[label]['p99_s'] * 1e3:.0f}" for label in labels
        ]
        ratios = ["", "", ""]
        if "cnmt" in p and "cnmt-load" in p:
            load, paper = p["cnmt-load"], p["cnmt"]
            best = min(p[k]["mean_s"] for k in ("edge", "cloud") if k in p)
            ratios = [
                f"{load['mean_s'] / paper['mean_s']:.3f}",
                f"{load['p99_s'] / paper['p99_s']:.3f}",
                f"{load['mean_s'] / best:.3f}",
            ]
        row = " | ".join(cells + ratios)
        lines.append(f"| {point.utilization:.0%} | {point.rate:.3g} | {row} |")
    lines.append("")
    if s.sweep_figure:
        lines += [f"![load sweep of {s.name}]({s.sweep_figure})", ""]
    return lines


def scenario_section(s: Scenario) -> list[str]:
    from cnmt.experiments.replay_output import markdown_table

    r = s.result
    assert r is not None
    conn, corpus = r["connection"], r["corpus"]
    stats, window = conn["trace_stats"], conn["window"]
    lines = [
        f"## {s.name}",
        "",
        str(r.get("description", "")).strip(),
        "",
        f"- requests: {r['requests']} (seed {r['seed']}), mean N {corpus['mean_n']:.1f}, "
        f"mean true M {corpus['mean_m_true']:.1f} (corpus targets: "
        f"{corpus['mean_m_corpus']:.1f})",
        f"- connection `{r['connection_name']}`: {conn['trace']} samples "
        f"{window['start']}..{window['start'] + window['samples'] - 1}, median RTT "
        f"{stats['median_ms']:.1f} ms (p5 {stats['p5_ms']:.1f}, p95 {stats['p95_ms']:.1f}), "
        f"{stats['lost']} lost pings ({conn['requests_hit_by_loss']} requests charged a "
        f"{conn['loss_timeout_s']:g} s timeout)",
    ]
    for role, d in r["devices"].items():
        fit = d["fit"]
        warning = (
            " (**extrapolated: measure a grid that covers the corpus' N and M**)"
            if d["extrapolated_share"] > EXTRAPOLATION_WARNING
            else ""
        )
        lines.append(
            f"- {role}: `{d['device']}` ({d['profile']}), fit T = {fit['a_n'] * 1e3:.3g} ms·N "
            f"{_signed(fit['a_m'] * 1e3)} ms·M {_signed(fit['b'] * 1e3)} ms "
            f"(R² {fit['r2']:.3f}); true times drawn {d['ground_truth']}, "
            f"{d['extrapolated_share'] * 100:.1f}% of requests outside the measured grid" + warning
        )
    for name, est in r["length_estimators"].items():
        lines.append(
            f"- length estimator `{name}`: mean estimate {est['mean_estimate']:.1f}, MAE "
            f"{est['mae_tokens']:.2f} tokens against the true M, "
            f"{est['mae_vs_corpus_tokens']:.2f} against the corpus targets"
        )
    lines += ["", markdown_table(r), ""]
    if s.figure:
        lines += [f"![RTT window of {s.name}]({s.figure})", ""]
    return lines + sweep_section(s)


def markdown_report(
    scenarios: list[Scenario],
    header: dict[str, Any],
    length_figs: dict[str, str],
    paper: dict[str, Any],
) -> str:
    lines = [
        "# Results: the replay of every experiment, and the paper's Table I",
        "",
        f"Generated {header['date']} by `{header['command']}` in {header['seconds']:.1f} s. "
        "Every number below comes from that run: a replay of measured device profiles (raw "
        "samples) and real RTT traces, except the paper's columns, which come from its Table "
        "I. Percentages are `100 * (policy total - reference total) / reference total` "
        "(negative = faster).",
        "",
        *(
            []
            if header.get("figures", True)
            else [f"This report has no figures: matplotlib is not installed ({INSTALL_HINT}).", ""]
        ),
        *paper_section(scenarios, paper),
        "",
        *our_table(scenarios),
        "",
        *drift_section(scenarios),
    ]
    skipped = [s for s in scenarios if s.result is None]
    if skipped:
        lines += ["## Skipped scenarios", ""]
        lines += [f"- `{s.name}`: {s.skipped}" for s in skipped]
        lines.append("")
    for s in scenarios:
        if s.result is not None:
            lines += scenario_section(s)
    if length_figs:
        lines += ["## Length models (Fig. 3)", ""]
        for path, fig in length_figs.items():
            lines += [f"![{Path(path).stem}]({fig})", "", f"`{path}`", ""]
    return "\n".join(lines).rstrip() + "\n"


def scenario_json(s: Scenario) -> dict[str, Any]:
    """A scenario in ``--json``: its replay JSON (or why it was skipped) and, when it has one,
    its load sweep, one entry per rate with every policy's replay numbers."""
    if s.result is None:
        return {"skipped": s.skipped}
    if not s.sweep:
        return s.result
    sweep = [
        {
            "edge_only_utilization": p.utilization,
            "rate": p.rate,
            "mode": p.mode,
            "policies": p.policies,
        }
        for p in s.sweep
    ]
    return {**s.result, "load_sweep": sweep}


def reproduce(
    output: Output | None,
    json_path: Path | None,
    requests: int | None,
    seed: int | None,
    only: list[str] | None,
    command: str,
) -> list[Scenario]:
    began = time.perf_counter()
    paper = paper_table()
    scenarios = plan(only)
    if output is not None and not plotting_available():
        output = dataclasses.replace(output, draw=False)
        print(
            f"cnmt reproduce: writing the report without figures; {INSTALL_HINT}", file=sys.stderr
        )
    if output is not None and output.draw:
        output.figures.mkdir(parents=True, exist_ok=True)
    run_all(scenarios, output, requests, seed)
    header = {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "command": command,
        "seconds": time.perf_counter() - began,
    }
    if json_path:
        write_json(json_path, {s.name: scenario_json(s) for s in scenarios})
    if output is not None:
        figures = length_figures(scenarios, output) if output.draw else {}
        header["seconds"] = time.perf_counter() - began
        header["figures"] = output.draw
        output.markdown.parent.mkdir(parents=True, exist_ok=True)
        output.markdown.write_text(
            markdown_report(scenarios, header, figures, paper), encoding="utf-8"
        )
    return scenarios
