"""A non-finite training loss stops the run at that step with a clear error, exit status 3, and a
metrics.json that says `diverged`; in a sweep the other jobs go on and the summary lists it apart."""

import lightning as L
import pytest
import torch

from cifar_lightning import training
from cifar_lightning.ablation import aggregate
from cifar_lightning.callbacks import DivergenceGuard
from cifar_lightning.errors import TrainingDiverged
from cifar_lightning.runs import METRICS_SCHEMA_VERSION, RunDir, read_metrics
from tests.conftest import QUIET
from tests.helpers import only_run_dir, run_entry_point

DIVERGING = [
    "experiment=report_base",
    "optim.lr=50",
    "trainer.max_epochs=2",
    "trainer.limit_train_batches=100",
    "trainer.limit_val_batches=2",
    "trainer.limit_test_batches=2",
]


def test_a_diverging_run_stops_in_its_first_epoch_with_exit_3(data_dir, tmp_path):
    result = run_entry_point("train.py", f"paths.log_dir={tmp_path}", *QUIET, *DIVERGING, f"data.data_dir={data_dir}")
    assert result.returncode == 3, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    (error,) = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert "training diverged" in error and "optim.lr=" in error and "at a learning rate of 50" in error
    run_dir = only_run_dir(tmp_path)
    metrics = read_metrics(RunDir(run_dir))
    assert metrics["status"] == "diverged" and metrics["schema_version"] == METRICS_SCHEMA_VERSION
    step = metrics["divergence"]["step"]
    assert metrics["divergence"]["epoch"] == 1 and 1 <= step < 100  # stopped at that step, inside epoch 1
    assert f"optimizer step {step} (epoch 1)" in error
    assert metrics["test_acc"] is None and metrics["history"] == [] and metrics["epochs_run"] == 0
    assert "training diverged" in (run_dir / "train.log").read_text()


@pytest.mark.slow  # a whole sweep; test_ablation_sweep checks that a failed job does not stop one
def test_a_diverged_job_does_not_stop_the_sweep_and_is_listed_apart(data_dir, tmp_path):
    result = run_entry_point(
        "train.py",
        "-m",
        f"paths.log_dir={tmp_path}",
        *QUIET,
        "+ablation=base",
        "ablation.seeds=1",
        "optim.lr=50,0.001",
        "trainer.max_epochs=1",
        "trainer.limit_train_batches=40",
        "trainer.limit_val_batches=1",
        "trainer.limit_test_batches=1",
        f"data.data_dir={data_dir}",
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    sweep = only_run_dir(tmp_path, kind="multiruns")
    assert read_metrics(RunDir(sweep / "0"))["status"] == "diverged"
    assert read_metrics(RunDir(sweep / "1"))["status"] == "completed"
    table = aggregate(sweep)
    (row,) = table.rows
    assert (row.n, row.n_missing, [run.directory.name for run in row.diverged]) == (1, 0, ["0"])
    markdown = (sweep / "ablation.md").read_text()
    assert "Missing runs: none." in markdown and "Diverged runs (non-finite training loss" in markdown
    assert "seed 0 (job 0/, loss nan at step" in markdown or "seed 0 (job 0/, loss inf at step" in markdown


class PoisonedBatch(L.Callback):
    """Test helper: a NaN pixel in the batch of optimizer step `step` (counted from 1), as bad data or an
    overflow would give: that step's loss is NaN, and its update leaves NaN weights behind."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx: int) -> None:
        if trainer.global_step + 1 == self.step:
            batch[0][0, 0, 0, 0] = float("nan")  # the batch is a copy, normalized: the data set stays as it is


class SeenGuard(DivergenceGuard):
    """DivergenceGuard with its GPU path (deferred check) forced on, noting each step it is shown."""

    def __init__(self) -> None:
        super().__init__(deferred=True)
        self.steps: list[int] = []

    def on_train_batch_end(self, trainer: L.Trainer, *args) -> None:
        self.steps.append(trainer.global_step)
        super().on_train_batch_end(trainer, *args)


@pytest.mark.parametrize(
    "every_n_train_steps, stopped_at, kept_step",
    [
        (13, 25, 13),  # last.ckpt at step 13; the next would be 26: the check every 25 steps stops the run
        (10, 20, 10),  # last.ckpt at steps 10 and 20: the check before saving step 20's refuses it
    ],
)
def test_the_deferred_check_names_the_first_bad_step_and_keeps_no_nan_checkpoint(
    make_cfg, tmp_path, monkeypatch, every_n_train_steps, stopped_at, kept_step
):
    """The GPU's deferred check, forced on the CPU through a real fit: NaN at step 17, stopped by step 25."""
    guards: list[SeenGuard] = []

    def guard() -> SeenGuard:  # train() builds its guard with DivergenceGuard()
        guards.append(SeenGuard())
        return guards[-1]

    monkeypatch.setattr(training, "DivergenceGuard", guard)
    cfg = make_cfg(
        "experiment=report_base",
        "data.batch_size=32",
        "trainer.max_epochs=1",
        "trainer.limit_train_batches=30",
        "trainer.limit_val_batches=1",
        "trainer.limit_test_batches=1",
        f"callbacks.model_checkpoint.every_n_train_steps={every_n_train_steps}",
        f"+callbacks.poison._target_={__name__}.PoisonedBatch",
        "+callbacks.poison.step=17",
    )
    with pytest.raises(TrainingDiverged, match=r"training loss was nan at optimizer step 17 \(epoch 1\)") as info:
        training.train(cfg)

    # Every checkpoint left is finite: the one before the NaN, none after it.
    files = sorted(p for p in (tmp_path / "run" / "checkpoints").rglob("*") if p.is_file())
    assert files, "the run saved no checkpoint before step 17"
    for path in files:
        checkpoint = torch.load(path, weights_only=True)
        for name, value in checkpoint["state_dict"].items():
            assert torch.isfinite(value).all(), f"{path.name} (step {checkpoint['global_step']}): {name} is not finite"
    assert [(p.name, torch.load(p, weights_only=True)["global_step"]) for p in files] == [("last.ckpt", kept_step)]

    (guard,) = guards
    assert guard.steps == list(range(1, stopped_at + 1))  # steps 18.. ran on, unchecked, up to the check
    assert (info.value.step, info.value.epoch) == (17, 1)
    metrics = read_metrics(RunDir(tmp_path / "run"))
    assert metrics["status"] == "diverged" and metrics["divergence"]["step"] == 17
