"""The data path: streaming loader vs the in-memory image folder vs torchvision's ImageFolder + DataLoader.

    python benchmarks/data_speed.py --out /tmp/data_speed --images 2000 --large 20000 --seconds 8

Writes ``--images`` PNG files at 72 and at 288 px in ``<out>/png<side>-<count>/`` and ``--large`` in
``<out>/large72-<count>/``, each with its stream beside it (reused by a later run that asks for the same count), and
prints what docs/streaming.md ("Speed and memory") lists. Numbers only; no assertions.
"""

from __future__ import annotations

import argparse
import os
import resource
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader
from torchvision.datasets import ImageFolder
from torchvision.transforms import v2

from datamodules import ImageFolderDataModule, StreamingDataModule
from datamodules.stream_prepare import prepare_stream

BATCH = 64
ROOT = Path(__file__).resolve().parents[1]


def write_pngs(out: Path, name: str, count: int, side: int, seed: int = 0) -> Path:
    """The folder ``<out>/<name>-<count>`` of exactly ``count`` ``side``-pixel crops of the two sample photographs
    (scaled to a random size first), in one class: written unless an earlier run left it complete."""
    from sklearn.datasets import load_sample_images

    folder = out / f"{name}-{count}"
    target = folder / "all"
    if target.is_dir() and len(list(target.glob("*.png"))) == count:
        return folder
    target.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    photos = [Image.fromarray(p) for p in load_sample_images().images]
    for i in range(count):
        photo = photos[i % 2]
        scale = rng.uniform(side / min(photo.size), 1.0) if side < min(photo.size) else side / min(photo.size)
        scaled = photo.resize((max(side, round(photo.width * scale)), max(side, round(photo.height * scale))))
        left, top = rng.integers(0, scaled.width - side + 1), rng.integers(0, scaled.height - side + 1)
        scaled.crop((int(left), int(top), int(left) + side, int(top) + side)).save(target / f"{i:06d}.png")
    return folder


def images_per_second(loader, seconds: float, set_epoch: bool = False) -> float:
    images, start, epoch = 0, time.perf_counter(), 0
    while time.perf_counter() - start < seconds:
        if set_epoch:
            loader.set_epoch(epoch)
        for batch in loader:
            images += len(batch[0])
            if time.perf_counter() - start >= seconds:
                break
        epoch += 1
    return images / (time.perf_counter() - start)


