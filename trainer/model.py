"""Build the timm model and load its pre-trained weights (timm hub or a local checkpoint file)."""

from __future__ import annotations

import os
from pathlib import Path

import timm
import torch
from torch import nn

from .config import InputError, TrainConfig


def create_model(cfg: TrainConfig, num_classes: int) -> nn.Module:
    """The model with pre-trained weights loaded; the classifier is re-shaped to `num_classes`."""
    if not timm.is_model(cfg.model):
        raise InputError(f"unknown timm model {cfg.model!r} (see timm.list_models())")
    if cfg.pretrained_file:
        return _from_file(cfg.model, Path(cfg.pretrained_file).expanduser(), num_classes)
    try:
        return timm.create_model(cfg.model, pretrained=cfg.pretrained, num_classes=num_classes)
    except Exception as e:  # timm raises plain RuntimeError/OSError/HTTP errors from the hub
        if not cfg.pretrained:
            raise
        offline = " (HF_HUB_OFFLINE is set)" if os.environ.get("HF_HUB_OFFLINE") else ""
        raise InputError(f"cannot fetch pre-trained weights for {cfg.model!r} from the timm hub"
                         f"{offline}: {_first_line(e)}; use pretrained_file for a local checkpoint") from e


def _from_file(name: str, path: Path, num_classes: int) -> nn.Module:
    if not path.is_file():
        raise InputError(f"pretrained_file not found: {path}")
    model = timm.create_model(name, num_classes=num_classes)
    try:
        state = timm.models.load_state_dict(str(path))
    except Exception as e:  # pickle/zip errors of every kind: the file is not a checkpoint
        raise InputError(f"pretrained_file {path} is not a readable checkpoint: {_first_line(e)}") from e
    # The classifier is always re-initialised (new_layers >= 1), so its shape may differ.
    head = _classifier_prefix(model)
    state = {k: v for k, v in state.items() if not k.startswith(head)}
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as e:  # shape mismatch
        raise InputError(f"pretrained_file {path} does not fit model {name!r}: {_first_line(e)}") from e
    missing = [k for k in result.missing_keys if not k.startswith(head)]
    if missing or result.unexpected_keys:
        # strict=False would otherwise leave a wrong checkpoint silently unloaded
        bad = (missing or result.unexpected_keys)[:3]
        raise InputError(f"pretrained_file {path} does not fit model {name!r}: "
                         f"{len(missing)} missing and {len(result.unexpected_keys)} unexpected keys, "
                         f"e.g. {', '.join(bad)}")
    return model


def _classifier_prefix(model: nn.Module) -> str:
    head = model.get_classifier()
    for module_name, module in model.named_modules():
        if module is head:
            return module_name + "."
    raise InputError(f"cannot find the classifier of {type(model).__name__}")


def save_weights(model: nn.Module, path: str | Path) -> None:
    """Save a state_dict that `pretrained_file` can load (how a source model is shipped)."""
    torch.save(model.state_dict(), path)


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__
