"""The two kinds of Optuna study behind one study file: the non-binary search and the default-
settings baseline. Each is a value of `Role`, so the code that runs them never asks which it has."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.distributions import BaseDistribution

from trainer.config import TrainConfig

from . import axes, sampling
from . import default_settings as defaults
from .spec import StudySpec


@dataclass(frozen=True)
class Role:
    name: str  # nbtl_runs.role, the log folder, `worker --role`
    suffix: str  # appended to the study name for its Optuna study
    title: str
    sampler: Callable[[StudySpec, int], optuna.samplers.BaseSampler]
    pruner: Callable[[StudySpec], optuna.pruners.BasePruner]
    distributions: Callable[[StudySpec], dict[str, BaseDistribution]]
    config: Callable[[StudySpec, dict[str, Any]], TrainConfig]  # Optuna params -> config
    # the grid's points, every one to run once; None: not a grid, the sampler proposes trials
    points: Callable[[StudySpec], list[dict[str, Any]] | None]
    # a point to add once every point has run (finished (params, value), points added so far)
    extension: Callable[[StudySpec, list[tuple[dict, float]], int], dict[str, Any] | None]
    warm_starts: bool  # may begin with the probe's suggestion (study file: probe.enqueue)

    def study_name(self, spec: StudySpec) -> str:
        return spec.name + self.suffix

    def budget(self, spec: StudySpec, override: int | None = None) -> int:
        """Finished trials to reach (a grid's size before any extension)."""
        points = self.points(spec)
        return len(points) if points is not None else override or spec.budget.n_trials


SEARCH = Role(
    name="search",
    suffix="",
    title="non-binary search",
    sampler=sampling.build_sampler,
    pruner=sampling.build_pruner,
    distributions=sampling.distributions,
    config=sampling.config_from_params,
    points=lambda spec: (
        axes.grid_points(spec.search_space) if spec.sampler.type == "grid" else None
    ),
    extension=lambda spec, finished, extended: None,
    warm_starts=True,
)

DEFAULT = Role(
    name="default",
    suffix=".default",
    title="default settings (baseline grid)",
    sampler=lambda spec, worker: optuna.samplers.GridSampler(
        {k: list(v) for k, v in spec.default_settings.grid.items()},
        seed=sampling.sampler_seed(spec, worker),
    ),
    pruner=lambda spec: optuna.pruners.NopPruner(),  # every grid point runs to the end
    distributions=sampling.baseline_distributions,
    config=lambda spec, params: spec.default_config(params),
    points=lambda spec: defaults.grid_points(spec.default_settings),
    extension=lambda spec, finished, extended: defaults.extension(
        spec.default_settings, finished, extended
    ),
    warm_starts=False,
)

ROLES = {role.name: role for role in (SEARCH, DEFAULT)}
