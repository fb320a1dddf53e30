"""Shared fixtures: tiny IDX datasets written by the tests themselves (no downloads, no real data)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest


def write_idx(path: Path, array: np.ndarray) -> None:
    """Write ``array`` (uint8) as an IDX file: magic 0x0000 08 <ndim>, big-endian sizes, raw bytes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    header = bytes([0, 0, 8, array.ndim]) + b"".join(int(n).to_bytes(4, "big") for n in array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def write_dataset(root: Path, name: str, n_train: int = 240, n_test: int = 60, seed: int = 0) -> Path:
    """Write a tiny ``<root>/<name>/raw/`` dataset: digit-like blobs whose brightness depends on the label."""
    rng = np.random.default_rng(seed)
    raw = root / name / "raw"
    for part, n in (("train", n_train), ("t10k", n_test)):
        labels = np.arange(n) % 10
        images = rng.integers(0, 60, size=(n, 28, 28))
        for i, label in enumerate(labels):  # a label-dependent bright square, so codes carry label information
            row = 2 + 2 * label
            images[i, row : row + 6, 8:20] = 200 + rng.integers(0, 55)
        write_idx(raw / f"{part}-images-idx3-ubyte", images)
        write_idx(raw / f"{part}-labels-idx1-ubyte", labels)
    return root


@pytest.fixture(autouse=True)
def _ddp_port_not_leaked() -> Iterator[None]:
    """Lightning's ddp_spawn run in this process leaves its ``MASTER_PORT`` in ``os.environ``: DDP runs that later tests
    start as subprocesses would inherit it, and two of them at once would both bind it (one rank dies, the other waits
    for it for ever)."""
    before = os.environ.get("MASTER_PORT")
    yield
    if before is None:
        os.environ.pop("MASTER_PORT", None)
    else:
        os.environ["MASTER_PORT"] = before


@pytest.fixture
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A data root holding tiny MNIST and FashionMNIST datasets (240 train, 60 test images each), a tiny CIFAR-10
    (see :func:`trust_tiny_cifar10`) and ``table.npz``, feature vectors ``x`` [90, 12] with labels ``y`` in 0..2."""
    root = tmp_path / "data"
    write_dataset(root, "MNIST", seed=0)
    write_dataset(root, "FashionMNIST", seed=1)
    trust_tiny_cifar10(write_cifar10(root, n_train=30, n_test=20), monkeypatch)
    rng = np.random.default_rng(0)
    labels = np.arange(90) % 3
    np.savez(root / "table.npz", x=(rng.normal(size=(90, 12)) + labels[:, None]).astype(np.float32), y=labels)
    return root


def trust_tiny_cifar10(root: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """torchvision's CIFAR10 checks every file's MD5 against its public ``train_list``, ``test_list`` and ``meta``
    attributes; for the test they are pointed at the sums of the tiny files under ``root``."""
    import hashlib

    from torchvision.datasets import CIFAR10

    def md5(name: str) -> str:
        return hashlib.md5((root / CIFAR10.base_folder / name).read_bytes()).hexdigest()

    monkeypatch.setattr(CIFAR10, "train_list", [[f"data_batch_{i}", md5(f"data_batch_{i}")] for i in range(1, 6)])
    monkeypatch.setattr(CIFAR10, "test_list", [["test_batch", md5("test_batch")]])
    monkeypatch.setattr(CIFAR10, "meta", {**CIFAR10.meta, "md5": md5("batches.meta")})
    return root


def write_image_folder(
    root: Path, classes: tuple[str, ...] = ("cat", "dog"), per_class: int = 12, size: int = 12, mode: str = "RGB"
) -> Path:
    """Write PNG images, one subfolder per class (none for ``classes=()``: a flat folder); returns ``root``."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for label, name in enumerate(classes or ("",)):
        folder = root / name if name else root
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            shape = (size, size, 3) if mode == "RGB" else (size, size)
            pixels = rng.integers(0, 100, size=shape) + 100 * label
            Image.fromarray(pixels.astype(np.uint8), mode).save(folder / f"{i:03d}.png")
    return root


def write_cifar10(root: Path, n_train: int = 20, n_test: int = 10) -> Path:
    """Tiny CIFAR-10 in its real format: pickled ``data_batch_1..5``, ``test_batch`` and ``batches.meta``."""
    import pickle

    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for name in names:
        n = n_test if name == "test_batch" else n_train // 5
        batch = {"data": rng.integers(0, 256, size=(n, 3072), dtype=np.uint8), "labels": [i % 10 for i in range(n)]}
        (folder / name).write_bytes(pickle.dumps(batch))
    meta = {"label_names": ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta))
    return root


def write_svhn(root: Path, n_train: int = 12, n_test: int = 6) -> Path:
    """Tiny SVHN in its real format: ``train_32x32.mat`` and ``test_32x32.mat`` with X [32, 32, 3, N], y in 1..10."""
    from scipy.io import savemat

    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for name, n in (("train", n_train), ("test", n_test)):
        images = rng.integers(0, 256, size=(32, 32, 3, n), dtype=np.uint8)
        digits = np.arange(n) % 10
        labels = np.where(digits == 0, 10, digits).reshape(n, 1)  # SVHN stores the digit 0 as label 10
        savemat(root / f"{name}_32x32.mat", {"X": images, "y": labels})
    return root
