"""Images streamed from litdata chunks (written by ``ae-lightning-prepare``), never held in memory as a whole;
checkpoints carry the training position, so a resumed run continues at the next sample (``docs/streaming.md``)."""

from __future__ import annotations

import json
import struct
from collections.abc import Callable, Iterator, Sequence
from functools import cached_property
from typing import Any, Literal

import torch
from litdata import StreamingDataLoader, StreamingDataset
from litdata.streaming.sampler import ChunkedIndex
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2

from datamodules.base import Arrays, ImageDataModule, Split
from datamodules.checks import PositiveInt, Seed, check_shared
from datamodules.loader import (
    Batch,
    EpochPosition,
    WorkerSignals,
    _mix,
    check_same_position,
    global_batch_bounds,
    worker_batches,
)
from datamodules.stream_prepare import decode
from datamodules.stream_store import MANIFEST, StreamLocation, StreamManifest, check_chunks, read_manifest

LARGER_SPLITS = "prepare the stream with larger splits (--val-fraction, --test-fraction)"


class ImageStream(StreamingDataset):
    """One split of a stream: samples ``{"x": float [C, H, W] in [0, 1], "label": int, "index": int}``.

    Args:
        augment: a transform of uint8 ``[C, H, W]`` pixels, or None.
        shuffle, seed: litdata's chunk-and-sample shuffle; the seed of it and of ``augment`` (with epoch and index).
        cache_dir: where litdata caches remote chunks; None: its default.
    """

    def __init__(
        self,
        location: StreamLocation,
        split: Split,
        manifest: StreamManifest,
        augment: Callable[[Tensor], Tensor] | None,
        shuffle: bool,
        seed: int,
        cache_dir: str | None = None,
    ) -> None:
        where = location.join(split)
        super().__init__(
            where, cache_dir=cache_dir, shuffle=shuffle, seed=seed, storage_options=location.storage_options or None
        )
        self.split, self.where, self.samples = split, where, manifest.counts[split]
        self.channels, self.shape = manifest.channels, (manifest.height, manifest.width)
        self.augment, self.augment_seed = augment, seed

    def __getitem__(self, index: ChunkedIndex | int) -> dict[str, Any]:
        i = index.index if isinstance(index, ChunkedIndex) else int(index)
        try:
            item = super().__getitem__(index)
        except struct.error as error:  # litdata reads a damaged table of the chunk's samples
            raise ValueError(
                f"{self.where}: sample {i} could not be read from its chunk ({error}); corrupt chunk"
            ) from None
        try:
            image = decode(item["image"], self.channels)
        except (RuntimeError, ValueError) as error:
            reason = " ".join(str(error).split())[:200]
            raise ValueError(f"{self.where}: sample {i} is not a readable image ({reason}); corrupt chunk") from None
        if tuple(image.shape) != (self.channels, *self.shape):
            raise ValueError(
                f"{self.where}: sample {i} has shape {tuple(image.shape)}, the manifest records "
                f"{(self.channels, *self.shape)}; the chunk is corrupt"
            )
        if self.augment is not None:
            with torch.random.fork_rng(devices=[]):
                # the CPU generator only: torch.manual_seed also seeds every device type, at ~1 ms a call
                torch.default_generator.manual_seed(_mix(self.augment_seed, self.current_epoch, i))
                image = self.augment(image)
        return {"x": image.float().div_(255), "label": item["label"], "index": i}


class EvaluationShard(Dataset):
    """This rank's share of a split's samples ``rows`` (None: all), as ``batches`` of rows: each global batch dealt
    to the ranks as the in-memory loaders deal it (``docs/streaming.md``); a ValueError if there are fewer samples
    than processes. ``batch_size``: per rank (the last batch may hold up to ``world_size - 1`` more)."""

    def __init__(
        self, dataset: ImageStream, rank: int, world_size: int, batch_size: int, rows: Sequence[int] | None = None
    ) -> None:
        # not len(dataset): under DDP, litdata's length is one rank's share of the chunks
        rows = range(dataset.samples) if rows is None else rows
        check_shared(dataset.split, len(rows), world_size, LARGER_SPLITS, dataset.where)
        bounds = global_batch_bounds(len(rows), batch_size, world_size)
        self.dataset, self.batches = dataset, [list(rows[start + rank : end : world_size]) for start, end in bounds]
        self.rows = [row for batch in self.batches for row in batch]

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, row: int) -> dict[str, Any]:
        return self.dataset[row]


