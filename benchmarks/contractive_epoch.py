"""Time one training epoch of the contractive autoencoder against the plain autoencoder of the same shape.

The contractive penalty (the encoder Jacobian's squared Frobenius norm) should cost at most about 3x the plain
autoencoder's epoch on CPU. Prints the seconds per epoch of each and their ratio.

    python benchmarks/contractive_epoch.py --data_dir ../shared/data --dataset FashionMNISTDataModule
"""

from __future__ import annotations

import argparse
import time

import lightning as L
import torch

from ae_lightning import Autoencoder, ContractiveAutoencoder
from ae_lightning.cli import run_command
from ae_lightning.evaluation.driver import AtLeast, datamodule_class


def epoch_seconds(model: L.LightningModule, datamodule: L.LightningDataModule, max_steps: int) -> float:
    trainer = L.Trainer(
        accelerator="cpu",
        max_epochs=1,
        max_steps=max_steps,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    start = time.perf_counter()
    trainer.fit(model, datamodule=datamodule)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data_dir", default="data")
    parser.add_argument("--dataset", default="MNISTDataModule", help="a datamodules class name")
    parser.add_argument("--batch_size", action=AtLeast, default=128)
    parser.add_argument("--max_steps", type=int, default=-1, help="cut the epoch short (-1: the full epoch)")
    parser.add_argument("--repeats", action=AtLeast, default=2)
    parser.add_argument("--contractive_weight", type=float, default=0.1)
    args = parser.parse_args(argv)
    if args.max_steps == 0 or args.max_steps < -1:
        parser.error(f"--max_steps {args.max_steps}: expected -1 (the full epoch) or at least 1")
    datamodule = datamodule_class(args.dataset)(data_dir=args.data_dir, batch_size=args.batch_size)
    datamodule.prepare_data()
    datamodule.setup("fit")
    shape = {"latent_dim": 20, "network": "mlp", "hidden_dims": [256, 64]}
    print(f"torch threads: {torch.get_num_threads()}, train images: {datamodule.split_size('train')}")
    times: dict[str, list[float]] = {"plain": [], "contractive": []}
    for _ in range(args.repeats):  # interleaved, so that a change in machine load hits both alike
        L.seed_everything(0, verbose=False)
        times["plain"].append(epoch_seconds(Autoencoder(**shape), datamodule, args.max_steps))
        L.seed_everything(0, verbose=False)
        model = ContractiveAutoencoder(contractive_weight=args.contractive_weight, **shape)
        times["contractive"].append(epoch_seconds(model, datamodule, args.max_steps))
    plain, contractive = min(times["plain"]), min(times["contractive"])
    print(f"plain autoencoder:       {plain:.1f} s per epoch (runs: {times['plain']})")
    print(f"contractive autoencoder: {contractive:.1f} s per epoch (runs: {times['contractive']})")
    print(f"ratio: {contractive / plain:.2f}x")


if __name__ == "__main__":
    run_command("contractive_epoch.py", main)
