"""Opening Optuna's storage: clear errors, the start-up race, heartbeats and retries."""

from __future__ import annotations

import multiprocessing as mp
import warnings

import optuna
import pytest
import sqlalchemy as sa

from nbtl_search.store.connection import StorageError, engine_kwargs, masked, open_rdb
from nbtl_search.store.results import ResultStore, ensure_schema

optuna.logging.set_verbosity(optuna.logging.WARNING)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("", "malformed storage URL"),
        ("nbtl.db", "malformed storage URL 'nbtl.db'"),
        ("http://example.com/db", "unsupported storage URL 'http://example.com/db'"),
        ("sqlite:///no/such/folder/nbtl.db", "folder .*no/such/folder does not exist"),
    ],
)
def test_bad_url_is_one_clear_line(url: str, expected: str) -> None:
    for opener in (open_rdb, ResultStore):
        with pytest.raises(StorageError, match=expected) as info:
            opener(url)
        assert "\n" not in str(info.value)


def test_a_file_that_is_no_database_is_named(tmp_path) -> None:
    (tmp_path / "notes.db").write_text("not a database\n")
    for opener in (open_rdb, ResultStore):
        with pytest.raises(StorageError, match="notes.db': file is not a database$"):
            opener(f"sqlite:///{tmp_path / 'notes.db'}")


def test_unreachable_postgres_fails_with_one_line_and_no_password() -> None:
    url = "postgresql+psycopg://nbtl:s3cret@127.0.0.1:1/nbtl"
    for opener in (open_rdb, ResultStore):
        with pytest.raises(StorageError) as info:
            opener(url)
        message = str(info.value)
        assert message.startswith("cannot open storage 'postgresql+psycopg://nbtl:***@127.0.0.1:1/")
        assert "refused" in message.lower() and "\n" not in message and "s3cret" not in message


def test_connections_wait_a_bounded_time_and_url_settings_win() -> None:
    # A host that drops packets would otherwise hang a worker for the OS's TCP timeout.
    assert engine_kwargs("postgresql://u@db.example/x")["connect_args"]["connect_timeout"] > 0
    assert engine_kwargs("postgresql://u@h/x?connect_timeout=3")["connect_args"] == {}
    # SQLite: a second writer waits for the lock instead of failing at once.
    assert engine_kwargs("sqlite:///nbtl.db")["connect_args"]["timeout"] >= 10


def test_open_rdb_warns_nothing_and_leaves_retries_to_the_queue(storage_url: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no FutureWarning (deprecated API), no experimental noise
        storage = open_rdb(storage_url, heartbeat_interval=5, grace_period=20)
    assert (storage.heartbeat_interval, storage.grace_period) == (5, 20)
    # Optuna's stale-trial callback would re-queue a lost trial once per worker that notices it;
    # nbtl_search.queue re-queues it once, under the study lock
    assert storage.get_heartbeat_stale_trial_callback() is None
    assert open_rdb(storage_url, heartbeat=False).get_heartbeat_interval() is None
    with pytest.raises(ValueError, match="grace_period must exceed"):
        open_rdb(storage_url, heartbeat_interval=10, grace_period=10)


def test_ensure_schema_creates_every_table_once(storage_url: str) -> None:
    ensure_schema(storage_url)
    ensure_schema(storage_url)  # a second launcher on the same database
    engine = sa.create_engine(storage_url)
    try:
        tables = set(sa.inspect(engine).get_table_names())
        if engine.dialect.name == "sqlite":
            with engine.connect() as conn:  # readers must not block the workers' writes
                assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
    finally:
        engine.dispose()
    assert {"studies", "trials", "alembic_version", "nbtl_runs", "nbtl_epochs"} <= tables


def _join_study(url: str, barrier) -> None:
    barrier.wait(timeout=60)  # every process opens the fresh database at the same moment
    storage = open_rdb(url)
    optuna.create_study(study_name="race", storage=storage, load_if_exists=True)
    ResultStore(url).close()


def test_workers_opening_a_fresh_database_together_all_start(storage_url: str) -> None:
    # Plain RDBStorage in this setup: 9 of 10 rounds on SQLite and 10 of 10 on PostgreSQL had a
    # crashed process (see the report); open_rdb retries the schema-creation errors.
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(6)
    procs = [ctx.Process(target=_join_study, args=(storage_url, barrier)) for _ in range(6)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    assert [p.exitcode for p in procs] == [0] * 6
    assert optuna.get_all_study_names(open_rdb(storage_url, heartbeat=False)) == ["race"]


def _open_store(url: str, barrier) -> None:
    barrier.wait(timeout=60)
    ResultStore(url).close()


def test_workers_opening_an_older_database_together_upgrade_it_once(
    storage_url: str, tmp_path
) -> None:
    """A database of the first releases (schema 1), opened by six workers at the same moment:
    every worker starts, the prediction file is read in exactly once, the version is current."""
    import json
    from datetime import datetime, timezone

    import numpy as np

    from nbtl_search.store import migrations, schema
    from tests.analysis import legacy_v1

    engine = sa.create_engine(storage_url)
    legacy_v1.metadata.create_all(engine)
    probs = np.full((3, 2), 0.5, dtype=np.float32)
    np.savez(tmp_path / "run1.npz", probs=probs, labels=np.array([0, 1, 1]))
    now = datetime.now(timezone.utc)
    with engine.begin() as conn:
        conn.execute(
            legacy_v1.runs_table.insert().values(
                id=1,
                study="s",
                role="final",
                dataset="digits",
                model="m",
                config=json.dumps({}),
                config_hash="h",
                seed=0,
                state="complete",
                epochs_run=1,
                device="cpu",
                host="h",
                started_at=now,
                predictions_path=str(tmp_path / "run1.npz"),
            )
        )
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(6)
    procs = [ctx.Process(target=_open_store, args=(storage_url, barrier)) for _ in range(6)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    try:
        assert [p.exitcode for p in procs] == [0] * 6
        with engine.connect() as conn:
            assert migrations.version(conn) == schema.SCHEMA_VERSION
            assert conn.execute(sa.text("SELECT count(*) FROM nbtl_schema")).scalar() == 1
            assert conn.execute(sa.text("SELECT run_id FROM nbtl_predictions")).all() == [(1,)]
    finally:
        engine.dispose()


def test_read_only_opening_creates_nothing(tmp_path, storage_url: str) -> None:
    missing = f"sqlite:///{tmp_path / 'nope.db'}"
    for opener in (
        lambda u: open_rdb(u, heartbeat=False, create=False),
        lambda u: ResultStore(u, create=False),
    ):
        with pytest.raises(StorageError, match="no database at"):
            opener(missing)
        assert not (tmp_path / "nope.db").exists()
    engine = sa.create_engine(storage_url)
    try:
        engine.connect().close()  # an empty database (SQLite: an empty file)
        for opener in (
            lambda u: open_rdb(u, heartbeat=False, create=False),
            lambda u: ResultStore(u, create=False),
        ):
            with pytest.raises(StorageError, match="no nbtl-search study in"):
                opener(storage_url)
        assert sa.inspect(engine).get_table_names() == []  # still empty afterwards
    finally:
        engine.dispose()


def test_masked_hides_the_password() -> None:
    assert (
        masked("postgresql+psycopg://user:s3cret@db:5432/x")
        == "postgresql+psycopg://user:***@db:5432/x"
    )
    assert "s3cret" not in masked("postgresql://user:s3cret@db/x?sslmode=require")
    assert masked("sqlite:///nbtl.db") == "sqlite:///nbtl.db"
