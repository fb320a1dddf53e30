"""Bring-your-own-data runs on real data that ships with scikit-learn: an array file, an image folder, a table.

    python scripts/own_data_demo.py --out runs/own_data --epochs 30

Writes, under ``--out``: ``digits.npy``/``digits_labels.npy`` (``load_digits``, 1,797 8x8 digits scaled from 0..16
to 0..255), ``patches/{china,flower}/*.png`` (non-overlapping 32x32 RGB patches of ``load_sample_images``, one
class per photograph) and ``breast_cancer.npz`` (``load_breast_cancer``: 30 features, ``y`` 1 = benign, the normal
class, 0 = malignant, the anomalies). Then trains ``ae-lightning`` on each (through the same command-line class),
tests it, and writes its scores into ``results.json`` and its last pictures to ``pictures/`` as each run ends, each
file whole or not at all; a run whose scores or pictures are already there is refused unless ``--overwrite``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from unittest import mock

import numpy as np
import torch
from PIL import Image

from ae_lightning.cli import AutoencoderCLI
from ae_lightning.evaluation import driver as evaluation
from ae_lightning.evaluation.driver import AtLeast
from ae_lightning.training.fault_tolerance.checkpoint_io import write_atomically

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def write_files(out: Path) -> None:
    from sklearn.datasets import load_breast_cancer, load_digits, load_sample_images

    out.mkdir(parents=True, exist_ok=True)
    digits = load_digits()
    np.save(out / "digits.npy", np.round(digits.images * 255 / 16).astype(np.uint8))
    np.save(out / "digits_labels.npy", digits.target)
    photos = load_sample_images()
    for name, photo in zip(("china", "flower"), photos.images):
        folder = out / "patches" / name
        folder.mkdir(parents=True, exist_ok=True)
        rows, cols = photo.shape[0] // 32, photo.shape[1] // 32
        for i in range(rows):
            for j in range(cols):
                patch = photo[32 * i : 32 * (i + 1), 32 * j : 32 * (j + 1)]
                Image.fromarray(patch).save(folder / f"{i:02d}_{j:02d}.png")
    cancer = load_breast_cancer()
    np.savez(out / "breast_cancer.npz", x=cancer.data.astype(np.float32), y=cancer.target)


def runs(out: Path) -> dict[str, list[str]]:
    """The command line of each run (on top of a shipped config)."""
    return {
        "digits_vae": [
            "--config", str(CONFIGS / "vae.yaml"), "--data", "ArrayDataModule", "--data.path", str(out / "digits.npy"),
            "--data.labels", str(out / "digits_labels.npy"), "--data.binarize", "none", "--data.batch_size", "64",
            "--model.init_args.likelihood", "continuous_bernoulli", "--model.init_args.hidden_dims", "[128]",
            "--model.init_args.latent_dim", "8", "--model.init_args.nll_samples", "200",
        ],
        "patches_conv_vae": [
            "--config", str(CONFIGS / "cifar10_conv_vae.yaml"), "--data", "ImageFolderDataModule",
            "--data.data_dir", str(out / "patches"), "--data.image_size", "32", "--data.channels", "3",
            "--data.batch_size", "32", "--model.init_args.latent_dim", "32", "--model.init_args.hidden_dims",
            "[32,64,128]", "--model.init_args.nll_samples", "100",
        ],
        "breast_cancer_ae": [
            "--config", str(CONFIGS / "tabular_anomaly_ae.yaml"), "--data.path", str(out / "breast_cancer.npz"),
        ],
    }  # fmt: skip


def train_and_test(name: str, args: list[str], out: Path, epochs: int) -> dict[str, float]:
    root = out / "runs" / name
    common = [
        "--trainer.max_epochs", str(epochs), "--trainer.default_root_dir", str(root),
        "--trainer.logger", "lightning.pytorch.loggers.CSVLogger", "--trainer.logger.save_dir", str(root),
        "--trainer.enable_progress_bar", "false", "--images.every_n_epochs", str(epochs),
    ]  # fmt: skip
    with mock.patch("sys.argv", ["ae-lightning"]):
        cli = AutoencoderCLI(args=[*args, *common], run=False)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    (tested,) = cli.trainer.test(cli.model, datamodule=cli.datamodule, verbose=False)
    scores = {key: float(value) for key, value in tested.items()}
    if cli.datamodule.hparams.classes is not None:  # anomaly detection: the test split keeps every class
        scores["test/auroc"] = evaluation.evaluate(cli.model, cli.datamodule, ["auroc"])["auroc"]
    dm = cli.datamodule
    scores |= {f"{split}_size": dm.split_size(split) for split in ("train", "val", "test")}
    pictures = out / "pictures"
    pictures.mkdir(exist_ok=True)
    for path in sorted((Path(cli.trainer.log_dir) / "images").glob("*.png")):
        write_atomically(pictures / f"{name}_{path.name.split('-')[0]}.png", path.read_bytes())
    return scores


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs/own_data"))
    parser.add_argument("--epochs", action=AtLeast, default=30)
    parser.add_argument("--only", nargs="+", choices=list(runs(Path())), help="run only these (default: all)")
    parser.add_argument("--overwrite", action="store_true", help="replace the scores and pictures of earlier runs")
    args = parser.parse_args(argv)
    results_path = args.out / "results.json"
    results = json.loads(results_path.read_text()) if results_path.exists() else {}
    chosen = {name: run for name, run in runs(args.out).items() if name in (args.only or [name])}
    held = [name for name in chosen if name in results or any((args.out / "pictures").glob(f"{name}_*.png"))]
    if held and not args.overwrite:
        parser.error(f"--out {args.out} holds the results of an earlier {', '.join(held)} run; name another folder, "
                     "or pass --overwrite to replace them")  # fmt: skip
    torch.set_num_threads(1)  # a shared 2-core machine
    write_files(args.out)
    for name, run_args in chosen.items():
        results[name] = train_and_test(name, run_args, args.out, args.epochs)
        print(name, json.dumps(results[name], indent=1))
        write_atomically(results_path, json.dumps(results, indent=1).encode())


if __name__ == "__main__":
    main()
