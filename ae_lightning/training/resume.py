"""The resume policy: the run's own optimizer settings apply when training resumes from a checkpoint."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info
from torch.optim.lr_scheduler import ChainedScheduler, CyclicLR, OneCycleLR, SequentialLR

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


# What a scheduler's state holds about its progress rather than its settings (a new lr rescales ``base_lrs``).
_PROGRESS = {"base_lrs", "last_epoch", "T_cur", "T_i", "best", "num_bad_epochs", "cooldown_counter", "verbose"}
# Schedules that a new lr cannot rescale from where they stand: their lrs come from settings of their own or from
# children that :func:`_rescale_lr` does not reach.
_NOT_RESCALABLE = (OneCycleLR, CyclicLR, SequentialLR, ChainedScheduler)


def check_scheduler_settings(i: int, state: dict[str, Any], scheduler: Any) -> None:
    """Refuse a resume whose scheduler ``i`` is built with other settings than the checkpoint's (``state``, its
    ``state_dict``), those of a SequentialLR's or ChainedScheduler's schedulers too: Lightning restores the
    checkpoint's, so the new ones would be ignored. Compared: the state's plain values other than its progress."""
    differing = _differing_settings(state, scheduler.state_dict())
    if differing:
        name, (before, now) = differing
        raise ValueError(
            f"lr scheduler {i} ({type(scheduler).__name__}) was built with {name}={before!r} in the checkpoint's run "
            f"and with {name}={now!r} in this one: a resumed run restores the checkpoint's schedule, so resume with "
            f"{name}={before!r}, or start a new run from the weights"
        )


def check_lr_change(i: int, previous: float, lr: float, schedulers: list[Any]) -> None:
    """Refuse a new lr (``previous`` in the checkpoint's run) for optimizer ``i`` driven by a scheduler whose
    schedule a new base cannot rescale (OneCycleLR, CyclicLR, SequentialLR, ChainedScheduler)."""
    fixed = [type(scheduler).__name__ for scheduler in schedulers if isinstance(scheduler, _NOT_RESCALABLE)]
    if previous is not None and previous != lr and fixed:
        raise ValueError(
            f"optimizer {i}: lr {lr} on resume (the checkpoint's run had {previous}) cannot move {fixed[0]}'s "
            f"schedule, which sets the lr from settings of its own: resume with lr {previous}, or start a new run "
            "from the weights"
        )


def check_scheduled_groups(i: int, groups: list[dict[str, Any]], optimizer: torch.optim.Optimizer) -> None:
    """Refuse a resume whose optimizer ``i``'s param groups hold other scheduler settings (keys a scheduler adds, such
    as OneCycleLR's ``max_lr``) than the checkpoint's ``groups``, which Lightning restores."""
    own = {"params", "lr", "initial_lr", *optimizer.defaults}
    for before, now in zip(groups, optimizer.param_groups):
        for key in sorted(set(now) - own):
            if key in before and _plain(before[key]) and before[key] != now[key]:
                raise ValueError(
                    f"optimizer {i}'s scheduler set {key}={before[key]!r} in the checkpoint's run and "
                    f"{key}={now[key]!r} in this one: a resumed run restores the checkpoint's, so resume with "
                    f"{key}={before[key]!r}, or start a new run from the weights"
                )


def _differing_settings(before: dict[str, Any], now: dict[str, Any], prefix: str = "") -> tuple[str, tuple] | None:
    for key, value in before.items():
        if key not in now or key in _PROGRESS or (key.startswith("_") and key not in ("_milestones", "_schedulers")):
            continue
        if key == "_schedulers" and isinstance(value, list) and isinstance(now[key], list):
            for j, (child, fresh) in enumerate(zip(value, now[key])):
                found = _differing_settings(child, fresh, f"{prefix}schedulers[{j}].")
                if found:
                    return found
        elif _plain(value) and value != now[key]:
            return f"{prefix}{key.removeprefix('_')}", (value, now[key])
    return None


def _plain(value: Any) -> bool:
    if isinstance(value, (list, tuple)):
        return all(_plain(item) for item in value)
    return isinstance(value, (bool, int, float, str, type(None)))


def optimizer_settings(optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """The class and the constructor settings (plain values only) of an optimizer, as stored in checkpoints."""
    plain = (bool, int, float, str, type(None))

    def is_plain(value: Any) -> bool:
        return isinstance(value, plain) or (isinstance(value, tuple) and all(isinstance(v, plain) for v in value))

    defaults = {name: value for name, value in optimizer.defaults.items() if is_plain(value)}
    cls = type(optimizer)
    return {"class": f"{cls.__module__}.{cls.__qualname__}", "defaults": defaults}


__all__ = [
    "OptimizerSettingsOnResume",
    "check_lr_change",
    "check_scheduled_groups",
    "check_scheduler_settings",
    "optimizer_settings",
]
