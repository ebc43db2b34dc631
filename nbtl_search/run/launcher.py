"""`nbtl-search run` / `baseline`: create the study once, start one worker process per slot, supervise.

Workers are separate processes running `nbtl-search worker` (exactly what a second host runs), each
with its own CUDA_VISIBLE_DEVICES; the storage URL reaches them through the environment
(`NBTL_STORAGE`), never their command line, which every local user can read. The launcher restarts a
worker that dies while the study is not done and fails its trial at once, so a crash never shrinks
the study; the queue re-queues that trial once.

Stopping: SIGTERM, SIGINT or SIGHUP to the launcher stops every worker (SIGTERM, then SIGKILL after
`STOP_GRACE_S`); each worker fails its running trial and marks it lost, so the next `run` re-queues
it. Workers also get SIGTERM from the kernel if the launcher itself is killed (Linux), so no worker
outlives its launcher.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import optuna
from optuna.trial import TrialState
from rich.console import Console
from rich.live import Live
from rich.table import Table

from nbtl_search.store import attrs
from nbtl_search.store.connection import open_rdb
from nbtl_search.store.lock import StudyLock
from nbtl_search.store.results import ResultStore, ensure_schema
from nbtl_search.study.roles import Role
from nbtl_search.study.spec import StudySpec

from .processes import PARENT_ENV, STORAGE_ENV, Slot
from .signals import stop_on_signals
from .trial_queue import FINISHED, sync
from .worker import GAVE_UP, MAX_FAILURES_IN_A_ROW, prepare_study

MAX_RESTARTS = 3  # per slot: a worker that keeps crashing is a bug to look at, not to loop on
STOP_GRACE_S = 15  # after SIGTERM, how long a worker may take to fail its trial and exit


def log_dir(spec: StudySpec, role: Role) -> Path:
    return Path("nbtl-logs") / f"{spec.name}-{role.name}"


def start_study(spec: StudySpec, url: str, role: Role, budget: int | None = None) -> optuna.Study:
    """Create the study once, before any worker starts (here or in a Slurm array): the tables, the
    study, the grid's points and the retries an earlier run left, so workers never race to."""
    ensure_schema(url)  # Optuna's and nbtl's tables, once, before any worker: no schema race
    study = prepare_study(spec, open_rdb(url), role)
    store = ResultStore(url)
    try:
        with StudyLock(url, study.study_name):
            sync(study, role, spec, store, budget)
    finally:
        store.close()
    return study


def launch(
    spec: StudySpec,
    url: str,
    role: Role,
    slots: list[Slot],
    *,
    budget: int | None = None,
    timeout: float | None = None,
    image_cache: bool = True,
    console: Console | None = None,
) -> list[str]:
    """Run the study to its end with `slots` worker processes; returns the names of workers that
    stopped early for good (crashed past their restarts, or gave up on failing trials)."""
    console = console or Console(soft_wrap=True)
    logs = log_dir(spec, role)
    study = start_study(spec, url, role, budget)
    logs.mkdir(parents=True, exist_ok=True)
    index = {slot.name: i for i, slot in enumerate(slots)}
    by_name = {slot.name: slot for slot in slots}
    procs: dict[str, subprocess.Popen] = {}
    restarts: Counter[str] = Counter()
    crashed: list[str] = []

    def start(name: str) -> None:
        procs[name] = _start(
            spec, url, role, by_name[name], index[name], budget, timeout, image_cache, logs
        )

    try:
        with stop_on_signals():
            for slot in slots:
                start(slot.name)
            with Live(
                _table(study, role, spec, procs),
                console=console,
                refresh_per_second=2,
                transient=not console.is_terminal,
            ) as live:
                while procs:
                    for name, proc in list(procs.items()):
                        code = proc.poll()
                        if code is None:
                            continue
                        del procs[name]
                        if code != 0:
                            _recover_trials(study, url, proc.pid, code)
                        if code == GAVE_UP:
                            console.print(
                                f"[red]worker {name} stopped: {MAX_FAILURES_IN_A_ROW} "
                                "trials in a row failed; reasons in `nbtl-search status`, "
                                f"log: {logs / name}.log"
                            )
                            crashed.append(name)
                        elif (
                            code != 0
                            and not _done(study, role, spec, budget)
                            and restarts[name] < MAX_RESTARTS
                        ):
                            restarts[name] += 1
                            console.print(
                                f"[yellow]worker {name} exited with {code}; restarting "
                                f"({restarts[name]}/{MAX_RESTARTS}), log: {logs / name}.log"
                            )
                            start(name)
                        elif code != 0:
                            crashed.append(name)
                    live.update(_table(study, role, spec, procs))
                    if procs:
                        time.sleep(0.5)  # display refresh period, not synchronisation
    except KeyboardInterrupt:  # Ctrl-C, or `Stopped` from SIGTERM / SIGHUP
        _stop_all(study, url, procs)
        raise
    counts = Counter(t.state for t in study.get_trials(deepcopy=False))
    console.print(_summary(study, counts))
    return crashed


