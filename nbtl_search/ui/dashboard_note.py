"""The optimal-vs-default summary as an optuna-dashboard note on the study's page."""

from __future__ import annotations

import optuna
import optuna_dashboard

from nbtl_search.store.connection import open_rdb
from nbtl_search.study.spec import StudySpec


def write_note(url: str, spec: StudySpec) -> None:
    import analysis

    try:
        body = analysis.summary_markdown(url, spec.name)
    except analysis.AnalysisError as e:  # e.g. no baseline yet: the note says what to run next
        body = f"**Optimal vs default:** not available yet. {e}"
    storage = open_rdb(url, heartbeat=False)
    try:
        study = optuna.load_study(study_name=spec.name, storage=storage)
    except KeyError:  # only the baseline has run so far
        return
    optuna_dashboard.save_note(study, body)
