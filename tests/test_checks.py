import math

import pytest

from datamodules.checks import check_number, check_numbers


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


def test_a_list_error_shows_the_whole_list() -> None:
    check_numbers("dims", [1, 2], "[1, inf)", integer=True)
    with pytest.raises(ValueError, match=r"^each of dims must be an integer >= 1, got \[64, -3\]$"):
        check_numbers("dims", (64, -3), "[1, inf)", integer=True)


def test_a_malformed_interval_is_an_error() -> None:
    with pytest.raises(ValueError, match=r"interval must look like '\[0, 1\)' or '\(0, inf\)', got '0..1'"):
        check_number("x", 0.5, "0..1")
