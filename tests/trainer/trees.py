"""Miniature dataset trees in each official on-disk layout, for tests (tiny JPEGs, a few per class).

Every `make_*(root, ...)` writes its tree under `root/<name>` and returns that folder (the `data_dir`).
Each image is a noisy flat patch of its class's colour (`class_colour`), so `label_of(img)` can read
the class back from the pixels: tests check that a loader wires labels to the right files, and
training tests get a task a tiny model can learn. FGVC-Aircraft images carry a 20-px white banner at
the bottom, like the official ones.
"""

from __future__ import annotations

import colorsys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import scipy.io
from PIL import Image

AIRCRAFT_BANNER_PX = 20
CALTECH_NAMES = (
    "ak47",
    "american-flag",
    "backpack",
    "baseball-bat",
    "baseball-glove",
    "basketball-hoop",
)
DTD_NAMES = ("banded", "blotchy", "braided", "bubbly", "bumpy", "chequered")
AIRCRAFT_NAMES = ("707-320", "A300B4", "F/A-18", "Cessna 172", "DHC-1", "Boeing 737-700")


def class_colour(label: int, classes: int) -> tuple[int, int, int]:
    """Evenly spaced hues, full saturation: far apart in RGB for the handful of classes tests use."""
    r, g, b = colorsys.hsv_to_rgb(label / max(classes, 1), 0.9, 0.9)
    return int(r * 255), int(g * 255), int(b * 255)


def label_of(img: Image.Image, classes: int) -> int:
    """The class whose colour is nearest the image's mean colour."""
    mean = np.asarray(img.convert("RGB"), dtype=np.float64).reshape(-1, 3).mean(axis=0)
    dists = [np.linalg.norm(mean - np.array(class_colour(c, classes))) for c in range(classes)]
    return int(np.argmin(dists))


def write_image(
    path: Path,
    label: int,
    classes: int,
    size: tuple[int, int] = (32, 32),
    seed: int = 0,
    banner_px: int = 0,
) -> Path:
    """A `size` = (width, height) JPEG of class `label`'s colour plus noise (and a white banner)."""
    rng = np.random.default_rng(seed)
    w, h = size
    arr = np.clip(np.array(class_colour(label, classes)) + rng.normal(0, 8, (h, w, 3)), 0, 255)
    if banner_px:
        arr[h - banner_px :] = 255
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr.astype(np.uint8)).save(path, quality=90)
    return path


def _names(base: Sequence[str], n: int, prefix: str) -> list[str]:
    return [base[i] if i < len(base) else f"{prefix}{i}" for i in range(n)]


def _folder_per_class(
    folder: Path, names: Sequence[str], per_class: int, seed: int, size: int = 32
) -> None:
    for c, name in enumerate(names):
        for k in range(per_class):
            write_image(
                folder / name / f"{name}_{k:04d}.jpg",
                c,
                len(names),
                (size, size),
                seed + 1000 * c + k,
            )


def make_imagefolder(
    root: Path,
    classes: int = 3,
    per_class: int = 6,
    with_val: bool = False,
    with_test: bool = True,
    val_per_class: int = 2,
    test_per_class: int = 2,
    size: int = 32,
    name: str = "imagefolder",
) -> Path:
    """`train/<class>/*` (+ `val/` when `with_val`, + `test/` when `with_test`); classes c0, c1, ..."""
    out = Path(root) / name
    names = [f"c{i}" for i in range(classes)]
    _folder_per_class(out / "train", names, per_class, 0, size)
    if with_val:
        _folder_per_class(out / "val", names, val_per_class, 100, size)
    if with_test:
        _folder_per_class(out / "test", names, test_per_class, 200, size)
    return out


def make_imagenet(
    root: Path, classes: int = 3, train_per_class: int = 10, val_per_class: int = 2, size: int = 32
) -> Path:
    """`train/<wnid>/*.JPEG` and the official val set sorted into `val/<wnid>/*.JPEG`."""
    out = Path(root) / "imagenet"
    wnids = [f"n{1440764 + i:08d}" for i in range(classes)]
    for split, per_class, seed in (("train", train_per_class, 0), ("val", val_per_class, 100)):
        for c, wnid in enumerate(wnids):
            for k in range(per_class):
                write_image(
                    out / split / wnid / f"{wnid}_{k}.JPEG",
                    c,
                    classes,
                    (size, size),
                    seed + 1000 * c + k,
                )
    return out


