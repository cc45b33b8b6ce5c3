"""A non-finite training loss stops the run at that step with a clear error, exit status 3, and a
metrics.json that says `diverged`; in a sweep the other jobs go on and the summary lists it apart."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cifar_lightning.ablation import aggregate
from cifar_lightning.callbacks import DivergenceGuard
from cifar_lightning.errors import TrainingDiverged
from cifar_lightning.runs import METRICS_SCHEMA_VERSION, RunDir, read_metrics
from tests.conftest import QUIET, ROOT

DIVERGING = ["experiment=seed_base", "optim.lr=50", "trainer.max_epochs=2", "trainer.limit_train_batches=100",
             "trainer.limit_val_batches=2", "trainer.limit_test_batches=2"]  # fmt: skip


def train_cli(*overrides: str, log_dir: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "train.py", f"paths.log_dir={log_dir}", *QUIET, *overrides],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip


def test_a_diverging_run_stops_in_its_first_epoch_with_exit_3(data_dir, tmp_path):
    result = train_cli(*DIVERGING, f"data.data_dir={data_dir}", log_dir=tmp_path)
    assert result.returncode == 3, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    (error,) = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert "training diverged" in error and "optim.lr=" in error and "at a learning rate of 50" in error
    (run_dir,) = (tmp_path / "train" / "runs").iterdir()
    metrics = read_metrics(RunDir(run_dir))
    assert metrics["status"] == "diverged" and metrics["schema_version"] == METRICS_SCHEMA_VERSION
    step = metrics["divergence"]["step"]
    assert metrics["divergence"]["epoch"] == 1 and 1 <= step < 100  # stopped at that step, inside epoch 1
    assert f"optimizer step {step} (epoch 1)" in error
    assert metrics["test_acc"] is None and metrics["history"] == [] and metrics["epochs_run"] == 0
    assert "training diverged" in (run_dir / "train.log").read_text()


@pytest.mark.slow  # a whole sweep; test_ablation_sweep checks that a failed job does not stop one
def test_a_diverged_job_does_not_stop_the_sweep_and_is_listed_apart(data_dir, tmp_path):
    result = subprocess.run(
        [sys.executable, "train.py", "-m", f"paths.log_dir={tmp_path}", *QUIET, "+ablation=base", "ablation.seeds=1",
         "optim.lr=50,0.001", "trainer.max_epochs=1", "trainer.limit_train_batches=40", "trainer.limit_val_batches=1",
         "trainer.limit_test_batches=1", f"data.data_dir={data_dir}"],
        cwd=ROOT, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    (sweep,) = (tmp_path / "train" / "multiruns").iterdir()
    assert read_metrics(RunDir(sweep / "0"))["status"] == "diverged"
    assert read_metrics(RunDir(sweep / "1"))["status"] == "completed"
    table = aggregate(sweep)
    (row,) = table.rows
    assert (row.n, row.n_missing, [run.directory.name for run in row.diverged]) == (1, 0, ["0"])
    markdown = (sweep / "ablation.md").read_text()
    assert "Missing runs: none." in markdown and "Diverged runs (non-finite training loss" in markdown
    assert "seed 0 (job 0/, loss nan at step" in markdown or "seed 0 (job 0/, loss inf at step" in markdown


class _Trainer:
    """The two things DivergenceGuard reads from a trainer."""

    def __init__(self, step: int) -> None:
        self.global_step, self.current_epoch = step, 0
        self.optimizers = [torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.5)]


def test_the_guard_names_the_first_bad_step():
    guard = DivergenceGuard()
    guard.on_train_batch_end(_Trainer(1), None, {"loss": torch.tensor(2.3)}, None, 0)
    with pytest.raises(TrainingDiverged, match=r"was inf at optimizer step 2 \(epoch 1\) at a learning rate of 0.5"):
        guard.on_train_batch_end(_Trainer(2), None, {"loss": torch.tensor(float("inf"))}, None, 1)
