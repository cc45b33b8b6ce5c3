"""Callbacks of our own; the rest (checkpoints, early stopping, LR monitor, progress bar) are
Lightning's, configured in conf/callbacks/.
"""

from __future__ import annotations

import logging
from typing import Any

import lightning as L
from lightning.pytorch.accelerators import CUDAAccelerator
from lightning.pytorch.callbacks import DeviceStatsMonitor, ModelCheckpoint

log = logging.getLogger(__name__)


class GPUStatsMonitor(DeviceStatsMonitor):
    """Lightning's DeviceStatsMonitor (memory, utilization, ...) when training on a GPU; idle on CPU."""

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self.enabled = isinstance(trainer.accelerator, CUDAAccelerator)
        if self.enabled:
            super().setup(trainer, pl_module, stage)

    def _get_and_log_device_stats(self, trainer: L.Trainer, key: str) -> None:
        if self.enabled:
            super()._get_and_log_device_stats(trainer, key)


class EpochHistory(L.Callback):
    """Records each epoch's logged metrics (train/val loss and accuracy, learning rate) in order.

    The list goes into the run's metrics.json, so curves can be drawn without TensorBoard.
    Epochs are numbered from 1 (the number of epochs completed). Each epoch also gets one log
    line, so runs without a terminal (CI, clusters) show progress in their train.log.
    """

    def __init__(self) -> None:
        self.history: list[dict[str, Any]] = []
        self._lr: float | None = None

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # The rate this epoch trains with: epoch schedulers step before on_train_epoch_end.
        self._lr = float(trainer.optimizers[0].param_groups[0]["lr"]) if trainer.optimizers else None

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Runs after the epoch's validation, so both train_* and val_* are in callback_metrics.
        row: dict[str, Any] = {"epoch": trainer.current_epoch + 1}
        for name, value in sorted(trainer.callback_metrics.items()):
            if name.startswith(("train_", "val_")):
                row[name] = float(value)
        if self._lr is not None:
            row["lr"] = self._lr
        self.history.append(row)
        if trainer.is_global_zero and not trainer.sanity_checking:
            figures = " ".join(f"{k}={v:.4g}" for k, v in row.items() if k != "epoch")
            log.info("epoch %d/%d: %s", row["epoch"], trainer.max_epochs, figures)
    # No state_dict/load_state_dict on purpose: testing the best checkpoint restores callback
    # states, which would cut the history back to the best epoch.


class FreezeParameters(L.Callback):
    """Stop training the named parameters of the model after `after_epochs` epochs.

    airbench trains its whitening layer's bias only for the first epochs (fast94: whiten.bias
    after 3). Frozen parameters get no gradient, so the optimizer leaves them as they are. The
    freeze depends only on the epoch, so a resumed run freezes again.

    names: parameter names inside the model (as in model.named_parameters(), e.g. whiten.bias).
    """

    def __init__(self, names: list[str], after_epochs: int) -> None:
        if not isinstance(after_epochs, int) or isinstance(after_epochs, bool) or after_epochs < 0:
            raise ValueError(f"after_epochs must be a non-negative integer, got {after_epochs!r}")
        if isinstance(names, str) or not all(isinstance(name, str) for name in names):
            raise ValueError(f"names must be a list of parameter names, got {names!r}")
        self.names, self.after_epochs = list(names), after_epochs

    def missing(self, model) -> list[str]:
        """The names that are not parameters of `model` (checked before training)."""
        known = dict(model.named_parameters())
        return [name for name in self.names if name not in known]

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.current_epoch < self.after_epochs:
            return
        parameters = dict(pl_module.model.named_parameters())
        for name in self.names:
            parameters[name].requires_grad_(False)
            parameters[name].grad = None


class BestAndLastCheckpoint(ModelCheckpoint):
    """Lightning's ModelCheckpoint (best.ckpt by the monitored metric), with last.ckpt always the latest state.

    Lightning 2.6 rewrites last.ckpt only when a new top-k checkpoint is saved, so after the best epoch it
    would go stale and a resume would lose the epochs since. Here last.ckpt is also written at the end of
    every training epoch and, with `every_n_train_steps`, every that many optimizer steps, so that a long
    epoch loses little when a run is killed. (The monitored metric is only known after validation, so
    best.ckpt still waits for the end of the epoch.)
    """

    def __init__(self, *args: Any, every_n_train_steps: int | None = None, **kwargs: Any) -> None:
        if every_n_train_steps is not None and (
            not isinstance(every_n_train_steps, int) or isinstance(every_n_train_steps, bool) or every_n_train_steps < 1
        ):
            raise ValueError(
                f"every_n_train_steps must be a positive integer or null, got {every_n_train_steps!r}; "
                f"e.g. callbacks.model_checkpoint.every_n_train_steps=500"
            )
        super().__init__(*args, **kwargs)
        self.last_every_n_train_steps = every_n_train_steps or 0

    def _save_latest(self, trainer: L.Trainer) -> None:
        if self.save_last and not self._should_skip_saving_checkpoint(trainer):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any, **kwargs: Any) -> None:
        super().on_train_batch_end(trainer, pl_module, *args, **kwargs)
        steps = self.last_every_n_train_steps
        if steps and trainer.global_step % steps == 0:
            self._save_latest(trainer)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)  # validation has run: best.ckpt is up to date
        self._save_latest(trainer)
