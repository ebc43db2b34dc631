"""A hand-made nbtl database with known values, for the analysis tests (and anyone reusing it).

`build(folder)` writes `folder/nbtl.db` holding study `STUDY` (plus a distractor study `OTHER`):
nbtl's two tables with the orchestrator's exact column names, per-epoch rows, final runs with
`.npz` test predictions, and two small Optuna studies (`STUDY`, `STUDY.default`).
`variant()` copies it with some SQL applied. `EXPECTED` lists the numbers `analysis.compare` and
`analysis.ladder` must find.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sqlite3
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import optuna
import sqlalchemy as sa

STUDY = "demo"
OTHER = "other"

metadata = sa.MetaData()
runs_table = sa.Table(
    "nbtl_runs", metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("study", sa.String(200), nullable=False),
    sa.Column("role", sa.String(16), nullable=False),
    sa.Column("trial_number", sa.Integer),
    sa.Column("dataset", sa.String(100)),
    sa.Column("model", sa.String(100)),
    sa.Column("config", sa.Text),
    sa.Column("config_hash", sa.String(64)),
    sa.Column("seed", sa.Integer),
    sa.Column("state", sa.String(16)),
    sa.Column("val_top1", sa.Float),
    sa.Column("best_epoch", sa.Integer),
    sa.Column("epochs_run", sa.Integer),
    sa.Column("test_top1", sa.Float),
    sa.Column("test_top5", sa.Float),
    sa.Column("wall_s", sa.Float),
    sa.Column("images_per_s", sa.Float),
    sa.Column("device", sa.String(50)),
    sa.Column("host", sa.String(100)),
    sa.Column("error", sa.Text),
    sa.Column("started_at", sa.DateTime),
    sa.Column("finished_at", sa.DateTime),
    sa.Column("source_run_id", sa.Integer),
    sa.Column("final_of", sa.String(16)),
    sa.Column("predictions_path", sa.Text),
)
epochs_table = sa.Table(
    "nbtl_epochs", metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("run_id", sa.Integer, sa.ForeignKey("nbtl_runs.id"), nullable=False),
    sa.Column("epoch", sa.Integer, nullable=False),
    sa.Column("train_loss", sa.Float),
    sa.Column("val_loss", sa.Float),
    sa.Column("val_top1", sa.Float),
    sa.Column("val_top5", sa.Float),
    sa.Column("lrs", sa.Text),
    sa.Column("penalty", sa.Float),
    sa.Column("seconds", sa.Float),
)

# (id, role, trial_number, new_layers, lrs, l2sp_rates, state, val_top1)
SEARCH_AND_DEFAULT = [
    (1, "default", 0, 1, [0.01], [0.0], "complete", 70.0),
    (2, "default", 1, 1, [0.1], [0.0], "complete", 75.0),
    (3, "default", 2, 1, [0.3], [0.0], "failed", None),
    (4, "search", 0, 3, [0.1], [0.0], "complete", 80.0),
    (5, "search", 1, 1, [0.3, 0.1, 0.01], [0.0], "complete", 77.0),
    (6, "search", 2, 2, [0.3, 0.1, 0.03], [0.0, 0.0, 0.0], "complete", 83.0),
    (7, "search", 3, 1, [0.1], [0.0, 0.1, 0.1], "complete", 76.0),
    (8, "search", 4, 1, [0.3, 0.1, 0.01], [0.0, 0.01, 0.1], "complete", 78.0),
    (9, "search", 5, 3, [0.3, 0.1, 0.03], [0.01, 0.1, 0.01], "complete", 85.0),
    (10, "search", 6, 2, [0.1], [0.0], "pruned", 90.0),  # pruned: never selected
    (11, "search", 7, 2, [0.3, 0.1, 0.03], [0.01, 0.1, 0.01], "complete", 85.0),  # tie -> id 9
    (12, "search", 8, 3, [0.1], [0.0], "running", None),
    (13, "search", 9, 1, [0.03], [0.05], "complete", 74.0),
]
# final runs: (id, source_run_id, final_of, seed, state, test_top1, predictions file or None)
FINALS = [
    (20, 9, "search", 0, "complete", 84.0, "preds/run20.npz"),
    (21, 9, "search", 1, "complete", 86.0, "preds/run21.npz"),
    (22, 9, "search", 2, "complete", 85.0, "ABSOLUTE"),  # stored as an absolute path
    (23, 9, "search", 3, "failed", None, None),
    (24, 2, "default", 0, "complete", 74.0, "preds/run24.npz"),
    (25, 2, "default", 1, "complete", 76.0, "preds/run25.npz"),
    (26, 2, "default", 2, "complete", 78.0, "preds/run26.npz"),
]
ENSEMBLE_ORDER = [20, 21, 22]  # search finals only, ranked by the source run's val_top1, then id
N_TEST, N_CLASSES = 40, 4

EXPECTED = {
    "default_run_id": 2, "default_val_top1": 75.0,
    "optimal_run_id": 9, "optimal_val_top1": 85.0,
    "default_test_mean": 76.0, "default_test_sd": 2.0, "default_n_seeds": 3,
    "optimal_test_mean": 85.0, "optimal_test_sd": 1.0, "optimal_n_seeds": 3,
    "difference": 9.0, "spread": 3.0, "exceeds_spread": True, "val_difference": 10.0,
    "differences": ("l2sp_rates: [0] -> [0.01, 0.1, 0.01]; lrs: [0.1] -> [0.3, 0.1, 0.03]; "
                    "new_layers: 1 -> 3"),
    # rung -> (val_top1, run_id, test_top1 or None, n_runs)
    "ladder": {
        "default": (75.0, 2, 76.0, 2),
        "different layers": (80.0, 4, None, 3),
        "different lrs": (77.0, 5, None, 3),
        "different layers and lrs": (83.0, 6, None, 5),
        "default L2SP": (76.0, 7, None, 2),
        "best L2SP 1 layer": (78.0, 8, None, 3),
        "best L2SP overall": (85.0, 9, 85.0, 5),
        "optimal": (85.0, 9, 85.0, 10),
    },
}


def config(new_layers: int, lrs: list[float], l2sp: list[float], seed: int = 0,
           train_split: str = "train") -> dict:
    return {
        "dataset": "digits", "model": "test_resnet", "new_layers": new_layers, "num_low": 1,
        "lrs": lrs, "l2sp_rates": l2sp, "weight_decay": 0.0005, "mixup": 0.0, "cutmix": 0.0,
        "aa": None, "reprob": 0.0, "smoothing": 0.0, "epochs": 3, "batch_size": 32,
        "seed": seed, "train_split": train_split, "extra": {},
    }


def _hash(cfg: dict) -> str:
    text = json.dumps({k: v for k, v in cfg.items() if k != "seed"}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def predictions(run_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic softmax outputs of final run `run_id` on the shared test set."""
    labels = np.random.default_rng(0).integers(0, N_CLASSES, N_TEST).astype(np.int64)
    logits = np.random.default_rng(run_id).normal(size=(N_TEST, N_CLASSES))
    logits[np.arange(N_TEST), labels] += 1.0  # better than chance, not perfect
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return probs.astype(np.float32), labels


