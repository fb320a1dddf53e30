"""Writes what ``predict`` returns: one ``predictions.pt`` file, or a litdata stream of per-image items."""

from __future__ import annotations

import glob
import json
import os
import shutil
import socket
import uuid
from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch
from lightning.pytorch.callbacks import BasePredictionWriter
from lightning.pytorch.utilities import rank_zero_info

from ae_lightning.lightning_internals import returns_predictions
from ae_lightning.training.callbacks import run_directory
from ae_lightning.training.fault_tolerance.checkpoint_io import alive, write_atomically
from datamodules.checks import byte_count, check_arguments


class PredictionWriter(BasePredictionWriter):
    """Saves the predictions (per image ``z``, ``label``, ``index``, ``recon_error``, ``anomaly_score``; README):
    ``format: file`` as one ``torch.load``-able dict of stacked tensors (``<name>-rank<R>.pt`` per process under DDP),
    ``format: stream`` as one litdata stream of per-image dicts (needs ``return_predictions`` false). Either is put in
    place once every callback's ``on_predict_epoch_end`` has run (a failed or stopped predict leaves nothing), never
    over an existing one; ``fast_dev_run`` writes nothing. Floats are written as float32, or float64 under ``64-true``.

    Args:
        filename: name inside the run directory (:func:`~ae_lightning.training.callbacks.run_directory`);
            ``predictions.pt`` for a file, ``predictions`` (a folder) for a stream by default.
        chunk_bytes: the stream's chunk size limit (litdata's): bytes, or a number with a unit, e.g. ``"64MB"``.
    """

    def __init__(
        self,
        filename: str = "predictions.pt",
        format: Literal["file", "stream"] = "file",
        chunk_bytes: int | str = "64MB",
    ) -> None:
        check_arguments(locals(), PredictionWriter.__init__)
        byte_count(chunk_bytes)
        if filename in ("", "..") or Path(filename).name != filename:
            raise ValueError(f"filename must be a name inside the run directory, without a folder, got {filename!r}")
        super().__init__(write_interval="batch" if format == "stream" else "epoch")
        self.format = format
        self.filename = "predictions" if format == "stream" and filename == "predictions.pt" else filename
        self.chunk_bytes = chunk_bytes
        self.path: Path | None = None
        self._writer: Any = None
        self._staging: Path | None = None  # a stream's folder; with _merged, what on_predict_end puts in place
        self._merged: dict[str, torch.Tensor] | None = None
        self._written, self._rows = 0, "images"

    def on_predict_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.format == "stream" and returns_predictions(trainer):
            raise ValueError(
                "PredictionWriter(format='stream') writes each batch as it comes, but this predict's "
                "return_predictions is True (Lightning's default from Python), which also keeps every prediction in "
                "memory: call trainer.predict(..., return_predictions=False), or use format='file'"
            )
        if trainer.fast_dev_run:
            rank_zero_info("PredictionWriter: fast_dev_run writes no predictions")
            return
        path = self.target(trainer, new=True)  # before any prediction is made
        if self.format != "stream":
            return
        from litdata.streaming.writer import BinaryWriter

        # Rank 0's, named by its pid and host: every predict into this folder has one of its own.
        own = _staging_folder(path, os.getpid(), socket.gethostname(), uuid.uuid4().hex[:8])
        staging = Path(trainer.strategy.broadcast(str(own)))
        if trainer.is_global_zero:
            _remove_dead_writers_staging(path)
        trainer.strategy.barrier()
        staging.mkdir(parents=True, exist_ok=True)
        self._writer = BinaryWriter(str(staging), chunk_bytes=byte_count(self.chunk_bytes))
        self._staging, self._written = staging, 0

    def write_on_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        prediction: Any,
        batch_indices: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if dataloader_idx or trainer.fast_dev_run:  # several predict dataloaders: only the first is ours
            return
        columns = {key: _readable(value) for key, value in prediction.items()}
        self._rows = _rows(columns, pl_module)
        for i in range(len(columns["index"])):
            item = {key: value[i] if value.dim() > 1 else value[i].item() for key, value in columns.items()}
            self._writer[self._written] = item
            self._written += 1

    def on_predict_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.fast_dev_run:
            return
        if self.format != "stream":
            return super().on_predict_epoch_end(trainer, pl_module)
        self._writer.done()
        self._writer.merge()  # rank 0 waits for every rank's index and writes the stream's index.json
        trainer.strategy.barrier()

    def on_predict_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # After the epoch-end hooks of every callback, whatever their order: a SigtermCheckpoint that stops the run
        # there (under DDP, once every rank is done) leaves no rank's predictions.
        if self._merged is not None:
            path = self.target(trainer, new=True)
            path.parent.mkdir(parents=True, exist_ok=True)
            write_atomically(path, lambda file: torch.save(self._merged, file))
            print(f"Predictions for {len(self._merged['index'])} {self._rows} written to {path}")  # by each process
            self.path, self._merged = path, None
        elif self._staging is not None:
            path = self.target(trainer, new=True)  # another predict may have put its own there since this one began
            trainer.strategy.barrier()
            if trainer.is_global_zero:
                os.replace(self._staging, path)
                count = sum(chunk["chunk_size"] for chunk in json.loads((path / "index.json").read_text())["chunks"])
                print(f"Predictions for {count} {self._rows} written to {path} (a litdata stream)")
            trainer.strategy.barrier()
            self.path, self._writer, self._staging = path, None, None

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self._merged = None
        if self._staging is not None:  # a stream that stopped before its end: its chunks are of no use
            shutil.rmtree(self._staging, ignore_errors=True)
            self._writer = self._staging = None

    def target(self, trainer: L.Trainer, new: bool = False) -> Path:
        """Where this process's predictions go; ``new``: refuse (FileExistsError) a path that holds something."""
        path = run_directory(trainer) / self.filename
        if self.format == "file" and trainer.world_size > 1:
            path = path.with_name(f"{path.stem}-rank{trainer.global_rank}{path.suffix}")
        if new and path.exists():
            raise FileExistsError(
                f"{path} already exists; predictions are never overwritten: give another filename "
                "(--predictions.filename) or write into another run's folder"
            )
        return path

    def write_on_epoch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, predictions: Any, batch_indices: Any
    ) -> None:
        if not predictions:
            return
        if isinstance(predictions[0], list):  # several predict dataloaders: only the first is ours
            predictions = predictions[0]
        self._merged = {key: _readable(torch.cat([p[key] for p in predictions])) for key in predictions[0]}
        self._rows = _rows(self._merged, pl_module)


