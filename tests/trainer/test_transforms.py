"""`build_transform` (timm's factory, fed from TrainConfig) and the RandAugment posterize guard."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import timm.data
import torch
from PIL import Image
from timm.data.auto_augment import NAME_TO_OP, AugmentOp, RandAugment
from torchvision import transforms as T

from trainer.config import InputError, TrainConfig
from trainer.data import TransformedDataset, build_splits, build_transform
from trainer.data.transforms import augment_ops, posterize_keep_one_bit

SEED_AA = "rand-m9-mstd0.5-inc1"  # the paper's augmentation string
DATA_CONFIG = timm.data.resolve_data_config({"input_size": (3, 32, 32)})


def image(w: int = 40, h: int = 48) -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


def posterize_op(transform) -> AugmentOp:
    (op,) = [op for op in augment_ops(transform) if op.name == "PosterizeIncreasing"]
    return op


def at_magnitude_10(op: AugmentOp) -> AugmentOp:
    """Pin the op where the magnitude noise occasionally lands: m = 10 -> 4 - int(10/10*4) = 0 bits."""
    op.prob, op.magnitude, op.magnitude_std = 1.0, 10, 0.0
    return op


@pytest.mark.parametrize("training", [True, False])
def test_output_is_normalised_tensor_at_32px(training):
    cfg = TrainConfig(aa=SEED_AA, reprob=0.25) if training else TrainConfig()
    out = build_transform(cfg, DATA_CONFIG, training=training)(image())
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float32
    assert out.shape == (3, 32, 32)
    assert out.min() < 0  # normalised by mean/std, not raw [0, 1]


def test_img_size_overrides_data_config():
    t = build_transform(TrainConfig(img_size=24), DATA_CONFIG, training=False)
    assert t(image()).shape == (3, 24, 24)


def test_default_training_augmentation_is_crop_and_flip_only():
    t = build_transform(TrainConfig(), DATA_CONFIG, training=True)
    kinds = [type(x).__name__ for x in t.transforms]
    assert kinds[:2] == ["RandomResizedCropAndInterpolation", "RandomHorizontalFlip"]
    assert not any(isinstance(x, (T.ColorJitter, RandAugment)) for x in t.transforms)


def crop_and_jitter(t) -> tuple:
    (crop,) = [x for x in t.transforms if type(x).__name__ == "RandomResizedCropAndInterpolation"]
    jitter = [x for x in t.transforms if isinstance(x, T.ColorJitter)]
    return crop, jitter


def test_colour_jitter_applies_only_without_auto_augment():
    crop, (jitter,) = crop_and_jitter(
        build_transform(TrainConfig(color_jitter=0.4), DATA_CONFIG, training=True)
    )
    assert jitter.brightness == jitter.contrast == jitter.saturation == pytest.approx((0.6, 1.4))
    assert jitter.hue is None
    _, none = crop_and_jitter(
        build_transform(TrainConfig(color_jitter=0.4, aa=SEED_AA), DATA_CONFIG, training=True)
    )
    assert none == []  # timm's rule, the paper's code's too: auto-augment replaces the jitter


def test_training_interpolation_random_or_the_models():
    crop, _ = crop_and_jitter(
        build_transform(TrainConfig(train_interpolation="random"), DATA_CONFIG, training=True)
    )
    modes = {T.InterpolationMode.BILINEAR, T.InterpolationMode.BICUBIC}
    assert isinstance(crop.interpolation, tuple) and set(crop.interpolation) == modes
    bicubic = {**DATA_CONFIG, "interpolation": "bicubic"}
    crop, _ = crop_and_jitter(build_transform(TrainConfig(), bicubic, training=True))
    assert crop.interpolation == T.InterpolationMode.BICUBIC  # unset: the model's own
    evaluation = build_transform(TrainConfig(train_interpolation="random"), bicubic, False)
    assert evaluation.transforms[0].interpolation == T.InterpolationMode.BICUBIC
    with pytest.raises(InputError, match="train_interpolation must be one of random, bilinear"):
        TrainConfig(train_interpolation="lanczos3")


@pytest.mark.parametrize("training", [True, False])
def test_mean_and_std_override_the_models(training):
    cfg = TrainConfig(mean=(0.53, 0.47, 0.43), std=(0.27,))
    (norm,) = [
        x
        for x in build_transform(cfg, DATA_CONFIG, training).transforms
        if isinstance(x, T.Normalize)
    ]
    assert norm.mean.tolist() == pytest.approx([0.53, 0.47, 0.43])
    assert norm.std.tolist() == pytest.approx([0.27] * 3)
    with pytest.raises(InputError, match="std must be > 0"):
        TrainConfig(std=(0.2, 0.0, 0.2))
    with pytest.raises(InputError, match="mean takes 1 or 3 values"):
        TrainConfig(mean=(0.5, 0.5))


def test_eval_transform_is_deterministic():
    t = build_transform(TrainConfig(aa=SEED_AA, reprob=1.0), DATA_CONFIG, training=False)
    assert torch.equal(t(image()), t(image()))


def test_bad_aa_string_is_input_error():
    with pytest.raises(InputError, match="rand-q9"):
        build_transform(TrainConfig(aa="rand-q9"), DATA_CONFIG, training=True)


def test_transformed_dataset_over_a_real_split():
    splits = build_splits(TrainConfig(dataset="digits"))
    ds = TransformedDataset(
        splits.train, build_transform(TrainConfig(aa=SEED_AA), DATA_CONFIG, True)
    )
    x, y = ds[3]
    assert len(ds) == len(splits.train) and x.shape == (3, 32, 32) and y == splits.train[3][1]


# --- the RandAugment posterize crash (docs/design.md, "Known pitfalls") ---------------------------


def test_unguarded_timm_posterize_at_magnitude_10_raises():
    """Documents the bug the guard exists for. If this starts failing, timm/Pillow fixed the 0-bit
    posterize: the guard in trainer/data/transforms.py can then go, and this test with it."""
    op = at_magnitude_10(AugmentOp("PosterizeIncreasing", prob=1.0, magnitude=10))
    assert op.level_fn(10, op.hparams) == (0,)
    with pytest.raises(ValueError, match="bits must be between or equal to 1 and 8"):
        op(image())


def test_guarded_transform_survives_magnitude_10():
    t = build_transform(TrainConfig(aa=SEED_AA), DATA_CONFIG, training=True)
    op = at_magnitude_10(posterize_op(t))
    out = op(image())
    assert isinstance(out, Image.Image)
    assert set(np.unique(np.asarray(out))) <= {0, 128}  # the most severe posterize: 1 bit
    # and through the whole pipeline, with RandAugment forced to pick that op
    ra = next(x for x in t.transforms if isinstance(x, RandAugment))
    ra.ops, ra.num_layers = [op], 1
    assert t(image()).shape == (3, 32, 32)


def test_guard_keeps_timm_behaviour_elsewhere():
    t = build_transform(TrainConfig(aa=SEED_AA), DATA_CONFIG, training=True)
    ops = list(augment_ops(t))
    assert len(ops) == 15
    for op in ops:
        expected = (
            posterize_keep_one_bit if op.name == "PosterizeIncreasing" else NAME_TO_OP[op.name]
        )
        assert op.aug_fn is expected
    # at a magnitude timm handles (m=5 -> 2 bits), the guarded op gives timm's exact pixels
    guarded = posterize_op(t)
    guarded.prob, guarded.magnitude, guarded.magnitude_std = 1.0, 5, 0.0
    plain = AugmentOp("PosterizeIncreasing", prob=1.0, magnitude=5)
    assert np.array_equal(np.asarray(guarded(image())), np.asarray(plain(image())))
    # timm's own tables are untouched: other users in the process still get timm's op
    assert AugmentOp("PosterizeIncreasing").aug_fn is NAME_TO_OP["PosterizeIncreasing"]


def test_guard_covers_augmix_and_survives_pickling():
    t = build_transform(TrainConfig(aa="augmix-m5-w2"), DATA_CONFIG, training=True)
    assert posterize_op(t).aug_fn is posterize_keep_one_bit
    # DataLoader workers started with spawn receive the transform pickled
    t2 = pickle.loads(
        pickle.dumps(build_transform(TrainConfig(aa=SEED_AA), DATA_CONFIG, training=True))
    )
    op = at_magnitude_10(posterize_op(t2))
    assert op.aug_fn is posterize_keep_one_bit and isinstance(op(image()), Image.Image)
