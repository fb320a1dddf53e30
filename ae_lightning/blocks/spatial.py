"""A fully convolutional encoder and decoder with spatial codes ``[z_channels, H / f, W / f]``, ``f = 2^(L - 1)``
for ``L`` levels: the design of latent diffusion's first stage (Rombach et al. 2022, "High-Resolution Image Synthesis
with Latent Diffusion Models"; Esser et al. 2021 before them). Settings and sizes: ``docs/spatial.md``."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TypedDict

import torch.nn.functional as F
from torch import Tensor, nn

from datamodules.checks import Fraction, PositiveInt, check_arguments


class SpatialOptions(TypedDict, total=False):
    """``network: spatial``'s ``num_res_blocks`` per level (default 2) and ``attention`` (default true)."""

    num_res_blocks: PositiveInt
    attention: bool


def downsampling_factor(channels: Sequence[int]) -> int:
    """The factor f by which a network with one resolution level per entry of ``channels`` shrinks height and width."""
    return 2 ** (len(channels) - 1)


def check_spatial_size(height: int, width: int, factor: int) -> None:
    """Raise a ValueError naming the size and f unless both sides are positive multiples of the factor f."""
    if height % factor or width % factor or height < factor or width < factor:
        raise ValueError(
            f"a spatial network with downsampling factor f={factor} needs a height and width divisible by {factor}, "
            f"got an image of {height}x{width}; crop or resize to a multiple of {factor} (e.g. "
            f"{max(factor, height // factor * factor)}x{max(factor, width // factor * factor)}), or use fewer levels "
            "in hidden_dims"
        )


def _norm(channels: int) -> nn.GroupNorm:
    # 32 groups where the channels allow it, but at least 4 channels per group: a group of one channel normalizes
    # away each image's mean of that channel, and with it the output's brightness and colour.
    groups = math.gcd(32, channels)
    while groups > 1 and channels // groups < 4:
        groups //= 2
    return nn.GroupNorm(groups, channels, eps=1e-6)


class ResnetBlock(nn.Module):
    """``x + conv(dropout(act(norm(conv(act(norm(x)))))))``, a 1x1 convolution on the skip path if channels change."""

    def __init__(self, in_channels: int, out_channels: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.body = nn.Sequential(
            _norm(in_channels),
            nn.SiLU(),
            nn.Conv2d(in_channels, out_channels, 3, padding=1),
            _norm(out_channels),
            nn.SiLU(),
            nn.Dropout(dropout),
            nn.Conv2d(out_channels, out_channels, 3, padding=1),
        )
        self.skip = nn.Identity() if in_channels == out_channels else nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.skip(x) + self.body(x)


class SelfAttention(nn.Module):
    """Single-head self-attention over the positions of a feature map of ``channels``, with a residual connection."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm = _norm(channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        batch, channels, height, width = x.shape
        # [B, 3C, H, W] -> three [B, 1, HW, C]: one head, a token per position
        q, k, v = self.qkv(self.norm(x)).flatten(2).transpose(1, 2).unsqueeze(1).chunk(3, dim=-1)
        attended = F.scaled_dot_product_attention(q, k, v)
        return x + self.out(attended.squeeze(1).transpose(1, 2).reshape(batch, channels, height, width))


def _middle(channels: int, attention: bool, dropout: float) -> list[nn.Module]:
    """The blocks at the lowest resolution: ResNet, optional self-attention, ResNet."""
    attend = [SelfAttention(channels)] if attention else []
    return [ResnetBlock(channels, channels, dropout), *attend, ResnetBlock(channels, channels, dropout)]


def _check_settings(network: type, values: dict) -> None:
    if len(values["channels"]) == 0:
        raise ValueError("a spatial network needs at least one entry in hidden_dims (channels per resolution level)")
    check_arguments(values, network.__init__)


class SpatialEncoder(nn.Module):
    """Images ``[B, in_channels, H, W]`` to feature maps ``[B, out_channels, H / f, W / f]``, f = 2^(levels - 1).

    Args:
        in_channels: channels of the images.
        channels: channels of each resolution level, highest resolution first; each further level halves H and W.
        out_channels: channels of the code (twice that for a Gaussian posterior: means, then log-variances).
        num_res_blocks: ResNet blocks per level.
        attention: self-attention at the lowest resolution.
        dropout: dropout rate inside the ResNet blocks, in training only.
    """

    def __init__(
        self,
        in_channels: int,
        channels: Sequence[PositiveInt] = (128, 256, 512, 512),
        out_channels: int = 4,
        num_res_blocks: PositiveInt = 2,
        attention: bool = True,
        dropout: Fraction = 0.0,
    ) -> None:
        _check_settings(SpatialEncoder, locals())
        super().__init__()
        self.factor = downsampling_factor(channels)
        layers: list[nn.Module] = [nn.Conv2d(in_channels, channels[0], 3, padding=1)]
        previous = channels[0]
        for level, width in enumerate(channels):
            for _ in range(num_res_blocks):
                layers.append(ResnetBlock(previous, width, dropout))
                previous = width
            if level < len(channels) - 1:
                layers.append(nn.Conv2d(width, width, 3, stride=2, padding=1))  # even H -> H / 2 exactly
        layers += _middle(previous, attention, dropout)
        layers += [_norm(previous), nn.SiLU(), nn.Conv2d(previous, out_channels, 3, padding=1)]
        self.layers = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        check_spatial_size(x.shape[-2], x.shape[-1], self.factor)
        return self.layers(x)


class SpatialDecoder(nn.Module):
    """Codes ``[B, z_channels, h, w]`` to logits ``[B, out_channels, h * f, w * f]``: the mirror of
    :class:`SpatialEncoder` (one more ResNet block per level), nearest-neighbour upsampling between levels."""

    def __init__(
        self,
        z_channels: int,
        channels: Sequence[PositiveInt] = (128, 256, 512, 512),
        out_channels: int = 3,
        num_res_blocks: PositiveInt = 2,
        attention: bool = True,
        dropout: Fraction = 0.0,
    ) -> None:
        _check_settings(SpatialDecoder, locals())
        super().__init__()
        previous = channels[-1]
        layers = [nn.Conv2d(z_channels, previous, 3, padding=1), *_middle(previous, attention, dropout)]
        for level in reversed(range(len(channels))):
            for _ in range(num_res_blocks + 1):
                layers.append(ResnetBlock(previous, channels[level], dropout))
                previous = channels[level]
            if level > 0:
                layers += [nn.Upsample(scale_factor=2.0, mode="nearest"), nn.Conv2d(previous, previous, 3, padding=1)]
        layers += [_norm(previous), nn.SiLU(), nn.Conv2d(previous, out_channels, 3, padding=1)]
        self.layers = nn.Sequential(*layers)

    def forward(self, z: Tensor) -> Tensor:
        return self.layers(z)


__all__ = [
    "ResnetBlock",
    "SelfAttention",
    "SpatialDecoder",
    "SpatialEncoder",
    "SpatialOptions",
    "check_spatial_size",
    "downsampling_factor",
]
