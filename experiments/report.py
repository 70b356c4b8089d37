"""`cnmt reproduce`: every experiment scenario, one report beside the paper's Table I.

A *scenario* is one connection profile of one experiment config (``experiments/<setup>.yaml``
under the built-in configs): its name is ``<setup>/<connection>``. A scenario whose inputs do
not exist yet (a device profile not measured, a length model not fitted, a model's output
cache not made) is skipped, and the report and JSON say why instead of showing numbers.
"""

from __future__ import annotations

import datetime as dt
import fnmatch
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cnmt.errors import CnmtError, ConfigError
from cnmt.files import read_json

# The paper's own Table I could not be retrieved: the stored copies of "C-NMT: A Collaborative
# Inference Framework for Neural Machine Translation" (Chen et al., ISCAS 2022, arXiv
# 2204.04043) that this project can read hold its abstract and introduction only. Its numbers
# are therefore not shown; only the abstract's headline claim is quoted, with its source.
PAPER = {
    "title": "C-NMT: A Collaborative Inference Framework for Neural Machine Translation",
    "authors": "Y. Chen, R. Chiaro, E. Macii, M. Poncino, D. Jahier Pagliari",
    "venue": "ISCAS 2022",
    "url": "https://arxiv.org/abs/2204.04043",
    "abstract_claim": (
        "CI can reduce the latency of NMT by up to 44% compared to a non-collaborative approach"
    ),
    "table_i": None,
    "table_i_note": (
        "The paper's Table I is not included: the copies of the paper reachable from this "
        "project contain only its abstract and introduction, and its numbers are never "
        "reconstructed or guessed. Compare with the published PDF."
    ),
}

OVERWHELMING_SHARE = 0.95
EXTRAPOLATION_WARNING = 0.05


@dataclass
class Scenario:
    name: str
    config: str
    connection: str
    result: dict[str, Any] | None = None
    skipped: str | None = None
    seconds: float = 0.0
    figure: str | None = None
    extras: dict[str, Any] = field(default_factory=dict)


def experiment_configs() -> list[str]:
    from cnmt.config import builtin_config_names

    return [name for name in builtin_config_names() if name.startswith("experiments/")]


def plan(only: list[str] | None = None) -> list[Scenario]:
    """Every (config, connection) scenario; ``only`` keeps names matching any glob."""
    from cnmt.config import load_config

    scenarios: list[Scenario] = []
    for name in experiment_configs():
        setup = (
            name.removeprefix("experiments/")
            if name.startswith("experiments/")
            else Path(name).stem
        )
        try:
            config = load_config(name)
            connections = list(config["replay"].connections)
        except CnmtError as exc:
            scenarios.append(Scenario(f"{setup}/*", name, "", skipped=str(exc)))
            continue
        for conn in connections:
            scenarios.append(Scenario(f"{setup}/{conn}", name, conn))
    names = [s.name for s in scenarios]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ConfigError(
            f"two experiment configs give the same scenario names: {', '.join(repeated)}"
        )
    if only:
        scenarios = [s for s in scenarios if any(fnmatch.fnmatch(s.name, pat) for pat in only)]
    return scenarios


def run_all(
    scenarios: list[Scenario],
    out_dir: Path | None,
    requests: int | None = None,
    seed: int | None = None,
) -> None:
    from cnmt.config import load_config
    from cnmt.experiments.replay import plot_rtt_window, replay

    figures = out_dir / "figures" if out_dir else None
    if figures:
        figures.mkdir(parents=True, exist_ok=True)
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
        scenario.seconds = time.perf_counter() - began
        if figures:
            name = scenario.name.replace("/", "__") + "__rtt.png"
            plot_rtt_window(
                outcome.result["connection"], outcome.window, figures / name, title=scenario.name
            )
            scenario.figure = f"figures/{name}"
        print(f"{scenario.name}: {scenario.seconds:.1f} s", file=sys.stderr)


def length_figures(scenarios: list[Scenario], out_dir: Path) -> dict[str, str]:
    """Fig. 3 of every fitted length model the scenarios used (from the per-N stats it stores)."""
    from cnmt.config import load_config
    from cnmt.experiments.lengthfit import LengthFit, plot_length_fit
    from cnmt.schedulers.length_models import load_length_model

    done: dict[str, str] = {}
    for scenario in scenarios:
        if scenario.result is None:
            continue
        config = load_config(scenario.config)
        section = config.get("length_estimator")
        path = getattr(getattr(section, "params", None), "model", None)
        if not path or path in done:
            continue
        raw = read_json(path, what="length model", fix="fit it with `cnmt fit-length`")
        if "per_n" not in raw:
            continue
        fit = LengthFit(
            model=load_length_model(path), dropped=raw.get("dropped", {}), per_n=raw["per_n"]
        )
        name = f"figures/length__{Path(path).stem}.png"
        plot_length_fit(
            fit, out_dir / name, title=f"{Path(path).stem}: {fit.model.pairs_kept} pairs"
        )
        done[path] = name
    return done


def _signed(value: float) -> str:
    return f"{'-' if value < 0 else '+'} {abs(value):.3g}"


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:+.1f}%"


