"""Restoration autoencoders: the input is a degraded copy of the image and the target the image itself. The shared
base of the denoising autoencoder and of super-resolution, with their test metrics."""

from __future__ import annotations

import abc
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics.functional.image import structural_similarity_index_measure

from ae_lightning.base import DeterministicAutoencoder
from ae_lightning.evaluation.metrics import psnr_per_image, ssim_sigma


def restoration_metrics(output: Tensor, x: Tensor, name: str) -> dict[str, Tensor]:
    """``psnr_<name>`` (mean per-image PSNR, dB) and ``ssim_<name>`` of images ``output`` against ``x``, in float32
    outside autocast (SSIM's convolutions in bf16 lose its variances); ``mse_<name>`` of feature vectors."""
    output, x = output.float(), x.float()
    if x.dim() == 2:  # PSNR and SSIM are image measures
        return {f"mse_{name}": F.mse_loss(output, x)}
    sigma = ssim_sigma(x.shape[-2:])
    with torch.autocast(x.device.type, enabled=False):
        return {
            f"psnr_{name}": psnr_per_image(output, x).mean(),
            f"ssim_{name}": structural_similarity_index_measure(output, x, sigma=sigma, data_range=1.0),
        }


class RestorationAutoencoder(DeterministicAutoencoder):
    """Reconstructs the image from ``degrade(x)`` in training, validation and test (``forward``, ``encode`` and
    ``predict`` see the images as given); ``test`` also reports PSNR and SSIM (MSE for vectors) of the restored
    (``test/psnr_<restored_name>``, ...) and degraded images (``test/psnr_<degraded_name>``, ...). Validation and test
    degrade each image as its dataset index decides, so that epochs compare the same degraded images."""

    restored_name: ClassVar[str] = "restored"
    degraded_name: ClassVar[str] = "degraded"

    @abc.abstractmethod
    def degrade(self, x: Tensor, indices: Tensor | None = None) -> Tensor:
        """The degraded copy of images ``x``, of the same shape; a random one draws from the global generator, or
        (``indices`` given) each image's from its dataset index alone: the same image, the same copy."""

    def reconstruction_rows(self, x: Tensor, y: Tensor | None = None) -> tuple[Tensor, ...]:
        """The degraded images, their restorations and the originals."""
        degraded = self.degrade(x)
        return degraded, self(degraded, y), x

    def loss_terms(self, x: Tensor, labels: Tensor, indices: Tensor) -> dict[str, Tensor]:
        return self.restoration_loss(x, self.degrade(x, None if self.training else indices))

    def restoration_loss(self, x: Tensor, degraded: Tensor) -> dict[str, Tensor]:
        recon = self.mean_reconstruction_loss(self.decoder(self.encoder(degraded)), x)
        return {"loss": recon, "recon": recon}

    def test_terms(self, x: Tensor, labels: Tensor, indices: Tensor) -> tuple[dict[str, Tensor], Tensor]:
        """The loss and the restoration metrics of ``degrade(x, indices)``, and the clean images' reconstructions."""
        degraded = self.degrade(x, indices)
        metrics = {
            **restoration_metrics(self(degraded, labels), x, self.restored_name),
            **restoration_metrics(degraded, x, self.degraded_name),
        }
        return {**self.restoration_loss(x, degraded), **metrics}, self(x, labels)
