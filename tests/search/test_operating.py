"""Operating `nbtl-search run` as a scheduler or an operator would: signals to the launcher alone,
the rerun that follows, and a password in the storage URL. Real workers, real trainer, real SQL."""

from __future__ import annotations

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
from sqlalchemy.engine import make_url

from nbtl_search.run.trial_queue import is_lost
from nbtl_search.store import attrs
from nbtl_search.store.connection import open_rdb
from nbtl_search.store.results import ResultStore

pytestmark = pytest.mark.slow
optuna.logging.set_verbosity(optuna.logging.ERROR)
ENV = {**os.environ, "HF_HUB_OFFLINE": "1"}


def _study(tmp_path: Path, url: str, epochs: int, budget: int) -> Path:
    study = {
        "name": "ops",
        "storage": url,
        "dataset": {"name": "digits", "img_size": 32},
        "model": {"name": "test_resnet"},
        "train": {"epochs": epochs, "limit_eval_batches": 1},
        "search_space": {
            "lr": {"type": "categorical", "choices": [0.01, 0.03, 0.1]},
            "new_layers": {"type": "int", "low": 1, "high": 3},
        },
        "sampler": {"type": "random", "seed": 0},
        "pruner": {"type": "none"},
        "budget": {"n_trials": budget},
        "default_settings": {"lr": [0.03, 0.1], "extend": 0},
    }
    path = tmp_path / "ops.yaml"
    path.write_text(yaml.safe_dump(study))
    return path


def _trials(url: str) -> list[optuna.trial.FrozenTrial]:
    try:
        return optuna.load_study(
            study_name="ops", storage=open_rdb(url, heartbeat=False)
        ).get_trials()
    except Exception:
        return []


def _poll(get, what: str, deadline_s: float = 180.0):
    end = time.monotonic() + deadline_s
    while not (value := get()):
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)  # polling interval, not synchronisation
    return value


