"""`nbtl-search probe`: how well the pre-trained weights fit the target, and the settings it suggests.

One inference pass of the pre-trained model over the target's training images (`trainer.probe`),
one more of the same architecture with random weights (the reference a fit is measured against),
then per layer of the partition (layer 1, the target's fresh classifier, is left out):

- `probe_acc`: cross-validated accuracy (%) of a ridge-regression probe on the layer's pooled
  features (closed form: every layer of a large model in seconds);
- `random_acc`: the same for the randomly initialised model: what the architecture gives alone;
- `fit` = probe_acc - random_acc: the points pre-training buys at that layer;
- `logme`: LogME of the layer's features (You et al. 2021).

Model-level: LogME and H-score of the top transferred layer (layer 2); LEEP and NCE when the
checkpoint has its source head; the domain similarity of Cui et al. (exp(-0.01 EMD) between source
and target class means at layer 2) when `--source-dataset` names the source's own data.

**The rule** (a hypothesis; `docs/probe.md` says how well it held):

1. keep: the highest layer k >= 2 whose probe accuracy is within one binomial standard error of
   the best layer's; the layers above it fit the target worse than what they receive, so
   re-initialise them: `new_layers = k - 1` (at least 1);
2. pull: with fit(k) >= `FIT_STRONG` points the transferred weights carry much of the answer, so
   L2-SP towards them (rate 0.1 from `FIT_STRONG`, 0.01 from `FIT_SOME`); below `FIT_SOME`, no
   L2-SP (plain weight decay only);
3. learning rates: the new layers at the base lr (the best default's, if the baseline ran), the
   transferred ones slower the better they fit: /10 from `FIT_STRONG`, /3 from `FIT_SOME`.

Everything is computed before anything is written; the scores and the suggestion go to the study's
database (`nbtl_probe`), where `status`, the report and the notebook read them.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from trainer import InputError

from .axes import fields_from_values, values_from_fields
from .results import ResultStore
from .sampling import distributions
from .spec import StudySpec

FIT_SOME = 10.0  # points of linear-probe accuracy that pre-training adds at the kept layer
FIT_STRONG = 30.0
MAX_IMAGES = 2000  # a class-balanced subset is enough to rank layers, and keeps the probe cheap
SCORES = ("logme", "probe_acc", "hscore", "leep", "nce", "domain_similarity")
SOURCE_HEAD_SCORES = ("leep", "nce")


@dataclass
class ProbeResult:
    layers: list[dict[str, Any]]  # index, name, dim, probe_acc, random_acc, fit, logme
    model: dict[str, float]  # model-level scores
    suggestion: dict[str, Any]  # axis -> value (new_layers, lr_new, lr_upper, lr_lower, l2sp_...)
    reasons: list[str]
    seconds: dict[str, float] = field(default_factory=dict)  # "pass", "scores", "total"


def run_probe(spec: StudySpec, *, base_lr: float, scores: tuple[str, ...] = SCORES,
              source_dataset: dict[str, Any] | None = None, max_images: int | None = MAX_IMAGES,
              device: str = "cpu") -> ProbeResult:
    """The probe of `spec`'s pre-trained model on its target; nothing is written."""
    from trainer import probe as trainer_probe
    from trainer import scores as sc

    unknown = [s for s in scores if s not in SCORES]
    if unknown:
        raise InputError(f"unknown score(s) {', '.join(unknown)}; known: {', '.join(SCORES)}")
    t0 = time.perf_counter()
    cfg = spec.base_config(device=device, train_split="train")
    if not (cfg.pretrained or cfg.pretrained_file):
        raise InputError("the study's model has no pre-trained weights (model.pretrained or "
                         "model.pretrained_file): there is nothing to probe")
    found = trainer_probe.probe_features(cfg, max_images)
    asked = [s for s in scores if s in SOURCE_HEAD_SCORES]
    if found.source_probs is None and asked and scores != SCORES:  # asked for by name: refuse
        raise InputError(f"{', '.join(asked)} need(s) the checkpoint's source head: "
                         f"{found.source_head}")
    n, classes = len(found.labels), len(np.unique(found.labels))
    if n <= classes or np.bincount(found.labels).min() < 2:
        raise InputError(f"the target's train split has {n} images for {classes} classes: the "
                         "scores need more images than classes and at least 2 per class")
    random = trainer_probe.probe_features(cfg.replace(pretrained=False, pretrained_file=None),
                                          max_images)
    passes = found.seconds + random.seconds
    source = None
    if source_dataset and "domain_similarity" in scores:
        source = trainer_probe.probe_features(cfg.replace(**source_dataset, num_classes=None),
                                              max_images)
        passes += source.seconds
    t1 = time.perf_counter()
    layers = []
    for ours, ref in zip(found.layers[1:], random.layers[1:]):  # layer 1: a fresh classifier
        row: dict[str, Any] = {"index": ours.index, "name": ours.name, "dim": ours.features.shape[1]}
        if "probe_acc" in scores:
            row["probe_acc"] = sc.ridge_probe_accuracy(ours.features, found.labels)
            row["random_acc"] = sc.ridge_probe_accuracy(ref.features, found.labels)
            row["fit"] = row["probe_acc"] - row["random_acc"]
        if "logme" in scores:
            row["logme"] = sc.logme(ours.features, found.labels)
        layers.append(row)
    top = found.layers[1].features
    model: dict[str, float] = {}
    if "logme" in scores:
        model["logme"] = layers[0]["logme"]
    if "hscore" in scores:
        model["hscore"] = sc.hscore(top, found.labels)
    if found.source_probs is not None:
        if "leep" in scores:
            model["leep"] = sc.leep(found.source_probs, found.labels)
        if "nce" in scores:
            model["nce"] = sc.nce(found.source_probs.argmax(axis=1), found.labels)
    if source is not None:
        src_means, src_counts = sc.class_means(source.layers[1].features, source.labels)
        tgt_means, tgt_counts = sc.class_means(top, found.labels)
        emd = sc.earth_movers_distance(src_means, tgt_means, src_counts, tgt_counts)
        model["emd"], model["domain_similarity"] = emd, float(math.exp(-0.01 * emd))
    suggestion, reasons = suggest(layers, n, base_lr) if "probe_acc" in scores else ({}, [])
    t2 = time.perf_counter()
    return ProbeResult(layers, model, suggestion, reasons,
                       {"pass": passes, "scores": t2 - t1, "total": t2 - t0})


