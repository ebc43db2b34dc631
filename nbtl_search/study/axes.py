"""The search axes of a study file, and how axis values become `TrainConfig` fields.

An axis is a searchable TrainConfig field (`new_layers`, `num_low`, `weight_decay`, `mixup`, `aa`,
`reprob`, `smoothing`, ...) or a rate axis (`lr`, `lr_new`, ..., `l2sp_upper`, `l2_new`, ...); rate
axes assemble TrainConfig's per-part vectors [new, upper, lower] as `trainer.per_part` says, a
missing per-part rate being 0. So L2-SP on the lower layers with L2 on the upper ones, the paper's
combination, is `l2sp_lower` + `l2_upper`. Each axis is fixed (a plain value) or a distribution in
Optuna's short form `{type: float|int|categorical, low, high, log, step, choices}`.

`allow_zero: true` on a float rate r means r = 0 or r in [low, high]. It is two Optuna parameters,
`<name>_on` (categorical True/False) and `<name>` (the float), with r = <name> if <name>_on else 0.
Both are sampled in every trial, so the space stays static: multivariate TPE, GP and CMA-ES model a
fixed set of parameters and fall back to independent sampling when parameters come and go.

Which fields cannot be searched follows from their role in `trainer.config` (data, model, seed,
execution, evaluation and test fields; `epochs`, the pruner's resource; the per-part vectors, which
are searched through the axes above). This module knows nothing of Optuna.
"""

from __future__ import annotations

import decimal
import itertools
import typing
from dataclasses import dataclass
from typing import Any

from trainer import per_part
from trainer.config import InputError, TrainConfig, field_flag, fields_with_role

from .checks import FIELD_HINTS, SpecError, check_keys, check_type, describe, mapping

PART_LRS = per_part.PART_AXES["lrs"]  # in TrainConfig's order: new, upper, lower
PART_L2SP = per_part.PART_AXES["l2sp_rates"]
RATE_AXES = per_part.RATE_AXES

_WHY_NOT = {
    "data": "set it in the dataset section",
    "location": "set it in the dataset section",
    "model": "set it in the model section",
    "seed": "fix it in train (the final evaluation runs several seeds)",
    "execution": "an execution setting, not a hyperparameter",
    "evaluation": "set by the final evaluation",
    "test": "a test knob; fix it in train",
}
_VECTOR_AXES = {
    "lrs": "search lr, or lr_new + lr_upper + lr_lower",
    "l2sp_rates": "search l2sp, or l2sp_upper / l2sp_lower",
    "l2_rates": "search l2_new / l2_upper / l2_lower",
}
NOT_SEARCHABLE = {
    **{name: why for role, why in _WHY_NOT.items() for name in fields_with_role(role)},
    **{
        name: "fixed for a whole study (the pruner's resource); set it in train"
        for name in FIELD_HINTS
        if not field_flag(name, "searchable")
    },
    **_VECTOR_AXES,
}
_DIST_KEYS = {
    "float": ("type", "low", "high", "log", "step", "allow_zero"),
    "int": ("type", "low", "high", "log", "step"),
    "categorical": ("type", "choices"),
}


def searchable_axes() -> list[str]:
    return [*RATE_AXES, *(f for f in FIELD_HINTS if f not in NOT_SEARCHABLE)]


@dataclass(frozen=True)
class Axis:
    """One search_space entry: "fixed" (value), "float" / "int" (low, high, log, step; a float may
    allow_zero) or "categorical" (choices)."""

    kind: str
    value: Any = None
    low: Any = None
    high: Any = None
    log: bool = False
    step: Any = None
    allow_zero: bool = False
    choices: tuple = ()

    def extremes(self) -> list[tuple[str, Any]]:
        """(sub-path, value) of every value that must make a valid TrainConfig."""
        if self.kind == "fixed":
            return [("", self.value)]
        if self.kind == "categorical":
            return [(f".choices[{i}]", c) for i, c in enumerate(self.choices)]
        zero = [(".allow_zero", 0.0)] if self.allow_zero else []
        return [(".low", self.low), (".high", self.high), *zero]


# --- parsing -------------------------------------------------------------------------------------


