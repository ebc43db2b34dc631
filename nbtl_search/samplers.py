"""The study's search knobs (sampler, pruner, objective, budget, final) with their defaults, and the
Optuna sampler and pruner built from them.

Defaults: TPE, multivariate (the lrs and rates interact) with the constant liar (running trials count
as bad, so parallel workers spread out); Hyperband over epochs, from `min_resource` = 1 to the
training epochs, reduction factor 3.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import typing
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import optuna

from nbtl_search.space import grid_space
from nbtl_search.spec import SpecError, check_keys, check_type, mapping

if TYPE_CHECKING:
    from nbtl_search.spec import StudySpec

SAMPLERS = ("tpe", "random", "gp", "cmaes", "grid")
PRUNERS = ("hyperband", "median", "none")
METRICS = ("val_top1", "val_top5")
MODES = ("best", "last")
# Keys each sampler / pruner type accepts.
SAMPLER_KEYS = {"tpe": ("type", "seed", "n_startup_trials", "multivariate", "constant_liar"),
                "gp": ("type", "seed", "n_startup_trials"), "cmaes": ("type", "seed", "n_startup_trials"),
                "random": ("type", "seed"), "grid": ("type", "seed")}
PRUNER_KEYS = {"hyperband": ("type", "min_resource", "reduction_factor"),
               "median": ("type", "n_startup_trials", "n_warmup_steps"), "none": ("type",)}


def knob(default: Any, low: float | None = None, choices: tuple[str, ...] | None = None) -> Any:
    """A study knob's default, with the bound or choices `parse_knobs` checks a given value against."""
    return field(default=default, metadata={"low": low, "choices": choices})


@dataclass(frozen=True)
class SamplerSpec:
    type: str = knob("tpe", choices=SAMPLERS)
    seed: int | None = knob(None, 0)  # workers add their index, so they do not draw the same trials
    n_startup_trials: int | None = knob(None, 0)  # None: the sampler's own default
    multivariate: bool = True  # tpe
    constant_liar: bool = True  # tpe


@dataclass(frozen=True)
class PrunerSpec:
    type: str = knob("hyperband", choices=PRUNERS)
    min_resource: int = knob(1, 1)  # hyperband, in epochs; the maximum is the training epochs
    reduction_factor: int = knob(3, 2)  # hyperband
    n_startup_trials: int = knob(5, 0)  # median
    n_warmup_steps: int = knob(0, 0)  # median


@dataclass(frozen=True)
class ObjectiveSpec:
    metric: str = knob("val_top1", choices=METRICS)  # maximised
    mode: str = knob("best", choices=MODES)  # "best": the best epoch's value; "last": the last one's
    direction = "maximize"  # a class constant, not a field: both metrics are accuracies


@dataclass(frozen=True)
class BudgetSpec:
    n_trials: int = knob(50, 1)  # finished (complete or pruned) trials, over all workers
    timeout: float | None = knob(None, 1)  # seconds


@dataclass(frozen=True)
class FinalSpec:
    seeds: int = knob(3, 1)  # retrainings of the best config on train+val, for mean and spread


_SECTIONS = {"sampler": (SamplerSpec, SAMPLER_KEYS), "pruner": (PrunerSpec, PRUNER_KEYS),
             "objective": (ObjectiveSpec, None), "budget": (BudgetSpec, None), "final": (FinalSpec, None)}


def parse_knobs(data: dict, name: str) -> Any:
    """Section `name` of a study file into its dataclass; for sampler and pruner, the section's
    `type` decides which keys are allowed."""
    cls, keys_by_type = _SECTIONS[name]
    raw = mapping(name, data.get(name))
    fields = {f.name: f for f in dataclasses.fields(cls)}
    check_keys(name, raw, fields)
    hints = typing.get_type_hints(cls)
    values = {k: check_type(f"{name}.{k}", v, hints[k]) for k, v in raw.items()}
    for key, value in values.items():
        low, choices = fields[key].metadata.get("low"), fields[key].metadata.get("choices")
        if choices and value not in choices:
            raise SpecError(f"{name}.{key}: must be one of {', '.join(choices)}, got {value!r}")
        if low is not None and value is not None and value < low:
            raise SpecError(f"{name}.{key}: must be >= {low}, got {value}")
    if keys_by_type:
        kind = values.get("type", fields["type"].default)
        check_keys(name, raw, keys_by_type[kind], what=f"key for type {kind}")
    return cls(**values)


def build_sampler(spec: StudySpec, worker: int = 0) -> optuna.samplers.BaseSampler:
    """The study's sampler; `worker` (0, 1, ...) offsets the seed so parallel workers differ."""
    s = spec.sampler
    seed = None if s.seed is None else s.seed + worker
    startup = {} if s.n_startup_trials is None else {"n_startup_trials": s.n_startup_trials}
    if s.type == "tpe":
        return optuna.samplers.TPESampler(seed=seed, multivariate=s.multivariate,
                                          constant_liar=s.constant_liar, **startup)
    if s.type == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if s.type == "gp":  # needs torch and scipy, both dependencies of the project
        return optuna.samplers.GPSampler(seed=seed, **startup)
    if s.type == "cmaes":
        # Optuna imports `cmaes` only when it first samples, deep in a worker: fail here instead.
        if importlib.util.find_spec("cmaes") is None:
            raise SpecError(f"{spec.path or '<spec>'}: sampler.type: cmaes needs the `cmaes` package, "
                            "which is not installed (pip install cmaes)")
        return optuna.samplers.CmaEsSampler(seed=seed, **startup)
    return optuna.samplers.GridSampler(grid_space(spec.search_space), seed=seed)


def build_pruner(spec: StudySpec) -> optuna.pruners.BasePruner:
    """The study's pruner; Hyperband's resource is the epoch, up to the training epochs."""
    p = spec.pruner
    if p.type == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=p.min_resource,
                                              max_resource=spec.base_config().epochs,
                                              reduction_factor=p.reduction_factor)
    if p.type == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=p.n_startup_trials,
                                           n_warmup_steps=p.n_warmup_steps)
    return optuna.pruners.NopPruner()


def baseline_sampler(spec: StudySpec, worker: int = 0) -> optuna.samplers.GridSampler:
    """The grid of the default settings: parameters "lr" and "weight_decay"; a trial's config is
    `spec.default_config(params["lr"], params["weight_decay"])`."""
    seed = None if spec.sampler.seed is None else spec.sampler.seed + worker
    grid = {"lr": list(spec.default_settings["lr"]),
            "weight_decay": list(spec.default_settings["weight_decay"])}
    return optuna.samplers.GridSampler(grid, seed=seed)
