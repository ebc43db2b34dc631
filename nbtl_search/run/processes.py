"""The processes a study runs in: one slot per worker, the threads each CPU process gets, and
a child that dies with its parent.

The storage URL reaches a worker through its environment (`STORAGE_ENV`), never its command line,
which every local user can read; `PARENT_ENV` names the launcher a worker must not outlive.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from dataclasses import dataclass

from trainer import InputError

from .signals import Stopped

STORAGE_ENV = "NBTL_STORAGE"  # how a worker receives the storage URL (and its password)
PARENT_ENV = "NBTL_PARENT_PID"  # a worker started by `run` exits when this process is gone


@dataclass(frozen=True)
class Slot:
    name: str  # shown in the display and the log file name
    device: str  # device inside the worker: "cuda" (one visible GPU) or "cpu"
    env: dict[str, str]
    threads: int | None = None


def cpu_threads(jobs: int) -> int:
    """Torch threads for each of `jobs` CPU processes sharing this machine."""
    return max(1, (os.cpu_count() or 1) // jobs)


def gpu_slots(gpus: list[int], per_gpu: int) -> list[Slot]:
    return [
        Slot(f"gpu{g}.{k}", "cuda", {"CUDA_VISIBLE_DEVICES": str(g)})
        for g in gpus
        for k in range(per_gpu)
    ]


def cpu_slots(workers: int) -> list[Slot]:
    threads = cpu_threads(workers)
    env = {"CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": str(threads)}
    return [Slot(f"cpu{k}", "cpu", env, threads) for k in range(workers)]


def slots_from_args(args: argparse.Namespace) -> list[Slot]:
    """The slots `--device`, `--gpus`, `--per-gpu` and `--workers` ask for (bad values: InputError)."""
    device = args.device
    if device is None:
        device = "cuda" if args.gpus or _gpu_count() else "cpu"
    if device == "cpu":
        if args.gpus:
            raise InputError("--gpus needs --device cuda (or no --device)")
        return cpu_slots(args.workers or 1)
    available = _gpu_count()
    if available == 0:
        raise InputError("--device cuda, but no GPU is visible here; use --device cpu --workers N")
    try:
        gpus = [int(g) for g in args.gpus.split(",")] if args.gpus else list(range(available))
    except ValueError:
        raise InputError(f"--gpus takes comma-separated GPU indices, got {args.gpus!r}") from None
    missing = [g for g in gpus if not 0 <= g < available]
    if missing:
        raise InputError(
            f"--gpus names GPU {missing[0]}, but only {available} GPU(s) exist (0..{available - 1})"
        )
    return gpu_slots(gpus, args.per_gpu)


def exit_with_parent(parent: int | None = None) -> None:
    """In a process that `run` (or `final`) started: get SIGTERM when that parent dies, however it
    dies (Linux's PR_SET_PDEATHSIG); elsewhere a no-op, and the parent stops its children itself.
    `parent`: its pid (default: $NBTL_PARENT_PID, set by `run` for its workers)."""
    parent = parent or int(os.environ.get(PARENT_ENV) or 0)
    if not parent or not sys.platform.startswith("linux"):
        return
    import ctypes

    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, int(signal.SIGTERM), 0, 0, 0)
    if os.getppid() != parent:  # the parent died before the line above
        raise Stopped("parent gone")


def _gpu_count() -> int:
    import torch

    return torch.cuda.device_count()