def suggest(layers: list[dict[str, Any]], n_images: int, base_lr: float) -> tuple[dict[str, Any], list[str]]:
    """The rule of the module docstring: (axis values, the reasons in words)."""
    best = max(layers, key=lambda r: r["probe_acc"])
    p = best["probe_acc"] / 100
    tolerance = 100 * math.sqrt(max(p * (1 - p), 1e-4) / n_images)  # one binomial standard error
    keep = min((r for r in layers if r["probe_acc"] >= best["probe_acc"] - tolerance),
               key=lambda r: r["index"])
    new_layers = max(1, keep["index"] - 1)
    fit = keep["fit"]
    reasons = [f"layer {keep['index']} ({keep['name']}) is the highest whose features fit the target "
               f"within one standard error ({tolerance:.1f} points) of the best layer "
               f"({best['index']}, {best['probe_acc']:.1f}%): re-initialise the {new_layers} "
               f"layer(s) above it"]
    if fit >= FIT_STRONG:
        rate, slower = 0.1, 10.0
    elif fit >= FIT_SOME:
        rate, slower = 0.01, 3.0
    else:
        rate, slower = 0.0, 1.0
    reasons.append(f"pre-training adds {fit:+.1f} points of linear-probe accuracy at that layer "
                   + (f"(>= {FIT_SOME:g}): L2-SP {rate:g} towards the pre-trained weights, "
                      f"transferred layers {slower:g}x slower" if rate else
                      f"(< {FIT_SOME:g}): no L2-SP, one learning rate"))
    suggestion = {"new_layers": new_layers, "lr_new": base_lr, "lr_upper": base_lr / slower,
                  "lr_lower": base_lr / slower, "l2sp_upper": rate, "l2sp_lower": rate}
    return suggestion, reasons


def base_lr(spec: StudySpec, store: ResultStore | None) -> tuple[float, str]:
    """The best default's lr when the baseline has run, else the middle of its grid."""
    done = [] if store is None else [r for r in store.runs(study=spec.name, role="default")
                                     if r["state"] == "complete" and r["val_top1"] is not None]
    if done:
        best = max(done, key=lambda r: (r["val_top1"], -r["id"]))
        return float(best["config"]["lrs"][0]), "the best default's"
    lrs = sorted(spec.default_settings.grid["lr"])
    return float(lrs[len(lrs) // 2]), "the middle of the baseline grid's (no baseline yet)"


def rows(result: ProbeResult) -> list[dict[str, Any]]:
    """The result as `nbtl_probe` rows: (layer, layer_name, score, value)."""
    out = [{"layer": r["index"], "layer_name": r["name"], "score": k, "value": float(v)}
           for r in result.layers for k, v in r.items() if k not in ("index", "name")]
    out += [{"layer": None, "layer_name": None, "score": k, "value": float(v)}
            for k, v in result.model.items()]
    out += [{"layer": None, "layer_name": None, "score": f"suggested.{k}", "value": float(v)}
            for k, v in result.suggestion.items()]
    out += [{"layer": None, "layer_name": None, "score": f"seconds.{k}", "value": float(v)}
            for k, v in result.seconds.items()]
    return out


def stored_suggestion(rows: list[dict[str, Any]]) -> dict[str, float]:
    """The suggestion of a study's stored probe rows (`ResultStore.probe`)."""
    prefix = "suggested."
    return {r["score"][len(prefix):]: r["value"] for r in rows if r["score"].startswith(prefix)}


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
            params[name] = int(round(clipped)) if isinstance(dist, IntDistribution) else float(clipped)
        elif isinstance(dist, CategoricalDistribution):
            numbers = [c for c in dist.choices if isinstance(c, (int, float)) and not isinstance(c, bool)]
            if numbers and isinstance(value, (int, float)):
                params[name] = min(numbers, key=lambda c: abs(math.log((c or 1e-12) / (value or 1e-12))))
    if not params:
        return None
    for name, dist in dists.items():  # every other parameter: its range's middle, or first choice
        if name not in params:
            if isinstance(dist, CategoricalDistribution):
                params[name] = dist.choices[0]
            elif isinstance(dist, IntDistribution):
                params[name] = (dist.low + dist.high) // 2
            else:
                params[name] = math.sqrt(dist.low * dist.high) if dist.log else (dist.low + dist.high) / 2
    return params
