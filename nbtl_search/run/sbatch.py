"""A Slurm job array for a study: the batch script, written to be read, and its submission.

One array task holds one GPU (`--gres=gpu:1`, Slurm sets CUDA_VISIBLE_DEVICES) and runs
`per_task` copies of a command side by side, each told its number (`$index`) among all the
array's workers. The script is the same whatever the command is (`nbtl-search worker` for the
search and the baseline), so other queues of work can be submitted the same way.

Stopping: near the time limit Slurm sends the batch shell USR1 (`--signal=B:USR1@LEAD`), and on
`scancel` TERM; the script passes TERM to its workers and waits for them, and each fails its
running trial, marks it lost (the next worker re-queues it) and exits. The workers also die with the
script (`NBTL_PARENT_PID`) if Slurm kills it outright.

Secrets: the storage URL is not in the script. `submit` exports it to sbatch's environment
(`NBTL_STORAGE`, and the job gets that environment: `--export=ALL`), so it reaches the workers the
way `run` hands it to its local workers: never through a command line or a file.
"""

from __future__ import annotations

import shlex
import subprocess
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from trainer import InputError

INDEX = "$index"  # a command word that stands for the worker's number in the array (0, 1, ...)
DEFAULT_SIGNAL_LEAD_S = 120  # Slurm may signal up to 60 s early; handing a trial back takes seconds


@dataclass(frozen=True)
class ArrayJob:
    """What the array asks Slurm for. Memory and CPUs are per task, i.e. per GPU."""

    name: str  # the job name (squeue, `status`)
    tasks: int  # array tasks = GPUs
    per_task: int = 1  # workers in each task, sharing its GPU
    logs: Path = Path("nbtl-logs")  # Slurm's output files: slurm-ARRAYID_TASK.out
    workdir: Path = Path(".")
    gres: str | None = "gpu:1"  # None: no GPU (a CPU partition)
    time: str | None = None  # Slurm's format; None: the partition's default
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    cpus: int | None = None  # per task
    mem: str | None = None  # per task, Slurm's format (32G)
    signal_lead: int = DEFAULT_SIGNAL_LEAD_S
    extra: tuple[str, ...] = ()  # more sbatch options, one per #SBATCH line
    setup: tuple[str, ...] = ()  # shell lines run first in each task (module load, source venv)
    about: tuple[str, ...] = field(default=())  # comment lines at the top


def job_name(study: str, role: str) -> str:
    """The name Slurm shows for a study's array (`status` looks its jobs up by it)."""
    return f"nbtl-{study}-{role}"


def sbatch_options(job: ArrayJob) -> list[str]:
    options = [f"--job-name={job.name}", f"--array=0-{job.tasks - 1}"]
    named = {
        "gres": job.gres,
        "cpus-per-task": job.cpus,
        "mem": job.mem,
        "time": job.time,
        "partition": job.partition,
        "account": job.account,
        "qos": job.qos,
        "constraint": job.constraint,
    }
    options += [f"--{key}={value}" for key, value in named.items() if value is not None]
    options += [
        f"--signal=B:USR1@{job.signal_lead}",
        f"--output={job.logs.resolve() / 'slurm-%A_%a.out'}",
        "--open-mode=append",  # a requeued task adds to its log instead of replacing it
        f"--chdir={job.workdir.resolve()}",
        "--export=ALL",
    ]
    return options + [_option(line) for line in job.extra]


def batch_script(job: ArrayJob, command: list[str]) -> str:
    """The batch script: `command` (argv; a word `INDEX` is the worker's number) runs `per_task`
    times in each array task."""
    k = job.per_task
    words = " ".join('"$index"' if w == INDEX else shlex.quote(w) for w in command)
    header = [f"# {line}" for line in job.about]
    lines = [
        "#!/bin/bash",
        *header,
        *(f"#SBATCH {option}" for option in sbatch_options(job)),
        "",
        "set -u",
        *job.setup,
        'echo "$(date "+%F %T") task ${SLURM_ARRAY_TASK_ID} of job ${SLURM_ARRAY_JOB_ID} on '
        f'$(hostname), GPU ${{CUDA_VISIBLE_DEVICES:-none}}: {k} worker(s)"',
        "",
        f"# {k} worker(s) in this task, numbered across the array; they exit with this script",
        "workers=()",
        f"for k in $(seq 0 {k - 1}); do",
        f"    index=$((SLURM_ARRAY_TASK_ID * {k} + k))",
        f"    NBTL_PARENT_PID=$$ {words} &",
        "    workers+=($!)",
        "done",
        "",
        "# Near the time limit (USR1) or on scancel (TERM): every worker hands its running trial",
        "# back (failed, re-queued once) and exits; this script waits for them.",
        'stop() { kill -TERM "${workers[@]}" 2>/dev/null || true; }',
        "trap stop USR1 TERM INT HUP",
        "code=0",
        'for pid in "${workers[@]}"; do',
        "    while :; do  # `wait` returns early when a trapped signal arrives",
        '        wait "$pid"; rc=$?',
        '        kill -0 "$pid" 2>/dev/null || break',
        "    done",
        '    [ "$rc" -eq 0 ] || code=$rc',
        "done",
        'exit "$code"',
    ]
    return "\n".join(lines) + "\n"


def written_on() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def check(script: Path, env: dict[str, str]) -> None:
    """`sbatch --test-only`: Slurm checks the partition, account, GPUs, time and the rest without
    queueing anything. A refusal is an InputError with Slurm's own words."""
    _sbatch(["--test-only", str(script)], env)


def submit(script: Path, env: dict[str, str]) -> str:
    """Queue the script; returns the job id."""
    out = _sbatch(["--parsable", str(script)], env)
    return out.strip().split(";")[0]  # `ID;CLUSTER` on a multi-cluster site


def _sbatch(args: list[str], env: dict[str, str]) -> str:
    try:
        done = subprocess.run(["sbatch", *args], capture_output=True, text=True, env=env)
    except FileNotFoundError:
        raise InputError(
            "sbatch not found: submit from a Slurm login node (--dry-run prints the script)"
        ) from None
    if done.returncode != 0:
        said = " ".join((done.stderr or done.stdout).split()) or f"exit code {done.returncode}"
        raise InputError(f"sbatch refused the job: {said}")
    return done.stdout


def _option(line: str) -> str:
    """An extra sbatch option as given (`--exclusive`, `#SBATCH --exclusive`)."""
    text = line.strip().removeprefix("#SBATCH").strip()
    if not text.startswith("-"):
        raise InputError(f"--sbatch takes an sbatch option such as --exclusive, got {line!r}")
    return text
