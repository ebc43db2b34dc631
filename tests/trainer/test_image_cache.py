"""The decoded-image cache (`trainer/data/cache.py`): same pixels as the files, invalidation, two
builders at once, and a run with and without it.

Every test writes its cache under its own `tmp_path` (`NBTL_IMAGE_CACHE_DIR`), never to the home cache.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import queue
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from tests.trainer.conftest import IMG, MODEL
from tests.trainer.trees import write_image
from trainer import TrainConfig, fit
from trainer.cli import parse_config
from trainer.data import ImageArray, ImageFiles, Splits, build_transform, cache_splits
from trainer.data import cache as image_cache
from trainer.data.cache import DATA_FILE, LOCK_FILE, cached_images, shrink_op

WAIT_S = 120  # upper bound for an event between the two builder processes (not a synchronisation)


@pytest.fixture(autouse=True)
def cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "image-cache"
    monkeypatch.setenv("NBTL_IMAGE_CACHE_DIR", str(folder))
    return folder


def eval_transform(img_size: int, interpolation: str, crop_pct: float):
    """The trainer's eval transform for a model with this data config (timm's crop_mode "center")."""
    data_config = {
        "input_size": (3, img_size, img_size),
        "interpolation": interpolation,
        "mean": (0.5, 0.5, 0.5),
        "std": (0.5, 0.5, 0.5),
        "crop_pct": crop_pct,
        "crop_mode": "center",
    }
    return build_transform(TrainConfig(img_size=img_size), data_config, training=False)


def jpeg_files(folder: Path, short: int) -> ImageFiles:
    """JPEGs around the cache's shorter side `short`: larger ones (landscape, portrait, very wide),
    one with exactly `short` and one smaller (both stored as decoded)."""
    sizes = [
        (2 * short, 3 * short // 2),
        (4 * short // 3, 2 * short),
        (3 * short, short + 1),
        (short, short + 9),
        (short - 5, short - 5),
    ]
    samples = [
        (str(write_image(folder / f"{i}.jpg", i % 3, 3, size, seed=i)), i % 3)
        for i, size in enumerate(sizes)
    ]
    return ImageFiles(samples)


def shrunk(files: ImageFiles, index: int, resize) -> np.ndarray:
    """What the cache should hold for one image: decoded by the file path, shrunk, never enlarged."""
    img = files.load(index)
    return np.asarray(resize(img) if min(img.size) > resize.size else img)


def image_size(path: Path) -> tuple[int, int]:
    with Image.open(path) as im:
        return im.size


@pytest.mark.parametrize(
    "interpolation, crop_pct, img_size",
    [
        ("bilinear", 0.95, 32),  # test_resnet
        ("bicubic", 0.875, 64),
    ],
)  # inception_v4
def test_eval_transform_gives_the_same_tensors_as_the_files(
    tmp_path, interpolation, crop_pct, img_size
):
    tf = eval_transform(img_size, interpolation, crop_pct)
    resize = shrink_op(tf)
    short = int(img_size / crop_pct)
    assert resize is not None and resize.size == short
    files = jpeg_files(tmp_path / "jpg", short)
    cached = cached_images(files, "t-train", resize)
    assert cached is not None and cached.built
    for i in range(len(files)):
        original, from_cache = files.load(i), cached.load(i)
        # the cache really shrinks large images to the eval resize's shorter side, and never enlarges
        assert min(from_cache.size) == min(short, *original.size), (original.size, from_cache.size)
        w, h = original.size
        assert abs(from_cache.size[0] / from_cache.size[1] - w / h) < 2 / min(from_cache.size)
        # exact: the stored pixels are the output of the eval transform's own Resize
        assert torch.equal(tf(original), tf(from_cache)), f"image {i} {original.size}"
    assert cached.labels == files.labels


def test_a_changed_source_file_or_resize_rebuilds_the_cache(tmp_path, cache_dir):
    resize = shrink_op(eval_transform(IMG, "bilinear", 0.95))
    files = jpeg_files(tmp_path / "jpg", resize.size)
    first = cached_images(files, "t-train", resize)
    assert first.built
    assert not cached_images(files, "t-train", resize).built  # unchanged: reused
    before = np.asarray(first.load(1))
    path = Path(files.paths[1])

    # a new mtime alone (same bytes: a copy, a restore) is a change the cache cannot rule out
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    touched = cached_images(files, "t-train", resize)
    assert touched.built and touched.path == first.path
    np.testing.assert_array_equal(np.asarray(touched.load(1)), before)

    # rewrite image 1 with other content, same size; the mtime moves on by 5 s whatever the clock
    stat = path.stat()
    write_image(path, 2, 3, image_size(path), seed=999)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 5_000_000_000))
    second = cached_images(ImageFiles(list(zip(files.paths, files.labels))), "t-train", resize)
    assert second.built and second.path == first.path
    after = np.asarray(second.load(1))
    assert not np.array_equal(after, before)
    np.testing.assert_array_equal(after, shrunk(files, 1, resize))
    # a reader that mapped the old file keeps its consistent snapshot; other images are unchanged
    np.testing.assert_array_equal(np.asarray(first.load(1)), before)
    np.testing.assert_array_equal(np.asarray(second.load(0)), shrunk(files, 0, resize))

    # another resize size is another cache, built from the files
    other = shrink_op(eval_transform(24, "bilinear", 0.95))
    third = cached_images(files, "t-train", other)
    assert third.built and third.path != first.path
    for i in range(len(files)):
        np.testing.assert_array_equal(np.asarray(third.load(i)), shrunk(files, i, other))


def test_a_torn_cache_file_is_rebuilt_and_stale_temp_files_removed(tmp_path):
    resize = shrink_op(eval_transform(IMG, "bilinear", 0.95))
    files = jpeg_files(tmp_path / "jpg", resize.size)
    first = cached_images(files, "t-train", resize)
    data = first.path.read_bytes()
    first.path.write_bytes(
        data[:-100]
    )  # e.g. a copy cut short: the header no longer matches the size
    (first.path.parent / ".tmp-left-by-a-killed-builder").write_bytes(b"x" * 10)
    again = cached_images(files, "t-train", resize)
    assert again.built
    assert again.path.read_bytes() == data
    assert sorted(p.name for p in again.path.parent.iterdir()) == [DATA_FILE, LOCK_FILE]


def _builder(
    role: str, samples: list, resize, cache_root: str, first_locked, second_waiting, results
) -> None:
    """One of two processes that both find no cache and both go on to build it.

    The first takes the build lock and holds it until the second has found no cache and is about to
    ask for the lock; only then does the first build. So the second really waits for the first."""
    os.environ["NBTL_IMAGE_CACHE_DIR"] = cache_root
    real_lock = image_cache._locked

    @contextlib.contextmanager
    def choreographed(folder):
        if role == "first":
            with real_lock(folder):
                first_locked.set()
                if not second_waiting.wait(WAIT_S):
                    raise TimeoutError("the second builder never asked for the lock")
                yield
        else:
            if not first_locked.wait(WAIT_S):
                raise TimeoutError("the first builder never took the lock")
            second_waiting.set()
            with real_lock(folder):
                yield

    image_cache._locked = choreographed
    cached = cached_images(ImageFiles(samples), "t-train", resize)
    results.put((role, cached.built, [np.asarray(cached.load(i)) for i in range(len(cached))]))


def test_two_processes_building_at_once_end_with_one_valid_cache(tmp_path, cache_dir):
    resize = shrink_op(eval_transform(IMG, "bilinear", 0.95))
    files = jpeg_files(tmp_path / "jpg", resize.size)
    samples = list(zip(files.paths, files.labels))
    ctx = mp.get_context("spawn")
    first_locked, second_waiting, results = ctx.Event(), ctx.Event(), ctx.Queue()
    procs = [
        ctx.Process(
            target=_builder,
            args=(role, samples, resize, str(cache_dir), first_locked, second_waiting, results),
        )
        for role in ("first", "second")
    ]
    for p in procs:
        p.start()
    try:
        got = {}
        for _ in procs:
            role, built, pixels = results.get(timeout=WAIT_S)
            got[role] = (built, pixels)
    except queue.Empty:
        pytest.fail(f"a builder process gave no result; exit codes {[p.exitcode for p in procs]}")
    finally:
        for p in procs:
            p.join(WAIT_S)
    assert [p.exitcode for p in procs] == [0, 0]
    assert (
        got["first"][0] is True and got["second"][0] is False
    )  # the second used the first's cache
    expected = [shrunk(files, i, resize) for i in range(len(files))]
    for role, (_, pixels) in got.items():
        assert len(pixels) == len(expected)
        for i, (a, b) in enumerate(zip(pixels, expected)):
            np.testing.assert_array_equal(a, b, err_msg=f"{role} process, image {i}")
    folders = list(cache_dir.iterdir())
    assert len(folders) == 1
    assert sorted(p.name for p in folders[0].iterdir()) == [DATA_FILE, LOCK_FILE]  # no temp files
    assert not cached_images(files, "t-train", resize).built


def test_cache_splits_wraps_only_the_file_splits_a_run_reads(tmp_path, monkeypatch):
    tf = eval_transform(IMG, "bilinear", 0.95)
    short = shrink_op(tf).size
    files = {s: jpeg_files(tmp_path / s, short) for s in ("train", "val", "test")}
    splits = Splits(files["train"], files["val"], files["test"], ("a", "b", "c"))
    searched = cache_splits(splits, TrainConfig(), tf)
    assert [type(s).__name__ for s in (searched.train, searched.val, searched.test)] == [
        "CachedImages",
        "CachedImages",
        "ImageFiles",
    ]  # a search never evaluates the test split
    final = cache_splits(splits, TrainConfig(eval_test=True), tf)
    assert type(final.test).__name__ == "CachedImages"

    array = ImageArray(np.zeros((2, 8, 8, 3), np.uint8), [0, 1])
    generated = Splits(array, array, array, ("a", "b"))
    assert cache_splits(generated, TrainConfig(eval_test=True), tf) == generated
    # timm's "squash" crop mode resizes both sides: no cache size keeps evaluation exact, so none
    squash = build_transform(
        TrainConfig(img_size=IMG),
        {
            "input_size": (3, IMG, IMG),
            "interpolation": "bilinear",
            "mean": (0.5,) * 3,
            "std": (0.5,) * 3,
            "crop_pct": 0.95,
            "crop_mode": "squash",
        },
        training=False,
    )
    assert shrink_op(squash) is None
    assert cache_splits(splits, TrainConfig(), squash) == splits

    # a cache that would not fit on the disk is skipped with a warning: the run reads the files
    monkeypatch.setattr(image_cache.shutil, "disk_usage", lambda _: SimpleNamespace(free=1000))
    other = {s: jpeg_files(tmp_path / f"other-{s}", short) for s in ("train", "val", "test")}
    with pytest.warns(UserWarning, match="image cache skipped"):
        full_disk = cache_splits(
            Splits(other["train"], other["val"], other["test"], ("a", "b", "c")), TrainConfig(), tf
        )
    assert full_disk.train is other["train"] and full_disk.val is other["val"]


def test_no_image_cache_flag():
    assert parse_config([]).image_cache is True
    assert parse_config(["--no-image-cache"]).image_cache is False


def test_a_run_gives_the_same_results_with_and_without_the_cache(tmp_path, source_ckpt, cache_dir):
    # Training images 32 px, no larger than the cache size S = floor(32 / 0.95) = 33, are stored as
    # decoded, so training is the same draw with and without the cache; the val and test images are
    # larger and stored shrunk to S (evaluation is pixel-exact). See cache.py for larger train images.
    data = tmp_path / "tree"
    for c in range(3):
        for k in range(6):
            write_image(data / "train" / f"c{c}" / f"{k}.jpg", c, 3, (IMG, IMG), seed=100 * c + k)
        for k in range(3):
            write_image(
                data / "val" / f"c{c}" / f"{k}.jpg", c, 3, (48 + 4 * k, 40), seed=1000 + 10 * c + k
            )
        for k in range(2):
            write_image(
                data / "test" / f"c{c}" / f"{k}.jpg", c, 3, (40, 56), seed=2000 + 10 * c + k
            )
    # RandAugment and random erasing on: augmentation runs per sample on the cached images
    cfg = TrainConfig(
        dataset="imagefolder",
        data_dir=str(data),
        model=MODEL,
        img_size=IMG,
        pretrained_file=str(source_ckpt),
        epochs=2,
        batch_size=8,
        lrs=(0.05,),
        new_layers=2,
        aa="rand-m9-mstd0.5-inc1",
        reprob=0.25,
        eval_test=True,
    )
    without = fit(cfg.replace(image_cache=False))
    assert not cache_dir.exists()
    with_cache = fit(cfg)
    names = sorted(p.name.split("-")[1] for p in cache_dir.iterdir())
    assert names == ["test", "train", "val"]  # the run really read from the cache

    def metrics(result):
        return [(m.train_loss, m.val_loss, m.val_top1, m.val_top5) for m in result.history]

    assert metrics(with_cache) == metrics(without)
    assert with_cache.best_val_top1 == without.best_val_top1
    assert with_cache.test == without.test
