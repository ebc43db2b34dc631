"""`python -m trainer` end to end: a real run's summary.json and output, and every bad input.

Bad inputs run `trainer.cli.main(argv)` in-process (a subprocess costs ~5 s of imports); the few real
subprocesses check what only a fresh interpreter shows: the exit code seen by a shell, what
`import trainer` pulls in, and the hub in offline mode.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.trainer.conftest import IMG, MODEL
from tests.trainer.trees import make_imagefolder
from trainer import TrainConfig
from trainer.cli import main

REPO = Path(__file__).resolve().parents[2]


def run_cli(args: list[str], timeout: float = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "trainer", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=timeout,
    )


def one_error_line(stderr: str) -> str:
    assert "Traceback" not in stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("error: ")
    return lines[0]


def target_args(target_dir: Path, source_ckpt: Path) -> list[str]:
    return [
        "--dataset",
        "imagefolder",
        "--data_dir",
        str(target_dir),
        "--model",
        MODEL,
        "--img-size",
        str(IMG),
        "--pretrained-file",
        str(source_ckpt),
        "-b",
        "8",
    ]


def test_cli_run_writes_a_consistent_summary(source_ckpt, tmp_path):
    # 6 classes, 3 new layers and one batch per epoch: val top-1 moves between epochs instead of
    # sitting at 100%, so "best epoch" is a real choice
    data = make_imagefolder(tmp_path, classes=6, per_class=6, with_val=True, val_per_class=3)
    out = tmp_path / "out"
    proc = run_cli(
        [
            *target_args(data, source_ckpt),
            "--epochs",
            "4",
            "--lr",
            "0.02",
            "--new-layers",
            "3",
            "--limit-train-batches",
            "1",
            "--sched",
            "none",
            "--test",
            "--output",
            str(out),
        ]
    )
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr

    progress = [line for line in proc.stdout.splitlines() if line.startswith("epoch ")]
    assert [line.split()[1] for line in progress] == ["1/4", "2/4", "3/4", "4/4"]
    assert all("val_top1" in line for line in progress)
    assert proc.stdout.strip().splitlines()[-1].startswith("done in ")

    summary = json.loads((out / "summary.json").read_text())
    cfg = TrainConfig.from_dict(summary["config"])  # the resolved config round-trips
    assert (cfg.model, cfg.lrs, cfg.epochs, cfg.new_layers, cfg.eval_test) == (
        MODEL,
        (0.02,),
        4,
        3,
        True,
    )
    assert cfg.pretrained_file == str(source_ckpt)
    assert cfg.num_low == TrainConfig().num_low  # unset flags resolve to TrainConfig's defaults

    history = summary["history"]
    assert [h["epoch"] for h in history] == [1, 2, 3, 4]
    tops = [h["val_top1"] for h in history]
    assert summary["best_val_top1"] == max(tops)
    assert summary["best_epoch"] == tops.index(max(tops)) + 1  # the first epoch reaching the best
    assert [h["lrs"] for h in history] == [[0.02] * 3] * 4
    assert summary["stop_reason"] == "completed"
    assert summary["num_classes"] == 6
    test = summary["test"]
    assert set(test) == {"top1", "top5", "loss"}
    assert 0 <= test["top1"] <= test["top5"] <= 100
    assert summary["images_per_s"] > 0 and summary["wall_s"] > 0
    assert (out / "best.pth").is_file() and (out / "last.pth").is_file()


def test_import_trainer_pulls_in_neither_optuna_nor_nbtl_search():
    code = (
        "import sys, trainer; from trainer import TrainConfig; TrainConfig();"
        "print('torch' in sys.modules);"
        "from trainer import fit; import trainer.cli;"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('optuna', 'nbtl_search')))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    # the config alone does not load torch (workers build configs cheaply); the loop neither optuna
    assert proc.stdout.split() == ["False", "[]"]


def test_pretrained_from_the_hub_offline_fails_with_one_line(target_dir):
    proc = run_cli(
        [
            "--dataset",
            "imagefolder",
            "--data_dir",
            str(target_dir),
            "--model",
            MODEL,
            "--img-size",
            str(IMG),
            "--pretrained",
            "--epochs",
            "1",
        ]
    )
    assert proc.returncode == 2
    line = one_error_line(proc.stderr)
    assert "HF_HUB_OFFLINE" in line and "pretrained_file" in line
    assert "epoch" not in proc.stdout


def test_unknown_model_exits_2_from_a_shell(target_dir):
    proc = run_cli(
        ["--dataset", "imagefolder", "--data_dir", str(target_dir), "--model", "no_such_net"]
    )
    assert proc.returncode == 2
    assert "no_such_net" in one_error_line(proc.stderr)


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory) -> dict[str, Path]:
    """Trees without test/ or val images, another model's checkpoint, a file that is not one."""
    import timm
    import torch

    root = tmp_path_factory.mktemp("bad")
    other = root / "resnet10t.pth"
    torch.save(timm.create_model("resnet10t", num_classes=3).state_dict(), other)
    notckpt = root / "notes.pth"
    notckpt.write_text("not a checkpoint\n")
    return {
        "no_test": make_imagefolder(root, classes=2, per_class=2, with_test=False, name="notest"),
        # one image per class: nothing left to carve a val split from
        "no_val": make_imagefolder(root, classes=2, per_class=1, name="noval"),
        "other": other,
        "notckpt": notckpt,
        "missing": root / "nowhere",
    }


