"""Likelihoods for continuous data: closed forms, normalization, bits per dimension, and the VAE that uses them."""

from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import ContinuousBernoulli, Normal

from ae_lightning import VAE
from ae_lightning.blocks import losses


def test_continuous_bernoulli_normalizer_matches_numerical_integration() -> None:
    logits = torch.tensor([-8.0, -2.0, -0.3, -1e-5, 0.0, 1e-4, 0.7, 3.0, 12.0], dtype=torch.float64)
    # C(lambda) = 1 / integral_0^1 lambda^x (1 - lambda)^(1 - x) dx, by the trapezoidal rule on 200,001 points
    x = torch.linspace(0, 1, 200_001, dtype=torch.float64)
    kernel = torch.exp(
        -torch.nn.functional.binary_cross_entropy_with_logits(
            logits[:, None].expand(-1, len(x)), x.expand(len(logits), -1), reduction="none"
        )
    )
    integral = torch.trapezoid(kernel, x, dim=1)
    torch.testing.assert_close(
        losses.continuous_bernoulli_log_normalizer(logits), -integral.log(), rtol=1e-8, atol=1e-8
    )
    # and at lambda = 1/2 it is exactly 2
    assert losses.continuous_bernoulli_log_normalizer(torch.zeros(1)).item() == pytest.approx(math.log(2))


def test_continuous_bernoulli_likelihood_is_a_density_and_matches_torch() -> None:
    torch.manual_seed(0)
    logits, x = torch.randn(4, 3, 5, 5, dtype=torch.float64) * 3, torch.rand(4, 3, 5, 5, dtype=torch.float64)
    reference = ContinuousBernoulli(logits=logits).log_prob(x).flatten(1).sum(1)
    torch.testing.assert_close(losses.continuous_bernoulli_log_likelihood(logits, x), reference)
    # many decodings per image, and vectors
    samples = torch.randn(2, 4, 3, 5, 5, dtype=torch.float64)
    assert losses.continuous_bernoulli_log_likelihood(samples, x).shape == (2, 4)
    assert losses.continuous_bernoulli_log_likelihood(logits[:, 0, 0], x[:, 0, 0], event_ndim=1).shape == (4,)
    torch.testing.assert_close(losses.continuous_bernoulli_mean(logits), ContinuousBernoulli(logits=logits).mean)


def test_gaussian_with_a_tensor_of_stds_and_vectors() -> None:
    mean, x, std = torch.randn(6, 5), torch.randn(6, 5), torch.rand(5) + 0.1
    expected = Normal(mean, std).log_prob(x).sum(1)
    torch.testing.assert_close(losses.gaussian_log_likelihood(mean, x, std, event_ndim=1), expected)
    torch.testing.assert_close(losses.squared_error(mean, x, event_ndim=1), (mean - x).pow(2).sum(1))


def test_bits_per_dim_of_the_uniform_density_is_8() -> None:
    # the uniform density on [0, 1]^D has nll 0: each 8-bit value then costs exactly log2(256) = 8 bits
    assert losses.bits_per_dim(torch.tensor(0.0), 3072).item() == pytest.approx(8.0)
    # a density twice as high everywhere saves one bit per dimension
    assert losses.bits_per_dim(torch.tensor(-10 * math.log(2)), 10).item() == pytest.approx(7.0)


def test_uniform_dequantization_stays_in_the_bin_of_each_8_bit_value() -> None:
    k = torch.arange(256, dtype=torch.float32).repeat(40)
    dequantized = losses.uniform_dequantize(k / 255)
    assert ((dequantized * 256).floor() == k).all()


@pytest.mark.parametrize(
    "likelihood, std", [("gaussian", "learned"), ("gaussian", "learned_per_pixel"), ("continuous_bernoulli", 0.1)]
)
def test_vae_reports_nll_and_bits_per_dim_for_continuous_likelihoods(likelihood: str, std) -> None:
    torch.manual_seed(0)
    model = VAE(
        input_shape=(3, 6, 6),
        latent_dim=2,
        hidden_dims=[8],
        likelihood=likelihood,
        gaussian_std=std,
        nll_samples=4,
        nll_chunk_size=2,
    )
    x = (torch.randint(0, 256, (5, 3, 6, 6)) / 255).float()
    torch.manual_seed(1)
    metrics = model.test_metrics(x)
    assert set(metrics) == {"nll", "bpd"}
    torch.testing.assert_close(metrics["bpd"], losses.bits_per_dim(metrics["nll"], 108))
    decoded = model.decode(torch.zeros(2, 2))
    assert decoded.shape == (2, 3, 6, 6) and 0 <= decoded.min() and decoded.max() <= 1
    if isinstance(std, str):  # the std is a parameter that training moves
        assert model.log_std.shape == ((3, 6, 6) if std == "learned_per_pixel" else ())
        model.loss_terms(x, torch.zeros(5), torch.arange(5))["loss"].backward()
        assert model.log_std.grad.abs().sum() > 0


def test_vae_on_vectors_needs_the_gaussian() -> None:
    with pytest.raises(ValueError, match=r"likelihood: bernoulli needs data in \[0, 1\].*\(7,\).*likelihood: gaussian"):
        VAE(input_shape=(7,), latent_dim=2, hidden_dims=[8])
    model = VAE(
        input_shape=(7,), latent_dim=2, hidden_dims=[8], likelihood="gaussian", gaussian_std="learned", nll_samples=3
    )
    x = torch.randn(4, 7) * 3  # standardized features are not bounded
    assert set(model.test_metrics(x)) == {"nll"}  # bits per dimension is for 8-bit images
    assert model.decode(torch.zeros(1, 2)).abs().max() < math.inf


def test_a_gaussian_vae_refuses_images_outside_the_unit_interval_at_the_first_batch() -> None:
    # Its decoded means are sigmoids and test/bpd dequantizes 8-bit values: images in [-1, 1] trained to
    # reconstructions that never went below 0, and `test` then failed inside torch's binary cross-entropy.
    model = VAE(input_shape=(1, 8, 8), latent_dim=2, hidden_dims=[8], likelihood="gaussian")
    batch = (torch.linspace(-0.5, 0.5, 256).view(4, 1, 8, 8), torch.zeros(4, dtype=torch.long), torch.arange(4))
    with pytest.raises(ValueError, match=r"Gaussian likelihood needs pixels in \[0, 1\] for images.*\[-0\.5, 0\.5\]"):
        model.training_step(batch, 0)
    vectors = VAE(input_shape=(64,), latent_dim=2, hidden_dims=[8], likelihood="gaussian")
    vectors.training_step((batch[0].flatten(1), *batch[1:]), 0)  # feature vectors take any value
