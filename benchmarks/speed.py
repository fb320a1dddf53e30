"""Training throughput of ae-lightning against a hand-written PyTorch loop, measured side by side in one process.

For one model config, batch size and device, three pipelines train copies of the same model with the same optimizer
and report images per second:

1. ``hand-written``: a plain PyTorch loop over a preloaded float tensor on the device (the reference);
2. ``ae-lightning``: ``ae-lightning fit``'s own path (the CLI's trainer with its default callbacks, logger, progress
   bar and profiler, and the datamodule's loader);
3. ``torchvision``: torchvision's dataset class with ``ToTensor`` through a ``DataLoader``, in a plain loop (the
   pipeline most tutorials start from).

The three run interleaved, in segments of ``--steps`` batches: ``ae-lightning fit`` runs ``--segments`` segments, and
before each of them the other two run one segment each, from inside the fit (a callback), so that all three meet the
same machine. A shared or throttled machine drifts by tens of percent within minutes, which would decide a comparison
of runs made one after the other. Each pipeline warms up for ``--warmup`` batches first. The table reports each
pipeline's median segment throughput and the median over segments of the ratio to the hand-written loop.

With ``--phases`` it also splits each pipeline's step into the model's arithmetic (the forward pass with the loss,
and the backward pass: the same code in every pipeline) and everything else (the batch, ``zero_grad``, the optimizer's
update, and the loop around them), to show where ae-lightning's step spends the time the hand-written loop does not.

Optionally it also times the VAE's test-time bound on -log p(x) with 1000 importance samples over the 10,000-image
test set (``--nll``), and a whole epoch of ``ae-lightning fit`` with the VAE config at batch 128 on each device
(``--epoch``): the training split and the validation split, together all 60,000 training images of the dataset, with
the command's callbacks, logger and checkpoints; the second of two epochs, so that start-up is not counted.

    python benchmarks/speed.py                                  # CPU (and CUDA if present), batch 32/128/1024
    python benchmarks/speed.py --config configs/vae.yaml --batch-sizes 128 --devices cpu
    python benchmarks/speed.py --devices cuda --precision bf16-mixed --batch-sizes 1024
    python benchmarks/speed.py --batch-sizes 32 128 --phases   # also where each step's time goes
    python benchmarks/speed.py --nll --batch-sizes                # only the nll timing
    python benchmarks/speed.py --epoch --batch-sizes --devices cuda   # only the VAE epoch on the GPU
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import datetime
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

import lightning as L
import torch
from torch import Tensor
from torch.utils.data import DataLoader
from torchvision.transforms import ToTensor

from ae_lightning import AutoencoderModule
from ae_lightning.cli import AutoencoderCLI

ROOT = Path(__file__).resolve().parents[1]
Batches = Iterator[tuple[Tensor, Tensor, Tensor]]
TRAINED_BY = {False: "ae-lightning", True: "bare Lightning Trainer"}  # what trains in the fit, by --bare
EPOCH_BATCH_SIZE = 128  # --epoch: the batch size of issue 6's epoch target


def build(
    args: argparse.Namespace, batch_size: int, device: str, root_dir: str, max_steps: int, *extra: str
) -> AutoencoderCLI:
    """The CLI's model, datamodule and trainer, exactly as ``ae-lightning fit`` builds them (without running).

    It trains ``max_steps`` batches without validation, unless ``extra`` command-line arguments say otherwise.
    """
    cli_args = [
        "--config", str(args.config),
        "--data", args.data, "--data.data_dir", str(args.data_dir), "--data.batch_size", str(batch_size),
        "--trainer.default_root_dir", root_dir, "--trainer.max_steps", str(max_steps), "--trainer.max_epochs", "-1",
        "--trainer.limit_val_batches", "0", "--trainer.num_sanity_val_steps", "0",
        "--trainer.accelerator", device, "--trainer.devices", "1", "--trainer.precision", args.precision,
    ]  # fmt: skip
    if getattr(args, "compile", False):
        cli_args += ["--model.init_args.compile_networks", "true"]
    if getattr(args, "fast_steps", 1) > 1:  # the fast path, configs/fast.yaml; logs at least once per batch
        cli_args += ["--fast.steps", str(args.fast_steps), "--trainer.log_every_n_steps", str(50 * args.fast_steps)]
    cli_args += extra
    with mock.patch("sys.argv", ["ae-lightning"]):
        return AutoencoderCLI(args=cli_args, run=False)


@dataclass
class Segment:
    """One timed segment of a pipeline: images trained, seconds, and seconds spent in the model's arithmetic."""

    images: int
    seconds: float
    model_seconds: float

    @property
    def rate(self) -> float:
        return self.images / self.seconds


