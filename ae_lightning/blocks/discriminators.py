"""Image discriminators for the perceptual-adversarial recipe."""

from __future__ import annotations

import itertools
import math

from torch import Tensor, nn

from datamodules.checks import NonNegativeInt, PositiveInt, check_arguments


class PatchDiscriminator(nn.Sequential):
    """The PatchGAN of pix2pix (Isola et al. 2017) as VQGAN uses it, with GroupNorm (``docs/quantized.md``): stride-2
    4x4 convolutions, ``channels`` doubling in each of ``num_layers`` more (up to 8 times), a logit per patch."""

    def __init__(
        self, in_channels: PositiveInt = 3, channels: PositiveInt = 64, num_layers: NonNegativeInt = 3
    ) -> None:
        check_arguments(locals(), PatchDiscriminator.__init__)
        layers: list[nn.Module] = [nn.Conv2d(in_channels, channels, 4, stride=2, padding=1), nn.LeakyReLU(0.2)]
        widths = [channels * min(2**layer, 8) for layer in range(num_layers + 1)]
        for layer, (width, wider) in enumerate(itertools.pairwise(widths), start=1):
            stride = 2 if layer < num_layers else 1
            conv = nn.Conv2d(width, wider, 4, stride=stride, padding=1, bias=False)
            layers += [conv, nn.GroupNorm(math.gcd(32, wider), wider), nn.LeakyReLU(0.2)]
        layers.append(nn.Conv2d(widths[-1], 1, 4, stride=1, padding=1))
        super().__init__(*layers)

    def forward(self, x: Tensor) -> Tensor:
        """Patch logits ``[B, 1, h, w]`` that images ``x`` in [0, 1] are real."""
        return super().forward(2 * x - 1)


def min_image_size(num_layers: int) -> int:
    """The smallest side a :class:`PatchDiscriminator` of ``num_layers`` takes (``3 * 2 ** num_layers``, at least 4)."""
    return 3 * 2**num_layers if num_layers else 4


__all__ = ["PatchDiscriminator", "min_image_size"]
