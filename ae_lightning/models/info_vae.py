"""InfoVAE (Zhao et al. 2017, "InfoVAE: Balancing Learning and Inference in Variational Autoencoders") with the MMD,
and WAE-MMD (Tolstikhin et al. 2018, "Wasserstein Auto-Encoders"), its case without noise or KL term."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ae_lightning.blocks.divergences import Kernel, maximum_mean_discrepancy
from ae_lightning.models.vae import VAE
from datamodules.checks import PositiveFloat, number_type

AtMostOne = number_type("(-inf, 1]")


class InfoVAE(VAE):
    """The VAE trained on ``recon + (1 - alpha) w kl + (alpha + lambda_weight - 1) mmd`` (Zhao et al. 2017, eq. 6
    with D = MMD), ``mmd`` the unbiased MMD^2 between the batch's codes and as many standard-normal draws; ``w`` is
    ``beta`` times the KL warm-up. With ``deterministic: true`` the code is the encoder's mean (the WAE-MMD: its
    ``test/nll`` means little; the anomaly score is ``recon`` of that code).

    Args:
        alpha: the paper's alpha, <= 1: the KL term's weight is ``1 - alpha``.
        lambda_weight: the paper's lambda, > 0: the MMD's weight is ``alpha + lambda_weight - 1``, >= 0.
        kernel: ``imq`` (inverse multiquadratic, as in the WAE) or ``rbf`` (as in the InfoVAE).
        kernel_scale: the kernel's scale; None: ``2 * latent_dim``.
        deterministic: code = the posterior mean (the WAE); needs ``alpha: 1``.
        **kwargs: the :class:`~ae_lightning.models.vae.VAE` arguments.
    """

    flat_codes_only = "its MMD kernel compares flat codes [latent_dim]"
    trains_on_the_bound = False

    def __init__(
        self,
        alpha: AtMostOne = 0.0,
        lambda_weight: PositiveFloat = 1000.0,
        kernel: Kernel = "imq",
        kernel_scale: PositiveFloat | None = None,
        deterministic: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if alpha + lambda_weight - 1 < 0:
            raise ValueError(
                f"the MMD weight alpha + lambda_weight - 1 must be >= 0, got alpha={alpha}, "
                f"lambda_weight={lambda_weight}"
            )
        if deterministic and alpha != 1:
            raise ValueError(
                f"deterministic: true has no posterior variance, so no KL term: set alpha: 1 (the WAE-MMD), got "
                f"alpha={alpha}"
            )
        self.alpha = alpha
        self.lambda_weight = lambda_weight
        self.kernel = kernel
        self.kernel_scale = kernel_scale
        self.deterministic = deterministic

    def loss_terms(self, x: Tensor, labels: Tensor, indices: Tensor) -> dict[str, Tensor]:
        _, _, z, recon, kl = self.posterior_terms(x, self.deterministic)
        if len(z) >= 2:
            prior = torch.randn_like(z, dtype=torch.float32)
            mmd = maximum_mean_discrepancy(z.float(), prior, self.kernel, self.kernel_scale)
        else:  # one sample: no estimate
            mmd = torch.zeros((), device=z.device)
        loss = recon + (1 - self.alpha) * self.kl_weight() * kl + (self.alpha + self.lambda_weight - 1) * mmd
        return {"loss": loss, "recon": recon, "kl": kl if self.alpha != 1 else kl.detach(), "mmd": mmd}

    def anomaly_score(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        if not self.deterministic:
            return super().anomaly_score(x, y)
        return -self.log_likelihood(self.decoder_logits(self.encode(x), y), x)
