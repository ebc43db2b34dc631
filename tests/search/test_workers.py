"""Workers: several processes on one study, on SQLite and PostgreSQL; grids run every point once;
crash recovery re-queues each lost trial once."""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from nbtl_search.run.trial_queue import MAX_RETRIES, grid_coverage, is_lost
from nbtl_search.run.worker import (
    GAVE_UP,
    MAX_FAILURES_IN_A_ROW,
    WorkerOptions,
    prepare_study,
    run_worker,
)
from nbtl_search.store import attrs
from nbtl_search.store.connection import fail_stale_trials, open_rdb
from nbtl_search.store.results import ResultStore
from nbtl_search.study.roles import DEFAULT, SEARCH
from nbtl_search.study.sampling import distributions, suggest
from nbtl_search.study.spec import parse_spec
from tests.search import fakes
from tests.trainer.trees import make_imagefolder

optuna.logging.set_verbosity(optuna.logging.ERROR)
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
ROOT = Path(__file__).resolve().parents[2]


def _assert_tables_agree(
    url: str, study_name: str, role: str = "search"
) -> list[optuna.trial.FrozenTrial]:
    """nbtl_runs holds one row per Optuna trial that started, with the same state and value."""
    study = optuna.load_study(study_name=study_name, storage=open_rdb(url, heartbeat=False))
    trials = [t for t in study.get_trials() if t.state != TrialState.WAITING]
    runs = {r["id"]: r for r in ResultStore(url).runs(study=study_name.split(".")[0], role=role)}
    assert len(runs) == len(trials)
    state = {
        TrialState.COMPLETE: "complete",
        TrialState.PRUNED: "pruned",
        TrialState.FAIL: "failed",
    }
    for t in trials:
        run = runs[t.user_attrs[attrs.RUN_ID]]
        assert run["trial_number"] == t.number
        assert run["state"] == state[t.state]
        if t.state == TrialState.COMPLETE:
            assert run["val_top1"] == pytest.approx(t.value)
    return trials


def _start_workers(url: str, spec: dict, n: int, **kwargs) -> list:
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(n)
    procs = [
        ctx.Process(target=fakes.worker_process, args=(url, spec, i, barrier), kwargs=kwargs)
        for i in range(n)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=240)
    return [p.exitcode for p in procs]


GRID_SEARCH = {
    "new_layers": {"type": "int", "low": 1, "high": 3},
    "lr": {"type": "categorical", "choices": [0.01, 0.03, 0.1, 0.3]},
}
GRID_DEFAULT = {"lr": [0.03, 0.1, 0.3], "weight_decay": [0.0, 1e-4], "extend": 0}


def test_four_workers_run_every_grid_point_exactly_once(storage_url: str) -> None:
    """Optuna's GridSampler picks points in each process and collides (2-4 workers ran 2-3
    distinct points of a 4-point grid); enqueued points popped under the study lock do not."""
    spec = fakes.spec_dict(
        search_space=GRID_SEARCH,
        sampler={"type": "grid", "seed": 0},
        default_settings=GRID_DEFAULT,
        budget={"n_trials": 3},
    )
    for role, study_name, size in (("default", "fake.default", 6), ("search", "fake", 12)):
        assert _start_workers(storage_url, spec, 4, role=role) == [0, 0, 0, 0]
        trials = _assert_tables_agree(storage_url, study_name, role)
        assert [t.state for t in trials] == [TrialState.COMPLETE] * size  # the budget: the grid
        points = {tuple(sorted(t.params.items())) for t in trials}
        assert len(points) == size  # distinct configs, not rows: no duplicate, none missing
        assert grid_coverage(trials) == (size, 0, size)
        runs = ResultStore(storage_url).runs(study="fake", role=role)
        assert len({r["config_hash"] for r in runs}) == size
    assert points == {
        (("lr", lr), ("new_layers", n)) for n in (1, 2, 3) for lr in (0.01, 0.03, 0.1, 0.3)
    }


