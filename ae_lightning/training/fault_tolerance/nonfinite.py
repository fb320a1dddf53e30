"""A guard on non-finite losses, gradients and weights."""

from __future__ import annotations

import math
from typing import Any, Literal

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor

from ae_lightning.training.fault_tolerance.agreement import any_rank
from datamodules.checks import Fraction, PositiveInt, check_arguments

NonFiniteAction = Literal["error", "skip"]


class NonFiniteLossError(FloatingPointError):
    """A training loss term went NaN or infinite."""


def non_finite_guard(
    action: NonFiniteAction = "error", check_every_n_steps: PositiveInt | None = None, max_skipped: Fraction = 0.5
) -> NonFiniteGuard:
    """The command's ``nonfinite`` section: the guard of ``action`` (why it checks so: ``docs/fault_tolerance.md``).

    Args:
        action: ``error`` (stop training, :class:`StopOnNonFinite`) or ``skip`` (skip and count the optimizer step,
            :class:`SkipNonFinite`).
        check_every_n_steps: how often, in training batches, ``error`` checks; ``None``: ``log_every_n_steps``.
        max_skipped: ``skip`` fails (a :class:`NonFiniteLossError`) when an epoch skips more than this share of its
            optimizer steps.
    """
    check_arguments(locals(), non_finite_guard)
    return StopOnNonFinite(check_every_n_steps) if action == "error" else SkipNonFinite(max_skipped)


class NonFiniteGuard(Callback):
    """Never writes a checkpoint from non-finite weights (the save raises, the last good ``last.ckpt`` stays); the
    base of the two guards on non-finite losses, :class:`StopOnNonFinite` and :class:`SkipNonFinite`."""

    @property
    def state_key(self) -> str:
        return "NonFiniteGuard"  # one key for either mode, as checkpoints before the split wrote it

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        if not _all_finite([p.detach() for p in pl_module.parameters()]):
            raise NonFiniteLossError(
                f"the weights are not finite at global step {trainer.global_step}: not writing a checkpoint, so the "
                "last one written stays the last good one"
            )


class StopOnNonFinite(NonFiniteGuard):
    """``action: error``: checks the kept loss terms every ``check_every_n_steps`` training batches (None:
    ``log_every_n_steps``), before validation, at each epoch's and training's end and before every checkpoint, on all
    ranks together; the :class:`NonFiniteLossError` names the first bad step, its epoch and batch and the bad terms."""

    def __init__(self, check_every_n_steps: PositiveInt | None = None) -> None:
        check_arguments(locals(), StopOnNonFinite.__init__)
        self.check_every_n_steps = check_every_n_steps
        self._step_at_batch_start = 0
        # Per training batch since the last check: its (global step, epoch, batch) and its detached loss terms.
        self._kept: list[tuple[tuple[int, int, int], dict[str, Tensor]]] = []

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._kept.clear()

    def on_train_batch_start(self, trainer: L.Trainer, *args: Any) -> None:
        self._step_at_batch_start = trainer.global_step  # the step whose loss the batch computes, before its update

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if not (terms := _loss_terms(outputs)):
            return
        self._kept.append(((self._step_at_batch_start, trainer.current_epoch, batch_idx), terms))
        if len(self._kept) >= (self.check_every_n_steps or trainer.log_every_n_steps):
            self._check(trainer)

    def _check(self, trainer: L.Trainer) -> None:
        if not self._kept:  # the same on every rank: they run the same number of batches
            return
        kept = len(self._kept)
        # One stack of every kept value and one read (the batches' terms may differ in number and names).
        stacked = torch.stack([value.float().reshape(()) for _, terms in self._kept for value in terms.values()])
        owner = torch.tensor([i for i, (_, terms) in enumerate(self._kept) for _ in terms], device=stacked.device)
        first = torch.where(torch.isfinite(stacked), kept, owner).min()  # ``kept`` where all are finite
        if not any_rank(trainer, first < kept):  # every rank stops at the same check, not only the one that saw it
            self._kept.clear()
            return
        if first == kept:
            raise NonFiniteLossError("a training loss term went non-finite on another rank; see its error")
        (step, epoch, batch), terms = self._kept[int(first)]
        values = {name: value.item() for name, value in terms.items()}
        bad_names = [name for name, value in values.items() if not math.isfinite(value)]
        shown = ", ".join(f"{name}={value:.4g}" for name, value in values.items())
        raise NonFiniteLossError(
            f"non-finite training loss at global step {step} (epoch {epoch}, batch {batch}): "
            f"{', '.join(bad_names)} {'is' if len(bad_names) == 1 else 'are'} not finite ({shown}). "
            f"The last checkpoint written before that step is kept. Lower the learning rate, {_clip_advice(trainer)}"
            "skip such batches (--nonfinite.action skip)."
        )

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._check(trainer)

    on_train_epoch_end = on_train_end = on_validation_start

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        self._check(trainer)
        super().on_save_checkpoint(trainer, pl_module, checkpoint)


