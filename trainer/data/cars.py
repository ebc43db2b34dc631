"""`stanford_cars`: Stanford Cars (196 classes) in its classic distribution layout.

    data_dir/devkit/cars_meta.mat               class_names (1 x 196 cell)
    data_dir/devkit/cars_train_annos.mat        annotations: bbox_x1..bbox_y2, class (1-based), fname
    data_dir/cars_test_annos_withlabels.mat     annotations, same fields
    data_dir/cars_train/*.jpg, data_dir/cars_test/*.jpg

Split rules: the official test set is the test split. Validation is carved from the official train
set per class with the fixed seed `base.SPLIT_SEED`: `round(val_fraction * n)` images per class
(`extra.val_fraction`, default 0.1, i.e. ~4 of ~41 per class), the rest is train. Whole images are
used; the annotated bounding boxes are ignored.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import scipy.io

from ..config import InputError, TrainConfig
from .base import (
    Sample,
    Splits,
    carve_val,
    data_root,
    extra_fraction,
    file_splits,
    require_dir,
    require_file,
    require_files,
)


def _loadmat(path: Path, key: str) -> np.ndarray:
    require_file(path, "Stanford Cars annotation file")
    try:
        mat = scipy.io.loadmat(str(path))
    except (ValueError, OSError, TypeError) as e:
        raise InputError(f"cannot read {path} as a MATLAB file: {e}") from e
    if key not in mat:
        raise InputError(f"{path} has no {key!r} entry")
    return mat[key]


def _cell_values(values: np.ndarray) -> list[Any]:
    """MATLAB cells/struct fields arrive as nested 1-element arrays: unwrap each to a Python value."""
    return [np.asarray(v).squeeze().item() for v in values.ravel()]


def _annotations(path: Path, images: Path, num_classes: int) -> list[Sample]:
    ann = _loadmat(path, "annotations")
    fields = ann.dtype.names or ()
    for name in ("fname", "class"):
        if name not in fields:
            raise InputError(
                f"{path}: annotations have no {name!r} field (fields: {', '.join(fields)})"
            )
    samples = []
    for fname, cls in zip(_cell_values(ann["fname"]), _cell_values(ann["class"])):
        if not 1 <= int(cls) <= num_classes:
            raise InputError(f"{path}: {fname} has class {cls}, outside 1..{num_classes}")
        samples.append((str(images / str(fname)), int(cls) - 1))
    require_files(samples, str(path))
    return samples


def stanford_cars(cfg: TrainConfig) -> Splits:
    root = data_root(cfg)
    classes = [
        str(c) for c in _cell_values(_loadmat(root / "devkit" / "cars_meta.mat", "class_names"))
    ]
    train_images = require_dir(root / "cars_train", "Stanford Cars train images folder")
    test_images = require_dir(root / "cars_test", "Stanford Cars test images folder")
    train = _annotations(root / "devkit" / "cars_train_annos.mat", train_images, len(classes))
    test = _annotations(root / "cars_test_annos_withlabels.mat", test_images, len(classes))
    train, val = carve_val(train, extra_fraction(cfg, "val_fraction", 0.1))
    return file_splits(train, val, test, classes)
