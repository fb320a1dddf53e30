"""Post-hoc samplers: a density fitted on a trained model's codes, so that any autoencoder can generate by decoding
its samples: :class:`GaussianMixtureSampler` (Ghosh et al. 2020) and :class:`TwoStageSampler`, a second small VAE
(Dai & Wipf 2019)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch
from torch import Tensor, nn

from ae_lightning.base import AutoencoderModule, check_sample_count
from ae_lightning.blocks import losses
from ae_lightning.blocks.networks import MLPDecoder, MLPEncoder
from datamodules.checks import NonNegativeInt, PositiveFloat, PositiveInt, Seed, check_arguments


def _check_codes(codes: Tensor, dim: int | None = None) -> None:
    """A ValueError naming the problem unless ``codes`` are ``[N, D]`` (``D = dim`` where given), ``N >= 2``, finite."""
    if codes.ndim != 2 or len(codes) < 2 or dim not in (None, codes.shape[1]):
        raise ValueError(
            f"a sampler fits codes [N, {dim or 'D'}] with N >= 2 (spatial codes flattened, as driver.encode_split "
            f"gives them), got codes of shape {tuple(codes.shape)}"
        )
    if bad := int((~codes.isfinite()).any(1).sum()):
        raise ValueError(f"{bad} of {len(codes)} codes hold NaN or inf (a diverged model?): no density fits them")


def check_continuous_codes(model: AutoencoderModule) -> None:
    """A ValueError unless ``model`` has continuous codes, which a post-hoc sampler can fit and its decoder decode."""
    if getattr(model, "discrete_codes", False):
        raise ValueError(
            f"post-hoc samplers fit a density on continuous codes, but {type(model).__name__}'s codes are token "
            "indices; sample the model itself (fid)"
        )


class GaussianMixtureSampler:
    """A Gaussian mixture of ``components`` (at most the codes) by scikit-learn's EM; ``seed`` seeds fit and samples."""

    def __init__(
        self,
        components: PositiveInt = 10,
        covariance_type: Literal["full", "tied", "diag", "spherical"] = "full",
        seed: Seed = 0,
    ) -> None:
        check_arguments(locals(), GaussianMixtureSampler.__init__)
        self.components, self.covariance_type, self.seed = components, covariance_type, seed
        self.mixture = None

    def fit(self, codes: Tensor) -> GaussianMixtureSampler:
        """Fit on ``[N, D]`` codes (detached), restarting the sample stream at ``seed``; returns itself."""
        from sklearn.mixture import GaussianMixture

        _check_codes(codes)
        self.rng = np.random.default_rng(self.seed)
        components = min(self.components, len(codes))
        self.mixture = GaussianMixture(components, covariance_type=self.covariance_type, random_state=self.seed)
        self.mixture.fit(codes.detach().double().cpu().numpy())
        return self

    def sample(self, n: int) -> Tensor:
        """``[n, D]`` codes drawn from the fitted mixture, in random order."""
        check_sample_count(n)
        if self.mixture is None:
            raise RuntimeError("fit the sampler on codes before sampling")
        self.mixture.random_state = int(self.rng.integers(2**31))
        codes, _ = self.mixture.sample(max(n, 1))  # grouped by component; scikit-learn draws no fewer than one
        return torch.from_numpy(codes[self.rng.permutation(n)]).float()


