"""`nbtl-search final`: re-rank, build the ladder, retrain it on train+val and test it — the only
place the test split is ever touched.

1. Re-ranking (train -> val only): the top `rerank_top_k` configs of the search and of the baseline
   run again with `rerank_seeds` more seeds; the optimum and the best default are the best means
   (`selection`).
2. The ladder from the best default to the optimum (`selection.ladder`) is stored in `nbtl_ladder`.
3. Every distinct rung config (and the next `top_k - 1` search configs, for the ensemble) is
   retrained on train+val with the same `seeds` seeds and evaluated on the test split; the test
   softmax goes into `nbtl_predictions`.

Runs already done are not run again, so rerunning `final` only fills what is missing. Every check
happens before anything is written.
"""

from __future__ import annotations

import multiprocessing as mp
import os
from dataclasses import dataclass
from multiprocessing.pool import Pool
from typing import Any

import optuna
from rich.console import Console

from nbtl_search.run.objective import EpochRecorder, failure_reason
from nbtl_search.run.processes import cpu_threads, exit_with_parent
from nbtl_search.run.signals import stop_on_signals
from nbtl_search.store.connection import open_rdb
from nbtl_search.store.results import ResultStore
from nbtl_search.study import edges
from nbtl_search.study.axes import axis_values
from nbtl_search.study.roles import DEFAULT, SEARCH
from nbtl_search.study.spec import StudySpec
from trainer import InputError, TrainConfig
from trainer.config import config_hash

from . import selection


@dataclass(frozen=True)
class FinalOptions:
    seeds: int
    top_k: int
    rerank_top_k: int
    rerank_seeds: int
    device: str = "cpu"
    jobs: int = 1
    image_cache: bool = True  # False: decode image files every epoch, whatever the study says


@dataclass(frozen=True)
class _Job:
    run_id: int
    what: str
    config: TrainConfig
    test: bool  # a final run (train+val -> test); else a re-ranking run (train -> val)


def check_ready(spec: StudySpec, url: str, opts: FinalOptions) -> None:
    """Refuse, before anything is written, what `final` cannot do yet."""
    for name, value, low in (
        ("--seeds", opts.seeds, 1),
        ("--top-k", opts.top_k, 1),
        ("--rerank-top-k", opts.rerank_top_k, 0),
        ("--rerank-seeds", opts.rerank_seeds, 0),
        ("--jobs", opts.jobs, 1),
    ):
        if value < low:
            raise InputError(f"{name} must be >= {low}, got {value}")
    store = ResultStore(url, create=False)
    try:
        runs = store.runs(study=spec.name)
    finally:
        store.close()
    for role, verb in ((DEFAULT, "baseline"), (SEARCH, "run")):
        found = len(selection.ranked(runs, role.name))
        if not found:
            raise InputError(
                f"study {spec.name!r} has no complete {role.name} run in this storage: "
                f"run `nbtl-search {verb} STUDY.yaml` first"
            )
        if opts.rerank_top_k > found:
            raise InputError(
                f"--rerank-top-k {opts.rerank_top_k} is more than the {found} distinct "
                f"complete {role.name} configs; give --rerank-top-k {found} or fewer"
            )
        if role is SEARCH and opts.top_k > found:
            raise InputError(
                f"--top-k {opts.top_k} is more than the {found} distinct complete "
                f"search configs; give --top-k {found} or fewer"
            )


