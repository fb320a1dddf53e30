"""Does the adversarial term sharpen reconstructions? The VQ-VAE of ``configs/vqvae.yaml`` trained with and without
its PatchGAN term, scored by PSNR, MS-SSIM and the reconstruction FID in the dataset classifier's features.

    python benchmarks/adversarial_sharpness.py --data_dir ../shared/data --out runs/sharpness --steps 1500

Both runs share data, seed, steps and every setting but ``adversarial_weight`` (hinge loss, adaptive weight, switched
on at ``--disc_start``); LPIPS is off in both (its pretrained weights are not needed). The reconstruction FID
(``rfid_classifier``) uses the cached Fashion-MNIST feature classifier (``scripts/train_feature_classifier.py``).
Writes ``<out>/sharpness.png``: test images (top), reconstructions without (middle) and with (bottom) the term.

The term costs PSNR, so the two final models are not at equal PSNR. ``--every N`` also keeps the arm without the term
every ``N`` steps and scores each of those checkpoints: its rFID where its PSNR first reaches the PSNR of the arm with
the term is the comparison at equal PSNR budget. ``--out`` must not hold an earlier run's arms or picture.
"""

from __future__ import annotations

import argparse
import io
import subprocess
import sys
import time
from pathlib import Path

import torch
from torchvision.utils import save_image

from ae_lightning.cli import run_command
from ae_lightning.evaluation import driver as evaluation
from ae_lightning.evaluation.driver import AtLeast
from ae_lightning.evaluation.feature_classifier import (
    ClassifierCNN,
    check_classifier_data,
    default_classifier_path,
    load_feature_classifier,
)
from ae_lightning.training.fault_tolerance.checkpoint_io import write_atomically
from datamodules import FashionMNISTDataModule

ROOT = Path(__file__).parents[1]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data_dir", required=True, help="root holding FashionMNIST/raw")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--steps", action=AtLeast, default=1500)
    parser.add_argument("--disc_start", action=AtLeast, least=0, default=500)
    parser.add_argument("--adversarial_weight", type=float, default=0.8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch_size", action=AtLeast, default=64)
    parser.add_argument("--rfid_images", action=AtLeast, least=2, help="test images of the FID (default: all)")
    parser.add_argument(
        "--every", action=AtLeast, least=0, default=0, help="also score the arm without the term every N steps"
    )
    args = parser.parse_args(argv)
    if args.disc_start >= args.steps:
        parser.error(f"--disc_start {args.disc_start} must be below --steps {args.steps}: the arm with the term would "
                     "never use it")  # fmt: skip
    args.out, args.data_dir = args.out.resolve(), str(Path(args.data_dir).resolve())  # the runs start in the repo
    earlier = [args.out / name for name in ("without", "with", "sharpness.png") if (args.out / name).exists()]
    if earlier:
        parser.error(f"--out {args.out} holds an earlier run ({earlier[0]}): name another folder")
    return args


def fit(args: argparse.Namespace, name: str, *extra: str) -> Path:
    """Train one arm with ``ae-lightning fit``; its ``last.ckpt``."""
    root = args.out / name
    command = [
        sys.executable, "-m", "ae_lightning.cli", "fit", "--config", str(ROOT / "configs" / "vqvae.yaml"),
        "--data.init_args.data_dir", args.data_dir, "--data.init_args.batch_size", str(args.batch_size),
        "--trainer.max_steps", str(args.steps), "--trainer.max_epochs", "-1", "--trainer.limit_val_batches", "0",
        "--trainer.logger", "false", "--images.every_n_epochs", "0", "--trainer.enable_progress_bar", "false",
        "--seed_everything", str(args.seed), "--trainer.default_root_dir", str(root), *extra,
    ]  # fmt: skip
    start = time.perf_counter()
    with open(args.out / f"{name}.log", "w") as log:
        status = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT).returncode
    if status:
        lines = (args.out / f"{name}.log").read_text().strip().splitlines() or ["no output"]
        error = next((line for line in reversed(lines) if "error" in line.lower()), lines[-1])
        raise ValueError(f"the {name} arm's ae-lightning fit failed (exit status {status}): {error} "
                         f"(its output: {args.out / f'{name}.log'})")  # fmt: skip
    print(f"{name}: {args.steps} steps in {time.perf_counter() - start:.0f} s", flush=True)
    return next(root.rglob("last.ckpt"))


