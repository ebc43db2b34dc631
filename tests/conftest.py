"""Shared fixtures: storage URLs for the same tests on SQLite and on PostgreSQL.

PostgreSQL comes from ``NBTL_TEST_PG`` (default ``postgresql://postgres@127.0.0.1:5432/test``, a
server with trust auth); each test gets a fresh database, dropped afterwards. Without a server
the PostgreSQL cases are skipped, except in CI (``CI`` set), where they fail: there a missing
server is a broken pipeline, not a choice (``.ci/postgres.sh`` provides one).

Slurm, the same way: the tests of `submit` on a real cluster need Slurm's commands and a node that
answers (``.ci/slurm.sh`` starts a one-node cluster and exports ``SLURM_CONF``); without one they
skip with the reason, in CI they fail.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

PG_DEFAULT = "postgresql://postgres@127.0.0.1:5432/test"


def _pg_base() -> str:
    return os.environ.get("NBTL_TEST_PG", PG_DEFAULT)


def _admin_connect(base: str):  # -> psycopg.Connection
    import psycopg

    url = make_url(base).set(drivername="postgresql")  # libpq does not know "+psycopg"
    conninfo = url.render_as_string(hide_password=False)
    return psycopg.connect(conninfo, autocommit=True, connect_timeout=5)


@pytest.fixture(scope="session", autouse=True)
def _image_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Decoded-image caches of the tests' miniature trees go to a temporary folder, never to the
    user's ~/.cache (subprocesses inherit the variable)."""
    previous = os.environ.get("NBTL_IMAGE_CACHE_DIR")
    os.environ["NBTL_IMAGE_CACHE_DIR"] = str(tmp_path_factory.mktemp("image-cache"))
    yield
    if previous is None:
        del os.environ["NBTL_IMAGE_CACHE_DIR"]
    else:
        os.environ["NBTL_IMAGE_CACHE_DIR"] = previous


@pytest.fixture(scope="session")
def _pg_server() -> str | None:
    """None if the server answers, else why not (checked once per session)."""
    try:
        _admin_connect(_pg_base()).close()
    except Exception as error:
        return f"{type(error).__name__}: {str(error).strip().splitlines()[0]}"
    return None


@pytest.fixture
def pg_url(_pg_server: str | None) -> Iterator[str]:
    """A fresh PostgreSQL database as a SQLAlchemy URL (psycopg 3 driver)."""
    if _pg_server is not None:
        shown = make_url(_pg_base()).render_as_string(hide_password=True)
        message = f"PostgreSQL not reachable at {shown}: {_pg_server}"
        if os.environ.get("CI"):
            pytest.fail(message, pytrace=False)
        pytest.skip(message)

    name = f"nbtl_t_{uuid.uuid4().hex[:8]}"
    with _admin_connect(_pg_base()) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = make_url(_pg_base()).set(drivername="postgresql+psycopg", database=name)
    try:
        yield url.render_as_string(hide_password=False)
    finally:
        with _admin_connect(_pg_base()) as conn:
            # FORCE: a test that failed may have left worker processes connected.
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    """A fresh SQLite database file (not created yet) in the test's own folder."""
    return f"sqlite:///{tmp_path / 'nbtl.db'}"


@pytest.fixture(params=["sqlite", "postgresql"])
def storage_url(request: pytest.FixtureRequest) -> str:
    """The same test against every supported backend (Optuna's StorageTestCase style)."""
    return request.getfixturevalue({"sqlite": "sqlite_url", "postgresql": "pg_url"}[request.param])


@pytest.fixture(scope="session")
def slurm_cluster() -> str:
    """The partition's node state once Slurm answers (idle, mix, alloc); skip (fail in CI) if not."""
    why = None
    if shutil.which("sbatch") is None or shutil.which("sinfo") is None:
        why = "Slurm's commands are not installed (.ci/slurm.sh installs and starts a cluster)"
    else:
        try:
            done = subprocess.run(
                ["sinfo", "-h", "-o", "%t"], capture_output=True, text=True, timeout=20
            )
            state = done.stdout.split()[0] if done.stdout.split() else ""
            if done.returncode != 0 or not state.startswith(("idle", "mix", "alloc")):
                why = f"no Slurm node is up ({' '.join((done.stderr or state).split())[:200]})"
        except subprocess.TimeoutExpired:
            why = "Slurm's controller does not answer"
    if why is not None:
        if os.environ.get("CI"):
            pytest.fail(why, pytrace=False)
        pytest.skip(why + '; eval "$(.ci/slurm.sh)" starts one')
    return state