def parse_search_space(raw: Any, train: dict[str, Any]) -> dict[str, Axis]:
    axes = {}
    for name, entry in mapping("search_space", raw).items():
        path = f"search_space.{name}"
        axes[name] = _parse_axis(path, entry, _axis_hint(path, name))
    _check_combinations(axes, train)
    return axes


def _axis_hint(path: str, name: Any) -> Any:
    if name in RATE_AXES:
        return float
    if name in NOT_SEARCHABLE:
        raise SpecError(f"{path}: cannot be searched: {NOT_SEARCHABLE[name]}")
    if name not in FIELD_HINTS:
        raise SpecError(f"{path}: unknown axis; known: {', '.join(searchable_axes())}")
    return FIELD_HINTS[name]


def _parse_axis(path: str, entry: Any, hint: Any) -> Axis:
    if not isinstance(entry, dict):
        return Axis("fixed", value=check_type(path, entry, hint))
    kind = entry.get("type")
    if not isinstance(kind, str) or kind not in _DIST_KEYS:
        raise SpecError(f"{path}.type: must be float, int or categorical, got {describe(kind)}")
    check_keys(path, entry, _DIST_KEYS[kind])
    if kind == "categorical":
        return Axis("categorical", choices=_choices(path, entry.get("choices"), hint))
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    hint = args[0] if len(args) == 1 else hint  # `float | None` takes a float range too
    if hint is not (float if kind == "float" else int):
        fits = {float: "float or categorical", int: "int or categorical"}.get(hint, "categorical")
        raise SpecError(
            f"{path}.type: {kind} does not fit this axis ({_hint_name(hint)}); use type: {fits}"
        )
    num = float if kind == "float" else int
    for key in ("low", "high"):
        if key not in entry:
            raise SpecError(f"{path}.{key}: required for type: {kind}")
    low, high = (check_type(f"{path}.{k}", entry[k], num) for k in ("low", "high"))
    log = check_type(f"{path}.log", entry.get("log", False), bool)
    step = check_type(f"{path}.step", entry.get("step"), num | None)
    allow_zero = check_type(f"{path}.allow_zero", entry.get("allow_zero", False), bool)
    if low > high:
        raise SpecError(f"{path}.low: must be <= high ({high}), got {low}")
    if log and low <= 0:
        raise SpecError(f"{path}.low: must be > 0 with log: true, got {low}")
    if step is not None and step <= 0:
        raise SpecError(f"{path}.step: must be > 0, got {step}")
    if step is not None and log:
        raise SpecError(
            f"{path}.step: cannot be combined with log: true (Optuna samples one or the other)"
        )
    return Axis(kind, low=low, high=high, log=log, step=step, allow_zero=allow_zero)


def _choices(path: str, choices: Any, hint: Any) -> tuple:
    if not isinstance(choices, list) or not choices:
        raise SpecError(f"{path}.choices: must be a non-empty list, got {describe(choices)}")
    out = []
    for i, choice in enumerate(choices):
        if choice is not None and not isinstance(choice, (bool, int, float, str)):
            raise SpecError(
                f"{path}.choices[{i}]: must be a scalar (null, true/false, a number or a "
                f"string), got {describe(choice)}"
            )
        out.append(check_type(f"{path}.choices[{i}]", choice, hint))
    if len(set(out)) < len(out):
        raise SpecError(f"{path}.choices: lists a value twice: {out}")
    return tuple(out)


def _hint_name(hint: Any) -> str:
    return getattr(hint, "__name__", None) or str(hint)


