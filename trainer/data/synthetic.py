"""Generated 32-px sets for the offline demo, rendered in memory (no data_dir, nothing downloaded).

- `digits` (the demo's TARGET): scikit-learn's bundled 8x8 digits 5-9 (5 classes, labels 0..4, class
  names "5".."9", 896 images; `extra.classes` picks other digits, below), each rendered into a
  cluttered 32x32 RGB scene: a smooth random
  colour gradient as background, the digit upscaled to 20-30 px at a random position in a random
  colour that stands out from the background, 0-1 random distractor lines drawn over it, Gaussian pixel
  noise (sigma 10 of 255). (With 14-26 px digits and 2-4 lines, 10 images per class left every
  setting near chance: ~30% val top-1 for 5 classes, measured 2026-11-28.) Split per class after a fixed shuffle: 10 train (`extra.train_per_class`),
  40 val (`extra.val_per_class`), the rest (~130 per class) test.
  Options: `extra.classes`, the digits to use as a list in increasing order (default [5, 6, 7, 8, 9];
  [0, 1, ..., 9] is all 1,797 images, ~180 per class), labelled 0.. in that order and named by the
  digit; a different list renders the scenes in another order, so the scenes of digits 5-9 then differ
  from the default's. `extra.split_seed` (default 0: the split above) draws another split of the same
  rendered images: the shuffle before the split is seeded with `GEN_SEED + 1 + split_seed`.
- `shapes` (the demo's SOURCE for pre-training): 10 classes (circle, square, triangle, cross, ring,
  stripes-h, stripes-v, checker, dots, star) drawn on the same kind of background with random colour,
  position, size and (for the polygons) rotation, plus the same noise; 360 per class = 3,600 images,
  split per class 300 train / 30 val / 30 test.

Both are generated from the fixed seed `GEN_SEED`, whatever `cfg.seed` says (a run's seed must not
change its data), and cached per process (`functools.lru_cache`) so the trials of one worker render
them once; the cached arrays are read-only and shared by every split built from them.
"""

from __future__ import annotations

import functools
import math

import numpy as np
from PIL import Image, ImageDraw

from ..config import InputError, TrainConfig
from .base import ImageArray, Splits, extra_int

GEN_SEED = 0
SIZE = 32
NOISE_SIGMA = 10.0
DIGIT_PX = (20, 30)  # digit size range
DIGIT_CONTRAST = 150.0  # min RGB distance of the digit's colour from its background
DISTRACTORS = (0, 1)  # random lines drawn over a digit scene
DIGITS = (5, 6, 7, 8, 9)  # the default `extra.classes`
SHAPES = (
    "circle",
    "square",
    "triangle",
    "cross",
    "ring",
    "stripes-h",
    "stripes-v",
    "checker",
    "dots",
    "star",
)
SHAPES_PER_CLASS = (300, 30, 30)  # train, val, test
_SS = 2  # shapes are drawn at 2x and box-downsampled: anti-aliased edges at 32 px


@functools.lru_cache(maxsize=4)
def _corner_weights(size: int) -> np.ndarray:
    t = np.linspace(0.0, 1.0, size, dtype=np.float32)
    wy, wx = np.meshgrid(t, t, indexing="ij")
    return np.stack([(1 - wy) * (1 - wx), (1 - wy) * wx, wy * (1 - wx), wy * wx], axis=-1)


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A smooth background: bilinear blend of 4 random corner colours, float32 `size x size x 3`."""
    return _corner_weights(size) @ rng.uniform(0, 255, (4, 3)).astype(np.float32)


def _contrasting_colour(
    rng: np.random.Generator, against: np.ndarray, min_dist: float = 110.0
) -> np.ndarray:
    """A random colour at least `min_dist` (RGB distance) from `against`, or the farthest of 16 draws."""
    candidates = rng.uniform(0, 255, (16, 3))
    dist = np.linalg.norm(candidates - against, axis=1)
    ok = np.flatnonzero(dist >= min_dist)
    return candidates[ok[0]] if len(ok) else candidates[dist.argmax()]


def _add_noise(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Gaussian pixel noise (sigma `NOISE_SIGMA`) on a uint8 stack, returned read-only."""
    noise = rng.standard_normal(images.shape, dtype=np.float32) * NOISE_SIGMA
    return _frozen(np.clip(np.rint(images + noise), 0, 255).astype(np.uint8))


