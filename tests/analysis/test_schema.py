"""The schema is a contract (analysis, notebooks and users' SQL read it by name), so it changes only
with a new version and a migration; a database written by the previous release is upgraded in place
and gives the same answers."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import sqlalchemy as sa

import analysis
from nbtl_search.store import migrations, schema
from nbtl_search.store.results import ResultStore
from tests.analysis import db

# Every column of every table at SCHEMA_VERSION: (name, type, nullable). Changing a table means:
# raise SCHEMA_VERSION, add its step to migrations.STEPS, update this list and analysis' copy.
COLUMNS = {
    "nbtl_runs": [
        ("id", "INTEGER", False),
        ("study", "VARCHAR", False),
        ("role", "VARCHAR", False),
        ("trial_number", "INTEGER", True),
        ("dataset", "VARCHAR", False),
        ("model", "VARCHAR", False),
        ("config", "TEXT", False),
        ("config_hash", "VARCHAR", False),
        ("seed", "INTEGER", False),
        ("state", "VARCHAR", False),
        ("val_top1", "FLOAT", True),
        ("best_epoch", "INTEGER", True),
        ("epochs_run", "INTEGER", False),
        ("test_top1", "FLOAT", True),
        ("test_top5", "FLOAT", True),
        ("wall_s", "FLOAT", True),
        ("images_per_s", "FLOAT", True),
        ("device", "VARCHAR", False),
        ("host", "VARCHAR", False),
        ("error", "TEXT", True),
        ("started_at", "DATETIME", False),
        ("finished_at", "DATETIME", True),
        ("source_run_id", "INTEGER", True),
        ("final_of", "VARCHAR", True),
        ("slurm_job_id", "INTEGER", True),
        ("slurm_array_job_id", "INTEGER", True),
        ("slurm_array_task_id", "INTEGER", True),
    ],
    "nbtl_epochs": [
        ("id", "INTEGER", False),
        ("run_id", "INTEGER", False),
        ("epoch", "INTEGER", False),
        ("train_loss", "FLOAT", True),
        ("val_loss", "FLOAT", True),
        ("val_top1", "FLOAT", True),
        ("val_top5", "FLOAT", True),
        ("lrs", "TEXT", False),
        ("penalty", "FLOAT", True),
        ("seconds", "FLOAT", True),
    ],
    "nbtl_ladder": [
        ("id", "INTEGER", False),
        ("study", "VARCHAR", False),
        ("position", "INTEGER", False),
        ("rung", "VARCHAR", False),
        ("adds", "TEXT", False),
        ("config", "TEXT", False),
        ("config_hash", "VARCHAR", False),
        ("source_run_id", "INTEGER", True),
        ("val_top1", "FLOAT", True),
        ("val_mean", "FLOAT", True),
        ("val_n", "INTEGER", True),
        ("notes", "TEXT", False),
        ("created_at", "DATETIME", False),
    ],
    "nbtl_probe": [
        ("id", "INTEGER", False),
        ("study", "VARCHAR", False),
        ("layer", "INTEGER", True),
        ("layer_name", "VARCHAR", True),
        ("score", "VARCHAR", False),
        ("value", "FLOAT", True),
        ("created_at", "DATETIME", False),
    ],
    "nbtl_predictions": [
        ("run_id", "INTEGER", False),
        ("n_images", "INTEGER", False),
        ("n_classes", "INTEGER", False),
        ("npz", "BLOB", False),
    ],
    "nbtl_schema": [("version", "INTEGER", False), ("upgraded_at", "DATETIME", False)],
}


def test_every_column_is_the_versioned_contract(tmp_path: Path) -> None:
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'x.db'}")
    migrations.upgrade(engine)
    inspector = sa.inspect(engine)
    found = {
        table: [(c["name"], str(c["type"]), c["nullable"]) for c in inspector.get_columns(table)]
        for table in inspector.get_table_names()
    }
    assert found == COLUMNS, "schema changed: bump SCHEMA_VERSION, add a migration step"
    with engine.connect() as conn:
        assert migrations.version(conn) == schema.SCHEMA_VERSION
    assert analysis.load.SCHEMA_VERSION == schema.SCHEMA_VERSION
    assert set(migrations.STEPS) == set(range(2, schema.SCHEMA_VERSION + 1))


def test_analysis_reads_only_the_tables_the_orchestrator_writes() -> None:
    from analysis import load

    for table in (load.RUNS, load.EPOCHS, load.LADDER, load.PREDICTIONS, load.VERSION):
        assert isinstance(schema.metadata.tables[table], sa.Table)


def _same(a: pd.DataFrame, b: pd.DataFrame) -> None:
    assert list(a.columns) == list(b.columns)
    for col in a.columns:
        for x, y in zip(a[col], b[col]):
            both_nan = (
                isinstance(x, float) and isinstance(y, float) and math.isnan(x) and math.isnan(y)
            )
            assert both_nan or x == y, (col, x, y)


def test_a_previous_release_database_is_upgraded_in_place(tmp_path: Path) -> None:
    old = db.build(tmp_path / "v1", version=1)
    new = db.build(tmp_path / "v2")
    try:
        analysis.compare(old, db.STUDY)
        raise AssertionError("analysis must refuse tables it does not know yet")
    except analysis.AnalysisError as e:
        assert "older nbtl-search" in str(e) and "upgrades them in place" in str(e)
    ResultStore(old, create=False).close()  # what every nbtl-search verb does on opening
    _same(analysis.compare(old, db.STUDY), analysis.compare(new, db.STUDY))
    _same(analysis.ladder(old, db.STUDY), analysis.ladder(new, db.STUDY))
    engine = sa.create_engine(old)
    with engine.connect() as conn:
        assert migrations.version(conn) == schema.SCHEMA_VERSION
        columns = {c["name"] for c in sa.inspect(conn).get_columns("nbtl_runs")}
        stored = conn.execute(sa.text("SELECT count(*) FROM nbtl_predictions")).scalar()
    assert "predictions_path" not in columns
    assert stored == len([f for f in db.FINALS if f[4] == "complete"])  # the files were read in
    ResultStore(old).close()  # opening it again changes nothing
    _same(analysis.compare(old, db.STUDY), analysis.compare(new, db.STUDY))


def test_old_configs_are_read_as_this_release_trains_them(tmp_path: Path) -> None:
    """Before wd_bn/wd_bias existed, reg_bn/reg_bias decided weight decay too (schema step 3)."""
    from trainer.config import config_hash

    old = db.build(tmp_path / "v1", version=1)
    engine = sa.create_engine(old)
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "UPDATE nbtl_runs SET config = json_set(config, '$.reg_bn', json('true')) WHERE id = 2"
            )
        )
    ResultStore(old).close()
    runs = {r["id"]: r for r in ResultStore(old).runs()}
    assert runs[2]["config"]["wd_bn"] is True and runs[2]["config"]["reg_bn"] is True
    assert runs[1]["config"]["wd_bn"] is False and runs[1]["config"]["wd_bias"] is False
    assert all(r["config_hash"] == config_hash(r["config"]) for r in runs.values())


def test_a_newer_database_is_refused(tmp_path: Path) -> None:
    url = db.build(tmp_path / "v")
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE nbtl_schema SET version = version + 1"))
    try:
        ResultStore(url, create=False)
        raise AssertionError("a newer schema must be refused")
    except Exception as e:  # StorageError
        assert "newer nbtl-search" in str(e), e
    try:
        analysis.runs(url, db.STUDY)
        raise AssertionError("a newer schema must be refused")
    except analysis.AnalysisError as e:
        assert "newer nbtl-search" in str(e)
