"""The dropout autoencoder: the plain autoencoder with dropout (Srivastava et al. 2014, "Dropout: A Simple Way to
Prevent Neural Networks from Overfitting") on its input and hidden layers at training time.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from ae_lightning.checks import check_number
from ae_lightning.models.autoencoder import Autoencoder


class DropoutAutoencoder(Autoencoder):
    """The plain autoencoder with dropout on the input pixels and/or after every hidden layer, in training only.

    Input dropout zeroes pixels and scales the others by ``1 / (1 - input_dropout)`` while the target stays the clean
    image, so it is a denoising autoencoder with masking noise up to that scale; hidden dropout regularizes the
    networks themselves. At evaluation time both are off.

    Args:
        input_dropout: dropout rate on the input pixels, in [0, 1).
        dropout: dropout rate after each hidden layer of encoder and decoder, in [0, 1).
        **kwargs: the :class:`~ae_lightning.models.autoencoder.Autoencoder` arguments.
    """

    def __init__(self, input_dropout: float = 0.2, dropout: float = 0.2, **kwargs: Any) -> None:
        super().__init__(dropout=dropout, **kwargs)
        check_number("input_dropout", input_dropout, "[0, 1)")
        self.encoder = nn.Sequential(nn.Dropout(input_dropout), self.encoder)
