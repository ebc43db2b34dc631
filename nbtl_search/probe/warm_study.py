"""A copy of a study file that starts from the probe's suggestion (`probe --suggest`)."""

from __future__ import annotations

import dataclasses

import yaml

from nbtl_search.study.sections import PRUNER_KEYS, SAMPLER_KEYS
from nbtl_search.study.spec import StudySpec

from .rule import suggested_values


def warm_study_yaml(spec: StudySpec, suggestion: dict) -> str:
    """A copy of the study that starts from the suggestion (`probe.enqueue`) with the ranges it
    sets narrowed around it: new_layers +-1, learning and regularisation rates x/÷ 3."""
    values = suggested_values(suggestion)
    space = {}
    for name, axis in spec.search_space.items():
        value = values.get(name)
        space[name] = _narrowed(axis, value) if value is not None else _as_yaml(axis)
    doc = {
        "name": f"{spec.name}-warm",
        "storage": spec.storage,
        "dataset": spec.dataset,
        "model": spec.model,
        "train": spec.train,
        "search_space": space,
        "sampler": _knobs(spec.sampler, SAMPLER_KEYS[spec.sampler.type]),
        "pruner": _knobs(spec.pruner, PRUNER_KEYS[spec.pruner.type]),
        "budget": _knobs(spec.budget, ("n_trials", "timeout")),
        "probe": {"enqueue": True},
    }
    header = (
        f"# {spec.name} narrowed around its probe's suggestion; `nbtl-search probe` this file "
        "once, then `run` it: the suggestion and the default settings are its first trials\n"
    )
    return header + yaml.safe_dump(doc, sort_keys=False)


def _knobs(knobs, keys: tuple[str, ...]) -> dict:
    return {k: v for k, v in dataclasses.asdict(knobs).items() if k in keys and v is not None}


def _narrowed(axis, value) -> dict | object:
    if axis.kind == "int":
        return {
            "type": "int",
            "low": max(axis.low, int(value) - 1),
            "high": min(axis.high, int(value) + 1),
        }
    if axis.kind == "float" and value > 0:
        low, high = (
            (max(axis.low, value / 3), min(axis.high, value * 3))
            if axis.log
            else (
                max(axis.low, value - (axis.high - axis.low) / 4),
                min(axis.high, value + (axis.high - axis.low) / 4),
            )
        )
        if low <= high:
            return {
                "type": "float",
                "low": float(f"{low:.3g}"),
                "high": float(f"{high:.3g}"),
                "log": axis.log,
                "allow_zero": axis.allow_zero,
            }
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
