"""The CLI verbs. Each takes the parsed arguments and returns an exit code.

Heavy imports (torch, timm, pandas, plotly) happen inside the verbs that need them, so a worker
process loads only what training needs.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import optuna
from rich.console import Console

from nbtl_search.run.launcher import launch, log_dir
from nbtl_search.run.processes import STORAGE_ENV, exit_with_parent
from nbtl_search.run.worker import StudyMismatch, WorkerOptions, run_worker
from nbtl_search.store.connection import StorageError, check_url, masked
from nbtl_search.study.checks import SpecError
from nbtl_search.study.roles import DEFAULT, ROLES, SEARCH, Role
from nbtl_search.study.spec import StudySpec, load_spec
from trainer import InputError

USER_ERRORS: tuple[type[Exception], ...] = (SpecError, StorageError, StudyMismatch, InputError)

console = Console(soft_wrap=True)  # piped output keeps whole lines (logs, grep)
optuna.logging.set_verbosity(optuna.logging.WARNING)  # our own progress display says what happens


def study_and_url(args: argparse.Namespace) -> tuple[StudySpec, str]:
    """The study file and its storage: --storage, else $NBTL_STORAGE, else the file's `storage`."""
    spec = load_spec(args.study)
    url = resolve_url(args.storage, spec.storage)
    return spec, url


def resolve_url(given: str | None, fallback: str) -> str:
    url = given if given is not None else os.environ.get(STORAGE_ENV) or fallback
    check_url(url)  # an empty or malformed URL fails here, not as a database in the current folder
    return url


def run(args: argparse.Namespace) -> int:
    return _launch(args, SEARCH)


def baseline(args: argparse.Namespace) -> int:
    return _launch(args, DEFAULT)


def _launch(args: argparse.Namespace, role: Role) -> int:
    from nbtl_search.run.preflight import preflight
    from nbtl_search.run.processes import slots_from_args

    spec, url = study_and_url(args)
    slots = slots_from_args(args)  # bad --gpus fails here, before anything is written
    preflight(spec)
    crashed = launch(
        spec,
        url,
        role,
        slots,
        budget=getattr(args, "trials", None),
        timeout=getattr(args, "timeout", None),
        image_cache=args.image_cache,
        console=console,
    )
    _write_note(url, spec)
    if crashed:
        print(
            f"error: worker(s) {', '.join(crashed)} stopped early (crashes, or trials that keep "
            f"failing); see {log_dir(spec, role)}/",
            file=sys.stderr,
        )
        return 1
    console.print(f"next: nbtl-search status {args.study}   |   optuna-dashboard {masked(url)}")
    return 0


def worker(args: argparse.Namespace) -> int:
    from nbtl_search.run.preflight import preflight
    from trainer.setup import resolve_device

    exit_with_parent()
    spec, url = study_and_url(args)
    if args.gpu is not None:
        if args.device not in (None, "cuda"):
            raise InputError(f"--gpu {args.gpu} needs --device cuda, got --device {args.device}")
        os.environ["CUDA_VISIBLE_DEVICES"] = str(args.gpu)  # before torch initialises CUDA
        import torch

        if torch.cuda.device_count() == 0:
            raise InputError(f"GPU {args.gpu} does not exist on this host (or CUDA is unavailable)")
    device = str(
        resolve_device(args.device or ("cuda" if args.gpu is not None else _default_device()))
    )
    preflight(spec)  # this host's data and model, before joining the study
    opts = WorkerOptions(
        device=device,
        trials=args.trials,
        budget=args.budget,
        timeout=args.timeout,
        threads=args.threads,
        index=args.index,
        image_cache=None if args.image_cache else False,
    )
    return run_worker(spec, url, ROLES[args.role], opts)


