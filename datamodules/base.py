"""The shared base of every datamodule: checks, seeded splits and fast loaders over in-memory tensors."""

from __future__ import annotations

import contextlib
import hashlib
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, ClassVar, Literal

import lightning as L
import numpy as np
import torch
from filelock import FileLock
from lightning.pytorch.core.hooks import DataHooks
from torch import Tensor

from datamodules.checks import (
    NonNegativeInt,
    OpenUnitInterval,
    PositiveInt,
    Seed,
    check_init_arguments,
    check_shared,
    plain_hyperparameters,
)
from datamodules.loader import GroupedBatches, TensorBatchLoader, check_resume_state, fingerprint

Split = Literal["train", "val", "test"]
DEFAULT_TEST_FRACTION = 0.1
UNLABELED = -1  # the label of every sample of data without labels (torchvision's convention, e.g. STL10)
DOWNLOAD_LOCK = ".ae-lightning-download.lock"  # hidden: the image-folder checks skip it, torchvision reads named files


@dataclass
class Arrays:
    """What a datamodule loads: ``train``, images ``[N, C, H, W]`` uint8 or vectors ``[N, D]`` float32 and labels
    ``[N]`` int64; the data's own ``test`` split, or None (the base holds out ``test_fraction`` of ``train``); the
    name of each label, or None; the file (or folder) each split came from, for messages (``<split>_labels``: of
    its labels)."""

    train: tuple[Tensor, Tensor]
    test: tuple[Tensor, Tensor] | None = None
    class_names: list[str] | None = None
    sources: dict[str, str] = field(default_factory=dict)


