"""Loss terms as pure functions with explicit reductions: per-sample functions sum over every dimension but the batch
dimensions. Log-likelihoods are in nats; they and the Gaussian KL are float32 for bfloat16 or float16 inputs."""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.distributions import ContinuousBernoulli

LOG_2PI = math.log(2 * math.pi)


def _sum_image_dims(values: Tensor, event_ndim: int = 3) -> Tensor:
    """Sum over the trailing ``event_ndim`` dimensions (``(C, H, W)``)."""
    return values.flatten(-event_ndim).sum(-1)


def _at_least_float32(*tensors: Tensor) -> tuple[Tensor, ...]:
    """The tensors in float32, or float64 where one is."""
    dtype = functools.reduce(torch.promote_types, [t.dtype for t in tensors], torch.float32)
    return tuple(t.to(dtype) for t in tensors)


def bernoulli_log_likelihood(logits: Tensor, x: Tensor) -> Tensor:
    """log p(x | logits) of Bernoulli pixels ``[..., C, H, W]`` per image; ``x`` in [0, 1] broadcasts to ``logits``."""
    logits, x = _at_least_float32(logits, x)  # with mixed dtypes PyTorch's loss would take x's
    if logits.shape != x.shape:
        # Many decodings per image: log p = x . logits - sum(softplus(logits)) never materializes the broadcast x.
        return torch.linalg.vecdot(logits.flatten(-3), x.flatten(-3)) - F.softplus(logits).flatten(-3).sum(-1)
    return -_sum_image_dims(F.binary_cross_entropy_with_logits(logits, x, reduction="none"))


def gaussian_log_likelihood(mean: Tensor, x: Tensor, std: float | Tensor, event_ndim: int = 3) -> Tensor:
    """log N(x | mean, diag(std^2)) summed over the last ``event_ndim`` dimensions (3 for images, 1 for vectors);
    ``x`` broadcasts against ``mean``; ``std`` is a number or a tensor (e.g. learned, ``[C, H, W]``)."""
    mean, x = _at_least_float32(mean, x)
    log_std = torch.log(std.to(x.dtype)) if isinstance(std, Tensor) else math.log(std)
    per_pixel = -0.5 * ((x - mean) / std) ** 2 - log_std - 0.5 * LOG_2PI
    return _sum_image_dims(per_pixel, event_ndim)


def continuous_bernoulli_log_likelihood(logits: Tensor, x: Tensor, event_ndim: int = 3) -> Tensor:
    """log ``C(lambda) lambda^x (1 - lambda)^(1 - x)`` (``lambda = sigmoid(logits)``) of continuous-Bernoulli pixels
    (Loaiza-Ganem & Cunningham 2019) summed over the last ``event_ndim`` dimensions; ``x`` broadcasts to ``logits``."""
    logits, x = _at_least_float32(logits, x)
    # lambda^x (1 - lambda)^(1 - x) is the Bernoulli likelihood of x, exactly as for binary pixels.
    log_kernel = -F.binary_cross_entropy_with_logits(logits, x.expand_as(logits), reduction="none")
    return _sum_image_dims(log_kernel + continuous_bernoulli_log_normalizer(logits), event_ndim)


def continuous_bernoulli_log_normalizer(logits: Tensor, eps: float = 1e-3) -> Tensor:
    """log C(lambda) per pixel of the continuous Bernoulli, ``log(l / tanh(l / 2))`` in the logit ``l``, its Taylor
    expansion ``log 2 + l^2 / 12`` for ``|l| < eps`` (derivation: ``docs/own_data.md``)."""
    small = logits.abs() < eps
    safe = torch.where(small, torch.ones_like(logits), logits)
    exact = torch.log(safe.abs()) - torch.log(torch.tanh(safe.abs() / 2))
    return torch.where(small, math.log(2) + logits.pow(2) / 12, exact)


