"""analysis.load / analysis.compare / analysis.stats against the hand-made database of
tests/analysis/db.py, with every expected number worked out by hand."""

from __future__ import annotations

import math
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats as scipy_stats

import analysis
from analysis import AnalysisError, AnalysisWarning
from analysis.stats import paired_bootstrap_interval, welch_interval
from tests.analysis import db
from tests.analysis.db import variant


def test_runs_flattens_config_per_part(url: str) -> None:
    df = analysis.runs(url, db.STUDY).set_index("id")
    assert db.OTHER not in set(df["study"])
    r = df.loc[8]  # lrs [0.3, 0.1, 0.01], l2sp_rates [0, 0.01, 0.1]
    assert (r["lr_new"], r["lr_upper"], r["lr_lower"]) == (0.3, 0.1, 0.01)
    assert (r["l2_new"], r["l2sp_upper"], r["l2sp_lower"]) == (0.0, 0.01, 0.1)
    one = df.loc[13]  # single values apply to every part; l2sp's new entry is L2 towards zero
    assert (one["lr_new"], one["lr_upper"], one["lr_lower"]) == (0.03,) * 3
    assert (one["l2_new"], one["l2sp_upper"], one["l2sp_lower"]) == (0.05,) * 3
    assert (one["l2_upper"], one["l2_lower"]) == (0.0, 0.0)
    assert r["new_layers"] == 1 and r["cfg_weight_decay"] == 0.0005
    assert r["cfg_lrs"] == (0.3, 0.1, 0.01)
    assert pd.isna(df.loc[4, "source_run_id"]) and df.loc[30, "source_run_id"] == 2
    assert len(analysis.runs(url)) == len(df) + 1  # every study
    assert analysis.studies(url) == [db.STUDY, db.OTHER]


def test_epochs_filtered_by_study_and_runs(url: str) -> None:
    ep = analysis.epochs(url, db.STUDY, run_ids=[9])
    assert list(ep["epoch"]) == [0, 1, 2] and set(ep["run_id"]) == {9}
    assert list(ep["val_top1"]) == [65.0, 75.0, 85.0]
    assert list(ep["lr_new"]) == [0.3] * 3 and list(ep["lr_lower"]) == [0.03] * 3
    assert analysis.epochs(url, db.OTHER).empty


def test_compare_reads_the_selection_and_its_numbers(url: str) -> None:
    out = analysis.compare(url, db.STUDY)
    assert len(out) == 1
    row = out.iloc[0]
    for key, expected in db.EXPECTED.items():
        assert row[key] == (pytest.approx(expected) if isinstance(expected, float) else expected), (
            key
        )
    # winner's curse: the single best trial (run 9, 85) lost the re-ranking to run 6 (mean 84)
    assert row["optimal_val_top1"] < 85.0 < row["optimal_val_mean"] + 1.01


def test_welch_interval_by_hand(url: str) -> None:
    row = analysis.compare(url, db.STUDY).iloc[0]
    a, b = np.array([85.0, 84.0, 86.0]), np.array([74.0, 76.0, 78.0])
    se2_a, se2_b = a.var(ddof=1) / 3, b.var(ddof=1) / 3  # 1/3 and 4/3
    se = math.sqrt(se2_a + se2_b)  # sqrt(5/3)
    df = (se2_a + se2_b) ** 2 / (se2_a**2 / 2 + se2_b**2 / 2)  # 50/17
    assert df == pytest.approx(50 / 17)
    half = scipy_stats.t.ppf(0.975, df) * se
    assert row["ci_df"] == pytest.approx(df)
    assert (row["ci_low"], row["ci_high"]) == (pytest.approx(9 - half), pytest.approx(9 + half))
    assert row["ci_low"] > 0  # 9 - 4.12 * 1.29: the gain holds over seeds


def test_bootstrap_interval_by_hand(url: str) -> None:
    row = analysis.compare(url, db.STUDY).iloc[0]
    # per image, 1 where the optimum's models are right and the default's wrong (images 20..29)
    d = np.where((np.arange(db.N_TEST) >= 20) & (np.arange(db.N_TEST) < 30), 1.0, 0.0)
    rng = np.random.default_rng(0)  # the documented fixed seed, resampled one set at a time
    means = [100 * d[rng.integers(0, db.N_TEST, size=db.N_TEST)].mean() for _ in range(2000)]
    low, high = np.percentile(means, [2.5, 97.5])
    assert (row["bootstrap_low"], row["bootstrap_high"]) == (
        pytest.approx(low),
        pytest.approx(high),
    )
    # and the normal approximation agrees: 25 -+ 1.96 * 100 * sqrt(0.25 * 0.75 / 40) = 25 -+ 13.4
    assert abs(row["bootstrap_low"] - 11.6) < 3 and abs(row["bootstrap_high"] - 38.4) < 3


