from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import Bernoulli, Normal, kl_divergence

from ae_lightning import VAE
from ae_lightning.blocks import losses


def test_kl_divergence_normal_matches_closed_form() -> None:
    mu, logvar = torch.tensor([[0.5, -1.0]]), torch.tensor([[math.log(4.0), 0.0]])
    # by hand: 0.5 * (mu^2 + var - 1 - log var) per dimension
    expected = 0.5 * (0.25 + 4 - 1 - math.log(4)) + 0.5 * (1 + 1 - 1 - 0)
    assert losses.kl_divergence_normal(mu, logvar).item() == pytest.approx(expected)
    reference = kl_divergence(Normal(mu, torch.exp(0.5 * logvar)), Normal(0.0, 1.0)).sum(-1)
    torch.testing.assert_close(losses.kl_divergence_normal(mu, logvar), reference)


def test_kl_is_zero_at_the_prior() -> None:
    assert losses.kl_divergence_normal(torch.zeros(3, 5), torch.zeros(3, 5)).abs().max() == 0


def test_likelihoods_match_torch_distributions() -> None:
    logits, x = torch.randn(4, 1, 28, 28), torch.rand(4, 1, 28, 28).round()
    torch.testing.assert_close(
        losses.bernoulli_log_likelihood(logits, x), Bernoulli(logits=logits).log_prob(x).flatten(1).sum(1)
    )
    samples = torch.randn(3, 4, 1, 28, 28)  # several decodings per image, as in importance sampling
    torch.testing.assert_close(
        losses.bernoulli_log_likelihood(samples, x), Bernoulli(logits=samples).log_prob(x).flatten(2).sum(2)
    )
    mean = torch.rand(4, 1, 28, 28)
    torch.testing.assert_close(
        losses.gaussian_log_likelihood(mean, x, 0.3), Normal(mean, 0.3).log_prob(x).flatten(1).sum(1)
    )


def test_log_mean_exp() -> None:
    values = torch.tensor([[0.0, math.log(3.0)]])
    assert losses.log_mean_exp(values, 1).item() == pytest.approx(math.log(2.0))


@pytest.fixture
def vae() -> VAE:
    torch.manual_seed(0)
    return VAE(latent_dim=4, hidden_dims=[32], nll_chunk_size=7).eval()


def test_iwae_bound_at_k1_is_the_single_sample_negative_elbo(vae: VAE) -> None:
    x = torch.rand(5, 1, 28, 28).round()
    torch.manual_seed(1)
    nll = vae.importance_weighted_nll(x, num_samples=1)
    torch.manual_seed(1)
    q = vae.posterior(x)
    z = q.mean + torch.randn(1, *q.mean.shape) * q.stddev
    log_px_z = Bernoulli(logits=vae.decoder(z[0])).log_prob(x).flatten(1).sum(1)
    elbo = log_px_z + Normal(0.0, 1.0).log_prob(z[0]).sum(-1) - q.log_prob(z[0]).sum(-1)
    torch.testing.assert_close(nll, -elbo.detach())


def test_iwae_bound_tightens_with_k_on_average(vae: VAE) -> None:
    x = torch.rand(64, 1, 28, 28).round()
    torch.manual_seed(2)
    bounds = [vae.importance_weighted_nll(x, num_samples=k).mean().item() for k in (1, 10, 100)]
    assert bounds[0] > bounds[1] > bounds[2]
    # at K = 1 its expectation is the negative ELBO with the KL in closed form
    torch.manual_seed(3)
    mc = torch.stack([vae.importance_weighted_nll(x, 1) for _ in range(200)]).mean()
    mu, logvar = vae.posterior_parameters(x)
    torch.manual_seed(3)
    recon = torch.stack([-vae.log_likelihood(vae.decoder(vae.posterior(x).rsample()), x) for _ in range(200)]).mean()
    analytic = recon + losses.kl_divergence_normal(mu, logvar).mean()
    assert mc.item() == pytest.approx(analytic.item(), rel=0.01)


def test_iwae_chunking_does_not_change_the_bound(vae: VAE) -> None:
    # chunks of 7 (3 chunks) and one chunk of 21 draw different noise, so compare means over many images
    x = torch.rand(256, 1, 28, 28).round()
    torch.manual_seed(4)
    chunked = vae.importance_weighted_nll(x, num_samples=21).mean()
    vae.nll_chunk_size = 21
    whole = vae.importance_weighted_nll(x, num_samples=21).mean()
    assert chunked.item() == pytest.approx(whole.item(), rel=2e-3)


def test_the_fused_batch_means_of_bfloat16_inputs_are_the_per_image_means() -> None:
    # bf16-true: the deterministic family's loss summed per-pixel terms rounded to bfloat16 (252.0 for 253.68 here)
    generator = torch.Generator().manual_seed(0)
    x = torch.zeros(32, 1, 28, 28)
    x[:, :, 6:22, 8:20] = torch.randint(150, 256, (32, 1, 16, 12), generator=generator) / 255
    logits = (torch.randn(32, 1, 28, 28, generator=generator) * 2 - 4 * (x == 0)).bfloat16()
    x = x.bfloat16()
    fused = losses.bernoulli_nll_batch_mean(logits, x)
    assert fused.dtype == torch.float32
    torch.testing.assert_close(fused, -losses.bernoulli_log_likelihood(logits, x).mean())
    mean = torch.sigmoid(logits)
    expected = losses.squared_error(mean.float(), x.float()).mean()
    torch.testing.assert_close(losses.squared_error_batch_mean(mean, x), expected)
