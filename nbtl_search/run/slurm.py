"""What nbtl-search asks a Slurm cluster, through its own commands (`squeue`): how long the job
around a worker has left, and which jobs of a study are still queued or running. No accounting
database is assumed (`sacct` often is not there); a host without Slurm answers None or nothing.

Time limits are written as Slurm writes them: `minutes`, `minutes:seconds`,
`hours:minutes:seconds`, `days-hours`, `days-hours:minutes`, `days-hours:minutes:seconds`
(sbatch's `--time`; squeue's `%L` prints the last form with its leading zero parts left out).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from dataclasses import dataclass

SQUEUE_TIMEOUT_S = 30  # a busy controller answers slowly; a worker must not hang on it
UNLIMITED = ("UNLIMITED", "INFINITE", "NOT_SET", "INVALID")


def duration_seconds(text: str) -> float | None:
    """Seconds in a Slurm time (see the module docstring); None for no limit. ValueError for
    text that is not one."""
    text = text.strip()
    if text.upper() in UNLIMITED:
        return None
    days, dash, rest = text.rpartition("-")
    try:
        numbers = [int(p) for p in rest.split(":")]
        d = int(days) if dash else 0
    except ValueError:
        raise ValueError(f"not a Slurm time: {text!r}") from None
    if any(n < 0 for n in numbers) or d < 0 or not 1 <= len(numbers) <= 3:
        raise ValueError(f"not a Slurm time: {text!r}")
    if dash:  # days-hours[:minutes[:seconds]]
        h, m, s = (numbers + [0, 0])[:3]
    elif len(numbers) == 1:  # minutes
        h, m, s = 0, numbers[0], 0
    elif len(numbers) == 2:  # minutes:seconds
        h, m, s = 0, *numbers
    else:
        h, m, s = numbers
    return float(((d * 24 + h) * 60 + m) * 60 + s)


def time_left(job_id: int) -> float | None:
    """Seconds until Slurm ends job `job_id` (its time limit minus the time it has run; it follows
    `scontrol update TimeLimit=`), or None: no limit, or no answer."""
    out = _squeue("-j", str(job_id), "-o", "%L")
    if not out:
        return None
    try:
        return duration_seconds(out.splitlines()[0])
    except ValueError:
        return None


class JobClock:
    """`clock()`: seconds left to job `job_id`, asking squeue at most every `every` seconds (a
    worker asks before each trial; the limit changes only when someone updates it)."""

    def __init__(self, job_id: int, every: float = 60.0) -> None:
        self.job_id, self.every = job_id, every
        self._asked: float | None = None
        self._left: float | None = None

    def __call__(self) -> float | None:
        now = time.monotonic()
        if self._asked is None or now - self._asked >= self.every:
            self._asked, self._left = now, time_left(self.job_id)
        return None if self._left is None else self._left - (now - self._asked)


@dataclass(frozen=True)
class QueuedJob:
    job: str  # squeue's id: `1234`, `1234_5` (an array task), `1234_[6-9]` (tasks still pending)
    name: str
    state: str  # PENDING, RUNNING, COMPLETING, ...
    elapsed: str
    left: str
    reason: str  # the nodes of a running job, why a pending one waits


def queued_jobs(names: list[str]) -> list[QueuedJob]:
    """This user's jobs named `names` that Slurm still holds (pending, running, completing)."""
    # `status` must not hang on a controller that is down (squeue retries for ~10 s)
    out = _squeue("--me", "--name", ",".join(names), "-o", "%i|%j|%T|%M|%L|%R", timeout=5)
    jobs = []
    for line in (out or "").splitlines():
        parts = line.split("|", 5)
        if len(parts) == 6:
            jobs.append(QueuedJob(*parts))
    return jobs


def available() -> bool:
    """Slurm's client commands are on this host's PATH."""
    return shutil.which("squeue") is not None and shutil.which("sbatch") is not None


def _squeue(*args: str, timeout: float = SQUEUE_TIMEOUT_S) -> str | None:
    if shutil.which("squeue") is None:
        return None
    try:
        done = subprocess.run(
            ["squeue", "-h", *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            env={**os.environ, "SLURM_TIME_FORMAT": "standard"},
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 else None
