"""The probe's forward pass: test_resnet pre-trained on `shapes` (the `source_ckpt` fixture), probed
on the built-in `digits` target (5 classes, 10 training images each)."""

from __future__ import annotations

import hashlib
import random
from pathlib import Path

import numpy as np
import pytest
import timm
import timm.data
import torch

from trainer import TrainConfig
from trainer.config import InputError
from trainer.data import TransformedDataset, build_splits, build_transform
from trainer.layers import layer_partition
from trainer.model import create_model
from trainer.probe import extract_features, probe_features

MODEL, IMG = "test_resnet", 32
DIMS = {"head": 5, "layer4": 96, "layer3": 192, "layer2": 48, "layer1": 32, "stem": 32}


@pytest.fixture
def cfg(source_ckpt: Path) -> TrainConfig:
    return TrainConfig(
        dataset="digits",
        model=MODEL,
        img_size=IMG,
        pretrained_file=str(source_ckpt),
        batch_size=16,
        seed=7,
    )


def train_images(cfg: TrainConfig, model: torch.nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """The training split through the evaluation transform, as one batch."""
    data_config = timm.data.resolve_data_config({"input_size": (3, IMG, IMG)}, model=model)
    dataset = TransformedDataset(
        build_splits(cfg).train, build_transform(cfg, data_config, training=False)
    )
    images, labels = zip(*(dataset[i] for i in range(len(dataset))))
    return torch.stack(images), torch.as_tensor(labels)


def pretrained_model(cfg: TrainConfig, num_classes: int = 5) -> torch.nn.Module:
    """The model a run builds before re-initialisation (create_model right after seeding)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        return create_model(cfg, num_classes).eval()


def test_one_feature_matrix_per_layer(cfg: TrainConfig) -> None:
    probe = probe_features(cfg)
    partition = layer_partition(pretrained_model(cfg))
    assert [(layer.index, layer.name) for layer in probe.layers] == [
        (p.index, p.name) for p in partition
    ]
    assert probe.labels.tolist() == list(build_splits(cfg).train.labels)
    assert probe.num_classes == 5 and len(probe.labels) == 50
    for layer in probe.layers:
        assert layer.features.shape == (50, DIMS[layer.name]) and layer.features.dtype == np.float32
        assert np.isfinite(layer.features).all()
    assert probe.layer(2).name == "layer4"
    assert probe.seconds > 0


def test_features_equal_a_direct_forward_pass(cfg: TrainConfig, source_ckpt: Path) -> None:
    probe = probe_features(cfg)
    model = pretrained_model(cfg)
    x, labels = train_images(cfg, model)
    assert probe.labels.tolist() == labels.tolist()
    with torch.no_grad():
        logits = model(x)
        stem = model.maxpool(model.act1(model.bn1(model.conv1(x))))  # what the stem hands to layer1
        l1 = model.layer1(stem)
        l2 = model.layer2(l1)
        l3 = model.layer3(l2)
        l4 = model.layer4(l3)
        source = torch.load(source_ckpt, map_location="cpu")
        source_logits = l4.mean(dim=(2, 3)) @ source["fc.weight"].T + source["fc.bias"]
    expected = {
        1: logits,
        2: l4.mean(dim=(2, 3)),
        3: l3.mean(dim=(2, 3)),
        4: l2.mean(dim=(2, 3)),
        5: l1.mean(dim=(2, 3)),
        6: stem.mean(dim=(2, 3)),
    }
    for index, tensor in expected.items():
        np.testing.assert_allclose(
            probe.layer(index).features, tensor.numpy(), rtol=1e-5, atol=1e-5
        )
    # the source head of the checkpoint: 10 shape classes, a softmax per image
    assert probe.source_probs is not None and probe.source_probs.shape == (50, 10)
    np.testing.assert_allclose(probe.source_probs.sum(axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(
        probe.source_probs, torch.softmax(source_logits, 1).numpy(), atol=1e-6
    )
    assert "10 classes" in probe.source_head


def test_probe_sees_the_runs_pretrained_model_and_changes_nothing(
    cfg: TrainConfig, source_ckpt: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from trainer.setup import build_run

    def noisy_build_splits(c):  # like a loader whose first import draws random numbers
        random.random(), np.random.rand(), torch.rand(1)
        return build_splits(c)

    monkeypatch.setattr("trainer.probe.build_splits", noisy_build_splits)
    digest = hashlib.sha256(source_ckpt.read_bytes()).hexdigest()
    rng = torch.get_rng_state(), random.getstate(), np.random.get_state()[1].copy()
    probe = probe_features(cfg)
    assert hashlib.sha256(source_ckpt.read_bytes()).hexdigest() == digest
    # the caller's random streams are untouched
    assert torch.equal(torch.get_rng_state(), rng[0]) and random.getstate() == rng[1]
    assert np.array_equal(np.random.get_state()[1], rng[2])
    assert np.array_equal(
        probe_features(cfg).layer(1).features, probe.layer(1).features
    )  # repeatable

    # a run with new_layers=1 keeps every layer below the classifier as pre-trained: same features
    run = build_run(cfg.replace(new_layers=1))
    run.model.eval()
    x, _ = train_images(cfg, run.model)
    with torch.no_grad():
        pre_logits = run.model.forward_head(run.model.forward_features(x), pre_logits=True)
    np.testing.assert_allclose(probe.layer(2).features, pre_logits.numpy(), rtol=1e-5, atol=1e-5)


def test_extract_features_leaves_the_model_as_it_was(cfg: TrainConfig) -> None:
    model = pretrained_model(cfg).train()  # BatchNorm in training mode would update its statistics
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x, labels = train_images(cfg, model)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, labels), batch_size=16)
    feats, got_labels, probs = extract_features(model, layer_partition(model), loader)
    assert model.training
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert len(feats) == 6 and probs is None and got_labels.tolist() == labels.tolist()
    # batches of 16 give the rows of one big batch (eval-mode BatchNorm: no batch statistics)
    with torch.no_grad():
        np.testing.assert_allclose(feats[0], model.eval()(x).numpy(), rtol=1e-5, atol=1e-5)


def test_no_source_head(cfg: TrainConfig, source_ckpt: Path, tmp_path: Path) -> None:
    state = torch.load(source_ckpt, map_location="cpu")
    torch.save(
        {k: v for k, v in state.items() if not k.startswith("fc.")}, tmp_path / "headless.pth"
    )
    probe = probe_features(cfg.replace(pretrained_file=str(tmp_path / "headless.pth")))
    assert probe.source_probs is None and "holds no classifier tensors (fc.*)" in probe.source_head
    assert len(probe.layers) == 6
    scratch = probe_features(cfg.replace(pretrained_file=None), max_images=10)
    assert scratch.source_probs is None and "no pre-trained weights" in scratch.source_head


def test_hub_weights_give_the_default_head(
    cfg: TrainConfig, source_ckpt: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """timm hub weights, faked offline by the checkpoint: the model timm creates with its default
    num_classes (here 10) is the source head, and everything equals the pretrained_file probe."""
    real = timm.create_model
    state = torch.load(source_ckpt, map_location="cpu")

    def fake_create_model(name, pretrained=False, num_classes=None, **kwargs):
        model = real(name, num_classes=10 if num_classes is None else num_classes, **kwargs)
        if pretrained:
            keep = {
                k: v
                for k, v in state.items()
                if num_classes in (None, 10) or not k.startswith("fc.")
            }
            model.load_state_dict(keep, strict=False)
        return model

    monkeypatch.setattr(timm, "create_model", fake_create_model)
    monkeypatch.setattr("trainer.model._check_hub_reachable", lambda name: None)
    hub = probe_features(cfg.replace(pretrained_file=None, pretrained=True))
    monkeypatch.setattr(timm, "create_model", real)
    from_file = probe_features(cfg)
    assert "timm hub" in hub.source_head and "10 classes" in hub.source_head
    np.testing.assert_array_equal(hub.source_probs, from_file.source_probs)
    for a, b in zip(hub.layers, from_file.layers):
        np.testing.assert_array_equal(a.features, b.features)


def test_max_images_takes_a_class_balanced_subset(cfg: TrainConfig) -> None:
    full = probe_features(cfg)
    part = probe_features(cfg, max_images=12)
    assert np.bincount(part.labels).tolist() == [3, 3, 2, 2, 2]
    # the subset keeps dataset order: its rows are rows of the full probe (up to the rounding of
    # another batch composition)
    full_rows = full.layer(2).features
    rows = [int(np.abs(full_rows - r).max(axis=1).argmin()) for r in part.layer(2).features]
    np.testing.assert_allclose(full_rows[rows], part.layer(2).features, rtol=1e-5, atol=1e-5)
    assert rows == sorted(rows) and full.labels[rows].tolist() == part.labels.tolist()


def test_bad_input(cfg: TrainConfig) -> None:
    with pytest.raises(InputError, match="max_images must be >= 1"):
        probe_features(cfg, max_images=0)
    with pytest.raises(InputError, match="unknown dataset"):
        probe_features(cfg.replace(dataset="nope"))
    with pytest.raises(InputError, match="pretrained_file not found"):
        probe_features(cfg.replace(pretrained_file="/nonexistent/x.pth"))
