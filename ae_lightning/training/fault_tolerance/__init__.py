"""Surviving faults, one concern per module: crash-safe checkpoint files, random generators in checkpoints, SLURM
requeues and SIGTERM at a step boundary on all ranks together, and a guard on non-finite losses. The ``ae-lightning``
command installs all of them; from Python, pass ``plugins=[AtomicCheckpointIO()]`` and
``callbacks=[RandomStateCheckpoint(), SlurmRequeue(), SigtermCheckpoint(), StopOnNonFinite()]`` to the Trainer."""

from ae_lightning.training.fault_tolerance.agreement import AgreedSignal
from ae_lightning.training.fault_tolerance.checkpoint_io import AtomicCheckpointIO, RunCheckpoint
from ae_lightning.training.fault_tolerance.nonfinite import (
    NonFiniteGuard,
    NonFiniteLossError,
    SkipNonFinite,
    StopOnNonFinite,
    non_finite_guard,
)
from ae_lightning.training.fault_tolerance.random_state import RandomStateCheckpoint
from ae_lightning.training.fault_tolerance.sigterm import SigtermCheckpoint
from ae_lightning.training.fault_tolerance.slurm import SlurmRequeue

__all__ = [
    "AgreedSignal",
    "AtomicCheckpointIO",
    "NonFiniteGuard",
    "NonFiniteLossError",
    "RandomStateCheckpoint",
    "RunCheckpoint",
    "SigtermCheckpoint",
    "SkipNonFinite",
    "SlurmRequeue",
    "StopOnNonFinite",
    "non_finite_guard",
]
