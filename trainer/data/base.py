"""Where images come from: the one small dataset interface every loader returns.

An `ImageSource` yields `(PIL.Image in RGB, int label)` and exposes its `labels` without decoding.
Three implementations exist: `ImageFiles` (decodes a file per item: JPEG trees on disk),
`ImageArray` (a uint8 `N x H x W x 3` array: the generated sets) and `cache.CachedImages` (an
`ImageFiles` decoded once per machine into a memory-mapped uint8 store, which `setup.build_run`
swaps in). The training loop only ever sees `TransformedDataset`, so swapping one source for another
does not touch it.

Also here: the layout checks (`require_dir`, `require_file`) and the fixed-seed per-class splitters
that every loader shares. Split seeds are constants, never `cfg.seed`: the seed of a run varies the
model and the augmentation, never which images are in which split.
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from ..config import InputError, TrainConfig

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".ppm", ".tif", ".tiff")
SPLIT_SEED = 0  # the one seed behind every carved split; changing it changes every study's data

Sample = tuple[str, int]  # (image path, label)


@dataclass(frozen=True)
class Splits:
    """The three splits of a dataset plus its class names (`num_classes == len(classes)`)."""

    train: Dataset
    val: Dataset
    test: Dataset
    classes: tuple[str, ...]


class ImageSource(Dataset):
    """Items are `(RGB PIL image, label)`; subclasses implement `load(index)` and set `labels`."""

    labels: tuple[int, ...]

    def load(self, index: int) -> Image.Image:
        raise NotImplementedError

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[Image.Image, int]:
        return self.load(index), self.labels[index]


class ImageFiles(ImageSource):
    """Decodes one image file per item. `crop_bottom` pixels are cut off the bottom of each image."""

    def __init__(self, samples: Sequence[Sample], crop_bottom: int = 0) -> None:
        self.paths = tuple(str(p) for p, _ in samples)
        self.labels = tuple(int(y) for _, y in samples)
        self.crop_bottom = crop_bottom

    def load(self, index: int) -> Image.Image:
        with Image.open(self.paths[index]) as im:
            img = im.convert("RGB")  # also forces the decode before the file closes
        if self.crop_bottom:
            img = img.crop((0, 0, img.width, img.height - self.crop_bottom))
        return img


class ImageArray(ImageSource):
    """Decoded images held as a uint8 array `N x H x W x 3` (shared read-only between splits)."""

    def __init__(self, images: np.ndarray, labels: Sequence[int]) -> None:
        if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
            raise ValueError(
                f"expected uint8 N x H x W x 3 images, got {images.dtype} {images.shape}"
            )
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        self.images = images
        self.labels = tuple(int(y) for y in labels)

    def load(self, index: int) -> Image.Image:
        # copy: the array may be a cached, read-only buffer shared by every trial in the process
        return Image.fromarray(np.array(self.images[index]))


class TransformedDataset(Dataset):
    """`(image, label) -> (transform(image), label)` over any base dataset (a split, a ConcatDataset)."""

    def __init__(self, base: Dataset, transform: Callable[[Image.Image], Any]) -> None:
        self.base = base
        self.transform = transform

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> tuple[Any, int]:
        img, label = self.base[index]
        return self.transform(img), label


# --- layout checks -------------------------------------------------------------------------------


def data_root(cfg: TrainConfig) -> Path:
    """`cfg.data_dir` as an existing directory, or InputError saying what is missing."""
    if not cfg.data_dir:
        raise InputError(f"dataset {cfg.dataset!r} needs data_dir (the folder holding its files)")
    return require_dir(Path(cfg.data_dir), f"data_dir of dataset {cfg.dataset!r}")


def require_dir(path: Path, what: str = "folder") -> Path:
    if not path.is_dir():
        raise InputError(f"{what} not found: {path}")
    return path


def require_file(path: Path, what: str = "file") -> Path:
    if not path.is_file():
        raise InputError(f"{what} not found: {path}")
    return path


def require_files(samples: Sequence[Sample], what: str) -> None:
    """Every listed image must exist; name the first missing one (a truncated download, say)."""
    missing = [p for p, _ in samples if not Path(p).is_file()]
    if missing:
        raise InputError(f"{len(missing)} image(s) listed in {what} not found, e.g. {missing[0]}")


def list_images(folder: Path) -> list[Path]:
    """Image files directly in `folder`, sorted by name (hidden files skipped)."""
    return sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTENSIONS
    )


def class_folders(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def scan_classes(folder: Path, classes: Sequence[str]) -> list[Sample]:
    """Samples of `folder/<class>/*` labelled by the class's position in `classes`.

    Sub-folders of `folder` must all be among `classes`; a class may be absent (few images)."""
    index = {c: i for i, c in enumerate(classes)}
    samples: list[Sample] = []
    for sub in class_folders(folder):
        if sub.name not in index:
            raise InputError(f"class folder {sub} is not a class of the training split")
        samples += [(str(p), index[sub.name]) for p in list_images(sub)]
    return samples


# --- dataset options (cfg.extra) and fixed-seed splitters ----------------------------------------


def extra_int(cfg: TrainConfig, key: str, default: int) -> int:
    value = cfg.extra.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InputError(f"extra.{key} must be an integer >= 0, got {value!r}")
    return value


def extra_fraction(cfg: TrainConfig, key: str, default: float) -> float:
    value = cfg.extra.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
        raise InputError(f"extra.{key} must be a number in [0, 1), got {value!r}")
    return float(value)


def _by_class(samples: Sequence[Sample]) -> dict[int, list[Sample]]:
    groups: dict[int, list[Sample]] = defaultdict(list)
    for s in sorted(samples):  # sorted: the split never depends on directory listing order
        groups[s[1]].append(s)
    return groups


def _shuffled(items: list[Sample], label: int) -> list[Sample]:
    # One RNG per class, seeded by (SPLIT_SEED, label): a class's split does not depend on the others.
    rng = random.Random(f"{SPLIT_SEED}:{label}")
    items = list(items)
    rng.shuffle(items)
    return items


def split_counts(samples: Sequence[Sample], n_train: int, n_val: int) -> tuple[list[Sample], ...]:
    """Per class, after a fixed shuffle: `n_train` train, the next `n_val` val, the rest test.

    A class with fewer images fills train first, then val, with what there is."""
    train: list[Sample] = []
    val: list[Sample] = []
    test: list[Sample] = []
    for label, items in _by_class(samples).items():
        items = _shuffled(items, label)
        train += items[:n_train]
        val += items[n_train : n_train + n_val]
        test += items[n_train + n_val :]
    return train, val, test


def carve_val(samples: Sequence[Sample], fraction: float) -> tuple[list[Sample], list[Sample]]:
    """Per class, after a fixed shuffle, `round(fraction * n)` images (at least 1 while `n >= 2`
    and `fraction > 0`) go to val, the rest stay in train. Returns `(train, val)`."""
    train: list[Sample] = []
    val: list[Sample] = []
    for label, items in _by_class(samples).items():
        n = len(items)
        n_val = min(max(round(fraction * n), 1), n - 1) if fraction > 0 and n >= 2 else 0
        items = _shuffled(items, label)
        val += items[:n_val]
        train += items[n_val:]
    return train, val


def file_splits(
    train: Sequence[Sample],
    val: Sequence[Sample],
    test: Sequence[Sample],
    classes: Sequence[str],
    crop_bottom: int = 0,
) -> Splits:
    return Splits(
        ImageFiles(train, crop_bottom),
        ImageFiles(val, crop_bottom),
        ImageFiles(test, crop_bottom),
        tuple(classes),
    )
