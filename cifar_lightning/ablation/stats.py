"""Mean and spread over seeds, and the difference to the reference with Welch's t-test and its 95% CI.
Welch's, not Student's: configurations need not vary alike from seed to seed (no batch norm spreads more)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

CONFIDENCE = 0.95


@dataclass(frozen=True)
class Difference:
    """Mean of a configuration minus mean of the reference, as fractions; p and CI need n >= 2 on both sides."""

    delta: float
    p_value: float | None = None
    ci95: tuple[float, float] | None = None


def mean_std(values: Sequence[float]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (ddof=1); the std is None for fewer than two values."""
    if not len(values):
        return None, None
    mean = float(np.mean(values))
    return mean, float(np.std(values, ddof=1)) if len(values) > 1 else None


def welch_difference(values: Sequence[float], reference: Sequence[float]) -> Difference | None:
    """Difference of means, with Welch's p-value and 95% CI where each side has 2+ values and some spread."""
    if not len(values) or not len(reference):
        return None
    delta = float(np.mean(values) - np.mean(reference))
    if len(values) < 2 or len(reference) < 2 or np.var(values) + np.var(reference) == 0:
        return Difference(delta)
    result = stats.ttest_ind(values, reference, equal_var=False)
    interval = result.confidence_interval(CONFIDENCE)
    return Difference(delta, float(result.pvalue), (float(interval.low), float(interval.high)))
