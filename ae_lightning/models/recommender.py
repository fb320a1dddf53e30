"""Autoencoders for collaborative filtering: Mult-VAE and Mult-DAE (Liang, Krishnan, Hoffman & Jebara 2018,
"Variational Autoencoders for Collaborative Filtering")."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor, nn

from ae_lightning.base import AutoencoderModule, Batch, Stage, unpack_batch
from ae_lightning.blocks import losses
from ae_lightning.blocks.networks import mlp_layers
from ae_lightning.evaluation.ranking import ranking_metrics
from ae_lightning.lightning_internals import weighted_batch_size
from datamodules.checks import Fraction, NonNegativeFloat, NonNegativeInt, PositiveInt
from datamodules.interactions import InteractionsDataModule


def tanh_mlp(sizes: Sequence[int], tanh_last: bool = False) -> nn.Sequential:
    """Linear layers with tanh between them (the paper's activation), and after the last if ``tanh_last``."""
    return nn.Sequential(*mlp_layers(sizes, nn.Tanh), *([nn.Tanh()] if tanh_last else []))


class MultinomialAutoencoder(AutoencoderModule):
    """Base of Mult-VAE and Mult-DAE: the click vector, L2-normalized and dropped out, is encoded and decoded to logits
    over every item, scored by the multinomial log-likelihood of the clicks.

    Batches are ``(clicks [B, I], held_out [B, I], user [B])`` of an :class:`~datamodules.InteractionsDataModule`.
    Validation and test log ``recall_20``, ``recall_50`` and ``ndcg_100`` of the held-out items, ``test`` also the
    popularity ranking's (``test/popularity_<metric>``). Data of other items (or training users) are refused.

    Args:
        input_shape: ``(num_items,)``; the CLI links it from the datamodule.
        latent_dim: size of the user's code (the paper's 200).
        hidden_dims: widths of the encoder's hidden layers (the paper's [600]); the decoder mirrors them.
        input_dropout: dropout rate on the normalized click vector, in training only (the paper's 0.5).
        **kwargs: the other :class:`~ae_lightning.base.AutoencoderModule` arguments.
    """

    def __init__(
        self,
        input_shape: Sequence[PositiveInt] = (1,),
        latent_dim: PositiveInt = 200,
        hidden_dims: Sequence[PositiveInt] = (600,),
        input_dropout: Fraction = 0.5,
        **kwargs: Any,
    ) -> None:
        if len(input_shape) != 1:
            raise ValueError(
                f"{type(self).__name__} takes click vectors, input_shape (num_items,), got input_shape "
                f"{tuple(input_shape)}; use an InteractionsDataModule, which sets it"
            )
        if kwargs.get("network", "mlp") != "mlp":
            raise ValueError(f"{type(self).__name__} has an MLP encoder and decoder, got network {kwargs['network']!r}")
        super().__init__(input_shape=input_shape, latent_dim=latent_dim, hidden_dims=hidden_dims, **kwargs)
        self.input_dropout = input_dropout
        # Training users per item, filled from the datamodule (and kept in checkpoints): the popularity baseline.
        # Integers, which a half-precision Trainer leaves exact (bf16 rounds counts above 256 into ties).
        self.register_buffer("item_popularity", torch.zeros(self.input_shape[0], dtype=torch.long))
        # The datamodule's ``split_record``: the data the weights belong to (from the checkpoint, or the first setup).
        self.trained_on: dict[str, Any] | None = None

    def normalize(self, clicks: Tensor) -> Tensor:
        """The encoder's input: each click vector scaled to unit L2 norm, then dropped out in training."""
        return F.dropout(F.normalize(clicks, dim=-1), self.input_dropout, training=self.training)

    def build_decoder(self) -> nn.Module:
        return tanh_mlp([self.latent_dim, *reversed(self.hparams.hidden_dims), self.input_shape[0]])

    def decode(self, z: Tensor, y: Tensor | None = None) -> Tensor:
        """Item probabilities ``[B, I]`` (each row sums to 1) decoded from codes ``z``."""
        self.check_tensor(z, "decode(z)", codes=True)
        return self.decoder(z).softmax(-1)

    def item_scores(self, clicks: Tensor) -> Tensor:
        """Logits ``[B, I]`` of every item for the users with ``clicks``, outside autocast (in bf16, most of a user's
        top 100 would tie)."""
        with torch.autocast(clicks.device.type, enabled=False):
            return self.decoder(self.encode(clicks))

    def recommend(self, clicks: Tensor, k: int) -> Tensor:
        """The ``k`` likeliest unclicked items ``[B, k]`` per user, best first (-1 past the last); 1 <= ``k`` <= I."""
        if not 1 <= k <= clicks.shape[-1]:
            raise ValueError(f"k={k}: expected 1 to {clicks.shape[-1]} (the number of items)")
        scores = self.item_scores(clicks).masked_fill(clicks > 0, float("-inf"))
        top = scores.topk(k, dim=-1)
        return top.indices.masked_fill(top.values == float("-inf"), -1)

    def anomaly_score(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        """The negative multinomial log-likelihood of each user's clicks (higher: a less typical user)."""
        return -losses.multinomial_log_likelihood(self.item_scores(x), x)

    def _predict_step(self, batch: Batch) -> dict[str, Tensor]:
        """Each user's code ``z``, row ``index`` and ``top_items`` ``[B, 100]`` (:meth:`recommend`'s item columns)."""
        clicks, _, rows = batch
        items = self.recommend(clicks, min(100, clicks.shape[1]))
        return {"z": self.encode(clicks), "index": rows, "top_items": F.pad(items, (0, 100 - items.shape[1]), value=-1)}

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        super().validation_step(batch, batch_idx)
        self.log_ranking_metrics(batch, "val")

    def test_step(self, batch: Batch, batch_idx: int) -> None:
        # The loss terms and rankings: click vectors have no pixels for the base's reconstruction metrics.
        with self.evaluation_randomness(batch_idx):
            self._shared_step(batch, "test")
        self.log_ranking_metrics(batch, "test")

    def log_ranking_metrics(self, batch: Batch, stage: Stage) -> None:
        """Log the ranking metrics of ``batch``'s held-out items as ``<stage>/<metric>``."""
        clicks, held_out, _ = unpack_batch(batch)
        rankings = {"": self.item_scores(clicks)}
        if stage == "test" and self.item_popularity.any():
            rankings["popularity_"] = self.popularity_scores().expand_as(clicks)
        batch_size = weighted_batch_size(len(clicks))
        for prefix, scores in rankings.items():
            scores = scores.float().masked_fill(clicks > 0, float("-inf"))  # recommend only unclicked items
            for name, values in ranking_metrics(scores, held_out).items():
                self.log(f"{stage}/{prefix}{name}", values.mean(), batch_size=batch_size, sync_dist=True)

    def popularity_scores(self) -> Tensor:
        """Scores ``[I]`` of the popularity ranking: the most training users first, ties by the lower item column (all
        distinct, so that every top k of it is a prefix of this one ranking)."""
        order = self.item_popularity.argsort(descending=True, stable=True)
        scores = torch.empty(len(order), device=order.device)
        scores[order] = torch.arange(len(order), 0, -1, dtype=scores.dtype, device=order.device)
        return scores

    def check_data(self, datamodule: Any, stage: str, checkpoint: dict[str, Any] | None = None) -> None:
        """Raise a ValueError unless ``datamodule`` is an InteractionsDataModule of the weights' items and users."""
        if not isinstance(datamodule, InteractionsDataModule):
            raise ValueError(
                f"{type(self).__name__} ranks each user's held-out clicks and needs the (clicks, held_out, user) "
                f"batches of an InteractionsDataModule, got {type(datamodule).__name__}"
            )
        record = self.trained_on if checkpoint is None else checkpoint.get("ae_lightning_interactions")
        if record is not None:
            datamodule.check_split_record(record, type(self).__name__, users=stage != "predict")

    def setup(self, stage: str) -> None:
        datamodule = self.trainer.datamodule
        if datamodule is not None:  # before the base's check of the input shape, which names no item
            self.check_data(datamodule, stage)
        super().setup(stage)
        if datamodule is None:  # loaders given to the Trainer directly: no items or counts to record
            return
        if self.trained_on is None:
            self.trained_on = datamodule.split_record()
        self.item_popularity.copy_(datamodule.item_counts)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        if self.trained_on is not None:
            checkpoint["ae_lightning_interactions"] = self.trained_on

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        stored = checkpoint.get("ae_lightning_interactions")
        if stored is None:
            rank_zero_warn(
                f"the {type(self).__name__} checkpoint records neither its item ids nor its training users (an "
                "earlier release's, or trained without an InteractionsDataModule), so data whose items or split differ "
                "cannot be told: use it only with the data and split settings it was trained with"
            )
            return
        trainer = self._attached_trainer()  # None from load_from_checkpoint: ``setup`` checks the data
        if trainer is not None and isinstance(trainer.datamodule, InteractionsDataModule):  # restored after ``setup``
            self.check_data(trainer.datamodule, trainer.state.fn, checkpoint)
        self.trained_on = stored


class MultVAE(MultinomialAutoencoder):
    """Mult-VAE: a Gaussian posterior, a standard-normal prior, the KL weighted by ``min(anneal_cap, step /
    anneal_steps)`` (eq. 6-7); ``sample(n)`` gives the item probabilities ``[n, I]`` of users from the prior.

    Args:
        anneal_cap: the largest KL weight (the paper's best: 0.2 on MovieLens-20M).
        anneal_steps: steps over which the KL weight rises linearly from 0 to 1, capped; 0: ``anneal_cap`` at once.
        **kwargs: the :class:`MultinomialAutoencoder` arguments.
    """

    is_generative = True

    def __init__(
        self, anneal_cap: NonNegativeFloat = 0.2, anneal_steps: NonNegativeInt = 200_000, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.anneal_cap = anneal_cap
        self.anneal_steps = anneal_steps

    def build_encoder(self) -> nn.Module:
        return tanh_mlp([self.input_shape[0], *self.hparams.hidden_dims, 2 * self.latent_dim])

    def posterior_parameters(self, clicks: Tensor) -> tuple[Tensor, Tensor]:
        """Mean and log-variance ``[B, latent_dim]`` of q(z | clicks)."""
        return self.encoder(self.normalize(clicks)).chunk(2, dim=-1)

    def encode(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        """The posterior mean."""
        self.check_tensor(x, "encode(x)")
        return self.posterior_parameters(x)[0]

    def sample_prior(self, n: int) -> Tensor:
        """``n`` codes ``[n, latent_dim]`` of the standard normal prior, in the weights' dtype."""
        return losses.standard_normal((n, self.latent_dim), self.device, self.dtype)

    def kl_weight(self) -> float:
        """Annealed to ``anneal_cap`` in training."""
        if self.anneal_steps == 0 or not self.training:
            return self.anneal_cap
        return min(self.anneal_cap, self.global_step / self.anneal_steps)

    def loss_terms(self, x: Tensor, labels: Tensor, indices: Tensor) -> dict[str, Tensor]:
        mu, logvar = self.posterior_parameters(x)
        z = losses.reparameterize(mu, logvar) if self.training else mu
        recon = -losses.multinomial_log_likelihood(self.decoder(z), x).mean()
        kl = losses.kl_divergence_normal(mu, logvar).mean()
        beta = self.kl_weight()
        terms = {"loss": recon + beta * kl, "recon": recon, "kl": kl}
        return terms | {"beta": torch.tensor(beta)} if self.training else terms


class MultDAE(MultinomialAutoencoder):
    """Mult-DAE: the same network with a deterministic tanh code and no KL term; the input dropout is its noise."""

    def build_encoder(self) -> nn.Module:
        return tanh_mlp([self.input_shape[0], *self.hparams.hidden_dims, self.latent_dim], tanh_last=True)

    def encode(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        self.check_tensor(x, "encode(x)")
        return self.encoder(self.normalize(x))

    def loss_terms(self, x: Tensor, labels: Tensor, indices: Tensor) -> dict[str, Tensor]:
        recon = -losses.multinomial_log_likelihood(self.decoder(self.encode(x)), x).mean()
        return {"loss": recon, "recon": recon}


__all__ = ["MultDAE", "MultVAE", "MultinomialAutoencoder", "tanh_mlp"]
