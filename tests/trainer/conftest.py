"""Fixtures for end-to-end trainer tests: a tiny pre-trained source checkpoint and target trees.

The source model is pre-trained the way a user would (`python -m trainer` on the `shapes` set, here
through `trainer.cli.main` in-process to save a second of imports) for a few batches: enough to move
every weight away from its initialisation, which is all a transfer test needs.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.trainer.trees import make_imagefolder

MODEL = "test_resnet"  # 6 layers (stem, layer1-4, head), ~470k parameters
IMG = 32


@pytest.fixture(autouse=True)
def _one_thread():
    """Two shared cores: one intra-op thread per test process keeps runs fast and repeatable."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def source_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`best.pth` (a plain state_dict) of test_resnet pre-trained on `shapes` (10 classes)."""
    import torch

    from trainer.cli import main

    out = tmp_path_factory.mktemp("source")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        rc = main(
            [
                "--dataset",
                "shapes",
                "--model",
                MODEL,
                "--img-size",
                str(IMG),
                "--epochs",
                "1",
                "-b",
                "32",
                "--lr",
                "0.1",
                "--limit-train-batches",
                "6",
                "--limit-eval-batches",
                "1",
                "--output",
                str(out),
            ]
        )
    finally:
        torch.set_num_threads(threads)
    assert rc == 0
    return out / "best.pth"


@pytest.fixture(scope="session")
def target_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A miniature imagefolder tree: 3 classes, 6 train / 2 val / 2 test images each, 32 px."""
    return make_imagefolder(
        tmp_path_factory.mktemp("trees"),
        classes=3,
        per_class=6,
        with_val=True,
        val_per_class=2,
        test_per_class=2,
    )


@pytest.fixture
def target_cfg(target_dir: Path, source_ckpt: Path):
    """A TrainConfig for a short transfer run onto `target_dir`; override fields with `.replace()`."""
    from trainer import TrainConfig

    return TrainConfig(
        dataset="imagefolder",
        data_dir=str(target_dir),
        model=MODEL,
        img_size=IMG,
        pretrained_file=str(source_ckpt),
        epochs=2,
        batch_size=8,
        lrs=(0.05,),
        decay_epochs=1,
        decay_rate=0.5,
    )
