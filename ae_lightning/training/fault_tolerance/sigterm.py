"""SIGTERM (a scheduler's preemption, ``kill``, a container stop) ends ``fit`` with the final state saved, and
``predict`` before it writes any predictions."""

from __future__ import annotations

import signal
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from ae_lightning.training.fault_tolerance.agreement import AgreedSignal
from ae_lightning.training.fault_tolerance.checkpoint_io import last_path

SIGTERM_EXIT_CODE = 143  # 128 + SIGTERM, as a shell reports a process ended by the signal


class SigtermCheckpoint(AgreedSignal):
    """On SIGTERM during ``fit``, writes ``last.ckpt`` at the end of an optimizer step (after a validation or at an
    epoch's last batch, the next one) on all ranks together and exits with status 143; a signal before training
    exits 143 writing nothing, and one that finds no step left exits 143 once ``fit`` is done, unless the previous
    handler took it (a function, or ``SIG_IGN``). During ``predict``, exits 143 before any predictions are written,
    under DDP on all ranks together once their batches are done. When and why: ``docs/fault_tolerance.md``."""

    calls_previous_handler = True

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if stage in ("fit", "predict"):
            self.own_signal(signal.SIGTERM)
        if stage == "predict":  # as in on_fit_start, which predict has not: Lightning's handler comes next
            self.hand_back()

    # Lightning puts back the handler it found after the ``on_fit_start`` hooks: the previous one, not this callback's.
    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.hand_back()

    def on_sanity_check_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.take_back()
        self._signalled |= trainer.received_sigterm  # Lightning's handler noted one before the take-back
        if self.agreed(trainer):
            rank_zero_info("SIGTERM before the first batch: exiting, nothing to save")
            raise SystemExit(SIGTERM_EXIT_CODE)

    on_train_start = on_predict_start = on_sanity_check_start

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self.agreed(trainer):
            return
        if trainer.sanity_checking:
            rank_zero_info("SIGTERM during the sanity check: exiting, nothing to save")
            raise SystemExit(SIGTERM_EXIT_CODE)
        self._act_at_next_step = True  # after the other callbacks' hooks, and their checkpoints, of this validation

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        unacted = self._signum is not None and (self._signalled or trainer.received_sigterm)
        default_action = self._previous_handler == signal.SIG_DFL
        super().teardown(trainer, pl_module, stage)
        if unacted and default_action:  # deferred, not dropped: a process may go on (a search's next trial)
            rank_zero_info("SIGTERM when nothing was left to do: the run is complete; exiting")
            for logger in trainer.loggers:
                logger.finalize("success")
            raise SystemExit(SIGTERM_EXIT_CODE)

    def on_predict_batch_end(self, trainer: L.Trainer, *args: Any, **kwargs: Any) -> None:
        # Under DDP the ranks may run different numbers of batches (none is padded in): they agree at the epoch's end.
        if trainer.world_size == 1:
            self.on_predict_epoch_end(trainer)

    def on_predict_epoch_end(self, trainer: L.Trainer, *args: Any) -> None:
        if self.agreed(trainer):
            rank_zero_info("SIGTERM during predict: exiting, no predictions written")
            raise SystemExit(SIGTERM_EXIT_CODE)

    def act(self, trainer: L.Trainer) -> None:
        savers = [cb for cb in trainer.checkpoint_callbacks if isinstance(cb, ModelCheckpoint) and cb.save_last]
        for callback in [cb for cb in savers if cb.dirpath]:
            path = last_path(callback, trainer)
            trainer.save_checkpoint(path, weights_only=False)
            rank_zero_info(f"SIGTERM: wrote {path} at global step {trainer.global_step}; exiting")
        if not savers:
            rank_zero_warn(f"SIGTERM at global step {trainer.global_step}: no ModelCheckpoint keeps a last checkpoint "
                           "(save_last), so nothing was saved to resume from; exiting")  # fmt: skip
        raise SystemExit(SIGTERM_EXIT_CODE)


__all__ = ["SIGTERM_EXIT_CODE", "SigtermCheckpoint"]
