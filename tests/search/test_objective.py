"""The objective bridge: trainer outcomes -> Optuna states and nbtl run rows (fake trainer)."""

from __future__ import annotations

import math
import signal

import optuna
import pytest
from optuna.trial import TrialState

from nbtl_search.run.objective import Objective
from nbtl_search.run.signals import Stopped, stop_on_signals
from nbtl_search.run.trial_queue import is_lost
from nbtl_search.store.connection import open_rdb
from nbtl_search.store.results import ResultStore
from nbtl_search.study.roles import SEARCH
from nbtl_search.study.spec import parse_spec
from tests.search import fakes

optuna.logging.set_verbosity(optuna.logging.ERROR)


def _study(url: str, pruner=None) -> optuna.Study:
    return optuna.create_study(
        study_name="s",
        storage=open_rdb(url, heartbeat=False),
        direction="maximize",
        pruner=pruner or optuna.pruners.NopPruner(),
    )


def _objective(
    url: str, lr: float, mode: str = "best", epochs: int = 4, fit=fakes.fake_fit
) -> Objective:
    spec = parse_spec(
        fakes.spec_dict(
            name="s",
            train={"epochs": epochs},
            objective={"mode": mode},
            search_space={"lr": lr, "new_layers": 2},
        )
    )
    return Objective(spec, SEARCH, ResultStore(url), fit=fit)


def test_reported_values_reach_optuna_and_the_tables(sqlite_url: str) -> None:
    study = _study(sqlite_url)
    objective = _objective(sqlite_url, lr=0.1)
    study.optimize(objective, n_trials=1)
    trial = study.trials[0]
    expected = [70.0 * e / 4 for e in range(1, 5)]
    assert trial.state == TrialState.COMPLETE
    assert trial.intermediate_values == dict(enumerate(expected, start=1))
    assert trial.value == pytest.approx(70.0)
    (run,) = objective.store.runs(study="s")
    assert (run["state"], run["trial_number"], run["epochs_run"]) == ("complete", 0, 4)
    assert run["val_top1"] == pytest.approx(70.0) and run["best_epoch"] == 4
    assert [e["val_top1"] for e in objective.store.epochs(run["id"])] == pytest.approx(expected)


def test_mode_last_takes_the_last_epoch(sqlite_url: str) -> None:
    study = _study(sqlite_url)
    study.optimize(_objective(sqlite_url, lr=0.1, mode="last", epochs=3), n_trials=1)
    assert study.trials[0].value == pytest.approx(70.0)


def test_prune_stops_the_loop_and_keeps_the_history(sqlite_url: str) -> None:
    # prunes as soon as a value below 1000 is reported: after epoch 1
    study = _study(sqlite_url, pruner=optuna.pruners.ThresholdPruner(lower=1000.0))
    objective = _objective(sqlite_url, lr=0.1)
    study.optimize(objective, n_trials=1)
    assert study.trials[0].state == TrialState.PRUNED
    (run,) = objective.store.runs(study="s")
    assert (run["state"], run["epochs_run"]) == ("pruned", 1)
    assert len(objective.store.epochs(run["id"])) == 1


@pytest.mark.parametrize("lr, reason", [(fakes.FAIL_LR, "out of memory"), (fakes.NAN_LR, "finite")])
def test_failures_become_failed_trials_and_the_worker_goes_on(
    sqlite_url: str, lr: float, reason: str
) -> None:
    study = _study(sqlite_url)
    objective = _objective(sqlite_url, lr=lr)
    study.optimize(objective, n_trials=2, catch=(Exception,))  # what a worker does
    assert [t.state for t in study.trials] == [TrialState.FAIL, TrialState.FAIL]
    assert reason in study.trials[0].user_attrs["fail_reason"]
    runs = objective.store.runs(study="s")
    assert [r["state"] for r in runs] == ["failed", "failed"]
    assert reason in runs[0]["error"]
    if lr == fakes.NAN_LR:  # the epochs that ran are kept, NaN stored as NULL
        assert len(objective.store.epochs(runs[0]["id"])) == 4
        assert all(
            e["val_top1"] is None or math.isnan(e["val_top1"])
            for e in objective.store.epochs(runs[0]["id"])
        )


def test_a_stopped_worker_fails_its_trial_as_lost(sqlite_url: str) -> None:
    """SIGTERM in a worker raises Stopped inside the training: the trial is told FAIL and marked
    lost (so the queue re-queues it), its row is failed, and Stopped reaches the worker loop."""

    def stopped_fit(cfg, reporter):
        raise Stopped("SIGTERM")

    study = _study(sqlite_url)
    objective = _objective(sqlite_url, lr=0.1, fit=stopped_fit)
    with pytest.raises(Stopped):
        study.optimize(objective, n_trials=1, catch=(Exception,))
    (trial,) = study.trials
    assert trial.state == TrialState.FAIL and is_lost(trial)
    (run,) = objective.store.runs(study="s")
    assert run["state"] == "failed" and "worker stopped" in run["error"]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_stop_that_a_library_wrapped_is_still_a_stop(
    sqlite_url: str, sig: signal.Signals
) -> None:
    """A signal can land inside a database call: psycopg cancels the query and SQLAlchemy/Optuna
    raise their own error instead of Stopped. The trial is still failed as lost, and what leaves
    the worker's `stop_on_signals` block is Stopped, not an error."""

    def fit_interrupted_mid_commit(cfg, reporter):
        try:
            signal.raise_signal(sig)  # the handler runs here, as it would inside a commit
        except KeyboardInterrupt as e:
            raise optuna.exceptions.StorageInternalError(
                "An exception is raised during the commit"
            ) from e
        raise AssertionError("the signal handler did not raise")

    study = _study(sqlite_url)
    objective = _objective(sqlite_url, lr=0.1, fit=fit_interrupted_mid_commit)
    with pytest.raises(Stopped, match=sig.name), stop_on_signals():
        study.optimize(objective, n_trials=1, catch=(Exception,))
    (trial,) = study.trials
    assert trial.state == TrialState.FAIL and is_lost(trial)
    (run,) = objective.store.runs(study="s")
    assert run["state"] == "failed" and "worker stopped" in run["error"]

    with pytest.raises(Stopped, match="SIGHUP"), stop_on_signals():  # outside a trial too
        try:
            signal.raise_signal(signal.SIGHUP)
        except Stopped as e:
            raise RuntimeError("wrapped") from e
    with pytest.raises(RuntimeError), stop_on_signals():  # without a signal an error stays one
        raise RuntimeError("a plain failure")