class StreamLoader(EpochPosition):
    """Yields ``(image, label, index)`` batches of an :class:`ImageStream`: shuffled and sharded by litdata's loader
    for training (``resumable``: keeps its position across passes and in ``state_dict``, with the stream's
    ``fingerprint`` and the batches of ``trainer``'s epochs), else those of an :class:`EvaluationShard` of ``rank``,
    ``world_size`` and ``rows``."""

    def __init__(
        self,
        dataset: ImageStream,
        batch_size: int,
        num_workers: int,
        resumable: bool,
        fingerprint: str,
        rank: int = 0,
        world_size: int = 1,
        rows: Sequence[int] | None = None,
        trainer: Any = None,
    ) -> None:
        super().__init__(resumable, trainer)
        workers = {"num_workers": num_workers, "worker_init_fn": WorkerSignals(), "generator": torch.Generator()}
        if resumable:
            self.loader = StreamingDataLoader(dataset, batch_size=batch_size, **workers)
        else:
            shard = EvaluationShard(dataset, rank, world_size, batch_size, rows)
            self.loader = DataLoader(shard, batch_sampler=shard.batches, **workers)
        self.batch_size, self.fingerprint, self.seed = batch_size, fingerprint, dataset.augment_seed
        self._stream_state: dict[str, Any] | None = None

    def __len__(self) -> int:
        return len(self.loader)

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "batches_done": self.batches_done, "batch_size": self.batch_size,
                "seed": self.seed, "epoch_batches": self.epoch_batches(), "fingerprint": self.fingerprint,
                "stream": self.loader.state_dict() if self.resumable else None}  # fmt: skip

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume at ``state``'s position when iteration starts (:func:`check_position` says what must match)."""
        length = state.get("epoch_batches", len(self))
        mine = {"fingerprint": self.fingerprint, "batch_size": self.batch_size, "seed": self.seed}
        check_position(state, {**mine, "shuffle": self.loader.dataset.shuffle if self.resumable else None}, length)
        done = state["batches_done"] if state["batches_done"] < length else max(state["batches_done"], len(self))
        self.epoch, self.batches_done, self._stream_state = state["epoch"], done, state["stream"]
        self._positioned = True

    def __iter__(self) -> Iterator[Batch]:
        if not self.resumable:
            yield from ((batch["x"], batch["label"], batch["index"]) for batch in worker_batches(self.loader))
            return
        self._start_pass(len(self))
        if self._stream_state is not None and self.batches_done > 0:
            self.loader.load_state_dict(relocated(self._stream_state, self.loader.dataset))
        else:
            # litdata counts epochs from 1 and adds one at iteration; a pass stopped early leaves ``restore`` set (#770)
            self.loader.current_epoch, self.loader.restore = self.epoch, False
        self._stream_state = None
        for batch in worker_batches(self.loader):
            self.batches_done += 1
            yield batch["x"], batch["label"], batch["index"]


def check_position(state: dict[str, Any], mine: dict[str, Any], length: int | None) -> None:
    """Raise a ValueError naming the setting if a :class:`StreamLoader` position ``state`` cannot continue with this
    run's settings ``mine`` (:func:`check_same_position`): never on another stream; inside an epoch (of
    ``epoch_batches``, else ``length``; None: unknown) not with another batch size, seed or shuffle."""
    length = state.get("epoch_batches", length)
    mid_epoch = length is not None and 0 < state["batches_done"] < length
    dataset = (state.get("stream") or {}).get("dataset", {})
    stored = {"seed": dataset.get("seed"), "shuffle": dataset.get("shuffle"), **state}  # older: litdata's seed
    settings = {"fingerprint": "stream (fingerprint)", "batch_size": "--data.batch_size", "seed": "--data.seed",
                "shuffle": "shuffling (off under --trainer.overfit_batches)"}  # fmt: skip
    check_same_position(stored, mine, {key: settings[key] for key in settings if key == "fingerprint" or mid_epoch})


