"""Learning-rate schedules that step once per optimizer step: a warmup, then a decay.

The torch schedulers in conf/scheduler/ (step, multistep) step once per epoch, which is too
coarse for runs of ten epochs; these give the rate of every step. Each is a multiplier of the
optimizer's rate (so per-group rates, e.g. a higher rate for batch-norm parameters, keep their
ratio), from `start_factor` up to 1 over the warmup, then from 1 down to `end_factor`:

- linear: straight lines up and down (airbench's triangle: 0.2 -> 1 at 23% -> 0.07);
- cosine: a straight line up, a half cosine down;
- one_cycle: half cosines up and down (torch's OneCycleLR with cosine annealing).
"""

from __future__ import annotations

import math

import torch

from cifar_lightning.errors import is_fraction, is_number

SHAPES = ("linear", "cosine", "one_cycle")


def _linear(start: float, end: float, progress: float) -> float:
    return start + (end - start) * progress


def _cosine(start: float, end: float, progress: float) -> float:
    return start + (end - start) * (1.0 - math.cos(math.pi * progress)) / 2.0


def lr_factor(step: int, total_steps: int, shape: str, warmup: float, start_factor: float, end_factor: float) -> float:
    """The multiplier of the base learning rate at optimizer step `step` (0 = the first step) of `total_steps`.

    The warmup takes the first floor(warmup * total_steps) steps and ends at 1; the decay reaches
    `end_factor` at step total_steps (one past the last step taken).
    """
    warmup_steps = int(warmup * total_steps)
    step = min(max(step, 0), total_steps)
    if step < warmup_steps:
        rise = _cosine if shape == "one_cycle" else _linear
        return rise(start_factor, 1.0, step / warmup_steps)
    fall = _linear if shape == "linear" else _cosine
    return fall(1.0, end_factor, (step - warmup_steps) / max(total_steps - warmup_steps, 1))


class WarmupSchedule:
    """A per-step schedule (see the module docstring), built by the training module once it knows
    how many optimizer steps the run takes.

    shape: linear | cosine | one_cycle.
    warmup: share of all steps spent warming up, in [0, 1).
    start_factor: multiplier of the rate at the first step, in [0, 1].
    end_factor: multiplier the rate decays to at the end, >= 0.
    """

    #: Tells the training module to step this schedule after every optimizer step.
    interval = "step"

    def __init__(self, shape: str = "linear", warmup: float = 0.0, start_factor: float = 1.0, end_factor: float = 0.0):
        if shape not in SHAPES:
            raise ValueError(f"shape must be one of {', '.join(SHAPES)}, got {shape!r}; e.g. scheduler.shape=cosine")
        if not is_fraction(warmup, zero=True, one=False):
            raise ValueError(f"warmup is the share of steps spent warming up, in [0, 1), got {warmup!r}")
        if not is_number(start_factor) or not 0.0 <= start_factor <= 1.0:
            raise ValueError(f"start_factor must be in [0, 1], got {start_factor!r}")
        if not is_number(end_factor) or end_factor < 0.0:
            raise ValueError(f"end_factor must be >= 0, got {end_factor!r}")
        self.shape, self.warmup = shape, float(warmup)
        self.start_factor, self.end_factor = float(start_factor), float(end_factor)

    def factor(self, step: int, total_steps: int) -> float:
        return lr_factor(step, total_steps, self.shape, self.warmup, self.start_factor, self.end_factor)

    def __call__(self, optimizer: torch.optim.Optimizer, total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
        if not isinstance(total_steps, int) or total_steps < 1:
            raise ValueError(
                f"a per-step schedule needs a finite number of steps, got {total_steps!r}; "
                f"set trainer.max_epochs or trainer.max_steps"
            )
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: self.factor(step, total_steps))

