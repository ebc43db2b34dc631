"""`TrainConfig`: every knob of a fine-tuning run, with its default, in this one place.

The *default settings* that a study measures against are these defaults (plus the study's own
baseline grid), so nothing else in the repository may restate a training default.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any


class InputError(ValueError):
    """Bad user input (config, data layout, checkpoint): reported as one line, exit code 2."""


OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("step", "cosine", "none")
AMP_MODES = ("none", "bf16", "fp16")
REMODES = ("const", "rand", "pixel")
SPLITS = ("train", "trainval")


@dataclass(frozen=True)
class TrainConfig:
    # --- data ---
    dataset: str = "imagefolder"
    data_dir: str | None = None
    img_size: int | None = None  # None: the model's own default input size
    num_classes: int | None = None  # None: taken from the dataset
    train_split: str = "train"  # "trainval": fit on train+val (final evaluation), no val metrics
    # --- model and transfer ---
    model: str = "inception_v4"
    pretrained: bool = False  # timm hub weights
    pretrained_file: str | None = None  # local checkpoint (state_dict) instead of the hub
    new_layers: int = 1  # top layers re-initialised; 1 = classifier only (standard fine-tuning)
    num_low: int = 0  # bottom transferred layers forming the `lower` part
    # --- optimisation, per part [new, upper, lower]; one value = the same for every part ---
    lrs: tuple[float, ...] = (0.01,)
    l2sp_rates: tuple[float, ...] = (0.0,)  # r/2*||w-w0||^2 (new part: r/2*||w||^2)
    weight_decay: float = 1e-4  # plain L2 towards zero, every part
    reg_bn: bool = False  # regularise BatchNorm/other norm parameters too
    reg_bias: bool = False  # regularise biases too
    opt: str = "sgd"  # sgd: momentum + Nesterov, as in the paper's code
    momentum: float = 0.9
    sched: str = "step"
    decay_epochs: float = 10.0
    decay_rate: float = 0.1
    warmup_epochs: int = 0
    warmup_lr: float = 1e-5
    min_lr: float = 0.0
    epochs: int = 30
    batch_size: int = 32
    # --- augmentation and regularisation of the data ---
    mixup: float = 0.0
    cutmix: float = 0.0
    smoothing: float = 0.0
    crop_scale: tuple[float, float] = (0.08, 1.0)  # random-resized crop area range (timm's default)
    hflip: float = 0.5  # horizontal flip probability
    aa: str | None = None  # timm auto-augment string, e.g. "rand-m9-mstd0.5-inc1"
    reprob: float = 0.0
    remode: str = "pixel"
    # --- execution ---
    amp: str = "none"
    channels_last: bool = False
    seed: int = 42
    device: str = "cpu"
    workers: int = 0
    output: str | None = None
    eval_test: bool = False  # evaluate the test split after the last epoch
    save_test_predictions: bool = False  # write test_probs.npy + test_labels.npy to output
    checkpoint: bool = True  # write last.pth/best.pth to output (when output is set)
    resume: str | None = None
    limit_train_batches: int | None = None  # for fast tests
    limit_eval_batches: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # dataset-specific options

    def __post_init__(self) -> None:
        for name in ("lrs", "l2sp_rates", "crop_scale"):
            value = getattr(self, name)
            if isinstance(value, (int, float)):
                value = (float(value),)
            object.__setattr__(self, name, tuple(float(v) for v in value))
        _check(self)

    # --- derived ---
    def part_lrs(self) -> tuple[float, float, float]:
        return _expand("lrs", self.lrs)

    def part_l2sp(self) -> tuple[float, float, float]:
        return _expand("l2sp_rates", self.l2sp_rates)

    def replace(self, **changes: Any) -> TrainConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["lrs"] = list(self.lrs)
        d["l2sp_rates"] = list(self.l2sp_rates)
        d["crop_scale"] = list(self.crop_scale)
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise InputError(f"unknown TrainConfig field(s): {', '.join(unknown)}")
        return cls(**d)


def field_names() -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(TrainConfig))


def _expand(name: str, values: tuple[float, ...]) -> tuple[float, float, float]:
    if len(values) == 1:
        return (values[0],) * 3
    return values  # type: ignore[return-value]  # length checked in _check


def _check(c: TrainConfig) -> None:
    def bad(msg: str) -> None:
        raise InputError(msg)

    if len(c.lrs) not in (1, 3):
        bad(f"lrs takes 1 or 3 values (new, upper, lower), got {len(c.lrs)}: {list(c.lrs)}")
    if any(v <= 0 for v in c.lrs):
        bad(f"lrs must be > 0, got {list(c.lrs)}")
    if len(c.l2sp_rates) not in (1, 3):
        bad(f"l2sp_rates takes 1 or 3 values (new, upper, lower), got {len(c.l2sp_rates)}")
    if any(v < 0 for v in c.l2sp_rates):
        bad(f"l2sp_rates must be >= 0, got {list(c.l2sp_rates)}")
    if c.new_layers < 1:
        bad(f"new_layers must be >= 1 (1 = classifier only), got {c.new_layers}")
    if c.num_low < 0:
        bad(f"num_low must be >= 0, got {c.num_low}")
    for name in ("weight_decay", "mixup", "cutmix", "warmup_epochs", "min_lr", "momentum"):
        if getattr(c, name) < 0:
            bad(f"{name} must be >= 0, got {getattr(c, name)}")
    if not 0 <= c.smoothing < 1:
        bad(f"smoothing must be in [0, 1), got {c.smoothing}")
    if len(c.crop_scale) != 2 or not 0 < c.crop_scale[0] <= c.crop_scale[1] <= 1:
        bad(f"crop_scale takes 2 values 0 < low <= high <= 1, got {list(c.crop_scale)}")
    if not 0 <= c.hflip <= 1:
        bad(f"hflip must be in [0, 1], got {c.hflip}")
    if not 0 <= c.reprob <= 1:
        bad(f"reprob must be in [0, 1], got {c.reprob}")
    if c.epochs < 1:
        bad(f"epochs must be >= 1, got {c.epochs}")
    if c.batch_size < 1:
        bad(f"batch_size must be >= 1, got {c.batch_size}")
    if c.img_size is not None and c.img_size < 8:
        bad(f"img_size must be >= 8, got {c.img_size}")
    if c.num_classes is not None and c.num_classes < 2:
        bad(f"num_classes must be >= 2, got {c.num_classes}")
    if c.decay_epochs <= 0 or not 0 < c.decay_rate <= 1:
        bad(f"decay_epochs must be > 0 and decay_rate in (0, 1], got {c.decay_epochs}, {c.decay_rate}")
    if c.workers < 0:
        bad(f"workers must be >= 0, got {c.workers}")
    for name, allowed in (("opt", OPTIMIZERS), ("sched", SCHEDULES), ("amp", AMP_MODES),
                          ("remode", REMODES), ("train_split", SPLITS)):
        if getattr(c, name) not in allowed:
            bad(f"{name} must be one of {', '.join(allowed)}, got {getattr(c, name)!r}")
    if c.pretrained and c.pretrained_file:
        bad("give either pretrained (timm hub) or pretrained_file, not both")
    for name in ("limit_train_batches", "limit_eval_batches"):
        v = getattr(c, name)
        if v is not None and v < 1:
            bad(f"{name} must be >= 1, got {v}")
