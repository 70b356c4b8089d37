"""`cnmt reproduce`: the results page is generated from the run, beside the paper's Table I."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from cnmt.cli import main

pytestmark = pytest.mark.slow  # replays every bilstm scenario with its load sweep


def test_docs_page_is_written_from_the_run_with_the_papers_table_and_relative_figures(
    tmp_path: Path, data_dir: Path, monkeypatch
) -> None:
    monkeypatch.chdir(tmp_path)
    page = tmp_path / "docs" / "results.md"
    args = ["reproduce", "--docs", "docs/results.md", "--requests", "3000"]
    assert main([*args, "--only", "bilstm-de-en/cp*", "--json", "run.json"]) == 0
    text = page.read_text(encoding="utf-8")
    # The paper's numbers (its Table I, DE-EN CP1: Naive +11.74 and C-NMT -13.55 vs the gateway)
    # sit beside ours, on the scenario that stands for that cell.
    assert re.search(r"\| DE-EN \| CP1 \| Naive \| \+11\.7% \| [-+]\d+\.\d% \|", text)
    assert re.search(r"\| DE-EN \| CP1 \| C-NMT \| -13\.6% \| [-+]\d+\.\d% \|", text)
    assert "not included" not in text and "Jetson TX2" in text
    # The load sweep: Poisson arrivals with queues at six rates, a table and a figure.
    sweep = text.split("### Load sweep: bilstm-de-en/cp1")[1].split("![")[0]
    assert len(re.findall(r"^\| \d+% \| [\d.]+ \|", sweep, re.M)) == 6
    assert "(figures/results/bilstm-de-en__cp1__load.png)" in text
    # --json keeps the sweep too: every rate, every swept policy's numbers.
    sweep_json = json.loads((tmp_path / "run.json").read_text())["bilstm-de-en/cp1"]["load_sweep"]
    assert [point["edge_only_utilization"] for point in sweep_json] == [
        0.1,
        0.3,
        0.5,
        0.7,
        0.9,
        1.1,
    ]
    assert all(point["policies"]["cnmt-load"]["p99_s"] > 0 for point in sweep_json)
    assert sweep_json[0]["mode"].startswith("poisson arrivals")
    # The expected-time Oracle beside the clairvoyant one, for the paper's strategies too.
    assert "ours vs E[Oracle]" in text
    # Our full table: only the scenarios that ran, with numbers.
    assert re.search(r"\| bilstm-de-en/cp2 \| [-+]\d+\.\d% \|", text)
    assert "bilstm-de-en/lan" not in text
    # Figures beside the page, linked relatively; nothing of this machine is printed.
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    assert links and all((page.parent / link).is_file() for link in links)
    assert all(link.startswith("figures/results/") for link in links)
    assert str(tmp_path) not in text and str(data_dir) not in text
    assert "by `cnmt reproduce --docs docs/results.md --requests 3000 --only" in text
