"""dSprites (Matthey et al. 2017): the published grid of 737,280 binary 64x64 images (3 shapes x 6 scales x 40
orientations x 32 x 32 positions), each drawn from its factors when its batch is built (docs/disentanglement.md).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from datamodules.base import ImageDataModule
from datamodules.checks import OpenUnitInterval, check_number
from datamodules.loader import Batch, TensorBatchLoader, fingerprint

FACTORS = ("shape", "scale", "orientation", "position_x", "position_y")
GRID = (3, 6, 40, 32, 32)
SHAPES = ("square", "ellipse", "heart")
SIZE = 64
NUM_IMAGES = math.prod(GRID)  # 737,280
# Factor values: scale in [0.5, 1], orientation in [0, 2 pi], positions in [0, 1] (as in the published file).
POSITIONS = torch.linspace(0.0, 1.0, 32)
VALUES = (torch.arange(3.0), torch.linspace(0.5, 1.0, 6), torch.linspace(0.0, 2 * math.pi, 40), POSITIONS, POSITIONS)
_STRIDES = torch.tensor([math.prod(GRID[i + 1 :]) for i in range(len(GRID))])


def check_factors(factors: Tensor) -> None:
    """Raise a ValueError naming the factor, its value and the grid unless ``factors`` are ``[N, 5]`` integer grid
    indices (``FACTORS`` order) inside the grid."""
    if factors.ndim != 2 or factors.shape[1] != len(FACTORS):
        raise ValueError(f"dSprites factors must be [N, 5] ({', '.join(FACTORS)}), got {tuple(factors.shape)}")
    if factors.dtype.is_floating_point or factors.dtype.is_complex or factors.dtype == torch.bool:
        raise ValueError(f"dSprites factors are integer grid indices, got {factors.dtype}")
    for column, (name, size) in enumerate(zip(FACTORS, GRID)):
        outside = (factors[:, column] < 0) | (factors[:, column] >= size)
        if outside.any():
            row = int(outside.nonzero()[0])
            raise ValueError(
                f"dSprites factor {name}={int(factors[row, column])} (row {row}) is outside the grid: {name} takes "
                f"0..{size - 1}"
            )


def factors_to_index(factors: Tensor) -> Tensor:
    """The index ``[N]`` in the 737,280-image grid (row-major in ``FACTORS``) of ``[N, 5]`` grid indices."""
    check_factors(factors)
    return (factors.long() * _STRIDES.to(factors.device)).sum(-1)


def index_to_factors(index: Tensor) -> Tensor:
    """The ``[N, 5]`` grid indices of grid positions ``index`` ``[N]``."""
    index = index.long()
    outside = (index < 0) | (index >= NUM_IMAGES)
    if outside.any():
        raise ValueError(f"dSprites image index {int(index[outside][0])} is outside the grid 0..{NUM_IMAGES - 1}")
    strides, sizes = _STRIDES.to(index.device), torch.tensor(GRID, device=index.device)
    return index[:, None] // strides % sizes


def render(factors: Tensor) -> Tensor:
    """Binary images ``[N, 1, 64, 64]`` (float, 0 or 1) of ``[N, 5]`` grid indices (``FACTORS`` order), on their device.

    A shape of scale ``s`` spans about ``2 * 10 s`` pixels, centred at ``12.8 + 38.4 p`` pixels for the position
    ``p`` in [0, 1] (x: columns, y: rows), rotated counterclockwise by the orientation: a square, an ellipse with axes
    1 and 0.5, and the heart ``(x^2 + y^2 - 1)^3 <= x^2 y^3``.
    """
    check_factors(factors)
    factors, device = factors.long(), factors.device  # torch indexes with int64 (uint8 would be a mask)
    shape, scale, angle, px, py = (VALUES[i].to(device)[factors[:, i]][:, None, None] for i in range(len(FACTORS)))
    centers = torch.arange(SIZE, device=device, dtype=torch.float32) + 0.5
    dx = centers[None, None, :] - (0.2 + 0.6 * px) * SIZE
    dy = centers[None, :, None] - (0.2 + 0.6 * py) * SIZE
    radius = 0.16 * SIZE * scale
    cos, sin = torch.cos(angle), torch.sin(angle)
    u = (cos * dx - sin * dy) / radius  # the pixel in the shape's frame (rows grow downwards: -dy is up)
    v = (-sin * dx - cos * dy) / radius
    square = torch.maximum(u.abs(), v.abs()) <= 0.8
    ellipse = u.pow(2) + (v / 0.5).pow(2) <= 1
    hx, hy = 1.15 * u, 1.15 * v + 0.1
    heart = (hx.pow(2) + hy.pow(2) - 1).pow(3) <= hx.pow(2) * hy.pow(3)
    inside = torch.where(shape == 0, square, torch.where(shape == 1, ellipse, heart))
    return inside.float().unsqueeze(1)


class RenderingBatchLoader(TensorBatchLoader):
    """:class:`~datamodules.loader.TensorBatchLoader` (``**kwargs``) over the ``[N]`` grid positions of a split's
    samples, drawing each batch's images: ``(image [B, 1, 64, 64], shape label [B], index in the split [B])``, the
    index from ``indices`` (None: ``0 .. N - 1``)."""

    def __init__(self, grid_indices: Tensor, indices: Tensor | None = None, **kwargs: Any) -> None:
        indices = torch.arange(len(grid_indices)) if indices is None else indices
        super().__init__(_as_rows(grid_indices), index_to_factors(grid_indices)[:, 0], indices, **kwargs)

    def _make_batch(self, rows: Tensor, batch_index: int) -> Batch:
        factors = index_to_factors(self.images[rows, 0].round().long())
        return render(factors), self.labels[rows], self.indices[rows]


def _as_rows(grid_indices: Tensor) -> Tensor:
    """Grid indices as the ``[N, 1]`` float rows a loader holds (exact: the grid has fewer than 2**24 images)."""
    return grid_indices[:, None].float()


class DSpritesDataModule(ImageDataModule):
    """dSprites drawn on the fly: batches ``(image, label, index)``, the label the shape (0 square, 1 ellipse,
    2 heart); :meth:`factors` gives a split's factors. The splits are ``grid_indices``: ``splits`` stays empty.

    Args:
        val_fraction, test_fraction: shares of the images held out for validation and testing (seeded).
        num_samples: use a seeded random subset of this many images of the grid (after ``fixed_factors``); None: all.
        fixed_factors: keep only the images with these factors at these grid indices, e.g. ``{shape: 2}`` for hearts.
        **kwargs: the :class:`~datamodules.base.ImageDataModule` arguments (``classes``: shapes; ``binarize`` gives
            the same images at every setting, the images being binary).
    """

    num_classes = len(SHAPES)
    input_shape = (1, SIZE, SIZE)
    class_names = list(SHAPES)
    has_labels = True
    dataset_name = "dSprites"
    data_source = "dsprites-rendered"

    def __init__(
        self,
        batch_size: int = 64,
        val_fraction: OpenUnitInterval = 0.01,
        test_fraction: OpenUnitInterval = 0.01,
        num_samples: int | None = None,
        fixed_factors: dict[str, int] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(batch_size=batch_size, val_fraction=val_fraction, test_fraction=test_fraction, **kwargs)
        if val_fraction + test_fraction >= 1:
            raise ValueError(
                f"val_fraction + test_fraction must be < 1 to leave training images, got {val_fraction} + "
                f"{test_fraction}"
            )
        fixed_factors = self.hparams.fixed_factors  # NumPy numbers made Python ones, as the checkpoint stores them
        for name, value in (fixed_factors or {}).items():
            if name not in FACTORS:
                raise ValueError(f"fixed_factors names {name!r}, which is not a dSprites factor ({', '.join(FACTORS)})")
            size, integer = GRID[FACTORS.index(name)], isinstance(value, int) and not isinstance(value, bool)
            if not integer or not 0 <= value < size:
                what = "outside the grid" if integer else "not an integer grid index"
                raise ValueError(f"dSprites factor {name}={value!r} is {what}: {name} takes 0..{size - 1}")
        shape, classes = (fixed_factors or {}).get("shape"), self.hparams.classes
        if classes is not None and shape is not None and shape not in classes:
            raise ValueError(
                f"fixed_factors fixes shape={shape}, which classes {classes} leave out: no image would be trained on"
            )
        available = NUM_IMAGES // math.prod(GRID[FACTORS.index(name)] for name in fixed_factors or {})
        if available < 3:
            raise ValueError(
                f"fixed_factors {fixed_factors} leave only {available} of the grid's images, but training, validation "
                "and test need one each: leave a factor free"
            )
        if num_samples is not None:
            check_number("num_samples", num_samples, f"[3, {available}]", integer=True)
        self.grid_indices: dict[str, Tensor] = {}

    def setup(self, stage: str | None = None) -> None:
        if self.grid_indices:
            return
        index = torch.arange(NUM_IMAGES)
        for name, value in (self.hparams.fixed_factors or {}).items():
            index = index[index_to_factors(index)[:, FACTORS.index(name)] == value]
        index = index[torch.randperm(len(index), generator=torch.Generator().manual_seed(self.hparams.seed))]
        index = index[: self.hparams.num_samples]  # None: all
        n_val = max(1, round(len(index) * self.hparams.val_fraction))
        n_test = max(1, round(len(index) * self.hparams.test_fraction))
        val, test, train = index[:n_val], index[n_val : n_val + n_test], index[n_val + n_test :]
        if self.hparams.classes is not None:
            kept = torch.tensor(self.hparams.classes)
            val, train = (part[torch.isin(index_to_factors(part)[:, 0], kept)] for part in (val, train))
        if not len(val) or not len(train):
            empty = "validation" if not len(val) else "training"
            cause, fix = ("val_fraction and test_fraction", "smaller fractions")
            if self.hparams.classes is not None:
                cause, fix = f"classes {self.hparams.classes}", "more classes"
            raise ValueError(
                f"{cause} leave the {empty} split empty (num_samples {self.hparams.num_samples}, val_fraction "
                f"{self.hparams.val_fraction}, test_fraction {self.hparams.test_fraction}): use {fix} or more images"
            )
        # Validation and test in random order, so that their first batches (pictures) sample the whole grid.
        self.grid_indices = {"val": val, "test": test, "train": train.sort().values}

    def split_size(self, split: str) -> int:
        return len(self.grid_indices[split])

    def training_content(self) -> tuple[int, int]:
        train = self.grid_indices["train"]
        return len(train), fingerprint(_as_rows(train))

    def factors(self, split: str) -> Tensor:
        """The ``[N, 5]`` grid indices of the factors (``FACTORS`` order) of ``split``'s samples, in split order."""
        self.setup()
        return index_to_factors(self.grid_indices[split])

    factor_names = FACTORS

    def sample_factors(self, n: int, generator: torch.Generator) -> Tensor:
        """``[n, 5]`` grid indices drawn uniformly from the grid (``fixed_factors`` kept fixed)."""
        factors = torch.stack([torch.randint(size, (n,), generator=generator) for size in GRID], dim=1)
        for name, value in (self.hparams.fixed_factors or {}).items():
            factors[:, FACTORS.index(name)] = value
        return factors

    images_of = staticmethod(render)

    def _loader(self, split: str, shuffle: bool) -> RenderingBatchLoader:
        self.setup()
        return RenderingBatchLoader(self.grid_indices[split], **self._loader_settings(split, shuffle))

    def evaluation_loader(
        self, split: str, batch_size: int | None = None, max_images: int | None = None, seed: int = 0
    ) -> RenderingBatchLoader:
        """The split's images in split order (all, or a seeded subset of ``max_images``), in batches of ``batch_size``
        (None: the datamodule's), as the evaluation driver reads them."""
        self.setup()
        rows, batch_size = self.evaluation_rows(split, max_images, seed), batch_size or self.hparams.batch_size
        settings = {"batch_size": batch_size, "shuffle": False, "seed": self.hparams.seed, "resumable": False}
        return RenderingBatchLoader(self.grid_indices[split][rows], rows, **settings)


__all__ = [
    "FACTORS",
    "GRID",
    "NUM_IMAGES",
    "SHAPES",
    "DSpritesDataModule",
    "RenderingBatchLoader",
    "check_factors",
    "factors_to_index",
    "index_to_factors",
    "render",
]
