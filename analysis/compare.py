"""Optimal vs best default, the paper's ladder, and the ensemble of the final models.

Selection happens on validation only: the *best default* is the complete `default` run with the
highest `val_top1`, the *optimal* run the complete `search` run with the highest `val_top1` (ties go
to the lower run id). Test numbers come from the `final` runs that retrained the selected config
(train+val, several seeds): a final run counts for a run when its source run has the same
`config_hash` (so a duplicate trial of the same settings shares its finals), or, without a hash,
when `source_run_id` is the run itself.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from analysis.load import AnalysisError, parse_json, runs, sqlite_path

RUNGS = (
    "default",
    "different layers",
    "different lrs",
    "different layers and lrs",
    "default L2SP",
    "best L2SP 1 layer",
    "best L2SP overall",
    "optimal",
    "ensemble",
)
# Config keys that say where or how a run executed, not what was trained: never a "difference".
IGNORED_KEYS = frozenset({"seed", "output", "resume", "device", "workers", "checkpoint",
                          "eval_test", "save_test_predictions", "data_dir"})
_PER_PART = ("lrs", "l2sp_rates")


def compare(url: str, study: str) -> pd.DataFrame:
    """One row for `study`: best default vs optimal. Concatenate calls to compare several studies.

    Columns: `study`, `dataset`, `model`; for `default_` and `optimal_`: `run_id`, `val_top1`,
    `test_mean`, `test_sd`, `n_seeds` (test top-1 over the final runs' seeds, sample sd with
    ddof=1; NaN / 0 before any final run); `difference` = optimal_test_mean - default_test_mean;
    `spread` = default_test_sd + optimal_test_sd; `exceeds_spread` = |difference| > spread, NA
    unless both sides have >= 2 seeds; `val_difference`; `differences`, the settings that differ
    ("new_layers: 1 -> 3; lrs: [0.1] -> [0.3, 0.1, 0.01]"); `ensemble_test_top1` and
    `ensemble_size`, the averaged-softmax ensemble of every final run with saved predictions
    (NaN / 0 if none).
    """
    df = runs(url, study)
    best_default, optimal = _best_default(df, study), _optimal(df, study)
    row: dict[str, Any] = {"study": study, "dataset": optimal["dataset"], "model": optimal["model"]}
    for name, run in (("default", best_default), ("optimal", optimal)):
        mean, sd, n = seed_stats(finals_of(df, run))
        row |= {f"{name}_run_id": int(run["id"]), f"{name}_val_top1": float(run["val_top1"]),
                f"{name}_test_mean": mean, f"{name}_test_sd": sd, f"{name}_n_seeds": n}
    row["difference"] = row["optimal_test_mean"] - row["default_test_mean"]
    row["spread"] = row["default_test_sd"] + row["optimal_test_sd"]
    both = row["default_n_seeds"] >= 2 and row["optimal_n_seeds"] >= 2
    row["exceeds_spread"] = bool(abs(row["difference"]) > row["spread"]) if both else pd.NA
    row["val_difference"] = row["optimal_val_top1"] - row["default_val_top1"]
    row["differences"] = differences(parse_json(best_default["config"]) or {},
                                     parse_json(optimal["config"]) or {})
    row["ensemble_test_top1"], row["ensemble_size"] = _ensemble_or_nan(url, df)
    out = pd.DataFrame([row])
    out["exceeds_spread"] = out["exceeds_spread"].astype("boolean")
    return out


def ladder(url: str, study: str, reference: dict[str, float] | None = None) -> pd.DataFrame:
    """The paper's rungs (`RUNGS`, in order), then one row per `reference` entry (name -> top-1 %).

    Each rung is the best `val_top1` among complete search and default runs inside its sub-space
    ("one lr": lr_new = lr_upper = lr_lower; "no L2-SP": every l2sp rate 0; "some L2-SP": a
    nonzero upper or lower rate). Columns: `rung`, `val_top1` (NaN if the sub-space has no run),
    `run_id`, `test_top1` (mean over the final runs of that run's config, NaN if none), `n_runs`
    (complete runs in the sub-space; for "ensemble" the models averaged). The "ensemble" row and
    reference rows carry their accuracy in `test_top1` only.
    """
    df = runs(url, study)
    pool = _complete(df[df["role"].isin(["search", "default"])])
    if not (pool["role"] == "search").any():
        raise _no_search(study)
    rows = []
    for rung, mask in _rung_masks(pool).items():
        sub = pool[mask.fillna(False).astype(bool)]
        best = _best(sub)
        rows.append({
            "rung": rung,
            "val_top1": math.nan if best is None else float(best["val_top1"]),
            "run_id": pd.NA if best is None else int(best["id"]),
            "test_top1": math.nan if best is None else seed_stats(finals_of(df, best))[0],
            "n_runs": len(sub),
        })
    acc, k = _ensemble_or_nan(url, df)
    rows.append({"rung": "ensemble", "val_top1": math.nan, "run_id": pd.NA, "test_top1": acc,
                 "n_runs": k})
    for name, value in (reference or {}).items():
        if name in RUNGS:
            raise AnalysisError(f"reference name {name!r} is a rung's name; pick another")
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise AnalysisError(f"reference {name!r} must be a top-1 % number, got {value!r}")
        rows.append({"rung": str(name), "val_top1": math.nan, "run_id": pd.NA,
                     "test_top1": float(value), "n_runs": pd.NA})
    out = pd.DataFrame(rows)
    return out.astype({"run_id": "Int64", "n_runs": "Int64", "val_top1": float, "test_top1": float})


def ensemble_accuracy(url: str, study: str, top_k: int) -> float:
    """Test top-1 % of the averaged softmax of the `top_k` best final runs.

        p̄ = (1/k) Σ_i p_i        accuracy = 100 · mean_n [argmax_c p̄[n, c] == y_n]

    Final runs (complete, with `predictions_path`) are ranked by the `val_top1` of the run they
    retrained (their own `val_top1`, then id, break ties); fewer than `top_k` available -> all.
    """
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise AnalysisError(f"top_k must be an integer >= 1, got {top_k!r}")
    df = runs(url, study)
    members = ensemble_members(df)
    if members.empty:
        raise AnalysisError(f"study {study!r} has no complete final runs with saved test "
                            "predictions yet: run `nbtl-search final STUDY.yaml` first")
    return _ensemble(url, members.head(top_k))


def ensemble_members(df: pd.DataFrame) -> pd.DataFrame:
    """Complete final runs of search configs with predictions, best first (see `ensemble_accuracy`).
    The default's retrainings are the baseline the ensemble is compared with, never members."""
    finals = df[(df["role"] == "final") & (df["state"] == "complete") & (df["final_of"] == "search")
                & df["predictions_path"].notna()].copy()
    source_val = df.set_index("id")["val_top1"]
    finals["_source_val"] = finals["source_run_id"].map(source_val)
    return finals.sort_values(["_source_val", "val_top1", "id"], ascending=[False, False, True],
                              na_position="last")


def finals_of(df: pd.DataFrame, run: pd.Series) -> pd.DataFrame:
    """Complete final runs with a test score that retrained `run`'s config (see module doc)."""
    finals = df[(df["role"] == "final") & (df["state"] == "complete") & df["test_top1"].notna()]
    if pd.isna(run["config_hash"]):
        return finals[finals["source_run_id"] == run["id"]]
    source_hash = finals["source_run_id"].map(df.set_index("id")["config_hash"])
    return finals[(source_hash == run["config_hash"]) | (finals["source_run_id"] == run["id"])]


def seed_stats(finals: pd.DataFrame) -> tuple[float, float, int]:
    """(mean, sample sd with ddof=1, n) of `test_top1`; NaN where undefined (n=0, or sd at n=1)."""
    x = finals["test_top1"].astype(float)
    n = len(x)
    return (float(x.mean()) if n else math.nan, float(x.std(ddof=1)) if n > 1 else math.nan, n)


def differences(before: dict[str, Any], after: dict[str, Any]) -> str:
    """"key: a -> b" for each training setting that differs, "; "-joined ("" if none)."""
    out = []
    for key in sorted((set(before) | set(after)) - IGNORED_KEYS):
        a, b = before.get(key), after.get(key)
        if _normal(key, a) != _normal(key, b):
            out.append(f"{key}: {_show(a)} -> {_show(b)}")
    return "; ".join(out)


def _normal(key: str, value: Any) -> Any:
    # [0.1] and [0.1, 0.1, 0.1] are the same setting (one value = every part).
    if key in _PER_PART and isinstance(value, list) and len(value) == 1:
        return [float(value[0])] * 3
    if isinstance(value, list):
        return [float(v) if isinstance(v, (int, float)) else v for v in value]
    return value


def _show(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, list):
        return "[" + ", ".join(_show(v) for v in value) + "]"
    return "unset" if value is None else str(value)


def _complete(df: pd.DataFrame) -> pd.DataFrame:
    return df[(df["state"] == "complete") & df["val_top1"].notna()]


def _best(df: pd.DataFrame) -> pd.Series | None:
    if df.empty:
        return None
    return df.sort_values(["val_top1", "id"], ascending=[False, True]).iloc[0]


def _no_search(study: str) -> AnalysisError:
    return AnalysisError(
        f"study {study!r} has no complete search runs: run `nbtl-search run STUDY.yaml`")


def _optimal(df: pd.DataFrame, study: str) -> pd.Series:
    best = _best(_complete(df[df["role"] == "search"]))
    if best is None:
        raise _no_search(study)
    return best


def _best_default(df: pd.DataFrame, study: str) -> pd.Series:
    best = _best(_complete(df[df["role"] == "default"]))
    if best is None:
        raise AnalysisError(f"study {study!r} has no default baseline yet: "
                            "run `nbtl-search baseline STUDY.yaml`")
    return best


def _rung_masks(pool: pd.DataFrame) -> dict[str, pd.Series]:
    close = lambda a, b: pd.Series(np.isclose(pool[a], pool[b], rtol=1e-9, atol=0.0),  # noqa: E731
                                   index=pool.index)
    one_lr = close("lr_new", "lr_upper") & close("lr_upper", "lr_lower")
    no_l2sp = (pool["l2_new"] == 0) & (pool["l2sp_upper"] == 0) & (pool["l2sp_lower"] == 0)
    some_l2sp = (pool["l2sp_upper"] > 0) | (pool["l2sp_lower"] > 0)
    same_l2sp = close("l2sp_upper", "l2sp_lower") & (pool["l2sp_upper"] > 0)
    one_layer = (pool["new_layers"] == 1).fillna(False).astype(bool)
    return {
        "default": pool["role"] == "default",
        "different layers": one_lr & no_l2sp,
        "different lrs": one_layer & no_l2sp,
        "different layers and lrs": no_l2sp,
        "default L2SP": one_layer & one_lr & same_l2sp,
        "best L2SP 1 layer": one_layer & some_l2sp,
        "best L2SP overall": some_l2sp,
        "optimal": pd.Series(True, index=pool.index),
    }


def _ensemble_or_nan(url: str, df: pd.DataFrame) -> tuple[float, int]:
    """The ensemble of every final run with predictions, or (NaN, 0) before there is any."""
    members = ensemble_members(df)
    return (math.nan, 0) if members.empty else (_ensemble(url, members), len(members))


def _ensemble(url: str, members: pd.DataFrame) -> float:
    base = sqlite_path(url)
    # Relative prediction paths are relative to the SQLite file's folder (else the working dir).
    root = base.parent if base is not None else Path.cwd()
    total, labels, first = None, None, None
    for run_id, rel in zip(members["id"], members["predictions_path"]):
        path = Path(rel) if Path(rel).is_absolute() else root / rel
        if not path.is_file():
            raise AnalysisError(f"final run {run_id}: predictions file {path} not found")
        with np.load(path, allow_pickle=False) as npz:
            probs, y = npz["probs"].astype(np.float64), npz["labels"]
        if labels is None:
            total, labels, first = np.zeros_like(probs), y, path
        elif probs.shape != total.shape or not np.array_equal(y, labels):
            raise AnalysisError(f"final run {run_id}: {path} does not hold the same test set "
                                f"as {first} (labels or shape differ)")
        total += probs
    return float(100.0 * np.mean(total.argmax(axis=1) == labels))
