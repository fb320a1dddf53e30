"""Shared fixtures: tiny IDX datasets written by the tests themselves (no downloads, no real data)."""

from __future__ import annotations

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


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    """A data root holding tiny MNIST and FashionMNIST datasets (240 train, 60 test images each)."""
    root = tmp_path / "data"
    write_dataset(root, "MNIST", seed=0)
    write_dataset(root, "FashionMNIST", seed=1)
    return root
