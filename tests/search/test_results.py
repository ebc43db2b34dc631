"""The results store, the same tests on SQLite and PostgreSQL (fixture `storage_url`)."""

from __future__ import annotations

import multiprocessing as mp
from datetime import timezone

import pytest
import sqlalchemy as sa

from nbtl_search.store.results import ResultStore
from trainer.config import TrainConfig, config_hash


def _config(**changes) -> dict:
    return TrainConfig(dataset="digits", model="test_resnet", **changes).to_dict()


def _epoch(store: ResultStore, run_id: int, epoch: int, val_top1: float | None) -> None:
    store.add_epoch(
        run_id,
        epoch=epoch,
        train_loss=1.0 / (epoch + 1),
        val_loss=1.5,
        val_top1=val_top1,
        val_top5=0.9,
        lrs=[0.1, 0.01, 0.001],
        penalty=0.25,
        seconds=2.0,
    )


@pytest.fixture
def store(storage_url: str):
    store = ResultStore(storage_url)
    yield store
    store.close()


def test_round_trip(store: ResultStore) -> None:
    config = _config(lrs=(0.1, 0.01, 0.001), seed=7)
    run_id = store.start_run(
        study="s", role="search", config=config, seed=7, device="cpu", trial_number=3
    )
    (row,) = store.runs()
    assert (row["id"], row["state"], row["trial_number"]) == (run_id, "running", 3)
    assert (row["dataset"], row["model"], row["seed"]) == ("digits", "test_resnet", 7)
    assert row["config"] == config and row["config_hash"] == config_hash(config)
    assert row["epochs_run"] == 0 and row["finished_at"] is None and row["host"]
    assert row["started_at"].tzinfo is not None
    assert row["started_at"].utcoffset() == timezone.utc.utcoffset(None)

    _epoch(store, run_id, 0, 0.5)
    _epoch(store, run_id, 1, 0.75)
    store.finish_run(
        run_id,
        state="complete",
        val_top1=0.75,
        best_epoch=1,
        epochs_run=2,
        test_top1=0.7,
        test_top5=0.95,
        wall_s=4.0,
        images_per_s=100.0,
    )
    (row,) = store.runs()
    assert row["state"] == "complete" and row["finished_at"] >= row["started_at"]
    assert (row["val_top1"], row["best_epoch"], row["epochs_run"]) == (0.75, 1, 2)
    assert (row["test_top1"], row["test_top5"], row["wall_s"], row["images_per_s"]) == (
        0.7,
        0.95,
        4.0,
        100.0,
    )
    epochs = store.epochs(run_id)
    assert [e["epoch"] for e in epochs] == [0, 1]
    assert epochs[1]["val_top1"] == 0.75 and epochs[1]["lrs"] == [0.1, 0.01, 0.001]
    assert epochs[0]["penalty"] == 0.25 and epochs[0]["seconds"] == 2.0


@pytest.mark.parametrize("state", ["failed", "pruned"])
def test_unfinished_run_keeps_row_and_epochs(store: ResultStore, state: str) -> None:
    run_id = store.start_run(study="s", role="search", config=_config(), seed=1, device="cpu")
    _epoch(store, run_id, 0, 0.4)
    _epoch(store, run_id, 1, 0.6)
    _epoch(store, run_id, 2, 0.6)
    store.finish_run(run_id, state=state, error="RuntimeError: boom" if state == "failed" else None)
    (row,) = store.runs()
    assert row["state"] == state
    assert row["error"] == ("RuntimeError: boom" if state == "failed" else None)
    # Not passed by the caller: derived from the stored epochs (first epoch of a tie).
    assert (row["val_top1"], row["best_epoch"], row["epochs_run"]) == (0.6, 1, 3)
    assert [e["val_top1"] for e in store.epochs(run_id)] == [0.4, 0.6, 0.6]


