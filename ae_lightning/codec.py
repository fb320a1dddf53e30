"""Learned lossy compression: an image's codes under a quantized autoencoder, entropy-coded under a :class:`CodePrior`
with the range coder of the ``constriction`` package, in tiles of the tokenizer's input size (edges repeated).

The codes come back bit-exact; a file that is truncated, from another model, whose header contradicts the model,
whose payload cannot be decoded or that fails its CRC-32 is refused with a :class:`CompressedFileError` naming the
problem. Both sides run the prior and its tokenizer in eval mode, restoring their modes after (``docs/quantized.md``).
"""

from __future__ import annotations

import math
import struct
import zlib

import constriction
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ae_lightning.models.first_stage import evaluating
from ae_lightning.models.prior import CodePrior, state_fingerprint

MAGIC = b"AELC"
VERSION = 2  # 1: the CRC-32 covered the codes only, and came before the payload length
# magic, version, tokenizer and prior fingerprints (16 hex digits each), channels, height, width, tiles, payload
# length in 32-bit words; then a CRC-32 of these fields and of the codes.
_FIELDS = struct.Struct("<4sB16s16sHIIII")
_HEADER = struct.Struct(_FIELDS.format + "I")
_MISMATCH = (
    "the file is corrupted, or the prior's probabilities differ from the encoder's (decode at the same precision, on "
    "the same kind of device and software, as the encoder)"
)
# Tiles coded (and tokenized) at once; both sides group alike, so each probability is computed on identical inputs.
TILES_PER_GROUP = 64
_HEX_DIGITS = b"0123456789abcdef"  # of the fingerprints
_CODE_MODEL = constriction.stream.model.Categorical(perfect=False)  # both sides': each call gives the probabilities


class CompressedFileError(ValueError):
    """A compressed file that cannot be decoded by this model: truncated, corrupted, foreign or from another model."""


def prior_fingerprint(prior: CodePrior) -> str:
    """The :func:`~ae_lightning.models.prior.state_fingerprint` of all of ``prior``'s state, its tokenizer's too."""
    return state_fingerprint(prior.state_dict())


@torch.no_grad()
def compress(prior: CodePrior, image: Tensor) -> bytes:
    """The compressed file, under ``prior``, of ``image`` ``[C, H, W]``, floats in [0, 1] (``C`` the tokenizer's
    channels); a ValueError naming what differs for any other tensor (a batch, uint8 pixels, [0, 255] values, NaN)."""
    if image.ndim != 3 or not image.is_floating_point() or not image.shape[1] or not image.shape[2]:
        found = f"a {image.dtype} tensor of shape {tuple(image.shape)}"
        raise ValueError(f"compress takes one image [C, H, W] of floats in [0, 1], got {found}")
    if not image.ge(0).logical_and(image.le(1)).all():  # NaN fails both
        raise ValueError(f"compress takes pixels in [0, 1], got values in [{image.min():.4g}, {image.max():.4g}]")
    channels, height, width = image.shape
    if channels != prior.input_shape[0]:
        raise ValueError(f"the model codes images of {prior.input_shape[0]} channels, got an image of {channels}")
    encoder = constriction.stream.queue.RangeEncoder()
    with evaluating(prior):  # dropout in training mode would make the two sides' probabilities differ
        tiles = _tiles(image.to(prior.device, prior.dtype), prior.input_shape[1:])
        tokens = torch.cat([prior.encode(group) for group in tiles.split(TILES_PER_GROUP)])
        for group in tokens.split(TILES_PER_GROUP):
            for position in range(prior.num_tokens):
                probabilities = prior.next_token_probabilities(group, position).cpu().numpy()
                encoder.encode(group[:, position].cpu().numpy().astype(np.int32), _CODE_MODEL, probabilities)
    payload = encoder.get_compressed()
    fingerprints = prior.fingerprint.encode(), prior_fingerprint(prior).encode()
    fields = _FIELDS.pack(MAGIC, VERSION, *fingerprints, channels, height, width, len(tokens), len(payload))
    return fields + struct.pack("<I", _checksum(fields, tokens)) + payload.astype("<u4").tobytes()


