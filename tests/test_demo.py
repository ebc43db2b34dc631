"""`nbtl-search demo` end to end on a cold machine (no cached source model), then everything a user
does with its database: the comparison, the ladder, status, report, notebook, dashboard note, and a
copy of the database opened somewhere else."""

from __future__ import annotations

import os
import shutil
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
from nbtl_search.run.trial_queue import grid_coverage
from nbtl_search.store.results import ResultStore
from nbtl_search.study.spec import load_spec
from trainer.config import config_hash

REPO = Path(__file__).resolve().parents[1]
STUDY = REPO / "studies" / "demo_digits.yaml"
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, str]:
    """Run the demo once in an empty folder with an empty HOME (so it pre-trains its source)."""
    work = tmp_path_factory.mktemp("demo")
    env = {**os.environ, "HOME": str(work / "home"), "HF_HUB_OFFLINE": "1"}
    out = subprocess.run(
        [sys.executable, "-m", "nbtl_search", "demo"],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return work, f"sqlite:///{work / 'nbtl.db'}", out.stdout


def test_demo_prints_the_comparison_with_its_intervals(demo) -> None:
    work, url, stdout = demo
    assert "pre-training the source model once" in stdout
    assert (work / "home" / ".cache" / "nbtl-search" / "shapes-test_resnet.pth").is_file()
    assert "optimal vs best default" in stdout and "95% CI" in stdout
    assert "optuna-dashboard sqlite:///nbtl.db" in stdout
    row = analysis.compare(url, "demo_digits").iloc[0]
    seeds = load_spec(STUDY).final.seeds
    assert row["default_n_seeds"] == seeds and row["optimal_n_seeds"] == seeds
    assert row["default_val_n"] > 1 and row["optimal_val_n"] > 1  # chosen after re-ranking
    assert row["verdict"] in ("gain", "loss", "no clear difference")
    assert (
        row["verdict"].replace("no clear difference", "No clear difference") in stdout
        or {"gain": "The optimum is better", "loss": "The optimum is worse"}[row["verdict"]]
        in stdout
    )


def test_the_default_trains_with_the_studys_recipe(demo) -> None:
    _, url, _ = demo
    spec = load_spec(STUDY)
    defaults = ResultStore(url).runs(study="demo_digits", role="default")
    assert defaults
    for run in defaults:
        cfg = run["config"]
        assert cfg["new_layers"] == 1 and len(cfg["lrs"]) == 1 and cfg["l2sp_rates"] == [0.0]
        for key, value in spec.train.items():  # every train: field, augmentation included
            expected = list(value) if isinstance(value, tuple) else value
            assert cfg[key] == expected, key


def test_every_grid_point_ran_once(demo) -> None:
    _, url, _ = demo
    for name in ("demo_digits.default", "demo_digits"):
        trials = optuna.load_study(study_name=name, storage=url).get_trials()
        once, more, points = grid_coverage(trials)
        assert once == points and more == 0, name


def test_the_ladder_is_retrained_and_ends_at_the_optimum(demo) -> None:
    _, url, _ = demo
    seeds = load_spec(STUDY).final.seeds
    ladder = analysis.ladder(url, "demo_digits")
    rungs = ladder[ladder["rung"] != "ensemble"]
    assert list(rungs["rung"]) == [
        "default",
        "+ layers",
        "+ learning rates",
        "+ regularisation",
        "optimal",
    ]
    assert (rungs["n_seeds"] == seeds).all()  # one retrained result per seed on every rung
    row = analysis.compare(url, "demo_digits").iloc[0]
    optimal = next(
        r for r in ResultStore(url).runs(study="demo_digits") if r["id"] == row["optimal_run_id"]
    )
    assert rungs.iloc[-1]["config_hash"] == config_hash(optimal["config"])
    assert rungs.iloc[-1]["test_mean"] == pytest.approx(row["optimal_test_mean"])
    assert rungs.iloc[0]["test_mean"] == pytest.approx(row["default_test_mean"])


def test_the_test_split_is_touched_only_by_final_runs(demo) -> None:
    _, url, _ = demo
    runs = ResultStore(url).runs(study="demo_digits")
    assert {r["role"] for r in runs} == {"default", "search", "rerank", "final"}
    for r in runs:
        final = r["role"] == "final"
        assert r["config"]["eval_test"] is final
        assert (r["test_top1"] is not None) is final
        assert (r["config"]["train_split"] == "trainval") is final


def test_report_notebook_and_dashboard_note_read_the_demo(demo) -> None:
    work, url, _ = demo
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "nbtl_search",
            "report",
            str(STUDY),
            "--storage",
            url,
            "--out",
            str(work / "report.html"),
            "--reference",
            "from scratch=25.0",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    html = (work / "report.html").read_text()
    assert "best default" in html and "from scratch" in html and '<script src="http' not in html
    assert "Not drawn" not in html.split("Search history")[0]

    nb = nbformat.read(REPO / "analysis" / "notebooks" / "optimal_vs_default.ipynb", as_version=4)
    params = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    params.source = f"url = {url!r}\nstudy = 'demo_digits'\nreference = None"
    NotebookClient(
        nb, kernel_name="python3", timeout=300, resources={"metadata": {"path": str(REPO)}}
    ).execute()

    study = optuna.load_study(study_name="demo_digits", storage=url)
    assert "best default" in optuna_dashboard.get_note(study)


def test_the_probe_runs_on_the_demo_study_and_status_shows_it(demo) -> None:
    work, url, _ = demo
    env = {**os.environ, "HOME": str(work / "home"), "HF_HUB_OFFLINE": "1"}  # its cached source
    for verb in (
        ["probe", str(STUDY), "--storage", url, "--device", "cpu"],
        ["status", str(STUDY), "--storage", url],
    ):
        out = subprocess.run(
            [sys.executable, "-m", "nbtl_search", *verb],
            cwd=work,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert out.returncode == 0, out.stderr[-2000:]
    assert "probe (" in out.stdout and "suggests new_layers" in out.stdout
    table = analysis.probe(url, "demo_digits")
    assert list(table["layer"]) == [2, 3, 4, 5, 6] and table["probe_acc"].between(0, 100).all()
    assert analysis.probe_summary(url, "demo_digits")["seconds.scores"] > 0


def test_a_copy_of_the_database_alone_gives_every_result(demo, tmp_path) -> None:
    work, url, _ = demo
    copy = tmp_path / "laptop" / "demo.db"
    copy.parent.mkdir()
    shutil.copyfile(work / "nbtl.db", copy)  # the database alone: no folder, no other file
    elsewhere = f"sqlite:///{copy}"
    here, there = analysis.compare(url, "demo_digits"), analysis.compare(elsewhere, "demo_digits")
    assert there.iloc[0]["ensemble_size"] == here.iloc[0]["ensemble_size"] > 0
    assert there.iloc[0]["ensemble_test_top1"] == pytest.approx(here.iloc[0]["ensemble_test_top1"])
    assert there.iloc[0]["bootstrap_low"] == pytest.approx(here.iloc[0]["bootstrap_low"])
    report = analysis.write_report(elsewhere, "demo_digits", tmp_path / "laptop" / "r.html")
    assert "Not drawn" not in report.read_text().split("Search history")[0]


def test_the_ensemble_is_the_averaged_softmax_of_the_optimums_models(demo) -> None:
    _, url, _ = demo
    row = analysis.compare(url, "demo_digits").iloc[0]
    finals = [
        r
        for r in ResultStore(url).runs(study="demo_digits", role="final")
        if r["final_of"] == "search" and r["state"] == "complete"
    ]
    stored = analysis.load.predictions(url, [r["id"] for r in finals])
    probs = [stored[r["id"]][0] for r in finals]
    labels = stored[finals[0]["id"]][1]
    by_hand = 100.0 * (np.mean(probs, axis=0).argmax(1) == labels).mean()
    assert row["ensemble_test_top1"] == pytest.approx(by_hand)
    single = [100.0 * (p.argmax(1) == labels).mean() for p in probs]
    assert single == pytest.approx([r["test_top1"] for r in finals], abs=0.5)  # float16 storage
