"""Search space -> Optuna parameters -> TrainConfig, the samplers and pruners a study builds, and
the default settings' grid with its extension past the edge."""

from __future__ import annotations

import copy
import importlib.util

import optuna
import pytest
from optuna.trial import FixedTrial

from nbtl_search.study import default_settings as defaults
from nbtl_search.study.axes import fields_from_values, values_from_fields
from nbtl_search.study.checks import SpecError
from nbtl_search.study.sampling import (
    build_pruner,
    build_sampler,
    config_from_params,
    distributions,
    fixed_space,
    suggest_config,
)
from nbtl_search.study.spec import parse_spec

optuna.logging.set_verbosity(optuna.logging.WARNING)

SPACE = {
    "new_layers": {"type": "int", "low": 1, "high": 6},
    "num_low": {"type": "int", "low": 0, "high": 12, "step": 2},
    "lr_new": {"type": "float", "low": 1.0e-3, "high": 0.3, "log": True},
    "lr_upper": {"type": "float", "low": 1.0e-4, "high": 0.1, "log": True},
    "lr_lower": 0.001,
    "l2sp_upper": {"type": "float", "low": 1.0e-4, "high": 1.0, "log": True, "allow_zero": True},
    "l2sp_lower": 0.01,
    "weight_decay": {"type": "categorical", "choices": [0.0, 1.0e-4]},
    "mixup": {"type": "float", "low": 0.0, "high": 0.4, "step": 0.1},
    "aa": {"type": "categorical", "choices": [None, "rand-m9-mstd0.5-inc1"]},
    "smoothing": 0.1,
}
STUDY = {
    "name": "t",
    "dataset": {"name": "digits", "img_size": 32},
    "model": {"name": "test_resnet"},
    "train": {"epochs": 12},
    "search_space": SPACE,
}


def spec_with(space=None, **sections):
    data = copy.deepcopy(STUDY)
    if space is not None:
        data["search_space"] = space
    data.update(sections)
    return parse_spec(data)


PARAMS = {
    "new_layers": 3,
    "num_low": 4,
    "lr_new": 0.1,
    "lr_upper": 0.01,
    "l2sp_upper_on": True,
    "l2sp_upper": 0.5,
    "weight_decay": 1.0e-4,
    "mixup": 0.2,
    "aa": "rand-m9-mstd0.5-inc1",
}


def test_fixed_trial_maps_every_axis_kind():
    spec = spec_with()
    cfg = suggest_config(FixedTrial(PARAMS), spec)
    assert (cfg.new_layers, cfg.num_low, cfg.weight_decay, cfg.mixup, cfg.aa) == (
        3,
        4,
        1.0e-4,
        0.2,
        "rand-m9-mstd0.5-inc1",
    )
    assert cfg.lrs == (0.1, 0.01, 0.001)  # [new, upper, lower]; lr_lower fixed
    assert cfg.l2sp_rates == (0.0, 0.5, 0.01)  # l2_new missing -> 0; l2sp_lower fixed
    assert cfg.smoothing == 0.1 and cfg.epochs == 12 and cfg.model == "test_resnet"


def test_allow_zero_off_gives_exactly_zero():
    spec = spec_with()
    cfg = suggest_config(FixedTrial({**PARAMS, "l2sp_upper_on": False}), spec)
    assert cfg.l2sp_rates == (0.0, 0.0, 0.01)
    assert set(distributions(spec)) == {
        *PARAMS
    }  # both halves of the allow_zero axis, no fixed axes


