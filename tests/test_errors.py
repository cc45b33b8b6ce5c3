"""The validation helpers every config check uses (errors.is_number, is_int, is_fraction): booleans are no
numbers, and each bound is where its docstring says."""

import math

import pytest

from cifar_lightning.errors import is_fraction, is_int, is_number


@pytest.mark.parametrize(
    "value, number, finite",
    [
        (1, True, True),
        (0.5, True, True),
        (math.inf, True, False),
        (math.nan, True, False),
        (True, False, False),
        ("1", False, False),
        (None, False, False),
    ],
)
def test_is_number(value, number, finite):
    assert is_number(value) is number and is_number(value, finite=True) is finite


def test_is_int():
    assert is_int(-3) and is_int(0, 0) and not is_int(0, 1) and is_int(5, 1)
    assert not is_int(True) and not is_int(1.0) and not is_int("2", 0)


@pytest.mark.parametrize(
    "value, default, zero_open_one",
    [
        (0.0, False, True),
        (0.5, True, True),
        (1, True, False),
        (1.5, False, False),
        (-0.1, False, False),
        (math.nan, False, False),
        (True, False, False),
        ("0.5", False, False),
    ],
)
def test_is_fraction(value, default, zero_open_one):
    assert is_fraction(value) is default  # (0, 1]: a share to keep
    assert is_fraction(value, zero=True, one=False) is zero_open_one  # [0, 1): a rate