def _done(study: optuna.Study, role: Role, spec: StudySpec, budget: int | None) -> bool:
    trials = study.get_trials(deepcopy=False)
    if role.points(spec) is not None:
        return not any(t.state in (TrialState.WAITING, TrialState.RUNNING) for t in trials)
    return sum(t.state in FINISHED for t in trials) >= role.budget(spec, budget)


def _stop_all(study: optuna.Study, url: str, procs: dict[str, subprocess.Popen]) -> None:
    """SIGTERM every worker, SIGKILL the ones still alive after STOP_GRACE_S, and fail the trials
    of any that could not do it themselves."""
    for proc in procs.values():
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + STOP_GRACE_S
    for proc in procs.values():
        try:
            proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        _recover_trials(study, url, proc.pid, proc.returncode)


def _recover_trials(study: optuna.Study, url: str, pid: int, code: int | None) -> None:
    """The trials a dead local worker was running: failed now (not after the heartbeat grace
    period) without a reason, which marks them lost: the queue re-queues each once."""
    label = f"{socket.gethostname()}:{pid}"
    running = [
        t
        for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        if t.user_attrs.get(attrs.WORKER) == label
    ]
    store = ResultStore(url)
    try:
        for t in running:
            study.tell(t.number, state=TrialState.FAIL, skip_if_finished=True)
            if attrs.RUN_ID in t.user_attrs:
                store.mark_lost(
                    t.user_attrs[attrs.RUN_ID],
                    f"worker lost: {label} exited with {code}; re-queued",
                )
    finally:
        store.close()


def _start(
    spec: StudySpec,
    url: str,
    role: Role,
    slot: Slot,
    index: int,
    budget: int | None,
    timeout: float | None,
    image_cache: bool,
    logs: Path,
) -> subprocess.Popen:
    cmd = [
        sys.executable,
        "-m",
        "nbtl_search",
        "worker",
        str(spec.path),
        "--device",
        slot.device,
        "--role",
        role.name,
        "--index",
        str(index),
    ]
    if budget:
        cmd += ["--budget", str(budget)]
    if timeout:
        cmd += ["--timeout", str(timeout)]
    if slot.threads:
        cmd += ["--threads", str(slot.threads)]
    if not image_cache:
        cmd += ["--no-image-cache"]
    env = {**os.environ, **slot.env, STORAGE_ENV: url, PARENT_ENV: str(os.getpid())}
    with open(logs / f"{slot.name}.log", "ab") as log:  # the child keeps its own copy
        return subprocess.Popen(
            cmd, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )


def _table(
    study: optuna.Study, role: Role, spec: StudySpec, procs: dict[str, subprocess.Popen]
) -> Table:
    trials = study.get_trials(deepcopy=False)
    counts = Counter(t.state for t in trials)
    S = TrialState
    target = (
        role.budget(spec)
        if role.points(spec) is None
        else len({t.user_attrs.get(attrs.POINT) for t in trials} - {None})
    )
    table = Table(
        title=f"{study.study_name}: {counts[S.COMPLETE] + counts[S.PRUNED]}/{target} done, "
        f"{counts[S.RUNNING]} running, {counts[S.PRUNED]} pruned, "
        f"{counts[S.FAIL]} failed, best {_best(study)}"
    )
    table.add_column("worker")
    table.add_column("trial")
    table.add_column("epoch")
    table.add_column("last value")
    running = {t.user_attrs.get(attrs.WORKER, ""): t for t in trials if t.state == S.RUNNING}
    for name, proc in procs.items():
        t = next((t for w, t in running.items() if w.endswith(f":{proc.pid}")), None)
        last = max(t.intermediate_values) if t and t.intermediate_values else None
        table.add_row(
            name,
            str(t.number) if t else "-",
            str(last or "-"),
            f"{t.intermediate_values[last]:.2f}" if last else "-",
        )
    return table


def _best(study: optuna.Study) -> str:
    try:
        return f"{study.best_value:.2f} (trial {study.best_trial.number})"
    except ValueError:  # no complete trial yet
        return "-"


def _summary(study: optuna.Study, counts: Counter) -> str:
    S = TrialState
    return (
        f"{study.study_name}: {counts[S.COMPLETE]} complete, {counts[S.PRUNED]} pruned, "
        f"{counts[S.FAIL]} failed; best {_best(study)}"
    )
