"""One test per Lightning internal that ae-lightning uses (see ``ae_lightning/lightning_internals.py``): each fails
with a message naming what changed when a Lightning release changes it."""

from __future__ import annotations

import inspect

import lightning
import pytest
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningCLI

from ae_lightning.cli import AutoencoderCLI
from ae_lightning.lightning_internals import every_n_train_steps


def test_model_checkpoint_keeps_every_n_train_steps() -> None:
    assert every_n_train_steps(ModelCheckpoint(every_n_train_steps=7)) == 7
    assert every_n_train_steps(ModelCheckpoint()) == 0


def test_a_changed_model_checkpoint_is_named_in_the_error() -> None:
    class Changed(ModelCheckpoint):
        def __init__(self) -> None:
            super().__init__()
            del self._every_n_train_steps

    with pytest.raises(RuntimeError, match=rf"Lightning {lightning.__version__} changed an internal .*"
                                           r"_every_n_train_steps"):  # fmt: skip
        every_n_train_steps(Changed())


def test_lightning_cli_still_parses_checkpoint_hyperparameters_in_the_step_we_override() -> None:
    assert hasattr(LightningCLI, "_parse_ckpt_path"), (
        f"Lightning {lightning.__version__}'s LightningCLI has no _parse_ckpt_path any more: find where it now merges "
        "a checkpoint's hyperparameters into the config and override that in AutoencoderCLI"
    )
    source = inspect.getsource(LightningCLI)
    assert "self._parse_ckpt_path()" in source, "LightningCLI no longer calls _parse_ckpt_path"
    assert AutoencoderCLI._parse_ckpt_path is not LightningCLI._parse_ckpt_path
