"""`nbtl-search demo`: the whole product offline on 2 CPU cores.

Source: a tiny timm model pre-trained on synthetic shapes/textures (`SOURCE_ARGS`, run once and
cached). Target: cluttered handwritten digits 5-9 with 10 training images per class. A far transfer
like this is where re-initialising more than the classifier pays (DESIGN.md measured +8 test points,
with a large seed spread), so the demo runs the default baseline, a short non-binary search, and a
multi-seed final test, then says whether the gain exceeds the seed spread.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from rich.console import Console

from .final import run_final
from .launcher import cpu_slots, launch
from .spec import StudySpec
from .worker import DEFAULT, SEARCH

# The documented pre-training command (README): `python -m trainer` + these flags + `--output DIR`.
SOURCE_ARGS = ["--dataset", "shapes", "--model", "test_resnet", "--img-size", "32",
               "--epochs", "12", "--lr", "0.1", "--sched", "cosine", "-b", "64",
               "--weight-decay", "5e-4", "--seed", "0"]


def ensure_source(spec: StudySpec, console: Console) -> Path:
    """The study's pretrained_file; pre-trains it with SOURCE_ARGS when it is not there yet."""
    target = Path(spec.model["pretrained_file"]).expanduser()
    if target.is_file():
        return target
    from trainer import fit
    from trainer.cli import parse_config

    out = target.parent / "source-run"
    console.print(f"pre-training the source model once: python -m trainer {' '.join(SOURCE_ARGS)} "
                  f"--output {out}")
    t0 = time.perf_counter()
    result = fit(parse_config(SOURCE_ARGS + ["--output", str(out)]))
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(out / "best.pth", target)
    console.print(f"  source val top-1 {result.best_val_top1:.1f}% in {time.perf_counter() - t0:.0f}s "
                  f"-> {target}")
    return target


def run_demo(spec: StudySpec, url: str, console: Console) -> int:
    import analysis

    t0 = time.perf_counter()
    ensure_source(spec, console)
    slots = cpu_slots(2)  # two single-threaded workers use 2 cores better than one with 2 threads
    for role, title in ((DEFAULT, "default settings (baseline grid over the learning rate)"),
                        (SEARCH, "non-binary search")):
        console.rule(title)
        logs = Path("nbtl-logs") / f"{spec.name}-{role.name}"
        if launch(spec, url, role, slots, log_dir=logs, console=console):
            console.print(f"[red]workers stopped early (crashes, or failing trials); see {logs}/")
            return 1
    console.rule(f"final: best default vs optimal, {spec.final.seeds} seeds, test split")
    run_final(spec, url, seeds=spec.final.seeds, top_k=1, device="cpu", console=console, jobs=2)
    from .notes import write_note

    write_note(url, spec)
    console.rule("optimal vs default")
    console.print(analysis.summary_markdown(url, spec.name))
    console.print(f"\ndemo finished in {time.perf_counter() - t0:.0f}s. Inspect it:\n"
                  f"  optuna-dashboard {url}\n"
                  f"  nbtl-search report {spec.path} --storage {url} --out report.html")
    return 0
