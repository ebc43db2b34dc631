"""The study's search knobs (sampler, pruner, objective, budget, final) and their defaults.

Each knob is a dataclass field whose metadata carries the bound or the choices that
`parse_knobs` checks a given value against, so a knob's default and its limits live together.
Defaults: TPE, multivariate (the lrs and rates interact) with the constant liar (running trials
count as bad, so parallel workers spread out); Hyperband over epochs, reduction factor 3.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from typing import Any

from .checks import SpecError, check_keys, check_type, mapping

SAMPLERS = ("tpe", "random", "gp", "cmaes", "grid")
PRUNERS = ("hyperband", "median", "none")
METRICS = ("val_top1", "val_top5")
MODES = ("best", "last")
# Keys each sampler / pruner type accepts.
SAMPLER_KEYS = {
    "tpe": ("type", "seed", "n_startup_trials", "multivariate", "constant_liar"),
    "gp": ("type", "seed", "n_startup_trials"),
    "cmaes": ("type", "seed", "n_startup_trials"),
    "random": ("type", "seed"),
    "grid": ("type", "seed"),
}
PRUNER_KEYS = {
    "hyperband": ("type", "min_resource", "reduction_factor"),
    "median": ("type", "n_startup_trials", "n_warmup_steps"),
    "none": ("type",),
}


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
    mode: str = knob(
        "best", choices=MODES
    )  # "best": the best epoch's value; "last": the last one's
    direction = "maximize"  # a class constant, not a field: both metrics are accuracies


@dataclass(frozen=True)
class BudgetSpec:
    n_trials: int = knob(50, 1)  # finished (complete or pruned) trials, over all workers
    timeout: float | None = knob(None, 1)  # seconds per worker


@dataclass(frozen=True)
class FinalSpec:
    seeds: int = knob(3, 1)  # retrainings per config on train+val, for the mean and the CI
    top_k: int = knob(1, 1)  # search configs retrained; > 1 makes the ensemble of several configs
    # Re-ranking before `final`: the top `rerank_top_k` configs of the search and of the baseline
    # run again on train -> val with `rerank_seeds` more seeds each; the best mean wins (0 = off).
    rerank_top_k: int = knob(3, 0)
    rerank_seeds: int = knob(2, 0)


@dataclass(frozen=True)
class ProbeSpec:
    # Enqueue the stored probe's suggestion (`nbtl-search probe`) as the search's first trial and
    # the default settings as its second, when the search starts with no trial yet.
    enqueue: bool = False


SECTIONS: dict[str, tuple[type, dict[str, tuple[str, ...]] | None]] = {
    "sampler": (SamplerSpec, SAMPLER_KEYS),
    "pruner": (PrunerSpec, PRUNER_KEYS),
    "objective": (ObjectiveSpec, None),
    "budget": (BudgetSpec, None),
    "final": (FinalSpec, None),
    "probe": (ProbeSpec, None),
}


def parse_knobs(data: dict, name: str) -> Any:
    """Section `name` of a study file into its dataclass; for sampler and pruner, the section's
    `type` decides which keys are allowed."""
    cls, keys_by_type = SECTIONS[name]
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
