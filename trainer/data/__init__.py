"""Datasets and transforms: `build_splits(cfg) -> Splits`, `build_transform(cfg, data_config, training)`.

Every loader reads a dataset's official on-disk layout (nothing is downloaded) and returns `Splits`
of `(RGB PIL image, int label)` items; the split rules are in each loader's module docstring
(`folders`, `cars`, `aircraft`, `synthetic`). `TransformedDataset` turns a split into tensors;
`cache_splits` serves file-based splits from the decoded-image cache (`cache`).
"""

from __future__ import annotations

from collections.abc import Callable

from ..config import InputError, TrainConfig
from .aircraft import fgvc_aircraft
from .base import ImageArray, ImageFiles, ImageSource, Splits, TransformedDataset
from .cache import CachedImages, cache_splits
from .cars import stanford_cars
from .folders import caltech256_30, dtd, imagefolder, imagenet
from .synthetic import digits, shapes
from .transforms import build_transform

DATASETS: dict[str, Callable[[TrainConfig], Splits]] = {
    "caltech256_30": caltech256_30,
    "stanford_cars": stanford_cars,
    "fgvc_aircraft": fgvc_aircraft,
    "dtd": dtd,
    "imagenet": imagenet,
    "imagefolder": imagefolder,
    "digits": digits,
    "shapes": shapes,
}


def build_splits(cfg: TrainConfig) -> Splits:
    """The train/val/test splits of `cfg.dataset`; InputError for an unknown name or a bad layout."""
    try:
        builder = DATASETS[cfg.dataset]
    except KeyError:
        raise InputError(
            f"unknown dataset {cfg.dataset!r}; known: {', '.join(sorted(DATASETS))}"
        ) from None
    return builder(cfg)


__all__ = [
    "DATASETS",
    "CachedImages",
    "ImageArray",
    "ImageFiles",
    "ImageSource",
    "Splits",
    "TransformedDataset",
    "build_splits",
    "build_transform",
    "cache_splits",
]
