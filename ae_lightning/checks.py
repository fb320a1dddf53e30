"""Checks that no signature type can state: constraints between a variant's arguments and its base's. The number
and choice constraints live in the signatures (:mod:`datamodules.checks`)."""

from __future__ import annotations


class ConfigError(ValueError):
    """A setting the command refuses, named in the message; ``ae-lightning`` prints it alone and exits with 2."""


def check_single_sample(model: object) -> None:
    """Raise a ValueError if a VAE with an objective of its own (not the IWAE bound) has ``iw_samples`` other than 1."""
    iw_samples = getattr(model, "iw_samples", 1)
    if iw_samples != 1:
        raise ValueError(
            f"{type(model).__name__} trains on its own objective, not on the IWAE bound: iw_samples must be 1, got "
            f"{iw_samples}"
        )


__all__ = ["ConfigError", "check_single_sample"]