class ModelClock:
    """Adds up the seconds spent in the functions it wraps (--phases: the models' forward with the loss, and backward).

    The pipelines run one after another, never at once, so one clock serves all three: each reads and resets it at
    the start and the end of its segment. Without --phases nothing is wrapped and it reads 0.
    """

    def __init__(self) -> None:
        self.seconds = 0.0

    def take(self) -> float:
        seconds, self.seconds = self.seconds, 0.0
        return seconds

    def timed(self, function: Callable) -> Callable:
        def timed_function(*args, **kwargs):
            start = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - start

        return timed_function


def synchronize(device: torch.device | str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


class PlainLoop:
    """A hand-written training loop: the model's loss, ``zero_grad``, ``backward``, ``step``; nothing else.

    Args:
        model: a copy of the model, on ``device``, with one optimizer (the loop steps it itself).
        batches: endless ``(image, label, index)`` batches.
        device: where the model lives; batches are moved there.
        precision: ``32`` or ``bf16-mixed`` (autocast around the loss, as Lightning does).
    """

    def __init__(
        self, model: AutoencoderModule, batches: Batches, device: str, precision: str, clock: ModelClock
    ) -> None:
        model.train()
        self.model, self.batches, self.device, self.clock = model, batches, device, clock
        model.check_input(next(batches)[0])  # a wrong shape would broadcast in the loss instead of failing
        self.optimizer = model.configure_optimizers()["optimizer"]
        self.autocast = torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=precision != "32")

    def run(self, steps: int) -> Segment:
        """Train ``steps`` batches."""
        synchronize(self.device)
        self.clock.take()
        start, images = time.perf_counter(), 0
        for _ in range(steps):
            x, labels, indices = next(self.batches)
            x, labels, indices = x.to(self.device, non_blocking=True), labels.to(self.device), indices.to(self.device)
            with self.autocast:
                loss = self.model.loss_terms(x, labels, indices)["loss"]
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            images += len(x)
        synchronize(self.device)
        return Segment(images, time.perf_counter() - start, self.clock.take())


def preloaded_batches(images: Tensor, labels: Tensor, batch_size: int) -> Batches:
    """Endless shuffled batches by indexing a preloaded tensor (what a careful hand-written loop does)."""
    while True:
        order = torch.randperm(len(images), device=images.device)
        for start in range(0, len(images) - batch_size + 1, batch_size):
            rows = order[start : start + batch_size]
            yield images[rows], labels[rows], rows


def torchvision_batches(dataset_class: type, data_dir: Path, batch_size: int) -> Batches:
    """Endless batches of torchvision's dataset with ``ToTensor`` through a shuffling ``DataLoader``."""
    dataset = dataset_class(str(data_dir), train=True, transform=ToTensor())
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, drop_last=True)
    positions = torch.arange(batch_size)  # stands in for sample indices (only the auto-decoder reads them)
    while True:
        for x, labels in loader:
            yield x, labels, positions


class Interleave(L.Callback):
    """Times ``ae-lightning fit`` in segments of ``steps`` batches and runs the other pipelines between them.

    Segments start and end between Lightning batches, which hold ``steps_per_batch`` optimizer steps each: a segment
    counts the optimizer steps (batches of ``batch_size`` images) that ``global_step`` says it took.
    """

    def __init__(
        self, others: dict[str, PlainLoop], batch_size: int, steps: int, warmup: int, clock: ModelClock
    ) -> None:
        self.others, self.batch_size, self.steps, self.warmup, self.clock = others, batch_size, steps, warmup, clock
        self.segments: dict[str, list[Segment]] = {"ae-lightning": [], **{name: [] for name in others}}
        self._start: float | None = None
        self._start_step = 0

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx: int) -> None:
        step = trainer.global_step
        if step < self.warmup or (self._start is not None and step - self._start_step < self.steps):
            return
        if self._start is None and not self.segments["ae-lightning"]:
            for pipeline in self.others.values():
                pipeline.run(self.warmup)
        self._close_segment(trainer)
        for name, pipeline in self.others.items():
            self.segments[name].append(pipeline.run(self.steps))
        synchronize(pl_module.device)
        self.clock.take()
        self._start, self._start_step = time.perf_counter(), step

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._close_segment(trainer)

    def _close_segment(self, trainer: L.Trainer) -> None:
        if self._start is not None:
            synchronize(trainer.lightning_module.device)
            seconds = time.perf_counter() - self._start
            images = (trainer.global_step - self._start_step) * self.batch_size
            self.segments["ae-lightning"].append(Segment(images, seconds, self.clock.take()))
            self._start = None