def relocated(state: dict[str, Any], dataset: StreamingDataset) -> dict[str, Any]:
    """A ``StreamingDataLoader.state_dict()`` with its (undocumented) location keys set to ``dataset``'s: litdata
    refuses a position saved for another folder or cache, but a stream is identified by its fingerprint."""
    where = {"input_dir_path": dataset.input_dir.path, "input_dir_url": dataset.input_dir.url,
             "cache_dir_path": dataset.cache_dir.path}  # fmt: skip
    missing = sorted(set(where) - set(state.get("dataset", {})))
    if missing:
        import litdata

        raise RuntimeError(
            f"litdata {litdata.__version__} changed its loader state, which ae-lightning rewrites to resume a stream "
            f"read from another folder: state['dataset'] has no {', '.join(missing)}. Install a litdata release "
            "within the bounds of ae-lightning's pyproject.toml, or report this with the litdata version"
        )
    return {**state, "dataset": {**state["dataset"], **where}}


class StreamingDataModule(ImageDataModule):
    """Images from a stream written by ``ae-lightning-prepare`` (a folder or an ``s3://``/``gs://`` URI).

    Args:
        input_dir: the stream's folder or URI.
        image_size, augment: side of the square images the model sees (None: the stored images whole), by ``crop``
            (random crop for training, centre crop otherwise) or ``resize``.
        hflip: flip training images horizontally with probability 1/2.
        resolution, channels: the stored side and channel count the stream must have; None accepts the stream's.
        batch_size, seed: samples per step and process; seed of the shuffle and the augmentation.
        num_workers: worker processes reading, decoding and augmenting.
        predict_split: the split that ``predict`` runs on.
        verify_chunks: hash every local chunk against the manifest at setup (reads the whole stream once).
        cache_dir: where litdata caches remote chunks; None: its default (refused for a local stream).
        storage_options: the object store client's options (``endpoint_url``, ...; refused for a local stream).
    """

    def __init__(
        self,
        input_dir: str,
        image_size: PositiveInt | None = None,
        augment: Literal["crop", "resize"] = "crop",
        hflip: bool = True,
        resolution: PositiveInt | None = None,
        channels: Literal[1, 3] | None = None,
        batch_size: int = 128,
        seed: Seed = 42,
        num_workers: int = 2,
        predict_split: Split = "test",
        verify_chunks: bool = False,
        cache_dir: str | None = None,
        storage_options: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(
            batch_size=batch_size, seed=seed, num_workers=num_workers, predict_split=predict_split, data_on_device=False
        )
        self.location = StreamLocation(input_dir, storage_options)
        for name, value in {"cache_dir": cache_dir, "storage_options": storage_options or None}.items():
            if value is not None and not self.location.is_remote:
                raise ValueError(
                    f"{name}={value!r} applies to an s3://, gs:// or r2:// stream; {input_dir} is a local folder, read "
                    f"in place: leave {name} unset"
                )
        if verify_chunks and self.location.is_remote:
            raise ValueError(
                f"verify_chunks hashes a local stream's chunks; {input_dir} is remote, and litdata checks each chunk's "
                "size as it downloads it: leave verify_chunks false, or verify a local copy of the stream"
            )
        self._train_loader: StreamLoader | None = None
        self._resume_state: dict[str, Any] | None = None

    # --- what the data are ------------------------------------------------------------------------------------------
    @cached_property
    def manifest(self) -> StreamManifest:
        """The stream's manifest, checked against ``resolution``, ``channels`` and ``image_size`` (read once)."""
        manifest, where = read_manifest(self.location), self.location.join(MANIFEST)
        stored, wanted = (manifest.height, manifest.width), self.hparams.resolution
        if wanted is not None and stored != (wanted, wanted):
            raise ValueError(
                f"stream {self.location.uri} holds {manifest.width}x{manifest.height} images ({where}), but "
                f"resolution={wanted} was asked for; prepare the stream at --size {wanted} or set resolution: "
                f"{manifest.height if manifest.height == manifest.width else 'null'}"
            )
        if self.hparams.channels is not None and manifest.channels != self.hparams.channels:
            raise ValueError(
                f"stream {self.location.uri} holds {manifest.channels}-channel images ({where}), but channels="
                f"{self.hparams.channels} was asked for; prepare it with --channels {self.hparams.channels} or "
                f"set channels: {manifest.channels}"
            )
        size = self.hparams.image_size
        if size is not None and self.hparams.augment == "crop" and size > min(stored):
            raise ValueError(
                f"image_size={size} crops from stream {self.location.uri}'s {manifest.width}x{manifest.height} "
                "images, which are smaller; use augment: resize, a smaller image_size, or a stream prepared larger"
            )
        return manifest

    def load_arrays(self) -> Arrays:
        raise TypeError(f"{type(self).__name__} streams its data from {self.location.uri}; it holds no arrays")

    @property
    def input_shape(self) -> tuple[int, ...]:
        manifest, size = self.manifest, self.hparams.image_size
        return (manifest.channels, *((size, size) if size is not None else (manifest.height, manifest.width)))

    @property
    def data_source(self) -> str:
        return f"stream-{self.manifest.fingerprint[:12]}"

    @property
    def dataset_name(self) -> str:
        return self.location.uri.rstrip("/").rsplit("/", 1)[-1]

    @property
    def class_names(self) -> list[str] | None:
        return self.manifest.class_names

    @property
    def has_labels(self) -> bool:
        return self.manifest.class_names is not None

    # --- splits -----------------------------------------------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        self.hparams.data_source = self.data_source
        for logger in self.trainer.loggers if self.trainer is not None else []:
            logger.log_hyperparams({"data_source": self.data_source})
        self.check_splits(stage, content=self.hparams.verify_chunks)

    def check_splits(self, stage: str | None, trainer: Any = None, content: bool = False) -> None:
        """Refuse a bad chunk or ``index.json`` of a split ``stage`` reads (:meth:`splits_read`; ``content``: hash local
        chunks too), such a split with fewer samples than ``trainer``'s processes (default: the attached trainer's),
        and a train split a DDP ``fit`` cannot share."""
        trainer = trainer if trainer is not None else self.trainer
        world_size, reads = getattr(trainer, "world_size", 1), self.splits_read(stage, trainer)
        for split in reads:
            check_chunks(self.location, self.manifest, split, content=content)
            check_shared(split, self.manifest.counts[split], world_size, LARGER_SPLITS, self.location.join(split))
        if stage == "fit" and world_size > 1 and "train" in reads:
            self._check_ddp_epoch(world_size)

    def _check_ddp_epoch(self, world: int) -> None:
        """Refuse a DDP ``batch_size`` that leaves the processes no batch, or a train split with a chunk of more samples
        than an epoch trains (docs/streaming.md, "Which training samples DDP leaves out")."""
        batch, samples, uri = self.hparams.batch_size, self.manifest.counts["train"], self.location.uri
        if batch * world > samples:
            raise ValueError(
                f"--data.batch_size {batch} x {world} processes exceeds the {samples} samples of the train split of "
                f"{uri}: under DDP litdata gives each process only whole batches of its share, so no process would "
                f"train; use --data.batch_size {samples // world} or less, or fewer processes"
            )
        index = json.loads(self.location.read_text("train", "index.json"))  # litdata's: samples per chunk
        chunks = {chunk["filename"]: chunk["chunk_size"] for chunk in index["chunks"]}
        name, largest = max(chunks.items(), key=lambda item: item[1])
        trained, workers = samples - samples % (batch * world), max(1, self.hparams.num_workers)
        if largest > trained:
            raise ValueError(
                f"the train split of {uri} is stored in {len(chunks)} chunk(s) (read by {world} processes x {workers} "
                f"worker(s)), and chunk {name} holds {largest} samples, more than the {trained} that --data.batch_size "
                f"{batch} x {world} processes train in an epoch: litdata gives every process whole batches and leaves "
                f"out the last {samples - trained} sample(s) of its chunk order, so {largest - trained} sample(s) of "
                "that chunk would be left out of every epoch. Prepare the stream again in smaller chunks "
                f"(ae-lightning-prepare --chunk-size {max(1, trained // (world * workers))}, or a --chunk-bytes that "
                "holds as many), or train on one process"
            )

    def split_size(self, split: Split) -> int:
        return self.manifest.counts[split]

    def _transform(self, train: bool) -> v2.Transform | None:
        size, steps = self.hparams.image_size, []
        if size is not None and self.hparams.augment == "resize":
            steps += [v2.Resize(size, antialias=True), v2.CenterCrop(size)]
        elif size is not None:
            steps.append(v2.RandomCrop(size) if train else v2.CenterCrop(size))
        if train and self.hparams.hflip:
            steps.append(v2.RandomHorizontalFlip())
        return v2.Compose(steps) if steps else None

    # --- loaders ----------------------------------------------------------------------------------------------------
    def _loader(
        self, split: Split, shuffle: bool, batch_size: int | None = None, rows: list[int] | None = None
    ) -> StreamLoader:
        """``shuffle``: the training loader; else an evaluation loader of ``rows``, or of this rank's share of all."""
        hparams, trainer = self.hparams, self.trainer if rows is None else None  # given rows: read on any rank
        shard = {"rank": trainer.global_rank, "world_size": trainer.world_size} if trainer is not None else {}
        augment, shuffled = self._transform(shuffle), shuffle and not self.overfitting
        dataset = ImageStream(self.location, split, self.manifest, augment, shuffled, hparams.seed, hparams.cache_dir)
        batch_size, fingerprint = batch_size or hparams.batch_size, self.manifest.fingerprint
        shard["trainer"] = trainer if shuffle else None  # whose epochs the training position counts
        loader = StreamLoader(dataset, batch_size, hparams.num_workers, shuffle, fingerprint, rows=rows, **shard)
        if shuffle:
            self._train_loader = loader
        return loader

    def evaluation_loader(
        self, split: Split, batch_size: int | None = None, max_images: int | None = None, seed: int = 0
    ) -> StreamLoader:
        """The split's images in stored order, as evaluation sees them (centre crop, no flip), in batches of
        ``batch_size`` (None: the datamodule's): all, or a random subset of ``max_images`` drawn with ``seed``."""
        check_chunks(self.location, self.manifest, split, content=self.hparams.verify_chunks)
        return self._loader(split, False, batch_size, self.evaluation_rows(split, max_images, seed).tolist())

    def train_dataloader(self) -> StreamLoader:
        loader = self._loader("train", shuffle=True)
        if self._resume_state is not None:
            loader.load_state_dict(self._resume_state)
            self._resume_state = None
        return loader

    # --- resuming ---------------------------------------------------------------------------------------------------
    def check_resume(self, loader_state: dict[str, Any], world_size: int) -> None:
        """Refuse, before the run creates anything, a position that :func:`check_position` refuses."""
        self._check_fingerprint(loader_state["fingerprint"], loader_state.get("source"))
        check_position(loader_state, {"batch_size": self.hparams.batch_size, "seed": self.hparams.seed}, None)

    def _check_fingerprint(self, theirs: str, source: str | None = None) -> None:
        """``source``: where an in-memory datamodule's position (which names it) was reached."""
        if theirs != self.manifest.fingerprint:
            trained = f"a stream with fingerprint {theirs}" if source is None else f"in-memory data {source}"
            raise ValueError(
                f"the checkpoint was trained on {trained}, but {self.location.uri} has "
                f"fingerprint {self.manifest.fingerprint}: another dataset (or another prepare of it). Resume on the "
                "checkpoint's data, or start a fresh run without --ckpt_path"
            )

    # The training position is kept here too: Lightning does not always restore a loader's (docs/streaming.md)
    def state_dict(self) -> dict[str, Any]:
        position = None if self._train_loader is None else self._train_loader.state_dict()
        return {"fingerprint": self.manifest.fingerprint, "train_loader": position}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.trainer is not None and self.trainer.state.fn != "fit":  # a checkpoint may be evaluated on any data
            return
        self._check_fingerprint(state["fingerprint"])
        self._resume_state = state["train_loader"]
        # the loader is built already where the loaders were set up before the checkpoint was restored
        if self._resume_state is not None and self._train_loader is not None:
            self._train_loader.load_state_dict(self._resume_state)
            self._resume_state = None


__all__ = ["EvaluationShard", "ImageStream", "StreamLoader", "StreamingDataModule"]
