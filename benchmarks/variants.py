"""Train every variant config with the same data, epochs and seeds, evaluate them all, and write a results table.

    python benchmarks/variants.py --data FashionMNISTDataModule --data_dir ../shared/data --epochs 10
    python benchmarks/variants.py --configs ae vae --metrics mse psnr fid --anomaly_classes 0 --epochs 2
    python benchmarks/variants.py --configs ae vae --seeds 1 2 3   # each cell: mean ± std over 3 seeds

Each config in ``configs/`` that builds with ``--data`` (the report names the others), or each named with
``--configs``, is trained exactly as ``ae-lightning fit --config <config> --data <data> --data.data_dir <dir>
--seed_everything <seed> --trainer.max_epochs <epochs>`` would train it, with outputs under ``--root``. The trained
model is then scored on the test split with every metric of ``ae_lightning.evaluation.driver.METRICS`` that applies
to it (``--metrics`` picks some). For ``auroc`` each config is trained again once per held-out class
(``--anomaly_classes``) on the other classes, and the AUROC of its anomaly score for the held-out class, over all test
images, is averaged over the held-out classes.

Writes ``--output`` (default ``runs/benchmark/results.md``; pass ``--output docs/results.md`` to refresh the published
table: a markdown table, one row per variant, with the command, the machine and the date), ``results.json`` beside
the plots, and for each variant
``<plots>/<variant>_reconstructions.png``, ``_samples.png`` (generative variants), ``_interpolations.png`` and
``_latent_tsne.png``. The table is rewritten after every variant, so an interrupted run keeps what it finished; each
file is replaced whole, never left half-written, and one that exists before the run only with ``--overwrite``. Bad
input (an unknown config, metric, datamodule or held-out class) is an error before anything trains.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import statistics
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from unittest import mock

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback

from ae_lightning.cli import AutoencoderCLI, run_command
from ae_lightning.evaluation import driver as evaluation
from ae_lightning.evaluation import visualization
from ae_lightning.evaluation.driver import AtLeast
from ae_lightning.evaluation.feature_classifier import (
    ClassifierRecord,
    default_classifier_path,
    load_feature_classifier,
    train_feature_classifier,
)
from ae_lightning.training.fault_tolerance.checkpoint_io import write_atomically
from datamodules.base import ImageDataModule
from datamodules.loader import usable_cpus

ROOT = Path(__file__).resolve().parents[1]
# How each metric is shown: column title (arrow: which direction is better) and number format.
COLUMNS: dict[str, tuple[str, str]] = {
    "mse": ("MSE ↓", "{:.4f}"),
    "bce": ("BCE ↓", "{:.4f}"),
    "psnr": ("PSNR dB ↑", "{:.2f}"),
    "ssim": ("SSIM ↑", "{:.3f}"),
    "nll": ("NLL nats ↓", "{:.1f}"),
    "fid": ("FID ↓", "{:.2f}"),
    "linear_probe": ("linear probe ↑", "{:.3f}"),
    "knn": ("k-NN ↑", "{:.3f}"),
    "auroc": ("AUROC ↑", "{:.3f}"),
}
PICTURE_FILES = {view: view for view in ("reconstructions", "samples", "interpolations")} | {
    "latent_map": "latent_tsne"
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("--configs", nargs="+", default=None, help="config names or paths (default: all)")
    parser.add_argument("--config_dir", type=Path, default=ROOT / "configs", help="where config names are looked up")
    parser.add_argument("--data", default="MNISTDataModule", help="datamodule class name or import path")
    parser.add_argument("--data_dir", default="data", help="root holding <ClassName>/raw/")
    parser.add_argument("--epochs", action=AtLeast, default=10, help="training epochs of every variant")
    parser.add_argument("--seed", type=int, default=None, help="seed of every run (weights, data order, split; 42)")
    parser.add_argument(
        "--seeds", type=int, nargs="+", default=None, help="one run per seed, then mean ± std (instead of --seed)"
    )
    parser.add_argument("--metrics", nargs="+", default=list(evaluation.METRICS), help="metrics to compute")
    parser.add_argument(
        "--anomaly_classes", nargs="*", type=int, default=None, help="held-out classes of auroc (default: all)"
    )
    parser.add_argument("--anomaly_epochs", action=AtLeast, help="epochs of each auroc run (default: --epochs)")
    parser.add_argument("--nll_samples", action=AtLeast, help="importance samples of nll (default: config's)")
    parser.add_argument("--fid_samples", action=AtLeast, least=2, default=10000, help="prior samples of fid")
    parser.add_argument("--probe_max_train", action=AtLeast, least=2, help="fit probes on at most this many codes")
    parser.add_argument("--tsne_points", action=AtLeast, default=2000, help="test codes in the t-SNE latent map")
    parser.add_argument("--classifier", type=Path, default=None, help="feature classifier (default: the cache path)")
    parser.add_argument(
        "--classifier_epochs", action=AtLeast, default=3, help="epochs if the classifier must be trained"
    )
    parser.add_argument(
        "--output", type=Path, default=ROOT / "runs" / "benchmark" / "results.md", help="the markdown table"
    )
    parser.add_argument("--plots", type=Path, default=None, help="plot folder (default: <output without .md>/)")
    parser.add_argument("--overwrite", action="store_true", help="replace the --output table and --plots files")
    parser.add_argument("--root", type=Path, default=ROOT / "runs" / "benchmark", help="training outputs")
    parser.add_argument("--accelerator", default="auto", help="Lightning accelerator of every run")
    parser.add_argument(
        "--torch_threads", action=AtLeast, help="CPU threads of torch (1 is faster on a busy, shared machine)"
    )
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    args.anomaly_epochs = args.anomaly_epochs or args.epochs
    if args.seeds is not None and len(set(args.seeds)) != len(args.seeds):
        parser.error(f"--seeds must be distinct, got {args.seeds}")
    if args.seeds is not None and args.seed is not None:
        parser.error(f"--seed {args.seed} and --seeds {' '.join(map(str, args.seeds))}: give one of the two")
    for seed in args.seeds or [args.seed or 0]:  # a run's --data.seed; Lightning's seed_everything makes -1 a 0
        if not 0 <= seed < 2**32:
            parser.error(f"--seed{'s' if args.seeds else ''} {seed}: expected an integer in [0, {2**32 - 1}]")
    args.seeds = args.seeds or [42 if args.seed is None else args.seed]
    args.seed = args.seeds[0]  # the split of the reference data, the feature classifier's data and the pictures
    args.plots = args.plots or args.output.with_suffix("")
    if args.output.is_dir():
        parser.error(f"--output {args.output} is a folder; name the markdown file to write")
    if args.plots.resolve() == args.output.resolve():
        suffix = "" if args.output.suffix else f", or give --output a suffix ({args.output.name}.md)"
        parser.error(f"--output {args.output} and its plots folder {args.plots} are one path: name another --plots"
                     f"{suffix}")  # fmt: skip
    if args.plots.is_file():
        parser.error(f"--plots {args.plots} is a file; name a folder")
    names = [Path(name).stem for name in args.configs or map(str, args.config_dir.glob("*.yaml"))]
    pictures = [args.plots / f"{name}_{view}.png" for name in names for view in PICTURE_FILES.values()]
    held = [path for path in (args.output, args.plots / "results.json", *pictures) if path.exists()]
    if held and not args.overwrite:
        more = f" (and {len(held) - 1} more of the files it writes)" if len(held) > 1 else ""
        parser.error(f"{held[0]} exists{more}: an earlier run's; name another --output (and --plots), or pass "
                     "--overwrite to replace its files")  # fmt: skip
    return args


@dataclass
class Row:
    """One variant's results."""

    name: str
    config: Path
    model: str = ""
    test_images: str = ""
    fit_seconds: float = 0.0  # mean over the seeds
    scores: dict[str, float] = field(default_factory=dict)  # mean over the seeds
    spread: dict[str, float] = field(default_factory=dict)  # sample standard deviation over the seeds (0 for one)
    per_seed: dict[int, dict[str, float]] = field(default_factory=dict)
    auroc_per_class: dict[int, float] = field(default_factory=dict)  # mean over the seeds
    auroc_per_seed: dict[int, dict[int, float]] = field(default_factory=dict)
    pictures: dict[str, str] = field(default_factory=dict)  # of the first seed's model
    kl_weight_reached: float | None = None  # the share of beta a KL warm-up that outlasted the budget reached

    def summarize(self) -> None:
        """Means and standard deviations over the seeds of every score and of the AUROC per held-out class."""
        self.scores, self.spread = _mean_and_spread(self.per_seed.values())
        self.auroc_per_class, _ = _mean_and_spread(self.auroc_per_seed.values())


