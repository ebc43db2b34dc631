"""`python -m trainer`: the seed's flags, parsed into a `TrainConfig` in one function.

Every flag defaults to "not given", so the defaults stay in `TrainConfig` alone.
"""

from __future__ import annotations

import argparse
import os
import sys

from .config import PAPER_L2SP, TRAIN_INTERPOLATIONS, InputError, TrainConfig
from .report import Decision, EpochMetrics

DIFFERENCES = """\
where the flags differ from the original (timm 0.4 train.py fork) code:
  --L2SP        alone is the original's fixed structure: L2-SP 0.02 on the lower part (its first
                tensor x2), L2 5e-4 on the upper and new parts, norm parameters left out, other
                biases in (needs --num-lowlrs >= 1, as there). With --L2SP_rates the rates decide.
  --L2SP_rates  is honoured (the original parsed and ignored it): 1 rate for every part or 3 (new,
                upper, lower); the new part's pulls towards zero (L2), the others towards the
                pre-trained weights (L2-SP).
  --lr, --num-lowlrs, --new-layers  define the parts new / upper / lower (docs/design.md), for any
                timm model (layers from timm's group_matcher; Inception-v4: classifier + 22 blocks).
                The new part's lr trains every re-initialised layer; the original gave it to the
                classifier alone and the other re-initialised blocks the upper lr: add
                --lr-new-classifier-only for that.
  defaults      are TrainConfig's, not the original's: it decayed every parameter (--wd-bn
                --wd-bias), warmed up for 3 epochs from 1e-4, smoothed labels by 0.1, jittered
                colours by 0.4 without --aa, used --train-interpolation random, dropped the last
                partial batch and defaulted to --remode const (studies/paper_recipe.yaml and the
                README's "Differences from the paper's code" list the recipe value by value).
  --model       any timm model (the original hard-wired Inception-v4).
  --test        evaluates a separate test split after the last epoch; the search only sees val.
  --native-amp  is an alias of --amp fp16; --amp bf16 is new.
bad input exits 2 with one line on stderr; a failed run exits 1 (NBTL_DEBUG=1 shows the traceback)."""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m trainer",
        argument_default=argparse.SUPPRESS,
        description="Non-binary fine-tuning of a timm model (defaults: trainer/config.py).",
        epilog=DIFFERENCES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    a = p.add_argument
    a(
        "--dataset",
        help="caltech256_30 | stanford_cars | fgvc_aircraft | dtd | imagenet | imagefolder | "
        "digits | shapes",
    )
    a("--data_dir", "--data-dir", dest="data_dir")
    a("--num-classes", dest="num_classes", type=int)
    a("--img-size", dest="img_size", type=int)
    a("--train-split", dest="train_split", choices=["train", "trainval"])
    a("--model")
    a("--pretrained", action="store_true", help="timm hub weights")
    a("--pretrained-file", dest="pretrained_file", help="local state_dict instead of the hub")
    a(
        "--new-layers",
        dest="new_layers",
        type=int,
        help="top layers to re-initialise (1 = classifier)",
    )
    a(
        "--num-lowlrs",
        dest="num_low",
        type=int,
        help="bottom transferred layers in the `lower` part",
    )
    a("--lr", dest="lrs", type=float, nargs="+", metavar="LR", help="1 lr, or 3: new upper lower")
    a(
        "--L2SP",
        dest="l2sp_flag",
        action="store_true",
        help="kept for the seed's scripts; needs --L2SP_rates",
    )
    a(
        "--L2SP_rates",
        "--l2sp-rates",
        dest="l2sp_rates",
        type=float,
        nargs="+",
        metavar="R",
        help="1 rate, or 3: new(L2 to zero) upper lower",
    )
    a(
        "--l2-rates",
        dest="l2_rates",
        type=float,
        nargs="+",
        metavar="R",
        help="L2 towards zero per part: 1 rate, or 3: new upper lower (on top of --weight-decay)",
    )
    a(
        "--lr-new-classifier-only",
        dest="lr_new_classifier_only",
        action="store_true",
        help="the new part's lr for the classifier alone; other re-initialised layers at the upper lr",
    )
    a(
        "--l2sp-first-factor",
        dest="l2sp_first_factor",
        type=float,
        help="L2-SP factor on the lower part's first tensor (the original's: 2)",
    )
    a("--weight-decay", dest="weight_decay", type=float)
    a("--wd-bn", dest="wd_bn", action="store_true", help="weight decay on norm parameters too")
    a("--wd-bias", dest="wd_bias", action="store_true", help="weight decay on biases too")
    a("--reg-bn", dest="reg_bn", action="store_true", help="L2-SP/L2 on norm parameters too")
    a("--reg-bias", dest="reg_bias", action="store_true", help="L2-SP/L2 on biases too")
    a("--opt", choices=["sgd", "adamw"])
    a("--momentum", type=float)
    a("--sched", choices=["step", "cosine", "none"])
    a("--decay-epochs", dest="decay_epochs", type=float)
    a("--decay-rate", dest="decay_rate", type=float)
    a("--warmup-epochs", dest="warmup_epochs", type=int)
    a("--warmup-lr", dest="warmup_lr", type=float)
    a("--min-lr", dest="min_lr", type=float)
    a("--epochs", type=int)
    a("-b", "--batch-size", dest="batch_size", type=int)
    a("--drop-last", dest="drop_last", action="store_true", help="drop each epoch's partial batch")
    a("--mixup", type=float)
    a("--cutmix", type=float)
    a("--smoothing", type=float)
    a(
        "--scale",
        dest="crop_scale",
        type=float,
        nargs=2,
        metavar=("LOW", "HIGH"),
        help="random-resized crop area range",
    )
    a("--hflip", type=float, help="horizontal flip probability")
    a(
        "--color-jitter",
        dest="color_jitter",
        type=float,
        help="colour jitter without --aa (0 = off)",
    )
    a(
        "--train-interpolation",
        dest="train_interpolation",
        choices=TRAIN_INTERPOLATIONS,
        help="training crop interpolation (default: the model's)",
    )
    a("--mean", type=float, nargs="+", metavar="M", help="input mean (default: the model's)")
    a("--std", type=float, nargs="+", metavar="S", help="input std (default: the model's)")
    a("--aa", help="timm auto-augment, e.g. rand-m9-mstd0.5-inc1")
    a("--reprob", type=float)
    a("--remode", choices=["const", "rand", "pixel"])
    a(
        "--amp",
        nargs="?",
        const="fp16",
        choices=["none", "bf16", "fp16"],
        help="default fp16 if given alone",
    )
    a("--native-amp", dest="native_amp", action="store_true", help="alias of --amp fp16")
    a("--channels-last", dest="channels_last", action="store_true")
    a("--seed", type=int)
    a("--device")
    a("-j", "--workers", type=int)
    a(
        "--no-image-cache",
        dest="image_cache",
        action="store_false",
        help="decode the image files in every epoch instead of once per machine (trainer/data/cache.py)",
    )
    a("--output")
    a("--test", dest="eval_test", action="store_true", help="evaluate the test split at the end")
    a("--save-test-predictions", dest="save_test_predictions", action="store_true")
    a("--no-checkpoint", dest="checkpoint", action="store_false")
    a("--resume", help="OUTPUT/last.pth of an interrupted run")
    a("--limit-train-batches", dest="limit_train_batches", type=int)
    a("--limit-eval-batches", dest="limit_eval_batches", type=int)
    return p


