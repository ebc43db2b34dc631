"""Build the timm model and load its pre-trained weights (timm hub or a local checkpoint file)."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from urllib.parse import urlparse

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
    if cfg.pretrained:
        _check_hub_reachable(cfg.model)
    try:
        return timm.create_model(cfg.model, pretrained=cfg.pretrained, num_classes=num_classes)
    except Exception as e:  # timm raises plain RuntimeError/OSError/HTTP errors from the hub
        if not cfg.pretrained:
            raise
        offline = " (HF_HUB_OFFLINE is set)" if os.environ.get("HF_HUB_OFFLINE") else ""
        raise InputError(
            f"cannot fetch pre-trained weights for {cfg.model!r} from the timm hub"
            f"{offline}: {_first_line(e)}; use pretrained_file for a local checkpoint"
        ) from e


def _from_file(name: str, path: Path, num_classes: int) -> nn.Module:
    if not path.is_file():
        raise InputError(f"pretrained_file not found: {path}")
    model = timm.create_model(name, num_classes=num_classes)
    try:
        # timm's loader also unwraps {"state_dict": ...} / {"model": ...} checkpoints
        state = timm.models.load_state_dict(str(path))
        if not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise TypeError("it holds values that are not tensors")
    except Exception as e:  # pickle/zip errors of every kind: the file is not a checkpoint
        raise InputError(
            f"pretrained_file {path} is not a readable state_dict checkpoint "
            f"({type(e).__name__}: {_first_line(e)})"
        ) from e
    # The classifier is always re-initialised (new_layers >= 1), so its shape may differ.
    head = _classifier_prefix(model)
    state = {k: v for k, v in state.items() if not k.startswith(head)}
    own = model.state_dict()
    wrong = [k for k, v in state.items() if k in own and v.shape != own[k].shape]
    if wrong:  # load_state_dict's own message spans one line per key, its first line says nothing
        k = wrong[0]
        raise InputError(
            f"pretrained_file {path} does not fit model {name!r}: {len(wrong)} tensor(s) "
            f"of another shape, e.g. {k} is {tuple(state[k].shape)} in the file, "
            f"{tuple(own[k].shape)} in the model"
        )
    result = model.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if not k.startswith(head)]
    if missing or result.unexpected_keys:
        # strict=False would otherwise leave a wrong checkpoint silently unloaded
        bad = (missing or result.unexpected_keys)[:3]
        raise InputError(
            f"pretrained_file {path} does not fit model {name!r}: "
            f"{len(missing)} missing and {len(result.unexpected_keys)} unexpected keys, "
            f"e.g. {', '.join(bad)}"
        )
    return model


def _check_hub_reachable(name: str) -> None:
    """Fail in seconds, not after a minute of retries, when the hub cannot be reached.

    huggingface_hub retries a failed request for about a minute before giving up (and before using a
    cached copy). With HF_HUB_OFFLINE=1 it reads the local cache at once, so there is nothing to check;
    behind a proxy a direct connection says nothing, so the check is skipped there too.
    """
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE or any(
        os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")
    ):
        return
    url = urlparse(constants.ENDPOINT)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((url.hostname, port), timeout=5).close()
    except OSError as e:
        raise InputError(
            f"cannot fetch pre-trained weights for {name!r}: the timm hub "
            f"{url.hostname}:{port} is unreachable ({e}); set HF_HUB_OFFLINE=1 to use "
            f"weights already in the local cache, or use pretrained_file"
        ) from e


def _classifier_prefix(model: nn.Module) -> str:
    head = model.get_classifier()
    for module_name, module in model.named_modules():
        if module is head:
            return module_name + "."
    raise InputError(f"cannot find the classifier of {type(model).__name__}")


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__