def _training(url: str, n: int) -> list[optuna.trial.FrozenTrial] | None:
    """The running trials that have reported an epoch, once there are `n` of them."""
    busy = [t for t in _trials(url) if t.state == TrialState.RUNNING and t.intermediate_values]
    return busy if len(busy) == n else None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return not Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"  # a zombie is dead


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_to_the_launcher_stops_every_worker_and_the_rerun_finishes(
    sig, storage_url: str, tmp_path: Path
) -> None:
    path = _study(tmp_path, storage_url, epochs=40, budget=4)
    cmd = [
        sys.executable,
        "-m",
        "nbtl_search",
        "run",
        str(path),
        "--device",
        "cpu",
        "--workers",
        "2",
    ]
    launcher = subprocess.Popen(
        cmd, cwd=tmp_path, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        busy = _poll(lambda: _training(storage_url, 2), "both workers to be mid-trial")
        pids = [int(t.user_attrs[attrs.WORKER].rsplit(":", 1)[1]) for t in busy]
        launcher.send_signal(sig)  # the launcher alone, as `kill PID` or a job scheduler does
        _, err = launcher.communicate(timeout=60)
    finally:
        launcher.kill()
    assert launcher.returncode == 128 + sig.value, err
    assert err.strip().splitlines()[-1].startswith("stopped"), err
    deadline = time.monotonic() + 10
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not [p for p in pids if _alive(p)], "a worker outlived its launcher by 10 s"
    interrupted = {t.number for t in _trials(storage_url) if t.state == TrialState.FAIL}
    assert interrupted == {t.number for t in busy}
    assert all(is_lost(t) for t in _trials(storage_url) if t.number in interrupted)

    rerun = subprocess.run(cmd, cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    trials = _trials(storage_url)
    assert len([t for t in trials if t.state == TrialState.COMPLETE]) == 4  # the whole budget
    retries = [t.user_attrs[attrs.RETRY_OF] for t in trials if attrs.RETRY_OF in t.user_attrs]
    assert sorted(retries) == sorted(interrupted)  # each interrupted trial re-queued once
    assert [t.number for t in trials if t.state == TrialState.FAIL] == sorted(interrupted)
    assert {r["state"] for r in ResultStore(storage_url).runs(study="ops")} == {
        "complete",
        "failed",
    }


def test_a_password_in_the_url_is_never_shown(pg_url: str, tmp_path: Path) -> None:
    secret = "s3cret-Pw-42"  # the test server trusts every login: any password works
    url = make_url(pg_url).set(password=secret).render_as_string(hide_password=False)
    path = _study(tmp_path, url, epochs=8, budget=2)
    seen_workers = []

    def worker_cmdlines() -> list[str]:
        found = []
        for proc in Path("/proc").iterdir():
            try:
                text = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if "nbtl_search worker" in text and str(path) in text:
                found.append(text)
        seen_workers.extend(found)
        return found

    run = subprocess.Popen(
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
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _poll(worker_cmdlines, "the workers to start")
        out, err = run.communicate(timeout=600)
    finally:
        run.kill()
    assert run.returncode == 0, err[-2000:]
    texts = {"run stdout": out, "run stderr": err, "worker command lines": " ".join(seen_workers)}
    for verb in (
        ["baseline", str(path), "--device", "cpu", "--workers", "2"],
        ["status", str(path)],
        ["best", str(path)],
        ["report", str(path), "--out", str(tmp_path / "report.html")],
    ):
        done = subprocess.run(
            [sys.executable, "-m", "nbtl_search", *verb],
            cwd=tmp_path,
            env=ENV,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, done.stderr[-2000:]
        texts[verb[0]] = done.stdout + done.stderr
    texts["report"] = (tmp_path / "report.html").read_text()
    texts["logs"] = " ".join(p.read_text() for p in (tmp_path / "nbtl-logs").rglob("*.log"))
    study = optuna.load_study(study_name="ops", storage=url)
    import optuna_dashboard

    texts["dashboard note"] = optuna_dashboard.get_note(study)
    texts["runs table"] = str(ResultStore(url).runs(study="ops"))
    assert "***" in texts["run stdout"]  # the URL is shown, masked
    for where, text in texts.items():
        assert secret not in text, where


def test_final_on_one_folder_and_analysis_from_another(pg_url: str, tmp_path: Path) -> None:
    """Everything analysis needs lives in the database: `final` trains from one working folder,
    the comparison, the ensemble and the report are computed from another."""
    import analysis
    from nbtl_search.run.worker import WorkerOptions, run_worker
    from nbtl_search.study.roles import DEFAULT, SEARCH
    from nbtl_search.study.spec import load_spec
    from tests.search import fakes

    study = {**fakes.spec_dict(name="ops", train={"epochs": 3}), "storage": pg_url}
    path = tmp_path / "ops.yaml"
    path.write_text(yaml.safe_dump(study))
    for role in (DEFAULT, SEARCH):  # the selection comes from fake trials; final trains for real
        run_worker(
            load_spec(path), pg_url, role, WorkerOptions(device="cpu", index=0), fit=fakes.fake_fit
        )
    trainer_side, analysis_side = tmp_path / "gpu-host", tmp_path / "laptop"
    trainer_side.mkdir()
    analysis_side.mkdir()
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "nbtl_search",
            "final",
            str(path),
            "--device",
            "cpu",
            "--seeds",
            "2",
            "--rerank-top-k",
            "1",
            "--rerank-seeds",
            "0",
        ],
        cwd=trainer_side,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    os.chdir(analysis_side)  # pytest restores nothing here: tmp_path is ours alone
    row = analysis.compare(pg_url, "ops").iloc[0]
    assert row["default_n_seeds"] == 2 and row["optimal_n_seeds"] == 2
    assert (
        row["ensemble_size"] == 2 and row["test_images"] > 0
    )  # predictions read from the database
    report = analysis.write_report(pg_url, "ops", analysis_side / "r.html").read_text()
    assert (
        "Not drawn: study" not in report.split("Search history")[0]
    )  # comparison and ladder drawn
    assert not list(trainer_side.rglob("*.npz"))  # nothing analysis needs was left on that host


def _children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(c) for c in (task / "children").read_text().split()]
    return found


def test_a_signal_to_final_stops_its_training_processes_and_the_rerun_fills_in(
    sqlite_url: str, tmp_path: Path
) -> None:
    from nbtl_search.run.worker import WorkerOptions, run_worker
    from nbtl_search.study.roles import DEFAULT, SEARCH
    from nbtl_search.study.spec import load_spec
    from tests.search import fakes

    path = tmp_path / "ops.yaml"
    path.write_text(
        yaml.safe_dump({**fakes.spec_dict(name="ops", train={"epochs": 40}), "storage": sqlite_url})
    )
    for role in (DEFAULT, SEARCH):  # the selection comes from fake trials; final trains for real
        run_worker(
            load_spec(path),
            sqlite_url,
            role,
            WorkerOptions(device="cpu", index=0),
            fit=fakes.fake_fit,
        )
    cmd = [
        sys.executable,
        "-m",
        "nbtl_search",
        "final",
        str(path),
        "--device",
        "cpu",
        "--seeds",
        "2",
        "--jobs",
        "2",
        "--rerank-top-k",
        "1",
        "--rerank-seeds",
        "0",
    ]
    store = ResultStore(sqlite_url)

    def training() -> list[dict] | None:
        busy = [
            r
            for r in store.runs(study="ops", role="final")
            if r["state"] == "running" and store.epochs(r["id"])
        ]
        return busy if len(busy) == 2 else None

    final = subprocess.Popen(
        cmd, cwd=tmp_path, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        busy = _poll(training, "two final runs to be mid-training")
        children = _children(final.pid)
        final.send_signal(signal.SIGTERM)  # `final` alone, as a job scheduler does
        _, err = final.communicate(timeout=60)
    finally:
        final.kill()
    assert final.returncode == 128 + signal.SIGTERM.value, err
    assert err.strip().splitlines()[-1].startswith("stopped"), err
    deadline = time.monotonic() + 10
    while any(_alive(p) for p in children) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert children and not [p for p in children if _alive(p)], "a process outlived `final` by 10 s"
    runs = {r["id"]: r for r in store.runs(study="ops", role="final")}
    assert "running" not in {r["state"] for r in runs.values()}
    assert {runs[r["id"]]["state"] for r in busy} == {"failed"}

    rerun = subprocess.run(cmd, cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    after = store.runs(study="ops", role="final")
    done = {(r["config_hash"], r["seed"]) for r in after if r["state"] == "complete"}
    assert {
        (r["config_hash"], r["seed"]) for r in busy
    } <= done  # what was stopped was trained again
    assert {r["state"] for r in after} == {"complete", "failed"}
