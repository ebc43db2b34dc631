"""What must happen once across workers, decided under the study lock (`claims.StudyLock`).

`sync` brings the study's queue up to date, whoever calls it and however often:

1. trials whose worker stopped sending heartbeats are failed (Optuna's `fail_stale_trials`), and
   their `nbtl_runs` rows marked failed, so both tables agree;
2. each lost trial (its worker died, was killed or was stopped) is re-queued once, as a WAITING copy
   with the same parameters (`nbtl_retry_of` = its number), up to `MAX_RETRIES` times; in a grid,
   a point whose trial failed for any reason is re-queued the same way: a failed point is retried,
   not skipped;
3. grid points (baseline, `sampler: grid`) that have no trial yet are enqueued, each exactly once;
4. the baseline adds a point past the edge of its lr grid once every point has run (`defaults`);
5. a search asked to (`probe.enqueue`) starts with the stored probe's suggestion, then the default
   settings, as its first two trials.

`next_action` then says what the worker holding the lock does: CLAIM a trial (pop the queue, or
sample a new one while the budget allows), WAIT for trials that run elsewhere (one of them may still
fail and come back), or stop (DONE). Because the pop happens under the same lock, two workers never
take the same trial, and a grid worker never finds the queue empty and samples a point of its own.
"""

from __future__ import annotations

import enum
import json
from collections import Counter
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from nbtl_search.probe.rule import base_lr, stored_suggestion, suggested_values, suggestion_params
from nbtl_search.store import attrs
from nbtl_search.store.connection import fail_stale_trials
from nbtl_search.store.results import ResultStore
from nbtl_search.study.axes import values_from_fields
from nbtl_search.study.default_settings import binary_transfer
from nbtl_search.study.roles import Role
from nbtl_search.study.spec import StudySpec

MAX_RETRIES = 3  # re-queued copies per original trial
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)  # failed trials never use up the budget


class Action(enum.Enum):
    CLAIM = "claim"
    WAIT = "wait"
    DONE = "done"


def point_key(point: dict[str, Any]) -> str:
    """A grid point as text: the same point always gives the same key."""
    return json.dumps(point, sort_keys=True, default=str)


def is_lost(trial: FrozenTrial) -> bool:
    """Failed because its worker went away, not because of what it trained: a stale heartbeat
    leaves no reason, a stopped or killed worker is marked `nbtl_lost`."""
    return trial.state == TrialState.FAIL and (
        bool(trial.user_attrs.get(attrs.LOST)) or attrs.FAIL_REASON not in trial.user_attrs
    )


def sync(
    study: optuna.Study,
    role: Role,
    spec: StudySpec,
    store: ResultStore | None,
    budget: int | None = None,
) -> list[FrozenTrial]:
    """Steps 1-5 of the module docstring; returns the trials as they are afterwards. `budget`
    overrides the study's (a search re-queues lost trials only while its budget has room)."""
    fail_stale_trials(study)
    trials = study.get_trials(deepcopy=False)
    retried = {t.user_attrs.get(attrs.RETRY_OF) for t in trials}
    if store is not None:
        for t in trials:  # new losses only: each run row is fixed once
            if is_lost(t) and t.number not in retried and attrs.RUN_ID in t.user_attrs:
                store.mark_lost(t.user_attrs[attrs.RUN_ID], lost_reason(t))
    if not trials and role.warm_starts and spec.probe.enqueue and store is not None:
        for point, label in warm_start(spec, store):
            study.enqueue_trial(point, user_attrs={attrs.WARM_START: label, attrs.ATTEMPT: 1})
        trials = study.get_trials(deepcopy=False)
    points = role.points(spec)
    room = points is not None or sum(t.state in FINISHED for t in trials) < role.budget(
        spec, budget
    )
    for t in trials:
        if (
            room
            and t.state == TrialState.FAIL
            and t.number not in retried
            and t.params
            and (is_lost(t) or points is not None)
            and t.user_attrs.get(attrs.ATTEMPT, 1) <= MAX_RETRIES
        ):
            keep = {k: v for k, v in t.user_attrs.items() if k in (attrs.POINT, attrs.EXTENSION)}
            study.enqueue_trial(
                t.params,
                user_attrs={
                    **keep,
                    attrs.RETRY_OF: t.number,
                    attrs.ATTEMPT: t.user_attrs.get(attrs.ATTEMPT, 1) + 1,
                },
            )
    if points is not None:
        known = {t.user_attrs.get(attrs.POINT) for t in trials}
        for point in points:
            if point_key(point) not in known:
                study.enqueue_trial(
                    point, user_attrs={attrs.POINT: point_key(point), attrs.ATTEMPT: 1}
                )
        trials = study.get_trials(deepcopy=False)
        _extend(study, role, spec, trials)
    return study.get_trials(deepcopy=False)


