"""The hand-made database every analysis test reads (built once per test module)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.analysis import db


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("db")
    db.build(folder)
    return folder


@pytest.fixture
def url(built: Path) -> str:
    return f"sqlite:///{built / 'nbtl.db'}"
