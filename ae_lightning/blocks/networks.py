"""Encoder and decoder networks for images ``(C, H, W)`` or feature vectors ``(D,)`` (MLP only). Decoders return
logits for images (:func:`decoder_mean`) and the vectors' means themselves; ``mlp`` and ``conv`` codes are flat,
``spatial`` ones (:mod:`ae_lightning.blocks.spatial`) ``[latent_dim, H / f, W / f]`` (:func:`latent_shape`)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Literal

import torch
from torch import Tensor, nn

from ae_lightning.blocks.spatial import (
    SpatialDecoder,
    SpatialEncoder,
    SpatialOptions,
    check_spatial_size,
    downsampling_factor,
)

Network = Literal["mlp", "conv", "spatial"]


def mlp_layers(
    sizes: Sequence[int], activation: Callable[[], nn.Module] = nn.ReLU, dropout: float = 0.0
) -> list[nn.Module]:
    """Linear layers ``sizes[0] -> ... -> sizes[-1]`` with ``activation`` (and dropout) between them, none after."""
    layers: list[nn.Module] = []
    for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(fan_in, fan_out))
        if i < len(sizes) - 2:
            layers.append(activation())
            if dropout:
                layers.append(nn.Dropout(dropout))
    return layers


class MLPEncoder(nn.Sequential):
    """Flatten, then fully connected layers ``prod(input_shape) -> *hidden_dims -> out_dim`` (:func:`mlp_layers`)."""

    def __init__(self, input_shape: Sequence[int], hidden_dims: Sequence[int], out_dim: int, dropout: float = 0.0):
        super().__init__(nn.Flatten(), *mlp_layers([math.prod(input_shape), *hidden_dims, out_dim], dropout=dropout))


class MLPDecoder(nn.Sequential):
    """Fully connected layers ``latent_dim -> *reversed(hidden_dims) -> prod(output_shape)``, returning logits."""

    def __init__(self, latent_dim: int, hidden_dims: Sequence[int], output_shape: Sequence[int], dropout: float = 0.0):
        sizes = [latent_dim, *reversed(hidden_dims), math.prod(output_shape)]
        super().__init__(*mlp_layers(sizes, dropout=dropout), nn.Unflatten(1, tuple(output_shape)))


class ConvEncoder(nn.Module):
    """Stride-2 convolutions (kernel 4, each flooring half the size) of ``hidden_dims`` channels, a linear layer."""

    def __init__(self, input_shape: Sequence[int], hidden_dims: Sequence[int], out_dim: int, dropout: float = 0.0):
        super().__init__()
        channels, height, width = input_shape
        layers: list[nn.Module] = []
        for fan_in, fan_out in zip([channels, *hidden_dims[:-1]], hidden_dims):
            layers += [nn.Conv2d(fan_in, fan_out, 4, stride=2, padding=1), nn.ReLU()]
            if dropout:
                layers.append(nn.Dropout(dropout))
        self.features = nn.Sequential(*layers, nn.Flatten())
        h, w = height // 2 ** len(hidden_dims), width // 2 ** len(hidden_dims)
        if h < 1 or w < 1:
            raise ValueError(f"{len(hidden_dims)} stride-2 convolutions shrink a {height}x{width} image to nothing")
        self.head = nn.Linear(hidden_dims[-1] * h * w, out_dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))


class ConvDecoder(nn.Module):
    """Mirror of :class:`ConvEncoder`: a linear layer, then stride-2 transposed convolutions back to the image size."""

    def __init__(self, latent_dim: int, hidden_dims: Sequence[int], output_shape: Sequence[int], dropout: float = 0.0):
        super().__init__()
        channels, height, width = output_shape
        self.start_shape = (hidden_dims[-1], height // 2 ** len(hidden_dims), width // 2 ** len(hidden_dims))
        self.head = nn.Sequential(nn.Linear(latent_dim, math.prod(self.start_shape)), nn.ReLU())
        layers: list[nn.Module] = []
        out_channels = [*reversed(hidden_dims[:-1]), channels]
        for i, (fan_in, fan_out) in enumerate(zip(reversed(hidden_dims), out_channels)):
            # A transposed convolution maps size s to 2s; output_padding restores odd sizes such as 7 -> 3 -> 7.
            above = 2 ** (len(hidden_dims) - i - 1)  # the downsampling of the size this layer restores
            padding = (height // above % 2, width // above % 2)
            layers.append(nn.ConvTranspose2d(fan_in, fan_out, 4, stride=2, padding=1, output_padding=padding))
            if i < len(hidden_dims) - 1:
                layers.append(nn.ReLU())
                if dropout:
                    layers.append(nn.Dropout(dropout))
        self.body = nn.Sequential(*layers)

    def forward(self, z: Tensor) -> Tensor:
        return self.body(self.head(z).view(-1, *self.start_shape))


def build_encoder(
    network: Network,
    input_shape: Sequence[int],
    hidden_dims: Sequence[int],
    out_dim: int,
    dropout: float = 0.0,
    spatial: SpatialOptions | None = None,
) -> nn.Module:
    """The encoder named by ``network``; ``out_dim`` is the output's features (channels for ``spatial``)."""
    if network == "spatial":
        return SpatialEncoder(input_shape[0], hidden_dims, out_dim, dropout=dropout, **(spatial or {}))
    return {"mlp": MLPEncoder, "conv": ConvEncoder}[network](input_shape, hidden_dims, out_dim, dropout)


