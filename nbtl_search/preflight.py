"""Checks that run before a study writes anything: slots, data layout, layer ranges vs the model."""

from __future__ import annotations

import argparse
import os
from typing import Any

from trainer import InputError

from .launcher import Slot, cpu_slots, gpu_slots
from .checks import SpecError
from .spec import StudySpec


def slots_from_args(args: argparse.Namespace) -> list[Slot]:
    device = args.device
    if device is None:
        device = "cuda" if args.gpus or _gpu_count() else "cpu"
    if device == "cpu":
        if args.gpus:
            raise InputError("--gpus needs --device cuda (or no --device)")
        return cpu_slots(args.workers or 1)
    available = _gpu_count()
    if available == 0:
        raise InputError("--device cuda, but no GPU is visible here; use --device cpu --workers N")
    try:
        gpus = [int(g) for g in args.gpus.split(",")] if args.gpus else list(range(available))
    except ValueError:
        raise InputError(f"--gpus takes comma-separated GPU indices, got {args.gpus!r}") from None
    missing = [g for g in gpus if not 0 <= g < available]
    if missing:
        raise InputError(f"--gpus names GPU {missing[0]}, but only {available} GPU(s) exist "
                         f"(0..{available - 1})")
    return gpu_slots(gpus, args.per_gpu)


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
        raise SpecError(f"search_space.num_low: up to {low_hi} with new_layers up to {new_hi} "
                        f"exceeds the {n} layers of {cfg.model} (need num_low <= {n} - new_layers)")


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


def _gpu_count() -> int:
    import torch

    return torch.cuda.device_count()