def test_single_lr_and_l2sp_fill_every_part():
    space = {
        "lr": {"type": "float", "low": 0.01, "high": 0.1, "log": True},
        "l2sp": {"type": "float", "low": 1e-3, "high": 1.0, "log": True, "allow_zero": True},
    }
    cfg = suggest_config(FixedTrial({"lr": 0.05, "l2sp_on": True, "l2sp": 0.2}), spec_with(space))
    assert cfg.lrs == (0.05,) and cfg.part_lrs() == (0.05, 0.05, 0.05)
    assert cfg.l2sp_rates == (0.2,)
    per_part = {"l2_new": 1e-3, "l2sp_lower": {"type": "categorical", "choices": [0.0, 0.1]}}
    cfg = suggest_config(FixedTrial({"l2sp_lower": 0.1}), spec_with(per_part))
    assert cfg.l2sp_rates == (0.0, 0.0, 0.1)  # l2sp_upper missing -> 0
    assert cfg.l2_rates == (1e-3, 0.0, 0.0)  # L2 towards zero on the new layers


def test_the_papers_combination_l2sp_below_and_l2_above():
    space = {
        "l2sp_lower": {"type": "float", "low": 1e-3, "high": 1.0, "log": True},
        "l2_upper": {"type": "float", "low": 1e-4, "high": 0.1, "log": True},
        "l2_new": 0.01,
    }
    cfg = suggest_config(FixedTrial({"l2sp_lower": 0.3, "l2_upper": 0.002}), spec_with(space))
    assert cfg.part_l2sp() == (0.0, 0.0, 0.3) and cfg.part_l2() == (0.01, 0.002, 0.0)


def test_asked_trials_stay_in_range_and_round_trip():
    spec = spec_with()
    sampler = optuna.samplers.RandomSampler(seed=3)
    study = optuna.create_study(storage=None, direction="maximize", sampler=sampler)
    l2sp_upper = []
    for i in range(40):
        trial = study.ask()
        cfg = suggest_config(trial, spec)
        study.tell(trial, float(i % 7))
        new, upper, lower = cfg.lrs
        assert 1 <= cfg.new_layers <= 6 and cfg.num_low in range(0, 13, 2)
        assert 1e-3 <= new <= 0.3 and 1e-4 <= upper <= 0.1 and lower == 0.001
        assert cfg.mixup in (0.0, 0.1, 0.2, 0.3, 0.4) and cfg.weight_decay in (0.0, 1e-4)
        r = cfg.l2sp_rates[1]
        assert r == 0.0 or 1e-4 <= r <= 1.0
        l2sp_upper.append(r)
        assert config_from_params(spec, trial.params) == cfg  # a stored trial rebuilds its config
    assert 0.0 in l2sp_upper and any(r > 0 for r in l2sp_upper)  # both branches of allow_zero
    best = study.best_trial
    assert config_from_params(spec, best.params) == suggest_config(FixedTrial(best.params), spec)


def test_best_params_as_fixed_space_rerun_the_same_config():
    spec = spec_with()
    for params in (PARAMS, {**PARAMS, "l2sp_upper_on": False}):
        fixed = fixed_space(spec, params)
        assert fixed["l2sp_upper"] == (0.5 if params["l2sp_upper_on"] else 0.0)
        assert "l2sp_upper_on" not in fixed and fixed["lr_lower"] == 0.001
        rerun = spec_with(fixed)
        assert distributions(rerun) == {}
        assert config_from_params(rerun, {}) == config_from_params(spec, params)


def test_params_that_do_not_match_the_space_are_refused():
    spec = spec_with()
    with pytest.raises(SpecError, match="missing: l2sp_upper_on"):
        config_from_params(spec, {k: v for k, v in PARAMS.items() if k != "l2sp_upper_on"})
    with pytest.raises(SpecError, match="unknown: lr"):
        config_from_params(spec, {**PARAMS, "lr": 0.1})


def test_sampler_and_pruner_types():
    expected = {
        "tpe": optuna.samplers.TPESampler,
        "random": optuna.samplers.RandomSampler,
        "gp": optuna.samplers.GPSampler,
    }
    for kind, cls in expected.items():
        assert isinstance(build_sampler(spec_with(sampler={"type": kind, "seed": 0})), cls)
    pruners = {
        "hyperband": optuna.pruners.HyperbandPruner,
        "median": optuna.pruners.MedianPruner,
        "none": optuna.pruners.NopPruner,
    }
    for kind, cls in pruners.items():
        assert isinstance(build_pruner(spec_with(pruner={"type": kind})), cls)
    assert isinstance(build_pruner(spec_with()), optuna.pruners.HyperbandPruner)  # the default


