"""Each loader reads its official layout (as built by `trees`) into the documented splits."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.trainer import trees
from trainer.config import InputError, TrainConfig
from trainer.data import DATASETS, Splits, build_splits
from trainer.data.synthetic import GEN_SEED, render_digits


def cfg(dataset: str, data_dir: Path | None = None, **kw) -> TrainConfig:
    return TrainConfig(dataset=dataset, data_dir=str(data_dir) if data_dir else None, **kw)


def sizes(s: Splits) -> tuple[int, int, int]:
    return len(s.train), len(s.val), len(s.test)


def check_items(s: Splits, image_size: tuple[int, int] | None = (32, 32)) -> None:
    """Every item is (RGB PIL image, int label in range), and its pixels show that label's colour."""
    for split in (s.train, s.val, s.test):
        for i in range(len(split)):
            img, label = split[i]
            assert isinstance(img, Image.Image) and img.mode == "RGB"
            assert isinstance(label, int) and 0 <= label < len(s.classes)
            if image_size is not None:
                assert img.size == image_size
                assert trees.label_of(img, len(s.classes)) == label


def paths(dataset) -> set[str]:
    return set(dataset.paths)


def test_imagefolder_carves_val_per_class(tmp_path):
    root = trees.make_imagefolder(tmp_path, classes=3, per_class=10)
    s = build_splits(cfg("imagefolder", root))
    assert s.classes == ("c0", "c1", "c2")
    assert sizes(s) == (27, 3, 6)  # 10% of 10 per class to val; test/ as it is
    assert sorted(s.val.labels) == [0, 1, 2]
    assert not paths(s.train) & paths(s.val)
    check_items(s)
    s30 = build_splits(cfg("imagefolder", root, extra={"val_fraction": 0.3}))
    assert sizes(s30) == (21, 9, 6)


def test_imagefolder_uses_val_folder_when_present(tmp_path):
    root = trees.make_imagefolder(tmp_path, classes=2, per_class=5, with_val=True, val_per_class=3)
    s = build_splits(cfg("imagefolder", root))
    assert sizes(s) == (10, 6, 4)
    assert all("/val/" in p for p in s.val.paths)
    check_items(s)


def test_imagefolder_without_test_names_the_missing_folder(tmp_path):
    root = trees.make_imagefolder(tmp_path, with_test=False)
    with pytest.raises(InputError, match=f"{root / 'test'}"):
        build_splits(cfg("imagefolder", root))


def test_imagefolder_rejects_unknown_class_in_test(tmp_path):
    root = trees.make_imagefolder(tmp_path, classes=2)
    trees.write_image(root / "test" / "stranger" / "x.jpg", 0, 2)
    with pytest.raises(InputError, match="stranger"):
        build_splits(cfg("imagefolder", root))


def test_imagenet_official_val_is_test(tmp_path):
    root = trees.make_imagenet(tmp_path, classes=3, train_per_class=10, val_per_class=2)
    s = build_splits(cfg("imagenet", root))
    assert len(s.classes) == 3 and s.classes[0].startswith("n")
    assert sizes(s) == (27, 3, 6)  # 2% of 10 rounds to 0, but every class keeps one val image
    assert all("/val/" in p for p in s.test.paths)
    check_items(s)


def test_caltech256_30_takes_30_then_20_like_the_paper_and_drops_clutter(tmp_path):
    root = trees.make_caltech256(tmp_path, classes=2, per_class=52)
    s = build_splits(cfg("caltech256_30", root))
    assert s.classes == ("ak47", "american-flag")
    assert sizes(s) == (60, 40, 4)  # the paper's code validated on images 31-50
    with_clutter = build_splits(cfg("caltech256_30", root, extra={"clutter": True}))
    assert with_clutter.classes == ("ak47", "american-flag", "clutter")
    assert not any("clutter" in p for split in (s.train, s.val, s.test) for p in split.paths)
    assert paths(s.train) | paths(s.val) | paths(s.test) == {
        str(p) for p in (root / "256_ObjectCategories").glob("0*/*.jpg")
    }
    check_items(s)


def test_caltech256_30_split_is_fixed_and_ignores_cfg_seed(tmp_path):
    root = trees.make_caltech256(tmp_path, classes=2, per_class=12)
    knobs = {"train_per_class": 5, "val_per_class": 3}
    a = build_splits(cfg("caltech256_30", root, seed=1, extra=knobs))
    b = build_splits(cfg("caltech256_30", root, seed=2, extra=knobs))
    assert sizes(a) == (10, 6, 8)
    assert (
        a.train.paths == b.train.paths
        and a.val.paths == b.val.paths
        and a.test.paths == b.test.paths
    )
    # a tiny tree: train fills first, then val takes what is left
    tiny = build_splits(cfg("caltech256_30", root, extra={"train_per_class": 10}))
    assert sizes(tiny) == (20, 4, 0)


def test_stanford_cars_reads_mat_files(tmp_path):
    root = trees.make_cars(tmp_path, classes=3, train_per_class=10, test_per_class=2)
    s = build_splits(cfg("stanford_cars", root))
    assert s.classes == ("Make0 Model 2000", "Make1 Model 2001", "Make2 Model 2002")
    assert sizes(s) == (27, 3, 6)
    assert all("/cars_test/" in p for p in s.test.paths)
    check_items(s)  # 1-based .mat classes land on the right labels