def feature_classifier(data_dir: str) -> ClassifierCNN:
    """The cached Fashion-MNIST feature classifier of the rFID; an error naming the data or how to train it."""
    data = FashionMNISTDataModule(data_dir=data_dir)
    data.prepare_data()  # downloads where it can, else names the missing files
    record = load_feature_classifier(
        default_classifier_path(data), f"--data FashionMNISTDataModule --data_dir {data_dir}"
    )
    check_classifier_data(record, data)
    return record.network


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    args = parse_args(argv)
    classifier = feature_classifier(args.data_dir)  # before the arms train for nothing
    args.out.mkdir(parents=True, exist_ok=True)
    keep = ["--checkpoint.every_n_train_steps", str(args.every), "--checkpoint.save_top_k", "-1",
            "--checkpoint.monitor", "null", "--checkpoint.filename", "{step}"] if args.every else []  # fmt: skip
    arms = {
        "without": fit(args, "without", *keep),
        "with": fit(args, "with", "--model.init_args.adversarial_weight", str(args.adversarial_weight),
                    "--model.init_args.disc_start", str(args.disc_start), "--model.init_args.discriminator_layers",
                    "2"),
    }  # fmt: skip
    results, rows = {}, []
    for name, path in arms.items():
        model, datamodule = evaluation.load_checkpoint(path, args.data_dir)
        results[name] = scores = score(model, datamodule, classifier, args)
        images, labels = evaluation.first_images(datamodule, "test", 12)
        with evaluation.evaluating(model):
            rows.append(model(images, labels).clamp(0, 1))
        print(f"{name}: " + ", ".join(f"{k} {v:.4g}" for k, v in scores.items()), flush=True)
    picture = io.BytesIO()
    save_image(torch.cat([images, *rows]), picture, "png", nrow=12, padding=1)
    write_atomically(args.out / "sharpness.png", picture.getvalue())
    print("\n| adversarial term | PSNR dB | MS-SSIM | rFID (classifier features) |\n| --- | ---: | ---: | ---: |")
    for name, s in results.items():
        print(f"| {name} | {s['psnr']:.2f} | {s['ms_ssim']:.4f} | {s['rfid_classifier']:.2f} |")
    if args.every:
        print("\n| without the term, step | PSNR dB | MS-SSIM | rFID (classifier features) |")
        print("| ---: | ---: | ---: | ---: |")
        kept = sorted(arms["without"].parent.glob("step=*.ckpt"), key=lambda p: int(p.stem.split("=")[1]))
        for path in kept:
            results[path.stem] = s = score(*evaluation.load_checkpoint(path, args.data_dir), classifier, args)
            print(f"| {path.stem.split('=')[1]} | {s['psnr']:.2f} | {s['ms_ssim']:.4f} | {s['rfid_classifier']:.2f} |",
                  flush=True)  # fmt: skip
            if s["psnr"] >= results["with"]["psnr"]:
                break
    return results


def score(
    model: torch.nn.Module, datamodule: object, classifier: ClassifierCNN, args: argparse.Namespace
) -> dict[str, float]:
    """PSNR, MS-SSIM and the reconstruction FID in ``classifier``'s features, on the test images."""
    test = evaluation.split_loader(datamodule, "test")
    scores = {"psnr": evaluation.reconstruction_scores(model, test)["psnr"]}
    return scores | evaluation.first_stage_scores(
        model, datamodule, ["ms_ssim", "rfid_classifier"], classifier=classifier, frechet_images=args.rfid_images
    )


if __name__ == "__main__":
    run_command("adversarial_sharpness.py", main)