def test_cmaes_without_the_package_says_what_to_install():
    spec = spec_with(sampler={"type": "cmaes"})
    if importlib.util.find_spec("cmaes") is None:
        with pytest.raises(
            SpecError, match=r"sampler.type: cmaes needs the `cmaes` package.*pip install"
        ):
            build_sampler(spec)
    else:
        assert isinstance(build_sampler(spec), optuna.samplers.CmaEsSampler)


def test_worker_index_changes_the_seed():
    spec = spec_with(sampler={"type": "random", "seed": 5})

    def first_params(worker):
        study = optuna.create_study(storage=None, sampler=build_sampler(spec, worker=worker))
        trial = study.ask()
        suggest_config(trial, spec)
        return trial.params

    assert first_params(0) == first_params(0)  # reproducible
    assert first_params(0) != first_params(1)  # parallel workers do not repeat each other


def test_grid_sampler_walks_the_whole_grid():
    space = {
        "new_layers": {"type": "int", "low": 1, "high": 3},
        "lr": {"type": "categorical", "choices": [0.01, 0.1]},
        "l2sp": 0.1,
    }
    spec = spec_with(space, sampler={"type": "grid", "seed": 0})
    study = optuna.create_study(storage=None, direction="maximize", sampler=build_sampler(spec))
    seen = []
    study.optimize(lambda t: seen.append(suggest_config(t, spec)) or 0.0, n_trials=50)
    assert len(seen) == 6  # the sampler stops the study once the grid is done
    assert {(c.new_layers, c.lrs) for c in seen} == {
        (n, (lr,)) for n in (1, 2, 3) for lr in (0.01, 0.1)
    }
    assert all(c.l2sp_rates == (0.1,) for c in seen)


def test_default_grid_is_binary_transfer_with_the_studys_recipe():
    recipe = {
        "epochs": 12,
        "mixup": 0.2,
        "aa": "rand-m9-mstd0.5-inc1",
        "reprob": 0.5,
        "new_layers": 3,
        "l2sp_rates": [0.1],
    }
    spec = spec_with(
        {
            "lr_new": {"type": "float", "low": 0.01, "high": 0.3, "log": True},
            "lr_upper": 0.01,
            "lr_lower": 0.001,
        },
        train=recipe,
        default_settings={"lr": [0.01, 0.03, 0.1], "weight_decay": [0.0, 1e-4]},
    )
    configs = spec.default_configs()
    assert [(c.lrs, c.weight_decay) for c in configs] == [
        ((lr,), wd) for lr in (0.01, 0.03, 0.1) for wd in (0.0, 1e-4)
    ]  # lr-major
    for c in configs:  # binary transfer ...
        assert (c.new_layers, c.num_low, c.l2sp_rates, c.l2_rates) == (1, 0, (0.0,), (0.0,))
        # ... trained with every train: field of the study, augmentation included
        assert (c.mixup, c.aa, c.reprob, c.epochs) == (0.2, "rand-m9-mstd0.5-inc1", 0.5, 12)


def test_a_searched_augmentation_axis_takes_its_default_settings_value():
    space = {
        "lr": {"type": "float", "low": 0.01, "high": 0.3, "log": True},
        "mixup": {"type": "float", "low": 0.0, "high": 0.4},
        "aa": {"type": "categorical", "choices": [None, "rand-m9-mstd0.5-inc1"]},
    }
    spec = spec_with(space, default_settings={"lr": [0.1], "mixup": 0.2})
    (cfg,) = spec.default_configs()
    assert cfg.mixup == 0.2  # from default_settings
    assert cfg.aa is None  # not named there: TrainConfig's own default