def test_intervals_degenerate_cases() -> None:
    interval, df = welch_interval([80.0, 80.0], [70.0, 70.0])
    assert (interval.low, interval.high) == (10.0, 10.0)  # no spread at all: a point
    interval, df = welch_interval([80.0], [70.0, 71.0])
    assert math.isnan(interval.low) and math.isnan(df)  # one seed: no interval
    same = np.ones((3, 50), dtype=bool)
    boot = paired_bootstrap_interval(same, same)
    assert (boot.low, boot.high) == (0.0, 0.0)
    with pytest.raises(ValueError, match="same images"):
        paired_bootstrap_interval(np.ones((2, 5)), np.ones((2, 6)))


def test_no_clear_difference_when_an_interval_holds_zero(built: Path, tmp_path: Path) -> None:
    # default finals 74/76/78 -> 82/84/86: difference 85 - 84 = 1, Welch interval about -4 to +6
    url = variant(
        built,
        tmp_path / "v",
        "UPDATE nbtl_runs SET test_top1 = test_top1 + 8 WHERE final_of = 'default'",
    )
    row = analysis.compare(url, db.STUDY).iloc[0]
    assert row["difference"] == pytest.approx(1.0) and row["ci_low"] < 0 < row["ci_high"]
    assert row["bootstrap_low"] > 0  # the images alone would say "gain" ...
    assert row["verdict"] == "no clear difference"  # ... but every interval must agree
    assert "No clear difference: an interval includes 0." in analysis.summary_markdown(
        url, db.STUDY
    )


def test_a_loss_is_called_a_loss(built: Path, tmp_path: Path) -> None:
    url = variant(
        built,
        tmp_path / "v",
        "UPDATE nbtl_runs SET test_top1 = test_top1 + 20 WHERE final_of = 'default'",
        "UPDATE nbtl_predictions SET run_id = run_id + 1000 WHERE run_id BETWEEN 20 AND 29",
    )
    with pytest.warns(AnalysisWarning, match="no stored test predictions"):
        row = analysis.compare(url, db.STUDY).iloc[0]
    assert row["difference"] == pytest.approx(-11.0) and row["verdict"] == "loss"
    assert math.isnan(row["bootstrap_low"]) and row["test_images"] == 0  # no predictions: left out


def test_compare_before_final(built: Path, tmp_path: Path) -> None:
    url = variant(
        built,
        tmp_path / "v",
        "DELETE FROM nbtl_runs WHERE role IN ('final', 'rerank')",
        "DELETE FROM nbtl_ladder",
    )
    row = analysis.compare(url, db.STUDY).iloc[0]
    # the single best trials (ties to the lower run id: 9 before 11)
    assert row["optimal_run_id"] == 9 and row["default_run_id"] == 2
    assert row["optimal_val_n"] == 1 and row["optimal_val_mean"] == 85.0
    assert math.isnan(row["optimal_test_mean"]) and row["optimal_n_seeds"] == 0
    assert math.isnan(row["difference"]) and row["verdict"] == "not tested yet"
    assert math.isnan(row["ensemble_test_top1"]) and row["ensemble_size"] == 0
    assert "Not tested yet" in analysis.summary_markdown(url, db.STUDY)
    with pytest.raises(AnalysisError, match="no ladder yet: run `nbtl-search final"):
        analysis.ladder(url, db.STUDY)


def test_ladder_rungs(url: str) -> None:
    lad = analysis.ladder(url, db.STUDY, reference={"state of the art": 90.0})
    assert list(lad["rung"]) == [r for r, *_ in db.LADDER] + ["ensemble", "state of the art"]
    by_rung = lad.set_index("rung")
    for rung, (adds, mean, sd, n) in db.EXPECTED_LADDER.items():
        r = by_rung.loc[rung]
        assert (r["adds"], r["test_mean"], r["test_sd"], r["n_seeds"]) == (adds, mean, sd, n), rung
    assert by_rung.loc["default", "val_mean"] == 74.0 and by_rung.loc["optimal", "val_mean"] == 84.0
    ens = by_rung.loc["ensemble"]
    assert ens["test_mean"] == pytest.approx(by_hand(db.ENSEMBLE)) and ens["n_seeds"] == 3
    assert by_rung.loc["state of the art", "test_mean"] == 90.0
    with pytest.raises(AnalysisError, match="reference name 'optimal'"):
        analysis.ladder(url, db.STUDY, reference={"optimal": 90.0})


def by_hand(run_ids: list[int]) -> float:
    """Averaged softmax of the stored predictions, recomputed without analysis."""
    loaded = [db.stored_predictions(rid) for rid in run_ids]
    mean = np.mean([p for p, _ in loaded], axis=0)
    return 100.0 * float(np.mean(mean.argmax(axis=1) == loaded[0][1]))


def test_ensemble_accuracy_matches_the_stored_predictions(url: str) -> None:
    assert analysis.ensemble_accuracy(url, db.STUDY, 3) == pytest.approx(by_hand([20, 21, 22]))
    assert analysis.ensemble_accuracy(url, db.STUDY, 1) == pytest.approx(by_hand([20]))
    assert analysis.ensemble_accuracy(url, db.STUDY, 50) == pytest.approx(by_hand(db.ENSEMBLE))
    with pytest.raises(AnalysisError, match="top_k"):
        analysis.ensemble_accuracy(url, db.STUDY, 0)


