"""Mean, spread and the Welch test against the formulas written out by hand."""

import math

import numpy as np
import pytest
from scipy import stats

from cifar_lightning.ablation.stats import mean_std, welch_difference
from tests.ablation.jobs import ACCURACIES


def welch_by_hand(a: list[float], b: list[float]) -> tuple[float, float, float]:
    """p-value and 95% CI of mean(a) - mean(b), from the Welch formulas written out."""
    va, vb = np.var(a, ddof=1) / len(a), np.var(b, ddof=1) / len(b)
    se = math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    delta = np.mean(a) - np.mean(b)
    p = 2 * stats.t.sf(abs(delta) / se, df)
    half = stats.t.ppf(0.975, df) * se
    return p, delta - half, delta + half


def test_mean_and_sample_std():
    assert mean_std([0.6, 0.61, 0.62]) == pytest.approx((0.61, 0.01))
    assert mean_std([0.6]) == (pytest.approx(0.6), None)
    assert mean_std([]) == (None, None)


@pytest.mark.parametrize("name", ["base", "no_dropout", "literal_improved"])
def test_welch_p_value_and_ci_match_the_formulas(name):
    diff = welch_difference(ACCURACIES[name], ACCURACIES["improved"])
    p, low, high = welch_by_hand(ACCURACIES[name], ACCURACIES["improved"])
    assert diff.delta == pytest.approx(np.mean(ACCURACIES[name]) - np.mean(ACCURACIES["improved"]))
    assert diff.p_value == pytest.approx(p, rel=1e-6)
    assert diff.ci95 == pytest.approx((low, high), rel=1e-6)


def test_unequal_sizes_and_spreads():
    a, b = [0.61, 0.64, 0.58, 0.66, 0.60], [0.665, 0.67]
    p, low, high = welch_by_hand(a, b)
    diff = welch_difference(a, b)
    assert diff.p_value == pytest.approx(p, rel=1e-6) and diff.ci95 == pytest.approx((low, high), rel=1e-6)


def test_too_few_or_identical_values_give_the_difference_alone():
    assert welch_difference([], [0.6, 0.7]) is None
    one = welch_difference([0.61], [0.66, 0.67])
    assert one.delta == pytest.approx(-0.055) and one.p_value is None and one.ci95 is None
    flat = welch_difference([0.6, 0.6], [0.7, 0.7])  # no spread within either side: no test
    assert flat.delta == pytest.approx(-0.1) and flat.p_value is None and flat.ci95 is None
