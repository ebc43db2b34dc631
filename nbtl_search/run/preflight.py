"""Checks that run before a study writes anything: data layout, layer ranges vs the model."""

from __future__ import annotations

import os
from typing import Any

from nbtl_search.study.checks import SpecError
from nbtl_search.study.spec import StudySpec
from trainer import InputError


def preflight(spec: StudySpec) -> None:
    """Build the data splits and the model's layer partition once, so that a missing dataset or a
    layer range the model cannot satisfy fails now with one line, not in every trial."""
    import timm

    from trainer.data import build_splits
    from trainer.layers import layer_partition

    cfg = spec.base_config()
    if cfg.pretrained_file and not os.path.isfile(os.path.expanduser(cfg.pretrained_file)):
        raise InputError(f"model.pretrained_file not found: {cfg.pretrained_file}")
    splits = build_splits(cfg)
    if not timm.is_model(cfg.model):
        raise SpecError(f"model.name: unknown timm model {cfg.model!r}")
    model = timm.create_model(cfg.model, num_classes=len(splits.classes))
    n = len(layer_partition(model))
    new_hi = _high(spec.search_space.get("new_layers"), cfg.new_layers)
    low_hi = _high(spec.search_space.get("num_low"), cfg.num_low)
    if new_hi > n:
        raise SpecError(f"search_space.new_layers: up to {new_hi}, but {cfg.model} has {n} layers")
    if new_hi + low_hi > n:
        raise SpecError(
            f"search_space.num_low: up to {low_hi} with new_layers up to {new_hi} "
            f"exceeds the {n} layers of {cfg.model} (need num_low <= {n} - new_layers)"
        )


def _high(axis: Any, default: int) -> int:
    """Largest value an axis can take (fixed value, int range or categorical choices)."""
    if axis is None:
        return default
    for attr in ("high", "value"):
        if getattr(axis, attr, None) is not None:
            return int(getattr(axis, attr))
    choices = getattr(axis, "choices", None)
    if choices:
        return int(max(c for c in choices if c is not None))
    return int(axis)
