"""Where a process runs: its host and, inside a Slurm job, the job's ids (from the environment
Slurm gives every process of a job), recorded with each run and shown beside each trial."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass


@dataclass(frozen=True)
class SlurmJob:
    """The Slurm job around this process. `job_id` is the job's own id (an array task has one of
    its own); `array_job_id` / `array_task_id` are set for an array task only."""

    job_id: int
    array_job_id: int | None = None
    array_task_id: int | None = None

    @property
    def label(self) -> str:
        """How squeue names it: `1234_5` for task 5 of array 1234, else `1234`."""
        if self.array_job_id is not None and self.array_task_id is not None:
            return f"{self.array_job_id}_{self.array_task_id}"
        return str(self.job_id)


def slurm_job(env: dict[str, str] | None = None) -> SlurmJob | None:
    """This process's Slurm job, or None outside one."""
    env = dict(os.environ) if env is None else env
    job = _int(env.get("SLURM_JOB_ID"))
    if job is None:
        return None
    return SlurmJob(job, _int(env.get("SLURM_ARRAY_JOB_ID")), _int(env.get("SLURM_ARRAY_TASK_ID")))


def host() -> str:
    return socket.gethostname()


def _int(text: str | None) -> int | None:
    try:
        return int(text) if text else None
    except ValueError:
        return None
