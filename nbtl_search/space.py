"""The search space: study-file axes -> Optuna parameters -> `TrainConfig`.

An axis is a TrainConfig field (`new_layers`, `num_low`, `weight_decay`, `mixup`, `aa`, `reprob`,
`smoothing`, ...) or a rate axis; rate axes assemble TrainConfig's per-part vectors, indexed
[new, upper, lower]:

    lrs        = (lr,)    or  (lr_new, lr_upper, lr_lower)
    l2sp_rates = (l2sp,)  or  (l2_new, l2sp_upper, l2sp_lower), a missing per-part rate = 0

(`l2_new` pulls the re-initialised layers towards zero, the other two pull towards the pre-trained
weights.) Each axis is fixed (a plain value) or a distribution in Optuna's short form
`{type: float|int|categorical, low, high, log, step, choices}`.

`allow_zero: true` on a float rate r means r = 0 or r in [low, high]. It is two Optuna parameters,
`<name>_on` (categorical True/False) and `<name>` (the float), with r = <name> if <name>_on else 0.
Both are sampled in every trial, so the space stays static: multivariate TPE, GP and CMA-ES model a
fixed set of parameters and fall back to independent sampling when parameters come and go.

Not searchable: the dataset and model sections (what is trained), `seed` (fixed in train; the final
evaluation varies it), `epochs` (the pruner's resource), execution and test knobs.
"""

from __future__ import annotations

import decimal
import typing
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import optuna
from optuna.distributions import (BaseDistribution, CategoricalDistribution, FloatDistribution,
                                  IntDistribution)

from nbtl_search.spec import (DATASET_KEYS, EXECUTION_FIELDS, FIELD_HINTS, MODEL_KEYS, SpecError,
                              check_keys, check_type, describe, mapping)
from trainer.config import InputError, TrainConfig

if TYPE_CHECKING:
    from nbtl_search.spec import StudySpec

PART_LRS = ("lr_new", "lr_upper", "lr_lower")  # in TrainConfig's order: new, upper, lower
PART_RATES = ("l2_new", "l2sp_upper", "l2sp_lower")
RATE_AXES = {"lr": "lrs", "l2sp": "l2sp_rates", **dict.fromkeys(PART_LRS, "lrs"),
             **dict.fromkeys(PART_RATES, "l2sp_rates")}  # axis -> the TrainConfig field it fills
NOT_SEARCHABLE = {
    **dict.fromkeys(DATASET_KEYS.values(), "set it in the dataset section"),
    **dict.fromkeys(MODEL_KEYS.values(), "set it in the model section"),
    **dict.fromkeys(EXECUTION_FIELDS, "an execution setting, not a hyperparameter"),
    "seed": "fix it in train (the final evaluation runs several seeds)",
    "epochs": "it is the pruner's resource; fix it in train",
    "lrs": "search lr, or lr_new + lr_upper + lr_lower",
    "l2sp_rates": "search l2sp, or l2_new / l2sp_upper / l2sp_lower",
    **dict.fromkeys(("train_split", "eval_test", "save_test_predictions"), "set by the final evaluation"),
    **dict.fromkeys(("limit_train_batches", "limit_eval_batches"), "a test knob; fix it in train"),
}
_DIST_KEYS = {"float": ("type", "low", "high", "log", "step", "allow_zero"),
              "int": ("type", "low", "high", "log", "step"), "categorical": ("type", "choices")}


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


# --- parsing (called by nbtl_search.spec while it loads a study) ---------------------------------

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
        raise SpecError(f"{path}.type: {kind} does not fit this axis ({_hint_name(hint)}); "
                        f"use type: {fits}")
    num = float if kind == "float" else int
    for key in ("low", "high"):
        if key not in entry:
            raise SpecError(f"{path}.{key}: required for type: {kind}")
    low, high = (check_type(f"{path}.{k}", entry[k], num) for k in ("low", "high"))
    log = check_type(f"{path}.log", entry.get("log", False), bool)
    step = check_type(f"{path}.step", entry.get("step"), typing.Optional[num])
    allow_zero = check_type(f"{path}.allow_zero", entry.get("allow_zero", False), bool)
    if low > high:
        raise SpecError(f"{path}.low: must be <= high ({high}), got {low}")
    if log and low <= 0:
        raise SpecError(f"{path}.low: must be > 0 with log: true, got {low}")
    if step is not None and step <= 0:
        raise SpecError(f"{path}.step: must be > 0, got {step}")
    if step is not None and log:
        raise SpecError(f"{path}.step: cannot be combined with log: true (Optuna samples one or the other)")
    return Axis(kind, low=low, high=high, log=log, step=step, allow_zero=allow_zero)


