"""Training speed of ``ae-lightning fit`` against references that share no code with the project.

Four pipelines train the same network (``configs/ae.yaml``: a 784-256-64-20 MLP encoder with ReLU between its layers,
the mirrored decoder, binary cross-entropy summed per image, Adam at lr 1e-3) on Fashion-MNIST's training images,
read here from the IDX files:

1. ``PyTorch loop``: a plain loop over the images as one float tensor on the device, shuffled each epoch;
2. ``LightningModule``: a minimal ``LightningModule`` written in this file (one ``self.log`` of the loss per step)
   on the same batches, trained by Lightning's ``Trainer`` with its defaults but the logger (off), as issue 23
   defines the reference: default progress bar, model summary and end-of-epoch checkpoint;
   ``LightningModule, bare``: the same with the checkpoint and the summary off too (a stricter reference);
   ``LightningModule, manual``: the same as ``LightningModule`` but stepping through lists of ``configs/fast.yaml``'s
   number of consecutive batches under manual optimization, one optimizer step per batch (the fast path's design in
   Lightning alone: what its public route costs);
3. ``ae-lightning fit``: the command's default path, built by the command's own classes (``AutoencoderCLI``) with its
   callbacks, logger, progress bar and checkpoints, validation switched off;
4. ``fast path``: the same with ``--config configs/fast.yaml`` stacked on it.

Both references take the optimizer the project picks for the device (``fused`` Adam where PyTorch has it), so that
the comparison is of everything around the arithmetic. Each pipeline's time per step is (a long run - a short run) /
(the difference in steps), so that start-up (imports aside: they happen once) cancels. The pipelines run interleaved,
one short and one long run each per round, so that a drifting machine affects them alike, and every pipeline of round
``r`` starts from the weights of seed ``r``; the table gives the median over rounds and, in brackets, the range
(lowest-highest) of each ratio to the PyTorch loop's throughput. Each run's time per step and minor page faults per
step (memory the C allocator took anew from the kernel) go to stderr, round by round.

    python benchmarks/speed.py                                   # batch 32, 128 and 1024 on the CPU (and CUDA)
    python benchmarks/speed.py --batch-sizes 128 --rounds 5 --out speed.md
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from unittest import mock

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
import yaml
from torch import Tensor, nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the project of this checkout, not another one installed in the environment
PIPELINES = (
    "PyTorch loop", "LightningModule", "LightningModule, bare", "LightningModule, manual", "ae-lightning fit",
    "fast path",
)  # fmt: skip
LR = 1e-3  # torch.optim.Adam's default, which configs/ae.yaml keeps


# --- the references: no project code ------------------------------------------------------------------------------
def read_images(data_dir: Path) -> Tensor:
    """Fashion-MNIST's training images ``[N, 1, 28, 28]`` as uint8, from ``<data_dir>/FashionMNIST/raw``."""
    path = data_dir / "FashionMNIST" / "raw" / "train-images-idx3-ubyte"
    if not path.is_file():
        raise SystemExit(f"{path} does not exist: point --data-dir at a folder holding FashionMNIST/raw/ IDX files")
    raw = path.read_bytes()
    n, rows, cols = (int.from_bytes(raw[i : i + 4], "big") for i in (4, 8, 12))
    return torch.from_numpy(np.frombuffer(raw, dtype=np.uint8, offset=16).copy()).view(n, 1, rows, cols)


def network() -> nn.Module:
    """Encoder 784-256-64-20 and decoder 20-64-256-784 (logits), ReLU between layers, none after each half's last."""
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 64), nn.ReLU(), nn.Linear(64, 20),
        nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 784),
    )  # fmt: skip


def bce_loss(model: nn.Module, x: Tensor) -> Tensor:
    """Binary cross-entropy of the reconstruction, summed per image and averaged over the batch."""
    return F.binary_cross_entropy_with_logits(model(x).view_as(x), x, reduction="sum") / len(x)


def adam(parameters: list[nn.Parameter]) -> torch.optim.Optimizer:
    """Adam in the variant the project picks for the parameters' device: fused where PyTorch supports it."""
    try:
        return torch.optim.Adam(parameters, lr=LR, fused=True)
    except RuntimeError:  # fused Adam is not built for this device
        return torch.optim.Adam(parameters, lr=LR)


