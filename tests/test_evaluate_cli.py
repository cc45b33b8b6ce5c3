"""evaluate.py as a user runs it: a bad checkpoint or a missing one stops with one `error:` line
and exit status 2; a real checkpoint gives a run directory under logs/evaluate/runs/."""

import subprocess
import sys
from pathlib import Path

import torch

from cifar_lightning.models import SeedCNN
from cifar_lightning.training import train
from tests.conftest import QUIET, ROOT, compose_train


def run_evaluate(*overrides: str, log_dir: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "evaluate.py", f"paths.log_dir={log_dir}", "progress=false", *overrides],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip


def assert_refused(result: subprocess.CompletedProcess, *expected: str) -> str:
    """Exit status 2 and exactly one `error:` line holding each expected text, no traceback."""
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr
    for text in expected:
        assert text in errors[0], errors[0]
    return errors[0]


def test_missing_checkpoint(tmp_path):
    missing = tmp_path / "no.ckpt"
    assert_refused(run_evaluate(f"ckpt={missing}", log_dir=tmp_path / "logs"), str(missing), "does not exist")


def test_truncated_checkpoint(tmp_path):
    whole, short = tmp_path / "whole.ckpt", tmp_path / "short.ckpt"
    torch.save({"state_dict": {f"model.{k}": v for k, v in SeedCNN().state_dict().items()}}, whole)
    short.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    assert_refused(run_evaluate(f"ckpt={short}", log_dir=tmp_path / "logs"), str(short), "truncated or corrupt")


def test_neither_ckpt_nor_run_dir(tmp_path):
    assert_refused(run_evaluate(log_dir=tmp_path / "logs"), "neither ckpt nor run_dir", "ckpt=", "run_dir=")


def test_unknown_key_is_refused_by_hydra(tmp_path):
    result = run_evaluate("gradcam.layr=conv2", log_dir=tmp_path / "logs")
    assert result.returncode == 1 and "Key 'layr' is not in struct" in result.stderr, result.stderr


def test_a_real_checkpoint_is_evaluated(tmp_path, data_dir):
    run = tmp_path / "run"
    train(compose_train([f"data.data_dir={data_dir}", *QUIET, "experiment=seed_base", "trainer.max_epochs=1",
                         "trainer.limit_train_batches=5", "trainer.limit_val_batches=1",
                         "trainer.limit_test_batches=1"], run))  # fmt: skip
    result = run_evaluate(f"run_dir={run}", f"data.data_dir={data_dir}", "gradcam.count=2", "ood=none",
                          log_dir=tmp_path / "logs")  # fmt: skip
    assert result.returncode == 0, result.stderr
    (out,) = (tmp_path / "logs" / "evaluate" / "runs").iterdir()
    for name in ("evaluation.json", "confusion_matrix.csv", "report.html", "evaluate.log"):
        assert (out / name).is_file(), name


def test_a_bad_ood_setting_is_refused(tmp_path):
    result = run_evaluate("ckpt=any.ckpt", "ood.detectors=[msp,odin]", log_dir=tmp_path / "logs")
    assert_refused(result, "unknown detector(s) odin", "ood=none")
