"""analysis.load / analysis.compare against the hand-made database of tests/analysis/db.py."""

from __future__ import annotations

import math
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import analysis
from analysis import AnalysisError
from tests.analysis import db
from tests.analysis.db import variant


def test_runs_flattens_config_per_part(url: str) -> None:
    df = analysis.runs(url, db.STUDY).set_index("id")
    assert db.OTHER not in set(df["study"])
    r = df.loc[8]  # lrs [0.3, 0.1, 0.01], l2sp_rates [0, 0.01, 0.1]
    assert (r["lr_new"], r["lr_upper"], r["lr_lower"]) == (0.3, 0.1, 0.01)
    assert (r["l2_new"], r["l2sp_upper"], r["l2sp_lower"]) == (0.0, 0.01, 0.1)
    one = df.loc[13]  # single values apply to every part
    assert (one["lr_new"], one["lr_upper"], one["lr_lower"]) == (0.03,) * 3
    assert (one["l2_new"], one["l2sp_upper"], one["l2sp_lower"]) == (0.05,) * 3
    assert r["new_layers"] == 1 and r["cfg_weight_decay"] == 0.0005
    assert r["cfg_lrs"] == (0.3, 0.1, 0.01)
    assert pd.isna(df.loc[4, "source_run_id"]) and df.loc[20, "source_run_id"] == 9
    assert len(analysis.runs(url)) == len(df) + 1  # every study
    assert analysis.studies(url) == [db.STUDY, db.OTHER]


def test_epochs_filtered_by_study_and_runs(url: str) -> None:
    ep = analysis.epochs(url, db.STUDY, run_ids=[9])
    assert list(ep["epoch"]) == [0, 1, 2] and set(ep["run_id"]) == {9}
    assert list(ep["val_top1"]) == [65.0, 75.0, 85.0]
    assert list(ep["lr_new"]) == [0.3] * 3 and list(ep["lr_lower"]) == [0.03] * 3
    assert analysis.epochs(url, db.OTHER).empty


def test_compare_finds_best_default_and_optimal(url: str, built: Path) -> None:
    out = analysis.compare(url, db.STUDY)
    assert len(out) == 1
    row = out.iloc[0]
    for key, expected in db.EXPECTED.items():
        if key == "ladder":
            continue
        assert row[key] == pytest.approx(expected) if isinstance(expected, float) \
            else row[key] == expected, key
    # every final run with predictions, averaged
    assert row["ensemble_size"] == 3  # the default's retrainings are never members
    assert row["ensemble_test_top1"] == pytest.approx(by_hand(built, db.ENSEMBLE_ORDER))


def test_compare_before_final_runs(built: Path, tmp_path: Path) -> None:
    url = variant(built, tmp_path / "v", "DELETE FROM nbtl_runs WHERE role = 'final'")
    row = analysis.compare(url, db.STUDY).iloc[0]
    assert row["optimal_run_id"] == 9 and row["default_run_id"] == 2
    assert math.isnan(row["optimal_test_mean"]) and row["optimal_n_seeds"] == 0
    assert math.isnan(row["difference"]) and pd.isna(row["exceeds_spread"])
    assert math.isnan(row["ensemble_test_top1"]) and row["ensemble_size"] == 0
    assert "No final test runs" in analysis.summary_markdown(url, db.STUDY)


def test_exceeds_spread_false_when_seeds_overlap(built: Path, tmp_path: Path) -> None:
    # default finals 74/76/78 -> 82/84/86: difference 85 - 84 = 1 < 2 + 1
    url = variant(built, tmp_path / "v",
                  "UPDATE nbtl_runs SET test_top1 = test_top1 + 8 WHERE final_of = 'default'")
    row = analysis.compare(url, db.STUDY).iloc[0]
    assert row["difference"] == pytest.approx(1.0) and row["exceeds_spread"] == False  # noqa: E712
    assert "within the seed spread" in analysis.summary_markdown(url, db.STUDY)


def test_ladder_rungs(url: str, built: Path) -> None:
    lad = analysis.ladder(url, db.STUDY, reference={"state of the art": 90.0})
    assert list(lad["rung"]) == list(analysis.RUNGS) + ["state of the art"]
    by_rung = lad.set_index("rung")
    for rung, (val, run_id, test, n) in db.EXPECTED["ladder"].items():
        r = by_rung.loc[rung]
        assert (r["val_top1"], r["run_id"], r["n_runs"]) == (val, run_id, n), rung
        assert (pd.isna(r["test_top1"]) if test is None else r["test_top1"] == test), rung
    ens = by_rung.loc["ensemble"]
    assert ens["test_top1"] == pytest.approx(by_hand(built, db.ENSEMBLE_ORDER))
    assert ens["n_runs"] == 3
    assert by_rung.loc["state of the art", "test_top1"] == 90.0
    with pytest.raises(AnalysisError, match="reference name 'optimal'"):
        analysis.ladder(url, db.STUDY, reference={"optimal": 90.0})


