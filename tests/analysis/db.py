"""A hand-made nbtl database with known values, for the analysis tests (and anyone reusing it).

`build(folder)` writes `folder/nbtl.db` holding study `STUDY` (plus a distractor study `OTHER`):
nbtl's own tables (`nbtl_search.store.schema`, at its current version), per-epoch rows, re-ranking runs, a ladder, final runs with their test predictions in
`nbtl_predictions`, and two small Optuna studies (`STUDY`, `STUDY.default`). `variant()` copies it
with some SQL applied. `EXPECTED` lists the numbers `analysis.compare` and `analysis.ladder` must
find, worked out by hand in the comments.
"""

from __future__ import annotations

import io
import json
import shutil
import sqlite3
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import optuna
import sqlalchemy as sa

from nbtl_search.store import migrations, schema
from tests.analysis import legacy_v1
from trainer.config import config_hash

STUDY = "demo"
OTHER = "other"

# (id, role, trial_number, new_layers, lrs, l2sp_rates, state, val_top1)
SEARCH_AND_DEFAULT = [
    (1, "default", 0, 1, [0.01], [0.0], "complete", 70.0),
    (2, "default", 1, 1, [0.1], [0.0], "complete", 75.0),
    (3, "default", 2, 1, [0.3], [0.0], "failed", None),
    (4, "search", 0, 3, [0.1], [0.0], "complete", 80.0),
    (5, "search", 1, 1, [0.3, 0.1, 0.01], [0.0], "complete", 77.0),
    (6, "search", 2, 2, [0.3, 0.1, 0.03], [0.0], "complete", 83.0),
    (7, "search", 3, 1, [0.1], [0.0, 0.1, 0.1], "complete", 76.0),
    (8, "search", 4, 1, [0.3, 0.1, 0.01], [0.0, 0.01, 0.1], "complete", 78.0),
    (9, "search", 5, 3, [0.3, 0.1, 0.03], [0.01, 0.1, 0.01], "complete", 85.0),
    (10, "search", 6, 2, [0.1], [0.0], "pruned", 90.0),  # pruned: never selected
    (11, "search", 7, 2, [0.3, 0.1, 0.03], [0.01, 0.1, 0.01], "complete", 85.0),  # = 9's config
    (12, "search", 8, 3, [0.1], [0.0], "running", None),
    (13, "search", 9, 1, [0.03], [0.05], "complete", 74.0),
]
# Re-ranking runs (train -> val, more seeds): (id, source run, seed, val_top1).
# Means: default run 2: (75 + 74 + 73) / 3 = 74; search run 9: (85 + 80 + 81) / 3 = 82,
# search run 6: (83 + 84 + 85) / 3 = 84 -> the re-ranked optimum is run 6, not the single best 9.
RERANK = [
    (30, 2, 1, 74.0),
    (31, 2, 2, 73.0),
    (32, 9, 1, 80.0),
    (33, 9, 2, 81.0),
    (34, 6, 1, 84.0),
    (35, 6, 2, 85.0),
]
# The ladder `final` stored: rung -> (source run or None, new_layers, lrs, l2sp, adds).
LADDER = [
    ("default", 2, 1, [0.1], [0.0], ""),
    ("+ layers", None, 2, [0.1], [0.0], "new_layers 1 -> 2"),
    ("+ learning rates", None, 2, [0.3, 0.1, 0.03], [0.0], "lrs [0.1] -> [0.3, 0.1, 0.03]"),
    ("+ regularisation", None, 2, [0.3, 0.1, 0.03], [0.0], ""),
    ("optimal", 6, 2, [0.3, 0.1, 0.03], [0.0], ""),
]
LADDER_NOTES = {"default": ["lr 0.1 is the largest value the baseline tried"], "optimal": []}
# Final runs (train+val -> test): (id, rung whose config they retrain, final_of, seed, state,
# test_top1). Default 74/76/78: mean 76, sd 2; optimum 85/84/86: mean 85, sd 1.
FINALS = [
    (20, "optimal", "search", 0, "complete", 85.0),
    (21, "optimal", "search", 1, "complete", 84.0),
    (22, "optimal", "search", 2, "complete", 86.0),
    (23, "optimal", "search", 3, "failed", None),
    (24, "default", "default", 0, "complete", 74.0),
    (25, "default", "default", 1, "complete", 76.0),
    (26, "default", "default", 2, "complete", 78.0),
    (27, "+ layers", "ladder", 0, "complete", 80.0),
    (28, "+ layers", "ladder", 1, "complete", 81.0),
    (29, "+ layers", "ladder", 2, "complete", 82.0),
]
ENSEMBLE = [20, 21, 22]  # the optimum's complete final runs
N_TEST, N_CLASSES = 40, 4
# Predictions: every model of the optimum is right on images 0..29, every default model on 0..19.
# Paired per image: d_i = 1 for i in 20..29, else 0: the difference over the images is 25 points.
RIGHT = {"search": 30, "default": 20, "ladder": 25}
# The probe: (layer, name, score, value); layer None for model-level values and the suggestion.
PROBE = [
    (2, "layer4", "probe_acc", 60.0),
    (2, "layer4", "random_acc", 30.0),
    (2, "layer4", "fit", 30.0),
    (3, "layer3", "probe_acc", 50.0),
    (3, "layer3", "random_acc", 35.0),
    (3, "layer3", "fit", 15.0),
    (None, None, "logme", -0.5),
    (None, None, "suggested.new_layers", 1.0),
]

