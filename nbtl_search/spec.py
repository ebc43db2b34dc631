"""Study files -> a validated, immutable `StudySpec`.

Everything is checked here, at load time, before any worker starts. A bad file raises `SpecError`
whose message starts with the file and the field path, e.g.
``studies/x.yaml: search_space.lr_new.low: must be > 0 with log: true, got 0``.

Training defaults live only in `trainer.config.TrainConfig`: a training field the file leaves out falls
through to it. Study knobs (sampler, pruner, objective, budget, ...) have their defaults here, in the
dataclasses below. Paths (`data_dir`, `pretrained_file`, `output`, `resume`) expand `~` and `$VARS`;
`storage` expands `$VARS` (keep passwords out of study files). An unset variable is an error.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import re
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from trainer.config import InputError, TrainConfig

if typing.TYPE_CHECKING:
    from nbtl_search.samplers import BudgetSpec, FinalSpec, ObjectiveSpec, PrunerSpec, SamplerSpec


class SpecError(ValueError):
    """A study file that cannot run; the message starts with the file and the field path."""


# Section key -> TrainConfig field, for the two sections that describe what is trained.
DATASET_KEYS = {"name": "dataset", "data_dir": "data_dir", "img_size": "img_size",
                "num_classes": "num_classes", "extra": "extra"}
MODEL_KEYS = {"name": "model", "pretrained": "pretrained", "pretrained_file": "pretrained_file"}
# Where and how a run executes, not what it learns: workers may override them, the fingerprint skips them.
EXECUTION_FIELDS = ("device", "workers", "output", "resume", "checkpoint")
PATH_FIELDS = ("data_dir", "pretrained_file", "output", "resume")
DEFAULT_LRS = (0.001, 0.003, 0.01, 0.03)  # baseline grid when default_settings gives no lr


@dataclass(frozen=True)
class StudySpec:
    name: str
    storage: str
    dataset: dict[str, Any]  # the dataset section as written (paths expanded)
    model: dict[str, Any]
    train: dict[str, Any]  # fixed TrainConfig fields
    search_space: dict[str, Any]  # axis name -> nbtl_search.space.Axis
    sampler: SamplerSpec
    pruner: PrunerSpec
    objective: ObjectiveSpec
    budget: BudgetSpec
    default_settings: dict[str, list]  # "lr" and "weight_decay" lists
    final: FinalSpec
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

    def default_config(self, lr: float, weight_decay: float) -> TrainConfig:
        """One baseline point: the default settings, i.e. TrainConfig's own defaults for the transfer
        and augmentation knobs (new_layers, per-part split, L2-SP, mixup, cutmix, aa, reprob), one lr."""
        defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
        reset = {k: defaults[k] for k in ("new_layers", "num_low", "l2sp_rates", "aa", "mixup",
                                          "cutmix", "reprob")}
        return self.base_config(**reset, lrs=(lr,), weight_decay=weight_decay)

    def default_configs(self) -> list[TrainConfig]:
        """The baseline grid, lr-major: default_settings.lr x default_settings.weight_decay."""
        return [self.default_config(lr, wd) for lr in self.default_settings["lr"]
                for wd in self.default_settings["weight_decay"]]

    def space_fingerprint(self) -> str:
        """Hash of what a trial's result depends on: search space, dataset, model, train, objective.

        Host-specific locations are left out (data_dir; pretrained_file keeps only its file name),
        and so are execution fields, so workers on machines that mount data elsewhere still agree.
        """
        dataset = {k: v for k, v in self.dataset.items() if k != "data_dir"}
        model = dict(self.model)
        if model.get("pretrained_file"):
            model["pretrained_file"] = os.path.basename(model["pretrained_file"])
        train = {k: v for k, v in self.train.items() if k not in EXECUTION_FIELDS}
        blob = {"dataset": dataset, "model": model, "train": train,
                "search_space": {k: dataclasses.asdict(a) for k, a in self.search_space.items()},
                "objective": dataclasses.asdict(self.objective)}
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
                raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}",
                                                        key_node.start_mark)
            seen.append(key)
        return super().construct_mapping(node, deep=deep)


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"))


def load_spec(path: str | Path) -> StudySpec:
    """Read and validate a study file."""
    source = str(path)
    try:
        text = Path(path).read_text()
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
    from nbtl_search import samplers, space  # both build on this module: import late, no cycle

    if not isinstance(data, dict):
        raise SpecError(f"top level: must be a mapping of sections, got {describe(data)}")
    sections = [f.name for f in dataclasses.fields(StudySpec) if f.name != "path"]
    check_keys("top level", data, sections, what="section")
    name = data.get("name")
    if not isinstance(name, str) or not name.strip():
        raise SpecError(f"name: required, the Optuna study name (a non-empty string), got {describe(name)}")
    storage = _expand("storage", check_type("storage", data.get("storage", "sqlite:///nbtl.db"), str),
                      user=False)
    dataset = _fields_section(data, "dataset", DATASET_KEYS)
    if "name" not in dataset:
        raise SpecError("dataset.name: required (e.g. dtd, caltech256_30, imagefolder)")
    model = _fields_section(data, "model", MODEL_KEYS)
    owned = {**{v: f"dataset.{k}" for k, v in DATASET_KEYS.items()},
             **{v: f"model.{k}" for k, v in MODEL_KEYS.items()}}
    known = [f for f in FIELD_HINTS if f not in owned]
    train = _fields_section(data, "train", {f: f for f in known}, owned)
    search_space = space.parse_search_space(data.get("search_space"), train)
    sampler, pruner, objective, budget, final = (samplers.parse_knobs(data, name) for name in (
        "sampler", "pruner", "objective", "budget", "final"))
    if sampler.type == "grid":
        space.grid_space(search_space)  # raises on a continuous axis
    spec = StudySpec(name=name, storage=storage, dataset=dataset, model=model, train=train,
                     search_space=search_space, sampler=sampler, pruner=pruner, objective=objective,
                     budget=budget, default_settings={}, final=final)
    try:
        base = spec.base_config()
    except InputError as e:
        raise SpecError(f"{_config_path(spec, str(e))}: {e}") from None
    if pruner.type == "hyperband" and pruner.min_resource > base.epochs:
        raise SpecError(f"pruner.min_resource: must be <= the training epochs ({base.epochs}), "
                        f"got {pruner.min_resource}")
    spec = dataclasses.replace(spec, default_settings=_default_settings(data, base))
    try:
        spec.default_configs()
    except InputError as e:
        raise SpecError(f"default_settings: {e}") from None
    space.check_configs(spec)
    return spec


def _fields_section(data: dict, name: str, keys: dict[str, str],
                    elsewhere: dict[str, str] | None = None) -> dict[str, Any]:
    """A section whose keys map to TrainConfig fields: known keys, right types, expanded paths."""
    raw = mapping(name, data.get(name))
    for key in set(raw) & set(elsewhere or {}):
        raise SpecError(f"{name}.{key}: set it in the dataset or model section, as {elsewhere[key]}")
    check_keys(name, raw, keys)
    out = {}
    for key, value in raw.items():
        path, fname = f"{name}.{key}", keys[key]
        value = check_type(path, value, FIELD_HINTS[fname])
        out[key] = _expand(path, value) if fname in PATH_FIELDS and value is not None else value
    return out


def _default_settings(data: dict, base: TrainConfig) -> dict[str, list]:
    raw = mapping("default_settings", data.get("default_settings"))
    check_keys("default_settings", raw, ("lr", "weight_decay"))
    out = {}
    for key, fallback in (("lr", DEFAULT_LRS), ("weight_decay", (base.weight_decay,))):
        values = raw.get(key, list(fallback))
        values = values if isinstance(values, list) else [values]
        if not values:
            raise SpecError(f"default_settings.{key}: must list at least one value")
        out[key] = [check_type(f"default_settings.{key}[{i}]", v, float) for i, v in enumerate(values)]
    return out


def _config_path(spec: StudySpec, message: str) -> str:
    """The section key that a TrainConfig error names (its messages start with the field name)."""
    paths = {**{DATASET_KEYS[k]: f"dataset.{k}" for k in spec.dataset},
             **{MODEL_KEYS[k]: f"model.{k}" for k in spec.model}, **{k: f"train.{k}" for k in spec.train}}
    return next((p for f, p in paths.items() if re.search(rf"\b{f}\b", message)), "train")


# --- small checks shared with nbtl_search.space --------------------------------------------------

FIELD_HINTS = typing.get_type_hints(TrainConfig)
_WANT = {float: "a number", int: "an integer", bool: "true or false", str: "a string"}


def describe(value: Any) -> str:
    return "nothing" if value is None else f"{type(value).__name__} {value!r}"


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def check_type(path: str, value: Any, hint: Any) -> Any:
    """`value` as `hint` wants it (an int is fine where a float is wanted; a bool is not an int)."""
    args = typing.get_args(hint)
    optional = type(None) in args
    if optional:
        if value is None:
            return None
        hint = next(a for a in args if a is not type(None))
    origin = typing.get_origin(hint)
    if hint is float and is_number(value):
        return float(value)
    if hint is int and is_number(value) and isinstance(value, int):
        return value
    if (hint is bool and isinstance(value, bool)) or (hint is str and isinstance(value, str)):
        return value
    if origin is tuple:
        items = value if isinstance(value, (list, tuple)) else [value]
        if items and all(is_number(v) for v in items):
            return tuple(float(v) for v in items)
    if origin is dict and isinstance(value, dict):
        return dict(value)
    want = _WANT.get(hint, "a list of numbers" if origin is tuple else "a mapping")
    raise SpecError(f"{path}: must be {want}{' or null' if optional else ''}, got {describe(value)}")


def check_keys(path: str, raw: dict, known: typing.Iterable[str], what: str = "key") -> None:
    known = list(known)
    for key in raw:
        if key not in known:
            where = f"{path}.{key}" if path != "top level" else str(key)
            raise SpecError(f"{where}: unknown {what}; known: {', '.join(known) or '(none)'}")


def mapping(path: str, raw: Any) -> dict:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise SpecError(f"{path}: must be a mapping, got {describe(raw)}")
    return raw


def _expand(path: str, value: str, user: bool = True) -> str:
    out = os.path.expandvars(os.path.expanduser(value) if user else value)
    unset = re.search(r"\$\{?(\w+)", out)
    if unset:
        raise SpecError(f"{path}: environment variable ${unset.group(1)} is not set (in {value!r})")
    return out
