"""The dropout autoencoder: the plain autoencoder with dropout (Srivastava et al. 2014, "Dropout: A Simple Way to
Prevent Neural Networks from Overfitting") on its input and hidden layers at training time."""

from __future__ import annotations

from typing import Any, ClassVar

from torch import Tensor, nn

from ae_lightning.models.autoencoder import Autoencoder
from datamodules.checks import Fraction


class DropoutAutoencoder(Autoencoder):
    """The plain autoencoder with dropout on the input pixels (``input_dropout``: masking noise, scaled, against the
    clean target) and after every hidden layer of the built networks (``dropout``; 0 with a given network), in
    training only."""

    # Releases before 0.2 wrapped the encoder as ``Sequential(Dropout, encoder)``.
    renamed_weights: ClassVar[dict[str, str]] = {"encoder.1.": "encoder."}

    def __init__(self, input_dropout: Fraction = 0.2, dropout: Fraction = 0.2, **kwargs: Any) -> None:
        super().__init__(dropout=dropout, **kwargs)
        self.input_dropout = nn.Dropout(input_dropout)

    def encode(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        self.check_tensor(x, "encode(x)")
        return self.encoder(self.input_dropout(x))
