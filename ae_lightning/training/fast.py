"""The opt-in fast path (``--config configs/fast.yaml``): with ``--fast.steps N`` each Lightning batch is a list of
N batches, and the model takes one optimizer step per batch of the list (docs/speed.md)."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import WeightAveraging
from torch import Tensor

from ae_lightning.checks import ConfigError
from ae_lightning.lightning_internals import every_n_train_steps

FIX = "or train without the fast path (configs/fast.yaml)"
# Where a checkpoint records how many batches of its last Lightning batch ``max_steps`` left untrained.
UNSTEPPED_KEY = "ae_lightning_unstepped_batches"


def is_group(batch: Any) -> bool:
    """Whether ``batch`` is a list of batches (the fast path's Lightning batch) rather than one batch."""
    return isinstance(batch, list) and len(batch) > 0 and not isinstance(batch[0], Tensor)


def batches_to_step(batch: Any, trainer: L.Trainer) -> list[Any]:
    """The batches of a Lightning batch to take one optimizer step each on: those of a group that ``max_steps``
    leaves, or the batch itself."""
    if not is_group(batch):
        return [batch]
    return batch[: trainer.max_steps - trainer.global_step] if trainer.max_steps >= 0 else batch


def mean_terms(steps: list[dict[str, Tensor]]) -> dict[str, Tensor]:
    """Each term's mean over the steps of a group: what callbacks (the non-finite guard) see; NaN stays NaN."""
    return {name: torch.stack([terms[name] for terms in steps]).mean() for name in steps[0]}


def check_model(cls: type, steps: int) -> None:
    """Refuse ``steps_per_batch`` for a model with a ``training_step`` of its own, which cannot step through groups."""
    from ae_lightning.base import AutoencoderModule

    if steps > 1 and cls.training_step is not AutoencoderModule.training_step:
        raise ConfigError(f"{cls.__name__} has a training_step of its own, which cannot take steps_per_batch={steps} "
                         f"optimizer steps per Lightning batch: set steps_per_batch 1, {FIX}")  # fmt: skip


def check_fit(trainer: L.Trainer, steps: int, datamodule: L.LightningDataModule | None = None) -> None:
    """Refuse a datamodule that groups otherwise, step checkpoints whose steps a group would pass over, and a
    ``fast_dev_run`` of more than one step, which would skip its validation. ``datamodule``: the fit's, where
    ``trainer`` has none attached yet (the command checks before the run)."""
    datamodule = trainer.datamodule if datamodule is None else datamodule
    grouped = datamodule.hparams.get("steps_per_batch", 1) if datamodule is not None else steps
    if grouped != steps:
        raise ConfigError(f"the model has steps_per_batch={steps} and {type(datamodule).__name__} steps_per_batch="
                         f"{grouped}: give both the same value (--fast.steps sets both)")  # fmt: skip
    if steps == 1:
        return
    if trainer.fast_dev_run > 1:  # Lightning's max_steps of fast_dev_run ends the first Lightning batch, unvalidated
        n = int(trainer.fast_dev_run)
        raise ConfigError(f"fast_dev_run={n} runs {n} optimizer steps on the fast path (Lightning makes it max_steps), "
                         f"which end inside its first Lightning batch of {steps} steps, before any validation: use "
                         f"fast_dev_run 1, or limit_train_batches {n}, limit_val_batches {n} and max_epochs 1, "
                         f"{FIX}")  # fmt: skip
    for callback in trainer.callbacks:
        if isinstance(callback, WeightAveraging):  # it updates at a Lightning batch's end: once per group of steps
            raise ConfigError(f"{type(callback).__name__} averages the weights once per Lightning batch, which "
                             f"holds {steps} optimizer steps on the fast path: it would skip steps; remove it, "
                             f"{FIX}")  # fmt: skip
    for callback in trainer.checkpoint_callbacks:
        every = every_n_train_steps(callback)
        if every % steps:
            raise ConfigError(f"ModelCheckpoint(every_n_train_steps={every}) saves every {every} optimizer steps, but "
                             f"the fast path takes {steps} at a time: give a multiple of {steps}, {FIX}")  # fmt: skip


def check_epoch(trainer: L.Trainer, steps: int) -> None:
    """Refuse step checkpoints when an epoch's steps are no multiple of ``steps``: the epoch's last, shorter group
    would shift every later group off the checkpoints' steps."""
    loader = trainer.train_dataloader
    epoch = len(loader.loader) if hasattr(loader, "loader") else None
    every = [n for n in map(every_n_train_steps, trainer.checkpoint_callbacks) if n]
    if every and epoch is not None and epoch % steps and trainer.num_training_batches == len(loader):
        raise ConfigError(f"an epoch has {epoch} optimizer steps, not a multiple of the fast path's {steps}, which "
                         f"ModelCheckpoint(every_n_train_steps={every[0]}) needs: choose steps that divide it, "
                         f"{FIX}")  # fmt: skip


def check_resume(checkpoint: dict[str, Any], steps: int) -> None:
    """Refuse to resume a run trained with other ``steps_per_batch``, or stopped by ``max_steps`` inside a group."""
    stored = checkpoint.get("hyper_parameters", {}).get("steps_per_batch", 1)
    for key, state in checkpoint.get("callbacks", {}).items():  # written by the previous fast path's callback
        if key.startswith("StepsPerBatch") and isinstance(state, dict):
            stored = state.get("steps", stored)
    # Lightning counts automatic and manual optimization's steps apart (global_step would restart), and its position
    # in an epoch in Lightning batches (another group size would skip or repeat batches).
    if stored != steps:
        raise ConfigError(f"the checkpoint was trained with fast.steps={stored} and this run has fast.steps={steps}: "
                         f"resume with --fast.steps {stored}")  # fmt: skip
    # The loader's position counts the batches of the groups read, so a group cut by max_steps would lose its rest.
    # An epoch's last group may be shorter: checkpoints that do not record the cut resume at multiples only.
    if checkpoint.get(UNSTEPPED_KEY, checkpoint.get("global_step", 0) % steps):
        raise ConfigError(f"the run resumes at step {checkpoint['global_step']}, not a multiple of the fast path's "
                         f"{steps} steps per Lightning batch from its epoch's start: max_steps stopped it inside a "
                         f"Lightning batch, whose other batches a resumed run would skip; resume with --fast.steps "
                         f"{stored} from a checkpoint written at a Lightning batch's end, {FIX}")  # fmt: skip


__all__ = ["batches_to_step", "check_epoch", "check_fit", "check_model", "check_resume", "is_group", "mean_terms"]