def _frozen(array: np.ndarray) -> np.ndarray:
    array.flags.writeable = False  # cached arrays are shared by every trial of the process
    return array


@functools.lru_cache(maxsize=4)
def render_digits(
    seed: int = GEN_SEED, classes: tuple[int, ...] = DIGITS
) -> tuple[np.ndarray, np.ndarray]:
    """All images of the digits in `classes` (increasing) as cluttered scenes:
    (uint8 `N x 32 x 32 x 3`, labels 0..len(classes)-1, the position of each digit in `classes`)."""
    from sklearn.datasets import load_digits  # bundled with scikit-learn: no download

    data = load_digits()
    keep = np.isin(data.target, classes)
    glyphs, labels = data.images[keep], np.searchsorted(classes, data.target[keep])
    rng = np.random.default_rng(seed)
    images = np.empty((len(glyphs), SIZE, SIZE, 3), dtype=np.uint8)
    for i, glyph in enumerate(glyphs):
        scene = _background(rng, SIZE)
        s = int(rng.integers(DIGIT_PX[0], DIGIT_PX[1] + 1))
        x, y = (int(v) for v in rng.integers(0, SIZE - s + 1, 2))
        alpha = (
            np.asarray(
                Image.fromarray(np.uint8(glyph * (255 / 16))).resize((s, s), Image.BILINEAR),
                dtype=np.float32,
            )[..., None]
            / 255.0
        )
        patch = scene[y : y + s, x : x + s]
        colour = _contrasting_colour(rng, patch.mean(axis=(0, 1)), DIGIT_CONTRAST)
        scene[y : y + s, x : x + s] = patch * (1 - alpha) + colour * alpha
        canvas = Image.fromarray(
            scene.astype(np.uint8)
        )  # values stay within [0, 255]: a convex blend
        draw = ImageDraw.Draw(canvas)
        for _ in range(int(rng.integers(DISTRACTORS[0], DISTRACTORS[1] + 1))):
            ends = [int(v) for v in rng.integers(-4, SIZE + 4, 4)]
            draw.line(ends, fill=tuple(int(c) for c in rng.integers(0, 256, 3)), width=1)
        images[i] = np.asarray(canvas)
    return _add_noise(images, rng), _frozen(labels.astype(np.int64))


def _polygon(cx: float, cy: float, radii: list[float], angle: float) -> list[tuple[float, float]]:
    """Vertices at evenly spaced angles (starting at `angle`) and the given radii, in turn."""
    n = len(radii)
    return [
        (
            cx + r * math.cos(angle + 2 * math.pi * k / n),
            cy + r * math.sin(angle + 2 * math.pi * k / n),
        )
        for k, r in enumerate(radii)
    ]


