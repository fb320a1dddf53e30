"""Array files (``.npy``, ``.npz``, ``.pt``) of images or feature vectors, and the conversion every datamodule uses."""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from datamodules.base import UNLABELED, Arrays, ImageDataModule
from datamodules.checks import check_fits_memory

SUFFIXES = (".npy", ".npz", ".pt")


def as_samples(array: Any, where: str) -> Tensor:
    """Images as ``[N, C, H, W]`` uint8 or vectors as ``[N, D]`` float32 from an array or tensor of ``[N, D]`` vectors
    or ``[N, H, W]``, ``[N, H, W, C]``, ``[N, C, H, W]`` images (C = 1 or 3; uint8, integers in 0..255 or floats in
    [0, 1]); a ValueError names ``where`` (its file or dataset) and what is wrong."""
    data = _as_tensor(array, where, "expected a numeric array")
    values, floating = data.numel(), data.is_floating_point()  # the copies made below must fit in memory
    if data.ndim == 2:
        needed = values * (4 * (data.dtype != torch.float32) + floating)
    elif data.dtype == torch.uint8 and (data.ndim == 3 or data.shape[1] in (1, 3)) and data.is_contiguous():
        needed = 0
    else:
        needed = values * (1 + (data.element_size() + 1 if floating else 0))
    fix = "store the images as uint8 [N, H, W] or [N, C, H, W] in a .npy file, which is read memory-mapped"
    check_fits_memory(needed, f"{where}: converting {tuple(data.shape)} {data.dtype} values would", fix)
    if data.dtype == torch.bool or data.is_complex():
        raise ValueError(f"{where}: expected a numeric array, got dtype {data.dtype}")
    if data.ndim == 0 or len(data) == 0:
        raise ValueError(f"{where} holds no samples (an array of shape {tuple(data.shape)})")
    if data.ndim not in (2, 3, 4):
        raise ValueError(
            f"{where}: an array of rank {data.ndim} (shape {tuple(data.shape)}); expected [N, D] vectors or "
            "[N, H, W], [N, H, W, C], [N, C, H, W] images"
        )
    if data.ndim == 2:  # vectors are float32: a float64 value beyond its range (3.4e38) would turn infinite
        data = data.to(torch.float32)
    if data.is_floating_point():
        finite = torch.isfinite(data.flatten(1)).all(1)
        if not finite.all():
            row = int((~finite).nonzero()[0])
            beyond = " (or values beyond float32's range, |x| > 3.4e38)" if data.ndim == 2 else ""
            raise ValueError(f"{where}: sample {row} holds NaN or infinite values{beyond}; every value must be finite")
    if data.ndim == 2:
        return data.contiguous()
    if data.ndim == 3:
        data = data.unsqueeze(1)
    elif data.shape[-1] in (1, 3) and data.shape[1] not in (1, 3):
        data = data.permute(0, 3, 1, 2)  # [N, H, W, C] -> [N, C, H, W]
    elif data.shape[1] not in (1, 3):
        raise ValueError(
            f"{where}: images of shape {tuple(data.shape)} have neither 1 nor 3 channels first or last; "
            "expected [N, H, W, C] or [N, C, H, W] with C = 1 (gray) or 3 (RGB)"
        )
    if data.is_floating_point():
        low, high = data.min(), data.max()
        if low < 0 or high > 1:
            outside = (data < 0) | (data > 1)
            bad = int(outside.flatten(1).any(1).nonzero()[0])
            value = data[bad][outside[bad]][0]
            raise ValueError(
                f"{where}: float images must lie in [0, 1] (or be uint8 0-255), but they range over "
                f"[{_exact(low)}, {_exact(high)}] (first outside: sample {bad}, value {_exact(value)})"
            )
        return data.mul(255).round_().to(torch.uint8).contiguous()
    if data.dtype != torch.uint8:
        ints = data.cpu().numpy()  # torch has no min or max of uint16/32/64 tensors
        low, high = int(ints.min()), int(ints.max())
        if low < 0 or high > 255:
            hint = ""
            if ints.dtype.kind == "u":  # more than 8 bits per value (16-bit PNG, microscopy): the scale is the user's
                full = np.iinfo(ints.dtype).max
                hint = f"; store them as floats in [0, 1], e.g. x / {full} (the whole {ints.dtype} range)"
            raise ValueError(f"{where}: integer images must lie in 0..255, got {ints.dtype} values {low}..{high}{hint}")
    return data.to(torch.uint8).contiguous()


