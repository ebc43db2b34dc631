"""One decision across workers: a lock taken through the study's own storage.

Optuna's samplers and callbacks live in each worker process, so anything that must happen once
per study (enqueue a grid point, re-queue a lost trial, pop the next waiting trial) is decided while
holding the `StudyLock`, by whichever worker gets it first:

- SQLite (one host): an exclusive `flock` on a file next to the database (`nbtl.db.lock`).
- PostgreSQL (any number of hosts): a session-level advisory lock, keyed by the study name.

Both are released by the operating system or the server when their process dies, so a worker
killed while holding the lock never blocks the study. Hold it for milliseconds: reading the trial
list and enqueueing, never while training.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.pool import NullPool

from .connection import engine_kwargs

_MEMORY_LOCK = threading.Lock()  # an in-memory SQLite study lives in one process


class StudyLock:
    """`with StudyLock(url, study): ...`, or `acquire()` / `release()` when the lock is handed over
    (a worker releases it once Optuna has given it its trial). `release()` is idempotent."""

    def __init__(self, url: str, study: str) -> None:
        self.url, self.study = url, study
        self._held: contextlib.ExitStack | None = None

    def acquire(self) -> None:
        if self._held is not None:
            raise RuntimeError("StudyLock is not re-entrant")
        stack = contextlib.ExitStack()
        stack.enter_context(_lock(self.url, self.study))
        self._held = stack

    def release(self) -> None:
        held, self._held = self._held, None
        if held is not None:
            held.close()

    def __enter__(self) -> StudyLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


@contextmanager
def _lock(url: str, study: str) -> Iterator[None]:
    parsed = sa.make_url(url)
    if parsed.get_backend_name() == "postgresql":
        with _advisory_lock(url, study):
            yield
    elif parsed.database in (None, "", ":memory:"):
        with _MEMORY_LOCK:
            yield
    else:
        path = Path(parsed.database).expanduser()
        with _file_lock(path.with_name(path.name + ".lock")):
            yield


@contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    with open(path, "a+b") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextmanager
def _advisory_lock(url: str, study: str) -> Iterator[None]:
    key = int.from_bytes(hashlib.sha256(f"nbtl:{study}".encode()).digest()[:8], "big", signed=True)
    # NullPool: the connection that held the lock is closed, never handed to someone else
    engine = sa.create_engine(
        url,
        poolclass=NullPool,
        **{k: v for k, v in engine_kwargs(url).items() if k != "pool_pre_ping"},
    )
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT pg_advisory_lock(:k)"), {"k": key})
            try:
                yield
            finally:
                conn.execute(sa.text("SELECT pg_advisory_unlock(:k)"), {"k": key})
    finally:
        engine.dispose()