def markdown_report(
    scenarios: list[Scenario], header: dict[str, Any], length_figs: dict[str, str]
) -> str:
    from cnmt.experiments.replay import markdown_table

    lines = [
        "# C-NMT replay: our Table I",
        "",
        f"Generated {header['date']} by `{header['command']}` in {header['seconds']:.1f} s. "
        "Every number below comes from a replay of measured device profiles (raw samples) and "
        "real RTT traces; percentages are `100 * (policy total - reference total) / reference "
        "total` (negative = faster).",
        "",
        "## The paper's Table I",
        "",
        f"{PAPER['title']} ({PAPER['authors']}, {PAPER['venue']}, <{PAPER['url']}>).",
        "",
        f'{PAPER["table_i_note"]} The abstract states: "{PAPER["abstract_claim"]}".',
        "",
        "## Our Table I",
        "",
        "| scenario | C-NMT vs edge | vs cloud | vs Oracle | Naive vs edge | vs cloud "
        "| vs Oracle | Oracle on edge |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for s in scenarios:
        if s.result is None:
            lines.append(f"| {s.name} | skipped: see below |  |  |  |  |  |  |")
            continue
        table = s.result["table"]
        cn, nv = table.get("cnmt", {}), table.get("naive", {})
        oracle = s.result["policies"].get("oracle", {})
        share = oracle.get("share_edge")
        flag = (
            " (one-sided)"
            if share is not None and max(share, 1 - share) > OVERWHELMING_SHARE
            else ""
        )
        lines.append(
            f"| {s.name} | {_pct(cn.get('vs_edge_pct'))} | {_pct(cn.get('vs_cloud_pct'))} | "
            f"{_pct(cn.get('vs_oracle_pct'))} | {_pct(nv.get('vs_edge_pct'))} | "
            f"{_pct(nv.get('vs_cloud_pct'))} | {_pct(nv.get('vs_oracle_pct'))} | "
            f"{'n/a' if share is None else f'{share * 100:.1f}%'}{flag} |"
        )
    lines += [
        "",
        f'"Oracle on edge" is the share of requests the Oracle runs on the edge; where it is '
        f"above {OVERWHELMING_SHARE:.0%} or below {1 - OVERWHELMING_SHARE:.0%} (one-sided) one "
        "device wins almost always and the scenario says little about the policies.",
        "",
    ]
    skipped = [s for s in scenarios if s.result is None]
    if skipped:
        lines += ["## Skipped scenarios", ""]
        lines += [f"- `{s.name}`: {s.skipped}" for s in skipped]
        lines.append("")
    for s in scenarios:
        if s.result is None:
            continue
        r = s.result
        conn = r["connection"]
        stats = conn["trace_stats"]
        corpus = r["corpus"]
        lines += [
            f"## {s.name}",
            "",
            f"{r.get('description', '')}".strip(),
            "",
            f"- requests: {r['requests']} (seed {r['seed']}), mean N {corpus['mean_n']:.1f}, "
            "mean true M "
            f"{corpus['mean_m_true']:.1f} (corpus targets: {corpus['mean_m_corpus']:.1f})",
            f"- connection `{r['connection_name']}`: {conn['trace']} samples "
            f"{conn['window']['start']}.."
            f"{conn['window']['start'] + conn['window']['samples'] - 1}, "
            f"median RTT {stats['median_ms']:.1f} ms "
            f"(p5 {stats['p5_ms']:.1f}, p95 {stats['p95_ms']:.1f}), {stats['lost']} lost pings "
            f"({conn['requests_hit_by_loss']} requests charged a "
            f"{conn['loss_timeout_s']:g} s timeout)",
        ]
        for role in ("edge", "cloud"):
            d = r["devices"][role]
            fit = d["fit"]
            lines.append(
                f"- {role}: `{d['device']}` ({d['profile']}), fit T = {fit['a_n'] * 1e3:.3g} ms·N "
                f"{_signed(fit['a_m'] * 1e3)} ms·M {_signed(fit['b'] * 1e3)} ms "
                f"(R² {fit['r2']:.3f}); true times drawn {d['ground_truth']}, "
                f"{d['extrapolated_share'] * 100:.1f}% of requests outside the measured grid"
                + (
                    " (**extrapolated: measure a grid that covers the corpus' N and M**)"
                    if d["extrapolated_share"] > EXTRAPOLATION_WARNING
                    else ""
                )
            )
        for name, est in r["length_estimators"].items():
            lines.append(
                f"- length estimator `{name}`: mean estimate {est['mean_estimate']:.1f}, MAE "
                f"{est['mae_tokens']:.2f} tokens against the true M, "
                f"{est['mae_vs_corpus_tokens']:.2f} "
                "against the corpus targets"
            )
        lines += ["", markdown_table(r), ""]
        if s.figure:
            lines += [f"![RTT window of {s.name}]({s.figure})", ""]
    if length_figs:
        lines += ["## Length models (Fig. 3)", ""]
        for path, fig in length_figs.items():
            lines += [f"![{Path(path).stem}]({fig})", f"`{path}`", ""]
    return "\n".join(lines) + "\n"


def reproduce(
    out_dir: Path | None,
    json_path: Path | None,
    requests: int | None,
    seed: int | None,
    only: list[str] | None,
    command: str,
) -> list[Scenario]:
    began = time.perf_counter()
    scenarios = plan(only)
    if out_dir:
        out_dir.mkdir(parents=True, exist_ok=True)
    run_all(scenarios, out_dir, requests, seed)
    figs = length_figures(scenarios, out_dir) if out_dir else {}
    header = {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "command": command,
        "seconds": time.perf_counter() - began,
    }
    if json_path:
        data = {
            s.name: (s.result if s.result is not None else {"skipped": s.skipped})
            for s in scenarios
        }
        json_path.write_text(
            json.dumps(data, indent=1, ensure_ascii=False) + "\n", encoding="utf-8"
        )
    if out_dir:
        (out_dir / "report.md").write_text(
            markdown_report(scenarios, header, figs), encoding="utf-8"
        )
    return scenarios
