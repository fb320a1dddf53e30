"""The error of a refused setting (number and choice constraints live in the signatures: datamodules.checks)."""

from __future__ import annotations


class ConfigError(ValueError):
    """A setting the command refuses, named in the message; ``ae-lightning`` prints it alone and exits with 2."""


__all__ = ["ConfigError"]