def _staging_folder(path: Path, pid: int | str, host: str, run: str) -> Path:
    """The folder in which the predict ``run`` of process ``pid`` on ``host`` writes the stream ``path`` before putting
    it in place."""
    return path.with_name(f".{path.name}.{pid}@{host}.{run}.partial")


def _remove_dead_writers_staging(path: Path) -> None:
    """Remove the staging folders of the stream ``path`` whose writer on this host is gone (a killed predict's)."""
    for folder in path.parent.glob(f".{glob.escape(path.name)}.*@{glob.escape(socket.gethostname())}.*.partial"):
        pid = folder.name[len(path.name) + 2 :].partition("@")[0]
        if pid.isdigit() and not alive(int(pid)):
            shutil.rmtree(folder, ignore_errors=True)


def _rows(predictions: dict[str, torch.Tensor], pl_module: L.LightningModule) -> str:
    """What a row of ``predictions`` is: a recommender's user, an image, or a feature vector."""
    if "top_items" in predictions:
        return "users"
    return "feature vectors" if len(getattr(pl_module, "input_shape", (1, 1, 1))) == 1 else "images"


def _readable(value: torch.Tensor) -> torch.Tensor:
    """``value`` on the CPU, as float32 where it is a float of fewer bits (bfloat16 has no numpy dtype)."""
    value = value.detach().cpu()
    return value.float() if value.is_floating_point() and torch.finfo(value.dtype).bits < 32 else value
