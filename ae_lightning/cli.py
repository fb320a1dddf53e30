"""The ``ae-lightning`` command: LightningCLI with the project's links, checkpointing and prediction writer.

Models and datamodules are chosen by import path (``class_path: ae_lightning.VAE``) or by class name
(``--model VAE``, ``--data FashionMNISTDataModule``).
"""

from __future__ import annotations

import importlib
from pathlib import Path

import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

import datamodules  # noqa: F401  (registers the datamodules for ``--data <ClassName>``)
from ae_lightning import AutoencoderModule
from ae_lightning.prediction import PredictionWriter
from datamodules.base import ImageDataModule

# ``--ckpt_path`` values that Lightning resolves itself rather than reading a file.
_SPECIAL_CKPT_PATHS = {"last", "best", "hpc", "registry"}


class AutoencoderCLI(LightningCLI):
    """LightningCLI for the autoencoder family.

    Adds: the datamodule's ``input_shape`` linked into the model; a ``checkpoint`` section (``ModelCheckpoint``
    keeping ``last.ckpt`` and the best by ``val/loss``); a ``predictions`` section (:class:`PredictionWriter`); and an
    early, clear error for a ``--ckpt_path`` that is missing or holds another model class.
    """

    def __init__(self, **kwargs) -> None:
        kwargs.setdefault("save_config_kwargs", {"overwrite": False})
        super().__init__(
            AutoencoderModule,
            ImageDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            auto_configure_optimizers=False,
            **kwargs,
        )

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments("data.input_shape", "model.init_args.input_shape", apply_on="instantiate")
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.set_defaults(
            {
                "checkpoint.monitor": "val/loss",
                "checkpoint.mode": "min",
                "checkpoint.save_last": True,
                "checkpoint.filename": "best-{epoch}-{step}",
            }
        )
        parser.add_lightning_class_args(PredictionWriter, "predictions")

    def _parse_ckpt_path(self) -> None:
        subcommand = self.config.get("subcommand")
        ckpt_path = self.config[subcommand].get("ckpt_path") if subcommand else None
        if ckpt_path and ckpt_path not in _SPECIAL_CKPT_PATHS:
            path = Path(ckpt_path)
            if not path.is_file():
                raise FileNotFoundError(f"--ckpt_path {ckpt_path} does not exist (or is not a file)")
            stored = torch.load(path, map_location="cpu", weights_only=True).get("hyper_parameters", {})
            stored_class = stored.get("_class_path")
            wanted = self.config[subcommand].model.class_path
            if stored_class and _resolve(stored_class) is not _resolve(wanted):
                raise ValueError(
                    f"--ckpt_path {ckpt_path} holds a {stored_class} checkpoint, but the config's model is {wanted}; "
                    "use that model's config or a checkpoint of this model"
                )
        super()._parse_ckpt_path()


def _resolve(class_path: str) -> type:
    module, _, name = class_path.rpartition(".")
    return getattr(importlib.import_module(module), name)


def main() -> None:
    AutoencoderCLI()


if __name__ == "__main__":
    main()
