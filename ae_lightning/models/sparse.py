"""The sparse autoencoder: an activity penalty on the code, either L1 or the KL sparsity penalty of Ng's notes
(A. Ng, "Sparse autoencoder", CS294A lecture notes, 2011)."""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import Tensor

from ae_lightning.base import DeterministicAutoencoder
from ae_lightning.blocks import losses
from datamodules.checks import NonNegativeFloat, OpenUnitInterval

Sparsity = Literal["l1", "kl"]


class SparseAutoencoder(DeterministicAutoencoder):
    """An autoencoder whose code units are pushed to be mostly inactive: ``recon + sparsity_weight * penalty``.

    - ``l1``: the code's L1 norm ``sum_j |z_j|`` per image, on the encoder's linear output.
    - ``kl``: ``sum_j KL(rho || rho_hat_j)``, with ``rho_hat_j`` unit j's mean activation over the batch and ``rho`` the
      ``sparsity_target``, on the encoder's output through a sigmoid.

    Units ``j`` are the code's elements (of a spatial code too). Each stage also logs ``mean_activation``, mean ``|z|``.
    """

    def __init__(
        self,
        sparsity: Sparsity = "kl",
        sparsity_weight: NonNegativeFloat = 1.0,
        sparsity_target: OpenUnitInterval = 0.05,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.sparsity = sparsity
        self.sparsity_weight = sparsity_weight
        self.sparsity_target = sparsity_target

    def encode(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        self.check_tensor(x, "encode(x)")
        z = self.encoder(x)
        return torch.sigmoid(z) if self.sparsity == "kl" else z

    def loss_terms(self, x: Tensor, labels: Tensor, indices: Tensor) -> dict[str, Tensor]:
        z = self.encode(x)
        recon = self.mean_reconstruction_loss(self.decoder(z), x)
        if self.sparsity == "kl":
            penalty = losses.kl_divergence_bernoulli(self.sparsity_target, z.float().flatten(1).mean(0))
        else:
            penalty = z.abs().flatten(1).sum(-1).mean()
        terms = {"recon": recon, "sparsity": penalty, "mean_activation": z.detach().abs().mean()}
        return {"loss": recon + self.sparsity_weight * penalty, **terms}
