"""`submit` on a real Slurm cluster (`.ci/slurm.sh`: one node, two fake GPUs) with PostgreSQL
storage: CPU trials of a tiny real model inside GPU-allocated array tasks. Skipped without a
cluster, required in CI (`slurm_cluster`, tests/conftest.py).

Every wait polls what can be observed (squeue, /proc, the database) against a deadline."""

from __future__ import annotations

import subprocess
import time
from datetime import datetime, timedelta
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy.engine import make_url

from nbtl_search.cli import main
from nbtl_search.run.launcher import start_study
from nbtl_search.run.trial_queue import is_lost
from nbtl_search.store import attrs
from nbtl_search.store.results import ResultStore
from nbtl_search.study.roles import SEARCH
from nbtl_search.study.spec import load_spec

pytestmark = pytest.mark.slow
PASSWORD = "Sl-urm-S3cret"


def _study(tmp_path: Path, name: str, **overrides) -> Path:
    """A real study small enough for a 2-core machine: test_resnet from scratch on 3 digit
    classes at 32 px (a trial takes seconds)."""
    data = {
        "name": name,
        "dataset": {
            "name": "digits",
            "img_size": 32,
            "extra": {"classes": [0, 1, 2], "train_per_class": 40, "val_per_class": 10},
        },
        "model": {"name": "test_resnet", "pretrained": False},
        "train": {"epochs": 8, "batch_size": 16, "workers": 0},
        "search_space": {
            "new_layers": {"type": "categorical", "choices": [1, 2]},
            "lr": {"type": "categorical", "choices": [0.01, 0.03, 0.1]},
        },
        "sampler": {"type": "grid", "seed": 0},
        "pruner": {"type": "none"},
    }
    data.update(overrides)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture
def url(pg_url: str, slurm_cluster: str, monkeypatch) -> str:
    """The test's database with a password in its URL (trust auth ignores it): it must never
    reach a script, a job's description or a log. Handed over as a user would: $NBTL_STORAGE."""
    with_password = make_url(pg_url).set(password=PASSWORD)
    full = with_password.render_as_string(hide_password=False)
    monkeypatch.setenv("NBTL_STORAGE", full)
    return full


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch) -> Path:
    monkeypatch.chdir(tmp_path)  # submit writes nbtl-logs/ here; the jobs run here
    return tmp_path


@pytest.fixture
def jobs() -> list[str]:
    """Job ids a test submitted: cancelled at its end, so no job outlives it."""
    submitted: list[str] = []
    yield submitted
    for job in submitted:
        subprocess.run(["scancel", job], check=False)
    for job in submitted:
        _until(lambda j=job: not _queued(j), 120, f"job {job} to leave the queue")


def _submit(capsys, jobs: list[str], study: Path, *argv: str) -> str:
    code = main(["submit", str(study), "--device", "cpu", *argv])
    out, err = capsys.readouterr()
    assert code == 0, err
    job = out.split("submitted job ", 1)[1].split(":", 1)[0]
    jobs.append(job)
    return job


def _queued(job: str) -> bool:
    done = subprocess.run(["squeue", "-h", "-j", job, "-o", "%i"], capture_output=True, text=True)
    return bool(done.stdout.strip())


def _workers_of(study: Path) -> list[int]:
    """Processes on this machine whose command line names the study file."""
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if str(study) in cmdline and "nbtl_search" in cmdline:
                found.append(int(proc.name))
    return found


def _until(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)  # polling an observable state, not waiting for time to pass


def _runs(url: str, study: str) -> list[dict]:
    store = ResultStore(url)
    try:
        return store.runs(study=study)
    finally:
        store.close()


def _trials(url: str, study: str) -> list[FrozenTrial]:
    return optuna.load_study(study_name=study, storage=url).get_trials(deepcopy=False)


def _no_password(folder: Path, jobs: list[str]) -> None:
    for path in folder.rglob("*"):
        if path.is_file() and path.suffix in (".sbatch", ".out", ".log"):
            assert PASSWORD not in path.read_text(errors="replace"), path
    for job in jobs:
        shown = subprocess.run(
            ["scontrol", "show", "job", job], capture_output=True, text=True
        ).stdout
        assert "Command=" in shown and PASSWORD not in shown


