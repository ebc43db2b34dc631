"""One inference pass of the pre-trained model over the target's training images
(`trainer.probe`), one more of the same architecture with random weights (the reference a fit is
measured against), then per layer of the partition (layer 1, the target's fresh classifier, is
left out):

- `probe_acc`: cross-validated accuracy (%) of a ridge-regression probe on the layer's pooled
  features (closed form: every layer of a large model in seconds);
- `random_acc`: the same for the randomly initialised model: what the architecture gives alone;
- `fit` = probe_acc - random_acc: the points pre-training buys at that layer;
- `logme`: LogME of the layer's features (You et al. 2021).

Model-level: LogME and H-score of the top transferred layer (layer 2); LEEP and NCE when the
checkpoint has its source head; the domain similarity of Cui et al. (exp(-0.01 EMD) between source
and target class means at layer 2) when `--source-dataset` names the source's own data.

Everything is computed before anything is written; `rows` turns the result into `nbtl_probe` rows,
where `status`, the report and the notebook read them. The settings they suggest: `rule`.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from nbtl_search.study.spec import StudySpec
from trainer import InputError

from .rule import suggest

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


def run_probe(
    spec: StudySpec,
    *,
    base_lr: float,
    scores: tuple[str, ...] = SCORES,
    source_dataset: dict[str, Any] | None = None,
    max_images: int | None = MAX_IMAGES,
    device: str = "cpu",
) -> ProbeResult:
    """The probe of `spec`'s pre-trained model on its target; nothing is written."""
    from trainer import probe as trainer_probe
    from trainer import scores as sc

    unknown = [s for s in scores if s not in SCORES]
    if unknown:
        raise InputError(f"unknown score(s) {', '.join(unknown)}; known: {', '.join(SCORES)}")
    t0 = time.perf_counter()
    cfg = spec.base_config(device=device, train_split="train")
    if not (cfg.pretrained or cfg.pretrained_file):
        raise InputError(
            "the study's model has no pre-trained weights (model.pretrained or "
            "model.pretrained_file): there is nothing to probe"
        )
    found = trainer_probe.probe_features(cfg, max_images)
    asked = [s for s in scores if s in SOURCE_HEAD_SCORES]
    if found.source_probs is None and asked and scores != SCORES:  # asked for by name: refuse
        raise InputError(
            f"{', '.join(asked)} need(s) the checkpoint's source head: {found.source_head}"
        )
    n, classes = len(found.labels), len(np.unique(found.labels))
    if n <= classes or np.bincount(found.labels).min() < 2:
        raise InputError(
            f"the target's train split has {n} images for {classes} classes: the "
            "scores need more images than classes and at least 2 per class"
        )
    random = trainer_probe.probe_features(
        cfg.replace(pretrained=False, pretrained_file=None), max_images
    )
    passes = found.seconds + random.seconds
    source = None
    if source_dataset and "domain_similarity" in scores:
        source = trainer_probe.probe_features(
            cfg.replace(**source_dataset, num_classes=None), max_images
        )
        passes += source.seconds
    t1 = time.perf_counter()
    layers = []
    for ours, ref in zip(found.layers[1:], random.layers[1:]):  # layer 1: a fresh classifier
        row: dict[str, Any] = {
            "index": ours.index,
            "name": ours.name,
            "dim": ours.features.shape[1],
        }
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
    return ProbeResult(
        layers, model, suggestion, reasons, {"pass": passes, "scores": t2 - t1, "total": t2 - t0}
    )


def rows(result: ProbeResult) -> list[dict[str, Any]]:
    """The result as `nbtl_probe` rows: (layer, layer_name, score, value)."""
    out = [
        {"layer": r["index"], "layer_name": r["name"], "score": k, "value": float(v)}
        for r in result.layers
        for k, v in r.items()
        if k not in ("index", "name")
    ]
    out += [
        {"layer": None, "layer_name": None, "score": k, "value": float(v)}
        for k, v in result.model.items()
    ]
    out += [
        {"layer": None, "layer_name": None, "score": f"suggested.{k}", "value": float(v)}
        for k, v in result.suggestion.items()
    ]
    out += [
        {"layer": None, "layer_name": None, "score": f"seconds.{k}", "value": float(v)}
        for k, v in result.seconds.items()
    ]
    return out
