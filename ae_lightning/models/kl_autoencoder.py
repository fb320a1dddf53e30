"""The KL-regularized autoencoder of latent diffusion's first stage (Rombach et al. 2022, "High-Resolution Image
Synthesis with Latent Diffusion Models", section 3), trained with the perceptual-adversarial recipe.
"""

from __future__ import annotations

import math
from typing import Any

from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor

from ae_lightning.blocks import losses
from ae_lightning.models.first_stage import FirstStageAutoencoder
from datamodules.checks import NonNegativeFloat


class KLAutoencoder(FirstStageAutoencoder):
    """The encoder outputs the mean and log-variance of a Gaussian code ``[B, latent_dim, h, w]``; training decodes
    a sample, :meth:`encode` returns the mean.

    The logged ``kl`` is per image (summed over the code); the loss adds ``kl_weight * kl / (C * H * W)`` to a pixel
    loss averaged over the image's C * H * W values in [0, 1] (latent diffusion's are in [-1, 1]: docs/family.md).
    ``code_std`` (logged) is the standard deviation of a batch's codes (the decoder's input), averaged over batches:
    latent diffusion's ``scale_factor`` is ``1 / code_std``.

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
        z = losses.reparameterize(mean, logvar) if self.training else mean
        kl = losses.kl_divergence_normal(mean.flatten(1), logvar.flatten(1)).mean()
        logged = {"kl": kl.detach(), "code_std": z.detach().float().std(correction=0)}
        return z, self.kl_weight * kl / math.prod(self.input_shape), logged

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint["ae_lightning_kl_per"] = "value"  # the KL per C * H * W (before 2026-12-05: per H * W)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        channels = self.input_shape[0]
        if checkpoint.get("ae_lightning_kl_per") != "value" and channels > 1:
            rank_zero_warn(
                f"this KLAutoencoder checkpoint was trained with the KL divided by H * W (releases before 2026-12-05), "
                f"{channels} times heavier than now; it goes on with kl / (C * H * W). To keep "
                f"the old objective, set kl_weight to {channels} times its value ({channels * self.kl_weight:g})"
            )


__all__ = ["KLAutoencoder"]
