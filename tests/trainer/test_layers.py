"""Layer partition and re-initialisation of the top `new_layers` layers."""

from __future__ import annotations

import math

import pytest
import timm
import torch
from torch import nn

from trainer.config import InputError
from trainer.layers import layer_partition, reinit_layers


def pretrained(name: str = "test_resnet") -> nn.Module:
    """A tiny timm model whose every parameter and buffer is far from its initial value."""
    model = timm.create_model(name, num_classes=5)
    g = torch.Generator().manual_seed(123)
    with torch.no_grad():
        for t in list(model.parameters()) + [b for b in model.buffers() if b.is_floating_point()]:
            t.copy_(torch.randn(t.shape, generator=g) + 3.0)
    return model


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_test_resnet_partition_follows_timm_group_matcher() -> None:
    model = pretrained()
    layers = layer_partition(model)
    assert [(layer.index, layer.name) for layer in layers] == [
        (1, "head"),
        (2, "layer4"),
        (3, "layer3"),
        (4, "layer2"),
        (5, "layer1"),
        (6, "stem"),
    ]
    assert layers[0].param_names == ("fc.weight", "fc.bias")
    assert all(n.startswith("layer4.") for n in layers[1].param_names)
    assert "conv1.0.weight" in layers[-1].param_names and "bn1.weight" in layers[-1].param_names
    all_names = [n for layer in layers for n in layer.param_names]
    assert sorted(all_names) == sorted(n for n, _ in model.named_parameters())  # each exactly once


def test_inception_v4_partition_is_classifier_plus_22_feature_blocks() -> None:
    model = timm.create_model(
        "inception_v4", num_classes=3
    )  # structure only: no forward, no weights
    layers = layer_partition(model)
    assert len(layers) == 23
    assert layers[0].index == 1 and set(layers[0].param_names) == {
        "last_linear.weight",
        "last_linear.bias",
    }
    assert [layer.name for layer in layers[1:]] == [f"features.{i}" for i in range(21, -1, -1)]
    for layer in layers[1:]:
        assert layer.param_names and all(n.startswith(layer.name + ".") for n in layer.param_names)
    all_names = [n for layer in layers for n in layer.param_names]
    assert sorted(all_names) == sorted(n for n, _ in model.named_parameters())


@pytest.mark.parametrize("new_layers", [1, 2, 4, 6])
def test_reinit_changes_exactly_the_top_layers(new_layers: int) -> None:
    model = pretrained()
    layers = layer_partition(model)
    before = snapshot(model)
    reinit_layers(model, layers, new_layers, seed=0)
    after = model.state_dict()
    new = {n for layer in layers[:new_layers] for n in layer.param_names}
    new_modules = {m for layer in layers[:new_layers] for m in layer.module_names}
    for name, value in after.items():
        if name in new:
            assert not torch.equal(value, before[name]), f"{name} was not re-initialised"
        elif name.rpartition(".")[0] in new_modules:  # a buffer: BatchNorm statistics start afresh
            if name.endswith("running_mean"):
                assert torch.equal(value, torch.zeros_like(value)), name
        else:
            assert torch.equal(value, before[name]), (
                f"{name} changed but is not in the top {new_layers}"
            )
    assert (new_layers >= 2) == ("layer4.0.bn1" in new_modules)  # the buffer branch is exercised


def test_reinit_is_reproducible_and_leaves_the_global_rng_alone() -> None:
    a, b = pretrained(), pretrained()
    layers = layer_partition(a)
    torch.manual_seed(7)
    state = torch.get_rng_state()
    reinit_layers(a, layers, 3, seed=11)
    assert torch.equal(torch.get_rng_state(), state)
    reinit_layers(b, layers, 3, seed=11)
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(x, y), name
    c = pretrained()
    reinit_layers(c, layers, 3, seed=12)
    assert not torch.equal(c.fc.weight, a.fc.weight)


def test_reinit_uses_the_models_own_init() -> None:
    model = pretrained()
    reinit_layers(model, layer_partition(model), 2, seed=0)
    # timm ResNet.init_weights: Kaiming-normal fan-out convs, last BN gamma of each block zero.
    w = model.layer4[0].conv2.weight
    expected_std = math.sqrt(2.0 / (w.shape[0] * w[0, 0].numel()))
    assert abs(w.std().item() / expected_std - 1) < 0.05
    assert torch.equal(model.layer4[0].bn2.weight, torch.zeros(96))
    assert torch.equal(model.layer4[0].bn1.weight, torch.ones(96))
    # nn.Linear's own reset_parameters: uniform in +-1/sqrt(fan_in).
    assert model.fc.weight.abs().max().item() <= 1 / math.sqrt(model.fc.in_features)


@pytest.mark.parametrize("new_layers", [0, 7, -1])
def test_new_layers_out_of_range_is_an_input_error(new_layers: int) -> None:
    model = pretrained()
    with pytest.raises(
        InputError,
        match=rf"new_layers must be between 1 and 6 \(the model's layer count\), "
        rf"got {new_layers}",
    ):
        reinit_layers(model, layer_partition(model), new_layers, seed=0)


def test_models_without_a_partition_are_rejected_by_class_name() -> None:
    with pytest.raises(InputError, match="Sequential"):
        layer_partition(nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2)))

    class OneGroup(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = nn.Linear(2, 2)

        def group_matcher(self, coarse: bool = False) -> dict[str, str]:
            return {"stem": r"^body"}

    with pytest.raises(InputError, match="OneGroup.*single group"):
        layer_partition(OneGroup())


def test_parameters_without_an_init_are_an_error_not_left_pretrained() -> None:
    model = timm.create_model("test_vit", num_classes=5)
    layers = layer_partition(model)
    assert layers[-1].name == "stem" and "pos_embed" in layers[-1].param_names
    before = snapshot(model)
    with pytest.raises(InputError, match="pos_embed"):
        reinit_layers(model, layers, len(layers), seed=0)
    assert all(
        torch.equal(v, before[k]) for k, v in model.state_dict().items()
    )  # checked before acting
    reinit_layers(model, layers, 2, seed=0)  # the blocks and the head have their own init