def test_stanford_cars_missing_meta_is_named(tmp_path):
    root = trees.make_cars(tmp_path)
    (root / "devkit" / "cars_meta.mat").unlink()
    with pytest.raises(InputError, match="cars_meta.mat"):
        build_splits(cfg("stanford_cars", root))


def test_stanford_cars_missing_image_is_named(tmp_path):
    root = trees.make_cars(tmp_path)
    (root / "cars_test" / "00002.jpg").unlink()
    with pytest.raises(InputError, match="00002.jpg"):
        build_splits(cfg("stanford_cars", root))


def test_fgvc_aircraft_official_lists_and_banner_crop(tmp_path):
    root = trees.make_aircraft(tmp_path, classes=3, per_split=2)
    s = build_splits(cfg("fgvc_aircraft", root))
    assert s.classes == ("707-320", "A300B4", "F/A-18")
    assert sizes(s) == (6, 6, 6)
    check_items(s, image_size=(32, 32))  # 52 px tall on disk: the 20-px white banner is cut off


def test_fgvc_aircraft_missing_split_list_is_named(tmp_path):
    root = trees.make_aircraft(tmp_path)
    (root / "data" / "images_variant_val.txt").unlink()
    with pytest.raises(InputError, match="images_variant_val.txt"):
        build_splits(cfg("fgvc_aircraft", root))


def test_dtd_split_1_and_other_splits(tmp_path):
    root = trees.make_dtd(tmp_path, classes=3, per_split=2, splits=2)
    s1 = build_splits(cfg("dtd", root))
    assert s1.classes == ("banded", "blotchy", "braided")
    assert sizes(s1) == (6, 6, 6)
    check_items(s1)
    s2 = build_splits(cfg("dtd", root, extra={"dtd_split": 2}))
    assert s2.train.paths == s1.val.paths  # trees shift every image by one split per K
    with pytest.raises(InputError, match="dtd_split"):
        build_splits(cfg("dtd", root, extra={"dtd_split": 11}))


def test_dtd_missing_list_is_named(tmp_path):
    root = trees.make_dtd(tmp_path)
    (root / "labels" / "test1.txt").unlink()
    with pytest.raises(InputError, match="test1.txt"):
        build_splits(cfg("dtd", root))


@pytest.mark.parametrize(
    "name", ["imagefolder", "imagenet", "caltech256_30", "stanford_cars", "fgvc_aircraft", "dtd"]
)
def test_data_dir_missing_or_absent(tmp_path, name):
    with pytest.raises(InputError, match="needs data_dir"):
        build_splits(cfg(name, None))
    missing = tmp_path / "nowhere"
    with pytest.raises(InputError, match=str(missing)):
        build_splits(cfg(name, missing))


def test_unknown_dataset_lists_known_names():
    with pytest.raises(InputError, match="unknown dataset 'cifar10'") as err:
        build_splits(cfg("cifar10"))
    assert all(name in str(err.value) for name in DATASETS)


def test_bad_extra_value_is_named(tmp_path):
    root = trees.make_imagefolder(tmp_path)
    with pytest.raises(InputError, match="val_fraction"):
        build_splits(cfg("imagefolder", root, extra={"val_fraction": 1.5}))


# --- generated sets ------------------------------------------------------------------------------


def pixels(dataset) -> np.ndarray:
    return np.stack([np.asarray(dataset[i][0]) for i in range(len(dataset))])


def test_digits_sizes_classes_and_independence_from_seed(tmp_path):
    a = build_splits(cfg("digits", tmp_path / "ignored", seed=1))
    b = build_splits(cfg("digits", seed=2))
    assert a.classes == ("5", "6", "7", "8", "9")
    assert sizes(a) == (50, 200, 646)  # 10 / 40 / rest of sklearn's 896 digits 5-9
    for split in (a.train, a.val):
        assert np.bincount(split.labels).tolist() == [len(split) // 5] * 5
    for x, y in ((a.train, b.train), (a.val, b.val), (a.test, b.test)):
        assert x.labels == y.labels and np.array_equal(pixels(x), pixels(y))
    img, _ = a.train[0]
    assert img.mode == "RGB" and img.size == (32, 32)


def test_digits_generation_is_deterministic_across_cache_clears():
    first = render_digits(GEN_SEED)[0]
    render_digits.cache_clear()
    again = render_digits(GEN_SEED)[0]
    assert again is not first and np.array_equal(first, again)
    assert not first.flags.writeable  # shared by every trial through the cache


def test_digits_split_knobs():
    s = build_splits(cfg("digits", extra={"train_per_class": 4, "val_per_class": 6}))
    assert sizes(s) == (20, 30, 846)


def test_shapes_sizes_and_balance():
    s = build_splits(cfg("shapes"))
    assert len(s.classes) == 10 and "checker" in s.classes
    assert sizes(s) == (3000, 300, 300)
    for split, per_class in ((s.train, 300), (s.val, 30), (s.test, 30)):
        assert np.bincount(split.labels).tolist() == [per_class] * 10
    again = build_splits(cfg("shapes", seed=7))
    assert np.array_equal(pixels(s.val), pixels(again.val))
    # the splits are disjoint: no generated image appears in two of them
    held_out = {img.tobytes() for split in (s.val, s.test) for img in pixels(split)}
    assert len(held_out) == 600 and not held_out & {img.tobytes() for img in pixels(s.train)}