def rss_mb() -> float:
    with open("/proc/self/statm") as file:
        return int(file.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def ae_images_per_second(seconds: float) -> float:
    """Training images/s of the f8 autoencoder of ``configs/photo_ae_f8_64.yaml`` (its network, loss and optimizer)."""
    import yaml

    from ae_lightning import Autoencoder

    config = yaml.safe_load((ROOT / "configs" / "photo_ae_f8_64.yaml").read_text())["model"]["init_args"]
    lr = config.pop("optimizer")["init_args"]["lr"]
    model = Autoencoder(input_shape=[3, 64, 64], **config)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    x = torch.rand(BATCH, 3, 64, 64)
    images, start = 0, None
    while start is None or time.perf_counter() - start < seconds:
        optimizer.zero_grad()
        model.loss_terms(x, torch.zeros(BATCH, dtype=torch.long), torch.arange(BATCH))["loss"].backward()
        optimizer.step()
        if start is None:  # the first step allocates: not counted
            start = time.perf_counter()
        else:
            images += BATCH
    return images / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="/tmp/data_speed")
    parser.add_argument("--images", type=int, default=2000, help="files per size for the throughput table")
    parser.add_argument("--large", type=int, default=20000, help="files of the time-to-first-step and memory runs")
    parser.add_argument("--seconds", type=float, default=8.0, help="per throughput measurement")
    args = parser.parse_args()
    for name in ("images", "large", "seconds"):
        if not getattr(args, name) > 0:
            parser.error(f"--{name} {getattr(args, name)}: expected a number above 0")
    out = Path(args.out)
    torch.set_num_threads(1)
    print(f"CPU cores: {os.cpu_count()}, load average {os.getloadavg()[0]:.1f} (a shared machine: numbers are noisy)")

    large_folder = write_pngs(out, "large72", args.large, 72, seed=1)
    large_stream = large_folder.with_name(large_folder.name + "-stream")
    start = time.perf_counter()
    if not (large_stream / "manifest.json").exists():
        prepare_stream(str(large_folder), str(large_stream), chunk_bytes="16MB", num_workers=2, overwrite=True)
        print(f"\nae-lightning-prepare of {args.large} files of 72 px (once per data set): "
              f"{time.perf_counter() - start:.1f} s")  # fmt: skip
    else:
        print(f"\nthe stream of {args.large} files of 72 px: {large_stream}, prepared by an earlier run")
    print(f"\nresident memory of this process while streaming the {args.large} images once (0 workers)")
    dm = StreamingDataModule(str(large_stream), image_size=64, batch_size=BATCH, num_workers=0)
    loader = dm.train_dataloader()
    marks = {int(len(loader) * f) for f in (0.01, 0.25, 0.5, 0.75, 0.99)}
    for i, _ in enumerate(loader):
        if i in marks:
            print(f"  after {i * BATCH:>7} images: {rss_mb():.0f} MB")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"  peak of the process so far: {peak:.0f} MB")

    print(f"\nimages/s, batch {BATCH}, random crop + flip ({args.images} files per size)")
    print(f"{'size':>5} {'stream 0w':>10} {'stream 2w':>10} {'in-memory':>10} {'IF+DL 0w':>10} {'IF+DL 2w':>10}")
    for size in (64, 256):
        stored = size * 9 // 8
        folder = write_pngs(out, f"png{stored}", args.images, stored)
        stream = folder.with_name(folder.name + "-stream")
        if not (stream / "manifest.json").exists():
            prepare_stream(str(folder), str(stream), chunk_bytes="16MB", num_workers=2, overwrite=True)
        row = []
        for workers in (0, 2):
            dm = StreamingDataModule(str(stream), image_size=size, batch_size=BATCH, num_workers=workers)
            row.append(images_per_second(dm.train_dataloader(), args.seconds, set_epoch=True))
        memory = ImageFolderDataModule(str(folder), batch_size=BATCH, data_on_device=False)
        memory.setup()
        row.append(images_per_second(memory.train_dataloader(), args.seconds, set_epoch=True))
        transform = v2.Compose([v2.ToImage(), v2.RandomCrop(size), v2.RandomHorizontalFlip(),
                                v2.ToDtype(torch.float32, scale=True)])  # fmt: skip
        for workers in (0, 2):
            loader = DataLoader(ImageFolder(str(folder), transform), BATCH, shuffle=True, num_workers=workers)
            row.append(images_per_second(loader, args.seconds))
        print(f"{size:>5} " + " ".join(f"{value:>10.0f}" for value in row))

    print(f"\ntime to the first training batch, {args.large} files of 72 px (64 px crops)")
    start = time.perf_counter()
    dm = StreamingDataModule(str(large_stream), image_size=64, batch_size=BATCH, num_workers=2)
    dm.setup("fit")
    next(iter(dm.train_dataloader()))
    print(f"  streaming, 2 workers: {time.perf_counter() - start:.1f} s")
    start = time.perf_counter()
    memory = ImageFolderDataModule(str(large_folder), batch_size=BATCH, data_on_device=False)
    memory.setup()
    next(iter(memory.train_dataloader()))
    print(f"  in-memory image folder: {time.perf_counter() - start:.1f} s")
    del memory

    print("\ntraining throughput of configs/photo_ae_f8_64.yaml's f8 autoencoder, 64 px batches in memory")
    torch.set_num_threads(os.cpu_count() or 1)
    print(f"  {ae_images_per_second(args.seconds):.1f} images/s (batch {BATCH}, {torch.get_num_threads()} threads)")


if __name__ == "__main__":
    main()
