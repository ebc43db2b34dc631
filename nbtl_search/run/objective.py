"""The one place that turns trainer outcomes into Optuna trial states and nbtl run states.

fit() returns, all epochs run       -> COMPLETE, run `complete`, value = best (or last) epoch metric
the reporter answered STOP (pruned) -> PRUNED,   run `pruned`
any exception, NaN loss, no value   -> FAIL,     run `failed` with the reason; the worker goes on
the worker is stopped (a signal)    -> FAIL,     run `failed`, marked lost: re-queued on a rerun

"""

from __future__ import annotations

import gc
import math
from collections.abc import Callable
from dataclasses import dataclass

import optuna
from optuna.trial import TrialState

from nbtl_search.store import attrs
from nbtl_search.store.results import ResultStore
from nbtl_search.store.where import slurm_job
from nbtl_search.study.roles import Role
from nbtl_search.study.sampling import suggest
from nbtl_search.study.spec import StudySpec
from trainer import Decision, EpochMetrics, StopReason, TrainResult

from .signals import Stopped, stop_requested

FitFn = Callable[..., TrainResult]


class EpochRecorder:
    """Stores each epoch of a run in `nbtl_epochs`."""

    def __init__(self, store: ResultStore, run_id: int) -> None:
        self.store, self.run_id = store, run_id

    def report(self, epoch: int, m: EpochMetrics) -> Decision:
        self.store.add_epoch(
            self.run_id,
            epoch=epoch,
            train_loss=m.train_loss,
            val_loss=m.val_loss,
            val_top1=m.val_top1,
            val_top5=m.val_top5,
            lrs=list(m.lrs),
            penalty=m.penalty,
            seconds=m.seconds,
        )
        return Decision.CONTINUE


class TrialReporter(EpochRecorder):
    """Also reports the objective metric to Optuna, and stops the loop when the trial is pruned."""

    def __init__(self, trial: optuna.Trial, store: ResultStore, run_id: int, metric: str) -> None:
        super().__init__(store, run_id)
        self.trial, self.metric = trial, metric
        self.pruned = False

    def report(self, epoch: int, m: EpochMetrics) -> Decision:
        super().report(epoch, m)
        value = getattr(m, self.metric)
        if value is None or not math.isfinite(value):
            return Decision.CONTINUE  # nothing Optuna could compare; the end of fit() decides
        self.trial.report(value, step=epoch)
        if self.trial.should_prune():
            self.pruned = True
            return Decision.STOP
        return Decision.CONTINUE


@dataclass
class Objective:
    """`study.optimize(Objective(...), n_trials=1)`: one claimed trial of `role`, run to its end.

    Returns the value (COMPLETE) or raises: `optuna.TrialPruned` (PRUNED), the training's own
    exception (FAIL; `catch` keeps the worker alive), `Stopped` (FAIL, and the worker exits). The
    reason and the lost mark are set on the trial before Optuna tells it.
    """

    spec: StudySpec
    role: Role
    store: ResultStore
    device: str = "cpu"
    image_cache: bool | None = None  # None: the study's setting (TrainConfig.image_cache)
    worker: str = ""  # host:pid, shown by `run` and the dashboard
    fit: FitFn | None = None  # injectable for orchestration tests; default trainer.fit
    on_start: Callable[[], None] | None = None  # called first (the worker releases its lock)
    last_run_id: int | None = None
    last_state: TrialState | None = None
    last_reason: str | None = None  # why the last trial failed

    def __call__(self, trial: optuna.Trial) -> float:
        if self.on_start is not None:
            self.on_start()
        self.last_run_id, self.last_state, self.last_reason = None, TrialState.FAIL, None
        trial.set_user_attr(attrs.WORKER, self.worker)
        if (job := slurm_job()) is not None:
            trial.set_user_attr(attrs.SLURM_JOB, job.label)  # `status` shows it beside the trial
        try:
            params = suggest(trial, self.role.distributions(self.spec))
            config = self.role.config(self.spec, params).replace(device=self.device)
            if self.image_cache is not None:
                config = config.replace(image_cache=self.image_cache)
            run_id = self.store.start_run(
                study=self.spec.name,
                role=self.role.name,
                config=config.to_dict(),
                seed=config.seed,
                device=config.device,
                trial_number=trial.number,
            )
            self.last_run_id = run_id
            trial.set_user_attr(attrs.RUN_ID, run_id)
            reporter = TrialReporter(trial, self.store, run_id, self.spec.objective.metric)
            result = self._fit()(config, reporter)
            pruned = reporter.pruned or result.stop_reason is StopReason.REPORTER
            value = None if pruned else self._value(result)
        except BaseException as e:
            lost = isinstance(e, KeyboardInterrupt) or stop_requested() is not None
            stop = stop_requested() or type(e).__name__
            reason = (
                f"worker stopped ({stop}); re-queued on the next run" if lost else failure_reason(e)
            )
            self.last_reason = reason
            trial.set_user_attr(attrs.FAIL_REASON, reason)  # optuna-dashboard shows it
            if lost:
                trial.set_user_attr(attrs.LOST, True)
            if self.last_run_id is not None:
                self.store.finish_run(self.last_run_id, state="failed", error=reason)
            _free_memory(e)
            if lost and not isinstance(e, KeyboardInterrupt):  # a stop wrapped by a library
                raise Stopped(stop_requested()) from e
            raise
        self.last_state = TrialState.PRUNED if pruned else TrialState.COMPLETE
        self.store.finish_run(
            run_id,
            state="pruned" if pruned else "complete",
            val_top1=result.best_val_top1,
            best_epoch=result.best_epoch,
            epochs_run=len(result.history),
            wall_s=result.wall_s,
            images_per_s=result.images_per_s,
        )
        if pruned:
            raise optuna.TrialPruned(f"pruned after epoch {len(result.history)}")
        return value

    def told_elsewhere(self) -> None:
        """Optuna refused the tell: another worker failed this trial meanwhile (its heartbeat looked
        stale) and re-queued a copy. Record the run as failed, so both tables agree."""
        self.last_state = TrialState.FAIL
        self.last_reason = "failed by another worker while it ran (stale heartbeat); re-queued"
        if self.last_run_id is not None:
            self.store.finish_run(self.last_run_id, state="failed", error=self.last_reason)

    def _fit(self) -> FitFn:
        if self.fit is not None:
            return self.fit
        from trainer import fit

        return fit

    def _value(self, result: TrainResult) -> float:
        metric = self.spec.objective.metric
        values = [getattr(m, metric) for m in result.history]
        value = (
            values[-1]
            if self.spec.objective.mode == "last"
            else max((v for v in values if v is not None), default=None)
        )
        if value is None or not math.isfinite(value):
            raise ValueError(f"trial produced no finite {metric} (got {value})")
        return float(value)


def failure_reason(e: BaseException) -> str:
    """One line for a run's `error` column: the exception type and the first line of its text."""
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"[:1000]


def _free_memory(e: BaseException) -> None:
    # An out-of-memory trial must not leave its tensors cached for the next trial on this GPU.
    if "out of memory" in str(e).lower():
        gc.collect()
        try:
            import torch

            torch.cuda.empty_cache()
        except Exception:
            pass
