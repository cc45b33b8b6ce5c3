"""The helpers that read numbers from JSON records and the search grammar (errors.is_number, is_int): booleans
are no numbers, and each bound is where its docstring says."""

import math

import pytest

from cifar_lightning.errors import is_int, is_number


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