def test_a_failed_grid_point_is_retried_not_skipped(sqlite_url: str, tmp_path: Path) -> None:
    spec = fakes.spec_dict(default_settings={"lr": [0.01, 0.03, 0.1, 0.3], "extend": 0})
    flaky = tmp_path / "flaky"
    flaky.mkdir()
    assert _start_workers(sqlite_url, spec, 2, role="default", flaky_dir=str(flaky)) == [0, 0]
    trials = _assert_tables_agree(sqlite_url, "fake.default", "default")
    failed = [t for t in trials if t.state == TrialState.FAIL]
    assert len(failed) == 4 and all("flaky" in t.user_attrs[attrs.FAIL_REASON] for t in failed)
    retries = [t for t in trials if t.state == TrialState.COMPLETE]
    assert sorted(t.user_attrs[attrs.RETRY_OF] for t in retries) == sorted(t.number for t in failed)
    assert sorted(t.params["lr"] for t in retries) == [0.01, 0.03, 0.1, 0.3]
    assert grid_coverage(trials) == (4, 0, 4)


def test_a_point_that_always_fails_is_tried_a_bounded_number_of_times(sqlite_url: str) -> None:
    spec = parse_spec(fakes.spec_dict(default_settings={"lr": [0.1, fakes.FAIL_LR], "extend": 0}))
    code = run_worker(
        spec, sqlite_url, DEFAULT, WorkerOptions(device="cpu", index=0), fit=fakes.fake_fit
    )
    assert code == 0  # the grid is done: one point ran, the other ran out of retries
    trials = _assert_tables_agree(sqlite_url, "fake.default", "default")
    bad = [t for t in trials if t.params["lr"] == fakes.FAIL_LR]
    assert [t.state for t in bad] == [TrialState.FAIL] * (1 + MAX_RETRIES)
    assert grid_coverage(trials) == (1, 0, 2)


def test_the_baseline_extends_its_grid_past_the_edge(sqlite_url: str) -> None:
    # the fake score peaks at lr 0.1: a grid that stops at 0.03 must grow upwards until it passes it
    spec = parse_spec(fakes.spec_dict(default_settings={"lr": [0.003, 0.01, 0.03]}))
    assert (
        run_worker(
            spec, sqlite_url, DEFAULT, WorkerOptions(device="cpu", index=0), fit=fakes.fake_fit
        )
        == 0
    )
    trials = _assert_tables_agree(sqlite_url, "fake.default", "default")
    lrs = [t.params["lr"] for t in trials]
    assert lrs == [0.003, 0.01, 0.03, 0.1, 0.3]  # 2 extensions; 0.1 is now an interior best
    assert [bool(t.user_attrs.get(attrs.EXTENSION)) for t in trials] == [False] * 3 + [True] * 2


def _lost_trials(url: str, spec: dict, n: int) -> list[int]:
    """`n` trials left RUNNING by a worker that vanished after its last heartbeat."""
    parsed = parse_spec(spec, "fake")
    storage = open_rdb(url, heartbeat_interval=1, grace_period=2)
    study = prepare_study(parsed, storage, SEARCH)
    store = ResultStore(url)
    numbers = []
    for _ in range(n):
        trial = study.ask()
        params = suggest(trial, distributions(parsed))
        run_id = store.start_run(
            study="fake",
            role="search",
            config=parsed.search_config(params).to_dict(),
            seed=0,
            device="cpu",
            trial_number=trial.number,
        )
        trial.set_user_attr(attrs.RUN_ID, run_id)
        storage.record_heartbeat(trial._trial_id)
        numbers.append(trial.number)
    store.close()
    return numbers


@pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used")  # our ask() above
def test_four_workers_recovering_together_requeue_each_lost_trial_once(storage_url: str) -> None:
    spec = fakes.spec_dict(budget={"n_trials": 8})
    lost = _lost_trials(storage_url, spec, 2)
    assert _start_workers(storage_url, spec, 4, grace_period=2) == [0, 0, 0, 0]
    trials = _assert_tables_agree(storage_url, "fake")
    for number in lost:
        assert is_lost(trials[number])
        (retry,) = [t for t in trials if t.user_attrs.get(attrs.RETRY_OF) == number]
        assert retry.state == TrialState.COMPLETE and retry.params == trials[number].params
    assert len([t for t in trials if t.state in FINISHED]) == 8  # exactly the budget
    assert {r["state"] for r in ResultStore(storage_url).runs(study="fake")} <= {
        "complete",
        "failed",
    }


