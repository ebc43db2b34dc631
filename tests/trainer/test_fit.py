"""End-to-end runs of the loop (`trainer.fit`, `trainer.setup.build_run`) on tiny CPU models.

Every run transfers test_resnet pre-trained on `shapes` (the `source_ckpt` fixture) to a 3-class
imagefolder tree at 32 px, a few batches per epoch.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from trainer import Decision, EpochMetrics, InputError, StopReason, TrainingDiverged, fit
from trainer.layers import layer_partition
from trainer.setup import build_run, part_lrs


class StopAt:
    """A reporter that records every call and answers STOP at `epoch`."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch
        self.calls: list[int] = []

    def report(self, epoch: int, metrics: EpochMetrics) -> Decision:
        self.calls.append(epoch)
        return Decision.STOP if epoch >= self.epoch else Decision.CONTINUE


def weights(path: Path) -> dict[str, torch.Tensor]:
    state = torch.load(path, map_location="cpu", weights_only=False)
    return state["model"] if "model" in state else state


@pytest.mark.parametrize("new_layers", [1, 3])
def test_build_run_reinitialises_exactly_the_top_layers(target_cfg, source_ckpt, new_layers):
    run = build_run(target_cfg.replace(new_layers=new_layers))
    source = torch.load(source_ckpt, map_location="cpu")
    state = run.model.state_dict()
    layers = layer_partition(run.model)
    assert len(layers) == 6
    for layer in layers:
        # the layer's parameters plus the buffers (BatchNorm statistics) of the modules owning them
        keys = [
            k
            for k in state
            if k in layer.param_names or any(k.startswith(m + ".") for m in layer.module_names if m)
        ]
        assert keys, layer.name
        if layer.index == 1:  # the classifier: re-shaped from the source's 10 classes to 3
            assert state["fc.weight"].shape == (3, source["fc.weight"].shape[1])
            assert source["fc.weight"].shape[0] == 10
        elif layer.index <= new_layers:
            changed = [k for k in layer.param_names if not torch.equal(state[k], source[k])]
            assert changed == list(layer.param_names), f"{layer.name} kept pre-trained weights"
        else:
            unequal = [k for k in keys if not torch.equal(state[k], source[k])]
            assert not unequal, f"transferred layer {layer.name} differs from the checkpoint"


def test_reporter_stop_ends_the_run_at_that_epoch(target_cfg, tmp_path):
    reporter = StopAt(2)
    result = fit(
        target_cfg.replace(epochs=5, limit_train_batches=1, eval_test=True, output=str(tmp_path)),
        reporter,
    )
    assert reporter.calls == [1, 2]
    assert [m.epoch for m in result.history] == [1, 2]
    assert result.stop_reason is StopReason.REPORTER
    assert result.test is None  # a stopped (pruned) run does not touch the test split


def test_resume_reproduces_the_uninterrupted_run(target_cfg, tmp_path):
    # Everything that carries state across epochs is on: SGD momentum, a step schedule that decays
    # every epoch, mixup (numpy RNG), random erasing and RandAugment (torch and python RNGs), shuffling.
    cfg = target_cfg.replace(epochs=3, mixup=0.4, reprob=0.5, aa="rand-m9-mstd0.5-inc1")
    full = fit(cfg.replace(output=str(tmp_path / "full")))

    first = fit(cfg.replace(output=str(tmp_path / "part")), StopAt(2))
    assert len(first.history) == 2
    resumed = fit(
        cfg.replace(output=str(tmp_path / "part"), resume=str(tmp_path / "part" / "last.pth"))
    )

    assert resumed.stop_reason is StopReason.COMPLETED
    assert [m.train_loss for m in resumed.history] == [m.train_loss for m in full.history]
    assert [m.lrs for m in resumed.history] == [m.lrs for m in full.history]
    a, b = weights(tmp_path / "full" / "last.pth"), weights(tmp_path / "part" / "last.pth")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])]

    # a checkpoint of another configuration is refused with a clear message, not a torch traceback
    with pytest.raises(InputError, match="does not match this run's config"):
        fit(cfg.replace(new_layers=3, resume=str(tmp_path / "part" / "last.pth")))


def test_part_lrs_follow_the_step_schedule(target_cfg):
    lrs = (0.3, 0.1, 0.01)  # new, upper, lower
    cfg = target_cfg.replace(
        lrs=lrs,
        new_layers=2,
        num_low=2,
        sched="step",
        decay_epochs=2,
        decay_rate=0.1,
        epochs=3,
        limit_train_batches=1,
        limit_eval_batches=1,
    )
    # in the optimiser itself: every group follows its own part's lr
    run = build_run(cfg)
    assert {g["part"] for g in run.optimizer.param_groups} == {"new", "upper", "lower"}
    for epoch, scale in ((1, 1.0), (2, 0.1), (3, 0.1)):
        run.scheduler.step(epoch)
        for g in run.optimizer.param_groups:
            assert g["lr"] == pytest.approx(lrs[("new", "upper", "lower").index(g["part"])] * scale)
        assert part_lrs(run) == pytest.approx(tuple(lr * scale for lr in lrs))
    # and as reported by a run: epochs 1-2 at the configured lrs, epoch 3 decayed
    history = fit(cfg).history
    expected = [lrs, lrs, tuple(lr * 0.1 for lr in lrs)]
    for m, want in zip(history, expected, strict=True):
        assert m.lrs == pytest.approx(want)


def test_mixup_cutmix_and_label_smoothing_train(target_cfg):
    result = fit(target_cfg.replace(mixup=0.8, cutmix=1.0, smoothing=0.1, epochs=1))
    (m,) = result.history
    # soft targets with smoothing 0.1 over 3 classes: the loss cannot reach 0
    assert math.isfinite(m.train_loss) and m.train_loss > 0.1
    assert m.val_top1 is not None and 0 <= m.val_top1 <= 100


def test_l2sp_penalty_is_reported_and_grows_from_zero(target_cfg):
    result = fit(target_cfg.replace(l2sp_rates=(0.0, 0.1, 0.1), epochs=1, limit_train_batches=2))
    # upper/lower start at their pre-trained weights: the penalty is the drift after two steps
    assert result.history[0].penalty > 0


def test_absurd_lr_raises_training_diverged(target_cfg):
    with pytest.raises(TrainingDiverged, match="training loss is (nan|inf)"):
        fit(target_cfg.replace(lrs=(1e6,), epochs=2, limit_eval_batches=1))
