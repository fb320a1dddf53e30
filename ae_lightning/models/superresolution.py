"""Super-resolution with an autoencoder, in the setting of Dong et al. 2014 ("Learning a Deep Convolutional Network
for Image Super-Resolution"); Vincent et al. 2008 for restoration by autoencoders."""

from __future__ import annotations

import math
from typing import Any

import torch.nn.functional as F
from torch import Tensor

from ae_lightning.models.restoration import RestorationAutoencoder
from datamodules.checks import AtLeastTwo


def downsample(x: Tensor, scale: int) -> Tensor:
    """Images ``[B, C, H, W]`` averaged over ``scale x scale`` blocks: ``[B, C, H / scale, W / scale]``."""
    return F.avg_pool2d(x, scale)


def bicubic_upsample(x: Tensor, scale: int) -> Tensor:
    """Images upsampled ``scale`` times by bicubic interpolation, clipped to [0, 1]."""
    return F.interpolate(x, scale_factor=scale, mode="bicubic", align_corners=False).clamp(0, 1)


class SuperResolutionAutoencoder(RestorationAutoencoder):
    """Restores images from their ``scale``-times downsampled (area averaging), bicubic-upsampled copies; ``test``
    reports PSNR and SSIM of the output (``test/psnr_superres``, ...) and of that input (``test/psnr_bicubic``, ...).
    ``scale`` must divide the images' height and width."""

    restored_name = "superres"
    degraded_name = "bicubic"

    def __init__(self, scale: AtLeastTwo = 2, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if len(self.input_shape) != 3:
            raise ValueError(
                f"super-resolution needs images (channels, height, width), got input_shape {self.input_shape} "
                "(feature vectors): use another variant for vectors"
            )
        height, width = self.input_shape[1:]
        if height % scale or width % scale:
            gcd = math.gcd(height, width)
            common = [str(d) for d in range(2, gcd + 1) if gcd % d == 0]
            fix = (
                f"use a scale that divides both: {', '.join(common[:6])}{', ...' if len(common) > 6 else ''}"
                if common
                else f"no scale >= 2 divides both {height} and {width}: resize the images to sides that scale divides "
                f"(e.g. {-(-height // scale) * scale}x{-(-width // scale) * scale})"
            )
            raise ValueError(f"scale={scale} must divide the image size {height}x{width}; {fix}")
        self.scale = scale

    def degrade(self, x: Tensor, indices: Tensor | None = None) -> Tensor:
        return bicubic_upsample(downsample(x, self.scale), self.scale)
