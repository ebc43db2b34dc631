"""`TrainConfig`: every knob of a fine-tuning run, with its default, in this one place.

The *default settings* that a study measures against are these defaults (plus the study's own
baseline grid), so nothing else in the repository may restate a training default.

Each field also declares its **role** once, in its metadata, and every rule that treats fields by
kind is derived from it (`fields_with_role`): which fields a search may vary, which ones say only
where or how a run executes (a worker may override them; a config's hash leaves them out), which
ones the *default settings* fix to binary transfer, and how the ladder groups the optimum's changes.

| role | fields | searchable | in the config hash |
|---|---|---|---|
| data, model | what is trained on (the study's dataset and model sections) | no | yes |
| location | where this host keeps the data (`data_dir`) | no | no |
| layers, lrs, regularisation | the transfer settings (ladder rungs, in this order) | yes | yes |
| recipe | the rest of the training recipe (schedule, augmentation, mixup, ...) | yes | yes |
| seed | the run's seed (the final evaluation varies it) | no | no |
| execution, evaluation, test | device and files; train+val / test by `final`; test knobs | no | no |

`binary=True` marks the **transfer settings**: the fields that binary transfer fixes, so the default
settings hold them at their default here (one layer re-initialised, one learning rate for every
part, no L2-SP and no per-part L2 — nor the details that only matter with them: a classifier-only
lr, the first-tensor L2-SP factor, L2-SP/L2 on norm parameters and biases). Every other setting
in the config hash is the **recipe** (schedule, augmentation, mixup, weight decay, ...): what the
default settings share with the study. `vector=True` marks the per-part vectors that a study
searches through their per-part axes; `searchable=False` a recipe field a search may not vary
(`epochs`, the pruner's resource).

`config_hash` says what a config trains: two runs with the same hash trained the same settings.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from . import per_part


class InputError(ValueError):
    """Bad user input (config, data layout, checkpoint): reported as one line, exit code 2."""


OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("step", "cosine", "none")
AMP_MODES = ("none", "bf16", "fp16")
REMODES = ("const", "rand", "pixel")
# training-crop interpolation: "random" picks bilinear or bicubic per image (timm's)
TRAIN_INTERPOLATIONS = ("random", "bilinear", "bicubic")
SPLITS = ("train", "trainval")
ROLES = (
    "data",
    "location",
    "model",
    "layers",
    "lrs",
    "regularisation",
    "recipe",
    "seed",
    "execution",
    "evaluation",
    "test",
)
TRANSFER_ROLES = ("layers", "lrs", "regularisation")  # the ladder's rungs, in order
UNHASHED_ROLES = ("location", "seed", "execution", "evaluation", "test")


def _f(
    default: Any,
    role: str,
    *,
    binary: bool = False,
    vector: bool = False,
    searchable: bool = True,
    factory: bool = False,
) -> Any:
    """A field with its default (`factory`: a callable making it) and its role (module docstring)."""
    assert role in ROLES, role  # a typo here is a bug in this file, not user input
    metadata = {"role": role, "binary": binary, "vector": vector, "searchable": searchable}
    if factory:
        return field(default_factory=default, metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass(frozen=True)
class TrainConfig:
    # --- data ---
    dataset: str = _f("imagefolder", "data")
    data_dir: str | None = _f(None, "location")
    img_size: int | None = _f(None, "data")  # None: the model's own default input size
    num_classes: int | None = _f(None, "data")  # None: taken from the dataset
    # input normalisation; None: the model's own (timm's pretrained_cfg). The paper's code used
    # per-dataset values instead (README, "Differences from the paper's code")
    mean: tuple[float, ...] | None = _f(None, "data")
    std: tuple[float, ...] | None = _f(None, "data")
    # "trainval": fit on train+val (final evaluation), no val metrics
    train_split: str = _f("train", "evaluation")
    # --- model and transfer ---
    model: str = _f("inception_v4", "model")
    pretrained: bool = _f(False, "model")  # timm hub weights
    pretrained_file: str | None = _f(
        None, "model"
    )  # local checkpoint (state_dict) instead of the hub
    # top layers re-initialised; 1 = classifier only (standard fine-tuning)
    new_layers: int = _f(1, "layers", binary=True)
    num_low: int = _f(
        0, "layers", binary=True
    )  # bottom transferred layers forming the `lower` part
    # --- optimisation, per part [new, upper, lower]; one value = the same for every part ---
    lrs: tuple[float, ...] = _f((0.01,), "lrs", binary=True, vector=True)
    # lr_new for the classifier alone, the other re-initialised layers at lr_upper (the paper's code)
    lr_new_classifier_only: bool = _f(False, "lrs", binary=True)
    # r/2*||w-w0||^2 towards the pre-trained weights (new part: none exist, so r/2*||w||^2)
    l2sp_rates: tuple[float, ...] = _f((0.0,), "regularisation", binary=True, vector=True)
    l2_rates: tuple[float, ...] = _f(
        (0.0,), "regularisation", binary=True, vector=True
    )  # r/2*||w||^2
    # L2-SP factor on the lower part's first regularised tensor (the paper's code: 2, its
    # "x10 instead of x5"; the model's first convolution when num_low >= 1)
    l2sp_first_factor: float = _f(1.0, "regularisation", binary=True)
    weight_decay: float = _f(
        1e-4, "regularisation"
    )  # plain L2 towards zero, every part (optimiser)
    # which norm parameters (BatchNorm/GroupNorm/LayerNorm..., their biases too) and other biases
    # each term reaches: weight decay (wd_*) and L2-SP/L2 (reg_*) separately
    wd_bn: bool = _f(False, "regularisation")
    wd_bias: bool = _f(False, "regularisation")
    reg_bn: bool = _f(False, "regularisation", binary=True)
    reg_bias: bool = _f(False, "regularisation", binary=True)
    opt: str = _f("sgd", "recipe")  # sgd: momentum + Nesterov, as in the paper's code
    momentum: float = _f(0.9, "recipe")
    sched: str = _f("step", "recipe")
    decay_epochs: float = _f(10.0, "recipe")
    decay_rate: float = _f(0.1, "recipe")
    warmup_epochs: int = _f(0, "recipe")
    warmup_lr: float = _f(1e-5, "recipe")
    min_lr: float = _f(0.0, "recipe")
    epochs: int = _f(30, "recipe", searchable=False)  # a search's pruning resource: fixed per study
    batch_size: int = _f(32, "recipe")
    # drop each epoch's last partial batch (always done with mixup, which needs even batches)
    drop_last: bool = _f(False, "recipe")
    # --- augmentation and regularisation of the data ---
    mixup: float = _f(0.0, "recipe")
    cutmix: float = _f(0.0, "recipe")
    smoothing: float = _f(0.0, "recipe")
    # random-resized crop area range (timm's default)
    crop_scale: tuple[float, float] = _f((0.08, 1.0), "recipe")
    hflip: float = _f(0.5, "recipe")  # horizontal flip probability
    # brightness/contrast/saturation jitter, applied only without `aa` (timm's rule); 0 = off
    color_jitter: float = _f(0.0, "recipe")
    # None: the model's own interpolation (the evaluation's); "random": bilinear or bicubic per crop
    train_interpolation: str | None = _f(None, "recipe")
    aa: str | None = _f(None, "recipe")  # timm auto-augment string, e.g. "rand-m9-mstd0.5-inc1"
    reprob: float = _f(0.0, "recipe")
    remode: str = _f("pixel", "recipe")
    # --- execution ---
    amp: str = _f("none", "recipe")
    channels_last: bool = _f(False, "execution")
    seed: int = _f(42, "seed")
    device: str = _f("cpu", "execution")
    workers: int = _f(0, "execution")
    image_cache: bool = _f(
        True, "execution"
    )  # decode+resize image files once per machine (data/cache.py)
    output: str | None = _f(None, "execution")
    eval_test: bool = _f(False, "evaluation")  # evaluate the test split after the last epoch
    # keep the test softmax and labels in the result (and in OUTPUT/test_predictions.npz)
    save_test_predictions: bool = _f(False, "evaluation")
    checkpoint: bool = _f(
        True, "execution"
    )  # write last.pth/best.pth to output (when output is set)
    resume: str | None = _f(None, "execution")
    limit_train_batches: int | None = _f(None, "test")  # for fast tests
    limit_eval_batches: int | None = _f(None, "test")
    extra: dict[str, Any] = _f(dict, "data", factory=True)  # dataset options

    def __post_init__(self) -> None:
        for name in (*per_part.VECTORS, "crop_scale", "mean", "std"):
            value = getattr(self, name)
            if value is None:  # mean, std: the model's own
                continue
            if isinstance(value, (int, float)):
                value = (float(value),)
            object.__setattr__(self, name, tuple(float(v) for v in value))
        _check(self)

    # --- derived ---
    def part_lrs(self) -> tuple[float, float, float]:
        return per_part.expand(self.lrs)

    def part_l2sp(self) -> tuple[float, float, float]:
        return per_part.expand(self.l2sp_rates)

    def part_l2(self) -> tuple[float, float, float]:
        return per_part.expand(self.l2_rates)

    def replace(self, **changes: Any) -> TrainConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["lrs"] = list(self.lrs)
        d["l2sp_rates"] = list(self.l2sp_rates)
        d["l2_rates"] = list(self.l2_rates)
        d["crop_scale"] = list(self.crop_scale)
        for name in ("mean", "std"):
            if d[name] is not None:
                d[name] = list(d[name])
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise InputError(f"unknown TrainConfig field(s): {', '.join(unknown)}")
        return cls(**d)


# The paper's code's `--L2SP` (its timm/loss/l2sp.py) is a fixed structure, not a rate: these
# fields express it here (`python -m trainer --L2SP` without rates sets them; studies/paper_recipe.yaml
# writes them out). README, "Differences from the paper's code", names the line each value comes from.
PAPER_L2SP: dict[str, Any] = {
    "l2sp_rates": (0.0, 0.0, 0.02),  # L2-SP on the lower part alone: 0.004 x 5
    "l2_rates": (5e-4, 5e-4, 0.0),  # L2 towards zero on the new part (classifier too) and upper
    "l2sp_first_factor": 2.0,  # its first lower tensor: x10 instead of x5
    "reg_bn": False,  # BN parameters skipped ("bn" in the name)
    "reg_bias": True,  # other biases kept (Inception-v4 has one: the classifier's)
}


def fields_with_role(*roles: str) -> tuple[str, ...]:
    """Names of the TrainConfig fields whose role is one of `roles`, in declaration order."""
    unknown = set(roles) - set(ROLES)
    if unknown:
        raise ValueError(f"unknown field role(s) {sorted(unknown)}; known: {ROLES}")
    return tuple(f.name for f in dataclasses.fields(TrainConfig) if f.metadata["role"] in roles)


# Fields that say where or how a run executes, or on which split, not what it trains: two runs that
# differ only in these trained the same settings.
HASH_EXCLUDED = frozenset(fields_with_role(*UNHASHED_ROLES))


def config_hash(config: Mapping[str, Any]) -> str:
    """What a config trains, as 16 hex digits: sha256 of the canonical JSON of its settings, leaving
    out `HASH_EXCLUDED` and every field at TrainConfig's default. Numbers compare as floats (0 and
    0.0 hash the same), one per-part value as three; and a field a later release adds at a default
    that changes nothing leaves every stored config's hash as it was."""
    settings = {k: _setting(k, v) for k, v in config.items() if k not in HASH_EXCLUDED}
    kept = {k: v for k, v in settings.items() if k not in _DEFAULTS or v != _DEFAULTS[k]}
    text = json.dumps(kept, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _setting(name: str, value: Any) -> Any:
    if name in per_part.VECTORS and isinstance(value, (int, float, list, tuple)):
        try:
            value = per_part.expand(value)
        except ValueError:
            pass  # not a per-part vector TrainConfig would accept: hashed as written
    return _canonical(value)


def _canonical(value: Any) -> Any:
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, (list, tuple)):
        return [_canonical(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _canonical(v) for k, v in value.items()}
    return str(value)


def field_flag(name: str, flag: str) -> bool:
    """A field's `binary`, `vector` or `searchable` flag."""
    return TrainConfig.__dataclass_fields__[name].metadata[flag]


def _check(c: TrainConfig) -> None:
    def bad(msg: str) -> None:
        raise InputError(msg)

    if len(c.lrs) not in (1, 3):
        bad(f"lrs takes 1 or 3 values (new, upper, lower), got {len(c.lrs)}: {list(c.lrs)}")
    if any(v <= 0 for v in c.lrs):
        bad(f"lrs must be > 0, got {list(c.lrs)}")
    for name in ("l2sp_rates", "l2_rates"):
        rates = getattr(c, name)
        if len(rates) not in (1, 3):
            bad(f"{name} takes 1 or 3 values (new, upper, lower), got {len(rates)}")
        if any(not v >= 0 for v in rates):  # `not >=` also refuses NaN
            bad(f"{name} must be >= 0, got {list(rates)}")
    if c.new_layers < 1:
        bad(f"new_layers must be >= 1 (1 = classifier only), got {c.new_layers}")
    if c.num_low < 0:
        bad(f"num_low must be >= 0, got {c.num_low}")
    for name in ("mean", "std"):
        values = getattr(c, name)
        if values is not None and len(values) not in (1, 3):
            bad(f"{name} takes 1 or 3 values (one per channel), got {len(values)}: {list(values)}")
    if c.std is not None and any(not v > 0 for v in c.std):
        bad(f"std must be > 0, got {list(c.std)}")
    if not c.l2sp_first_factor >= 0:
        bad(f"l2sp_first_factor must be >= 0, got {c.l2sp_first_factor}")
    for name in (
        "weight_decay",
        "mixup",
        "cutmix",
        "color_jitter",
        "warmup_epochs",
        "min_lr",
        "momentum",
    ):
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
        bad(
            f"decay_epochs must be > 0 and decay_rate in (0, 1], got {c.decay_epochs}, {c.decay_rate}"
        )
    if c.workers < 0:
        bad(f"workers must be >= 0, got {c.workers}")
    for name, allowed in (
        ("opt", OPTIMIZERS),
        ("sched", SCHEDULES),
        ("amp", AMP_MODES),
        ("remode", REMODES),
        ("train_split", SPLITS),
    ):
        if getattr(c, name) not in allowed:
            bad(f"{name} must be one of {', '.join(allowed)}, got {getattr(c, name)!r}")
    if c.train_interpolation is not None and c.train_interpolation not in TRAIN_INTERPOLATIONS:
        bad(
            f"train_interpolation must be one of {', '.join(TRAIN_INTERPOLATIONS)} (or unset: the "
            f"model's own), got {c.train_interpolation!r}"
        )
    if c.pretrained and c.pretrained_file:
        bad("give either pretrained (timm hub) or pretrained_file, not both")
    for name in ("limit_train_batches", "limit_eval_batches"):
        v = getattr(c, name)
        if v is not None and v < 1:
            bad(f"{name} must be >= 1, got {v}")


_DEFAULTS = {name: _setting(name, value) for name, value in TrainConfig().to_dict().items()}