def _mean_and_spread(runs: Iterable[dict[Any, float]]) -> tuple[dict[Any, float], dict[Any, float]]:
    """Per key, the mean and sample standard deviation of its values over ``runs`` (0 for a single run)."""
    runs = list(runs)
    keys = [key for key in runs[0] if all(key in run for run in runs)] if runs else []
    means = {key: statistics.fmean(run[key] for run in runs) for key in keys}
    spreads = {key: statistics.stdev([run[key] for run in runs]) if len(runs) > 1 else 0.0 for key in keys}
    return means, spreads


class Progress:
    """Timestamped progress lines on stdout."""

    def __init__(self) -> None:
        self.start = time.monotonic()

    def __call__(self, message: str) -> None:
        elapsed = int(time.monotonic() - self.start)
        print(f"[{elapsed // 3600:d}:{elapsed // 60 % 60:02d}:{elapsed % 60:02d}] {message}", flush=True)


class EpochReport(Callback):
    """Prints each finished epoch's validation loss, so a long benchmark shows progress without a progress bar."""

    def __init__(self, progress: Progress, label: str) -> None:
        self.progress, self.label = progress, label

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        loss = trainer.callback_metrics.get("val/loss")
        shown = f"val/loss {float(loss):.4g}" if loss is not None else "no val/loss"
        self.progress(f"    {self.label}: epoch {trainer.current_epoch + 1}/{trainer.max_epochs}, {shown}")


