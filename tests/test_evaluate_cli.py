"""evaluate.py as a user runs it: a bad checkpoint or a missing one stops with one `error:` line
and exit status 2; a real checkpoint gives a run directory under logs/evaluate/runs/. The
`python evaluate.py ...` commands README.md and docs/ show run in tests/test_docs_commands_run.py."""

import csv
import json
import subprocess
from pathlib import Path

import pytest
import torch

from cifar_lightning.models import ReportCNN
from tests.helpers import assert_refused, assert_report_shows, only_run_dir, run_entry_point


def run_evaluate(*overrides: str, log_dir: Path) -> subprocess.CompletedProcess:
    """evaluate.py writing under log_dir, without progress bars."""
    return run_entry_point("evaluate.py", f"paths.log_dir={log_dir}", "progress=false", *overrides)


def test_missing_checkpoint(tmp_path):
    missing = tmp_path / "no.ckpt"
    assert_refused(run_evaluate(f"ckpt={missing}", log_dir=tmp_path / "logs"), str(missing), "does not exist")


@pytest.mark.slow  # a CLI process start (10-20 s here); the same check runs in-process in the default suite
def test_truncated_checkpoint(tmp_path):
    whole, short = tmp_path / "whole.ckpt", tmp_path / "short.ckpt"
    torch.save({"state_dict": {f"model.{k}": v for k, v in ReportCNN().state_dict().items()}}, whole)
    short.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    assert_refused(run_evaluate(f"ckpt={short}", log_dir=tmp_path / "logs"), str(short), "truncated or corrupt")


@pytest.mark.slow  # a CLI process start (10-20 s here); the same check runs in-process in the default suite
def test_neither_ckpt_nor_run_dir(tmp_path):
    assert_refused(run_evaluate(log_dir=tmp_path / "logs"), "neither ckpt nor run_dir", "ckpt=", "run_dir=")


@pytest.mark.slow  # one more CLI start: the first error check runs by default
def test_unknown_key_is_refused_by_hydra(tmp_path):
    result = run_evaluate("gradcam.layr=conv2", log_dir=tmp_path / "logs")
    assert result.returncode == 1 and "Key 'layr' is not in struct" in result.stderr, result.stderr


def test_a_real_checkpoint_is_evaluated(tmp_path, tiny_run, data_dir):
    """The shared tiny run through the CLI: the figures it writes are the training run's own test figures (the
    run tested on all 10,000 images), the CSV is the JSON's confusion matrix, and report.html shows them."""
    run, metrics = tiny_run
    result = run_evaluate(
        f"run_dir={run}", f"data.data_dir={data_dir}", "gradcam.count=2", "ood=none", log_dir=tmp_path / "logs"
    )
    assert result.returncode == 0, result.stderr
    out = only_run_dir(tmp_path / "logs", job="evaluate")
    summary = json.loads((out / "evaluation.json").read_text())
    assert summary["checkpoint"] == str(run / "checkpoints" / "best.ckpt") and summary["num_images"] == 10_000
    assert summary["test_acc"] == pytest.approx(metrics["test_acc"], abs=1e-6)
    assert summary["test_loss"] == pytest.approx(metrics["test_loss"], rel=1e-4)
    assert summary["confusion"] == metrics["test_confusion"]
    rows = list(csv.reader((out / "confusion_matrix.csv").open()))
    assert [[int(n) for n in row[1:]] for row in rows[1:]] == summary["confusion"]
    log = (out / "evaluate.log").read_text()
    assert f"test_acc={summary['test_acc']:.4f}" in log
    stages = ["loading", "predicting", "calibration", "figures and Grad-CAM", "report"]  # ood=none: no OOD stage
    assert list(summary["stage_seconds"]) == stages and all(s >= 0 for s in summary["stage_seconds"].values())
    assert "evaluate.py took " in log and "s in all: loading " in log
    pngs = sorted(out.rglob("*.png"))
    # confusion matrix, reliability diagram, two galleries, curves; 2 Grad-CAM overlays of each gallery
    assert len(pngs) == 5 + 4
    assert_report_shows((out / "report.html").read_text(encoding="utf-8"), summary["test_acc"], pngs)


def test_a_bad_ood_setting_is_refused(tmp_path):
    result = run_evaluate("ckpt=any.ckpt", "ood.detectors=[msp,mystery]", log_dir=tmp_path / "logs")
    assert_refused(
        result,
        "invalid `ood` config: ood.detectors must be all, or a list of distinct names among msp, energy",
        "got ['msp', 'mystery']",
        "python evaluate.py ood.detectors=<value>",
    )


@pytest.mark.slow  # one more CLI start: the first error check runs by default
def test_a_boolean_gradcam_explain_is_refused(tmp_path):
    """gradcam.explain=true is a boolean to Hydra, not a class: one error naming the values it takes."""
    result = run_evaluate("ckpt=any.ckpt", "gradcam.explain=true", log_dir=tmp_path / "logs")
    assert_refused(
        result,
        "invalid `gradcam` config: gradcam.explain must be one of predicted, label, got True",
        "as booleans",
        "python evaluate.py gradcam.explain=<value>",
    )


def test_offline_without_the_ood_sets_nothing_is_written(tmp_path, tiny_run, data_dir):
    """The issue's case: only CIFAR-10 on the machine, no download. One error, and no evaluation.json, figures
    or gradcam/ in the run directory (Hydra's own .hydra/ and evaluate.log are all it holds)."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "cifar-10-batches-py").symlink_to(data_dir / "cifar-10-batches-py", target_is_directory=True)
    result = run_evaluate(
        f"run_dir={tiny_run[0]}", f"data.data_dir={data}", "data.download=false", log_dir=tmp_path / "logs"
    )
    out = only_run_dir(tmp_path / "logs", job="evaluate")
    assert sorted(path.name for path in out.iterdir()) == [".hydra", "evaluate.log"]
    assert_refused(
        result,
        f"{data / 'ood' / 'cifar100_test.npz'} does not exist",
        "fashion_mnist_test.npz",
        "ood=none",
        "data.download=true",
    )
