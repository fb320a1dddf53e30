"""Resume policies: a checkpoint written after fit stopped inside an epoch resumes inside it, one written after an
epoch's training ended resumes at the next epoch's first batch, and the run's own optimizer settings apply when training
resumes from a checkpoint."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info
from torch.optim.lr_scheduler import ChainedScheduler, CyclicLR, OneCycleLR, SequentialLR

from ae_lightning.base import class_path
from ae_lightning.checks import ConfigError
from ae_lightning.lightning_internals import reopen_stopped_epoch, start_next_epoch


class UnfinishedEpochInCheckpoint(Callback):
    """Marks checkpoints written after fit stopped inside an epoch as unfinished (a resume goes on with its remaining
    batches), and those written after an epoch's training ran to its last batch as at the next epoch's first batch
    (``docs/fault_tolerance.md``). The command installs it."""

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        reopen_stopped_epoch(trainer, checkpoint)
        start_next_epoch(trainer, checkpoint)


class OptimizerSettingsOnResume(Callback):
    """Records each optimizer's class and param group settings, and each lr scheduler's class, in checkpoints; on resume
    applies this run's settings where they differ (a new ``lr`` as a new base that a schedule goes on from; an optimizer
    that no scheduler of this run drives trains at this run's lr) and refuses a resume the optimizers cannot take
    (:func:`check_optimizers_resume`; ``docs/fault_tolerance.md``). The command installs it."""

    key = "ae_lightning_optimizers"
    schedulers_key = "ae_lightning_lr_schedulers"

    def __init__(self) -> None:
        self._resumed: list[dict[str, Any]] | None = None
        self._groups: dict[str, Any] = {}  # the checkpoint's param groups, without the optimizers' state
        self._built: list[dict[str, Any]] = []  # this run's settings, taken before Lightning restores the checkpoint's

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        built = self._built if len(self._built) == len(trainer.optimizers) else []
        checkpoint[self.key] = built or [optimizer_settings(optimizer) for optimizer in trainer.optimizers]
        checkpoint[self.schedulers_key] = [
            class_path(type(config.scheduler)) for config in trainer.lr_scheduler_configs
        ]

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        self._resumed = checkpoint.get(self.key)
        states = checkpoint.get("optimizer_states") or []
        self._groups = {"optimizer_states": [{"param_groups": state.get("param_groups", [])} for state in states]}
        self._check_groups(trainer)  # strategies that restore after setup load it after ``on_fit_start``

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # The optimizers are built by now; Lightning restores the checkpoint's state into them afterwards.
        self._built = [optimizer_settings(optimizer) for optimizer in trainer.optimizers]
        self._check_groups(trainer)

    def _check_groups(self, trainer: L.Trainer) -> None:
        if self._built and self._groups:
            check_optimizers_resume(self._groups, trainer.optimizers, [])

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        resumed, self._resumed = self._resumed, None
        # Called without ``on_fit_start`` (outside a Trainer), this run's defaults stand for its groups' settings.
        built = self._built or [
            {**settings, "groups": [settings["defaults"] for _ in settings["groups"]]}
            for settings in map(optimizer_settings, trainer.optimizers)
        ]
        for i, (optimizer, before, now) in enumerate(zip(trainer.optimizers, resumed or [], built)):
            schedulers = [c.scheduler for c in trainer.lr_scheduler_configs if c.scheduler.optimizer is optimizer]
            changes = check_optimizer_resume(i, before, now, schedulers)
            for j, name, previous, value in changes:
                if name == "lr":
                    _rescale_lr(optimizer, j, schedulers, value, previous)
                else:
                    optimizer.param_groups[j][name] = value
                where = f"optimizer {i}" + (f" group {j}" if len(now["groups"]) > 1 else "")
                rank_zero_info(f"{where}: {name} is {value} from here on (the checkpoint's run had {previous})")
            if changes:  # torch places each ``step`` by its group's ``fused`` and ``capturable``: place it anew
                optimizer.load_state_dict(optimizer.state_dict())
            if not schedulers:  # nothing moves the lr from this run's: not the checkpoint's run's schedule
                _restore_base_lrs(i, optimizer, now["groups"])


def _restore_base_lrs(i: int, optimizer: torch.optim.Optimizer, groups: list[dict[str, Any]]) -> None:
    """Give each param group of optimizer ``i``, which no scheduler drives, its base lr of ``groups`` (this run's)."""
    for j, (group, settings) in enumerate(zip(optimizer.param_groups, groups)):
        if "lr" in settings and group["lr"] != settings["lr"]:
            where = f"optimizer {i}" + (f" group {j}" if len(groups) > 1 else "")
            rank_zero_info(f"{where}: lr is {settings['lr']} from here on: this run has no lr scheduler (the "
                           f"checkpoint's run's had brought it to {group['lr']:g})")  # fmt: skip
            group["lr"] = settings["lr"]
            group.pop("initial_lr", None)


def check_optimizers_resume(checkpoint: dict[str, Any], optimizers: list[Any], schedulers: list[Any]) -> None:
    """Refuse a resume from ``checkpoint`` that this run's ``optimizers``, as built (before Lightning restores the
    checkpoint's state into them), and lr ``schedulers`` cannot take: another number of param groups, and what
    :func:`check_optimizer_resume`, :func:`check_scheduled_groups` and :func:`check_scheduler_settings` refuse, and
    another scheduler class."""
    stored = checkpoint.get(OptimizerSettingsOnResume.key) or []
    states = checkpoint.get("optimizer_states") or []
    for i, optimizer in enumerate(optimizers):
        groups = states[i].get("param_groups", []) if i < len(states) else []
        if i < len(states) and len(optimizer.param_groups) != len(groups):
            raise ConfigError(
                f"optimizer {i} ({type(optimizer).__name__}) has {len(optimizer.param_groups)} param groups in this "
                f"run and had {len(groups)} in the checkpoint's run: its state cannot carry over, so resume with the "
                "checkpoint's model settings, or start a new run from the weights"
            )
        if i < len(stored):
            own = [scheduler for scheduler in schedulers if getattr(scheduler, "optimizer", None) is optimizer]
            check_optimizer_resume(i, stored[i], optimizer_settings(optimizer), own)
        check_scheduled_groups(i, groups, optimizer)
    classes = checkpoint.get(OptimizerSettingsOnResume.schedulers_key) or []  # not in checkpoints before 2026-12-07
    for i, (state, scheduler) in enumerate(zip(checkpoint.get("lr_schedulers") or [], schedulers)):
        if i < len(classes) and classes[i] != class_path(type(scheduler)):
            raise ConfigError(
                f"the checkpoint's lr scheduler {i} is a {classes[i]}, this run's a {class_path(type(scheduler))}: its "
                "state cannot carry over. Resume with the checkpoint's scheduler, or start a new run from the weights"
            )
        check_scheduler_settings(i, state, scheduler)


def check_optimizer_resume(
    i: int, before: dict[str, Any], now: dict[str, Any], schedulers: list[Any]
) -> list[tuple[int, str, Any, Any]]:
    """Refuse a resume whose optimizer ``i`` changed class or has a new lr that its ``schedulers`` cannot move;
    ``before``, ``now``: :func:`optimizer_settings` of the checkpoint's run and of this one. Returns the changed group
    settings as ``(group, name, the checkpoint's run's value, this run's)``."""
    if now["class"] != before["class"]:
        raise ConfigError(
            f"the checkpoint's optimizer {i} is a {before['class']}, this run's a {now['class']}: its state cannot "
            "carry over. Resume with the checkpoint's optimizer, or start afresh without --ckpt_path"
        )
    check_lr_change(i, before["defaults"].get("lr"), now["defaults"].get("lr"), schedulers)
    # Older checkpoints record only the defaults: a changed default applies to the groups that follow the defaults.
    own = now["defaults"]
    previous_groups = before.get("groups") or [
        {k: v if v != own.get(k) else before["defaults"].get(k, v) for k, v in group.items()} for group in now["groups"]
    ]
    changes = [
        (j, name, old.get(name, value), value)
        for j, (old, new) in enumerate(zip(previous_groups, now["groups"]))
        for name, value in new.items()
        if old.get(name, value) != value
    ]
    for _, name, previous, value in changes:
        if name == "lr":
            check_lr_change(i, previous, value, schedulers)
    return changes


def _rescale_lr(optimizer: torch.optim.Optimizer, j: int, schedulers: list[Any], lr: float, previous: float) -> None:
    """Give param group ``j`` the base ``lr`` (``previous`` before): its lr, ``initial_lr`` and schedulers' ``base_lrs``
    scaled by their ratio, so that a schedule goes on from where it stood."""

    def scaled(old: float) -> float:
        return old * lr / previous if previous else lr

    group = optimizer.param_groups[j]
    for key in ("lr", "initial_lr"):
        if key in group:
            group[key] = scaled(group[key])
    for scheduler in schedulers:
        if hasattr(scheduler, "base_lrs"):
            scheduler.base_lrs = [scaled(base) if k == j else base for k, base in enumerate(scheduler.base_lrs)]


# What a scheduler's state holds about its progress rather than its settings (a new lr rescales ``base_lrs``).
_PROGRESS = {"base_lrs", "last_epoch", "T_cur", "T_i", "best", "num_bad_epochs", "cooldown_counter", "verbose"}
# Schedules whose lrs come from settings of their own or from children that :func:`_rescale_lr` does not reach.
_NOT_RESCALABLE = (OneCycleLR, CyclicLR, SequentialLR, ChainedScheduler)


def check_scheduler_settings(i: int, state: dict[str, Any], scheduler: Any) -> None:
    """Refuse a resume whose scheduler ``i`` (or one a SequentialLR or ChainedScheduler holds) has other plain settings
    than the checkpoint's ``state`` (its ``state_dict``): Lightning restores the checkpoint's."""
    if differing := _differing_settings(state, scheduler.state_dict()):
        name, (before, now) = differing
        raise ConfigError(
            f"lr scheduler {i} ({type(scheduler).__name__}) was built with {name}={before!r} in the checkpoint's run "
            f"and with {name}={now!r} in this one: a resumed run restores the checkpoint's schedule, so resume with "
            f"{name}={before!r}, or start a new run from the weights"
        )


def check_lr_change(i: int, previous: float, lr: float, schedulers: list[Any]) -> None:
    """Refuse a new lr (``previous`` before) for optimizer ``i`` driven by a scheduler a new base cannot rescale."""
    fixed = [type(scheduler).__name__ for scheduler in schedulers if isinstance(scheduler, _NOT_RESCALABLE)]
    if previous is not None and previous != lr and fixed:
        raise ConfigError(
            f"optimizer {i}: lr {lr} on resume (the checkpoint's run had {previous}) cannot move {fixed[0]}'s "
            f"schedule, which sets the lr from settings of its own: resume with lr {previous}, or start a new run "
            "from the weights"
        )


def check_scheduled_groups(i: int, groups: list[dict[str, Any]], optimizer: torch.optim.Optimizer) -> None:
    """Refuse a resume whose optimizer ``i``'s groups hold other scheduler-added settings (OneCycleLR's ``max_lr``)
    than the checkpoint's ``groups``."""
    own = {"params", "lr", "initial_lr", *optimizer.defaults}
    for before, now in zip(groups, optimizer.param_groups):
        for key in sorted(set(now) - own):
            if key in before and _plain(before[key]) and before[key] != now[key]:
                raise ConfigError(
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
                if found := _differing_settings(child, fresh, f"{prefix}schedulers[{j}]."):
                    return found
        elif _plain(value) and value != now[key]:
            return f"{prefix}{key.removeprefix('_')}", (value, now[key])
    return None


def _plain(value: Any) -> bool:
    if isinstance(value, (list, tuple)):
        return all(_plain(item) for item in value)
    return isinstance(value, (bool, int, float, str, type(None)))


def optimizer_settings(optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """An optimizer's class, defaults and each param group's settings (``lr``: its base), plain values only."""
    defaults = {name: value for name, value in optimizer.defaults.items() if _plain(value)}
    groups = [
        {
            name: group.get("initial_lr", group[name]) if name == "lr" else group[name]
            for name in defaults
            if name in group and _plain(group[name])
        }
        for group in optimizer.param_groups
    ]
    return {"class": class_path(type(optimizer)), "defaults": defaults, "groups": groups}


__all__ = [
    "OptimizerSettingsOnResume",
    "UnfinishedEpochInCheckpoint",
    "check_lr_change",
    "check_optimizer_resume",
    "check_optimizers_resume",
    "check_scheduled_groups",
    "check_scheduler_settings",
    "optimizer_settings",
]
