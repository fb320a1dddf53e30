"""Training throughput of ae-lightning against a hand-written PyTorch loop, measured side by side in one process.

For one model config, batch size and device, three pipelines train the same model with the same optimizer for the
same number of steps after a warm-up, and report images per second:

1. ``hand-written``: a plain PyTorch loop over a preloaded float tensor on the device (the reference);
2. ``ae-lightning``: ``ae-lightning fit``'s own path (the CLI's trainer, callbacks, progress bar, datamodule);
3. ``torchvision``: torchvision's dataset class with ``ToTensor`` through a ``DataLoader``, in a plain loop (the
   pipeline most tutorials start from).

Optionally (``--nll``) it also times the VAE's test-time bound on -log p(x) with 1000 importance samples over the
10,000-image test set.

    python scripts/benchmark_speed.py                                  # CPU (and CUDA if present), batch 32/128/1024
    python scripts/benchmark_speed.py --config configs/vae.yaml --batch-sizes 128 --devices cpu
    python scripts/benchmark_speed.py --nll --batch-sizes                # only the nll timing
"""

from __future__ import annotations

import argparse
import copy
import datetime
import platform
import sys
import tempfile
import time
from pathlib import Path
from unittest import mock

import lightning as L
import torch
from torch.utils.data import DataLoader
from torchvision.transforms import ToTensor

from ae_lightning.cli import AutoencoderCLI

ROOT = Path(__file__).resolve().parents[1]


def build(args: argparse.Namespace, batch_size: int, device: str, root_dir: str, max_steps: int) -> AutoencoderCLI:
    """The CLI's model, datamodule and trainer, exactly as ``ae-lightning fit`` builds them (without running)."""
    cli_args = [
        "--config", str(args.config),
        "--data", args.data, "--data.data_dir", str(args.data_dir), "--data.batch_size", str(batch_size),
        "--trainer.default_root_dir", root_dir, "--trainer.max_steps", str(max_steps), "--trainer.max_epochs", "-1",
        "--trainer.limit_val_batches", "0", "--trainer.num_sanity_val_steps", "0",
        "--trainer.accelerator", device, "--trainer.devices", "1", "--trainer.precision", args.precision,
    ]  # fmt: skip
    with mock.patch("sys.argv", ["ae-lightning"]):
        return AutoencoderCLI(args=cli_args, run=False)


class StepTimer(L.Callback):
    """Wall time from the start of step ``warmup`` to the end of training."""

    def __init__(self, warmup: int) -> None:
        self.warmup, self.start, self.seconds = warmup, None, None

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx: int) -> None:
        if self.start is None and trainer.fit_loop.epoch_loop._batches_that_stepped == self.warmup:
            synchronize(pl_module.device)
            self.start = time.perf_counter()

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        synchronize(pl_module.device)
        self.seconds = time.perf_counter() - self.start


def synchronize(device: torch.device | str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def plain_loop(model, optimizer, batches, steps: int, warmup: int, device: str, precision: str) -> float:
    """Images per second of a hand-written training loop over ``batches`` (an iterator of (x, y, index))."""
    autocast = torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=precision == "bf16-mixed")
    model.train()
    for step in range(warmup + steps):
        if step == warmup:
            synchronize(device)
            start = time.perf_counter()
        x, labels, indices = next(batches)
        x, labels, indices = x.to(device, non_blocking=True), labels.to(device), indices.to(device)
        with autocast:
            loss = model.loss_terms(x, labels, indices)["loss"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    synchronize(device)
    return steps * len(x) / (time.perf_counter() - start)


def preloaded_batches(images: torch.Tensor, labels: torch.Tensor, batch_size: int):
    """Endless shuffled batches by indexing a preloaded tensor (what a careful hand-written loop does)."""
    while True:
        order = torch.randperm(len(images), device=images.device)
        for start in range(0, len(images) - batch_size + 1, batch_size):
            rows = order[start : start + batch_size]
            yield images[rows], labels[rows], rows


def torchvision_batches(dataset_class, data_dir: Path, batch_size: int):
    dataset = dataset_class(str(data_dir), train=True, transform=ToTensor())
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, drop_last=True)
    while True:
        for index, (x, labels) in enumerate(loader):
            yield x, labels, torch.full_like(labels, index)


