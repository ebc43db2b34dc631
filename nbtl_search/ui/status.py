"""`status`: what a study holds, read from Optuna's tables (never written to)."""

from __future__ import annotations

import optuna
from optuna.trial import FrozenTrial, TrialState
from rich.table import Table

from nbtl_search.probe.rule import stored_suggestion
from nbtl_search.run import sbatch, slurm
from nbtl_search.run.trial_queue import grid_coverage, is_lost, lost_reason
from nbtl_search.store import attrs
from nbtl_search.store.connection import StorageError, masked, open_rdb
from nbtl_search.store.results import ResultStore
from nbtl_search.study import edges
from nbtl_search.study.axes import axis_values
from nbtl_search.study.roles import DEFAULT, SEARCH, Role
from nbtl_search.study.spec import StudySpec
from trainer import InputError


def load_study(
    spec: StudySpec, storage: optuna.storages.BaseStorage, role: Role
) -> optuna.Study | None:
    try:
        return optuna.load_study(study_name=role.study_name(spec), storage=storage)
    except KeyError:
        return None


def status_table(spec: StudySpec, url: str) -> Table:
    storage = open_rdb(url, heartbeat=False, create=False)
    studies = [(role, s) for role in (DEFAULT, SEARCH) if (s := load_study(spec, storage, role))]
    if not studies:
        raise InputError(
            f"study {spec.name!r} not found in {masked(url)}: run `nbtl-search run` first"
        )
    table = Table(title=f"{spec.name} ({masked(url)})")
    for col in ("role", "trial", "state", "value", "epochs", "seconds", "where", "params"):
        table.add_column(col)
    captions = []
    for role, study in studies:
        trials = study.get_trials(deepcopy=False)
        for t in trials:
            table.add_row(
                role.name,
                str(t.number),
                t.state.name.lower(),
                f"{t.value:.2f}" if t.value is not None else "-",
                str(len(t.intermediate_values)),
                _seconds(t),
                _where(t),
                _params(t),
            )
        captions += _summary(spec, role, trials)
    table.caption = "\n".join(captions + _probe_lines(spec, url) + _job_lines(spec))
    return table


def _where(t: FrozenTrial) -> str:
    """The host a trial ran on and its Slurm job (`vm 1234_5`: task 5 of array 1234)."""
    worker = t.user_attrs.get(attrs.WORKER)
    if not worker:
        return "-"
    host = worker.rsplit(":", 1)[0]
    job = t.user_attrs.get(attrs.SLURM_JOB)
    return f"{host} {job}" if job else host


def _job_lines(spec: StudySpec) -> list[str]:
    """The study's Slurm jobs still queued or running (`submit`), where Slurm is installed."""
    if not slurm.available():
        return []
    names = [sbatch.job_name(spec.name, role.name) for role in (DEFAULT, SEARCH)]
    return [
        f"slurm job {j.job} ({j.name}): {j.state.lower()}, {j.elapsed} run, {j.left} left, {j.reason}"
        for j in slurm.queued_jobs(names)
    ]


def _probe_lines(spec: StudySpec, url: str) -> list[str]:
    try:
        store = ResultStore(url, create=False)
    except StorageError:  # nbtl's tables are not there yet: no probe either
        return []
    try:
        rows = store.probe(spec.name)
    finally:
        store.close()
    if not rows:
        return []
    s = stored_suggestion(rows)
    fits = {r["layer"]: r["value"] for r in rows if r["score"] == "fit"}
    line = (
        f"probe ({rows[0]['created_at']:%Y-%m-%d %H:%M}): suggests new_layers "
        f"{s.get('new_layers', float('nan')):.0f}, L2-SP {s.get('l2sp_upper', 0):g}"
    )
    if fits:
        line += "; fit per layer (points over random weights): " + ", ".join(
            f"{k}: {v:+.1f}" for k, v in sorted(fits.items())
        )
    return [line]


def _summary(spec: StudySpec, role: Role, trials: list[FrozenTrial]) -> list[str]:
    lines = []
    if role.points(spec) is not None:
        once, more, points = grid_coverage(trials)
        missing = points - once - more
        lines.append(
            f"{role.name} grid: {once}/{points} points finished once, {more} more than once"
            f", {missing} not (yet) finished"
        )
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    if not done:
        return lines
    best = max(done, key=lambda t: (t.value, -t.number))
    lines.append(
        f"best {role.name}: {best.value:.2f} (trial {best.number}, one run; `final` "
        "re-ranks the top configs with more seeds)"
    )
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


def _fmt(v) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)
