"""Validation of IDX files (the MNIST family's on-disk format) before torchvision reads them, so that a truncated or
foreign file is an error naming the file instead of an obscure reshape failure deep in a loader."""

from __future__ import annotations

import math
from pathlib import Path

# The element types of the IDX files torchvision's MNIST family reads, by the suffix of their names: the type code
# in the header, its size in bytes and its name (QMNIST's labels are 32-bit integers, ``*-idx2-int``).
IDX_TYPES = {"ubyte": (0x08, 1, "an unsigned-byte"), "int": (0x0C, 4, "a 32-bit integer")}


def check_idx_file(path: str | Path, ndim: int, kind: str = "ubyte") -> tuple[int, ...]:
    """The shape in the header of ``path``, an IDX file of ``ndim`` dimensions (3 for images, 1 for labels) whose
    elements are of ``kind`` (a key of :data:`IDX_TYPES`); a ValueError if it is a directory, not a whole such file,
    or holds no samples."""
    path = Path(path)
    code, size_of, name = IDX_TYPES[kind]
    if path.is_dir():
        raise ValueError(f"{path} is a directory, expected an IDX file with {ndim} dimensions")
    size = path.stat().st_size
    # IDX header: two zero bytes, a type code, the number of dimensions, then one big-endian uint32 per dimension.
    header_len = 4 + 4 * ndim
    with path.open("rb") as f:
        header = f.read(header_len)
    if header[:4] != bytes((0, 0, code, ndim)):
        raise ValueError(
            f"{path} is not {name} IDX file with {ndim} dimensions: its magic number is "
            f"{header[:4].hex() or 'missing'}, expected 0000{code:02x}{ndim:02x}. Delete it and download it again."
        )
    if len(header) < header_len:
        raise ValueError(f"{path} is truncated: its {size}-byte header is shorter than the {header_len} bytes expected")
    shape = tuple(int.from_bytes(header[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = header_len + math.prod(shape) * size_of
    if size != expected:
        raise ValueError(
            f"{path} is truncated or corrupt: it has {size} bytes, but its header (shape {shape}) needs "
            f"{expected}. Delete it and download it again."
        )
    if shape[0] == 0:
        raise ValueError(f"{path} holds no samples: the count in its header is 0")
    return shape
