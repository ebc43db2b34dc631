"""The three *parts* of a network and the optimiser's parameter groups built from them.

With L layers counted from the top (see `trainer.layers`):

    new   = layers 1 .. new_layers                  (re-initialised)
    upper = layers new_layers+1 .. L-num_low        (transferred, above the lower cut)
    lower = layers L-num_low+1 .. L                 (the bottom `num_low` transferred layers)

Each part has its own learning rate, `lrs = (lr_new, lr_upper, lr_lower)`. With
`lr_new_classifier_only`, lr_new is the classifier's alone (the module timm's `get_classifier()`
returns) and the other re-initialised layers train at lr_upper, as in the paper's code (its
optim_factory.py gives `lr[0]` to the parameters named "linear" only); they stay in the new part for
L2-SP/L2, as they do there (its l2sp.py regularises re-initialised blocks with the classifier's L2).

Norm parameters (the affine weight and bias of BatchNorm/GroupNorm/LayerNorm/RMSNorm... layers) and
biases get no weight decay unless `wd_bn` resp. `wd_bias` includes them, and no L2-SP/L2 unless
`reg_bn` resp. `reg_bias` does (`trainer.regularize`): the paper's code decays every parameter but
leaves BatchNorm out of L2-SP/L2. A norm layer's bias counts as a norm parameter: the `*_bn` switch
alone decides for it.
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


def is_regularised(kind: str, norm: bool, bias: bool) -> bool:
    """Whether a term that takes in norm parameters if `norm` and biases if `bias` (weight decay:
    `wd_bn`, `wd_bias`; L2-SP/L2: `reg_bn`, `reg_bias`) applies to a parameter of this kind."""
    return kind == "weight" or (kind == "norm" and norm) or (kind == "bias" and bias)


def classifier_params(model: nn.Module) -> set[str]:
    """Names of the classifier's parameters: those of the module timm's `get_classifier()` returns."""
    get = getattr(model, "get_classifier", None)
    head = get() if callable(get) else None
    names: set[str] = set()
    if isinstance(head, nn.Module):
        name = next((n for n, m in model.named_modules() if m is head), None)
        if name is not None:
            prefix = f"{name}." if name else ""
            names = {prefix + n for n, _ in head.named_parameters()}
    if names:
        return names
    raise InputError(
        f"lr_new_classifier_only: {type(model).__name__} has no classifier with parameters "
        "(timm's get_classifier())"
    )


def lr_parts(model: nn.Module, part_of: dict[str, str]) -> dict[str, str]:
    """Parameter name -> the part whose lr it trains at, with `lr_new_classifier_only`: the new
    part's parameters outside the classifier move to "upper"."""
    classifier = classifier_params(model)
    return {
        n: "upper" if part == "new" and n not in classifier else part for n, part in part_of.items()
    }


def param_groups(
    model: nn.Module,
    part_of: dict[str, str],
    lrs: tuple[float, float, float],
    weight_decay: float,
    wd_bn: bool,
    wd_bias: bool,
    classifier_only: bool = False,
) -> list[dict[str, Any]]:
    """Optimiser groups, one per non-empty (part, decayed) pair, each trainable parameter in one.

    Each group holds "params", "lr" (its part's), "weight_decay" (`weight_decay`, or 0 for norm
    parameters / biases left out by `wd_bn` / `wd_bias`), "part" and "decayed". With
    `classifier_only` (`lr_new_classifier_only`) "part" is the part whose lr a parameter trains at
    (`lr_parts`): the re-initialised layers outside the classifier are in the "upper" groups.
    """
    if len(lrs) != len(PARTS):
        raise InputError(f"lrs takes one value per part {PARTS}, got {list(lrs)}")
    if classifier_only:
        part_of = lr_parts(model, part_of)
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
        buckets[(part, is_regularised(kinds[name], wd_bn, wd_bias))].append(param)
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