def _draw_shape(
    draw: ImageDraw.ImageDraw,
    kind: str,
    box: tuple[int, int, int, int],
    fill: tuple,
    rng: np.random.Generator,
) -> None:
    x0, y0, x1, y1 = box
    s, cx, cy = x1 - x0, (x0 + x1) / 2, (y0 + y1) / 2
    angle = float(rng.uniform(0, 2 * math.pi))
    if kind == "circle":
        draw.ellipse(box, fill=fill)
    elif kind == "ring":
        draw.ellipse(box, outline=fill, width=max(2, s // 6))
    elif kind == "square":
        draw.polygon(_polygon(cx, cy, [s / 2] * 4, angle), fill=fill)
    elif kind == "triangle":
        draw.polygon(_polygon(cx, cy, [s / 2] * 3, angle), fill=fill)
    elif kind == "star":
        draw.polygon(_polygon(cx, cy, [s / 2, s / 5] * 5, angle), fill=fill)
    elif kind == "cross":
        a, b = s / 2, s / 6  # arm half-length, arm half-width: a 12-vertex plus sign, rotated
        pts = [
            (b, a),
            (b, b),
            (a, b),
            (a, -b),
            (b, -b),
            (b, -a),
            (-b, -a),
            (-b, -b),
            (-a, -b),
            (-a, b),
            (-b, b),
            (-b, a),
        ]
        c, si = math.cos(angle), math.sin(angle)
        draw.polygon([(cx + u * c - v * si, cy + u * si + v * c) for u, v in pts], fill=fill)
    else:  # textures fill the box: bands / cells of half a period, 2-3.5 px at 32 px
        period = int(rng.integers(4, 8)) * _SS
        half = period // 2
        for i, u in enumerate(range(x0, x1, half)):
            for j, v in enumerate(range(y0, y1, half)):
                cell = (u, v, min(u + half, x1) - 1, min(v + half, y1) - 1)
                if (
                    (kind == "stripes-h" and j % 2 == 0)
                    or (kind == "stripes-v" and i % 2 == 0)
                    or (kind == "checker" and (i + j) % 2 == 0)
                ):
                    draw.rectangle(cell, fill=fill)
                elif kind == "dots" and i % 2 == 0 and j % 2 == 0:
                    draw.ellipse((u, v, u + half, v + half), fill=fill)


@functools.lru_cache(maxsize=4)
def render_shapes(
    seed: int = GEN_SEED, per_class: int = sum(SHAPES_PER_CLASS)
) -> tuple[np.ndarray, np.ndarray]:
    """`per_class` images of each shape class: (uint8 `N x 32 x 32 x 3`, labels 0..9), class-major."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(len(SHAPES)), per_class)
    big = SIZE * _SS
    images = np.empty((len(labels), SIZE, SIZE, 3), dtype=np.uint8)
    for i, label in enumerate(labels):
        background = _background(rng, big)
        s = int(rng.integers(12, 29)) * _SS
        x, y = (int(v) for v in rng.integers(0, big - s + 1, 2))
        colour = _contrasting_colour(
            rng, background[y : y + s : 4, x : x + s : 4].mean(axis=(0, 1))
        )
        canvas = Image.fromarray(background.astype(np.uint8))
        _draw_shape(
            ImageDraw.Draw(canvas),
            SHAPES[label],
            (x, y, x + s, y + s),
            tuple(int(c) for c in colour),
            rng,
        )
        images[i] = np.asarray(canvas.reduce(_SS))
    return _add_noise(images, rng), _frozen(labels)


def _split(images: np.ndarray, labels: np.ndarray, n_train: int, n_val: int, seed: int) -> tuple:
    rng = np.random.default_rng(seed)
    parts: tuple[list, list, list] = ([], [], [])
    for label in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == label))
        for part, chosen in zip(
            parts, (idx[:n_train], idx[n_train : n_train + n_val], idx[n_train + n_val :])
        ):
            part.extend(chosen.tolist())
    return tuple(ImageArray(images[sorted(p)], labels[sorted(p)]) for p in parts)


def _digit_classes(cfg: TrainConfig) -> tuple[int, ...]:
    value = cfg.extra.get("classes", list(DIGITS))
    if (
        not isinstance(value, (list, tuple))
        or len(value) < 2
        or not all(isinstance(d, int) and not isinstance(d, bool) and 0 <= d <= 9 for d in value)
        or list(value) != sorted(set(value))
    ):
        raise InputError(
            f"extra.classes must be a list of at least 2 distinct digits 0-9 in increasing "
            f"order, got {value!r}"
        )
    return tuple(value)


def digits(cfg: TrainConfig) -> Splits:
    classes = _digit_classes(cfg)
    images, labels = render_digits(GEN_SEED, classes)
    train, val, test = _split(
        images,
        labels,
        extra_int(cfg, "train_per_class", 10),
        extra_int(cfg, "val_per_class", 40),
        GEN_SEED + 1 + extra_int(cfg, "split_seed", 0),
    )
    return Splits(train, val, test, tuple(str(d) for d in classes))


def shapes(cfg: TrainConfig) -> Splits:
    images, labels = render_shapes(GEN_SEED, sum(SHAPES_PER_CLASS))
    train, val, test = _split(
        images, labels, SHAPES_PER_CLASS[0], SHAPES_PER_CLASS[1], GEN_SEED + 1
    )
    return Splits(train, val, test, SHAPES)
