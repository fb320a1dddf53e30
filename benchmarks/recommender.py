"""Mult-VAE and Mult-DAE against the popularity ranking on a held-out split of an interactions file.

    python benchmarks/recommender.py --path ml-100k.inter --epochs 50 --seeds 1 2 3

Each config (``configs/mult_vae.yaml``, ``configs/mult_dae.yaml``) is trained exactly as ``ae-lightning fit --config
<config> --data.path <path> ...`` would, with the split sizes and epochs given here, then tested from its best
checkpoint (validation NDCG@100); the popularity ranking is scored on the same test users. Prints a markdown table of
Recall@20, Recall@50 and NDCG@100 (mean and standard deviation over the seeds). Other arguments go to the command
after these, e.g. ``--data.min_rating null`` for a file of clicks without ratings.

No ratings data can be downloaded on the development machine; MovieLens-100K ships inside the ``recbole`` wheel:

    pip download recbole==1.2.1 --no-deps -d /tmp/recbole
    unzip -j /tmp/recbole/recbole-1.2.1-py3-none-any.whl 'recbole/dataset_example/ml-100k/ml-100k.inter' -d /tmp
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any
from unittest import mock

from ae_lightning.cli import AutoencoderCLI, run_command
from ae_lightning.evaluation.driver import AtLeast

ROOT = Path(__file__).resolve().parents[1]
METRICS = {"recall_20": "Recall@20", "recall_50": "Recall@50", "ndcg_100": "NDCG@100"}  # metric: column title
NAMES = {"mult_vae": "Mult-VAE", "mult_dae": "Mult-DAE"}  # config: row title (others: the config's name)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--path", required=True, help="interactions file (user, item[, rating])")
    parser.add_argument("--configs", nargs="+", default=["mult_vae", "mult_dae"], help="config names in configs/")
    parser.add_argument("--epochs", action=AtLeast, default=50)
    parser.add_argument("--seeds", type=int, nargs="+", default=[42])
    parser.add_argument("--val_users", default="100", help="a count, or a fraction if below 1")
    parser.add_argument("--test_users", default="100", help="a count, or a fraction if below 1")
    parser.add_argument("--batch_size", action=AtLeast, default=100)
    parser.add_argument("--anneal_steps", type=int, default=2000, help="KL annealing steps of the Mult-VAEs")
    parser.add_argument("--root", type=Path, default=ROOT / "runs" / "recommender")
    args, args.command_args = parser.parse_known_args(argv)  # the rest: ``ae-lightning fit`` arguments
    missing = [name for name in args.configs if not (ROOT / "configs" / f"{name}.yaml").is_file()]
    if missing:
        parser.error(f"--configs {' '.join(missing)}: no such config in {ROOT / 'configs'}")
    if len(set(args.seeds)) != len(args.seeds) or len(set(args.configs)) != len(args.configs):
        parser.error(f"--seeds and --configs must be distinct, got {args.seeds} and {args.configs}")
    return args


class AnnealingCLI(AutoencoderCLI):
    """The command's CLI, with the KL annealing steps of any model that has them (a Mult-VAE of any config name)."""

    def __init__(self, anneal_steps: int, **kwargs: Any) -> None:
        self.anneal_steps = anneal_steps
        super().__init__(**kwargs)

    def before_instantiate_classes(self) -> None:
        if "anneal_steps" in self.config.model.init_args:
            self.config.model.init_args.anneal_steps = self.anneal_steps
        super().before_instantiate_classes()


def run(config: str, args: argparse.Namespace, seed: int) -> dict[str, float]:
    """Fit then test one config with one seed; the test metrics."""
    cli_args = [
        "--config", str(ROOT / "configs" / f"{config}.yaml"),
        "--data.path", args.path, "--data.val_users", args.val_users, "--data.test_users", args.test_users,
        "--data.batch_size", str(args.batch_size), "--data.seed", str(seed), "--seed_everything", str(seed),
        "--trainer.max_epochs", str(args.epochs), "--trainer.default_root_dir", str(args.root / f"{config}-{seed}"),
        "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false", *args.command_args,
    ]  # fmt: skip
    with mock.patch("sys.argv", ["ae-lightning"]):  # the CLI must read only these arguments
        cli = AnnealingCLI(args.anneal_steps, args=cli_args, run=False)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    (results,) = cli.trainer.test(cli.model, datamodule=cli.datamodule, ckpt_path="best", verbose=False)
    return results


def main(argv: list[str] | None = None) -> dict[str, dict[str, list[float]]]:
    args = parse_args(argv)
    table: dict[str, dict[str, list[float]]] = {}
    start = time.monotonic()
    for seed in args.seeds:
        for config in args.configs:
            results = run(config, args, seed)
            scores = table.setdefault(config, {})
            for metric in METRICS:
                scores.setdefault(metric, []).append(results[f"test/{metric}"])
            popularity = table.setdefault("popularity", {})
            if len(popularity.get("ndcg_100", [])) < len(scores["ndcg_100"]):  # once per seed (same split)
                for metric in METRICS:
                    popularity.setdefault(metric, []).append(results[f"test/popularity_{metric}"])
            print(f"[{time.monotonic() - start:.0f}s] {config} seed {seed}: "
                  + ", ".join(f"{m} {results[f'test/{m}']:.4f}" for m in METRICS), flush=True)  # fmt: skip
    print(f"\n`python benchmarks/recommender.py {' '.join(sys.argv[1:] if argv is None else argv)}`\n")
    print("| ranking | " + " | ".join(METRICS.values()) + " |\n| --- |" + " --- |" * len(METRICS))
    for name in [*args.configs, "popularity"]:  # README's order: the models, then the baseline
        cells = [_mean_std(table[name][m]) for m in METRICS]
        print(f"| {NAMES.get(name, name)} | " + " | ".join(cells) + " |")
    return table


def _mean_std(values: list[float]) -> str:
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.4f} ± {spread:.4f}"


if __name__ == "__main__":
    run_command("recommender.py", main)
