"""Pictures of what an autoencoder learned: reconstruction grids, prior samples, latent interpolations, latent maps,
each ``[3, H, W]`` in [0, 1]; importing this module leaves the caller's pyplot backend as it was."""

from __future__ import annotations

import contextlib
import io
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Literal, get_args

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from torch import Tensor
from torchvision.utils import make_grid, save_image

from ae_lightning.base import AutoencoderModule
from ae_lightning.evaluation.driver import check_known, evaluating, images_at_once, require_generative
from ae_lightning.training.fault_tolerance.checkpoint_io import write_atomically
from datamodules.checks import check_number

Projection = Literal["pca", "tsne", "none"]
View = Literal["reconstructions", "samples", "interpolations", "latent_map"]
VIEWS: tuple[str, ...] = get_args(View)


def applicable_views(model: AutoencoderModule) -> list[str]:
    """Every view that applies to the model: those :func:`check_views` accepts."""
    views = []
    for view in VIEWS:
        with contextlib.suppress(ValueError):
            views += check_views(model, [view])
    return views


def check_views(model: AutoencoderModule, views: Sequence[str]) -> list[str]:
    """``views`` as a list, or a ValueError for an unknown view, ``samples`` of a model that is not generative,
    ``interpolations`` or ``latent_map`` of discrete codes (``discrete_codes``), any but ``latent_map`` of vectors."""
    views = check_known(views, VIEWS, "image view", "the views are")
    if "samples" in views:
        require_generative(model, "the 'samples' view")
    continuous = [view for view in views if view in ("interpolations", "latent_map")]  # lines or maps of codes
    if continuous and getattr(model, "discrete_codes", False):
        raise ValueError(f"the views {', '.join(continuous)} draw continuous codes, but {type(model).__name__}'s codes "
                         "are token indices; use reconstructions and samples")  # fmt: skip
    pictures = [view for view in views if view != "latent_map"]
    if pictures and len(getattr(model, "input_shape", ())) == 1:
        raise ValueError(
            f"the views {', '.join(pictures)} are pictures of images, but {type(model).__name__} models feature "
            f"vectors of shape {model.input_shape}; only latent_map applies"
        )
    return views


