"""`best`: the best search trial as a study file with fixed values, ready to rerun."""

from __future__ import annotations

import yaml

from nbtl_search.store.connection import open_rdb
from nbtl_search.study.roles import SEARCH
from nbtl_search.study.sampling import fixed_space
from nbtl_search.study.spec import StudySpec
from trainer import InputError

from .status import load_study


def best_yaml(spec: StudySpec, url: str) -> str:
    """The best trial as a study file whose search space is all fixed values: rerunnable as is."""
    study = load_study(spec, open_rdb(url, heartbeat=False, create=False), SEARCH)
    try:
        best = study.best_trial if study else None
    except ValueError:
        best = None
    if best is None:
        raise InputError(
            f"study {spec.name!r} has no complete trial yet: run `nbtl-search run` first"
        )
    settings = spec.default_settings
    doc = {
        "name": f"{spec.name}-best",
        "dataset": spec.dataset,
        "model": spec.model,
        "train": spec.train,
        "search_space": fixed_space(spec, best.params),
        "sampler": {"type": "random"},
        "pruner": {"type": "none"},
        "budget": {"n_trials": 1},
        "default_settings": {
            **{k: list(v) for k, v in settings.grid.items()},
            **{k: list(v) if isinstance(v, tuple) else v for k, v in settings.fixed.items()},
            "extend": settings.extend,
        },
    }
    header = (
        f"# best trial {best.number} of {spec.name}: {spec.objective.metric} {best.value:.2f}\n"
    )
    return header + yaml.safe_dump(doc, sort_keys=False)
