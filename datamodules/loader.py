"""A resumable, DDP-aware batch loader over a split held as one tensor (uint8 images or float vectors): a batch is
one indexing operation, optionally on the training device, instead of a per-sample ``Dataset``'s Python calls."""

from __future__ import annotations

import math
import multiprocessing
import os
import signal
import threading
from collections.abc import Iterator
from itertools import islice
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader

from datamodules.checks import check_shared

Batch = tuple[Tensor, Tensor, Tensor]


def _mix(*values: int) -> int:
    """A deterministic 63-bit seed from integers (Python's hash of an int tuple is not salted)."""
    return hash(tuple(values)) & 0x7FFF_FFFF_FFFF_FFFF


_LOW32 = 0xFFFF_FFFF


def _hash32_(x: Tensor) -> Tensor:
    """Wellons' lowbias32 ``[16 21f0aaad 15 735a2d97 15]``, in place, of int64 values in ``[0, 2**32)``: a bijection
    of that range; its multipliers are below ``2**31``, so no product overflows int64."""
    x ^= x >> 16
    x.mul_(0x21F0AAAD).bitwise_and_(_LOW32)
    x ^= x >> 15
    x.mul_(0x735A2D97).bitwise_and_(_LOW32)
    x ^= x >> 15
    return x


def uniform_by_index(seed: int, indices: Tensor, shape: tuple[int, ...]) -> Tensor:
    """Uniform ``[0, 1)`` float32 noise ``[len(indices), *shape]`` on the indices' device, each value a hash of
    ``seed``, its sample's index and its position: no batch size, rank, order or device changes a sample's noise."""
    key = _mix(seed)
    indices = indices.long()
    # one key per index, distinct for distinct indices below 2**32 (each step is a bijection), and one per position
    rows = _hash32_(_hash32_((indices & _LOW32) ^ (key & _LOW32)) ^ ((indices >> 32) & _LOW32) ^ (key >> 32))
    positions = _hash32_(torch.arange(math.prod(shape), device=indices.device) ^ (key & _LOW32))
    bits = _hash32_(rows[:, None] ^ positions)
    return (bits >> 8).to(torch.float32).mul_(2.0**-24).view(len(indices), *shape)  # 24 bits: exact in float32


# What a resumed position depends on, and how the user names it.
_RESUME_SETTINGS = {
    "seed": "--data.seed",
    "batch_size": "--data.batch_size",
    "world_size": "the number of processes",
    "samples": "the number of training samples",
    "fingerprint": "the training data's content (fingerprint)",
    "order": "the training order (sequential under --trainer.overfit_batches)",
}
# Settings that need not match at an epoch's end: the next epoch starts afresh.
_EPOCH_SETTINGS = ("batch_size", "world_size", "order")


