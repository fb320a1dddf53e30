"""ae-lightning: the autoencoder family as PyTorch Lightning modules."""

from ae_lightning.adversarial import AdversarialAutoencoder
from ae_lightning.autodecoder import AutoDecoder
from ae_lightning.autoencoder import Autoencoder
from ae_lightning.base import AutoencoderModule, DeterministicAutoencoder
from ae_lightning.contractive import ContractiveAutoencoder
from ae_lightning.cvae import ConditionalVAE
from ae_lightning.deep_belief import DeepBeliefAutoencoder
from ae_lightning.denoising import DenoisingAutoencoder
from ae_lightning.dropout import DropoutAutoencoder
from ae_lightning.sparse import SparseAutoencoder
from ae_lightning.superresolution import SuperResolutionAutoencoder
from ae_lightning.vae import VAE

__all__ = [
    "VAE",
    "Autoencoder",
    "AutoencoderModule",
    "DeterministicAutoencoder",
    "AdversarialAutoencoder",
    "AutoDecoder",
    "ConditionalVAE",
    "DeepBeliefAutoencoder",
    "ContractiveAutoencoder",
    "DenoisingAutoencoder",
    "DropoutAutoencoder",
    "SparseAutoencoder",
    "SuperResolutionAutoencoder",
]
