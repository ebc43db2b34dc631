"""Workers: several processes on one study, on SQLite and PostgreSQL; crash recovery."""

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

from nbtl_search.objective import RUN_ID_ATTR, WORKER_ATTR
from nbtl_search.results import ResultStore
from nbtl_search.spec import parse_spec
from nbtl_search.storage import fail_stale_trials, open_storage
from nbtl_search.worker import GAVE_UP, MAX_FAILURES_IN_A_ROW, SEARCH, WorkerOptions, run_worker
from tests.search import fakes
from tests.trainer.trees import make_imagefolder

optuna.logging.set_verbosity(optuna.logging.ERROR)
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
ROOT = Path(__file__).resolve().parents[2]


def _assert_tables_agree(url: str, study_name: str) -> list[optuna.trial.FrozenTrial]:
    """nbtl_runs holds one row per Optuna trial, with the same state and value."""
    study = optuna.load_study(study_name=study_name, storage=open_storage(url, heartbeat=False))
    trials = study.get_trials()
    runs = {r["id"]: r for r in ResultStore(url).runs(study=study_name)}
    assert len(runs) == len(trials)
    state = {TrialState.COMPLETE: "complete", TrialState.PRUNED: "pruned", TrialState.FAIL: "failed"}
    for t in trials:
        run = runs[t.user_attrs[RUN_ID_ATTR]]
        assert run["trial_number"] == t.number
        assert run["state"] == state[t.state]
        if t.state == TrialState.COMPLETE:
            assert run["val_top1"] == pytest.approx(t.value)
    return trials


def test_four_workers_started_together_on_a_fresh_database(storage_url: str) -> None:
    spec = fakes.spec_dict(budget={"n_trials": 12})
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(4)
    procs = [ctx.Process(target=fakes.worker_process, args=(storage_url, spec, i, barrier))
             for i in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=240)
    assert [p.exitcode for p in procs] == [0, 0, 0, 0]  # nobody died in the schema race
    trials = _assert_tables_agree(storage_url, "fake")
    finished = [t for t in trials if t.state in FINISHED]
    # the budget counts finished trials; each other worker may have one trial in flight at the end
    assert 12 <= len(finished) <= 12 + 3
    assert not [t for t in trials if t.state == TrialState.FAIL]
    assert len({(t.params["new_layers"], t.params["lr"]) for t in trials}) == len(trials)


def test_a_killed_workers_trial_is_failed_and_retried(sqlite_url: str, tmp_path: Path) -> None:
    spec = fakes.spec_dict(budget={"n_trials": 3})
    ctx = mp.get_context("spawn")
    hang = tmp_path / "hanging"
    victim = ctx.Process(target=fakes.worker_process,
                         args=(sqlite_url, spec, 0, None, str(hang), 2))
    victim.start()
    _poll(lambda: hang.exists() or None, "the victim worker to start its trial")
    victim.kill()  # SIGKILL: no chance to clean up, like a lost host
    victim.join()

    storage = open_storage(sqlite_url, heartbeat_interval=1, grace_period=2)
    study = optuna.load_study(study_name="fake", storage=storage)
    assert [t.state for t in study.trials] == [TrialState.RUNNING]
    # what every worker does before its next trial, and the launcher after a worker dies
    _poll(lambda: fail_stale_trials(study) or study.trials[0].state == TrialState.FAIL or None,
          "the heartbeat to go stale")

    survivor = ctx.Process(target=fakes.worker_process, args=(sqlite_url, spec, 1))
    survivor.start()
    survivor.join(timeout=120)
    assert survivor.exitcode == 0
    trials = _assert_tables_agree(sqlite_url, "fake")
    assert trials[0].state == TrialState.FAIL
    retry = trials[1]
    assert retry.system_attrs["failed_trial"] == 0 and retry.params == trials[0].params
    assert retry.state == TrialState.COMPLETE
    assert len([t for t in trials if t.state in FINISHED]) == 3  # the crash did not shrink the budget
    lost = ResultStore(sqlite_url).runs(study="fake")[0]
    assert lost["state"] == "failed" and "heartbeat" in lost["error"]


