"""The conditional variational autoencoder (Sohn et al. 2015, "Learning Structured Output Representation using Deep
Conditional Generative Models"): the VAE with encoder and decoder conditioned on the image's label.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor, nn

from ae_lightning.base import check_sample_count
from ae_lightning.blocks import networks
from ae_lightning.models.vae import VAE
from datamodules.checks import PositiveInt


class ConditionalVAE(VAE):
    """The VAE of :class:`~ae_lightning.models.vae.VAE` with q(z | x, y) and p(x | z, y) for the label y.

    The label enters as a one-hot vector joined to the decoder's code and to the encoder's input (to the flattened
    image for the MLP, as constant channels for the convolutional encoder); the prior stays the standard normal.
    ``encode(x, y)``, ``decode(z, y)`` and ``forward(x, y)`` need the labels.

    Args:
        num_classes: number of labels; labels lie in ``0 .. num_classes - 1``.
        **kwargs: the :class:`~ae_lightning.models.vae.VAE` arguments; a given ``encoder`` takes the input with the
            label joined as above, a given ``decoder`` codes ``[B, latent_dim + num_classes]``.
    """

    # Releases before 0.2 wrapped each network in a module that held the labels.
    renamed_weights: ClassVar[dict[str, str]] = {"encoder.network.": "encoder.", "decoder.network.": "decoder."}
    flat_codes_only = "the label joins the decoder's input as a flat one-hot vector beside the code"

    def __init__(self, num_classes: PositiveInt = 10, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.num_classes = num_classes

    def build_encoder(self) -> nn.Module:
        hp = self.hparams
        if hp.network == "conv":  # the one-hot label as constant channels
            shape = (self.input_shape[0] + hp.num_classes, *self.input_shape[1:])
        else:
            shape = (math.prod(self.input_shape) + hp.num_classes,)
        return networks.build_encoder(hp.network, shape, hp.hidden_dims, 2 * self.latent_dim)

    def build_decoder(self) -> nn.Module:
        hp = self.hparams
        return networks.build_decoder(hp.network, self.latent_dim + hp.num_classes, hp.hidden_dims, self.input_shape)

    def one_hot(self, y: Tensor | None, rows: int) -> Tensor:
        """One-hot labels ``[rows, num_classes]`` of the integer labels ``y`` ``[rows]``."""
        if y is None:
            raise ValueError("the conditional VAE needs labels: pass y (the images' classes)")
        integer = isinstance(y, Tensor) and not (y.is_floating_point() or y.is_complex() or y.dtype == torch.bool)
        if not integer or y.dim() != 1:
            found = f"a {y.dtype} tensor of shape {list(y.shape)}" if isinstance(y, Tensor) else type(y).__name__
            raise ValueError(f"the labels y must be one integer class per image, a tensor [{rows}]; got {found}")
        if len(y) != rows:
            raise ValueError(f"the labels y must be one per image: {rows} images (or codes), got {len(y)} labels")
        if rows and (y.min() < 0 or y.max() >= self.num_classes):
            raise ValueError(
                f"labels must lie in 0..{self.num_classes - 1} (num_classes={self.num_classes}), got labels from "
                f"{y.min().item()} to {y.max().item()}"
            )
        return F.one_hot(y.long(), self.num_classes)

    def posterior_parameters(self, x: Tensor, y: Tensor | None = None) -> tuple[Tensor, Tensor]:
        condition = self.one_hot(y, len(x)).to(x.dtype)
        if self.hparams.network == "conv":
            joined = torch.cat([x, condition[:, :, None, None].expand(-1, -1, *x.shape[2:])], 1)
        else:
            joined = torch.cat([x.flatten(1), condition], 1)
        return self.encoder(joined).chunk(2, dim=-1)

    def decoder_logits(self, z: Tensor, y: Tensor | None = None) -> Tensor:
        return self.decoder(torch.cat([z, self.one_hot(y, len(z)).to(z.dtype)], 1))

    def sample(self, n: int, y: Tensor | Sequence[int] | int | None = None) -> Tensor:
        """``n`` images of the classes ``y``: ``n`` labels (a tensor ``[n]`` or a list), one label for all (an int or a
        0-d tensor); by default the classes in turn, 0, 1, 2, ..."""
        check_sample_count(n)
        if y is None:
            y = torch.arange(n) % self.num_classes
        try:
            y = torch.as_tensor(y, device=self.device)
        except (TypeError, ValueError, RuntimeError) as error:
            raise ValueError(f"sample(n={n}) needs labels y: {n} integers or one for all, got {y!r}") from error
        if y.dim() == 1 and len(y) == 0:  # no label to be of a wrong type; torch.as_tensor([]) is float32
            y = y.long()
        if y.dim() == 0:
            if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
                raise ValueError(f"sample(n={n}) needs integer class labels y, got {y.item()!r} ({y.dtype})")
            y = y.expand(n)
        if y.dim() == 1 and len(y) != n:
            raise ValueError(f"sample(n={n}) needs n labels (or one for all), got {len(y)}")
        return self.decode(self.sample_prior(n), y)

    def setup(self, stage: str) -> None:
        super().setup(stage)
        splits = getattr(getattr(self.trainer, "datamodule", None), "splits", None) or {}
        for split, (_, labels) in splits.items():
            if len(labels) and (labels.min() < 0 or labels.max() >= self.num_classes):
                raise ValueError(
                    f"ConditionalVAE is conditioned on labels 0..{self.num_classes - 1} (num_classes), but the "
                    f"{split} split's labels range over {labels.min().item()}..{labels.max().item()} (-1: no labels)"
                )
        trained = splits["train"][1].unique().tolist() if stage == "fit" and "train" in splits else None
        if trained is not None and len(trained) < self.num_classes:
            shown = ", ".join(map(str, trained[:10])) + (", ..." if len(trained) > 10 else "")
            rank_zero_warn(
                f"ConditionalVAE has num_classes={self.num_classes}, but the train split holds only the labels "
                f"{shown}: sample(n) draws the classes 0..{self.num_classes - 1} in turn, and a label never trained "
                "on gives meaningless images; set num_classes to the data's classes, or pass the labels to sample(n, y)"
            )
