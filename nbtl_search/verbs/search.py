"""`run`, `baseline` and `worker`: the search and the default-settings baseline, on this host's
slots (a launcher supervising worker processes) or as one worker joining from another host."""

from __future__ import annotations

import argparse
import os
import sys

from .base import (
    COUNT,
    INDEX,
    SECONDS,
    Verb,
    cache_arg,
    console,
    number,
    study_and_url,
    write_note,
)


def slot_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--gpus", help="comma-separated GPU indices (default: every visible GPU)")
    p.add_argument("--per-gpu", type=COUNT, default=1, help="trials sharing each GPU (default 1)")
    p.add_argument("--workers", type=COUNT, help="CPU workers (with --device cpu)")
    p.add_argument("--device", choices=["cuda", "cpu"], help="default: cuda if available")
    cache_arg(p)


def launch_role(args: argparse.Namespace, role_name: str) -> int:
    """Create the study once, start one worker per slot, supervise them to the end."""
    from nbtl_search.run.launcher import launch, log_dir
    from nbtl_search.run.preflight import preflight
    from nbtl_search.run.processes import slots_from_args
    from nbtl_search.store.connection import masked
    from nbtl_search.study.roles import ROLES

    role = ROLES[role_name]
    out = console()
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
        console=out,
    )
    write_note(url, spec)
    if crashed:
        print(
            f"error: worker(s) {', '.join(crashed)} stopped early (crashes, or trials that keep "
            f"failing); see {log_dir(spec, role)}/",
            file=sys.stderr,
        )
        return 1
    out.print(f"next: nbtl-search status {args.study}   |   optuna-dashboard {masked(url)}")
    return 0


class Run(Verb):
    name = "run"
    help = "run the search: one worker process per GPU slot (or CPU worker)"

    def add_arguments(self, p: argparse.ArgumentParser) -> None:
        slot_args(p)
        p.add_argument(
            "--trials", type=COUNT, help="study budget: finished trials over all workers"
        )
        p.add_argument("--timeout", type=SECONDS, help="seconds per worker")

    def take_action(self, args: argparse.Namespace) -> int:
        return launch_role(args, "search")


class Baseline(Verb):
    name = "baseline"
    help = "run the default-settings grid as its own study, without pruning"

    def add_arguments(self, p: argparse.ArgumentParser) -> None:
        slot_args(p)

    def take_action(self, args: argparse.Namespace) -> int:
        return launch_role(args, "default")


class Worker(Verb):
    name = "worker"
    help = "join a study as ONE worker (how a study spans hosts)"

    def add_arguments(self, p: argparse.ArgumentParser) -> None:
        p.add_argument("--device", help="torch device of this worker (default: cuda if available)")
        p.add_argument(
            "--gpu", type=INDEX, help="GPU index: sets CUDA_VISIBLE_DEVICES for this worker"
        )
        p.add_argument("--trials", type=COUNT, help="stop this worker after N trials")
        p.add_argument(
            "--budget", type=COUNT, help="override the study's budget of finished trials"
        )
        p.add_argument("--timeout", type=SECONDS)
        p.add_argument(
            "--end-margin",
            type=number(float, 0, "seconds"),
            default=0.0,
            help="inside a Slurm job: start a trial only if it can end this long before the "
            "job's time limit (default 0; `submit` passes its --signal-lead)",
        )
        p.add_argument("--threads", type=COUNT, help="torch CPU threads")
        p.add_argument("--role", choices=["search", "default"], default="search")
        p.add_argument(
            "--index", type=INDEX, help="worker number: offsets the sampler seed (default: pid)"
        )
        cache_arg(p)

    def take_action(self, args: argparse.Namespace) -> int:
        from nbtl_search.run.preflight import preflight
        from nbtl_search.run.processes import exit_with_parent
        from nbtl_search.run.slurm import JobClock
        from nbtl_search.run.time_limit import TimeLimit
        from nbtl_search.run.worker import WorkerOptions, run_worker
        from nbtl_search.store.where import slurm_job
        from nbtl_search.study.roles import ROLES
        from trainer import InputError
        from trainer.setup import resolve_device

        from .base import default_device

        exit_with_parent()
        spec, url = study_and_url(args)
        if args.gpu is not None:
            if args.device not in (None, "cuda"):
                raise InputError(
                    f"--gpu {args.gpu} needs --device cuda, got --device {args.device}"
                )
            os.environ["CUDA_VISIBLE_DEVICES"] = str(args.gpu)  # before torch initialises CUDA
            import torch

            if torch.cuda.device_count() == 0:
                raise InputError(
                    f"GPU {args.gpu} does not exist on this host (or CUDA is unavailable)"
                )
        device = str(
            resolve_device(args.device or ("cuda" if args.gpu is not None else default_device()))
        )
        preflight(spec)  # this host's data and model, before joining the study
        job = slurm_job()
        opts = WorkerOptions(
            device=device,
            trials=args.trials,
            budget=args.budget,
            timeout=args.timeout,
            threads=args.threads,
            index=args.index,
            image_cache=None if args.image_cache else False,
            time_limit=None if job is None else TimeLimit(JobClock(job.job_id), args.end_margin),
        )
        return run_worker(spec, url, ROLES[args.role], opts)
