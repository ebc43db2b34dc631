"""The model's ordered *layers* (counted from the top) and re-initialisation of the top `new_layers`.

A layer is one unit of a block partition of the model's parameters; layer 1 is the classifier.

- Inception-v4 (timm `inception_v4`): the classifier, then the 22 entries of `model.features` from the
  top (layer 2 = `features.21`, the last Inception-C block; layer 23 = `features.0`). timm's own
  matcher merges `features.0-2` into one stem group, which would make the paper's layer counts wrong.
- Any other timm model: timm's coarse `group_matcher` (the grouping timm uses for layer-wise lr
  decay), blocks in order with the head last, reversed so that layer 1 is the head.

Re-initialisation (`reinit_layers`) uses the modules' own initialisation:

1. `reset_parameters()` of every module that directly owns parameters of the re-initialised layers
   (torch's default init for Linear/Conv/BatchNorm/LayerNorm..., which also resets BatchNorm's
   running statistics);
2. then, like the model constructor, the model-level init where the model has one (`_model_init`):
   timm ResNets get `init_weights(zero_init_last=True)` restricted to the re-initialised modules
   (Kaiming-normal fan-out convolutions, zero last BN gamma of each residual block — timm's default);
   models with a per-module `_init_weights(m)` method (ViT-like timm models) get it applied to each
   re-initialised module. Inception-v4 has no model-level init: step 1 is exactly its constructor's init.

A parameter whose owning module has no `reset_parameters()` (e.g. a ViT's bare `pos_embed`, or a
layer-scale `gamma`) is an `InputError`, never silently left at its pre-trained value.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from trainer.config import InputError


@dataclass(frozen=True)
class Layer:
    index: int  # 1 = top (the classifier)
    name: str  # e.g. "head", "features.21", "layer4"
    param_names: tuple[str, ...]
    module_names: tuple[str, ...]  # modules owning the parameters directly ("" = the model itself)


def layer_partition(model: nn.Module) -> tuple[Layer, ...]:
    """The model's layers ordered from the top (index 1 = classifier); every parameter in exactly one."""
    groups = _inception_v4_groups(model) if _is_inception_v4(model) else _timm_groups(model)
    owners = _owning_modules(model)
    return tuple(
        Layer(
            index=i,
            name=name,
            param_names=tuple(names),
            module_names=tuple(dict.fromkeys(owners[n] for n in names)),
        )
        for i, (name, names) in enumerate(groups, start=1)
    )


def check_new_layers(layers: Sequence[Layer], new_layers: int) -> None:
    if not 1 <= new_layers <= len(layers):
        raise InputError(
            f"new_layers must be between 1 and {len(layers)} (the model's layer count), got {new_layers}"
        )


def reinit_layers(model: nn.Module, layers: Sequence[Layer], new_layers: int, seed: int) -> None:
    """Re-initialise exactly the parameters of the top `new_layers` layers, reproducibly from `seed`.

    Runs under `torch.random.fork_rng`, so the caller's RNG streams are left as they were.
    """
    check_new_layers(layers, new_layers)
    layers = sorted(layers, key=lambda layer: layer.index)
    chosen = {n for layer in layers[:new_layers] for n in layer.param_names}
    modules = dict(model.named_modules())

    # Modules whose whole parameter subtree is re-initialised: the model-level init may touch them.
    in_scope = []
    for name, m in modules.items():
        params = _subtree_params(name, m)
        if name and params and params <= chosen:
            in_scope.append(m)
    owners = _owning_modules(model)
    resettable = {
        name
        for name in dict.fromkeys(owners[n] for n in chosen)
        if name
        and hasattr(modules[name], "reset_parameters")
        and _subtree_params(name, modules[name], recurse=False) <= chosen
    }
    uncovered = sorted(n for n in chosen if owners[n] not in resettable)
    if uncovered:
        raise InputError(
            f"cannot re-initialise {', '.join(uncovered)} of {type(model).__name__}: no owning module "
            f"with reset_parameters() inside the top {new_layers} layers; use fewer new_layers"
        )
    model_init = _model_init(model)

    devices = sorted({p.device.index or 0 for p in model.parameters() if p.device.type == "cuda"})
    with torch.random.fork_rng(devices=devices), torch.no_grad():
        # Seed only the generators the init uses: torch.manual_seed would also queue a lazy seed for
        # CUDA when CUDA is not initialised yet, changing the RNG of a later CUDA run.
        torch.random.default_generator.manual_seed(seed)
        for d in devices:
            with torch.cuda.device(d):
                torch.cuda.manual_seed(seed)
        for layer in layers[:new_layers]:
            for name in layer.module_names:
                modules[name].reset_parameters()
        if model_init is not None:
            model_init(model, in_scope)


