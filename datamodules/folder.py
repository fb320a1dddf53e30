"""A folder of image files, flat or with one subfolder per class, decoded once into one uint8 tensor."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image, ImageOps
from torch import Tensor
from torchvision.datasets.folder import IMG_EXTENSIONS, make_dataset
from torchvision.transforms.v2 import functional as TF
from tqdm.auto import tqdm

from datamodules.base import UNLABELED, Arrays, ImageDataModule
from datamodules.checks import PositiveInt, check_arguments, check_fits_memory
from datamodules.loader import usable_cpus

Alpha = Literal["refuse", "white", "black"]  # what an image with transparent pixels becomes (:func:`opaque`)


class ImageFolderDataModule(ImageDataModule):
    """Images from a folder (any of torchvision's ``IMG_EXTENSIONS``), decoded once with PIL (docs/own_data.md).

    Labels are ``ImageFolder``'s (sorted subfolder names), or -1 for a flat folder; hidden files and folders are
    skipped. Images are turned upright as their EXIF orientation says, converted to ``channels`` and, with
    ``image_size``, resized (shorter side) and centre-cropped; without it they must all have one size.

    Args:
        data_dir: the folder.
        image_size: side of the square images; None keeps the images' own (common) size.
        channels: 1 (gray) or 3 (RGB); None: 1 when every image is gray (read from the files' headers), else 3.
        test_dir: a second folder, laid out alike, as test split; None holds out ``test_fraction`` of ``data_dir``.
        alpha: an image with transparent pixels is refused (``refuse``) or composited over ``white`` or ``black``.
        **kwargs: the :class:`~datamodules.base.ImageDataModule` arguments.
    """

    def __init__(
        self,
        data_dir: str,
        image_size: PositiveInt | None = None,
        channels: Literal[1, 3] | None = None,
        test_dir: str | None = None,
        alpha: Alpha = "refuse",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.data_dir = Path(data_dir).expanduser()  # as torchvision expands its root: a YAML config is no shell
        self.test_dir = Path(test_dir).expanduser() if test_dir is not None else None
        self.check_sources_exist()
        check_test_dir(self.data_dir, self.test_dir, "test_dir", "test_fraction")

    @cached_property
    def channels(self) -> int:
        """``channels``, or the folders' own count where it is None."""
        if self.hparams.channels is not None:
            return self.hparams.channels
        files, _, class_names = list_images(self.data_dir)
        if self.test_dir is not None:
            files += list_images(self.test_dir, class_names, test=True)[0]
        return own_channels(files)

    @property
    def dataset_name(self) -> str:
        return self.data_dir.name

    def source_paths(self) -> list[str]:
        return [str(self.data_dir)] + ([str(self.test_dir)] if self.hparams.test_dir else [])

    @property
    def input_shape(self) -> tuple[int, ...]:
        size = self.hparams.image_size
        return (self.channels, size, size) if size is not None else super().input_shape

    def load_arrays(self) -> Arrays:
        train, class_names = self._decode_folder(self.data_dir, None)
        test = self._decode_folder(self.test_dir, class_names, test=True)[0] if self.test_dir is not None else None
        return Arrays(train, test, class_names, {"train": str(self.data_dir), "test": str(self.test_dir)})

    def _decode_folder(
        self, folder: Path, class_names: list[str] | None, test: bool = False
    ) -> tuple[tuple[Tensor, Tensor], list | None]:
        files, labels, class_names = list_images(folder, class_names, test)
        size, mode, alpha = self.hparams.image_size, "L" if self.channels == 1 else "RGB", self.hparams.alpha
        if size is None:  # decoded as uint8 plus the loaders' float copy, they must fit in memory
            try:
                with Image.open(files[0]) as image:
                    width, height = image.size
            except (OSError, ValueError, Image.DecompressionBombError) as error:
                raise ValueError(f"{files[0]} is not an image PIL can read ({error})") from error
        else:
            width = height = size
        shape = f"of {width}x{height}" if size is None else f"resized to image_size={size}"
        fix = "set --data.image_size (e.g. 64) to resize them" if size is None else "set a smaller --data.image_size"
        check_fits_memory(
            len(files) * self.channels * width * height * (1 + 4),
            f"{len(files)} images {shape} ({files[0]}, ...) once decoded",
            f"{fix}, or write them as a stream with ae-lightning-prepare and read it with StreamingDataModule, which "
            "holds a batch at a time",
        )
        n = len(files)
        with ThreadPoolExecutor(min(8, usable_cpus())) as pool:  # PIL releases the GIL while decoding
            images = pool.map(lambda f: decode_image(f, mode, size, alpha), files)
            decoded = list(tqdm(images, total=n, desc=f"Decoding {folder}", unit="img", disable=n < 1000))
        sizes = {image.shape[1:]: file for image, file in zip(decoded, files)}
        if len(sizes) > 1:
            (first, a), (second, b) = list(sizes.items())[:2]
            raise ValueError(
                f"{folder} holds images of different sizes, e.g. {a} ({first[1]}x{first[0]}) and {b} "
                f"({second[1]}x{second[0]}); set image_size to resize them to one"
            )
        return (torch.stack(decoded), torch.tensor(labels, dtype=torch.int64)), class_names


def check_test_dir(folder: Path, test_dir: Path | None, option: str, fraction: str) -> None:
    """Raise a ValueError naming ``option`` if ``test_dir`` is the training ``folder`` (``fraction``: the option that
    holds out a test split instead)."""
    if test_dir is not None and test_dir.resolve() == folder.resolve():
        raise ValueError(
            f"{option} {test_dir} is the training folder {folder}: the model would be tested on the images it trained "
            f"on; give a folder of other images, or leave {option} unset to hold out {fraction} of {folder}"
        )


def list_images(
    folder: Path, class_names: list[str] | None = None, test: bool = False
) -> tuple[list[str], list[int], list[str] | None]:
    """Image files of ``folder``, their labels (``ImageFolder``'s for class subfolders, -1 for a flat folder) and
    its class names; hidden files and folders (names starting with ``.``) are skipped at every depth. A ``test``
    folder must have the training folder's ``class_names`` (None: flat). A ValueError names a folder without images,
    with both images and folders, or with other classes; a FileNotFoundError, a missing one."""
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder {folder} does not exist (or is not a folder)")
    visible = [p for p in folder.iterdir() if not p.name.startswith(".")]
    # not is_file(): a broken link is named when it is decoded, as in a class folder, not skipped
    flat = sorted(str(p) for p in visible if not p.is_dir() and p.suffix.lower() in IMG_EXTENSIONS)
    names = sorted(p.name for p in visible if p.is_dir())  # torchvision's find_classes, less hidden folders
    if flat and names:
        raise ValueError(f"{folder} holds both image files and subfolders: use one subfolder per class, or none")
    if not names:
        if not flat:
            raise ValueError(f"{folder} holds no images (files ending in {', '.join(IMG_EXTENSIONS)})")
        if test and class_names is not None:
            raise ValueError(f"{folder} has no class subfolders, but the training folder has the classes "
                             f"{class_names}: give the test folder the same subfolders")  # fmt: skip
        return flat, [UNLABELED] * len(flat), class_names
    if test and names != class_names:
        training = f"has {class_names}" if class_names is not None else "is flat (no classes)"
        raise ValueError(f"{folder} has the classes {names}, but the training folder {training}")
    for root, folders, _ in os.walk(folder, followlinks=True):  # as make_dataset walks it, before it does
        for link in (Path(root, name) for name in folders):
            if link.is_symlink() and Path(root).resolve().is_relative_to(link.resolve()):
                raise ValueError(
                    f"{link} is a link to {link.resolve()}, a folder that holds it: its images would be read again at "
                    "every depth of the loop; remove the link"
                )
    try:
        samples = make_dataset(
            str(folder),
            {name: i for i, name in enumerate(names)},
            # an image file, with nothing hidden on the way from ``folder``
            is_valid_file=lambda path: (
                path.lower().endswith(IMG_EXTENSIONS)
                and not any(part.startswith(".") for part in Path(path).relative_to(folder).parts)
            ),
        )
    except FileNotFoundError as error:  # torchvision: a class folder without images
        raise ValueError(
            f"{folder}: {error}Image files end in {', '.join(IMG_EXTENSIONS)}; hidden ones (names starting with '.') "
            "are skipped"
        ) from error
    return [path for path, _ in samples], [label for _, label in samples], names


# PIL modes of images deeper than 8 bits per channel, which ``Image.convert`` clips rather than scales.
_DEEP_MODES = dict.fromkeys(("I;16", "I;16B", "I;16L", "I;16N"), "16-bit")
_DEEP_MODES |= {"I": "32-bit integer", "F": "32-bit float"}
GRAY_MODES = ("1", "L", "LA", *_DEEP_MODES)  # PIL modes of gray images


def own_channels(files: list[str]) -> int:
    """1 when every image file is gray, else 3: their PIL modes (and a palette image's colours), read from their
    headers until one is in colour."""

    def gray(path: str) -> bool:
        try:
            with Image.open(path) as image:
                return image.mode in GRAY_MODES or is_gray_palette(image)
        except (OSError, ValueError, Image.DecompressionBombError):
            return True  # decides nothing: decoding refuses the file, naming it

    with ThreadPoolExecutor(min(8, usable_cpus())) as pool:
        for start in range(0, len(files), 256):
            if not all(pool.map(gray, files[start : start + 256])):
                return 3
    return 1


def is_gray_palette(image: Image.Image) -> bool:
    """Whether ``image`` is a palette image (PIL mode ``P``) whose palette, read with its header, holds grays alone."""
    palette = image.palette if image.mode == "P" else None
    layout = palette and (palette.rawmode or palette.mode)  # the bytes of an entry, e.g. BGRX in a BMP
    if layout not in ("RGB", "RGBA", "BGR", "BGRX") or len(palette.palette) % len(layout):
        return False
    colours = np.frombuffer(palette.palette, np.uint8).reshape(-1, len(layout))[:, :3]
    return bool((colours == colours[:, :1]).all())


def decode_image(path: str, mode: str, size: int | None, alpha: Alpha = "refuse") -> Tensor:
    """One image file as a ``[C, H, W]`` uint8 tensor in PIL ``mode``, upright as its EXIF orientation says, made
    opaque as ``alpha`` says (:func:`opaque`), resized and centre-cropped to ``size``."""
    try:
        with Image.open(path) as image:
            source_mode = image.mode
            ImageOps.exif_transpose(image, in_place=True)  # phones store photos turned, with the turn in EXIF
            if source_mode not in _DEEP_MODES:  # an image with transparency stays RGBA until opaque() looks at it
                image = image.convert("RGBA" if image.has_transparency_data else mode)
    except (OSError, ValueError, Image.DecompressionBombError) as error:
        raise ValueError(f"{path} is not an image PIL can read ({error})") from error
    if source_mode in _DEEP_MODES:  # convert() would clip it to 8 bits
        raise ValueError(
            f"{path} is a {_DEEP_MODES[source_mode]} image (PIL mode {source_mode}); image folders hold 8-bit images, "
            "and converting would clip it: convert it to 8 bits per channel first"
        )
    image = opaque(image, mode, alpha, path)
    if size is not None:
        image = TF.center_crop(TF.resize(image, size), size)
    return TF.pil_to_tensor(image).contiguous()


_BACKGROUNDS = {"white": (255, 255, 255, 255), "black": (0, 0, 0, 255)}


def opaque(image: Image.Image, mode: str, alpha: Alpha, where: str) -> Image.Image:
    """``image`` in PIL ``mode``: one with transparent pixels (alpha below 255) is composited over the ``alpha``
    background (``white``, ``black``) or refused (``refuse``) naming ``where``; an opaque one is only converted."""
    if image.has_transparency_data:
        image = image if image.mode == "RGBA" else image.convert("RGBA")
        if image.getchannel("A").getextrema()[0] < 255:
            if alpha == "refuse":
                raise ValueError(
                    f"{where} has transparent pixels, whose colour is whatever the file stores under them: set alpha "
                    "to 'white' or 'black' to composite it over that background (--data.alpha of an image folder, "
                    "--alpha of ae-lightning-prepare and scripts/compress.py), or remove its transparency"
                )
            check_arguments({"alpha": alpha}, opaque)
            image = Image.alpha_composite(Image.new("RGBA", image.size, _BACKGROUNDS[alpha]), image)
    return image if image.mode == mode else image.convert(mode)


__all__ = ["ImageFolderDataModule", "check_test_dir", "decode_image", "list_images", "opaque", "own_channels"]
