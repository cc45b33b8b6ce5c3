"""Callbacks of our own; the rest are Lightning's, configured in conf/callbacks/."""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Mapping
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.accelerators import CUDAAccelerator
from lightning.pytorch.callbacks import DeviceStatsMonitor, EarlyStopping, ModelCheckpoint
from torch import Tensor

from cifar_lightning.config.train import config_errors
from cifar_lightning.errors import TrainingDiverged

log = logging.getLogger(__name__)


class GPUStatsMonitor(DeviceStatsMonitor):
    """Lightning's DeviceStatsMonitor (memory, utilization, ...) when training on a GPU; idle on CPU."""

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self.enabled = isinstance(trainer.accelerator, CUDAAccelerator)
        if self.enabled:
            super().setup(trainer, pl_module, stage)

    # Private, and kept: every one of DeviceStatsMonitor's six batch hooks calls it, and it has no public switch.
    def _get_and_log_device_stats(self, trainer: L.Trainer, key: str) -> None:
        if self.enabled:
            super()._get_and_log_device_stats(trainer, key)


class EpochHistory(L.Callback):
    """Each epoch's logged metrics and learning rate (epochs from 1) for metrics.json, and one log line per epoch."""

    def __init__(self) -> None:
        self.history: list[dict[str, Any]] = []
        self._lr: float | None = None
        self._stage: str | None = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._stage = stage

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

    # The history travels in checkpoints for a resume; only a fit takes it back (testing the best checkpoint
    # would cut it back to the best epoch).
    def state_dict(self) -> dict[str, Any]:
        return {"history": [dict(row) for row in self.history], "lr": self._lr}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if self._stage != "fit":
            return
        self.history = [dict(row) for row in state_dict.get("history", [])]
        # A mid-epoch resume skips on_train_epoch_start: keep the rate the epoch started with.
        self._lr = state_dict.get("lr")


class FreezeParameters(L.Callback):
    """Stop training the named parameters of the model (e.g. airbench's whiten.bias) after `after_epochs` epochs."""

    def __init__(self, names: list[str], after_epochs: int) -> None:
        self.names, self.after_epochs = list(names), after_epochs

    def missing(self, model) -> list[str]:
        """The names that are not parameters of `model` (checked before training)."""
        known = dict(model.named_parameters())
        return [name for name in self.names if name not in known]

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # A fit resumed in the middle of an epoch does not call on_train_epoch_start for that epoch.
        self.on_train_epoch_start(trainer, pl_module)

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.current_epoch < self.after_epochs:
            return
        parameters = dict(pl_module.model.named_parameters())
        for name in self.names:
            parameters[name].requires_grad_(False)
            parameters[name].grad = None


class RunCheckpoint(ModelCheckpoint):
    """Lightning's ModelCheckpoint (best.ckpt), with last.ckpt written at every training epoch's end and, with
    every_n_train_steps=n, every n-th step, the loggers flushed first: Lightning writes it only when best.ckpt
    improves, so a killed run would resume from long ago."""

    def __init__(self, *args: Any, save_last: bool = True, every_n_train_steps: int = 0, **kwargs: Any) -> None:
        super().__init__(*args, save_last=False, **kwargs)  # Lightning's own last.ckpt: never
        self.keep_last, self.last_every_n_train_steps = save_last, every_n_train_steps
        self._latest_step: int | None = None

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """As ModelCheckpoint, with the paths moved along when the run directory was moved (ModelCheckpoint
        would drop the best score)."""
        old, new = state_dict.get("dirpath"), self.dirpath
        if isinstance(old, str) and new is not None and old != str(new):

            def moved(path: Any) -> Any:
                return str(new) + path[len(old) :] if isinstance(path, str) and path.startswith(old) else path

            state_dict = {key: moved(value) for key, value in state_dict.items()}
            state_dict["best_k_models"] = {moved(k): v for k, v in (state_dict.get("best_k_models") or {}).items()}
        super().load_state_dict(state_dict)

    @staticmethod
    def flush_loggers(trainer: L.Trainer) -> None:
        for logger in trainer.loggers:
            logger.save()
            experiment = getattr(logger, "experiment", None)
            if hasattr(experiment, "flush"):
                experiment.flush()

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # The previous epoch's training figures are logged after its checkpoint: write them out now.
        self.flush_loggers(trainer)

    def save_latest(self, trainer: L.Trainer) -> None:
        """Write last.ckpt now (skipped outside fitting, in sanity checks and in fast_dev_run)."""
        if not self.keep_last or trainer.fast_dev_run or trainer.sanity_checking or trainer.state.fn != "fit":
            return
        self.flush_loggers(trainer)
        # Set before saving: the path is part of the callback's state inside the checkpoint.
        self.last_model_path = self.format_checkpoint_name({}, self.CHECKPOINT_NAME_LAST)
        trainer.save_checkpoint(self.last_model_path, self.save_weights_only)
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.after_save_checkpoint(self)
        self._latest_step = trainer.global_step

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        n = self.last_every_n_train_steps
        step = trainer.global_step
        # The epoch's last batch is left to on_train_epoch_end, after validation.
        if n and step % n == 0 and step != self._latest_step and batch_idx + 1 < trainer.num_training_batches:
            self.save_latest(trainer)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        self.save_latest(trainer)


def _numpy_state() -> dict[str, Any]:
    name, keys, position, has_gauss, cached = np.random.get_state()
    # As tensors and numbers, so that checkpoints stay loadable with torch.load(weights_only=True).
    state = {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "position": int(position)}
    return {**state, "has_gauss": int(has_gauss), "cached_gaussian": float(cached)}


