"""The VAE with an inverse-autoregressive-flow posterior (Kingma et al. 2016, "Improved Variational Inference with
Inverse Autoregressive Flow"): the diagonal Gaussian's sample passes through MADE-based IAF steps.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from ae_lightning.blocks.flows import InverseAutoregressiveFlow
from ae_lightning.models.vae import VAE
from datamodules.checks import PositiveInt


class IAFVAE(VAE):
    """The VAE with ``z = f_T(... f_1(mu + sigma * eps))``, each ``f_t`` an IAF step, and
    ``log q(z | x) = log N(eps) - sum log sigma - sum_t log |det df_t|``; trained on ``recon + w * kl`` with the
    single-sample ``kl = log q(z | x) - log p(z)`` (``iw_samples: k``: the IWAE bound); ``test/nll`` is the
    importance-weighted bound with this posterior as proposal. ``encode`` gives the flow of the Gaussian's mean.

    Args:
        flow_steps: the number of IAF steps T, >= 1.
        flow_hidden_dims: widths of each step's MADE hidden layers.
        forget_bias: each step's gate bias (the paper: 1 to 2), so that the flow starts near the identity.
        **kwargs: the :class:`~ae_lightning.models.vae.VAE` arguments.
    """

    closed_form_kl = False  # the KL is estimated from the posterior sample
    flat_codes_only = "its autoregressive flow orders the elements of a flat code [latent_dim]"

    def __init__(
        self,
        flow_steps: PositiveInt = 2,
        flow_hidden_dims: Sequence[PositiveInt] = (256, 256),
        forget_bias: float = 1.5,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.flow = InverseAutoregressiveFlow(self.latent_dim, flow_steps, flow_hidden_dims, forget_bias)

    def encode(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        """The flow of the Gaussian's mean."""
        return self.flow(self.posterior_parameters(x)[0])[0]

    def log_densities(
        self, x: Tensor, mu: Tensor, logvar: Tensor, num_samples: int, y: Tensor | None = None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """log p(x | z_k), log p(z_k) and log q(z_k | x) ``[num_samples, B]`` for ``z_k`` drawn through the flow."""
        eps = torch.randn(num_samples, *mu.shape, device=mu.device, dtype=mu.dtype)
        z, log_det = self.flow(mu + eps * torch.exp(0.5 * logvar))
        logits = self.decoder(z.flatten(0, 1)).unflatten(0, (num_samples, len(x)))
        log_q = (-0.5 * eps.float().pow(2) - 0.5 * math.log(2 * math.pi)).sum(-1) - (0.5 * logvar.float()).sum(-1)
        log_q = log_q - log_det.float()
        return self.log_likelihood(logits.float(), x), self.prior_log_prob(z.float()), log_q
