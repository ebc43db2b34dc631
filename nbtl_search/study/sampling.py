"""The Optuna side of a study: samplers, pruners, parameter distributions, trial -> `TrainConfig`.

Search trials: one Optuna parameter per non-fixed axis (two for an `allow_zero` axis, see `axes`).
Baseline trials: one parameter per key of the baseline grid (`lr` on a log scale wide enough for
the grid's extensions, the others categorical). Grid trials are always enqueued with their
parameters (see `queue`), so the sampler of a grid never picks a point by itself.
"""

from __future__ import annotations

import importlib.util
from typing import Any

import optuna
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)

from trainer.config import TrainConfig

from . import default_settings as defaults
from .axes import axis_values, grid_space
from .checks import SpecError
from .spec import StudySpec


def sampler_seed(spec: StudySpec, worker: int) -> int | None:
    """Workers add their index to the study's seed, so parallel workers draw different trials."""
    return None if spec.sampler.seed is None else spec.sampler.seed + worker


def build_sampler(spec: StudySpec, worker: int = 0) -> optuna.samplers.BaseSampler:
    """The study's sampler for worker number `worker` (0, 1, ...)."""
    s, seed = spec.sampler, sampler_seed(spec, worker)
    startup = {} if s.n_startup_trials is None else {"n_startup_trials": s.n_startup_trials}
    if s.type == "tpe":
        return optuna.samplers.TPESampler(
            seed=seed, multivariate=s.multivariate, constant_liar=s.constant_liar, **startup
        )
    if s.type == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if s.type == "gp":  # needs torch and scipy, both dependencies of the project
        return optuna.samplers.GPSampler(seed=seed, **startup)
    if s.type == "cmaes":
        # Optuna imports `cmaes` only when it first samples, deep in a worker: fail here instead.
        if importlib.util.find_spec("cmaes") is None:
            raise SpecError(
                f"{spec.path or '<spec>'}: sampler.type: cmaes needs the `cmaes` package, "
                "which is not installed (pip install cmaes)"
            )
        return optuna.samplers.CmaEsSampler(seed=seed, **startup)
    return optuna.samplers.GridSampler(grid_space(spec.search_space), seed=seed)


def build_pruner(spec: StudySpec) -> optuna.pruners.BasePruner:
    """The study's pruner; Hyperband's resource is the epoch, up to the training epochs."""
    p = spec.pruner
    if p.type == "hyperband":
        return optuna.pruners.HyperbandPruner(
            min_resource=p.min_resource,
            max_resource=spec.base_config().epochs,
            reduction_factor=p.reduction_factor,
        )
    if p.type == "median":
        return optuna.pruners.MedianPruner(
            n_startup_trials=p.n_startup_trials, n_warmup_steps=p.n_warmup_steps
        )
    return optuna.pruners.NopPruner()


def distributions(spec: StudySpec) -> dict[str, BaseDistribution]:
    """Search parameters: Optuna name -> distribution, in study-file order; fixed axes have none."""
    out: dict[str, BaseDistribution] = {}
    for name, axis in spec.search_space.items():
        if axis.kind == "float":
            if axis.allow_zero:
                out[f"{name}_on"] = CategoricalDistribution((True, False))
            out[name] = FloatDistribution(axis.low, axis.high, log=axis.log, step=axis.step)
        elif axis.kind == "int":
            out[name] = IntDistribution(axis.low, axis.high, log=axis.log, step=axis.step or 1)
        elif axis.kind == "categorical":
            out[name] = CategoricalDistribution(axis.choices)
    return out


def baseline_distributions(spec: StudySpec) -> dict[str, BaseDistribution]:
    """Baseline parameters: the grid's keys; lr on a log range that holds every extension."""
    settings = spec.default_settings
    low, high = defaults.lr_bounds(settings)
    out: dict[str, BaseDistribution] = {"lr": FloatDistribution(low, high, log=True)}
    for key, values in settings.grid.items():
        if key != "lr":
            out[key] = CategoricalDistribution(values)
    return out


def suggest(trial: optuna.Trial, dists: dict[str, BaseDistribution]) -> dict[str, Any]:
    """Ask `trial` for every parameter (an enqueued trial answers with its fixed values)."""
    params: dict[str, Any] = {}
    for name, dist in dists.items():
        if isinstance(dist, FloatDistribution):
            params[name] = trial.suggest_float(
                name, dist.low, dist.high, step=dist.step, log=dist.log
            )
        elif isinstance(dist, IntDistribution):
            params[name] = trial.suggest_int(
                name, dist.low, dist.high, step=dist.step, log=dist.log
            )
        else:
            params[name] = trial.suggest_categorical(name, dist.choices)
    return params


def check_params(spec: StudySpec, params: dict[str, Any]) -> None:
    """Stored params must match the search space (a study file edited under a running study)."""
    expected = distributions(spec)
    missing = [n for n in expected if n not in params]
    unknown = sorted(set(params) - set(expected))
    if missing or unknown:
        raise SpecError(
            f"params: do not match the search space of {spec.name!r} "
            f"(missing: {', '.join(missing) or 'none'}; unknown: {', '.join(unknown) or 'none'})"
        )


def config_from_params(spec: StudySpec, params: dict[str, Any]) -> TrainConfig:
    """The TrainConfig of a search trial with these params (e.g. `study.best_trial.params`)."""
    check_params(spec, params)
    return spec.search_config(params)


def suggest_config(trial: optuna.Trial, spec: StudySpec) -> TrainConfig:
    """Ask `trial` for every search parameter; the config comes from `config_from_params`, so a
    stored trial's params rebuild exactly the config it ran."""
    return config_from_params(spec, suggest(trial, distributions(spec)))


def fixed_space(spec: StudySpec, params: dict[str, Any]) -> dict[str, Any]:
    """`params` as fixed search_space entries: a study file with them reruns exactly that config."""
    check_params(spec, params)
    return {
        name: list(v) if isinstance(v, tuple) else v
        for name, v in axis_values(spec.search_space, params).items()
    }
