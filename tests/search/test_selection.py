"""Noise-aware selection and the ladder between the best default and the optimum (pure logic)."""

from __future__ import annotations

from nbtl_search.final import selection
from trainer.config import TrainConfig, config_hash

DEFAULT = TrainConfig(
    dataset="digits", model="test_resnet", lrs=(0.3,), weight_decay=5e-4, mixup=0.2
).to_dict()
OPTIMUM = TrainConfig(
    dataset="digits",
    model="test_resnet",
    new_layers=3,
    num_low=2,
    lrs=(0.3, 0.1, 0.01),
    l2sp_rates=(0.0, 0.0, 0.1),
    l2_rates=(0.0, 0.01, 0.0),
    weight_decay=5e-4,
    mixup=0.4,
    aa="rand-m9-mstd0.5-inc1",
).to_dict()


def test_each_rung_adds_one_group_and_the_last_is_the_optimum() -> None:
    rungs = selection.ladder(DEFAULT, OPTIMUM)
    assert [r["rung"] for r in rungs] == [
        "default",
        "+ layers",
        "+ learning rates",
        "+ regularisation",
        "optimal",
    ]
    assert config_hash(rungs[0]["config"]) == config_hash(DEFAULT)
    assert config_hash(rungs[-1]["config"]) == config_hash(OPTIMUM)
    assert rungs[1]["adds"] == "new_layers 1 -> 3; num_low 0 -> 2"
    assert rungs[2]["adds"] == "lrs [0.3] -> [0.3, 0.1, 0.01]"
    assert rungs[3]["adds"] == "l2sp_rates [0] -> [0, 0, 0.1]; l2_rates [0] -> [0, 0.01, 0]"
    assert rungs[4]["adds"] == "mixup 0.2 -> 0.4; aa unset -> rand-m9-mstd0.5-inc1"
    assert (
        rungs[2]["config"]["new_layers"] == 3 and rungs[2]["config"]["mixup"] == 0.2
    )  # cumulative


def test_an_axis_the_optimum_does_not_change_is_an_empty_rung() -> None:
    same_lr = dict(OPTIMUM, lrs=[0.3])
    rungs = selection.ladder(DEFAULT, same_lr)
    assert rungs[2]["adds"] == ""  # [0.3] and [0.3, 0.3, 0.3] are the same setting
    assert config_hash(rungs[2]["config"]) == config_hash(rungs[1]["config"])


def _run(rid, role, val, cfg, state="complete"):
    return {
        "id": rid,
        "role": role,
        "state": state,
        "val_top1": val,
        "config": cfg,
        "config_hash": config_hash(cfg),
    }


def test_candidates_are_ranked_by_their_mean_over_reruns() -> None:
    a, b, c = (dict(DEFAULT, lrs=[lr]) for lr in (0.01, 0.1, 1.0))
    runs = [
        _run(1, "default", 80.0, a),
        _run(2, "default", 78.0, b),
        _run(3, "default", 70.0, c),
        _run(4, "default", 79.0, dict(a, seed=7)),  # the same config again: ranked once
        _run(5, "rerank", 70.0, a),
        _run(6, "rerank", 71.0, a),  # a: (80+70+71)/3 = 73.7
        _run(7, "rerank", 77.0, b),
        _run(8, "rerank", 79.0, b),  # b: (78+77+79)/3 = 78
        _run(9, "rerank", 99.0, b, state="failed"),
    ]
    assert [r["id"] for r in selection.ranked(runs, "default")] == [1, 2, 3]
    chosen = selection.candidates(runs, "default", 2)
    assert [(c.run["id"], round(c.val_mean, 2), c.val_n) for c in chosen] == [
        (2, 78.0, 3),
        (1, 73.67, 3),
    ]
    assert selection.candidates(runs, "default", 0)[0].run["id"] == 1  # no re-ranking: single value
    assert selection.rerank_seeds(a, 2) == [a["seed"] + 1, a["seed"] + 2]
