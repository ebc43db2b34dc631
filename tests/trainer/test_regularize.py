"""L2-SP / L2 per part: the gradient term equals autograd of the written formula."""

from __future__ import annotations

import copy
import itertools

import pytest
import timm
import torch
from torch import nn

from trainer.config import InputError
from trainer.layers import layer_partition, reinit_layers
from trainer.parts import PARTS, assign_parts, is_regularised, param_kinds
from trainer.regularize import L2SP


def transferred() -> tuple[nn.Module, dict[str, str], dict[str, torch.Tensor]]:
    """A 'pre-trained' test_resnet, its reference weights, re-initialised top 2 layers, then 'trained'."""
    model = timm.create_model("test_resnet", num_classes=5)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g))
    reference = {k: v.clone() for k, v in model.state_dict().items()}
    layers = layer_partition(model)
    reinit_layers(model, layers, 2, seed=1)
    with torch.no_grad():  # training moved every weight away from where it started
        for p in model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))
    return model, assign_parts(layers, new_layers=2, num_low=2), reference


def formula(
    model: nn.Module,
    part_of: dict[str, str],
    rates: tuple[float, float, float],
    reference: dict[str, torch.Tensor],
    reg_bn: bool,
    reg_bias: bool,
    l2_rates: tuple[float, float, float] = (0.0, 0.0, 0.0),
    first_factor: float = 1.0,
) -> torch.Tensor:
    """Omega(w) written out: s/2*||w - w0||^2 + l/2*||w||^2 for upper and lower,
    (s_new + l_new)/2*||w||^2 for new; the first lower tensor's s times `first_factor`."""
    kinds = param_kinds(model)
    total = torch.zeros((), dtype=torch.float64)
    first_lower = True
    for name, p in model.named_parameters():
        if not is_regularised(kinds[name], reg_bn, reg_bias):
            continue
        part = part_of[name]
        r, l2 = rates[PARTS.index(part)], l2_rates[PARTS.index(part)]
        if part == "lower" and first_lower:
            r, first_lower = first_factor * r, False
        target = torch.zeros_like(p) if part == "new" else reference[name]
        total = total + r / 2 * (p.double() - target.double()).pow(2).sum()
        total = total + l2 / 2 * p.double().pow(2).sum()
    return total


RATES = [(0.3, 0.05, 1.7), (0.0, 0.2, 0.0), (0.5, 0.0, 0.0), (0.0, 0.0, 0.01)]
SWITCHES = [(False, False), (True, True), (True, False)]


@pytest.mark.parametrize("rates", RATES)
@pytest.mark.parametrize(("reg_bn", "reg_bias"), SWITCHES)
def test_gradient_term_equals_autograd_of_the_formula(
    rates: tuple[float, float, float], reg_bn: bool, reg_bias: bool
) -> None:
    model, part_of, reference = transferred()
    params = dict(model.named_parameters())
    base = {n: torch.randn_like(p) for n, p in params.items()}  # the loss's gradient, already there
    for n, p in params.items():
        p.grad = base[n].clone()
    l2sp = L2SP(model, part_of, rates, reference, reg_bn=reg_bn, reg_bias=reg_bias)
    l2sp.add_grad_()
    ours = {n: p.grad.clone() for n, p in params.items()}

    model.zero_grad(set_to_none=True)
    omega = formula(model, part_of, rates, reference, reg_bn, reg_bias)
    omega.backward()
    for n, p in params.items():
        expected = base[n] + (p.grad if p.grad is not None else 0)
        torch.testing.assert_close(ours[n], expected, rtol=1e-6, atol=1e-6, msg=n)
    assert l2sp.penalty() == pytest.approx(omega.item(), rel=1e-6)


