"""A small convolutional encoder and decoder with spatial codes ``[B, code_channels, H / f, W / f]``,
``f = 2 ** len(hidden_dims)``: stride-2 convolutions and residual blocks, after van den Oord et al. 2017 (sec. 4.1)."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from datamodules.checks import NonNegativeInt, PositiveInt, check_arguments


class ResidualBlock(nn.Module):
    """``x + conv1x1(relu(conv3x3(relu(x))))``, as in the VQ-VAE paper; the 3x3 convolution has ``hidden_channels``."""

    def __init__(self, channels: int, hidden_channels: int) -> None:
        super().__init__()
        self.block = nn.Sequential(
            nn.ReLU(),
            nn.Conv2d(channels, hidden_channels, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(hidden_channels, channels, 1),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.block(x)


def check_image_size(height: int, width: int, factor: int) -> None:
    """Raise a ValueError naming the size, the factor f and a size that fits unless f divides height and width."""
    if height % factor or width % factor or min(height, width) < factor:
        fits = f"{max(factor, height // factor * factor)}x{max(factor, width // factor * factor)}"
        raise ValueError(
            f"the image size {height}x{width} is not divisible by the downsampling factor {factor} (2 ** "
            f"len(hidden_dims) = 2 ** {factor.bit_length() - 1}); crop or pad the images to multiples of {factor} "
            f"(e.g. {fits}), or change hidden_dims"
        )


def _check(hidden_dims: Sequence[int]) -> None:
    if not hidden_dims:
        raise ValueError("hidden_dims must name the channels of at least one stride-2 convolution, got []")


class ResidualConvEncoder(nn.Sequential):
    """Stride-2 convolutions (kernel 4), a 3x3 convolution, residual blocks and a 1x1 projection to the code.

    Args:
        in_channels: channels of the images.
        code_channels: channels of the code.
        hidden_dims: channels of each stride-2 convolution; the code is ``2 ** len(hidden_dims)`` times smaller.
        residual_blocks: residual blocks after the convolutions.
    """

    def __init__(
        self,
        in_channels: PositiveInt = 1,
        code_channels: PositiveInt = 64,
        hidden_dims: Sequence[PositiveInt] = (128, 128),
        residual_blocks: NonNegativeInt = 2,
    ) -> None:
        check_arguments(locals(), ResidualConvEncoder.__init__)
        _check(hidden_dims)
        layers: list[nn.Module] = []
        for fan_in, fan_out in zip([in_channels, *hidden_dims[:-1]], hidden_dims):
            layers += [nn.Conv2d(fan_in, fan_out, 4, stride=2, padding=1), nn.ReLU()]
        channels = hidden_dims[-1]
        layers.append(nn.Conv2d(channels, channels, 3, padding=1))
        layers += [ResidualBlock(channels, max(channels // 4, 1)) for _ in range(residual_blocks)]
        layers += [nn.ReLU(), nn.Conv2d(channels, code_channels, 1)]
        super().__init__(*layers)
        self.downsampling_factor = 2 ** len(hidden_dims)

    def forward(self, x: Tensor) -> Tensor:
        check_image_size(x.shape[-2], x.shape[-1], self.downsampling_factor)
        return super().forward(x)


class ResidualConvDecoder(nn.Sequential):
    """The mirror of :class:`ResidualConvEncoder` (``out_channels`` the images'), returning pixel logits."""

    def __init__(
        self,
        out_channels: PositiveInt = 1,
        code_channels: PositiveInt = 64,
        hidden_dims: Sequence[PositiveInt] = (128, 128),
        residual_blocks: NonNegativeInt = 2,
    ) -> None:
        check_arguments(locals(), ResidualConvDecoder.__init__)
        _check(hidden_dims)
        channels = list(reversed(hidden_dims))
        layers: list[nn.Module] = [nn.Conv2d(code_channels, channels[0], 3, padding=1)]
        layers += [ResidualBlock(channels[0], max(channels[0] // 4, 1)) for _ in range(residual_blocks)]
        layers.append(nn.ReLU())
        for fan_in, fan_out in zip(channels, [*channels[1:], out_channels]):
            layers += [nn.ConvTranspose2d(fan_in, fan_out, 4, stride=2, padding=1), nn.ReLU()]
        super().__init__(*layers[:-1])  # logits: no ReLU after the last

    @property
    def last_layer(self) -> nn.Module:
        """The layer whose weight the adaptive adversarial weight compares gradients at."""
        return self[-1]


__all__ = ["ResidualBlock", "ResidualConvDecoder", "ResidualConvEncoder", "check_image_size"]
