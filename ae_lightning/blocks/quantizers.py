"""Quantizers of spatial codes from ``vector-quantize-pytorch`` behind one interface: ``VectorQuantize`` (van den
Oord et al. 2017), ``FSQ`` (Mentzer et al. 2023, "Finite Scalar Quantization") and ``ResidualVQ`` (Zeghidour et al.
2021); and codebook-usage statistics."""

from __future__ import annotations

import inspect
import math
from collections.abc import Sequence
from typing import Any, Literal

import torch
from torch import Tensor, nn
from torchmetrics import Metric
from vector_quantize_pytorch import FSQ, ResidualVQ, VectorQuantize
from vector_quantize_pytorch.vector_quantize_pytorch import Codebook

from datamodules.checks import AtLeastTwo, Fraction, NonNegativeFloat, PositiveInt, check_arguments, number_type

QuantizerKind = Literal["vq", "fsq", "residual_vq"]
# One level is a constant; two break FSQ's symmetric rounding (the library needs preserve_symmetry there).
FSQLevel = number_type("[3, inf)", integer=True)
# FSQ's indices are int32 in the library; a prior over more symbols than this could not be trained anyway.
MAX_FSQ_CODEBOOK = 2**20


# The settings each quantizer reads; the others keep their defaults (a changed one would be silently ignored).
_SETTINGS = {
    "vq": ("codebook_size", "commitment_weight", "ema_decay", "kmeans_init", "dead_code_threshold"),
    "residual_vq": ("codebook_size", "num_quantizers", "commitment_weight", "ema_decay", "kmeans_init",
                    "dead_code_threshold"),
    "fsq": ("fsq_levels",),
}  # fmt: skip


def check_quantizer(kind: QuantizerKind, settings: dict[str, Any]) -> None:
    """A ValueError naming a setting changed from its default that ``kind`` ignores, or FSQ levels that cannot work."""
    defaults = inspect.signature(SpatialQuantizer.__init__).parameters
    for name in sorted(set().union(*_SETTINGS.values()) - set(_SETTINGS[kind])):
        value, default = settings[name], defaults[name].default
        if (list(value) != list(default)) if name == "fsq_levels" else value != default:
            readers = " or ".join(repr(other) for other, names in _SETTINGS.items() if name in names)
            raise ValueError(
                f"{name}={value!r} has no effect with quantizer {kind!r} (only {readers} reads it): leave {name} at "
                f"its default {default!r}, or set quantizer to {readers}"
            )
    fsq_levels = settings["fsq_levels"]
    if kind == "fsq" and not fsq_levels:
        raise ValueError("fsq_levels must name at least one level, got []")
    if kind == "fsq" and math.prod(fsq_levels) > MAX_FSQ_CODEBOOK:
        raise ValueError(
            f"fsq_levels {list(fsq_levels)} make a codebook of {math.prod(fsq_levels)} codes, more than "
            f"{MAX_FSQ_CODEBOOK}; use fewer or smaller levels"
        )


