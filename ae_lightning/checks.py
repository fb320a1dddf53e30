"""The numeric argument checks: each raises a ValueError naming the argument, the value given and what was expected."""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from numbers import Real

_INTERVAL = re.compile(r"^([\[(])\s*(-?inf|-?[\d.]+)\s*,\s*(-?inf|-?[\d.]+)\s*([\])])$")


def check_number(name: str, value: object, interval: str, *, integer: bool = False) -> None:
    """Raise a ValueError unless ``value`` is a number (an ``int`` if ``integer``; never a bool) in ``interval``.

    Args:
        name: the argument as the user writes it, e.g. ``"beta"``.
        value: the value given.
        interval: the allowed range in interval notation, ``inf`` for no bound: ``"[0, 1)"``, ``"(0, inf)"``.
        integer: whether only integers are allowed.
    """
    low, high, low_closed, high_closed = _parse(interval)
    kind = int if integer else Real
    ok = isinstance(value, kind) and not isinstance(value, bool)
    if ok:
        ok = (low <= value if low_closed else low < value) and (value <= high if high_closed else value < high)
    if not ok:
        raise ValueError(f"{name} must {_describe(interval, integer)}, got {value!r}")


def check_numbers(name: str, values: Iterable[object], interval: str, *, integer: bool = False) -> None:
    """:func:`check_number` for every item of ``values``; the message shows the whole list."""
    values = list(values)
    try:
        for value in values:
            check_number(name, value, interval, integer=integer)
    except ValueError:
        raise ValueError(f"each of {name} must {_describe(interval, integer)}, got {values!r}") from None


def check_single_sample(model: object) -> None:
    """Raise a ValueError if a VAE with an objective of its own (not the IWAE bound) has ``iw_samples`` other than 1."""
    iw_samples = getattr(model, "iw_samples", 1)
    if iw_samples != 1:
        raise ValueError(
            f"{type(model).__name__} trains on its own objective, not on the IWAE bound: iw_samples must be 1, got "
            f"{iw_samples}"
        )


def _parse(interval: str) -> tuple[float, float, bool, bool]:
    match = _INTERVAL.match(interval)
    if match is None:
        raise ValueError(f"interval must look like '[0, 1)' or '(0, inf)', got {interval!r}")
    opening, low, high, closing = match.groups()
    return float(low), float(high), opening == "[", closing == "]"


def _describe(interval: str, integer: bool) -> str:
    low, high, low_closed, high_closed = _parse(interval)
    prefix = "be an integer " if integer else "be "
    if math.isinf(high):
        return f"{prefix}{'>=' if low_closed else '>'} {low:g}"
    if math.isinf(low):
        return f"{prefix}{'<=' if high_closed else '<'} {high:g}"
    return f"be an integer in {interval}" if integer else f"lie in {interval}"
