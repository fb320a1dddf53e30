"""Atomic writes of predictions and checkpoints: a failed save leaves nothing behind, a bad ``filename`` is refused
before any batch, and no writer removes the temporary file of another writer that is still running."""

from __future__ import annotations

import contextlib
import errno
import os
import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import Callback
from tiny_runs import ROOT, build_cli

from ae_lightning import Autoencoder
from ae_lightning.cli import ConfigError
from ae_lightning.training.fault_tolerance import AtomicCheckpointIO, checkpoint_io
from ae_lightning.training.fault_tolerance.checkpoint_io import write_atomically
from ae_lightning.training.prediction import PredictionWriter
from datamodules import MNISTDataModule

QUIET = {"accelerator": "cpu", "enable_progress_bar": False, "enable_model_summary": False, "logger": False}


class CountBatches(Callback):
    """Counts the predict batches run."""

    def __init__(self) -> None:
        self.batches = 0

    def on_predict_batch_start(self, trainer: L.Trainer, pl_module, batch, batch_idx: int, dataloader_idx=0) -> None:
        self.batches += 1


def predict(writer: PredictionWriter, root: Path, data_dir: Path, counter: CountBatches | None = None) -> None:
    callbacks = [writer, counter or CountBatches()]
    trainer = L.Trainer(default_root_dir=root, limit_predict_batches=2, callbacks=callbacks, **QUIET)
    model = Autoencoder(latent_dim=4, hidden_dims=[16])
    trainer.predict(model, datamodule=MNISTDataModule(data_dir=str(data_dir), batch_size=16))


def test_a_failed_prediction_save_leaves_nothing_behind(
    data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def disk_full(obj: object, file) -> None:  # part of the file written (to a path or an open file), then full
        with open(file, "wb") if isinstance(file, (str, os.PathLike)) else contextlib.nullcontext(file) as opened:
            opened.write(b"PK" * 100)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", disk_full)
    path = tmp_path / "run" / "predictions.pt"
    # named as a full checkpoint is (the OSError of torch's write said "No space left on device" alone)
    message = rf"no space left on device while writing the file {path} \(\d+ MiB free\); no predictions.pt was written"
    with pytest.raises(OSError, match=message):
        predict(PredictionWriter(), tmp_path / "run", data_dir)
    assert sorted(path.name for path in (tmp_path / "run").iterdir()) == []


@pytest.mark.parametrize("filename", ["", ".", "..", "sub/predictions.pt", "../predictions.pt", "/tmp/p.pt", "p.pt/"])
def test_a_filename_that_is_not_a_plain_name_in_the_run_directory_is_refused_naming_it(filename: str) -> None:
    expected = rf"^filename must be a name inside the run directory, without a folder, got {re.escape(repr(filename))}$"
    with pytest.raises(ValueError, match=expected):
        PredictionWriter(filename=filename)


def test_the_command_refuses_a_filename_with_a_folder_naming_the_option(data_dir: Path, tmp_path: Path) -> None:
    args = ["--config", str(ROOT / "configs" / "ae.yaml"), "--data.data_dir", str(data_dir)]
    args += ["--trainer.default_root_dir", str(tmp_path / "run"), "--predictions.filename", "../elsewhere.pt"]
    with pytest.raises(ConfigError, match=r"^--predictions.filename ../elsewhere.pt: filename must be a name inside"):
        build_cli(*args)
    assert not (tmp_path / "run").exists()


def test_an_existing_prediction_file_is_refused_before_any_batch(data_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "predictions.pt").write_bytes(b"earlier predictions")
    counter = CountBatches()
    with pytest.raises(
        FileExistsError, match="predictions.pt already exists; predictions are never overwritten: give another filename"
    ):
        predict(PredictionWriter(), tmp_path / "run", data_dir, counter)
    assert counter.batches == 0 and (tmp_path / "run" / "predictions.pt").read_bytes() == b"earlier predictions"


@pytest.fixture
def live_pid() -> Iterator[int]:
    """The pid of a running process of this host other than this one: another writer."""
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield process.pid
    process.kill()
    process.wait()


def test_a_checkpoint_write_removes_only_the_temporary_files_of_dead_writers_on_this_host(
    tmp_path: Path, live_pid: int
) -> None:
    # Two runs, or several nodes of a shared filesystem, may write into one folder at once.
    host = socket.gethostname()
    live = [f".last.ckpt.{live_pid}@{host}.tmp", ".last.ckpt.999999999@another-node.tmp", f".last.ckpt.{live_pid}.tmp"]
    live += [".last.ckpt.999999999@10.0.0.12.tmp"]  # a host named by its address: pid 999999999, not pid 12
    dead = [f".last.ckpt.999999999@{host}.tmp", ".best.ckpt.999999999.tmp"]  # on this host, their pid is gone
    for name in live + dead:
        (tmp_path / name).write_bytes(b"PK")
    AtomicCheckpointIO().save_checkpoint({"step": 1}, tmp_path / "last.ckpt")
    assert torch.load(tmp_path / "last.ckpt", weights_only=True) == {"step": 1}
    assert sorted(path.name for path in tmp_path.iterdir()) == sorted(["last.ckpt", *live])


def test_another_nodes_cleanup_leaves_the_file_being_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    replace = os.replace

    def cleaned_then_replaced(source: Path, target: Path) -> None:  # meanwhile, another node of the shared
        with monkeypatch.context() as other_node:  # filesystem, where this pid is not running, cleans the folder
            other_node.setattr(socket, "gethostname", lambda: "another-node")
            other_node.setattr(checkpoint_io, "alive", lambda pid: False)
            checkpoint_io.remove_dead_writers_files(tmp_path)
        replace(source, target)

    monkeypatch.setattr(os, "replace", cleaned_then_replaced)
    write_atomically(tmp_path / "scores.json", b"{}")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["scores.json"]
    assert (tmp_path / "scores.json").read_bytes() == b"{}"