def continuous_bernoulli_mean(logits: Tensor) -> Tensor:
    """E[x] of the continuous Bernoulli, its reconstruction, not ``lambda`` (Loaiza-Ganem & Cunningham 2019, sec. 3)."""
    return ContinuousBernoulli(logits=logits, validate_args=False).mean


def uniform_dequantize(x: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """8-bit images ``k / 255`` in [0, 1] as ``(k + u) / 256`` with ``u ~ U[0, 1)``, a density's data on [0, 1)."""
    noise = torch.rand(x.shape, generator=generator, device=x.device, dtype=torch.float32).to(x.dtype)
    return ((x * 255).round() + noise) / 256


def bits_per_dim(nll: Tensor, num_dims: int) -> Tensor:
    """Bits per dimension of 8-bit data, ``(nll + D log 256) / (D log 2)``, from the nll (nats) of a density on
    [0, 1]^D of dequantized data (an upper bound of the discrete model's; ``docs/own_data.md``)."""
    return (nll + num_dims * math.log(256)) / (num_dims * math.log(2))


def kl_divergence_normal(mu: Tensor, logvar: Tensor, event_ndim: int = 1) -> Tensor:
    """KL(N(mu, diag(exp(logvar))) || N(0, I)) in closed form, summed over the last ``event_ndim`` dimensions."""
    mu, logvar = _at_least_float32(mu, logvar)
    return _sum_image_dims(0.5 * (mu.pow(2) + logvar.exp() - 1 - logvar), event_ndim)


def standard_normal(shape: Sequence[int], device: torch.device, dtype: torch.dtype) -> Tensor:
    """Standard normal noise of ``shape`` in ``dtype``, drawn in float32 (the same numbers under every precision)."""
    return torch.randn(*shape, device=device, dtype=torch.float32).to(dtype)


def reparameterize(mu: Tensor, logvar: Tensor, noise: Tensor | None = None) -> Tensor:
    """The sample ``mu + noise * exp(logvar / 2)``; ``noise`` standard normal, drawn in float32 when None."""
    noise = torch.randn_like(mu, dtype=torch.float32).to(mu.dtype) if noise is None else noise
    return mu + noise * torch.exp(0.5 * logvar)


def standard_normal_log_prob(z: Tensor, event_ndim: int = 1) -> Tensor:
    """log N(z | 0, I), summed over the last ``event_ndim`` dimensions (1 for flat codes, 3 for spatial ones)."""
    return _sum_image_dims(-0.5 * (z.pow(2) + LOG_2PI), event_ndim)


def squared_error(reconstruction: Tensor, x: Tensor, event_ndim: int = 3) -> Tensor:
    """Squared error summed per image (or sample of ``event_ndim`` dimensions)."""
    return _sum_image_dims((reconstruction - x) ** 2, event_ndim)


def mean_squared_error(reconstruction: Tensor, x: Tensor) -> Tensor:
    """Per-image mean squared error over pixels (the scale of PSNR and of the anomaly score)."""
    return (reconstruction - x).pow(2).flatten(1).mean(1)


def bernoulli_nll_batch_mean(logits: Tensor, x: Tensor) -> Tensor:
    """``-bernoulli_log_likelihood(logits, x).mean()`` of a batch of equal shapes, as one fused reduction."""
    logits, x = _at_least_float32(logits, x)
    return F.binary_cross_entropy_with_logits(logits, x, reduction="sum") / len(x)


def squared_error_batch_mean(reconstruction: Tensor, x: Tensor) -> Tensor:
    """``squared_error(reconstruction, x).mean()`` of a batch ``[B, ...]`` of equal shapes, as one fused reduction."""
    reconstruction, x = _at_least_float32(reconstruction, x)
    return F.mse_loss(reconstruction, x, reduction="sum") / len(x)


def log_mean_exp(values: Tensor, dim: int) -> Tensor:
    """log(mean(exp(values))) along ``dim``, computed stably."""
    return torch.logsumexp(values, dim) - math.log(values.shape[dim])


def importance_weighted_bound(
    log_likelihood: Tensor, log_prior: Tensor, log_posterior: Tensor, kl_weight: float = 1.0
) -> Tensor:
    """The importance-weighted bound of Burda et al. 2016 (eq. 8) per sample, at least float32: ``log (1/K) sum_k
    exp(log p(x | z_k) + w (log p(z_k) - log q(z_k | x)))`` over the leading K samples, ``w`` the ``kl_weight``."""
    log_likelihood, log_prior, log_posterior = _at_least_float32(log_likelihood, log_prior, log_posterior)
    return log_mean_exp(log_likelihood + kl_weight * (log_prior - log_posterior), dim=0)


def kl_divergence_bernoulli(rho: float, rho_hat: Tensor, eps: float = 1e-6) -> Tensor:
    """KL(Bernoulli(rho) || Bernoulli(rho_hat)) over the last dimension (Ng's sparsity penalty), ``rho_hat`` clamped."""
    rho_hat = rho_hat.clamp(eps, 1 - eps)
    return (rho * torch.log(rho / rho_hat) + (1 - rho) * torch.log((1 - rho) / (1 - rho_hat))).sum(-1)


def multinomial_log_likelihood(logits: Tensor, counts: Tensor) -> Tensor:
    """log Mult(counts | softmax(logits)) up to the multinomial coefficient, ``sum_i x_i log pi_i`` per sample (Liang
    et al. 2018, eq. 2); ``counts`` ``[..., I]`` broadcast against the items' ``logits``."""
    return (F.log_softmax(logits, dim=-1) * counts).sum(-1)


def hinge_discriminator_loss(real_logits: Tensor, fake_logits: Tensor) -> Tensor:
    """``(mean(relu(1 - D(x))) + mean(relu(1 + D(x_hat)))) / 2`` over every logit (every patch of a PatchGAN)."""
    return 0.5 * (F.relu(1 - real_logits).mean() + F.relu(1 + fake_logits).mean())


def non_saturating_discriminator_loss(real_logits: Tensor, fake_logits: Tensor) -> Tensor:
    """``(mean(-log sigmoid(D(x))) + mean(-log(1 - sigmoid(D(x_hat))))) / 2``: binary cross-entropy, averaged."""
    return 0.5 * (F.softplus(-real_logits).mean() + F.softplus(fake_logits).mean())


def generator_adversarial_loss(fake_logits: Tensor, kind: str = "hinge") -> Tensor:
    """The generator's loss on the discriminator's logits of reconstructions, averaged over every logit:
    ``-mean(D(x_hat))`` for ``hinge`` (Lim & Ye 2017), ``mean(-log sigmoid(D(x_hat)))`` for ``non_saturating``."""
    if kind == "hinge":
        return -fake_logits.mean()
    if kind == "non_saturating":
        return F.softplus(-fake_logits).mean()
    raise ValueError(f"adversarial loss must be 'hinge' or 'non_saturating', got {kind!r}")


def adaptive_adversarial_weight(
    reconstruction_loss: Tensor,
    generator_loss: Tensor,
    last_layer_weight: Tensor,
    max_weight: float = 1e4,
    loss_scale: Tensor | None = None,
) -> Tensor:
    """``||grad_w L_rec|| / (||grad_w L_G|| + 1e-4)`` at the decoder's last weight ``w``, clamped to ``[0, max_weight]``
    and detached (Esser et al. 2021, eq. 7), the losses' graphs kept; with ``loss_scale`` (fp16's), of the scaled
    losses, an overflow 0 (``docs/quantized.md``)."""
    scale = 1.0 if loss_scale is None else loss_scale
    reconstruction_grad = torch.autograd.grad(reconstruction_loss * scale, last_layer_weight, retain_graph=True)[0]
    generator_grad = torch.autograd.grad(generator_loss * scale, last_layer_weight, retain_graph=True)[0]
    weight = reconstruction_grad.norm() / (generator_grad.norm() + 1e-4 * scale)
    if loss_scale is not None:
        weight = torch.where(weight.isfinite(), weight, 0.0)
    return weight.clamp(0.0, max_weight).detach()
