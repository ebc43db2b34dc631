"""`nbtl-search demo`: the whole product offline on 2 CPU cores.

Source: a tiny timm model pre-trained on synthetic shapes/textures (`SOURCE_ARGS`, run once and
cached). Target: cluttered handwritten digits. The demo runs the pipeline a user runs: the default
baseline grid (extended past its edge), a non-binary search with pruning, `final` (re-ranking on
validation, the ladder from the best default to the optimum retrained on train+val over several
seeds, the ensemble), and prints the verdict with its confidence intervals.

`--seed K` changes the data split and every training seed; each seed gets its own study name and
study file (written next to the logs), so several demo seeds can share one database.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import yaml
from rich.console import Console

from nbtl_search.final.retrain import FinalOptions, run_final
from nbtl_search.run.launcher import launch, log_dir
from nbtl_search.run.processes import cpu_slots
from nbtl_search.store.connection import masked
from nbtl_search.study.roles import DEFAULT, SEARCH
from nbtl_search.study.spec import StudySpec, load_spec

_PACKAGE = Path(__file__).resolve().parents[1]  # nbtl_search/
# studies/ beside the package in a checkout; inside it (nbtl_search/studies) in an installed wheel
DEMO_STUDY = next(
    (
        p
        for p in (
            _PACKAGE.parent / "studies" / "demo_digits.yaml",
            _PACKAGE / "studies" / "demo_digits.yaml",
        )
        if p.is_file()
    ),
    _PACKAGE.parent / "studies" / "demo_digits.yaml",
)
WORKERS = 2  # two single-threaded workers use 2 cores better than one with 2 threads
# The documented pre-training command (README): `python -m trainer` + these flags + `--output DIR`.
SOURCE_ARGS = [
    "--dataset",
    "shapes",
    "--model",
    "test_resnet",
    "--img-size",
    "32",
    "--epochs",
    "12",
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


def ensure_source(spec: StudySpec, console: Console) -> Path:
    """The study's pretrained_file; pre-trains it with SOURCE_ARGS when it is not there yet."""
    target = Path(spec.model["pretrained_file"]).expanduser()
    if target.is_file():
        return target
    from trainer import fit
    from trainer.cli import parse_config

    out = target.parent / "source-run"
    console.print(
        f"pre-training the source model once: python -m trainer {' '.join(SOURCE_ARGS)} "
        f"--output {out}"
    )
    t0 = time.perf_counter()
    result = fit(parse_config(SOURCE_ARGS + ["--output", str(out)]))
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(out / "best.pth", target)
    console.print(
        f"  source val top-1 {result.best_val_top1:.1f}% in {time.perf_counter() - t0:.0f}s "
        f"-> {target}"
    )
    return target


def seeded_study(spec: StudySpec, seed: int) -> StudySpec:
    """The demo study for seed `seed` (0: the study file as it is), written as its own study file."""
    if seed == 0:
        return spec
    data = yaml.safe_load(Path(spec.path).read_text(encoding="utf-8"))
    data["name"] = f"{data['name']}-seed{seed}"
    data["dataset"].setdefault("extra", {})["split_seed"] = seed  # another train/val/test split
    data.setdefault("train", {})["seed"] = spec.base_config().seed + 100 * seed  # other seeds
    data.setdefault("sampler", {})["seed"] = data["sampler"].get("seed", 0) + seed
    path = Path("nbtl-logs") / f"{data['name']}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        f"# written by `nbtl-search demo --seed {seed}` from {spec.path}\n"
        + yaml.safe_dump(data, sort_keys=False),
        encoding="utf-8",
    )
    return load_spec(path)


def run_demo(spec: StudySpec, url: str, console: Console, seed: int = 0) -> int:
    import analysis

    from .dashboard_note import write_note

    t0 = time.perf_counter()
    ensure_source(spec, console)
    spec = seeded_study(spec, seed)
    for role in (DEFAULT, SEARCH):
        console.rule(role.title)
        if launch(spec, url, role, cpu_slots(WORKERS), console=console):
            console.print(
                f"[red]workers stopped early (crashes, or failing trials); see "
                f"{log_dir(spec, role)}/"
            )
            return 1
    knobs = spec.final
    console.rule(
        f"final: re-ranking, then the ladder retrained with {knobs.seeds} seeds, test split"
    )
    run_final(
        spec,
        url,
        FinalOptions(
            seeds=knobs.seeds,
            top_k=knobs.top_k,
            rerank_top_k=knobs.rerank_top_k,
            rerank_seeds=knobs.rerank_seeds,
            device="cpu",
            jobs=WORKERS,
        ),
        console,
    )
    write_note(url, spec)
    console.rule("optimal vs default")
    console.print(analysis.summary_markdown(url, spec.name))
    storage = "" if url == spec.storage else f" --storage {masked(url)}"
    console.print(
        f"\ndemo finished in {time.perf_counter() - t0:.0f}s. Inspect it:\n"
        f"  optuna-dashboard {masked(url)}\n"
        f"  nbtl-search report {spec.path}{storage} --out report.html"
    )
    return 0
