"""Speed of own data: decoding a folder of 10,000 PNG files, the loader's batches, and a conv VAE on 3x32x32.

    python benchmarks/own_data_speed.py --out /tmp/png10k --images 10000 --steps 30

Writes ``--images`` real 32x32 RGB PNG patches (overlapping crops of scikit-learn's two sample photographs) once
(``<out>/patches-<images>/``),
then prints: the time ``ImageFolderDataModule`` takes to decode them into one uint8 tensor; batches per second of
the loader at batch 128 for these 3x32x32 images and for 1x28x28 images of the same count (the MNIST path: same
loader); and training throughput (images per second) of the conv VAE of ``configs/cifar10_conv_vae.yaml`` at batch
128 on the folder, through Lightning, on the CPU or ``--accelerator gpu``. Numbers only: no timed assertions.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import lightning as L
import numpy as np
import torch
from PIL import Image

from ae_lightning import VAE
from ae_lightning.evaluation.driver import AtLeast
from datamodules import ImageFolderDataModule, TensorBatchLoader


def write_pngs(out: Path, count: int) -> Path:
    """The folder ``<out>/patches-<count>`` of exactly ``count`` patches: written unless an earlier run left it."""
    from sklearn.datasets import load_sample_images

    folder = out / f"patches-{count}"
    if folder.is_dir() and len(list(folder.glob("*.png"))) == count:
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    written = 0
    for photo in load_sample_images().images:
        for i in range(0, photo.shape[0] - 32, 5):
            for j in range(0, photo.shape[1] - 32, 5):
                if written == count:
                    return folder
                Image.fromarray(photo[i : i + 32, j : j + 32]).save(folder / f"{written:05d}.png")
                written += 1
    raise ValueError(f"the two photographs give only {written} patches at stride 5; ask for fewer --images")


def loader_batches_per_second(images: torch.Tensor, device: str, seconds: float = 3.0) -> float:
    loader = TensorBatchLoader(images, torch.zeros(len(images), dtype=torch.int64), torch.arange(len(images)), 128,
                               shuffle=True, seed=0, device=device)  # fmt: skip
    batches, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        for _ in loader:
            batches += 1
    if device != "cpu":
        torch.cuda.synchronize()
    return batches / (time.perf_counter() - start)


class StepTimer(L.Callback):
    """Wall time of the training steps after ``warmup`` steps."""

    def __init__(self, warmup: int) -> None:
        self.warmup, self.start, self.steps, self.images = warmup, None, 0, 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.warmup:
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            self.start = time.perf_counter()
        elif trainer.global_step > self.warmup:
            self.steps += 1
            self.images += len(batch[0])

    def on_train_end(self, trainer, pl_module) -> None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self.seconds = time.perf_counter() - self.start


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("/tmp/png10k"))
    parser.add_argument("--images", action=AtLeast, default=10000)
    parser.add_argument("--steps", action=AtLeast, default=30, help="timed training steps (after 5 warm-up steps)")
    parser.add_argument("--accelerator", default="cpu")
    parser.add_argument("--threads", action=AtLeast, help="torch threads (default: torch's)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    folder = write_pngs(args.out, args.images)

    start = time.perf_counter()
    data = ImageFolderDataModule(str(folder), batch_size=128, channels=3)
    data.setup()
    decode = time.perf_counter() - start
    print(f"decoding {args.images} PNG files (32x32 RGB): {decode:.2f} s, {args.images / decode:,.0f} images/s")

    device = "cuda" if args.accelerator == "gpu" else "cpu"
    rgb = data.arrays.train[0]
    gray = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (len(rgb), 1, 28, 28), dtype=np.uint8))
    for name, images in (("3x32x32 folder", rgb), ("1x28x28 (MNIST path)", gray)):
        print(f"loader, {name}, batch 128 on {device}: {loader_batches_per_second(images, device):,.0f} batches/s")

    torch.manual_seed(0)
    model = VAE(input_shape=(3, 32, 32), latent_dim=128, network="conv", hidden_dims=[64, 128, 256],
                likelihood="gaussian", gaussian_std="learned")  # fmt: skip
    timer = StepTimer(warmup=5)
    trainer = L.Trainer(
        accelerator=args.accelerator, devices=1, max_steps=5 + args.steps, limit_val_batches=0, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, callbacks=[timer],
    )  # fmt: skip
    trainer.fit(model, datamodule=data)
    rate = timer.images / timer.seconds
    print(f"conv VAE (configs/cifar10_conv_vae.yaml) on 3x32x32, batch 128, {args.accelerator}: "
          f"{timer.steps / timer.seconds:.2f} steps/s, {rate:,.0f} images/s")  # fmt: skip


if __name__ == "__main__":
    main()
