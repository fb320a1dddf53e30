"""Train the small CNN classifier whose features define the Frechet distance (FID) of generated samples.

    python scripts/train_feature_classifier.py --data FashionMNISTDataModule --data_dir ../shared/data
    python scripts/train_feature_classifier.py --data StreamingDataModule --input_dir data/photos-72 --image_size 64
    python scripts/train_feature_classifier.py --data ImageFolderDataModule --data_dir photos --image_size 64
    python scripts/train_feature_classifier.py --checkpoint runs/vae/lightning_logs/version_0/checkpoints/last.ckpt

Trains on the dataset's gray-level training split (a checkpoint's data unbinarized), reports the test accuracy, and
caches the classifier (weights, accuracy, dataset and training settings) at ``--output`` (an existing one is replaced
only with ``--overwrite``), by default
``$AE_LIGHTNING_CACHE/feature-classifier-<Dataset>-<source>.pt`` (``AE_LIGHTNING_CACHE`` defaults to
``~/.cache/ae-lightning``), where ``benchmarks/variants.py`` and ``scripts/evaluate.py`` look for it. ``--data`` names a
datamodule built from a ``data_dir`` or an ``input_dir`` alone; other data (arrays, a torchvision dataset) are read
from a run's ``--checkpoint``. An option the datamodule does not take is refused.
"""

from __future__ import annotations

import argparse
import sys

from ae_lightning.cli import run_command
from ae_lightning.evaluation.driver import AtLeast, datamodule_class, datamodule_names, init_parameters, load_checkpoint
from ae_lightning.evaluation.feature_classifier import (
    ClassifierRecord,
    default_classifier_path,
    train_feature_classifier,
)

DATA_OPTIONS = ("data_dir", "input_dir", "image_size", "channels")  # passed to the datamodule, where it takes them


def unsupported(cls: type) -> str | None:
    """Why ``--data`` cannot name datamodule ``cls`` (what it needs besides the :data:`DATA_OPTIONS`), or None."""
    parameters = init_parameters(cls)
    needed = [name for name, value in parameters.items() if value.default is value.empty and name not in DATA_OPTIONS]
    if needed:
        return f"needs {', '.join(needed)}"
    return None if {"data_dir", "input_dir"} & set(parameters) else "reads neither a data_dir nor an input_dir"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=None, help="datamodule class name or import path (default: MNISTDataModule)")
    parser.add_argument("--checkpoint", default=None, help="the data of this ae-lightning checkpoint, as it trained")
    parser.add_argument(
        "--data_dir", default=None, help="the datamodule's data_dir (default: data, or the checkpoint's)"
    )
    parser.add_argument("--input_dir", default=None, help="the stream of StreamingDataModule (folder or URI)")
    parser.add_argument("--image_size", type=int, default=None, help="image side, for a datamodule that takes it")
    parser.add_argument("--channels", type=int, choices=(1, 3), default=None, help="for a datamodule that takes it")
    parser.add_argument("--epochs", action=AtLeast, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch_size", action=AtLeast, default=128)
    parser.add_argument("--output", default=None, help="where to save (default: the cache path above)")
    parser.add_argument("--accelerator", default="auto")
    parser.add_argument("--overwrite", action="store_true", help="replace a classifier already at the output")
    args = parser.parse_args(argv)
    if args.checkpoint is not None:
        for name in ("data", "input_dir", "image_size", "channels"):
            if getattr(args, name) is not None:
                parser.error(f"--{name} {getattr(args, name)}: --checkpoint names the data as its run had them; "
                             f"leave --{name} out")  # fmt: skip
        return args
    try:
        args.datamodule_class = cls = datamodule_class(args.data or "MNISTDataModule")
    except ValueError as error:
        parser.error(f"--data: {error}")
    if reason := unsupported(cls):
        supported = [name for name in datamodule_names() if not unsupported(datamodule_class(name))]
        parser.error(
            f"--data {args.data}: {cls.__name__} {reason}, but this script gives a datamodule only --data_dir or "
            f"--input_dir: name one of {', '.join(supported)}, or the data of a run with --checkpoint <its checkpoint>"
        )
    parameters = init_parameters(cls)
    for name in DATA_OPTIONS:
        if getattr(args, name) is not None and name not in parameters:
            parser.error(f"--{name} {getattr(args, name)}: {cls.__name__} takes no {name}")
    if "input_dir" in parameters and args.input_dir is None:
        parser.error(f"--data {cls.__name__} reads a stream: give it with --input_dir")
    return args


def main(argv: list[str] | None = None) -> ClassifierRecord:
    args = parse_args(argv)
    if args.checkpoint is not None:  # the checkpoint's data, gray-level, every label kept (the classifier learns all)
        overrides = {"batch_size": args.batch_size, "classes": None, "binarize": "none"}
        datamodule = load_checkpoint(args.checkpoint, args.data_dir, **overrides)[1]
    else:
        cls = args.datamodule_class
        where = {name: getattr(args, name) for name in DATA_OPTIONS if getattr(args, name) is not None}
        if "data_dir" in init_parameters(cls):
            where.setdefault("data_dir", "data")
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