EXPECTED = {
    "default_run_id": 2,
    "default_val_top1": 75.0,
    "default_val_mean": 74.0,
    "default_val_n": 3,
    "optimal_run_id": 6,
    "optimal_val_top1": 83.0,
    "optimal_val_mean": 84.0,
    "optimal_val_n": 3,
    "default_test_mean": 76.0,
    "default_test_sd": 2.0,
    "default_n_seeds": 3,
    "optimal_test_mean": 85.0,
    "optimal_test_sd": 1.0,
    "optimal_n_seeds": 3,
    "difference": 9.0,
    "val_difference": 8.0,
    "test_images": N_TEST,
    "verdict": "gain",
    "differences": "lrs: [0.1] -> [0.3, 0.1, 0.03]; new_layers: 1 -> 2",
    "notes": "lr 0.1 is the largest value the baseline tried",
}
# rung -> (adds, test mean, test sd, n seeds)
EXPECTED_LADDER = {
    "default": ("", 76.0, 2.0, 3),
    "+ layers": ("new_layers 1 -> 2", 81.0, 1.0, 3),
    "+ learning rates": ("lrs [0.1] -> [0.3, 0.1, 0.03]", 85.0, 1.0, 3),
    "+ regularisation": ("", 85.0, 1.0, 3),  # unchanged: shares the optimum's runs
    "optimal": ("", 85.0, 1.0, 3),
}


def config(
    new_layers: int, lrs: list[float], l2sp: list[float], seed: int = 0, train_split: str = "train"
) -> dict:
    return {
        "dataset": "digits",
        "model": "test_resnet",
        "new_layers": new_layers,
        "num_low": 1,
        "lrs": lrs,
        "l2sp_rates": l2sp,
        "l2_rates": [0.0],
        "weight_decay": 0.0005,
        "mixup": 0.0,
        "cutmix": 0.0,
        "aa": None,
        "reprob": 0.0,
        "smoothing": 0.0,
        "epochs": 3,
        "batch_size": 32,
        "seed": seed,
        "train_split": train_split,
        "extra": {},
    }


def labels() -> np.ndarray:
    return np.random.default_rng(0).integers(0, N_CLASSES, N_TEST).astype(np.int64)


def predictions(run_id: int, right: int) -> np.ndarray:
    """A softmax that is right on images 0..right-1 and wrong on the rest (random otherwise)."""
    y = labels()
    logits = np.random.default_rng(run_id).normal(size=(N_TEST, N_CLASSES))
    wrong = (y + 1) % N_CLASSES
    target = np.where(np.arange(N_TEST) < right, y, wrong)
    logits[np.arange(N_TEST), target] += 10.0
    return (np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)).astype(np.float32)


