"""A fake trainer for orchestration tests: honours the Reporter contract, trains nothing.

Its validation top-1 climbs towards a score derived from the config, so a search has something to
find; special learning rates trigger the failure modes a real trainer can hit.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

from trainer import Decision, EpochMetrics, StopReason, TrainConfig, TrainResult

FAIL_LR = 0.666  # raises inside "training"
NAN_LR = 0.777  # validation accuracy becomes NaN
# With $NBTL_FAKE_HANG set, the first epoch touches that file and then never finishes.
# With $NBTL_FAKE_FLAKY set (a folder), the first run of each config fails, its retry succeeds.


def score(cfg: TrainConfig) -> float:
    return 50.0 + 10.0 * cfg.new_layers - 100.0 * abs(cfg.lrs[0] - 0.1)


def fake_fit(cfg: TrainConfig, reporter) -> TrainResult:
    lr = cfg.lrs[0]
    history = []
    stop = StopReason.COMPLETED
    flaky = os.environ.get("NBTL_FAKE_FLAKY")
    if flaky:
        marker = Path(flaky) / f"{cfg.new_layers}-{lr}-{cfg.weight_decay}"
        if not marker.exists():
            marker.touch()
            raise RuntimeError("flaky (fake): fails the first time")
    for epoch in range(1, cfg.epochs + 1):
        if lr == FAIL_LR:
            raise RuntimeError("CUDA out of memory (fake)")
        if os.environ.get("NBTL_FAKE_HANG"):
            Path(os.environ["NBTL_FAKE_HANG"]).touch()
            while True:  # a worker stuck here is killed by the test
                os.sched_yield()
        top1 = math.nan if lr == NAN_LR else score(cfg) * epoch / cfg.epochs
        m = EpochMetrics(
            epoch=epoch,
            train_loss=1.0 / epoch,
            val_loss=1.0,
            val_top1=top1,
            val_top5=min(100.0, top1 + 10) if top1 == top1 else top1,
            lrs=cfg.part_lrs(),
            penalty=0.0,
            seconds=0.01,
            images_per_s=1000.0,
        )
        history.append(m)
        if reporter.report(epoch, m) is Decision.STOP:
            stop = StopReason.REPORTER
            break
    finite = [m for m in history if m.val_top1 == m.val_top1]
    best = max(finite, key=lambda m: m.val_top1) if finite else None
    return TrainResult(
        history=tuple(history),
        best_val_top1=best.val_top1 if best else None,
        best_epoch=best.epoch if best else None,
        test=None,
        wall_s=0.01 * len(history),
        images_per_s=1000.0,
        stop_reason=stop,
        num_classes=5,
        device=cfg.device,
    )


def spec_dict(name: str = "fake", **overrides) -> dict:
    """A study on the built-in digits set (no files needed); the fake trainer ignores the data."""
    d = {
        "name": name,
        "dataset": {"name": "digits", "img_size": 32},
        "model": {"name": "test_resnet"},
        "train": {"epochs": 4},
        "search_space": {
            "new_layers": {"type": "int", "low": 1, "high": 3},
            "lr": {"type": "float", "low": 0.01, "high": 0.3, "log": True},
        },
        "sampler": {"type": "random", "seed": 0},
        "pruner": {"type": "none"},
        "budget": {"n_trials": 6},
        "default_settings": {"lr": [0.01, 0.1, 0.3]},  # best 0.1: inside, no extension
    }
    d.update(overrides)
    return d


def worker_process(
    url: str,
    spec: dict,
    index: int,
    barrier=None,
    hang_file: str | None = None,
    grace_period: int = 30,
    role: str = "search",
    flaky_dir: str | None = None,
) -> None:
    """Entry point of a spawned worker process running the fake trainer; exits with the worker's
    exit code."""
    import sys

    import optuna

    from nbtl_search.run.worker import WorkerOptions, run_worker
    from nbtl_search.study.roles import ROLES
    from nbtl_search.study.spec import parse_spec

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    if hang_file:
        os.environ["NBTL_FAKE_HANG"] = hang_file
    if flaky_dir:
        os.environ["NBTL_FAKE_FLAKY"] = flaky_dir
    if barrier is not None:
        barrier.wait()  # every worker opens the fresh database at the same moment
    opts = WorkerOptions(device="cpu", index=index, heartbeat_interval=1, grace_period=grace_period)
    sys.exit(run_worker(parse_spec(spec, "fake"), url, ROLES[role], opts, fit=fake_fit))