def parse_config(argv: list[str] | None = None) -> TrainConfig:
    given = vars(build_parser().parse_args(argv))
    if given.pop("l2sp_flag", False) and "l2sp_rates" not in given:
        if given.get("num_low", 0) < 1:  # the original crashes there: its L2-SP term is empty
            raise InputError(
                "--L2SP without --L2SP_rates is the original's fixed structure (L2-SP on the "
                "lower part): it needs --num-lowlrs N >= 1"
            )
        for name, value in PAPER_L2SP.items():
            given.setdefault(name, value)
    if given.get("save_test_predictions") and "output" not in given:
        raise InputError(
            "--save-test-predictions needs --output (the folder for test_predictions.npz)"
        )
    if given.pop("native_amp", False):
        given.setdefault("amp", "fp16")
    return TrainConfig(**given)


class PrintReporter:
    def __init__(self, epochs: int) -> None:
        self.epochs = epochs

    def report(self, epoch: int, m: EpochMetrics) -> Decision:
        val = (
            f"val_top1 {m.val_top1:6.2f} val_top5 {m.val_top5:6.2f} "
            if m.val_top1 is not None
            else ""
        )
        lrs = "/".join(f"{lr:.3g}" for lr in m.lrs)
        print(
            f"epoch {epoch:3d}/{self.epochs} train_loss {m.train_loss:.4f} {val}"
            f"lr {lrs} penalty {m.penalty:.4g} {m.seconds:.1f}s {m.images_per_s:.0f} img/s",
            flush=True,
        )
        return Decision.CONTINUE


def main(argv: list[str] | None = None) -> int:
    try:
        cfg = parse_config(argv)
        from .loop import fit  # after parsing: `--help` and flag errors answer before torch loads

        result = fit(cfg, PrintReporter(cfg.epochs))
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # a failed run is one line, not a traceback; NBTL_DEBUG=1 shows it
        if os.environ.get("NBTL_DEBUG"):
            raise
        detail = " ".join(str(e).split())  # one line, also for torch's multi-line messages
        print(f"error: training failed: {type(e).__name__}: {detail}", file=sys.stderr)
        return 1
    best = (
        f"best val_top1 {result.best_val_top1:.2f} (epoch {result.best_epoch})"
        if result.best_val_top1 is not None
        else "no validation split"
    )
    test = f", test_top1 {result.test['top1']:.2f}" if result.test else ""
    where = f", summary in {cfg.output}/summary.json" if cfg.output else ""
    print(f"done in {result.wall_s:.1f}s: {best}{test}{where}")
    return 0