def npz(probs: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.savez_compressed(buffer, probs=probs.astype(np.float16), labels=labels())
    return buffer.getvalue()


def build(folder: Path, version: int = schema.SCHEMA_VERSION) -> str:
    """Write the database under `folder`; return its SQLite URL. `version=1`: the same values in
    the tables of the first releases (`legacy_v1`), with the optimum's test predictions in files
    named by `predictions_path` instead of `nbtl_predictions`, as those releases could leave them."""
    folder.mkdir(parents=True, exist_ok=True)
    url = f"sqlite:///{folder / 'nbtl.db'}"
    _optuna_studies(url)
    engine = sa.create_engine(url)
    tables = legacy_v1 if version == 1 else schema
    if version == 1:
        legacy_v1.metadata.create_all(engine)
    else:
        migrations.upgrade(engine)
    t0 = datetime(2025, 1, 1, 12, 0, 0, tzinfo=timezone.utc)
    rows, epoch_rows, by_id = [], [], {}
    for rid, role, trial, nl, lrs, l2sp, state, val in SEARCH_AND_DEFAULT:
        cfg = config(nl, lrs, l2sp)
        by_id[rid] = cfg
        rows.append(_run(rid, STUDY, role, trial, cfg, state, val, t0))
        for epoch in range(3 if val is not None else 0):
            epoch_rows.append(
                {
                    "run_id": rid,
                    "epoch": epoch,
                    "train_loss": 2.0 - epoch / 2,
                    "val_loss": 1.5,
                    "val_top1": val - 10.0 * (2 - epoch),
                    "val_top5": 99.0,
                    "lrs": json.dumps([lrs[0], lrs[-1], lrs[-1]]),
                    "penalty": 0.0,
                    "seconds": 1.5,
                }
            )
    for rid, source, seed, val in RERANK:
        cfg = dict(by_id[source], seed=seed)
        rows.append(
            _run(rid, STUDY, "rerank", None, cfg, "complete", val, t0) | {"source_run_id": source}
        )
    rung_configs, ladder_rows = {}, []
    for position, (rung, source, nl, lrs, l2sp, adds) in enumerate(LADDER):
        cfg = config(nl, lrs, l2sp)
        rung_configs[rung] = cfg
        stats = {2: (75.0, 74.0, 3), 6: (83.0, 84.0, 3)}.get(source, (None, None, None))
        ladder_rows.append(
            {
                "study": STUDY,
                "position": position,
                "rung": rung,
                "adds": adds,
                "config": json.dumps(cfg),
                "config_hash": config_hash(cfg),
                "source_run_id": source,
                "val_top1": stats[0],
                "val_mean": stats[1],
                "val_n": stats[2],
                "notes": json.dumps(LADDER_NOTES.get(rung, [])),
                "created_at": t0,
            }
        )
    prediction_rows = []
    for rid, rung, final_of, seed, state, test in FINALS:
        cfg = dict(rung_configs[rung], seed=seed, train_split="trainval")
        row = _run(rid, STUDY, "final", None, cfg, state, None, t0)
        row |= {
            "final_of": final_of,
            "test_top1": test,
            "seed": seed,
            "test_top5": None if test is None else 99.0,
            "source_run_id": dict((r, s) for r, s, *_ in LADDER)[rung],
        }
        rows.append(row)
        if state == "complete" and version == 1 and final_of == "search":
            path = folder / "preds" / f"run{rid}.npz"
            path.parent.mkdir(exist_ok=True)
            np.savez(path, probs=predictions(rid, RIGHT[final_of]), labels=labels())
            row["predictions_path"] = f"preds/run{rid}.npz"
        elif state == "complete":
            prediction_rows.append(
                {
                    "run_id": rid,
                    "n_images": N_TEST,
                    "n_classes": N_CLASSES,
                    "npz": npz(predictions(rid, RIGHT[final_of])),
                }
            )
    rows.append(_run(100, OTHER, "search", 0, config(2, [0.1], [0.0]), "complete", 99.0, t0))
    if version != 1:
        rows = [{k: v for k, v in r.items() if k != "predictions_path"} for r in rows]
    with engine.begin() as conn:
        conn.execute(tables.runs_table.insert(), rows)
        conn.execute(tables.epochs_table.insert(), epoch_rows)
        conn.execute(tables.ladder_table.insert(), ladder_rows)
        conn.execute(tables.predictions_table.insert(), prediction_rows)
        conn.execute(
            tables.probe_table.insert(),
            [
                {
                    "study": STUDY,
                    "layer": layer,
                    "layer_name": name,
                    "score": score,
                    "value": value,
                    "created_at": t0,
                }
                for layer, name, score, value in PROBE
            ],
        )
    engine.dispose()
    return url


def stored_predictions(run_id: int) -> tuple[np.ndarray, np.ndarray]:
    """What the database holds for a final run (float16, as the orchestrator stores it)."""
    final_of = next(f for r, _, f, *_ in FINALS if r == run_id)
    return predictions(run_id, RIGHT[final_of]).astype(np.float16).astype(np.float64), labels()


def variant(built: Path, dest: Path, *sql: str) -> str:
    """A copy of the database built in `built` with `sql` applied."""
    shutil.copytree(built, dest)
    with sqlite3.connect(dest / "nbtl.db") as conn:
        for statement in sql:
            conn.execute(statement)
    return f"sqlite:///{dest / 'nbtl.db'}"


def _run(
    rid: int,
    study: str,
    role: str,
    trial: int | None,
    cfg: dict,
    state: str,
    val: float | None,
    t0: datetime,
) -> dict:
    return {
        "id": rid,
        "study": study,
        "role": role,
        "trial_number": trial,
        "dataset": "digits",
        "model": "test_resnet",
        "config": json.dumps(cfg),
        "config_hash": config_hash(cfg),
        "seed": cfg["seed"],
        "state": state,
        "val_top1": val,
        "best_epoch": None if val is None else 2,
        "epochs_run": 3,
        "test_top1": None,
        "test_top5": None,
        "wall_s": 5.0,
        "images_per_s": 100.0,
        "device": "cpu",
        "host": "test",
        "error": "boom" if state == "failed" else None,
        "started_at": t0 + timedelta(minutes=rid),
        "finished_at": t0 + timedelta(minutes=rid, seconds=5),
        "source_run_id": None,
        "final_of": None,
        "predictions_path": None,
    }


def _optuna_studies(url: str) -> None:
    """Optuna's own tables: the search study (params + values) and its default baseline."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    search = optuna.create_study(study_name=STUDY, storage=url, direction="maximize")
    dists = {
        "new_layers": optuna.distributions.IntDistribution(1, 3),
        "lr_new": optuna.distributions.FloatDistribution(0.01, 0.3, log=True),
        "l2sp_upper": optuna.distributions.FloatDistribution(0.0, 0.1),
    }
    for _, role, _, nl, lrs, l2sp, state, val in SEARCH_AND_DEFAULT:
        if role == "search" and state == "complete":
            params = {"new_layers": nl, "lr_new": lrs[0], "l2sp_upper": l2sp[1 % len(l2sp)]}
            search.add_trial(
                optuna.trial.create_trial(params=params, distributions=dists, value=val)
            )
    default = optuna.create_study(study_name=f"{STUDY}.default", storage=url, direction="maximize")
    lr = {"lr": optuna.distributions.FloatDistribution(0.01, 0.3, log=True)}
    for _, role, _, _, lrs, _, state, val in SEARCH_AND_DEFAULT:
        if role == "default" and state == "complete":
            default.add_trial(
                optuna.trial.create_trial(params={"lr": lrs[0]}, distributions=lr, value=val)
            )
