"""train.py as a user runs it: bad input stops before training with a one-line reason, a
non-zero exit, and earlier runs untouched."""

import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from cifar_lightning.config.data import EVAL_BATCH_SIZE
from cifar_lightning.data import load_cifar10
from cifar_lightning.inference import Classifier
from cifar_lightning.runs import RunDir, read_metrics
from tests.conftest import QUIET
from tests.helpers import assert_refused, only_run_dir, run_entry_point, snapshot

# Downloads through a proxy that refuses every connection: a download fails at once, with or without internet.
NO_NETWORK = {"http_proxy": "http://127.0.0.1:9", "https_proxy": "http://127.0.0.1:9", "no_proxy": ""}


def run_train(*overrides: str, log_dir: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """train.py writing under log_dir, quiet (no progress bar or model table)."""
    return run_entry_point("train.py", f"paths.log_dir={log_dir}", *QUIET, *overrides, env=env)


@pytest.fixture
def log_dir(tmp_path) -> Path:
    """A log folder holding an earlier run, which no failed run may touch."""
    earlier = tmp_path / "logs" / "train" / "runs" / "earlier"
    (earlier / "checkpoints").mkdir(parents=True)
    (earlier / "checkpoints" / "best.ckpt").write_bytes(b"earlier weights")
    (earlier / "metrics.json").write_text('{"test_acc": 0.6}\n')
    return tmp_path / "logs"


def assert_nothing_lost(result: subprocess.CompletedProcess, log_dir: Path, before: dict) -> None:
    """Stopped before training: no epoch ran, the earlier run is as it was, and no new run has a checkpoint."""
    assert "Epoch" not in result.stdout + result.stderr
    assert snapshot(log_dir / "train" / "runs" / "earlier") == before
    new_runs = [p for p in (log_dir / "train" / "runs").iterdir() if p.name != "earlier"]
    assert not any((p / "checkpoints").exists() for p in new_runs)


SLOW = pytest.mark.slow


@pytest.mark.parametrize(
    "override, expected",
    [
        ("model.dropout=1.5", ["invalid `model` config", "dropout must be in [0, 1)"]),
        # One CLI start each (about 10 s): the first runs by default, the others with -m slow.
        pytest.param("optim.lr=-1", ["invalid `optim` config", "optim.lr must be a number >= 0"], marks=SLOW),
        pytest.param(
            "model.batch_norm=some",
            ["invalid `model` config", "batch_norm must be one of none, first, all"],
            marks=SLOW,
        ),
        pytest.param(
            "loss.label_smoothing=-0.1", ["invalid `loss` config", "label_smoothing must be in [0, 1)"], marks=SLOW
        ),
    ],
)
def test_invalid_value_stops_with_a_one_line_reason(override, expected, data_dir, log_dir):
    before = snapshot(log_dir / "train" / "runs" / "earlier")
    result = run_train(override, f"data.data_dir={data_dir}", log_dir=log_dir)
    assert_refused(result, *expected)
    assert_nothing_lost(result, log_dir, before)


@pytest.mark.slow  # one more CLI start: the first error checks run by default
def test_unknown_key_stops(data_dir, log_dir):
    before = snapshot(log_dir / "train" / "runs" / "earlier")
    result = run_train("model.dropot=0.1", f"data.data_dir={data_dir}", log_dir=log_dir)
    assert result.returncode == 1, result.stderr  # Hydra's own exit status for a bad override, as README says
    assert "Traceback" not in result.stderr
    assert "Could not override 'model.dropot'" in result.stderr and "Key 'dropot' is not in struct" in result.stderr
    assert_nothing_lost(result, log_dir, before)


def test_missing_data_folder_names_the_path_and_the_fix(tmp_path, log_dir):
    before = snapshot(log_dir / "train" / "runs" / "earlier")
    missing = tmp_path / "no-data-here"
    result = run_train(f"data.data_dir={missing}", "data.download=false", log_dir=log_dir)
    assert_refused(result, str(missing / "cifar-10-batches-py"), "data.data_dir=")
    assert_nothing_lost(result, log_dir, before)


@pytest.mark.slow  # one more CLI start: the first error checks run by default
def test_corrupt_data_file_names_the_path_and_the_fix(data_dir, tmp_path, log_dir):
    before = snapshot(log_dir / "train" / "runs" / "earlier")
    copy = tmp_path / "data"
    shutil.copytree(data_dir / "cifar-10-batches-py", copy / "cifar-10-batches-py")
    corrupt = copy / "cifar-10-batches-py" / "data_batch_1"
    content = bytearray(corrupt.read_bytes())
    content[123456] ^= 0xFF
    corrupt.write_bytes(bytes(content))
    # download=true (the default): the download fails too (no network, whatever the machine has), and the
    # error says so.
    result = run_train(f"data.data_dir={copy}", log_dir=log_dir, env=NO_NETWORK)
    assert_refused(result, f"{corrupt} is corrupt", "downloading it failed", "data.data_dir=")
    assert_nothing_lost(result, log_dir, before)
    assert corrupt.read_bytes() == bytes(content)  # the user's file is left as it was


def test_a_short_run_succeeds_from_the_command_line(data_dir, tmp_path):
    """The overrides reach the run (one epoch of 5 steps, dropout 0.25, 1 test batch of 1,000 images), and what it
    reports is what it saved: best.ckpt scores metrics.json's test accuracy, which the log states."""
    result = run_train(
        "model.dropout=0.25",
        "trainer.max_epochs=1",
        "trainer.limit_train_batches=5",
        "trainer.limit_val_batches=1",
        "trainer.limit_test_batches=1",
        f"data.data_dir={data_dir}",
        log_dir=tmp_path / "logs",
    )
    assert result.returncode == 0, result.stderr
    run = RunDir(only_run_dir(tmp_path / "logs"))
    assert OmegaConf.load(run.config).model.dropout == 0.25  # not the default (0.0)
    metrics = read_metrics(run)
    assert metrics["status"] == "completed" and metrics["epochs_run"] == 1 and metrics["best_epoch"] == 1
    assert [row["epoch"] for row in metrics["history"]] == [1]
    assert metrics["best_checkpoint"] == str(run.best_checkpoint)
    checkpoint = torch.load(run.best_checkpoint, map_location="cpu", weights_only=True)
    assert (checkpoint["epoch"], checkpoint["global_step"]) == (0, 5)
    assert checkpoint["hyper_parameters"]["run_config"]["model"]["dropout"] == 0.25
    confusion = torch.tensor(metrics["test_confusion"])
    tested = EVAL_BATCH_SIZE  # limit_test_batches=1
    assert confusion.sum() == tested and metrics["test_acc"] == pytest.approx(confusion.trace().item() / tested)
    arrays, classifier = load_cifar10(data_dir), Classifier.load(run.best_checkpoint, device="cpu")
    assert classifier.model.dropout.p == 0.25
    predicted = classifier.predict(arrays.test_images[:tested]).predicted
    assert (predicted == arrays.test_labels[:tested]).float().mean().item() == pytest.approx(metrics["test_acc"])
    assert f"test_acc={metrics['test_acc']:.4f}" in run.log.read_text()
