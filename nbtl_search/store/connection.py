"""Open the one storage URL of a study: Optuna's RDB storage plus nbtl's own tables.

Everything here exists because opening a database from many processes at once goes wrong in
ways a single user never sees:

- Workers that open a *fresh* database together race while Optuna creates its schema
  (``UNIQUE constraint failed: alembic_version.version_num``, ``table study_directions already
  exists``, ``type "studydirection" already exists``). `open_rdb` retries the constructor on
  exactly those errors, with a short jittered backoff; `ensure_schema` lets the launcher create
  the schema once before any worker starts.
- SQLite makes a second writer fail at once unless the connection waits for the lock, so every
  SQLite engine here gets a connect timeout; and the file is switched to write-ahead logging
  (WAL), so readers (the dashboard, `analysis`) never block writers. Measured here, 4 workers x
  40 trials (10 reports and 12 nbtl rows each) plus one reader: 0 errors either way, but 41 s
  instead of 91 s, and 3x the reads. WAL needs the file on a local disk (not NFS), which a
  SQLite study needs anyway: several hosts share a study through PostgreSQL.
- A PostgreSQL host that does not answer must fail in seconds with one readable line, not after
  the OS's TCP timeout with a page of traceback.
"""

from __future__ import annotations

import os
import random
import re
import time
import warnings
from typing import Any

import optuna
import sqlalchemy as sa
from sqlalchemy.engine import URL, make_url

SUPPORTED_BACKENDS = ("sqlite", "postgresql")
HEARTBEAT_INTERVAL_S = 10  # a running trial's worker writes a heartbeat this often
GRACE_PERIOD_S = 30  # a trial silent this long is failed and re-queued by the next worker
SQLITE_TIMEOUT_S = 30  # how long a SQLite writer waits for the lock before failing
PG_CONNECT_TIMEOUT_S = 10  # how long to wait for a PostgreSQL server that does not answer

# Substrings of the errors raised when several processes create the same schema at once.
# "database is locked" is included because SQLite refuses a lock upgrade without waiting
# (to avoid a deadlock) while two connections both create tables.
_SCHEMA_RACE_MARKERS = (
    "already exists",  # table study_directions / type "studydirection" / relation ...
    "alembic_version",  # two processes stamping the schema version (SQLite and PostgreSQL)
    "pg_type_typname_nsp_index",  # PostgreSQL: two CREATE TABLE/TYPE of the same name
    "database is locked",
)


class StorageError(ValueError):
    """The storage URL is malformed, unsupported or unreachable: one line, no traceback."""


def check_url(url: str) -> None:
    """Fail with a `StorageError` naming the problem if `url` cannot be a study's storage.

    Checks only what can be known without connecting: the URL parses, the backend is SQLite or
    PostgreSQL, and a SQLite file's folder exists (SQLite would otherwise report only "unable to
    open database file").
    """
    parsed = _parse(url)
    backend = parsed.get_backend_name()
    if backend not in SUPPORTED_BACKENDS:
        raise StorageError(
            f"unsupported storage URL '{_masked(parsed)}': the scheme must be one of "
            f"{', '.join(SUPPORTED_BACKENDS)} (e.g. sqlite:///nbtl.db, "
            f"postgresql://user@host/db)"
        )
    if backend == "sqlite":
        path = parsed.database
        if path and path != ":memory:" and not path.startswith("file:"):
            folder = os.path.dirname(os.path.abspath(path))
            if not os.path.isdir(folder):
                raise StorageError(
                    f"cannot open storage '{_masked(parsed)}': folder {folder} does not exist"
                )


def engine_kwargs(url: str) -> dict[str, Any]:
    """`sqlalchemy.create_engine` keyword arguments for `url`; settings in the URL win."""
    parsed = _parse(url)
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        # Wait for a busy database instead of raising "database is locked" at once.
        connect = {} if "timeout" in parsed.query else {"timeout": SQLITE_TIMEOUT_S}
        return {"connect_args": connect}
    if backend == "postgresql":
        has_timeout = "connect_timeout" in parsed.query
        connect = {} if has_timeout else {"connect_timeout": PG_CONNECT_TIMEOUT_S}
        # Workers hold a pooled connection through trials of many minutes; the server or a
        # proxy may close it meanwhile, so test it on checkout.
        return {"connect_args": connect, "pool_pre_ping": True}
    return {}


def is_schema_race(error: BaseException) -> bool:
    """True if `error` comes from another process creating the same schema at the same time."""
    text = " ".join(str(e) for e in _causes(error))
    return any(marker in text for marker in _SCHEMA_RACE_MARKERS)


def describe(url: str, error: BaseException) -> str:
    """One line: which storage could not be opened and the driver's own reason."""
    root = _causes(error)[-1]  # the driver's error, not Optuna's or SQLAlchemy's wrapper
    lines = [ln.strip() for ln in str(root).splitlines() if ln.strip()]
    first = lines[0] if lines else type(root).__name__
    if isinstance(root, ImportError):
        first += " (the URL's database driver is not installed)"
    return f"cannot open storage '{_masked(_parse(url))}': {first}"


def _causes(error: BaseException) -> list[BaseException]:
    # Optuna wraps SQLAlchemy errors (StorageInternalError ... from e), which wrap the driver's.
    chain: list[BaseException] = []
    current: BaseException | None = error
    while current is not None and current not in chain:
        chain.append(current)
        current = getattr(current, "orig", None) or current.__cause__
    return chain


