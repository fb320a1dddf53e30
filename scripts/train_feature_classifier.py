"""Train the small CNN classifier whose features define the Frechet distance (FID) of generated samples.

    python scripts/train_feature_classifier.py --data FashionMNISTDataModule --data_dir ../shared/data
    python scripts/train_feature_classifier.py --data StreamingDataModule --input_dir data/photos-72 --image_size 64
    python scripts/train_feature_classifier.py --checkpoint runs/vae/lightning_logs/version_0/checkpoints/last.ckpt

Trains on the dataset's gray-level training split (a checkpoint's data unbinarized), reports the test accuracy, and
caches the classifier (weights, accuracy, dataset and training settings) at ``--output`` (an existing one is replaced
only with ``--overwrite``), by default
``$AE_LIGHTNING_CACHE/feature-classifier-<Dataset>-<source>.pt`` (``AE_LIGHTNING_CACHE`` defaults to
``~/.cache/ae-lightning``), where ``benchmarks/variants.py`` and ``scripts/evaluate.py`` look for it.
"""

from __future__ import annotations

import argparse
import inspect
import sys

from ae_lightning.cli import run_command
from ae_lightning.evaluation.driver import datamodule_class, load_checkpoint
from ae_lightning.evaluation.feature_classifier import (
    ClassifierRecord,
    default_classifier_path,
    train_feature_classifier,
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default="MNISTDataModule", help="datamodule class name or import path")
    parser.add_argument("--checkpoint", default=None, help="the data of this ae-lightning checkpoint, as it trained")
    parser.add_argument(
        "--data_dir", default=None, help="root holding <ClassName>/raw/ (default: data, or the checkpoint's)"
    )
    parser.add_argument("--input_dir", default=None, help="the stream of StreamingDataModule (folder or URI)")
    parser.add_argument("--image_size", type=int, default=None, help="StreamingDataModule's image_size")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--output", default=None, help="where to save (default: the cache path above)")
    parser.add_argument("--accelerator", default="auto")
    parser.add_argument("--overwrite", action="store_true", help="replace a classifier already at the output")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> ClassifierRecord:
    args = parse_args(argv)
    if args.checkpoint is not None:  # the checkpoint's data, gray-level, every label kept (the classifier learns all)
        overrides = {"batch_size": args.batch_size, "classes": None, "binarize": "none"}
        datamodule = load_checkpoint(args.checkpoint, args.data_dir, **overrides)[1]
    else:
        cls = datamodule_class(args.data)
        if "input_dir" in inspect.signature(cls).parameters:  # a stream
            if args.input_dir is None:
                raise ValueError(f"--data {args.data} reads a stream: give it with --input_dir")
            where = {"input_dir": args.input_dir, "image_size": args.image_size}
        else:
            where = {"data_dir": args.data_dir or "data"}
        datamodule = cls(**where, batch_size=args.batch_size, seed=args.seed)
    path = args.output or default_classifier_path(datamodule)
    print(f"Training the feature classifier on {datamodule.data_description} for {args.epochs} epochs")
    record = train_feature_classifier(
        datamodule, path, args.epochs, args.seed, args.accelerator, sys.stderr.isatty(), args.overwrite
    )
    print(f"Test accuracy {record.test_accuracy:.4f}; saved to {record.path}")
    return record


if __name__ == "__main__":
    run_command("train_feature_classifier.py", main)
