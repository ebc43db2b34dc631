"""The one place that turns trainer outcomes into Optuna trial states and nbtl run states.

    fit() returns, all epochs run      -> COMPLETE, run `complete`, value = best (or last) epoch metric
    the reporter answered STOP (pruned) -> PRUNED,  run `pruned`
    any exception, NaN loss, no value  -> FAIL,     run `failed` with the reason; the worker goes on
"""

from __future__ import annotations

import gc
import math
from dataclasses import dataclass
from typing import Callable

import optuna

from trainer import Decision, EpochMetrics, StopReason, TrainConfig, TrainResult

from .results import ResultStore

FitFn = Callable[..., TrainResult]

# how a worker labels the trial it is running, so `run` can show each worker's current trial
WORKER_ATTR = "nbtl_worker"
RUN_ID_ATTR = "nbtl_run_id"
FAIL_REASON_ATTR = "fail_reason"


class EpochRecorder:
    """Stores each epoch of a run in `nbtl_epochs`."""

    def __init__(self, store: ResultStore, run_id: int) -> None:
        self.store, self.run_id = store, run_id

    def report(self, epoch: int, m: EpochMetrics) -> Decision:
        self.store.add_epoch(self.run_id, epoch=epoch, train_loss=m.train_loss, val_loss=m.val_loss,
                             val_top1=m.val_top1, val_top5=m.val_top5, lrs=list(m.lrs),
                             penalty=m.penalty, seconds=m.seconds)
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
    """`study.optimize(Objective(...))`: build the trial's config, train it, record the outcome."""

    make_config: Callable[[optuna.Trial], TrainConfig]
    store: ResultStore
    study_name: str
    role: str
    metric: str = "val_top1"
    mode: str = "best"  # best epoch or last epoch
    worker: str = ""
    fit: FitFn | None = None  # injectable for orchestration tests; default trainer.fit

    def __call__(self, trial: optuna.Trial) -> float:
        trial.set_user_attr(WORKER_ATTR, self.worker)
        config = self.make_config(trial)
        run_id = self.store.start_run(study=self.study_name, role=self.role, config=config.to_dict(),
                                      seed=config.seed, device=config.device,
                                      trial_number=trial.number)
        trial.set_user_attr(RUN_ID_ATTR, run_id)
        reporter = TrialReporter(trial, self.store, run_id, self.metric)
        try:
            result = self._fit()(config, reporter)
            value = self._value(result)
        except BaseException as e:
            trial.set_user_attr(FAIL_REASON_ATTR, failure_reason(e))  # shown by optuna-dashboard
            self.store.finish_run(run_id, state="failed", error=failure_reason(e))
            _free_memory(e)
            raise  # Optuna records FAIL with this reason; optimize(catch=...) keeps the worker alive
        pruned = reporter.pruned or result.stop_reason is StopReason.REPORTER
        self.store.finish_run(
            run_id, state="pruned" if pruned else "complete", val_top1=result.best_val_top1,
            best_epoch=result.best_epoch, epochs_run=len(result.history), wall_s=result.wall_s,
            images_per_s=result.images_per_s)
        if pruned:
            raise optuna.TrialPruned(f"pruned after epoch {len(result.history)}")
        return value

    def _fit(self) -> FitFn:
        if self.fit is not None:
            return self.fit
        from trainer import fit

        return fit

    def _value(self, result: TrainResult) -> float:
        values = [getattr(m, self.metric) for m in result.history]
        value = values[-1] if self.mode == "last" else max(
            (v for v in values if v is not None), default=None)
        if value is None or not math.isfinite(value):
            raise ValueError(f"trial produced no finite {self.metric} (got {value})")
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
        except Exception:  # no CUDA here: nothing to free
            pass
