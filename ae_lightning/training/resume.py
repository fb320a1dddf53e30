"""The resume policy: the run's own optimizer settings apply when training resumes from a checkpoint."""

from __future__ import annotations

import inspect
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info

from ae_lightning.base import check_optimizer_class


class OptimizerSettingsOnResume(Callback):
    """Records each optimizer's class and settings in checkpoints; on resume, after Lightning has restored the
    optimizers' state, applies this run's settings (``weight_decay``, ``fused``, ...) where they differ to every param
    group (the state's ``step`` counts then lie where this run's settings need them), a new ``lr`` as a new base that
    a scheduler's schedule goes on from, and refuses another optimizer class, whose state cannot carry over.

    The ``ae-lightning`` command installs it; without it a resumed run keeps the checkpoint's settings.
    """

    key = "ae_lightning_optimizers"

    def __init__(self) -> None:
        self._resumed: list[dict[str, Any]] | None = None

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        checkpoint[self.key] = [optimizer_settings(optimizer) for optimizer in trainer.optimizers]

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        self._resumed = checkpoint.get(self.key)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        resumed, self._resumed = self._resumed, None
        for i, (optimizer, before) in enumerate(zip(trainer.optimizers, resumed or [])):
            check_optimizer_class(i, before["class"], optimizer)
            now = optimizer_settings(optimizer)
            changed = False
            for name, value in now["defaults"].items():
                previous = before["defaults"].get(name, value)
                if previous == value:
                    continue
                changed = True
                if name == "lr":
                    _rescale_lr(trainer, optimizer, value, previous)
                    continue
                for group in optimizer.param_groups:
                    group[name] = value
                rank_zero_info(f"optimizer {i}: {name} is {value} from here on (the checkpoint's run had {previous})")
            if changed:  # torch places each ``step`` by its group's ``fused`` and ``capturable``: place it anew
                optimizer.load_state_dict(optimizer.state_dict())


def _rescale_lr(trainer: L.Trainer, optimizer: torch.optim.Optimizer, lr: float, previous: float) -> None:
    """Give ``optimizer`` the base ``lr`` where the checkpoint's run had ``previous``: each group's lr, ``initial_lr``
    and its schedulers' ``base_lrs`` scaled by their ratio, so that a schedule goes on from where it stood (StepLR
    at 0.25 of its base continues at 0.25 of the new base)."""

    def scaled(old: float) -> float:
        return old * lr / previous if previous else lr

    for group in optimizer.param_groups:
        for key in ("lr", "initial_lr"):
            if key in group:
                group[key] = scaled(group[key])
    for config in trainer.lr_scheduler_configs:
        scheduler = config.scheduler
        if scheduler.optimizer is optimizer and hasattr(scheduler, "base_lrs"):
            scheduler.base_lrs = [scaled(base) for base in scheduler.base_lrs]


def check_scheduler_settings(i: int, state: dict[str, Any], scheduler: Any) -> None:
    """Refuse a resume whose scheduler ``i`` is built with other constructor settings than the checkpoint's
    (``state``, its ``state_dict``): Lightning restores the checkpoint's, so the new ones would be ignored."""
    skip = {"self", "optimizer", "last_epoch", "verbose"}
    names = [name for name in inspect.signature(type(scheduler).__init__).parameters if name not in skip]
    for name in names:
        if name not in state or not hasattr(scheduler, name) or callable(state[name]):
            continue
        if state[name] == getattr(scheduler, name):
            continue
        raise ValueError(
            f"lr scheduler {i} ({type(scheduler).__name__}) was built with {name}={state[name]!r} in the checkpoint's "
            f"run and with {name}={getattr(scheduler, name)!r} in this one: a resumed run restores the checkpoint's "
            f"schedule, so resume with {name}={state[name]!r}, or start a new run from the weights"
        )


def optimizer_settings(optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """The class and the constructor settings (plain values only) of an optimizer, as stored in checkpoints."""
    plain = (bool, int, float, str, type(None))

    def is_plain(value: Any) -> bool:
        return isinstance(value, plain) or (isinstance(value, tuple) and all(isinstance(v, plain) for v in value))

    defaults = {name: value for name, value in optimizer.defaults.items() if is_plain(value)}
    cls = type(optimizer)
    return {"class": f"{cls.__module__}.{cls.__qualname__}", "defaults": defaults}


__all__ = ["OptimizerSettingsOnResume", "check_scheduler_settings", "optimizer_settings"]
