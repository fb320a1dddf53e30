"""DIP-VAE I and II (Kumar et al. 2018, "Variational Inference of Disentangled Latent Concepts from Unlabeled
Observations"): the VAE with a penalty moving the covariance of the aggregated posterior towards the identity."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from ae_lightning.blocks.divergences import DipType, dip_regularizer
from ae_lightning.models.vae import VAE
from datamodules.checks import NonNegativeFloat


class DIPVAE(VAE):
    """The VAE trained on ``recon + w * kl + dip`` (:func:`~ae_lightning.blocks.divergences.dip_regularizer`).

    Args:
        dip_type: ``i`` (covariance of the posterior means) or ``ii`` (covariance of the codes).
        lambda_od: weight of the off-diagonal entries, >= 0.
        lambda_d: weight of the diagonal's distance from 1, >= 0; None: the paper's ``10 * lambda_od`` for ``i`` and
            ``lambda_od`` for ``ii``.
        **kwargs: the :class:`~ae_lightning.models.vae.VAE` arguments.
    """

    flat_codes_only = "its covariance penalty is over flat codes [latent_dim]"
    trains_on_the_bound = False

    def __init__(
        self,
        dip_type: DipType = "ii",
        lambda_od: NonNegativeFloat = 10.0,
        lambda_d: NonNegativeFloat | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.dip_type = dip_type
        self.lambda_od = lambda_od
        self.lambda_d = lambda_d if lambda_d is not None else (10 * lambda_od if dip_type == "i" else lambda_od)

    def loss_terms(self, x: Tensor, labels: Tensor, indices: Tensor) -> dict[str, Tensor]:
        mu, logvar, _, recon, kl = self.posterior_terms(x)
        dip = dip_regularizer(mu.float(), logvar.float(), self.dip_type, self.lambda_od, self.lambda_d)
        return {"loss": recon + self.kl_weight() * kl + dip, "recon": recon, "kl": kl, "dip": dip}
