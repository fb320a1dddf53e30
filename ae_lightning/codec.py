"""Learned lossy compression: an image's codes under a quantized autoencoder, entropy-coded under a :class:`CodePrior`
with the range coder (an arithmetic coder) of the ``constriction`` package.

An image of any size is cut into tiles of the tokenizer's input size (edges padded by repetition), each tile's code
indices are range-coded position by position with the prior's conditional probabilities, and the file carries a
header: format, the fingerprints of tokenizer and prior, the image size, a CRC-32 of the codes and the payload's
length. Decoding recomputes the same probabilities from the codes decoded so far, so the codes come back bit-exact;
a file that is truncated, from another model or whose codes fail the checksum is refused with an error that names
the problem, never decoded into a garbage image.
"""

from __future__ import annotations

import hashlib
import struct
import zlib

import constriction
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ae_lightning.models.prior import CodePrior

MAGIC = b"AELC"
VERSION = 1
# magic, version, tokenizer and prior fingerprints (16 hex digits each), channels, height, width, tiles, CRC-32 of
# the codes, payload length in 32-bit words.
_HEADER = struct.Struct("<4sB16s16sHIIIII")
# Tiles coded at once; both sides use the same grouping, so each probability is computed on identical inputs.
TILES_PER_GROUP = 64


class CompressedFileError(ValueError):
    """A compressed file that cannot be decoded by this model: truncated, corrupted, foreign or from another model."""


def prior_fingerprint(prior: CodePrior) -> str:
    """A hash of every weight and buffer of ``prior`` (its tokenizer included)."""
    digest = hashlib.sha256()
    for name, value in sorted(prior.state_dict().items()):
        digest.update(name.encode())
        digest.update(value.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


@torch.no_grad()
def compress(prior: CodePrior, image: Tensor) -> bytes:
    """The compressed file of ``image`` ``[C, H, W]`` in [0, 1] (``C`` the tokenizer's channels).

    Args:
        prior: the prior, in eval mode, with its tokenizer.
        image: the image.
    """
    channels, height, width = image.shape
    if channels != prior.input_shape[0]:
        raise ValueError(f"the model codes images of {prior.input_shape[0]} channels, got an image of {channels}")
    tokens = prior.encode(_tiles(image.to(prior.device), prior.input_shape[1:]))
    encoder = constriction.stream.queue.RangeEncoder()
    model = constriction.stream.model.Categorical(perfect=False)
    for group in tokens.split(TILES_PER_GROUP):
        for position in range(prior.num_tokens):
            probabilities = prior.next_token_probabilities(group, position).cpu().numpy()
            encoder.encode(group[:, position].cpu().numpy().astype(np.int32), model, probabilities)
    payload = encoder.get_compressed()
    header = _HEADER.pack(
        MAGIC,
        VERSION,
        prior.fingerprint.encode(),
        prior_fingerprint(prior).encode(),
        channels,
        height,
        width,
        len(tokens),
        _checksum(tokens),
        len(payload),
    )
    return header + payload.astype("<u4").tobytes()


@torch.no_grad()
def decompress(prior: CodePrior, data: bytes, name: str = "the file") -> Tensor:
    """The image ``[C, H, W]`` in [0, 1] of compressed ``data``; a :class:`CompressedFileError` naming the problem
    if ``data`` is not a complete file of this prior.

    Args:
        prior: the prior the file was written with, in eval mode.
        data: the file's bytes.
        name: how errors call the file (its path).
    """
    if len(data) < _HEADER.size or data[:4] != MAGIC:
        raise CompressedFileError(f"{name} is not an ae-lightning compressed file (no {MAGIC.decode()} header)")
    magic, version, tokenizer, prior_id, channels, height, width, tiles, checksum, words = _HEADER.unpack_from(data)
    if version != VERSION:
        raise CompressedFileError(f"{name} has format version {version}; this code reads version {VERSION}")
    written_by = f"tokenizer {tokenizer.decode()} and prior {prior_id.decode()}"
    this = f"tokenizer {prior.fingerprint} and prior {prior_fingerprint(prior)}"
    if written_by != this:
        raise CompressedFileError(
            f"{name} was written with {written_by}; this model is {this}: decode it with that one"
        )
    expected = _HEADER.size + 4 * words
    if len(data) != expected:
        state = "truncated" if len(data) < expected else "longer than its header says"
        raise CompressedFileError(f"{name} is {state}: its header promises {expected} bytes, it has {len(data)}")
    payload = np.frombuffer(data, dtype="<u4", offset=_HEADER.size).astype(np.uint32)
    decoder = constriction.stream.queue.RangeDecoder(payload)
    model = constriction.stream.model.Categorical(perfect=False)
    groups = []
    for start in range(0, tiles, TILES_PER_GROUP):
        group = torch.zeros(
            min(TILES_PER_GROUP, tiles - start), prior.num_tokens, dtype=torch.long, device=prior.device
        )
        for position in range(prior.num_tokens):
            probabilities = prior.next_token_probabilities(group, position).cpu().numpy()
            group[:, position] = torch.from_numpy(decoder.decode(model, probabilities).astype(np.int64))
        groups.append(group)
    tokens = torch.cat(groups)
    if _checksum(tokens) != checksum:
        raise CompressedFileError(
            f"the codes decoded from {name} fail its checksum: the file is corrupted, or the prior's probabilities "
            "differ from the encoder's (decode on the same kind of device and software as the encoder)"
        )
    return _untile(prior.decode(tokens), (channels, height, width))


def _checksum(tokens: Tensor) -> int:
    return zlib.crc32(tokens.cpu().numpy().astype("<i4").tobytes())


def _tiles(image: Tensor, size: tuple[int, int]) -> Tensor:
    """``image [C, H, W]`` padded (edges repeated) to multiples of ``size`` and cut into tiles ``[N, C, *size]`` in
    raster order."""
    tile_height, tile_width = size
    height, width = image.shape[1:]
    pad_height, pad_width = -height % tile_height, -width % tile_width
    padded = F.pad(image[None], (0, pad_width, 0, pad_height), mode="replicate")[0]
    tiles = padded.unfold(1, tile_height, tile_height).unfold(2, tile_width, tile_width)  # [C, rows, cols, th, tw]
    return tiles.permute(1, 2, 0, 3, 4).reshape(-1, image.shape[0], tile_height, tile_width)


def _untile(tiles: Tensor, shape: tuple[int, int, int]) -> Tensor:
    """The inverse of :func:`_tiles`: tiles ``[N, C, th, tw]`` back into the image of ``shape``."""
    channels, height, width = shape
    tile_height, tile_width = tiles.shape[-2:]
    rows, cols = -(-height // tile_height), -(-width // tile_width)
    grid = tiles.reshape(rows, cols, channels, tile_height, tile_width).permute(2, 0, 3, 1, 4)
    return grid.reshape(channels, rows * tile_height, cols * tile_width)[:, :height, :width]


__all__ = ["CompressedFileError", "compress", "decompress", "prior_fingerprint"]
