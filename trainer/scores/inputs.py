"""Input checks shared by the scores: one `InputError` line for each kind of bad array."""

from __future__ import annotations

import numpy as np

from ..config import InputError


def as_features(x: object, name: str = "features") -> np.ndarray:
    a = np.asarray(x)
    if a.ndim != 2:
        raise InputError(f"{name} must be a 2-D array (N samples x D dims), got shape {a.shape}")
    if a.shape[0] == 0 or a.shape[1] == 0:
        raise InputError(f"{name} is empty (shape {a.shape})")
    if not (np.issubdtype(a.dtype, np.floating) or np.issubdtype(a.dtype, np.integer)):
        raise InputError(f"{name} must be numeric, got dtype {a.dtype}")
    a = a.astype(np.float64)
    if not np.isfinite(a).all():
        bad = int((~np.isfinite(a)).any(axis=1).sum())
        raise InputError(f"{name} has NaN or infinite values (in {bad} of {a.shape[0]} rows)")
    return a


def as_labels(y: object, n: int | None, name: str = "labels") -> np.ndarray:
    a = np.asarray(y)
    if a.ndim != 1:
        raise InputError(f"{name} must be a 1-D array of class indices, got shape {a.shape}")
    if n is not None and len(a) != n:
        raise InputError(f"{name} has {len(a)} entries but there are {n} samples")
    if len(a) == 0:
        raise InputError(f"{name} is empty")
    if not np.issubdtype(a.dtype, np.integer):
        raise InputError(f"{name} must be integer class indices, got dtype {a.dtype}")
    if a.min() < 0:
        raise InputError(f"{name} must be >= 0, got {int(a.min())}")
    return a.astype(np.int64)


def distinct_classes(labels: np.ndarray, name: str = "labels") -> tuple[np.ndarray, np.ndarray]:
    """(distinct classes, index of each sample's class among them); at least 2 classes."""
    classes, inverse = np.unique(labels, return_inverse=True)
    if len(classes) < 2:
        raise InputError(
            f"{name} hold a single class ({int(classes[0])}): a score needs >= 2 classes"
        )
    return classes, inverse


def check_samples(n: int, k: int) -> None:
    if n <= k:
        raise InputError(f"{n} samples for {k} classes: a score needs more samples than classes")
