"""Restricted Boltzmann machines with binary visible units and contrastive divergence (Hinton 2002), as pure
functions: ``weight`` ``[H, V]`` (``nn.Linear(V, H)``'s layout), ``visible_bias`` ``[V]``, ``hidden_bias`` ``[H]``,
energy ``E(v, h) = -v . b_v - h . b_h - h W v`` (plus ``|h|^2 / 2`` for Gaussian hidden units, as in the code layer
of Hinton & Salakhutdinov 2006)."""

from __future__ import annotations

from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from datamodules.checks import check_number

Hidden = Literal["bernoulli", "gaussian"]


def hidden_mean(v: Tensor, weight: Tensor, hidden_bias: Tensor, hidden: Hidden = "bernoulli") -> Tensor:
    """E[h | v] ``[B, H]``: ``sigmoid(W v + b_h)`` for Bernoulli units, ``W v + b_h`` for Gaussian ones."""
    pre = F.linear(v, weight, hidden_bias)
    return torch.sigmoid(pre) if hidden == "bernoulli" else pre


def visible_mean(h: Tensor, weight: Tensor, visible_bias: Tensor) -> Tensor:
    """p(v = 1 | h) ``[B, V]`` = ``sigmoid(W^T h + b_v)``."""
    return torch.sigmoid(F.linear(h, weight.t(), visible_bias))


def sample_hidden(mean: Tensor, hidden: Hidden = "bernoulli", generator: torch.Generator | None = None) -> Tensor:
    """h ~ p(h | v) from its mean: Bernoulli draws, or the mean plus N(0, 1) noise for Gaussian units."""
    if hidden == "bernoulli":
        return torch.bernoulli(mean, generator=generator)
    return mean + torch.randn(mean.shape, generator=generator, device=mean.device, dtype=torch.float32).to(mean.dtype)


def free_energy(
    v: Tensor, weight: Tensor, visible_bias: Tensor, hidden_bias: Tensor, hidden: Hidden = "bernoulli"
) -> Tensor:
    """F(v) per row, with ``p(v) = exp(-F(v)) / Z``: ``-v . b_v - sum softplus(W v + b_h)`` for Bernoulli hidden
    units, ``-v . b_v - |W v + b_h|^2 / 2`` for Gaussian ones (dropping the constant ``H/2 log 2 pi``)."""
    pre = F.linear(v, weight, hidden_bias)
    hidden_term = F.softplus(pre).sum(-1) if hidden == "bernoulli" else 0.5 * pre.pow(2).sum(-1)
    return -v @ visible_bias - hidden_term


class Statistics(NamedTuple):
    """Batch means of the sufficient statistics: ``<h v^T>`` ``[H, V]``, ``<v>`` ``[V]`` and ``<h>`` ``[H]``."""

    weight: Tensor
    visible_bias: Tensor
    hidden_bias: Tensor


def statistics(v: Tensor, h: Tensor) -> Statistics:
    """The sufficient statistics of visible states ``v`` ``[B, V]`` and hidden means ``h`` ``[B, H]``."""
    return Statistics(h.t() @ v / len(v), v.mean(0), h.mean(0))


class ContrastiveDivergence(NamedTuple):
    """The two phases of CD-k and the mean reconstruction p(v | h_0) of the data."""

    positive: Statistics
    negative: Statistics
    reconstruction: Tensor

    def gradient(self) -> Statistics:
        """The CD-k estimate of the gradient of the mean log-likelihood: positive minus negative statistics."""
        return Statistics(*(p - n for p, n in zip(self.positive, self.negative)))


def contrastive_divergence(
    v: Tensor,
    weight: Tensor,
    visible_bias: Tensor,
    hidden_bias: Tensor,
    k: int = 1,
    hidden: Hidden = "bernoulli",
    generator: torch.Generator | None = None,
) -> ContrastiveDivergence:
    """CD-k on data ``v`` ``[B, V]`` (binary, or probabilities in [0, 1]): the data with their hidden means E[h | v],
    against ``k`` >= 1 steps of block Gibbs sampling from the data with the last state's means; ``generator`` (on
    ``v``'s device) or the global one draws the samples."""
    check_number("k (Gibbs steps of contrastive divergence)", k, "[1, inf)", integer=True)
    data_hidden = hidden_mean(v, weight, hidden_bias, hidden)
    h = sample_hidden(data_hidden, hidden, generator)
    reconstruction = visible_mean(h, weight, visible_bias)
    for step in range(k):
        mean = reconstruction if step == 0 else visible_mean(h, weight, visible_bias)
        visible = torch.bernoulli(mean, generator=generator)
        model_hidden = hidden_mean(visible, weight, hidden_bias, hidden)
        h = sample_hidden(model_hidden, hidden, generator)
    return ContrastiveDivergence(statistics(v, data_hidden), statistics(visible, model_hidden), reconstruction)


__all__ = [
    "ContrastiveDivergence",
    "Statistics",
    "contrastive_divergence",
    "free_energy",
    "hidden_mean",
    "sample_hidden",
    "statistics",
    "visible_mean",
]