def by_hand(built: Path, run_ids: list[int]) -> float:
    """Averaged softmax of the stored prediction files, recomputed without analysis."""
    files = {rid: built / (f"abs/run{rid}.npz" if pred == "ABSOLUTE" else pred)
             for rid, *_, pred in db.FINALS if pred is not None}
    loaded = [np.load(files[rid]) for rid in run_ids]
    mean = np.mean([f["probs"].astype(np.float64) for f in loaded], axis=0)
    return 100.0 * float(np.mean(mean.argmax(axis=1) == loaded[0]["labels"]))


def ensemble(url: str, top_k: int) -> float:
    return analysis.ensemble_accuracy(url, db.STUDY, top_k)


def test_ensemble_accuracy_matches_files(url: str, built: Path) -> None:
    singles = {by_hand(built, [rid]) for rid in db.ENSEMBLE_ORDER}
    assert by_hand(built, db.ENSEMBLE_ORDER) not in singles  # averaging changes the answer here
    assert ensemble(url, 3) == pytest.approx(by_hand(built, [20, 21, 22]))
    assert ensemble(url, 1) == pytest.approx(by_hand(built, [20]))
    assert ensemble(url, 4) == pytest.approx(by_hand(built, [20, 21, 22]))  # only 3 exist
    # more than available: all of them
    assert ensemble(url, 50) == pytest.approx(by_hand(built, db.ENSEMBLE_ORDER))
    with pytest.raises(AnalysisError, match="top_k"):
        analysis.ensemble_accuracy(url, db.STUDY, 0)


def test_missing_predictions_file_is_named(built: Path, tmp_path: Path) -> None:
    url = variant(built, tmp_path / "v")
    (tmp_path / "v" / "preds" / "run21.npz").unlink()
    with pytest.raises(AnalysisError, match=r"final run 21: predictions file .*run21.npz"):
        analysis.ensemble_accuracy(url, db.STUDY, 3)


def test_error_no_database_file(tmp_path: Path) -> None:
    path = tmp_path / "absent.db"
    with pytest.raises(AnalysisError, match="nbtl-search run"):
        analysis.runs(f"sqlite:///{path}")
    assert not path.exists()  # reading must not create an empty database


def test_error_no_nbtl_tables(tmp_path: Path) -> None:
    with sqlite3.connect(tmp_path / "x.db") as conn:
        conn.execute("CREATE TABLE unrelated (x INTEGER)")
    with pytest.raises(AnalysisError, match=r"no nbtl tables in sqlite:///.*x\.db: run "
                                            r"`nbtl-search run STUDY.yaml` first"):
        analysis.compare(f"sqlite:///{tmp_path / 'x.db'}", "demo")


def test_error_unknown_study_lists_studies(url: str) -> None:
    with pytest.raises(AnalysisError, match=r"study 'nope' not found; studies here: demo, other"):
        analysis.ladder(url, "nope")


def test_error_no_default_baseline(built: Path, tmp_path: Path) -> None:
    url = variant(built, tmp_path / "v", "DELETE FROM nbtl_runs WHERE role = 'default'")
    with pytest.raises(AnalysisError, match=r"study 'demo' has no default baseline yet: "
                                            r"run `nbtl-search baseline STUDY.yaml`"):
        analysis.compare(url, db.STUDY)


def test_error_no_complete_search_runs(built: Path, tmp_path: Path) -> None:
    url = variant(built, tmp_path / "v",
                  "UPDATE nbtl_runs SET state = 'pruned' WHERE role = 'search'")
    for call in (analysis.compare, analysis.ladder, analysis.figures.history_figure):
        with pytest.raises(AnalysisError, match=r"study 'demo' has no complete search runs: "
                                                r"run `nbtl-search run STUDY.yaml`"):
            call(url, db.STUDY)


def test_error_no_final_predictions(built: Path, tmp_path: Path) -> None:
    url = variant(built, tmp_path / "v", "UPDATE nbtl_runs SET predictions_path = NULL")
    with pytest.raises(AnalysisError, match="no complete final runs with saved test predictions"):
        analysis.ensemble_accuracy(url, db.STUDY, 3)


def test_import_does_not_pull_trainer_or_search() -> None:
    code = ("import sys, analysis; bad = [m for m in sys.modules if m.split('.')[0] in "
            "('trainer', 'nbtl_search')]; print(bad); sys.exit(1 if bad else 0)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=Path(__file__).parents[2])
    assert done.returncode == 0, done.stdout + done.stderr
