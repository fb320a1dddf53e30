"""The disentanglement metrics of :mod:`ae_lightning.evaluation.disentanglement` reported by ``ae-lightning test``,
and latent traversal pictures, when the datamodule knows its factors (dSprites, whose configs carry the callback;
elsewhere add ``--trainer.callbacks+=ae_lightning.training.disentanglement.DisentanglementMetrics``)."""

from __future__ import annotations

from collections.abc import Sequence

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info

from ae_lightning.evaluation import disentanglement
from ae_lightning.evaluation.disentanglement import AtLeastTen
from ae_lightning.evaluation.visualization import save_png
from ae_lightning.training.callbacks import run_directory
from datamodules.checks import AtLeastTwo, NonNegativeFloat, NonNegativeInt, check_arguments


class DisentanglementMetrics(Callback):
    """At the end of ``test``, logs ``test/<metric>`` for each metric (``dci`` as ``test/dci_disentanglement``,
    ``test/dci_completeness``, ``test/dci_informativeness``) and writes ``<log_dir>/traversals.png``; nothing if the
    datamodule has no ``sample_factors``. Settings the metrics cannot work with are refused when testing starts.

    Args:
        metrics: names from ``beta_vae``, ``factor_vae``, ``mig``, ``sap``, ``dci``.
        num_points: samples whose codes MIG, SAP and DCI see.
        num_votes: training points of the BetaVAE and FactorVAE scores (the BetaVAE classifier needs two factors).
        traversal_images: images whose traversals are drawn; 0 draws none.
        seed: seed of every draw.
        prune_threshold: the FactorVAE score's std below which a code dimension counts as collapsed and is left out
            (0.05 as disentanglement_lib, for codes on the prior's scale; 0 keeps all).
    """

    def __init__(
        self,
        metrics: Sequence[str] = tuple(disentanglement.DISENTANGLEMENT_METRICS),
        num_points: AtLeastTen = 10000,
        num_votes: AtLeastTwo = 500,
        traversal_images: NonNegativeInt = 2,
        seed: int = 0,
        prune_threshold: NonNegativeFloat = disentanglement.PRUNE_THRESHOLD,
    ) -> None:
        check_arguments(locals(), DisentanglementMetrics.__init__)
        disentanglement.check_seed(seed)  # here, not after the test loop, where the metrics seed their generators
        self.metrics = disentanglement.check_disentanglement_metrics(metrics)
        self.num_points = num_points
        self.num_votes = num_votes
        self.traversal_images = traversal_images
        self.seed = seed
        self.prune_threshold = prune_threshold

    def on_test_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        source = trainer.datamodule
        if hasattr(source, "sample_factors"):
            with torch.random.fork_rng(devices=[]):
                disentanglement.check_disentanglement_settings(
                    disentanglement.model_encoder(pl_module), source, self.metrics, self.num_votes
                )

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        source = trainer.datamodule
        if not hasattr(source, "sample_factors"):
            return
        encode = disentanglement.model_encoder(pl_module)
        with torch.random.fork_rng(devices=[]):
            scores = disentanglement.disentanglement_metrics(
                encode, source, self.metrics, self.num_points, self.num_votes, self.seed, self.prune_threshold
            )
        for name, value in scores.items():
            pl_module.log(f"test/{name}", value, rank_zero_only=True)
        log_dir = run_directory(trainer)  # a collective call under DDP: every rank asks, not only the one that writes
        if self.traversal_images and trainer.is_global_zero and not disentanglement.has_flat_codes(pl_module):
            rank_zero_info(f"latent traversals: not drawn, {type(pl_module).__name__}'s codes are not flat")
        elif self.traversal_images and trainer.is_global_zero:
            factors = source.sample_factors(self.traversal_images, torch.Generator().manual_seed(self.seed))
            path = log_dir / "traversals.png"
            log_dir.mkdir(parents=True, exist_ok=True)
            save_png(disentanglement.latent_traversals(pl_module, source.images_of(factors)), path)
            rank_zero_info(f"latent traversals: {path}")
