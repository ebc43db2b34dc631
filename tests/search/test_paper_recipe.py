"""`studies/paper_recipe.yaml` trains the way the paper's official code does (affb243).

Each value is checked where the trainer builds it: optimiser groups, scheduler, L2-SP/L2 terms, loss,
precision and transforms of the study's Inception-v4. The expected per-parameter rules are the
official code's (timm/optim/optim_factory.py `add_different_lrs`, timm/loss/l2sp.py), restated here as
rules over parameter names, not copied.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest

from nbtl_search.study.spec import load_spec
from trainer.config import PAPER_L2SP

RECIPE = Path(__file__).resolve().parents[2] / "studies" / "paper_recipe.yaml"
LRS = (0.03, 0.01, 0.001)  # the paper's --lr new upper lower
NEW_LAYERS, NUM_LOW = (
    3,
    8,
)  # classifier + features.21, features.20 re-initialised; features.0-7 lower
DTD_MEAN = (0.5329876098715876, 0.474260843249454, 0.42627281899380676)


@pytest.fixture(scope="module")
def spec():
    return load_spec(RECIPE)


@pytest.fixture(scope="module")
def built(spec):
    """The study's model as `build_run` prepares it (random weights stand in for the hub's)."""
    from trainer.layers import layer_partition, reinit_layers
    from trainer.model import create_model
    from trainer.parts import assign_parts

    cfg = spec.base_config(new_layers=NEW_LAYERS, num_low=NUM_LOW, lrs=LRS, pretrained=False)
    model = create_model(cfg, num_classes=47)
    layers = layer_partition(model)
    reference = {n: p.detach().clone() for n, p in model.named_parameters()}
    reinit_layers(model, layers, cfg.new_layers, cfg.seed)
    return cfg, model, assign_parts(layers, cfg.new_layers, cfg.num_low), reference


def block(name: str) -> int:
    return int(name.split(".")[1])  # features.<i>.… (the paper's code reads the index the same way)


def test_the_study_loads_with_every_value_of_the_recipe(spec):
    cfg = spec.base_config()
    assert (cfg.epochs, cfg.sched, cfg.decay_epochs, cfg.decay_rate) == (800, "step", 10.0, 0.9)
    assert (cfg.warmup_epochs, cfg.warmup_lr) == (3, 1e-4)
    assert (cfg.opt, cfg.momentum, cfg.batch_size, cfg.drop_last) == ("sgd", 0.9, 32, True)
    assert (cfg.smoothing, cfg.color_jitter, cfg.train_interpolation) == (0.1, 0.4, "random")
    assert (cfg.remode, cfg.amp) == ("pixel", "fp16")
    assert (cfg.weight_decay, cfg.wd_bn, cfg.wd_bias) == (5e-4, True, True)
    assert cfg.lr_new_classifier_only
    assert {name: getattr(cfg, name) for name in PAPER_L2SP} == PAPER_L2SP
    assert cfg.mean == DTD_MEAN and cfg.model == "inception_v4" and cfg.img_size == 299
    assert spec.search_space["num_low"].low == 1  # --L2SP needs a lower part
    # the baseline keeps the recipe, not the L2-SP structure (binary transfer)
    default = spec.default_configs()[0]
    assert (default.l2sp_rates, default.l2_rates, default.new_layers) == ((0.0,), (0.0,), 1)
    assert (default.smoothing, default.wd_bn, default.epochs) == (0.1, True, 800)


def test_optimiser_lrs_and_weight_decay_follow_optim_factory(built):
    import torch

    from trainer.setup import build_optimizer

    cfg, model, part_of, _ = built
    optimizer = build_optimizer(cfg, model, part_of)
    assert isinstance(optimizer, torch.optim.SGD)
    names = {id(p): n for n, p in model.named_parameters()}
    seen = set()
    for group in optimizer.param_groups:
        assert (group["momentum"], group["nesterov"], group["weight_decay"]) == (0.9, True, 5e-4)
        for p in group["params"]:
            name = names[id(p)]
            seen.add(name)
            # optim_factory.py: "linear" -> lr[0]; block index >= num_lowlrs -> lr[1]; else lr[2]
            if "linear" in name:
                expected = LRS[0]
            else:
                expected = LRS[1] if block(name) >= NUM_LOW else LRS[2]
            assert group["lr"] == expected, name
    assert seen == set(names.values())  # weight decay on every parameter, BN and biases included
    assert {n for n, part in part_of.items() if part == "new"} > {
        "last_linear.weight",
        "features.21.branch0.conv.weight",
        "features.20.branch0.bn.bias",
    }  # the re-initialised blocks trained at lr_upper above are in the new part


def test_scheduler_warms_up_from_1e_4_then_steps_x0_9_every_10(built):
    from trainer.setup import build_optimizer, build_scheduler

    cfg, model, part_of, _ = built
    optimizer = build_optimizer(cfg, model, part_of)
    scheduler = build_scheduler(cfg, optimizer)
    for epoch, factor in [(3, 1.0), (9, 1.0), (10, 0.9), (25, 0.81), (799, 0.9**79)]:
        scheduler.step(epoch)
        for group in optimizer.param_groups:
            assert group["lr"] == pytest.approx(group["initial_lr"] * factor, rel=1e-9), epoch
    for epoch in range(3):  # step_lr.py: 1e-4 + t * (base - 1e-4) / 3, to every group's own lr
        scheduler.step(epoch)
        for group in optimizer.param_groups:
            expected = 1e-4 + epoch * (group["initial_lr"] - 1e-4) / 3
            assert group["lr"] == pytest.approx(expected, rel=1e-9), epoch


def test_regulariser_is_the_l2sp_flag_structure(built):
    from trainer.setup import build_regularizer

    cfg, model, part_of, reference = built
    regularizer = build_regularizer(cfg, model, part_of, reference)
    got = {}
    for term in regularizer.terms:
        for i, p in enumerate(term.params):
            got[id(p)] = (term.rate - term.sp_rate, term.sp_rate, term.reference is not None)
            if term.reference is not None:
                assert term.reference[i].shape == p.shape
    expected = {}
    first = True
    for name, p in model.named_parameters():
        # l2sp.py: "bn" skipped; "linear" and the new blocks L2 5e-4; blocks below num_lowlrs
        # L2-SP 0.004 x 10 (the first) or x 5; the rest L2 5e-4
        if "bn" in name:
            continue
        if "linear" in name or block(name) >= 22 - NEW_LAYERS:
            expected[id(p)] = (5e-4, 0.0, False)
        elif block(name) < NUM_LOW:
            expected[id(p)] = (0.0, 0.004 * (10 if first else 5), True)
            first = False
        else:
            expected[id(p)] = (5e-4, 0.0, False)
    assert got.keys() == expected.keys()
    for key, (l2, sp, has_reference) in expected.items():
        assert got[key] == (pytest.approx(l2), pytest.approx(sp), has_reference)
    assert sum(sp == pytest.approx(0.04) for _, sp, _ in got.values()) == 1
    first_conv = model.features[0].conv.weight
    assert got[id(first_conv)][1] == pytest.approx(0.04)
    assert id(model.last_linear.bias) in got  # the classifier's bias: L2 too


def test_loss_and_precision(spec, built):
    import torch

    from trainer.setup import build_loss, build_precision

    cfg = built[0]
    mixup, criterion = build_loss(cfg, 47)
    assert mixup is None and criterion.label_smoothing == 0.1
    mixup, _ = build_loss(cfg.replace(mixup=0.2), 47)
    assert mixup.label_smoothing == 0.1  # smoothing inside mixup's targets, as there
    with warnings.catch_warnings():  # a scaler made where CUDA is absent warns and disables itself
        warnings.simplefilter("ignore")
        dtype, scaler = build_precision(cfg, torch.device("cuda"))
    assert dtype is torch.float16 and isinstance(scaler, torch.amp.GradScaler)


def test_transforms(built):
    import timm.data
    from timm.data.random_erasing import RandomErasing
    from torchvision import transforms as T

    from trainer.data import build_transform

    cfg, model, _, _ = built
    data_config = timm.data.resolve_data_config({}, model=model)
    assert data_config["mean"] == (0.5, 0.5, 0.5)  # the model's own, which the recipe replaces

    def ops(c, training=True):
        return build_transform(c, data_config, training).transforms

    train = ops(cfg)
    crop = train[0]
    assert type(crop).__name__ == "RandomResizedCropAndInterpolation"
    assert set(crop.interpolation) == {T.InterpolationMode.BILINEAR, T.InterpolationMode.BICUBIC}
    (jitter,) = [t for t in train if isinstance(t, T.ColorJitter)]
    assert jitter.brightness == jitter.contrast == jitter.saturation == pytest.approx((0.6, 1.4))
    (norm,) = [t for t in train if isinstance(t, T.Normalize)]
    assert norm.mean.tolist() == pytest.approx(DTD_MEAN)
    with_aa = ops(cfg.replace(aa="rand-m9-mstd0.5-inc1", reprob=0.5))
    assert not any(isinstance(t, T.ColorJitter) for t in with_aa)  # jitter only without aa
    (erase,) = [t for t in with_aa if isinstance(t, RandomErasing)]
    assert (erase.probability, erase.mode) == (0.5, "pixel")
    evaluation = ops(cfg, training=False)
    assert evaluation[0].interpolation == T.InterpolationMode.BICUBIC  # the model's, 0.875 crop
    (norm,) = [t for t in evaluation if isinstance(t, T.Normalize)]
    assert norm.mean.tolist() == pytest.approx(DTD_MEAN)
