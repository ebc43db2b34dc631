"""`status` and `best`: what a study holds, read from Optuna's tables."""

from __future__ import annotations

import optuna
import yaml
from rich.table import Table

from trainer import InputError

from .objective import FAIL_REASON_ATTR
from .space import params_to_yaml_space
from .spec import StudySpec
from .storage import open_storage
from .worker import DEFAULT, SEARCH


def _load(spec: StudySpec, url: str, role) -> optuna.Study | None:
    try:
        return optuna.load_study(study_name=role.study_name(spec), storage=open_storage(url, heartbeat=False))
    except KeyError:
        return None


def status_table(spec: StudySpec, url: str) -> Table:
    studies = [(role, s) for role in (DEFAULT, SEARCH) if (s := _load(spec, url, role))]
    if not studies:
        raise InputError(f"study {spec.name!r} not found in {url}: run `nbtl-search run` first")
    table = Table(title=f"{spec.name} ({url})")
    for col in ("role", "trial", "state", "value", "epochs", "seconds", "params"):
        table.add_column(col)
    for role, study in studies:
        for t in study.get_trials(deepcopy=False):
            seconds = (t.datetime_complete - t.datetime_start).total_seconds() \
                if t.datetime_complete and t.datetime_start else None
            params = ", ".join(f"{k}={_fmt(v)}" for k, v in t.params.items())
            if FAIL_REASON_ATTR in t.user_attrs:
                params += f"  [red]{t.user_attrs[FAIL_REASON_ATTR][:200]}[/red]"
            table.add_row(role.name, str(t.number), t.state.name.lower(),
                          f"{t.value:.2f}" if t.value is not None else "-",
                          str(len(t.intermediate_values)), f"{seconds:.0f}" if seconds else "-", params)
    for role, study in studies:
        try:
            best = study.best_trial
            table.caption = (table.caption or "") + \
                f"best {role.name}: {best.value:.2f} (trial {best.number})  "
        except ValueError:  # no complete trial yet
            pass
    return table


def best_yaml(spec: StudySpec, url: str) -> str:
    """The best trial as a study file whose search space is all fixed values: rerunnable as is."""
    study = _load(spec, url, SEARCH)
    try:
        best = study.best_trial if study else None
    except ValueError:
        best = None
    if best is None:
        raise InputError(f"study {spec.name!r} has no complete trial yet: run `nbtl-search run` first")
    doc = {
        "name": f"{spec.name}-best",
        "dataset": spec.dataset, "model": spec.model, "train": spec.train,
        "search_space": params_to_yaml_space(spec, best.params),
        "sampler": {"type": "random"}, "pruner": {"type": "none"},
        "budget": {"n_trials": 1},
        "default_settings": spec.default_settings,
    }
    header = f"# best trial {best.number} of {spec.name}: {spec.objective.metric} {best.value:.2f}\n"
    return header + yaml.safe_dump(doc, sort_keys=False)


def _fmt(v) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)
