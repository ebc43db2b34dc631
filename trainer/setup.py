"""Everything a run needs before its first step, built from one `TrainConfig`.

Each call builds its own model, loaders, optimiser and RNG so two runs in one process share nothing.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import timm.data
import timm.loss
import timm.scheduler
import torch
from timm.scheduler.scheduler import Scheduler
from torch import nn
from torch.optim import Optimizer
from torch.utils.data import ConcatDataset, DataLoader, TensorDataset

from .config import InputError, TrainConfig
from .data import Splits, TransformedDataset, build_splits, build_transform, cache_splits
from .layers import layer_partition, reinit_layers
from .model import create_model
from .parts import PARTS, assign_parts, param_groups
from .regularize import L2SP

EVAL_CACHE_BYTES = 512 * 2**20  # validation sets up to this size are kept as transformed tensors


@dataclass
class Run:
    cfg: TrainConfig
    device: torch.device
    model: nn.Module
    optimizer: Optimizer
    scheduler: Scheduler | None
    regularizer: L2SP
    criterion: nn.Module
    eval_criterion: nn.Module
    mixup: Callable | None
    scaler: torch.amp.GradScaler | None
    autocast_dtype: torch.dtype | None
    generator: torch.Generator
    train_loader: DataLoader
    val_loader: DataLoader | None
    test_loader: DataLoader
    num_classes: int


def resolve_device(name: str) -> torch.device:
    try:
        device = torch.device(name)
    except RuntimeError as e:
        raise InputError(f"device {name!r} is not a valid torch device") from e
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise InputError(f"device {name!r} requested but CUDA is not available here")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise InputError(
                f"device {name!r} does not exist ({torch.cuda.device_count()} GPU(s) visible)"
            )
    return device


def seed_everything(seed: int) -> torch.Generator:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def build_run(cfg: TrainConfig) -> Run:
    device = resolve_device(cfg.device)
    generator = seed_everything(cfg.seed)
    splits = build_splits(cfg)
    _check_not_empty(cfg, splits)
    num_classes = cfg.num_classes or len(splits.classes)
    if num_classes < len(splits.classes):
        raise InputError(f"num_classes {num_classes} < the dataset's {len(splits.classes)} classes")

    model = create_model(cfg, num_classes)
    layers = layer_partition(model)
    # L2-SP pulls towards the pre-trained weights: copy them before the top layers are re-initialised.
    reference = {n: p.detach().clone() for n, p in model.named_parameters()}
    reinit_layers(model, layers, cfg.new_layers, cfg.seed)
    part_of = assign_parts(layers, cfg.new_layers, cfg.num_low)
    model.to(device)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)

    optimizer = build_optimizer(cfg, model, part_of)
    scheduler = build_scheduler(cfg, optimizer)
    # L2SP copies to the device only the references of parts with a nonzero rate
    regularizer = build_regularizer(cfg, model, part_of, reference)
    del reference
    mixup, criterion = build_loss(cfg, num_classes)
    autocast_dtype, scaler = build_precision(cfg, device)

    data_config = timm.data.resolve_data_config(
        {"input_size": (3, cfg.img_size, cfg.img_size)} if cfg.img_size else {}, model=model
    )
    train_tf = build_transform(cfg, data_config, training=True)
    eval_tf = build_transform(cfg, data_config, training=False)
    if cfg.image_cache:
        # Decode + resize each image file once per machine, not once per trial and epoch. Here and
        # not in build_splits: the resize (S) is the eval transform's own first op, known only now;
        # with it evaluation stays pixel-exact and the loop and transforms do not change
        # (trainer/data/cache.py says what it does to training crops).
        splits = cache_splits(splits, cfg, eval_tf)
    train_base = (
        splits.train if cfg.train_split == "train" else ConcatDataset([splits.train, splits.val])
    )
    train_set = TransformedDataset(train_base, train_tf)
    # timm's Mixup needs even batches: drop the last partial batch then (also keeps shapes static).
    drop_last = cfg.drop_last or mixup is not None
    if drop_last and len(train_set) < cfg.batch_size:
        raise InputError(
            f"{'mixup/cutmix' if mixup is not None else 'drop_last'} needs at least "
            f"batch_size={cfg.batch_size} training images, the train split has {len(train_set)}"
        )
    loader_kw = dict(
        num_workers=cfg.workers,
        pin_memory=device.type == "cuda",
        persistent_workers=cfg.workers > 0,
    )
    train_loader = DataLoader(
        train_set,
        batch_size=cfg.batch_size,
        shuffle=True,
        generator=generator,
        drop_last=drop_last,
        **loader_kw,
    )

    def eval_loader(base, cache: bool = False):
        dataset = TransformedDataset(base, eval_tf)
        c, h, w = data_config["input_size"]
        if cache and len(dataset) * c * h * w * 4 <= EVAL_CACHE_BYTES:
            # tensors in memory: loader processes would only add pickling
            return DataLoader(_materialise(dataset), batch_size=2 * cfg.batch_size)
        return DataLoader(dataset, batch_size=2 * cfg.batch_size, **loader_kw)

    val_loader = eval_loader(splits.val, cache=True) if cfg.train_split == "train" else None
    return Run(
        cfg,
        device,
        model,
        optimizer,
        scheduler,
        regularizer,
        criterion,
        nn.CrossEntropyLoss(),
        mixup,
        scaler,
        autocast_dtype,
        generator,
        train_loader,
        val_loader,
        eval_loader(splits.test),
        num_classes,
    )


def build_optimizer(cfg: TrainConfig, model: nn.Module, part_of: dict[str, str]) -> Optimizer:
    """SGD (Nesterov momentum) or AdamW over the parts' groups (`trainer.parts.param_groups`)."""
    groups = param_groups(
        model,
        part_of,
        cfg.part_lrs(),
        cfg.weight_decay,
        cfg.wd_bn,
        cfg.wd_bias,
        cfg.lr_new_classifier_only,
    )
    if cfg.opt == "sgd":
        return torch.optim.SGD(groups, momentum=cfg.momentum, nesterov=cfg.momentum > 0)
    return torch.optim.AdamW(groups)


