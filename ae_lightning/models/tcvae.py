"""beta-TCVAE (Chen et al. 2018, "Isolating Sources of Disentanglement in Variational Autoencoders"): the VAE whose
KL term is split into index-code mutual information, total correlation and dimension-wise KL, weighted apart."""

from __future__ import annotations

from collections.abc import Sized
from typing import Any, Literal

from torch import Tensor

from ae_lightning.blocks.divergences import total_correlation_terms
from ae_lightning.models.vae import VAE
from datamodules.checks import NonNegativeFloat, PositiveInt


class BetaTCVAE(VAE):
    """The VAE trained on ``recon + w (mi_weight * mi + tc_weight * tc + dwkl_weight * dwkl)``, ``w`` the VAE's ``beta``
    times its KL warm-up; ``mi``, ``tc`` and ``dwkl`` (logged, with the closed-form ``kl``) are estimated on the
    minibatch by ``estimator`` (their offsets: docs/disentanglement.md).

    Args:
        mi_weight: weight of the index-code mutual information (the paper's alpha), >= 0.
        tc_weight: weight of the total correlation (the paper's beta), >= 0.
        dwkl_weight: weight of the dimension-wise KL (the paper's gamma), >= 0.
        dataset_size: samples the minibatches are drawn from; None: the training set's size when training starts
            (the batch's size outside training).
        estimator: ``mws`` (minibatch-weighted) or ``mss`` (minibatch-stratified sampling), for loss and logs.
        **kwargs: the :class:`~ae_lightning.models.vae.VAE` arguments.
    """

    flat_codes_only = "its total-correlation estimate treats the code as one vector [latent_dim]"
    trains_on_the_bound = False

    def __init__(
        self,
        mi_weight: NonNegativeFloat = 1.0,
        tc_weight: NonNegativeFloat = 6.0,
        dwkl_weight: NonNegativeFloat = 1.0,
        dataset_size: PositiveInt | None = None,
        estimator: Literal["mws", "mss"] = "mws",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.mi_weight = mi_weight
        self.tc_weight = tc_weight
        self.dwkl_weight = dwkl_weight
        self.dataset_size = dataset_size
        self.estimator = estimator

    def setup(self, stage: str) -> None:
        super().setup(stage)
        datamodule = getattr(self.trainer, "datamodule", None)
        if self.dataset_size is None and hasattr(datamodule, "split_size"):
            datamodule.setup(stage)
            self.dataset_size = datamodule.split_size("train")

    def on_train_start(self) -> None:
        super().on_train_start()
        # Training data given as loaders rather than a datamodule with ``split_size``.
        if self.dataset_size is None:
            dataset = getattr(self.trainer.train_dataloader, "dataset", None)
            if not isinstance(dataset, Sized):
                raise ValueError(
                    f"BetaTCVAE cannot read the training set's size from {type(self.trainer.train_dataloader).__name__}"
                    ": set dataset_size, the number of samples its minibatches are drawn from"
                )
            self.dataset_size = len(dataset)

    def loss_terms(self, x: Tensor, labels: Tensor, indices: Tensor) -> dict[str, Tensor]:
        mu, logvar, z, recon, kl = self.posterior_terms(x)
        dataset_size = self.dataset_size or len(x)
        terms = total_correlation_terms(z.float(), mu.float(), logvar.float(), dataset_size, self.estimator)
        weighted = self.mi_weight * terms["mi"] + self.tc_weight * terms["tc"] + self.dwkl_weight * terms["dwkl"]
        return {"loss": recon + self.kl_weight() * weighted, "recon": recon, "kl": kl.detach(), **terms}
