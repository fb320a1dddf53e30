"""The VAEs' regularizers beyond the closed-form KL: pure functions with explicit reductions, codes ``[B, D]``, nats."""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor

from ae_lightning.blocks.losses import LOG_2PI, standard_normal_log_prob

Kernel = Literal["rbf", "imq"]
DipType = Literal["i", "ii"]


def gaussian_log_density(z: Tensor, mu: Tensor, logvar: Tensor) -> Tensor:
    """log N(z | mu, exp(logvar)) per dimension (nothing summed); the arguments broadcast."""
    return -0.5 * ((z - mu).pow(2) * torch.exp(-logvar) + logvar + LOG_2PI)


def total_correlation_terms(
    z: Tensor, mu: Tensor, logvar: Tensor, dataset_size: int, estimator: Literal["mws", "mss"] = "mws"
) -> dict[str, Tensor]:
    """The ELBO's KL term split as Chen et al. 2018, means over ``z [M, D]`` from ``N(mu, exp(logvar))``, a minibatch
    of a dataset of ``dataset_size``: ``mi = E[log q(z | x) - log q(z)]``, ``tc = E[log q(z) - sum_d log q(z_d)]``,
    ``dwkl = E[sum_d log q(z_d) - log p(z)]``, ``log q`` by ``estimator`` ``mws`` or ``mss`` (``docs/family.md``)."""
    if dataset_size < 1:
        raise ValueError(f"dataset_size must be >= 1, got {dataset_size}")
    if estimator not in ("mws", "mss"):
        raise ValueError(f"estimator must be 'mws' or 'mss', got {estimator!r}")
    batch = len(z)
    # [M, M, D]: log q(z_i,d | x_j) for every pair of a code i and a posterior j
    pairwise = gaussian_log_density(z[:, None, :], mu[None, :, :], logvar[None, :, :])
    if estimator == "mws":
        log_weights = z.new_full((batch, batch), -math.log(dataset_size * batch))
    else:
        other = (dataset_size - 1) / (dataset_size * max(batch - 1, 1))
        log_weights = z.new_full((batch, batch), math.log(other) if other else -math.inf)
        log_weights.fill_diagonal_(-math.log(dataset_size))
    log_q_z = torch.logsumexp(pairwise.sum(-1) + log_weights, dim=1)
    log_prod_marginals = torch.logsumexp(pairwise + log_weights[..., None], dim=1).sum(-1)
    log_q_z_given_x = gaussian_log_density(z, mu, logvar).sum(-1)
    log_p_z = standard_normal_log_prob(z)
    return {
        "mi": (log_q_z_given_x - log_q_z).mean(),
        "tc": (log_q_z - log_prod_marginals).mean(),
        "dwkl": (log_prod_marginals - log_p_z).mean(),
    }


def dip_regularizer(
    mu: Tensor, logvar: Tensor, dip_type: DipType, off_diagonal_weight: float, diagonal_weight: float
) -> Tensor:
    """The DIP-VAE penalty (Kumar et al. 2018) of a batch: ``off_diagonal_weight sum_{i != j} C_ij^2 +
    diagonal_weight sum_i (C_ii - 1)^2``, ``C`` the covariance of the means ``mu [M, D]`` (``i``), plus the mean
    variance ``exp(logvar)`` on the diagonal (``ii``)."""
    if dip_type not in ("i", "ii"):
        raise ValueError(f"dip_type must be 'i' or 'ii', got {dip_type!r}")
    centered = mu - mu.mean(0, keepdim=True)
    covariance = centered.T @ centered / len(mu)
    if dip_type == "ii":
        covariance = covariance + torch.diag(logvar.exp().mean(0))
    diagonal = torch.diagonal(covariance)
    off_diagonal = covariance - torch.diag(diagonal)
    return off_diagonal_weight * off_diagonal.pow(2).sum() + diagonal_weight * (diagonal - 1).pow(2).sum()


def kernel_matrix(a: Tensor, b: Tensor, kernel: Kernel, scale: float) -> Tensor:
    """``[len(a), len(b)]`` kernel values: ``rbf`` ``exp(-||a - b||^2 / scale)`` or ``imq``
    ``scale / (scale + ||a - b||^2)`` (the inverse multiquadratic of Tolstikhin et al. 2018)."""
    distances = torch.cdist(a, b).pow(2)
    if kernel == "rbf":
        return torch.exp(-distances / scale)
    if kernel == "imq":
        return scale / (scale + distances)
    raise ValueError(f"kernel must be 'rbf' or 'imq', got {kernel!r}")


def maximum_mean_discrepancy(x: Tensor, y: Tensor, kernel: Kernel = "imq", scale: float | None = None) -> Tensor:
    """The unbiased MMD^2 estimate (Gretton et al. 2012, eq. 3; can be slightly negative) of samples ``x [M, D]`` and
    ``y [N, D]``, M, N >= 2: ``mean_{i != j} k(x_i, x_j) + mean_{i != j} k(y_i, y_j) - 2 mean_{i, j} k(x_i, y_j)``
    under :func:`kernel_matrix`; ``scale`` None: ``2 D`` (Tolstikhin et al. 2018's for a standard normal)."""
    if len(x) < 2 or len(y) < 2:
        raise ValueError(f"the MMD estimate needs at least 2 samples on each side, got {len(x)} and {len(y)}")
    scale = 2.0 * x.shape[-1] if scale is None else scale
    k_xx, k_yy = (kernel_matrix(a, a, kernel, scale) for a in (x, y))
    within_x, within_y = ((k.sum() - k.trace()) / (len(k) * (len(k) - 1)) for k in (k_xx, k_yy))
    return within_x + within_y - 2 * kernel_matrix(x, y, kernel, scale).mean()


def gaussian_mixture_log_prob(z: Tensor, means: Tensor, logvars: Tensor) -> Tensor:
    """log of the mixture ``1/K sum_k N(z | means_k, diag(exp(logvars_k)))`` of ``z [..., D]`` and components
    ``[K, D]``, at least float32 whatever the autocast; memory grows with ``[..., K]``, not ``[..., K, D]``."""
    # Matrix products in float64: their expanded form cancels catastrophically for sharp components in float32.
    dtype = z.dtype
    with torch.autocast(z.device.type, enabled=False):
        z, means, logvars = z.double(), means.double(), logvars.double()
        precision = torch.exp(-logvars)  # [K, D]
        quadratic = z.pow(2) @ precision.T - 2 * z @ (means * precision).T + (means.pow(2) * precision).sum(-1)
        log_components = -0.5 * (quadratic + logvars.sum(-1) + z.shape[-1] * LOG_2PI)  # [..., K]
        log_prob = torch.logsumexp(log_components, dim=-1) - math.log(len(means))
    return log_prob.to(torch.promote_types(dtype, torch.float32))


def permute_dims(z: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Codes with each dimension shuffled across the batch, samples of ``prod_d q(z_d)`` (Kim & Mnih 2018, Alg. 1)."""
    columns = [z[torch.randperm(len(z), generator=generator, device=z.device), d] for d in range(z.shape[1])]
    return torch.stack(columns, dim=1)


__all__ = [
    "dip_regularizer",
    "gaussian_log_density",
    "gaussian_mixture_log_prob",
    "kernel_matrix",
    "maximum_mean_discrepancy",
    "permute_dims",
    "total_correlation_terms",
]
