"""`nbtl-search` verbs end to end: bad input (exit 2, nothing written), status/best/export/dashboard."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import optuna
import pytest
import yaml

from nbtl_search.cli import main
from nbtl_search.run.worker import WorkerOptions, prepare_study, run_worker
from nbtl_search.store.connection import open_rdb
from nbtl_search.study.roles import DEFAULT, SEARCH
from nbtl_search.study.sampling import config_from_params
from nbtl_search.study.spec import load_spec, parse_spec
from tests.search import fakes

optuna.logging.set_verbosity(optuna.logging.ERROR)


def _write(tmp_path: Path, data: dict | str, name: str = "study.yaml") -> Path:
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return path


def _study(tmp_path: Path, **overrides) -> tuple[Path, str]:
    """A fake study file whose database lies in the test's folder: (path, url)."""
    url = f"sqlite:///{tmp_path / 'nbtl.db'}"
    return _write(tmp_path, {**fakes.spec_dict(**overrides), "storage": url}), url


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


BAD_STUDIES = {
    "malformed yaml": ("name: [unclosed\n", "line"),
    "unknown section": ({**fakes.spec_dict(), "serach_space": {}}, "serach_space"),
    "impossible range": (
        fakes.spec_dict(search_space={"lr": {"type": "float", "low": 0.3, "high": 0.01}}),
        "search_space.lr",
    ),
    "wrong type": (fakes.spec_dict(budget={"n_trials": "many"}), "budget.n_trials"),
    "malformed storage": (fakes.spec_dict(storage="sqlite//nope"), "storage"),
    "missing dataset": (
        fakes.spec_dict(dataset={"name": "imagefolder", "data_dir": "/no/such/dir"}),
        "/no/such/dir",
    ),
    "too many layers": (
        fakes.spec_dict(search_space={"new_layers": {"type": "int", "low": 1, "high": 9}}),
        "new_layers",
    ),
}


@pytest.mark.parametrize("case", list(BAD_STUDIES))
def test_bad_study_exits_2_with_one_line_and_writes_nothing(tmp_path, capsys, case) -> None:
    data, needle = BAD_STUDIES[case]
    if isinstance(data, dict) and case != "malformed storage":
        data = {**data, "storage": f"sqlite:///{tmp_path / 'nbtl.db'}"}
    code, _, err = _run(capsys, "run", str(_write(tmp_path, data)), "--device", "cpu")
    _assert_one_line(code, err, needle)
    assert not (tmp_path / "nbtl.db").exists()