@torch.no_grad()
def decompress(prior: CodePrior, data: bytes, name: str = "the file") -> Tensor:
    """The image ``[C, H, W]`` in [0, 1] of compressed ``data``, the bytes of a file that ``prior`` wrote; a
    :class:`CompressedFileError` naming the problem and the file as ``name`` if they are not a complete, intact file."""
    if data[:4] != MAGIC:
        raise CompressedFileError(f"{name} is not an ae-lightning compressed file (no {MAGIC.decode()} header)")
    if len(data) < _HEADER.size:
        raise CompressedFileError(
            f"{name} is truncated: it has {len(data)} bytes, less than the {_HEADER.size} of a header"
        )
    magic, version, tokenizer, prior_id, channels, height, width, tiles, words, checksum = _HEADER.unpack_from(data)
    if version != VERSION:
        changed = " (the format changed: compress the image again with this code)" if version < VERSION else ""
        raise CompressedFileError(f"{name} has format version {version}; this code reads version {VERSION}{changed}")
    if not all(digit in _HEX_DIGITS for digit in tokenizer + prior_id):  # else read as a file of another model
        found = f"{tokenizer.decode(errors='replace')!r} and {prior_id.decode(errors='replace')!r}"
        raise CompressedFileError(f"{name} has a corrupted header: its model fingerprints {found} are not hex digits")
    written_by = f"tokenizer {tokenizer.decode()} and prior {prior_id.decode()}"
    this = f"tokenizer {prior.fingerprint} and prior {prior_fingerprint(prior)}"
    if written_by != this:
        raise CompressedFileError(
            f"{name} was written with {written_by}; this model is {this}, in {prior.dtype}: decode it with that one, "
            "in the dtype that wrote it (a copy cast to another dtype, as by .to(torch.bfloat16), holds other weights)"
        )
    expected = _HEADER.size + 4 * words
    if len(data) != expected:
        state = "truncated" if len(data) < expected else "longer than its header says"
        raise CompressedFileError(f"{name} is {state}: its header promises {expected} bytes, it has {len(data)}")
    tile_height, tile_width = prior.input_shape[1:]
    expected_tiles = -(-height // tile_height) * -(-width // tile_width)
    corrupted = f"{name} has a corrupted header: it describes a {channels}x{height}x{width} image in {tiles} tiles"
    if channels != prior.input_shape[0] or not height or not width or tiles != expected_tiles:
        raise CompressedFileError(
            f"{corrupted}, but this model codes images of {prior.input_shape[0]} channels in tiles of "
            f"{tile_height}x{tile_width} ({expected_tiles} for that size)"
        )
    # constriction's leaky 24-bit probabilities leave each of the K codes at least 2**-24, so a code costs at least
    # -log2(1 - (K - 1) / 2**24) bits: more codes than the payload holds are refused before any is decoded.
    codes, least_bits = tiles * prior.num_tokens, -math.log2(1 - (prior.vocabulary - 1) / 2**24)
    if codes * least_bits > 32 * words + 64:
        raise CompressedFileError(f"{corrupted}, {codes} codes, more than its payload of {4 * words} bytes can hold")
    payload = np.frombuffer(data, dtype="<u4", offset=_HEADER.size).astype(np.uint32)
    decoder = constriction.stream.queue.RangeDecoder(payload)
    tokens = torch.zeros(tiles, prior.num_tokens, dtype=torch.long, device=prior.device)
    with evaluating(prior):
        for group in tokens.split(TILES_PER_GROUP):  # views: decoding fills ``tokens``
            for position in range(prior.num_tokens):
                probabilities = prior.next_token_probabilities(group, position).cpu().numpy()
                try:
                    symbols = decoder.decode(_CODE_MODEL, probabilities)
                except Exception as error:  # constriction's AssertionError, ValueError, ... on words it never wrote
                    raise CompressedFileError(
                        f"the codes of {name} cannot be decoded ({type(error).__name__}: {error}): {_MISMATCH}"
                    ) from None
                group[:, position] = torch.from_numpy(symbols.astype(np.int64))
        if _checksum(data[: _FIELDS.size], tokens) != checksum:
            raise CompressedFileError(f"the header or the codes decoded from {name} fail its checksum: {_MISMATCH}")
        images = torch.cat([prior.decode(group) for group in tokens.split(TILES_PER_GROUP)])
        return _untile(images, (channels, height, width))


def _checksum(fields: bytes, tokens: Tensor) -> int:
    """The CRC-32 of the header's ``fields`` and of the codes."""
    return zlib.crc32(tokens.cpu().numpy().astype("<i4").tobytes(), zlib.crc32(fields))


def _tiles(image: Tensor, size: tuple[int, int]) -> Tensor:
    """``image [C, H, W]`` padded (edges repeated) and cut into tiles ``[N, C, *size]`` in raster order."""
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
