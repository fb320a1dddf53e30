"""The conditional variational autoencoder (Sohn et al. 2015, "Learning Structured Output Representation using Deep
Conditional Generative Models"): the VAE with encoder and decoder conditioned on the image's label.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ae_lightning.base import Batch
from ae_lightning.blocks.networks import build_decoder, build_encoder
from ae_lightning.checks import check_number
from ae_lightning.models.vae import VAE


class Conditioned(nn.Module):
    """Wraps a network so that its input is joined with the one-hot label set in ``condition``.

    ``flat`` joins the label to the flattened input (an MLP's input, or a decoder's code); ``channels`` appends it
    as constant image channels (a convolutional encoder's input). An input with k times as many rows as the
    condition (k samples per image, flattened sample-major as in the importance-weighted bound) repeats it k times.

    Args:
        network: the wrapped network.
        join: ``flat`` or ``channels``.
    """

    def __init__(self, network: nn.Module, join: str) -> None:
        super().__init__()
        self.network = network
        self.join = join
        self.condition: Tensor | None = None

    def forward(self, inputs: Tensor) -> Tensor:
        if self.condition is None:
            raise ValueError("the conditional VAE needs labels: pass labels= or run inside conditioned_on(labels)")
        condition = self.condition.to(inputs.dtype)
        if len(inputs) != len(condition):
            condition = condition.repeat(len(inputs) // len(condition), 1)
        if self.join == "channels":
            maps = condition[:, :, None, None].expand(-1, -1, *inputs.shape[2:])
            return self.network(torch.cat([inputs, maps], 1))
        return self.network(torch.cat([inputs.flatten(1), condition], 1))


class ConditionalVAE(VAE):
    """The VAE of :class:`~ae_lightning.models.vae.VAE` with q(z | x, y) and p(x | z, y) for the label y.

    The label enters as a one-hot vector joined to the decoder's code and to the encoder's input (to the flattened
    image for the MLP, as constant channels for the convolutional encoder). Loss, KL warm-up, test-time bound and
    anomaly score are the VAE's, each conditioned on the batch's labels; the prior p(z) stays the standard normal.
    ``encode``, ``decode`` and ``forward`` take the labels; ``sample(n, labels)`` draws images of given classes.

    Args:
        num_classes: number of labels; labels lie in ``0 .. num_classes - 1``.
        **kwargs: the :class:`~ae_lightning.models.vae.VAE` arguments.
    """

    flat_codes_only = "the label joins the decoder's input as a flat one-hot vector beside the code"

    def __init__(self, num_classes: int = 10, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        check_number("num_classes", num_classes, "[1, inf)", integer=True)
        self.num_classes = num_classes
        network, hidden_dims = self.hparams.network, self.hparams.hidden_dims
        # The VAE's unconditioned networks are replaced by ones with room for the label.
        if network == "conv":
            channels, height, width = self.input_shape
            encoder = build_encoder(network, (channels + num_classes, height, width), hidden_dims, 2 * self.latent_dim)
        else:
            encoder = build_encoder(
                network, (math.prod(self.input_shape) + num_classes,), hidden_dims, 2 * self.latent_dim
            )
        self.encoder = Conditioned(encoder, "channels" if network == "conv" else "flat")
        decoder = build_decoder(network, self.latent_dim + num_classes, hidden_dims, self.input_shape)
        self.decoder = Conditioned(decoder, "flat")

    @contextmanager
    def conditioned_on(self, labels: Tensor) -> Iterator[None]:
        """Within this context, the networks are conditioned on ``labels`` ``[B]``."""
        if labels.min() < 0 or labels.max() >= self.num_classes:
            raise ValueError(
                f"labels must lie in 0..{self.num_classes - 1} (num_classes={self.num_classes}), got labels from "
                f"{labels.min().item()} to {labels.max().item()}"
            )
        previous = self.encoder.condition, self.decoder.condition
        one_hot = F.one_hot(labels.long(), self.num_classes).float()
        self.encoder.condition = self.decoder.condition = one_hot
        try:
            yield
        finally:
            self.encoder.condition, self.decoder.condition = previous

    # --- the public API ---------------------------------------------------------------------------------------------
    def encode(self, x: Tensor, labels: Tensor | None = None) -> Tensor:
        """The posterior mean given images ``x`` and their ``labels``."""
        with self._maybe_conditioned(labels):
            return super().encode(x)

    def decode(self, z: Tensor, labels: Tensor | None = None) -> Tensor:
        """Images in [0, 1] decoded from codes ``z`` for ``labels``."""
        with self._maybe_conditioned(labels):
            return super().decode(z)

    def forward(self, x: Tensor, labels: Tensor | None = None) -> Tensor:
        """Reconstructions of images ``x`` with ``labels``."""
        with self._maybe_conditioned(labels):
            return super().forward(x)

    def sample(self, n: int, labels: Tensor | None = None) -> Tensor:
        """``n`` images of the classes ``labels`` ``[n]``; by default the classes in turn, 0, 1, 2, ..."""
        if labels is None:
            labels = torch.arange(n, device=self.device) % self.num_classes
        if len(labels) != n:
            raise ValueError(f"sample(n={n}) needs n labels, got {len(labels)}")
        return self.decode(torch.randn(n, self.latent_dim, device=self.device), labels.to(self.device))

    def _maybe_conditioned(self, labels: Tensor | None) -> AbstractContextManager:
        return self.conditioned_on(labels) if labels is not None else nullcontext()

    def setup(self, stage: str) -> None:
        super().setup(stage)
        splits = getattr(getattr(self.trainer, "datamodule", None), "splits", None) or {}
        for split, (_, labels) in splits.items():
            if len(labels) and (labels.min() < 0 or labels.max() >= self.num_classes):
                raise ValueError(
                    f"ConditionalVAE is conditioned on labels 0..{self.num_classes - 1} (num_classes), but the "
                    f"{split} split's labels range over {labels.min().item()}..{labels.max().item()} (-1: no labels)"
                )

    # --- steps: the VAE's, conditioned on the batch's labels --------------------------------------------------------
    def loss_terms(self, x: Tensor, labels: Tensor, indices: Tensor) -> dict[str, Tensor]:
        with self.conditioned_on(labels):
            return super().loss_terms(x, labels, indices)

    def test_step(self, batch: Batch, batch_idx: int) -> None:
        with self.conditioned_on(batch[1]):
            super().test_step(batch, batch_idx)

    def predict_step(self, batch: Batch, batch_idx: int) -> dict[str, Tensor]:
        with self.conditioned_on(batch[1]):
            return super().predict_step(batch, batch_idx)