def draw_views(
    model: AutoencoderModule,
    images: Tensor,
    labels: Tensor,
    views: Sequence[str] | None = None,
    *,
    num_images: int = 16,
    num_samples: int = 64,
    num_interpolations: int = 6,
    interpolation_steps: int = 8,
    latent_map_size: int = 2000,
    nrow: int = 8,
    projection: Projection = "pca",
    class_names: Sequence[str] | None = None,
    title: str | None = None,
    seed: int = 0,
) -> dict[str, Tensor]:
    """The named pictures (:data:`VIEWS`; None: :func:`applicable_views`), each ``[3, H, W]`` in [0, 1], drawn from
    ``images`` in ``driver.evaluating``: ``num_images`` above their reconstructions, ``nrow`` per row;
    ``num_interpolations`` pairs, ``interpolation_steps`` each; a ``latent_map`` of ``latent_map_size`` codes (>= 2)."""
    views = check_views(model, views) if views is not None else applicable_views(model)
    images, labels = images.to(model.device, model.dtype), labels.to(model.device)  # float64 under 64-true
    at_once = images_at_once(images.shape[1:])
    drawn: dict[str, Tensor] = {}
    with evaluating(model, seed):
        if "reconstructions" in views:
            shown, shown_labels = images[:num_images].split(at_once), labels[:num_images].split(at_once)
            rows = [model.reconstruction_rows(*chunk) for chunk in zip(shown, shown_labels)]
            drawn["reconstructions"] = reconstruction_grid(*map(torch.cat, zip(*rows)), nrow=nrow)
        if "samples" in views:
            # A conditional model samples the classes in turn: one column per class.
            classes = getattr(model, "num_classes", None)
            per_row = classes or nrow
            chunks = torch.arange(per_row * math.ceil(num_samples / per_row), device=model.device).split(at_once)
            samples = [model.sample(len(chunk), chunk % classes if classes else None) for chunk in chunks]
            drawn["samples"] = image_grid(torch.cat(samples), per_row)
        pairs = min(num_interpolations, len(images) // 2)
        if "interpolations" in views and pairs > 0:
            ends = slice(pairs, 2 * pairs)
            drawn["interpolations"] = interpolation_grid(
                model, images[:pairs], images[ends], interpolation_steps, labels[:pairs], labels[ends]
            )
        if "latent_map" in views and min(len(images), latent_map_size) >= 2:
            chunks = zip(images[:latent_map_size].split(at_once), labels[:latent_map_size].split(at_once))
            codes = torch.cat([model.encode(*chunk) for chunk in chunks]).flatten(1)  # spatial codes as vectors
            drawn["latent_map"] = latent_map(
                codes, labels[:latent_map_size], projection, class_names=class_names, title=title, seed=seed
            )
    return drawn


def image_grid(images: Tensor, nrow: int = 8) -> Tensor:
    """A grid ``[3, H, W]`` of images ``[N, C, H, W]`` in [0, 1], ``nrow`` per row, with white gaps; an image of other
    than 1 (gray) or 3 (RGB) channels is drawn as its channels side by side, in gray."""
    images = images.detach().float().clamp(0, 1).cpu()
    if images.shape[1] not in (1, 3):
        images = images.transpose(1, 2).flatten(2).unsqueeze(1)  # [N, C, H, W] -> [N, 1, H, C * W]
    return make_grid(images, nrow=nrow, padding=2, pad_value=1.0)


def reconstruction_grid(*rows: Tensor, nrow: int = 8) -> Tensor:
    """Rows of ``nrow`` images, each row of inputs followed by the matching rows of the other ``[N, C, H, W]`` tensors
    (e.g. reconstructions), the last rows' empty places white."""
    images = rows[0]
    nrow = min(nrow, len(images))
    blank = images.new_ones(-len(images) % nrow, *images.shape[1:])
    shape = (-1, nrow, *images.shape[1:])
    stacked = torch.stack([torch.cat([row.to(images.dtype), blank]).reshape(shape) for row in rows], 1)
    return image_grid(stacked.flatten(0, 2), nrow=nrow)


@torch.no_grad()
def interpolation_grid(
    model: AutoencoderModule,
    starts: Tensor,
    ends: Tensor,
    steps: int = 8,
    start_labels: Tensor | None = None,
    end_labels: Tensor | None = None,
) -> Tensor:
    """A row per pair of images ``[P, C, H, W]``: the start, ``steps`` decodings of codes on the line between their
    codes (ends included), the end; a conditional model decodes a row with ``start_labels``."""
    check_number("interpolation steps", steps, "[2, inf)", integer=True)  # the two ends and what lies between
    z_start, z_end = model.encode(starts, start_labels), model.encode(ends, end_labels)
    weights = torch.linspace(0, 1, steps, device=z_start.device, dtype=z_start.dtype)  # the codes' (float64, 64-true)
    weights = weights.view(1, steps, *[1] * (z_start.dim() - 1))
    z = torch.lerp(z_start.unsqueeze(1), z_end.unsqueeze(1), weights)  # [P, steps, D] (or [P, steps, C, h, w])
    z, at_once = z.flatten(0, 1), images_at_once(starts.shape[1:])
    row_labels = None if start_labels is None else start_labels.repeat_interleave(steps)
    decoded = torch.cat([
        model.decode(z[i : i + at_once], None if row_labels is None else row_labels[i : i + at_once])
        for i in range(0, len(z), at_once)
    ]).unflatten(0, (len(starts), steps))  # fmt: skip
    rows = torch.cat([starts.unsqueeze(1), decoded.to(starts.dtype), ends.unsqueeze(1)], 1)
    return image_grid(rows.flatten(0, 1), nrow=steps + 2)


def project_2d(codes: Tensor, method: Projection = "pca", seed: int = 0) -> Tensor:
    """Codes ``[N, D]`` (spatial ones flattened) mapped to 2-D: PCA (``torch.pca_lowrank``), t-SNE (scikit-learn), or
    ``none`` for D <= 2; equal codes map to one point, non-finite ones are a ValueError."""
    codes = codes.detach().float().cpu().flatten(1)
    if not (finite := torch.isfinite(codes).all(1)).all():
        raise ValueError(f"{int((~finite).sum())} of {len(codes)} codes hold NaN or infinite values: no map of them")
    if codes.shape[1] <= 2 or method == "none":
        if codes.shape[1] > 2:
            raise ValueError(f"projection 'none' needs codes of at most 2 dimensions, got {codes.shape[1]}")
        return torch.nn.functional.pad(codes, (0, 2 - codes.shape[1]))
    if method not in ("pca", "tsne"):
        raise ValueError(f"projection must be 'pca', 'tsne' or 'none', got {method!r}")
    if len(codes) < 2:
        raise ValueError(f"a {method} projection needs at least 2 codes, got {len(codes)}")
    if bool((codes == codes[0]).all()):
        return torch.zeros(len(codes), 2)  # t-SNE's PCA start would divide by their zero spread (scikit-learn crashes)
    if method == "pca":
        _, _, components = torch.pca_lowrank(codes, q=2, center=True)
        return (codes - codes.mean(0)) @ components
    from sklearn.manifold import TSNE  # imported here: it is slow to import and only evaluation uses it
    from threadpoolctl import threadpool_limits

    tsne = TSNE(2, perplexity=min(30.0, (len(codes) - 1) / 3), init="pca", random_state=seed)
    # one OpenMP thread: on a busy machine spinning threads make t-SNE many times slower
    with threadpool_limits(1, user_api="openmp"):
        embedding = tsne.fit_transform(codes.numpy())
    return torch.from_numpy(embedding).float()


def latent_map(
    codes: Tensor,
    labels: Tensor,
    method: Projection = "pca",
    class_names: Sequence[str] | None = None,
    title: str | None = None,
    seed: int = 0,
) -> Tensor:
    """A scatter plot ``[3, H, W]`` of the codes projected to 2-D (:func:`project_2d`), coloured by label (each keeps
    its colour from map to map; unlabeled points, -1, gray), label ``i`` named ``class_names[i]`` in the legend.
    Codes of at most 2 dimensions are drawn as they are; 1-D codes with one row per label."""
    dimensions = codes[0].numel() if len(codes) else 0
    points = project_2d(codes, method, seed).numpy()
    labels = labels.detach().cpu().numpy()
    present = np.unique(labels)
    names = [
        "unlabeled" if label < 0 else class_names[label] if class_names and label < len(class_names) else str(label)
        for label in present
    ]
    if dimensions == 1:  # a row per label, jittered so that close codes stay apart
        jitter = np.random.default_rng(seed).uniform(-0.3, 0.3, len(points))
        points[:, 1] = np.searchsorted(present, labels) + jitter
    figure = Figure(figsize=(5, 4.5), dpi=100)
    canvas = FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    colours = _colours(max(len(class_names or ()), int(present.max(initial=-1)) + 1))
    size = float(np.clip(4000 / max(len(points), 1), 4, 40))  # dots shrink as they get many
    for label, name in zip(present, names):
        colour = (0.5, 0.5, 0.5) if label < 0 else colours[label]
        axes.scatter(*points[labels == label].T, s=size, alpha=0.7, color=colour, label=name, linewidths=0)
    axes.set_xticks([])
    axes.set_yticks(range(len(present)) if dimensions == 1 else [], names if dimensions == 1 else [], fontsize=7)
    projected = method != "none" and dimensions > 2
    axes.set_xlabel(f"{method.upper()} 1" if projected else "z1")
    axes.set_ylabel(f"{method.upper()} 2" if projected else "label" if dimensions == 1 else "z2")
    if title:
        axes.set_title(title, fontsize=10)
    columns = math.ceil(len(present) / 25)  # a legend of many classes in columns, to fit the figure's height
    axes.legend(markerscale=3, fontsize=7, loc="center left", bbox_to_anchor=(1, 0.5), frameon=False, ncol=columns)
    figure.tight_layout()
    canvas.draw()
    rgba = np.asarray(canvas.buffer_rgba())
    return torch.from_numpy(rgba[..., :3].copy()).permute(2, 0, 1).float() / 255


def _colours(count: int) -> list[tuple[float, float, float]]:
    """``count`` distinct colours: tab10's, tab20's, or evenly spaced ones of turbo for more classes."""
    from matplotlib import colormaps

    if count <= 20:
        palette = colormaps["tab10" if count <= 10 else "tab20"]
        return [palette(i)[:3] for i in range(count)]
    return [tuple(colour[:3]) for colour in colormaps["turbo"](np.linspace(0, 1, count))]


def png_bytes(image: Tensor) -> bytes:
    """``image`` (``[3, H, W]`` in [0, 1]) as a PNG file's bytes."""
    buffer = io.BytesIO()
    save_image(image, buffer, format="png")
    return buffer.getvalue()


def save_png(image: Tensor, path: Path) -> None:
    """Write ``image`` to the PNG file ``path`` atomically."""
    write_atomically(Path(path), png_bytes(image))


__all__ = [
    "VIEWS",
    "applicable_views",
    "check_views",
    "draw_views",
    "image_grid",
    "interpolation_grid",
    "latent_map",
    "png_bytes",
    "project_2d",
    "reconstruction_grid",
    "save_png",
]
