"""The conditional variational autoencoder (Sohn et al. 2015, "Learning Structured Output Representation using Deep
Conditional Generative Models"): the VAE with encoder and decoder conditioned on the image's label."""

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

Labels = Tensor | Sequence[int] | int | None


class ConditionalVAE(VAE):
    """The VAE with q(z | x, y) and p(x | z, y) for the label y, which ``encode``, ``decode`` and ``forward`` need.

    The label enters as a one-hot vector joined to the decoder's code and to the encoder's input (to the flattened
    image for the MLP, as constant channels for the convolutional encoder); the prior stays the standard normal.

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

    def class_labels(self, y: Labels, rows: int, call: str) -> Tensor:
        """Integer labels ``[rows]`` on the model's device from ``y``: ``rows`` labels (a tensor or a list), or one
        for all (an int or a 0-d tensor); a ValueError naming ``call`` and the labels otherwise."""
        if y is None:
            raise ValueError("the conditional VAE needs labels: pass y (the images' classes)")
        try:
            labels = torch.as_tensor(y, device=self.device)
        except (TypeError, ValueError, RuntimeError) as error:
            raise ValueError(f"{call} needs labels y: {rows} integers or one for all, got {y!r}") from error
        if labels.shape == (0,):  # no label to be of a wrong type; torch.as_tensor([]) is float32
            labels = labels.long()
        integer = not (labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool)
        if labels.dim() == 0 and not integer:
            raise ValueError(f"{call} needs integer class labels y, got {labels.item()!r} ({labels.dtype})")
        labels = labels.expand(rows) if labels.dim() == 0 else labels
        if not integer or labels.dim() != 1:
            raise ValueError(
                f"{call}: the labels y must be one integer class per image, a tensor [{rows}]; got a {labels.dtype} "
                f"tensor of shape {list(labels.shape)}"
            )
        labels = labels.long()  # one_hot takes int64 only, and torch has no min of uint16 to uint64
        if len(labels) != rows:
            raise ValueError(
                f"{call}: the labels y must be one for all or one per image: {rows} images (or codes), got "
                f"{len(labels)} labels"
            )
        if rows and (labels.min() < 0 or labels.max() >= self.num_classes):
            raise ValueError(
                f"{call}: labels must lie in 0..{self.num_classes - 1} (num_classes={self.num_classes}), got labels "
                f"from {labels.min().item()} to {labels.max().item()}"
            )
        return labels

    def posterior_parameters(self, x: Tensor, y: Labels = None) -> tuple[Tensor, Tensor]:
        condition = F.one_hot(self.class_labels(y, len(x), "encode(x, y)"), self.num_classes).to(x.dtype)
        if self.hparams.network == "conv":
            joined = torch.cat([x, condition[:, :, None, None].expand(-1, -1, *x.shape[2:])], 1)
        else:
            joined = torch.cat([x.flatten(1), condition], 1)
        return self.encoder(joined).chunk(2, dim=-1)

    def log_densities(
        self, x: Tensor, mu: Tensor, logvar: Tensor, num_samples: int, y: Labels = None
    ) -> tuple[Tensor, Tensor, Tensor]:
        labels = self.class_labels(y, len(x), "importance_weighted_nll(x, y=y)")  # as a tensor, to repeat per sample
        return super().log_densities(x, mu, logvar, num_samples, labels)

    def decoder_logits(self, z: Tensor, y: Labels = None) -> Tensor:
        condition = F.one_hot(self.class_labels(y, len(z), "decode(z, y)"), self.num_classes).to(z.dtype)
        return self.decoder(torch.cat([z, condition], 1))

    @torch.no_grad()
    def sample(self, n: int, y: Labels = None) -> Tensor:
        """``n`` images of the classes ``y`` (:meth:`class_labels`), by default the classes in turn, 0, 1, 2, ...;
        without an autograd graph (:meth:`AutoencoderModule.sample`)."""
        check_sample_count(n)
        y = torch.arange(n) % self.num_classes if y is None else y
        return self.decode(self.sample_prior(n), self.class_labels(y, n, f"sample(n={n})"))

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
