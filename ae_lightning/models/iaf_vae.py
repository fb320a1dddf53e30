"""The VAE with an inverse-autoregressive-flow posterior (Kingma et al. 2016, "Improved Variational Inference with
Inverse Autoregressive Flow"): the diagonal Gaussian's sample passes through MADE-based IAF steps."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor
from torch.distributions import Normal

from ae_lightning.blocks import losses
from ae_lightning.blocks.flows import MADE, InverseAutoregressiveFlow
from ae_lightning.models.vae import VAE
from datamodules.checks import PositiveInt


class IAFVAE(VAE):
    """The VAE with ``z = f_T(... f_1(mu + sigma * eps))``, each ``f_t`` an IAF step that also sees the context
    ``h = [mu, log sigma^2]`` (detached), trained on ``recon + w * kl`` with the single-sample ``kl`` of
    :meth:`elbo_terms` (or the IWAE bound). ``encode`` gives the flow of the Gaussian's mean.

    Args:
        flow_steps: the number of IAF steps T, >= 1.
        flow_hidden_dims: widths of each step's MADE hidden layers.
        forget_bias: each step's gate bias (the paper: 1 to 2), so that the flow starts near the identity.
        flow_context: give the steps the context ``h``; False: one flow for every image (older checkpoints).
        **kwargs: the :class:`~ae_lightning.models.vae.VAE` arguments.
    """

    closed_form_kl = False
    flat_codes_only = "its autoregressive flow orders the elements of a flat code [latent_dim]"

    def __init__(
        self,
        flow_steps: PositiveInt = 2,
        flow_hidden_dims: Sequence[PositiveInt] = (256, 256),
        forget_bias: float = 1.5,
        flow_context: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if flow_context and not flow_hidden_dims:
            raise ValueError(
                "flow_hidden_dims is empty, but the flow's steps take the context (flow_context: true) through a first "
                "hidden layer: give at least one width (e.g. [256, 256]), or set flow_context: false"
            )
        context_dim = 2 * self.latent_dim if flow_context else 0
        self.flow = InverseAutoregressiveFlow(self.latent_dim, flow_steps, flow_hidden_dims, forget_bias, context_dim)

    def posterior(self, x: Tensor, y: Tensor | None = None) -> Normal:
        """Refused: q(z | x) is the flow of a Normal, no Normal (the VAE's ``posterior`` would give ``q_0``)."""
        raise NotImplementedError(
            "IAFVAE's posterior q(z | x) is the flow of a Normal, not a torch.distributions.Normal: "
            "posterior_parameters(x) gives the Gaussian q_0 the flow starts from, and log_densities(x, mu, logvar, k) "
            "k samples of q(z | x) with their log-densities"
        )

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        state = checkpoint.get("state_dict", {})
        has_context = any(".made.context." in name for name in state)
        if self.hparams.flow_context and not has_context:
            raise ValueError(
                "this IAF VAE checkpoint was trained before the flow took the encoder's context (flow_context): its "
                "steps have no context weights. Load it with flow_context=False (--model.init_args.flow_context "
                "false), which builds the flow it was trained with"
            )
        # Releases before the masks were saved built every MADE's masks as a MADE without a context builds them.
        legacy = MADE(self.latent_dim, self.hparams.flow_hidden_dims)
        for i in range(len(self.flow.steps)):
            for name, mask in legacy.named_buffers():
                state.setdefault(f"flow.steps.{i}.made.{name}", mask)

    def elbo_terms(self, x: Tensor, y: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """The negative log-likelihood of one sample ``z_T`` of the flow and its KL estimated as ``KL(q_0 || p)`` in
        closed form plus ``log p(z_0) - log p(z_T) - log |det|`` (``q_0`` the Gaussian the flow starts from)."""
        mu, logvar = self.posterior_parameters(x, y)
        z_0 = losses.reparameterize(mu, logvar)
        z, log_det = self.posterior_flow(z_0, mu, logvar)
        log_ratio = self.prior_log_prob(z_0.float()) - self.prior_log_prob(z.float()) - log_det
        return -self.log_likelihood(self.decoder_logits(z, y).float(), x), self.kl_divergence(mu, logvar) + log_ratio

    def posterior_flow(self, z: Tensor, mu: Tensor, logvar: Tensor) -> tuple[Tensor, Tensor]:
        """Samples ``z`` ``[..., B, D]`` of ``q_0`` through the flow, and its ``log |det|`` (float32 at least)."""
        context = torch.cat([mu, logvar], dim=-1).detach().expand(*z.shape[:-1], -1)
        z, log_det = self.flow(z, context if self.hparams.flow_context else None)
        return z, log_det.to(torch.promote_types(log_det.dtype, torch.float32))
