"""The opt-in fast path: several optimizer steps per Lightning batch (``--config configs/fast.yaml``).

Everything the fast path does lives in this module; docs/speed.md says why it is faster and what it measured.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, TQDMProgressBar
from torch import Tensor

from ae_lightning.base import AutoencoderModule
from ae_lightning.checks import check_number
from ae_lightning.lightning_internals import every_n_train_steps


class StepsPerBatch(Callback):
    """Trains ``steps`` optimizer steps per Lightning batch: the same steps on the same batches as without it.

    In ``fit`` the training loader yields lists of ``steps`` consecutive batches and the model takes one step on each
    under manual optimization (its ``optimization_step``), so Lightning's per-batch work is paid once per ``steps``.
    These keep counting optimizer steps: ``max_steps``, ``global_step``, checkpoint names, the progress bar, the
    loggers' step axis and ``log_every_n_steps`` (at least ``steps``); integer ``limit_train_batches`` and
    ``val_check_interval`` and ``ModelCheckpoint(every_n_train_steps=...)`` must be multiples of ``steps`` (for the
    last, so must every epoch's steps). Refused: ``gradient_clip_val``, ``accumulate_grad_batches``, ``fast_dev_run``,
    fractional ``limit_train_batches``/``val_check_interval``, and resuming a checkpoint trained with other ``steps``.

    Args:
        steps: optimizer steps per Lightning batch; 1 leaves training as Lightning does it.

    Raises:
        ValueError: in ``fit``, naming a setting that cannot keep its meaning with ``steps``.
    """

    def __init__(self, steps: int = 1) -> None:
        check_number("steps", steps, "[1, inf)", integer=True)
        self.steps = steps
        self._restore: list[tuple[Any, str, Any]] = []
        self._grouped: GroupedBatches | None = None
        self._module: Any = None
        self._checked = False
        self._automatic = True
        self._stored: dict[str, Any] | None = None
        self._log_every = 0
        self._log_step: int | None = None
        self._val_every_steps = False

    # --- set-up and tear-down -----------------------------------------------------------------------------------------
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._automatic = pl_module.automatic_optimization
        if stage != "fit" or self.steps == 1:
            return
        self._refuse_unsupported(trainer)
        datamodule = trainer.datamodule
        if type(pl_module).training_step is not AutoencoderModule.training_step:
            raise ValueError(
                f"{type(pl_module).__name__} has a training_step of its own, which StepsPerBatch cannot group: "
                "train it without configs/fast.yaml"
            )
        if datamodule is None or not hasattr(pl_module, "optimization_step"):
            raise ValueError(
                f"StepsPerBatch(steps={self.steps}) needs an ae-lightning model and a datamodule, got "
                f"{type(pl_module).__name__} and {type(datamodule).__name__}"
            )
        self._module, self._checked, self._log_every = pl_module, False, trainer.log_every_n_steps
        self._val_every_steps = False
        for name in ("limit_train_batches", "val_check_interval"):
            value = getattr(trainer, name)
            if isinstance(value, int) and not isinstance(value, bool) and value != 1:
                self._replace(trainer, name, self._in_batches(name, value))
                self._val_every_steps = self._val_every_steps or name == "val_check_interval"
        # Every Lightning batch may write logs; ``_training_step`` decides which step's, the loggers drop the rest.
        self._replace(trainer, "log_every_n_steps", 1)
        make_loader = datamodule.train_dataloader
        # Lightning looks hooks up by attribute, so these instance attributes win until ``teardown`` removes them.
        self._replace(datamodule, "train_dataloader", lambda: self._group(make_loader()))
        self._replace(pl_module, "training_step", self._training_step)
        # Kept after fit: Lightning counts ``global_step`` in the manual optimization's progress from now on.
        pl_module.automatic_optimization = False
        for logger in trainer.loggers:
            self._replace(logger, "log_metrics", self._in_steps(trainer, logger.log_metrics))
        for i, callback in enumerate(trainer.callbacks):
            if type(callback) is TQDMProgressBar:
                trainer.callbacks[i] = StepsProgressBar(self.steps, callback.refresh_rate, callback.process_position)
                trainer.callbacks[i].setup(trainer, pl_module, stage)  # the loop may have passed its index already

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        for owner, name, previous in reversed(self._restore):
            if previous is _ABSENT:
                vars(owner).pop(name, None)
            else:
                setattr(owner, name, previous)
        self._restore.clear()
        for i, callback in enumerate(trainer.callbacks):
            if type(callback) is StepsProgressBar:
                trainer.callbacks[i] = TQDMProgressBar(callback.refresh_rate, callback.process_position)

    def _replace(self, owner: Any, name: str, value: Any) -> None:
        """Set ``owner.name`` to ``value`` until ``teardown``; a method is shadowed by an instance attribute."""
        own = name in vars(owner) or not callable(getattr(owner, name))
        self._restore.append((owner, name, getattr(owner, name) if own else _ABSENT))
        setattr(owner, name, value)

    def _refuse_unsupported(self, trainer: L.Trainer) -> None:
        steps, fix = self.steps, "train with one step per batch (without configs/fast.yaml)"
        accumulate = trainer.accumulate_grad_batches
        automatic_only = {"gradient_clip_val": trainer.gradient_clip_val, "accumulate_grad_batches": accumulate - 1}
        for name, value in automatic_only.items():
            if value:
                value = accumulate if name == "accumulate_grad_batches" else value
                raise ValueError(f"--trainer.{name} {value} needs Lightning's automatic optimization, which "
                                 f"StepsPerBatch(steps={steps}) replaces: {fix}")  # fmt: skip
        if trainer.fast_dev_run:
            raise ValueError(f"--trainer.fast_dev_run runs a few Lightning batches, each {steps} optimizer steps "
                             f"with StepsPerBatch; use --trainer.max_steps {steps}, or {fix}")  # fmt: skip
        if trainer.log_every_n_steps < steps:
            raise ValueError(f"--trainer.log_every_n_steps {trainer.log_every_n_steps} is less than a Lightning batch "
                             f"of StepsPerBatch(steps={steps}): give at least {steps}, or {fix}")  # fmt: skip
        for name in ("limit_train_batches", "val_check_interval"):
            value = getattr(trainer, name)
            if isinstance(value, float) and value != 1.0:
                raise ValueError(
                    f"--trainer.{name} {value} is a fraction of an epoch, which StepsPerBatch cannot "
                    f"keep exact: give a number of steps that is a multiple of {steps}, or {fix}"
                )

    def _in_batches(self, name: str, steps: int) -> int:
        if steps % self.steps:
            raise ValueError(
                f"--trainer.{name} {steps} counts optimizer steps, but with StepsPerBatch(steps={self.steps}) a "
                f"Lightning batch is {self.steps} steps: give a multiple of {self.steps}"
            )
        return steps // self.steps

    def _in_steps(self, trainer: L.Trainer, log_metrics: Any) -> Any:
        """``log_metrics`` writing training logs at the logged step only, and every log at its optimizer step."""

        def log_metrics_in_steps(metrics: dict[str, float], step: int | None = None) -> None:
            if trainer.training:
                if self._log_step is None:
                    return
                step = self._log_step
            elif step is not None:  # validation within fit: after the last step taken
                step = max(trainer.global_step - 1, 0)
            log_metrics(metrics, step)

        return log_metrics_in_steps

    def _group(self, loader: Any) -> GroupedBatches:
        self._grouped = GroupedBatches(loader, self.steps)
        return self._grouped

    def state_dict(self) -> dict[str, Any]:
        return {"steps": self.steps, "automatic": self._automatic}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._stored = state_dict

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        stored = self._stored
        # Lightning counts the steps of automatic and of manual optimization apart (global_step would restart), and
        # its position in an epoch in Lightning batches (another group size would skip or repeat batches).
        if stored is not None and stored["steps"] != self.steps and (stored["automatic"] or self.steps > 1):
            raise ValueError(
                f"the checkpoint was trained with fast.steps={stored['steps']} and this run has fast.steps="
                f"{self.steps}: resume with --fast.steps {stored['steps']}"
            )
        if self.steps == 1:
            return
        problems = []
        if trainer.global_step % self.steps:  # a run that stopped at a max_steps inside a Lightning batch
            problems.append(f"the run resumes at step {trainer.global_step}")
        every = [every_n_train_steps(callback) for callback in trainer.checkpoint_callbacks]
        for n in every:
            if n % self.steps:
                problems.append(f"ModelCheckpoint(every_n_train_steps={n}) saves every {n} steps")
        # An epoch's last, shorter Lightning batch would end between the steps at which these act.
        by_steps = [name for name, on in (("ModelCheckpoint(every_n_train_steps)", any(every)),
                    ("val_check_interval", self._val_every_steps)) if on]  # fmt: skip
        epoch_steps = len(self._grouped.loader) if self._grouped is not None else 0
        if by_steps and trainer.num_training_batches == len(self._grouped) and epoch_steps % self.steps:
            problems.append(f"an epoch has {epoch_steps} steps, which {' and '.join(by_steps)} need")
        if problems:
            raise ValueError(
                f"StepsPerBatch(steps={self.steps}) takes {self.steps} steps at a time, but {' and '.join(problems)}, "
                f"not a multiple of {self.steps}: choose steps that divide them, or train without configs/fast.yaml"
            )

    # --- training -------------------------------------------------------------------------------------------------
    def _training_step(self, group: list[Any], batch_idx: int) -> dict[str, Tensor]:
        module, trainer = self._module, self._module.trainer
        if trainer.max_steps >= 0:  # a group may hold more steps than max_steps leaves
            group = group[: trainer.max_steps - trainer.global_step]
        if not group:
            return {}
        if not self._checked:
            module.check_input(group[0][0])
            self._checked = True
        first = trainer.global_step
        steps = [module.optimization_step(batch) for batch in group]
        # Training logs are written at the steps whose index + 1 is a multiple of log_every_n_steps, as without.
        logged = [i for i in range(len(steps)) if (first + i + 1) % self._log_every == 0]
        self._log_step = first + logged[-1] if logged else None
        if logged:
            module.log_terms(steps[logged[-1]], "train", batch_size=len(group[logged[-1]][0]))
        # The non-finite guard and other callbacks see every step's terms through their mean (NaN stays NaN).
        return {name: torch.stack([step[name] for step in steps]).mean() for name in steps[0]}


class GroupedBatches:
    """Lists of ``steps`` consecutive batches of ``loader`` (the last of an epoch may hold fewer).

    Its length counts lists; ``sampler``, ``state_dict`` and ``load_state_dict`` are the wrapped loader's, so the
    position is kept in batches and Lightning announces epochs to the loader as before.
    """

    def __init__(self, loader: Any, steps: int) -> None:
        self.loader, self.steps = loader, steps
        self.sampler = getattr(loader, "sampler", None)
        self.batch_sampler = None

    def __len__(self) -> int:
        return -(-len(self.loader) // self.steps)

    def __iter__(self) -> Iterator[list[Any]]:
        group: list[Any] = []
        for batch in self.loader:
            group.append(batch)
            if len(group) == self.steps:
                yield group
                group = []
        if group:
            yield group

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, idx: int) -> None:
        self._unlogged_step = False

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._unlogged_step = False

    def state_dict(self) -> dict[str, Any]:
        return self.loader.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.loader.load_state_dict(state)


class StepsProgressBar(TQDMProgressBar):
    """Lightning's progress bar, counting the optimizer steps of :class:`StepsPerBatch`'s batches."""

    def __init__(self, steps: int, refresh_rate: int = 1, process_position: int = 0) -> None:
        super().__init__(refresh_rate, process_position)
        self.steps = steps

    @property
    def total_train_batches(self) -> int | float:
        trainer = self.trainer
        total = trainer.num_training_batches * self.steps
        if trainer.max_epochs == -1 and trainer.max_steps is not None and trainer.max_steps > 0:
            return min(total, trainer.max_steps - trainer.global_step)
        return total

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        bar = self.train_progress_bar
        if bar is None or bar.disable:
            return
        n = min((batch_idx + 1) * self.steps, bar.total) if bar.total else (batch_idx + 1) * self.steps
        if n // self.refresh_rate > bar.n // self.refresh_rate or n == bar.total:
            bar.n = n
            bar.refresh()
            bar.set_postfix(self.get_metrics(trainer, pl_module))


_ABSENT = object()

__all__ = ["GroupedBatches", "StepsPerBatch", "StepsProgressBar"]