def _assert_one_line(code: int, err: str, needle: str) -> None:
    assert code == 2, err
    assert needle in err and err.startswith("error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err


def test_unreachable_storage_exits_2(tmp_path, capsys) -> None:
    path = _write(tmp_path, fakes.spec_dict())
    code, _, err = _run(
        capsys,
        "run",
        str(path),
        "--device",
        "cpu",
        "--storage",
        "postgresql+psycopg://postgres@127.0.0.1:1/none",
    )
    assert code == 2 and "cannot open storage" in err and err.count("\n") == 1


def test_gpus_that_do_not_exist_exit_2(tmp_path, capsys) -> None:
    path, _ = _study(tmp_path)
    code, _, err = _run(capsys, "run", str(path), "--gpus", "0,7")
    assert code == 2 and "GPU" in err
    assert not (tmp_path / "nbtl.db").exists()


def test_a_study_name_reused_with_another_space_exits_2(tmp_path, capsys) -> None:
    url = f"sqlite:///{tmp_path / 'nbtl.db'}"
    first = parse_spec(fakes.spec_dict())
    prepare_study(first, open_rdb(url, heartbeat=False), SEARCH)
    other = fakes.spec_dict(search_space={"lr": {"type": "float", "low": 0.001, "high": 0.3}})
    code, _, err = _run(
        capsys, "run", str(_write(tmp_path, other)), "--storage", url, "--device", "cpu"
    )
    assert code == 2 and "different search space" in err
    study = optuna.load_study(study_name="fake", storage=url)
    assert study.trials == []


@pytest.fixture
def finished_study(tmp_path: Path) -> tuple[Path, str]:
    """A study file and its database after a baseline and a search (fake trainer)."""
    path, url = _study(tmp_path)
    spec = load_spec(path)
    for role in (DEFAULT, SEARCH):
        run_worker(spec, url, role, WorkerOptions(device="cpu", index=0), fit=fakes.fake_fit)
    return path, url


def test_status_best_and_export(finished_study, tmp_path, capsys) -> None:
    path, url = finished_study
    code, out, _ = _run(capsys, "status", str(path))
    assert code == 0 and "complete" in out and "best search" in out

    code, out, _ = _run(capsys, "best", str(path))
    assert code == 0
    best = optuna.load_study(study_name="fake", storage=url).best_trial
    rerun = parse_spec(yaml.safe_load(out))  # the printed study file is valid as it stands
    # every axis is fixed at the best trial's value: the rerun trains exactly that config
    assert config_from_params(rerun, {}) == config_from_params(load_spec(path), best.params)

    code, _, _ = _run(capsys, "export", str(path), "--out", str(tmp_path / "csv"))
    assert code == 0
    runs = (tmp_path / "csv" / "runs.csv").read_text().splitlines()
    assert len(runs) == 1 + 6 + 3  # header, search budget, baseline grid


def test_dashboard_serves_the_study_and_stops_cleanly(finished_study) -> None:
    path, url = finished_study
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "nbtl_search", "dashboard", str(path), "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        studies = _poll_json(f"http://127.0.0.1:{port}/api/studies", proc)
        assert {"fake", "fake.default"} <= {s["study_name"] for s in studies["study_summaries"]}
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err.decode()[-1000:]


def _poll_json(url: str, proc: subprocess.Popen, deadline_s: float = 60) -> dict:
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise AssertionError(f"dashboard exited: {proc.stderr.read().decode()[-1000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                assert r.status == 200
                return json.loads(r.read())
        except OSError:
            time.sleep(0.2)  # the server is still starting: poll again
    raise AssertionError("dashboard did not answer")


def test_final_and_report_say_which_command_to_run_first(tmp_path, capsys) -> None:
    path, url = _study(tmp_path)
    code, _, err = _run(capsys, "report", str(path), "--out", str(tmp_path / "r.html"))
    assert code == 2 and "nbtl-search run" in err  # no database yet
    run_worker(
        load_spec(path), url, SEARCH, WorkerOptions(device="cpu", index=0), fit=fakes.fake_fit
    )
    for verb in (
        ["final", str(path), "--device", "cpu"],
        ["report", str(path), "--out", str(tmp_path / "r.html")],
    ):
        code, _, err = _run(capsys, *verb)
        assert code == 2 and "nbtl-search baseline" in err, err
    assert not (tmp_path / "r.html").exists()  # no empty report written


def test_worker_refuses_a_device_this_host_lacks(tmp_path, capsys) -> None:
    path, _ = _study(tmp_path)
    code, _, err = _run(capsys, "worker", str(path), "--device", "cuda:5")
    assert code == 2 and "cuda:5" in err
    assert not (tmp_path / "nbtl.db").exists()


def test_status_shows_why_a_trial_failed(tmp_path, capsys) -> None:
    path, url = _study(tmp_path, search_space={"lr": fakes.FAIL_LR})
    run_worker(
        load_spec(path), url, SEARCH, WorkerOptions(device="cpu", index=0), fit=fakes.fake_fit
    )
    code, out, _ = _run(capsys, "status", str(path))
    assert code == 0 and "fail" in out and "RuntimeError" in out  # the cell wraps at 80 columns


def test_status_shows_grid_coverage_and_a_best_on_the_edge(finished_study, capsys) -> None:
    path, _ = finished_study
    code, out, _ = _run(capsys, "status", str(path))
    assert code == 0
    assert "default grid: 3/3 points finished once, 0 more than once, 0 not (yet) finished" in out
    # the fake score grows with new_layers: the search's best sits on the top of its range
    assert "edge: new_layers 3 is at the upper end of its range [1, 3]" in out
    assert "edge: lr" not in out.split("best search")[0]  # the baseline's 0.1 is inside its grid
