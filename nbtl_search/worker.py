"""One worker = one process = one GPU slot, running `study.optimize` against one storage URL.

The process outlives its trials (importing torch + timm costs seconds); every trial builds its own
model, loaders and RNGs inside `trainer.fit`, so the worker itself holds no state between trials.
"""

from __future__ import annotations

import os
import socket
import sys
from dataclasses import dataclass

import optuna
from optuna.study import MaxTrialsCallback
from optuna.trial import TrialState

from trainer import TrainConfig

from .objective import FAIL_REASON_ATTR, RUN_ID_ATTR, FitFn, Objective
from .results import ResultStore
from .samplers import baseline_sampler, build_pruner, build_sampler
from .space import suggest_config
from .spec import StudySpec
from .storage import open_storage

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)  # failed trials never use up the budget
FINGERPRINT_ATTR = "nbtl_fingerprint"
MAX_FAILURES_IN_A_ROW = 5
GAVE_UP = 3  # worker exit code: trials keep failing; restarting it would not help


class StudyMismatch(ValueError):
    """The study name exists in this storage with a different search space."""


@dataclass(frozen=True)
class Role:
    """A search over the study's space, or the default-settings baseline grid (no pruning)."""

    name: str  # "search" | "default"

    def study_name(self, spec: StudySpec) -> str:
        return spec.name if self.name == "search" else f"{spec.name}.default"

    def budget(self, spec: StudySpec, override: int | None = None) -> int:
        if self.name == "default":
            return len(spec.default_configs())
        return override or spec.budget.n_trials

    def sampler(self, spec: StudySpec, worker: int = 0) -> optuna.samplers.BaseSampler:
        return build_sampler(spec, worker) if self.name == "search" else baseline_sampler(spec, worker)

    def pruner(self, spec: StudySpec) -> optuna.pruners.BasePruner:
        return build_pruner(spec) if self.name == "search" else optuna.pruners.NopPruner()

    def config(self, trial: optuna.Trial, spec: StudySpec) -> TrainConfig:
        if self.name == "search":
            return suggest_config(trial, spec)
        grid = spec.default_settings
        return spec.default_config(trial.suggest_categorical("lr", grid["lr"]),
                                   trial.suggest_categorical("weight_decay", grid["weight_decay"]))


SEARCH, DEFAULT = Role("search"), Role("default")


def prepare_study(spec: StudySpec, storage: optuna.storages.BaseStorage, role: Role,
                  worker: int = 0) -> optuna.Study:
    """Create the study once (or load it), refusing a name already used by a different space."""
    study = optuna.create_study(study_name=role.study_name(spec), storage=storage,
                                direction="maximize", load_if_exists=True,
                                sampler=role.sampler(spec, worker), pruner=role.pruner(spec))
    fingerprint = spec.space_fingerprint()
    existing = study.user_attrs.get(FINGERPRINT_ATTR)
    if existing is None:
        study.set_user_attr(FINGERPRINT_ATTR, fingerprint)
        study.set_user_attr("nbtl_study", spec.name)
        study.set_user_attr("nbtl_role", role.name)
    elif existing != fingerprint:
        raise StudyMismatch(
            f"study {role.study_name(spec)!r} already exists in this storage with a different "
            f"search space, dataset or training settings; rename the study or use another storage")
    return study


def finished_trials(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=FINISHED))


@dataclass(frozen=True)
class WorkerOptions:
    device: str = "cpu"
    trials: int | None = None  # this worker's own cap; the study's budget still applies
    budget: int | None = None  # override of the study's n_trials (finished trials, all workers)
    timeout: float | None = None
    threads: int | None = None  # torch CPU threads for this process
    index: int | None = None  # offsets the sampler seed so workers draw different trials
    heartbeat_interval: int = 10  # seconds; a trial silent for grace_period is failed and retried
    grace_period: int = 30


def run_worker(spec: StudySpec, url: str, role: Role, opts: WorkerOptions,
               fit: FitFn | None = None) -> int:
    """Join the study and run trials until its budget of finished trials is reached.
    `fit` replaces trainer.fit in orchestration tests."""
    if opts.threads:
        import torch

        torch.set_num_threads(opts.threads)
    storage = open_storage(url, heartbeat_interval=opts.heartbeat_interval,
                           grace_period=opts.grace_period)
    index = opts.index if opts.index is not None else os.getpid()  # other hosts: differ by pid
    study = prepare_study(spec, storage, role, index)
    budget = role.budget(spec, opts.budget)
    if finished_trials(study) >= budget:
        return 0
    store = ResultStore(url)
    give_up = GiveUp()
    objective = Objective(
        make_config=lambda trial: role.config(trial, spec).replace(device=opts.device),
        store=store, study_name=spec.name, role=role.name, metric=spec.objective.metric,
        mode=spec.objective.mode, worker=f"{socket.gethostname()}:{os.getpid()}", fit=fit)
    try:
        study.optimize(objective, n_trials=opts.trials, timeout=opts.timeout or spec.budget.timeout,
                       callbacks=[MaxTrialsCallback(budget, states=FINISHED), give_up,
                                  lambda study, _: mark_lost_runs(study, store)],
                       catch=(Exception,), gc_after_trial=True)
    finally:
        mark_lost_runs(study, store)
        store.close()
    if give_up.reason:
        print(f"error: {MAX_FAILURES_IN_A_ROW} trials in a row failed; the last: {give_up.reason}",
              file=sys.stderr)
        return GAVE_UP
    return 0


class GiveUp:
    """Stops this worker after MAX_FAILURES_IN_A_ROW failed trials: failures do not count towards the
    budget, so a study whose every trial fails (a corrupt file, a bad path on this host) would
    otherwise run forever."""

    def __init__(self) -> None:
        self.in_a_row = 0
        self.reason: str | None = None

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        self.in_a_row = self.in_a_row + 1 if trial.state == TrialState.FAIL else 0
        if self.in_a_row >= MAX_FAILURES_IN_A_ROW:
            self.reason = trial.user_attrs.get(FAIL_REASON_ATTR, "no reason recorded")
            study.stop()


def mark_lost_runs(study: optuna.Study, store: ResultStore) -> None:
    """Runs whose worker died stay `running` in nbtl_runs; once Optuna has failed their stale
    trial (heartbeat), record them as failed too, so the two tables agree."""
    for trial in study.get_trials(deepcopy=False, states=(TrialState.FAIL,)):
        run_id = trial.user_attrs.get(RUN_ID_ATTR)
        if run_id is not None and FAIL_REASON_ATTR not in trial.user_attrs:  # not failed by us
            store.mark_lost(run_id, "worker lost: no heartbeat for the grace period (retried)")