def _extend(study: optuna.Study, role: Role, spec: StudySpec, trials: list[FrozenTrial]) -> None:
    busy = [t for t in trials if t.state in (TrialState.WAITING, TrialState.RUNNING)]
    if busy:
        return  # the edge is judged once every point has run
    finished = [(t.params, t.value) for t in trials if t.state == TrialState.COMPLETE]
    extended = sum(
        1
        for t in trials
        if t.user_attrs.get(attrs.EXTENSION) and t.user_attrs.get(attrs.ATTEMPT, 1) == 1
    )
    point = role.extension(spec, finished, extended)
    if point is not None and point_key(point) not in {
        t.user_attrs.get(attrs.POINT) for t in trials
    }:
        study.enqueue_trial(
            point,
            user_attrs={attrs.POINT: point_key(point), attrs.ATTEMPT: 1, attrs.EXTENSION: True},
        )


def warm_start(spec: StudySpec, store: ResultStore) -> list[tuple[dict[str, Any], str]]:
    """The probe's suggestion and the default settings as params of the search space (nothing
    when no probe has run for this study)."""
    suggestion = stored_suggestion(store.probe(spec.name))
    if not suggestion:
        return []
    lr, _ = base_lr(spec, store)
    default = values_from_fields({**binary_transfer(), "lrs": (lr,)})
    out: list[tuple[dict[str, Any], str]] = []
    for values, label in (
        (suggested_values(suggestion), "probe suggestion"),
        (default, "default settings"),
    ):
        params = suggestion_params(spec, values)
        if params is None:
            continue
        if out and out[0][0] == params:  # the probe suggests the default settings themselves
            out[0] = (params, f"{out[0][1]} = {label}")
        else:
            out.append((params, label))
    return out


def next_action(trials: list[FrozenTrial], role: Role, spec: StudySpec, budget: int) -> Action:
    counts = Counter(t.state for t in trials)
    finished = counts[TrialState.COMPLETE] + counts[TrialState.PRUNED]
    running, waiting = counts[TrialState.RUNNING], counts[TrialState.WAITING]
    if role.points(spec) is not None:  # a grid: done when nothing is left to run
        return Action.CLAIM if waiting else Action.WAIT if running else Action.DONE
    if finished >= budget:
        return Action.DONE
    if finished + running < budget:
        return Action.CLAIM  # pops a waiting retry first, else samples a new trial
    return Action.WAIT  # the budget is in flight; a running trial may still fail and come back


def lost_reason(trial: FrozenTrial) -> str:
    return (
        trial.user_attrs.get(attrs.FAIL_REASON)
        or "worker lost: no heartbeat for the grace period (re-queued)"
    )


def grid_coverage(trials: list[FrozenTrial]) -> tuple[int, int, int]:
    """(points finished once, points finished more than once, points enqueued) of a grid study."""
    done = Counter(t.user_attrs.get(attrs.POINT) for t in trials if t.state in FINISHED)
    points = {t.user_attrs.get(attrs.POINT) for t in trials} - {None}
    return (
        sum(1 for p in points if done[p] == 1),
        sum(1 for p in points if done[p] > 1),
        len(points),
    )