def make_caltech256(
    root: Path, classes: int = 3, per_class: int = 8, clutter: bool = True, size: int = 32
) -> Path:
    """`256_ObjectCategories/NNN.name/NNN_XXXX.jpg`, plus `257.clutter/` (to be excluded)."""
    out = Path(root) / "caltech256"
    cats = out / "256_ObjectCategories"
    names = _names(CALTECH_NAMES, classes, "class-")
    for c, name in enumerate(names):
        for k in range(per_class):
            write_image(
                cats / f"{c + 1:03d}.{name}" / f"{c + 1:03d}_{k + 1:04d}.jpg",
                c,
                classes,
                (size, size),
                1000 * c + k,
            )
    if clutter:
        for k in range(per_class):
            write_image(
                cats / "257.clutter" / f"257_{k + 1:04d}.jpg", 0, classes, (size, size), 99_000 + k
            )
    return out


def _cars_annotations(fnames: list[str], labels: list[int], size: int) -> np.ndarray:
    dtype = [(f, "O") for f in ("bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2", "class", "fname")]
    rows = [
        (np.uint8(1), np.uint8(1), np.uint8(size - 1), np.uint8(size - 1), np.uint8(y + 1), f)
        for f, y in zip(fnames, labels)
    ]
    return np.array(rows, dtype=dtype)


def make_cars(
    root: Path, classes: int = 3, train_per_class: int = 10, test_per_class: int = 2, size: int = 32
) -> Path:
    """The classic Stanford Cars layout: devkit .mat files (1-based classes), cars_train/, cars_test/."""
    out = Path(root) / "stanford_cars"
    (out / "devkit").mkdir(parents=True, exist_ok=True)
    names = np.empty((1, classes), dtype=object)
    for c in range(classes):
        names[0, c] = f"Make{c} Model {2000 + c}"
    scipy.io.savemat(str(out / "devkit" / "cars_meta.mat"), {"class_names": names})
    for split, per_class, mat in (
        ("train", train_per_class, out / "devkit" / "cars_train_annos.mat"),
        ("test", test_per_class, out / "cars_test_annos_withlabels.mat"),
    ):
        # interleave classes, as the official numbering does
        labels = [c for _ in range(per_class) for c in range(classes)]
        fnames = [f"{i + 1:05d}.jpg" for i in range(len(labels))]
        for i, (f, y) in enumerate(zip(fnames, labels)):
            write_image(out / f"cars_{split}" / f, y, classes, (size, size), 7 * i + len(split))
        scipy.io.savemat(str(mat), {"annotations": _cars_annotations(fnames, labels, size)})
    return out


def make_aircraft(root: Path, classes: int = 3, per_split: int = 2, size: int = 32) -> Path:
    """`data/images/<id>.jpg` (size x size+20, banner at the bottom), `data/variants.txt`,
    `data/images_variant_{train,val,test}.txt`; `per_split` images per class in each split."""
    out = Path(root) / "fgvc_aircraft"
    data = out / "data"
    names = _names(AIRCRAFT_NAMES, classes, "Variant ")
    data.mkdir(parents=True, exist_ok=True)
    (data / "variants.txt").write_text("".join(f"{n}\n" for n in names))
    image_id = 1_000_000
    for split in ("train", "val", "test"):
        lines = []
        for c, name in enumerate(names):
            for _ in range(per_split):
                image_id += 1
                write_image(
                    data / "images" / f"{image_id:07d}.jpg",
                    c,
                    classes,
                    (size, size + AIRCRAFT_BANNER_PX),
                    image_id,
                    banner_px=AIRCRAFT_BANNER_PX,
                )
                lines.append(f"{image_id:07d} {name}\n")
        (data / f"images_variant_{split}.txt").write_text("".join(lines))
    return out


def make_dtd(
    root: Path, classes: int = 3, per_split: int = 2, splits: int = 1, size: int = 32
) -> Path:
    """`images/<class>/<class>_NNNN.jpg` (3 * per_split per class) and `labels/{train,val,test}K.txt`
    for K in 1..splits (split K rotates which images go where)."""
    out = Path(root) / "dtd"
    names = _names(DTD_NAMES, classes, "texture")
    _folder_per_class(out / "images", names, 3 * per_split, 0, size)
    (out / "labels").mkdir(parents=True, exist_ok=True)
    for k in range(1, splits + 1):
        for s, split in enumerate(("train", "val", "test")):
            lines = []
            for name in names:
                for i in range(per_split):
                    index = (
                        (s + k - 1) % 3
                    ) * per_split + i  # split K shifts every image by one split
                    lines.append(f"{name}/{name}_{index:04d}.jpg\n")
            (out / "labels" / f"{split}{k}.txt").write_text("".join(lines))
    return out
