"""`fgvc_aircraft`: FGVC-Aircraft at the variant level (100 classes), official splits.

    data_dir/data/images/<id>.jpg
    data_dir/data/variants.txt                     one variant name per line; this order = labels
    data_dir/data/images_variant_{train,val,test}.txt   lines like `1025794 Boeing 707-320`

Split rules: the official train, val and test lists are used as they are (3,334 / 3,333 / 3,333
images). Every official image carries a 20-pixel copyright banner at its bottom edge; it is cropped
off at load time (`BANNER_PX`) so that no model learns from it.
"""

from __future__ import annotations

from pathlib import Path

from ..config import InputError, TrainConfig
from .base import Sample, Splits, data_root, file_splits, require_dir, require_file, require_files

BANNER_PX = 20


def _read_split(path: Path, images: Path, index: dict[str, int]) -> list[Sample]:
    require_file(path, "FGVC-Aircraft split list")
    samples = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        image_id, _, variant = line.strip().partition(" ")
        if variant not in index:
            raise InputError(f"{path}:{n}: variant {variant!r} is not in variants.txt")
        samples.append((str(images / f"{image_id}.jpg"), index[variant]))
    require_files(samples, str(path))
    return samples


def fgvc_aircraft(cfg: TrainConfig) -> Splits:
    data = require_dir(data_root(cfg) / "data", "FGVC-Aircraft data folder")
    images = require_dir(data / "images", "FGVC-Aircraft images folder")
    variants_file = require_file(data / "variants.txt", "FGVC-Aircraft variants list")
    classes = [v.strip() for v in variants_file.read_text().splitlines() if v.strip()]
    index = {c: i for i, c in enumerate(classes)}
    splits = [
        _read_split(data / f"images_variant_{s}.txt", images, index)
        for s in ("train", "val", "test")
    ]
    return file_splits(*splits, classes, crop_bottom=BANNER_PX)
