"""SIGTERM (a scheduler's preemption, ``kill``, a container stop) ends ``fit`` with the final state saved."""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_info

from ae_lightning.training.fault_tolerance.agreement import AgreedSignal
from ae_lightning.training.fault_tolerance.checkpoint_io import RunCheckpoint
from datamodules.checks import PositiveInt

SIGTERM_EXIT_CODE = 143  # 128 + SIGTERM, as a shell reports a process ended by the signal


class SigtermCheckpoint(AgreedSignal):
    """On SIGTERM during ``fit``, writes ``last.ckpt`` at the end of a training step and exits with status 143: the
    current step, or after a validation the next one; a signal during the sanity check exits 143 writing nothing.

    Its own SIGTERM handler (from the sanity check or training start to the end of ``fit``) only notes the signal and
    calls the previous handler if that is a function; Lightning's, which ends the run with status 0 and no checkpoint,
    does not run. Under DDP the ranks agree (:class:`AgreedSignal`) every ``check_every_n_steps`` steps and at the end
    of every validation, and save together. A run that has no step left ends as usual. Why: ``docs/fault_tolerance.md``.
    """

    def __init__(self, check_every_n_steps: PositiveInt = 10) -> None:
        super().__init__(check_every_n_steps)
        self._previous_handler: Any = None
        self._installed = False
        self._signalled = False
        self._act_at_next_step = False

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._previous_handler, self._signalled = signal.getsignal(signal.SIGTERM), False
        self._act_at_next_step = False

    # Lightning installs its SIGTERM handler after ``on_fit_start`` (and restores the previous one when fit ends).
    def on_sanity_check_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._install()

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._install()

    def _install(self) -> None:
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self._note_signal)
            self._installed = True

    def _note_signal(self, signum: int, frame: Any) -> None:
        self._signalled = True
        if callable(self._previous_handler):
            self._previous_handler(signum, frame)

    def signalled(self, trainer: L.Trainer) -> bool | None:
        return self._signalled if self._installed else None

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self.agreed(trainer, pl_module):
            return
        if trainer.sanity_checking:
            rank_zero_info("SIGTERM during the sanity check: exiting, nothing to save")
            raise SystemExit(SIGTERM_EXIT_CODE)
        self._act_at_next_step = True  # after the other callbacks' hooks, and their checkpoints, of this validation

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self._act_at_next_step:
            self.act(trainer)
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)

    def act(self, trainer: L.Trainer) -> None:
        for callback in trainer.checkpoint_callbacks:
            if isinstance(callback, ModelCheckpoint) and callback.save_last and callback.dirpath:
                path = _last_path(callback, trainer)
                trainer.save_checkpoint(path, weights_only=False)
                rank_zero_info(f"SIGTERM: wrote {path} at global step {trainer.global_step}; exiting")
        raise SystemExit(SIGTERM_EXIT_CODE)

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._restore()

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self._restore()  # no ``teardown`` follows an exception

    def _restore(self) -> None:
        if self._installed:
            signal.signal(signal.SIGTERM, self._previous_handler)
            self._installed = False


def _last_path(callback: ModelCheckpoint, trainer: L.Trainer) -> str:
    if isinstance(callback, RunCheckpoint):
        return callback.last_path(trainer)
    name = f"{callback.CHECKPOINT_NAME_LAST}{callback.FILE_EXTENSION}"
    return callback.last_model_path or str(Path(callback.dirpath) / name)


__all__ = ["SIGTERM_EXIT_CODE", "SigtermCheckpoint"]
