"""FactorVAE (Kim & Mnih 2018, "Disentangling by Factorising"): the VAE with a total-correlation penalty estimated by
a discriminator that tells codes of q(z) from codes whose dimensions were shuffled across the batch."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor

from ae_lightning.base import Batch
from ae_lightning.blocks.divergences import permute_dims
from ae_lightning.models.adversarial import Discriminator, discriminator_terms
from ae_lightning.models.vae import VAE
from datamodules.checks import NonNegativeFloat, PositiveInt


class FactorVAE(VAE):
    """The VAE trained on ``recon + w * kl + tc_weight * tc``, ``tc`` the batch mean of the discriminator's logit
    ``log D(z) / (1 - D(z))``, a density-ratio estimate of the total correlation of q(z).

    Each batch takes a step of encoder and decoder (the discriminator frozen), then one of the discriminator on the
    batch's codes (1) against them with every dimension permuted across the batch (0); ``global_step`` counts batches.

    Args:
        tc_weight: weight of the total correlation (the paper's gamma; 35 on dSprites), >= 0.
        discriminator_hidden_dims: widths of the discriminator's hidden layers (the paper: 5 of 1000).
        discriminator_optimizer: the discriminator's optimizer factory (the paper: Adam, lr 1e-4, betas 0.5, 0.9).
        discriminator_lr_scheduler: optional scheduler factory for it.
        **kwargs: the :class:`~ae_lightning.models.vae.VAE` arguments.
    """

    flat_codes_only = "its discriminator reads flat codes [latent_dim]"
    trains_on_the_bound = False

    partial_backward = True  # the discriminator's step reaches the discriminator only

    def __init__(
        self,
        tc_weight: NonNegativeFloat = 35.0,
        discriminator_hidden_dims: Sequence[PositiveInt] = (1000, 1000, 1000, 1000, 1000),
        discriminator_optimizer: OptimizerCallable = torch.optim.Adam,
        discriminator_lr_scheduler: LRSchedulerCallable | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.automatic_optimization = False
        self.tc_weight = tc_weight
        self.discriminator_optimizer_factory = discriminator_optimizer
        self.discriminator_lr_scheduler_factory = discriminator_lr_scheduler
        self.discriminator = Discriminator(self.latent_dim, discriminator_hidden_dims)

    def vae_terms(self, x: Tensor) -> tuple[dict[str, Tensor], Tensor]:
        """The VAE's terms on ``x`` (``loss`` with the discriminator's total correlation) and the batch's codes."""
        _, _, z, recon, kl = self.posterior_terms(x)
        tc = self.discriminator(z).float().mean()
        return {"loss": recon + self.kl_weight() * kl + self.tc_weight * tc, "recon": recon, "kl": kl, "tc": tc}, z

    def discriminator_terms(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """The discriminator's binary cross-entropy on codes ``z`` (1) and their permutation (0), and its accuracy."""
        return discriminator_terms(self.discriminator, z, permute_dims(z))

    def loss_terms(self, x: Tensor, labels: Tensor, indices: Tensor) -> dict[str, Tensor]:
        terms, z = self.vae_terms(x)
        d_loss, d_accuracy = self.discriminator_terms(z)
        return {**terms, "d_loss": d_loss, "d_accuracy": d_accuracy}

    def optimization_step(self, batch: Batch) -> dict[str, Tensor]:
        """A step of the VAE, then one of the discriminator, on one batch."""
        vae_optimizer, discriminator_optimizer = self.optimizers()
        with self.toggled_optimizer(vae_optimizer):  # the discriminator, not in it, is frozen
            terms, z = self.vae_terms(batch[0])
            self.manual_step(vae_optimizer, terms["loss"])
        d_loss, d_accuracy = self.discriminator_terms(z.detach())
        self.manual_step(discriminator_optimizer, d_loss, counted=False)
        detached = {name: value.detach() for name, value in terms.items()}
        return {**detached, "d_loss": d_loss.detach(), "d_accuracy": d_accuracy}
