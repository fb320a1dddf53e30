"""Acting on a signal on all ranks together: they agree at a step boundary, then act (save, requeue, exit)."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback

from datamodules.checks import PositiveInt, check_arguments


class AgreedSignal(Callback):
    """Base of the callbacks that act on a signal at the end of a training batch, on every rank at once.

    Alone, a process reads :meth:`signalled` after every batch (for free); under DDP the ranks agree every
    ``check_every_n_steps`` optimizer steps with one all-reduce, so that all of them :meth:`act` at the same step
    (a checkpoint is a collective write). Subclasses implement :meth:`signalled` and :meth:`act`.

    Args:
        check_every_n_steps: how often, in optimizer steps, the ranks agree on whether the signal came (DDP only).
    """

    def __init__(self, check_every_n_steps: PositiveInt = 10) -> None:
        check_arguments(locals(), AgreedSignal.__init__)
        self.check_every_n_steps = check_every_n_steps
        self._checked_at_step = 0

    def signalled(self, trainer: L.Trainer) -> bool | None:
        """Whether this process got the signal; None when the callback is not active in this run."""
        raise NotImplementedError

    def act(self, trainer: L.Trainer) -> None:
        """What every rank does once they agree that the signal came."""
        raise NotImplementedError

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._checked_at_step = trainer.global_step

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if trainer.world_size == 1 or trainer.global_step - self._checked_at_step >= self.check_every_n_steps:
            self._checked_at_step = trainer.global_step
            if self.agreed(trainer, pl_module):
                self.act(trainer)

    def agreed(self, trainer: L.Trainer, pl_module: L.LightningModule) -> bool:
        """Whether any rank got the signal (one all-reduce under DDP: call it on every rank at the same point); False
        when the callback is not active."""
        signalled = self.signalled(trainer)
        if signalled is None:
            return False
        return any_rank(trainer, pl_module, signalled) if trainer.world_size > 1 else signalled


def any_rank(trainer: L.Trainer, pl_module: L.LightningModule, flag: bool) -> bool:
    """Whether ``flag`` is true on any rank: one all-reduce (a host sync on GPUs), so call it now and then."""
    return bool(trainer.strategy.reduce(torch.tensor(int(flag), device=pl_module.device), reduce_op="max").item())


__all__ = ["AgreedSignal", "any_rank"]