class ImageDataModule(L.LightningDataModule):
    """Base of every datamodule, owning the checks, splits and loaders; a subclass implements :meth:`load_arrays`. A
    batch is ``(image, label, index)``: float images ``[B, C, H, W]`` in [0, 1] (or vectors ``[B, D]``), int64 labels
    (-1 without labels) and each sample's index in its split.

    Args:
        batch_size: samples per step and process.
        val_fraction: share of the training pool held out for validation (seeded, stratified).
        test_fraction: share held out as test split for data without one (default 0.1); an error for data with one.
        seed: seed of the splits, the epoch orders and binarization.
        num_workers: worker processes building batches; 0 (fastest for in-memory data) builds them in-process.
        binarize: images only: ``none``, ``dynamic`` (Bernoulli pixels drawn anew for every training batch, once per
            evaluation image) or ``static`` (one fixed draw).
        classes: keep only these labels in train/val (test keeps all), e.g. for one-class anomaly detection.
        data_on_device: keep the tensors on the training device, so no batch crosses the bus (with num_workers 0).
        predict_split: the split that ``predict`` runs on.
        steps_per_batch: more than 1 yields lists of that many training batches, for the fast path (docs/speed.md).
    """

    # the number of labels, where fixed: ``classes`` is then checked at construction
    num_classes: ClassVar[int | None] = None

    def __init__(
        self,
        batch_size: PositiveInt = 128,
        val_fraction: OpenUnitInterval = 1 / 12,
        test_fraction: OpenUnitInterval | None = None,
        seed: Seed = 42,
        num_workers: NonNegativeInt = 0,
        binarize: Literal["none", "dynamic", "static"] = "none",
        classes: list[NonNegativeInt] | None = None,
        data_on_device: bool = True,
        predict_split: Split = "test",
        steps_per_batch: PositiveInt = 1,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        check_init_arguments(type(self), self.hparams)
        plain_hyperparameters(self.hparams)  # a subclass's paths (``data_dir``, ``labels``) too
        self.save_hyperparameters(self.hparams)  # what loggers write (hparams.yaml) as the checkpoint holds it
        known = type(self).num_classes
        if classes is not None and len(classes) == 0:
            raise ValueError("classes is an empty list: name at least one label to keep, or leave it unset")
        if classes is not None and known is not None and (unknown := sorted(set(classes) - set(range(known)))):
            raise ValueError(
                f"classes {unknown} are not labels of {type(self).__name__}, which has labels 0..{known - 1}"
            )
        self.splits: dict[Split, tuple[Tensor, Tensor]] = {}

    def __str__(self) -> str:
        # Lightning's builds each loader and describes it as a DataLoader, which these loaders are not
        return f"{type(self).__name__}({', '.join(f'{name}={value!r}' for name, value in self.hparams.items())})"

    # --- what a subclass provides -----------------------------------------------------------------------------------
    def load_arrays(self) -> Arrays:
        """The data as tensors (see :class:`Arrays`); called once, by :meth:`setup` or :attr:`input_shape`."""
        raise NotImplementedError

    @property
    def data_source(self) -> str:
        """Where the data come from, as recorded in checkpoints and reports: ``files-<hash of the resolved paths>``."""
        paths = "|".join(str(Path(value).resolve()) for value in self.source_paths())
        return f"files-{hashlib.sha1(paths.encode()).hexdigest()[:8]}"

    def source_paths(self) -> list[str]:
        """The files or folders the data are read from."""
        return []

    def check_sources_exist(self) -> None:
        """Raise a FileNotFoundError naming the first local file or folder of :meth:`source_paths` that is missing."""
        for source in self.source_paths():
            if "://" not in source and not Path(source).exists():
                where = "" if Path(source).is_absolute() else f" in the working folder {Path.cwd()}"
                raise FileNotFoundError(f"{source} does not exist{where}")

    @property
    def dataset_name(self) -> str:
        """A name of the dataset, e.g. for the feature classifier's cache file."""
        return type(self).__name__.removesuffix("DataModule")

    @property
    def data_description(self) -> str:
        """The dataset and its source in words, e.g. ``FashionMNIST (torchvision)``, for messages."""
        return f"{self.dataset_name} ({self.data_source})"

    # --- what the data are ------------------------------------------------------------------------------------------
    @cached_property
    def arrays(self) -> Arrays:
        """The loaded and checked data (loaded on first use)."""
        arrays = self.load_arrays()
        check_arrays(arrays)
        return arrays

    @property
    def input_shape(self) -> tuple[int, ...]:
        """``(C, H, W)`` of the images or ``(D,)`` of the vectors; reads the data if need be."""
        return tuple(self.arrays.train[0].shape[1:])

    @property
    def prepared(self) -> bool:
        """Whether the data can be read before :meth:`prepare_data` runs: they are loaded, or it fetches nothing."""
        return "arrays" in vars(self) or type(self).prepare_data is DataHooks.prepare_data

    @property
    def is_image_data(self) -> bool:
        return len(self.input_shape) == 3

    @property
    def class_names(self) -> list[str] | None:
        """Name of each label (label ``i`` is ``class_names[i]``), or None."""
        return self.arrays.class_names

    @property
    def has_labels(self) -> bool:
        return bool((self.arrays.train[1] != UNLABELED).any())

    # --- splits -----------------------------------------------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        if not self.splits:
            self._draw_splits()
        # Lightning logged the hyperparameters before data_source was known: log it to every trainer using the splits.
        for logger in self.trainer.loggers if self.trainer is not None else []:
            logger.log_hyperparams({"data_source": self.hparams.data_source})
        self._check_shared(stage, self.trainer)  # before the Trainer writes the run's config and hyperparameters

    def check_splits(self, stage: str | None, trainer: Any = None) -> None:
        """Raise a ValueError naming the split if one that ``stage`` reads has fewer samples than ``trainer``'s
        processes (default: the attached trainer's); the data are read (:meth:`setup`) only where :attr:`prepared`,
        else :meth:`setup` checks them."""
        trainer = trainer if trainer is not None else self.trainer
        if getattr(trainer, "world_size", 1) > 1 and self.prepared:
            self.setup(stage)
            self._check_shared(stage, trainer)

    def splits_read(self, stage: str | None, trainer: Any = None) -> list[Split]:
        """The splits whose loaders Lightning's ``stage`` builds (every split for None), less those whose
        ``limit_*_batches`` is 0 in ``trainer``."""
        if stage == "predict":
            return [] if getattr(trainer, "limit_predict_batches", 1) == 0 else [self.hparams.predict_split]
        splits = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",)}.get(stage, ("train", "val", "test"))
        return [split for split in splits if getattr(trainer, f"limit_{split}_batches", 1) != 0]

    def _check_shared(self, stage: str | None, trainer: Any) -> None:
        for split in self.splits_read(stage, trainer):
            check_shared(split, self.split_size(split), getattr(trainer, "world_size", 1))

    def _draw_splits(self) -> None:
        arrays = self.arrays
        source = self.hparams.data_source = self.data_source  # saved with the hyperparameters in checkpoints
        if self.hparams.binarize != "none" and not self.is_image_data:
            raise ValueError(
                f"binarize: {self.hparams.binarize} applies to images, but {type(self).__name__} holds feature vectors "
                f"of shape {self.input_shape}; set binarize: none"
            )
        (images, labels), test = arrays.train, arrays.test
        if test is not None and self.hparams.test_fraction is not None:
            raise ValueError(
                f"test_fraction={self.hparams.test_fraction} holds out a test split, but {type(self).__name__} has "
                f"its own test split ({arrays.sources.get('test', 'test')}); leave test_fraction unset"
            )
        generator = torch.Generator().manual_seed(self.hparams.seed)
        if test is None:
            fraction = self.hparams.test_fraction or DEFAULT_TEST_FRACTION
            pool, held = draw_split(labels, fraction, self.hparams.seed, "test", "test_fraction", arrays.sources)
            test, (images, labels) = (images[held], labels[held]), (images[pool], labels[pool])
        if self.hparams.binarize == "static":
            images = _binarize_once(images, generator)
            test = _binarize_once(test[0], generator), test[1]
        if self.hparams.classes is not None:
            present = set(labels.unique().tolist())
            if absent := sorted(set(self.hparams.classes) - present):
                where = arrays.sources.get("train", source)
                raise ValueError(
                    f"classes {absent} do not occur in the training data of {where} (labels: {sorted(present)})"
                )
            keep = torch.isin(labels, torch.tensor(self.hparams.classes))
            images, labels = images[keep], labels[keep]
        train_rows, val_rows = draw_split(
            labels, self.hparams.val_fraction, self.hparams.seed, "val", "val_fraction", arrays.sources
        )
        self.splits = {
            "train": (images[train_rows], labels[train_rows]),
            "val": (images[val_rows], labels[val_rows]),
            "test": test,
        }

    def split_size(self, split: Split) -> int:
        """Number of samples in ``split`` (after ``setup``)."""
        return len(self.splits[split][0])

    def evaluation_rows(self, split: Split, max_images: int | None = None, seed: int = 0) -> Tensor:
        """Rows of ``split`` for an evaluation: all, or a seeded random subset of ``max_images``, in split order."""
        rows = torch.arange(self.split_size(split))
        if max_images is None or len(rows) <= max_images:
            return rows
        return torch.randperm(len(rows), generator=torch.Generator().manual_seed(seed))[:max_images].sort().values

    # --- loaders ----------------------------------------------------------------------------------------------------
    @property
    def overfitting(self) -> bool:
        """Whether the trainer overfits a few batches: the training loader then repeats them, unshuffled."""
        return self.trainer is not None and self.trainer.overfit_batches > 0

    def _loader(self, split: Split, shuffle: bool) -> TensorBatchLoader:
        """``shuffle``: the training loader (resumable; shuffled unless :attr:`overfitting`)."""
        if not self.splits:
            self.setup()
        images, labels = self.splits[split]
        binarize = self.hparams.binarize == "dynamic"
        return TensorBatchLoader(
            images, labels, torch.arange(len(images)), binarize=binarize, **self._loader_settings(split, shuffle)
        )

    def _loader_settings(self, split: Split, shuffle: bool) -> dict[str, Any]:
        """:meth:`_loader`'s :class:`~datamodules.loader.TensorBatchLoader` settings but the data and binarize."""
        trainer = self.trainer
        on_device = self.hparams.get("data_on_device") and trainer is not None and self.hparams.num_workers == 0
        return {
            "batch_size": self.hparams.batch_size,
            "shuffle": shuffle and not self.overfitting,
            "seed": self.hparams.seed,
            "rank": trainer.global_rank if trainer is not None else 0,
            "world_size": trainer.world_size if trainer is not None else 1,
            "device": trainer.strategy.root_device if on_device else "cpu",
            "num_workers": self.hparams.num_workers,
            "resumable": split == "train" and shuffle,
            "source": self.data_description,
            "split": split,
            "trainer": trainer if split == "train" and shuffle else None,
        }

    def check_resume(self, loader_state: dict[str, Any], world_size: int) -> None:
        """Raise a ValueError naming the setting (and both datasets) if the checkpoint's training position
        ``loader_state`` was reached on other data or with other data settings (the data: where :attr:`prepared`)."""
        mine = {"seed": self.hparams.seed, "batch_size": self.hparams.batch_size, "world_size": world_size}
        if self.prepared:
            self.setup("fit")
            samples, content = self.training_content()
            mine |= {"samples": samples, "fingerprint": content, "source": self.data_description}
            if "train" in self.splits:
                mine["signed_fingerprint"] = fingerprint(self.splits["train"][0], signed=True)
        check_resume_state(loader_state, mine)

    def training_content(self) -> tuple[int, int]:
        """The training split's size and content fingerprint, as its loader records them (after ``setup``)."""
        images = self.splits["train"][0]
        return len(images), fingerprint(images)

    def train_dataloader(self) -> TensorBatchLoader | GroupedBatches:
        loader = self._loader("train", shuffle=True)
        steps = self.hparams.get("steps_per_batch", 1)  # more than 1: lists of that many batches (the fast path)
        return GroupedBatches(loader, steps) if steps > 1 else loader

    def val_dataloader(self) -> TensorBatchLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> TensorBatchLoader:
        return self._loader("test", shuffle=False)

    def predict_dataloader(self) -> TensorBatchLoader:
        return self._loader(self.hparams.predict_split, shuffle=False)

    def transfer_batch_to_device(self, batch: Any, device: torch.device, dataloader_idx: int) -> Any:
        # Batches built on the device already (data_on_device: a loader's tuple, or the fast path's list of them) skip
        # Lightning's walk over them (dozens of calls a step).
        group = batch if isinstance(batch, list) and batch else [batch]
        if all(
            isinstance(one, tuple) and all(isinstance(t, Tensor) and t.device == device for t in one) for one in group
        ):
            return batch
        return super().transfer_batch_to_device(batch, device, dataloader_idx)


@contextlib.contextmanager
def download_lock(data_dir: Path, folder: Path, check_given: Callable[[], None] = lambda: None) -> Iterator[None]:
    """Hold the inter-process lock of ``data_dir`` around a check-then-download into ``folder`` under it, removing the
    folders made on the way and left empty. Where no lock can be taken (a read-only folder), ``check_given()`` may
    raise naming a file there that cannot be used as it is; else an OSError names ``data_dir``."""
    try:
        while True:
            created = [path for path in (folder, *folder.parents) if not path.exists()]  # deepest first
            data_dir.mkdir(parents=True, exist_ok=True)
            lock = FileLock(data_dir / DOWNLOAD_LOCK)
            with contextlib.suppress(FileNotFoundError):  # removed while this process waited, by a failed download
                lock.acquire()
                break
    except (OSError, NotImplementedError) as error:  # NotImplementedError: no flock (filelock before 3.21)
        check_given()
        raise OSError(
            f"cannot take the download lock of data_dir {data_dir} ({error}): a download needs a writable folder; "
            "make it writable, or point data_dir at a folder that holds the data"
        ) from error
    try:
        yield
    finally:
        for path in created:
            if path == data_dir and [child.name for child in path.iterdir()] == [DOWNLOAD_LOCK]:
                # unlinked while held: a process waiting on it takes a new one (filelock checks the link count)
                (path / DOWNLOAD_LOCK).unlink()
            with contextlib.suppress(OSError):  # not empty: something was written there
                path.rmdir()
        lock.release()


def given_archive(path: Path) -> ValueError:
    """The error for an archive in a ``data_dir`` where nothing can be extracted (no download lock)."""
    return ValueError(
        f"{path} is compressed, and it is extracted only by a download, which needs a writable data_dir: extract it "
        "where it is, or make the folder writable"
    )


def check_arrays(arrays: Arrays) -> None:
    """Raise a ValueError naming the split and its source unless every split holds images ``[N, C, H, W]`` uint8
    with 1 or 3 channels or vectors ``[N, D]`` float, at least one sample, one label per sample in
    ``0 .. len(class_names) - 1`` (or -1), and the training data's sample shape."""
    names = arrays.class_names
    shape = None
    for split, pair in (("train", arrays.train), ("test", arrays.test)):
        if pair is None:
            continue
        data, labels = pair
        where = arrays.sources.get(split, f"the {split} split")
        if data.ndim == 4 and (data.dtype != torch.uint8 or data.shape[1] not in (1, 3)):
            raise ValueError(
                f"{where}: images must be uint8 [N, C, H, W] with 1 or 3 channels, got {data.dtype} {tuple(data.shape)}"
            )
        if data.ndim != 4 and (data.ndim != 2 or not data.dtype.is_floating_point):
            raise ValueError(f"{where}: expected images [N, C, H, W] or vectors [N, D], got shape {tuple(data.shape)}")
        if len(data) == 0:
            raise ValueError(f"{where} holds no samples")
        if labels.ndim != 1 or len(labels) != len(data):
            labels_where = arrays.sources.get(f"{split}_labels")
            of = f"the {len(data)} samples of {where}" if labels_where else f"{len(data)} samples"
            raise ValueError(
                f"{labels_where or where}: {len(labels)} labels for {of}; there must be exactly one label per sample"
            )
        bad = labels[(labels != UNLABELED) & ((labels < 0) | (labels >= (math.inf if names is None else len(names))))]
        if len(bad):
            known = f"0..{len(names) - 1}" if names is not None else "non-negative"
            where = arrays.sources.get(f"{split}_labels", where)
            raise ValueError(f"{where}: label {bad[0].item()} is not one of the dataset's classes (labels {known})")
        if shape is not None and tuple(data.shape[1:]) != shape:
            raise ValueError(
                f"{where}: samples of shape {tuple(data.shape[1:])}, but the training data's are {shape}; every split "
                "must have the same shape"
            )
        shape = tuple(data.shape[1:])


def draw_split(
    labels: Tensor, fraction: float, seed: int, split: str, setting: str, sources: dict[str, str]
) -> tuple[Tensor, Tensor]:
    """Rows kept (sorted) and rows drawn (``fraction`` of them, in drawn order, so their first batch mixes classes): a
    seeded draw, stratified by label where every class can give one."""
    n = len(labels)
    n_drawn = round(n * fraction)
    if n_drawn == 0 or n_drawn == n:
        part = split if n_drawn == 0 else "training"
        raise ValueError(
            f"{setting}={fraction} of {n} samples ({sources.get('train', 'the data')}) leaves the {part} split empty; "
            f"choose {setting} so that both parts get at least one sample"
        )
    from sklearn.model_selection import train_test_split  # imported here: it is slow to import

    _, counts = np.unique(labels.numpy(), return_counts=True)
    # scikit-learn's stratified draw needs two samples per class and room for every class on both sides
    can_stratify = len(counts) > 1 and counts.min() >= 2 and min(n_drawn, n - n_drawn) >= len(counts)
    stratify = labels.numpy() if can_stratify else None
    kept, drawn = train_test_split(np.arange(n), test_size=n_drawn, random_state=seed, stratify=stratify)
    return torch.from_numpy(np.sort(kept)), torch.from_numpy(drawn)


def _binarize_once(images: Tensor, generator: torch.Generator) -> Tensor:
    """One Bernoulli draw of every pixel (the values of one ``torch.rand`` over them all), a block of ~1M at a time."""
    blocks = images.split(max(1, 2**20 // max(1, images[0].numel())))
    return torch.cat(
        [(torch.rand(block.shape, generator=generator) * 255 < block).to(torch.uint8) * 255 for block in blocks]
    )


__all__ = ["UNLABELED", "Arrays", "ImageDataModule", "check_arrays", "download_lock", "draw_split", "given_archive"]
