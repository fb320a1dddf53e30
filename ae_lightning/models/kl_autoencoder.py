"""The KL-regularized autoencoder of latent diffusion's first stage (Rombach et al. 2022, "High-Resolution Image
Synthesis with Latent Diffusion Models", section 3): a diagonal-Gaussian posterior over a spatial code, held near the
standard normal by a KL term of small weight (about 1e-6), trained with the perceptual-adversarial recipe.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from ae_lightning.blocks import losses
from ae_lightning.models.first_stage import FirstStageAutoencoder
from datamodules.checks import NonNegativeFloat


class KLAutoencoder(FirstStageAutoencoder):
    """The encoder outputs the mean and log-variance of a Gaussian code ``[B, latent_dim, h, w]``; training decodes
    a sample, :meth:`encode` returns the mean.

    The logged ``kl`` is per image (summed over the code); the loss adds ``kl_weight * kl / pixels``, the ratio that
    latent diffusion's per-image sums of the pixel loss and the KL have.

    Args:
        kl_weight: weight of the KL term, >= 0.
        **kwargs: the :class:`~ae_lightning.models.first_stage.FirstStageAutoencoder` arguments.
    """

    def __init__(self, kl_weight: NonNegativeFloat = 1e-6, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.kl_weight = kl_weight

    @property
    def encoder_channels(self) -> int:
        return 2 * self.latent_dim

    def bottleneck(self, h: Tensor) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        mean, logvar = h.chunk(2, dim=1)
        logvar = logvar.clamp(-30.0, 20.0)  # as latent diffusion: exp stays finite in either direction
        z = mean + torch.randn_like(mean) * torch.exp(0.5 * logvar) if self.training else mean
        kl = losses.kl_divergence_normal(mean.flatten(1), logvar.flatten(1)).mean()
        return z, self.kl_weight * kl / math.prod(self.input_shape[1:]), {"kl": kl.detach()}


__all__ = ["KLAutoencoder"]
