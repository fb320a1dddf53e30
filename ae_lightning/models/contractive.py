"""The contractive autoencoder (Rifai et al. 2011, "Contractive Auto-Encoders: Explicit Invariance During Feature
Extraction"): the squared Frobenius norm of the encoder's Jacobian with respect to the input as a penalty."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from ae_lightning.base import DeterministicAutoencoder
from ae_lightning.lightning_internals import has_forward_hooks
from datamodules.checks import NonNegativeFloat

# Elementwise activations whose derivative the closed form computes from the activation's output.
_DERIVATIVES = {
    nn.ReLU: lambda out: (out > 0).to(out.dtype),
    nn.Sigmoid: lambda out: out * (1 - out),
    nn.Tanh: lambda out: 1 - out * out,
}
# Normalizations by batch statistics: in training, an image's code depends on the other images of its batch.
_BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm,
                nn.LazyBatchNorm1d, nn.LazyBatchNorm2d, nn.LazyBatchNorm3d)  # fmt: skip


def encode_with_contraction(encoder: nn.Module, x: Tensor) -> tuple[Tensor, Tensor]:
    """The codes ``[B, latent_dim]`` of ``encoder(x)`` and, per image, the squared Frobenius norm ``[B]`` of the
    encoder's Jacobian at it, both differentiable: in closed form for a plain ``nn.Sequential`` MLP encoder, else by
    ``vmap(jacrev)`` (``docs/internals.md``)."""
    layers = _closed_form_layers(encoder)
    if layers is None:
        return encoder(x), jacobian_frobenius_norm_autodiff(encoder, x)
    h = x.flatten(1)
    weights: list[Tensor] = []  # W_1 ... W_L
    derivatives: list[Tensor | None] = []  # after each W_l: the [B, n] diagonal of D_l, or None (identity)
    for layer in layers:
        h = layer(h)
        if isinstance(layer, nn.Linear):
            weights.append(layer.weight)
            derivatives.append(None)
        elif type(layer) in _DERIVATIVES:
            derivative = _DERIVATIVES[type(layer)](h)
            derivatives[-1] = derivative if derivatives[-1] is None else derivatives[-1] * derivative
    return h, _chain_frobenius_norm(weights, derivatives, len(x))


def jacobian_frobenius_norm_autodiff(encoder: nn.Module, x: Tensor) -> Tensor:
    """Per image, the squared Frobenius norm of the Jacobian of ``encoder`` at ``x``, with ``torch.func``."""
    jacobian = torch.func.jacrev(lambda image: encoder(image.unsqueeze(0)).squeeze(0))
    jacobians = torch.func.vmap(jacobian, randomness="different")(x)
    return jacobians.flatten(1).pow(2).sum(1)


def _closed_form_layers(encoder: nn.Module) -> list[nn.Module] | None:
    """The layers of an ``nn.Sequential`` of ``Flatten``, ``Linear``, ReLU/sigmoid/tanh and inactive dropout, none
    overriding ``forward`` or with forward hooks (the closed form runs the layers itself), else None."""
    if not _runs_as(encoder, nn.Sequential) or any(map(has_forward_hooks, [encoder, *encoder])):
        return None
    layers = list(encoder)
    if layers and _runs_as(layers[0], nn.Flatten):
        layers = layers[1:]
    if not layers or not _runs_as(layers[0], nn.Linear):
        return None
    for layer in layers:
        inactive_dropout = _runs_as(layer, nn.Dropout) and not (layer.training and layer.p > 0)
        if not (_runs_as(layer, nn.Linear) or type(layer) in _DERIVATIVES or inactive_dropout):
            return None
    return layers


def _runs_as(module: nn.Module, cls: type[nn.Module]) -> bool:
    """Whether ``module`` is a ``cls`` that computes what ``cls`` does (a subclass may override ``forward``)."""
    return isinstance(module, cls) and type(module).forward is cls.forward


def _chain_frobenius_norm(weights: list[Tensor], derivatives: list[Tensor | None], batch_size: int) -> Tensor:
    """Per image, ``||D_L W_L ... D_1 W_1||_F^2`` for weights ``W_l`` and diagonals ``D_l`` (None: identity)."""
    a: Tensor | None = None  # D_L W_L ... D_2 W_2 D_1: None (identity), [out, n] shared, or [B, out, n] per image
    for i in reversed(range(len(weights))):
        if i < len(weights) - 1:
            a = weights[i + 1] if a is None else a @ weights[i + 1]
        if derivatives[i] is not None:
            d = derivatives[i]
            a = torch.diag_embed(d) if a is None else a * d.unsqueeze(-2)
    first = weights[0]
    if a is None:
        return first.pow(2).sum().expand(batch_size)
    if a.dim() == 2:
        return (a @ first).pow(2).sum().expand(batch_size)
    rows, hidden, inputs = a.shape[1], first.shape[0], first.shape[1]
    # The Gram route costs hidden^2 * inputs once plus batch * rows * hidden^2; forming A W_1 costs
    # batch * rows * hidden * inputs. Take the cheaper.
    if hidden * hidden * (inputs + batch_size * rows) < batch_size * rows * hidden * inputs:
        return ((a @ (first @ first.T)) * a).sum((1, 2))
    return (a @ first).pow(2).sum((1, 2))


class ContractiveAutoencoder(DeterministicAutoencoder):
    """An autoencoder penalized by the squared Frobenius norm of its encoder's Jacobian, ``||dz/dx||_F^2``: the loss
    is ``recon + contractive_weight * contraction``, the batch mean of :func:`encode_with_contraction`'s norms."""

    flat_codes_only = "the Jacobian of a spatial code (every element by every pixel) is too large to form per image"

    def __init__(self, contractive_weight: NonNegativeFloat = 0.1, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        norms = [(name, module) for name, module in self.encoder.named_modules() if isinstance(module, _BATCH_NORMS)]
        if norms:
            name, norm = norms[0]
            raise ValueError(
                f"ContractiveAutoencoder penalizes each image's Jacobian, but the encoder's {type(norm).__name__} "
                f"{name!r} normalizes by the statistics of the whole batch in training, so no image has a Jacobian "
                "of its own: use LayerNorm or GroupNorm in the encoder"
            )
        self.contractive_weight = contractive_weight

    def loss_terms(self, x: Tensor, labels: Tensor, indices: Tensor) -> dict[str, Tensor]:
        z, contraction = encode_with_contraction(self.encoder, x)
        recon = self.mean_reconstruction_loss(self.decoder(z), x)
        contraction = contraction.mean()
        return {"loss": recon + self.contractive_weight * contraction, "recon": recon, "contraction": contraction}