def build_scheduler(cfg: TrainConfig, optimizer: Optimizer) -> Scheduler | None:
    """timm's scheduler, stepped once per epoch; warm-up from `warmup_lr` to each group's own lr."""
    if cfg.sched == "none":
        return None
    scheduler, _ = timm.scheduler.create_scheduler_v2(
        optimizer,
        sched=cfg.sched,
        num_epochs=cfg.epochs,
        decay_epochs=cfg.decay_epochs,
        decay_rate=cfg.decay_rate,
        min_lr=cfg.min_lr,
        warmup_lr=cfg.warmup_lr,
        warmup_epochs=cfg.warmup_epochs,
    )
    return scheduler


def build_regularizer(
    cfg: TrainConfig,
    model: nn.Module,
    part_of: dict[str, str],
    reference: dict[str, torch.Tensor] | None,
) -> L2SP:
    return L2SP(
        model,
        part_of,
        cfg.part_l2sp(),
        reference,
        cfg.reg_bn,
        cfg.reg_bias,
        cfg.part_l2(),
        cfg.l2sp_first_factor,
    )


def build_loss(cfg: TrainConfig, num_classes: int) -> tuple[timm.data.Mixup | None, nn.Module]:
    """timm's Mixup (label smoothing inside its soft targets) or cross-entropy with smoothing."""
    if cfg.mixup > 0 or cfg.cutmix > 0:
        mixup = timm.data.Mixup(
            mixup_alpha=cfg.mixup,
            cutmix_alpha=cfg.cutmix,
            label_smoothing=cfg.smoothing,
            num_classes=num_classes,
        )
        return mixup, timm.loss.SoftTargetCrossEntropy()
    return None, nn.CrossEntropyLoss(label_smoothing=cfg.smoothing)


def build_precision(
    cfg: TrainConfig, device: torch.device
) -> tuple[torch.dtype | None, torch.amp.GradScaler | None]:
    """The autocast dtype, and for fp16 on CUDA a loss scaler (bf16 needs none)."""
    autocast_dtype = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}[cfg.amp]
    scaler = (
        torch.amp.GradScaler(device.type) if cfg.amp == "fp16" and device.type == "cuda" else None
    )
    return autocast_dtype, scaler


def _check_not_empty(cfg: TrainConfig, splits: Splits) -> None:
    """An empty split would only fail at its first evaluation, after an epoch (or a run) of training."""
    used = [("train", splits.train)]
    if cfg.train_split == "train":
        used.append(("val", splits.val))
    if cfg.eval_test:
        used.append(("test", splits.test))
    for name, dataset in used:
        if len(dataset) == 0:  # type: ignore[arg-type]
            where = f" in {cfg.data_dir}" if cfg.data_dir else ""
            raise InputError(f"the {name} split of dataset {cfg.dataset!r}{where} has no images")


def _materialise(dataset: TransformedDataset) -> TensorDataset:
    """Apply the (deterministic) eval transform once: validation runs every epoch, and on small
    sets decoding + resizing the same images again cost twice the training itself."""
    images, labels = zip(*(dataset[i] for i in range(len(dataset))))
    return TensorDataset(torch.stack(images), torch.as_tensor(labels))


def part_lrs(run: Run) -> tuple[float, float, float]:
    """Current learning rate of each part; an empty part reports its configured lr, scaled alike."""
    base = dict(zip(PARTS, run.cfg.part_lrs()))
    current = {g["part"]: g["lr"] for g in run.optimizer.param_groups}
    any_part = next(iter(current))
    scale = current[any_part] / base[any_part]
    return tuple(current.get(p, base[p] * scale) for p in PARTS)  # type: ignore[return-value]
