"""Reconstruction quality at equal code size: ``network: spatial`` against today's ``network: conv``.

    python benchmarks/spatial_quality.py --steps 2000 --device cuda              # the figures
    python benchmarks/spatial_quality.py --steps 60 --train-images 512 --test-images 128   # a quick look on a CPU

Trains the plain autoencoder twice per data set (photo crops, Fashion-MNIST), with spatial codes and with
``network: conv`` and a flat code of as many floats, at the same optimizer, steps and batches, and prints a table of
per-image PSNR (dB) of held-out and training images; ``--picture PATH`` also writes held-out 256x256 crops above
their reconstructions (replaced only with ``--overwrite``). What each option does: docs/spatial.md. Numbers only.
"""

from __future__ import annotations

import argparse
import io
import json
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torchmetrics.functional.image import peak_signal_noise_ratio
from torchvision.transforms.v2.functional import resize
from torchvision.utils import save_image

from ae_lightning import Autoencoder
from ae_lightning.cli import run_command
from ae_lightning.evaluation.driver import AtLeast
from ae_lightning.training.fault_tolerance.checkpoint_io import write_atomically


def photo_arrays(
    folder: str | None, held_out: int, side: int | None = None
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """RGB arrays of the training photos and of the held-out ones: those ``photos.json`` names in a folder that
    ``scripts/make_photo_set.py`` wrote, else the last ``held_out`` files of the folder in name order; each scaled
    (Lanczos) so that its shorter side is ``side`` pixels, as that script scales them, if ``side`` is given."""
    if folder is None:
        from sklearn.datasets import load_sample_images

        china, flower = load_sample_images().images
        return [china], [flower]
    record = Path(folder) / "photos.json"
    if record.is_file():
        split = json.loads(record.read_text())
        train, test = [list(map(Path, split[part])) for part in ("train", "heldout")]
    else:
        files = sorted(path for path in Path(folder).rglob("*") if path.suffix.lower() in {".jpg", ".jpeg", ".png"})
        if len(files) <= held_out:
            raise ValueError(f"{folder} holds {len(files)} photos; at least {held_out + 1} are needed")
        train, test = files[:-held_out], files[-held_out:]

    def read(path: Path) -> np.ndarray:
        image = Image.open(path).convert("RGB")
        if side is not None:
            scale = side / min(image.size)
            image = image.resize((round(image.width * scale), round(image.height * scale)), Image.Resampling.LANCZOS)
        return np.asarray(image)

    return [read(path) for path in train], [read(path) for path in test]


def random_crops(photos: list[np.ndarray], count: int, size: int, seed: int, downscale: int = 1) -> Tensor:
    """``count`` crops ``[count, 3, size, size]`` in [0, 1] at seeded random places of the photos, in turn; each cut
    ``downscale`` times larger and resized down to ``size`` (antialiased), as a data set of whole photos resized to a
    low resolution (ImageNet 64x64) holds more detail per pixel than native-resolution crops."""
    rng = np.random.default_rng(seed)
    crops, side = [], size * downscale
    for i in range(count):
        photo = photos[i % len(photos)]
        top, left = rng.integers(0, photo.shape[0] - side + 1), rng.integers(0, photo.shape[1] - side + 1)
        crops.append(photo[top : top + side, left : left + side])
    images = torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2)
    if downscale > 1:
        images = resize(images, [size, size], antialias=True)
    return images.float() / 255


def fashion_mnist(data_dir: str, train: int, test: int) -> tuple[Tensor, Tensor]:
    from torchvision.datasets import FashionMNIST

    def images(split: bool, count: int) -> Tensor:
        try:
            data = FashionMNIST(data_dir, train=split, download=False).data[:count]
        except RuntimeError:  # torchvision's "Dataset not found or corrupted"
            raise FileNotFoundError(
                f"--data-dir {data_dir} holds no Fashion-MNIST: expected FashionMNIST/raw/ with "
                "its IDX files there (e.g. --data-dir ../shared/data), or --skip fashion"
            ) from None
        return data.unsqueeze(1).float() / 255

    return images(True, train), images(False, test)


