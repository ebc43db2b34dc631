"""`nbtl-search probe`: the scores of a real pre-trained checkpoint stored in the study's database,
the suggestion, the warm start it enqueues, and the inputs it refuses without writing anything."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
import yaml

import analysis
from nbtl_search.cli import main
from nbtl_search.probe.rule import suggest
from nbtl_search.run.worker import WorkerOptions, run_worker
from nbtl_search.store import attrs
from nbtl_search.study.roles import SEARCH
from nbtl_search.study.spec import load_spec
from tests.search import fakes


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """test_resnet briefly pre-trained on `shapes` (10 classes): its source head comes along."""
    from trainer.cli import main as train

    out = tmp_path_factory.mktemp("source")
    assert (
        train(
            [
                "--dataset",
                "shapes",
                "--model",
                "test_resnet",
                "--img-size",
                "32",
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
        == 0
    )
    return out / "best.pth"


def _study(tmp_path: Path, checkpoint: Path | None, **overrides) -> tuple[Path, str]:
    url = f"sqlite:///{tmp_path / 'nbtl.db'}"
    data = {**fakes.spec_dict(**overrides), "storage": url}
    if checkpoint is not None:
        data["model"] = {"name": "test_resnet", "pretrained_file": str(checkpoint)}
    data["dataset"] = {"name": "digits", "img_size": 32, "extra": {"train_per_class": 12}}
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(data))
    return path, url


def test_probe_stores_its_scores_and_suggests(checkpoint, tmp_path, capsys) -> None:
    path, url = _study(tmp_path, checkpoint)
    assert (
        main(
            [
                "probe",
                str(path),
                "--device",
                "cpu",
                "--source-dataset",
                "shapes",
                "--max-images",
                "300",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "suggestion: new_layers" in out and "because" in out
    table = analysis.probe(url, "fake")
    assert list(table["layer"]) == [2, 3, 4, 5, 6]  # test_resnet: 6 layers, the classifier left out
    assert (table["fit"] == table["probe_acc"] - table["random_acc"]).all()
    summary = analysis.probe_summary(url, "fake")
    for score in ("logme", "hscore", "leep", "nce", "domain_similarity", "suggested.new_layers"):
        assert score in summary, score
    assert 0 < summary["domain_similarity"] <= 1
    assert main(["status", str(path)]) == 2  # no trials yet: but the probe is kept
    assert main(["probe", str(path), "--device", "cpu"]) == 0  # a second probe replaces the first
    assert "domain_similarity" not in analysis.probe_summary(url, "fake")


def test_the_suggestion_and_the_default_are_the_first_trials(checkpoint, tmp_path, capsys) -> None:
    space = {
        "new_layers": {"type": "int", "low": 1, "high": 4},
        "lr": {"type": "float", "low": 0.01, "high": 0.3, "log": True},
        "l2sp": {"type": "float", "low": 0.001, "high": 1.0, "log": True, "allow_zero": True},
    }
    path, url = _study(
        tmp_path, checkpoint, search_space=space, probe={"enqueue": True}, budget={"n_trials": 4}
    )
    assert main(["probe", str(path), "--device", "cpu", "--suggest"]) == 0
    warm = capsys.readouterr().out.split("\n# ", 1)[1]
    assert "probe:\n  enqueue: true" in warm and "name: fake-warm" in warm
    assert (
        run_worker(
            load_spec(path), url, SEARCH, WorkerOptions(device="cpu", index=0), fit=fakes.fake_fit
        )
        == 0
    )
    trials = optuna.load_study(study_name="fake", storage=url).trials
    warm = [t for t in trials if attrs.WARM_START in t.user_attrs]
    assert [t.number for t in warm] == list(range(len(warm)))  # the first trials, in order
    labels = " ".join(t.user_attrs[attrs.WARM_START] for t in warm)
    assert warm[0].user_attrs[attrs.WARM_START].startswith("probe suggestion")
    assert "default settings" in labels  # second, or the same trial when the probe suggests it
    default = next(t for t in warm if "default settings" in t.user_attrs[attrs.WARM_START])
    assert default.params["new_layers"] == 1 and default.params["l2sp_on"] is False
    suggested = analysis.probe_summary(url, "fake")
    assert warm[0].params["new_layers"] == int(suggested["suggested.new_layers"])


def test_the_rule_reinitialises_what_fits_worse_than_below_it() -> None:
    layers = [
        {"index": 2, "name": "top", "probe_acc": 40.0, "fit": 0.0},
        {"index": 3, "name": "mid", "probe_acc": 70.0, "fit": 35.0},
        {"index": 4, "name": "low", "probe_acc": 69.0, "fit": 20.0},
    ]
    suggestion, reasons = suggest(layers, n_images=1000, base_lr=0.1)
    # layer 3 is the best and layer 2 fits worse: re-initialise layers 1 and 2; fit >= 30: L2-SP 0.1
    assert suggestion["new_layers"] == 2 and suggestion["l2sp_upper"] == 0.1
    assert suggestion["lr_upper"] == pytest.approx(0.01) and len(reasons) == 2
    flat = [dict(r, probe_acc=50.0, fit=2.0) for r in layers]
    suggestion, _ = suggest(flat, n_images=1000, base_lr=0.1)
    assert suggestion["new_layers"] == 1 and suggestion["l2sp_upper"] == 0.0  # plain fine-tuning


@pytest.mark.parametrize(
    "case, needle",
    [
        ("no pre-trained weights", "has no pre-trained weights"),
        ("leep without a source head", "need(s) the checkpoint's source head"),
        ("fewer images than classes", "more images than classes"),
        ("unknown score", "unknown score(s) bogus"),
        ("source dir without dataset", "--source-data-dir needs --source-dataset"),
        ("a model without a layer partition", "has no layer partition"),
    ],
)
def test_bad_probe_input_is_one_line_and_writes_nothing(
    case, needle, checkpoint, tmp_path, capsys
) -> None:
    import torch

    argv = ["--device", "cpu"]
    ckpt = checkpoint
    if case == "no pre-trained weights":
        ckpt = None
    elif case == "leep without a source head":
        state = {k: v for k, v in torch.load(checkpoint).items() if not k.startswith("fc.")}
        ckpt = tmp_path / "headless.pth"
        torch.save(state, ckpt)
        argv += ["--scores", "leep"]
    elif case == "unknown score":
        argv += ["--scores", "logme,bogus"]
    elif case == "source dir without dataset":
        argv += ["--source-data-dir", str(tmp_path)]
    path, _ = _study(tmp_path, ckpt)
    if case == "a model without a layer partition":  # MetaFormers have no group_matcher
        data = yaml.safe_load(path.read_text())
        data["model"]["name"] = "caformer_s18"
        path.write_text(yaml.safe_dump(data))
    if case == "fewer images than classes":
        data = yaml.safe_load(path.read_text())
        data["dataset"]["extra"] = {"train_per_class": 1}
        path.write_text(yaml.safe_dump(data))
    assert main(["probe", str(path), *argv]) == 2
    err = capsys.readouterr().err
    assert needle in err and err.count("\n") == 1, err
    assert not (tmp_path / "nbtl.db").exists()
