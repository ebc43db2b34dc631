"""Study files -> a validated, immutable `StudySpec`.

Everything is checked here, at load time, before any worker starts or anything is written. A bad
file raises `SpecError` whose message starts with the file and the field path, e.g.
``studies/x.yaml: search_space.lr_new.low: must be > 0 with log: true, got 0``.

Training defaults live only in `trainer.config.TrainConfig`: a training field the file leaves out
falls through to it. Study knobs have their defaults in `knobs`, the default settings theirs in
`defaults`. Paths (`data_dir`, `pretrained_file`, `output`, `resume`) expand `~` and `$VARS`;
`storage` expands `$VARS` (keep passwords out of study files). An unset variable is an error.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from trainer.config import InputError, TrainConfig, fields_with_role

from . import axes as axes_mod
from . import default_settings as defaults_mod
from .checks import FIELD_HINTS, SpecError, check_keys, check_type, describe, expand, mapping
from .sections import (
    BudgetSpec,
    FinalSpec,
    ObjectiveSpec,
    ProbeSpec,
    PrunerSpec,
    SamplerSpec,
    parse_knobs,
)

# Section key -> TrainConfig field, for the two sections that describe what is trained.
DATASET_KEYS = {
    "name": "dataset",
    "data_dir": "data_dir",
    "img_size": "img_size",
    "num_classes": "num_classes",
    "mean": "mean",  # input normalisation (the paper's code used per-dataset values)
    "std": "std",
    "extra": "extra",
}
MODEL_KEYS = {"name": "model", "pretrained": "pretrained", "pretrained_file": "pretrained_file"}
PATH_FIELDS = ("data_dir", "pretrained_file", "output", "resume")
# Where and how a run executes, not what it learns: the study's fingerprint leaves them out.
EXECUTION_FIELDS = fields_with_role("execution")


@dataclass(frozen=True)
class StudySpec:
    name: str
    storage: str
    dataset: dict[str, Any]  # the dataset section as written (paths expanded)
    model: dict[str, Any]
    train: dict[str, Any]  # fixed TrainConfig fields
    search_space: dict[str, axes_mod.Axis]
    sampler: SamplerSpec
    pruner: PrunerSpec
    objective: ObjectiveSpec
    budget: BudgetSpec
    default_settings: defaults_mod.DefaultSettings
    final: FinalSpec
    probe: ProbeSpec = ProbeSpec()
    path: str | None = None

    def base_fields(self) -> dict[str, Any]:
        """TrainConfig keyword arguments of the dataset, model and train sections."""
        out = {DATASET_KEYS[k]: v for k, v in self.dataset.items()}
        out.update({MODEL_KEYS[k]: v for k, v in self.model.items()})
        out.update(self.train)
        if "extra" in out:
            out["extra"] = dict(out["extra"])  # each config gets its own copy
        return out

    def base_config(self, **overrides: Any) -> TrainConfig:
        """The dataset, model and train sections (no search values), then `overrides`."""
        return TrainConfig(**{**self.base_fields(), **overrides})

    def default_config(self, point: dict[str, Any]) -> TrainConfig:
        """One baseline point (`defaults.default_fields`): binary transfer, the study's recipe."""
        return self.base_config(**defaults_mod.default_fields(self.default_settings, point))

    def default_configs(self) -> list[TrainConfig]:
        """The baseline grid (before any extension), lr-major."""
        return [self.default_config(p) for p in defaults_mod.grid_points(self.default_settings)]

    def search_config(self, params: dict[str, Any]) -> TrainConfig:
        """The config of a search trial with these Optuna params (e.g. `study.best_trial.params`)."""
        values = axes_mod.axis_values(self.search_space, params)
        return self.base_config(**axes_mod.fields_from_values(values))

    def fingerprint(self, role: str) -> str:
        """Hash of what a trial's result depends on: dataset, model, train, objective, and the
        search space ("search") or the default settings ("default").

        Host-specific locations are left out (data_dir; pretrained_file keeps only its file name),
        and so are execution fields, so workers on machines that mount data elsewhere still agree.
        """
        dataset = {k: v for k, v in self.dataset.items() if k != "data_dir"}
        model = dict(self.model)
        if model.get("pretrained_file"):
            model["pretrained_file"] = os.path.basename(model["pretrained_file"])
        train = {k: v for k, v in self.train.items() if k not in EXECUTION_FIELDS}
        blob: dict[str, Any] = {
            "dataset": dataset,
            "model": model,
            "train": train,
            "objective": dataclasses.asdict(self.objective),
        }
        if role == "search":
            blob["search_space"] = {k: dataclasses.asdict(a) for k, a in self.search_space.items()}
        else:
            blob["default_settings"] = dataclasses.asdict(self.default_settings)
        text = json.dumps(blob, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


# --- loading -------------------------------------------------------------------------------------


class _Loader(yaml.SafeLoader):
    """SafeLoader that rejects duplicate keys and reads `1e-3` as a float (YAML 1.1 wants `1.0e-3`,
    so plain PyYAML would hand the trainer the string "1e-3")."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: list = []
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark
                )
            seen.append(key)
        return super().construct_mapping(node, deep=deep)


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def load_spec(path: str | Path) -> StudySpec:
    """Read and validate a study file."""
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise SpecError(f"{source}: not a UTF-8 text file (byte {e.start}: {e.reason})") from None
    except OSError as e:
        raise SpecError(f"{source}: cannot read the study file: {e.strerror}") from None
    try:
        data = yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(e, "problem", None) or getattr(e, "context", None) or e
        raise SpecError(f"{source}: {where}invalid YAML: {problem}") from None
    return dataclasses.replace(parse_spec(data, source), path=source)


def parse_spec(data: dict, source: str = "<spec>") -> StudySpec:
    """Validate a study already read into Python objects (a YAML mapping)."""
    try:
        return _parse(data)
    except SpecError as e:
        raise SpecError(f"{source}: {e}") from None


def _parse(data: Any) -> StudySpec:
    if not isinstance(data, dict):
        raise SpecError(f"top level: must be a mapping of sections, got {describe(data)}")
    sections = [f.name for f in dataclasses.fields(StudySpec) if f.name != "path"]
    check_keys("top level", data, sections, what="section")
    name = data.get("name")
    if not isinstance(name, str) or not name.strip():
        raise SpecError(f"name: required, the Optuna study name (a non-empty string), got {name!r}")
    storage = expand(
        "storage", check_type("storage", data.get("storage", "sqlite:///nbtl.db"), str), user=False
    )
    dataset = _fields_section(data, "dataset", DATASET_KEYS)
    if "name" not in dataset:
        raise SpecError("dataset.name: required (e.g. dtd, caltech256_30, imagefolder)")
    model = _fields_section(data, "model", MODEL_KEYS)
    owned = {
        **{v: f"dataset.{k}" for k, v in DATASET_KEYS.items()},
        **{v: f"model.{k}" for k, v in MODEL_KEYS.items()},
    }
    known = [f for f in FIELD_HINTS if f not in owned]
    train = _fields_section(data, "train", {f: f for f in known}, owned)
    search_space = axes_mod.parse_search_space(data.get("search_space"), train)
    sampler, pruner, objective, budget, final, probe = (
        parse_knobs(data, section)
        for section in ("sampler", "pruner", "objective", "budget", "final", "probe")
    )
    if sampler.type == "grid":
        axes_mod.grid_space(search_space)  # raises on a continuous axis
    settings = defaults_mod.parse_default_settings(data.get("default_settings"), train)
    spec = StudySpec(
        name=name,
        storage=storage,
        dataset=dataset,
        model=model,
        train=train,
        search_space=search_space,
        sampler=sampler,
        pruner=pruner,
        objective=objective,
        budget=budget,
        default_settings=settings,
        final=final,
        probe=probe,
    )
    try:
        base = spec.base_config()
    except InputError as e:
        raise SpecError(f"{_config_path(spec, str(e))}: {e}") from None
    if pruner.type == "hyperband" and pruner.min_resource > base.epochs:
        raise SpecError(
            f"pruner.min_resource: must be <= the training epochs ({base.epochs}), "
            f"got {pruner.min_resource}"
        )
    defaults_mod.check_default_configs(settings, spec.base_fields())
    axes_mod.check_configs(search_space, spec.base_fields())
    _check_augment_strings(spec)
    return spec


def _fields_section(
    data: dict, name: str, keys: dict[str, str], elsewhere: dict[str, str] | None = None
) -> dict[str, Any]:
    """A section whose keys map to TrainConfig fields: known keys, right types, expanded paths."""
    raw = mapping(name, data.get(name))
    for key in set(raw) & set(elsewhere or {}):
        raise SpecError(
            f"{name}.{key}: set it in the dataset or model section, as {elsewhere[key]}"
        )
    check_keys(name, raw, keys)
    out = {}
    for key, value in raw.items():
        path, fname = f"{name}.{key}", keys[key]
        value = check_type(path, value, FIELD_HINTS[fname])
        out[key] = expand(path, value) if fname in PATH_FIELDS and value is not None else value
    return out


def _config_path(spec: StudySpec, message: str) -> str:
    """The section key that a TrainConfig error names (its messages start with the field name)."""
    paths = {
        **{DATASET_KEYS[k]: f"dataset.{k}" for k in spec.dataset},
        **{MODEL_KEYS[k]: f"model.{k}" for k in spec.model},
        **{k: f"train.{k}" for k in spec.train},
    }
    return next((p for f, p in paths.items() if re.search(rf"\b{f}\b", message)), "train")


def _check_augment_strings(spec: StudySpec) -> None:
    """timm parses auto-augment strings only when a run builds its transform: build each distinct
    one once now, so `aa: bogus` fails at load time instead of failing every trial."""
    found: dict[str, str] = {}
    if spec.train.get("aa"):
        found[spec.train["aa"]] = "train.aa"
    axis = spec.search_space.get("aa")
    for sub, value in axis.extremes() if axis else []:
        if value:
            found.setdefault(value, f"search_space.aa{sub}")
    for i, value in enumerate(spec.default_settings.grid.get("aa", ())):
        if value:
            found.setdefault(value, f"default_settings.aa[{i}]")
    if spec.default_settings.fixed.get("aa"):
        found.setdefault(spec.default_settings.fixed["aa"], "default_settings.aa")
    if not found:
        return
    from trainer.data import build_transform  # imports torch and timm: only when there is a string

    data_config = {"input_size": (3, 32, 32), "mean": (0.5,) * 3, "std": (0.5,) * 3}
    for value, path in found.items():
        try:
            build_transform(spec.base_config(aa=value), data_config, training=True)
        except InputError as e:
            raise SpecError(f"{path}: {e}") from None
