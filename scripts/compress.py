"""Compress an image into a file with a trained prior over a quantized autoencoder's codes, or decompress one.

    python scripts/compress.py encode <prior.ckpt> photo.png photo.aelc
    python scripts/compress.py decode <prior.ckpt> photo.aelc photo_decoded.png

The prior's checkpoint holds its tokenizer (one saved before priors held their tokenizer's settings reads the
tokenizer's checkpoint at the path it recorded). Images of any size are coded in tiles of the tokenizer's input size; a
gray model reads images as gray, an RGB one as RGB (a model of other channels codes tensors from Python only). Decoding
refuses, naming the problem, a file that is truncated, corrupted or written with another model. Both print the size
(bytes, bits per pixel) and the time taken. An existing output file is replaced only with ``--overwrite`` (never the
input or the prior), and never left half-written; a bad input is a one-line error (exit status 2).
"""

from __future__ import annotations

import argparse
import io
import time
import typing
from pathlib import Path

import torch
from PIL import Image

from ae_lightning.codec import MAGIC, CompressedFileError, compress, decompress
from ae_lightning.models.prior import CodePrior
from ae_lightning.training.fault_tolerance.checkpoint_io import read_checkpoint, write_atomically
from datamodules.folder import Alpha, decode_image


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=["encode", "decode"])
    parser.add_argument("prior", type=Path, help="checkpoint of a trained CodePrior")
    parser.add_argument("source", type=Path, help="the image (encode) or the compressed file (decode)")
    parser.add_argument("target", type=Path, help="the compressed file (encode) or the image (decode)")
    default_device = "cuda" if torch.cuda.is_available() else "cpu"
    parser.add_argument("--device", default=default_device, help="cpu, cuda, cuda:1, ... (default: %(default)s)")
    parser.add_argument("--overwrite", action="store_true", help="replace target if it exists")
    parser.add_argument("--alpha", choices=typing.get_args(Alpha), default="refuse", help="an image with transparent "
                        "pixels: refuse it (default), or composite it over a white or black background")  # fmt: skip
    return parser