def fingerprint(images: Tensor, signed: bool = False) -> int:
    """A cheap fingerprint of a split's content: 1000 x the sum of the absolute values of a strided subset of about
    256 samples, rounded; ``signed``: of the values, as older checkpoints hold it (the same for images)."""
    step = max(1, len(images) // 256)
    sample = images[::step].to(torch.float64)
    return int((sample if signed else sample.abs()).sum().mul(1000).round().item())


def global_batch_bounds(n: int, batch_size: int, world_size: int) -> list[tuple[int, int]]:
    """The ``[start, end)`` sample ranges of an epoch's global batches (``batch_size`` per rank)."""
    step = batch_size * world_size
    bounds = [(start, min(start + step, n)) for start in range(0, n, step)]
    # a last global batch with fewer samples than ranks is folded into the one before: no rank gets an empty batch
    if len(bounds) > 1 and bounds[-1][1] - bounds[-1][0] < world_size:
        bounds[-2:] = [(bounds[-2][0], n)]
    return bounds


def usable_cpus() -> int:
    """The CPUs this process may use (a SLURM job's share of a node), not the machine's count."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def check_resume_state(stored: dict, mine: dict) -> None:
    """Raise a ValueError naming the setting if a loader position ``stored`` was reached with other data settings than
    ``mine`` (both as :meth:`TensorBatchLoader.state_dict` gives them; a setting ``mine`` lacks is not checked). At
    an epoch's end only the data and the seed must match."""
    sizes = [stored.get(key) for key in ("samples", "batch_size", "world_size")]
    length = stored.get("epoch_batches") or (None not in sizes and len(global_batch_bounds(*sizes)))
    at_epoch_end = bool(length) and stored.get("batches_done", 0) >= length
    stored = {"order": "shuffled", **stored}  # positions saved before the order was recorded: always shuffled
    if "fingerprint" in stored and stored["fingerprint"] == mine.get("signed_fingerprint"):
        mine = {**mine, "fingerprint": stored["fingerprint"]}  # the same data, before the sum took absolute values
    data = ""
    if "source" in mine and stored.get("source", mine["source"]) != mine["source"]:
        data = f" (the checkpoint's data: {stored.get('source', 'unknown')}; this run's: {mine['source']})"
    # at an epoch's end the next epoch starts afresh: only the data and their seed must be the same
    settings = {key: name for key, name in _RESUME_SETTINGS.items() if not (at_epoch_end and key in _EPOCH_SETTINGS)}
    check_same_position(stored, mine, settings, {"samples": data, "fingerprint": data})


def check_same_position(stored: dict, mine: dict, settings: dict[str, str], details: dict | None = None) -> None:
    """Raise a ValueError naming the setting (and ``details[key]``) of the first key of ``settings`` whose value in a
    checkpoint's data position ``stored`` differs from this run's, ``mine`` (one either lacks or holds as None is not
    checked)."""
    for key, setting in settings.items():
        theirs, ours = stored.get(key), mine.get(key)
        if None not in (theirs, ours) and theirs != ours:
            raise ValueError(
                f"the checkpoint's data position was reached with {setting} {theirs}, this run has {ours}"
                f"{(details or {}).get(key, '')}: it would resume at other samples. Resume with the checkpoint's data "
                "and settings, or start a fresh run without --ckpt_path"
            )


# The signals a scheduler sends to every process of a job (``scancel``, SLURM's ``--signal``, ``timeout``,
# ``kill -- -<group>``), which the main process acts on at a step's end; none without ``sigwaitinfo`` (macOS).
_JOB_SIGNALS = {signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2} if hasattr(signal, "sigwaitinfo") else set()


class WorkerSignals:
    """A DataLoader ``worker_init_fn`` with which the workers leave SIGTERM, SIGUSR1 and SIGUSR2 to the main process
    (but a SIGTERM from their maker or parent) and live until it shuts them down; iterate with :func:`worker_batches`.
    Without ``signal.sigwaitinfo`` (macOS) the workers keep torch's handling (``docs/fault_tolerance.md``)."""

    def __init__(self) -> None:
        self.owner = os.getpid()

    def __call__(self, worker_id: int) -> None:
        if not _JOB_SIGNALS:
            return
        # SIGTERM stays blocked (the thread, and any started later, inherit that): it waits for the thread below.
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
        threading.Thread(target=self._exit_on_owners_sigterm, name="sigterm-from-owner", daemon=True).start()
        others = _JOB_SIGNALS - {signal.SIGTERM}
        for signum in others:
            signal.signal(signum, signal.SIG_IGN)  # which drops one held since the worker started
        signal.pthread_sigmask(signal.SIG_UNBLOCK, others)

    def _exit_on_owners_sigterm(self) -> None:
        while signal.sigwaitinfo({signal.SIGTERM}).si_pid not in (self.owner, os.getppid()):
            pass
        os._exit(0)


def worker_batches(loader: DataLoader) -> Iterator:
    """Iterates ``loader``, whose ``worker_init_fn`` is a :class:`WorkerSignals`, holding the job's signals until the
    first batch is in: the workers, started meanwhile, inherit the hold until :class:`WorkerSignals` runs."""
    if not (loader.num_workers and _JOB_SIGNALS):
        yield from loader
        return
    # The spawn/forkserver helper processes start outside the hold: the resource tracker's start lifts it, and a fork
    # server started in it would block the job's signals in all it starts.
    from multiprocessing import forkserver, resource_tracker  # not on every platform

    method = (loader.multiprocessing_context or multiprocessing.get_context()).get_start_method()
    if method == "forkserver":
        forkserver.ensure_running()  # which starts the resource tracker first
    elif method == "spawn":
        resource_tracker.ensure_running()
    held = signal.pthread_sigmask(signal.SIG_BLOCK, _JOB_SIGNALS)
    try:
        batches = iter(loader)
        first = next(batches, None)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, held)
    if first is not None:
        yield first
        yield from batches