def _set_numpy_state(state: dict[str, Any]) -> None:
    keys = state["keys"].numpy().astype(np.uint32)
    np.random.set_state((state["name"], keys, state["position"], state["has_gauss"], state["cached_gaussian"]))


class ResumeState(L.Callback):
    """Saves what Lightning does not, so that a resumed fit continues exactly: the random generators' states
    (restored when training starts, after the initial weights were drawn) and the training time so far."""

    def __init__(self) -> None:
        self._stage: str | None = None
        self._pending: dict[str, Any] | None = None
        self.previous_seconds = 0.0
        self._started: float | None = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._stage = stage

    def state_dict(self) -> dict[str, Any]:
        state = {"python": random.getstate(), "numpy": _numpy_state(), "torch": torch.get_rng_state()}
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["cuda"] = torch.cuda.get_rng_state_all()
        running = time.perf_counter() - self._started if self._started is not None else 0.0
        return {"rng": state, "train_seconds": self.previous_seconds + running}  # over all the run's processes

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if self._stage == "fit":  # not when testing a checkpoint after fit
            self._pending = state_dict

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._pending is not None:
            rng = self._pending["rng"]
            random.setstate(rng["python"])
            _set_numpy_state(rng["numpy"])
            torch.set_rng_state(rng["torch"])
            if "cuda" in rng and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(rng["cuda"])
            self.previous_seconds = float(self._pending.get("train_seconds", 0.0))
            self._pending = None
        self._started = time.perf_counter()


class DivergenceGuard(L.Callback):
    """Stops training at the first non-finite training loss, with an error naming the step and the fix.

    Deferred (default: on a GPU), the first bad step is kept on the device and read every `check_every_n_steps`
    steps, at each epoch end and before every checkpoint, so the host never waits for a step.
    """

    def __init__(self, check_every_n_steps: int = 25, deferred: bool | None = None) -> None:
        self.check_every_n_steps, self.deferred = check_every_n_steps, deferred
        self._first: dict[str, Tensor] | None = None

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, *args: Any) -> None:
        loss = outputs.get("loss") if isinstance(outputs, Mapping) else outputs
        if not isinstance(loss, Tensor):
            return
        loss = loss.detach()
        step, epoch = trainer.global_step, trainer.current_epoch + 1
        deferred = self.deferred if self.deferred is not None else loss.device.type != "cpu"
        if not deferred:  # read on the host now
            value = float(loss)
            if not math.isfinite(value):
                self._raise(trainer, step, epoch, value)
            return
        if self._first is None or self._first["step"].device != loss.device:
            empty = {"step": (-1, torch.long), "epoch": (-1, torch.long), "loss": (0.0, torch.float32)}
            self._first = {k: torch.full((), v, dtype=t, device=loss.device) for k, (v, t) in empty.items()}
        new = ~torch.isfinite(loss) & (self._first["step"] < 0)
        now = {"step": step, "epoch": epoch, "loss": loss.float()}
        self._first = {key: torch.where(new, now[key], value) for key, value in self._first.items()}
        if step % self.check_every_n_steps == 0:
            self.check(trainer)

    def check(self, trainer: L.Trainer) -> None:
        """Read the device-side record (one host sync); raise if a step was non-finite."""
        if self._first is not None and (step := int(self._first["step"])) >= 0:
            self._raise(trainer, step, int(self._first["epoch"]), float(self._first["loss"]))

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.check(trainer)

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        self.check(trainer)

    def _raise(self, trainer: L.Trainer, step: int, epoch: int, loss: float) -> None:
        rate = trainer.optimizers[0].param_groups[0]["lr"] if trainer.optimizers else None
        at_rate = f" at a learning rate of {rate:g}" if rate is not None else ""
        raise TrainingDiverged(
            f"training diverged: the training loss was {loss} at optimizer step {step} (epoch {epoch}){at_rate}, "
            f"so the run stopped there and its metrics.json says status: diverged. Fix: lower the learning rate "
            f"(e.g. optim.lr=<a tenth of it>), or warm it up (scheduler=warmup_linear), or clip gradients "
            f"(trainer.gradient_clip_val=1.0).",
            step=step,
            epoch=epoch,
            loss=loss,
        )


def check_callbacks(callbacks: dict[str, Any], has_validation: bool, trial: bool, model: torch.nn.Module) -> None:
    """The checks that need built callbacks: what waits for a validation metric, the parameters frozen by name."""
    needs = []
    for name, c in callbacks.items():
        if isinstance(c, (ModelCheckpoint, EarlyStopping)) and str(c.monitor or "").startswith("val_"):
            needs.append(f"callbacks.{name} (monitor: {c.monitor})")
        elif isinstance(c, ModelCheckpoint) and c.save_top_k != 0:
            needs.append(f"callbacks.{name} (save_top_k: {c.save_top_k}, a best.ckpt by validation loss)")
    needs += ["the hyperparameter search (its objective is a validation metric)"] if trial else []
    with config_errors("data"):
        if needs and not has_validation:
            raise ValueError(
                f"data.val_fraction=0 holds no validation split, but {' and '.join(needs)} need one. Hold some "
                f"images out (data.val_fraction=0.1), or drop what needs them (callbacks.early_stopping=null "
                f"callbacks.model_checkpoint.monitor=null callbacks.model_checkpoint.save_top_k=0: the final "
                f"weights are then tested and kept as last.ckpt)"
            )
    for callback in callbacks.values():
        with config_errors("callbacks"):
            if isinstance(callback, FreezeParameters) and (missing := callback.missing(model)):
                names = list(dict(model.named_parameters()))[:4]
                raise ValueError(
                    f"FreezeParameters names {', '.join(missing)}, which the model ({type(model).__name__}) "
                    f"does not have; its parameters include {', '.join(names)}"
                )