class Batches:
    """Shuffled batches of a float image tensor on the device, drawn anew each epoch; ``len`` is batches per epoch."""

    def __init__(self, images: Tensor, batch_size: int) -> None:
        self.images, self.batch_size = images, batch_size

    def __len__(self) -> int:
        return -(-len(self.images) // self.batch_size)

    def __iter__(self) -> Iterator[Tensor]:
        order = torch.randperm(len(self.images), device=self.images.device)
        for start in range(0, len(order), self.batch_size):
            yield self.images[order[start : start + self.batch_size]]


def pytorch_loop(images: Tensor, batch_size: int, steps: int, seed: int) -> None:
    torch.manual_seed(seed)
    model = network().to(images.device)
    optimizer = adam(list(model.parameters()))
    done = 0
    while done < steps:
        for x in Batches(images, batch_size):
            optimizer.zero_grad()
            bce_loss(model, x).backward()
            optimizer.step()
            done += 1
            if done == steps:
                break
    with torch.no_grad():
        float(bce_loss(model, x))  # wait for the device


class MinimalModule(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.model = network()

    def training_step(self, x: Tensor, batch_idx: int) -> Tensor:
        loss = bce_loss(self.model, x)
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return adam(list(self.parameters()))


class ManualModule(MinimalModule):
    """One optimizer step per batch of a list of batches, under manual optimization (``max_steps`` cuts a list)."""

    def __init__(self) -> None:
        super().__init__()
        self.automatic_optimization = False

    def training_step(self, batches: list[Tensor], batch_idx: int) -> None:
        optimizer = self.optimizers()
        for x in batches[: self.trainer.max_steps - self.trainer.global_step]:
            optimizer.zero_grad()
            loss = bce_loss(self.model, x)
            self.manual_backward(loss)
            optimizer.step()
        self.log("train/loss", loss, prog_bar=True)


class Lists:
    """``batches`` in lists of ``size`` consecutive ones (the last of an epoch may be shorter)."""

    def __init__(self, batches: Batches, size: int) -> None:
        self.batches, self.size = batches, size

    def __len__(self) -> int:
        return -(-len(self.batches) // self.size)

    def __iter__(self) -> Iterator[list[Tensor]]:
        batches = iter(self.batches)
        while group := list(itertools.islice(batches, self.size)):
            yield group


def lightning_module(images: Tensor, batch_size: int, steps: int, seed: int, bare: bool = False, group: int = 0) -> int:
    """Lightning's defaults but the logger; ``bare``: no checkpoint and no model summary either; ``group``: steps
    through lists of that many batches under manual optimization. Returns the optimizer steps taken."""
    torch.manual_seed(seed)
    off = {"enable_checkpointing": False, "enable_model_summary": False} if bare else {}
    module, batches = (ManualModule(), Lists(Batches(images, batch_size), group)) if group else (
        MinimalModule(), Batches(images, batch_size))  # fmt: skip
    with tempfile.TemporaryDirectory() as root:
        trainer = L.Trainer(accelerator=images.device.type, devices=1, max_steps=steps, max_epochs=-1, logger=False,
                            default_root_dir=root, **off)  # fmt: skip
        trainer.fit(module, train_dataloaders=batches)
    return trainer.global_step


# --- the project, as the command runs it ---------------------------------------------------------------------------
def ae_lightning_fit(
    args: argparse.Namespace, batch_size: int, device: str, steps: int, seed: int, *extra: str
) -> None:
    from ae_lightning.cli import AutoencoderCLI  # imported once, before the first timed run (see main)

    with tempfile.TemporaryDirectory() as root:
        cli_args = [
            "fit", "--config", str(args.config), *extra, "--seed_everything", str(seed),
            "--data", "FashionMNISTDataModule", "--data.data_dir", str(args.data_dir),
            "--data.batch_size", str(batch_size), "--trainer.default_root_dir", root,
            "--trainer.max_steps", str(steps), "--trainer.max_epochs", "-1",
            "--trainer.limit_val_batches", "0", "--trainer.num_sanity_val_steps", "0",
            "--trainer.accelerator", device, "--trainer.devices", "1",
        ]  # fmt: skip
        with mock.patch("sys.argv", ["ae-lightning"]):
            AutoencoderCLI(args=cli_args)  # runs `fit` as the command does, with a fit trainer's callbacks


# --- measuring -----------------------------------------------------------------------------------------------------
def runners(args: argparse.Namespace, batch_size: int, device: str) -> dict[str, Callable[[int, int], None]]:
    """Each pipeline as a function of its steps and a seed, from which every pipeline builds the same weights."""
    images = read_images(args.data_dir).to(device).float() / 255
    fast = ["--config", str(ROOT / "configs" / "fast.yaml")]
    group = yaml.safe_load(Path(fast[1]).read_text())["fast"]["steps"]
    return {
        "PyTorch loop": lambda steps, seed: pytorch_loop(images, batch_size, steps, seed),
        "LightningModule": lambda steps, seed: lightning_module(images, batch_size, steps, seed),
        "LightningModule, bare": lambda steps, seed: lightning_module(images, batch_size, steps, seed, bare=True),
        "LightningModule, manual": lambda steps, seed: lightning_module(images, batch_size, steps, seed, group=group),
        "ae-lightning fit": lambda steps, seed: ae_lightning_fit(args, batch_size, device, steps, seed),
        "fast path": lambda steps, seed: ae_lightning_fit(args, batch_size, device, steps, seed, *fast),
    }


def seconds(run: Callable[[int, int], None], steps: int, seed: int) -> tuple[float, int]:
    """The run's wall-clock seconds and the minor page faults it took (memory the allocator got anew from the
    kernel; 0 where the platform does not count them)."""
    faults = _minor_faults()
    start = time.perf_counter()
    run(steps, seed)
    return time.perf_counter() - start, _minor_faults() - faults


def _minor_faults() -> int:
    try:
        import resource
    except ImportError:  # not a Unix
        return 0
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def measure(args: argparse.Namespace, batch_size: int, device: str) -> dict[str, list[float]]:
    """Seconds per step of each pipeline, one figure per round. Round ``r``'s pipelines all start from the weights
    of seed ``r``: the arithmetic of a step depends on the weights' history (Adam on the CPU slows several-fold on
    denormal values, which always-zero pixels leave in its state), so every pipeline of a round starts alike."""
    run = runners(args, batch_size, device)
    for name in PIPELINES:  # warm-up: imports, first allocations, kernels
        run[name](args.short, 0)
    per_step: dict[str, list[float]] = {name: [] for name in PIPELINES}
    for round_ in range(args.rounds):
        for name in PIPELINES[round_ % len(PIPELINES) :] + PIPELINES[: round_ % len(PIPELINES)]:
            (short, short_faults), (long, long_faults) = (seconds(run[name], steps, round_)
                                                          for steps in (args.short, args.long))  # fmt: skip
            per_step[name].append((long - short) / (args.long - args.short))
            faults = (long_faults - short_faults) / (args.long - args.short)
            print(f"batch {batch_size} round {round_ + 1}: {name} {per_step[name][-1] * 1e3:.3f} ms/step, "
                  f"{faults:.0f} page faults/step", file=sys.stderr, flush=True)  # fmt: skip
    return per_step


def table(args: argparse.Namespace) -> list[str]:
    others = PIPELINES[1:]
    lines: list[str] = [
        f"Training throughput of `configs/ae.yaml`'s network on Fashion-MNIST: per step = (a {args.long}-step run - a "
        f"{args.short}-step run) / {args.long - args.short}, {args.rounds} interleaved rounds. Images/s are medians "
        "over rounds; a ratio is the median over rounds of the pipeline's throughput over the PyTorch loop's, with its "
        "range (lowest-highest) in brackets.",
        "",
        "| device | batch | PyTorch loop, images/s | "
        + "".join(f"{name}: images/s | ratio | " for name in others).rstrip(),
        ("| --- | ---: | ---: | " + "---: | ---: | " * len(others)).rstrip(),
    ]
    against: list[str] = []  # the target: the default path against the LightningModules, round by round
    for device in args.devices:
        for batch_size in args.batch_sizes:
            per_step = measure(args, batch_size, device)
            pairs = [("ae-lightning fit", "LightningModule"), ("ae-lightning fit", "LightningModule, bare"),
                     ("fast path", "LightningModule, manual")]  # fmt: skip
            for ours, name in pairs:
                ratios = [lm / mine for lm, mine in zip(per_step[name], per_step[ours])]
                against.append(f"- {device}, batch {batch_size}: `{ours}` over `{name}`: "
                               f"{statistics.median(ratios):.3f} ({min(ratios):.3f}-{max(ratios):.3f})")  # fmt: skip
            reference = per_step["PyTorch loop"]
            cells = [f"{batch_size / statistics.median(reference):,.0f}"]
            for name in others:
                ratios = [ref / mine for ref, mine in zip(reference, per_step[name])]
                cells += [
                    f"{batch_size / statistics.median(per_step[name]):,.0f}",
                    f"{statistics.median(ratios):.2f} ({min(ratios):.2f}-{max(ratios):.2f})",
                ]
            lines.append(f"| {device} | {batch_size} | {' | '.join(cells)} |")
            print(lines[-1], file=sys.stderr, flush=True)
    cpu = platform.processor() or platform.machine()
    flushed = ", denormals flushed" if args.flush_denormal else ""
    machine = f"{platform.system()} {cpu}, {torch.get_num_threads()} torch threads{flushed}, torch {torch.__version__}"
    machine += f", Lightning {L.__version__}" + (f", {torch.cuda.get_device_name()}" if "cuda" in args.devices else "")
    allocator = [f"{name}={value}" for name, value in sorted(os.environ.items()) if name.startswith("MALLOC_")]
    machine += f", glibc malloc settings {' '.join(allocator)}" if allocator else ""
    lines += ["", "Each path's throughput over its minimal LightningModule's, median (range) over rounds:", ""]
    command = f"Command: `python {' '.join(sys.argv)}`"
    return [*lines, *against, "", f"Machine: {machine}. Date: {datetime.date.today()}. {command}"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=ROOT.parent / "shared" / "data",
                        help="folder holding FashionMNIST/raw/ (IDX files)")  # fmt: skip
    parser.add_argument("--config", type=Path, default=ROOT / "configs" / "ae.yaml", help=argparse.SUPPRESS)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[32, 128, 1024])
    parser.add_argument("--devices", nargs="+", choices=["cpu", "cuda"],
                        default=["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])  # fmt: skip
    parser.add_argument("--short", type=int, default=100, help="optimizer steps of the short run")
    parser.add_argument("--long", type=int, default=1500, help="optimizer steps of the long run")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (one short and one long run each)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own choice)")
    parser.add_argument("--flush-denormal", action="store_true", help="flush denormal floats to zero in every pipeline "
                        "(torch.set_flush_denormal): the CPU step's cost no longer depends on the weights")  # fmt: skip
    parser.add_argument("--out", type=Path, default=None, help="also write the table here (markdown)")
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    args = parser.parse_args()
    for name in ("short", "rounds", *(["threads"] if args.threads is not None else []), *["batch_sizes"]):
        values = getattr(args, name) if name == "batch_sizes" else [getattr(args, name)]
        if min(values) < 1:
            parser.error(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    if args.long <= args.short:
        parser.error(f"--long {args.long} must be more steps than --short {args.short}")
    if "cuda" in args.devices and not torch.cuda.is_available():
        parser.error("--devices cuda: no CUDA device is available here")
    if args.out is not None and args.out.exists() and not args.overwrite:
        parser.error(f"--out {args.out} exists; name another file, or pass --overwrite to replace it")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.flush_denormal and not torch.set_flush_denormal(True):
        parser.error("--flush-denormal: this CPU cannot flush denormals (torch.set_flush_denormal needs SSE3)")
    import ae_lightning.cli  # noqa: F401  (the project's import time is start-up, not training)
    from ae_lightning.training.fault_tolerance.checkpoint_io import write_atomically

    text = "\n".join(table(args))
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(args.out, (text + "\n").encode())


if __name__ == "__main__":
    main()