# --- partitions ---------------------------------------------------------------------------------


def _is_inception_v4(model: nn.Module) -> bool:
    from timm.models.inception_v4 import InceptionV4

    return isinstance(model, InceptionV4)


def _inception_v4_groups(model: nn.Module) -> list[tuple[str, list[str]]]:
    names = [n for n, _ in model.named_parameters()]
    blocks = [f"features.{i}" for i in range(len(model.features))]
    groups = [("head", [n for n in names if not n.startswith("features.")])]
    for block in reversed(blocks):
        groups.append((block, [n for n in names if n.startswith(block + ".")]))
    return groups


def _timm_groups(model: nn.Module) -> list[tuple[str, list[str]]]:
    from timm.models import group_parameters

    matcher = getattr(model, "group_matcher", None)
    if not callable(matcher):
        raise InputError(
            f"{type(model).__name__} has no layer partition: it is neither Inception-v4 nor a timm model "
            f"with a group_matcher"
        )
    by_id = group_parameters(model, matcher(coarse=True))
    groups = [by_id[k] for k in sorted(by_id) if by_id[k]]
    if len(groups) < 2:
        raise InputError(
            f"{type(model).__name__} has no layer partition: timm's group_matcher gives a single group"
        )
    counts = _subtree_counts(model)
    top_first = list(reversed(groups))
    return [
        ("head" if i == 0 else _group_name(g, counts, bottom=i == len(top_first) - 1), g)
        for i, g in enumerate(top_first)
    ]


def _group_name(names: list[str], counts: dict[str, int], bottom: bool) -> str:
    """The shortest module holding exactly these parameters; else one such name per top-level module."""
    whole = _exact_module(names, counts)
    if whole is not None:
        return whole
    if bottom:
        return "stem"
    by_top: dict[str, list[str]] = {}
    for n in names:
        by_top.setdefault(n.split(".")[0], []).append(n)
    return "+".join(_exact_module(ns, counts) or top for top, ns in by_top.items())


def _exact_module(names: list[str], counts: dict[str, int]) -> str | None:
    parts = names[0].split(".")[:-1]
    for depth in range(1, len(parts) + 1):
        prefix = ".".join(parts[:depth])
        if counts.get(prefix) == len(names) and all(n.startswith(prefix + ".") for n in names):
            return prefix
    return None


def _subtree_counts(model: nn.Module) -> dict[str, int]:
    counts: dict[str, int] = {}
    for n, _ in model.named_parameters():
        parts = n.split(".")[:-1]
        for depth in range(1, len(parts) + 1):
            key = ".".join(parts[:depth])
            counts[key] = counts.get(key, 0) + 1
    return counts


def _owning_modules(model: nn.Module) -> dict[str, str]:
    """Parameter name -> name of the module that holds it directly ("" for the model itself)."""
    return {n: n.rpartition(".")[0] for n, _ in model.named_parameters()}


def _subtree_params(name: str, module: nn.Module, recurse: bool = True) -> set[str]:
    return {f"{name}.{n}" for n, _ in module.named_parameters(recurse=recurse)}


# --- model-level initialisations ----------------------------------------------------------------


def _resnet_init(model: nn.Module, modules: list[nn.Module]) -> None:
    # Mirrors timm ResNet.init_weights(zero_init_last=True), the constructor's default.
    for m in modules:
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
    for m in modules:
        if hasattr(m, "zero_init_last"):
            m.zero_init_last()


def _per_module_init(model: nn.Module, modules: list[nn.Module]) -> None:
    for m in modules:
        model._init_weights(m)


def _model_init(model: nn.Module) -> Callable[[nn.Module, list[nn.Module]], None] | None:
    from timm.models.resnet import ResNet

    if isinstance(model, ResNet):
        return _resnet_init
    method = getattr(model, "_init_weights", None)
    if callable(method) and len(inspect.signature(method).parameters) == 1:
        return _per_module_init
    return None
