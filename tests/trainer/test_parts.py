"""Parts (new / upper / lower) and the optimiser groups built from them."""

from __future__ import annotations

import pytest
import timm
import torch
from torch import nn

from trainer.config import InputError
from trainer.layers import layer_partition
from trainer.parts import PARTS, assign_parts, classifier_params, param_groups, param_kinds

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


def groups_for(model: nn.Module, wd_bn: bool, wd_bias: bool) -> list[dict]:
    part_of = assign_parts(layer_partition(model), new_layers=2, num_low=1)
    return param_groups(model, part_of, LRS, weight_decay=5e-4, wd_bn=wd_bn, wd_bias=wd_bias)


@pytest.mark.parametrize(
    ("wd_bn", "wd_bias"), [(False, False), (True, False), (False, True), (True, True)]
)
def test_every_parameter_in_exactly_one_group_with_its_parts_lr(
    model: nn.Module, wd_bn: bool, wd_bias: bool
) -> None:
    groups = groups_for(model, wd_bn, wd_bias)
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
    ("wd_bn", "wd_bias"), [(False, False), (True, False), (False, True), (True, True)]
)
def test_bn_and_bias_switches_move_parameters_out_of_decay(
    model: nn.Module, wd_bn: bool, wd_bias: bool
) -> None:
    names = {id(p): n for n, p in model.named_parameters()}
    kinds = param_kinds(model)
    undecayed = {
        names[id(p)]
        for g in groups_for(model, wd_bn, wd_bias)
        if not g["decayed"]
        for p in g["params"]
    }
    expected = {
        n for n, k in kinds.items() if (k == "norm" and not wd_bn) or (k == "bias" and not wd_bias)
    }
    assert undecayed == expected
    assert ("fc.bias" in undecayed) == (not wd_bias)
    assert ("layer4.0.bn1.weight" in undecayed) == (not wd_bn)


def lr_of(model: nn.Module, groups: list[dict]) -> dict[str, float]:
    names = {id(p): n for n, p in model.named_parameters()}
    return {names[id(p)]: g["lr"] for g in groups for p in g["params"]}


@pytest.mark.parametrize(("new_layers", "num_low"), [(3, 1), (1, 2), (6, 0), (2, 4)])
def test_classifier_only_gives_lr_new_to_exactly_the_classifier(
    model: nn.Module, new_layers: int, num_low: int
) -> None:
    part_of = assign_parts(layer_partition(model), new_layers, num_low)
    lrs = lr_of(model, param_groups(model, part_of, LRS, 5e-4, False, False, classifier_only=True))
    assert {n for n, lr in lrs.items() if lr == LRS[0]} == {"fc.weight", "fc.bias"}
    for name, part in part_of.items():  # re-initialised feature layers train at lr_upper
        lr_part = "new" if name.startswith("fc.") else "upper" if part == "new" else part
        assert lrs[name] == LRS[PARTS.index(lr_part)], name
    # the switch off: every re-initialised layer at lr_new, as before
    lrs = lr_of(model, param_groups(model, part_of, LRS, 5e-4, False, False))
    assert {n for n, lr in lrs.items() if lr == LRS[0]} == {
        n for n, p in part_of.items() if p == "new"
    }


def test_classifier_only_leaves_the_rest_of_the_head_layer_at_lr_upper() -> None:
    # timm's ConvNeXt head layer holds a norm before the classifier: only head.fc is "the
    # classifier" (timm's get_classifier()), as only `last_linear` was in the paper's code
    convnext = timm.create_model("test_convnext", num_classes=5)
    assert classifier_params(convnext) == {"head.fc.weight", "head.fc.bias"}
    part_of = assign_parts(layer_partition(convnext), new_layers=1, num_low=0)
    assert {n for n, p in part_of.items() if p == "new"} >= {"head.norm.weight", "head.fc.weight"}
    groups = param_groups(convnext, part_of, LRS, 0.0, False, False, classifier_only=True)
    lrs = lr_of(convnext, groups)
    assert {n for n, lr in lrs.items() if lr == LRS[0]} == {"head.fc.weight", "head.fc.bias"}
    assert lrs["head.norm.weight"] == lrs["head.norm.bias"] == LRS[1]
    assert {g["part"] for g in groups if g["lr"] == LRS[0]} == {"new"}  # "part": the lr's part


def test_a_model_without_a_classifier_cannot_use_classifier_only() -> None:
    net = nn.Sequential(nn.Linear(3, 3))
    with pytest.raises(InputError, match="lr_new_classifier_only: Sequential has no classifier"):
        classifier_params(net)


def test_frozen_parameters_are_left_out() -> None:
    model = timm.create_model("test_resnet", num_classes=5)
    for p in model.conv1.parameters():
        p.requires_grad_(False)
    part_of = assign_parts(layer_partition(model), new_layers=1, num_low=1)
    groups = param_groups(model, part_of, LRS, weight_decay=0.0, wd_bn=False, wd_bias=False)
    ids = {id(p) for g in groups for p in g["params"]}
    assert ids == {id(p) for p in model.parameters() if p.requires_grad}


def test_lrs_need_one_value_per_part(model: nn.Module) -> None:
    part_of = assign_parts(layer_partition(model), 1, 0)
    with pytest.raises(InputError, match="lrs"):
        param_groups(model, part_of, (0.1,), 0.0, False, False)  # type: ignore[arg-type]