class SpatialQuantizer(nn.Module):
    """One of the library's quantizers (``kind``) applied at every position of a code map ``[B, channels, h, w]``; the
    other arguments as :class:`~ae_lightning.models.quantized.QuantizedAutoencoder`'s of those names."""

    def __init__(
        self,
        kind: QuantizerKind = "vq",
        channels: PositiveInt = 64,
        codebook_size: AtLeastTwo = 512,
        fsq_levels: Sequence[FSQLevel] = (8, 5, 5, 5),
        num_quantizers: PositiveInt = 4,
        commitment_weight: NonNegativeFloat = 0.25,
        ema_decay: Fraction = 0.99,
        kmeans_init: bool = True,
        dead_code_threshold: NonNegativeFloat = 2.0,
    ) -> None:
        super().__init__()
        check_arguments(locals(), SpatialQuantizer.__init__)
        check_quantizer(kind, locals())
        self.kind = kind
        self.sync_codebook = False
        # rotation_trick=False: the plain straight-through estimator of the VQ-VAE paper.
        self._vq_kwargs = {
            "dim": channels,
            "codebook_size": codebook_size,
            "decay": ema_decay,
            "commitment_weight": commitment_weight,
            "kmeans_init": kmeans_init,
            "threshold_ema_dead_code": dead_code_threshold,
            "rotation_trick": False,
        }
        if kind == "residual_vq":
            self._vq_kwargs["num_quantizers"] = num_quantizers
        self.codebook_size = math.prod(fsq_levels) if kind == "fsq" else codebook_size
        self.num_codebooks = num_quantizers if kind == "residual_vq" else 1
        self.fsq_levels = list(fsq_levels)
        self.quantizer = self._build_quantizer()

    def _build_quantizer(self) -> nn.Module:
        if self.kind == "fsq":
            return FSQ(levels=self.fsq_levels, dim=self._vq_kwargs["dim"])
        library_class = VectorQuantize if self.kind == "vq" else ResidualVQ
        # Explicit: the library's default reads ``torch.distributed`` once per process (cached) when it is built.
        return library_class(**self._vq_kwargs, sync_codebook=self.sync_codebook)

    def synchronize_codebook(self) -> None:
        """From now on, learn the codebooks (``vq``, ``residual_vq``) from the codes of every process of the default
        ``torch.distributed`` group (which must run each training forward together): the quantizer is rebuilt with
        ``sync_codebook``, its state kept, no random numbers drawn. Idempotent."""
        if self.kind == "fsq" or self.sync_codebook:
            return
        self.sync_codebook = True
        device = next(self.quantizer.buffers()).device
        with torch.random.fork_rng(devices=[]), torch.device("cpu"):  # without kmeans_init the build draws a codebook
            quantizer = self._build_quantizer().to(device)
        quantizer.load_state_dict(self.quantizer.state_dict(), assign=True)
        self.quantizer = quantizer

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """The quantized codes of ``z [B, C, h, w]`` (straight-through), the indices ``[B, Q, h, w]`` (int64) and the
        commitment loss (0 for FSQ and in evaluation, where no weight or buffer changes)."""
        # The library runs k-means initialization on any forward: evaluation raises ``initted`` for the call.
        codebooks = [] if self.training else [m for m in self.quantizer.modules() if isinstance(m, Codebook)]
        waiting = [codebook for codebook in codebooks if not codebook.initted]
        for codebook in waiting:
            codebook.initted.fill_(True)
        sequence = z.flatten(2).transpose(1, 2)  # [B, h*w, C]
        try:
            if self.kind == "fsq":
                quantized, indices = self.quantizer(sequence)
                aux = z.new_zeros(())
            else:
                quantized, indices, aux = self.quantizer(sequence)
                aux = aux.sum()  # residual VQ: one commitment loss per level
        finally:
            for codebook in waiting:
                codebook.initted.fill_(False)
        batch, _, height, width = z.shape
        # int64 for every kind (the library's FSQ gives int32), as an embedding or a prior takes them
        indices = indices.long().reshape(batch, height, width, self.num_codebooks).permute(0, 3, 1, 2)
        return quantized.transpose(1, 2).reshape_as(z).contiguous(), indices, aux

    def decode_indices(self, indices: Tensor) -> Tensor:
        """Quantized codes ``[B, C, h, w]``, in the quantizer's dtype, of integer indices ``[B, Q, h, w]`` (of any
        integer type) in ``[0, codebook_size)``; others are a ValueError naming them."""
        integer = not (indices.is_floating_point() or indices.is_complex() or indices.dtype == torch.bool)
        if not integer or indices.ndim != 4 or indices.shape[1] != self.num_codebooks:
            raise ValueError(
                f"indices must be integers of shape [B, {self.num_codebooks}, h, w], got {indices.dtype} of shape "
                f"{list(indices.shape)}"
            )
        if len(indices) and (indices.min() < 0 or indices.max() >= self.codebook_size):
            raise ValueError(
                f"indices must lie in [0, {self.codebook_size - 1}] (codebook_size {self.codebook_size}), got values "
                f"from {indices.min().item()} to {indices.max().item()}"
            )
        if not len(indices):  # the quantizer libraries cannot reshape an empty batch
            return self.decode_indices(indices.new_zeros((1, *indices.shape[1:])))[:0]
        batch, _, height, width = indices.shape
        # int64: torch indexes with uint8 as a boolean mask and not at all with int8 or int16
        sequence = indices.long().permute(0, 2, 3, 1).reshape(batch, height * width, self.num_codebooks)
        if self.kind == "fsq":
            # The library's indices_to_codes computes in float32; its table of every code has the weights' dtype.
            codes = self.quantizer.project_out(self.quantizer.implicit_codebook[sequence[..., 0]])
        else:
            codes = self.quantizer.get_output_from_indices(sequence[..., 0] if self.kind == "vq" else sequence)
        return codes.transpose(1, 2).reshape(batch, -1, height, width).contiguous()


class CodebookUsage(Metric):
    """Codebook use over an epoch, of indices ``[B, Q, h, w]``: ``codes_used`` (share chosen) and ``perplexity``
    (``exp`` of the frequencies' entropy), averaged over codebooks; ``dead_codes`` (never chosen), summed."""

    full_state_update = False

    def __init__(self, codebook_size: int, num_codebooks: int = 1) -> None:
        super().__init__()
        self.codebook_size = codebook_size
        self.add_state("counts", torch.zeros(num_codebooks, codebook_size, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, indices: Tensor) -> None:  # type: ignore[override]
        for level, level_indices in enumerate(indices.transpose(0, 1)):
            self.counts[level] += torch.bincount(level_indices.flatten().long(), minlength=self.codebook_size)

    def compute(self) -> dict[str, Tensor]:
        counts = self.counts.double()
        frequencies = counts / counts.sum(1, keepdim=True).clamp_min(1)
        entropy = -torch.special.xlogy(frequencies, frequencies).sum(1)
        used = (self.counts > 0).double()
        return {
            "codes_used": used.mean(1).mean().float(),
            "perplexity": entropy.exp().mean().float(),
            "dead_codes": (1 - used).sum().float(),
        }


__all__ = ["CodebookUsage", "FSQLevel", "QuantizerKind", "SpatialQuantizer", "check_quantizer"]
