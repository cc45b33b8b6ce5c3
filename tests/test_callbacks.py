"""Early stopping and best-checkpoint restore, with the callbacks exactly as conf/ configures them."""

import lightning as L
import pytest
import torch
from hydra.utils import instantiate
from torch import nn

from cifar_lightning.callbacks import EpochHistory, FreezeParameters, GPUStatsMonitor
from cifar_lightning.config.train import instantiate_entries
from tests.conftest import QUIET, compose_train

# Validation loss per epoch: best at epoch index 1, then no improvement.
SCRIPTED_VAL_LOSS = [1.0, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.1, 1.2, 1.3]


class ScriptedModule(L.LightningModule):
    """A one-weight model whose weight counts epochs and whose val loss follows a script."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(()))

    def training_step(self, batch, batch_idx):
        return self.weight * 0.0

    def on_train_epoch_start(self) -> None:
        with torch.no_grad():
            self.weight.fill_(float(self.current_epoch))

    def validation_step(self, batch, batch_idx):
        self.log("val_loss", SCRIPTED_VAL_LOSS[self.current_epoch])

    def test_step(self, batch, batch_idx):
        self.log("test_weight", self.weight.detach())

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.0)

    def train_dataloader(self):
        return [torch.zeros(1)]

    val_dataloader = test_dataloader = train_dataloader


def test_early_stopping_stops_and_test_uses_the_best_checkpoint(tmp_path):
    cfg = compose_train([*QUIET, "callbacks.early_stopping.patience=3", "callbacks.lr_monitor=null"], tmp_path)
    history = EpochHistory()
    callbacks = [*instantiate_entries(cfg, "callbacks").values(), history]
    trainer = L.Trainer(
        max_epochs=10,
        callbacks=callbacks,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        default_root_dir=tmp_path,
    )
    trainer.fit(ScriptedModule())
    # Best at epoch index 1; patience 3 -> stops after epoch index 4 (5 epochs run).
    assert trainer.current_epoch == 5
    assert trainer.checkpoint_callback.best_model_path == str(tmp_path / "checkpoints" / "best.ckpt")
    assert torch.load(tmp_path / "checkpoints" / "best.ckpt", weights_only=True)["epoch"] == 1
    assert torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)["epoch"] == 4  # the latest epoch
    result = trainer.test(ckpt_path="best", verbose=False)[0]
    assert result["test_weight"] == 1.0  # the weights of the best epoch, not the last (4.0)
    # Restoring the best checkpoint must not cut the record of the epochs after it.
    assert [row["epoch"] for row in history.history] == [1, 2, 3, 4, 5]


def fit_quietly(module: L.LightningModule, tmp_path, max_epochs: int, callbacks: list) -> L.Trainer:
    """Fit on CPU without logger, checkpoints, progress bar or summary."""
    trainer = L.Trainer(
        accelerator="cpu",
        max_epochs=max_epochs,
        callbacks=callbacks,
        logger=False,
        enable_progress_bar=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(module)
    return trainer


def test_epoch_history_records_each_epoch(tmp_path):
    history = EpochHistory()
    fit_quietly(ScriptedModule(), tmp_path, 3, [history])
    assert [row["epoch"] for row in history.history] == [1, 2, 3]
    assert [row["val_loss"] for row in history.history] == pytest.approx(SCRIPTED_VAL_LOSS[:3])
    assert all(row["lr"] == 0.0 for row in history.history)


def test_gpu_stats_monitor_is_idle_on_cpu(tmp_path):
    monitor = instantiate({"_target_": "cifar_lightning.callbacks.GPUStatsMonitor"})
    assert isinstance(monitor, GPUStatsMonitor)
    fit_quietly(ScriptedModule(), tmp_path, 1, [monitor])  # DeviceStatsMonitor would raise here without a logger
    assert monitor.enabled is False


class ScheduledModule(ScriptedModule):
    def configure_optimizers(self):
        optimizer = torch.optim.SGD(self.parameters(), lr=1.0)
        return [optimizer], [torch.optim.lr_scheduler.StepLR(optimizer, step_size=2, gamma=0.1)]


def test_epoch_history_records_the_rate_each_epoch_trained_with(tmp_path):
    history = EpochHistory()
    fit_quietly(ScheduledModule(), tmp_path, 4, [history])
    assert [row["lr"] for row in history.history] == pytest.approx([1.0, 1.0, 0.1, 0.1])


class TwoParameters(L.LightningModule):
    """Trains model.a and model.b towards 1 with plain SGD."""

    def __init__(self) -> None:
        super().__init__()
        self.model = nn.ParameterDict({"a": nn.Parameter(torch.zeros(())), "b": nn.Parameter(torch.zeros(()))})
        self.by_epoch: list[tuple[float, float]] = []

    def training_step(self, batch, batch_idx):
        return (self.model["a"] - 1) ** 2 + (self.model["b"] - 1) ** 2

    def on_train_epoch_end(self) -> None:
        self.by_epoch.append((float(self.model["a"].detach()), float(self.model["b"].detach())))

    def configure_optimizers(self):
        return torch.optim.SGD(self.model.parameters(), lr=0.1, momentum=0.9)

    def train_dataloader(self):
        return torch.utils.data.DataLoader(torch.zeros(4, 1), batch_size=1)


def test_freeze_parameters_stops_training_them_after_n_epochs(tmp_path):
    module = TwoParameters()
    freeze = FreezeParameters(names=["a"], after_epochs=2)
    trainer = L.Trainer(
        max_epochs=4,
        callbacks=[freeze],
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(module)
    a, b = zip(*module.by_epoch)
    assert a[0] != 0.0 and a[1] != a[0]  # trained in the first two epochs
    assert a[3] == a[2] == a[1]  # then untouched, momentum included
    assert b[3] != b[2] != b[1]
    assert freeze.missing(module.model) == [] and FreezeParameters(["c"], 1).missing(module.model) == ["c"]


class RecordLastCheckpointStep(L.Callback):
    """Reads last.ckpt's step after every training batch (checkpoint callbacks run after this one)."""

    def __init__(self, path) -> None:
        self.path, self.steps = path, []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.steps.append(torch.load(self.path, weights_only=True)["global_step"] if self.path.is_file() else None)


class FiveBatchModule(ScriptedModule):
    def train_dataloader(self):
        return torch.zeros(5, 1)  # five batches


def test_last_checkpoint_every_n_train_steps_is_written_mid_epoch(tmp_path):
    cfg = compose_train([*QUIET, "callbacks.model_checkpoint.every_n_train_steps=2"], tmp_path)
    checkpoint = instantiate(cfg.callbacks.model_checkpoint)
    record = RecordLastCheckpointStep(tmp_path / "checkpoints" / "last.ckpt")
    trainer = L.Trainer(
        max_epochs=1,
        limit_train_batches=5,
        callbacks=[checkpoint, record],
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        default_root_dir=tmp_path,
    )
    trainer.fit(FiveBatchModule())
    # After batch k (step k), last.ckpt holds the step of the latest multiple of 2 before it.
    assert record.steps == [None, None, 2, 2, 4]
    assert torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 5  # epoch end
