"""Optimal vs best default, the ladder between them, and the ensemble of the final models.

Selection happens on validation only. After `nbtl-search final`, the best default and the optimum
are the first and last rungs of the study's `nbtl_ladder` rows (chosen by mean validation accuracy
over each trial and its re-ranking runs); before it, the single complete `default` and `search`
runs with the highest `val_top1` (ties go to the lower run id). Test numbers come from the `final`
runs that retrained a config (train+val, several seeds): a final run belongs to the configs with
its `config_hash`.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np
import pandas as pd

from analysis import stats
from analysis.load import (
    LADDER,
    NOT_SETTINGS,
    AnalysisError,
    AnalysisWarning,
    parse_json,
    predictions,
    read_table,
    runs,
)
from trainer import per_part

ENSEMBLE = "ensemble"


def compare(url: str, study: str) -> pd.DataFrame:
    """One row for `study`: best default vs optimal. Concatenate calls to compare several studies.

    Columns: `study`, `dataset`, `model`; for `default_` and `optimal_`: `run_id` (the selected
    trial's run), `val_top1` (that trial's own value), `val_mean` and `val_n` (mean over the trial
    and its re-ranking runs), `test_mean`, `test_sd` (ddof=1) and `n_seeds` over the final runs;
    `difference` = optimal_test_mean - default_test_mean with its 95% intervals `ci_low`,
    `ci_high` (Welch over seeds, `ci_df` degrees of freedom) and `bootstrap_low`,
    `bootstrap_high` (paired bootstrap over the `test_images` test images, from the stored
    predictions); `verdict`: "gain", "loss", "no clear difference" or "not tested yet";
    `val_difference` (single trials); `differences` ("new_layers: 1 -> 3; ..."); `notes` (edge
    warnings, "; "-joined); `ensemble_test_top1`, `ensemble_size` (NaN / 0 without predictions).
    """
    df = runs(url, study)
    chosen = _chosen(url, study, df)
    row: dict[str, Any] = {
        "study": study,
        "dataset": chosen["optimal"]["run"]["dataset"],
        "model": chosen["optimal"]["run"]["model"],
    }
    finals = {}
    for side in ("default", "optimal"):
        c = chosen[side]
        finals[side] = finals_of(df, c["config_hash"])
        mean, sd, n = seed_stats(finals[side])
        row |= {
            f"{side}_run_id": int(c["run"]["id"]),
            f"{side}_val_top1": float(c["run"]["val_top1"]),
            f"{side}_val_mean": c["val_mean"],
            f"{side}_val_n": c["val_n"],
            f"{side}_test_mean": mean,
            f"{side}_test_sd": sd,
            f"{side}_n_seeds": n,
        }
    row["difference"] = row["optimal_test_mean"] - row["default_test_mean"]
    welch, row["ci_df"] = stats.welch_interval(
        finals["optimal"]["test_top1"].astype(float), finals["default"]["test_top1"].astype(float)
    )
    row["ci_low"], row["ci_high"] = welch.low, welch.high
    boot, row["test_images"] = _bootstrap(url, df, finals["optimal"], finals["default"])
    row["bootstrap_low"], row["bootstrap_high"] = boot.low, boot.high
    if math.isnan(row["difference"]):
        row["verdict"] = "not tested yet"
    else:
        row["verdict"] = {1: "gain", -1: "loss", 0: "no clear difference"}[
            stats.verdict_sign(welch, boot)
        ]
    row["val_difference"] = row["optimal_val_top1"] - row["default_val_top1"]
    row["differences"] = differences(
        parse_json(chosen["default"]["run"]["config"]) or {},
        parse_json(chosen["optimal"]["run"]["config"]) or {},
    )
    row["notes"] = "; ".join(chosen["default"]["notes"] + chosen["optimal"]["notes"])
    row["ensemble_test_top1"], row["ensemble_size"] = _ensemble_or_nan(url, df)
    return pd.DataFrame([row])


def ladder(url: str, study: str, reference: dict[str, float] | None = None) -> pd.DataFrame:
    """The retrained ladder: one row per rung of `nbtl_ladder` (best default first, optimum last),
    then "ensemble", then one row per `reference` entry (name -> test top-1 %).

    Columns: `rung`, `adds` (the settings it changes relative to the rung before; "" for an
    unchanged rung, which shares the previous rung's runs), `config_hash`, `val_mean` (default and
    optimum only), `test_mean`, `test_sd`, `n_seeds` (final runs of the rung's config).
    """
    df = runs(url, study)
    rungs = read_table(url, LADDER, study)
    if rungs.empty:
        raise AnalysisError(
            f"study {study!r} has no ladder yet: run `nbtl-search final STUDY.yaml`"
        )
    rows = []
    for _, rung in rungs.sort_values("position").iterrows():
        mean, sd, n = seed_stats(finals_of(df, rung["config_hash"]))
        rows.append(
            {
                "rung": rung["rung"],
                "adds": rung["adds"],
                "config_hash": rung["config_hash"],
                "val_mean": _float(rung["val_mean"]),
                "test_mean": mean,
                "test_sd": sd,
                "n_seeds": n,
            }
        )
    acc, k = _ensemble_or_nan(url, df)
    rows.append(
        {
            "rung": ENSEMBLE,
            "adds": f"averaged softmax of {k} final models",
            "config_hash": None,
            "val_mean": math.nan,
            "test_mean": acc,
            "test_sd": math.nan,
            "n_seeds": k,
        }
    )
    names = {r["rung"] for r in rows}
    for name, value in (reference or {}).items():
        if name in names:
            raise AnalysisError(f"reference name {name!r} is a rung's name; pick another")
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise AnalysisError(f"reference {name!r} must be a top-1 % number, got {value!r}")
        rows.append(
            {
                "rung": str(name),
                "adds": "reference",
                "config_hash": None,
                "val_mean": math.nan,
                "test_mean": float(value),
                "test_sd": math.nan,
                "n_seeds": 0,
            }
        )
    out = pd.DataFrame(rows)
    return out.astype({"n_seeds": int, "val_mean": float, "test_mean": float, "test_sd": float})


def ensemble_accuracy(url: str, study: str, top_k: int) -> float:
    """Test top-1 % of the averaged softmax of the `top_k` best final models of search configs.

        p̄ = (1/k) Σ_i p_i        accuracy = 100 · mean_n [argmax_c p̄[n, c] == y_n]

    Final runs (complete, with stored predictions) are ranked by the `val_top1` of the run they
    retrained (their own id breaks ties); fewer than `top_k` available -> all.
    """
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise AnalysisError(f"top_k must be an integer >= 1, got {top_k!r}")
    df = runs(url, study)
    members = ensemble_members(df)
    probs = _member_predictions(url, members.head(top_k))
    if not probs:
        raise AnalysisError(
            f"study {study!r} has no complete final runs with saved test "
            "predictions yet: run `nbtl-search final STUDY.yaml` first"
        )
    return _ensemble(probs)


def ensemble_members(df: pd.DataFrame) -> pd.DataFrame:
    """Complete final runs of search configs, best first (see `ensemble_accuracy`). The default's
    and the intermediate rungs' retrainings are not members."""
    finals = df[
        (df["role"] == "final") & (df["state"] == "complete") & (df["final_of"] == "search")
    ].copy()
    source_val = df.set_index("id")["val_top1"]
    finals["_source_val"] = finals["source_run_id"].map(source_val)
    return finals.sort_values(["_source_val", "id"], ascending=[False, True], na_position="last")


def finals_of(df: pd.DataFrame, config_hash: str) -> pd.DataFrame:
    """Complete final runs with a test score that retrained the config with this hash."""
    return df[
        (df["role"] == "final")
        & (df["state"] == "complete")
        & df["test_top1"].notna()
        & (df["config_hash"] == config_hash)
    ].sort_values("id")


def seed_stats(finals: pd.DataFrame) -> tuple[float, float, int]:
    """(mean, sample sd with ddof=1, n) of `test_top1`; NaN where undefined (n=0, or sd at n=1)."""
    x = finals["test_top1"].astype(float)
    n = len(x)
    return (float(x.mean()) if n else math.nan, float(x.std(ddof=1)) if n > 1 else math.nan, n)


def differences(before: dict[str, Any], after: dict[str, Any]) -> str:
    """ "key: a -> b" for each training setting that differs, "; "-joined ("" if none)."""
    out = []
    for key in sorted((set(before) | set(after)) - NOT_SETTINGS):
        a, b = before.get(key), after.get(key)
        if per_part.normal(key, a) != per_part.normal(key, b):
            out.append(f"{key}: {per_part.show(a)} -> {per_part.show(b)}")
    return "; ".join(out)


def _chosen(url: str, study: str, df: pd.DataFrame) -> dict[str, dict[str, Any]]:
    """The best default and the optimum: the ladder's ends after `final`, else the best trials."""
    rungs = read_table(url, LADDER, study)
    by_id = df.set_index("id", drop=False)
    if not rungs.empty:
        rungs = rungs.sort_values("position")
        out = {}
        for side, rung in (("default", rungs.iloc[0]), ("optimal", rungs.iloc[-1])):
            source = rung["source_run_id"]
            if pd.isna(source) or int(source) not in by_id.index:
                raise AnalysisError(
                    f"ladder of {study!r}: the {side} rung names run {source}, "
                    "which is not in nbtl_runs"
                )
            out[side] = {
                "run": by_id.loc[int(source)],
                "config_hash": rung["config_hash"],
                "val_mean": _float(rung["val_mean"]),
                "val_n": 0 if pd.isna(rung["val_n"]) else int(rung["val_n"]),
                "notes": list(parse_json(rung["notes"]) or []),
            }
        return out
    out = {}
    for side, role, verb in (("default", "default", "baseline"), ("optimal", "search", "run")):
        best = _best(
            df[(df["role"] == role) & (df["state"] == "complete") & df["val_top1"].notna()]
        )
        if best is None:
            what = "default baseline" if role == "default" else "complete search runs"
            raise AnalysisError(
                f"study {study!r} has no {what} yet: run `nbtl-search {verb} STUDY.yaml`"
            )
        out[side] = {
            "run": best,
            "config_hash": best["config_hash"],
            "val_mean": float(best["val_top1"]),
            "val_n": 1,
            "notes": [],
        }
    return out


def _best(df: pd.DataFrame) -> pd.Series | None:
    if df.empty:
        return None
    return df.sort_values(["val_top1", "id"], ascending=[False, True]).iloc[0]


def _bootstrap(
    url: str, df: pd.DataFrame, optimal: pd.DataFrame, default: pd.DataFrame
) -> tuple[stats.Interval, int]:
    """The paired bootstrap interval, or no interval when some final run's predictions are
    missing (then only the Welch interval decides)."""
    wanted = list(optimal["id"]) + list(default["id"])
    probs = _member_predictions(url, df[df["id"].isin(wanted)])
    if not len(optimal) or not len(default) or set(probs) != set(int(i) for i in wanted):
        return stats.NO_INTERVAL, 0
    labels = next(iter(probs.values()))[1]
    if any(not np.array_equal(y, labels) for _, y in probs.values()):
        return stats.NO_INTERVAL, 0
    correct = {i: p.argmax(axis=1) == y for i, (p, y) in probs.items()}
    a = np.stack([correct[int(i)] for i in optimal["id"]])
    b = np.stack([correct[int(i)] for i in default["id"]])
    return stats.paired_bootstrap_interval(a, b), len(labels)


def _member_predictions(
    url: str, members: pd.DataFrame
) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """Predictions of `members` from the database. A run without them is left out with a
    warning: only what needs it (the ensemble, the bootstrap interval) is missing then."""
    found = predictions(url, members["id"])
    missing = sorted(int(i) for i in members["id"] if int(i) not in found)
    if missing:
        warnings.warn(
            f"final run(s) {', '.join(map(str, missing))} have no stored test "
            "predictions: left out of the ensemble and the bootstrap interval",
            AnalysisWarning,
            stacklevel=3,
        )
    return found


def _ensemble(probs: dict[int, tuple[np.ndarray, np.ndarray]]) -> float:
    total, labels = None, None
    for run_id, (p, y) in probs.items():
        if total is None:
            total, labels = np.zeros_like(p), y
        elif p.shape != total.shape or not np.array_equal(y, labels):
            raise AnalysisError(
                f"final run {run_id}: its predictions are not over the same test "
                "set as the other members' (labels or shape differ)"
            )
        total += p
    return float(100.0 * np.mean(total.argmax(axis=1) == labels))


def _ensemble_or_nan(url: str, df: pd.DataFrame) -> tuple[float, int]:
    """The ensemble of every final search model with predictions, or (NaN, 0) when there is none."""
    probs = _member_predictions(url, ensemble_members(df))
    return (math.nan, 0) if not probs else (_ensemble(probs), len(probs))


def _float(value: Any) -> float:
    return math.nan if value is None or pd.isna(value) else float(value)
