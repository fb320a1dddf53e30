"""The resume policy: the run's own optimizer settings apply when training resumes from a checkpoint."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info

from ae_lightning.base import check_optimizer_class


class OptimizerSettingsOnResume(Callback):
    """Records each optimizer's class and settings in checkpoints; on resume, after Lightning has restored the
    optimizers' state, applies this run's settings (``lr``, ``weight_decay``, ``fused``, ...) where they differ, to
    every param group and to the schedulers' ``base_lrs`` (the state's ``step`` counts then lie where this run's
    settings need them), and refuses another optimizer class, whose state cannot carry over.

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
                for group in optimizer.param_groups:
                    group[name] = value
                    if name == "lr" and "initial_lr" in group:
                        group["initial_lr"] = value
                for config in trainer.lr_scheduler_configs:
                    scheduler = config.scheduler
                    if name == "lr" and scheduler.optimizer is optimizer and hasattr(scheduler, "base_lrs"):
                        scheduler.base_lrs = [value] * len(optimizer.param_groups)
                rank_zero_info(f"optimizer {i}: {name} is {value} from here on (the checkpoint's run had {previous})")
            if changed:  # torch places each ``step`` by its group's ``fused`` and ``capturable``: place it anew
                optimizer.load_state_dict(optimizer.state_dict())


def optimizer_settings(optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """The class and the constructor settings (plain values only) of an optimizer, as stored in checkpoints."""
    plain = (bool, int, float, str, type(None))

    def is_plain(value: Any) -> bool:
        return isinstance(value, plain) or (isinstance(value, tuple) and all(isinstance(v, plain) for v in value))

    defaults = {name: value for name, value in optimizer.defaults.items() if is_plain(value)}
    cls = type(optimizer)
    return {"class": f"{cls.__module__}.{cls.__qualname__}", "defaults": defaults}


__all__ = ["OptimizerSettingsOnResume", "optimizer_settings"]
