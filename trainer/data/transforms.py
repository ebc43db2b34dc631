"""Image transforms: timm's `create_transform`, fed from `TrainConfig`, plus one guard.

Training: random-resized crop + horizontal flip (the *default settings*' augmentation), then timm's
auto-augment from `cfg.aa` (e.g. `rand-m9-mstd0.5-inc1`), colour jitter (`cfg.color_jitter`, which
timm applies only without auto-augment, as the paper's code did with its 0.4) and random erasing
(`cfg.reprob`, `cfg.remode`) when asked for. timm's factory default jitter of 0.4 is not taken over:
off unless `color_jitter` is set. The training crop's interpolation is the model's unless
`cfg.train_interpolation` names one ("random": bilinear or bicubic per crop, the paper's code's
default). Evaluation: resize by `1 / crop_pct`, centre crop. Size, mean, std, interpolation and
crop_pct come from timm's `resolve_data_config` dict; a set `cfg.img_size`, `cfg.mean` or `cfg.std`
overrides its value.

The posterize guard. timm 1.0.x's increasing-severity posterize (`PosterizeIncreasing`, used by
every `inc1` RandAugment string and AugMix) keeps `4 - int(m / 10 * 4)` bits, so magnitude 10 keeps
0 bits; with `m9-mstd0.5` the sampled magnitude reaches 10 (clipped from above) in ~2.3% of
posterize calls, about 1 augmented image in 650 (measured with timm 1.0.31). Pillow >= 13 rejects
`ImageOps.posterize(img, 0)` with `ValueError: bits must be between or equal to 1 and 8`, raised in
a DataLoader worker: a real dataset dies in its first epoch. (Plain `Posterize` at magnitude < 2.5
hits the same 0.) Older Pillow turned 0 bits into an all-black image, which carries no label
information anyway, so every posterize op of the transforms built here keeps at least 1 bit: the
most severe posterize that still leaves an image. Only that op's `aug_fn`, on the instances inside
our own transform, is replaced; timm's tables, every other op and posterize at >= 1 bit are
untouched, so other users of timm in the process see no change.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from PIL import Image
from timm.data import create_transform
from timm.data.auto_augment import AugmentOp
from timm.data.auto_augment import posterize as timm_posterize

from ..config import InputError, TrainConfig


def posterize_keep_one_bit(img: Image.Image, bits_to_keep: int, **kwargs: Any) -> Image.Image:
    """timm's posterize with `bits_to_keep` clamped to >= 1 (Pillow 13 rejects 0)."""
    return timm_posterize(img, max(1, int(bits_to_keep)), **kwargs)


def augment_ops(transform: Any) -> Iterator[AugmentOp]:
    """Every timm `AugmentOp` inside a transform: Compose.transforms, RandAugment/AugMix .ops,
    AutoAugment .policy (a list of sub-policies)."""
    if isinstance(transform, AugmentOp):
        yield transform
        return
    if isinstance(transform, (list, tuple)):
        for t in transform:
            yield from augment_ops(t)
        return
    for attr in ("transforms", "ops", "policy"):
        children = getattr(transform, attr, None)
        if isinstance(children, (list, tuple)):
            yield from augment_ops(children)


def guard_posterize(transform: Any) -> Any:
    """Make every posterize op inside `transform` keep >= 1 bit (see the module docstring)."""
    for op in augment_ops(transform):
        if op.aug_fn is timm_posterize:
            op.aug_fn = (
                posterize_keep_one_bit  # a module-level function: still picklable for workers
            )
    return transform


def build_transform(
    cfg: TrainConfig, data_config: dict, training: bool
) -> Callable[[Image.Image], Any]:
    """PIL image -> normalised float tensor `3 x H x W`, for training (random) or evaluation."""
    input_size = tuple(data_config["input_size"])
    if cfg.img_size is not None:
        input_size = (3, cfg.img_size, cfg.img_size)
    interpolation = data_config.get("interpolation", "bilinear")
    common = dict(
        input_size=input_size,
        mean=_channels(cfg.mean or data_config["mean"]),
        std=_channels(cfg.std or data_config["std"]),
    )
    if not training:
        return create_transform(
            **common,
            is_training=False,
            interpolation=interpolation,
            crop_pct=data_config.get("crop_pct"),
            crop_mode=data_config.get("crop_mode"),
        )
    if cfg.aa:
        # timm skips a section without a number ("rand-mX") without a word: refuse it instead
        for section in cfg.aa.split("-")[1:]:
            if not any(ch.isdigit() for ch in section):
                raise InputError(
                    f"aa {cfg.aa!r} is not a valid timm auto-augment string (section "
                    f"{section!r} has no value, e.g. m9)"
                )
    try:
        transform = create_transform(
            **common,
            is_training=True,
            interpolation=cfg.train_interpolation or interpolation,
            scale=cfg.crop_scale,
            hflip=cfg.hflip,
            # None, not 0: a zero ColorJitter would still draw from the RNG for every image
            color_jitter=cfg.color_jitter or None,
            auto_augment=cfg.aa,
            re_prob=cfg.reprob,
            re_mode=cfg.remode,
        )
    except (AssertionError, ValueError, KeyError, IndexError) as e:
        # timm parses the aa string with asserts and int(): turn its failure into one clear line.
        raise InputError(f"aa {cfg.aa!r} is not a valid timm auto-augment string ({e!r})") from e
    return guard_posterize(transform)


def _channels(values: Any) -> tuple[float, ...]:
    """A mean or std as 3 channel values (one value stands for all three)."""
    values = tuple(float(v) for v in values)
    return values * 3 if len(values) == 1 else values
