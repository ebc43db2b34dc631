"""`nbtl-search demo` end to end on a cold machine (no cached source model), then everything a user
does with its database: the comparison, status, report, notebook, dashboard note."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import nbformat
import numpy as np
import optuna
import optuna_dashboard
import pytest
from nbclient import NotebookClient

import analysis
from nbtl_search.results import ResultStore

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, str]:
    """Run the demo once in an empty folder with an empty HOME (so it pre-trains its source)."""
    work = tmp_path_factory.mktemp("demo")
    env = {**os.environ, "HOME": str(work / "home"), "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-m", "nbtl_search", "demo"], cwd=work, env=env,
                         capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return work, f"sqlite:///{work / 'nbtl.db'}", out.stdout


def test_demo_prints_the_honest_comparison(demo) -> None:
    work, url, stdout = demo
    assert "pre-training the source model once" in stdout
    assert (work / "home" / ".cache" / "nbtl-search" / "shapes-test_resnet.pth").is_file()
    assert "optimal vs best default" in stdout
    assert "seed spread" in stdout  # says whether the gain is larger than the noise
    assert "optuna-dashboard sqlite:///nbtl.db" in stdout
    row = analysis.compare(url, "demo_digits").iloc[0]
    assert row["default_n_seeds"] == 3 and row["optimal_n_seeds"] == 3
    assert row["optimal_val_top1"] >= row["default_val_top1"]


def test_the_test_split_is_touched_only_by_final_runs(demo) -> None:
    _, url, _ = demo
    runs = ResultStore(url).runs(study="demo_digits")
    assert {r["role"] for r in runs} == {"default", "search", "final"}
    for r in runs:
        final = r["role"] == "final"
        assert r["config"]["eval_test"] is final
        assert (r["test_top1"] is not None) is final
        assert (r["config"]["train_split"] == "trainval") is final
    assert len([r for r in runs if r["role"] == "default"]) >= 4
    assert len([r for r in runs if r["role"] == "search" and r["state"] == "complete"]) >= 12


def test_report_notebook_and_dashboard_note_read_the_demo(demo) -> None:
    work, url, _ = demo
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-m", "nbtl_search", "report",
                          str(REPO / "studies" / "demo_digits.yaml"), "--storage", url,
                          "--out", str(work / "report.html"), "--reference", "from scratch=25.0"],
                         capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr
    html = (work / "report.html").read_text()
    assert "best default" in html and "from scratch" in html and '<script src="http' not in html

    nb = nbformat.read(REPO / "analysis" / "notebooks" / "optimal_vs_default.ipynb", as_version=4)
    params = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    params.source = f"url = {url!r}\nstudy = 'demo_digits'\nreference = None"
    NotebookClient(nb, kernel_name="python3", timeout=300,
                   resources={"metadata": {"path": str(REPO)}}).execute()

    study = optuna.load_study(study_name="demo_digits", storage=url)
    note = optuna_dashboard.get_note(study)
    assert "best default" in note


def test_ladder_and_ensemble_on_a_real_study(demo) -> None:
    work, url, _ = demo
    row = analysis.compare(url, "demo_digits").iloc[0]
    ladder = analysis.ladder(url, "demo_digits").set_index("rung")
    assert ladder.loc["default", "val_top1"] == pytest.approx(row["default_val_top1"])
    assert ladder.loc["optimal", "val_top1"] == pytest.approx(row["optimal_val_top1"])
    # every rung is a restriction of "optimal": none can beat it
    assert (ladder["val_top1"].dropna() <= row["optimal_val_top1"] + 1e-9).all()

    # the ensemble is the averaged softmax of the stored test predictions of the optimum's models
    finals = [r for r in ResultStore(url).runs(study="demo_digits", role="final")
              if r["final_of"] == "search"]
    probs, labels = zip(*((p["probs"], p["labels"]) for p in
                          (np.load(work / r["predictions_path"]) for r in finals)))
    by_hand = 100.0 * (np.mean(probs, axis=0).argmax(1) == labels[0]).mean()
    assert row["ensemble_test_top1"] == pytest.approx(by_hand)
    # each stored file is the run's own test evaluation
    single = [100.0 * (p.argmax(1) == labels[0]).mean() for p in probs]
    assert single == pytest.approx([r["test_top1"] for r in finals], abs=1e-6)