def build(folder: Path) -> str:
    """Write the database (and predictions) under `folder`; return its SQLite URL."""
    folder.mkdir(parents=True, exist_ok=True)
    url = f"sqlite:///{folder / 'nbtl.db'}"
    _optuna_studies(url)
    engine = sa.create_engine(url)
    metadata.create_all(engine)
    t0 = datetime(2025, 1, 1, 12, 0, 0)
    rows, epoch_rows, by_id = [], [], {}
    for rid, role, trial, nl, lrs, l2sp, state, val in SEARCH_AND_DEFAULT:
        cfg = config(nl, lrs, l2sp)
        by_id[rid] = cfg
        rows.append(_run(rid, STUDY, role, trial, cfg, state, val, t0))
        for epoch in range(3 if val is not None else 0):
            epoch_rows.append({
                "run_id": rid, "epoch": epoch, "train_loss": 2.0 - epoch / 2, "val_loss": 1.5,
                "val_top1": val - 10.0 * (2 - epoch), "val_top5": 99.0,
                "lrs": json.dumps([lrs[0], lrs[-1], lrs[-1]]), "penalty": 0.0, "seconds": 1.5})
    for rid, source, final_of, seed, state, test, pred in FINALS:
        src = next(r for r in SEARCH_AND_DEFAULT if r[0] == source)
        cfg = config(src[3], src[4], src[5], seed=seed, train_split="trainval")
        row = _run(rid, STUDY, "final", None, cfg, state, None, t0)
        path = None
        if pred is not None:
            file = folder / (f"abs/run{rid}.npz" if pred == "ABSOLUTE" else pred)
            file.parent.mkdir(parents=True, exist_ok=True)
            probs, labels = predictions(rid)
            np.savez(file, probs=probs, labels=labels)
            path = str(file) if pred == "ABSOLUTE" else pred
        row |= {"source_run_id": source, "final_of": final_of, "predictions_path": path,
                "test_top1": test, "test_top5": None if test is None else 99.0, "seed": seed}
        rows.append(row)
    rows.append(_run(100, OTHER, "search", 0, config(2, [0.1], [0.0]), "complete", 99.0, t0))
    with engine.begin() as conn:
        conn.execute(runs_table.insert(), rows)
        conn.execute(epochs_table.insert(), epoch_rows)
    engine.dispose()
    return url