def resolve_configs(names: list[str] | None, config_dir: Path) -> dict[str, Path]:
    """Variant name -> config file; a ValueError naming every config that does not exist."""
    available = sorted(path.stem for path in config_dir.glob("*.yaml"))
    if names is None:  # every config of image data: the recommenders' (interactions files) have their own benchmark
        configs = {name: config_dir / f"{name}.yaml" for name in available}
        return {name: path for name, path in configs.items() if "InteractionsDataModule" not in path.read_text()}
    configs, missing = {}, []
    for name in names:
        path = Path(name) if name.endswith((".yaml", ".yml")) else config_dir / f"{name}.yaml"
        if path.stem in configs:
            raise ValueError(f"--configs names {configs[path.stem]} and {path}: their runs and rows would share the "
                             f"name {path.stem!r}; rename one")  # fmt: skip
        if path.is_file():
            configs[path.stem] = path
        else:
            missing.append(name)
    if missing:
        raise ValueError(
            f"no config {', '.join(map(repr, missing))} in {config_dir}; the configs are {', '.join(available)}"
        )
    return configs


def build_cli(
    config: Path, args: argparse.Namespace, root: Path, epochs: int, *extra: str, seed: int | None = None
) -> AutoencoderCLI:
    """The model, datamodule and trainer of ``ae-lightning fit`` for this config, the benchmark's settings and
    ``seed`` (default ``--seed``)."""
    seed = args.seed if seed is None else seed
    cli_args = [
        "--config", str(config),
        "--data", args.data, "--data.data_dir", str(args.data_dir),
        "--seed_everything", str(seed), "--data.seed", str(seed),
        "--trainer.max_epochs", str(epochs), "--trainer.default_root_dir", str(root),
        "--trainer.accelerator", args.accelerator, "--trainer.devices", "1",
        "--trainer.enable_progress_bar", str(sys.stderr.isatty()).lower(),
        "--trainer.enable_model_summary", "false",
        *extra,
    ]  # fmt: skip
    with mock.patch("sys.argv", ["ae-lightning"]):  # the CLI must read only these arguments
        return AutoencoderCLI(args=cli_args, run=False)


def fit(cli: AutoencoderCLI, progress: Progress, label: str) -> float:
    """Train as ``ae-lightning fit`` does; returns the seconds it took."""
    cli.trainer.callbacks.append(EpochReport(progress, label))
    start = time.monotonic()
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    return time.monotonic() - start


