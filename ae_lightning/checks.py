"""Moved to :mod:`datamodules.checks` (ae_lightning depends on datamodules, never the reverse)."""

from datamodules.checks import check_number  # noqa: F401  (for training/fast.py until it imports it from there)
