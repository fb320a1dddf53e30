"""The denoising autoencoder (Vincent et al. 2008, "Extracting and Composing Robust Features with Denoising
Autoencoders"): it reconstructs the clean image from a corrupted copy."""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import Tensor

from ae_lightning.models.restoration import RestorationAutoencoder
from datamodules.checks import check_number

Corruption = Literal["gaussian", "masking", "salt_and_pepper"]


def corrupt(
    x: Tensor, corruption: Corruption, level: float, generator: torch.Generator | None = None, clip: bool = True
) -> Tensor:
    """A corrupted copy of images ``x`` ``[B, C, H, W]`` in [0, 1] (or of feature vectors, with ``clip=False``):
    ``gaussian`` adds N(0, level^2) noise (clipped to [0, 1] with ``clip``); ``masking`` sets each pixel (all its
    channels) to 0 with probability ``level``, ``salt_and_pepper`` to 0 or 1. ``generator`` (None: the global one)
    draws the noise in float32, the same under every ``precision``."""

    def uniform() -> Tensor:  # one draw per pixel, shared by its channels
        pixels = (len(x), 1, *x.shape[2:]) if x.dim() == 4 else x.shape
        return torch.rand(pixels, generator=generator, device=x.device, dtype=torch.float32)

    if corruption == "gaussian":
        noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=torch.float32).to(x.dtype)
        return (x + level * noise).clamp(0, 1) if clip else x + level * noise
    if corruption == "masking":
        return x * (uniform() >= level)
    if corruption != "salt_and_pepper":  # a misspelt kind is not salt and pepper
        raise ValueError(f"corruption must be one of 'gaussian', 'masking', 'salt_and_pepper', got {corruption!r}")
    hit, salt = uniform() < level, uniform() < 0.5
    return torch.where(hit, salt.to(x.dtype), x)


class DenoisingAutoencoder(RestorationAutoencoder):
    """Reconstructs the clean input from a corrupted copy (:class:`RestorationAutoencoder`); ``test`` reports PSNR
    and SSIM of the denoised (``test/psnr_denoised``, ``test/ssim_denoised``) and of the corrupted images
    (``test/psnr_noisy``, ``test/ssim_noisy``). ``corruption_level`` (:func:`corrupt`'s ``level``) is the Gaussian
    noise std (>= 0), or the fraction of pixels hit, in [0, 1)."""

    restored_name = "denoised"
    degraded_name = "noisy"

    def __init__(self, corruption: Corruption = "gaussian", corruption_level: float = 0.3, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if corruption == "gaussian":
            check_number("corruption_level: the gaussian noise std", corruption_level, "[0, inf)")
        else:
            check_number(f"corruption_level: the {corruption} fraction", corruption_level, "[0, 1)")
        if corruption == "salt_and_pepper" and len(self.input_shape) == 1:
            raise ValueError(
                f"corruption: salt_and_pepper sets pixels to 0 or 1, which means nothing for the feature vectors of "
                f"input_shape {self.input_shape}; use corruption: gaussian or masking"
            )
        self.corruption = corruption
        self.corruption_level = corruption_level

    def corrupt(self, x: Tensor, indices: Tensor | None = None) -> Tensor:
        """``x`` corrupted, from the global generator or (``indices``) each image's seeded by its dataset index."""
        kind, level, clip = self.corruption, self.corruption_level, len(self.input_shape) == 3
        if indices is None:
            return corrupt(x, kind, level, clip=clip)
        generator = torch.Generator(x.device)
        images = zip(x.split(1), indices.tolist())
        return torch.cat([corrupt(image, kind, level, generator.manual_seed(seed), clip) for image, seed in images])

    degrade = corrupt
