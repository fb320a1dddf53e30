"""The plain autoencoder (Hinton & Salakhutdinov 2006, "Reducing the Dimensionality of Data with Neural Networks")."""

from __future__ import annotations

from torch import Tensor

from ae_lightning.base import DeterministicAutoencoder


class Autoencoder(DeterministicAutoencoder):
    """An encoder to a ``latent_dim`` code and a decoder back, trained to reconstruct its input."""

    def loss_terms(self, x: Tensor, labels: Tensor, indices: Tensor) -> dict[str, Tensor]:
        recon = self.mean_reconstruction_loss(self.decoder(self.encode(x)), x)
        return {"loss": recon, "recon": recon}
