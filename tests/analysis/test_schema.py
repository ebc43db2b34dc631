"""The hand-made test database and analysis' own copies of the orchestrator's rules must match the
real thing, or the analysis tests would pass against a schema nobody writes."""

from __future__ import annotations

import sqlalchemy as sa

from nbtl_search.store import results, schema
from tests.analysis import db


def test_the_hand_made_tables_are_the_real_tables() -> None:
    for name, table in db.metadata.tables.items():
        real = schema.metadata.tables[name]
        assert [c.name for c in table.columns] == [c.name for c in real.columns], name
        for ours, theirs in zip(table.columns, real.columns):
            assert ours.nullable == theirs.nullable, f"{name}.{ours.name}"
            assert ours.primary_key == theirs.primary_key, f"{name}.{ours.name}"
    assert set(db.metadata.tables) == set(schema.metadata.tables)


def test_the_hand_made_hash_ignores_what_the_real_one_ignores() -> None:
    cfg = db.config(2, [0.1], [0.0])
    for key in ("seed", "train_split"):
        assert key in results.HASH_EXCLUDED
        changed = dict(cfg, **{key: "other" if key == "train_split" else 99})
        assert db.config_hash(changed) == db.config_hash(cfg)
    assert db.config_hash(dict(cfg, new_layers=3)) != db.config_hash(cfg)


def test_analysis_reads_only_the_tables_the_orchestrator_writes() -> None:
    from analysis import load

    for table in (load.RUNS, load.EPOCHS, load.LADDER, load.PREDICTIONS):
        assert isinstance(schema.metadata.tables[table], sa.Table)