@pytest.mark.slow
def test_two_cpu_workers_run_the_real_trainer(tmp_path: Path) -> None:
    """`nbtl-search run` end to end: real timm model, real Optuna storage, real SQL."""
    study = {
        "name": "tiny", "storage": f"sqlite:///{tmp_path / 'nbtl.db'}",
        "dataset": {"name": "digits", "img_size": 32}, "model": {"name": "test_resnet"},
        "train": {"epochs": 2, "limit_eval_batches": 1},
        "search_space": {"new_layers": {"type": "int", "low": 1, "high": 3},
                         "lr": {"type": "float", "low": 0.01, "high": 0.3, "log": True},
                         "l2sp_upper": {"type": "float", "low": 0.001, "high": 0.1, "log": True,
                                        "allow_zero": True}},
        "pruner": {"type": "median"}, "budget": {"n_trials": 3},
    }
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(study))
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-m", "nbtl_search", "run", str(path), "--device", "cpu",
                          "--workers", "2"], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    trials = _assert_tables_agree(study["storage"], "tiny")
    assert len([t for t in trials if t.state in FINISHED]) >= 3
    assert not [t for t in trials if t.state == TrialState.FAIL], \
        [t.user_attrs.get("fail_reason") for t in trials]
    assert len(list((tmp_path / "nbtl-logs" / "tiny-search").glob("cpu*.log"))) == 2


def test_a_worker_gives_up_when_every_trial_fails(sqlite_url: str) -> None:
    """Failed trials never use up the budget, so without this a broken study would run forever."""
    spec = parse_spec(fakes.spec_dict(search_space={"lr": fakes.FAIL_LR}))
    code = run_worker(spec, sqlite_url, SEARCH, WorkerOptions(device="cpu", index=0),
                      fit=fakes.fake_fit)
    assert code == GAVE_UP
    runs = ResultStore(sqlite_url).runs(study="fake")
    assert [r["state"] for r in runs] == ["failed"] * MAX_FAILURES_IN_A_ROW
    assert all("out of memory" in r["error"] for r in runs)


def test_a_corrupt_image_fails_the_trial_with_its_reason(sqlite_url: str, tmp_path: Path) -> None:
    """The real trainer on a tree with one unreadable JPEG: trials fail, the worker survives them."""
    data = make_imagefolder(tmp_path, classes=2, per_class=4)
    bad = sorted((data / "train" / "c0").iterdir())[0]
    bad.write_bytes(b"this is not a JPEG")
    spec = parse_spec(fakes.spec_dict(
        dataset={"name": "imagefolder", "data_dir": str(data), "img_size": 32},
        train={"epochs": 1, "batch_size": 8}, search_space={"lr": 0.01}))
    code = run_worker(spec, sqlite_url, SEARCH, WorkerOptions(device="cpu", index=0))
    assert code == GAVE_UP  # the worker process itself never died
    trials = _assert_tables_agree(sqlite_url, "fake")
    assert [t.state for t in trials] == [TrialState.FAIL] * MAX_FAILURES_IN_A_ROW
    reason = trials[0].user_attrs["fail_reason"]
    assert "UnidentifiedImageError" in reason and bad.name in reason  # names the file to fix


@pytest.mark.slow
def test_run_restarts_a_killed_worker_and_retries_its_trial(tmp_path: Path) -> None:
    """The `run` supervisor: kill -9 its worker mid-trial; a new worker takes over, the lost trial
    is failed and re-queued at once (no heartbeat grace period to wait out), the budget is met."""
    url = f"sqlite:///{tmp_path / 'nbtl.db'}"
    study = {"name": "tiny", "storage": url, "dataset": {"name": "digits", "img_size": 32},
             "model": {"name": "test_resnet"}, "train": {"epochs": 30, "limit_eval_batches": 1},
             "search_space": {"lr": {"type": "categorical", "choices": [0.01, 0.03, 0.1]}},
             "sampler": {"type": "random", "seed": 0}, "pruner": {"type": "none"},
             "budget": {"n_trials": 2}}
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(study))
    proc = subprocess.Popen([sys.executable, "-m", "nbtl_search", "run", str(path), "--device", "cpu",
                             "--workers", "1"], cwd=tmp_path, env={**os.environ, "HF_HUB_OFFLINE": "1"},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
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
    (retry,) = [t for t in trials if t.system_attrs.get("failed_trial") == lost.number]
    assert retry.state == TrialState.COMPLETE and retry.params == lost.params
    assert len([t for t in trials if t.state in FINISHED]) >= 2


def _training_worker(url: str) -> str | None:
    """The worker label of a trial that has reported an epoch, if any."""
    try:
        study = optuna.load_study(study_name="tiny", storage=open_storage(url, heartbeat=False))
    except Exception:  # the launcher has not created the study (or the database) yet
        return None
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if t.intermediate_values and t.user_attrs.get(WORKER_ATTR):
            return t.user_attrs[WORKER_ATTR]
    return None


def _poll(get, what: str, deadline_s: float = 120.0):
    end = time.monotonic() + deadline_s
    while (value := get()) is None:
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)  # polling interval, not synchronisation
    return value
