"""Image metrics built from torchmetrics, shared by ``ae-lightning test`` and the evaluation of trained models."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import torchvision.models as tv
from torch import Tensor, nn
from torchmetrics import MeanMetric, MeanSquaredError, MetricCollection
from torchmetrics.image import MultiScaleStructuralSimilarityIndexMeasure, StructuralSimilarityIndexMeasure
from torchmetrics.image.fid import FrechetInceptionDistance

PSNR_CAP_DB = 100.0  # the PSNR of an exact image: its MSE floored at 1e-10, so a mean stays finite (docs/family.md)


def psnr_per_image(preds: Tensor, target: Tensor) -> Tensor:
    """The PSNR ``10 log10(1 / MSE)``, dB ``[B]``, of ``preds`` ``[B, ...]`` against ``target``, at most 100 dB."""
    mse = (preds.float() - target.float()).pow(2).flatten(1).mean(1)
    return -10 * torch.log10(mse.clamp_min(10 ** (-PSNR_CAP_DB / 10)))


class ImagePSNR(MeanMetric):
    """The mean over images of :func:`psnr_per_image` (dB, each at most :data:`PSNR_CAP_DB`); NaN if one is."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(nan_strategy="disable", **kwargs)  # a NaN reconstruction shows, as in ``recon_mse``

    def update(self, preds: Tensor, target: Tensor) -> None:  # type: ignore[override]
        super().update(psnr_per_image(preds, target))


class PixelBinaryCrossEntropy(MeanMetric):
    """Binary cross-entropy (nats, logarithms clamped at -100) of reconstructed pixels, averaged over pixels."""

    def update(self, preds: Tensor, target: Tensor) -> None:  # type: ignore[override]
        super().update(F.binary_cross_entropy(preds, target, reduction="none"))


def ssim_sigma(image_size: Sequence[int]) -> float:
    """The std of SSIM's Gaussian window on images of ``image_size`` ``(H, W)``: 1.5 (11 pixels, Wang et al. 2004) on
    images of 6 pixels a side or more, else that of the largest odd window that fits."""
    side = min(image_size)
    radius = 5 if side > 5 else (side - 1) // 2
    # torchmetrics' window has the radius int(3.5 * sigma + 0.5); this sigma gives ``radius``, and 1.5 for 5
    return (radius + 0.25) / 3.5


class StructuralSimilarity(StructuralSimilarityIndexMeasure):
    """torchmetrics' SSIM of images in [0, 1], with the Gaussian window of :func:`ssim_sigma` for their size."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(data_range=1.0, **kwargs)

    def update(self, preds: Tensor, target: Tensor) -> None:  # type: ignore[override]
        self.sigma = ssim_sigma(preds.shape[-2:])
        super().update(preds, target)


class ReconstructionMetrics(MetricCollection):
    """``recon_mse`` and ``recon_bce`` (per pixel), ``psnr`` and ``ssim`` of ``(reconstructions, images)``
    ``[B, C, H, W]`` in [0, 1], updated in float32 outside autocast; of vectors (``images=False``), ``recon_mse``."""

    def __init__(self, prefix: str | None = None, images: bool = True, **kwargs: Any) -> None:
        metrics: dict[str, Any] = {"recon_mse": MeanSquaredError()}
        if images:
            metrics |= {"recon_bce": PixelBinaryCrossEntropy(), "psnr": ImagePSNR(), "ssim": StructuralSimilarity()}
        super().__init__(metrics, prefix=prefix, compute_groups=False, **kwargs)

    def update(self, preds: Tensor, target: Tensor) -> None:  # type: ignore[override]
        with torch.autocast(preds.device.type, enabled=False):
            super().update(preds.float(), target.float())


# The weights of the five scales of Wang et al. 2003, "Multiscale structural similarity for image quality assessment".
MS_SSIM_BETAS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)


def ms_ssim_applies(image_size: Sequence[int], kernel_size: int = 11) -> bool:
    """Whether MS-SSIM (at least its first scale) can be computed on images of ``image_size`` ``(H, W)``."""
    return min(image_size) > kernel_size - 1


def ms_ssim_betas(image_size: Sequence[int], kernel_size: int = 11) -> tuple[float, ...]:
    """The weights, summing to 1, of as many of MS-SSIM's five scales as images of ``image_size`` ``(H, W)`` allow
    (five from 176 pixels a side, two at 28x28, one at 11x11)."""
    side = min(image_size)
    # torchmetrics' size rule for s scales: side // max(1, s - 1) ** 2 > kernel_size - 1 and side >= 2 ** s; its
    # reflection padding of kernel_size // 2 pixels also needs the s-th scale, side // 2 ** (s - 1), to be wider
    fits = [
        s
        for s in range(1, 6)
        if side // max(1, s - 1) ** 2 > kernel_size - 1 and side >= 2**s and side // 2 ** (s - 1) > kernel_size // 2
    ]
    if not fits:
        raise ValueError(
            f"MS-SSIM with an {kernel_size}-pixel window needs images of at least {kernel_size} pixels a side"
        )
    betas = MS_SSIM_BETAS[: max(fits)]
    return tuple(beta / sum(betas) for beta in betas)


def multiscale_ssim(image_size: Sequence[int], kernel_size: int = 11) -> MultiScaleStructuralSimilarityIndexMeasure:
    """torchmetrics' MS-SSIM of images in [0, 1] of ``image_size`` ``(H, W)``, the scales of :func:`ms_ssim_betas`."""
    betas = ms_ssim_betas(image_size, kernel_size)
    return MultiScaleStructuralSimilarityIndexMeasure(data_range=1.0, kernel_size=kernel_size, betas=betas)


