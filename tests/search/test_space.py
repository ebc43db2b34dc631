"""Search space -> Optuna parameters -> TrainConfig, and the samplers and pruners a study builds."""

from __future__ import annotations

import copy
import importlib.util

import optuna
import pytest
from optuna.trial import FixedTrial

from nbtl_search.samplers import baseline_sampler, build_pruner, build_sampler
from nbtl_search.space import config_from_params, distributions, params_to_yaml_space, suggest_config
from nbtl_search.spec import SpecError, parse_spec

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
STUDY = {"name": "t", "dataset": {"name": "digits", "img_size": 32}, "model": {"name": "test_resnet"},
         "train": {"epochs": 12}, "search_space": SPACE}


def spec_with(space=None, **sections):
    data = copy.deepcopy(STUDY)
    if space is not None:
        data["search_space"] = space
    data.update(sections)
    return parse_spec(data)


PARAMS = {"new_layers": 3, "num_low": 4, "lr_new": 0.1, "lr_upper": 0.01, "l2sp_upper_on": True,
          "l2sp_upper": 0.5, "weight_decay": 1.0e-4, "mixup": 0.2, "aa": "rand-m9-mstd0.5-inc1"}


def test_fixed_trial_maps_every_axis_kind():
    spec = spec_with()
    cfg = suggest_config(FixedTrial(PARAMS), spec)
    assert (cfg.new_layers, cfg.num_low, cfg.weight_decay, cfg.mixup, cfg.aa) == (
        3, 4, 1.0e-4, 0.2, "rand-m9-mstd0.5-inc1")
    assert cfg.lrs == (0.1, 0.01, 0.001)  # [new, upper, lower]; lr_lower fixed
    assert cfg.l2sp_rates == (0.0, 0.5, 0.01)  # l2_new missing -> 0; l2sp_lower fixed
    assert cfg.smoothing == 0.1 and cfg.epochs == 12 and cfg.model == "test_resnet"


def test_allow_zero_off_gives_exactly_zero():
    spec = spec_with()
    cfg = suggest_config(FixedTrial({**PARAMS, "l2sp_upper_on": False}), spec)
    assert cfg.l2sp_rates == (0.0, 0.0, 0.01)
    assert set(distributions(spec)) == {*PARAMS}  # both halves of the allow_zero axis, no fixed axes


def test_single_lr_and_l2sp_fill_every_part():
    space = {"lr": {"type": "float", "low": 0.01, "high": 0.1, "log": True},
             "l2sp": {"type": "float", "low": 1e-3, "high": 1.0, "log": True, "allow_zero": True}}
    cfg = suggest_config(FixedTrial({"lr": 0.05, "l2sp_on": True, "l2sp": 0.2}), spec_with(space))
    assert cfg.lrs == (0.05,) and cfg.part_lrs() == (0.05, 0.05, 0.05)
    assert cfg.l2sp_rates == (0.2,)
    per_part = {"l2_new": 1e-3, "l2sp_lower": {"type": "categorical", "choices": [0.0, 0.1]}}
    cfg = suggest_config(FixedTrial({"l2sp_lower": 0.1}), spec_with(per_part))
    assert cfg.l2sp_rates == (1e-3, 0.0, 0.1)  # l2sp_upper missing -> 0


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
        fixed = params_to_yaml_space(spec, params)
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
    expected = {"tpe": optuna.samplers.TPESampler, "random": optuna.samplers.RandomSampler,
                "gp": optuna.samplers.GPSampler}
    for kind, cls in expected.items():
        assert isinstance(build_sampler(spec_with(sampler={"type": kind, "seed": 0})), cls)
    pruners = {"hyperband": optuna.pruners.HyperbandPruner, "median": optuna.pruners.MedianPruner,
               "none": optuna.pruners.NopPruner}
    for kind, cls in pruners.items():
        assert isinstance(build_pruner(spec_with(pruner={"type": kind})), cls)
    assert isinstance(build_pruner(spec_with()), optuna.pruners.HyperbandPruner)  # the default


def test_cmaes_without_the_package_says_what_to_install():
    spec = spec_with(sampler={"type": "cmaes"})
    if importlib.util.find_spec("cmaes") is None:
        with pytest.raises(SpecError, match=r"sampler.type: cmaes needs the `cmaes` package.*pip install"):
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
    space = {"new_layers": {"type": "int", "low": 1, "high": 3},
             "lr": {"type": "categorical", "choices": [0.01, 0.1]}, "l2sp": 0.1}
    spec = spec_with(space, sampler={"type": "grid", "seed": 0})
    study = optuna.create_study(storage=None, direction="maximize", sampler=build_sampler(spec))
    seen = []
    study.optimize(lambda t: seen.append(suggest_config(t, spec)) or 0.0, n_trials=50)
    assert len(seen) == 6  # the sampler stops the study once the grid is done
    assert {(c.new_layers, c.lrs) for c in seen} == {(n, (lr,)) for n in (1, 2, 3) for lr in (0.01, 0.1)}
    assert all(c.l2sp_rates == (0.1,) for c in seen)


def test_baseline_sampler_covers_the_default_settings():
    spec = spec_with(default_settings={"lr": [0.01, 0.03, 0.1], "weight_decay": [0.0, 1e-4]})
    study = optuna.create_study(storage=None, direction="maximize", sampler=baseline_sampler(spec))
    seen = []

    def objective(trial):
        lr = trial.suggest_categorical("lr", spec.default_settings["lr"])
        wd = trial.suggest_categorical("weight_decay", spec.default_settings["weight_decay"])
        seen.append(spec.default_config(lr, wd))
        return 0.0

    study.optimize(objective, n_trials=50)
    assert sorted(seen, key=lambda c: (c.lrs, c.weight_decay)) == spec.default_configs()
