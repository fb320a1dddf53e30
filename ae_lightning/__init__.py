"""ae-lightning: the autoencoder family as PyTorch Lightning modules.

Layout: :mod:`ae_lightning.models` (the variants), :mod:`ae_lightning.blocks` (networks, losses and other building
blocks), :mod:`ae_lightning.training` (callbacks: fault tolerance, the fast path, pictures, prediction files),
:mod:`ae_lightning.evaluation` (metrics, pictures, the evaluation driver); the core is :mod:`ae_lightning.base` and
:mod:`ae_lightning.cli`, with argument constraints from :mod:`datamodules.checks`. The variants are importable from here
(``ae_lightning.VAE``); each is imported on first use, so importing one does not import the others.
"""

from __future__ import annotations

from datamodules.lazy import lazy_exports

# Public name -> the module that defines it.
_EXPORTS = {
    "AutoencoderModule": "ae_lightning.base",
    "DeterministicAutoencoder": "ae_lightning.base",
    "AdversarialAutoencoder": "ae_lightning.models.adversarial",
    "AutoDecoder": "ae_lightning.models.autodecoder",
    "CodePrior": "ae_lightning.models.prior",
    "Autoencoder": "ae_lightning.models.autoencoder",
    "BetaTCVAE": "ae_lightning.models.tcvae",
    "ConditionalVAE": "ae_lightning.models.cvae",
    "ContractiveAutoencoder": "ae_lightning.models.contractive",
    "DeepBeliefAutoencoder": "ae_lightning.models.deep_belief",
    "DenoisingAutoencoder": "ae_lightning.models.denoising",
    "DIPVAE": "ae_lightning.models.dip_vae",
    "DropoutAutoencoder": "ae_lightning.models.dropout",
    "FactorVAE": "ae_lightning.models.factor_vae",
    "IAFVAE": "ae_lightning.models.iaf_vae",
    "InfoVAE": "ae_lightning.models.info_vae",
    "MultDAE": "ae_lightning.models.recommender",
    "MultVAE": "ae_lightning.models.recommender",
    "KLAutoencoder": "ae_lightning.models.kl_autoencoder",
    "QuantizedAutoencoder": "ae_lightning.models.quantized",
    "SparseAutoencoder": "ae_lightning.models.sparse",
    "SuperResolutionAutoencoder": "ae_lightning.models.superresolution",
    "VAE": "ae_lightning.models.vae",
    "VampPriorVAE": "ae_lightning.models.vampprior",
}


__getattr__, __dir__ = lazy_exports("ae_lightning", _EXPORTS)

__all__ = sorted(_EXPORTS)