class SkipNonFinite(NonFiniteGuard):
    """``action: skip``: drops non-finite gradients before the optimizer step (which then changes nothing), puts back
    the model's buffers as the last step taken left them (a VQ codebook's EMA) and counts such steps as
    ``train/skipped_steps`` (from zero in each ``fit``, or from a resumed checkpoint's count); raises a
    :class:`NonFiniteLossError` when an epoch skips more than ``max_skipped`` of its optimizer steps."""

    def __init__(self, max_skipped: Fraction = 0.5) -> None:
        check_arguments(locals(), SkipNonFinite.__init__)
        self.max_skipped = max_skipped
        self.load_state_dict({})  # skipped_steps, and the optimizer steps skipped and taken in epoch ``_epoch`` so far
        self._buffers: dict[str, Tensor] = {}  # the model's buffers after the last optimizer step taken

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage == "fit":  # each fit counts anew: no checkpoint's counts (a resumed one's are loaded after setup)
            self.load_state_dict({})

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._buffers = _buffer_copies(pl_module)

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.current_epoch != self._epoch:  # not the epoch a mid-epoch checkpoint's counts belong to
            self._epoch, self._epoch_skipped, self._epoch_steps = trainer.current_epoch, 0, 0

    def on_before_optimizer_step(
        self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        self._epoch_steps += 1
        params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        if _all_finite([p.grad for p in params]):
            self._buffers = _buffer_copies(pl_module)
            return
        for p in params:  # optimizers step only parameters with a gradient: weights and moments stay as they were
            p.grad = None
        with torch.no_grad():
            for name, buffer in pl_module.named_buffers():
                buffer.copy_(self._buffers[name])
        if self.skipped_steps == 0:
            rank_zero_warn(
                f"non-finite gradients at global step {trainer.global_step}: skipping the optimizer step "
                "(nonfinite.action is 'skip'); train/skipped_steps counts such steps"
            )
        self.skipped_steps += 1
        self._epoch_skipped += 1

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        pl_module.log("train/skipped_steps", float(self.skipped_steps))
        skipped, steps = self._epoch_skipped, self._epoch_steps
        if steps and skipped / steps > self.max_skipped:
            raise NonFiniteLossError(
                f"{skipped} of the {steps} optimizer steps of epoch {trainer.current_epoch} had non-finite gradients "
                f"and were skipped, more than max_skipped={self.max_skipped}: the run is not training. "
                "Lower the learning rate or clip gradients"
            )

    def state_dict(self) -> dict[str, Any]:
        epoch = {"epoch": self._epoch, "epoch_skipped": self._epoch_skipped, "epoch_steps": self._epoch_steps}
        return {"skipped_steps": self.skipped_steps, **epoch}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        # Checkpoints written before steps were counted hold ``skipped_batches`` (one per step without accumulation).
        self.skipped_steps = state_dict.get("skipped_steps", state_dict.get("skipped_batches", 0))
        self._epoch = state_dict.get("epoch")
        self._epoch_skipped, self._epoch_steps = state_dict.get("epoch_skipped", 0), state_dict.get("epoch_steps", 0)


def _clip_advice(trainer: L.Trainer) -> str:
    """Where the run's model clips gradients: the Trainer's option, or the model's own under manual optimization."""
    model = trainer.lightning_module
    if model.automatic_optimization:
        return "clip gradients (--trainer.gradient_clip_val) or "
    if "gradient_clip_val" in model.hparams:
        return "clip gradients (--model.init_args.gradient_clip_val) or "
    return ""


def _all_finite(tensors: list[Tensor]) -> bool:
    """Whether every value of ``tensors`` is finite, in one read: their largest magnitude (a norm could overflow)."""
    return not tensors or bool(torch.stack([torch.linalg.vector_norm(t, math.inf) for t in tensors]).isfinite().all())


def _buffer_copies(module: torch.nn.Module) -> dict[str, Tensor]:
    return {name: buffer.detach().clone() for name, buffer in module.named_buffers()}


def _loss_terms(outputs: Any) -> dict[str, Tensor]:
    """The scalar tensors of a training step's output (the loss terms dict, or a bare loss), detached."""
    outputs = {"loss": outputs} if isinstance(outputs, Tensor) else outputs
    items = outputs.items() if isinstance(outputs, dict) else ()
    return {k: v.detach() for k, v in items if isinstance(v, Tensor) and v.numel() == 1}


__all__ = ["NonFiniteGuard", "NonFiniteLossError", "SkipNonFinite", "StopOnNonFinite", "non_finite_guard"]