class EpochPosition:
    """The epoch and the batches done of a loader that Lightning drives as a DataLoader's sampler (it calls
    ``sampler.set_epoch(epoch)`` at each epoch's start); a ``resumable`` loader keeps them across passes, and
    ``trainer``'s epochs are the loader's batches or those its ``limit_train_batches`` takes."""

    def __init__(self, resumable: bool, trainer: Any = None) -> None:
        self.resumable, self.epoch, self.batches_done, self.trainer = resumable, 0, 0, trainer
        self._positioned = False  # a position loaded or reached by iterating
        self.sampler, self.batch_sampler = self, None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "trainer": None}  # worker processes make batches, not epochs

    def epoch_batches(self, steps: int = 1) -> int:
        """The batches of an epoch: all, or those of the Lightning batches (of ``steps`` batches each) that the trainer
        takes (its ``limit_train_batches``) where fewer."""
        taken = getattr(self.trainer, "num_training_batches", math.inf)
        return len(self) if math.isinf(taken) else min(len(self), int(taken) * steps)

    def set_epoch(self, epoch: int) -> None:
        """Start epoch ``epoch``; a loader with a position (loaded or iterated) moves on by one epoch at most, from one
        it has begun. An evaluation loader (not ``resumable``) ignores it: every pass yields the same batches."""
        if self.resumable and epoch != self.epoch and not (self._positioned and self.batches_done == 0):
            self.epoch, self.batches_done = self.epoch + 1 if self._positioned else epoch, 0

    def _start_pass(self, epoch_batches: int) -> None:
        """Before a pass: a loader iterated again without ``set_epoch`` after a whole epoch moves on to the next."""
        if self.batches_done >= epoch_batches:
            self.epoch, self.batches_done = self.epoch + 1, 0
        self._positioned = True


