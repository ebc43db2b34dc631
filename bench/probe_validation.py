"""Does the transferability probe predict? Offline transfer tasks of different source -> target
distance, each run through the product: probe, baseline, a cold search, `final`, and a search
warm-started from the probe's suggestion. Results go to docs/probe.md (by hand, with the date).

    .venv/bin/python bench/probe_validation.py [--out DIR] [--tasks near,far,weak,none]
        [--trials 16] [--workers 2]

Target (every task): cluttered digits 5-9, 25 train / 25 val images per class, 32 px, test_resnet,
30 epochs, cosine schedule. Sources (pre-trained once with `python -m trainer`, cached in DIR):

    near  shapes, then digits 0-4, 12 epochs each   (the same kind of scenes, other classes;
                                                     from scratch, cluttered digits barely train)
    far   shapes, 12 epochs            (the demo's source: synthetic shapes and textures)
    weak  shapes, 1 epoch              (the same domain, barely trained)
    none  no training at all           (random weights saved as a checkpoint)

Per task: `probe` (scores, suggestion, time vs one trial); `baseline` (lr grid, extended past its
edge); a cold `run` (TPE, seed 0, `--trials` trials over new_layers 1-5, lr [0.01, 1] log, L2-SP off
or [1e-3, 1] log, Hyperband pruning); `final` (re-ranking of the top 2 with 1 more seed, 3 test
seeds) for the test gain of the optimum over the default; a warm `run` of the same space and
sampler seed with `probe: {enqueue: true}`: how many trials until its best validation value comes
within 0.5 points of the cold search's best. Prints one JSON line per task and a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[1]
PRETRAIN = [
    "--model",
    "test_resnet",
    "--img-size",
    "32",
    "--lr",
    "0.1",
    "--sched",
    "cosine",
    "-b",
    "64",
    "--weight-decay",
    "5e-4",
    "--seed",
    "0",
]
SOURCES = {
    "far": ["--dataset", "shapes", "--epochs", "12"],
    "weak": ["--dataset", "shapes", "--epochs", "1"],
}  # near and none: see pretrain()
SPACE = {
    "new_layers": {"type": "int", "low": 1, "high": 5},
    "lr": {"type": "float", "low": 0.01, "high": 1.0, "log": True},
    "l2sp": {"type": "float", "low": 1.0e-3, "high": 1.0, "log": True, "allow_zero": True},
}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=None, help="working folder (default: a temporary one)")
    p.add_argument("--tasks", default="near,far,weak,none")
    p.add_argument("--trials", type=int, default=16)
    p.add_argument("--workers", type=int, default=2)
    args = p.parse_args()
    out = Path(args.out or tempfile.mkdtemp(prefix="probe-validation-"))
    out.mkdir(parents=True, exist_ok=True)
    results = [validate(task, out, args.trials, args.workers) for task in args.tasks.split(",")]
    print(table(results))
    return 0


def validate(task: str, out: Path, trials: int, workers: int) -> dict:
    import optuna

    import analysis

    folder = out / task
    folder.mkdir(exist_ok=True)
    source = pretrain(task, out)
    url = f"sqlite:///{folder / 'nbtl.db'}"
    study = write_study(folder / "study.yaml", task, url, source, trials, warm=False)
    warm = write_study(folder / "warm.yaml", task, url, source, trials, warm=True)
    t0 = time.perf_counter()
    nbtl(["probe", str(study), "--device", "cpu"], folder)
    nbtl(["probe", str(warm), "--device", "cpu"], folder)  # the warm study reads its own probe
    probe_s = time.perf_counter() - t0
    summary = analysis.probe_summary(url, f"probe-{task}")
    layers = analysis.probe(url, f"probe-{task}")
    slots = ["--device", "cpu", "--workers", str(workers)]
    nbtl(["baseline", str(study), *slots], folder)
    nbtl(["run", str(study), *slots], folder)
    nbtl(
        [
            "final",
            str(study),
            "--device",
            "cpu",
            "--jobs",
            str(workers),
            "--seeds",
            "3",
            "--rerank-top-k",
            "2",
            "--rerank-seeds",
            "1",
        ],
        folder,
    )
    row = analysis.compare(url, f"probe-{task}").iloc[0]
    runs = analysis.runs(url, f"probe-{task}")
    opt = runs[runs["id"] == row["optimal_run_id"]].iloc[0]
    trial_s = float(
        runs[(runs["role"] == "search") & (runs["state"] == "complete")]["wall_s"].median()
    )
    nbtl(["run", str(warm), *slots], folder)
    cold = optuna.load_study(study_name=f"probe-{task}", storage=url)
    warmed = optuna.load_study(study_name=f"probe-{task}-warm", storage=url)
    return {
        "task": task,
        "probe_s": probe_s / 2,
        "trial_s": trial_s,
        "probe_seconds": {k: summary.get(f"seconds.{k}") for k in ("pass", "scores", "total")},
        "scores": {
            k: v for k, v in summary.items() if not k.startswith(("suggested.", "seconds."))
        },
        "fit_by_layer": dict(zip(layers["layer"].astype(int), layers["fit"].round(1))),
        "suggested": {
            k.split(".", 1)[1]: v for k, v in summary.items() if k.startswith("suggested.")
        },
        "optimum": {
            "new_layers": int(opt["new_layers"]),
            "lr": float(opt["lr_new"]),
            "l2sp": float(opt["l2sp_upper"]),
        },
        "default_test": row["default_test_mean"],
        "optimal_test": row["optimal_test_mean"],
        "gain": row["difference"],
        "ci": [row["ci_low"], row["ci_high"]],
        "verdict": row["verdict"],
        "cold_best_val": cold.best_value,
        "warm_trials_to_cold_best": trials_to_reach(warmed, cold.best_value - 0.5),
        "cold_trials_to_cold_best": trials_to_reach(cold, cold.best_value - 0.5),
    }


def pretrain(task: str, out: Path) -> Path:
    target = out / f"source-{task}.pth"
    if target.is_file():
        return target
    if task == "none":  # random weights: the architecture alone
        import timm
        import torch

        torch.manual_seed(0)
        torch.save(timm.create_model("test_resnet", num_classes=10).state_dict(), target)
        return target
    run = out / f"source-{task}"
    if task == "near":  # digits 0-4: `extra.classes` has no trainer flag, so through fit()
        cmd = [sys.executable, "-c", NEAR_SOURCE, str(run), str(pretrain("far", out))]
    else:
        cmd = [sys.executable, "-m", "trainer", *SOURCES[task], *PRETRAIN, "--output", str(run)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    subprocess.run(cmd, check=True, env=env, cwd=REPO, stdout=subprocess.DEVNULL)
    shutil.copyfile(run / "best.pth", target)
    return target


# digits 0-4 from the far source, the same recipe as PRETRAIN (the classifier re-initialised)
NEAR_SOURCE = """
import sys
from trainer import TrainConfig, fit
fit(TrainConfig(dataset="digits", extra={"classes": [0, 1, 2, 3, 4], "train_per_class": 150,
                                         "val_per_class": 20},
                model="test_resnet", pretrained_file=sys.argv[2], img_size=32, epochs=12,
                lrs=(0.1,), sched="cosine", batch_size=64, weight_decay=5e-4, seed=0,
                output=sys.argv[1]))
