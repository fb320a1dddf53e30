"""Compress an image into a file with a trained prior over a quantized autoencoder's codes, or decompress one.

    python scripts/compress.py encode <prior.ckpt> photo.png photo.aelc
    python scripts/compress.py decode <prior.ckpt> photo.aelc photo_decoded.png

The prior's checkpoint holds its tokenizer. Images of any size are coded in tiles of the tokenizer's input size; a
gray model reads images as gray. Decoding refuses, naming the problem, a file that is truncated, corrupted or
written with another model. Both print the size (bytes, bits per pixel) and the time taken.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ae_lightning.codec import compress, decompress
from ae_lightning.models.prior import CodePrior


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=["encode", "decode"])
    parser.add_argument("prior", type=Path, help="checkpoint of a trained CodePrior")
    parser.add_argument("source", type=Path, help="the image (encode) or the compressed file (decode)")
    parser.add_argument("target", type=Path, help="the compressed file (encode) or the image (decode)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    return parser.parse_args(argv)


def load_image(path: Path, channels: int) -> torch.Tensor:
    """An image file as ``[C, H, W]`` in [0, 1], gray for a gray model."""
    with Image.open(path) as image:
        pixels = np.asarray(image.convert("L" if channels == 1 else "RGB"), dtype=np.uint8)
    return torch.from_numpy(pixels.reshape(*pixels.shape[:2], channels).copy()).permute(2, 0, 1).float() / 255


def save_image(image: torch.Tensor, path: Path) -> None:
    pixels = (image.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).cpu().numpy()
    Image.fromarray(pixels[..., 0] if pixels.shape[2] == 1 else pixels).save(path)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    prior = CodePrior.load_from_checkpoint(args.prior, map_location=args.device).eval()
    start = time.perf_counter()
    if args.command == "encode":
        image = load_image(args.source, prior.input_shape[0])
        data = compress(prior, image)
        args.target.write_bytes(data)
        pixels = image.shape[1] * image.shape[2]
    else:
        data = args.source.read_bytes()
        image = decompress(prior, data, name=str(args.source))
        save_image(image, args.target)
        pixels = image.shape[1] * image.shape[2]
    seconds = time.perf_counter() - start
    print(
        f"{args.command}d {image.shape[2]}x{image.shape[1]} image: {len(data)} bytes, {8 * len(data) / pixels:.4f} "
        f"bits per pixel, {seconds:.2f} s ({pixels / seconds / 1e6:.3f} Mpixel/s on {args.device})"
    )


if __name__ == "__main__":
    main()
