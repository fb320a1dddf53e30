"""The adversarial autoencoder (Makhzani et al. 2015, "Adversarial Autoencoders"): a discriminator on the code space
makes the aggregated posterior of the encoder match a chosen prior."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn
from torch.optim import Optimizer

from ae_lightning.base import Batch, DeterministicAutoencoder
from ae_lightning.blocks.networks import mlp_layers
from datamodules.checks import NonNegativeFloat, PositiveFloat, PositiveInt

Prior = Literal["normal", "mixture"]


class Discriminator(nn.Sequential):
    """An MLP ``latent_dim -> *hidden_dims -> 1`` with LeakyReLU(0.2): the logit that a code is real."""

    def __init__(self, latent_dim: int, hidden_dims: Sequence[int]) -> None:
        super().__init__(*mlp_layers([latent_dim, *hidden_dims, 1], lambda: nn.LeakyReLU(0.2)))


def discriminator_terms(discriminator: nn.Module, real: Tensor, fake: Tensor) -> tuple[Tensor, Tensor]:
    """The binary cross-entropy of ``discriminator`` on ``real`` (label 1) and ``fake`` (0) codes, and its accuracy."""
    logits = discriminator(torch.cat([real, fake])).squeeze(-1).float()
    targets = torch.cat([torch.ones(len(real)), torch.zeros(len(fake))]).to(logits.device)
    return F.binary_cross_entropy_with_logits(logits, targets), ((logits > 0).float() == targets).float().mean()


class AdversarialAutoencoder(DeterministicAutoencoder):
    """A deterministic autoencoder whose codes a discriminator cannot tell from samples of the prior.

    Each batch runs, under manual optimization, a reconstruction, a discriminator and a generator phase (Makhzani et al.
    2015); ``global_step`` counts batches; gradient clipping is the model's ``gradient_clip_val`` (docs/adversarial.md).

    Args:
        prior: ``normal``, or ``mixture`` of ``mixture_components`` Gaussians (std ``mixture_std``) with means evenly
            on a circle of radius ``mixture_radius`` in the first two code dimensions.
        adversarial_weight: weight of the generator loss.
        discriminator_optimizer: the optimizer factory (and ``discriminator_lr_scheduler``) of the discriminator.
        generator_optimizer: the encoder's optimizer in the generator phase; None: a separate ``optimizer``.
        gradient_clip_val: clip every step's gradients to this norm (``gradient_clip_algorithm``) or value; None or 0:
            no clipping.
    """

    is_generative = True
    partial_backward = True  # the discriminator phase reaches only the discriminator, the generator phase the encoder
    flat_codes_only = "its discriminator and its prior act on flat codes [latent_dim]"

    def __init__(
        self,
        prior: Prior = "normal",
        mixture_components: PositiveInt = 10,
        mixture_radius: NonNegativeFloat = 4.0,
        mixture_std: PositiveFloat = 0.5,
        discriminator_hidden_dims: Sequence[PositiveInt] = (256, 256),
        adversarial_weight: NonNegativeFloat = 1.0,
        discriminator_optimizer: OptimizerCallable = torch.optim.Adam,
        discriminator_lr_scheduler: LRSchedulerCallable | None = None,
        generator_optimizer: OptimizerCallable | None = None,
        gradient_clip_val: NonNegativeFloat | None = None,
        gradient_clip_algorithm: Literal["norm", "value"] = "norm",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.automatic_optimization = False
        self.prior = prior
        self.mixture_std = mixture_std
        self.adversarial_weight = adversarial_weight
        self.discriminator_optimizer_factory = discriminator_optimizer
        self.discriminator_lr_scheduler_factory = discriminator_lr_scheduler
        self.generator_optimizer_factory = generator_optimizer or self.optimizer_factory
        self.set_gradient_clipping(gradient_clip_val, gradient_clip_algorithm)
        self.discriminator = Discriminator(self.latent_dim, discriminator_hidden_dims)
        means = _mixture_means(mixture_components, self.latent_dim, mixture_radius)
        self.register_buffer("mixture_means", means, persistent=False)

    def sample_prior(self, n: int) -> Tensor:
        """``n`` codes ``[n, latent_dim]`` drawn from the prior in the weights' dtype, alike under every precision."""
        means = self.mixture_means
        # Drawn in float32: randn draws other numbers in float64 (and at some sizes in bfloat16) from the same seed.
        z = torch.randn(n, self.latent_dim, device=means.device, dtype=torch.float32).to(means.dtype)
        if self.prior == "normal":
            return z
        components = torch.randint(len(means), (n,), device=z.device)
        return means[components] + self.mixture_std * z

    def optimization_step(self, batch: Batch) -> dict[str, Tensor]:
        """The three phases on one batch."""
        x = batch[0]
        autoencoder_optimizer, discriminator_optimizer, generator_optimizer = self.optimizers()
        recon = self.reconstruction_phase(x, autoencoder_optimizer)
        d_loss, d_accuracy = self.discriminator_phase(x, discriminator_optimizer)
        g_loss = self.generator_phase(x, generator_optimizer)
        return {"loss": recon, "recon": recon, "d_loss": d_loss, "g_loss": g_loss, "d_accuracy": d_accuracy}

    def reconstruction_phase(self, x: Tensor, optimizer: Optimizer) -> Tensor:
        """One step of encoder and decoder on the reconstruction loss (the counted step)."""
        recon = self.mean_reconstruction_loss(self.decoder(self.encoder(x)), x)
        self.manual_step(optimizer, recon)
        return recon.detach()

    def discriminator_phase(self, x: Tensor, optimizer: Optimizer) -> tuple[Tensor, Tensor]:
        """One step of the discriminator on prior samples against (fixed) codes; returns its loss and accuracy."""
        with torch.no_grad():
            codes = self.encoder(x)
        d_loss, d_accuracy = self.discriminator_terms(codes)
        self.manual_step(optimizer, d_loss, counted=False)
        return d_loss.detach(), d_accuracy

    def generator_phase(self, x: Tensor, optimizer: Optimizer) -> Tensor:
        """One step of the encoder alone on fooling the (frozen) discriminator; returns the generator loss."""
        with self.toggled_optimizer(optimizer):  # freezes decoder and discriminator, whose parameters are not in it
            g_loss = self.generator_loss(self.encoder(x))
            self.manual_step(optimizer, self.adversarial_weight * g_loss, counted=False)
        return g_loss.detach()

    def discriminator_terms(self, codes: Tensor) -> tuple[Tensor, Tensor]:
        """The discriminator's binary cross-entropy on prior samples (1) and ``codes`` (0), and its accuracy."""
        return discriminator_terms(self.discriminator, self.sample_prior(len(codes)).to(codes.dtype), codes)

    def generator_loss(self, codes: Tensor) -> Tensor:
        """``-log D(codes)`` averaged over the batch: small when the discriminator takes the codes for prior samples."""
        logits = self.discriminator(codes).squeeze(-1).float()
        return F.binary_cross_entropy_with_logits(logits, torch.ones_like(logits))

    def loss_terms(self, x: Tensor, labels: Tensor, indices: Tensor) -> dict[str, Tensor]:
        codes = self.encoder(x)
        recon = self.mean_reconstruction_loss(self.decoder(codes), x)
        d_loss, d_accuracy = self.discriminator_terms(codes)
        g_loss = self.generator_loss(codes)
        return {"loss": recon, "recon": recon, "d_loss": d_loss, "g_loss": g_loss, "d_accuracy": d_accuracy}

    def configure_optimizers(self) -> list[dict[str, Any]]:
        """The autoencoder's and the discriminator's optimizers (the base's), then the generator's (encoder)."""
        generator = self.generator_optimizer_factory, self.lr_scheduler_factory
        return [*super().configure_optimizers(), self.build_optimizer(self.encoder.parameters(), *generator)]


def _mixture_means(components: int, latent_dim: int, radius: float) -> Tensor:
    """``[components, latent_dim]`` means evenly spaced on a circle in the first two dimensions (a line in 1-D)."""
    means = torch.zeros(components, latent_dim)
    if latent_dim == 1:
        means[:, 0] = torch.linspace(-radius, radius, components) if components > 1 else 0.0
        return means
    angles = 2 * math.pi * torch.arange(components) / components
    means[:, 0], means[:, 1] = radius * torch.cos(angles), radius * torch.sin(angles)
    return means