def check_paths(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Exit through ``parser.error``, naming the path, unless the source exists and the target may be written: a new
    file, or an existing one with ``--overwrite`` that is neither the source nor the prior."""
    expected = "an image" if args.command == "encode" else "a file written by `compress.py encode`"
    if not args.source.is_file():
        parser.error(f"source {args.source} does not exist (or is not a file); expected {expected}")
    if args.target.is_dir():
        parser.error(f"target {args.target} is a folder; name the file to write")
    if not args.target.parent.is_dir():
        parser.error(f"target {args.target}: its folder {args.target.parent} does not exist; create it first")
    for role, path in (("source", args.source), ("prior", args.prior)):
        if args.target.exists() and path.exists() and args.target.samefile(path):  # --overwrite would destroy it
            parser.error(f"target {args.target} is the {role} {path}; name another file to write")
    if args.target.exists() and not args.overwrite:
        parser.error(f"target {args.target} exists; name another file, or pass --overwrite to replace it")
    if args.command == "decode" and args.alpha != "refuse":  # the decoded image is opaque: nothing to composite
        parser.error(f"--alpha {args.alpha} applies to the image that encode reads; decode takes no --alpha")
    written_as = Image.registered_extensions().get(args.target.suffix.lower())
    if args.command == "decode" and written_as not in Image.SAVE:
        parser.error(f"target {args.target}: expected an image name whose suffix Pillow can write (.png, .bmp, ...)")
    if args.command == "encode" and written_as is not None:  # an image viewer would open the file and fail
        parser.error(f"target {args.target}: an image name ({written_as}) for the compressed file; name it .aelc")
    if args.command == "decode" and written_as in ("ICO", "ICNS"):  # Pillow resizes the image to icon sizes
        parser.error(f"target {args.target}: Pillow writes {written_as} files as icons of fixed sizes, not the image "
                     "at its own size; expected an image name such as .png, .bmp, .tiff or .webp")  # fmt: skip


def check_device(parser: argparse.ArgumentParser, device: str) -> None:
    """Exit through ``parser.error``, naming ``--device``, unless torch can place tensors on ``device``."""
    try:  # raises for an unknown name, a GPU this machine lacks, or a kind of device this torch was built without
        if torch.zeros(1, device=device).is_meta:
            raise RuntimeError("the meta device holds no data")
    except (RuntimeError, AssertionError, NotImplementedError) as error:
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
        parser.error(f"--device {device}: {reason}; expected cpu, or cuda (cuda:<index>) on a machine with that GPU")


def load_prior(parser: argparse.ArgumentParser, path: Path, device: str) -> CodePrior:
    """The CodePrior of checkpoint ``path`` in eval mode; ``parser.error`` naming the file if it holds none."""
    expected = "expected a CodePrior checkpoint (trained with configs/second_stage/prior.yaml)"
    if not path.is_file():
        parser.error(f"prior {path} does not exist (or is not a file); {expected}")
    try:
        checkpoint = read_checkpoint(path, name="prior")
    except ValueError as error:
        parser.error(f"{error}; {expected}")
    stored = checkpoint.get("ae_lightning_class", "")
    if not stored.endswith(".CodePrior"):
        parser.error(f"prior {path} holds {stored or 'no ae-lightning model'}; {expected}")
    try:
        return CodePrior.load_from_checkpoint(path, map_location=device).eval()
    except FileNotFoundError as error:  # a checkpoint of an earlier release, its tokenizer's missing: names both
        parser.error(str(error))
    except ValueError as error:  # ... or changed
        parser.error(f"prior {path}: {error}")


def load_image(path: Path, channels: int, alpha: Alpha = "refuse") -> torch.Tensor:
    """An 8-bit image file as ``[C, H, W]`` in [0, 1], gray for a gray model; a ValueError naming the file if it is
    not an image, or is a 16-bit, 32-bit or float image (converting would clip it), or has transparent pixels and
    ``alpha`` is ``refuse``, as image folders refuse them."""
    return decode_image(str(path), "L" if channels == 1 else "RGB", None, alpha).float() / 255


def image_bytes(image: torch.Tensor, suffix: str) -> bytes:
    """``image`` (``[C, H, W]`` in [0, 1]) encoded in the format Pillow names for ``suffix`` (``.png`` ...)."""
    pixels = (image.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).cpu().numpy()
    buffer = io.BytesIO()
    Image.fromarray(pixels[..., 0] if pixels.shape[2] == 1 else pixels).save(
        buffer, format=Image.registered_extensions()[suffix.lower()]
    )
    return buffer.getvalue()


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    check_paths(parser, args)
    check_device(parser, args.device)
    prior = load_prior(parser, args.prior, args.device)
    channels = prior.input_shape[0]
    if args.command == "encode" and channels not in (1, 3):
        parser.error(f"prior {args.prior} codes images of {channels} channels; encode reads image files as gray (1) "
                     "or RGB (3): give it the tensor from Python (ae_lightning.codec.compress)")  # fmt: skip
    if args.command == "decode":
        try:  # before decoding: Pillow writes some formats in some modes only (no 2-channel or RGBA JPEG)
            image_bytes(torch.zeros(channels, 1, 1), args.target.suffix)
        except (OSError, ValueError) as error:
            parser.error(f"target {args.target}: {error} (prior {args.prior} decodes images of {channels} channels)")
    start = time.perf_counter()
    if args.command == "encode":
        try:
            image = load_image(args.source, prior.input_shape[0], args.alpha)
        except ValueError as error:
            parser.error(f"source {error}")
        data = compress(prior, image)
        write_atomically(args.target, data)
    else:
        with args.source.open("rb") as file:  # a file of another kind (a video given by mistake) is not read whole
            data = file.read(len(MAGIC))
            data += file.read() if data == MAGIC else b""
        try:
            image = decompress(prior, data, name=str(args.source))
        except CompressedFileError as error:
            parser.error(str(error))
        try:  # a size the format cannot hold (WebP: 16383 pixels a side, JPEG: 65500, GIF: 65535), known only now
            encoded = image_bytes(image, args.target.suffix)
        except (OSError, ValueError, OverflowError) as error:
            size = f"{image.shape[2]}x{image.shape[1]}"
            parser.error(f"target {args.target}: {error}; the decoded image is {size}; name a .png or .tiff target")
        write_atomically(args.target, encoded)
    pixels = image.shape[1] * image.shape[2]
    seconds = time.perf_counter() - start
    print(
        f"{args.command}d {image.shape[2]}x{image.shape[1]} image: {len(data)} bytes, {8 * len(data) / pixels:.4f} "
        f"bits per pixel, {seconds:.2f} s ({pixels / seconds / 1e6:.3f} Mpixel/s on {args.device})"
    )


if __name__ == "__main__":
    main()
