"""Read nbtl's tables (`nbtl_runs`, `nbtl_epochs`) from a storage URL into pandas.

The table and column names are the contract with the orchestrator that writes them; nothing here
imports `nbtl_search`, torch, timm or optuna. The one thing shared with the trainer is its
torch-free vocabulary of per-part values (`trainer.per_part`), so a config reads here exactly as it
trained.

`runs()` flattens each run's JSON `config` into columns:

- the search axes get short, unprefixed columns, with the 1-or-3 lists expanded per part
  `[new, upper, lower]` (one value = the same for every part; `trainer.per_part.flat`):
  `new_layers`, `num_low`, `lr_new`, `lr_upper`, `lr_lower`; `l2sp_upper`, `l2sp_lower` (towards
  the pre-trained weights); `l2_new`, `l2_upper`, `l2_lower` (towards zero; `l2_new` adds the new
  part's entry of `l2sp_rates`, which also pulls towards zero since new layers have no pre-trained
  weights);
- every config key `k` is also kept verbatim as `cfg_k` (lists as tuples, dicts as JSON text), so
  `cfg_weight_decay`, `cfg_mixup`, `cfg_aa`, `cfg_lrs`, ... never collide with the run's own
  columns (`seed`, `dataset`, `model`, ...).
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import sqlalchemy as sa

from trainer import per_part

RUNS = "nbtl_runs"
EPOCHS = "nbtl_epochs"
LADDER = "nbtl_ladder"
PREDICTIONS = "nbtl_predictions"
VERSION = "nbtl_schema"
# The schema version this package reads: our copy of nbtl_search.store.schema.SCHEMA_VERSION (a
# test checks they agree). Any nbtl-search verb upgrades an older database in place.
SCHEMA_VERSION = 4
LR_COLUMNS = per_part.PART_AXES["lrs"]
AXES = ("new_layers", "num_low", *per_part.FLAT_AXES)
# Config keys that say where or how a run executed, or on which split, not what it trained:
# never "a setting that differs". Our own copy of the orchestrator's rule (the field roles
# location, seed, execution, evaluation and test in trainer/config.py); a test checks they agree.
NOT_SETTINGS = frozenset(
    {
        "data_dir",
        "train_split",
        "channels_last",
        "seed",
        "device",
        "workers",
        "image_cache",
        "output",
        "eval_test",
        "save_test_predictions",
        "checkpoint",
        "resume",
        "limit_train_batches",
        "limit_eval_batches",
    }
)
_TIMES = ("started_at", "finished_at")
_INTS = ("trial_number", "seed", "best_epoch", "epochs_run", "source_run_id")


class AnalysisError(ValueError):
    """The database does not (yet) hold what was asked for; the message says what to run first."""


class AnalysisWarning(UserWarning):
    """A result is missing, so one figure or column is left out (the rest is computed)."""


def display_url(url: str) -> str:
    """The URL with any password masked, for messages."""
    try:
        return sa.make_url(url).render_as_string(hide_password=True)
    except sa.exc.ArgumentError:
        return url


def sqlite_path(url: str) -> Path | None:
    """The database file of a SQLite URL (None for other back ends and in-memory SQLite)."""
    u = sa.make_url(url)
    if u.get_backend_name() != "sqlite" or u.database in (None, "", ":memory:"):
        return None
    return Path(u.database)


@contextmanager
def connect(url: str) -> Iterator[sa.Connection]:
    """A read connection that first checks nbtl's tables exist.

    A missing SQLite file is an error rather than a new empty database: opening it would create
    the file, and analysis must never write.
    """
    try:
        path = sqlite_path(url)
    except sa.exc.ArgumentError as e:
        raise AnalysisError(f"not a database URL: {url!r} ({e})") from None
    if path is not None and not path.is_file():
        raise AnalysisError(f"no database file {path}: run `nbtl-search run STUDY.yaml` first")
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            if not sa.inspect(conn).has_table(RUNS):
                raise AnalysisError(
                    f"no nbtl tables in {display_url(url)}: run `nbtl-search run STUDY.yaml` first"
                )
            _check_version(conn, url)
            yield conn
    finally:
        engine.dispose()


def _check_version(conn: sa.Connection, url: str) -> None:
    found = 1  # the first releases wrote no version table
    if sa.inspect(conn).has_table(VERSION):
        found = conn.execute(sa.text(f"SELECT MAX(version) FROM {VERSION}")).scalar() or 1
    if found < SCHEMA_VERSION:
        raise AnalysisError(
            f"the tables in {display_url(url)} were written by an older nbtl-search (schema "
            f"{found}; this reads {SCHEMA_VERSION}): any nbtl-search verb upgrades them in place, "
            "e.g. `nbtl-search status STUDY.yaml`"
        )
    if found > SCHEMA_VERSION:
        raise AnalysisError(
            f"the tables in {display_url(url)} were written by a newer nbtl-search (schema "
            f"{found}; this reads {SCHEMA_VERSION}): upgrade nbtl-search to read them"
        )


def studies(url: str) -> list[str]:
    """Names of the studies that have at least one run, sorted."""
    with connect(url) as conn:
        rows = conn.execute(sa.text(f"SELECT DISTINCT study FROM {RUNS}")).scalars()
        return sorted(s for s in rows if s is not None)


def runs(url: str, study: str | None = None) -> pd.DataFrame:
    """One row per run of `study` (every study if None), ordered by id, config flattened.

    Raises AnalysisError if there are no nbtl tables, or `study` has no runs.
    """
    with connect(url) as conn:
        df = _read(conn, f"SELECT * FROM {RUNS}", study)
        if study is not None and df.empty:
            names = conn.execute(sa.text(f"SELECT DISTINCT study FROM {RUNS}")).scalars()
            listed = ", ".join(sorted(s for s in names if s is not None)) or "(none)"
            raise AnalysisError(f"study {study!r} not found; studies here: {listed}")
    for col in _TIMES:
        if col in df:
            df[col] = pd.to_datetime(df[col], errors="coerce", format="mixed")
    for col in _INTS:  # nullable integers: NULL must not turn ids into floats
        if col in df:
            df[col] = pd.to_numeric(df[col]).astype("Int64")
    return _flatten(df.sort_values("id", ignore_index=True))


def epochs(
    url: str, study: str | None = None, run_ids: Iterable[int] | None = None
) -> pd.DataFrame:
    """Per-epoch rows (with the run's `study` and `role`), ordered by run id and epoch.

    The epoch's `lrs` JSON is expanded into `lr_new`, `lr_upper`, `lr_lower`.
    """
    sql = (
        f"SELECT e.*, r.study AS study, r.role AS role FROM {EPOCHS} e "
        f"JOIN {RUNS} r ON r.id = e.run_id"
    )
    with connect(url) as conn:
        df = _read(conn, sql, study, prefix="r.")
    if run_ids is not None:
        df = df[df["run_id"].isin(list(run_ids))]
    df = df.sort_values(["run_id", "epoch"], ignore_index=True)
    parts = [per_part.flat({"lrs": parse_json(v)}) for v in df["lrs"]]
    for col in LR_COLUMNS:
        df[col] = [p[col] for p in parts]
    return df


def read_table(url: str, table: str, study: str | None = None) -> pd.DataFrame:
    """A whole nbtl table (of one study), as pandas."""
    with connect(url) as conn:
        return _read(conn, f"SELECT * FROM {table}", study)


def predictions(url: str, run_ids: Iterable[int]) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """run id -> (test softmax, labels) of final runs, from the `nbtl_predictions` table; runs
    without stored predictions are left out."""
    ids = [int(i) for i in run_ids]
    if not ids:
        return {}
    with connect(url) as conn:
        query = sa.text(f"SELECT run_id, npz FROM {PREDICTIONS} WHERE run_id IN :ids")
        query = query.bindparams(sa.bindparam("ids", expanding=True))
        rows = conn.execute(query, {"ids": ids}).all()
    out = {}
    for run_id, blob in rows:
        with np.load(io.BytesIO(bytes(blob)), allow_pickle=False) as npz:
            out[int(run_id)] = (npz["probs"].astype(np.float64), npz["labels"])
    return out


def _read(conn: sa.Connection, sql: str, study: str | None, prefix: str = "") -> pd.DataFrame:
    if study is None:
        return pd.read_sql(sa.text(sql), conn)
    return pd.read_sql(
        sa.text(f"{sql} WHERE {prefix}study = :study"), conn, params={"study": study}
    )


def parse_json(text: Any) -> Any:
    """A JSON column's value (None for NULL)."""
    if text is None or (isinstance(text, float) and math.isnan(text)):
        return None
    if isinstance(text, (dict, list)):  # JSON columns on PostgreSQL arrive decoded
        return text
    return json.loads(text)


def _cell(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(value)
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True)
    return value


def _flatten(df: pd.DataFrame) -> pd.DataFrame:
    configs = []
    for run_id, text in zip(df["id"], df["config"]):
        try:
            cfg = parse_json(text) or {}
        except json.JSONDecodeError as e:
            raise AnalysisError(f"run {run_id}: config is not valid JSON ({e})") from None
        configs.append(cfg)
    for key in ("new_layers", "num_low"):
        df[key] = pd.array([c.get(key) for c in configs], dtype="Int64")
    flat = [per_part.flat(c) for c in configs]
    for col in per_part.FLAT_AXES:
        df[col] = [f[col] for f in flat]
    keys = sorted({k for c in configs for k in c})
    extra = pd.DataFrame(
        {f"cfg_{k}": [_cell(c.get(k)) for c in configs] for k in keys}, index=df.index
    )
    return pd.concat([df, extra], axis=1)
