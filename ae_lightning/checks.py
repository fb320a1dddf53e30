"""Argument checks of the variants that do not declare their constraints in their signatures yet; the number checks
live in :mod:`datamodules.checks` (ae_lightning depends on datamodules, never the reverse)."""

from __future__ import annotations

from collections.abc import Iterable

from datamodules.checks import check_number


def check_numbers(name: str, values: Iterable[object], interval: str, *, integer: bool = False) -> None:
    """:func:`check_number` for every item of ``values``; the message shows the whole list."""
    values = list(values)
    try:
        for value in values:
            check_number(name, value, interval, integer=integer)
    except ValueError as error:
        raise ValueError(
            f"each of {name} must {str(error).split(' must ', 1)[1].rsplit(', got', 1)[0]}, got {values!r}"
        ) from None


def check_single_sample(model: object) -> None:
    """Raise a ValueError if a VAE with an objective of its own (not the IWAE bound) has ``iw_samples`` other than 1."""
    iw_samples = getattr(model, "iw_samples", 1)
    if iw_samples != 1:
        raise ValueError(
            f"{type(model).__name__} trains on its own objective, not on the IWAE bound: iw_samples must be 1, got "
            f"{iw_samples}"
        )


__all__ = ["check_number", "check_numbers", "check_single_sample"]
