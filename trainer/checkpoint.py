"""Checkpoints: `last.pth` holds everything needed to resume; `best.pth` only the weights.

A resumed run reproduces the uninterrupted one bit for bit (model, optimiser, scheduler, AMP scaler
and every RNG are restored; tested on CPU) when the images are loaded in the main process
(`workers=0`). With DataLoader workers it continues from the same state but with another
augmentation stream: persistent workers carry their own RNGs from epoch to epoch, and those are
re-seeded (from the restored loader generator) only when the workers start.
"""

from __future__ import annotations

import dataclasses
import os
import random
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from .config import InputError
from .report import EpochMetrics

if TYPE_CHECKING:
    from .setup import Run


def save_checkpoint(
    path: Path, run: Run, history: list[EpochMetrics], best: tuple[float, int] | None
) -> None:
    state = {
        "model_name": run.cfg.model,
        "model": run.model.state_dict(),
        "optimizer": run.optimizer.state_dict(),
        "scheduler": run.scheduler.state_dict() if run.scheduler else None,
        "scaler": run.scaler.state_dict() if run.scaler else None,
        "history": [dataclasses.asdict(m) for m in history],
        "best": best,
        # every source of randomness, so a resumed run continues exactly where it stopped
        "rng": {
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
            "numpy": np.random.get_state(),
            "python": random.getstate(),
            "loader": run.generator.get_state(),
        },
    }
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)  # never leave a half-written last.pth behind a crash


def save_weights_only(path: Path, model: nn.Module) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(model.state_dict(), tmp)
    os.replace(tmp, path)


def load_checkpoint(
    path: str | Path, run: Run
) -> tuple[list[EpochMetrics], tuple[float, int] | None]:
    path = Path(path).expanduser()
    if not path.is_file():
        raise InputError(f"resume checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # any unpickling error means the file is not ours
        raise InputError(
            f"resume checkpoint {path} is not readable "
            f"({type(e).__name__}: {' '.join(str(e).split())[:200]})"
        ) from e
    if not isinstance(state, dict) or "history" not in state:
        raise InputError(f"{path} is not a last.pth checkpoint written by the trainer")
    if state["model_name"] != run.cfg.model:
        raise InputError(
            f"resume checkpoint {path} is for model {state['model_name']!r}, not {run.cfg.model!r}"
        )
    try:
        run.model.load_state_dict(state["model"])
        run.optimizer.load_state_dict(state["optimizer"])
    except (RuntimeError, ValueError, KeyError) as e:  # another num_classes, new_layers or num_low
        detail = " ".join(str(e).split())[:300] or type(e).__name__  # torch's message spans lines
        raise InputError(
            f"resume checkpoint {path} does not match this run's config "
            f"(resume with the config it was written with): {detail}"
        ) from e
    if run.scheduler and state["scheduler"]:
        run.scheduler.load_state_dict(state["scheduler"])
    if run.scaler and state["scaler"]:
        run.scaler.load_state_dict(state["scaler"])
    rng = state["rng"]
    torch.set_rng_state(rng["torch"])
    if rng["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    np.random.set_state(rng["numpy"])
    random.setstate(rng["python"])
    run.generator.set_state(rng["loader"])
    history = [EpochMetrics(**{**m, "lrs": tuple(m["lrs"])}) for m in state["history"]]
    best = tuple(state["best"]) if state["best"] else None
    return history, best  # type: ignore[return-value]
