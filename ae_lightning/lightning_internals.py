"""The few Lightning (and jsonargparse) internals ae-lightning relies on where no public route exists, one per function.

Each use has a test in ``tests/test_lightning_internals.py`` that fails with a clear message when a Lightning release
changes it; ``pyproject.toml`` bounds Lightning to the releases the suite ran on. Why each is needed:
``docs/internals.md``.
"""

from __future__ import annotations

import contextvars
import inspect
from collections.abc import Callable
from typing import Any, TypeVar

import jsonargparse
import lightning as L
from jsonargparse import ArgumentParser
from lightning.fabric.plugins.environments import ClusterEnvironment
from lightning.pytorch.callbacks import ModelCheckpoint, WeightAveraging
from lightning.pytorch.core import optimizer
from lightning.pytorch.trainer import call
from torch import nn
from torch.optim import Optimizer


def every_n_train_steps(checkpoint: ModelCheckpoint) -> int:
    """The ``every_n_train_steps`` a ``ModelCheckpoint`` was built with (0 when it saves by epoch or time)."""
    changed = "ModelCheckpoint no longer keeps `_every_n_train_steps`"
    return _read(lambda: int(checkpoint._every_n_train_steps or 0), changed)


def enable_version_counter(checkpoint: ModelCheckpoint) -> bool:
    """The ``enable_version_counter`` a ``ModelCheckpoint`` was built with (False: it overwrites an existing file)."""
    changed = "ModelCheckpoint no longer keeps `_enable_version_counter`"
    return _read(lambda: bool(checkpoint._enable_version_counter), changed)


def uncounted_optimizer_step(trainer: L.Trainer, optimizer: Optimizer) -> None:
    """``optimizer.step()`` through the strategy and precision plugin (gradient scaling, ``on_before_optimizer_step``)
    without the ``global_step`` that manual optimization counts for every ``LightningOptimizer.step()``."""
    raw = getattr(optimizer, "optimizer", optimizer)  # the optimizer inside Lightning's wrapper
    trainer.strategy.optimizer_step(raw, closure=lambda: None)


def batches_that_stepped(trainer: L.Trainer) -> int:
    """The training batches of ``fit`` that stepped before the current one."""
    changed = "the training epoch loop no longer counts `_batches_that_stepped`"
    return _read(lambda: int(trainer.fit_loop.epoch_loop._batches_that_stepped), changed)


def ends_training_epoch(trainer: L.Trainer) -> bool:
    """Whether the training batch that ``trainer`` runs (or has just run) is its epoch's last (also true in the
    epoch-end hooks after it, false there when the run stopped inside the epoch)."""
    changed = "the training epoch loop no longer has `_num_ready_batches_reached`"
    return _read(lambda: bool(trainer.fit_loop.epoch_loop._num_ready_batches_reached()), changed)


def returns_predictions(trainer: L.Trainer) -> bool:
    """Whether the running ``predict`` keeps every prediction in memory (its ``return_predictions``)."""
    changed = "the predict loop no longer has `return_predictions`"
    return _read(lambda: bool(trainer.predict_loop.return_predictions), changed)


def optimizers_and_schedulers(configured: Any) -> tuple[list[Optimizer], list[dict[str, Any]]]:
    """The optimizers and lr scheduler settings (``{"scheduler": ..., "monitor": ...}``) of what
    ``configure_optimizers`` returned (None: no optimizer), read as Lightning reads it."""
    changed = "`lightning.pytorch.core.optimizer` has no `_configure_optimizers`"
    read = _read(lambda: optimizer._configure_optimizers, changed)
    optimizers, schedulers, monitor = read([] if configured is None else configured)
    return optimizers, [dict(s) if isinstance(s, dict) else {"scheduler": s, "monitor": monitor} for s in schedulers]


def averages_buffers_by_subtraction(callback: WeightAveraging) -> bool:
    """Whether a ``WeightAveraging`` averages the model's buffers with its default, SWA's ``a + (b - a) / (n + 1)``:
    built with ``use_buffers`` and neither ``avg_fn`` nor ``multi_avg_fn`` (Lightning keeps these private)."""
    changed = "WeightAveraging no longer keeps `_use_buffers` and `_kwargs`"
    given = _read(lambda: (bool(callback._use_buffers), dict(callback._kwargs)), changed)
    return given[0] and given[1].get("avg_fn") is None and given[1].get("multi_avg_fn") is None


def parse_unvalidated(parser: ArgumentParser, args: list[str]) -> Any:
    """``parser``'s parse of ``args`` without the check of required arguments and values (jsonargparse's private
    ``_skip_validation``)."""
    if "_skip_validation" not in inspect.signature(parser.parse_args).parameters:
        raise RuntimeError(
            f"jsonargparse {jsonargparse.__version__} changed an internal that ae-lightning uses: parse_args no longer "
            "takes `_skip_validation`. Install a jsonargparse release within ae-lightning's pyproject.toml bounds"
        )
    return parser.parse_args(args, _skip_validation=True)


