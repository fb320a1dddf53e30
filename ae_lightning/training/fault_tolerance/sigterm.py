"""SIGTERM (a scheduler's preemption, ``kill``, a container stop) ends ``fit`` with the final state saved."""

from __future__ import annotations

from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_info

from ae_lightning.training.fault_tolerance.agreement import AgreedSignal

SIGTERM_EXIT_CODE = 143  # 128 + SIGTERM, as a shell reports a process ended by the signal


class SigtermCheckpoint(AgreedSignal):
    """On SIGTERM, writes ``last.ckpt`` at the end of the current training step and exits with status 143.

    Lightning notes the signal (``trainer.received_sigterm``) and would stop at the next batch with status 0 and no
    checkpoint. Under DDP the ranks agree every ``check_every_n_steps`` steps (:class:`AgreedSignal`) and save together.
    """

    def signalled(self, trainer: L.Trainer) -> bool:
        return trainer.received_sigterm

    def act(self, trainer: L.Trainer) -> None:
        for callback in trainer.checkpoint_callbacks:
            if isinstance(callback, ModelCheckpoint) and callback.save_last and callback.dirpath:
                path = Path(callback.dirpath) / f"{callback.CHECKPOINT_NAME_LAST}{callback.FILE_EXTENSION}"
                trainer.save_checkpoint(path, weights_only=False)
                rank_zero_info(f"SIGTERM: wrote {path} at global step {trainer.global_step}; exiting")
        raise SystemExit(SIGTERM_EXIT_CODE)


__all__ = ["SIGTERM_EXIT_CODE", "SigtermCheckpoint"]
