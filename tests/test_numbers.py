"""kernelpot._numbers: numbers as the command line prints them."""

import math

import pytest

from kernelpot._numbers import significant


@pytest.mark.parametrize("value, text", [
    (5.0, "5.00"), (4.349, "4.35"), (131.4, "131"), (1234.0, "1230"), (99.96, "100"),
    (0.0123, "0.0123"), (-2.5, "-2.50"), (999.7, "1000"), (0.9996, "1.00"), (0.0, "0"),
    (1e-5, "1e-05"), (math.inf, "inf"),
])
def test_three_significant_digits_without_exponent_or_trailing_dot(value, text):
    assert significant(value) == text


def test_other_digit_counts():
    assert significant(3.14159, 2) == "3.1" and significant(31415.9, 2) == "31000"