def variant(built: Path, dest: Path, *sql: str) -> str:
    """A copy of the database built in `built` (predictions included) with `sql` applied."""
    shutil.copytree(built, dest)
    with sqlite3.connect(dest / "nbtl.db") as conn:
        for statement in sql:
            conn.execute(statement)
    return f"sqlite:///{dest / 'nbtl.db'}"


def _run(rid: int, study: str, role: str, trial: int | None, cfg: dict, state: str,
         val: float | None, t0: datetime) -> dict:
    return {
        "id": rid, "study": study, "role": role, "trial_number": trial, "dataset": "digits",
        "model": "test_resnet", "config": json.dumps(cfg), "config_hash": _hash(cfg),
        "seed": cfg["seed"], "state": state, "val_top1": val,
        "best_epoch": None if val is None else 2, "epochs_run": 3, "test_top1": None,
        "test_top5": None, "wall_s": 5.0, "images_per_s": 100.0, "device": "cpu",
        "host": "test", "error": "boom" if state == "failed" else None,
        "started_at": t0 + timedelta(minutes=rid),
        "finished_at": t0 + timedelta(minutes=rid, seconds=5),
        "source_run_id": None, "final_of": None, "predictions_path": None,
    }


def _optuna_studies(url: str) -> None:
    """Optuna's own tables: the search study (params + values) and its default baseline."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    search = optuna.create_study(study_name=STUDY, storage=url, direction="maximize")
    dists = {"new_layers": optuna.distributions.IntDistribution(1, 3),
             "lr_new": optuna.distributions.FloatDistribution(0.01, 0.3, log=True),
             "l2sp_upper": optuna.distributions.FloatDistribution(0.0, 0.1)}
    for _, role, _, nl, lrs, l2sp, state, val in SEARCH_AND_DEFAULT:
        if role == "search" and state == "complete":
            params = {"new_layers": nl, "lr_new": lrs[0], "l2sp_upper": l2sp[1 % len(l2sp)]}
            search.add_trial(optuna.trial.create_trial(params=params, distributions=dists,
                                                       value=val))
    default = optuna.create_study(study_name=f"{STUDY}.default", storage=url,
                                  direction="maximize")
    lr = {"lr": optuna.distributions.FloatDistribution(0.01, 0.3, log=True)}
    for _, role, _, _, lrs, _, state, val in SEARCH_AND_DEFAULT:
        if role == "default" and state == "complete":
            default.add_trial(optuna.trial.create_trial(params={"lr": lrs[0]}, distributions=lr,
                                                        value=val))
