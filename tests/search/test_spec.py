"""Study files -> StudySpec: every bad input names its field path; good files load as written."""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import pytest

from nbtl_search.study.checks import SpecError
from nbtl_search.study.sections import BudgetSpec, PrunerSpec, SamplerSpec
from nbtl_search.study.spec import load_spec, parse_spec
from trainer.config import TrainConfig

STUDIES = Path(__file__).resolve().parents[2] / "studies"

BASE = {
    "name": "t",
    "dataset": {"name": "imagefolder", "data_dir": "/data/x", "img_size": 64},
    "model": {"name": "resnet18"},
    "train": {"epochs": 9, "batch_size": 16},
    "search_space": {
        "new_layers": {"type": "int", "low": 1, "high": 4},
        "lr": {"type": "float", "low": 1.0e-3, "high": 0.1, "log": True},
        "mixup": {"type": "float", "low": 0.0, "high": 0.4},
        "aa": {"type": "categorical", "choices": [None, "rand-m9-mstd0.5-inc1"]},
    },
}


def study(**sections) -> dict:
    data = copy.deepcopy(BASE)
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key].update(value)
        else:
            data[key] = value
    return data


def error(data, source="studies/x.yaml") -> str:
    with pytest.raises(SpecError) as info:
        parse_spec(data, source)
    return str(info.value)


PER_PART = {
    "lr_new": {"type": "float", "low": 0.01, "high": 0.1},
    "lr_upper": {"type": "float", "low": 0.001, "high": 0.01},
}

