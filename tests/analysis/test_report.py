"""Figures, the HTML report, the Markdown summary and the notebook, on the hand-made database."""

from __future__ import annotations

import re
from pathlib import Path

import nbformat
import pandas as pd
import plotly.offline
import pytest
from nbclient import NotebookClient

import analysis
from analysis import AnalysisError, figures
from tests.analysis import db
from tests.analysis.db import variant

REPO = Path(__file__).parents[2]
NOTEBOOK = REPO / "analysis" / "notebooks" / "optimal_vs_default.ipynb"


def test_report_is_one_offline_file_with_every_figure(url: str, tmp_path: Path) -> None:
    out = analysis.write_report(
        url, db.STUDY, tmp_path / "sub" / "report.html", reference={"state of the art": 90.0}
    )
    text = out.read_text(encoding="utf-8")
    # ladder, history, importances, parallel coordinates, curves
    assert text.count('class="plotly-graph-div"') == 5
    assert "Not drawn" not in text
    assert not re.search(r"<script[^>]*\bsrc=", text)  # nothing fetched: opens offline
    assert text.count(plotly.offline.get_plotlyjs()[:200]) == 1  # plotly.js inlined once
    assert "The optimum is better: every interval lies above 0." in text
    assert "state of the art" in text and "Not a proven best: lr 0.1 is the largest" in text
    assert "new_layers: 1 -&gt; 2" in text  # the differing settings, escaped


def test_report_notes_a_figure_it_cannot_draw(built: Path, tmp_path: Path) -> None:
    url = variant(built, tmp_path / "v", "DELETE FROM nbtl_epochs")
    text = analysis.write_report(url, db.STUDY, tmp_path / "r.html").read_text()
    assert text.count('class="plotly-graph-div"') == 4
    assert "Not drawn: study &#x27;demo&#x27; has no per-epoch rows" in text


def test_report_before_final_notes_the_missing_ladder(built: Path, tmp_path: Path) -> None:
    url = variant(
        built,
        tmp_path / "v",
        "DELETE FROM nbtl_ladder",
        "DELETE FROM nbtl_runs WHERE role = 'final'",
    )
    text = analysis.write_report(url, db.STUDY, tmp_path / "r.html").read_text()
    assert "Not drawn: study &#x27;demo&#x27; has no ladder yet" in text
    assert text.count('class="plotly-graph-div"') == 4  # every other figure is there


def test_report_needs_a_baseline(built: Path, tmp_path: Path) -> None:
    url = variant(
        built,
        tmp_path / "v",
        "DELETE FROM nbtl_runs WHERE role = 'default'",
        "DELETE FROM nbtl_ladder",
    )
    with pytest.raises(AnalysisError, match="nbtl-search baseline"):
        analysis.write_report(url, db.STUDY, tmp_path / "r.html")
    assert not (tmp_path / "r.html").exists()


def test_summary_markdown(url: str) -> None:
    md = analysis.summary_markdown(url, db.STUDY)
    assert "| test top-1 %, mean ± sd over seeds | 76.00 ± 2.00 (n=3) | 85.00 ± 1.00 (n=3) |" in md
    # the winner's curse, side by side: one trial's value and the re-ranked mean
    assert "| validation top-1 %, that trial | 75.00 | 83.00 |" in md
    assert "| validation top-1 %, mean with its re-runs | 74.00 (n=3) | 84.00 (n=3) |" in md
    assert "Optimal minus default: +9.00 test top-1 points (95% CI +4." in md
    assert "over the 40 test images). The optimum is better" in md
    assert "lrs: [0.1] -> [0.3, 0.1, 0.03]" in md


def test_figures_hold_the_data(url: str) -> None:
    lad = analysis.ladder(url, db.STUDY, reference={"sota": 90.0})
    fig = figures.ladder_figure(lad, "t")
    assert [x.split(" (")[0] for x in fig.data[0].x] == [r for r, *_ in db.LADDER] + ["ensemble"]
    assert list(fig.data[0].y[:5]) == [76.0, 81.0, 85.0, 85.0, 85.0]  # test means per rung
    assert list(fig.data[0].error_y.array[:2]) == [2.0, 1.0]  # their sd over seeds
    assert fig.layout.shapes[0].y0 == 90.0  # the reference line
    hist = figures.history_figure(url, db.STUDY)
    best = next(t for t in hist.data if t.name == "best so far")
    assert list(best.y) == [80, 80, 83, 83, 83, 85, 85, 85]
    assert hist.layout.shapes[0].y0 == 75.0  # best default
    imp = figures.importance_figure(url, db.STUDY)
    assert set(imp.data[0].y) == {"new_layers", "lr_new", "l2sp_upper"}
    par = figures.parallel_figure(url, db.STUDY)
    assert len(par.data[0].dimensions[0].values) == 10  # complete search + default runs
    curves = figures.curves_figure(url, db.STUDY, top=2)
    assert [t.name.split()[0] for t in curves.data] == ["#9", "#11", "#2"]  # top 2 + best default


def test_importance_figure_says_why_it_has_none(url: str) -> None:
    fig = figures.importance_figure(url, db.OTHER)  # no Optuna study of that name
    assert not fig.data and "no parameter importances" in fig.layout.annotations[0].text


def test_empty_inputs_raise(url: str) -> None:
    with pytest.raises(AnalysisError, match="no test results yet"):
        figures.ladder_figure(
            pd.DataFrame(columns=["rung", "adds", "test_mean", "test_sd", "n_seeds"]), "t"
        )
    with pytest.raises(AnalysisError, match="no per-epoch rows"):
        figures.curves_figure(url, db.OTHER)


def test_notebook_executes(url: str) -> None:
    nb = nbformat.read(NOTEBOOK, as_version=4)
    params = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    params.source = f'url = {url!r}\nstudy = {db.STUDY!r}\nreference = {{"sota": 90.0}}'
    NotebookClient(
        nb, kernel_name="python3", timeout=120, resources={"metadata": {"path": str(REPO)}}
    ).execute()
    text = "\n".join(
        str(o.get("data", {}).get("text/plain", "")) + o.get("text", "")
        for c in nb.cells
        if c.cell_type == "code"
        for o in c.outputs
    )
    assert "+ learning rates" in text and "The optimum is better" in text
    assert not any(o.output_type == "error" for c in nb.cells for o in c.get("outputs", []))
