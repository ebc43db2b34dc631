"""`submit`: the search (or the baseline) as a Slurm job array, one task per GPU, or as a
Kubernetes Indexed Job (`--k8s`). The study is created here, once, before any task starts."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from pathlib import Path

from .base import COUNT, Verb, cache_arg, console, number, study_and_url

SLURM_ONLY = ("partition", "account", "qos", "constraint", "time", "sbatch", "setup")


class Submit(Verb):
    name = "submit"
    help = "run the search on a Slurm cluster as a job array, one task per GPU (or --k8s)"

    def add_arguments(self, p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--baseline", action="store_true", help="submit the default-settings grid instead"
        )
        p.add_argument(
            "--workers", type=COUNT, default=1, help="array tasks, one GPU each (default 1)"
        )
        p.add_argument(
            "--per-gpu", type=COUNT, default=1, help="workers sharing each task's GPU (default 1)"
        )
        p.add_argument(
            "--trials", type=COUNT, help="study budget: finished trials over all workers"
        )
        p.add_argument(
            "--device",
            choices=["cuda", "cpu"],
            default="cuda",
            help="where each worker trains (default cuda: the task's GPU)",
        )
        p.add_argument(
            "--gres",
            default="gpu:1",
            help="each task's GPU as sbatch's --gres (default gpu:1; e.g. gpu:a100:1; "
            "'none' for a CPU partition)",
        )
        p.add_argument("--time", help="time limit of each task, Slurm's format (4:00:00, 1-0)")
        p.add_argument("--partition")
        p.add_argument("--account")
        p.add_argument("--qos")
        p.add_argument("--constraint")
        p.add_argument("--cpus-per-gpu", type=COUNT, help="CPUs of each task")
        p.add_argument("--mem-per-gpu", help="memory of each task, Slurm's format (32G)")
        p.add_argument(
            "--sbatch",
            action="append",
            default=[],
            metavar="OPTION",
            help="one more #SBATCH line, e.g. --sbatch=--exclusive (repeatable)",
        )
        p.add_argument(
            "--setup",
            action="append",
            default=[],
            metavar="LINE",
            help="a shell line each task runs first, e.g. 'module load cuda/12.4' (repeatable)",
        )
        p.add_argument(
            "--signal-lead",
            type=number(int, 0, "seconds"),
            help="seconds before the time limit at which running trials are handed back and no "
            "trial starts that would end later (default 120)",
        )
        p.add_argument(
            "--python",
            default=sys.executable,
            help="the Python that runs nbtl-search in each task (default: this one)",
        )
        p.add_argument(
            "--dry-run",
            action="store_true",
            help="print the batch script (or manifest) only: nothing is created or submitted",
        )
        p.add_argument(
            "--k8s", action="store_true", help="print a Kubernetes Indexed Job manifest instead"
        )
        p.add_argument("--image", help="--k8s: a container image with nbtl-search installed")
        p.add_argument(
            "--secret",
            default="nbtl-storage",
            help="--k8s: the Secret whose key `url` holds the storage URL (default nbtl-storage)",
        )
        cache_arg(p)

    def take_action(self, args: argparse.Namespace) -> int:
        from nbtl_search.run.preflight import preflight
        from nbtl_search.study.roles import DEFAULT, SEARCH
        from trainer import InputError

        spec, url = study_and_url(args)
        role = DEFAULT if args.baseline else SEARCH
        if args.trials and args.baseline:
            raise InputError("--trials is for the search; the baseline runs every grid point")
        if url.startswith("sqlite") and args.workers > 1:
            raise InputError(
                f"SQLite cannot be shared by {args.workers} tasks on different hosts (its file "
                "locks do not hold over a network filesystem): use PostgreSQL "
                "(--storage postgresql+psycopg://USER@HOST/DB, password in ~/.pgpass) or --workers 1"
            )
        if not args.dry_run:  # a dry run only shows the script; the data may live elsewhere
            preflight(spec)  # this host's view of the data and model, before anything is written
        if args.k8s:
            return _kubernetes(args, spec, url, role)
        return _slurm(args, spec, url, role)


def _worker_words(args: argparse.Namespace, role_name: str, threads: int | None) -> list[str]:
    words = ["--role", role_name, "--device", args.device]
    if args.trials:
        words += ["--budget", str(args.trials)]
    if threads:
        words += ["--threads", str(threads)]
    if not args.image_cache:
        words += ["--no-image-cache"]
    return words


def _threads(args: argparse.Namespace) -> int | None:
    """Torch threads per worker: its share of the task's CPUs (on the CPU: 1 when not given)."""
    if args.cpus_per_gpu:
        return max(1, args.cpus_per_gpu // args.per_gpu)
    return 1 if args.device == "cpu" else None


def _slurm(args: argparse.Namespace, spec, url: str, role) -> int:
    """The search or the baseline: `nbtl-search worker --role ROLE` in every slot of the array,
    the study created (`start_study`) once Slurm has accepted the options."""
    from nbtl_search.run import sbatch
    from nbtl_search.run.launcher import log_dir, start_study

    lead = _signal_lead(args)
    command = [
        args.python,
        "-m",
        "nbtl_search",
        "worker",
        str(Path(spec.path).resolve()),
        *_worker_words(args, role.name, _threads(args)),
        "--index",
        sbatch.INDEX,
        "--end-margin",
        str(lead),
    ]
    return _submit_array(
        args,
        spec,
        url,
        name=sbatch.job_name(spec.name, role.name),
        title=role.title,
        logs=log_dir(spec, role),
        command=command,
        lead=lead,
        start=lambda: start_study(spec, url, role, args.trials),
    )


def _signal_lead(args: argparse.Namespace) -> int:
    """--signal-lead, checked against --time (bad values: InputError)."""
    from nbtl_search.run import sbatch
    from nbtl_search.run.slurm import duration_seconds
    from trainer import InputError

    lead = sbatch.DEFAULT_SIGNAL_LEAD_S if args.signal_lead is None else args.signal_lead
    if args.time is not None:
        try:
            limit = duration_seconds(args.time)
        except ValueError as e:
            raise InputError(f"--time: {e} (e.g. 4:00:00, 90, 1-12:00)") from None
        if limit is not None and lead >= limit:
            raise InputError(
                f"--signal-lead {lead} s leaves no time in --time {args.time} ({limit:.0f} s): "
                "give a longer --time or a shorter --signal-lead"
            )
    return lead


def _submit_array(
    args: argparse.Namespace,
    spec,
    url: str,
    *,
    name: str,
    title: str,
    logs: Path,
    command: list[str],
    lead: int,
    start: Callable[[], object],
) -> int:
    """Any queue of work as a Slurm array: `command` in every slot (`--workers` tasks x
    `--per-gpu`; its own end margin is `lead`, the seconds before the time limit at which Slurm
    signals the tasks), `start` (what must exist before the first task runs) once Slurm has
    accepted the options; `--dry-run` prints the script only."""
    import tempfile
    import time

    from nbtl_search.run import sbatch
    from nbtl_search.run.processes import STORAGE_ENV
    from nbtl_search.store.connection import masked

    job = sbatch.ArrayJob(
        name=name,
        tasks=args.workers,
        per_task=args.per_gpu,
        logs=logs,
        gres=None if args.gres.lower() == "none" else args.gres,
        time=args.time,
        partition=args.partition,
        account=args.account,
        qos=args.qos,
        constraint=args.constraint,
        cpus=args.cpus_per_gpu,
        mem=args.mem_per_gpu,
        signal_lead=lead,
        extra=tuple(args.sbatch),
        setup=tuple(args.setup),
        about=(
            f"nbtl-search submit: the {title} of study {spec.name!r}",
            f"({Path(spec.path).resolve()}),",
            f"{args.workers} array task(s) x {args.per_gpu} worker(s); written {sbatch.written_on()}.",
            "The storage URL reaches the workers through the job's environment (NBTL_STORAGE,",
            "exported by `nbtl-search submit`), never through this file or a command line.",
        ),
    )
    script = sbatch.batch_script(job, command)
    if args.dry_run:
        print(script, end="")
        return 0
    env = {**os.environ, STORAGE_ENV: url}
    with tempfile.TemporaryDirectory() as tmp:
        trial_script = Path(tmp) / "check.sbatch"
        trial_script.write_text(script)
        sbatch.check(trial_script, env)  # Slurm's own verdict on the options, nothing queued yet
    start()
    logs.mkdir(parents=True, exist_ok=True)
    kept = logs / f"submit-{time.strftime('%Y%m%d-%H%M%S')}.sbatch"  # what `scontrol` names
    kept.write_text(script)
    job_id = sbatch.submit(kept, env)
    out = console()
    out.print(
        f"submitted job {job_id}: {args.workers} array task(s) x {args.per_gpu} worker(s), the "
        f"{title} of {spec.name} on {masked(url)}"
    )
    out.print(f"script: {kept}")
    out.print(
        f"follow: squeue -j {job_id}   |   tail -f {logs}/slurm-{job_id}_*.out   |   "
        f"nbtl-search status {args.study}"
    )
    out.print(
        f"stop:   scancel {job_id}   (running trials are handed back; `nbtl-search submit` "
        "again continues the study)"
    )
    return 0


def _kubernetes(args, spec, url: str, role) -> int:
    import yaml

    from nbtl_search.run import k8s
    from nbtl_search.run.launcher import start_study
    from trainer import InputError

    given = [f"--{o.replace('_', '-')}" for o in SLURM_ONLY if getattr(args, o)]
    if given:
        raise InputError(f"{', '.join(given)}: Slurm options, not used with --k8s")
    if not args.image:
        raise InputError("--k8s needs --image: a container image with nbtl-search installed")
    if args.device != "cuda":
        raise InputError("--k8s runs each pod on its GPU: leave out --device")
    try:
        mem = k8s.k8s_memory(args.mem_per_gpu) if args.mem_per_gpu else None
    except ValueError as e:
        raise InputError(f"--mem-per-gpu: {e}") from None
    study = yaml.safe_load(Path(spec.path).read_text())
    study.pop("storage", None)  # the URL comes from the Secret, never a ConfigMap
    job = k8s.IndexedJob(
        name=k8s.dns_name(f"nbtl-{spec.name}-{role.name}"),
        pods=args.workers,
        image=args.image,
        study_text=yaml.safe_dump(study, sort_keys=False),
        worker=_worker_words(args, role.name, _threads(args)),
        per_pod=args.per_gpu,
        secret=args.secret,
        cpus=args.cpus_per_gpu,
        mem=mem,
        about=(
            f"nbtl-search submit --k8s: the {role.title} of study {spec.name!r}, {args.workers} "
            f"pod(s) x {args.per_gpu} worker(s), one GPU each.",
            f"The storage URL comes from Secret {args.secret!r} (key 'url'): kubectl create "
            f"secret generic {args.secret} --from-literal=url=postgresql+psycopg://USER:PW@HOST/DB",
            "Apply: nbtl-search submit --k8s ... | kubectl apply -f -",
        ),
    )
    if not args.dry_run:
        start_study(spec, url, role, args.trials)
    print(k8s.manifest(job), end="")
    return 0
