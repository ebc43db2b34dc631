"""`submit` without a cluster: the batch script and the Kubernetes manifest it writes, the input it
refuses (exit 2, one line, nothing written), the script's stopping logic run by bash itself, and a
worker's time limit. The same verb on a real Slurm cluster: tests/slurm/."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from datetime import datetime, timedelta
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.trial import FrozenTrial, TrialState

from nbtl_search.cli import main
from nbtl_search.run import sbatch
from nbtl_search.run.slurm import duration_seconds
from nbtl_search.run.time_limit import TimeLimit, trial_seconds
from nbtl_search.run.worker import WorkerOptions, run_worker
from nbtl_search.study.roles import SEARCH
from nbtl_search.study.spec import parse_spec
from tests.search import fakes

PASSWORD = "s3cret-Pw"
PG_URL = f"postgresql+psycopg://nbtl:{PASSWORD}@db.example:5432/nbtl"


def _study(tmp_path: Path, **overrides) -> Path:
    path = tmp_path / "study.yaml"
    data = {**fakes.spec_dict(**overrides), "storage": f"sqlite:///{tmp_path / 'nbtl.db'}"}
    path.write_text(yaml.safe_dump(data))
    return path


def _submit(capsys, tmp_path: Path, *argv: str) -> tuple[int, str, str]:
    cwd = os.getcwd()
    os.chdir(tmp_path)  # the logs folder is relative to where submit runs
    try:
        code = main(["submit", str(_study(tmp_path)), *argv])
    finally:
        os.chdir(cwd)
    out = capsys.readouterr()
    return code, out.out, out.err


def _nothing_written(tmp_path: Path) -> None:
    assert sorted(p.name for p in tmp_path.iterdir()) == ["study.yaml"]


def test_the_dry_run_script_asks_slurm_for_one_gpu_per_task(tmp_path, capsys) -> None:
    code, script, err = _submit(
        capsys,
        tmp_path,
        "--dry-run",
        "--storage",
        PG_URL,
        "--workers",
        "3",
        "--per-gpu",
        "2",
        "--time",
        "4:00:00",
        "--partition",
        "gpu",
        "--account",
        "lab",
        "--qos",
        "normal",
        "--constraint",
        "a100",
        "--cpus-per-gpu",
        "8",
        "--mem-per-gpu",
        "32G",
        "--sbatch=--exclusive",
        "--sbatch",
        "#SBATCH --mail-type=END",
        "--setup",
        "source ~/venv/bin/activate",
        "--trials",
        "20",
    )
    assert code == 0, err
    options = [line.split(" ", 1)[1] for line in script.splitlines() if line.startswith("#SBATCH")]
    for expected in (
        "--job-name=nbtl-fake-search",
        "--array=0-2",
        "--gres=gpu:1",
        "--cpus-per-task=8",
        "--mem=32G",
        "--time=4:00:00",
        "--partition=gpu",
        "--account=lab",
        "--qos=normal",
        "--constraint=a100",
        "--signal=B:USR1@120",
        "--export=ALL",
        "--open-mode=append",
        "--exclusive",
        "--mail-type=END",
        f"--output={tmp_path.resolve()}/nbtl-logs/fake-search/slurm-%A_%a.out",
        f"--chdir={tmp_path.resolve()}",
    ):
        assert expected in options, (expected, options)
    assert "source ~/venv/bin/activate" in script
    assert "index=$((SLURM_ARRAY_TASK_ID * 2 + k))" in script
    (worker,) = [line for line in script.splitlines() if "-m nbtl_search worker" in line]
    assert f"{sys.executable} -m nbtl_search worker {tmp_path.resolve()}/study.yaml" in worker
    for part in ("--role search", "--device cuda", "--budget 20", "--threads 4", '"$index"'):
        assert part in worker, worker
    assert "--end-margin 120" in worker
    assert PASSWORD not in script and "db.example" not in script
    subprocess.run(["bash", "-n"], input=script, text=True, check=True)  # valid bash
    _nothing_written(tmp_path)


def test_the_baseline_and_a_cpu_partition(tmp_path, capsys) -> None:
    code, script, err = _submit(
        capsys, tmp_path, "--dry-run", "--baseline", "--gres", "none", "--device", "cpu"
    )
    assert code == 0, err
    assert "--gres" not in script and "--job-name=nbtl-fake-default" in script
    assert "--role default --device cpu --threads 1" in script


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--workers", "2"], "SQLite cannot be shared by 2 tasks"),
        (["--time", "soon"], "--time: not a Slurm time"),
        (["--time", "1", "--signal-lead", "60"], "leaves no time"),
        (["--baseline", "--trials", "3"], "--trials is for the search"),
        (["--workers", "0"], "must be >= 1"),
        (["--k8s"], "--k8s needs --image"),
        (["--k8s", "--image", "x", "--partition", "gpu"], "--partition: Slurm options"),
        (["--sbatch", "exclusive"], "takes an sbatch option"),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, capsys, argv, needle) -> None:
    code, out, err = _submit(capsys, tmp_path, *argv)
    assert code == 2 and needle in err and err.count("\n") == 1, err
    assert "Traceback" not in err
    _nothing_written(tmp_path)


def test_without_sbatch_nothing_is_created(tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))  # no sbatch on it
    code, _, err = _submit(capsys, tmp_path)
    assert code == 2 and "sbatch not found" in err, err
    _nothing_written(tmp_path)  # the study is created only once Slurm accepted the options


def test_the_k8s_manifest_is_an_indexed_job_with_one_gpu_per_pod(tmp_path, capsys) -> None:
    code, out, err = _submit(
        capsys,
        tmp_path,
        "--k8s",
        "--dry-run",
        "--storage",
        PG_URL,
        "--image",
        "registry.example/nbtl:1",
        "--workers",
        "4",
        "--per-gpu",
        "2",
        "--cpus-per-gpu",
        "8",
        "--mem-per-gpu",
        "32G",
    )
    assert code == 0, err
    config_map, job = yaml.safe_load_all(out)
    assert config_map["kind"] == "ConfigMap"
    study = yaml.safe_load(config_map["data"]["study.yaml"])
    assert study["name"] == "fake" and "storage" not in study  # the URL only from the Secret
    assert job["apiVersion"] == "batch/v1" and job["kind"] == "Job"
    spec = job["spec"]
    assert spec["completionMode"] == "Indexed"
    assert spec["completions"] == spec["parallelism"] == 4
    pod = spec["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    (container,) = pod["containers"]
    assert container["image"] == "registry.example/nbtl:1"
    assert container["resources"]["limits"] == {"nvidia.com/gpu": 1, "cpu": 8, "memory": "32Gi"}
    (env,) = container["env"]
    assert env["name"] == "NBTL_STORAGE"
    assert env["valueFrom"]["secretKeyRef"] == {"name": "nbtl-storage", "key": "url"}
    shell = container["command"][2]
    assert "nbtl-search worker /etc/nbtl/study.yaml --role search --device cuda" in shell
    assert "$((JOB_COMPLETION_INDEX * 2 + k))" in shell and "--threads 4" in shell
    (mount,) = container["volumeMounts"]
    (volume,) = pod["volumes"]
    assert (
        mount["name"] == volume["name"] and volume["configMap"]["name"] == "nbtl-fake-search-study"
    )
    subprocess.run(["sh", "-n"], input=shell, text=True, check=True)
    assert PASSWORD not in out and "db.example" not in out
    _nothing_written(tmp_path)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("90", 5400),
        ("4:30", 270),
        ("1:00:00", 3600),
        ("2-0", 172800),
        ("1-2:03", 93780),
        ("1-02:03:04", 93784),
        ("UNLIMITED", None),
        ("NOT_SET", None),
    ],
)
def test_slurm_times(text: str, seconds: float | None) -> None:
    assert duration_seconds(text) == seconds


def test_a_bad_slurm_time_is_refused() -> None:
    for text in ("", "soon", "1:2:3:4", "-1"):
        with pytest.raises(ValueError):
            duration_seconds(text)


def test_the_script_passes_a_stop_on_to_its_workers_and_waits(tmp_path: Path) -> None:
    """bash runs the batch script as Slurm would start it (no Slurm needed): USR1 to the script
    (what `--signal=B:USR1@LEAD` sends) reaches every worker as SIGTERM, the script waits for them
    and exits with their code."""
    worker = tmp_path / "worker.py"
    worker.write_text(
        "import os, signal, sys, time\n"
        "from pathlib import Path\n"
        "folder, index = Path(sys.argv[1]), sys.argv[2]\n"
        "def stop(signum, frame):\n"
        "    (folder / f'stopped-{index}').write_text(os.environ['NBTL_PARENT_PID'])\n"
        "    sys.exit(143)\n"
        "signal.signal(signal.SIGTERM, stop)\n"
        "(folder / f'started-{index}').touch()\n"
        "while True:\n"
        "    time.sleep(1)  # a trial, waiting for its stop\n"
    )
    job = sbatch.ArrayJob(name="t", tasks=2, per_task=2, logs=tmp_path, workdir=tmp_path)
    script = tmp_path / "job.sbatch"
    script.write_text(
        sbatch.batch_script(job, [sys.executable, str(worker), str(tmp_path), sbatch.INDEX])
    )
    env = {**os.environ, "SLURM_ARRAY_TASK_ID": "1", "SLURM_ARRAY_JOB_ID": "7"}
    shell = subprocess.Popen(["bash", str(script)], env=env, stdout=subprocess.PIPE, text=True)
    _until(lambda: {p.name for p in tmp_path.glob("started-*")} == {"started-2", "started-3"})
    shell.send_signal(signal.SIGUSR1)
    out, _ = shell.communicate(timeout=60)
    assert shell.returncode == 143
    for index in (2, 3):  # task 1 with 2 workers per task holds workers 2 and 3
        assert (tmp_path / f"stopped-{index}").read_text() == str(shell.pid)
    assert "task 1 of job 7" in out and "2 worker(s)" in out


def _until(condition, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.05)  # polling an observable state, not waiting for time to pass


def _finished(number: int, seconds: float, state: TrialState, epochs: int) -> FrozenTrial:
    start = datetime(2026, 1, 1)
    return FrozenTrial(
        number=number,
        state=state,
        value=1.0 if state == TrialState.COMPLETE else None,
        datetime_start=start,
        datetime_complete=start + timedelta(seconds=seconds),
        params={},
        distributions={},
        user_attrs={},
        system_attrs={},
        intermediate_values={e: 1.0 for e in range(1, epochs + 1)},
        trial_id=number,
    )


def test_a_trial_takes_as_long_as_the_longest_finished_one() -> None:
    trials = [
        _finished(0, 100, TrialState.COMPLETE, 10),
        _finished(1, 30, TrialState.PRUNED, 2),  # 2 of 10 epochs: 150 s for all of them
        _finished(2, 999, TrialState.FAIL, 1),  # says nothing about a whole trial
    ]
    assert trial_seconds(trials, epochs=10) == 150
    assert trial_seconds(trials[2:], epochs=10) is None
    limit = TimeLimit(left=lambda: None, margin=60)
    assert limit.refuses(None, trials, 10) is None  # no end
    assert limit.refuses(300, trials, 10) is None  # 240 s usable, 150 needed
    assert "taken up to 150 s" in limit.refuses(200, trials, 10)
    assert "within its 60 s margin" in limit.refuses(50, [], 10)
    assert limit.refuses(100, [], 10) is None  # nothing measured yet: the first trial starts


def test_a_worker_does_not_start_a_trial_it_cannot_finish(sqlite_url: str, capsys) -> None:
    spec = parse_spec(fakes.spec_dict(budget={"n_trials": 3}))
    opts = WorkerOptions(device="cpu", index=0, heartbeat_interval=1, grace_period=30)

    def worker(**changes) -> int:
        return run_worker(spec, sqlite_url, SEARCH, replace(opts, **changes), fakes.fake_fit)

    assert worker(trials=1) == 0
    study = optuna.load_study(study_name="fake", storage=sqlite_url)
    (first,) = study.trials
    took = (first.datetime_complete - first.datetime_start).total_seconds()
    # a job that ends sooner than one more such trial: the worker stops without claiming one
    limit = TimeLimit(left=lambda: took / 2 + 5, margin=5)
    assert worker(time_limit=limit) == 0
    assert len(study.trials) == 1
    assert "not starting another trial" in capsys.readouterr().err
    # with time enough it runs the rest of the budget
    limit = TimeLimit(left=lambda: 3600.0, margin=5)
    assert worker(time_limit=limit) == 0
    assert sum(t.state == TrialState.COMPLETE for t in study.trials) == 3


def test_k8s_creates_the_study_before_printing_the_manifest(tmp_path, capsys) -> None:
    code, out, err = _submit(capsys, tmp_path, "--k8s", "--image", "nbtl:1")
    assert code == 0, err
    assert [d["kind"] for d in yaml.safe_load_all(out)] == ["ConfigMap", "Job"]
    study = optuna.load_study(study_name="fake", storage=f"sqlite:///{tmp_path / 'nbtl.db'}")
    assert study.user_attrs["nbtl_role"] == "search"  # created once, here, for every pod
    assert (
        'exec nbtl-search worker /etc/nbtl/study.yaml --role search --device cuda --index "$JOB_COMPLETION_INDEX"'
        in out
    )
