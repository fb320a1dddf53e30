import math
from collections.abc import Sequence
from typing import Literal

import pytest

from datamodules.checks import Fraction, PositiveInt, check_arguments, check_number


@pytest.mark.parametrize(
    "value, interval, integer",
    [(0.0, "[0, 1)", False), (0.999, "[0, 1)", False), (1e-9, "(0, inf)", False), (1, "[1, inf)", True),
     (1.0, "(0, 1]", False), (-5, "(-inf, 0]", True)],
)  # fmt: skip
def test_a_value_inside_the_interval_passes(value, interval: str, integer: bool) -> None:
    check_number("x", value, interval, integer=integer)


@pytest.mark.parametrize(
    "value, interval, integer, message",
    [
        (1.0, "[0, 1)", False, r"x must lie in \[0, 1\), got 1.0"),
        (0.0, "(0, inf)", False, "x must be > 0, got 0.0"),
        (-0.5, "[0, inf)", False, "x must be >= 0, got -0.5"),
        (0, "[1, inf)", True, "x must be an integer >= 1, got 0"),
        (2.0, "[1, inf)", True, "x must be an integer >= 1, got 2.0"),  # a float where an int is expected
        (True, "[0, inf)", True, "x must be an integer >= 0, got True"),  # a bool is not a number here
        (math.nan, "[0, inf)", False, "x must be >= 0, got nan"),
        ("3", "[0, inf)", False, "x must be >= 0, got '3'"),
        (1, "(-inf, 0]", True, "x must be an integer <= 0, got 1"),
    ],
)
def test_a_value_outside_the_interval_is_an_error_naming_it(value, interval: str, integer: bool, message: str) -> None:
    with pytest.raises(ValueError, match=f"^{message}$"):
        check_number("x", value, interval, integer=integer)


def test_a_malformed_interval_is_an_error() -> None:
    with pytest.raises(ValueError, match=r"interval must look like '\[0, 1\)' or '\(0, inf\)', got '0..1'"):
        check_number("x", 0.5, "0..1")


def constrained(rate: Fraction = 0.1, sizes: Sequence[PositiveInt] = (1,), mode: Literal["a", "b"] | None = None):
    """A function whose signature declares its constraints."""


@pytest.mark.parametrize(
    "values, message",
    [
        ({"rate": 1.0}, r"rate must lie in \[0, 1\), got 1.0"),
        ({"sizes": [3, 0]}, r"each of sizes must be an integer >= 1, got \[3, 0\]"),
        ({"mode": "c"}, "mode must be one of 'a', 'b', got 'c'"),
    ],
)
def test_a_signature_constraint_is_an_error_naming_the_argument(values: dict, message: str) -> None:
    with pytest.raises(ValueError, match=f"^{message}$"):
        check_arguments(values, constrained)
    check_arguments({"rate": 0.0, "sizes": [2], "mode": None}, constrained)  # the bounds and None are allowed
