"""Rate-distortion of the learned codec against JPEG and WebP (Pillow) on held-out photographs.

    python benchmarks/rate_distortion.py --steps 300 --prior_steps 300 --out runs/rate_distortion

For each ``(downsampling factor, codebook size)`` a small VQ autoencoder is trained on 8192 random 32x32 crops of
scikit-learn's two sample photographs (``china.jpg``, ``flower.jpg``) or of the photographs in ``--photos``, then a
:class:`~ae_lightning.CodePrior` over its codes; the held-out photograph (matplotlib's ``grace_hopper.jpg``, 512x600)
is compressed with ``ae_lightning.codec`` (sizes are the files' real bytes, header included) and decoded back, and
JPEG and WebP encode it at several qualities. Prints bits per pixel, PSNR and MS-SSIM (on 8-bit RGB) of each, writes
``results.json`` and ``rate_distortion.png`` under ``--out`` (and each point's ``f<factor>_k<size>/tokenizer.ckpt`` and
``prior.ckpt``), replacing an earlier run's files only with ``--overwrite``, and never leaving one half-written. The
training photographs are few: the learned points show the pipeline working, not what the method reaches with a real
training set and a GPU.
"""

from __future__ import annotations

import argparse
import io
import json
import time
from pathlib import Path

import lightning as L
import matplotlib
import numpy as np
import sklearn.datasets
import torch
from PIL import Image
from torch.utils.data import DataLoader, TensorDataset
from torchmetrics.functional.image import multiscale_structural_similarity_index_measure, peak_signal_noise_ratio
from torchvision.transforms.functional import pil_to_tensor

from ae_lightning import CodePrior, QuantizedAutoencoder
from ae_lightning.codec import compress, decompress
from ae_lightning.evaluation.driver import AtLeast
from ae_lightning.training.fault_tolerance.checkpoint_io import AtomicCheckpointIO, write_atomically

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