def test_an_array_runs_the_grid_once_and_a_cancelled_one_is_resumed(
    url: str, workdir: Path, jobs: list[str], capsys
) -> None:
    """A 2-task array on a 6-point grid; scancel while both tasks train: no worker is left, the
    interrupted trials are failed and marked lost; a second submit (one task, two workers on its
    GPU) re-queues them and finishes the grid: every point complete exactly once, only the
    interrupted trials ran twice."""
    study = _study(workdir, "cluster")
    first = _submit(capsys, jobs, study, "--workers", "2")
    running = lambda: [r for r in _runs(url, "cluster") if r["state"] == "running"]  # noqa: E731
    _until(lambda: len(running()) == 2, 180, "both array tasks to train a trial")

    assert main(["status", str(study)]) == 0  # beside each running trial: host and job
    shown = capsys.readouterr().out
    assert f"slurm job {first}_" in shown  # the array is still queued (running)
    assert f"{first}_0" in shown and f"{first}_1" in shown

    subprocess.run(["scancel", first], check=True)
    _until(lambda: not _queued(first), 120, "the cancelled array to leave the queue")
    _until(lambda: not _workers_of(study), 60, "every worker to exit")

    interrupted = [t for t in _trials(url, "cluster") if t.state == TrialState.FAIL]
    assert interrupted, "scancel must have interrupted the trials that were training"
    assert all(is_lost(t) for t in interrupted)
    assert not [t for t in _trials(url, "cluster") if t.state == TrialState.RUNNING]
    failed = [r for r in _runs(url, "cluster") if r["state"] == "failed"]
    assert len(failed) == len(interrupted)
    for r in failed:
        assert "worker stopped (SIGTERM)" in r["error"]
        assert r["slurm_array_job_id"] == int(first) and r["slurm_array_task_id"] in (0, 1)

    second = _submit(capsys, jobs, study, "--workers", "1", "--per-gpu", "2")  # 2 on one GPU
    _until(lambda: not _queued(second), 300, "the second array to finish the grid")
    runs = _runs(url, "cluster")
    complete = [r for r in runs if r["state"] == "complete"]
    assert len(complete) == 6 and len({r["config_hash"] for r in complete}) == 6
    assert [r for r in runs if r["state"] != "complete"] == failed  # nothing else ran twice
    trials = _trials(url, "cluster")
    retried = {t.user_attrs.get(attrs.RETRY_OF) for t in trials if t.state == TrialState.COMPLETE}
    assert {t.number for t in interrupted} <= retried
    assert {t.user_attrs.get(attrs.SLURM_JOB, "").split("_")[0] for t in trials} == {first, second}
    _no_password(workdir, jobs)


def test_a_job_too_short_for_another_trial_starts_none(
    url: str, workdir: Path, jobs: list[str], capsys
) -> None:
    """The study's trials have taken 1000 s; a job with 2 minutes (less a 10 s margin) ends
    without starting one, long before its limit."""
    study = _study(workdir, "short", sampler={"type": "random", "seed": 0}, budget={"n_trials": 3})
    assert main(["submit", str(study), "--dry-run"]) == 0  # nothing created by a dry run
    capsys.readouterr()
    spec = load_spec(study)
    made = start_study(spec, url, SEARCH)
    made.add_trial(
        optuna.trial.create_trial(
            params={"new_layers": 1, "lr": 0.1},
            distributions=SEARCH.distributions(spec),
            value=50.0,
        )
    )
    (measured,) = made.get_trials(deepcopy=False)  # create_trial stamps both ends now:
    _set_start(url, measured._trial_id, measured.datetime_complete - timedelta(seconds=1000))

    job = _submit(capsys, jobs, study, "--time", "2", "--signal-lead", "10")
    _until(lambda: not _queued(job), 100, "the job to end before its 120 s limit")
    assert len(_trials(url, "short")) == 1  # no trial started
    (log,) = (workdir / "nbtl-logs" / "short-search").glob(f"slurm-{job}_0.out")
    assert "not starting another trial" in log.read_text() and "up to 1000 s" in log.read_text()
    _no_password(workdir, jobs)


def _set_start(url: str, trial_id: int, when: datetime) -> None:
    import sqlalchemy as sa

    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(
            sa.text("UPDATE trials SET datetime_start = :t WHERE trial_id = :i"),
            {"t": when, "i": trial_id},
        )
    engine.dispose()


def test_options_slurm_refuses_create_nothing(url: str, workdir: Path, capsys) -> None:
    """`sbatch --test-only` judges the options before the study is created."""
    study = _study(workdir, "refused")
    code = main(["submit", str(study), "--device", "cpu", "--partition", "nosuch"])
    err = capsys.readouterr().err
    assert code == 2 and "sbatch refused the job" in err and err.count("\n") == 1, err
    assert not (workdir / "nbtl-logs").exists()
    with pytest.raises(KeyError):  # no study in the database
        optuna.load_study(study_name="refused", storage=url)
