"""The three *parts* of a network and the optimiser's parameter groups built from them.

With L layers counted from the top (see `trainer.layers`):

    new   = layers 1 .. new_layers                  (re-initialised)
    upper = layers new_layers+1 .. L-num_low        (transferred, above the lower cut)
    lower = layers L-num_low+1 .. L                 (the bottom `num_low` transferred layers)

Each part has its own learning rate, `lrs = (lr_new, lr_upper, lr_lower)`.

Norm parameters (the affine weight and bias of BatchNorm/GroupNorm/LayerNorm/RMSNorm... layers) and
biases get no weight decay and no L2-SP unless `reg_bn` resp. `reg_bias` includes them. A norm
layer's bias counts as a norm parameter: `reg_bn` alone decides for it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from torch import nn

from trainer.config import InputError
from trainer.layers import Layer, check_new_layers
from trainer.per_part import PARTS

_NORM_TYPES = (
    nn.modules.batchnorm._NormBase,
    nn.GroupNorm,
    nn.LayerNorm,
    nn.LocalResponseNorm,
    nn.RMSNorm,
)
# timm's own norm layers that do not subclass torch's (RmsNorm, RmsNorm2d, SimpleNorm, ...).
_NORM_NAME = re.compile(r"Norm(Act)?\d*(d)?$")


def assign_parts(layers: Sequence[Layer], new_layers: int, num_low: int) -> dict[str, str]:
    """Parameter name -> part ("new", "upper" or "lower")."""
    check_new_layers(layers, new_layers)
    top = len(layers) - new_layers
    if not 0 <= num_low <= top:
        raise InputError(
            f"num_low must be between 0 and {top} ({len(layers)} layers minus new_layers={new_layers}), "
            f"got {num_low}"
        )
    part_of: dict[str, str] = {}
    for layer in layers:
        if layer.index <= new_layers:
            part = "new"
        elif layer.index > len(layers) - num_low:
            part = "lower"
        else:
            part = "upper"
        part_of.update(dict.fromkeys(layer.param_names, part))
    return part_of


def is_norm_module(module: nn.Module) -> bool:
    return isinstance(module, _NORM_TYPES) or bool(_NORM_NAME.search(type(module).__name__))


def param_kinds(model: nn.Module) -> dict[str, str]:
    """Parameter name -> "norm" (owned by a norm layer), "bias" (any other bias) or "weight"."""
    kinds: dict[str, str] = {}
    for module_name, module in model.named_modules():
        for name, _ in module.named_parameters(recurse=False):
            full = f"{module_name}.{name}" if module_name else name
            if is_norm_module(module):
                kinds[full] = "norm"
            else:
                kinds[full] = "bias" if name == "bias" else "weight"
    return kinds


def is_regularised(kind: str, reg_bn: bool, reg_bias: bool) -> bool:
    """Whether weight decay / L2-SP applies to a parameter of this kind (see `param_kinds`)."""
    return kind == "weight" or (kind == "norm" and reg_bn) or (kind == "bias" and reg_bias)


def param_groups(
    model: nn.Module,
    part_of: dict[str, str],
    lrs: tuple[float, float, float],
    weight_decay: float,
    reg_bn: bool,
    reg_bias: bool,
) -> list[dict[str, Any]]:
    """Optimiser groups, one per non-empty (part, decayed) pair, each trainable parameter in one.

    Each group holds "params", "lr" (its part's), "weight_decay" (`weight_decay`, or 0 for norm
    parameters / biases left out by `reg_bn` / `reg_bias`), "part" and "decayed".
    """
    if len(lrs) != len(PARTS):
        raise InputError(f"lrs takes one value per part {PARTS}, got {list(lrs)}")
    kinds = param_kinds(model)
    buckets: dict[tuple[str, bool], list[nn.Parameter]] = {
        (p, d): [] for p in PARTS for d in (True, False)
    }
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        part = part_of.get(name)
        if part not in PARTS:
            raise ValueError(
                f"parameter {name} has no part (got {part!r}); build part_of with assign_parts"
            )
        buckets[(part, is_regularised(kinds[name], reg_bn, reg_bias))].append(param)
    return [
        {
            "params": params,
            "lr": lrs[PARTS.index(part)],
            "weight_decay": weight_decay if decayed else 0.0,
            "part": part,
            "decayed": decayed,
        }
        for (part, decayed), params in buckets.items()
        if params
    ]
