"""The results schema: nbtl's tables, next to Optuna's in the same database.

The schema is a contract: `analysis/`, notebooks and users' own SQL read these names directly.
- ``nbtl_runs``: one row per run (search trial, default-grid point, re-ranking run or final
  retraining), written when the run starts and completed when it ends, so a crashed, pruned or
  failed run keeps its row and its epochs.
- ``nbtl_epochs``: the per-epoch metrics of a run, unique per (run_id, epoch).
- ``nbtl_ladder``: the configs `final` selected and retrained, one row per rung, from the best
  default to the optimum (the runs of a rung are the final runs with its ``config_hash``).
- ``nbtl_predictions``: a final run's test softmax and labels (compressed ``.npz`` bytes), so that
  every figure can be computed by anyone who can open the URL, on any host or a copy of the file.
- ``nbtl_probe``: the latest transferability probe of a study: per-layer and model-level scores and
  the settings they suggest, one value per row.
- ``nbtl_schema``: one row, the version of these tables (`SCHEMA_VERSION`); `migrations` upgrades
  an older database in place and refuses a newer one.

``config`` and ``lrs`` are JSON text (portable, and read by pandas as is); NaN metrics are
stored as NULL; times are UTC (PostgreSQL ``timestamptz``; SQLite keeps them without offset).
"""

from __future__ import annotations

import io
from datetime import datetime, timezone
from typing import Any

import numpy as np
import sqlalchemy as sa

SCHEMA_VERSION = 4  # raise it with a step in `migrations.STEPS` whenever a table changes
RUN_STATES = ("running", "complete", "pruned", "failed")
ROLES = ("search", "default", "rerank", "final")
FINAL_OF = ("search", "default", "ladder")


class UTCDateTime(sa.types.TypeDecorator):
    """A timezone-aware UTC datetime on every backend (SQLite keeps no offset: stored as UTC)."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"datetime must be timezone-aware, got {value!r}")
        value = value.astimezone(timezone.utc)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None or value.tzinfo is None:  # SQLite: the stored value is UTC
            return value and value.replace(tzinfo=timezone.utc)
        return value.astimezone(timezone.utc)


metadata = sa.MetaData()

# Explicit columns: this is the contract that analysis/ and users' SQL read.
runs_table = sa.Table(
    "nbtl_runs",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("study", sa.String, nullable=False),
    sa.Column("role", sa.String, nullable=False),  # ROLES
    sa.Column("trial_number", sa.Integer),
    sa.Column("dataset", sa.String, nullable=False),
    sa.Column("model", sa.String, nullable=False),
    sa.Column("config", sa.Text, nullable=False),  # JSON of TrainConfig.to_dict()
    sa.Column("config_hash", sa.String, nullable=False),
    sa.Column("seed", sa.Integer, nullable=False),
    sa.Column("state", sa.String, nullable=False),  # RUN_STATES
    sa.Column("val_top1", sa.Float),  # best over the epochs
    sa.Column("best_epoch", sa.Integer),
    sa.Column("epochs_run", sa.Integer, nullable=False, default=0),
    sa.Column("test_top1", sa.Float),
    sa.Column("test_top5", sa.Float),
    sa.Column("wall_s", sa.Float),
    sa.Column("images_per_s", sa.Float),
    sa.Column("device", sa.String, nullable=False),
    sa.Column("host", sa.String, nullable=False),
    sa.Column("error", sa.Text),
    sa.Column("started_at", UTCDateTime, nullable=False),
    sa.Column("finished_at", UTCDateTime),
    sa.Column(
        "source_run_id", sa.Integer
    ),  # rerank and final runs: the run whose config they rerun
    sa.Column("final_of", sa.String),  # final runs: FINAL_OF
    # inside a Slurm job (`where.slurm_job`): the job's own id, and for an array task its array's
    # id and index; NULL elsewhere
    sa.Column("slurm_job_id", sa.Integer),
    sa.Column("slurm_array_job_id", sa.Integer),
    sa.Column("slurm_array_task_id", sa.Integer),
    sa.Index("ix_nbtl_runs_study_role", "study", "role"),
)

epochs_table = sa.Table(
    "nbtl_epochs",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("run_id", sa.Integer, sa.ForeignKey("nbtl_runs.id"), nullable=False, index=True),
    sa.Column("epoch", sa.Integer, nullable=False),
    sa.Column("train_loss", sa.Float),
    sa.Column("val_loss", sa.Float),
    sa.Column("val_top1", sa.Float),
    sa.Column("val_top5", sa.Float),
    sa.Column("lrs", sa.Text, nullable=False),  # JSON list [new, upper, lower]
    sa.Column("penalty", sa.Float),
    sa.Column("seconds", sa.Float),
    sa.UniqueConstraint("run_id", "epoch", name="uq_nbtl_epochs_run_epoch"),
)

ladder_table = sa.Table(
    "nbtl_ladder",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("study", sa.String, nullable=False, index=True),
    sa.Column("position", sa.Integer, nullable=False),  # 0 = the best default
    sa.Column("rung", sa.String, nullable=False),
    sa.Column(
        "adds", sa.Text, nullable=False
    ),  # the settings this rung changes, "" for the default
    sa.Column("config", sa.Text, nullable=False),  # JSON of the rung's TrainConfig (train split)
    sa.Column("config_hash", sa.String, nullable=False),
    sa.Column("source_run_id", sa.Integer),  # the selected trial's run (default and optimum)
    sa.Column("val_top1", sa.Float),  # that trial's own validation value
    sa.Column("val_mean", sa.Float),  # mean over the trial and its re-ranking runs
    sa.Column("val_n", sa.Integer),
    sa.Column(
        "notes", sa.Text, nullable=False
    ),  # JSON list, e.g. "lr 0.3 is the largest value tried"
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.UniqueConstraint("study", "position", name="uq_nbtl_ladder_study_position"),
)

probe_table = sa.Table(
    "nbtl_probe",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("study", sa.String, nullable=False, index=True),
    sa.Column("layer", sa.Integer),  # 2, 3, ... (counted from the top); NULL for model-level values
    sa.Column("layer_name", sa.String),
    sa.Column("score", sa.String, nullable=False),  # logme, probe_acc, ..., suggested.new_layers
    sa.Column("value", sa.Float),
    sa.Column("created_at", UTCDateTime, nullable=False),
)

predictions_table = sa.Table(
    "nbtl_predictions",
    metadata,
    sa.Column("run_id", sa.Integer, sa.ForeignKey("nbtl_runs.id"), primary_key=True),
    sa.Column("n_images", sa.Integer, nullable=False),
    sa.Column("n_classes", sa.Integer, nullable=False),
    # np.savez_compressed: probs (float16), labels (`predictions_row`)
    sa.Column("npz", sa.LargeBinary, nullable=False),
)

version_table = sa.Table(
    "nbtl_schema",
    metadata,
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("upgraded_at", UTCDateTime, nullable=False),
)


def predictions_row(probs: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
    """A `nbtl_predictions` row's values: the softmax as float16 (3 significant digits are plenty
    for an averaged-softmax ensemble and halve the size) and the labels, compressed."""
    buffer = io.BytesIO()
    np.savez_compressed(buffer, probs=probs.astype(np.float16), labels=labels.astype(np.int64))
    return dict(n_images=int(probs.shape[0]), n_classes=int(probs.shape[1]), npz=buffer.getvalue())