BAD = [
    ([1, 2], "top level: must be a mapping"),
    (study(samplr={"type": "tpe"}), "samplr: unknown section; known: name, storage, dataset"),
    ({k: v for k, v in BASE.items() if k != "name"}, "name: required"),
    (study(dataset={"name": None}), "dataset.name: must be a string"),
    ({**BASE, "dataset": {"data_dir": "/x"}}, "dataset.name: required"),
    (study(dataset={"root": "/x"}), "dataset.root: unknown key; known: name, data_dir, img_size"),
    (study(model={"weights": "x"}), "model.weights: unknown key; known: name, pretrained"),
    (study(train={"lr": 0.1}), "train.lr: unknown key; known:"),
    (
        study(train={"img_size": 32}),
        "train.img_size: set it in the dataset or model section, as dataset.img_size",
    ),
    (
        study(train={"mean": [0.5, 0.5, 0.5]}),
        "train.mean: set it in the dataset or model section, as dataset.mean",
    ),
    (study(dataset={"std": [0.2, 0.0, 0.2]}), "dataset.std: std must be > 0"),
    (
        study(
            search_space={"train_interpolation": {"type": "categorical", "choices": ["nearest"]}}
        ),
        "search_space.train_interpolation.choices[0]: train_interpolation must be one of random",
    ),
    (study(sampler={"type": "tpe", "seeds": 1}), "sampler.seeds: unknown key; known: type, seed"),
    (
        study(pruner={"type": "median", "min_resource": 2}),
        "pruner.min_resource: unknown key for type median",
    ),
    (study(search_space={"foo": 1}), "search_space.foo: unknown axis; known: lr, l2sp, lr_new"),
    (
        study(search_space={"seed": {"type": "int", "low": 0, "high": 3}}),
        "search_space.seed: cannot be searched",
    ),
    (
        study(search_space={"img_size": 32}),
        "search_space.img_size: cannot be searched: set it in the dataset",
    ),
    (study(search_space={"epochs": 5}), "search_space.epochs: cannot be searched"),
    # types: bool is not an int, a string is not a number
    (study(train={"epochs": True}), "train.epochs: must be an integer, got bool True"),
    (study(train={"epochs": "30"}), "train.epochs: must be an integer, got str '30'"),
    (study(train={"epochs": 30.0}), "train.epochs: must be an integer, got float 30.0"),
    (
        study(search_space={"mixup": {"type": "float", "low": "0", "high": 1}}),
        "search_space.mixup.low: must be a number",
    ),
    (
        study(search_space={"aa": {"type": "float", "low": 0, "high": 1}}),
        "search_space.aa.type: float does not fit",
    ),
    (
        study(search_space={"new_layers": {"type": "float", "low": 1, "high": 3}}),
        "search_space.new_layers.type: float does not fit this axis (int); use type: int or categorical",
    ),
    (
        study(search_space={"mixup": {"type": ["float"], "low": 0, "high": 1}}),
        "search_space.mixup.type: must be float, int or categorical",
    ),
    (
        study(search_space={"mixup": {"type": "float", "low": 0}}),
        "search_space.mixup.high: required",
    ),
    (
        study(search_space={"mixup": {"type": "float", "low": 0, "high": 1, "q": 2}}),
        "search_space.mixup.q: unknown key",
    ),
    # impossible ranges
    (
        study(search_space={"mixup": {"type": "float", "low": 0.4, "high": 0.1}}),
        "search_space.mixup.low: must be <= high (0.1), got 0.4",
    ),
    (
        study(search_space={"lr": {"type": "float", "low": 0, "high": 0.1, "log": True}}),
        "search_space.lr.low: must be > 0 with log: true, got 0",
    ),
    (
        study(search_space={"new_layers": {"type": "int", "low": 1, "high": 4, "step": 0}}),
        "search_space.new_layers.step: must be > 0, got 0",
    ),
    (
        study(
            search_space={
                "lr": {"type": "float", "low": 0.01, "high": 0.1, "log": True, "step": 0.01}
            }
        ),
        "search_space.lr.step: cannot be combined with log",
    ),
    (
        study(search_space={"aa": {"type": "categorical", "choices": []}}),
        "search_space.aa.choices: must be a non-empty list",
    ),
    (
        study(search_space={"weight_decay": {"type": "categorical", "choices": [[0.1], [0.2]]}}),
        "search_space.weight_decay.choices[0]: must be a scalar",
    ),
    (
        study(search_space={"weight_decay": {"type": "categorical", "choices": [0.0, "x"]}}),
        "search_space.weight_decay.choices[1]: must be a number",
    ),
    # per-part rules
    (study(search_space={"lr": None}), "search_space.lr: must be a number, got nothing"),
    (
        {**BASE, "search_space": {**PER_PART}},
        "search_space.lr_lower: required with lr_new, lr_upper",
    ),
    (
        study(search_space={**PER_PART, "lr_lower": 0.001}),
        "search_space.lr: not together with lr_new",
    ),
    (
        study(search_space={"l2sp": 0.1, "l2sp_upper": 0.1}),
        "search_space.l2sp: not together with l2sp_upper",
    ),
    (study(train={"mixup": 0.1}), "search_space.mixup: mixup is also fixed in train.mixup"),
    (study(train={"lrs": [0.1]}), "search_space.lr: lrs is also fixed in train.lrs"),
    # study knobs
    (study(budget={"n_trials": 0}), "budget.n_trials: must be >= 1, got 0"),
    (study(budget={"timeout": -5}), "budget.timeout: must be >= 1"),
    (
        study(sampler={"type": "bayes"}),
        "sampler.type: must be one of tpe, random, gp, cmaes, grid, got 'bayes'",
    ),
    (study(pruner={"type": "asha"}), "pruner.type: must be one of hyperband, median, none"),
    (
        study(objective={"metric": "val_loss"}),
        "objective.metric: must be one of val_top1, val_top5",
    ),
    (study(objective={"mode": "mean"}), "objective.mode: must be one of best, last"),
    (
        study(pruner={"min_resource": 10}),
        "pruner.min_resource: must be <= the training epochs (9), got 10",
    ),
    (study(final={"seeds": 0}), "final.seeds: must be >= 1"),
    (study(sampler={"type": "grid"}), "search_space.lr: the grid sampler needs discrete axes"),
    (study(default_settings={"lr": []}), "default_settings.lr: must list at least one value"),
    (study(default_settings={"lr": [0.1, 0]}), "default_settings.lr: must be > 0"),
    (study(default_settings={"lr": [0.1, 0.1]}), "default_settings.lr: lists a value twice"),
    (
        study(default_settings={"momentum_x": [0.9]}),
        "default_settings.momentum_x: not a TrainConfig field",
    ),
    (
        study(default_settings={"num_low": 2}),
        "default_settings.num_low: the default settings are binary",
    ),
    (
        study(default_settings={"device": "cuda"}),
        "default_settings.device: device is not a training",
    ),
    (study(default_settings={"extend": -1}), "default_settings.extend: must be >= 0"),
    (study(default_settings={"mixup": -0.5}), "default_settings: mixup must be >= 0"),
    (
        study(default_settings={"aa": "bogus-string"}),
        "default_settings.aa: aa 'bogus-string' is not",
    ),
    (
        study(search_space={"aa": {"type": "categorical", "choices": [None, "rand-mX"]}}),
        "search_space.aa.choices[1]: aa 'rand-mX' is not a valid timm auto-augment string",
    ),
    (
        {**BASE, "train": {"aa": "bogus-string"}, "search_space": {"lr": 0.1}},
        "train.aa: aa 'bogus-string'",
    ),
    (study(storage=""), "storage: must not be empty"),
    (study(train={"remode": ""}), "train.remode: must not be empty"),
    (
        study(search_space={"l2sp": 0.1, "l2_new": 0.1}),
        "search_space.l2_new: not together with l2sp",
    ),
    (study(final={"rerank_top_k": -1}), "final.rerank_top_k: must be >= 0"),
    (study(train={"epochs": float("nan")}), "train.epochs: must be an integer"),
    (study(train={"momentum": float("inf")}), "train.momentum: must be a number, got float inf"),
    # every fixed value and range end must make a valid TrainConfig
    (study(train={"batch_size": 0}), "train.batch_size: batch_size must be >= 1, got 0"),
    (study(train={"sched": "linear"}), "train.sched: sched must be one of step, cosine, none"),
    (
        study(model={"pretrained": True, "pretrained_file": "/w.pth"}),
        "model.pretrained: give either pretrained",
    ),
    (study(search_space={"reprob": -0.1}), "search_space.reprob: reprob must be in [0, 1]"),
    (
        study(search_space={"reprob": {"type": "float", "low": 0.0, "high": 1.5}}),
        "search_space.reprob.high: reprob must be in [0, 1]",
    ),
    (
        study(search_space={"sched": {"type": "categorical", "choices": ["step", "linear"]}}),
        "search_space.sched.choices[1]: sched must be one of",
    ),
    (
        study(search_space={"lr": {"type": "float", "low": -1, "high": 0.1}}),
        "search_space.lr.low: lrs must be > 0",
    ),
    (
        study(dataset={"data_dir": "$NBTL_TEST_UNSET_VAR/x"}),
        "dataset.data_dir: environment variable $NBTL_TEST_UNSET_VAR is not set",
    ),
]