def run_final(spec: StudySpec, url: str, opts: FinalOptions, console: Console) -> None:
    """Re-rank, store the ladder, retrain it. On SIGTERM/SIGINT/SIGHUP the training processes are
    killed and their runs marked failed (a rerun of `final` trains them again)."""
    check_ready(spec, url, opts)
    store = ResultStore(url)
    # spawn: a fresh interpreter per process (no forked torch state); each dies with this process
    pool = mp.get_context("spawn").Pool(
        opts.jobs, initializer=exit_with_parent, initargs=(os.getpid(),)
    )
    unfinished: set[int] = set()
    try:
        with stop_on_signals():
            threads = cpu_threads(opts.jobs) if opts.device == "cpu" else None
            _run(pool, url, _rerank_jobs(spec, store, opts), threads, console, unfinished)
            runs = store.runs(study=spec.name)
            chosen = {
                role.name: selection.candidates(runs, role.name, opts.rerank_top_k)
                for role in (DEFAULT, SEARCH)
            }
            rungs = _ladder(spec, url, runs, chosen)
            store.replace_ladder(spec.name, rungs)
            console.print(_selection_text(chosen))
            _run(
                pool,
                url,
                _final_jobs(spec, store, opts, rungs, chosen[SEARCH.name]),
                threads,
                console,
                unfinished,
            )
        pool.close()
    except KeyboardInterrupt:  # Ctrl-C, or Stopped from SIGTERM / SIGHUP
        pool.terminate()
        for run_id in unfinished:
            store.mark_lost(
                run_id,
                "final stopped by a signal before this run finished; "
                "rerun `nbtl-search final` to train it",
            )
        raise
    finally:
        pool.join()
        store.close()


def _rerank_jobs(spec: StudySpec, store: ResultStore, opts: FinalOptions) -> list[_Job]:
    runs = store.runs(study=spec.name)
    done = {
        (r["config_hash"], r["seed"])
        for r in runs
        if r["role"] == "rerank" and r["state"] == "complete"
    }
    jobs = []
    for role in (DEFAULT, SEARCH):
        for run in selection.ranked(runs, role.name)[: opts.rerank_top_k]:
            for seed in selection.rerank_seeds(run["config"], opts.rerank_seeds):
                if (run["config_hash"], seed) in done:
                    continue
                cfg = _config(run["config"], opts, seed=seed)
                run_id = store.start_run(
                    study=spec.name,
                    role="rerank",
                    config=cfg.to_dict(),
                    seed=seed,
                    device=opts.device,
                    source_run_id=run["id"],
                )
                jobs.append(
                    _Job(
                        run_id, f"re-rank {role.name} run {run['id']}, seed {seed}", cfg, test=False
                    )
                )
    return jobs


def _final_jobs(
    spec: StudySpec,
    store: ResultStore,
    opts: FinalOptions,
    rungs: list[dict],
    search: list[selection.Candidate],
) -> list[_Job]:
    done = {
        (r["config_hash"], r["seed"])
        for r in store.runs(study=spec.name, role="final")
        if r["state"] == "complete"
    }
    sources: list[
        tuple[str, str, dict[str, Any], int | None]
    ] = []  # (final_of, label, config, run)
    ends = {config_hash(rungs[0]["config"]): "default", config_hash(rungs[-1]["config"]): "search"}
    for rung in rungs:  # an intermediate rung equal to an end is that end (one set of runs)
        kind = ends.get(config_hash(rung["config"]), "ladder")
        sources.append((kind, f"rung {rung['rung']!r}", rung["config"], rung.get("source_run_id")))
    for c in search[1 : opts.top_k]:  # more members for the ensemble
        sources.append(("search", f"search run {c.run['id']}", c.config, c.run["id"]))
    jobs, queued = [], set()
    for kind, label, config, source in sources:
        base = TrainConfig.from_dict(config)
        for seed in range(base.seed, base.seed + opts.seeds):
            key = (config_hash(config), seed)
            if key in done or key in queued:  # an unchanged rung reuses the previous one's runs
                continue
            queued.add(key)
            cfg = _config(
                config,
                opts,
                seed=seed,
                train_split="trainval",
                eval_test=True,
                save_test_predictions=True,
            )
            run_id = store.start_run(
                study=spec.name,
                role="final",
                config=cfg.to_dict(),
                seed=seed,
                device=opts.device,
                source_run_id=source,
                final_of=kind,
            )
            jobs.append(_Job(run_id, f"{label}, seed {seed}", cfg, test=True))
    return jobs


def _config(config: dict[str, Any], opts: FinalOptions, **changes: Any) -> TrainConfig:
    cfg = TrainConfig.from_dict(config).replace(
        checkpoint=False, output=None, resume=None, device=opts.device, **changes
    )
    return cfg if opts.image_cache else cfg.replace(image_cache=False)


