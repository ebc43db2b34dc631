"""Parts (new / upper / lower) and the optimiser groups built from them."""

from __future__ import annotations

import pytest
import timm
import torch
from torch import nn

from trainer.config import InputError
from trainer.layers import layer_partition
from trainer.parts import PARTS, assign_parts, param_groups, param_kinds

LRS = (0.3, 0.02, 0.001)


@pytest.fixture(scope="module")
def model() -> nn.Module:
    return timm.create_model("test_resnet", num_classes=5)  # 6 layers: head, layer4..layer1, stem


def layer_of(model: nn.Module) -> dict[str, str]:
    return {n: layer.name for layer in layer_partition(model) for n in layer.param_names}


def test_parts_follow_new_layers_and_num_low(model: nn.Module) -> None:
    part_of = assign_parts(layer_partition(model), new_layers=2, num_low=2)
    assert set(part_of) == {n for n, _ in model.named_parameters()}
    by_layer = {layer_of(model)[n]: part for n, part in part_of.items()}
    assert by_layer == {
        "head": "new",
        "layer4": "new",
        "layer3": "upper",
        "layer2": "upper",
        "layer1": "lower",
        "stem": "lower",
    }


@pytest.mark.parametrize(
    ("new_layers", "num_low", "counts"),
    [
        (1, 0, (1, 5, 0)),  # standard fine-tuning: only the classifier is new, no lower part
        (1, 5, (1, 0, 5)),  # every transferred layer in the lower part
        (6, 0, (6, 0, 0)),  # everything re-initialised
        (3, 3, (3, 0, 3)),
    ],
)
def test_part_edges(
    model: nn.Module, new_layers: int, num_low: int, counts: tuple[int, int, int]
) -> None:
    part_of = assign_parts(layer_partition(model), new_layers, num_low)
    layers_in = {p: {layer_of(model)[n] for n, q in part_of.items() if q == p} for p in PARTS}
    assert tuple(len(layers_in[p]) for p in PARTS) == counts


@pytest.mark.parametrize(
    ("new_layers", "num_low", "message"),
    [
        (2, 5, r"num_low must be between 0 and 4 \(6 layers minus new_layers=2\), got 5"),
        (1, -1, r"num_low must be between 0 and 5 .*got -1"),
        (6, 1, r"num_low must be between 0 and 0 .*got 1"),
        (0, 0, r"new_layers must be between 1 and 6 \(the model's layer count\), got 0"),
        (7, 0, r"new_layers must be between 1 and 6 .*got 7"),
    ],
)
def test_bad_part_sizes_are_input_errors(
    model: nn.Module, new_layers: int, num_low: int, message: str
) -> None:
    with pytest.raises(InputError, match=message):
        assign_parts(layer_partition(model), new_layers, num_low)


def test_param_kinds(model: nn.Module) -> None:
    kinds = param_kinds(model)
    assert (
        kinds["layer4.0.bn1.weight"] == kinds["layer4.0.bn1.bias"] == kinds["bn1.weight"] == "norm"
    )
    assert kinds["fc.bias"] == "bias"
    assert kinds["fc.weight"] == kinds["layer1.0.conv1.weight"] == "weight"
    ln = nn.Sequential(nn.Linear(3, 3), nn.LayerNorm(3), nn.GroupNorm(1, 3))
    assert param_kinds(ln) == {
        "0.weight": "weight",
        "0.bias": "bias",
        "1.weight": "norm",
        "1.bias": "norm",
        "2.weight": "norm",
        "2.bias": "norm",
    }


def groups_for(model: nn.Module, reg_bn: bool, reg_bias: bool) -> list[dict]:
    part_of = assign_parts(layer_partition(model), new_layers=2, num_low=1)
    return param_groups(model, part_of, LRS, weight_decay=5e-4, reg_bn=reg_bn, reg_bias=reg_bias)


@pytest.mark.parametrize(
    ("reg_bn", "reg_bias"), [(False, False), (True, False), (False, True), (True, True)]
)
def test_every_parameter_in_exactly_one_group_with_its_parts_lr(
    model: nn.Module, reg_bn: bool, reg_bias: bool
) -> None:
    groups = groups_for(model, reg_bn, reg_bias)
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids)) == len(list(model.parameters()))
    part_of = assign_parts(layer_partition(model), new_layers=2, num_low=1)
    part_by_id = {id(p): part_of[n] for n, p in model.named_parameters()}
    for g in groups:
        assert g["params"], "empty groups are left out"
        assert g["lr"] == LRS[PARTS.index(g["part"])]
        assert {part_by_id[id(p)] for p in g["params"]} == {g["part"]}
        assert g["weight_decay"] == (5e-4 if g["decayed"] else 0.0)
    torch.optim.SGD(groups, lr=0.1, momentum=0.9, nesterov=True)  # groups are valid optimiser input


@pytest.mark.parametrize(
    ("reg_bn", "reg_bias"), [(False, False), (True, False), (False, True), (True, True)]
)
def test_bn_and_bias_switches_move_parameters_out_of_decay(
    model: nn.Module, reg_bn: bool, reg_bias: bool
) -> None:
    names = {id(p): n for n, p in model.named_parameters()}
    kinds = param_kinds(model)
    undecayed = {
        names[id(p)]
        for g in groups_for(model, reg_bn, reg_bias)
        if not g["decayed"]
        for p in g["params"]
    }
    expected = {
        n
        for n, k in kinds.items()
        if (k == "norm" and not reg_bn) or (k == "bias" and not reg_bias)
    }
    assert undecayed == expected
    assert ("fc.bias" in undecayed) == (not reg_bias)
    assert ("layer4.0.bn1.weight" in undecayed) == (not reg_bn)


def test_frozen_parameters_are_left_out() -> None:
    model = timm.create_model("test_resnet", num_classes=5)
    for p in model.conv1.parameters():
        p.requires_grad_(False)
    part_of = assign_parts(layer_partition(model), new_layers=1, num_low=1)
    groups = param_groups(model, part_of, LRS, weight_decay=0.0, reg_bn=False, reg_bias=False)
    ids = {id(p) for g in groups for p in g["params"]}
    assert ids == {id(p) for p in model.parameters() if p.requires_grad}


def test_lrs_need_one_value_per_part(model: nn.Module) -> None:
    part_of = assign_parts(layer_partition(model), 1, 0)
    with pytest.raises(InputError, match="lrs"):
        param_groups(model, part_of, (0.1,), 0.0, False, False)  # type: ignore[arg-type]