BAD = {  # name: (flags replacing/added to a good command line, text the error line must contain)
    "unknown model": (["--model", "no_such_net"], "unknown timm model 'no_such_net'"),
    "unknown dataset": (["--dataset", "cifar7"], "unknown dataset 'cifar7'"),
    "missing data dir": (["--data_dir", "{missing}"], "not found: {missing}"),
    "tree without test/": (["--data_dir", "{no_test}"], "{no_test}/test"),
    "empty val split": (
        ["--data_dir", "{no_val}"],
        "the val split of dataset 'imagefolder' in {no_val}",
    ),
    "new layers 0": (["--new-layers", "0"], "new_layers must be >= 1"),
    "new layers > layer count": (
        ["--new-layers", "7"],
        "between 1 and 6 (the model's layer count), got 7",
    ),
    "num-lowlrs too large": (
        ["--new-layers", "2", "--num-lowlrs", "5"],
        "num_low must be between 0 and 4",
    ),
    "num-lowlrs negative": (["--num-lowlrs", "-1"], "num_low must be >= 0"),
    "2 lrs": (["--lr", "0.1", "0.01"], "lrs takes 1 or 3 values (new, upper, lower), got 2"),
    "4 lrs": (["--lr", "0.1", "0.1", "0.1", "0.1"], "got 4"),
    "2 L2SP rates": (["--L2SP", "--L2SP_rates", "0.1", "0.1"], "l2sp_rates takes 1 or 3 values"),
    "negative L2SP rate": (["--L2SP_rates", "0.1", "-0.1", "0.1"], "l2sp_rates must be >= 0"),
    "2 L2 rates": (["--l2-rates", "0.1", "0.1"], "l2_rates takes 1 or 3 values"),
    "--L2SP without rates or lower part": (
        ["--L2SP"],
        "--L2SP without --L2SP_rates is the original's fixed structure (L2-SP on the lower "
        "part): it needs --num-lowlrs N >= 1",
    ),
    "missing pretrained file": (
        ["--pretrained-file", "{missing}"],
        "pretrained_file not found: {missing}",
    ),
    "another model's checkpoint": (
        ["--pretrained-file", "{other}"],
        "does not fit model 'test_resnet'",
    ),
    "not a checkpoint": (
        ["--pretrained-file", "{notckpt}"],
        "is not a readable state_dict checkpoint",
    ),
    "hub and file both": (["--pretrained"], "either pretrained"),
    "resume file missing": (["--resume", "{missing}"], "resume checkpoint not found"),
    "test predictions without --test": (
        ["--save-test-predictions", "--output", "{missing}"],
        "save_test_predictions needs eval_test",
    ),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_exits_2_with_one_line(case, target_dir, source_ckpt, bad_files, capsys):
    flags, expected = BAD[case]
    fill = {k: str(v) for k, v in bad_files.items()}
    argv = (
        target_args(target_dir, source_ckpt) + ["--epochs", "1"] + [f.format(**fill) for f in flags]
    )
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert expected.format(**fill) in one_error_line(captured.err)
    assert captured.out == ""  # nothing trained
    assert not bad_files["missing"].exists()  # no output folder was created either


def test_diverging_run_exits_1_with_one_line(target_dir, source_ckpt, capsys):
    assert (
        main(
            target_args(target_dir, source_ckpt)
            + ["--lr", "1e6", "--epochs", "2", "--limit-eval-batches", "1"]
        )
        == 1
    )
    line = one_error_line(capsys.readouterr().err)
    assert line.startswith("error: training failed: TrainingDiverged")


def test_seed_augmentation_string_and_random_erasing_train_an_epoch(
    target_dir, source_ckpt, capsys
):
    argv = target_args(target_dir, source_ckpt) + [
        "--epochs",
        "1",
        "--aa",
        "rand-m9-mstd0.5-inc1",
        "--reprob",
        "0.25",
        "--remode",
        "pixel",
    ]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert len([line for line in out.splitlines() if line.startswith("epoch ")]) == 1


def test_paper_flags_and_per_part_l2_parse_into_the_config():
    from trainer.cli import parse_config

    cfg = parse_config(
        [
            "--lr",
            "0.1",
            "0.01",
            "0.001",
            "--L2SP",
            "--L2SP_rates",
            "0",
            "0",
            "0.1",
            "--l2-rates",
            "0",
            "0.01",
            "0",
            "--new-layers",
            "3",
            "--num-lowlrs",
            "2",
        ]
    )
    assert cfg.part_lrs() == (0.1, 0.01, 0.001) and cfg.part_l2sp() == (0.0, 0.0, 0.1)
    assert cfg.part_l2() == (0.0, 0.01, 0.0) and (cfg.new_layers, cfg.num_low) == (3, 2)


def test_l2sp_flag_alone_is_the_original_structure_and_new_flags_parse():
    from trainer.cli import parse_config
    from trainer.config import PAPER_L2SP

    cfg = parse_config(["--L2SP", "--num-lowlrs", "8", "--new-layers", "3"])
    assert {name: getattr(cfg, name) for name in PAPER_L2SP} == PAPER_L2SP
    assert cfg.part_l2sp() == (0.0, 0.0, 0.02) and cfg.part_l2() == (5e-4, 5e-4, 0.0)
    # an explicit flag wins over the structure
    assert parse_config(["--L2SP", "--num-lowlrs", "1", "--reg-bn"]).reg_bn is True
    cfg = parse_config(
        [
            "--lr-new-classifier-only",
            "--wd-bn",
            "--wd-bias",
            "--drop-last",
            "--color-jitter",
            "0.4",
            "--train-interpolation",
            "random",
            "--remode",
            "const",
            "--mean",
            "0.5",
            "--std",
            "0.2",
            "0.3",
            "0.4",
            "--l2sp-first-factor",
            "2",
        ]
    )
    assert (cfg.lr_new_classifier_only, cfg.wd_bn, cfg.wd_bias, cfg.drop_last) == (True,) * 4
    assert (cfg.reg_bn, cfg.reg_bias) == (False, False)  # the L2-SP/L2 switches are apart
    assert (cfg.color_jitter, cfg.train_interpolation, cfg.remode) == (0.4, "random", "const")
    assert (cfg.mean, cfg.std, cfg.l2sp_first_factor) == ((0.5,), (0.2, 0.3, 0.4), 2.0)


def test_the_paper_codes_recipe_trains_end_to_end(target_dir, source_ckpt, tmp_path, capsys):
    out = tmp_path / "out"
    argv = target_args(target_dir, source_ckpt) + [
        *("--epochs", "2", "--new-layers", "3", "--num-lowlrs", "2", "--L2SP"),
        *("--lr", "0.05", "0.01", "0.001", "--lr-new-classifier-only", "--wd-bn", "--wd-bias"),
        *("--warmup-epochs", "1", "--warmup-lr", "1e-4", "--smoothing", "0.1", "--drop-last"),
        *("--color-jitter", "0.4", "--train-interpolation", "random", "--remode", "const"),
        *("--reprob", "0.25", "--mean", "0.5", "--std", "0.25", "--output", str(out)),
    ]
    assert main(argv) == 0, capsys.readouterr().err
    summary = json.loads((out / "summary.json").read_text())
    # per part: the classifier's lr is the new part's; warm-up starts every group at 1e-4
    assert summary["history"][0]["lrs"] == pytest.approx([1e-4] * 3)
    assert summary["history"][1]["lrs"] == pytest.approx([0.05, 0.01, 0.001])
    assert summary["history"][1]["penalty"] > 0  # the --L2SP structure is on
    assert TrainConfig.from_dict(summary["config"]).lr_new_classifier_only
