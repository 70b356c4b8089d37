"""Replay the stale-prior and drift scenarios and write their convergence table and curves.

``python -P -m cnmt.experiments.scenarios [CONFIG[:CONNECTION] ...] --out DIR [--plots]``
replays each scenario (default: every ``configs/scenarios/*.yaml``, each on its
``default_connection``) with ``--requests`` requests (default 20,000), prints one table row per
policy as it goes and writes ``DIR/convergence.md``, ``DIR/convergence.json`` (the rows and
every policy's gap to the Oracle per window) and, with ``--plots``, one convergence figure per
scenario (:mod:`cnmt.experiments.convergence`). Exits 2 with the problem on a bad config.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from cnmt.config import builtin_config_names
from cnmt.experiments.convergence import markdown, plot_convergence, scenario_rows, window_gaps


def main(argv: list[str] | None = None) -> int:
    from cnmt.config import load_config
    from cnmt.errors import CnmtError
    from cnmt.experiments.replay import replay

    parser = argparse.ArgumentParser(
        prog="python -P -m cnmt.experiments.scenarios",
        description="Replay scenarios and write their convergence table and curves.",
    )
    parser.add_argument(
        "scenarios", nargs="*", help="CONFIG or CONFIG:CONNECTION (default: configs/scenarios)"
    )
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--out", type=Path, default=Path("cnmt-convergence"))
    parser.add_argument("--plots", action="store_true", help="also write one PNG per scenario")
    args = parser.parse_args(argv)
    scenarios = args.scenarios or builtin_config_names("scenarios")
    args.out.mkdir(parents=True, exist_ok=True)
    done = []
    try:
        for item in scenarios:
            name, _, connection = item.partition(":")
            config = load_config(name)
            outcome = replay(config, connection=connection or None, requests=args.requests)
            result = outcome.result
            labels = [
                label
                for label, p in result["policies"].items()
                if p["policy"] not in ("oracle", "oracle_expected")
            ]
            title = f"{Path(name).name} ({result['connection_name']}): {config.description}"
            entry = {
                "name": f"{Path(name).name}:{result['connection_name']}",
                "description": config.description,
                "rows": scenario_rows(result, labels),
                "gaps": {label: window_gaps(result, label) for label in labels},
            }
            if args.plots:
                figure = args.out / f"convergence-{Path(name).name}.png"
                plot_convergence(result, labels, title[:110], figure)
            done.append(entry)
            print(markdown([entry]), end="", flush=True)
    except CnmtError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    (args.out / "convergence.md").write_text(markdown(done), encoding="utf-8")
    (args.out / "convergence.json").write_text(json.dumps(done, indent=1), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