TRAIN_PHOTOS = [Path(sklearn.datasets.__file__).parent / "images" / name for name in ("china.jpg", "flower.jpg")]
HELD_OUT = [Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"]
TILE = 32


def point(text: str) -> tuple[int, int]:
    """``factor:codebook_size`` as two integers: a downsampling factor of 2, 4, ... ``TILE`` and a book of 2 codes or
    more."""
    factor, _, size = text.partition(":")
    if not (factor.isdigit() and size.isdigit() and 2 <= int(factor) <= TILE and int(factor) & (int(factor) - 1) == 0
            and int(size) >= 2):  # fmt: skip
        raise argparse.ArgumentTypeError(
            f"{text!r}: expected factor:codebook_size, the factor a power of 2 from 2 to {TILE} (the tiles are "
            f"{TILE}x{TILE}) and at least 2 codes"
        )
    return int(factor), int(size)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--points", nargs="+", type=point, default=[(8, 64), (8, 512), (4, 256)],
                        help="factor:codebook_size pairs (default: 8:64 8:512 4:256)")  # fmt: skip
    parser.add_argument("--steps", action=AtLeast, default=300, help="training steps of each autoencoder")
    parser.add_argument("--prior_steps", action=AtLeast, default=300, help="training steps of each prior")
    parser.add_argument("--batch_size", action=AtLeast, default=32)
    parser.add_argument("--photos", type=Path, default=None, help="folder of training photographs (default: "
                        "scikit-learn's two); e.g. /usr/share/backgrounds/mate/nature")  # fmt: skip
    parser.add_argument("--jpeg_qualities", nargs="+", type=int, default=[5, 10, 20, 30, 50, 75, 90])
    parser.add_argument("--webp_qualities", nargs="+", type=int, default=[1, 5, 10, 25, 50, 75, 90])
    parser.add_argument("--out", type=Path, default=Path("runs/rate_distortion"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--reuse", action="store_true", help="reuse the autoencoders an earlier run saved under --out")
    parser.add_argument("--overwrite", action="store_true", help="replace an earlier run's results and checkpoints")
    args = parser.parse_args(argv)
    repeated = next((point for i, point in enumerate(args.points) if point in args.points[:i]), None)
    if repeated is not None:  # it would train twice into one folder and give two rows
        parser.error(f"--points {repeated[0]}:{repeated[1]} is given twice; name each point once")
    checkpoints = ("prior.ckpt",) if args.reuse else ("tokenizer.ckpt", "prior.ckpt")
    points = [args.out / f"f{factor}_k{size}" / name for factor, size in args.points for name in checkpoints]
    held = [path for path in (args.out / "results.json", args.out / "rate_distortion.png", *points) if path.exists()]
    if held and not args.overwrite:
        parser.error(f"--out {args.out} holds an earlier run's {held[0].relative_to(args.out)}; name another folder, "
                     "or pass --overwrite to replace its files")  # fmt: skip
    for name, low in (("jpeg_qualities", 1), ("webp_qualities", 0)):  # Pillow reads JPEG's -1 as 75, 101 as 100
        for quality in getattr(args, name):
            if not low <= quality <= 100:
                parser.error(f"--{name} {quality}: expected qualities from {low} to 100")
    args.train_photos = TRAIN_PHOTOS
    if args.photos is not None:
        suffixes = (".jpg", ".jpeg", ".png")
        found = args.photos.is_dir() and sorted(p for p in args.photos.iterdir() if p.suffix.lower() in suffixes)
        if not found:
            parser.error(f"--photos {args.photos}: expected a folder holding .jpg, .jpeg or .png photographs")
        for path in found:
            with Image.open(path) as image:
                if min(image.size) < TILE:  # no crop fits
                    parser.error(f"--photos: {path} is {image.width}x{image.height}; expected at least {TILE}x{TILE}")
        args.train_photos = found
    return args


def load_photo(file: Path | io.BytesIO) -> torch.Tensor:
    with Image.open(file) as image:
        return pil_to_tensor(image.convert("RGB")).float() / 255


def random_crops(photos: list[torch.Tensor], count: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    crops = []
    for i in range(count):
        photo = photos[i % len(photos)]
        top = torch.randint(photo.shape[1] - TILE + 1, (), generator=generator).item()
        left = torch.randint(photo.shape[2] - TILE + 1, (), generator=generator).item()
        crops.append(photo[:, top : top + TILE, left : left + TILE])
    return torch.stack(crops)


def loader(crops: torch.Tensor, batch_size: int) -> DataLoader:
    dataset = TensorDataset(crops, torch.zeros(len(crops), dtype=torch.long), torch.arange(len(crops)))
    return DataLoader(dataset, batch_size=batch_size, shuffle=True, drop_last=True)


def fit(model: L.LightningModule, data: DataLoader, steps: int, root: Path) -> L.Trainer:
    trainer = L.Trainer(
        max_steps=steps,
        accelerator="auto",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=root,
        plugins=[AtomicCheckpointIO()],
    )
    trainer.fit(model, train_dataloaders=data)
    return trainer


def scores(original: torch.Tensor, decoded: torch.Tensor, size: int) -> dict[str, float]:
    """Bits per pixel of ``size`` bytes, PSNR (dB) and MS-SSIM of ``decoded`` rounded to 8 bits."""
    decoded = (decoded.clamp(0, 1) * 255).round() / 255
    x, y = decoded[None].double(), original[None].double()
    return {
        "bpp": 8 * size / (original.shape[1] * original.shape[2]),
        "psnr": peak_signal_noise_ratio(x, y, data_range=1.0).item(),
        "ms_ssim": multiscale_structural_similarity_index_measure(x, y, data_range=1.0).item(),
    }


def pillow_codec(photo: torch.Tensor, kind: str, quality: int) -> dict[str, float]:
    pixels = (photo * 255).round().byte().permute(1, 2, 0).numpy()
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=kind, quality=quality)
    size = buffer.tell()
    buffer.seek(0)
    return {"codec": kind, "quality": quality, **scores(photo, load_photo(buffer), size)}


def learned_codec(args: argparse.Namespace, factor: int, codebook_size: int, crops: torch.Tensor) -> CodePrior:
    torch.manual_seed(args.seed)
    steps = int(np.log2(factor))
    tokenizer = QuantizedAutoencoder(
        input_shape=(3, TILE, TILE),
        latent_dim=32,
        hidden_dims=[64] * steps,
        residual_blocks=1,
        codebook_size=codebook_size,
        optimizer=lambda params: torch.optim.Adam(params, lr=1e-3),
    )
    root = args.out / f"f{factor}_k{codebook_size}"
    if args.reuse and (root / "tokenizer.ckpt").is_file():
        print(f"f{factor} K{codebook_size}: autoencoder of an earlier run, {root / 'tokenizer.ckpt'}")
    else:
        start = time.perf_counter()
        trainer = fit(tokenizer, loader(crops, args.batch_size), args.steps, root)
        trainer.save_checkpoint(root / "tokenizer.ckpt")
        print(f"f{factor} K{codebook_size}: autoencoder {args.steps} steps in {time.perf_counter() - start:.0f} s")
    torch.manual_seed(args.seed)
    prior = CodePrior(
        str(root / "tokenizer.ckpt"),
        embed_dim=64,
        num_layers=2,
        num_heads=4,
        optimizer=lambda params: torch.optim.AdamW(params, lr=1e-3),
    )
    start = time.perf_counter()
    fit(prior, loader(crops, args.batch_size), args.prior_steps, root).save_checkpoint(root / "prior.ckpt")
    print(f"f{factor} K{codebook_size}: prior {args.prior_steps} steps in {time.perf_counter() - start:.0f} s")
    return prior.cpu().eval()


def main(argv: list[str] | None = None) -> list[dict]:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    crops = random_crops([load_photo(path) for path in args.train_photos], 8192, args.seed)
    results = []
    for photo_path in HELD_OUT:
        photo = load_photo(photo_path)
        for kind, qualities in (("JPEG", args.jpeg_qualities), ("WEBP", args.webp_qualities)):
            results += [{"photo": photo_path.name, **pillow_codec(photo, kind, quality)} for quality in qualities]
    for factor, codebook_size in args.points:
        prior = learned_codec(args, factor, codebook_size, crops)
        for photo_path in HELD_OUT:
            photo = load_photo(photo_path)
            start = time.perf_counter()
            data = compress(prior, photo)
            encode_seconds = time.perf_counter() - start
            start = time.perf_counter()
            decoded = decompress(prior, data)
            decode_seconds = time.perf_counter() - start
            results.append(
                {
                    "photo": photo_path.name,
                    "codec": f"learned f{factor} K{codebook_size}",
                    "quality": None,
                    **scores(photo, decoded, len(data)),
                    "encode_s": encode_seconds,
                    "decode_s": decode_seconds,
                }
            )
    print(f"{'photo':<18} {'codec':<20} {'quality':>7} {'bpp':>7} {'PSNR':>7} {'MS-SSIM':>8}")
    for row in results:
        quality = "" if row["quality"] is None else row["quality"]
        print(
            f"{row['photo']:<18} {row['codec']:<20} {quality:>7} {row['bpp']:>7.4f} {row['psnr']:>7.2f} "
            f"{row['ms_ssim']:>8.4f}"
            + (f"  enc {row['encode_s']:.2f} s, dec {row['decode_s']:.2f} s" if "encode_s" in row else "")
        )
    write_atomically(args.out / "results.json", (json.dumps(results, indent=2) + "\n").encode())
    plot(results, args.out / "rate_distortion.png")
    return results


def plot(results: list[dict], path: Path) -> None:
    figure, axes = plt.subplots(1, 2, figsize=(10, 4))
    for axis, metric in zip(axes, ("psnr", "ms_ssim")):
        for codec, marker, size in (("JPEG", "o-", None), ("WEBP", "s-", None), ("learned", "r*", 12)):
            rows = sorted((row for row in results if row["codec"].startswith(codec)), key=lambda row: row["bpp"])
            axis.plot([row["bpp"] for row in rows], [row[metric] for row in rows], marker, markersize=size, label=codec)
        axis.set_xlabel("bits per pixel (file bytes)")
        axis.set_ylabel({"psnr": "PSNR (dB)", "ms_ssim": "MS-SSIM"}[metric])
        axis.set_xlim(0, 1.0)
        axis.grid(alpha=0.3)
        axis.legend()
    figure.suptitle("held-out photograph: " + ", ".join(sorted({row["photo"] for row in results})))
    figure.tight_layout()
    picture = io.BytesIO()
    figure.savefig(picture, format="png", dpi=120)
    write_atomically(path, picture.getvalue())


if __name__ == "__main__":
    main()
