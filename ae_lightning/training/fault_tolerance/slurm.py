"""SLURM's requeue signal handled at a step boundary, on all ranks together."""

from __future__ import annotations

import os
import re
import signal
import subprocess
from pathlib import Path

import lightning as L
from lightning.fabric.plugins.environments import SLURMEnvironment
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from ae_lightning.lightning_internals import cluster_environment
from ae_lightning.training.fault_tolerance.agreement import AgreedSignal


class SlurmRequeue(AgreedSignal):
    """Handles SLURM's requeue signal at a step boundary, on all ranks together: writes the HPC checkpoint
    ``<default_root_dir>/hpc_ckpt_<n>.ckpt``, requeues the job with ``scontrol requeue`` and exits; should the requeue
    fail, training goes on. Active in ``fit`` under SLURM with auto-requeue on; arguments: :class:`AgreedSignal`'s.
    Why: ``docs/fault_tolerance.md``."""

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        environment = cluster_environment(trainer)  # a single process's too: a plugin's auto_requeue, requeue_signal
        if isinstance(environment, SLURMEnvironment) and environment.auto_requeue and stage == "fit":
            self.own_signal(environment.requeue_signal)  # before Lightning's handlers: it leaves this signal alone

    def act(self, trainer: L.Trainer) -> None:
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


def hpc_checkpoints(folder: str | Path) -> dict[int, Path]:
    """The ``hpc_ckpt_<n>.ckpt`` files of ``folder`` by ``n`` (ASCII digits); other names are not HPC checkpoints."""
    names = (re.fullmatch(r"hpc_ckpt_([0-9]+)\.ckpt", path.name) for path in Path(folder).glob("hpc_ckpt_*.ckpt"))
    return {int(name[1]): Path(folder) / name[0] for name in names if name}


def hpc_checkpoint_path(folder: str | Path) -> Path:
    """The next ``<folder>/hpc_ckpt_<n>.ckpt``: the name under which ``--ckpt_path hpc`` finds the newest one."""
    return Path(folder) / f"hpc_ckpt_{max(hpc_checkpoints(folder), default=0) + 1}.ckpt"


def _slurm_job_id() -> str:
    if (array_job := os.environ.get("SLURM_ARRAY_JOB_ID")) is not None:
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


__all__ = ["SlurmRequeue", "hpc_checkpoint_path", "hpc_checkpoints"]