def final(args: argparse.Namespace) -> int:
    from nbtl_search.final.retrain import FinalOptions, run_final

    spec, url = study_and_url(args)
    knobs = spec.final
    opts = FinalOptions(
        seeds=_given(args.seeds, knobs.seeds),
        top_k=_given(args.top_k, knobs.top_k),
        rerank_top_k=_given(args.rerank_top_k, knobs.rerank_top_k),
        rerank_seeds=_given(args.rerank_seeds, knobs.rerank_seeds),
        device=args.device or _default_device(),
        jobs=args.jobs,
        image_cache=args.image_cache,
    )
    run_final(spec, url, opts, console)
    _write_note(url, spec)
    import analysis

    console.print(analysis.summary_markdown(url, spec.name))
    return 0


def probe(args: argparse.Namespace) -> int:
    from nbtl_search.probe import measure, rule
    from nbtl_search.probe.warm_study import warm_study_yaml
    from nbtl_search.run.preflight import preflight
    from nbtl_search.store.results import ResultStore
    from nbtl_search.ui.probe_table import probe_table

    spec, url = study_and_url(args)
    preflight(spec)  # the data, the checkpoint, and a model with a layer partition to probe
    try:  # read-only: a study that has not run yet has no baseline to take the lr from
        reader = ResultStore(url, create=False)
        lr, lr_from = rule.base_lr(spec, reader)
        reader.close()
    except StorageError:
        lr, lr_from = rule.base_lr(spec, None)
    scores = tuple(s.strip() for s in args.scores.split(",")) if args.scores else measure.SCORES
    source = None
    if args.source_dataset:
        source = {"dataset": args.source_dataset, "data_dir": args.source_data_dir, "extra": {}}
    elif args.source_data_dir:
        raise InputError("--source-data-dir needs --source-dataset")
    result = measure.run_probe(
        spec,
        base_lr=lr,
        scores=scores,
        source_dataset=source,
        max_images=args.max_images,
        device=args.device or _default_device(),
    )
    store = ResultStore(url)  # everything checked and computed: now write
    store.replace_probe(spec.name, measure.rows(result))
    store.close()
    console.print(probe_table(spec, result, lr_from))
    if args.suggest:
        sys.stdout.write(warm_study_yaml(spec, result.suggestion))
    return 0


def status(args: argparse.Namespace) -> int:
    from nbtl_search.ui.status import status_table

    spec, url = study_and_url(args)
    console.print(status_table(spec, url))
    return 0


def best(args: argparse.Namespace) -> int:
    from nbtl_search.ui.best import best_yaml

    spec, url = study_and_url(args)
    sys.stdout.write(best_yaml(spec, url))
    return 0


def export(args: argparse.Namespace) -> int:
    import analysis

    spec, url = study_and_url(args)
    out = Path(args.out)
    runs, epochs = analysis.runs(url, spec.name), analysis.epochs(url, spec.name)
    out.mkdir(parents=True, exist_ok=True)
    runs.to_csv(out / "runs.csv", index=False)
    epochs.to_csv(out / "epochs.csv", index=False)
    console.print(f"wrote {out / 'runs.csv'} and {out / 'epochs.csv'}")
    return 0


def report(args: argparse.Namespace) -> int:
    from analysis.report import write_report

    spec, url = study_and_url(args)
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

    from nbtl_search.store.connection import open_rdb

    spec, url = study_and_url(args)
    storage = open_rdb(url, heartbeat=False, create=False)
    console.print(
        f"optuna-dashboard for {masked(url)} on http://{args.host}:{args.port} (Ctrl-C stops)"
    )
    try:
        run_server(storage, host=args.host, port=args.port)
    except KeyboardInterrupt:
        pass
    return 0


def demo(args: argparse.Namespace) -> int:
    from nbtl_search.ui.demo import DEMO_STUDY, run_demo

    spec = load_spec(args.study or DEMO_STUDY)
    url = resolve_url(args.storage, spec.storage)
    return run_demo(spec, url, console, seed=args.seed)


def _given(value: int | None, default: int) -> int:
    return default if value is None else value


def _default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _write_note(url: str, spec: StudySpec) -> None:
    """Put the optimal-vs-default summary on the study's optuna-dashboard page."""
    from nbtl_search.ui.dashboard_note import write_note

    write_note(url, spec)
