"""Averaged weights for any model: an exponential moving average (EMA) or lookahead.

Every `every_n_steps` steps: average <- decay * average + (1 - decay) * live (floating-point state). ema validates,
tests, checkpoints and keeps the average; lookahead also resets the live weights to it (airbench). `ramp_power` > 0
scales the decay by (step / total_steps)^ramp_power. torch's and Lightning's averaging do no lookahead, and the
checkpoint must hold the average under the model's own keys for evaluate.py.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from torch import Tensor, nn


def float_state(model: nn.Module) -> dict[str, Tensor]:
    """The model's floating-point state entries (parameters and float buffers), by name, as live references."""
    return {name: value for name, value in model.state_dict(keep_vars=True).items() if value.is_floating_point()}


@torch.no_grad()
def update_average(average: dict[str, Tensor], live: dict[str, Tensor], decay: float) -> None:
    """average <- decay * average + (1 - decay) * live, in place, for every entry."""
    names = list(average)
    torch._foreach_lerp_([average[n] for n in names], [live[n].detach() for n in names], 1.0 - decay)


@torch.no_grad()
def copy_into(target: dict[str, Tensor], source: dict[str, Tensor]) -> None:
    for name, value in source.items():
        target[name].detach().copy_(value)


class AveragedWeights(L.Callback):
    """EMA or lookahead weights; settings: cifar_lightning/config/train.py (AveragingSettings)."""

    def __init__(self, mode: str = "ema", decay: float = 0.999, every_n_steps: int = 1, ramp_power: float = 0.0):
        self.mode, self.decay, self.every_n_steps, self.ramp_power = mode, float(decay), every_n_steps, ramp_power
        self.average: dict[str, Tensor] | None = None
        self._live_backup: dict[str, Tensor] | None = None
        self._resumed_live: dict[str, Tensor] | None = None
        self._total_steps: int | None = None

    def decay_at(self, step: int, total_steps: int) -> float:
        """The decay used by the update after optimizer step `step` (counted from 1) of `total_steps`."""
        if self.ramp_power == 0:
            return self.decay
        return self.decay * min(step / max(total_steps, 1), 1.0) ** self.ramp_power

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        steps = trainer.estimated_stepping_batches
        self._total_steps = int(steps) if steps != float("inf") else None
        live = float_state(pl_module.model)
        if self._resumed_live is not None:
            # Resuming: the checkpoint's state_dict holds the average; the live weights were kept aside.
            self.average = {name: value.detach().clone() for name, value in live.items()}
            copy_into(live, {name: value.to(live[name].device) for name, value in self._resumed_live.items()})
            self._resumed_live = None
        elif self.average is None:
            self.average = {name: value.detach().clone() for name, value in live.items()}

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        step = trainer.global_step
        if step == 0 or step % self.every_n_steps != 0 or self.average is None:
            return
        total = self._total_steps if self._total_steps is not None else step
        live = float_state(pl_module.model)
        update_average(self.average, live, self.decay_at(step, total))
        if self.mode == "lookahead":
            copy_into(live, self.average)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Training is over: the model keeps the averaged weights (tested when no checkpoint is)."""
        if self.average is not None:
            copy_into(float_state(pl_module.model), self.average)

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.average is None or trainer.sanity_checking:
            return
        live = float_state(pl_module.model)
        self._live_backup = {name: value.detach().clone() for name, value in live.items()}
        copy_into(live, self.average)

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._live_backup is not None:
            copy_into(float_state(pl_module.model), self._live_backup)
            self._live_backup = None

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        if self.average is None:
            return
        # The average under the model's own keys (for evaluate.py); the live weights ride along for a resume.
        state = checkpoint["state_dict"]
        live = {name: state[f"model.{name}"].detach().clone().cpu() for name in self.average}
        state.update({f"model.{name}": value.detach().clone() for name, value in self.average.items()})
        checkpoint.setdefault("averaged_weights", {})["live"] = live

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        if trainer.state.fn == "fit" and "averaged_weights" in checkpoint:
            self._resumed_live = checkpoint["averaged_weights"]["live"]
