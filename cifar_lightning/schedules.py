"""Learning-rate schedules, all built as `schedule(optimizer, total_steps=<the fit's optimizer steps>)`, each
saying how often Lightning steps it (`interval`). WarmupSchedule multiplies every group's rate per step, from
`start_factor` up to 1 over the warmup, then down to `end_factor`: linear (straight lines, airbench's triangle),
cosine (a line up, a half cosine down) or one_cycle (half cosines up and down, as torch's OneCycleLR).
"""

from __future__ import annotations

import math

import torch
from torch.optim.lr_scheduler import LambdaLR


def _linear(start: float, end: float, progress: float) -> float:
    return start + (end - start) * progress


def _cosine(start: float, end: float, progress: float) -> float:
    return start + (end - start) * (1.0 - math.cos(math.pi * progress)) / 2.0


def lr_factor(step: int, total_steps: int, shape: str, warmup: float, start_factor: float, end_factor: float) -> float:
    """The multiplier of the base rate at optimizer step `step` (from 0): the warmup takes the first
    floor(warmup * total_steps) steps, the decay reaches `end_factor` at step total_steps (one past the last)."""
    warmup_steps = int(warmup * total_steps)
    step = min(max(step, 0), total_steps)
    if step < warmup_steps:
        rise = _cosine if shape == "one_cycle" else _linear
        return rise(start_factor, 1.0, step / warmup_steps)
    fall = _linear if shape == "linear" else _cosine
    return fall(1.0, end_factor, (step - warmup_steps) / max(total_steps - warmup_steps, 1))


class StepLR(torch.optim.lr_scheduler.StepLR):
    """torch's StepLR (x gamma every step_size epochs); the step count is not needed."""

    interval = "epoch"

    def __init__(self, optimizer: torch.optim.Optimizer, total_steps: int | None, step_size: int, gamma: float = 0.1):
        super().__init__(optimizer, step_size, gamma)


class MultiStepLR(torch.optim.lr_scheduler.MultiStepLR):
    """torch's MultiStepLR (x gamma at each milestone epoch); the step count is not needed."""

    interval = "epoch"

    def __init__(self, optimizer: torch.optim.Optimizer, total_steps: int | None, milestones: list[int], gamma=0.1):
        super().__init__(optimizer, list(milestones), gamma)


class WarmupSchedule(LambdaLR):
    """A per-step warmup and decay over the fit's `total_steps`; settings: config/train.py (WarmupSettings)."""

    interval = "step"

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        total_steps: int | None,
        shape: str = "linear",
        warmup: float = 0.0,
        start_factor: float = 1.0,
        end_factor: float = 0.0,
    ) -> None:
        if total_steps is None:
            raise ValueError("a per-step schedule needs trainer.max_epochs or trainer.max_steps to be finite")
        self.shape, self.warmup, self.start_factor, self.end_factor = shape, warmup, start_factor, end_factor
        self.total_steps = total_steps
        super().__init__(optimizer, self.factor)

    def factor(self, step: int) -> float:
        return lr_factor(step, self.total_steps, self.shape, self.warmup, self.start_factor, self.end_factor)
