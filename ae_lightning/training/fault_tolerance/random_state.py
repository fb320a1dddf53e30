"""Every process's random generators in checkpoints, restored when training resumes."""

from __future__ import annotations

import random
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_warn


class RandomStateCheckpoint(Callback):
    """Stores every process's random generators (torch CPU and CUDA, NumPy, Python) in checkpoints and restores them
    after a resume's sanity check; under DDP each rank its own if the world size is unchanged (else rank 0's)."""

    key = "random_states"

    def __init__(self) -> None:
        self._to_restore: dict[str, Any] | None = None

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        # Plain tensors, ints and tuples only, so that checkpoints still load with ``torch.load(weights_only=True)``.
        kind, keys, *rest = np.random.get_state()
        numpy_state = (kind, torch.from_numpy(keys.astype(np.int64)), *rest)
        state = {"torch": torch.get_rng_state(), "numpy": numpy_state, "python": random.getstate()}
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["cuda"] = torch.cuda.get_rng_state()
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
        self._to_restore = states[trainer.global_rank if len(states) == trainer.world_size else 0]

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        state, self._to_restore = self._to_restore, None
        if state is not None:
            torch.set_rng_state(state["torch"])
            kind, keys, *rest = state["numpy"]
            np.random.set_state((kind, keys.numpy().astype(np.uint32), *rest))
            random.setstate(state["python"])
            if "cuda" in state and torch.cuda.is_available():
                torch.cuda.set_rng_state(state["cuda"])


__all__ = ["RandomStateCheckpoint"]