def test_lost_run_is_failed_once_and_finished_runs_stay(store: ResultStore) -> None:
    lost = store.start_run(study="s", role="search", config=_config(), seed=1, device="cpu")
    done = store.start_run(study="s", role="search", config=_config(), seed=2, device="cpu")
    _epoch(store, lost, 0, 0.5)
    store.finish_run(done, state="pruned")
    assert store.mark_lost(lost, "worker lost") is True
    assert store.mark_lost(lost, "worker lost again") is False  # every worker calls it
    assert store.mark_lost(done, "worker lost") is False  # finished: not this worker's loss
    rows = {r["id"]: r for r in store.runs()}
    assert (rows[lost]["state"], rows[lost]["error"], rows[lost]["epochs_run"]) == (
        "failed",
        "worker lost",
        1,
    )
    assert rows[lost]["finished_at"] is not None
    assert (rows[done]["state"], rows[done]["error"]) == ("pruned", None)


def test_final_run_links_its_source(store: ResultStore) -> None:
    source = store.start_run(study="s", role="default", config=_config(), seed=1, device="cpu")
    final = store.start_run(
        study="s",
        role="final",
        config=_config(train_split="trainval"),
        seed=2,
        device="cuda:0",
        source_run_id=source,
        final_of="default",
    )
    store.finish_run(final, state="complete", test_top1=0.8)
    row = store.runs(role="final")[0]
    assert (row["source_run_id"], row["final_of"], row["device"]) == (source, "default", "cuda:0")
    assert row["test_top1"] == 0.8 and row["val_top1"] is None


def test_bad_values_are_refused(store: ResultStore) -> None:
    with pytest.raises(ValueError, match="'tuning'"):
        store.start_run(study="s", role="tuning", config=_config(), seed=1, device="cpu")
    with pytest.raises(ValueError, match="'best'"):
        store.start_run(
            study="s", role="final", config=_config(), seed=1, device="cpu", final_of="best"
        )
    run_id = store.start_run(study="s", role="search", config=_config(), seed=1, device="cpu")
    for state in ("running", "done"):
        with pytest.raises(ValueError, match=repr(state)):
            store.finish_run(run_id, state=state)
    with pytest.raises(ValueError, match="no run with id 999"):
        store.finish_run(999, state="complete")
    assert store.runs()[0]["state"] == "running"


def test_runs_filter_by_study_and_role(store: ResultStore) -> None:
    for study, role in [("a", "search"), ("a", "default"), ("b", "search"), ("a", "search")]:
        store.start_run(study=study, role=role, config=_config(), seed=1, device="cpu")
    assert [r["id"] for r in store.runs()] == [1, 2, 3, 4]
    assert [r["id"] for r in store.runs(study="a")] == [1, 2, 4]
    assert [r["id"] for r in store.runs(role="search")] == [1, 3, 4]
    assert [r["id"] for r in store.runs(study="a", role="search")] == [1, 4]
    assert store.runs(study="c") == []


def test_epoch_reported_again_replaces_it_and_nan_is_null(store: ResultStore) -> None:
    run_id = store.start_run(study="s", role="search", config=_config(), seed=1, device="cpu")
    _epoch(store, run_id, 0, 0.1)
    _epoch(store, run_id, 0, 0.3)  # a resumed run re-reports its last epoch
    store.add_epoch(
        run_id,
        epoch=1,
        train_loss=float("nan"),
        val_loss=None,
        val_top1=None,
        val_top5=None,
        lrs=(0.1,),
        penalty=0.0,
        seconds=1.0,
    )
    epochs = store.epochs(run_id)
    assert [(e["epoch"], e["val_top1"]) for e in epochs] == [(0, 0.3), (1, None)]
    assert epochs[1]["train_loss"] is None and epochs[1]["lrs"] == [0.1]


def test_config_hash_ignores_how_a_run_executes() -> None:
    base = config_hash(_config())
    assert base == config_hash(_config(seed=3, device="cuda:1", output="/tmp/x", workers=4))
    assert base == config_hash(_config(eval_test=True, limit_train_batches=2))
    assert base == config_hash(
        _config(
            image_cache=False,
            channels_last=True,
            data_dir="/elsewhere",
            train_split="trainval",
            save_test_predictions=True,
        )
    )
    assert base != config_hash(_config(lrs=(0.01, 0.001, 0.0001)))
    assert base != config_hash(_config(new_layers=2))
    assert len(base) == 16 and int(base, 16) >= 0
    # The same value written as int or float is the same hyperparameter.
    assert config_hash(_config(weight_decay=0)) == config_hash(_config(weight_decay=0.0))
    # A field at its default is no setting: a release that adds one keeps every stored hash.
    at_default = _config()
    assert config_hash({k: v for k, v in at_default.items() if k != "color_jitter"}) == base
    assert config_hash(dict(at_default, lrs=[at_default["lrs"][0]] * 3)) == base


