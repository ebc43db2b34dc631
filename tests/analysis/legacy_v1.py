"""nbtl's tables as the first releases wrote them (schema version 1), frozen: the database a user
upgrades from. Never edit: `nbtl_search.store.migrations` must keep reading exactly this."""

from __future__ import annotations

import sqlalchemy as sa

metadata = sa.MetaData()
runs_table = sa.Table(
    "nbtl_runs",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("study", sa.String, nullable=False),
    sa.Column("role", sa.String, nullable=False),
    sa.Column("trial_number", sa.Integer),
    sa.Column("dataset", sa.String, nullable=False),
    sa.Column("model", sa.String, nullable=False),
    sa.Column("config", sa.Text, nullable=False),
    sa.Column("config_hash", sa.String, nullable=False),
    sa.Column("seed", sa.Integer, nullable=False),
    sa.Column("state", sa.String, nullable=False),
    sa.Column("val_top1", sa.Float),
    sa.Column("best_epoch", sa.Integer),
    sa.Column("epochs_run", sa.Integer, nullable=False),
    sa.Column("test_top1", sa.Float),
    sa.Column("test_top5", sa.Float),
    sa.Column("wall_s", sa.Float),
    sa.Column("images_per_s", sa.Float),
    sa.Column("device", sa.String, nullable=False),
    sa.Column("host", sa.String, nullable=False),
    sa.Column("error", sa.Text),
    sa.Column("started_at", sa.DateTime, nullable=False),
    sa.Column("finished_at", sa.DateTime),
    sa.Column("source_run_id", sa.Integer),
    sa.Column("final_of", sa.String),
    sa.Column("predictions_path", sa.String),
)
epochs_table = sa.Table(
    "nbtl_epochs",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("run_id", sa.Integer, sa.ForeignKey("nbtl_runs.id"), nullable=False),
    sa.Column("epoch", sa.Integer, nullable=False),
    sa.Column("train_loss", sa.Float),
    sa.Column("val_loss", sa.Float),
    sa.Column("val_top1", sa.Float),
    sa.Column("val_top5", sa.Float),
    sa.Column("lrs", sa.Text, nullable=False),
    sa.Column("penalty", sa.Float),
    sa.Column("seconds", sa.Float),
)
ladder_table = sa.Table(
    "nbtl_ladder",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("study", sa.String, nullable=False),
    sa.Column("position", sa.Integer, nullable=False),
    sa.Column("rung", sa.String, nullable=False),
    sa.Column("adds", sa.Text, nullable=False),
    sa.Column("config", sa.Text, nullable=False),
    sa.Column("config_hash", sa.String, nullable=False),
    sa.Column("source_run_id", sa.Integer),
    sa.Column("val_top1", sa.Float),
    sa.Column("val_mean", sa.Float),
    sa.Column("val_n", sa.Integer),
    sa.Column("notes", sa.Text, nullable=False),
    sa.Column("created_at", sa.DateTime, nullable=False),
)
probe_table = sa.Table(
    "nbtl_probe",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("study", sa.String, nullable=False),
    sa.Column("layer", sa.Integer),
    sa.Column("layer_name", sa.String),
    sa.Column("score", sa.String, nullable=False),
    sa.Column("value", sa.Float),
    sa.Column("created_at", sa.DateTime, nullable=False),
)
predictions_table = sa.Table(
    "nbtl_predictions",
    metadata,
    sa.Column("run_id", sa.Integer, sa.ForeignKey("nbtl_runs.id"), primary_key=True),
    sa.Column("n_images", sa.Integer, nullable=False),
    sa.Column("n_classes", sa.Integer, nullable=False),
    sa.Column("npz", sa.LargeBinary, nullable=False),
)
