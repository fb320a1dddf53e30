"""The VAE with a VampPrior (Tomczak & Welling 2018, "VAE with a VampPrior"): the prior is the mixture of the
posteriors of K learned pseudo-inputs, ``p(z) = 1/K sum_k q(z | u_k)``."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ae_lightning.blocks import losses
from ae_lightning.blocks.divergences import gaussian_mixture_log_prob
from ae_lightning.models.vae import VAE
from datamodules.checks import PositiveInt


class VampPriorVAE(VAE):
    """The VAE with the VampPrior, trained on ``recon + w * kl`` with ``kl = log q(z | x) - log p(z)`` of one sample
    (or the IWAE bound). Pseudo-inputs start at N(0.05, 0.01) through ``hardtanh`` for images, N(0, 1) for vectors.

    Args:
        num_pseudo_inputs: K, >= 1 (the paper: 500 on MNIST).
        **kwargs: the :class:`~ae_lightning.models.vae.VAE` arguments.
    """

    closed_form_kl = False
    flat_codes_only = "its mixture prior is over flat codes [latent_dim]"

    def __init__(self, num_pseudo_inputs: PositiveInt = 500, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        images = len(self.input_shape) == 3
        start = torch.randn(num_pseudo_inputs, *self.input_shape) * (0.01 if images else 1.0) + (0.05 if images else 0)
        self.pseudo_inputs = nn.Parameter(start)

    def pseudo_input_images(self) -> Tensor:
        """The K pseudo-inputs ``[K, *input_shape]`` as the encoder sees them."""
        return F.hardtanh(self.pseudo_inputs, 0.0, 1.0) if len(self.input_shape) == 3 else self.pseudo_inputs

    def prior_components(self) -> tuple[Tensor, Tensor]:
        """Means and log-variances ``[K, latent_dim]`` of the prior's components."""
        return self.posterior_parameters(self.pseudo_input_images())

    def prior_log_prob(self, z: Tensor) -> Tensor:
        means, logvars = self.prior_components()
        return gaussian_mixture_log_prob(z, means.to(z.dtype), logvars.to(z.dtype))

    def sample_prior(self, n: int) -> Tensor:
        means, logvars = self.prior_components()
        chosen = torch.randint(len(means), (n,), device=means.device)
        return losses.reparameterize(means[chosen], logvars[chosen])
