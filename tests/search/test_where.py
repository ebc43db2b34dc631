"""Where a run ran: its host and Slurm job, in `nbtl_runs` (schema 4) and beside each trial in
`status`; and a second stop signal that must not break off the first one's work."""

from __future__ import annotations

import signal

import pytest
import sqlalchemy as sa

from nbtl_search.run.signals import Stopped, stop_on_signals, stop_requested
from nbtl_search.store import migrations, schema
from nbtl_search.store.results import ResultStore
from nbtl_search.store.where import SlurmJob, slurm_job
from nbtl_search.ui.status import _where

CONFIG = {"dataset": "digits", "model": "test_resnet", "lrs": [0.1]}


def test_the_slurm_job_comes_from_the_environment() -> None:
    assert slurm_job({}) is None
    task = slurm_job({"SLURM_JOB_ID": "12", "SLURM_ARRAY_JOB_ID": "10", "SLURM_ARRAY_TASK_ID": "2"})
    assert task == SlurmJob(12, 10, 2) and task.label == "10_2"
    assert slurm_job({"SLURM_JOB_ID": "7"}).label == "7"


def test_each_run_records_its_slurm_job(storage_url: str, monkeypatch) -> None:
    store = ResultStore(storage_url)
    outside = store.start_run(study="s", role="search", config=CONFIG, seed=0, device="cpu")
    monkeypatch.setenv("SLURM_JOB_ID", "12")
    monkeypatch.setenv("SLURM_ARRAY_JOB_ID", "10")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "2")
    inside = store.start_run(study="s", role="search", config=CONFIG, seed=0, device="cpu")
    runs = {r["id"]: r for r in store.runs(study="s")}
    store.close()
    ids = ("slurm_job_id", "slurm_array_job_id", "slurm_array_task_id")
    assert [runs[outside][k] for k in ids] == [None, None, None]
    assert [runs[inside][k] for k in ids] == [12, 10, 2]
    assert runs[inside]["host"]


def test_a_version_3_database_gains_the_slurm_columns(storage_url: str) -> None:
    """Schema 3 -> 4 in place: the three columns are added, the rows keep their values (NULL
    for the new ones), and the version says 4."""
    store = ResultStore(storage_url)
    run_id = store.start_run(study="s", role="search", config=CONFIG, seed=0, device="cpu")
    store.close()
    engine = sa.create_engine(storage_url)
    with engine.begin() as conn:  # back to what schema 3 wrote
        for name in migrations.SLURM_COLUMNS:
            conn.exec_driver_sql(f"ALTER TABLE nbtl_runs DROP COLUMN {name}")
        conn.execute(sa.text("UPDATE nbtl_schema SET version = 3"))
    ResultStore(storage_url, create=False).close()  # what every verb does on opening
    with engine.connect() as conn:
        assert migrations.version(conn) == schema.SCHEMA_VERSION == 4
        columns = {c["name"] for c in sa.inspect(conn).get_columns("nbtl_runs")}
        row = conn.execute(sa.text(f"SELECT * FROM nbtl_runs WHERE id = {run_id}")).mappings().one()
    engine.dispose()
    assert set(migrations.SLURM_COLUMNS) <= columns
    assert row["study"] == "s" and row["slurm_job_id"] is None


def test_status_shows_where_each_trial_ran() -> None:
    class Trial:
        def __init__(self, **user_attrs):
            self.user_attrs = user_attrs

    assert _where(Trial()) == "-"  # waiting: nowhere yet
    assert _where(Trial(nbtl_worker="node7:4242")) == "node7"
    assert _where(Trial(nbtl_worker="node7:4242", nbtl_slurm_job="10_2")) == "node7 10_2"


def test_a_second_stop_signal_does_not_interrupt_the_first() -> None:
    """scancel signals every process of a job and the batch script passes the stop on: a worker
    gets SIGTERM twice, and the second must not break off the marking of its trial."""
    marked = False
    with pytest.raises(Stopped, match="SIGTERM"), stop_on_signals():
        try:
            signal.raise_signal(signal.SIGTERM)
        except Stopped:
            signal.raise_signal(signal.SIGTERM)  # arrives while the trial is being marked
            marked = True
            raise
    assert marked and stop_requested() == "SIGTERM"