"""


def write_study(path: Path, task: str, url: str, source: Path, trials: int, warm: bool) -> Path:
    name = f"probe-{task}" + ("-warm" if warm else "")
    study = {
        "name": name,
        "storage": url,
        "dataset": {
            "name": "digits",
            "img_size": 32,
            "extra": {"train_per_class": 25, "val_per_class": 25},
        },
        "model": {"name": "test_resnet", "pretrained_file": str(source)},
        "train": {
            "epochs": 30,
            "sched": "cosine",
            "batch_size": 32,
            "weight_decay": 5.0e-4,
            "crop_scale": [0.6, 1.0],
            "hflip": 0.0,
        },
        "search_space": SPACE,
        "sampler": {"type": "tpe", "seed": 0, "n_startup_trials": 6},
        "pruner": {"type": "hyperband", "min_resource": 5},
        "budget": {"n_trials": trials},
        "default_settings": {"lr": [0.01, 0.03, 0.1, 0.3]},
        "probe": {"enqueue": warm},
    }
    path.write_text(yaml.safe_dump(study, sort_keys=False))
    return path


def nbtl(argv: list[str], cwd: Path) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "nbtl_search", *argv],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        raise SystemExit(f"nbtl-search {' '.join(argv)} failed: {done.stderr[-2000:]}")


def trials_to_reach(study, target: float) -> int | None:
    """1-based number of trials (in trial order, complete ones counted) until a value >= target."""
    for i, t in enumerate(sorted(study.trials, key=lambda t: t.number), start=1):
        if t.value is not None and t.state.name == "COMPLETE" and t.value >= target:
            return i
    return None


def table(results: list[dict]) -> str:
    from scipy import stats

    lines = [
        "| task | fit (layer 2..6) | suggested new_layers / L2-SP / lr | optimum new_layers / "
        "L2-SP / lr | gain (test points, 95% CI) | warm / cold trials to within 0.5 of the "
        "cold best | probe s / trial s |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        print(json.dumps(r, default=float))
        s, o = r["suggested"], r["optimum"]
        fits = ", ".join(f"{v:+.0f}" for v in r["fit_by_layer"].values())
        lines.append(
            f"| {r['task']} | {fits} | {s.get('new_layers', float('nan')):.0f} / "
            f"{s.get('l2sp_upper', 0):g} / {s.get('lr_new', 0):g} | {o['new_layers']} / "
            f"{o['l2sp']:.3g} / {o['lr']:.3g} | {r['gain']:+.1f} [{r['ci'][0]:+.1f}, "
            f"{r['ci'][1]:+.1f}] | {r['warm_trials_to_cold_best']} / {r['cold_trials_to_cold_best']} "
            f"| {r['probe_seconds']['pass'] + r['probe_seconds']['scores']:.2f} / {r['trial_s']:.1f} |"
        )
    gains = [r["gain"] for r in results]
    for score in ("logme", "hscore", "leep", "nce", "fit2"):
        values = [
            r["fit_by_layer"].get(2) if score == "fit2" else r["scores"].get(score) for r in results
        ]
        if len(gains) >= 3 and all(v is not None and np.isfinite(v) for v in values):
            rho = stats.spearmanr(values, gains).statistic
            lines.append(
                f"\nSpearman rank correlation of {score} with the gain: {rho:+.2f} "
                f"({len(gains)} tasks)"
            )
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