def get_classifier(args: argparse.Namespace, datamodule: ImageDataModule, progress: Progress) -> ClassifierRecord:
    path = args.classifier or default_classifier_path(datamodule)
    if Path(path).is_file():
        record = load_feature_classifier(path)
        progress(f"feature classifier {record.path} (test accuracy {record.test_accuracy:.4f})")
        return record
    progress(f"training the feature classifier ({args.classifier_epochs} epochs) -> {path}")
    record = train_feature_classifier(
        datamodule, path, args.classifier_epochs, 0, args.accelerator, progress_bar=sys.stderr.isatty()
    )
    progress(f"feature classifier test accuracy {record.test_accuracy:.4f}")
    return record


def main(argv: list[str] | None = None) -> list[Row]:
    args = parse_args(argv)
    progress = Progress()
    if args.torch_threads is not None:
        torch.set_num_threads(args.torch_threads)
    # Everything that can be wrong with the input fails here, before anything trains.
    metrics = evaluation.check_metric_names(args.metrics)
    configs = resolve_configs(args.configs, args.config_dir)
    data_class = evaluation.datamodule_class(args.data)
    if "data_dir" not in evaluation.init_parameters(data_class):
        raise ValueError(
            f"--data {args.data} takes no data_dir: this benchmark trains every config on the images of --data_dir. "
            "The disentangling VAEs on dSprites: python benchmarks/disentanglement.py --part mig"
        )
    reference = data_class(data_dir=str(args.data_dir), seed=args.seed)
    reference.setup()
    labels = len(reference.class_names or [])
    anomaly_classes = list(range(labels)) if args.anomaly_classes is None else args.anomaly_classes
    if "auroc" in metrics:
        if not labels:
            raise ValueError(f"--metrics auroc holds out classes, but --data {args.data} has none (unlabelled "
                             "images): leave auroc out of --metrics")  # fmt: skip
        bad = sorted(set(anomaly_classes) - set(range(labels)))
        if bad or not anomaly_classes or len(set(anomaly_classes)) < len(anomaly_classes):
            raise ValueError(f"--anomaly_classes must name distinct labels 0..{labels - 1}, got {anomaly_classes}")
    left_out = {}  # of the default configs, those this data cannot build (an overlay, the photo configs' sizes)
    for name, config in list(configs.items()):
        try:
            build_cli(config, args, args.root / name, args.epochs).datamodule.setup("fit")  # its data settings too
        except (Exception, SystemExit) as error:
            if args.configs is not None or len(left_out) == len(configs) - 1:  # named, or none builds
                raise ValueError(f"config {name} ({config}) does not build with these settings: {error}") from error
            left_out[name] = str(error).splitlines()[0]
    configs = {name: config for name, config in configs.items() if name not in left_out}
    progress(f"benchmark of {len(configs)} configs: {', '.join(configs)}; metrics {', '.join(metrics)}")
    if left_out:
        progress(f"left out {len(left_out)} configs that do not build with --data {args.data}: {', '.join(left_out)}")

    classifier = get_classifier(args, reference, progress) if "fid" in metrics else None
    context = describe_run(args, reference, metrics, anomaly_classes, classifier)
    context["left_out"] = left_out
    if classifier is not None:
        floor = evaluation.real_frechet_distance(
            classifier.network, evaluation.gray_loader(reference, "train"), evaluation.gray_loader(reference, "test")
        )
        context["fid_train_vs_test"] = floor
        progress(f"Frechet distance between the real train and test images: {floor:.3f}")

    rows: list[Row] = []
    for index, (name, config) in enumerate(configs.items(), 1):
        row = Row(name, config)
        for seed in args.seeds:
            label = f"[{index}/{len(configs)} {name}" + (f" seed {seed}]" if len(args.seeds) > 1 else "]")
            root = args.root / name / (f"seed-{seed}" if len(args.seeds) > 1 else "")
            progress(f"{label} training {args.epochs} epochs")
            cli = build_cli(config, args, root, args.epochs, seed=seed)
            row.fit_seconds += fit(cli, progress, name) / len(args.seeds)
            model, datamodule = cli.model.to(cli.trainer.strategy.root_device), cli.datamodule
            row.model = type(model).__name__
            row.test_images = "binarized" if datamodule.hparams.binarize != "none" else "gray"
            if model.global_step < getattr(model, "kl_warmup_steps", 0):  # the last step trained is global_step - 1
                row.kl_weight_reached = max(0, model.global_step - 1) / model.kl_warmup_steps
            wanted = [m for m in metrics if m != "auroc" and evaluation.metric_applies(model, datamodule, m)]
            progress(f"{label} evaluating {', '.join(wanted)}")
            scores = evaluation.evaluate(
                model,
                datamodule,
                wanted,
                classifier=classifier.network if classifier is not None else None,
                nll_samples=args.nll_samples,
                fid_samples=args.fid_samples,
                probe_max_train=args.probe_max_train,
                seed=seed,
            )
            progress(f"{label} " + ", ".join(f"{m} {v:.4g}" for m, v in scores.items()))
            if seed == args.seeds[0]:
                row.pictures = save_pictures(model, datamodule, args, name)
            if "auroc" in metrics:
                per_class = row.auroc_per_seed.setdefault(seed, {})
                for held_out in anomaly_classes:
                    normal = [c for c in range(reference.num_classes) if c != held_out]
                    progress(f"{label} anomaly detection: class {held_out} held out, {args.anomaly_epochs} epochs")
                    extra = ("--data.classes", json.dumps(normal), "--images.every_n_epochs", "0")
                    anomaly_cli = build_cli(
                        config, args, root / f"anomaly-{held_out}", args.anomaly_epochs, *extra, seed=seed
                    )
                    fit(anomaly_cli, progress, f"{name} without class {held_out}")
                    anomaly_model = anomaly_cli.model.to(anomaly_cli.trainer.strategy.root_device)
                    score = evaluation.evaluate(anomaly_model, anomaly_cli.datamodule, ["auroc"], seed=seed)
                    per_class[held_out] = score["auroc"]
                    progress(f"{label} AUROC with class {held_out} held out: {score['auroc']:.4f}")
                scores["auroc"] = sum(per_class.values()) / len(per_class)
            row.per_seed[seed] = scores
        row.summarize()
        rows.append(row)
        write_results(args, context, metrics, rows, total=len(configs))
        progress(f"[{index}/{len(configs)} {name}] done; {args.output} updated")
    progress(f"finished: {args.output}")
    return rows


