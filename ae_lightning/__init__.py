"""ae-lightning: the autoencoder family as PyTorch Lightning modules."""

from ae_lightning.autoencoder import Autoencoder
from ae_lightning.base import AutoencoderModule, DeterministicAutoencoder
from ae_lightning.vae import VAE

__all__ = ["VAE", "Autoencoder", "AutoencoderModule", "DeterministicAutoencoder"]
