"""Validation of IDX files (the MNIST family's on-disk format) before torchvision reads them, so that a truncated or
foreign file is an error naming the file instead of an obscure reshape failure deep in a loader."""

from __future__ import annotations

import math
from pathlib import Path


def check_idx_file(path: str | Path, ndim: int) -> tuple[int, ...]:
    """The shape in the header of ``path``, an unsigned-byte IDX file of ``ndim`` dimensions (3 for images, 1 for
    labels); a ValueError if it is a directory, not a whole such file, or holds no samples."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{path} is a directory, expected an IDX file with {ndim} dimensions")
    size = path.stat().st_size
    with path.open("rb") as f:
        header = f.read(4 + 4 * ndim)
    # IDX header: two zero bytes, a type code (0x08 = unsigned byte), the number of dimensions, then one
    # big-endian uint32 per dimension.
    if header[:4] != bytes((0, 0, 0x08, ndim)):
        raise ValueError(
            f"{path} is not an unsigned-byte IDX file with {ndim} dimensions: its magic number is "
            f"{header[:4].hex() or 'missing'}, expected 000008{ndim:02x}. Delete it and download it again."
        )
    if len(header) < 4 + 4 * ndim:
        raise ValueError(
            f"{path} is truncated: its {size}-byte header is shorter than the {4 + 4 * ndim} bytes expected"
        )
    shape = tuple(int.from_bytes(header[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = 4 + 4 * ndim + math.prod(shape)
    if size != expected:
        raise ValueError(
            f"{path} is truncated or corrupt: it has {size} bytes, but its header (shape {shape}) needs "
            f"{expected}. Delete it and download it again."
        )
    if shape[0] == 0:
        raise ValueError(f"{path} holds no samples: the count in its header is 0")
    return shape
