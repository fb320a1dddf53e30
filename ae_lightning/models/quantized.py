"""The vector-quantized autoencoder (van den Oord et al. 2017, "Neural Discrete Representation Learning"), with
finite scalar quantization (Mentzer et al. 2023, "Finite Scalar Quantization: VQ-VAE Made Simple") and residual VQ
(Zeghidour et al. 2021, "SoundStream") as alternatives; the quantizers are ``vector-quantize-pytorch``'s."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from lightning.pytorch.callbacks import WeightAveraging
from torch import Tensor, distributed

from ae_lightning.base import Batch
from ae_lightning.blocks import losses
from ae_lightning.blocks.quantizers import CodebookUsage, FSQLevel, QuantizerKind, SpatialQuantizer
from ae_lightning.lightning_internals import averages_buffers_by_subtraction
from ae_lightning.models.first_stage import FirstStageAutoencoder, evaluating
from datamodules.checks import AtLeastTwo, Fraction, NonNegativeFloat, PositiveInt


class QuantizedAutoencoder(FirstStageAutoencoder):
    """Spatial codes quantized to a codebook: VQ-VAE, FSQ or residual VQ, with the optional VQGAN recipe.

    Each position of the code map ``[B, latent_dim, h, w]`` becomes one of ``codebook_size`` codes (``Q`` of them
    for residual VQ); :meth:`encode_indices` and :meth:`decode_indices` map images to indices ``[B, Q, h, w]`` and
    back. Validation and test log ``codes_used``, ``perplexity`` and ``dead_codes`` of the epoch's batches' codes,
    test the rate ``bits_per_pixel``. A changed setting the chosen quantizer does not read is refused.

    Args:
        quantizer: ``vq``, ``fsq`` or ``residual_vq``.
        codebook_size: codes per codebook (``vq``, ``residual_vq``); at least 2.
        fsq_levels: levels per FSQ dimension, each at least 3; the codebook has their product of codes.
        num_quantizers: residual levels of ``residual_vq``.
        commitment_weight: weight of the commitment loss ``||z - sg(e)||^2`` (``vq``, ``residual_vq``).
        ema_decay: decay of the EMA codebook updates.
        kmeans_init: initialize the codebook by k-means on the first training batch; evaluation never changes it.
        dead_code_threshold: replace a code whose EMA cluster size falls below this by a batch vector; 0 never.
        **kwargs: the :class:`~ae_lightning.models.first_stage.FirstStageAutoencoder` arguments.
    """

    def __init__(
        self,
        quantizer: QuantizerKind = "vq",
        codebook_size: AtLeastTwo = 512,
        fsq_levels: Sequence[FSQLevel] = (8, 5, 5, 5),
        num_quantizers: PositiveInt = 4,
        commitment_weight: NonNegativeFloat = 0.25,
        ema_decay: Fraction = 0.99,
        kmeans_init: bool = True,
        dead_code_threshold: NonNegativeFloat = 2.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        vq = commitment_weight, ema_decay, kmeans_init, dead_code_threshold
        self.quantizer = SpatialQuantizer(quantizer, self.latent_dim, codebook_size, fsq_levels, num_quantizers, *vq)
        self.code_metric = CodebookUsage(self.quantizer.codebook_size, self.quantizer.num_codebooks)

    def configure_model(self) -> None:
        """Under DDP the codebook learns from the codes of every process (``docs/quantized.md``)."""
        if distributed.is_available() and distributed.is_initialized() and distributed.get_world_size() > 1:
            self.quantizer.synchronize_codebook()
        super().configure_model()

    def on_fit_start(self) -> None:
        super().on_fit_start()
        # WeightAveraging's default (SWA), a subclass's too, subtracts every buffer; the codebook's initted is a bool
        for callback in self.trainer.callbacks if self.quantizer.kind != "fsq" else []:
            if isinstance(callback, WeightAveraging) and averages_buffers_by_subtraction(callback):
                name = type(callback).__name__
                raise ValueError(
                    f"the trainer callback {name if name == 'WeightAveraging' else f'{name} (a WeightAveraging)'} "
                    f"cannot average quantizer {self.quantizer.kind!r}: it averages every buffer by subtraction, and "
                    "the EMA codebook's initted flag is a bool (NotImplementedError at its second update); use "
                    "EMAWeightAveraging (or an avg_fn), or quantizer: fsq"
                )

    def bottleneck(self, h: Tensor) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        quantized, indices, commitment = self.quantizer(h)
        if self.counting_codes:
            self.code_metric.update(indices)
        logged = {"quantization_error": (quantized.detach() - h.detach()).pow(2).mean()}
        if self.quantizer.kind != "fsq" and self.training:  # vector-quantize-pytorch computes it in training only
            logged["commitment"] = commitment.detach()
        return quantized, commitment, logged

    def encode_indices(self, x: Tensor) -> Tensor:
        """Code indices ``[B, Q, h, w]`` (int64) of images ``x``; the codebook does not update."""
        self.check_tensor(x, "encode_indices(x)")
        h = self.encoder(x)
        with evaluating(self):
            return self.quantizer(h)[1]

    def decode_indices(self, indices: Tensor) -> Tensor:
        """Images in [0, 1] decoded from integer code indices ``[B, Q, h, w]`` (int64 or any smaller integer type)."""
        return self.decode(self.quantizer.decode_indices(indices))

    @property
    def codebook_size(self) -> int:
        """Codes per codebook."""
        return self.quantizer.codebook_size

    def bits_per_pixel(self, code_shape: Sequence[int]) -> float:
        """The fixed-length rate: ``log2(codebook_size)`` bits per index, per pixel of an image."""
        return math.prod(code_shape) * math.log2(self.codebook_size) / math.prod(self.input_shape[1:])

    def test_metrics(
        self, x: Tensor, y: Tensor | None = None, reconstruction: Tensor | None = None
    ) -> dict[str, Tensor]:
        rate = self.bits_per_pixel((self.quantizer.num_codebooks, *self.latent_shape[1:]))  # the indices' shape
        # float32 whatever the images' or the default dtype (bf16-true's test step): bfloat16 rounds 1.7692 to 1.7656
        rate = torch.tensor(rate, dtype=torch.float32, device=x.device)
        return {**super().test_metrics(x, y, reconstruction), "bits_per_pixel": rate}

    def _predict_step(self, batch: Batch) -> dict[str, Tensor]:
        x, labels, index = batch  # the base's outputs and the indices, of one encode and one decode
        z, codes, _ = self.quantizer(self.encoder(x))
        error = losses.mean_squared_error(self.decode(z, labels), x)
        score = self._anomaly_score(x, labels, error)
        return {"z": z, "label": labels, "index": index, "recon_error": error, "anomaly_score": score, "indices": codes}


__all__ = ["QuantizedAutoencoder"]
