"""The KL-regularized autoencoder of latent diffusion's first stage (Rombach et al. 2022, "High-Resolution Image
Synthesis with Latent Diffusion Models", section 3), trained with the perceptual-adversarial recipe."""

from __future__ import annotations

import math
from typing import Any

import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor
from torchmetrics import Metric

from ae_lightning.blocks import losses
from ae_lightning.models.first_stage import FirstStageAutoencoder
from datamodules.checks import NonNegativeFloat


class KLAutoencoder(FirstStageAutoencoder):
    """A Gaussian code ``[B, latent_dim, h, w]``: training decodes a sample, :meth:`encode` returns the mean.

    The logged ``kl`` is per image; the loss adds ``kl_weight * kl / (C * H * W)`` to the pixel loss (docs/family.md).
    ``code_std`` (logged) is the codes' standard deviation, per batch in training, over the epoch in validation and
    test: latent diffusion's ``scale_factor`` is ``1 / test/code_std``. The other arguments are
    :class:`~ae_lightning.models.first_stage.FirstStageAutoencoder`'s.
    """

    def __init__(self, kl_weight: NonNegativeFloat = 1e-6, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.kl_weight = kl_weight
        self.code_metric = CodeStd()

    @property
    def encoder_channels(self) -> int:
        return 2 * self.latent_dim

    def bottleneck(self, h: Tensor) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        mean, logvar = h.chunk(2, dim=1)
        logvar = logvar.clamp(-30.0, 20.0)  # as latent diffusion: exp stays finite in either direction
        z = losses.reparameterize(mean, logvar) if self.training else mean
        kl = losses.kl_divergence_normal(mean.flatten(1), logvar.flatten(1)).mean()
        logged = {"kl": kl.detach()}
        if self.counting_codes:
            self.code_metric.update(z)
        else:
            logged["code_std"] = z.detach().float().std(correction=0)
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


class CodeStd(Metric):
    """``code_std``: the standard deviation of all the code elements given to :meth:`update`, in float64."""

    full_state_update = False

    def __init__(self) -> None:
        super().__init__()
        for name in ("count", "total", "squares"):
            self.add_state(name, torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, codes: Tensor) -> None:  # type: ignore[override]
        self.set_dtype(torch.float64)  # casting the model (bf16-true) casts these states too
        codes = codes.detach().double()
        # Not in place: states reset within a Trainer's inference mode cannot be updated in place outside it
        self.count = self.count + codes.numel()
        self.total = self.total + codes.sum()
        self.squares = self.squares + codes.pow(2).sum()

    def compute(self) -> dict[str, Tensor]:
        mean = self.total / self.count
        return {"code_std": (self.squares / self.count - mean**2).clamp_min(0).sqrt().float()}


__all__ = ["CodeStd", "KLAutoencoder"]