def stored_loader_states(checkpoint: dict[str, Any]) -> list[dict[str, Any]]:
    """The training loaders' ``state_dict``s in a checkpoint of ``fit`` (empty if it holds none)."""
    if (loops := checkpoint.get("loops")) is None:
        return []
    changed = "checkpoints no longer keep loops/fit_loop/state_dict"
    states = _read(lambda: loops["fit_loop"]["state_dict"].get("combined_loader", []), changed, KeyError, TypeError)
    return [state for state in states if isinstance(state, dict)]


def restarts_a_finished_epoch(checkpoint: dict[str, Any]) -> bool:
    """Whether ``checkpoint`` was written after its epoch's training ended and :func:`start_next_epoch` did not mark
    it (Lightning 2.6, given ``max_steps``, restarts that epoch on resume)."""
    return _finished_epoch(checkpoint) is not None


def reopen_stopped_epoch(trainer: L.Trainer, checkpoint: dict[str, Any]) -> bool:
    """Mark the epoch of ``checkpoint`` (a checkpoint of ``trainer``'s fit) unfinished where fit stopped inside it
    (``max_steps``, ``should_stop``), as in a checkpoint at its last step. Returns whether it did."""
    if ends_training_epoch(trainer) or (progress := _finished_epoch(checkpoint)) is None:
        return False
    for counts in progress[:2]:
        counts["processed"] -= 1
        counts["completed"] = min(counts["completed"], counts["processed"])
    checkpoint["epoch"] = progress[0]["completed"]
    return True


def start_next_epoch(trainer: L.Trainer, checkpoint: dict[str, Any]) -> bool:
    """Mark ``checkpoint`` (of ``trainer``'s fit, written after its epoch's training ran to its last batch) as at the
    start of the next epoch: that epoch completed, none of the next one's batches counted. Returns whether it did."""
    if not ends_training_epoch(trainer) or (progress := _finished_epoch(checkpoint)) is None:
        return False
    current, total, batches = progress
    for counts in (current, total):
        counts["completed"] = counts["processed"]
    batches["current"] = dict.fromkeys(batches["current"], 0)
    batches["is_last_batch"] = False
    return True


def _finished_epoch(checkpoint: dict[str, Any]) -> tuple[dict[str, int], dict[str, int], dict[str, Any]] | None:
    """Where the epoch of ``checkpoint`` (of ``fit``) ran to its end and counted its batches: its fit-loop
    ``epoch_progress`` counts (``current``, ``total``) and its epoch loop's ``batch_progress``, the dicts themselves."""
    if (loops := checkpoint.get("loops")) is None:
        return None

    def read() -> tuple[dict[str, int], dict[str, int], dict[str, Any]] | None:
        fit_loop = loops["fit_loop"]
        epochs, batches = fit_loop["epoch_progress"], fit_loop["epoch_loop.batch_progress"]
        current, total = epochs["current"], epochs["total"]
        finished = current["ready"] == current["started"] == current["processed"] > 0
        return (current, total, batches) if finished and batches["current"]["ready"] > 0 else None

    changed = "checkpoints no longer keep loops/fit_loop/epoch_progress and epoch_loop.batch_progress"
    return _read(read, changed, KeyError, TypeError)


T = TypeVar("T")


def without_cli_hyperparameters(build: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """``build(*args, **kwargs)`` in an empty ``contextvars`` context: a LightningModule it creates saves its own
    hyperparameters, not those LightningCLI is handing the model it instantiates at the time."""
    return contextvars.Context().run(build, *args, **kwargs)


def has_forward_hooks(module: nn.Module) -> bool:
    """Whether forward or forward-pre hooks are registered on ``module`` itself or on every module (globally)."""
    from torch.nn.modules import module as modules

    registries = (module._forward_hooks, module._forward_pre_hooks, modules._global_forward_hooks,
                  modules._global_forward_pre_hooks)  # fmt: skip
    return any(registries)


def weighted_batch_size(n: int) -> float:
    """The ``batch_size`` for ``self.log(..., sync_dist=True)`` of an epoch mean over all ranks' samples: ``n`` as a
    float (Lightning floors an integer one's mean across ranks)."""
    return float(n)


def cluster_environment(trainer: L.Trainer) -> ClusterEnvironment:
    """The cluster environment of ``trainer``, a single process's too (the one Lightning's signal handlers read)."""
    changed = "the Trainer's accelerator connector no longer keeps `cluster_environment`"
    return _read(lambda: trainer._accelerator_connector.cluster_environment, changed)


def callback_dispatcher() -> Callable[..., None]:
    """Lightning's dispatch of a callback hook as its loops call it, ``dispatch(trainer, hook_name, *args)``: the hook
    of every callback of ``trainer``, each under the trainer's profiler (``benchmarks/hook_cost.py`` times it)."""
    return _read(lambda: call._call_callback_hooks, "`lightning.pytorch.trainer.call` has no `_call_callback_hooks`")


def _read(read: Callable[[], T], changed: str, *errors: type[Exception]) -> T:
    """``read()``, whose AttributeError (or one of ``errors``) means that Lightning changed what ``changed`` says."""
    try:
        return read()
    except (AttributeError, *errors):
        raise RuntimeError(
            f"Lightning {L.__version__} changed an internal that ae-lightning uses: {changed}. Install a Lightning "
            "release within the bounds of ae-lightning's pyproject.toml, or report this with the Lightning version"
        ) from None