def test_results_travel_with_the_database_file(built: Path, tmp_path: Path) -> None:
    """Everything analysis needs is in the database: a lone copy elsewhere gives the same answer."""
    alone = tmp_path / "elsewhere" / "copy.db"
    alone.parent.mkdir()
    shutil.copyfile(built / "nbtl.db", alone)
    here = analysis.compare(f"sqlite:///{built / 'nbtl.db'}", db.STUDY)
    there = analysis.compare(f"sqlite:///{alone}", db.STUDY)
    pd.testing.assert_frame_equal(here, there)
    assert there.iloc[0]["ensemble_size"] == 3


def test_missing_predictions_degrade_only_what_needs_them(built: Path, tmp_path: Path) -> None:
    url = variant(built, tmp_path / "v", "DELETE FROM nbtl_predictions WHERE run_id = 21")
    with pytest.warns(AnalysisWarning, match=r"final run\(s\) 21 have no stored test predictions"):
        row = analysis.compare(url, db.STUDY).iloc[0]
    assert row["ensemble_size"] == 2 and row["ensemble_test_top1"] == pytest.approx(
        by_hand([20, 22])
    )
    assert math.isnan(row["bootstrap_low"])  # needs every final model of both sides
    assert row["ci_low"] > 0 and row["verdict"] == "gain"  # the seeds alone still decide


def test_probe_reads_layers_and_the_suggestion(url: str, built: Path, tmp_path: Path) -> None:
    table = analysis.probe(url, db.STUDY)
    assert list(table["layer"]) == [2, 3] and list(table["fit"]) == [30.0, 15.0]
    assert analysis.probe_summary(url, db.STUDY) == {"logme": -0.5, "suggested.new_layers": 1.0}
    bare = variant(built, tmp_path / "v", "DELETE FROM nbtl_probe")  # no probe has run
    with pytest.raises(AnalysisError, match="no probe yet: run `nbtl-search probe"):
        analysis.probe(bare, db.STUDY)


def test_not_settings_copy_matches_the_trainers_roles() -> None:
    """analysis keeps its own copy of the rule (it never imports trainer); they must agree."""
    from trainer.config import UNHASHED_ROLES, fields_with_role

    assert analysis.load.NOT_SETTINGS == frozenset(fields_with_role(*UNHASHED_ROLES))


def test_error_no_database_file(tmp_path: Path) -> None:
    path = tmp_path / "absent.db"
    with pytest.raises(AnalysisError, match="nbtl-search run"):
        analysis.runs(f"sqlite:///{path}")
    assert not path.exists()  # reading must not create an empty database


def test_error_no_nbtl_tables(tmp_path: Path) -> None:
    with sqlite3.connect(tmp_path / "x.db") as conn:
        conn.execute("CREATE TABLE unrelated (x INTEGER)")
    with pytest.raises(
        AnalysisError,
        match=r"no nbtl tables in sqlite:///.*x\.db: run "
        r"`nbtl-search run STUDY.yaml` first",
    ):
        analysis.compare(f"sqlite:///{tmp_path / 'x.db'}", "demo")


def test_error_unknown_study_lists_studies(url: str) -> None:
    with pytest.raises(AnalysisError, match=r"study 'nope' not found; studies here: demo, other"):
        analysis.ladder(url, "nope")


def test_error_no_default_baseline(built: Path, tmp_path: Path) -> None:
    url = variant(
        built,
        tmp_path / "v",
        "DELETE FROM nbtl_runs WHERE role = 'default'",
        "DELETE FROM nbtl_ladder",
    )
    with pytest.raises(
        AnalysisError,
        match=r"study 'demo' has no default baseline yet: "
        r"run `nbtl-search baseline STUDY.yaml`",
    ):
        analysis.compare(url, db.STUDY)


def test_error_no_complete_search_runs(built: Path, tmp_path: Path) -> None:
    url = variant(
        built,
        tmp_path / "v",
        "DELETE FROM nbtl_ladder",
        "UPDATE nbtl_runs SET state = 'pruned' WHERE role = 'search'",
    )
    for call in (analysis.compare, analysis.figures.history_figure):
        with pytest.raises(AnalysisError, match=r"study 'demo' has no complete search runs"):
            call(url, db.STUDY)


def test_error_no_final_predictions(built: Path, tmp_path: Path) -> None:
    url = variant(built, tmp_path / "v", "DELETE FROM nbtl_predictions")
    with (
        pytest.warns(AnalysisWarning),
        pytest.raises(AnalysisError, match="no complete final runs"),
    ):
        analysis.ensemble_accuracy(url, db.STUDY, 3)


def test_import_loads_no_search_no_torch_and_of_the_trainer_only_its_vocabulary() -> None:
    code = (
        "import sys, analysis; bad = [m for m in sys.modules if m.split('.')[0] in "
        "('nbtl_search', 'torch', 'timm', 'optuna') or (m.startswith('trainer.') and m not in "
        "('trainer.per_part', 'trainer.config', 'trainer.report'))]; print(bad); "
        "sys.exit(1 if bad else 0)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=Path(__file__).parents[2]
    )
    assert done.returncode == 0, done.stdout + done.stderr