class FeatureExtractor(nn.Module):
    """A classifier's ``features(x) -> [B, num_features]``, the feature space of :class:`FrechetDistance`."""

    def __init__(self, classifier: nn.Module) -> None:
        super().__init__()
        self.classifier = classifier.eval()
        self.num_features = int(classifier.num_features)

    def forward(self, x: Tensor) -> Tensor:
        expected = getattr(self.classifier, "input_shape", None)  # a dataset classifier knows its image size
        if expected is not None and tuple(x.shape[1:]) != tuple(expected):
            raise ValueError(
                f"the feature classifier was trained on images of shape {tuple(expected)}, these have shape "
                f"{tuple(x.shape[1:])}: train one on this data at this size (scripts/train_feature_classifier.py)"
            )
        return self.classifier.features(x)


_INCEPTION_WEIGHTS = tv.Inception_V3_Weights.IMAGENET1K_V1


def inception_weights_path() -> Path:
    """Where torchvision keeps (and looks for) the ImageNet weights of :class:`InceptionFeatures`."""
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(_INCEPTION_WEIGHTS.url).name


class InceptionFeatures(nn.Module):
    """The 2048 pool features of torchvision's Inception-v3 (not the TensorFlow graph of published FIDs) of images in
    [0, 1], gray ones repeated to three channels, resized to 299x299 and normalized as ImageNet's. ``pretrained``: the
    ImageNet weights (at :func:`inception_weights_path`); False leaves them random."""

    num_features = 2048

    def __init__(self, pretrained: bool = True) -> None:
        super().__init__()
        if pretrained:
            path = inception_weights_path()
            try:
                network = tv.inception_v3(weights=_INCEPTION_WEIGHTS)
            except Exception as error:  # offline: urllib's URLError; a file in place: whatever torch.load raises
                where = f"they are not in {path.parent} and could not be downloaded"
                if path.is_file():
                    where = f"{path} is there but cannot be read (a partial or corrupt copy? remove it)"
                raise FileNotFoundError(
                    f"the Inception features need torchvision's ImageNet weights {path.name}: {where} "
                    f"({type(error).__name__}: {error}). Download {_INCEPTION_WEIGHTS.url} on a machine with internet "
                    f"and put it at {path}, or use the dataset classifier's features (rfid_classifier)"
                ) from error
        else:
            network = tv.inception_v3(weights=None, aux_logits=False, init_weights=False, transform_input=True)
        network.fc = nn.Identity()
        self.network = network.eval().requires_grad_(False)
        mean, std = _INCEPTION_WEIGHTS.transforms().mean, _INCEPTION_WEIGHTS.transforms().std
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

    def features(self, x: Tensor) -> Tensor:
        """Features ``[B, 2048]`` of images ``[B, C, H, W]`` in [0, 1] (C = 1 or 3)."""
        x = x.float().expand(-1, 3, -1, -1) if x.shape[1] == 1 else x.float()
        x = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
        return self.network((x - self.mean) / self.std)


class FrechetDistance(FrechetInceptionDistance):
    """torchmetrics' FID in a classifier's or :class:`InceptionFeatures`' features, of float images in [0, 1]."""

    def __init__(self, classifier: nn.Module, **kwargs: Any) -> None:
        super().__init__(feature=FeatureExtractor(classifier), normalize=True, **kwargs)  # float images, unchanged


__all__ = [
    "FeatureExtractor",
    "FrechetDistance",
    "ImagePSNR",
    "InceptionFeatures",
    "MS_SSIM_BETAS",
    "PSNR_CAP_DB",
    "PixelBinaryCrossEntropy",
    "ReconstructionMetrics",
    "StructuralSimilarity",
    "inception_weights_path",
    "ms_ssim_applies",
    "ms_ssim_betas",
    "multiscale_ssim",
    "psnr_per_image",
    "ssim_sigma",
]
