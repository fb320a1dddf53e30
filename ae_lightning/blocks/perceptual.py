"""The LPIPS perceptual distance (Zhang et al. 2018) of the ``lpips`` package, a frozen loss network and a metric;
its trunk's ImageNet weights are torchvision's download (offline: the file at :func:`trunk_weights_path`), or a
checkpoint's (:func:`weights_from_checkpoint`)."""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from contextvars import ContextVar
from pathlib import Path
from typing import Literal

import lpips
import torch
import torch.nn.functional as F
import torchvision.models as tv
from torch import Tensor, nn

PerceptualNetwork = Literal["alex", "vgg", "squeeze"]
_TRUNK_WEIGHTS = {
    "alex": tv.AlexNet_Weights.IMAGENET1K_V1,
    "vgg": tv.VGG16_Weights.IMAGENET1K_V1,
    "squeeze": tv.SqueezeNet1_1_Weights.IMAGENET1K_V1,
}
# AlexNet's stride-4 stem and three max-pools leave nothing of images much smaller than this.
MIN_SIZE = 64
_TORCHVISION_PRETRAINED = r"The parameter 'pretrained' is deprecated|Arguments other than a weight enum or `None` for"
_FROM_CHECKPOINT: ContextVar[bool] = ContextVar("lpips_weights_from_checkpoint", default=False)


def trunk_weights_path(network: PerceptualNetwork) -> Path:
    """Where torchvision keeps (and looks for) the ImageNet weights of the LPIPS trunk ``network``."""
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(_TRUNK_WEIGHTS[network].url).name


class LPIPSDistance(nn.Module):
    """Frozen LPIPS distance per image between images in [0, 1], gray ones repeated to three channels, smaller ones
    upsampled to 64 pixels. ``network``: the trunk, ``alex`` (VQGAN's evaluation), ``vgg`` (its loss) or ``squeeze``;
    ``pretrained``: its ImageNet weights (False: a random trunk, a distance >= 0, zero for equal images)."""

    def __init__(self, network: PerceptualNetwork = "alex", pretrained: bool = True) -> None:
        super().__init__()
        if network not in _TRUNK_WEIGHTS:
            raise ValueError(f"perceptual network must be 'alex', 'vgg' or 'squeeze', got {network!r}")
        self.network = network
        if pretrained and not _FROM_CHECKPOINT.get():
            self.lpips = _pretrained_lpips(network)
        else:
            # lpips's pretrained=False would also leave the linear layers random: a "distance" of either sign
            self.lpips = _lpips(network, random_trunk=True)
        self.lpips.eval().requires_grad_(False)

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        """LPIPS distances ``[B]`` of images ``x`` and ``y`` ``[B, C, H, W]`` in [0, 1], in its weights' dtype."""
        dtype = next(self.lpips.parameters()).dtype
        x, y = x.to(dtype), y.to(dtype)
        if x.shape[1] == 1:
            x, y = x.expand(-1, 3, -1, -1), y.expand(-1, 3, -1, -1)
        if min(x.shape[-2:]) < MIN_SIZE:
            scale = MIN_SIZE / min(x.shape[-2:])
            x, y = (F.interpolate(t, scale_factor=scale, mode="bilinear", align_corners=False) for t in (x, y))
        return self.lpips(x, y, normalize=True).flatten()

    def train(self, mode: bool = True) -> LPIPSDistance:
        super().train(mode)
        self.lpips.eval()  # a fixed metric: its dropout never runs
        return self


@contextlib.contextmanager
def weights_from_checkpoint() -> Iterator[None]:
    """Within it, :class:`LPIPSDistance` loads no pretrained weights: for a model about to load a checkpoint."""
    token = _FROM_CHECKPOINT.set(True)
    try:
        yield
    finally:
        _FROM_CHECKPOINT.reset(token)


def _lpips(network: PerceptualNetwork, random_trunk: bool) -> nn.Module:
    with warnings.catch_warnings():  # lpips builds its trunk with torchvision's deprecated ``pretrained=``: not ours
        warnings.filterwarnings("ignore", _TORCHVISION_PRETRAINED, UserWarning, r"torchvision\.models\._utils")
        return lpips.LPIPS(net=network, pretrained=True, pnet_rand=random_trunk, verbose=False)


def _pretrained_lpips(network: PerceptualNetwork) -> nn.Module:
    path = trunk_weights_path(network)
    try:
        return _lpips(network, random_trunk=False)
    except Exception as error:
        # A failed download raises an OSError; a file that is no torch checkpoint, whatever torch.load meets (EOFError).
        present = path.exists()
        if not (present or isinstance(error, OSError | RuntimeError)):
            raise
        url, cause = _TRUNK_WEIGHTS[network].url, f"{type(error).__name__}: {error}"
        if present:
            problem = f"{path} exists but cannot be read (a corrupt file, {cause}): replace it with {url} downloaded"
        else:
            problem = f"they are not in {path.parent} and could not be downloaded ({cause}). Download {url}"
        # from None: the message quotes the cause, and ae-lightning prints the innermost error of a chain alone
        raise FileNotFoundError(
            f"LPIPS ({network}) needs torchvision's ImageNet weights {path.name}: {problem} on a machine with "
            f"internet and put it at {path}, or set perceptual_pretrained: false (a random trunk, a weak prior) or "
            "perceptual_weight: 0"
        ) from None


__all__ = ["LPIPSDistance", "trunk_weights_path", "weights_from_checkpoint"]
