"""Writes what ``predict`` returns to one ``predictions.pt`` file in the run directory."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import BasePredictionWriter


class PredictionWriter(BasePredictionWriter):
    """Saves the predictions of all batches as one dict of tensors, ``torch.load``-able.

    The file holds ``z`` ``[N, *latent_shape]``, ``label`` ``[N]``, ``index`` ``[N]`` (position in the predicted split),
    ``recon_error`` ``[N]`` (per-image mean squared error of the reconstruction) and ``anomaly_score`` ``[N]``.
    With several processes, each writes ``predictions-rank<R>.pt`` with its shard. The file is written to a temporary
    name and renamed, so an interrupted run never leaves a partial file, and an existing file is never overwritten.

    Args:
        filename: file name inside the run directory (``trainer.log_dir``, else ``default_root_dir``).
    """

    def __init__(self, filename: str = "predictions.pt") -> None:
        super().__init__(write_interval="epoch")
        self.filename = filename
        self.path: Path | None = None

    def write_on_epoch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, predictions: Any, batch_indices: Any
    ) -> None:
        if not predictions:
            return
        if isinstance(predictions[0], list):  # several predict dataloaders: only the first is ours
            predictions = predictions[0]
        merged = {key: torch.cat([p[key] for p in predictions]).cpu() for key in predictions[0]}
        path = Path(trainer.log_dir or trainer.default_root_dir) / self.filename
        if trainer.world_size > 1:
            path = path.with_name(f"{path.stem}-rank{trainer.global_rank}{path.suffix}")
        if path.exists():
            raise FileExistsError(f"{path} already exists; predictions are never overwritten")
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(path.name + ".partial")
        torch.save(merged, partial)
        os.replace(partial, path)
        self.path = path
        if trainer.is_global_zero:
            print(f"Predictions for {len(merged['index'])} images written to {path}")