def _check_combinations(axes: dict[str, Axis], train: dict[str, Any]) -> None:
    lrs = [n for n in PART_LRS if n in axes]
    if lrs and len(lrs) < 3:
        missing = next(n for n in PART_LRS if n not in axes)
        raise SpecError(
            f"search_space.{missing}: required with {', '.join(lrs)}: per-part learning "
            "rates come as lr_new, lr_upper and lr_lower together (or give one lr)"
        )
    if lrs and "lr" in axes:
        raise SpecError(
            "search_space.lr: not together with lr_new, lr_upper, lr_lower; "
            "give one lr or the three"
        )
    rates = [n for n in PART_L2SP if n in axes]
    if rates and "l2sp" in axes:
        raise SpecError(
            f"search_space.l2sp: not together with {', '.join(rates)}; give one l2sp "
            "(every part) or per-part rates"
        )
    if "l2sp" in axes and "l2_new" in axes:
        raise SpecError(
            "search_space.l2_new: not together with l2sp, which already pulls the new "
            "layers towards zero; use l2sp_upper / l2sp_lower with l2_new"
        )
    for name in axes:
        target = RATE_AXES.get(name, name)
        if target in train:
            raise SpecError(
                f"search_space.{name}: {target} is also fixed in train.{target}; "
                "give it in one place"
            )


def check_configs(axes: dict[str, Axis], base: dict[str, Any]) -> None:
    """Every fixed value, range end and choice must make a valid TrainConfig on top of `base` (the
    study's fixed fields), so a bad value fails at load time, not in trial 37. Each value is tried
    alone first (so the error names its own axis), then all axes together at their first values."""
    for name, axis in axes.items():
        for sub, value in axis.extremes():
            # a per-part lr needs its two siblings to make `lrs`: give them the same value
            alone = dict.fromkeys(PART_LRS, value) if name in PART_LRS else {name: value}
            _try_config(f"search_space.{name}{sub}", base, alone)
    first = {name: axis.extremes()[0][1] for name, axis in axes.items()}
    _try_config("search_space", base, first)


def _try_config(path: str, base: dict[str, Any], values: dict[str, Any]) -> None:
    try:
        TrainConfig(**{**base, **fields_from_values(values)})
    except InputError as e:
        raise SpecError(f"{path}: {e}") from None


def grid_space(axes: dict[str, Axis]) -> dict[str, list]:
    """The values of a grid: categorical choices and every int of an int range (fixed axes have
    none: they are not parameters)."""
    out = {}
    for name, axis in axes.items():
        if axis.kind == "categorical":
            out[name] = list(axis.choices)
        elif axis.kind == "int":
            out[name] = list(range(axis.low, axis.high + 1, axis.step or 1))
        elif axis.kind == "float":
            raise SpecError(
                f"search_space.{name}: the grid sampler needs discrete axes and this is a "
                "float range; list its values instead (type: categorical, choices: [...])"
            )
    return out


def grid_points(axes: dict[str, Axis]) -> list[dict[str, Any]]:
    """Every point of the grid, in a fixed order (the first axis varies slowest)."""
    space = grid_space(axes)
    return [dict(zip(space, values)) for values in itertools.product(*space.values())]


# --- values -> configs ---------------------------------------------------------------------------


def fields_from_values(values: dict[str, Any]) -> dict[str, Any]:
    """Axis values -> TrainConfig keyword arguments (rate axes assembled into the part vectors,
    `trainer.per_part.vectors_from_axes`)."""
    out = {k: v for k, v in values.items() if k not in RATE_AXES}
    return {**out, **per_part.vectors_from_axes(values)}


def values_from_fields(fields: dict[str, Any]) -> dict[str, Any]:
    """TrainConfig fields -> axis values, the inverse of `fields_from_values`, in every form a study
    can search: the per-part rates, and `lr` / `l2sp` as the new / upper part's value."""
    out = {k: v for k, v in fields.items() if k not in per_part.VECTORS}
    return {**out, **per_part.axes_from_vectors(fields)}


def axis_values(axes: dict[str, Axis], params: dict[str, Any]) -> dict[str, Any]:
    """Every axis's value: fixed ones from the study file, the others from the trial's `params`
    (an `allow_zero` axis reads its `<name>_on` switch)."""
    values = {}
    for name, axis in axes.items():
        if axis.kind == "fixed":
            values[name] = axis.value
        elif axis.allow_zero and not params[f"{name}_on"]:
            values[name] = 0.0
        elif axis.kind == "float" and axis.step is not None:
            # Optuna returns low + k*step in binary floating point (0.30000000000000004): round
            # to the step's decimals so configs and printed study files show 0.3
            values[name] = round(params[name], -decimal.Decimal(str(axis.step)).as_tuple().exponent)
        else:
            values[name] = params[name]
    return values
