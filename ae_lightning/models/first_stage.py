"""Autoencoders with spatial codes and the perceptual-adversarial training recipe of VQGAN (Esser et al. 2021,
"Taming Transformers for High-Resolution Image Synthesis") and of latent diffusion's first stage (Rombach et al. 2022,
"High-Resolution Image Synthesis with Latent Diffusion Models"); the recipe: ``docs/quantized.md``."""

from __future__ import annotations

import abc
import contextlib
import inspect
from collections.abc import Iterator, Sequence
from typing import Any, Literal

import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor, nn
from torchmetrics import Metric
from torchmetrics.functional.image import multiscale_structural_similarity_index_measure

from ae_lightning.base import AutoencoderModule, Batch, Stage
from ae_lightning.blocks import losses
from ae_lightning.blocks.discriminators import PatchDiscriminator, min_image_size
from ae_lightning.blocks.networks import decoder_mean
from ae_lightning.blocks.perceptual import LPIPSDistance, PerceptualNetwork, weights_from_checkpoint
from ae_lightning.blocks.residual_conv import ResidualConvDecoder, ResidualConvEncoder, check_image_size
from ae_lightning.evaluation.metrics import ms_ssim_applies, ms_ssim_betas
from datamodules.checks import NonNegativeFloat, NonNegativeInt, PositiveInt

PixelLoss = Literal["l1", "mse", "bce"]
AdversarialLoss = Literal["hinge", "non_saturating"]