def test_four_workers_started_together_on_a_fresh_database(storage_url: str) -> None:
    spec = fakes.spec_dict(budget={"n_trials": 12})
    assert _start_workers(storage_url, spec, 4) == [0, 0, 0, 0]  # nobody died in the schema race
    trials = _assert_tables_agree(storage_url, "fake")
    finished = [t for t in trials if t.state in FINISHED]
    assert len(finished) == 12  # the budget counts finished trials, claimed under the lock
    assert not [t for t in trials if t.state == TrialState.FAIL]
    assert len({(t.params["new_layers"], t.params["lr"]) for t in trials}) == len(trials)


def test_a_killed_workers_trial_is_failed_and_retried(sqlite_url: str, tmp_path: Path) -> None:
    spec = fakes.spec_dict(budget={"n_trials": 3})
    ctx = mp.get_context("spawn")
    hang = tmp_path / "hanging"
    victim = ctx.Process(
        target=fakes.worker_process, args=(sqlite_url, spec, 0, None, str(hang), 2)
    )
    victim.start()
    _poll(lambda: hang.exists() or None, "the victim worker to start its trial")
    victim.kill()  # SIGKILL: no chance to clean up, like a lost host
    victim.join()

    storage = open_rdb(sqlite_url, heartbeat_interval=1, grace_period=2)
    study = optuna.load_study(study_name="fake", storage=storage)
    assert [t.state for t in study.trials] == [TrialState.RUNNING]
    # what every worker does under the study lock before it claims a trial
    _poll(
        lambda: fail_stale_trials(study) or study.trials[0].state == TrialState.FAIL or None,
        "the heartbeat to go stale",
    )

    survivor = ctx.Process(
        target=fakes.worker_process, args=(sqlite_url, spec, 1), kwargs={"grace_period": 2}
    )
    survivor.start()
    survivor.join(timeout=120)
    assert survivor.exitcode == 0
    trials = _assert_tables_agree(sqlite_url, "fake")
    assert trials[0].state == TrialState.FAIL and is_lost(trials[0])
    retry = trials[1]
    assert retry.user_attrs[attrs.RETRY_OF] == 0 and retry.params == trials[0].params
    assert retry.state == TrialState.COMPLETE
    assert (
        len([t for t in trials if t.state in FINISHED]) == 3
    )  # the crash did not shrink the budget
    lost = ResultStore(sqlite_url).runs(study="fake")[0]
    assert lost["state"] == "failed" and "heartbeat" in lost["error"]


@pytest.mark.slow
def test_two_cpu_workers_run_the_real_trainer(tmp_path: Path) -> None:
    """`nbtl-search run` end to end: real timm model, real Optuna storage, real SQL."""
    study = {
        "name": "tiny",
        "storage": f"sqlite:///{tmp_path / 'nbtl.db'}",
        "dataset": {"name": "digits", "img_size": 32},
        "model": {"name": "test_resnet"},
        "train": {"epochs": 2, "limit_eval_batches": 1},
        "search_space": {
            "new_layers": {"type": "int", "low": 1, "high": 3},
            "lr": {"type": "float", "low": 0.01, "high": 0.3, "log": True},
            "l2sp_upper": {
                "type": "float",
                "low": 0.001,
                "high": 0.1,
                "log": True,
                "allow_zero": True,
            },
        },
        "pruner": {"type": "median"},
        "budget": {"n_trials": 3},
    }
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(study))
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "nbtl_search",
            "run",
            str(path),
            "--device",
            "cpu",
            "--workers",
            "2",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    trials = _assert_tables_agree(study["storage"], "tiny")
    assert len([t for t in trials if t.state in FINISHED]) >= 3
    assert not [t for t in trials if t.state == TrialState.FAIL], [
        t.user_attrs.get("fail_reason") for t in trials
    ]
    assert len(list((tmp_path / "nbtl-logs" / "tiny-search").glob("cpu*.log"))) == 2


