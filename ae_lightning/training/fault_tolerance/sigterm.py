"""SIGTERM (a scheduler's preemption, ``kill``, a container stop) ends ``fit`` with the final state saved."""

from __future__ import annotations

from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_info

from ae_lightning.checks import check_number
from ae_lightning.training.fault_tolerance.slurm import any_rank

SIGTERM_EXIT_CODE = 143  # 128 + SIGTERM, as a shell reports a process ended by the signal


class SigtermCheckpoint(Callback):
    """On SIGTERM, writes ``last.ckpt`` at the end of the current training step and exits with status 143.

    Lightning notes the signal (``trainer.received_sigterm``) and would stop at the next batch with status 0 and no
    checkpoint. Under DDP the ranks agree every ``check_every_n_steps`` steps (one all-reduce) and save together.

    Args:
        check_every_n_steps: how often, in optimizer steps, the ranks agree on whether the signal came (DDP only).
    """

    def __init__(self, check_every_n_steps: int = 10) -> None:
        check_number("check_every_n_steps", check_every_n_steps, "[1, inf)", integer=True)
        self.check_every_n_steps = check_every_n_steps

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx) -> None:
        if trainer.world_size == 1:
            stop = trainer.received_sigterm
        elif trainer.global_step % self.check_every_n_steps == 0:
            stop = any_rank(trainer, pl_module, trainer.received_sigterm)
        else:
            return
        if not stop:
            return
        for callback in trainer.checkpoint_callbacks:
            if isinstance(callback, ModelCheckpoint) and callback.save_last and callback.dirpath:
                path = Path(callback.dirpath) / f"{callback.CHECKPOINT_NAME_LAST}{callback.FILE_EXTENSION}"
                trainer.save_checkpoint(path, weights_only=False)
                rank_zero_info(f"SIGTERM: wrote {path} at global step {trainer.global_step}; exiting")
        raise SystemExit(SIGTERM_EXIT_CODE)


__all__ = ["SIGTERM_EXIT_CODE", "SigtermCheckpoint"]