class TensorBatchLoader(EpochPosition):
    """Yields ``(image, label, index)`` batches from in-memory tensors: epoch ``e``'s order depends on ``seed`` and
    ``e`` only; the ranks take disjoint, equal shards of each global batch.

    Args:
        images, labels, indices: ``[N, C, H, W]`` uint8 images (scaled to [0, 1]) or ``[N, D]`` float vectors, their
            ``[N]`` labels, and each sample's index within its split.
        batch_size, shuffle, seed: samples per rank and step; a new permutation each epoch; its seed.
        binarize: Bernoulli pixels, drawn per batch (from seed, epoch, batch and rank) when ``resumable``, else per
            image from seed and index alone (the same at any batch size, process count, device or pass).
        device: where batches are built (the tensors move there once); num_workers: worker processes (CPU only).
        resumable: keep the position across passes and in ``state_dict`` (the training loader).
        source, split: the data's ``data_source`` and the split's name, for error messages.
        trainer: the Trainer whose epochs the position counts (:class:`EpochPosition`).
    """

    def __init__(
        self,
        images: Tensor,
        labels: Tensor,
        indices: Tensor,
        batch_size: int,
        shuffle: bool,
        seed: int,
        binarize: bool = False,
        rank: int = 0,
        world_size: int = 1,
        device: torch.device | str = "cpu",
        num_workers: int = 0,
        resumable: bool = True,
        source: str = "",
        split: str = "",
        trainer: Any = None,
    ) -> None:
        super().__init__(resumable, trainer)
        check_shared(split, len(images), world_size)
        self.device, self.fingerprint, self.source = torch.device(device), fingerprint(images), source
        # pixels are scaled to float once, here, so that a batch is a single gather
        if images.dtype == torch.uint8:
            self.images = images.to(self.device).float().div_(255)
        else:
            self.images = images.to(self.device, torch.float32)
        self.labels, self.indices = labels.to(self.device), indices.to(self.device)
        self.batch_size, self.shuffle, self.seed, self.binarize = batch_size, shuffle, seed, binarize
        self.rank, self.world_size, self.num_workers = rank, world_size, num_workers
        if num_workers and self.device.type != "cpu":
            raise ValueError(f"num_workers={num_workers} needs the data on the CPU, not on {self.device}")
        # made at the first binarized batch: a loader sent to "spawn" workers cannot carry one
        self._generator: torch.Generator | None = None

    def __len__(self) -> int:
        return len(global_batch_bounds(len(self.images), self.batch_size, self.world_size))

    def state_dict(self) -> dict[str, int | str]:
        return {
            "epoch": self.epoch, "batches_done": self.batches_done, "seed": self.seed, "batch_size": self.batch_size,
            "world_size": self.world_size, "samples": len(self.images), "fingerprint": self.fingerprint,
            "source": self.source, "order": "shuffled" if self.shuffle else "sequential",
            "epoch_batches": self.epoch_batches(),
        }  # fmt: skip

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Resume at ``state``'s position; raises a ValueError if it counts batches of other data or sizes."""
        check_resume_state(state, {**self.state_dict(), "signed_fingerprint": fingerprint(self.images, signed=True)})
        self.epoch, self.batches_done, self._positioned = state["epoch"], state["batches_done"], True

    def __iter__(self) -> Iterator[Batch]:
        bounds = global_batch_bounds(len(self.images), self.batch_size, self.world_size)
        if not self.resumable:
            self.batches_done = 0
        self._start_pass(len(bounds))
        order = self._order()
        todo = range(self.batches_done, len(bounds))
        rows = [order[bounds[i][0] + self.rank : bounds[i][1] : self.world_size] for i in todo]
        if self.num_workers:  # the rest of the epoch's batches, made in worker processes
            loader = DataLoader(list(zip(rows, todo)), batch_size=None, collate_fn=self._batch_of,
                                num_workers=self.num_workers, worker_init_fn=WorkerSignals(),
                                generator=torch.Generator())  # fmt: skip
            batches = worker_batches(loader)
        else:
            batches = map(self._make_batch, rows, todo)
        for batch in batches:
            self.batches_done += 1
            yield batch

    def _order(self) -> Tensor:
        if not self.shuffle:
            return torch.arange(len(self.images), device=self.device)
        generator = torch.Generator().manual_seed(_mix(self.seed, self.epoch))
        return torch.randperm(len(self.images), generator=generator).to(self.device)

    def _make_batch(self, rows: Tensor, batch_index: int) -> Batch:
        x = self.images[rows]
        if self.binarize and not self.resumable:
            x = (uniform_by_index(self.seed, self.indices[rows], x.shape[1:]) < x).to(x.dtype)
        elif self.binarize:
            if self._generator is None:
                self._generator = torch.Generator(self.device)
            self._generator.manual_seed(_mix(self.seed, self.epoch, batch_index, self.rank))
            x = torch.bernoulli(x, generator=self._generator)
        return x, self.labels[rows], self.indices[rows]

    def _batch_of(self, rows_and_index: tuple[Tensor, int]) -> Batch:
        return self._make_batch(*rows_and_index)


class GroupedBatches:
    """Lists of ``steps`` consecutive batches of ``loader`` (the last of an epoch may hold fewer): one Lightning batch
    each on the fast path (docs/speed.md). Its length counts lists; epochs and the position are the loader's."""

    def __init__(self, loader: TensorBatchLoader, steps: int) -> None:
        self.loader, self.steps = loader, steps
        self.sampler, self.batch_sampler = loader.sampler, None

    def __len__(self) -> int:
        return -(-len(self.loader) // self.steps)

    def __iter__(self) -> Iterator[list[Batch]]:
        batches = iter(self.loader)
        while group := list(islice(batches, self.steps)):
            yield group

    def state_dict(self) -> dict[str, int]:
        return {**self.loader.state_dict(), "epoch_batches": self.loader.epoch_batches(self.steps)}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.loader.load_state_dict(state)
