"""Which configs `final` retrains: noise-aware selection on validation, and the ladder between them.

One trial's validation accuracy is a noisy number (with 200 validation images its standard error
is ~3 points), and the best of many noisy numbers is biased upwards (the winner's curse). So the
top `k` configs of each role are re-run on train -> val with more seeds (`rerank` runs), and the
optimum and the best default are the configs with the best *mean* validation accuracy over the
trial and its re-runs. The test split plays no part.

The ladder goes from the best default to the optimum one group of settings at a time, each rung
keeping the previous ones' changes, in the order of their role in `trainer.config`:

    default -> + layers (new_layers, num_low) -> + learning rates -> + regularisation (L2-SP and L2
    rates, weight decay) -> optimal (+ everything else: augmentation, mixup, ...)

so the last rung is the optimum itself, and the steps say which axis bought the gain.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Any

from trainer import per_part
from trainer.config import HASH_EXCLUDED, TRANSFER_ROLES, fields_with_role

RUNG_NAMES = {"layers": "+ layers", "lrs": "+ learning rates", "regularisation": "+ regularisation"}
DEFAULT_RUNG, OPTIMAL_RUNG = "default", "optimal"


@dataclass(frozen=True)
class Candidate:
    run: dict[str, Any]  # the trial's nbtl_runs row (role search or default)
    val_mean: float  # over the trial and its re-ranking runs
    val_n: int

    @property
    def config(self) -> dict[str, Any]:
        return self.run["config"]


def ranked(runs: list[dict[str, Any]], role: str) -> list[dict[str, Any]]:
    """Complete runs of `role` with distinct configs, best single validation value first (a
    tie goes to the earlier run)."""
    done = [
        r
        for r in runs
        if r["role"] == role and r["state"] == "complete" and r["val_top1"] is not None
    ]
    done.sort(key=lambda r: (-r["val_top1"], r["id"]))
    seen: set[str] = set()
    out = []
    for r in done:
        if r["config_hash"] not in seen:
            seen.add(r["config_hash"])
            out.append(r)
    return out


def rerank_seeds(config: dict[str, Any], extra: int) -> list[int]:
    """The seeds of a config's re-ranking runs: the ones after the trial's own."""
    return [config["seed"] + i for i in range(1, extra + 1)]


def candidates(runs: list[dict[str, Any]], role: str, k: int) -> list[Candidate]:
    """The top max(k, 1) configs of `role` by single value, each with its mean over the trial and
    every complete re-ranking run of the same config, best mean first (ties: single value, id)."""
    top = ranked(runs, role)[: max(k, 1)]
    out = []
    for run in top:
        values = [run["val_top1"]] + [
            r["val_top1"]
            for r in runs
            if r["role"] == "rerank"
            and r["state"] == "complete"
            and r["val_top1"] is not None
            and r["config_hash"] == run["config_hash"]
        ]
        out.append(Candidate(run, statistics.fmean(values), len(values)))
    return sorted(out, key=lambda c: (-c.val_mean, -c.run["val_top1"], c.run["id"]))


def ladder(default: dict[str, Any], optimum: dict[str, Any]) -> list[dict[str, Any]]:
    """Rungs as dicts: `rung`, `adds` (what it changes, "" if nothing), `config`."""
    rungs = [{"rung": DEFAULT_RUNG, "adds": "", "config": dict(default)}]
    current = dict(default)
    for role in TRANSFER_ROLES:
        current, adds = _take(current, optimum, fields_with_role(role))
        rungs.append({"rung": RUNG_NAMES[role], "adds": adds, "config": current})
    rest = [k for k in optimum if k not in HASH_EXCLUDED]
    current, adds = _take(current, optimum, rest)
    rungs.append({"rung": OPTIMAL_RUNG, "adds": adds, "config": current})
    return rungs


def _take(
    current: dict[str, Any], optimum: dict[str, Any], keys: Any
) -> tuple[dict[str, Any], str]:
    out, changed = dict(current), []
    for key in keys:
        if key in optimum and per_part.normal(key, out.get(key)) != per_part.normal(
            key, optimum[key]
        ):
            changed.append(f"{key} {per_part.show(out.get(key))} -> {per_part.show(optimum[key])}")
            out[key] = optimum[key]
    return out, "; ".join(changed)