@pytest.mark.parametrize(
    "grid, results, extended, expected",
    [
        ([0.01, 0.03, 0.1, 0.3], {0.01: 60, 0.03: 65, 0.1: 70, 0.3: 75}, 0, {"lr": 1.0}),
        ([0.01, 0.03, 0.1, 0.3], {0.01: 80, 0.03: 65, 0.1: 70, 0.3: 75}, 0, {"lr": 0.003}),
        ([0.01, 0.03, 0.1, 0.3], {0.01: 60, 0.03: 80, 0.1: 70, 0.3: 75}, 0, None),  # interior
        ([0.01, 0.03, 0.1, 0.3], {0.01: 60, 0.03: 65, 0.1: 70, 0.3: 75, 1.0: 77}, 1, {"lr": 3.0}),
        ([0.01, 0.03, 0.1, 0.3], {0.01: 60, 0.03: 65, 0.1: 70, 0.3: 75, 1.0: 77, 3.0: 78}, 2, None),
        ([0.001, 0.01], {0.001: 50, 0.01: 60}, 0, {"lr": 0.1}),  # a decade step stays a decade
    ],
)
def test_the_baseline_grid_extends_past_its_edge(grid, results, extended, expected):
    settings = defaults.parse_default_settings({"lr": grid}, {})
    finished = [({"lr": lr}, value) for lr, value in results.items()]
    assert defaults.extension(settings, finished, extended) == expected


def test_default_settings_refuse_what_is_not_theirs():
    with pytest.raises(SpecError, match="default_settings.foo: not a TrainConfig field"):
        spec_with(default_settings={"foo": 1})
    with pytest.raises(
        SpecError, match="default_settings.new_layers: the default settings are binary"
    ):
        spec_with(default_settings={"new_layers": 2})
    with pytest.raises(
        SpecError, match="default_settings.epochs: epochs is not a training setting"
    ):
        spec_with(default_settings={"epochs": 3})
    with pytest.raises(SpecError, match="train.mixup fixes it for the search"):
        spec_with({"lr": 0.1}, train={"mixup": 0.1}, default_settings={"mixup": 0.0})
    spec_with(
        {"lr": 0.1},
        train={"weight_decay": 1e-4},  # its own regularisation is the baseline's
        default_settings={"weight_decay": [0.0, 1e-4]},
    )
    with pytest.raises(SpecError, match=r"default_settings.lr: must be > 0"):
        spec_with(default_settings={"lr": [0.1, 0.0]})


@pytest.mark.parametrize(
    "fields",
    [
        {"new_layers": 1, "lrs": (0.1,), "l2sp_rates": (0.0,), "l2_rates": (0.0,)},
        {
            "new_layers": 3,
            "lrs": (0.1, 0.01, 0.001),
            "l2sp_rates": (0.0, 0.1, 0.01),
            "l2_rates": (0.0, 1e-4, 0.0),
        },
    ],
)
def test_axis_values_of_a_config_give_the_config_back(fields: dict) -> None:
    """values_from_fields inverts fields_from_values: the probe's suggestion and the default
    settings become a trial of whatever axes a study searches."""
    values = values_from_fields(fields)
    per_part = {k: v for k, v in values.items() if k not in ("lr", "l2sp")}
    expected = {**fields, "lrs": tuple(values[k] for k in ("lr_new", "lr_upper", "lr_lower"))}
    expected["l2sp_rates"] = (0.0, values["l2sp_upper"], values["l2sp_lower"])
    expected["l2_rates"] = tuple(values[k] for k in ("l2_new", "l2_upper", "l2_lower"))
    assert fields_from_values(per_part) == expected
    assert values["lr"] == values["lr_new"] and values["l2sp"] == values["l2sp_upper"]
    assert fields_from_values({"lr": values["lr"]})["lrs"] == (fields["lrs"][0],)
