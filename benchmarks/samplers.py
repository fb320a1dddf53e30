"""The Frechet distance of post-hoc samplers beside the prior's, over the seeds of a ``benchmarks/variants.py`` run.

    python benchmarks/variants.py --configs ae aae vae --seeds 0 1 2 --root runs/benchmark ...
    python benchmarks/samplers.py --root runs/benchmark --variants ae aae vae --data_dir ../shared/data

For each variant and seed (``--seeds``; by default every seed of the run), the run's ``last.ckpt``
(``<root>/<variant>/seed-<seed>/``, or ``<root>/<variant>/`` for a run of one seed) is loaded; a Gaussian mixture
and a two-stage VAE are fitted on the codes of ``--train_codes`` training images, and ``--samples`` samples of each
(and of the prior, for generative models) are scored against the test images in the features of a classifier of the
run's dataset (``--classifier``, or the cached one of each dataset). Printed per seed and as a markdown table of mean
+- sample std over the seeds.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import torch

from ae_lightning.cli import run_command
from ae_lightning.evaluation import driver as evaluation
from ae_lightning.evaluation import samplers
from ae_lightning.evaluation.driver import AtLeast
from ae_lightning.evaluation.feature_classifier import (
    ClassifierCNN,
    ClassifierRecord,
    check_classifier_data,
    default_classifier_path,
    load_feature_classifier,
)

NAMES = {"fid_prior": "prior", "fid_gmm": "Gaussian mixture (10)", "fid_two_stage": "two-stage VAE"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, required=True, help="the --root of the variants run")
    parser.add_argument("--variants", nargs="+", required=True)
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="seeds of the variants run (default: all)")
    parser.add_argument("--data_dir", default=None, help="where the data are (default: the checkpoint's)")
    parser.add_argument(
        "--train_codes",
        default=10000,
        action=AtLeast,
        least=2,
        what="training images, for a fit",
        help="training images whose codes are fitted",
    )
    parser.add_argument(
        "--samples",
        default=10000,
        action=AtLeast,
        least=2,
        what="samples, for a covariance",
        help="samples of each sampler",
    )
    parser.add_argument("--two_stage_steps", action=AtLeast, what="training step of the second VAE", default=2000)
    parser.add_argument(
        "--classifier", type=Path, default=None, help="feature classifier (default: the cached one of each dataset)"
    )
    return parser.parse_args(argv)


def checkpoints(root: Path, variant: str, seeds: list[int] | None) -> dict[int | None, Path]:
    """The ``last.ckpt`` of the variant's run per seed: ``<root>/<variant>/seed-<seed>/`` of a run over several seeds
    (all it has where ``seeds`` is None), or ``<root>/<variant>/`` of a run of one seed (the one seed asked, or None);
    of the newest run there, ``lightning_logs/version_<n>`` of the largest ``n``; a FileNotFoundError naming what is
    there."""
    folder = root / variant
    present = sorted(int(path.name[5:]) for path in folder.glob("seed-*") if path.name[5:].isdigit())
    wanted: list[int | None] = list(seeds) if seeds is not None else list(present) or [None]
    found = {}
    for seed in wanted:
        single = not present and len(wanted) == 1  # a run of one seed: no seed- folder
        run = folder if single else folder / f"seed-{seed}"
        runs = sorted(run.glob("lightning_logs/version_*/checkpoints/last.ckpt"), key=_version)
        if not runs:
            there = f"its seeds are {present}" if present else "a run of one seed" if folder.is_dir() else "no folder"
            advice = f"run benchmarks/variants.py --configs {variant} --root {root} first" + (
                ", or give --seeds of the run" if present else "")  # fmt: skip
            raise FileNotFoundError(f"no last.ckpt of seed {seed} under {folder} ({there}): {advice}")
        found[seed] = runs[-1]
    return found


def _version(checkpoint: Path) -> tuple[int, str]:
    """The sort key of ``.../version_<n>/checkpoints/last.ckpt``: ``n`` as a number (version_10 after version_9)."""
    name = checkpoint.parents[1].name.removeprefix("version_")
    return (int(name), name) if name.isdigit() else (-1, name)


def feature_classifiers(runs: list[Path], data_dir: str | None, given: Path | None) -> dict[Path, ClassifierCNN]:
    """The feature classifier of each checkpoint of ``runs``: ``given`` (``--classifier``), else the cached one of
    its dataset; a ValueError naming the checkpoint and how to train one unless it was trained on that dataset."""
    records: dict[Path, ClassifierRecord] = {}  # each classifier file, loaded once
    found = {}
    for checkpoint in runs:
        _, datamodule = evaluation.load_checkpoint(checkpoint, data_dir)
        data = f"--checkpoint {checkpoint}" + (f" --data_dir {data_dir}" if data_dir else "")
        path = given or default_classifier_path(datamodule)
        if path not in records:
            records[path] = load_feature_classifier(path, data)
            print(f"feature classifier {path}: test accuracy {records[path].test_accuracy:.4f}", flush=True)
        try:
            check_classifier_data(records[path], datamodule)
        except ValueError as error:
            option = "--classifier: " if given else ""
            raise ValueError(
                f"{option}{checkpoint}: {error} (train one: python scripts/train_feature_classifier.py {data})"
            ) from None
        found[checkpoint] = records[path].network
    return found


def main(argv: list[str] | None = None) -> dict[str, dict[str, list[float]]]:
    args = parse_args(argv)
    paths = {(v, s): path for v in args.variants for s, path in checkpoints(args.root, v, args.seeds).items()}
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    classifiers = feature_classifiers(list(paths.values()), args.data_dir, args.classifier)  # checked before any fit
    results: dict[str, dict[str, list[float]]] = {}
    for (variant, seed), path in paths.items():
        model, datamodule = evaluation.load_checkpoint(path, args.data_dir)
        model.to(device)
        classifier = classifiers[path].to(device)
        seed = seed if seed is not None else 0  # a run of one seed: the fits' seed
        train = evaluation.split_loader(datamodule, "train", max_images=args.train_codes, seed=seed)
        codes, _ = evaluation.encode_split(model, train, seed)
        real = evaluation.gray_loader(datamodule, "test", datamodule.hparams.classes)
        found = samplers.frechet_distances(
            model, codes, classifier, real, args.samples, two_stage_steps=args.two_stage_steps, seed=seed
        )
        for name, value in found.items():
            results.setdefault(variant, {}).setdefault(name, []).append(value)
        print(f"{variant} seed {seed}: " + ", ".join(f"{n} {v:.2f}" for n, v in found.items()), flush=True)
    print(f"\n| variant | {' | '.join(NAMES.values())} |\n| --- |" + " --- |" * len(NAMES))
    for variant, scores in results.items():
        cells = []
        for name in NAMES:
            values = scores.get(name)
            spread = f" +- {statistics.stdev(values):.2f}" if values and len(values) > 1 else ""
            cells.append(f"{statistics.mean(values):.2f}{spread}" if values else "—")
        print(f"| `{variant}` | {' | '.join(cells)} |")
    return results


if __name__ == "__main__":
    run_command("samplers.py", main)