def _ladder(spec: StudySpec, url: str, runs: list[dict], chosen: dict[str, list]) -> list[dict]:
    best_default, optimum = chosen[DEFAULT.name][0], chosen[SEARCH.name][0]
    rungs = selection.ladder(best_default.config, optimum.config)
    for rung, c, notes in (
        (rungs[0], best_default, _default_notes(runs, best_default)),
        (rungs[-1], optimum, _search_notes(spec, url, optimum)),
    ):
        rung.update(
            source_run_id=c.run["id"],
            val_top1=c.run["val_top1"],
            val_mean=c.val_mean,
            val_n=c.val_n,
            notes=notes,
        )
    return rungs


def _default_notes(runs: list[dict], chosen: selection.Candidate) -> list[str]:
    grid = [r["config"] for r in runs if r["role"] == "default" and r["state"] == "complete"]
    tried = {"lr": [c["lrs"][0] for c in grid], "weight_decay": [c["weight_decay"] for c in grid]}
    value = {"lr": chosen.config["lrs"][0], "weight_decay": chosen.config["weight_decay"]}
    return edges.grid_notes(tried, value)


def _search_notes(spec: StudySpec, url: str, chosen: selection.Candidate) -> list[str]:
    number = chosen.run["trial_number"]
    study = optuna.load_study(
        study_name=SEARCH.study_name(spec), storage=open_rdb(url, heartbeat=False)
    )
    trial = next((t for t in study.get_trials(deepcopy=False) if t.number == number), None)
    if trial is None:
        return []
    return edges.range_notes(spec.search_space, axis_values(spec.search_space, trial.params))


def _selection_text(chosen: dict[str, list[selection.Candidate]]) -> str:
    lines = ["selection on validation (single trial -> mean with its re-ranking runs):"]
    for role, cands in chosen.items():
        for i, c in enumerate(cands):
            mark = "*" if i == 0 else " "
            lines.append(
                f"  {mark} {role} run {c.run['id']}: {c.run['val_top1']:.2f} -> "
                f"{c.val_mean:.2f} (n={c.val_n})"
            )
    return "\n".join(lines)


def _run(
    pool: Pool,
    url: str,
    jobs: list[_Job],
    threads: int | None,
    console: Console,
    unfinished: set[int],
) -> None:
    """Train `jobs` in the pool, printing each outcome as it comes; `unfinished` holds the run ids
    still in flight (what a signal leaves behind)."""
    unfinished.update(job.run_id for job in jobs)
    for job, outcome in pool.imap_unordered(_train, [(url, job, threads) for job in jobs]):
        unfinished.discard(job.run_id)
        console.print(f"{'final' if job.test else 'rerank'}: {job.what}: {outcome}")


def _train(task: tuple[str, _Job, int | None]) -> tuple[_Job, str]:
    url, job, threads = task
    return job, _fit(url, job, threads)


def _fit(url: str, job: _Job, threads: int | None) -> str:
    """One run in its own process; its outcome is recorded in the run's row either way."""
    import torch

    from trainer import fit

    if threads:
        torch.set_num_threads(threads)
    store = ResultStore(url)
    try:
        result = fit(job.config, EpochRecorder(store, job.run_id))
        if not job.test:
            store.finish_run(
                job.run_id,
                state="complete",
                val_top1=result.best_val_top1,
                best_epoch=result.best_epoch,
                epochs_run=len(result.history),
                wall_s=result.wall_s,
                images_per_s=result.images_per_s,
            )
            return f"val top-1 {result.best_val_top1:.2f} ({result.wall_s:.1f}s)"
        store.save_predictions(job.run_id, result.test_probs, result.test_labels)
        store.finish_run(
            job.run_id,
            state="complete",
            epochs_run=len(result.history),
            test_top1=result.test["top1"],
            test_top5=result.test["top5"],
            wall_s=result.wall_s,
            images_per_s=result.images_per_s,
        )
        return f"test top-1 {result.test['top1']:.2f} ({result.wall_s:.1f}s)"
    except Exception as e:
        store.finish_run(job.run_id, state="failed", error=failure_reason(e))
        return f"failed: {failure_reason(e)}"
    finally:
        store.close()