def train(
    model: Autoencoder, images: Tensor, steps: int, batch_size: int, lr: float, device: str, cosine: bool
) -> float:
    """Adam on seeded random batches, its learning rate constant or decayed to 0 on a cosine; returns the seconds it
    took."""
    model.to(device).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps) if cosine else None
    generator = torch.Generator().manual_seed(0)
    start = time.perf_counter()
    for _ in range(steps):
        x = images[torch.randint(len(images), (batch_size,), generator=generator)].to(device)
        loss = model.loss_terms(x, torch.zeros(len(x)), torch.arange(len(x)))["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if schedule is not None:
            schedule.step()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - start


@torch.no_grad()
def psnr(model: Autoencoder, images: Tensor, device: str) -> tuple[float, float]:
    """The mean per-image PSNR of the reconstructions, and the same after shifting each reconstruction's channels by
    their mean error (colour-matched: an offset of colour or brightness costs nothing; a diagnostic)."""
    model.eval()
    plain, matched = [], []
    for x in images.split(256):
        x = x.to(device)
        recon = model(x).float()
        for scores, y in ((plain, recon), (matched, recon - (recon - x).mean(dim=(2, 3), keepdim=True))):
            scores.append(peak_signal_noise_ratio(y, x, data_range=1.0, reduction="none", dim=(1, 2, 3)))
    return torch.cat(plain).mean().item(), torch.cat(matched).mean().item()


def compare(name: str, train_images: Tensor, test_images: Tensor, args: argparse.Namespace) -> list[str]:
    """Table rows: each network's PSNR on the held-out images, code size, parameters and training time; the conv
    network once per learning rate and schedule of ``--conv-lrs`` and ``--conv-schedules`` (a baseline given its
    best of a grid), the spatial one once per rate of ``--spatial-lrs`` at ``--schedule``; every run starts from the
    weights of seed 0."""
    shape = tuple(train_images.shape[1:])
    spatial = {"network": "spatial", "hidden_dims": args.spatial_dims, "latent_dim": args.z_channels}
    spatial["spatial"] = {"num_res_blocks": args.num_res_blocks, "attention": True}
    code_floats = int(np.prod(Autoencoder(input_shape=shape, reconstruction="mse", **spatial).latent_shape))
    conv = {"network": "conv", "hidden_dims": args.conv_dims, "latent_dim": code_floats}
    runs = []
    if "conv" in args.networks:
        runs += [
            ("conv", lr, schedule)
            for lr in args.conv_lrs or [args.lr]
            for schedule in args.conv_schedules or [args.schedule]
        ]
    if "spatial" in args.networks:
        runs += [("spatial", lr, args.schedule) for lr in args.spatial_lrs or [args.lr]]
    rows, best = [], None
    for label, lr, schedule in runs:
        torch.manual_seed(0)
        model = Autoencoder(input_shape=shape, reconstruction="mse", **(conv if label == "conv" else spatial))
        seconds = train(model, train_images, args.steps, args.batch_size, lr, args.device, schedule == "cosine")
        parameters = sum(p.numel() for p in model.parameters())
        code = "x".join(map(str, model.latent_shape))
        score, matched = psnr(model, test_images, args.device)
        seen = psnr(model, train_images[: len(test_images)], args.device)[0]
        rows.append(f"| {name} | {label} | {code} ({code_floats}) | {parameters:,} | {lr:g} {schedule} | "
                    f"{seconds:.0f} | {seen:.2f} | {score:.2f} | {matched:.2f} |")  # fmt: skip
        print(rows[-1], flush=True)
        if label == "spatial" and (best is None or score > best[0]):
            best = score, model
    if args.picture and name == "photos" and best is not None:  # the spatial model of the best rate
        held_out = photo_arrays(args.photos, args.held_out_photos, args.photo_side)[1]
        large = random_crops(held_out, 4, 256, seed=2).to(args.device)
        picture, kind = io.BytesIO(), Image.registered_extensions().get(args.picture.suffix.lower(), "PNG")
        with torch.no_grad():
            save_image(torch.cat([large, best[1].eval()(large).float()]), picture, kind, nrow=4, padding=2)
        args.picture.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(args.picture, picture.getvalue())
        print(f"wrote {args.picture}: held-out 256x256 crops (top) and their reconstructions (bottom)")
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--photos",
        help="a folder of photographs, or one scripts/make_photo_set.py wrote (its split); default: scikit-learn's two "
        "sample photographs",
    )
    parser.add_argument("--held-out-photos", action=AtLeast, default=1, help="photos (last by name) kept for testing")
    parser.add_argument("--data-dir", default="../shared/data", help="root holding FashionMNIST/raw")
    parser.add_argument(
        "--crop-size", action=AtLeast, default=32, help="side of the photo crops, divisible by 2 ** levels"
    )
    parser.add_argument(
        "--photo-side", action=AtLeast, help="scale each photo's shorter side to this first (default: as is)"
    )
    parser.add_argument(
        "--downscale", action=AtLeast, default=1, help="cut crops this many times larger, resize them down"
    )
    parser.add_argument("--train-images", action=AtLeast, default=20000, help="training crops / Fashion-MNIST images")
    parser.add_argument(
        "--test-images", action=AtLeast, default=1000, help="held-out crops / Fashion-MNIST test images"
    )
    parser.add_argument("--steps", action=AtLeast, least=0, default=2000)
    parser.add_argument("--batch-size", action=AtLeast, default=64)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument(
        "--schedule",
        choices=["cosine", "constant"],
        default="cosine",
        help="learning rate: decayed to 0 on a cosine over the steps (less end-point noise), or constant",
    )
    parser.add_argument("--spatial-dims", action=AtLeast, nargs="+", default=[64, 128, 256], help="channels per level")
    parser.add_argument("--num-res-blocks", type=int, default=1)
    parser.add_argument("--z-channels", action=AtLeast, default=4, help="channels of the spatial code")
    parser.add_argument(
        "--conv-dims", action=AtLeast, nargs="+", default=[64, 128, 256], help="conv network's channels"
    )
    parser.add_argument("--networks", nargs="+", choices=["conv", "spatial"], default=["conv", "spatial"])
    parser.add_argument("--conv-lrs", type=float, nargs="+", help="the conv network's learning rates (default: --lr)")
    parser.add_argument("--spatial-lrs", type=float, nargs="+", help="the spatial network's rates (default: --lr)")
    parser.add_argument(
        "--conv-schedules",
        nargs="+",
        choices=["cosine", "constant"],
        help="the conv network's schedules (default: --schedule)",
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--picture", type=Path, help="PNG path for held-out 256x256 photo crops and their reconstructions"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace the --picture file if it exists")
    parser.add_argument("--skip", choices=["photos", "fashion"], action="append", default=[])
    args = parser.parse_args(argv)
    if args.picture is not None:
        if "photos" in args.skip or "spatial" not in args.networks:
            parser.error(f"--picture {args.picture} shows the spatial network on the photos: it needs the photos "
                         "(no --skip photos) and --networks spatial")  # fmt: skip
        if args.picture.is_dir():
            parser.error(f"--picture {args.picture} is a folder; name the file to write")
        if args.picture.exists() and not args.overwrite:
            parser.error(f"--picture {args.picture} exists; name another file, or pass --overwrite to replace it")
    fashion = None if "fashion" in args.skip else fashion_mnist(args.data_dir, args.train_images, args.test_images)
    print(f"device {args.device}, {args.steps} steps at batch {args.batch_size}, Adam lr {args.lr} ({args.schedule})")
    print("| data | network | code (floats) | parameters | lr, schedule | train s | PSNR dB on training images | "
          "held-out PSNR dB | held-out, colour-matched |")  # fmt: skip
    print("| --- | --- | --- | --- | --- | --- | ---: | ---: | ---: |")
    if "photos" not in args.skip:
        train_photos, held_out = photo_arrays(args.photos, args.held_out_photos, args.photo_side)
        crops = random_crops(train_photos, args.train_images, args.crop_size, 0, args.downscale)
        compare("photos", crops, random_crops(held_out, args.test_images, args.crop_size, 1, args.downscale), args)
    if fashion is not None:
        compare("Fashion-MNIST", *fashion, args)


if __name__ == "__main__":
    run_command("spatial_quality.py", main)
