"""The fine-tuning loop: fit -> train_epoch -> step, and evaluate.

No host syncs inside an epoch (losses are summed on the device and read once per epoch), so the step
stays cheap and ready to be captured as a CUDA graph later.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from .checkpoint import load_checkpoint, save_checkpoint, save_weights_only
from .config import InputError, TrainConfig
from .report import Decision, EpochMetrics, NullReporter, Reporter, StopReason, TrainResult
from .setup import Run, build_run, part_lrs


class TrainingDiverged(RuntimeError):
    """The training loss became NaN or infinite."""


def fit(cfg: TrainConfig, reporter: Reporter | None = None) -> TrainResult:
    reporter = reporter or NullReporter()
    if cfg.save_test_predictions and not cfg.eval_test:
        # checked before the first step: found after training, it would throw the run away
        raise InputError(
            "save_test_predictions needs eval_test (the predictions are the test split's)"
        )
    started = time.perf_counter()
    run = build_run(cfg)
    out = Path(cfg.output).expanduser() if cfg.output else None
    if out:
        out.mkdir(parents=True, exist_ok=True)
    history: list[EpochMetrics] = []
    best: tuple[float, int] | None = None  # (val_top1, epoch)
    if cfg.resume:
        history, best = load_checkpoint(cfg.resume, run)
    train_images, train_seconds = 0, 0.0
    stop = StopReason.COMPLETED
    for epoch in range(len(history) + 1, cfg.epochs + 1):
        metrics, n = _epoch(run, epoch)
        train_images += n
        train_seconds += metrics.seconds
        history.append(metrics)
        improved = metrics.val_top1 is not None and (best is None or metrics.val_top1 > best[0])
        if improved:
            best = (metrics.val_top1, epoch)
        if out and cfg.checkpoint:
            save_checkpoint(out / "last.pth", run, history, best)
            if improved:
                save_weights_only(out / "best.pth", run.model)
        if reporter.report(epoch, metrics) is Decision.STOP:
            stop = StopReason.REPORTER
            break

    test, predictions, probs, labels = None, None, None, None
    if cfg.eval_test and stop is StopReason.COMPLETED:
        test, probs, labels = evaluate(run, run.test_loader, keep_probs=cfg.save_test_predictions)
        if cfg.save_test_predictions and out:
            predictions = str(out / "test_predictions.npz")
            np.savez_compressed(predictions, probs=probs, labels=labels)
    result = TrainResult(
        history=tuple(history),
        best_val_top1=best[0] if best else None,
        best_epoch=best[1] if best else None,
        test=test,
        wall_s=time.perf_counter() - started,
        images_per_s=train_images / train_seconds if train_seconds else 0.0,
        stop_reason=stop,
        num_classes=run.num_classes,
        device=str(run.device),
        test_predictions=predictions,
        test_probs=probs,
        test_labels=labels,
    )
    if out:
        summary = {"config": cfg.to_dict(), **result.to_dict()}
        (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return result


def _epoch(run: Run, epoch: int) -> tuple[EpochMetrics, int]:
    t0 = time.perf_counter()
    lrs = part_lrs(run)
    train_loss, n = train_epoch(run)
    seconds = time.perf_counter() - t0
    if not math.isfinite(train_loss):
        raise TrainingDiverged(f"training loss is {train_loss} in epoch {epoch}")
    val = evaluate(run, run.val_loader)[0] if run.val_loader is not None else None
    if run.scheduler is not None:
        run.scheduler.step(epoch)
    metrics = EpochMetrics(
        epoch=epoch,
        train_loss=train_loss,
        val_loss=val["loss"] if val else None,
        val_top1=val["top1"] if val else None,
        val_top5=val["top5"] if val else None,
        lrs=lrs,
        penalty=run.regularizer.penalty() if run.regularizer.active else 0.0,
        seconds=seconds,
        images_per_s=n / seconds if seconds else 0.0,
    )
    return metrics, n


def train_epoch(run: Run) -> tuple[float, int]:
    run.model.train()
    loss_sum = torch.zeros((), device=run.device)
    n = 0
    for i, (x, y) in enumerate(run.train_loader):
        if run.cfg.limit_train_batches is not None and i >= run.cfg.limit_train_batches:
            break
        x, y = _to_device(run, x, y)
        if run.mixup is not None:
            x, y = run.mixup(x, y)
        loss_sum += step(run, x, y) * len(x)
        n += len(x)
    return (loss_sum.item() / n if n else float("nan")), n


def step(run: Run, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """One optimisation step; returns the detached loss (no host sync)."""
    with _autocast(run):
        loss = run.criterion(run.model(x), y)
    run.optimizer.zero_grad(set_to_none=True)
    if run.scaler is not None:
        run.scaler.scale(loss).backward()
        run.scaler.unscale_(run.optimizer)  # the L2-SP term is added to true, unscaled gradients
        run.regularizer.add_grad_()
        run.scaler.step(run.optimizer)
        run.scaler.update()
    else:
        loss.backward()
        run.regularizer.add_grad_()
        run.optimizer.step()
    return loss.detach().float()


@torch.inference_mode()
def evaluate(run: Run, loader: DataLoader, keep_probs: bool = False):
    """Loss, top-1 and top-5 (percent) over `loader`; with keep_probs also the softmax and labels."""
    run.model.eval()
    k = min(5, run.num_classes)
    loss_sum = torch.zeros((), device=run.device)
    correct = torch.zeros(2, device=run.device)
    n = 0
    probs, labels = [], []
    for i, (x, y) in enumerate(loader):
        if run.cfg.limit_eval_batches is not None and i >= run.cfg.limit_eval_batches:
            break
        x, y = _to_device(run, x, y)
        with _autocast(run):
            logits = run.model(x)
        logits = logits.float()
        loss_sum += run.eval_criterion(logits, y) * len(x)
        top = logits.topk(k, dim=1).indices
        hits = top.eq(y[:, None])
        correct += torch.stack([hits[:, 0].sum(), hits.any(dim=1).sum()])
        n += len(x)
        if keep_probs:
            probs.append(logits.softmax(dim=1).cpu())
            labels.append(y.cpu())
    c = correct.tolist()
    metrics = {"loss": loss_sum.item() / n, "top1": 100.0 * c[0] / n, "top5": 100.0 * c[1] / n}
    if not keep_probs:
        return metrics, None, None
    return metrics, torch.cat(probs).numpy(), torch.cat(labels).numpy()


def _to_device(run: Run, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    x = x.to(run.device, non_blocking=True)
    if run.cfg.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x, y.to(run.device, non_blocking=True)


def _autocast(run: Run):
    if run.autocast_dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(run.device.type, dtype=run.autocast_dtype)
