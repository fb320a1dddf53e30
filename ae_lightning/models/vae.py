"""The variational autoencoder (Kingma & Welling 2014, "Auto-Encoding Variational Bayes"), beta-VAE (Higgins et al.
2017) and the importance-weighted bound of Burda et al. 2016 ("Importance Weighted Autoencoders")."""

from __future__ import annotations

import math
from typing import Any, ClassVar, Literal

import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor, nn
from torch.distributions import Normal

from ae_lightning.base import AutoencoderModule, Stage
from ae_lightning.blocks import losses, networks
from datamodules.checks import NonNegativeFloat, NonNegativeInt, PositiveFloat, PositiveInt, check_arguments

Likelihood = Literal["bernoulli", "gaussian", "continuous_bernoulli"]
LearnedStd = Literal["learned", "learned_per_pixel"]
# Floor of a learned Gaussian std: a feature constant in the training data would otherwise drive it to 0.
MIN_STD = 1e-3
DEFAULT_STD = 0.1


class VAE(AutoencoderModule):
    """Diagonal-Gaussian posterior, standard-normal prior, Bernoulli, Gaussian or continuous-Bernoulli likelihood.

    The loss is ``recon + beta * w * kl``, ``w`` rising from 0 to 1 over ``kl_warmup_steps``; ``beta > 1`` is the
    beta-VAE. Validation and test also log ``neg_elbo = recon + kl``. Continuous likelihoods see dequantized pixels;
    ``test`` then reports ``test/bpd`` (``docs/own_data.md``).

    Args:
        likelihood: ``bernoulli``, ``gaussian`` (images or vectors) or ``continuous_bernoulli`` (data in [0, 1]).
        beta: weight of the KL term.
        kl_warmup_steps: steps of linear KL warm-up; 0 disables it.
        gaussian_std: for ``likelihood: gaussian``, a fixed std, ``learned`` (one, shared) or ``learned_per_pixel``;
            learned ones start at 0.1 for images and 1 for vectors and stay above 1e-3.
        iw_samples: importance samples k of training: k > 1 trains on the IWAE bound (``docs/family.md``), logged
            unweighted as ``neg_iwae_<k>``; 1 only where ``trains_on_the_bound`` is False.
        nll_samples: importance samples K of the test-time bound on -log p(x).
        nll_chunk_size: importance samples decoded at once (trades memory for speed).
        **kwargs: the :class:`~ae_lightning.base.AutoencoderModule` arguments.
    """

    is_generative = True
    closed_form_kl: ClassVar[bool] = True  # whether KL(q(z | x) || p(z)) has the two diagonal normals' closed form
    trains_on_the_bound: ClassVar[bool] = True  # False for an objective of its own: iw_samples is then 1

    def __init__(
        self,
        likelihood: Likelihood = "bernoulli",
        beta: NonNegativeFloat = 1.0,
        kl_warmup_steps: NonNegativeInt = 0,
        gaussian_std: PositiveFloat | LearnedStd = DEFAULT_STD,
        nll_samples: PositiveInt = 1000,
        nll_chunk_size: PositiveInt = 100,
        iw_samples: PositiveInt = 1,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if likelihood != "gaussian" and len(self.input_shape) == 1:
            raise ValueError(
                f"likelihood: {likelihood} needs data in [0, 1], but input_shape {self.input_shape} is feature "
                "vectors; use likelihood: gaussian"
            )
        if likelihood != "gaussian" and gaussian_std != DEFAULT_STD:
            raise ValueError(
                f"gaussian_std {gaussian_std!r} is for likelihood: gaussian, not {likelihood}: set likelihood: "
                "gaussian, or leave gaussian_std out"
            )
        if iw_samples != 1 and not self.trains_on_the_bound:
            raise ValueError(
                f"{type(self).__name__} trains on its own objective, not on the IWAE bound: iw_samples must be 1, got "
                f"{iw_samples}"
            )
        self.likelihood = likelihood
        self.iw_samples = iw_samples
        self.beta = beta
        self.kl_warmup_steps = kl_warmup_steps
        self.gaussian_std = gaussian_std
        self.nll_samples = nll_samples
        self.nll_chunk_size = nll_chunk_size
        self._warned_gray = False
        if isinstance(gaussian_std, str) and likelihood == "gaussian":
            start = math.log(0.1 if len(self.input_shape) == 3 else 1.0)
            shape = self.input_shape if gaussian_std == "learned_per_pixel" else ()
            self.log_std = nn.Parameter(torch.full(shape, start))

    def build_encoder(self) -> nn.Module:
        """Mean and log-variance of q(z | x) side by side on the channel axis, ``[B, 2 * latent_dim, ...]``."""
        hp = self.hparams
        return networks.build_encoder(
            hp.network, self.input_shape, hp.hidden_dims, 2 * self.latent_dim, spatial=hp.get("spatial")
        )

    def posterior_parameters(self, x: Tensor, y: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Mean and log-variance ``[B, *latent_shape]`` of q(z | x)."""
        return self.encoder(x).chunk(2, dim=1)

    def posterior(self, x: Tensor, y: Tensor | None = None) -> Normal:
        """q(z | x) as a ``torch.distributions.Normal`` with batch shape ``[B, *latent_shape]``."""
        self.check_tensor(x, "posterior(x)")
        mu, logvar = self.posterior_parameters(x, y)
        return Normal(mu, torch.exp(0.5 * logvar))

    def encode(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        """The posterior mean, through :meth:`posterior_flow`."""
        self.check_tensor(x, "encode(x)")
        mu, logvar = self.posterior_parameters(x, y)
        return self.posterior_flow(mu, mu, logvar)[0]

    def check_encoder_output(self, x: Tensor, y: Tensor) -> None:
        mu, logvar = self.posterior_parameters(x, y)
        if tuple(mu.shape[1:]) != self.latent_shape or logvar.shape != mu.shape:
            found = [len(mu), mu.shape[1] + logvar.shape[1], *mu.shape[2:]]
            needed = [len(x), 2 * self.latent_dim, *self.latent_shape[1:]]
            raise ValueError(
                f"the encoder's output has shape {found}, {type(self).__name__} needs {needed}: the mean and "
                f"log-variance of its latent_shape {list(self.latent_shape)} side by side"
            )

    def decode(self, z: Tensor, y: Tensor | None = None) -> Tensor:
        """The likelihood's mean: for the continuous Bernoulli, its mean rather than ``sigmoid(logits)``."""
        if self.likelihood != "continuous_bernoulli":
            return super().decode(z, y)
        self.check_tensor(z, "decode(z)", codes=True)
        return losses.continuous_bernoulli_mean(self.decoder_logits(z, y))

    def sample_prior(self, n: int) -> Tensor:
        """Codes of the standard normal, drawn in float32 as the noise of :meth:`log_densities`."""
        return losses.standard_normal((n, *self.latent_shape), self.device, self.dtype)

    def prior_log_prob(self, z: Tensor) -> Tensor:
        """log p(z) of codes ``[..., *latent_shape]``, here the standard normal's (summed over every element)."""
        return losses.standard_normal_log_prob(z, len(self.latent_shape))

    def log_likelihood(self, logits: Tensor, x: Tensor) -> Tensor:
        """log p(x | z) per image from decoder ``logits`` (leading sample dimensions allowed)."""
        if self.likelihood == "bernoulli":
            return losses.bernoulli_log_likelihood(logits, x)
        event_ndim = len(self.input_shape)
        if self.likelihood == "continuous_bernoulli":
            return losses.continuous_bernoulli_log_likelihood(logits, x, event_ndim)
        std = self.log_std.exp().clamp_min(MIN_STD) if hasattr(self, "log_std") else self.gaussian_std
        return losses.gaussian_log_likelihood(networks.decoder_mean(logits, self.input_shape), x, std, event_ndim)

    @property
    def dequantizes(self) -> bool:
        """Whether the likelihood is a density on images, which then sees uniformly dequantized pixels."""
        return self.likelihood != "bernoulli" and len(self.input_shape) == 3

    def kl_weight(self) -> float:
        """``beta``, warmed up over ``kl_warmup_steps`` in training."""
        if self.kl_warmup_steps == 0 or not self.training:
            return self.beta
        return self.beta * min(1.0, self.global_step / self.kl_warmup_steps)

    def on_train_start(self) -> None:
        super().on_train_start()
        steps, max_steps = self.fit_steps(), self.trainer.max_steps  # the last step trained is steps - 1
        ends = (
            f"max_steps {max_steps}"
            if steps == max_steps
            else f"after {steps} steps, max_epochs {self.trainer.max_epochs}"
        )
        if 0 < steps <= self.kl_warmup_steps:
            share = (steps - 1) / self.kl_warmup_steps
            rank_zero_warn(
                f"the fit ends ({ends}) before the KL warm-up does (kl_warmup_steps {self.kl_warmup_steps}): the KL "
                f"weight reaches only {self.beta * share:.3g} ({share:.3g} x beta={self.beta}); lower kl_warmup_steps "
                "or raise max_steps or max_epochs to train on the objective asked for"
            )

    def loss_terms(self, x: Tensor, labels: Tensor, indices: Tensor) -> dict[str, Tensor]:
        if self.dequantizes:
            x = losses.uniform_dequantize(x)
        if self.iw_samples > 1:
            return self.importance_weighted_terms(x, self.iw_samples, labels)
        recon, kl = (term.mean() for term in self.elbo_terms(x, labels))
        return {"loss": recon + self.kl_weight() * kl, "recon": recon, "kl": kl}

    def posterior_terms(self, x: Tensor, deterministic: bool = False) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """``mu``, ``logvar``, a sample ``z`` (``mu`` if ``deterministic``), the batch means of ``recon`` and ``kl``."""
        if self.dequantizes:
            x = losses.uniform_dequantize(x)
        mu, logvar = self.posterior_parameters(x)
        z = mu if deterministic else losses.reparameterize(mu, logvar)
        recon = -self.log_likelihood(self.decoder_logits(z), x).mean()
        return mu, logvar, z, recon, losses.kl_divergence_normal(mu, logvar).mean()

    def log_terms(self, terms: dict[str, Tensor], stage: Stage, batch_size: int) -> None:
        if stage != "train" and "recon" in terms and "kl" in terms:  # a variant's terms, too
            terms = {**terms, "neg_elbo": terms["recon"] + terms["kl"]}
        super().log_terms(terms, stage, batch_size)

    def elbo_terms(self, x: Tensor, y: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Per image, -log p(x | z) of one posterior sample and the KL (closed form, or ``log q(z | x) - log p(z)``)."""
        mu, logvar = self.posterior_parameters(x, y)
        if not self.closed_form_kl:
            log_likelihood, log_prior, log_posterior = (t[0] for t in self.log_densities(x, mu, logvar, 1, y))
            return -log_likelihood, log_posterior - log_prior
        z = losses.reparameterize(mu, logvar)
        return -self.log_likelihood(self.decoder_logits(z, y), x), self.kl_divergence(mu, logvar)

    def kl_divergence(self, mu: Tensor, logvar: Tensor) -> Tensor:
        """KL(q(z | x) || p(z)) per image, summed over every element of the code (each position of a spatial one)."""
        return losses.kl_divergence_normal(mu, logvar, len(self.latent_shape))

    def anomaly_score(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        """The negative single-sample ELBO per image."""
        self.check_tensor(x, "anomaly_score(x)")
        return torch.add(*self.elbo_terms(x, y))

    def importance_weighted_terms(self, x: Tensor, num_samples: int, y: Tensor | None = None) -> dict[str, Tensor]:
        """Batch means over ``num_samples`` samples: ``loss`` (the negative IWAE bound, its log density ratio weighted
        by :meth:`kl_weight`), ``neg_iwae_<k>`` (unweighted), ``recon`` and ``kl``."""
        mu, logvar = self.posterior_parameters(x, y)
        densities = self.log_densities(x, mu, logvar, num_samples, y)
        weight = self.kl_weight()
        loss = -losses.importance_weighted_bound(*densities, weight).mean()
        bound = loss if weight == 1 else -losses.importance_weighted_bound(*densities).mean()
        log_likelihood, log_prior, log_posterior = densities
        kl = self.kl_divergence(mu, logvar) if self.closed_form_kl else log_posterior - log_prior
        terms = {f"neg_iwae_{num_samples}": bound, "recon": -log_likelihood.mean(), "kl": kl.mean()}
        return {"loss": loss, **{name: value.detach() for name, value in terms.items()}}

    def log_densities(
        self, x: Tensor, mu: Tensor, logvar: Tensor, num_samples: int, y: Tensor | None = None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """log p(x | z_k), log p(z_k) and log q(z_k | x), each ``[num_samples, B]`` (float32 at least), ``z_k ~ q``."""
        eps = torch.randn(num_samples, *mu.shape, device=mu.device, dtype=torch.float32).to(mu.dtype)
        z, log_det = self.posterior_flow(losses.reparameterize(mu, logvar, eps), mu, logvar)  # [k, B, *latent_shape]
        labels = None if y is None else y.repeat(num_samples)  # sample-major, as z is flattened
        logits = self.decoder_logits(z.flatten(0, 1), labels).unflatten(0, (num_samples, len(x)))
        # log q(z | x) = log N(eps | 0, I) - sum(log std) - log |det|, over every code element
        dtype = torch.promote_types(mu.dtype, torch.float32)
        log_q = losses.standard_normal_log_prob(eps.to(dtype), len(self.latent_shape))
        log_q = log_q - (0.5 * logvar.to(dtype)).flatten(-len(self.latent_shape)).sum(-1) - log_det
        return self.log_likelihood(logits.to(dtype), x), self.prior_log_prob(z.to(dtype)), log_q

    def posterior_flow(self, z: Tensor, mu: Tensor, logvar: Tensor) -> tuple[Tensor, Tensor | float]:
        """Samples ``z`` of the Gaussian ``q_0`` mapped to samples of q(z | x), and ``log |det|``: here ``z`` and 0."""
        return z, 0.0

    @torch.no_grad()
    def importance_weighted_nll(
        self, x: Tensor, num_samples: PositiveInt | None = None, y: Tensor | None = None
    ) -> Tensor:
        """``-log (1/K) sum_k p(x, z_k) / q(z_k | x)`` per image in nats (Burda et al. eq. 8); K: ``nll_samples``."""
        num_samples = self.nll_samples if num_samples is None else num_samples
        self.check_tensor(x, "importance_weighted_nll(x)")
        check_arguments({"num_samples": num_samples}, VAE.importance_weighted_nll)
        mu, logvar = self.posterior_parameters(x, y)
        chunks = [min(self.nll_chunk_size, num_samples - start) for start in range(0, num_samples, self.nll_chunk_size)]
        densities = [self.log_densities(x, mu, logvar, k, y) for k in chunks]
        return -losses.importance_weighted_bound(*(torch.cat(parts) for parts in zip(*densities)))

    def test_metrics(
        self, x: Tensor, y: Tensor | None = None, reconstruction: Tensor | None = None
    ) -> dict[str, Tensor]:
        if self.likelihood == "bernoulli" and not self._warned_gray and not ((x == 0) | (x == 1)).all():
            rank_zero_warn(
                "test/nll uses a Bernoulli likelihood on gray-level images, so it is not a likelihood of the data; "
                "set data binarize: dynamic or static for the standard binarized-MNIST number."
            )
            self._warned_gray = True
        if not self.dequantizes:
            return {"nll": self.importance_weighted_nll(x, y=y).mean()}
        nll = self.importance_weighted_nll(losses.uniform_dequantize(x), y=y).mean()
        return {"nll": nll, "bpd": losses.bits_per_dim(nll, math.prod(self.input_shape))}

    def check_input(self, x: Tensor) -> None:
        super().check_input(x)
        if len(self.input_shape) == 3:  # the decoded means are sigmoids, and densities dequantize k / 255
            low, high = x.min().item(), x.max().item()
            if low < 0 or high > 1:
                name = "Gaussian" if self.likelihood == "gaussian" else "Bernoulli"
                raise ValueError(
                    f"a {name} likelihood needs pixels in [0, 1] for images, but the data range over [{low:.3g}, "
                    f"{high:.3g}]; scale the images to [0, 1], or give feature vectors with likelihood: gaussian"
                )