def _choices(path: str, choices: Any, hint: Any) -> tuple:
    if not isinstance(choices, list) or not choices:
        raise SpecError(f"{path}.choices: must be a non-empty list, got {describe(choices)}")
    out = []
    for i, choice in enumerate(choices):
        if choice is not None and not isinstance(choice, (bool, int, float, str)):
            raise SpecError(f"{path}.choices[{i}]: must be a scalar (null, true/false, a number or a "
                            f"string), got {describe(choice)}")
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
        raise SpecError(f"search_space.{missing}: required with {', '.join(lrs)}: per-part learning "
                        "rates come as lr_new, lr_upper and lr_lower together (or give one lr)")
    if lrs and "lr" in axes:
        raise SpecError("search_space.lr: not together with lr_new, lr_upper, lr_lower; "
                        "give one lr or the three")
    rates = [n for n in PART_RATES if n in axes]
    if rates and "l2sp" in axes:
        raise SpecError(f"search_space.l2sp: not together with {', '.join(rates)}; give one l2sp "
                        "(every part) or per-part rates")
    for name in axes:
        target = RATE_AXES.get(name, name)
        if target in train:
            raise SpecError(f"search_space.{name}: {target} is also fixed in train.{target}; "
                            "give it in one place")


def check_configs(spec: StudySpec) -> None:
    """Every fixed value, range end and choice must make a valid TrainConfig, so a bad value fails at
    load time, not in trial 37. Each value is tried alone first (so the error names its own axis),
    then all axes together at their first values."""
    base = spec.base_fields()
    for name, axis in spec.search_space.items():
        for sub, value in axis.extremes():
            # a per-part lr needs its two siblings to make `lrs`: give them the same value
            alone = dict.fromkeys(PART_LRS, value) if name in PART_LRS else {name: value}
            _try_config(f"search_space.{name}{sub}", base, alone)
    first = {name: axis.extremes()[0][1] for name, axis in spec.search_space.items()}
    _try_config("search_space", base, first)


def _try_config(path: str, base: dict[str, Any], values: dict[str, Any]) -> None:
    try:
        TrainConfig(**{**base, **fields_from_values(values)})
    except InputError as e:
        raise SpecError(f"{path}: {e}") from None


def grid_space(axes: dict[str, Axis]) -> dict[str, list]:
    """The grid sampler's space: categorical choices and every int of an int range."""
    out = {}
    for name, axis in axes.items():
        if axis.kind == "categorical":
            out[name] = list(axis.choices)
        elif axis.kind == "int":
            out[name] = list(range(axis.low, axis.high + 1, axis.step or 1))
        elif axis.kind == "float":
            raise SpecError(f"search_space.{name}: the grid sampler needs discrete axes and this is a "
                            "float range; list its values instead (type: categorical, choices: [...])")
    return out


# --- trials -> configs ---------------------------------------------------------------------------

def fields_from_values(values: dict[str, Any]) -> dict[str, Any]:
    """Axis values -> TrainConfig keyword arguments (rate axes assembled into lrs / l2sp_rates)."""
    out = {k: v for k, v in values.items() if k not in RATE_AXES}
    if "lr" in values:
        out["lrs"] = (values["lr"],)
    elif "lr_new" in values:
        out["lrs"] = tuple(values[n] for n in PART_LRS)
    if "l2sp" in values:
        out["l2sp_rates"] = (values["l2sp"],)
    elif any(n in values for n in PART_RATES):
        out["l2sp_rates"] = tuple(values.get(n, 0.0) for n in PART_RATES)
    return out


def distributions(spec: StudySpec) -> dict[str, BaseDistribution]:
    """Optuna parameter name -> distribution, in study-file order; fixed axes have none."""
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


def suggest_config(trial: optuna.Trial, spec: StudySpec) -> TrainConfig:
    """Ask `trial` for every parameter of the space; the config comes from `config_from_params`, so a
    stored trial's params rebuild exactly the config it ran."""
    params: dict[str, Any] = {}
    for name, dist in distributions(spec).items():
        if isinstance(dist, FloatDistribution):
            params[name] = trial.suggest_float(name, dist.low, dist.high, step=dist.step, log=dist.log)
        elif isinstance(dist, IntDistribution):
            params[name] = trial.suggest_int(name, dist.low, dist.high, step=dist.step, log=dist.log)
        else:
            params[name] = trial.suggest_categorical(name, dist.choices)
    return config_from_params(spec, params)


def axis_values(spec: StudySpec, params: dict[str, Any]) -> dict[str, Any]:
    """Every axis's value: fixed ones from the spec, the others from Optuna `params`."""
    expected = distributions(spec)
    missing = [n for n in expected if n not in params]
    unknown = sorted(set(params) - set(expected))
    if missing or unknown:
        raise SpecError(f"params: do not match the search space of {spec.name!r} "
                        f"(missing: {', '.join(missing) or 'none'}; unknown: {', '.join(unknown) or 'none'})")
    values = {}
    for name, axis in spec.search_space.items():
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


def config_from_params(spec: StudySpec, params: dict[str, Any]) -> TrainConfig:
    """The TrainConfig of a trial with these params (e.g. `study.best_trial.params`)."""
    return spec.base_config(**fields_from_values(axis_values(spec, params)))


def params_to_yaml_space(spec: StudySpec, params: dict[str, Any]) -> dict[str, Any]:
    """`params` as fixed search_space entries: a study file with them reruns exactly that config."""
    return {name: list(v) if isinstance(v, tuple) else v for name, v in axis_values(spec, params).items()}