def measure(args: argparse.Namespace, batch_size: int, device: str) -> tuple[dict[str, list[Segment]], int]:
    """The timed segments of each pipeline, and the model's ``steps_per_batch``."""
    with tempfile.TemporaryDirectory() as root:
        cli = build(args, batch_size, device, root, max_steps=args.warmup + args.segments * args.steps)
        model, datamodule = cli.model, cli.datamodule
        if not isinstance(model.configure_optimizers(), dict):
            raise SystemExit(
                f"--config {args.config}: {type(model).__name__} trains with several optimizers, which the "
                "hand-written reference loop does not implement; pick a config with one optimizer"
            )
        steps_per_batch = args.fast_steps
        if args.steps % steps_per_batch or args.warmup % steps_per_batch:
            raise SystemExit(
                f"--steps {args.steps} and --warmup {args.warmup} must be multiples of --fast-steps "
                f"{steps_per_batch} (optimizer steps per Lightning batch), so that segments start and end between "
                "Lightning batches"
            )
        datamodule.setup("fit")
        images, labels = datamodule.splits["train"]
        images = images.to(device).float().div_(255)
        # Copies of the untrained model, so that all three start from the same weights.
        hand_written, torchvision = copy.deepcopy(model).to(device), copy.deepcopy(model).to(device)
        clock = ModelClock()
        others = {
            "hand-written": PlainLoop(
                hand_written, preloaded_batches(images, labels.to(device), batch_size), device, args.precision, clock
            ),
            "torchvision": PlainLoop(
                torchvision,
                torchvision_batches(datamodule.dataset_class, datamodule.data_dir, batch_size),
                device,
                args.precision,
                clock,
            ),
        }
        interleave = Interleave(others, batch_size, args.steps, args.warmup, clock)
        trainer = cli.trainer
        if args.bare:  # the floor that Lightning's own loop sets: no logger, callbacks, progress bar or checkpoints
            trainer = L.Trainer(
                accelerator=device, devices=1, precision=args.precision, max_steps=trainer.max_steps,
                limit_val_batches=0, num_sanity_val_steps=0, logger=False, enable_checkpointing=False,
                enable_progress_bar=False, enable_model_summary=False, default_root_dir=root,
            )  # fmt: skip
        trainer.callbacks.append(interleave)
        timed_backward = contextlib.nullcontext()
        if args.phases:  # after the copies: a copy would share the original's wrapped method
            for timed_model in (model, hand_written, torchvision):
                timed_model.loss_terms = clock.timed(timed_model.loss_terms)
            timed_backward = mock.patch.object(torch.Tensor, "backward", clock.timed(torch.Tensor.backward))
        with timed_backward:
            trainer.fit(model, datamodule=datamodule)
        return interleave.segments, steps_per_batch


def phase_rows(device: str, batch_size: int, segments: dict[str, list[Segment]], bare: bool) -> list[str]:
    """Markdown rows of microseconds per step: whole step, the model's arithmetic, the rest, and the rest's excess."""
    reference = segments["hand-written"]
    rows = []
    for name, timed in segments.items():
        steps = [segment.images / batch_size for segment in timed]
        step = [segment.seconds / n * 1e6 for segment, n in zip(timed, steps)]
        model = [segment.model_seconds / n * 1e6 for segment, n in zip(timed, steps)]
        rest = [whole - arithmetic for whole, arithmetic in zip(step, model)]
        reference_rest = [(segment.seconds - segment.model_seconds) / n * 1e6 for segment, n in zip(reference, steps)]
        excess = "" if timed is reference else f"{statistics.median(r - h for r, h in zip(rest, reference_rest)):,.0f}"
        label = TRAINED_BY[bare] if name == "ae-lightning" else name
        cells = [f"{statistics.median(values):,.0f}" for values in (step, model, rest)]
        rows.append(f"| {device} | {batch_size} | {label} | {' | '.join(cells)} | {excess} |")
    return rows


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


