"""The probe's rule from scores to settings (a hypothesis; `docs/probe.md` says how well it
held), and reading a stored suggestion back as values of a study's search space.

1. keep: the highest layer k >= 2 whose probe accuracy is within one binomial standard error of
   the best layer's; the layers above it fit the target worse than what they receive, so
   re-initialise them: `new_layers = k - 1` (at least 1);
2. pull: with fit(k) >= `FIT_STRONG` points the transferred weights carry much of the answer, so
   L2-SP towards them (rate 0.1 from `FIT_STRONG`, 0.01 from `FIT_SOME`); below `FIT_SOME`, no
   L2-SP (plain weight decay only);
3. learning rates: the new layers at the base lr (the best default's, if the baseline ran), the
   transferred ones slower the better they fit: /10 from `FIT_STRONG`, /3 from `FIT_SOME`.

(`fit`, `probe_acc`: see `measure`.)
"""

from __future__ import annotations

import math
from typing import Any

from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from nbtl_search.store.results import ResultStore
from nbtl_search.study.axes import fields_from_values, values_from_fields
from nbtl_search.study.sampling import distributions
from nbtl_search.study.spec import StudySpec

FIT_SOME = 10.0  # points of linear-probe accuracy that pre-training adds at the kept layer
FIT_STRONG = 30.0


def suggest(
    layers: list[dict[str, Any]], n_images: int, base_lr: float
) -> tuple[dict[str, Any], list[str]]:
    """The rule of the module docstring: (axis values, the reasons in words)."""
    best = max(layers, key=lambda r: r["probe_acc"])
    p = best["probe_acc"] / 100
    tolerance = 100 * math.sqrt(max(p * (1 - p), 1e-4) / n_images)  # one binomial standard error
    keep = min(
        (r for r in layers if r["probe_acc"] >= best["probe_acc"] - tolerance),
        key=lambda r: r["index"],
    )
    new_layers = max(1, keep["index"] - 1)
    fit = keep["fit"]
    reasons = [
        f"layer {keep['index']} ({keep['name']}) is the highest whose features fit the target "
        f"within one standard error ({tolerance:.1f} points) of the best layer "
        f"({best['index']}, {best['probe_acc']:.1f}%): re-initialise the {new_layers} "
        f"layer(s) above it"
    ]
    if fit >= FIT_STRONG:
        rate, slower = 0.1, 10.0
    elif fit >= FIT_SOME:
        rate, slower = 0.01, 3.0
    else:
        rate, slower = 0.0, 1.0
    reasons.append(
        f"pre-training adds {fit:+.1f} points of linear-probe accuracy at that layer "
        + (
            f"(>= {FIT_SOME:g}): L2-SP {rate:g} towards the pre-trained weights, "
            f"transferred layers {slower:g}x slower"
            if rate
            else f"(< {FIT_SOME:g}): no L2-SP, one learning rate"
        )
    )
    suggestion = {
        "new_layers": new_layers,
        "lr_new": base_lr,
        "lr_upper": base_lr / slower,
        "lr_lower": base_lr / slower,
        "l2sp_upper": rate,
        "l2sp_lower": rate,
    }
    return suggestion, reasons


def base_lr(spec: StudySpec, store: ResultStore | None) -> tuple[float, str]:
    """The best default's lr when the baseline has run, else the middle of its grid."""
    done = (
        []
        if store is None
        else [
            r
            for r in store.runs(study=spec.name, role="default")
            if r["state"] == "complete" and r["val_top1"] is not None
        ]
    )
    if done:
        best = max(done, key=lambda r: (r["val_top1"], -r["id"]))
        return float(best["config"]["lrs"][0]), "the best default's"
    lrs = sorted(spec.default_settings.grid["lr"])
    return float(lrs[len(lrs) // 2]), "the middle of the baseline grid's (no baseline yet)"


def stored_suggestion(rows: list[dict[str, Any]]) -> dict[str, float]:
    """The suggestion of a study's stored probe rows (`ResultStore.probe`)."""
    prefix = "suggested."
    return {r["score"][len(prefix) :]: r["value"] for r in rows if r["score"].startswith(prefix)}


def suggested_values(suggestion: dict[str, Any]) -> dict[str, Any]:
    """The suggestion's value for every axis a study may search (`lr` is the new layers' lr)."""
    return values_from_fields(fields_from_values(suggestion))


def suggestion_params(spec: StudySpec, values: dict[str, Any]) -> dict[str, Any] | None:
    """Axis values (`suggested_values`) as Optuna params of the study's search space (clipped
    into its ranges, snapped to the nearest choice); None if the space has no axis they set."""
    dists = distributions(spec)
    params: dict[str, Any] = {}
    for name, dist in dists.items():
        axis = name[:-3] if name.endswith("_on") else name
        if axis not in values:
            continue
        value = values[axis]
        if name.endswith("_on"):
            params[name] = bool(value)
        elif isinstance(dist, (FloatDistribution, IntDistribution)):
            clipped = min(max(value, dist.low), dist.high)
            params[name] = (
                int(round(clipped)) if isinstance(dist, IntDistribution) else float(clipped)
            )
        elif isinstance(dist, CategoricalDistribution):
            numbers = [
                c for c in dist.choices if isinstance(c, (int, float)) and not isinstance(c, bool)
            ]
            if numbers and isinstance(value, (int, float)):
                params[name] = min(
                    numbers, key=lambda c: abs(math.log((c or 1e-12) / (value or 1e-12)))
                )
    if not params:
        return None
    for name, dist in dists.items():  # every other parameter: its range's middle, or first choice
        if name not in params:
            if isinstance(dist, CategoricalDistribution):
                params[name] = dist.choices[0]
            elif isinstance(dist, IntDistribution):
                params[name] = (dist.low + dist.high) // 2
            else:
                params[name] = (
                    math.sqrt(dist.low * dist.high) if dist.log else (dist.low + dist.high) / 2
                )
    return params