@pytest.mark.parametrize(
    ("rates", "l2_rates"),
    [
        ((0.0, 0.0, 0.3), (0.0, 0.2, 0.0)),  # the paper's combination: L2-SP lower, L2 upper
        ((0.1, 0.05, 0.3), (0.2, 0.4, 0.01)),  # both on every part
        ((0.0, 0.0, 0.0), (0.0, 0.1, 0.1)),  # L2 alone needs no pre-trained weights
    ],
)
def test_per_part_l2_and_l2sp_together_equal_autograd(rates, l2_rates) -> None:
    model, part_of, reference = transferred()
    params = dict(model.named_parameters())
    for p in params.values():
        p.grad = torch.zeros_like(p)
    l2sp = L2SP(
        model,
        part_of,
        rates,
        reference if any(rates[1:]) else None,
        reg_bn=False,
        reg_bias=True,
        l2_rates=l2_rates,
    )
    l2sp.add_grad_()
    ours = {n: p.grad.clone() for n, p in params.items()}
    model.zero_grad(set_to_none=True)
    omega = formula(model, part_of, rates, reference, False, True, l2_rates)
    omega.backward()
    for n, p in params.items():
        expected = p.grad if p.grad is not None else torch.zeros_like(p)
        torch.testing.assert_close(ours[n], expected, rtol=1e-6, atol=1e-6, msg=n)
    assert l2sp.penalty() == pytest.approx(omega.item(), rel=1e-6)
    assert l2sp.active


@pytest.mark.parametrize("reg_bn", [False, True])
def test_first_lower_tensor_factor_equals_autograd(reg_bn: bool) -> None:
    # the paper's --L2SP: L2-SP on lower with its first tensor x2, L2 on upper and new
    rates, l2_rates = (0.0, 0.0, 0.02), (5e-4, 5e-4, 0.0)
    model, part_of, reference = transferred()
    params = dict(model.named_parameters())
    for p in params.values():
        p.grad = torch.zeros_like(p)
    l2sp = L2SP(model, part_of, rates, reference, reg_bn, True, l2_rates, first_factor=2.0)
    l2sp.add_grad_()
    ours = {n: p.grad.clone() for n, p in params.items()}
    model.zero_grad(set_to_none=True)
    omega = formula(model, part_of, rates, reference, reg_bn, True, l2_rates, first_factor=2.0)
    omega.backward()
    for n, p in params.items():
        expected = p.grad if p.grad is not None else torch.zeros_like(p)
        torch.testing.assert_close(ours[n], expected, rtol=1e-6, atol=1e-6, msg=n)
    assert l2sp.penalty() == pytest.approx(omega.item(), rel=1e-6)
    first, rest = [t for t in l2sp.terms if t.part == "lower"]
    assert [id(p) for p in first.params] == [id(params["conv1.0.weight"])]  # the first conv
    assert (first.sp_rate, first.rate) == (0.04, 0.04)
    assert (rest.sp_rate, rest.rate) == (0.02, 0.02) and len(rest.params) > 1


def test_weight_decay_and_l2sp_reach_norm_and_bias_parameters_separately() -> None:
    from trainer.config import TrainConfig
    from trainer.setup import build_optimizer, build_regularizer

    model, part_of, reference = transferred()
    kinds = param_kinds(model)
    names = {id(p): n for n, p in model.named_parameters()}
    for wd_bn, wd_bias, reg_bn, reg_bias in itertools.product((False, True), repeat=4):
        cfg = TrainConfig(
            model="test_resnet",
            weight_decay=1e-4,
            l2sp_rates=(0.1, 0.1, 0.1),
            l2_rates=(0.01,),
            wd_bn=wd_bn,
            wd_bias=wd_bias,
            reg_bn=reg_bn,
            reg_bias=reg_bias,
        )
        optimizer = build_optimizer(cfg, model, part_of)
        decayed = {
            names[id(p)] for g in optimizer.param_groups if g["weight_decay"] for p in g["params"]
        }
        regularised = {
            names[id(p)]
            for t in build_regularizer(cfg, model, part_of, reference).terms
            for p in t.params
        }

        def reached(norm: bool, bias: bool) -> set[str]:
            return {
                n
                for n, k in kinds.items()
                if k == "weight" or (k == "norm" and norm) or (k == "bias" and bias)
            }

        switches = (wd_bn, wd_bias, reg_bn, reg_bias)
        assert decayed == reached(wd_bn, wd_bias), switches
        assert regularised == reached(reg_bn, reg_bias), switches
        assert ("layer4.0.bn1.weight" in decayed, "fc.bias" in decayed) == (wd_bn, wd_bias)
        assert ("layer4.0.bn1.bias" in regularised, "fc.bias" in regularised) == (reg_bn, reg_bias)


