"""CPU benchmark of one training step, as ratios measured side by side in one run (see README.md).

    python bench/cpu.py [--threads N] [--rounds R] [--steps K] [--models resnet18:64,test_resnet:32]

Per model (batch 32, synthetic tensors: the step alone is timed) the variants run interleaved, K steps
each per round, in an order that rotates every round (ABCD, BCDA, ...), so load from other processes
hits every variant alike. A ratio is the median over rounds of the per-round (paired) ratio:

- (a) ours/plain = t_plain / t_ours: `trainer.loop.step` on a Run from a `TrainConfig` vs a plain
  timm loop at the same settings (timm's `create_optimizer_v2` SGD: Nesterov momentum 0.9, the same
  weight decay, none on norm parameters and biases; `nn.CrossEntropyLoss`). Target >= 0.97.
- (b) L2-SP overhead = t_l2sp / t_off - 1: l2sp_rates (0.01, 0.01, 0.01) vs 0, both new_layers 2.
  Target <= 0.03. Also `term_share`: the term's own time (c) / t_off, which load hardly blurs.
- (c) foreach speed-up = t_loop / t_foreach: the gradient term grad += r * (w - w0) alone,
  `L2SP.add_grad_` (torch._foreach_*) vs a Python loop over the parameters.
- (d) seed-style overhead = t_seed / t_off - 1: L2-SP as the seed wrote it, r/2 * ||w - w0||^2 added
  to the loss per parameter in a Python loop (autograd carries it). For reference.

First it checks that ours and plain give the same losses over 3 steps from identical weights. The
harness is shared with `bench/gpu.py`.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import timm
import timm.optim
import torch
from PIL import Image
from torch import nn

from trainer.config import TrainConfig
from trainer.loop import step
from trainer.setup import Run, build_run

NUM_CLASSES = 100
L2SP_RATES = (0.01, 0.01, 0.01)
TARGETS = {"ours_vs_plain": (">=", 0.97), "l2sp_overhead": ("<=", 0.03)}


def tiny_imagefolder(root: Path) -> str:
    """A 2-class imagefolder tree: `build_run` needs a dataset, the benchmark never reads it."""
    for split, n in (("train", 2), ("test", 1)):
        for cls in ("a", "b"):
            folder = root / split / cls
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                Image.new("RGB", (8, 8), (40 * i, 90, 200)).save(folder / f"{i}.png")
    return str(root)


def base_config(
    model: str,
    img_size: int,
    batch: int,
    device: str,
    data_dir: str,
    amp: str = "none",
    channels_last: bool = False,
) -> TrainConfig:
    return TrainConfig(
        dataset="imagefolder",
        data_dir=data_dir,
        model=model,
        img_size=img_size,
        num_classes=NUM_CLASSES,
        batch_size=batch,
        device=device,
        amp=amp,
        channels_last=channels_last,
        checkpoint=False,
    )


def synthetic_batch(
    batch: int, img_size: int, device: torch.device, channels_last: bool, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 3, img_size, img_size, generator=g)
    y = torch.randint(0, NUM_CLASSES, (batch,), generator=g)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x.to(device), y.to(device)


def plain_step_fn(run: Run) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """A plain timm/PyTorch training step with `run`'s model, weights and settings, nothing of ours."""
    cfg = run.cfg
    model = timm.create_model(cfg.model, num_classes=NUM_CLASSES)
    model.load_state_dict(run.model.state_dict())
    model.to(run.device)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    # timm's factory: SGD with Nesterov momentum, weight decay off for 1-d params (norms, biases).
    optimizer = timm.optim.create_optimizer_v2(
        model, opt="sgd", lr=cfg.lrs[0], momentum=cfg.momentum, weight_decay=cfg.weight_decay
    )
    criterion, dtype = nn.CrossEntropyLoss(), run.autocast_dtype

    def plain(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(run.device.type, dtype=dtype, enabled=dtype is not None):
            loss = criterion(model(x), y)
        loss.backward()
        optimizer.step()
        return loss.detach()

    return plain


def seed_style_step_fn(run: Run) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """`run`'s step with L2-SP added to the loss by a Python loop over parameters (the seed's way)."""
    terms = [(t.rate, t.params, t.reference) for t in run.regularizer.terms]

    def seed_style(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with torch.autocast(
            run.device.type, dtype=run.autocast_dtype, enabled=run.autocast_dtype is not None
        ):
            loss = run.criterion(run.model(x), y)
        for rate, params, refs in terms:
            for i, p in enumerate(params):
                diff = p if refs is None else p - refs[i]
                loss = loss + rate / 2 * diff.pow(2).sum()
        run.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        run.optimizer.step()
        return loss.detach()

    return seed_style


def loop_grad_term_fn(run: Run) -> Callable[[], None]:
    """grad += r * (w - w0) one parameter at a time: what `L2SP.add_grad_` does with foreach."""
    terms = [(t.rate, t.params, t.reference) for t in run.regularizer.terms]

    @torch.no_grad()
    def loop() -> None:
        for rate, params, refs in terms:
            for i, p in enumerate(params):
                if p.grad is not None:
                    p.grad.add_(p if refs is None else p - refs[i], alpha=rate)

    return loop


def check_same_losses(
    run: Run, x: torch.Tensor, y: torch.Tensor, steps: int = 3, rtol: float = 1e-5
) -> dict:
    """Ours and plain from identical weights on one batch: the first steps' losses agree.

    Trains `run` itself (and a plain copy of its weights): give it a Run built for the check only."""
    plain = plain_step_fn(run)
    ours_l = [float(step(run, x, y)) for _ in range(steps)]
    plain_l = [float(plain(x, y)) for _ in range(steps)]
    worst = max(abs(a - b) / max(abs(b), 1e-12) for a, b in zip(ours_l, plain_l))
    return {
        "measure": "sanity_same_loss",
        "ours_losses": ours_l,
        "plain_losses": plain_l,
        "max_rel_diff": worst,
        "ok": worst <= rtol,
    }


class Clock:
    """Seconds for `n` calls of `fn`: wall clock on CPU, CUDA events (after a sync) on a GPU."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"

    def __call__(self, fn: Callable[[], object], n: int) -> float:
        if self.cuda:
            torch.cuda.synchronize()  # the start event must not wait behind earlier work
            start, end = (torch.cuda.Event(enable_timing=True) for _ in range(2))
            start.record()
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        if not self.cuda:
            return time.perf_counter() - t0
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1000.0


def interleaved(
    variants: dict[str, Callable[[], object]],
    clock: Clock,
    rounds: int,
    steps: int,
    warmup: int,
    deadline: float = math.inf,
) -> dict[str, list[float]]:
    """Seconds per call of each variant, one value per round; the order rotates every round.

    Stops after the round that passes `deadline` (a `time.perf_counter()` value), at least 3 rounds
    done, so a loaded machine shortens the run instead of stretching it.
    """
    names = list(variants)
    for name in names:
        clock(variants[name], warmup)
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        k = r % len(names)
        for name in names[k:] + names[:k]:
            times[name].append(clock(variants[name], steps) / steps)
        if r >= 2 and time.perf_counter() > deadline:
            break
    return times


def paired(times: dict[str, list[float]], num: str, den: str) -> list[float]:
    """t_num / t_den of each round (both measured in the same round, close in time)."""
    return [a / b for a, b in zip(times[num], times[den])]


def measurement(
    label: str,
    name: str,
    ratios: list[float],
    times: dict[str, list[float]],
    a: str,
    b: str,
    offset: float = 0.0,
    **context,
) -> dict:
    """One JSON record: the median of the paired `ratios` (+ `offset`), its quartiles, the medians."""
    q1, median, q3 = (
        statistics.quantiles(ratios, n=4, method="inclusive") if len(ratios) > 1 else ratios * 3
    )
    value = median + offset
    rec = {
        "measure": name,
        "label": label,
        **context,
        "a": a,
        "b": b,
        "value": value,
        "quartiles": [q1 + offset, q3 + offset],
        "median_s_a": statistics.median(times[a]),
        "median_s_b": statistics.median(times[b]),
        "rounds": len(ratios),
    }
    if name in TARGETS:
        op, target = TARGETS[name]
        rec.update(target=f"{op} {target}", met=value >= target if op == ">=" else value <= target)
    return rec


def step_ratios(
    cfg: TrainConfig,
    rounds: int,
    steps: int,
    warmup: int,
    grad_calls: int,
    budget_s: float = math.inf,
) -> list[dict]:
    """(a)-(d) for one model; timed rounds stop early once `budget_s` (from the call) is spent."""
    deadline = time.perf_counter() + 0.9 * budget_s
    off = build_run(cfg.replace(new_layers=2))
    on = build_run(cfg.replace(new_layers=2, l2sp_rates=L2SP_RATES))
    x, y = synthetic_batch(cfg.batch_size, cfg.img_size, off.device, cfg.channels_last)
    plain, seed_style = plain_step_fn(off), seed_style_step_fn(on)
    clock = Clock(off.device)
    t = interleaved(
        {
            "plain": lambda: plain(x, y),
            "ours": lambda: step(off, x, y),
            "ours_l2sp": lambda: step(on, x, y),
            "seed_loss_loop": lambda: seed_style(x, y),
        },
        clock,
        rounds,
        steps,
        warmup,
        deadline,
    )
    # the gradient term alone, on the .grad that the last timed step of `on` left in place
    tg = interleaved(
        {"foreach": on.regularizer.add_grad_, "python_loop": loop_grad_term_fn(on)},
        clock,
        rounds,
        grad_calls,
        2,
        deadline + 0.1 * budget_s,
    )
    ctx = dict(
        model=cfg.model,
        img_size=cfg.img_size,
        batch=cfg.batch_size,
        device=str(off.device),
        amp=cfg.amp,
        channels_last=cfg.channels_last,
    )
    return [
        measurement(
            "(a) ours/plain speed",
            "ours_vs_plain",
            paired(t, "plain", "ours"),
            t,
            "ours",
            "plain",
            **ctx,
        ),
        measurement(
            "(b) L2-SP overhead",
            "l2sp_overhead",
            paired(t, "ours_l2sp", "ours"),
            t,
            "ours_l2sp",
            "ours",
            offset=-1,  # and the L2-SP term's own time as a share of a step:
            term_share=statistics.median(tg["foreach"]) / statistics.median(t["ours"]),
            **ctx,
        ),
        measurement(
            "(c) foreach speed-up",
            "foreach_vs_loop",
            paired(tg, "python_loop", "foreach"),
            tg,
            "foreach",
            "python_loop",
            params=sum(len(term.params) for term in on.regularizer.terms),
            **ctx,
        ),
        measurement(
            "(d) seed loss-loop overhead",
            "seed_loss_loop_overhead",
            paired(t, "seed_loss_loop", "ours"),
            t,
            "seed_loss_loop",
            "ours",
            offset=-1,
            **ctx,
        ),
    ]


def print_table(records: list[dict], file=sys.stdout) -> None:
    print(
        f"\n{'model':<15}{'measure':<29}{'value':>8}{'quartiles':>17}{'a s/call':>10}{'b s/call':>10}"
        "  target",
        file=file,
    )
    for r in records:
        pct = "overhead" in r["measure"]
        value, q1, q3 = (
            f"{100 * v:+.1f}%" if pct else f"{v:.3f}" for v in (r["value"], *r["quartiles"])
        )
        target = (
            f"{r.get('target', '')} {'ok' if r.get('met') else 'MISSED' if 'met' in r else ''}"
            + (
                f" (the term alone: {100 * r['term_share']:.1f}% of a step)"
                if "term_share" in r
                else ""
            )
        )
        print(
            f"{r['model'] + '@' + str(r['img_size']):<15}{r['label']:<29}{value:>8}{q1 + '..' + q3:>17}"
            f"{r['median_s_a']:>10.5f}{r['median_s_b']:>10.5f}  {target}",
            file=file,
        )


def emit(record: dict) -> None:
    print(json.dumps(record), flush=True)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--threads",
        type=int,
        default=os.cpu_count(),
        help="torch.set_num_threads (default: all cores)",
    )
    p.add_argument(
        "--models", default="resnet18:64,test_resnet:32", help="comma list of model:img_size"
    )
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--rounds", type=int, default=25, help="interleaved rounds per model")
    p.add_argument(
        "--steps",
        type=int,
        default=0,
        help="steps per variant per round (0: 1 above 32 px, 6 at 32 px and below)",
    )
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument(
        "--grad-calls", type=int, default=20, help="gradient-term calls per variant per round"
    )
    p.add_argument(
        "--budget-s",
        type=float,
        default=150.0,
        help="seconds for the whole run; fewer rounds are timed when the machine is slow",
    )
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    emit(
        {
            "measure": "environment",
            "torch": torch.__version__,
            "timm": timm.__version__,
            "threads": torch.get_num_threads(),
            "cpu_count": os.cpu_count(),
            "loadavg": os.getloadavg(),
        }
    )
    records, sane = [], True
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = tiny_imagefolder(Path(tmp))
        specs = args.models.split(",")
        for i, spec in enumerate(specs):
            model, size = spec.split(":")
            cfg = base_config(model, int(size), args.batch, "cpu", data_dir)
            x, y = synthetic_batch(cfg.batch_size, cfg.img_size, torch.device("cpu"), False, seed=1)
            sanity = {**check_same_losses(build_run(cfg), x, y), "model": model}
            sane = sane and sanity["ok"]
            emit(sanity)
            steps = args.steps or (6 if int(size) <= 32 else 1)
            share = (args.budget_s - (time.perf_counter() - started)) / (len(specs) - i)
            for rec in step_ratios(cfg, args.rounds, steps, args.warmup, args.grad_calls, share):
                records.append(rec)
                emit(rec)
    print_table(records)
    print(
        f"\ntotal {time.perf_counter() - started:.0f} s, {torch.get_num_threads()} threads, "
        f"load average at the end {os.getloadavg()[0]:.2f}"
    )
    return (
        0 if sane else 1
    )  # a missed target is a finding, a failed sanity check a broken benchmark


if __name__ == "__main__":
    sys.exit(main())