def save_pictures(model: Any, datamodule: ImageDataModule, args: argparse.Namespace, name: str) -> dict[str, str]:
    """The variant's pictures from test images (t-SNE latent map), saved as PNGs; view -> file path."""
    # the latent map's images, and at least the 16 that draw_views' other pictures show, whatever the map's size
    images, labels = evaluation.first_images(datamodule, "test", max(args.tsne_points, 16))
    pictures = visualization.draw_views(
        model,
        images,
        labels,
        latent_map_size=args.tsne_points,
        projection="tsne",
        class_names=datamodule.class_names,
        title=f"{name}: t-SNE of {min(len(images), args.tsne_points)} test codes",
        seed=args.seed,
    )
    args.plots.mkdir(parents=True, exist_ok=True)
    saved = {}
    for view, image in pictures.items():
        path = args.plots / f"{name}_{PICTURE_FILES[view]}.png"
        visualization.save_png(image, path)
        saved[view] = str(path)
    return saved


def describe_run(
    args: argparse.Namespace,
    datamodule: ImageDataModule,
    metrics: list[str],
    anomaly_classes: list[int],
    classifier: ClassifierRecord | None,
) -> dict[str, Any]:
    """The command, machine, date, data and budget of this benchmark, for the report."""
    device = "cuda" if args.accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available() else "cpu"
    return {
        "command": "python benchmarks/variants.py " + shlex.join(args.argv),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": {
            "platform": platform.platform(),
            "python": platform.python_version(),
            "cpu": _cpu_name(),
            "cpu_cores_usable": usable_cpus(),
            "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "lightning": L.__version__,
            "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
        },
        "data": {
            "datamodule": type(datamodule).__name__,
            "data_dir": str(args.data_dir),
            "data_source": datamodule.data_source,
            "split_sizes": {split: datamodule.split_size(split) for split in ("train", "val", "test")},
            "class_names": datamodule.class_names,
        },
        **{name: getattr(args, name) for name in ("epochs", "seed", "seeds")},
        "metrics": metrics,
        "anomaly_classes": anomaly_classes if "auroc" in metrics else [],
        **{name: getattr(args, name) for name in ("anomaly_epochs", "nll_samples", "fid_samples", "probe_max_train")},
        "tsne_points": args.tsne_points,
        "classifier": classifier.metadata() if classifier is not None else None,
    }


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def write_results(
    args: argparse.Namespace, context: dict[str, Any], metrics: list[str], rows: list[Row], total: int
) -> None:
    """Write the markdown report and ``results.json`` (after every variant, so partial results survive), each
    replaced whole, never left half-written."""
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.plots.mkdir(parents=True, exist_ok=True)
    results = {**context, "variants": [_row_json(row, args.plots) for row in rows], "complete": len(rows) == total}
    write_atomically(args.plots / "results.json", (evaluation.strict_json(results) + "\n").encode())
    write_atomically(args.output, render_markdown(args, context, metrics, rows, total).encode())


