"""One-shot GPU benchmark of the training step (about 2-3 minutes, at most 6), JSON lines on stdout.

    python bench/gpu.py              # inception_v4, 299 px, batch 32, bf16 autocast, channels_last, cuda
    python bench/gpu.py --dry-run    # = --model test_resnet --img-size 32 --device cpu --steps 3
                                     #   (and 2 rounds): proves the script runs, on any machine

Needs only torch, timm and this repository (`pip install -e .`); the model is built without
pre-trained weights (nothing is downloaded). Run it as a script: it imports the harness from the
`cpu.py` next to it. It measures, with the harness of `bench/cpu.py`
(interleaved variants, rotating order, paired per-round ratios, medians; CUDA events after a sync):

- (a) ours / plain speed, (b) L2-SP overhead, (c) foreach vs Python-loop gradient term and
  (d) the seed's loss-loop overhead, at the benchmark batch (32), as in `bench/cpu.py`;
- training images/s of our step at batch 128;
- evaluation images/s (`trainer.loop.evaluate`) at batch 256.

cuDNN autotuning stays off unless `--cudnn-benchmark`: the trainer does not turn it on, and the
figures should be what a trial gets.
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import tempfile
import time
from pathlib import Path

import timm
import torch
from cpu import (
    Clock,
    base_config,
    check_same_losses,
    emit,
    print_table,
    step_ratios,
    synthetic_batch,
    tiny_imagefolder,
)

from trainer.config import TrainConfig
from trainer.loop import evaluate, step
from trainer.setup import build_run

BUDGET_S = 360


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="tiny CPU run: test_resnet, 32 px, cpu, 3 steps, 2 rounds",
    )
    p.add_argument("--model", default="inception_v4")
    p.add_argument("--img-size", type=int, default=299)
    p.add_argument("--device", default="cuda")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument(
        "--big-batch", type=int, default=128, help="batch for the training images/s figure"
    )
    p.add_argument("--eval-batch", type=int, default=256)
    p.add_argument("--amp", default="bf16", choices=("bf16", "none"))
    p.add_argument("--no-channels-last", dest="channels_last", action="store_false")
    p.add_argument("--steps", type=int, default=10, help="steps per variant per round")
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--grad-calls", type=int, default=50)
    p.add_argument("--cudnn-benchmark", action="store_true")
    args = p.parse_args(argv)
    if args.dry_run:
        args.model, args.img_size, args.device, args.steps, args.rounds, args.warmup = (
            "test_resnet",
            32,
            "cpu",
            3,
            2,
            1,
        )
    return args


def train_images_per_s(cfg: TrainConfig, steps: int, warmup: int) -> dict:
    """Our step alone at `cfg.batch_size`, L2-SP off: images per second over `steps` steps."""
    run = build_run(cfg)
    x, y = synthetic_batch(cfg.batch_size, cfg.img_size, run.device, cfg.channels_last)
    clock = Clock(run.device)
    clock(lambda: step(run, x, y), warmup)
    seconds = clock(lambda: step(run, x, y), steps)
    return {
        "measure": "train_images_per_s",
        "model": cfg.model,
        "batch": cfg.batch_size,
        "steps": steps,
        "seconds": seconds,
        "value": cfg.batch_size * steps / seconds,
    }


def eval_images_per_s(cfg: TrainConfig, batches: int) -> dict:
    """`trainer.loop.evaluate` over `batches` synthetic batches of `cfg.batch_size`: images/s."""
    run = build_run(cfg)
    x, y = synthetic_batch(cfg.batch_size, cfg.img_size, run.device, cfg.channels_last)
    clock = Clock(run.device)
    clock(lambda: evaluate(run, [(x, y)] * 2), 1)
    seconds = clock(lambda: evaluate(run, [(x, y)] * batches), 1)
    return {
        "measure": "eval_images_per_s",
        "model": cfg.model,
        "batch": cfg.batch_size,
        "batches": batches,
        "seconds": seconds,
        "value": cfg.batch_size * batches / seconds,
    }


def free(device: torch.device) -> None:
    gc.collect()  # the previous phase's Runs, models and optimiser states
    if device.type == "cuda":
        torch.cuda.empty_cache()


def environment(device: torch.device) -> dict:
    env = {
        "measure": "environment",
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "torch": torch.__version__,
        "timm": timm.__version__,
        "device": str(device),
        "cpu_count": os.cpu_count(),
    }
    if device.type == "cuda":
        env.update(
            gpu=torch.cuda.get_device_name(device),
            cuda=torch.version.cuda,
            cudnn=torch.backends.cudnn.version(),
        )
    return env


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    torch.backends.cudnn.benchmark = args.cudnn_benchmark
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = tiny_imagefolder(Path(tmp))
        cfg = base_config(
            args.model,
            args.img_size,
            args.batch,
            args.device,
            data_dir,
            amp=args.amp,
            channels_last=args.channels_last,
        )
        check = build_run(cfg)
        emit(environment(check.device))
        x, y = synthetic_batch(
            cfg.batch_size, cfg.img_size, check.device, cfg.channels_last, seed=1
        )
        # bf16 kernels (and cuDNN's atomics in the backward) are not bit-reproducible across models
        sanity = {
            **check_same_losses(check, x, y, rtol=1e-2 if args.amp != "none" else 1e-4),
            "model": cfg.model,
        }
        emit(sanity)
        del check, x, y
        free(torch.device(args.device))

        records = step_ratios(
            cfg,
            args.rounds,
            args.steps,
            args.warmup,
            args.grad_calls,
            budget_s=0.6 * BUDGET_S - (time.perf_counter() - started),
        )
        for rec in records:
            if rec["measure"] != "foreach_vs_loop":  # the others time whole steps
                rec.update(
                    images_per_s_a=cfg.batch_size / rec["median_s_a"],
                    images_per_s_b=cfg.batch_size / rec["median_s_b"],
                )
            emit(rec)
        free(torch.device(args.device))

        big = cfg.replace(batch_size=args.big_batch)
        emit(train_images_per_s(big, steps=3 * args.steps, warmup=args.warmup))
        free(torch.device(args.device))
        emit(eval_images_per_s(cfg.replace(batch_size=args.eval_batch), batches=2 * args.steps))

    elapsed = time.perf_counter() - started
    # from main() on: importing torch and timm before it takes another 5-20 s
    emit(
        {
            "measure": "elapsed_s",
            "value": elapsed,
            "budget_s": BUDGET_S,
            "within_budget": elapsed <= BUDGET_S,
        }
    )
    print_table(records, file=sys.stderr)
    return 0 if sanity["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
