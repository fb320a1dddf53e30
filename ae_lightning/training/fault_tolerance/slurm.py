"""SLURM's requeue signal handled at a step boundary, on all ranks together."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.fabric.plugins.environments import SLURMEnvironment
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from ae_lightning.checks import check_number


class SlurmRequeue(Callback):
    """Handles SLURM's requeue signal at a step boundary, on all ranks together: writes the HPC checkpoint
    ``<default_root_dir>/hpc_ckpt_<n>.ckpt``, requeues the job with ``scontrol requeue`` and exits.

    The signal handler only notes the signal; at the end of a training batch (under DDP every
    ``check_every_n_steps`` optimizer steps, agreed with one all-reduce) the ranks write the checkpoint where
    ``ModelCheckpoint`` writes its step checkpoints, so the requeued run resumes exactly. Should the requeue fail,
    training goes on. Active in ``fit`` under SLURM with auto-requeue on (``SLURMEnvironment(auto_requeue=True)``,
    the default). Why not Lightning's own handler: ``docs/fault_tolerance.md``.

    Args:
        check_every_n_steps: how often, in optimizer steps, the ranks agree on whether the signal came (DDP only).
    """

    def __init__(self, check_every_n_steps: int = 10) -> None:
        check_number("check_every_n_steps", check_every_n_steps, "[1, inf)", integer=True)
        self.check_every_n_steps = check_every_n_steps
        self._signum: int | None = None
        self._previous_handler: Any = None
        self._signalled = False
        self._checked_at_step = 0

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        # A multi-process strategy holds the cluster environment; a single process under SLURM has the default one.
        environment = getattr(trainer.strategy, "cluster_environment", None)
        if environment is None and SLURMEnvironment.detect():
            environment = SLURMEnvironment()
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
            if any_rank(trainer, pl_module, self._signalled):
                self._requeue(trainer)

    def _requeue(self, trainer: L.Trainer) -> None:
        rank_zero_info(f"SLURM's signal {self._signum} came: writing the HPC checkpoint and requeuing the job")
        path = hpc_checkpoint_path(trainer.default_root_dir)
        trainer.save_checkpoint(path, weights_only=False)
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


def any_rank(trainer: L.Trainer, pl_module: L.LightningModule, flag: bool) -> bool:
    """Whether ``flag`` is true on any rank: one all-reduce (a host sync on GPUs), so call it now and then."""
    return bool(trainer.strategy.reduce(torch.tensor(int(flag), device=pl_module.device), reduce_op="max").item())


def hpc_checkpoint_path(folder: str | Path) -> Path:
    """The next ``<folder>/hpc_ckpt_<n>.ckpt``: the name under which ``--ckpt_path hpc`` finds the newest one."""
    numbers = [int(path.stem.rpartition("_")[2]) for path in Path(folder).glob("hpc_ckpt_*.ckpt")
               if path.stem.rpartition("_")[2].isdigit()]  # fmt: skip
    return Path(folder) / f"hpc_ckpt_{max(numbers, default=0) + 1}.ckpt"


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


__all__ = ["SlurmRequeue", "any_rank", "hpc_checkpoint_path"]
