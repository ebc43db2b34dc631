"""One worker = one process = one GPU slot, running trials of one study against one storage URL.

The loop, per trial: under the study lock, bring the queue up to date and decide (`queue`); claim
the next trial; train it outside the lock with Optuna keeping its heartbeat; Optuna tells the
outcome that `objective` returns or raises. The process outlives its trials (importing torch + timm costs seconds); every
trial builds its own model, loaders and RNGs inside `trainer.fit`, so the worker holds no state
between trials.
"""

from __future__ import annotations

import os
import socket
import sys
import time
from dataclasses import dataclass

import optuna
from optuna.trial import TrialState

from nbtl_search.store import attrs
from nbtl_search.store.connection import GRACE_PERIOD_S, HEARTBEAT_INTERVAL_S, open_rdb, quiet
from nbtl_search.store.lock import StudyLock
from nbtl_search.store.results import ResultStore
from nbtl_search.study.roles import Role
from nbtl_search.study.spec import StudySpec

from .objective import FitFn, Objective
from .signals import Stopped, stop_on_signals
from .time_limit import TimeLimit
from .trial_queue import Action, next_action, sync

MAX_FAILURES_IN_A_ROW = 5
WAIT_POLL_S = 2  # while the last trials run elsewhere: how often an idle worker looks again
GAVE_UP = 3  # worker exit code: trials keep failing; restarting it would not help
STOPPED = 143  # worker exit code after SIGTERM/SIGHUP: its trial was failed and marked lost


class StudyMismatch(ValueError):
    """The study name exists in this storage with a different search space."""


def prepare_study(
    spec: StudySpec, storage: optuna.storages.BaseStorage, role: Role, worker: int = 0
) -> optuna.Study:
    """Create the study once (or load it), refusing a name already used by a different space."""
    study = optuna.create_study(
        study_name=role.study_name(spec),
        storage=storage,
        direction="maximize",
        load_if_exists=True,
        sampler=role.sampler(spec, worker),
        pruner=role.pruner(spec),
    )
    fingerprint = spec.fingerprint(role.name)
    existing = study.user_attrs.get(attrs.FINGERPRINT)
    if existing is None:
        study.set_user_attr(attrs.FINGERPRINT, fingerprint)
        study.set_user_attr(attrs.STUDY, spec.name)
        study.set_user_attr(attrs.ROLE, role.name)
        quiet(study.set_metric_names, [spec.objective.metric])  # optuna-dashboard's value label
    elif existing != fingerprint:
        raise StudyMismatch(
            f"study {role.study_name(spec)!r} already exists in this storage with a different "
            f"search space, dataset or training settings; rename the study or use another storage"
        )
    return study


@dataclass(frozen=True)
class WorkerOptions:
    device: str = "cpu"
    trials: int | None = None  # this worker's own cap; the study's budget still applies
    budget: int | None = None  # override of the study's n_trials (finished trials, all workers)
    timeout: float | None = None  # seconds; no new trial starts after it
    threads: int | None = None  # torch CPU threads for this process
    index: int | None = None  # offsets the sampler seed so workers draw different trials
    image_cache: bool | None = None  # False: decode image files every epoch (None: the study's)
    heartbeat_interval: int = HEARTBEAT_INTERVAL_S  # a trial silent for grace_period is lost
    grace_period: int = GRACE_PERIOD_S
    time_limit: TimeLimit | None = None  # the job's end (Slurm): no trial starts that cannot finish


def run_worker(
    spec: StudySpec, url: str, role: Role, opts: WorkerOptions, fit: FitFn | None = None
) -> int:
    """Join the study and run trials until it is done; returns the exit code.
    `fit` replaces trainer.fit in orchestration tests."""
    if opts.threads:
        import torch

        torch.set_num_threads(opts.threads)
    storage = open_rdb(
        url, heartbeat_interval=opts.heartbeat_interval, grace_period=opts.grace_period
    )
    index = opts.index if opts.index is not None else os.getpid()  # other hosts: differ by pid
    study = prepare_study(spec, storage, role, index)
    budget = role.budget(spec, opts.budget)
    store = ResultStore(url)
    lock = StudyLock(url, study.study_name)
    # The lock is held from the decision until Optuna has handed this worker its trial (`ask`
    # inside `optimize`), i.e. until the objective starts: no two workers pop the same trial.
    objective = Objective(
        spec,
        role,
        store,
        device=opts.device,
        image_cache=opts.image_cache,
        worker=f"{socket.gethostname()}:{os.getpid()}",
        fit=fit,
        on_start=lock.release,
    )
    epochs = spec.base_config().epochs
    timeout = opts.timeout or spec.budget.timeout
    deadline = None if timeout is None else time.monotonic() + timeout
    own, failures = 0, 0
    try:
        with stop_on_signals():
            while opts.trials is None or own < opts.trials:
                if deadline is not None and time.monotonic() > deadline:
                    break
                # asked before the lock: the scheduler may be slow to answer
                left = opts.time_limit.left() if opts.time_limit else None
                lock.acquire()
                try:
                    trials = sync(study, role, spec, store, opts.budget)
                    action = next_action(trials, role, spec, budget)
                    late = None
                    if action is Action.CLAIM and opts.time_limit is not None:
                        late = opts.time_limit.refuses(left, trials, epochs)
                    if action is Action.CLAIM and late is None:
                        _run_one(study, objective)
                finally:
                    lock.release()
                if late is not None:
                    print(f"not starting another trial: {late}", file=sys.stderr, flush=True)
                    break
                if action is Action.DONE:
                    break
                if action is Action.WAIT:  # trials run elsewhere; one may fail and come back
                    time.sleep(min(WAIT_POLL_S, opts.heartbeat_interval))
                    continue
                own += 1
                failures = failures + 1 if objective.last_state == TrialState.FAIL else 0
                if failures >= MAX_FAILURES_IN_A_ROW:
                    # failed trials do not count towards the budget: without this a study whose
                    # every trial fails (a corrupt file, a bad path on this host) would run forever
                    print(
                        f"error: {MAX_FAILURES_IN_A_ROW} trials in a row failed; the last: "
                        f"{objective.last_reason or 'no reason recorded'}",
                        file=sys.stderr,
                    )
                    return GAVE_UP
    except Stopped:
        print("stopped: the running trial was failed and will be re-queued", file=sys.stderr)
        return STOPPED
    finally:
        store.close()
    return 0


def _run_one(study: optuna.Study, objective: Objective) -> None:
    """One trial through Optuna's own loop, which also keeps its heartbeat while it trains."""
    try:
        study.optimize(objective, n_trials=1, catch=(Exception,), gc_after_trial=True)
    except optuna.exceptions.UpdateFinishedTrialError:
        objective.told_elsewhere()
