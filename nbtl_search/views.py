"""`status` and `best`: what a study holds, read from Optuna's tables (never written to)."""

from __future__ import annotations

import dataclasses

import optuna
import sqlalchemy as sa
import yaml
from optuna.trial import FrozenTrial, TrialState
from rich.table import Table

from trainer import InputError

from . import attrs, edges
from .axes import axis_values
from .knobs import PRUNER_KEYS, SAMPLER_KEYS
from .probe import stored_suggestion, suggested_values
from .queue import grid_coverage, is_lost, lost_reason
from .results import ResultStore
from .roles import DEFAULT, SEARCH, Role
from .sampling import fixed_space
from .spec import StudySpec
from .storage import StorageError, masked, open_rdb


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
    table.caption = "\n".join(captions + _probe_lines(spec, url))
    return table


def _probe_lines(spec: StudySpec, url: str) -> list[str]:
    try:
        store = ResultStore(url, create=False)
    except StorageError:  # nbtl's tables are not there yet: no probe either
        return []
    try:
        rows = store.probe(spec.name)
    except sa.exc.SQLAlchemyError:  # a database written before the probe table existed
        return []
    finally:
        store.close()
    if not rows:
        return []
    s = stored_suggestion(rows)
    fits = {r["layer"]: r["value"] for r in rows if r["score"] == "fit"}
    line = (f"probe ({rows[0]['created_at']:%Y-%m-%d %H:%M}): suggests new_layers "
            f"{s.get('new_layers', float('nan')):.0f}, L2-SP {s.get('l2sp_upper', 0):g}")
    if fits:
        line += "; fit per layer (points over random weights): " + ", ".join(
            f"{k}: {v:+.1f}" for k, v in sorted(fits.items()))
    return [line]


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


def probe_table(spec: StudySpec, result, lr_from: str) -> Table:
    """The probe's scores per layer, the model-level ones and the suggestion, as printed."""
    table = Table(title=f"{spec.name}: how well the pre-trained weights fit the target "
                        f"({len(result.layers) + 1} layers; layer 1, the new classifier, left out)")
    columns = [c for c in ("probe_acc", "random_acc", "fit", "logme") if c in result.layers[0]]
    for col in ("layer", "name", "dim", *columns):
        table.add_column(col)
    for r in result.layers:
        table.add_row(str(r["index"]), r["name"], str(r["dim"]), *(f"{r[c]:.2f}" for c in columns))
    lines = [", ".join(f"{k} {v:.4g}" for k, v in result.model.items())]
    if result.suggestion:
        s = result.suggestion
        lines.append(f"suggestion: new_layers {s['new_layers']}, lrs [{s['lr_new']:g}, "
                     f"{s['lr_upper']:g}, {s['lr_lower']:g}] (base lr: {lr_from}), L2-SP "
                     f"{s['l2sp_upper']:g}")
        lines += [f"  because {r}" for r in result.reasons]
    lines.append(f"probe: {result.seconds['pass']:.2f} s of forward passes, "
                 f"{result.seconds['scores']:.2f} s of scores ({result.seconds['total']:.1f} s in all, "
                 "building the data and models included)")
    table.caption = "\n".join(lines)
    return table


def warm_study_yaml(spec: StudySpec, suggestion: dict) -> str:
    """A copy of the study that starts from the suggestion (`probe.enqueue`) with the ranges it
    sets narrowed around it: new_layers +-1, learning and regularisation rates x/÷ 3."""
    values = suggested_values(suggestion)
    space = {}
    for name, axis in spec.search_space.items():
        value = values.get(name)
        space[name] = _narrowed(axis, value) if value is not None else _as_yaml(axis)
    doc = {"name": f"{spec.name}-warm", "storage": spec.storage, "dataset": spec.dataset,
           "model": spec.model, "train": spec.train, "search_space": space,
           "sampler": _knobs(spec.sampler, SAMPLER_KEYS[spec.sampler.type]),
           "pruner": _knobs(spec.pruner, PRUNER_KEYS[spec.pruner.type]),
           "budget": _knobs(spec.budget, ("n_trials", "timeout")),
           "probe": {"enqueue": True}}
    header = (f"# {spec.name} narrowed around its probe's suggestion; `nbtl-search probe` this file "
              "once, then `run` it: the suggestion and the default settings are its first trials\n")
    return header + yaml.safe_dump(doc, sort_keys=False)


def _knobs(knobs, keys: tuple[str, ...]) -> dict:
    return {k: v for k, v in dataclasses.asdict(knobs).items() if k in keys and v is not None}


def _narrowed(axis, value) -> dict | object:
    if axis.kind == "int":
        return {"type": "int", "low": max(axis.low, int(value) - 1), "high": min(axis.high, int(value) + 1)}
    if axis.kind == "float" and value > 0:
        low, high = (max(axis.low, value / 3), min(axis.high, value * 3)) if axis.log else \
            (max(axis.low, value - (axis.high - axis.low) / 4), min(axis.high, value + (axis.high - axis.low) / 4))
        if low <= high:
            return {"type": "float", "low": float(f"{low:.3g}"), "high": float(f"{high:.3g}"),
                    "log": axis.log, "allow_zero": axis.allow_zero}
    return _as_yaml(axis)


def _as_yaml(axis) -> dict | object:
    if axis.kind == "fixed":
        return list(axis.value) if isinstance(axis.value, tuple) else axis.value
    if axis.kind == "categorical":
        return {"type": "categorical", "choices": list(axis.choices)}
    out = {"type": axis.kind, "low": axis.low, "high": axis.high, "log": axis.log}
    if axis.step is not None:
        out["step"] = axis.step
    if axis.allow_zero:
        out["allow_zero"] = True
    return out


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
