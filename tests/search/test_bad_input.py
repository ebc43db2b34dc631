"""Every bad input, CLI or study file: exit 2, one line on stderr, no traceback, and the database
byte-identical (or still absent) afterwards."""

from __future__ import annotations

import hashlib
import shutil
import sqlite3
from pathlib import Path

import pytest
import yaml

from nbtl_search.cli import main
from nbtl_search.run.worker import WorkerOptions, run_worker
from nbtl_search.study.roles import DEFAULT, SEARCH
from nbtl_search.study.spec import load_spec
from tests.search import fakes


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with a study file and its database after a baseline and a search."""
    folder = tmp_path_factory.mktemp("finished")
    (folder / "study.yaml").write_text(yaml.safe_dump(fakes.spec_dict()))
    url = f"sqlite:///{folder / 'nbtl.db'}"
    for role in (DEFAULT, SEARCH):
        run_worker(
            load_spec(folder / "study.yaml"),
            url,
            role,
            WorkerOptions(device="cpu", index=0),
            fit=fakes.fake_fit,
        )
    with sqlite3.connect(folder / "nbtl.db") as conn:  # everything into the file itself
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return folder


STUDY_FILES = {
    "non-utf8": (b"name: caf\xe9\n", "not a UTF-8 text file"),
    "not yaml": ("name: [unclosed\n", "invalid YAML"),
    "a list": ("- 1\n- 2\n", "top level: must be a mapping"),
    "bogus aa": ({"search_space": {"aa": "bogus-string"}}, "aa 'bogus-string' is not a valid"),
    "aa without value": (
        {"train": {"aa": "rand-mX"}, "search_space": {"lr": 0.1}},
        "section 'mX' has no value",
    ),
    "bogus remode": ({"train": {"remode": "zebra"}}, "remode must be one of"),
    "empty storage": ({"storage": ""}, "storage: must not be empty"),
    "unknown default setting": ({"default_settings": {"lr_x": [0.1]}}, "not a TrainConfig field"),
    "binary default setting": ({"default_settings": {"new_layers": 2}}, "binary transfer"),
    "negative rerank k": ({"final": {"rerank_top_k": -1}}, "final.rerank_top_k: must be >= 0"),
    "zero seeds": ({"final": {"seeds": 0}}, "final.seeds: must be >= 1"),
    "nan epochs": ({"train": {"epochs": float("nan")}}, "train.epochs: must be an integer"),
    "infinite momentum": (
        {"train": {"momentum": float("inf")}},
        "train.momentum: must be a number",
    ),
    "negative l2 rate": ({"search_space": {"lr": 0.1, "l2_upper": -0.1}}, "l2_rates must be >= 0"),
    "float grid": (
        {
            "sampler": {"type": "grid"},
            "search_space": {"lr": {"type": "float", "low": 0.01, "high": 0.1}},
        },
        "grid sampler needs discrete axes",
    ),
}


def _study_file(folder: Path, content) -> Path:
    path = folder / "bad.yaml"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif isinstance(content, str):
        path.write_text(content)
    else:
        data = fakes.spec_dict(**content)
        data.setdefault("storage", f"sqlite:///{folder / 'nbtl.db'}")
        path.write_text(yaml.safe_dump(data))
    return path


# (argv after the verb's study file, expected words); "{new}" is a database that does not exist
CLI = {
    "run --workers 0": (["run", "--device", "cpu", "--workers", "0"], "--workers: must be >= 1"),
    "run --trials 0": (["run", "--device", "cpu", "--trials", "0"], "--trials: must be >= 1"),
    "run --trials -1": (["run", "--trials", "-1"], "--trials: must be >= 1"),
    "run --timeout -5": (["run", "--timeout", "-5"], "--timeout: must be >= 1"),
    "run --timeout nan": (["run", "--timeout", "nan"], "--timeout: must be >= 1"),
    "run --per-gpu 0": (["run", "--per-gpu", "0"], "--per-gpu: must be >= 1"),
    "run --workers x": (["run", "--workers", "x"], "takes an integer"),
    "run --storage ''": (["run", "--device", "cpu", "--storage", ""], "malformed storage URL"),
    "run --storage mysql": (["run", "--storage", "mysql://u@h/x"], "unsupported storage URL"),
    "run --gpus 0,7": (["run", "--gpus", "0,7"], "GPU"),
    "run --gpus x": (["run", "--device", "cpu", "--gpus", "x"], "--gpus needs --device cuda"),
    "run --device tpu": (["run", "--device", "tpu"], "invalid choice"),
    "baseline --workers -2": (["baseline", "--workers", "-2"], "--workers: must be >= 1"),
    "worker --gpu 9": (["worker", "--gpu", "9"], "GPU 9 does not exist"),
    "worker --gpu -1": (["worker", "--gpu", "-1"], "--gpu: must be >= 0"),
    "worker --gpu with cpu": (["worker", "--gpu", "0", "--device", "cpu"], "needs --device cuda"),
    "worker --device cuda:5": (["worker", "--device", "cuda:5"], "cuda:5"),
    "worker --threads 0": (["worker", "--threads", "0"], "--threads: must be >= 1"),
    "worker --index -1": (["worker", "--index", "-1"], "--index: must be >= 0"),
    "worker --role both": (["worker", "--role", "both"], "invalid choice"),
    "worker --budget 0": (["worker", "--budget", "0"], "--budget: must be >= 1"),
    "final --seeds 0": (["final", "--seeds", "0"], "--seeds: must be >= 1"),
    "final --top-k 0": (["final", "--top-k", "0"], "--top-k: must be >= 1"),
    "final --jobs 0": (["final", "--jobs", "0"], "--jobs: must be >= 1"),
    "final --rerank-top-k -1": (["final", "--rerank-top-k", "-1"], "--rerank-top-k: must be >= 0"),
    "final --rerank-top-k 99": (
        ["final", "--rerank-top-k", "99", "--device", "cpu"],
        "--rerank-top-k 99 is more than the 3 distinct complete default",
    ),
    "final --top-k 99": (
        ["final", "--top-k", "99", "--rerank-top-k", "1", "--device", "cpu"],
        "--top-k 99 is more than the 6 distinct complete search configs",
    ),
    "final on a new database": (
        ["final", "--storage", "sqlite:///{new}", "--device", "cpu"],
        "no database at",
    ),
    "status on a new database": (["status", "--storage", "sqlite:///{new}"], "no database"),
    "best on a new database": (["best", "--storage", "sqlite:///{new}"], "no database"),
    "export on a new database": (["export", "--storage", "sqlite:///{new}"], "no database"),
    "report on a new database": (["report", "--storage", "sqlite:///{new}"], "no database"),
    "dashboard on a new database": (["dashboard", "--storage", "sqlite:///{new}"], "no database"),
    "report --reference foo": (["report", "--reference", "foo"], "--reference takes NAME=TOP1"),
    "report --reference =3": (["report", "--reference", "=3"], "--reference takes NAME=TOP1"),
    "dashboard --port 0": (["dashboard", "--port", "0"], "--port: must be >= 1"),
    "dashboard --port abc": (["dashboard", "--port", "abc"], "takes an integer"),
    "demo --seed -1": (["demo", "--seed", "-1"], "--seed: must be >= 0"),
    "demo --study missing": (["demo", "--study", "{new}.yaml"], "cannot read the study file"),
    "unknown verb": (["sweep"], "invalid choice"),
}
NO_STUDY = {"demo", "sweep"}  # verbs that take no study file argument


@pytest.mark.parametrize("case", list(STUDY_FILES))
def test_a_bad_study_file_changes_nothing(case, finished, tmp_path, capsys) -> None:
    folder = _copy(finished, tmp_path)
    path = _study_file(folder, STUDY_FILES[case][0])
    before = _snapshot(folder)
    for verb in (["run", "--device", "cpu"], ["status"], ["final", "--device", "cpu"]):
        code = main([verb[0], str(path), *verb[1:]])
        _assert_one_line(code, capsys.readouterr().err, STUDY_FILES[case][1])
        assert _snapshot(folder) == before


@pytest.mark.parametrize("case", list(CLI))
def test_a_bad_option_changes_nothing(case, finished, tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # `worker --gpu` sets it: restore afterwards
    monkeypatch.chdir(tmp_path)  # nothing may appear in the working folder either
    folder = _copy(finished, tmp_path)
    argv, needle = CLI[case]
    argv = [a.replace("{new}", str(tmp_path / "new.db")) for a in argv]
    if argv[0] not in NO_STUDY:
        argv = [argv[0], str(folder / "study.yaml"), *argv[1:]]
    (folder / "study.yaml").write_text(
        yaml.safe_dump({**fakes.spec_dict(), "storage": f"sqlite:///{folder / 'nbtl.db'}"})
    )
    before = _snapshot(folder)
    code = main(argv)
    _assert_one_line(code, capsys.readouterr().err, needle)
    assert _snapshot(folder) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["copy"]  # no new database, no logs


def test_the_tables_hold_at_least_forty_cases() -> None:
    assert len(STUDY_FILES) + len(CLI) >= 40


def _copy(finished: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(finished, tmp_path / "copy"))


def _snapshot(folder: Path) -> dict[str, str]:
    """File name -> sha256 of every file in `folder` (a read that checkpoints or creates a WAL
    file shows up here too)."""
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.iterdir())
        if p.is_file() and not p.name.endswith((".db-wal", ".db-shm"))
    }


def _assert_one_line(code: int, err: str, needle: str) -> None:
    assert code == 2, err
    assert needle in err and err.startswith("error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err