class TwoStageSampler(nn.Module):
    """A second VAE on codes of ``latent_dim``: MLPs, standard-normal prior, Gaussian likelihood with a learned scalar
    std ``gamma`` (Dai & Wipf 2019, section 4), fitted by ``steps`` Adam steps on the standardized codes."""

    def __init__(
        self,
        latent_dim: PositiveInt,
        hidden_dims: Sequence[PositiveInt] = (256, 256),
        steps: PositiveInt = 2000,
        batch_size: PositiveInt = 256,
        lr: PositiveFloat = 1e-3,
        seed: NonNegativeInt = 0,
    ) -> None:
        super().__init__()
        check_arguments(locals(), TwoStageSampler.__init__)
        self.hidden_dims = tuple(hidden_dims)
        self.encoder, self.decoder = self._networks(latent_dim, seed)
        self.log_gamma = nn.Parameter(torch.zeros(()))
        self.register_buffer("mean", torch.zeros(latent_dim))
        self.register_buffer("std", torch.full((latent_dim,), math.nan))  # NaN until fit
        self.latent_dim, self.steps, self.batch_size, self.lr, self.seed = latent_dim, steps, batch_size, lr, seed
        self.sample_generator = torch.Generator().manual_seed(seed)

    def _networks(self, latent_dim: int, seed: int) -> tuple[MLPEncoder, MLPDecoder]:
        """The second VAE's encoder and decoder as ``seed`` starts them."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            encoder = MLPEncoder((latent_dim,), self.hidden_dims, 2 * latent_dim)
            return encoder, MLPDecoder(latent_dim, self.hidden_dims, (latent_dim,))

    def negative_elbo(self, u: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """The negative ELBO per standardized code ``[B]``."""
        mu, logvar = self.encoder(u).chunk(2, dim=-1)
        noise = torch.randn(mu.shape, generator=generator, device=mu.device)
        mean = self.decoder(losses.reparameterize(mu, logvar, noise))
        recon = -losses.gaussian_log_likelihood(mean, u, self.log_gamma.exp(), event_ndim=1)
        return recon + losses.kl_divergence_normal(mu, logvar)

    def fit(self, codes: Tensor) -> TwoStageSampler:
        """Fit on ``[N, D]`` codes (detached), restarting the weights and sample stream at ``seed``; returns itself."""
        _check_codes(codes, self.latent_dim)
        for network, start in zip((self.encoder, self.decoder), self._networks(self.latent_dim, self.seed)):
            network.load_state_dict(start.state_dict())
        with torch.no_grad():
            self.log_gamma.zero_()
        self.sample_generator.manual_seed(self.seed)
        codes = codes.detach().float().to(self.log_gamma.device)
        self.mean.copy_(codes.mean(0))
        self.std.copy_(codes.std(0).clamp_min(1e-6))
        standardized = (codes - self.mean) / self.std
        generator = torch.Generator(codes.device).manual_seed(self.seed)
        optimizer = torch.optim.Adam(self.parameters(), lr=self.lr)
        batch = min(self.batch_size, len(codes))
        self.train()
        for _ in range(self.steps):
            rows = torch.randint(len(codes), (batch,), generator=generator, device=codes.device)
            optimizer.zero_grad()
            self.negative_elbo(standardized[rows], generator).mean().backward()
            optimizer.step()
        self.eval()
        return self

    @torch.no_grad()
    def sample(self, n: int) -> Tensor:
        """``[n, D]`` codes drawn from the second VAE, ``decoder(z) + gamma * eps``, in the codes' scale."""
        check_sample_count(n)
        if self.std.isnan().any():
            raise RuntimeError("fit the sampler on codes before sampling")
        z = torch.randn(n, self.latent_dim, generator=self.sample_generator).to(self.log_gamma.device)
        noise = torch.randn(n, self.latent_dim, generator=self.sample_generator).to(self.log_gamma.device)
        return ((self.decoder(z) + self.log_gamma.exp() * noise) * self.std + self.mean).cpu()


class PosthocGenerator(nn.Module):
    """A trained model that generates (``sample(n)``) by decoding a post-hoc sampler's codes."""

    is_generative = True

    def __init__(self, model: AutoencoderModule, sampler: GaussianMixtureSampler | TwoStageSampler) -> None:
        super().__init__()
        check_continuous_codes(model)
        self.model, self.sampler = model, sampler
        self.training = model.training  # the mode that evaluation restores, the model's own

    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def num_classes(self) -> int | None:
        return getattr(self.model, "num_classes", None)

    def sample(self, n: int, y: Tensor | None = None) -> Tensor:
        """``n`` images decoded from the sampler's codes (with labels ``y`` if conditional; None: classes in turn)."""
        if self.num_classes is None:  # labels would be ignored, as the model's own sample refuses them
            check_sample_count(n, y=y)
        weight = next(self.model.parameters())  # the decoder takes codes in its dtype: float64 under 64-true
        codes, shape = self.sampler.sample(n).to(weight), self.model.latent_shape
        if codes.shape[1] != math.prod(shape):
            raise ValueError(
                f"the sampler draws codes of {codes.shape[1]} numbers, but {type(self.model).__name__}'s codes "
                f"{list(shape)} hold {math.prod(shape)}: fit the sampler on this model's codes (driver.encode_split)"
            )
        codes = codes.reshape(n, *shape)
        if self.num_classes is not None and y is None:
            y = torch.arange(n, device=weight.device) % self.num_classes
        return self.model.decode(codes, y)


def frechet_distances(
    model: AutoencoderModule,
    train_codes: Tensor,
    classifier: nn.Module,
    real: object,
    num_samples: int = 10000,
    components: int = 10,
    two_stage_steps: int = 2000,
    seed: int = 0,
    prior: bool = True,
) -> dict[str, float]:
    """The Frechet distance (``driver.frechet_distance``) to the ``real`` images (``driver.gray_loader``) of
    ``num_samples`` samples of the prior (if ``prior`` and the model is generative), a Gaussian mixture and a two-stage
    VAE fitted on ``train_codes`` ``[N, D]`` (``driver.encode_split``)."""
    from ae_lightning.evaluation.driver import frechet_distance

    check_continuous_codes(model)
    results = {}
    if prior and getattr(model, "is_generative", False):
        results["fid_prior"] = frechet_distance(model, classifier, real, num_samples, seed=seed)
    mixture = GaussianMixtureSampler(components, seed=seed)
    two_stage = TwoStageSampler(train_codes.shape[1], steps=two_stage_steps, seed=seed).to(model.device)
    for name, sampler in (("fid_gmm", mixture), ("fid_two_stage", two_stage)):
        sampler.fit(train_codes)
        results[name] = frechet_distance(PosthocGenerator(model, sampler), classifier, real, num_samples, seed=seed)
    return results


__all__ = [
    "GaussianMixtureSampler",
    "PosthocGenerator",
    "TwoStageSampler",
    "check_continuous_codes",
    "frechet_distances",
]