def measure(args: argparse.Namespace, batch_size: int, device: str) -> dict[str, float]:
    steps, warmup = args.steps, args.warmup
    with tempfile.TemporaryDirectory() as root:
        cli = build(args, batch_size, device, root, max_steps=warmup + steps)
        torch.manual_seed(0)
        reference_model = copy.deepcopy(cli.model).to(device)
        torchvision_model = copy.deepcopy(cli.model).to(device)
        datamodule = cli.datamodule
        datamodule.setup("fit")
        images, labels = datamodule.splits["train"]
        images = images.to(device).unsqueeze(1).float().div_(255)
        results = {}
        optimizer = reference_model.configure_optimizers()["optimizer"]
        results["hand-written"] = plain_loop(
            reference_model, optimizer, preloaded_batches(images, labels.to(device), batch_size), steps, warmup,
            device, args.precision,
        )  # fmt: skip

        timer = StepTimer(warmup)
        cli.trainer.callbacks.append(timer)
        cli.trainer.fit(cli.model, datamodule=datamodule)
        results["ae-lightning"] = steps * batch_size / timer.seconds

        optimizer = torchvision_model.configure_optimizers()["optimizer"]
        batches = torchvision_batches(datamodule.dataset_class, datamodule.data_dir, batch_size)
        results["torchvision"] = plain_loop(
            torchvision_model, optimizer, batches, steps, warmup, device, args.precision
        )
    return results


def time_nll(args: argparse.Namespace) -> tuple[float, int, int]:
    """Seconds for the VAE's test/nll (``nll_samples`` importance samples) over the whole test set, on the CPU."""
    with tempfile.TemporaryDirectory() as root:
        cli = build(argparse.Namespace(**{**vars(args), "config": args.nll_config}), 128, "cpu", root, 1)
        cli.datamodule.setup("test")
        model = cli.model.eval()
        start = time.perf_counter()
        for x, _, _ in cli.datamodule.test_dataloader():
            model.importance_weighted_nll(x)
        return time.perf_counter() - start, model.nll_samples, cli.datamodule.split_size("test")


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    text = f"{platform.system()} {cpu}, {torch.get_num_threads()} torch threads, torch {torch.__version__}"
    if torch.cuda.is_available():
        text += f", {torch.cuda.get_device_name()}"
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=ROOT / "configs" / "ae.yaml", help="model config to train")
    parser.add_argument("--data", default="FashionMNISTDataModule", help="datamodule class")
    parser.add_argument("--data-dir", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--batch-sizes", type=int, nargs="*", default=[32, 128, 1024])
    parser.add_argument("--devices", nargs="+", default=["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])
    parser.add_argument("--precision", default="32", choices=["32", "bf16-mixed"])
    parser.add_argument("--steps", type=int, default=300, help="timed steps per pipeline")
    parser.add_argument("--warmup", type=int, default=30, help="untimed steps first")
    parser.add_argument("--repeats", type=int, default=3, help="rounds per setting; the best of each is reported")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own choice)")
    parser.add_argument("--nll", action="store_true", help="also time the VAE's test/nll over the test set (CPU)")
    parser.add_argument("--nll-config", type=Path, default=ROOT / "configs" / "vae.yaml")
    parser.add_argument("--out", type=Path, default=None, help="write the table as markdown here")
    args = parser.parse_args()
    if not args.config.is_file():
        parser.error(f"--config {args.config} does not exist")
    if args.threads:
        torch.set_num_threads(args.threads)

    config = args.config.relative_to(ROOT) if args.config.is_relative_to(ROOT) else args.config
    lines = [
        f"Training throughput, images/s; `{config}`, "
        f"{args.data}, precision {args.precision}, {args.steps} steps after {args.warmup} warm-up steps, best of "
        f"{args.repeats} rounds.",
        "",
        "| device | batch | hand-written loop | ae-lightning | ratio | torchvision DataLoader + ToTensor | ratio |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for device in args.devices:
        for batch_size in args.batch_sizes:
            # Best of several interleaved rounds: on a shared machine, the fastest round is the least disturbed one.
            rounds = [measure(args, batch_size, device) for _ in range(args.repeats)]
            r = {name: max(round_[name] for round_ in rounds) for name in rounds[0]}
            ref = r["hand-written"]
            lines.append(
                f"| {device} | {batch_size} | {ref:,.0f} | {r['ae-lightning']:,.0f} | {r['ae-lightning'] / ref:.2f} "
                f"| {r['torchvision']:,.0f} | {r['torchvision'] / ref:.2f} |"
            )
            print(lines[-1], file=sys.stderr, flush=True)
    if args.nll:
        seconds, samples, images = time_nll(args)
        lines += ["", f"VAE test/nll ({samples} importance samples, {images:,} test images, CPU): {seconds:.1f} s"]
    lines += ["", f"Machine: {machine()}. Date: {datetime.date.today()}. Command: `python {' '.join(sys.argv)}`"]
    table = "\n".join(lines)
    print(table)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(table + "\n")


if __name__ == "__main__":
    main()
