import math
from functools import partial

import numpy as np
import pytest
import torch

from cifar_lightning.schedules import MultiStepLR, StepLR, WarmupSchedule, lr_factor


def test_linear_is_airbenchs_triangle():
    total = 97  # e.g. 10 epochs of 49,000 images at batch 1024 would be 480
    expected = np.interp(np.arange(total + 1), [0, int(0.23 * total), total], [0.2, 1.0, 0.07])
    got = [lr_factor(step, total, "linear", 0.23, 0.2, 0.07) for step in range(total + 1)]
    assert np.allclose(got, expected, atol=1e-12)


@pytest.mark.parametrize(
    "shape, step, expected",
    [
        # 100 steps, 20 warmup steps, from 0.1 up to 1, then down to 0.
        ("linear", 0, 0.1), ("linear", 10, 0.55), ("linear", 20, 1.0), ("linear", 60, 0.5), ("linear", 100, 0.0),
        ("cosine", 0, 0.1), ("cosine", 10, 0.55), ("cosine", 20, 1.0), ("cosine", 60, 0.5), ("cosine", 100, 0.0),
        ("cosine", 40, 0.5 + 0.5 * math.cos(math.pi / 4)),
        ("one_cycle", 0, 0.1), ("one_cycle", 10, 0.55), ("one_cycle", 5, 0.1 + 0.9 * (1 - math.cos(math.pi / 4)) / 2),
        ("one_cycle", 20, 1.0), ("one_cycle", 60, 0.5), ("one_cycle", 100, 0.0),
    ],
)  # fmt: skip
def test_values_at_given_steps(shape, step, expected):
    assert lr_factor(step, 100, shape, 0.2, 0.1, 0.0) == pytest.approx(expected, abs=1e-12)


def test_no_warmup_starts_at_the_peak():
    assert lr_factor(0, 50, "cosine", 0.0, 0.3, 0.1) == 1.0
    assert lr_factor(50, 50, "cosine", 0.0, 0.3, 0.1) == pytest.approx(0.1)


def test_scheduler_steps_every_group_by_the_factor():
    params = [torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))]
    optimizer = torch.optim.SGD([{"params": params[:1], "lr": 1.0}, {"params": params[1:], "lr": 64.0}], lr=1.0)
    scheduler = WarmupSchedule(optimizer, total_steps=8, shape="linear", warmup=0.25, start_factor=0.2, end_factor=0.0)
    rates = []
    for _ in range(8):
        rates.append([group["lr"] for group in optimizer.param_groups])
        optimizer.step()
        scheduler.step()
    assert [r[0] for r in rates] == pytest.approx([0.2, 0.6, 1.0, 5 / 6, 4 / 6, 3 / 6, 2 / 6, 1 / 6])
    assert [r[1] / r[0] for r in rates] == pytest.approx([64.0] * 8)  # groups keep their ratio
    assert (WarmupSchedule.interval, StepLR.interval, MultiStepLR.interval) == ("step", "epoch", "epoch")


def test_every_schedule_is_built_the_same_way():
    """One calling convention: schedule(optimizer, total_steps=...), which epoch schedules do not need."""
    for schedule in (partial(StepLR, step_size=2), partial(MultiStepLR, milestones=[1]), WarmupSchedule):
        optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
        assert isinstance(schedule(optimizer, total_steps=10), torch.optim.lr_scheduler.LRScheduler)


def test_a_per_step_schedule_needs_a_step_count():
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    with pytest.raises(ValueError, match="trainer.max_epochs or trainer.max_steps to be finite"):
        WarmupSchedule(optimizer, total_steps=None)
