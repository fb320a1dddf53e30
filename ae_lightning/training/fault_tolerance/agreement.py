"""Acting on a signal on all ranks together: a handler that only notes it, ranks that agree at a step boundary, then
act (save, requeue, exit)."""

from __future__ import annotations

import signal
import threading
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback

from ae_lightning.lightning_internals import ends_training_epoch
from datamodules.checks import PositiveInt, check_arguments


class AgreedSignal(Callback):
    """Base of the callbacks that act on a signal on every rank at once: its handler (:meth:`own_signal`) only notes
    the signal, and the ranks agree every ``check_every_n_steps`` optimizer steps (DDP; a single process every step)
    to :meth:`act`, which subclasses implement, at the end of a batch that stepped (agreed at an epoch's last batch:
    at the next step). Why: ``docs/fault_tolerance.md``."""

    calls_previous_handler = False  # whether the handler also calls the one it replaced, if that is a function

    def __init__(self, check_every_n_steps: PositiveInt = 10) -> None:
        check_arguments(locals(), AgreedSignal.__init__)
        self.check_every_n_steps = check_every_n_steps
        self._checked_at_step = 0
        self._step_at_batch_start = 0
        self._signum: int | None = None  # the signal this callback acts on in the current fit
        self._previous_handler: Any = None
        self._installed = False
        self._signalled = False
        self._act_at_next_step = False  # agreed where acting would skip what follows (an epoch's end)

    def signalled(self, trainer: L.Trainer) -> bool | None:
        """Whether this process got the signal; None when the callback is not active in this run."""
        return None if self._signum is None else self._signalled

    def act(self, trainer: L.Trainer) -> None:
        """What every rank does once they agree that the signal came."""
        raise NotImplementedError

    def own_signal(self, signum: int) -> None:
        """Installs the handler that notes ``signum`` until ``fit`` ends (main thread only; not over a handler installed
        outside Python, which could not be put back)."""
        if threading.current_thread() is threading.main_thread() and signal.getsignal(signum) is not None:
            self._previous_handler = _unwrapped(signal.signal(signum, self._note_signal))
            self._signum, self._installed, self._signalled = signum, True, False

    def hand_back(self) -> None:
        """Puts the replaced handler back for now; the signal stays this callback's (:meth:`take_back`)."""
        if self._installed:
            signal.signal(self._signum, self._previous_handler)
            self._installed = False

    def take_back(self) -> None:
        """Installs the handler that notes the signal again after :meth:`hand_back`."""
        if self._signum is not None and not self._installed:
            signal.signal(self._signum, self._note_signal)
            self._installed = True

    def _note_signal(self, signum: int, frame: Any) -> None:
        if self._signum is None:  # put back by Lightning after a failed fit: the replaced handler takes over
            signal.signal(signum, self._previous_handler)
            if callable(self._previous_handler):
                self._previous_handler(signum, frame)
            elif self._previous_handler == signal.SIG_DFL:
                signal.raise_signal(signum)
            return
        self._signalled = True
        if self.calls_previous_handler and callable(self._previous_handler):
            self._previous_handler(signum, frame)

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._checked_at_step = trainer.global_step
        self._act_at_next_step = False

    def on_train_batch_start(self, trainer: L.Trainer, *args: Any) -> None:
        self._step_at_batch_start = trainer.global_step

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        if trainer.global_step == self._step_at_batch_start:  # no optimizer step (the same on every rank)
            return
        if self._act_at_next_step:  # even at an epoch's last batch: an epoch of one batch ends at every step
            self._act_at_next_step = False
            self.act(trainer)
        elif trainer.world_size == 1 or trainer.global_step - self._checked_at_step >= self.check_every_n_steps:
            self._checked_at_step = trainer.global_step
            if self.agreed(trainer):
                # A checkpoint at an epoch's last batch precedes its validation, which Lightning skips on resume.
                self._act_at_next_step = ends_training_epoch(trainer)
                if not self._act_at_next_step:
                    self.act(trainer)

    def agreed(self, trainer: L.Trainer) -> bool:
        """Whether any rank got the signal (one all-reduce under DDP: call it on every rank); False when not active."""
        signalled = self.signalled(trainer)
        return signalled is not None and any_rank(trainer, signalled)

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._release()

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        # No ``teardown`` follows an exception; Lightning may then reinstall this handler (``_note_signal`` hands on).
        self._release()

    def _release(self) -> None:
        self.hand_back()
        self._signum = None


def _unwrapped(handler: Any) -> Any:
    """``handler``, or the one it hands signals to if it is the handler of a finished fit (see ``on_exception``)."""
    while isinstance(owner := getattr(handler, "__self__", None), AgreedSignal) and owner._signum is None:
        handler = owner._previous_handler
    return handler


def any_rank(trainer: L.Trainer, flag: bool | torch.Tensor) -> bool:
    """Whether ``flag`` is true on any rank: under DDP one all-reduce (a host sync on GPUs), so call it now and then."""
    if trainer.world_size == 1:
        return bool(flag)
    flag = torch.as_tensor(flag, device=trainer.strategy.root_device).long()
    return bool(trainer.strategy.reduce(flag, reduce_op="max").item())


__all__ = ["AgreedSignal", "any_rank"]