class EpochTimer(L.Callback):
    """Start, start of validation and end of a fit's last epoch (each epoch overwrites the one before)."""

    def __init__(self) -> None:
        self.start = self.validation_start = self.end = 0.0

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.start = self._now(pl_module)

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.validation_start = self._now(pl_module)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.end = self._now(pl_module)  # after the last epoch's validation and checkpoints

    @staticmethod
    def _now(pl_module: L.LightningModule) -> float:
        synchronize(pl_module.device)
        return time.perf_counter()


def time_epoch(args: argparse.Namespace, device: str) -> str:
    """A line on the second of two epochs of ``ae-lightning fit`` with ``--epoch-config`` at batch 128 on ``device``."""
    with tempfile.TemporaryDirectory() as root:
        epoch_args = argparse.Namespace(**{**vars(args), "config": args.epoch_config})
        cli = build(
            epoch_args, EPOCH_BATCH_SIZE, device, root, -1,
            "--trainer.max_epochs", "2", "--trainer.limit_val_batches", "1.0",
        )  # fmt: skip
        timer = EpochTimer()
        cli.trainer.callbacks.append(timer)
        cli.trainer.fit(cli.model, datamodule=cli.datamodule)
        training, validation = (cli.datamodule.split_size(split) for split in ("train", "val"))
    epoch, train_seconds = timer.end - timer.start, timer.validation_start - timer.start
    config = args.epoch_config.relative_to(ROOT) if args.epoch_config.is_relative_to(ROOT) else args.epoch_config
    return (
        f"{type(cli.model).__name__} epoch (`{config}`, batch {EPOCH_BATCH_SIZE}, {device}, precision "
        f"{args.precision}): {epoch:.3f} s for {training + validation:,} images ({training:,} training and "
        f"{validation:,} validation, with the command's callbacks, logger and checkpoints), of which the training "
        f"pass took {train_seconds:.3f} s ({training / train_seconds:,.0f} images/s); the second of two epochs"
    )


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    text = f"{platform.system()} {cpu}, {torch.get_num_threads()} torch threads, torch {torch.__version__}"
    if torch.cuda.is_available():
        text += f", {torch.cuda.get_device_name()}"
    return text