def as_labels(array: Any, where: str) -> Tensor:
    """Labels ``[N]`` int64 from an integer array, or a ValueError naming ``where``."""
    labels = _as_tensor(array, where, "labels must be a 1-D integer array")
    if labels.ndim != 1 or labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise ValueError(f"{where}: labels must be a 1-D integer array, got {labels.dtype} {tuple(labels.shape)}")
    return labels.to(torch.int64)


def _as_tensor(array: Any, where: str, expected: str) -> Tensor:
    """``array`` as a tensor outside autograd (a tensor saved with ``requires_grad`` shares its values, without it),
    or a ValueError naming ``where``, ``expected`` and a dtype torch cannot hold."""
    if isinstance(array, Tensor) and array.layout != torch.strided:  # torch.sparse_coo, ...: no min, max, isfinite
        raise ValueError(f"{where}: a {array.layout} tensor; {expected} of dense values, e.g. saved as x.to_dense()")
    if isinstance(array, Tensor):
        return array.detach()
    array = np.asarray(array)
    if array.dtype.kind not in "biufc":
        raise ValueError(f"{where}: {expected}, got dtype {array.dtype} {array.shape}")
    if not array.dtype.isnative:  # big-endian (FITS images, another machine's files): torch takes native order only
        what = f"{where}: its {array.dtype.str} values, in this machine's byte order,"
        check_fits_memory(array.nbytes, what, f"save them as {array.dtype.newbyteorder('=').str} values")
        array = array.astype(array.dtype.newbyteorder("="))
    return torch.as_tensor(array)


def _exact(value: Tensor) -> str:
    """A float as its shortest exact decimal (``:.4g`` would print 1.0000001 as 1)."""
    value = value.float() if value.dtype == torch.bfloat16 else value  # numpy has no bfloat16
    return np.format_float_positional(value.cpu().numpy()[()], trim="-")


