"""The results store: one row per training run and one per epoch, next to Optuna's tables
(the tables and what they hold: `schema`).

Every method is one short transaction, because workers in other processes and on other hosts
write to the same tables concurrently.
"""

from __future__ import annotations

import json
import math
from datetime import datetime, timezone
from typing import Any

import numpy as np
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from trainer.config import config_hash

from .connection import (
    StorageError,
    check_url,
    describe,
    enable_wal,
    engine_kwargs,
    open_rdb,
    require_tables,
)
from .migrations import upgrade
from .schema import (
    FINAL_OF,
    ROLES,
    RUN_STATES,
    epochs_table,
    ladder_table,
    predictions_row,
    predictions_table,
    probe_table,
    runs_table,
)
from .where import host, slurm_job


class ResultStore:
    """Runs and epochs in the tables ``nbtl_runs`` / ``nbtl_epochs`` at one storage URL."""

    def __init__(self, url: str, create: bool = True) -> None:
        """`create=False` (read-only verbs): a database without nbtl's tables is a StorageError,
        and nothing is created. Either way tables written by an older nbtl-search are upgraded
        in place (`migrations`), and a newer one's are refused."""
        check_url(url)
        if not create:
            require_tables(url, runs_table.name)
        self.url = url
        try:
            self._engine = sa.create_engine(url, **engine_kwargs(url))
            upgrade(self._engine)
            if create:
                enable_wal(self._engine)
        except (sa.exc.SQLAlchemyError, ImportError) as error:
            raise StorageError(describe(url, error)) from error

    def start_run(
        self,
        *,
        study: str,
        role: str,
        config: dict[str, Any],
        seed: int,
        device: str,
        trial_number: int | None = None,
        source_run_id: int | None = None,
        final_of: str | None = None,
    ) -> int:
        """Insert a ``running`` run; `dataset` and `model` are read from `config`, the host and
        the Slurm job (if any) from where this process runs (`where`)."""
        if role not in ROLES:
            raise ValueError(f"role must be one of {ROLES}, got {role!r}")
        if final_of is not None and final_of not in FINAL_OF:
            raise ValueError(f"final_of must be one of {FINAL_OF} or None, got {final_of!r}")
        missing = [k for k in ("dataset", "model") if k not in config]
        if missing:
            raise ValueError(f"config lacks {', '.join(missing)}")
        job = slurm_job()
        row = dict(
            study=study,
            role=role,
            trial_number=trial_number,
            dataset=str(config["dataset"]),
            model=str(config["model"]),
            config=json.dumps(config, sort_keys=True),
            config_hash=config_hash(config),
            seed=int(seed),
            state="running",
            epochs_run=0,
            device=device,
            host=host(),
            started_at=_now(),
            source_run_id=source_run_id,
            final_of=final_of,
            slurm_job_id=job and job.job_id,
            slurm_array_job_id=job and job.array_job_id,
            slurm_array_task_id=job and job.array_task_id,
        )
        with self._engine.begin() as conn:
            return int(conn.execute(runs_table.insert().values(**row)).inserted_primary_key[0])

    def add_epoch(
        self,
        run_id: int,
        *,
        epoch: int,
        train_loss: float | None,
        val_loss: float | None,
        val_top1: float | None,
        val_top5: float | None,
        lrs: list[float] | tuple[float, ...],
        penalty: float | None,
        seconds: float | None,
    ) -> None:
        """Record one epoch; reporting the same epoch again (a resumed run) replaces it."""
        values = dict(
            train_loss=_float(train_loss),
            val_loss=_float(val_loss),
            val_top1=_float(val_top1),
            val_top5=_float(val_top5),
            lrs=json.dumps([float(v) for v in lrs]),
            penalty=_float(penalty),
            seconds=_float(seconds),
        )
        dialect = sqlite if self._engine.dialect.name == "sqlite" else postgresql
        insert = dialect.insert(epochs_table).values(run_id=run_id, epoch=epoch, **values)
        upsert = insert.on_conflict_do_update(index_elements=["run_id", "epoch"], set_=values)
        with self._engine.begin() as conn:
            conn.execute(upsert)

    def finish_run(
        self,
        run_id: int,
        *,
        state: str,
        val_top1: float | None = None,
        best_epoch: int | None = None,
        epochs_run: int | None = None,
        test_top1: float | None = None,
        test_top5: float | None = None,
        wall_s: float | None = None,
        images_per_s: float | None = None,
        error: str | None = None,
    ) -> None:
        """Mark a run finished. Values left None keep the row's, except that `val_top1`,
        `best_epoch` and `epochs_run` default to what its stored epochs say: a pruned or failed
        run reports how far it got without the caller keeping count."""
        if state not in RUN_STATES or state == "running":
            raise ValueError(f"state must be one of {RUN_STATES[1:]}, got {state!r}")
        values = {
            k: v
            for k, v in dict(
                val_top1=_float(val_top1),
                best_epoch=best_epoch,
                epochs_run=epochs_run,
                test_top1=_float(test_top1),
                test_top5=_float(test_top5),
                wall_s=_float(wall_s),
                images_per_s=_float(images_per_s),
                error=error,
            ).items()
            if v is not None
        }
        if not self._finish(run_id, state, values, only_running=False):
            raise ValueError(f"no run with id {run_id} in {self.url}")

    def mark_lost(self, run_id: int, error: str) -> bool:
        """Fail a run still ``running`` whose worker died (Optuna failed its trial for a stale
        heartbeat). A run that finished meanwhile keeps its state. True if the row changed."""
        return self._finish(run_id, "failed", {"error": error}, only_running=True)

    def _finish(self, run_id: int, state: str, values: dict[str, Any], only_running: bool) -> bool:
        with self._engine.begin() as conn:
            columns = sa.select(epochs_table.c.epoch, epochs_table.c.val_top1)
            done = conn.execute(columns.where(epochs_table.c.run_id == run_id)).all()
            scored = sorted((epoch, top1) for epoch, top1 in done if top1 is not None)
            if scored and "val_top1" not in values:
                best_epoch, values["val_top1"] = max(scored, key=lambda pair: pair[1])
                values.setdefault("best_epoch", best_epoch)  # max(): the first epoch wins a tie
            values.setdefault("epochs_run", len(done))
            update = runs_table.update().where(runs_table.c.id == run_id)
            if only_running:
                update = update.where(runs_table.c.state == "running")
            result = conn.execute(update.values(state=state, finished_at=_now(), **values))
            return result.rowcount > 0

    def save_predictions(self, run_id: int, probs: np.ndarray, labels: np.ndarray) -> None:
        """Store a final run's test softmax and labels (`schema.predictions_row`); a rerun
        replaces them."""
        row = predictions_row(probs, labels)
        with self._engine.begin() as conn:
            conn.execute(predictions_table.delete().where(predictions_table.c.run_id == run_id))
            conn.execute(predictions_table.insert().values(run_id=run_id, **row))

    def replace_probe(self, study: str, rows: list[dict[str, Any]]) -> None:
        """The study's probe (`layer`, `layer_name`, `score`, `value` rows), replacing the last."""
        now = _now()
        with self._engine.begin() as conn:
            conn.execute(probe_table.delete().where(probe_table.c.study == study))
            if rows:
                conn.execute(
                    probe_table.insert(),
                    [dict(r, study=study, value=_float(r["value"]), created_at=now) for r in rows],
                )

    def probe(self, study: str) -> list[dict[str, Any]]:
        query = (
            sa.select(probe_table).where(probe_table.c.study == study).order_by(probe_table.c.id)
        )
        with self._engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(query)]

    def replace_ladder(self, study: str, rungs: list[dict[str, Any]]) -> None:
        """The study's ladder, in order (position 0 = the best default), replacing the old one."""
        now = _now()
        rows = [
            dict(
                study=study,
                position=i,
                rung=r["rung"],
                adds=r.get("adds", ""),
                config=json.dumps(r["config"], sort_keys=True),
                config_hash=config_hash(r["config"]),
                source_run_id=r.get("source_run_id"),
                val_top1=_float(r.get("val_top1")),
                val_mean=_float(r.get("val_mean")),
                val_n=r.get("val_n"),
                notes=json.dumps(list(r.get("notes", ()))),
                created_at=now,
            )
            for i, r in enumerate(rungs)
        ]
        with self._engine.begin() as conn:
            conn.execute(ladder_table.delete().where(ladder_table.c.study == study))
            if rows:
                conn.execute(ladder_table.insert(), rows)

    def ladder(self, study: str) -> list[dict[str, Any]]:
        query = sa.select(ladder_table).where(ladder_table.c.study == study)
        rows = self._rows(query.order_by(ladder_table.c.position), json_column="config")
        for row in rows:
            row["notes"] = json.loads(row["notes"])
        return rows

    def runs(self, study: str | None = None, role: str | None = None) -> list[dict[str, Any]]:
        """Runs in id order, optionally of one study and/or role; ``config`` parsed to a dict."""
        query = sa.select(runs_table).order_by(runs_table.c.id)
        if study is not None:
            query = query.where(runs_table.c.study == study)
        if role is not None:
            query = query.where(runs_table.c.role == role)
        return self._rows(query, json_column="config")

    def epochs(self, run_id: int) -> list[dict[str, Any]]:
        """Epochs of one run in epoch order; ``lrs`` parsed to a list."""
        query = sa.select(epochs_table).where(epochs_table.c.run_id == run_id)
        query = query.order_by(epochs_table.c.epoch)
        return self._rows(query, json_column="lrs")

    def _rows(self, query: sa.Select, json_column: str) -> list[dict[str, Any]]:
        with self._engine.connect() as conn:
            rows = [dict(r._mapping) for r in conn.execute(query)]
        for row in rows:
            row[json_column] = json.loads(row[json_column])
        return rows

    def close(self) -> None:
        self._engine.dispose()


def ensure_schema(url: str) -> None:
    """Create Optuna's and nbtl's tables at `url` once, before workers open it concurrently."""
    open_rdb(url, heartbeat=False).engine.dispose()
    ResultStore(url).close()


def _float(value: float | None) -> float | None:
    # SQLite turns NaN into NULL, PostgreSQL keeps it: NULL on both reads the same everywhere.
    if value is None or math.isnan(float(value)):
        return None
    return float(value)


def _now() -> datetime:
    return datetime.now(timezone.utc)
