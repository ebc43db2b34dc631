"""`nbtl-search final`: retrain the best default and the best search configs on train+val with several
seeds and evaluate them on the test split — the only place the test split is ever touched."""

from __future__ import annotations

import multiprocessing as mp
import os
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

from rich.console import Console
from sqlalchemy.engine import make_url

from trainer import InputError, TrainConfig

from .objective import EpochRecorder, failure_reason
from .results import ResultStore
from .spec import StudySpec


def predictions_root(url: str, study: str) -> tuple[Path, Path]:
    """(folder for prediction files, folder that relative paths in the database are relative to).
    Next to the SQLite file; in the current folder for a server database."""
    u = make_url(url)
    if u.get_backend_name() == "sqlite" and u.database not in (None, "", ":memory:"):
        base = Path(u.database).expanduser().resolve().parent
    else:
        base = Path.cwd()
    return base / "nbtl-final" / study, base


def pick_sources(store: ResultStore, study: str, top_k: int) -> list[tuple[str, dict]]:
    """The best default run and the top-k search runs with distinct configs, by validation top-1."""
    def best(role: str, k: int) -> list[dict]:
        done = [r for r in store.runs(study=study, role=role)
                if r["state"] == "complete" and r["val_top1"] is not None]
        done.sort(key=lambda r: (-r["val_top1"], r["id"]))
        picked, seen = [], set()
        for r in done:
            if r["config_hash"] not in seen:
                seen.add(r["config_hash"])
                picked.append(r)
        return picked[:k]

    default, search = best("default", 1), best("search", top_k)
    if not default:
        raise InputError(f"study {study!r} has no complete default run: "
                         f"run `nbtl-search baseline STUDY.yaml` first")
    if not search:
        raise InputError(f"study {study!r} has no complete search run: "
                         f"run `nbtl-search run STUDY.yaml` first")
    return [("default", default[0])] + [("search", r) for r in search]


def run_final(spec: StudySpec, url: str, *, seeds: int, top_k: int, device: str,
              console: Console, jobs: int = 1) -> list[int]:
    """Train every (source, seed) pair not already done, `jobs` at a time (separate processes);
    returns the ids of the final runs."""
    if seeds < 1 or top_k < 1 or jobs < 1:
        raise InputError(f"--seeds, --top-k and --jobs must be >= 1, got {seeds}, {top_k}, {jobs}")
    store = ResultStore(url)
    folder, base = predictions_root(url, spec.name)
    done = {(r["source_run_id"], r["seed"]): r["id"] for r in store.runs(study=spec.name, role="final")
            if r["state"] == "complete"}
    ids, todo = [], []
    for kind, source in pick_sources(store, spec.name, top_k):
        config = TrainConfig.from_dict(source["config"])
        for seed in range(config.seed, config.seed + seeds):
            if (source["id"], seed) in done:  # rerunning `final` only fills what is missing
                ids.append(done[(source["id"], seed)])
                continue
            cfg = config.replace(seed=seed, train_split="trainval", eval_test=True,
                                 save_test_predictions=True, checkpoint=False, device=device,
                                 output=str(folder / f"run{source['id']}-seed{seed}"), resume=None)
            run_id = store.start_run(study=spec.name, role="final", config=cfg.to_dict(), seed=seed,
                                     device=device, source_run_id=source["id"], final_of=kind)
            todo.append((run_id, f"{kind} config of run {source['id']}, seed {seed}", cfg))
    store.close()
    threads = max(1, (os.cpu_count() or 1) // jobs) if device == "cpu" else None
    with ProcessPoolExecutor(jobs, mp_context=mp.get_context("spawn")) as pool:
        futures = {pool.submit(_train, url, run_id, cfg, str(base), threads): (run_id, what)
                   for run_id, what, cfg in todo}
        for future in as_completed(futures):
            run_id, what = futures[future]
            console.print(f"final: {what}: {future.result()}")
            ids.append(run_id)
    return ids


def _train(url: str, run_id: int, cfg: TrainConfig, base: str, threads: int | None) -> str:
    """One final run in its own process; its outcome is recorded in the run's row either way."""
    import torch

    from trainer import fit

    if threads:
        torch.set_num_threads(threads)
    store = ResultStore(url)
    try:
        result = fit(cfg, EpochRecorder(store, run_id))
        path = Path(result.test_predictions)
        store.finish_run(run_id, state="complete", epochs_run=len(result.history),
                         test_top1=result.test["top1"], test_top5=result.test["top5"],
                         wall_s=result.wall_s, images_per_s=result.images_per_s,
                         predictions_path=str(path.relative_to(base) if path.is_relative_to(base)
                                              else path))
        return f"test top-1 {result.test['top1']:.2f} ({result.wall_s:.1f}s)"
    except Exception as e:  # one bad seed must not lose the others
        store.finish_run(run_id, state="failed", error=failure_reason(e))
        return f"failed: {failure_reason(e)}"
    finally:
        store.close()
