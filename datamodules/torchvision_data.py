"""Any torchvision dataset class that holds its data as arrays (CIFAR-10, SVHN, EMNIST, ...), by name."""

from __future__ import annotations

import contextlib
import inspect
import itertools
import os
from pathlib import Path
from pkgutil import resolve_name
from typing import Any

import torch
import torchvision.datasets
from torch import Tensor
from torchvision.datasets.utils import check_integrity

from datamodules.arrays import as_labels, as_samples
from datamodules.base import UNLABELED, Arrays, ImageDataModule, download_lock, given_archive
from datamodules.checks import init_parameters
from datamodules.idx import IDX_TYPES, check_idx_file


class TorchvisionDataModule(ImageDataModule):
    """A torchvision dataset's train and test splits (``train=`` or ``split=``, as the class takes them), read once
    from its ``data`` and ``targets`` (or ``labels``), downloaded when missing (offline, the error names the files and
    where). EMNIST's images are turned upright (:func:`stored_transposed`).

    Args:
        dataset: a class of ``torchvision.datasets`` (``CIFAR10``, ``SVHN``, ``EMNIST``, ...) or an import path.
        data_dir: the ``root`` torchvision reads from and downloads to.
        dataset_kwargs: more arguments of the class, e.g. ``{split: balanced}`` for EMNIST.
        **kwargs: the :class:`~datamodules.base.ImageDataModule` arguments.
    """

    def __init__(
        self, dataset: str, data_dir: str = "data", dataset_kwargs: dict[str, Any] | None = None, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        try:
            found = resolve_name(dataset) if "." in dataset else getattr(torchvision.datasets, dataset, None)
        except (ImportError, AttributeError) as error:
            raise ValueError(
                f"dataset {dataset!r} cannot be imported ({error}): name a class of torchvision.datasets (e.g. "
                "CIFAR10, SVHN, EMNIST) or the import path of a class"
            ) from error
        if not (isinstance(found, type) and issubclass(found, torchvision.datasets.VisionDataset)):
            raise ValueError(f"dataset {dataset!r} is not a torchvision dataset class (e.g. CIFAR10, SVHN, EMNIST)")
        self.dataset_class = found
        self.data_dir = Path(data_dir).expanduser()  # torchvision expands it too: a YAML config is no shell
        self._prepared = False
        self._opened: dict[str, Any] = {}  # the splits prepare_data opened, for _open to hand out
        self._split_kwargs("train")  # the dataset_kwargs, checked here, before a run starts
        check_data_dir(self.data_dir, self._files_folder(), found.__name__)

    @property
    def dataset_name(self) -> str:
        """The class's name and the ``dataset_kwargs`` that choose its data, e.g. ``EMNIST-split=letters``."""
        kwargs = sorted((self.hparams.dataset_kwargs or {}).items())
        return "-".join([self.dataset_class.__name__, *(f"{key}={value}" for key, value in kwargs)])

    data_source = "torchvision"

    def _split_kwargs(self, part: str) -> dict[str, Any]:
        kwargs = dict(self.hparams.dataset_kwargs or {})
        cls, parameters = self.dataset_class, inspect.signature(self.dataset_class).parameters
        # EMNIST's required split names its variant, and train= its part; SVHN's split="train"/"test" is its part
        variant = "split" in parameters and parameters["split"].default is inspect.Parameter.empty
        by_train = "train" in parameters or variant
        if variant and "split" not in kwargs:
            choices = ", ".join(getattr(cls, "splits", ()))
            raise ValueError(f"{cls.__name__} needs its split in dataset_kwargs: {{split: ...}}, one of {choices}")
        # which part: train= or split=, and QMNIST's what=, which overrides train=
        decides_part = {"train" if by_train else "split"} | ({"what"} & set(parameters))
        own = {"root", "download", "transform", "target_transform", "transforms"} | decides_part
        taken = sorted(own & set(kwargs))
        arguments = set(init_parameters(cls))  # those of its __init__ and of the bases its **kwargs go to
        if unknown := sorted(set(kwargs) - arguments):
            free = ", ".join(sorted(arguments - own)) or "nothing the datamodule does not set itself"
            raise ValueError(f"dataset_kwargs {unknown} are not arguments of {cls.__name__} (it takes {free})")
        if taken:
            raise ValueError(
                f"dataset_kwargs {taken} of {cls.__name__}: the datamodule sets them (root is data_dir, the train and "
                "test splits are its own, downloads happen in prepare_data, it reads the stored images, not "
                "transformed items); leave them out"
            )
        if not kwargs.get("compat", True):  # QMNIST's: its items' targets, not the targets array read here
            raise ValueError(
                f"dataset_kwargs compat={kwargs['compat']} of {cls.__name__}: the datamodule trains on the class, the "
                "first of the label columns (as compat=True gives it); leave compat out"
            )
        if by_train:
            kwargs["train"] = part == "train"
        elif "split" in parameters:
            kwargs["split"] = part
        else:
            raise ValueError(f"{cls.__name__} takes neither train= nor split=: no train and test splits")
        return kwargs

    def prepare_data(self) -> None:
        if not self._prepared and self._missing_parts():
            with download_lock(self.data_dir, self._files_folder(), self._check_given_files):
                try:
                    for part in self._missing_parts():  # another process may have fetched them while this one waited
                        self._opened[part] = self._open(part, download=True)
                except Exception as error:  # RuntimeError, URLError, OSError, depending on where it fails
                    self._check_idx_files()
                    reason = " ".join(str(error).split())
                    raise FileNotFoundError(
                        f"{self.dataset_class.__name__} is not in {self.data_dir} and could not be downloaded "
                        f"({reason}). {self._where_to_put_files()}"
                    ) from error
        self._prepared = True

    def _missing_parts(self) -> list[str]:
        """The splits torchvision does not find (or finds corrupted); those it finds are kept, to be read once."""
        self._check_idx_files()  # before torchvision reads any, and before a download it would skip is tried
        for part in [part for part in ("train", "test") if part not in self._opened]:
            with contextlib.suppress(RuntimeError):  # torchvision's "Dataset not found or corrupted"
                self._opened[part] = self._open(part, download=False)
        return [part for part in ("train", "test") if part not in self._opened]

    def _files_folder(self) -> Path:
        """The folder torchvision reads the class's files from (and downloads them to)."""
        cls = self.dataset_class
        if hasattr(cls, "resources"):  # the MNIST family reads <root>/<ClassName>/raw/
            return self.data_dir / cls.__name__ / "raw"
        return self.data_dir / getattr(cls, "base_folder", "")

    def _check_idx_files(self) -> None:
        """Raise a ValueError naming the first truncated or foreign IDX file in the folder of an MNIST-family class
        (:func:`~datamodules.idx.check_idx_file`): torchvision's error names none."""
        if issubclass(self.dataset_class, torchvision.datasets.MNIST):
            for ndim, kind in itertools.product((1, 2, 3), IDX_TYPES):
                for path in sorted(self._files_folder().glob(f"*-idx{ndim}-{kind}")):
                    check_idx_file(path, ndim, kind)

    def _published_files(self) -> list[tuple[Path, str | None]]:
        """The files torchvision reads (or extracts) the class's data from, with their published MD5 sums."""
        cls = self.dataset_class
        entries = getattr(cls, "train_list", []) + getattr(cls, "test_list", [])  # [file, md5]
        entries += [entry[1:] for key, entry in getattr(cls, "split_list", {}).items() if key in ("train", "test")]
        if "resources" in vars(cls):  # a subclass such as EMNIST inherits MNIST's list but reads other files
            resources = cls.resources  # a list of (file or URL, md5), or QMNIST's dict of such lists by split
            groups = resources.values() if isinstance(resources, dict) else [resources]
            entries += [(Path(url).name, md5) for url, md5 in itertools.chain(*groups)]
        elif hasattr(cls, "resources") and isinstance(getattr(cls, "url", None), str):  # EMNIST: one archive
            entries.append((Path(cls.url).name, getattr(cls, "md5", None)))
        meta = getattr(cls, "meta", None)
        if isinstance(meta, dict) and "filename" in meta:
            entries.append((meta["filename"], meta.get("md5")))
        return [(self._files_folder() / name, md5) for name, md5 in entries]

    def _check_given_files(self) -> None:
        """Raise a ValueError naming the first file in ``data_dir`` that torchvision would download again (its MD5 sum
        is not the published one) or extract: called where no download can be made (no lock: a read-only folder)."""
        cls = self.dataset_class
        archive = [(self.data_dir / cls.filename, cls.tgz_md5)] if hasattr(cls, "tgz_md5") else []  # CIFAR's
        for path, md5 in archive + self._published_files():
            if path.is_file() and md5 is not None and not check_integrity(str(path), md5):
                raise ValueError(
                    f"{path} is not the published file (its MD5 sum is not {md5}: damaged, or partly downloaded), so "
                    f"torchvision would download it again, which needs a writable data_dir: replace it, or make "
                    f"{self.data_dir} writable"
                )
            if path.is_file() and path.suffix in (".gz", ".xz", ".zip"):  # extracting it would repair the rest
                raise given_archive(path)

    def _where_to_put_files(self) -> str:
        cls = self.dataset_class
        names = ", ".join(path.name for path, _ in self._published_files())
        files = f"its files ({names})" if names else "its files"
        url = getattr(cls, "url", None)
        fetched = f", fetched from {url}" if isinstance(url, str) else ""
        return (
            f"Put {files} in {self._files_folder()} as torchvision's {cls.__name__} reads them (with their published "
            f"MD5 sums{fetched}), or point data_dir at a folder that holds them."
        )

    def _open(self, part: str, download: bool) -> Any:
        if part in self._opened:  # opened by prepare_data: handed out once
            return self._opened.pop(part)
        return self.dataset_class(str(self.data_dir), download=download, **self._split_kwargs(part))

    def load_arrays(self) -> Arrays:
        # The command line reads input_shape before Lightning calls prepare_data, so the data are fetched here too.
        self.prepare_data()
        self._check_idx_files()  # a file damaged since prepare_data read it is named, as a new read would name it
        parts: dict[str, tuple[Tensor, Tensor]] = {}
        name = self.dataset_class.__name__
        sources = {part: f"{name} {part} split in {self.data_dir}" for part in ("train", "test")}
        for part, where in sources.items():
            try:
                dataset = self._open(part, download=False)
            except RuntimeError as error:  # the IDX files were checked above
                raise FileNotFoundError(f"{name}: {error}. {self._where_to_put_files()}") from error
            if not hasattr(dataset, "data"):
                raise ValueError(
                    f"{name} reads its images one file at a time (it has no data array): use ImageFolderDataModule"
                )
            samples = as_samples(dataset.data, where)
            if stored_transposed(dataset):
                samples = samples.transpose(2, 3).contiguous()
            if samples.ndim != 4:
                raise ValueError(f"{where}: expected images, got an array of shape {tuple(samples.shape)}")
            parts[part] = samples, labels_of(dataset, where)
        return Arrays(parts["train"], parts["test"], class_names_of(dataset), sources)


def check_data_dir(data_dir: Path, folder: Path, name: str) -> None:
    """Raise a ValueError naming the ``data_dir`` to give if ``folder``, where ``name``'s files are read under
    ``data_dir``, is missing because ``data_dir`` is that folder or one on the way to it that holds the rest of the
    way (``data/FashionMNIST/raw`` or ``data/FashionMNIST`` given for ``data``): a download would nest a copy there."""
    way, given = folder.relative_to(data_dir).parts, data_dir.absolute()
    if folder.exists():
        return
    for depth in range(len(way), 0, -1):
        if given.parts[-depth:] == way[:depth] and given.joinpath(*way[depth:]).is_dir():
            parent = given.parents[depth - 1]
            raise ValueError(
                f"data_dir {data_dir} is a folder of {name}'s own, but {name} reads its files from "
                f"<data_dir>/{'/'.join(way)} (a download would put another copy in {folder}): set data_dir to "
                f"{parent if data_dir.is_absolute() else os.path.relpath(parent)}"
            )


def labels_of(dataset: Any, where: str) -> Tensor:
    """A torchvision dataset's ``targets`` (or ``labels``) as ``[N]`` int64, -1 each where it has neither; QMNIST's
    class, the first of its eight label columns (the label its own items give)."""
    targets = getattr(dataset, "targets", getattr(dataset, "labels", None))
    if isinstance(dataset, torchvision.datasets.QMNIST):
        targets = targets[:, 0]
    return torch.full((len(dataset),), UNLABELED) if targets is None else as_labels(targets, f"{where} (labels)")


def class_names_of(dataset: Any) -> list[str] | None:
    """A torchvision dataset's class names (``classes``), or None."""
    classes = getattr(dataset, "classes", None)
    return [str(c) for c in classes] if classes else None


def stored_transposed(dataset: Any) -> bool:
    """Whether a torchvision dataset stores its images transposed, as EMNIST does (pytorch/vision#8783)."""
    return isinstance(dataset, torchvision.datasets.EMNIST)


__all__ = ["TorchvisionDataModule", "check_data_dir", "class_names_of", "labels_of", "stored_transposed"]