def throughput_lines(args: argparse.Namespace) -> list[str]:
    """The throughput table (and with --phases the table of where each step's time goes), measured."""
    config = args.config.relative_to(ROOT) if args.config.is_relative_to(ROOT) else args.config
    lines = [
        "",
        f"| device | batch | hand-written loop | {TRAINED_BY[args.bare]} | ratio "
        "| torchvision DataLoader + ToTensor | ratio |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    phases = []
    for device in args.devices:
        for batch_size in args.batch_sizes:
            segments, steps_per_batch = measure(args, batch_size, device)
            reference = [segment.rate for segment in segments["hand-written"]]
            cells = [f"{statistics.median(reference):,.0f}"]
            for name in ("ae-lightning", "torchvision"):
                rates = [segment.rate for segment in segments[name]]
                ratios = [rate / ref for rate, ref in zip(rates, reference)]
                low, middle, high = (
                    statistics.quantiles(ratios, n=4, method="inclusive") if len(ratios) > 1 else ratios * 3
                )
                cells += [f"{statistics.median(rates):,.0f}", f"{middle:.2f} ({low:.2f}-{high:.2f})"]
            lines.append(f"| {device} | {batch_size} | {' | '.join(cells)} |")
            print(lines[-1], file=sys.stderr, flush=True)
            phases += phase_rows(device, batch_size, segments, args.bare)
    lines.insert(
        0,
        f"Training throughput in images/s: `{config}` with fast.steps {steps_per_batch} (optimizer steps per "
        f"Lightning batch), {args.data}, precision {args.precision}"
        f"{', ae-lightning with compile_networks' if args.compile else ''}"
        f"{', a bare Lightning Trainer in place of ae-lightning' if args.bare else ''}. Median of "
        f"{args.segments} interleaved segments of {args.steps} optimizer steps after {args.warmup} warm-up steps; each "
        "ratio is the median of the per-segment ratios to the hand-written loop, with their interquartile range in "
        "brackets (how noisy the figure is).",
    )
    if args.phases:
        lines += [
            "",
            "Where a training step's time goes, in microseconds per step (medians over the same segments): the model's "
            "arithmetic (the forward pass with the loss, and the backward pass: the same code in every pipeline) and "
            "everything else (the batch, zero_grad, the optimizer's update and the loop around them). The last column "
            "is the median over segments of the difference to the hand-written loop's everything-else.",
            "",
            "| device | batch | pipeline | step | forward + backward | everything else | excess over hand-written |",
            "| --- | ---: | --- | ---: | ---: | ---: | ---: |",
            *phases,
        ]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=ROOT / "configs" / "ae.yaml", help="model config to train")
    parser.add_argument("--data", default="FashionMNISTDataModule", help="datamodule class")
    parser.add_argument("--data-dir", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--batch-sizes", type=int, nargs="*", default=[32, 128, 1024])
    parser.add_argument("--devices", nargs="+", default=["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])
    parser.add_argument("--precision", default="32", choices=["32", "bf16-mixed"])
    parser.add_argument("--compile", action="store_true", help="ae-lightning with compile_networks (the others eager)")
    parser.add_argument("--bare", action="store_true", help="a bare Lightning Trainer in ae-lightning's place")
    parser.add_argument("--phases", action="store_true", help="also split each step into arithmetic and the rest")
    parser.add_argument(
        "--fast-steps", type=int, default=1, help="optimizer steps per Lightning batch (configs/fast.yaml: 10)"
    )
    parser.add_argument("--steps", type=int, default=50, help="optimizer steps per segment")
    parser.add_argument("--segments", type=int, default=16, help="timed segments per pipeline")
    parser.add_argument("--warmup", type=int, default=50, help="untimed optimizer steps first, per pipeline")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own choice)")
    parser.add_argument("--nll", action="store_true", help="also time the VAE's test/nll over the test set (CPU)")
    parser.add_argument("--nll-config", type=Path, default=ROOT / "configs" / "vae.yaml")
    parser.add_argument("--epoch", action="store_true", help="also time a whole epoch of fit at batch 128, per device")
    parser.add_argument("--epoch-config", type=Path, default=ROOT / "configs" / "vae.yaml")
    parser.add_argument("--out", type=Path, default=None, help="write the table as markdown here")
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    args = parser.parse_args()
    for name in ("config", "nll_config", "epoch_config"):
        if not getattr(args, name).is_file():
            parser.error(f"--{name.replace('_', '-')} {getattr(args, name)} does not exist")
    optional = [name for name in ("threads", "fast_steps") if getattr(args, name) is not None]
    for name in ("steps", "segments", "warmup", *optional):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be a positive integer, got {getattr(args, name)}")
    if args.phases and args.devices != ["cpu"]:  # CUDA kernels run asynchronously: the clock would time their launch
        parser.error(f"--phases times the CPU's work and needs --devices cpu, got --devices {' '.join(args.devices)}")
    if "cuda" in args.devices and not torch.cuda.is_available():
        parser.error("--devices cuda: no CUDA device is available here")
    if not (args.batch_sizes or args.nll or args.epoch):
        parser.error("nothing to measure: give --batch-sizes, --nll or --epoch")
    if args.out is not None and args.out.exists() and not args.overwrite:
        parser.error(f"--out {args.out} exists; name another file, or pass --overwrite to replace it")
    if args.threads:
        torch.set_num_threads(args.threads)

    lines = throughput_lines(args) if args.batch_sizes else []
    if args.nll:
        seconds, samples, images = time_nll(args)
        lines += ["", f"VAE test/nll ({samples} importance samples, {images:,} test images, CPU): {seconds:.1f} s"]
    for device in args.devices if args.epoch else []:
        lines += ["", time_epoch(args, device)]
    lines += ["", f"Machine: {machine()}. Date: {datetime.date.today()}. Command: `python {' '.join(sys.argv)}`"]
    table = "\n".join(lines).lstrip("\n")
    print(table)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        temporary = args.out.with_name(f".{args.out.name}.tmp")
        temporary.write_text(table + "\n")
        temporary.replace(args.out)


if __name__ == "__main__":
    main()