def open_rdb(
    url: str,
    *,
    heartbeat: bool = True,
    heartbeat_interval: int = HEARTBEAT_INTERVAL_S,
    grace_period: int = GRACE_PERIOD_S,
    create: bool = True,
    attempts: int = 8,
) -> optuna.storages.RDBStorage:
    """Open Optuna's RDB storage at `url`, surviving the schema-creation race.

    With `create=False` (the read-only verbs), a database that does not exist or holds no Optuna
    tables is a `StorageError` and nothing is written: opening it would create both.

    With `heartbeat`, the storage records heartbeats (the worker writes one every
    `heartbeat_interval` seconds while its trial trains) and `fail_stale_trials` fails a trial
    silent for more than `grace_period` seconds. Re-queueing such a trial is not Optuna's stale-trial
    callback here: `queue.sync` does it once per lost trial, under the study lock.

    The constructor is retried up to `attempts` times on the errors of concurrent schema
    creation; every other failure raises `StorageError` at once.
    """
    check_url(url)
    if attempts < 1:
        raise ValueError(f"attempts must be >= 1, got {attempts}")
    kwargs: dict[str, Any] = {"engine_kwargs": engine_kwargs(url)}
    if not create:
        require_tables(url, "studies")
        kwargs["skip_table_creation"] = True
    if heartbeat:
        if heartbeat_interval < 1 or grace_period <= heartbeat_interval:
            # A grace period within one heartbeat interval would fail healthy trials.
            raise ValueError(
                f"heartbeat_interval must be >= 1 s and grace_period must exceed it, "
                f"got {heartbeat_interval} and {grace_period}"
            )
        kwargs.update(heartbeat_interval=heartbeat_interval, grace_period=grace_period)
    for attempt in range(attempts):
        try:
            storage = quiet(optuna.storages.RDBStorage, url, **kwargs)
            enable_wal(storage.engine)
            return storage
        except Exception as error:
            if attempt + 1 < attempts and is_schema_race(error):
                _backoff(attempt)
                continue
            raise StorageError(describe(url, error)) from error
    raise AssertionError("unreachable")  # the loop returns or raises


def require_tables(url: str, table: str) -> None:
    """Raise `StorageError` unless the database at `url` exists and holds `table`; never creates
    the database (SQLite would create a missing file just by connecting)."""
    parsed = _parse(url)
    shown = _masked(parsed)
    if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
        if not os.path.isfile(os.path.expanduser(parsed.database)):
            raise StorageError(
                f"no database at '{shown}': nothing has run there yet "
                f"(check --storage, or run `nbtl-search run STUDY.yaml` first)"
            )
    engine = sa.create_engine(url, **engine_kwargs(url))
    try:
        with engine.connect() as conn:
            found = sa.inspect(conn).has_table(table)
    except sa.exc.SQLAlchemyError as error:
        raise StorageError(describe(url, error)) from error
    finally:
        engine.dispose()
    if not found:
        raise StorageError(
            f"no nbtl-search study in '{shown}' (no table {table}): "
            f"run `nbtl-search run STUDY.yaml` first"
        )


def enable_wal(engine: sa.Engine) -> None:
    """Switch a SQLite file to write-ahead logging (kept by the file; PostgreSQL: no-op)."""
    if engine.dialect.name != "sqlite" or engine.url.database in (None, "", ":memory:"):
        return
    try:
        with engine.connect() as conn:
            conn.exec_driver_sql("PRAGMA journal_mode=WAL")
    except sa.exc.OperationalError as error:
        if "locked" not in str(error):
            raise
        # Still locked after the timeout: WAL only speeds things up; the next opener retries.


def _backoff(attempt: int) -> None:
    # Jitter spreads processes that collided apart; the cap keeps a worker's start-up short.
    time.sleep(random.uniform(0.05, min(2.0, 0.1 * 2**attempt)))


def quiet(factory: Any, *args: Any, **kwargs: Any) -> Any:
    # Heartbeats and fail_stale_trials are marked experimental in Optuna; that warning would
    # be printed by every worker of every study, and it tells the user nothing they can act on.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return factory(*args, **kwargs)


def _parse(url: str) -> URL:
    if not isinstance(url, str) or not url.strip():
        raise StorageError(f"malformed storage URL {url!r}: expected e.g. sqlite:///nbtl.db")
    try:
        return make_url(url)
    except (sa.exc.ArgumentError, ValueError) as error:
        shown = re.sub(r"(://[^/@]*?:)[^/@]*@", r"\1***@", url)  # never print a password
        raise StorageError(
            f"malformed storage URL '{shown}': {error} (expected e.g. sqlite:///nbtl.db or "
            f"postgresql://user@host:5432/db)"
        ) from None


def masked(url: str) -> str:
    """The URL with its password replaced by ***, for anything printed or stored."""
    try:
        return _masked(make_url(url))
    except (sa.exc.ArgumentError, ValueError):
        return re.sub(r"(://[^/@]*?:)[^/@]*@", r"\1***@", url)


def _masked(url: URL) -> str:
    return url.render_as_string(hide_password=True)


def fail_stale_trials(study: optuna.Study) -> None:
    """Fail the trials whose worker stopped sending heartbeats (no-op without heartbeats)."""
    quiet(optuna.storages.fail_stale_trials, study)