class ArrayDataModule(ImageDataModule):
    """Images or feature vectors from one ``.npy``, ``.npz`` or ``.pt`` file (see :func:`as_samples` for layouts).

    Args:
        path: the data file; in an ``.npz`` or a ``.pt`` dict, the array under ``key``.
        labels: a second file with the labels ``[N]``, or a key of the data file; None: unlabeled (label -1).
        key: the data's key in an ``.npz``/``.pt`` dict; None takes the only array that is not the labels.
        standardize: vectors only: scale each feature to mean 0, std 1 by the training split's (constant ones: shift).
        **kwargs: the :class:`~datamodules.base.ImageDataModule` arguments.
    """

    def __init__(
        self, path: str, labels: str | None = None, key: str | None = None, standardize: bool = False, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.path = Path(path).expanduser()  # as torchvision expands its root: a YAML config is no shell
        self.labels_file = Path(labels).expanduser() if labels and Path(labels).suffix in SUFFIXES else None
        if self.path.suffix not in SUFFIXES:
            raise ValueError(f"path {path}: expected a {', '.join(SUFFIXES)} file")
        self.check_sources_exist()

    @property
    def dataset_name(self) -> str:
        return self.path.stem

    def source_paths(self) -> list[str]:
        return [str(self.path)] + ([str(self.labels_file)] if self.labels_file is not None else [])

    def load_arrays(self) -> Arrays:
        contents = data = _read(self.path)
        label_key = self.hparams.labels
        in_file = isinstance(contents, dict) and label_key in contents
        if label_key is not None and not in_file and self.labels_file is None:
            holds = f" (it holds {sorted(contents)})" if isinstance(contents, dict) else ""
            raise ValueError(
                f"labels={label_key!r} is neither a key of {self.path}{holds} nor a {'/'.join(SUFFIXES)} file"
            )
        if isinstance(contents, dict):
            others = [name for name in contents if name != label_key]
            key = self.hparams.key
            if key is None and len(others) != 1:
                raise ValueError(f"{self.path} holds the arrays {sorted(contents)}: name the data with key")
            key = key or others[0]
            if key not in contents:
                raise ValueError(f"{self.path} has no array {key!r}; it holds {sorted(contents)}")
            data = contents[key]
        elif self.hparams.key is not None:
            raise ValueError(f"key={self.hparams.key!r} names an array of a dict, but {self.path} holds one array")
        samples = as_samples(data, str(self.path))
        labels_where = f"{self.path} [{label_key}]" if in_file else label_key
        if label_key is None:
            labels = torch.full((len(samples),), UNLABELED)
        elif in_file:
            labels = as_labels(contents[label_key], labels_where)
        else:
            stored = _read(self.labels_file)
            if isinstance(stored, dict):  # an .npz (or a .pt dict) of labels alone
                if len(stored) != 1:
                    raise ValueError(f"{label_key} holds the arrays {sorted(stored)}; a labels file holds one array")
                (stored,) = stored.values()
            labels = as_labels(stored, label_key)
        if label_key is not None and len(labels) and labels.min() < 0:
            raise ValueError(f"labels {label_key}: label {labels.min().item()} is negative; labels must be 0, 1, ...")
        sources = {"train": str(self.path)} | ({"train_labels": labels_where} if label_key is not None else {})
        return Arrays((samples, labels), sources=sources)

    def setup(self, stage: str | None = None) -> None:
        if self.splits:  # the base logs data_source for each trainer, also where the splits exist
            return super().setup(stage)
        if self.hparams.standardize and self.is_image_data:
            raise ValueError(
                f"standardize applies to feature vectors, but {self.path} holds images of shape {self.input_shape}"
            )
        samples = self.arrays.train[0]  # held as uint8 images or float32 vectors, and the loaders' float32 copies
        check_fits_memory(
            samples.numel() * (samples.element_size() + 4),
            f"the {len(samples)} samples of {self.path} held in memory with the loaders' float copies",
            "write the images as a stream with ae-lightning-prepare (it reads a .npy memory-mapped) and read it "
            "with StreamingDataModule, which holds a batch at a time",
        )
        super().setup(stage)
        if self.hparams.standardize:
            train = self.splits["train"][0]
            mean, std = train.mean(0), train.std(0)
            std = torch.where(std > 0, std, torch.ones_like(std))
            self.splits = {split: ((x - mean) / std, y) for split, (x, y) in self.splits.items()}


def _read(path: Path) -> Any:
    """The array (or dict of arrays) in ``path``: memory-mapped (left on disk until used) from a ``.npy`` file or a
    ``.pt`` file in torch's zip format, read whole from an ``.npz`` file after a check that it fits in memory."""
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist (or is not a file)")
    if path.suffix == ".npz" and zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            size = sum(info.file_size for info in archive.infolist())
        check_fits_memory(size, f"{path}'s arrays, read whole,", "save the images as a .npy file (read memory-mapped)")
    try:
        if path.suffix == ".npy":  # copy-on-write: writable for torch, and the file is never written
            return np.load(path, mmap_mode="c", allow_pickle=False)
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as loaded:
                return dict(loaded)
        contents = torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except Exception as error:
        raise ValueError(f"{path} is not a readable {path.suffix} file ({error})") from error
    if not isinstance(contents, (Tensor, dict)):  # torch.save((images, labels), path)
        raise ValueError(
            f"{path} holds a {type(contents).__name__}; expected one tensor or a dict of them, e.g. "
            "torch.save({'x': images, 'y': labels}, path) read with key x and labels y"
        )
    return contents


__all__ = ["ArrayDataModule", "as_labels", "as_samples"]