def build_decoder(
    network: Network,
    latent_dim: int,
    hidden_dims: Sequence[int],
    output_shape: Sequence[int],
    dropout: float = 0.0,
    spatial: SpatialOptions | None = None,
) -> nn.Module:
    """The decoder named by ``network``; ``latent_dim`` is the code's features (channels for ``spatial``)."""
    if network == "spatial":
        return SpatialDecoder(latent_dim, hidden_dims, output_shape[0], dropout=dropout, **(spatial or {}))
    return {"mlp": MLPDecoder, "conv": ConvDecoder}[network](latent_dim, hidden_dims, output_shape, dropout)


def latent_shape(
    network: Network, input_shape: Sequence[int], latent_dim: int, hidden_dims: Sequence[int]
) -> tuple[int, ...]:
    """One code's shape: ``(latent_dim,)``, or ``(latent_dim, H / f, W / f)`` for ``spatial`` (f must divide H, W)."""
    if network != "spatial":
        return (latent_dim,)
    factor = downsampling_factor(hidden_dims)
    height, width = input_shape[1:]
    check_spatial_size(height, width, factor)
    return (latent_dim, height // factor, width // factor)


MAX_WEIGHT_BYTES = 8 * 2**30  # a network this large on one input is a missing resize, not a model


def check_network(network: str, input_shape: Sequence[int], hidden_dims: Sequence[int], latent_dim: int) -> None:
    """A ValueError, before any allocation, if a convolutional network has no convolution, ``input_shape`` is not
    ``(C, H, W)`` (or, for an MLP, ``(D,)``), or the largest layers alone would take more than
    :data:`MAX_WEIGHT_BYTES` of float32 weights (e.g. an MLP on 4000x4000 photographs)."""
    if len(hidden_dims) == 0 and network != "mlp":
        raise ValueError(f"a {network} network needs at least one entry in hidden_dims (channels per convolution)")
    if len(input_shape) == 1 and network != "mlp":
        raise ValueError(
            f"a {network} network needs images (channels, height, width), but input_shape is {tuple(input_shape)} "
            "(feature vectors): use network: mlp"
        )
    if len(input_shape) not in (1, 3):
        raise ValueError(
            f"input_shape must be (channels, height, width) of images or (features,) of vectors, got "
            f"{tuple(input_shape)}"
        )
    if network == "mlp":
        largest = math.prod(input_shape) * (hidden_dims[0] if hidden_dims else latent_dim)
    elif network == "conv":
        *_, height, width = input_shape
        h, w = max(height // 2 ** len(hidden_dims), 1), max(width // 2 ** len(hidden_dims), 1)
        largest = hidden_dims[-1] * h * w * latent_dim
    else:
        return
    needed = 2 * 4 * largest  # the encoder's layer and the decoder's mirror of it, float32
    if needed > MAX_WEIGHT_BYTES:
        raise ValueError(
            f"a {network} network on inputs of shape {tuple(input_shape)} needs about {needed / 1e9:.0f} GB of "
            f"weights in its largest layers alone: resize the images (an image folder: --data.image_size 64) or "
            "use smaller inputs"
        )


def decoder_mean(output: Tensor, input_shape: Sequence[int]) -> Tensor:
    """The data's mean from a decoder's output: a sigmoid of the logits for images, the output itself for vectors."""
    return torch.sigmoid(output) if len(input_shape) == 3 else output


__all__ = [
    "ConvDecoder",
    "ConvEncoder",
    "MLPDecoder",
    "MLPEncoder",
    "build_decoder",
    "build_encoder",
    "check_network",
    "decoder_mean",
    "latent_shape",
    "mlp_layers",
]
