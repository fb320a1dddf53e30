"""Surviving faults: crash-safe checkpoint files, random generators in checkpoints, SLURM requeues at a step
boundary, and a guard on non-finite losses.

The ``ae-lightning`` command installs all of them (see :mod:`ae_lightning.cli`); from Python, pass
``plugins=[AtomicCheckpointIO()]`` and ``callbacks=[RandomStateCheckpoint(), SlurmRequeue(), NonFiniteGuard()]`` to
the Trainer.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import threading
from pathlib import Path
from typing import Any, Literal

import lightning as L
import numpy as np
import torch
from lightning.fabric.plugins.environments import SLURMEnvironment
from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.fabric.utilities.types import _PATH
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import Tensor

NonFiniteAction = Literal["error", "skip"]


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes a checkpoint to a temporary file next to its target, syncs it to disk and renames it into place.

    A process that dies while writing (SIGKILL, node failure, full disk) leaves the previous ``last.ckpt`` intact and
    at most a hidden ``.<name>.<pid>.tmp`` file, which the next successful save of that name removes. Lightning's own
    writer renames through fsspec's temporary file in the system temp folder: where that is another file system than
    the checkpoint folder (a node-local ``/tmp`` and a shared ``runs/``), the "rename" becomes a copy that a dying
    process truncates. Paths that are not local (``s3://`` ...) keep Lightning's writer.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: _PATH, storage_options: Any | None = None) -> None:
        if storage_options is not None or get_filesystem(path).protocol not in ("file", ("file", "local")):
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            with open(temporary, "wb") as file:
                torch.save(checkpoint, file)
                file.flush()
                os.fsync(file.fileno())
            os.replace(temporary, path)  # atomic on POSIX: readers see the old file or the new one, never a mix
        except BaseException:
            temporary.unlink(missing_ok=True)
            raise
        _fsync_directory(path.parent)
        for stale in path.parent.glob(f".{path.name}.*.tmp"):  # left by processes that died while writing
            stale.unlink(missing_ok=True)


def _fsync_directory(directory: Path) -> None:
    """Make a rename in ``directory`` durable (a no-op where directories cannot be opened)."""
    try:
        descriptor = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


class RandomStateCheckpoint(Callback):
    """Stores every process's random generators in checkpoints and restores them when training resumes.

    Lightning checkpoints hold weights, optimizers, loop counters and the data loader's position, but not the random
    generators, so without this a resumed VAE draws other reparameterization noise (and dropout other masks) than an
    uninterrupted run. Saved: the torch CPU generator, the CUDA generator of the process's device, NumPy's and
    Python's. Under DDP each rank's states are gathered into the checkpoint (its ranks draw differently, e.g. for a
    last batch of another size), and each rank gets its own back when the world size is unchanged.

    The states are restored when training starts, after the sanity check, which draws numbers of its own.
    """

    key = "random_states"

    def __init__(self) -> None:
        self._to_restore: dict[str, Any] | None = None

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        state = _collect_random_states()
        if trainer.world_size > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
            states: list[Any] = [None] * trainer.world_size
            torch.distributed.all_gather_object(states, state)
        else:
            states = [state]
        checkpoint[self.key] = states

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        states = checkpoint.get(self.key)
        if not states or trainer.state.fn != TrainerFn.FITTING:
            return
        if len(states) != trainer.world_size:
            rank_zero_warn(
                f"the checkpoint holds the random states of {len(states)} processes, this run has "
                f"{trainer.world_size}: every process restores those of rank 0, so the run will not repeat the "
                "original one exactly"
            )
        self._to_restore = states[trainer.global_rank] if len(states) == trainer.world_size else states[0]

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._to_restore is not None:
            _restore_random_states(self._to_restore)
            self._to_restore = None


def _collect_random_states() -> dict[str, Any]:
    # Plain tensors, ints and tuples only, so that checkpoints still load with ``torch.load(weights_only=True)``.
    kind, keys, position, has_gauss, cached_gaussian = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), position, has_gauss, cached_gaussian),
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _restore_random_states(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    kind, keys, position, has_gauss, cached_gaussian = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), position, has_gauss, cached_gaussian))
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


class SlurmRequeue(Callback):
    """Handles SLURM's requeue signal at a step boundary, on all ranks together: writes the HPC checkpoint, requeues
    the job, and exits.

    Lightning's own handler writes ``hpc_ckpt_<n>.ckpt`` inside the signal handler, wherever the signal finds each
    rank. Under DDP that can be inside different collectives on different ranks (a gradient all-reduce on one, the
    checkpoint's barrier on another), and then they wait for each other until the job is killed. Here the handler only
    notes the signal. Every ``check_every_n_steps`` optimizer steps the ranks agree, with one all-reduce (a host sync
    on GPUs), whether any of them got it (a single process looks at every batch). If so, at the end of that batch they
    write ``<default_root_dir>/hpc_ckpt_<n>.ckpt`` together, at the point where ``ModelCheckpoint`` writes its step
    checkpoints, so the resumed run continues exactly; rank 0 requeues the job with ``scontrol requeue``; and every
    rank exits (SystemExit 0), ignoring the SIGTERM with which SLURM ends the requeued job. Should the requeue fail,
    training goes on.

    Active in ``fit`` under SLURM with Lightning's auto-requeue on (``SLURMEnvironment(auto_requeue=True)``, the
    default); as its handler is installed first, Lightning leaves that signal to it.

    Args:
        check_every_n_steps: how often, in optimizer steps, the ranks agree on whether the signal came (at the end
            of the first training batch that reaches it: with a model's ``steps_per_batch`` K, every
            ``max(K, check_every_n_steps)`` steps or so).
    """

    def __init__(self, check_every_n_steps: int = 10) -> None:
        if check_every_n_steps < 1:
            raise ValueError(f"check_every_n_steps must be a positive integer, got {check_every_n_steps}")
        self.check_every_n_steps = check_every_n_steps
        self._signum: int | None = None
        self._previous_handler: Any = None
        self._signalled = False
        self._checked_at_step = 0

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        # The cluster environment Lightning's own signal handling reads (also for a single device under SLURM).
        environment = trainer._accelerator_connector.cluster_environment
        wanted = isinstance(environment, SLURMEnvironment) and environment.auto_requeue and stage == "fit"
        if not wanted or threading.current_thread() is not threading.main_thread():
            return
        self._signum = environment.requeue_signal
        self._previous_handler = signal.signal(self._signum, self._note_signal)
        self._signalled, self._checked_at_step = False, trainer.global_step

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self._signum is not None:
            signal.signal(self._signum, self._previous_handler)
            self._signum = None

    def _note_signal(self, signum: int, frame: Any) -> None:
        self._signalled = True

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self._signum is None:
            return
        if trainer.world_size == 1:  # nothing to agree on: the flag is read every step, for free
            if self._signalled:
                self._requeue(trainer)
            return
        if trainer.global_step - self._checked_at_step >= self.check_every_n_steps:
            self._checked_at_step = trainer.global_step
            signalled = torch.tensor(int(self._signalled), device=pl_module.device)
            if trainer.strategy.reduce(signalled, reduce_op="max").item():
                self._requeue(trainer)

    def _requeue(self, trainer: L.Trainer) -> None:
        rank_zero_info(f"SLURM's signal {self._signum} came: writing the HPC checkpoint and requeuing the job")
        path = trainer._checkpoint_connector.hpc_save_path(trainer.default_root_dir)  # Lightning's naming
        trainer.save_checkpoint(path)
        # The requeue ends this job with SIGTERM, whose Lightning handler would want all ranks at one point again.
        sigterm_handler = signal.signal(signal.SIGTERM, signal.SIG_IGN)
        requeued = trainer.is_global_zero and _requeue_slurm_job()
        if trainer.world_size > 1:
            requeued = trainer.strategy.broadcast(requeued, src=0)
        if requeued:
            for logger in trainer.loggers:
                logger.finalize("success")
            raise SystemExit(0)
        signal.signal(signal.SIGTERM, sigterm_handler)
        self._signalled = False
        rank_zero_warn(f"requeuing SLURM job {_slurm_job_id()} failed: training goes on; {path} is written")


def _slurm_job_id() -> str:
    array_job = os.environ.get("SLURM_ARRAY_JOB_ID")
    if array_job is not None:
        return f"{array_job}_{os.environ['SLURM_ARRAY_TASK_ID']}"
    return os.environ["SLURM_JOB_ID"]


def _requeue_slurm_job() -> bool:
    try:
        result = subprocess.run(["scontrol", "requeue", _slurm_job_id()], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as error:
        rank_zero_warn(f"scontrol requeue failed: {error}")
        return False
    if result.returncode != 0:
        rank_zero_warn(f"scontrol requeue failed: {result.stderr.strip()}")
    else:
        rank_zero_info(f"requeued SLURM job {_slurm_job_id()}")
    return result.returncode == 0


class NonFiniteLossError(FloatingPointError):
    """A training loss term went NaN or infinite."""


class NonFiniteGuard(Callback):
    """Stops training when a training loss term goes non-finite (or skips such batches), and keeps non-finite
    weights out of checkpoints.

    It reads the named loss terms that the training step returns (every variant returns its ``loss_terms`` dict).

    ``action: error`` raises :class:`NonFiniteLossError` naming the global step, the epoch and batch, and the terms
    that were non-finite, with their values. Reading a value from a GPU stalls the host until the GPU catches up, and
    on a CPU every tensor operation costs microseconds that a small model's step notices, so no step reads or computes
    anything: each step only keeps its (detached) loss terms, and the kept terms are checked together, with one read,
    every ``check_every_n_steps`` steps (default: the trainer's ``log_every_n_steps``, when Lightning reads the logged
    values anyway), before validation, at the end of each epoch and of training, and before every checkpoint is
    written. The error names the first non-finite step among them. Under DDP the ranks agree at each read (one
    all-reduce), so all of them stop together.

    ``action: skip`` skips the optimizer steps whose gradients are NaN or infinite instead: it drops the gradients, so
    the optimizer leaves weights and moments as they were, and counts the skipped batches (logged at the end of each
    epoch as ``train/skipped_batches``, kept across resumes). Deciding before the step needs the gradients'
    finiteness on the host: one sync per optimizer step, a few percent of throughput for small models on a GPU.
    Under DDP the gradients are already averaged across ranks there, so all ranks skip the same steps. Under
    ``16-mixed`` the steps whose scaled gradients overflowed, which the gradient scaler skips anyway, count too.

    In both modes a checkpoint is never written from non-finite weights: the save raises instead, so the previous
    ``last.ckpt`` stays the last good one.

    Args:
        action: ``error`` (stop training) or ``skip`` (skip the batch, count it). With a model's
            ``steps_per_batch`` K > 1 a training batch holds K optimizer steps: ``train/skipped_batches`` counts the
            batches in which any step was skipped, and an error names the batch's first global step.
        check_every_n_steps: how often, in training batches, the kept terms are checked; ``None``: the trainer's
            ``log_every_n_steps``.
    """

    def __init__(self, action: NonFiniteAction = "error", check_every_n_steps: int | None = None) -> None:
        if action not in ("error", "skip"):
            raise ValueError(f"action must be 'error' or 'skip', got {action!r}")
        if check_every_n_steps is not None and check_every_n_steps < 1:
            raise ValueError(f"check_every_n_steps must be a positive integer, got {check_every_n_steps}")
        self.action = action
        self.check_every_n_steps = check_every_n_steps
        self.skipped_batches = 0
        self._skipped_this_batch = False
        self._step_at_batch_start = 0
        # Per training batch since the last check: its (global step, epoch, batch) and its detached loss terms.
        self._positions: list[tuple[int, int, int]] = []
        self._terms: list[dict[str, Tensor]] = []

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._positions.clear()
        self._terms.clear()

    # --- error: keep the terms, check them now and then --------------------------------------------------------------
    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self._step_at_batch_start = trainer.global_step  # the step whose loss the batch computes, before its update

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self.action == "skip":
            self.skipped_batches += self._skipped_this_batch
            self._skipped_this_batch = False
            return
        terms = _loss_terms(outputs)
        if not terms:
            return
        self._terms.append(terms)
        self._positions.append((self._step_at_batch_start, trainer.current_epoch, batch_idx))
        if len(self._positions) >= (self.check_every_n_steps or trainer.log_every_n_steps):
            self._check(trainer)

    def _check(self, trainer: L.Trainer) -> None:
        if not self._positions:  # the same on every rank: they run the same number of batches
            return
        first_bad = self._first_non_finite(trainer)
        if first_bad is None:
            self._positions.clear()
            self._terms.clear()
            return
        if first_bad < 0:
            raise NonFiniteLossError("a training loss term went non-finite on another rank; see its error")
        step, epoch, batch = self._positions[first_bad]
        values = {name: value.item() for name, value in self._terms[first_bad].items()}
        bad_names = [name for name, value in values.items() if not np.isfinite(value)]
        shown = ", ".join(f"{name}={value:.4g}" for name, value in values.items())
        raise NonFiniteLossError(
            f"non-finite training loss at global step {step} (epoch {epoch}, batch {batch}): "
            f"{', '.join(bad_names)} {'is' if len(bad_names) == 1 else 'are'} not finite ({shown}). "
            "The last checkpoint written before that step is kept. Lower the learning rate, clip gradients "
            "(--trainer.gradient_clip_val) or skip such batches (--nonfinite.action skip)."
        )

    def _first_non_finite(self, trainer: L.Trainer) -> int | None:
        """Index of the first kept batch with a non-finite term; -1 if only another rank has one; None if none has."""
        kept = len(self._terms)
        # One stack of every kept value and one read (the batches' terms may differ in number and names).
        values = torch.stack([value.float().reshape(()) for terms in self._terms for value in terms.values()])
        owner = torch.tensor([i for i, terms in enumerate(self._terms) for _ in terms], device=values.device)
        first = torch.where(torch.isfinite(values), kept, owner).min()  # ``kept`` where all are finite
        any_bad = (first < kept).long()
        if trainer.world_size > 1:  # every rank must stop at the same check, not only the one that saw it
            any_bad = trainer.strategy.reduce(any_bad, reduce_op="max")
        if not any_bad.item():
            return None
        first_bad = int(first.item())
        return first_bad if first_bad < kept else -1

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._check(trainer)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._check(trainer)
        if self.action == "skip":
            pl_module.log("train/skipped_batches", float(self.skipped_batches))

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._check(trainer)

    # --- skip: decide before each optimizer step ----------------------------------------------------------------------
    def on_before_optimizer_step(
        self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        if self.action != "skip":
            return
        params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        if not params:
            return
        # The largest absolute gradient is finite exactly when all gradients are (a sum of squares could overflow).
        largest = torch.stack(torch._foreach_norm([p.grad for p in params], float("inf")))
        if torch.isfinite(largest).all():
            return
        for p in params:  # optimizers step only parameters with a gradient: weights and moments stay as they were
            p.grad = None
        if not self._skipped_this_batch and self.skipped_batches == 0:
            rank_zero_warn(
                f"non-finite gradients at global step {trainer.global_step}: skipping the batch (nonfinite.action "
                "is 'skip'); train/skipped_batches counts such batches"
            )
        self._skipped_this_batch = True

    # --- both: no checkpoint from non-finite weights ------------------------------------------------------------------
    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        self._check(trainer)
        weights = [p.detach() for p in pl_module.parameters()]
        if weights and not torch.isfinite(torch.stack(torch._foreach_norm(weights, float("inf")))).all():
            raise NonFiniteLossError(
                f"the weights are not finite at global step {trainer.global_step}: not writing a checkpoint, so the "
                "last one written stays the last good one"
            )

    def state_dict(self) -> dict[str, Any]:
        return {"skipped_batches": self.skipped_batches}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.skipped_batches = state_dict.get("skipped_batches", 0)


def _loss_terms(outputs: Any) -> dict[str, Tensor]:
    """The scalar tensors of a training step's output (the loss terms dict, or a bare loss), detached."""
    if isinstance(outputs, Tensor):
        return {"loss": outputs.detach()} if outputs.numel() == 1 else {}
    if isinstance(outputs, dict):
        return {k: v.detach() for k, v in outputs.items() if isinstance(v, Tensor) and v.numel() == 1}
    return {}


__all__ = ["AtomicCheckpointIO", "NonFiniteGuard", "NonFiniteLossError", "RandomStateCheckpoint", "SlurmRequeue"]