def test_a_worker_gives_up_when_every_trial_fails(sqlite_url: str) -> None:
    """Failed trials never use up the budget, so without this a broken study would run forever."""
    spec = parse_spec(fakes.spec_dict(search_space={"lr": fakes.FAIL_LR}))
    code = run_worker(
        spec, sqlite_url, SEARCH, WorkerOptions(device="cpu", index=0), fit=fakes.fake_fit
    )
    assert code == GAVE_UP
    runs = ResultStore(sqlite_url).runs(study="fake")
    assert [r["state"] for r in runs] == ["failed"] * MAX_FAILURES_IN_A_ROW
    assert all("out of memory" in r["error"] for r in runs)


def test_a_corrupt_image_fails_the_trial_with_its_reason(sqlite_url: str, tmp_path: Path) -> None:
    """The real trainer on a tree with one unreadable JPEG: trials fail, the worker survives them."""
    data = make_imagefolder(tmp_path, classes=2, per_class=4)
    bad = sorted((data / "train" / "c0").iterdir())[0]
    bad.write_bytes(b"this is not a JPEG")
    spec = parse_spec(
        fakes.spec_dict(
            dataset={"name": "imagefolder", "data_dir": str(data), "img_size": 32},
            train={"epochs": 1, "batch_size": 8},
            search_space={"lr": 0.01},
        )
    )
    code = run_worker(spec, sqlite_url, SEARCH, WorkerOptions(device="cpu", index=0))
    assert code == GAVE_UP  # the worker process itself never died
    trials = _assert_tables_agree(sqlite_url, "fake")
    assert [t.state for t in trials] == [TrialState.FAIL] * MAX_FAILURES_IN_A_ROW
    reason = trials[0].user_attrs["fail_reason"]
    assert "cannot identify image file" in reason and bad.name in reason  # names the file to fix


@pytest.mark.slow
def test_run_restarts_a_killed_worker_and_retries_its_trial(tmp_path: Path) -> None:
    """The `run` supervisor: kill -9 its worker mid-trial; a new worker takes over, the lost trial
    is failed and re-queued at once (no heartbeat grace period to wait out), the budget is met."""
    url = f"sqlite:///{tmp_path / 'nbtl.db'}"
    study = {
        "name": "tiny",
        "storage": url,
        "dataset": {"name": "digits", "img_size": 32},
        "model": {"name": "test_resnet"},
        "train": {"epochs": 30, "limit_eval_batches": 1},
        "search_space": {"lr": {"type": "categorical", "choices": [0.01, 0.03, 0.1]}},
        "sampler": {"type": "random", "seed": 0},
        "pruner": {"type": "none"},
        "budget": {"n_trials": 2},
    }
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(study))
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "nbtl_search",
            "run",
            str(path),
            "--device",
            "cpu",
            "--workers",
            "1",
        ],
        cwd=tmp_path,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        label = _poll(lambda: _training_worker(url), "a worker to be mid-trial")
        os.kill(int(label.rsplit(":", 1)[1]), signal.SIGKILL)
        out, _ = proc.communicate(timeout=600)
    finally:
        proc.kill()
    assert proc.returncode == 0, out[-2000:]
    assert "restarting" in out
    trials = _assert_tables_agree(url, "tiny")  # the lost run is `failed` in nbtl_runs too
    (lost,) = [t for t in trials if t.state == TrialState.FAIL]
    assert is_lost(lost)
    (retry,) = [t for t in trials if t.user_attrs.get(attrs.RETRY_OF) == lost.number]
    assert retry.state == TrialState.COMPLETE and retry.params == lost.params
    assert len([t for t in trials if t.state in FINISHED]) >= 2


def _training_worker(url: str) -> str | None:
    """The worker label of a trial that has reported an epoch, if any."""
    try:
        study = optuna.load_study(study_name="tiny", storage=open_rdb(url, heartbeat=False))
    except Exception:  # the launcher has not created the study (or the database) yet
        return None
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if t.intermediate_values and t.user_attrs.get(attrs.WORKER):
            return t.user_attrs[attrs.WORKER]
    return None


def _poll(get, what: str, deadline_s: float = 120.0):
    end = time.monotonic() + deadline_s
    while (value := get()) is None:
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)  # polling interval, not synchronisation
    return value