@pytest.mark.parametrize(
    "data, message", BAD, ids=[f"{i}-{m.split(':')[0]}" for i, (_, m) in enumerate(BAD)]
)
def test_bad_study_names_file_and_field(data, message):
    text = error(data)
    assert text.startswith("studies/x.yaml: "), text
    assert message in text, text


def test_malformed_yaml_gives_line_number(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("name: t\ndataset: {name: dtd\nmodel: x\n")
    with pytest.raises(SpecError, match=rf"^{path}: line 3, column \d+: invalid YAML"):
        load_spec(path)


def test_duplicate_key_is_an_error_with_line(tmp_path):
    path = tmp_path / "dup.yaml"
    path.write_text("name: t\ndataset: {name: dtd}\nsearch_space:\n  mixup: 0.1\n  mixup: 0.2\n")
    with pytest.raises(SpecError, match="line 5, column 3: invalid YAML: duplicate key 'mixup'"):
        load_spec(path)


def test_a_study_file_that_is_not_utf8_names_the_file(tmp_path):
    path = tmp_path / "latin1.yaml"
    path.write_bytes("name: caf\xe9\n".encode("latin-1"))
    with pytest.raises(SpecError, match=rf"^{path}: not a UTF-8 text file"):
        load_spec(path)


def test_missing_file_and_empty_file(tmp_path):
    with pytest.raises(SpecError, match="cannot read the study file"):
        load_spec(tmp_path / "nope.yaml")
    (tmp_path / "empty.yaml").write_text("")
    with pytest.raises(
        SpecError, match="empty.yaml: top level: must be a mapping of sections, got nothing"
    ):
        load_spec(tmp_path / "empty.yaml")


@pytest.mark.parametrize("path", sorted(STUDIES.glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_studies_load(path):
    spec = load_spec(path)
    assert spec.path == str(path) and spec.name
    assert spec.default_configs()
    if spec.model.get("name") == "inception_v4":  # 23 layers: the parts must fit
        space = spec.search_space
        assert space["new_layers"].high + space["num_low"].high <= 23
        assert spec.dataset["data_dir"].startswith(str(Path.home()))  # ~ expanded


def test_normalisation_and_the_paper_switches_are_study_keys():
    spec = parse_spec(
        study(
            dataset={"mean": [0.53, 0.47, 0.43], "std": 0.27},
            train={"lr_new_classifier_only": True, "wd_bn": True, "color_jitter": 0.4},
            search_space={
                "train_interpolation": {"type": "categorical", "choices": [None, "random"]}
            },
        )
    )
    cfg = spec.base_config()
    assert (cfg.mean, cfg.std) == ((0.53, 0.47, 0.43), (0.27,))
    assert (cfg.lr_new_classifier_only, cfg.wd_bn, cfg.color_jitter) == (True, True, 0.4)
    assert spec.search_space["train_interpolation"].choices == (None, "random")


def test_yaml_numbers_and_paths(tmp_path, monkeypatch):
    monkeypatch.setenv("NBTL_TEST_DATA", "/mnt/data")
    path = tmp_path / "s.yaml"
    path.write_text(
        "name: t\ndataset: {name: dtd, data_dir: $NBTL_TEST_DATA/dtd}\n"
        "model: {pretrained_file: ~/w.pth}\ntrain: {decay_epochs: 10}\n"
        "search_space: {lr: {type: float, low: 1e-4, high: 1e-1, log: true}}\n"
    )
    spec = load_spec(path)
    assert spec.search_space["lr"].low == 1e-4  # not the string "1e-4" (YAML 1.1 needs "1.0e-4")
    assert spec.dataset["data_dir"] == "/mnt/data/dtd"
    assert spec.model["pretrained_file"] == str(Path.home() / "w.pth")
    assert spec.train["decay_epochs"] == 10.0 and isinstance(spec.train["decay_epochs"], float)


def test_defaults_and_base_config():
    spec = parse_spec(BASE)
    assert spec.storage == "sqlite:///nbtl.db"
    assert (
        spec.sampler == SamplerSpec()
        and spec.pruner == PrunerSpec()
        and spec.budget == BudgetSpec()
    )
    cfg = spec.base_config()
    assert (cfg.dataset, cfg.data_dir, cfg.img_size, cfg.model) == (
        "imagefolder",
        "/data/x",
        64,
        "resnet18",
    )
    assert (cfg.epochs, cfg.batch_size) == (9, 16)
    defaults = TrainConfig()
    assert (
        cfg.momentum == defaults.momentum and cfg.lrs == defaults.lrs
    )  # not restated: fall through
    assert cfg.mixup == defaults.mixup  # search values are not in the base config
    assert spec.base_config(device="cuda:1").device == "cuda:1"


def test_default_configs_grid():
    data = study(
        train={"smoothing": 0.1, "mixup": 0.2, "aa": "rand-m9-mstd0.5-inc1"},
        default_settings={"lr": [0.01, 0.1], "weight_decay": [0.0, 1e-4, 1e-3], "reprob": 0.25},
    )
    data["search_space"] = {
        "new_layers": 3,
        "l2sp": 0.1,
        "reprob": {"type": "float", "low": 0.0, "high": 0.5},
    }
    spec = parse_spec(data)
    configs = spec.default_configs()
    assert len(configs) == 6
    assert [(c.lrs, c.weight_decay) for c in configs[:3]] == [
        ((0.01,), 0.0),
        ((0.01,), 1e-4),
        ((0.01,), 1e-3),
    ]
    defaults = TrainConfig()
    for c in configs:
        # binary transfer (the search's fixed new_layers 3 and L2-SP are not the default's) ...
        assert (c.new_layers, c.l2sp_rates, c.l2_rates) == (
            1,
            defaults.l2sp_rates,
            defaults.l2_rates,
        )
        # ... with the study's whole recipe, augmentation included ...
        assert (c.aa, c.mixup, c.smoothing, c.epochs) == ("rand-m9-mstd0.5-inc1", 0.2, 0.1, 9)
        assert c.reprob == 0.25  # ... and a searched axis at its default_settings value
    without_wd = parse_spec(study(train={"weight_decay": 5e-4}, default_settings={"lr": [0.01]}))
    assert [c.weight_decay for c in without_wd.default_configs()] == [5e-4]
    assert without_wd.default_settings.grid == {"lr": (0.01,)}


def test_fingerprint_stable_and_sensitive():
    spec = parse_spec(BASE)
    fp = spec.fingerprint("search")
    assert fp == parse_spec(copy.deepcopy(BASE)).fingerprint("search")
    # what a trial's result does not depend on: budget, sampler, storage, data location, device
    same = study(
        budget={"n_trials": 7},
        sampler={"type": "random"},
        storage="sqlite:///other.db",
        dataset={"data_dir": "/elsewhere"},
        train={"device": "cuda"},
    )
    assert parse_spec(same).fingerprint("search") == fp
    for changed in (
        study(search_space={"mixup": {"type": "float", "low": 0.0, "high": 0.5}}),
        study(search_space={"reprob": 0.2}),
        study(objective={"mode": "last"}),
        study(train={"epochs": 10}),
        study(dataset={"img_size": 96}),
        study(model={"name": "resnet34"}),
    ):
        assert parse_spec(changed).fingerprint("search") != fp
    # the baseline's results depend on its own settings, not on the search space
    base = spec.fingerprint("default")
    assert parse_spec(study(train={"reprob": 0.2})).fingerprint("default") != base  # its recipe
    assert parse_spec(study(default_settings={"lr": [0.1]})).fingerprint("default") != base
    assert parse_spec(study(default_settings={"lr": [0.1]})).fingerprint("search") == fp


def test_spec_is_immutable():
    spec = parse_spec(BASE)
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.name = "other"  # type: ignore[misc]
