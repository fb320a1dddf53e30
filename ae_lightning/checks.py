"""Moved to :mod:`datamodules.checks` (ae_lightning depends on datamodules, never the reverse)."""

from datamodules.checks import check_number, check_numbers  # noqa: F401