def test_schema_is_the_documented_contract(store: ResultStore, storage_url: str) -> None:
    """The versioned column list (tests/analysis/test_schema.py) holds on every backend, with the
    indexes and constraints the writers rely on."""
    from tests.analysis.test_schema import COLUMNS

    engine = sa.create_engine(storage_url)
    try:
        inspector = sa.inspect(engine)
        for table, columns in COLUMNS.items():
            found = [(c["name"], c["nullable"]) for c in inspector.get_columns(table)]
            assert found == [(name, nullable) for name, _, nullable in columns], table
        indexed = {tuple(i["column_names"]) for i in inspector.get_indexes("nbtl_runs")}
        assert ("study", "role") in indexed
        epoch_indexes = inspector.get_indexes("nbtl_epochs")
        assert ("run_id",) in {tuple(i["column_names"]) for i in epoch_indexes}
        unique = inspector.get_unique_constraints("nbtl_epochs")
        assert ["run_id", "epoch"] in [u["column_names"] for u in unique]
        fks = inspector.get_foreign_keys("nbtl_epochs")
        assert [(f["referred_table"], f["constrained_columns"]) for f in fks] == [
            ("nbtl_runs", ["run_id"])
        ]
    finally:
        engine.dispose()


def test_predictions_and_ladder_round_trip(store: ResultStore) -> None:
    import numpy as np

    import analysis

    run_id = store.start_run(
        study="s", role="final", config=_config(), seed=0, device="cpu", final_of="search"
    )
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(5), size=30).astype(np.float32)
    labels = rng.integers(0, 5, 30)
    store.save_predictions(run_id, probs, labels)
    store.save_predictions(run_id, probs, labels)  # a rerun replaces, never duplicates
    ((back, y),) = analysis.load.predictions(store.url, [run_id]).values()
    assert np.array_equal(y, labels)
    assert np.abs(back - probs).max() < 1e-3  # stored as float16: 3 significant digits
    assert np.array_equal(back.argmax(1), probs.argmax(1))

    rungs = [
        {
            "rung": "default",
            "config": _config(),
            "source_run_id": run_id,
            "val_top1": 70.0,
            "val_mean": 69.0,
            "val_n": 3,
            "notes": ["lr 0.3 is the largest value tried"],
        },
        {"rung": "optimal", "adds": "new_layers 1 -> 3", "config": _config(new_layers=3)},
    ]
    store.replace_ladder("s", rungs)
    store.replace_ladder("s", rungs)  # replaces the study's ladder
    got = store.ladder("s")
    assert [(r["position"], r["rung"]) for r in got] == [(0, "default"), (1, "optimal")]
    assert got[0]["notes"] == ["lr 0.3 is the largest value tried"] and got[1]["notes"] == []
    assert got[1]["config_hash"] == config_hash(_config(new_layers=3))


def _write_runs(url: str, barrier, worker: int) -> None:
    barrier.wait(timeout=60)  # all open the fresh database at once: the table-creation race too
    store = ResultStore(url)
    for i in range(5):
        run_id = store.start_run(
            study="conc",
            role="search",
            config=_config(seed=i),
            seed=i,
            device="cpu",
            trial_number=worker * 100 + i,
        )
        for epoch in range(3):
            _epoch(store, run_id, epoch, 0.1 * epoch)
        store.finish_run(run_id, state="complete")
    store.close()


def test_concurrent_writers_lose_no_row(storage_url: str) -> None:
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(4)
    procs = [ctx.Process(target=_write_runs, args=(storage_url, barrier, w)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    assert [p.exitcode for p in procs] == [0, 0, 0, 0]
    store = ResultStore(storage_url)
    runs = store.runs(study="conc")
    expected = [w * 100 + i for w in range(4) for i in range(5)]
    assert sorted(r["trial_number"] for r in runs) == expected
    assert {r["state"] for r in runs} == {"complete"}
    assert all(len(store.epochs(r["id"])) == 3 and r["epochs_run"] == 3 for r in runs)
    store.close()
