"""Loaders for layouts of one folder per class: `imagefolder`, `imagenet`, `caltech256_30`, `dtd`.

Split rules (every carved split uses the fixed seed `base.SPLIT_SEED`, never `cfg.seed`, so all runs
of a study see the same images; files are sorted before shuffling, one RNG per class):

- `imagefolder`: `data_dir/train/<class>/*`, `data_dir/test/<class>/*` (required) and optionally
  `data_dir/val/<class>/*`. Classes are the sub-folders of `train/`, sorted by name. Without `val/`,
  validation is carved from train per class: `round(val_fraction * n)` images, at least one while a
  class has two or more (`extra.val_fraction`, default 0.1).
- `imagenet`: `data_dir/train/<wnid>/*` and `data_dir/val/<wnid>/*` (the official validation set
  sorted into class folders). Classes are the sorted wnids. Validation is carved from train per class
  (`extra.val_fraction`, default 0.02, i.e. ~26 of ~1,300 images per class); the official val set is
  the test split.
- `caltech256_30`: `data_dir/256_ObjectCategories/NNN.name/*.jpg`; `257.clutter` is excluded, leaving
  256 classes named without their number prefix, ordered by number (`extra.clutter: true` keeps it
  as a 257th class, as some published Caltech-256 numbers do). Per class, after a fixed shuffle:
  30 train (`extra.train_per_class`), the next 20 val (`extra.val_per_class`; the paper's code
  validated on images 31-50 of each class, i.e. 20 per class), the rest test. A class with fewer
  images fills train first, then val, with what there is.
- `dtd`: `data_dir/images/<class>/*.jpg` with the official lists `data_dir/labels/train1.txt`,
  `val1.txt`, `test1.txt` (lines like `banded/banded_0002.jpg`): split 1 by default, another of the
  ten official splits with `extra.dtd_split`. Classes are the sorted sub-folders of `images/` (47).
"""

from __future__ import annotations

from pathlib import Path

from ..config import InputError, TrainConfig
from .base import (
    Sample,
    Splits,
    carve_val,
    class_folders,
    data_root,
    extra_fraction,
    extra_int,
    file_splits,
    list_images,
    require_dir,
    require_file,
    require_files,
    scan_classes,
    split_counts,
)

CALTECH_CLUTTER = "257.clutter"


def _train_classes(train_dir: Path) -> list[str]:
    classes = [p.name for p in class_folders(train_dir)]
    if not classes:
        raise InputError(f"no class folders in {train_dir}")
    return classes


def _scan_train(train_dir: Path, classes: list[str]) -> list[Sample]:
    samples = scan_classes(train_dir, classes)
    present = {y for _, y in samples}
    empty = [c for i, c in enumerate(classes) if i not in present]
    if empty:
        raise InputError(f"class folder {train_dir / empty[0]} has no images")
    return samples


def imagefolder(cfg: TrainConfig) -> Splits:
    root = data_root(cfg)
    train_dir = require_dir(root / "train", "train folder")
    test_dir = require_dir(root / "test", "test folder (imagefolder needs train/ and test/)")
    classes = _train_classes(train_dir)
    train = _scan_train(train_dir, classes)
    if (root / "val").is_dir():
        val = scan_classes(root / "val", classes)
    else:
        train, val = carve_val(train, extra_fraction(cfg, "val_fraction", 0.1))
    return file_splits(train, val, scan_classes(test_dir, classes), classes)


def imagenet(cfg: TrainConfig) -> Splits:
    root = data_root(cfg)
    train_dir = require_dir(root / "train", "ImageNet train folder")
    val_dir = require_dir(root / "val", "ImageNet val folder (sorted into <wnid>/ folders)")
    classes = _train_classes(train_dir)
    train, val = carve_val(
        _scan_train(train_dir, classes), extra_fraction(cfg, "val_fraction", 0.02)
    )
    return file_splits(train, val, scan_classes(val_dir, classes), classes)


def caltech256_30(cfg: TrainConfig) -> Splits:
    root = require_dir(data_root(cfg) / "256_ObjectCategories", "Caltech-256 folder")
    clutter = cfg.extra.get("clutter", False)
    if not isinstance(clutter, bool):
        raise InputError(f"extra.clutter must be true or false, got {clutter!r}")
    folders = [p for p in class_folders(root) if clutter or p.name != CALTECH_CLUTTER]
    if not folders:
        raise InputError(f"no class folders in {root}")
    # "001.ak47" -> "ak47"; the zero-padded number prefix keeps the official class order.
    classes = [p.name.split(".", 1)[-1] for p in folders]
    samples = [(str(f), label) for label, folder in enumerate(folders) for f in list_images(folder)]
    train, val, test = split_counts(
        samples, extra_int(cfg, "train_per_class", 30), extra_int(cfg, "val_per_class", 20)
    )
    return file_splits(train, val, test, classes)


def dtd(cfg: TrainConfig) -> Splits:
    root = data_root(cfg)
    images = require_dir(root / "images", "DTD images folder")
    classes = [p.name for p in class_folders(images)]
    index = {c: i for i, c in enumerate(classes)}
    k = extra_int(cfg, "dtd_split", 1)
    if not 1 <= k <= 10:
        raise InputError(f"extra.dtd_split must be one of DTD's splits 1..10, got {k}")

    def read(name: str) -> list[Sample]:
        path = require_file(root / "labels" / f"{name}{k}.txt", "DTD split list")
        samples = []
        for line in path.read_text().split():
            cls = line.split("/", 1)[0]
            if cls not in index:
                raise InputError(
                    f"{path}: {line!r} names class {cls!r}, which has no folder in {images}"
                )
            samples.append((str(images / line), index[cls]))
        require_files(samples, str(path))
        return samples

    return file_splits(read("train"), read("val"), read("test"), classes)
