"""The CLI verbs. Each takes the parsed arguments and returns an exit code."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import optuna
from rich.console import Console

from trainer import InputError

from .spec import SpecError, StudySpec, load_spec
from .storage import StorageError, check_url
from .worker import DEFAULT, SEARCH, StudyMismatch, WorkerOptions, run_worker

from analysis import AnalysisError

USER_ERRORS = (SpecError, StorageError, StudyMismatch, InputError, AnalysisError)

console = Console(soft_wrap=True)  # piped output keeps whole lines (logs, grep)
optuna.logging.set_verbosity(optuna.logging.WARNING)  # our own progress display says what happens


def _spec(args: argparse.Namespace) -> tuple[StudySpec, str]:
    spec = load_spec(args.study)
    url = args.storage or spec.storage
    check_url(url)
    return spec, url


def run(args: argparse.Namespace) -> int:
    return _launch(args, SEARCH)


def baseline(args: argparse.Namespace) -> int:
    return _launch(args, DEFAULT)


def _launch(args: argparse.Namespace, role) -> int:
    from .launcher import launch
    from .preflight import preflight, slots_from_args

    spec, url = _spec(args)
    slots = slots_from_args(args)  # bad --gpus fails here, before anything is written
    preflight(spec)
    # failed trials are recorded results (with their reasons), not a failed command; dead workers are
    log_dir = _log_dir(spec, role)
    crashed = launch(spec, url, role, slots, budget=getattr(args, "trials", None),
                     timeout=getattr(args, "timeout", None), log_dir=log_dir)
    _write_note(url, spec)
    if crashed:
        print(f"error: worker(s) {', '.join(crashed)} stopped early (crashes, or trials that keep "
              f"failing); see {log_dir}/", file=sys.stderr)
        return 1
    if role is SEARCH:
        console.print(f"next: nbtl-search status {args.study}   |   "
                      f"optuna-dashboard {url}")
    return 0


def worker(args: argparse.Namespace) -> int:
    from trainer.setup import resolve_device

    from .preflight import preflight

    spec, url = _spec(args)
    if args.gpu is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = str(args.gpu)  # before torch initialises CUDA
    device = str(resolve_device(args.device or _default_device()))  # a bad device: exit 2 now
    preflight(spec)  # this host's data and model, before joining the study
    role = SEARCH if args.role == "search" else DEFAULT
    opts = WorkerOptions(device=device, trials=args.trials, budget=args.budget,
                         timeout=args.timeout, threads=args.threads, index=args.index)
    return run_worker(spec, url, role, opts)


def final(args: argparse.Namespace) -> int:
    from .final import run_final

    spec, url = _spec(args)
    run_final(spec, url, seeds=args.seeds or spec.final.seeds, top_k=args.top_k,
              device=args.device or _default_device(), console=console, jobs=args.jobs)
    _write_note(url, spec)
    import analysis

    console.print(analysis.summary_markdown(url, spec.name))
    return 0


def status(args: argparse.Namespace) -> int:
    from .views import status_table

    spec, url = _spec(args)
    console.print(status_table(spec, url))
    return 0


def best(args: argparse.Namespace) -> int:
    from .views import best_yaml

    spec, url = _spec(args)
    sys.stdout.write(best_yaml(spec, url))
    return 0


def export(args: argparse.Namespace) -> int:
    import analysis

    spec, url = _spec(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    analysis.runs(url, spec.name).to_csv(out / "runs.csv", index=False)
    analysis.epochs(url, spec.name).to_csv(out / "epochs.csv", index=False)
    console.print(f"wrote {out / 'runs.csv'} and {out / 'epochs.csv'}")
    return 0


def report(args: argparse.Namespace) -> int:
    from analysis.report import write_report

    spec, url = _spec(args)
    reference = {}
    for item in args.reference:
        name, _, value = item.rpartition("=")
        try:
            reference[name.strip()] = float(value)
        except ValueError:
            raise InputError(f"--reference takes NAME=TOP1, got {item!r}") from None
        if not name.strip():
            raise InputError(f"--reference takes NAME=TOP1, got {item!r}")
    path = write_report(url, spec.name, args.out, reference=reference or None)
    console.print(f"wrote {path}")
    return 0


def dashboard(args: argparse.Namespace) -> int:
    from optuna_dashboard import run_server

    from .storage import open_storage

    spec, url = _spec(args)
    storage = open_storage(url, heartbeat=False)
    console.print(f"optuna-dashboard for {url} on http://{args.host}:{args.port} (Ctrl-C stops)")
    try:
        run_server(storage, host=args.host, port=args.port)
    except KeyboardInterrupt:
        pass
    return 0


def demo(args: argparse.Namespace) -> int:
    from .cli import repo_root
    from .demo import run_demo

    study = Path(args.study) if args.study else repo_root() / "studies" / "demo_digits.yaml"
    spec = load_spec(study)
    url = args.storage or spec.storage
    check_url(url)
    return run_demo(spec, url, console)


def _log_dir(spec: StudySpec, role) -> Path:
    return Path("nbtl-logs") / f"{spec.name}-{role.name}"


def _default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _write_note(url: str, spec: StudySpec) -> None:
    """Put the optimal-vs-default summary on the study's optuna-dashboard page."""
    from .notes import write_note

    write_note(url, spec)