def _row_json(row: Row, folder: Path) -> dict[str, Any]:
    """A variant's entry of ``results.json``; its pictures' paths relative to ``folder``, the file's."""
    return {
        "variant": row.name,
        "config": _relative(row.config, ROOT),
        "model": row.model,
        "test_images": row.test_images,
        "fit_seconds": round(row.fit_seconds, 1),
        "scores": row.scores,
        "scores_std": row.spread,
        "scores_per_seed": row.per_seed,
        "auroc_per_seed": row.auroc_per_seed,
        "auroc_per_held_out_class": row.auroc_per_class,
        "pictures": {view: _relative(Path(path), folder) for view, path in row.pictures.items()},
        "kl_weight_reached": row.kl_weight_reached,
    }


def render_markdown(
    args: argparse.Namespace, context: dict[str, Any], metrics: list[str], rows: list[Row], total: int
) -> str:
    machine, data = context["machine"], context["data"]
    sizes = data["split_sizes"]
    lines = [
        "# Benchmark results",
        "",
        "Every variant config trained with the same data, epochs and seeds, then scored on the test split. Written by",
        "`benchmarks/variants.py`; rerun it rather than editing this file.",
        "",
    ]
    if len(rows) < total:
        lines += [f"**Partial: {len(rows)} of {total} variants finished.**", ""]
    lines += [
        f"- **Command**: `{context['command']}`",
        f"- **Date**: {context['date']}",
        f"- **Machine**: {machine['platform']}, {machine['cpu']}, {machine['cpu_cores_usable']} usable CPU cores "
        f"({machine['torch_threads']} torch threads), device {machine['device']}; Python {machine['python']}, "
        f"torch {machine['torch']}, Lightning {machine['lightning']}",
        f"- **Data**: {data['datamodule']} from `{data['data_dir']}` ({data['data_source']}): "
        f"{sizes['train']:,} train / {sizes['val']:,} validation / {sizes['test']:,} test images",
        f"- **Budget**: {context['epochs']} epoch(s) per variant, {_seeds(context['seeds'])}, each config's own model, "
        "optimizer and batch size",
    ]
    unfinished = [
        f"`{row.name}` ({row.kl_weight_reached:.2f} x beta)" for row in rows if row.kl_weight_reached is not None
    ]
    if unfinished:
        lines.append(
            f"- **KL warm-up unfinished** in this budget (the config's `kl_warmup_steps`): {', '.join(unfinished)}"
            " at the last step: these rows score models trained toward a weaker KL term than asked for"
        )
    if context["left_out"]:
        reasons = "; ".join(f"`{name}`: {reason}" for name, reason in context["left_out"].items())
        lines.append(f"- **Left out** (they do not build with this data): {reasons}")
    if "nll" in metrics:
        samples = context["nll_samples"]
        shown = f"K = {samples} importance samples" if samples else "each config's `nll_samples` importance samples"
        lines.append(f"- **NLL**: {shown} per test image")
    if "fid" in metrics and context["classifier"]:
        info = context["classifier"]
        lines.append(
            f"- **FID**: {context['fid_samples']:,} prior samples against the {sizes['test']:,} gray-level test "
            f"images, in the penultimate-layer features of a CNN classifier with **test accuracy "
            f"{info['test_accuracy']:.2%}** ({info['dataset']}, {info['epochs']} epoch(s), seed {info['seed']}, "
            f"`{info['path']}`). The same distance between the real train and test images is "
            f"{context.get('fid_train_vs_test', float('nan')):.3f}: the floor a perfect model would reach."
        )
    if "linear_probe" in metrics or "knn" in metrics:
        subset = f"at most {context['probe_max_train']:,}" if context["probe_max_train"] else "all"
        lines.append(
            f"- **Probes**: logistic regression (standardized codes) and 5-NN fitted on the codes of {subset} "
            "training images, accuracy on the test codes"
        )
    if "auroc" in metrics:
        held = ", ".join(map(str, context["anomaly_classes"]))
        lines.append(
            f"- **AUROC**: one-class-held-out protocol, each config retrained for {context['anomaly_epochs']} "
            f"epoch(s) on all classes but one, for held-out classes {held}; all test images scored with the model's "
            "anomaly score (reconstruction error, or the negative ELBO for the VAE family); mean over held-out classes"
        )
    lines += [
        "- Test images are binarized where the config binarizes its data (`binarize: dynamic`, the VAE configs): "
        "their reconstruction metrics and NLL are on the binarized test set, the others' on gray levels.",
        "",
    ]
    shown = [m for m in metrics if any(m in row.scores for row in rows)]
    header = ["variant", "model", "test images", *(COLUMNS[m][0] for m in shown), "fit time"]
    lines += ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for row in rows:
        cells = [f"`{row.name}`", row.model, row.test_images]
        cells += [_score(m, row.scores, row.spread, len(row.per_seed)) if m in row.scores else "—" for m in shown]
        cells.append(f"{row.fit_seconds / 60:.1f} min")
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines += ["Metrics (↓ lower is better, ↑ higher is better; — does not apply):", ""]
    lines += [f"- `{m}`: {evaluation.METRICS[m]}" for m in shown]
    lines.append("")
    if any(row.auroc_per_class for row in rows):
        classes = sorted({c for row in rows for c in row.auroc_per_class})
        names = data.get("class_names")
        titles = [f"{c} ({names[c]})" if names and c < len(names) else str(c) for c in classes]
        lines += ["## AUROC per held-out class", ""]
        lines += ["| variant | " + " | ".join(titles) + " |", "|" + " --- |" * (len(classes) + 1)]
        for row in rows:
            values = [f"{row.auroc_per_class[c]:.3f}" if c in row.auroc_per_class else "—" for c in classes]
            lines.append(f"| `{row.name}` | " + " | ".join(values) + " |")
        lines.append("")
    lines += [
        "## Pictures",
        "",
        "Test images (top of each pair of rows) and reconstructions; samples from the prior (generative variants); "
        "decodings along the line between the codes of two test images (the real images at both ends); t-SNE of "
        "the test codes coloured by class.",
        "",
        "| variant | reconstructions | samples | interpolations | latent map (t-SNE) |",
        "| --- | --- | --- | --- | --- |",
    ]
    for row in rows:
        cells = []
        for view in ("reconstructions", "samples", "interpolations", "latent_map"):
            path = row.pictures.get(view)
            cells.append(f"![{row.name} {view}]({_relative(Path(path), args.output.parent)})" if path else "—")
        lines.append(f"| `{row.name}` | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _seeds(seeds: list[int]) -> str:
    if len(seeds) == 1:
        return f"seed {seeds[0]}"
    return f"{len(seeds)} seeds ({', '.join(map(str, seeds))}): each cell the mean ± the standard deviation over them"


def _score(metric: str, means: dict[str, float], spreads: dict[str, float], runs: int) -> str:
    shown = COLUMNS[metric][1].format(means[metric])
    return shown + " ± " + COLUMNS[metric][1].format(spreads[metric]) if runs > 1 else shown


def _relative(path: Path, start: Path) -> str:
    return os.path.relpath(Path(path).resolve(), Path(start).resolve())


if __name__ == "__main__":
    run_command("variants.py", main)
