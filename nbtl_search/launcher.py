"""`nbtl-search run` / `baseline`: create the study once, start one worker process per slot, supervise.

Workers are separate processes running `nbtl-search worker` (exactly what a second host runs), each
with its own CUDA_VISIBLE_DEVICES. The launcher restarts a worker that dies while the budget is not
reached and fails its stale trial (Optuna's heartbeat), so a crash never shrinks the study.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import optuna
from rich.console import Console
from rich.live import Live
from rich.table import Table

from .objective import RUN_ID_ATTR, WORKER_ATTR
from .results import ResultStore
from .spec import StudySpec
from .storage import ensure_schema, fail_stale_trials, fail_trials_of, open_storage
from .worker import GAVE_UP, MAX_FAILURES_IN_A_ROW, Role, finished_trials, prepare_study

MAX_RESTARTS = 3  # per slot: a worker that keeps crashing is a bug to look at, not to loop on


@dataclass(frozen=True)
class Slot:
    name: str  # shown in the display and the log file name
    device: str  # device inside the worker: "cuda" (one visible GPU) or "cpu"
    env: dict[str, str]
    threads: int | None = None


def gpu_slots(gpus: list[int], per_gpu: int) -> list[Slot]:
    return [Slot(f"gpu{g}.{k}", "cuda", {"CUDA_VISIBLE_DEVICES": str(g)})
            for g in gpus for k in range(per_gpu)]


def cpu_slots(workers: int) -> list[Slot]:
    threads = max(1, (os.cpu_count() or 1) // workers)
    env = {"CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": str(threads)}
    return [Slot(f"cpu{k}", "cpu", env, threads) for k in range(workers)]


def launch(spec: StudySpec, url: str, role: Role, slots: list[Slot], *, budget: int | None = None,
           timeout: float | None = None, log_dir: Path, console: Console | None = None) -> list[str]:
    """Run the study to its budget with `slots` worker processes; returns the names of workers that
    crashed for good (exited non-zero and were not restarted)."""
    console = console or Console(soft_wrap=True)
    ensure_schema(url)  # Optuna's and nbtl's tables, once, before any worker: no schema race
    study = prepare_study(spec, open_storage(url), role)
    target = role.budget(spec, budget)
    log_dir.mkdir(parents=True, exist_ok=True)
    index = {slot.name: i for i, slot in enumerate(slots)}
    procs = {slot.name: _start(spec, url, role, slot, index[slot.name], budget, timeout, log_dir)
             for slot in slots}
    restarts: Counter[str] = Counter()
    crashed: list[str] = []
    by_name = {slot.name: slot for slot in slots}
    with Live(_table(study, procs, target), console=console, refresh_per_second=2,
              transient=not console.is_terminal) as live:
        while procs:
            for name, proc in list(procs.items()):
                code = proc.poll()
                if code is None:
                    continue
                del procs[name]
                if code != 0:
                    _recover_trials(study, url, proc.pid)
                if code == GAVE_UP:
                    console.print(f"[red]worker {name} stopped: {MAX_FAILURES_IN_A_ROW} trials in a "
                                  f"row failed; reasons in `nbtl-search status`, log: {log_dir / name}.log")
                    crashed.append(name)
                elif code != 0 and finished_trials(study) < target and restarts[name] < MAX_RESTARTS:
                    restarts[name] += 1
                    console.print(f"[yellow]worker {name} exited with {code}; restarting "
                                  f"({restarts[name]}/{MAX_RESTARTS}), log: {log_dir / name}.log")
                    procs[name] = _start(spec, url, role, by_name[name], index[name], budget, timeout,
                                         log_dir)
                elif code != 0:
                    crashed.append(name)
            live.update(_table(study, procs, target))
            if procs:
                time.sleep(0.5)  # display refresh period, not synchronisation
    fail_stale_trials(study)
    counts = Counter(t.state for t in study.get_trials(deepcopy=False))
    console.print(_summary(study, counts, target))
    return crashed


def _recover_trials(study: optuna.Study, url: str, pid: int) -> None:
    """The trials a dead local worker was running: failed and re-queued now (not after the heartbeat
    grace period), and their nbtl runs marked failed too."""
    label = f"{socket.gethostname()}:{pid}"
    running = [t for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
               if t.user_attrs.get(WORKER_ATTR) == label]
    fail_trials_of(study, running)
    store = ResultStore(url)
    for t in running:
        if RUN_ID_ATTR in t.user_attrs:
            store.mark_lost(t.user_attrs[RUN_ID_ATTR], f"worker lost: {label} died; retried")
    store.close()


def _start(spec: StudySpec, url: str, role: Role, slot: Slot, index: int, budget: int | None,
           timeout: float | None, log_dir: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "nbtl_search", "worker", str(spec.path), "--storage", url,
           "--device", slot.device, "--role", role.name, "--index", str(index)]
    if budget:
        cmd += ["--budget", str(budget)]
    if timeout:
        cmd += ["--timeout", str(timeout)]
    if slot.threads:
        cmd += ["--threads", str(slot.threads)]
    with open(log_dir / f"{slot.name}.log", "ab") as log:  # the child keeps its own copy
        return subprocess.Popen(cmd, env={**os.environ, **slot.env}, stdout=log,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)


def _table(study: optuna.Study, procs: dict[str, subprocess.Popen], target: int) -> Table:
    trials = study.get_trials(deepcopy=False)
    counts = Counter(t.state for t in trials)
    S = optuna.trial.TrialState
    table = Table(title=f"{study.study_name}: {counts[S.COMPLETE] + counts[S.PRUNED]}/{target} done, "
                        f"{counts[S.RUNNING]} running, {counts[S.PRUNED]} pruned, "
                        f"{counts[S.FAIL]} failed, best {_best(study)}")
    table.add_column("worker")
    table.add_column("trial")
    table.add_column("epoch")
    table.add_column("last value")
    running = {t.user_attrs.get(WORKER_ATTR, ""): t for t in trials if t.state == S.RUNNING}
    for name, proc in procs.items():
        t = next((t for w, t in running.items() if w.endswith(f":{proc.pid}")), None)
        last = max(t.intermediate_values) if t and t.intermediate_values else None
        table.add_row(name, str(t.number) if t else "-", str(last or "-"),
                      f"{t.intermediate_values[last]:.2f}" if last else "-")
    return table


def _best(study: optuna.Study) -> str:
    try:
        return f"{study.best_value:.2f} (trial {study.best_trial.number})"
    except ValueError:  # no complete trial yet
        return "-"


def _summary(study: optuna.Study, counts: Counter, target: int) -> str:
    S = optuna.trial.TrialState
    return (f"{study.study_name}: {counts[S.COMPLETE]} complete, {counts[S.PRUNED]} pruned, "
            f"{counts[S.FAIL]} failed (budget {target}); best {_best(study)}")