class FirstStageAutoencoder(AutoencoderModule, abc.ABC):
    """Base of the autoencoders with codes ``[B, latent_dim, H / f, W / f]``, f = 2 ** len(hidden_dims); a variant
    implements :meth:`bottleneck` and may widen :attr:`encoder_channels` (``docs/quantized.md``).

    Args:
        residual_blocks: residual blocks of the default networks.
        pixel_loss: ``l1``, ``mse`` (on the pixel means) or ``bce`` (on the logits), averaged over pixels.
        perceptual_weight: weight of the LPIPS distance (gray or RGB images); 0: none (its settings keep defaults).
        perceptual_network, perceptual_pretrained: the LPIPS trunk (``alex``, ``vgg``, ``squeeze``); its weights.
        adversarial_weight: weight of the generator loss; 0: no discriminator (its settings but the optimizer unset).
        adversarial_loss: ``hinge`` or ``non_saturating``.
        adaptive_weight: scale the generator loss by the ratio of gradient norms at the decoder's last layer.
        disc_start: the step from which the adversarial term and discriminator steps apply.
        discriminator_channels: channels of the PatchGAN's first layer.
        discriminator_layers: stride-2 PatchGAN layers after its first (images of >= ``3 * 2 ** layers`` pixels).
        discriminator_optimizer, discriminator_lr_scheduler: the discriminator's optimizer and optional scheduler.
        gradient_clip_val, gradient_clip_algorithm: with a discriminator, clip both steps (else the Trainer's).
        network, hidden_dims: ``conv`` only; channels of each stride-2 convolution of the default networks.
        **kwargs: the :class:`~ae_lightning.base.AutoencoderModule` arguments; ``latent_dim`` is the code's channels.
    """

    def __init__(
        self,
        residual_blocks: NonNegativeInt = 2,
        pixel_loss: PixelLoss = "mse",
        perceptual_weight: NonNegativeFloat = 0.0,
        perceptual_network: PerceptualNetwork = "alex",
        perceptual_pretrained: bool = True,
        adversarial_weight: NonNegativeFloat = 0.0,
        adversarial_loss: AdversarialLoss = "hinge",
        adaptive_weight: bool = True,
        disc_start: NonNegativeInt = 0,
        discriminator_channels: PositiveInt = 64,
        discriminator_layers: NonNegativeInt = 3,
        discriminator_optimizer: OptimizerCallable = torch.optim.Adam,
        discriminator_lr_scheduler: LRSchedulerCallable | None = None,
        gradient_clip_val: NonNegativeFloat | None = None,
        gradient_clip_algorithm: Literal["norm", "value"] = "norm",
        network: Literal["conv"] = "conv",
        hidden_dims: Sequence[PositiveInt] = (128, 128),
        **kwargs: Any,
    ) -> None:
        check_unread_settings(locals())
        super().__init__(network=network, hidden_dims=hidden_dims, **kwargs)
        factor = 2 ** len(hidden_dims)
        self.latent_shape = (self.latent_dim, self.input_shape[1] // factor, self.input_shape[2] // factor)
        self.pixel_loss = pixel_loss
        self.perceptual_weight = perceptual_weight
        self.adversarial_weight = adversarial_weight
        self.adversarial_loss = adversarial_loss
        self.adaptive_weight = adaptive_weight
        self.disc_start = disc_start
        self.discriminator_optimizer_factory = discriminator_optimizer
        self.discriminator_lr_scheduler_factory = discriminator_lr_scheduler
        if perceptual_weight and self.input_shape[0] not in (1, 3):
            raise ValueError(
                f"perceptual_weight={perceptual_weight} needs gray or RGB images (LPIPS takes 1 or 3 channels), but "
                f"the images have {self.input_shape[0]} channels (input_shape {self.input_shape}); set "
                "perceptual_weight: 0"
            )
        self.perceptual = LPIPSDistance(perceptual_network, perceptual_pretrained) if perceptual_weight else None
        if adversarial_weight:
            check_discriminator_depth(discriminator_layers, self.input_shape[1:])
            self.discriminator = PatchDiscriminator(self.input_shape[0], discriminator_channels, discriminator_layers)
            self.automatic_optimization = False
            self.partial_backward = True  # the discriminator's step reaches the discriminator only
        if gradient_clip_val and self.automatic_optimization:
            raise ValueError(
                f"gradient_clip_val={gradient_clip_val} clips the steps of a model with a discriminator "
                "(adversarial_weight > 0); without one the Trainer steps the optimizer: set --trainer.gradient_clip_val"
            )
        self.set_gradient_clipping(gradient_clip_val, gradient_clip_algorithm)
        # A variant's metric of the codes of validation's and test's losses (not of pictures' or predict's), over the
        # epoch: its ``compute`` returns ``{name: value}``, logged as ``val/<name>`` and ``test/<name>``.
        self.code_metric: Metric | None = None
        self.counting_codes = False

    @classmethod
    def load_from_checkpoint(cls, checkpoint_path: Any, *args: Any, **kwargs: Any) -> FirstStageAutoencoder:
        """Lightning's ``load_from_checkpoint``, with LPIPS's weights from the checkpoint alone (nothing downloaded)."""
        with weights_from_checkpoint():
            return super().load_from_checkpoint(checkpoint_path, *args, **kwargs)

    def build_encoder(self) -> nn.Module:
        """The residual convolutional encoder: images to ``[B, encoder_channels, H / f, W / f]``."""
        channels, height, width = self.input_shape
        hidden_dims = list(self.hparams.hidden_dims)
        check_image_size(height, width, 2 ** len(hidden_dims))
        return ResidualConvEncoder(channels, self.encoder_channels, hidden_dims, self.hparams.residual_blocks)

    def build_decoder(self) -> nn.Module:
        """The residual convolutional decoder: codes ``[B, latent_dim, H / f, W / f]`` to pixel logits."""
        hidden_dims = list(self.hparams.hidden_dims)
        return ResidualConvDecoder(self.input_shape[0], self.latent_dim, hidden_dims, self.hparams.residual_blocks)

    def check_encoder_output(self, x: Tensor, y: Tensor) -> None:
        # A given encoder sets the codes' size, which hidden_dims (the default networks') need not: test/bits_per_pixel
        self.latent_shape = (self.latent_dim, *self.encoder(x).shape[2:])

    @property
    def encoder_channels(self) -> int:
        """Channels of the encoder's output (``latent_dim``; twice that for a Gaussian posterior)."""
        return self.latent_dim

    @abc.abstractmethod
    def bottleneck(self, h: Tensor) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        """The decoder's input from encoder output ``h``, the loss term, terms to log; updates :attr:`code_metric`
        while :attr:`counting_codes`."""

    @contextlib.contextmanager
    def _codes_counted(self, counted: bool = True) -> Iterator[None]:
        self.counting_codes = counted and self.code_metric is not None
        try:
            yield
        finally:
            self.counting_codes = False

    def _shared_step(self, batch: Batch, stage: Stage) -> dict[str, Tensor]:
        with self._codes_counted(stage != "train"):
            return super()._shared_step(batch, stage)

    def _test_step(self, batch: Batch) -> None:
        with self._codes_counted():  # the test step encodes once, for its loss and metrics alike
            super()._test_step(batch)

    def on_validation_epoch_start(self) -> None:
        if self.code_metric is not None:  # what a stage stopped inside its epoch counted
            self.code_metric.reset()

    on_test_epoch_start = on_validation_epoch_start

    def on_validation_epoch_end(self) -> None:
        if self.code_metric is not None and self.code_metric.update_count:
            for name, value in self.code_metric.compute().items():
                self.log(f"{'test' if self.trainer.testing else 'val'}/{name}", value)
            self.code_metric.reset()

    on_test_epoch_end = on_validation_epoch_end

    def encode(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        """Codes ``[B, latent_dim, H / f, W / f]`` of images ``x``, the bottleneck in evaluation mode (no update)."""
        self.check_tensor(x, "encode(x)")
        h = self.encoder(x)
        with evaluating(self):
            return self.bottleneck(h)[0]

    def loss_terms(self, x: Tensor, labels: Tensor, indices: Tensor) -> dict[str, Tensor]:
        return self.test_terms(x, labels, indices)[0]

    def test_terms(self, x: Tensor, labels: Tensor, indices: Tensor) -> tuple[dict[str, Tensor], Tensor]:
        # Also the test step's: its reconstruction is the one scored (evaluation codes are deterministic).
        terms, reconstruction = self.autoencoder_terms(x)
        if self.adversarial_weight:
            logits_fake = self.discriminator(reconstruction)
            terms["g_loss"] = losses.generator_adversarial_loss(logits_fake, self.adversarial_loss)
            terms["d_loss"] = self.discriminator_loss(x, reconstruction)
        return terms, reconstruction

    def autoencoder_terms(self, x: Tensor) -> tuple[dict[str, Tensor], Tensor]:
        """The named terms of the autoencoder's loss without the adversarial term, and the reconstruction in [0, 1]."""
        z, penalty, logged = self.bottleneck(self.encoder(x))
        logits = self.decoder(z)
        reconstruction = decoder_mean(logits, self.input_shape)
        if self.pixel_loss == "bce":
            recon = -losses.bernoulli_log_likelihood(logits, x).mean() / x[0].numel()
        elif self.pixel_loss == "l1":
            recon = (reconstruction - x).abs().mean()
        else:
            recon = (reconstruction - x).pow(2).mean()
        terms = {"recon": recon, **logged}
        loss = recon + penalty
        if self.perceptual is not None:
            terms["perceptual"] = self.perceptual(reconstruction.float(), x.float()).mean()
            loss = loss + self.perceptual_weight * terms["perceptual"]
        return {"loss": loss, **terms}, reconstruction

    def discriminator_loss(self, x: Tensor, reconstruction: Tensor) -> Tensor:
        """The discriminator's loss on images ``x`` (real) and reconstructions (fake, detached)."""
        hinge = self.adversarial_loss == "hinge"
        loss = losses.hinge_discriminator_loss if hinge else losses.non_saturating_discriminator_loss
        return loss(self.discriminator(x), self.discriminator(reconstruction.detach()))

    def last_layer_weight(self) -> Tensor:
        """Where the adaptive weight compares gradients: the decoder's ``last_layer``'s weight or last kernel; a
        ValueError if there is none or it is frozen."""
        last = getattr(self.decoder, "last_layer", None)
        if isinstance(last, nn.Module) and isinstance(getattr(last, "weight", None), Tensor):
            weight = last.weight
        else:
            weight = next((p for p in reversed(list(self.decoder.parameters())) if p.ndim >= 2), None)
        if weight is None or not weight.requires_grad:
            found = "no weight of two or more dimensions" if weight is None else "a frozen last weight"
            raise ValueError(
                f"adaptive_weight compares gradients at the decoder's last layer, but {type(self.decoder).__name__} "
                f"has {found}: give the decoder a trainable `last_layer`, or set adaptive_weight: false"
            )
        return weight

    def optimization_step(self, batch: Batch) -> dict[str, Tensor]:
        """A step of the autoencoder (counted in ``global_step``), then one of the discriminator from ``disc_start``."""
        if not self.adversarial_weight:
            return super().optimization_step(batch)  # one optimizer (the fast path's manual optimization)
        x = batch[0]
        autoencoder_optimizer, discriminator_optimizer = self.optimizers()
        adversarial = self.global_step >= self.disc_start
        terms, reconstruction = self.autoencoder_terms(x)
        loss = terms["loss"]
        if adversarial:
            # Its gradients reach the discriminator's weights too, but are zeroed before the discriminator's step.
            g_loss = losses.generator_adversarial_loss(self.discriminator(reconstruction), self.adversarial_loss)
            weight = torch.ones((), device=x.device)
            if self.adaptive_weight:
                # fp16's current gradient scale as a tensor (no host sync), or None without a gradient scaler
                scaler = getattr(self.trainer.precision_plugin, "scaler", None)
                scale = None if scaler is None else scaler.scale(torch.ones((), device=x.device))
                weight = losses.adaptive_adversarial_weight(loss, g_loss, self.last_layer_weight(), loss_scale=scale)
            loss = loss + self.adversarial_weight * weight * g_loss
            terms |= {"g_loss": g_loss, "adaptive_weight": weight}
        self.manual_step(autoencoder_optimizer, loss)
        if adversarial:
            terms["d_loss"] = self.discriminator_loss(x, reconstruction)
            self.manual_step(discriminator_optimizer, terms["d_loss"], counted=False)
        terms["loss"] = loss
        return {name: value.detach() for name, value in terms.items()}

    def on_train_start(self) -> None:
        super().on_train_start()
        steps = self.fit_steps()  # disc_start counts optimizer steps
        if self.adversarial_weight and self.adaptive_weight:
            self.last_layer_weight()  # refused now, not at the first step from disc_start
        if self.adversarial_weight and self.disc_start >= steps:
            rank_zero_warn(
                f"disc_start={self.disc_start} is at or beyond the run's {steps} steps: the discriminator never "
                "trains and no adversarial term applies; lower disc_start"
            )

    def test_metrics(
        self, x: Tensor, y: Tensor | None = None, reconstruction: Tensor | None = None
    ) -> dict[str, Tensor]:
        """``ms_ssim`` of the reconstructions (where the image size allows) and, with LPIPS, ``lpips``."""
        reconstruction = (self(x, y) if reconstruction is None else reconstruction).float()
        metrics = {}
        with torch.autocast(x.device.type, enabled=False):  # bf16 convolutions moved ms_ssim from 0.038 to 0.063
            if ms_ssim_applies(x.shape[-2:]):  # a fully convolutional model scores images of any size
                betas = ms_ssim_betas(x.shape[-2:])
                metrics["ms_ssim"] = multiscale_structural_similarity_index_measure(
                    reconstruction, x.float(), betas=betas, data_range=1.0
                )
            if self.perceptual is not None:
                metrics["lpips"] = self.perceptual(reconstruction, x.float()).mean()
        return metrics


# The settings of the discriminator and of LPIPS, which nothing reads when their weight is 0.
_READ_WITH = {
    "adversarial_weight": ("adversarial_loss", "adaptive_weight", "disc_start", "discriminator_channels",
                           "discriminator_layers", "discriminator_lr_scheduler"),
    "perceptual_weight": ("perceptual_network", "perceptual_pretrained"),
}  # fmt: skip


def check_unread_settings(settings: dict[str, Any]) -> None:
    """Raise a ValueError if one of ``settings`` differs from its default while the weight that makes it read is 0."""
    defaults = inspect.signature(FirstStageAutoencoder.__init__).parameters
    for weight, names in _READ_WITH.items():
        for name in names if not settings[weight] else ():
            value, default = settings[name], defaults[name].default
            if value != default:
                raise ValueError(
                    f"{name}={value!r} has no effect with {weight}=0 (nothing reads it): set {weight} above 0, or "
                    f"leave {name} at its default {default!r}"
                )


@contextlib.contextmanager
def evaluating(module: nn.Module) -> Iterator[None]:
    """``module`` and all its submodules in eval mode within, each restored to its own mode after."""
    modes = [(submodule, submodule.training) for submodule in module.modules()]
    module.train(False)
    try:
        yield
    finally:
        for submodule, mode in modes:  # not ``train``, which would recurse (and LPIPS stays in eval)
            submodule.training = mode


def check_discriminator_depth(layers: int, size: Sequence[int]) -> None:
    """Raise a ValueError naming the deepest PatchGAN that fits if one of ``layers`` cannot take images of ``size``."""
    if min(size) >= min_image_size(layers):
        return
    fitting = [depth for depth in range(layers) if min_image_size(depth) <= min(size)]
    remedy = f"set discriminator_layers to {fitting[-1]} or less" if fitting else "set adversarial_weight: 0"
    raise ValueError(
        f"discriminator_layers={layers} needs images of at least {min_image_size(layers)}x{min_image_size(layers)} "
        f"pixels, but the image size is {size[0]}x{size[1]}; {remedy}, or use larger images"
    )


__all__ = ["FirstStageAutoencoder", "check_discriminator_depth", "check_unread_settings", "evaluating"]
