"""The version of nbtl's tables, and the upgrade of an older database in place.

The idea is Optuna's own (a version table and Alembic migrations), small enough to read at once:
`nbtl_schema` holds one row with the version the tables follow; each version after the first has a
step in `STEPS` that brings a database from the version before it. Opening a database (`upgrade`)
creates what is missing, runs the steps it lacks in one exclusive transaction (a SQLite write lock
taken up front, `BEGIN IMMEDIATE`; a PostgreSQL transaction-level advisory lock), and refuses a
database written by a newer nbtl-search rather than misread it.

Versions:

1. the first releases: no `nbtl_schema` table; a final run's test predictions could live in a file
   named by `nbtl_runs.predictions_path` instead of `nbtl_predictions`.
2. `nbtl_schema`; every final run's predictions in `nbtl_predictions` (the files named by
   `predictions_path` are read into it, relative to a SQLite file's folder) and
   `predictions_path` dropped.
3. configs as this release trains them: a config written before weight decay had its own switches
   for norm parameters and biases (`wd_bn`, `wd_bias`) had `reg_bn`/`reg_bias` decide weight decay
   too, so the new switches take their values; every `config_hash` is recomputed by
   `trainer.config.config_hash`, which now leaves out fields at their default (so a field added
   later never changes a stored hash again).
4. `nbtl_runs.slurm_job_id`, `slurm_array_job_id`, `slurm_array_task_id`: the Slurm job a run ran
   in (NULL for runs outside Slurm, and for every run of an older database).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import sqlalchemy as sa

from trainer.config import config_hash

from .connection import StorageError
from .schema import (
    SCHEMA_VERSION,
    ladder_table,
    metadata,
    predictions_row,
    predictions_table,
    runs_table,
    version_table,
)

FIRST = 1  # a database with nbtl's tables and no version table
_LOCK_KEY = int.from_bytes(hashlib.sha256(b"nbtl:schema").digest()[:8], "big", signed=True)


def version(conn: sa.Connection) -> int | None:
    """The version of the tables at `conn`: None for a database without nbtl's tables."""
    inspector = sa.inspect(conn)
    if inspector.has_table(version_table.name):
        found = conn.execute(sa.select(sa.func.max(version_table.c.version))).scalar()
        if found is not None:
            return int(found)
    return FIRST if inspector.has_table(runs_table.name) else None


def upgrade(engine: sa.Engine) -> None:
    """Bring the database to `SCHEMA_VERSION` (a new one is created at it); cheap when it is
    already there. A database from a newer nbtl-search is a `StorageError`."""
    with engine.connect() as conn:
        if _check(engine, version(conn)) == SCHEMA_VERSION:
            return
    with _exclusive(engine) as conn:
        found = _check(engine, version(conn))  # again: another process may have upgraded it
        if found == SCHEMA_VERSION:
            return
        metadata.create_all(conn, checkfirst=True)  # tables that did not exist yet
        for step in range(found or SCHEMA_VERSION, SCHEMA_VERSION):
            STEPS[step + 1](conn, engine.url)
        conn.execute(version_table.delete())
        conn.execute(version_table.insert().values(version=SCHEMA_VERSION, upgraded_at=_now()))


def _check(engine: sa.Engine, found: int | None) -> int | None:
    if found is not None and found > SCHEMA_VERSION:
        raise StorageError(
            f"the tables at '{engine.url.render_as_string(hide_password=True)}' were "
            f"written by a newer nbtl-search (schema {found}; this one knows up to "
            f"{SCHEMA_VERSION}): upgrade nbtl-search to read them"
        )
    return found


@contextmanager
def _exclusive(engine: sa.Engine) -> Iterator[sa.Connection]:
    """One transaction that no other process's upgrade runs beside."""
    if engine.dialect.name == "sqlite":
        # pysqlite would open its own deferred transaction; take the write lock up front instead
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.exec_driver_sql("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.exec_driver_sql("ROLLBACK")
                raise
            conn.exec_driver_sql("COMMIT")
    else:
        with engine.begin() as conn:
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": _LOCK_KEY})
            yield conn


def _to_2(conn: sa.Connection, url: sa.URL) -> None:
    """Read the prediction files of version 1 into `nbtl_predictions`; drop `predictions_path`."""
    columns = {c["name"] for c in sa.inspect(conn).get_columns(runs_table.name)}
    if "predictions_path" not in columns:
        return
    folder = (
        Path(os.path.expanduser(url.database)).parent
        if url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:")
        else Path.cwd()
    )
    stored = set(conn.execute(sa.select(predictions_table.c.run_id)).scalars())
    rows = conn.execute(
        sa.text("SELECT id, predictions_path FROM nbtl_runs WHERE predictions_path IS NOT NULL")
    ).all()
    for run_id, rel in rows:
        path = Path(rel) if Path(rel).is_absolute() else folder / rel
        if run_id in stored or not path.is_file():
            continue  # a missing file leaves the run without predictions, as it was before
        with np.load(path, allow_pickle=False) as npz:
            row = predictions_row(npz["probs"], npz["labels"])
        conn.execute(predictions_table.insert().values(run_id=run_id, **row))
    conn.exec_driver_sql("ALTER TABLE nbtl_runs DROP COLUMN predictions_path")


def _to_3(conn: sa.Connection, url: sa.URL) -> None:
    """Rewrite each stored config as this release reads it (module docstring, version 3)."""
    for table in (runs_table, ladder_table):
        rows = conn.execute(sa.select(table.c.id, table.c.config, table.c.config_hash)).all()
        for row_id, text, old_hash in rows:
            config = json.loads(text)
            for wd, reg in (("wd_bn", "reg_bn"), ("wd_bias", "reg_bias")):
                config.setdefault(wd, bool(config.get(reg, False)))
            values = {
                "config": json.dumps(config, sort_keys=True),
                "config_hash": config_hash(config),
            }
            if values["config"] != text or values["config_hash"] != old_hash:
                conn.execute(table.update().where(table.c.id == row_id).values(**values))


SLURM_COLUMNS = ("slurm_job_id", "slurm_array_job_id", "slurm_array_task_id")


def _to_4(conn: sa.Connection, url: sa.URL) -> None:
    """Add the Slurm ids of a run (NULL: not known for the runs before)."""
    columns = {c["name"] for c in sa.inspect(conn).get_columns(runs_table.name)}
    for name in SLURM_COLUMNS:
        if name not in columns:
            conn.exec_driver_sql(f"ALTER TABLE nbtl_runs ADD COLUMN {name} INTEGER")


STEPS: dict[int, Callable[[sa.Connection, sa.URL], None]] = {2: _to_2, 3: _to_3, 4: _to_4}


def _now() -> datetime:
    return datetime.now(timezone.utc)
