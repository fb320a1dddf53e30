"""Crash-safe checkpoint files: written to a temporary file, synced and renamed into place."""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import socket
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import lightning as L
import torch
from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO

from ae_lightning.lightning_internals import enable_version_counter, every_n_train_steps


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes a checkpoint with :func:`write_atomically` (a full disk raises an OSError naming the file), then removes
    the folder's temporary files of writers on this host that are gone, never a running one's. Paths that are not local
    keep Lightning's writer. Why and how: ``docs/fault_tolerance.md``."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any | None = None) -> None:
        if storage_options is not None or get_filesystem(path).protocol not in ("file", ("file", "local")):
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        resume = " and resume with --ckpt_path last"
        write_atomically(path, lambda file: torch.save(checkpoint, file), what="checkpoint", advice=resume)
        remove_dead_writers_files(path.parent)


def write_atomically(
    path: Path, data: bytes | Callable[[IO[bytes]], object], what: str = "file", advice: str = ""
) -> None:
    """Write ``data`` (bytes, or a function writing them to the open file it is given) to ``path`` atomically: a reader,
    or a crash, sees the old file or the new one, never part of one, and the new one once this returns; a failed write
    leaves the old one and nothing else. A full disk raises an OSError (ENOSPC) naming the ``what`` and its path, the
    space left and the old file, then ``advice``."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}@{socket.gethostname()}.tmp")  # pid, host: whose it is
    try:
        with open(temporary, "wb") as file:
            data(file) if callable(data) else file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)  # atomic on POSIX
        _fsync_directory(path.parent)
    except BaseException as error:
        if not _disk_full(error, temporary):
            raise
        kept = f"the previous {path.name} is kept" if path.exists() else f"no {path.name} was written before"
        raise OSError(
            errno.ENOSPC,
            f"no space left on device while writing the {what} {path} "
            f"({shutil.disk_usage(path.parent).free / 2**20:.0f} MiB free); {kept}. Free some space{advice}",
        ) from error
    finally:
        temporary.unlink(missing_ok=True)


def _disk_full(error: BaseException, temporary: Path) -> bool:
    """Whether a failed write to ``temporary`` ran out of space: torch reports it as ``RuntimeError: [enforce fail at
    inline_container.cc ...]``, so a write error with less free space left than the part it wrote counts too."""
    if isinstance(error, OSError) and error.errno == errno.ENOSPC:
        return True
    if not isinstance(error, (OSError, RuntimeError)):
        return False
    try:
        written = temporary.stat().st_size if temporary.exists() else 0
        return shutil.disk_usage(temporary.parent).free <= max(written, 1 << 20)
    except OSError:
        return False


def _fsync_directory(directory: Path) -> None:
    """Make a rename in ``directory`` durable (a no-op where directories cannot be opened)."""
    with contextlib.suppress(OSError):
        descriptor = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)


_TEMPORARY = re.compile(r"^\..+?\.(?P<pid>\d+)(?:@(?P<host>.+))?\.tmp$")  # the first ``.<pid>`` that fits


def remove_dead_writers_files(folder: Path) -> list[Path]:
    """Remove the ``.<name>.<pid>@<host>.tmp`` files in ``folder`` whose writer on this host is gone (and the
    ``.<name>.<pid>.tmp`` of earlier releases whose pid is gone); returns them."""
    removed, host = [], socket.gethostname()
    for path in folder.glob(".*.tmp"):
        match = _TEMPORARY.match(path.name)
        if match and match["host"] in (None, host) and not alive(int(match["pid"])):
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def alive(pid: int) -> bool:
    """Whether process ``pid`` of this host is running (another user's too)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        pass
    return True


class RunCheckpoint(ModelCheckpoint):
    """The command's ``checkpoint`` section: Lightning's ModelCheckpoint, writing nothing under ``fast_dev_run``, never
    keeping a checkpoint as the best on a non-finite monitored value, with ``save_last`` holding the final step in a
    state that resumes exactly, and the ``save_top_k`` best of the whole run carried over a resume into a new logger
    version (``docs/fault_tolerance.md``)."""

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        self._step_saved: int | None = None  # the global step of the last write of this run's ``last``
        self._in_own_hook = False
        if trainer.is_global_zero and self.dirpath and Path(self.dirpath).is_dir():
            remove_dead_writers_files(Path(self.dirpath))

    def _own_saves(self, hook: Callable[..., None], *args: Any) -> None:
        self._in_own_hook = True  # the saves that ``hook`` makes are this callback's own
        try:
            hook(*args)
        finally:
            self._in_own_hook = False

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        # A save by this callback's own hooks comes with its ``last`` (with ``save_last``); another callback's does not.
        if self._in_own_hook:
            self._step_saved = trainer.global_step

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        self._own_saves(super().on_train_batch_end, trainer, *args)
        # Lightning defers a step's saves while the monitor is not logged (epoch 0, a resumed run before its first
        # validation) and may drop them at the epoch's end; the ``last`` that a killed run resumes from cannot wait.
        every = every_n_train_steps(self)
        step_due = every > 0 and trainer.global_step % every == 0
        if step_due or 0 <= trainer.max_steps <= trainer.global_step:  # Lightning's own test for the last step
            self._save_last_step(trainer)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._own_saves(super().on_train_epoch_end, trainer, pl_module)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking and self._step_saved == trainer.global_step:
            self._step_saved = None  # this step's ``last`` precedes the validation: save the final step again
        self._own_saves(super().on_validation_end, trainer, pl_module)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Instead of Lightning's ``last`` here, written after the epoch is closed: right only when the epoch ended.
        self._save_last_step(trainer)

    def _save_last_step(self, trainer: L.Trainer) -> None:
        if trainer.fast_dev_run or not self.save_last or not self.dirpath or self._step_saved == trainer.global_step:
            return
        # A step that also ends the epoch is saved again after its validation: into this file, not a ``last-v1``.
        trainer.save_checkpoint(last_path(self, trainer), weights_only=self.save_weights_only)
        self._step_saved = trainer.global_step

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        with warnings.catch_warnings():  # "won't be reloaded": they are, below
            warnings.filterwarnings("ignore", message="The dirpath has changed from")
            super().load_state_dict(state_dict)
        kept = {path: score for path, score in (state_dict.get("best_k_models") or {}).items() if Path(path).is_file()}
        if state_dict.get("dirpath", self.dirpath) == self.dirpath or not kept:
            return
        ranked = sorted(kept, key=lambda path: float(kept[path]), reverse=self.mode == "max")  # the best first
        self.best_k_models, self.best_model_path, self.kth_best_model_path = kept, ranked[0], ranked[-1]
        self.best_model_score, self.kth_value = kept[ranked[0]], kept[ranked[-1]]

    def check_monitor_top_k(self, trainer: L.Trainer, current: torch.Tensor | None = None) -> bool:
        # A NaN or infinite val/loss is never "the best"; ``save_top_k=-1`` saves every one, as Lightning says.
        if self.save_top_k != -1 and current is not None and not torch.isfinite(current).all():
            return False
        return super().check_monitor_top_k(trainer, current)


def last_path(callback: ModelCheckpoint, trainer: L.Trainer) -> str:
    """The run's ``last`` checkpoint file of ``callback``, from now on its ``last_model_path``: the one it wrote (or
    resumed from), else the first free ``last.ckpt``, ``last-v1.ckpt``, ... of its ``dirpath``, as Lightning picks it.
    Call it on every rank, with ``dirpath`` set."""
    if not callback.last_model_path:
        metrics = {**trainer.callback_metrics, "epoch": trainer.current_epoch, "step": trainer.global_step}
        path = callback.format_checkpoint_name(metrics, callback.CHECKPOINT_NAME_LAST)
        version = callback.STARTING_VERSION
        while enable_version_counter(callback) and callback.file_exists(path, trainer):
            path = callback.format_checkpoint_name(metrics, callback.CHECKPOINT_NAME_LAST, ver=version)
            version += 1
        callback.last_model_path = path  # before the save: the checkpoint's callback state names its own file
    return callback.last_model_path


def read_checkpoint(path: str | Path, name: str = "--ckpt_path") -> dict[str, Any]:
    """The checkpoint at ``path``, loaded on the CPU; an error naming it (as ``name``, the option that gave it) and
    what is wrong otherwise."""
    path = Path(path)
    if not path.is_file():
        what = "is a directory" if path.is_dir() else "does not exist"
        raise FileNotFoundError(f"{name} {path} {what}; expected a checkpoint file (.ckpt)")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as error:  # torch raises RuntimeError, EOFError, UnpicklingError, ... depending on the damage
        reason = " ".join(str(error).split())[:200] or type(error).__name__
        raise ValueError(f"{name} {path} is not a readable checkpoint (truncated or corrupt?): {reason}") from None
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("state_dict"), dict):
        raise ValueError(f"{name} {path} is not a Lightning checkpoint: it holds no state_dict")
    if "global_step" not in checkpoint or "pytorch-lightning_version" not in checkpoint:
        raise ValueError(f"{name} {path} is not a Lightning checkpoint: it has no global_step or version")
    return checkpoint


__all__ = ["AtomicCheckpointIO", "RunCheckpoint", "alive", "last_path", "read_checkpoint", "write_atomically"]
