"""`status` and `best`: what a study holds, read from Optuna's tables (never written to)."""

from __future__ import annotations

import optuna
import yaml
from optuna.trial import FrozenTrial, TrialState
from rich.table import Table

from trainer import InputError

from . import attrs, edges
from .axes import axis_values
from .queue import grid_coverage, is_lost, lost_reason
from .roles import DEFAULT, SEARCH, Role
from .sampling import fixed_space
from .spec import StudySpec
from .storage import masked, open_rdb


def _load(spec: StudySpec, storage: optuna.storages.BaseStorage, role: Role) -> optuna.Study | None:
    try:
        return optuna.load_study(study_name=role.study_name(spec), storage=storage)
    except KeyError:
        return None


def status_table(spec: StudySpec, url: str) -> Table:
    storage = open_rdb(url, heartbeat=False, create=False)
    studies = [(role, s) for role in (DEFAULT, SEARCH) if (s := _load(spec, storage, role))]
    if not studies:
        raise InputError(f"study {spec.name!r} not found in {masked(url)}: run `nbtl-search run` first")
    table = Table(title=f"{spec.name} ({masked(url)})")
    for col in ("role", "trial", "state", "value", "epochs", "seconds", "params"):
        table.add_column(col)
    captions = []
    for role, study in studies:
        trials = study.get_trials(deepcopy=False)
        for t in trials:
            table.add_row(role.name, str(t.number), t.state.name.lower(),
                          f"{t.value:.2f}" if t.value is not None else "-",
                          str(len(t.intermediate_values)), _seconds(t), _params(t))
        captions += _summary(spec, role, trials)
    table.caption = "\n".join(captions)
    return table


def _summary(spec: StudySpec, role: Role, trials: list[FrozenTrial]) -> list[str]:
    lines = []
    if role.points(spec) is not None:
        once, more, points = grid_coverage(trials)
        missing = points - once - more
        lines.append(f"{role.name} grid: {once}/{points} points finished once, {more} more than once"
                     f", {missing} not (yet) finished")
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    if not done:
        return lines
    best = max(done, key=lambda t: (t.value, -t.number))
    lines.append(f"best {role.name}: {best.value:.2f} (trial {best.number}, one run; `final` "
                 "re-ranks the top configs with more seeds)")
    if role is DEFAULT:
        tried = {k: [t.params.get(k) for t in done] for k in best.params}
        notes = edges.grid_notes(tried, best.params)
    else:
        notes = edges.range_notes(spec.search_space, axis_values(spec.search_space, best.params))
    lines += [f"  [yellow]edge: {n}[/yellow]" for n in notes]
    return lines


def _seconds(t: FrozenTrial) -> str:
    if t.datetime_complete and t.datetime_start:
        return f"{(t.datetime_complete - t.datetime_start).total_seconds():.0f}"
    return "-"


def _params(t: FrozenTrial) -> str:
    text = ", ".join(f"{k}={_fmt(v)}" for k, v in t.params.items())
    if attrs.RETRY_OF in t.user_attrs:
        text += f"  (retry of trial {t.user_attrs[attrs.RETRY_OF]})"
    if t.state == TrialState.FAIL:
        reason = lost_reason(t) if is_lost(t) else t.user_attrs.get(attrs.FAIL_REASON, "")
        text += f"  [red]{reason[:200]}[/red]"
    return text


def best_yaml(spec: StudySpec, url: str) -> str:
    """The best trial as a study file whose search space is all fixed values: rerunnable as is."""
    study = _load(spec, open_rdb(url, heartbeat=False, create=False), SEARCH)
    try:
        best = study.best_trial if study else None
    except ValueError:
        best = None
    if best is None:
        raise InputError(f"study {spec.name!r} has no complete trial yet: run `nbtl-search run` first")
    settings = spec.default_settings
    doc = {
        "name": f"{spec.name}-best",
        "dataset": spec.dataset, "model": spec.model, "train": spec.train,
        "search_space": fixed_space(spec, best.params),
        "sampler": {"type": "random"}, "pruner": {"type": "none"},
        "budget": {"n_trials": 1},
        "default_settings": {**{k: list(v) for k, v in settings.grid.items()},
                             **{k: list(v) if isinstance(v, tuple) else v
                                for k, v in settings.fixed.items()}, "extend": settings.extend},
    }
    header = f"# best trial {best.number} of {spec.name}: {spec.objective.metric} {best.value:.2f}\n"
    return header + yaml.safe_dump(doc, sort_keys=False)


def _fmt(v) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)