def test_regularisation_touches_every_part_and_respects_the_switches() -> None:
    # Guards the test above against passing vacuously: each part's gradient really moves.
    model, part_of, reference = transferred()
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    L2SP(model, part_of, (0.3, 0.05, 1.7), reference, reg_bn=False, reg_bias=False).add_grad_()
    moved = {part_of[n] for n, p in model.named_parameters() if p.grad.abs().sum() > 0}
    assert moved == set(PARTS)
    assert torch.equal(model.fc.bias.grad, torch.zeros(5))  # a bias, off by default
    assert torch.equal(model.layer4[0].bn1.weight.grad, torch.zeros(96))  # a norm parameter
    assert model.fc.weight.grad.abs().sum() > 0


def test_zero_rates_cost_nothing() -> None:
    model, part_of, reference = transferred()
    l2sp = L2SP(model, part_of, (0.0, 0.1, 0.0), reference, reg_bn=False, reg_bias=False)
    assert [t.part for t in l2sp.terms] == ["upper"]
    assert l2sp.active
    off = L2SP(model, part_of, (0.0, 0.0, 0.0), None, reg_bn=True, reg_bias=True)
    assert not off.active and off.terms == [] and off.penalty() == 0.0
    only_new = L2SP(
        model, part_of, (0.2, 0.0, 0.0), None, reg_bn=False, reg_bias=False
    )  # L2 needs no w0
    assert only_new.penalty() > 0


def test_parameters_without_grad_are_skipped() -> None:
    model, part_of, reference = transferred()
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    model.fc.weight.grad = None
    model.layer1[0].conv1.weight.grad = None
    L2SP(model, part_of, (0.3, 0.05, 1.7), reference, reg_bn=False, reg_bias=False).add_grad_()
    assert model.fc.weight.grad is None and model.layer1[0].conv1.weight.grad is None
    assert model.layer1[0].conv2.weight.grad.abs().sum() > 0


def test_reference_is_copied_once() -> None:
    model, part_of, _ = transferred()
    live = model.state_dict()  # shares storage with the parameters
    l2sp = L2SP(model, part_of, (0.0, 0.1, 0.1), live, reg_bn=False, reg_bias=False)
    assert l2sp.penalty() == 0.0
    with torch.no_grad():
        model.layer2[0].conv1.weight.add_(1.0)  # upper part
    n = model.layer2[0].conv1.weight.numel()
    assert l2sp.penalty() == pytest.approx(0.1 / 2 * n, rel=1e-5)


def test_missing_reference_is_an_input_error() -> None:
    model, part_of, reference = transferred()
    with pytest.raises(InputError, match="upper part needs the pre-trained weights"):
        L2SP(model, part_of, (0.0, 0.1, 0.0), None, reg_bn=False, reg_bias=False)
    del reference["layer1.0.conv1.weight"]
    with pytest.raises(InputError, match="layer1.0.conv1.weight"):
        L2SP(model, part_of, (0.0, 0.0, 0.1), reference, reg_bn=False, reg_bias=False)
    with pytest.raises(InputError, match="rates"):
        L2SP(model, part_of, (0.1, -1.0, 0.0), reference, reg_bn=False, reg_bias=False)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gradient_term_on_cuda() -> None:
    model, part_of, reference = transferred()
    model.cuda()
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    l2sp = L2SP(model, part_of, (0.3, 0.05, 1.7), reference, reg_bn=True, reg_bias=True)
    assert all(r.is_cuda for t in l2sp.terms if t.reference for r in t.reference)
    l2sp.add_grad_()
    for n, p in model.named_parameters():
        part = part_of[n]
        r = (0.3, 0.05, 1.7)[PARTS.index(part)]
        expected = r * (p if part == "new" else p - reference[n].cuda())
        torch.testing.assert_close(p.grad, expected.detach(), rtol=1e-6, atol=1e-6, msg=n)
    omega = formula(
        copy.deepcopy(model).cpu(), part_of, (0.3, 0.05, 1.7), reference, True, True
    ).item()
    assert l2sp.penalty() == pytest.approx(omega, rel=1e-5)
