"""Score one checkpoint of ``ae-lightning fit`` with the benchmark's metrics, and optionally save its pictures.

    python scripts/evaluate.py runs/vae/lightning_logs/version_0/checkpoints/last.ckpt --metrics mse ssim nll fid
    python scripts/evaluate.py <ckpt> --data_dir ../shared/data --plots runs/vae/pictures --views samples latent_map

The model and its datamodule are rebuilt from the checkpoint (``--data_dir`` says where the data are now); data other
than the run's (its ``data_source``, e.g. MNIST's 5,000-digit fallback where the IDX files are missing) are refused.
Without ``--metrics`` every metric that applies to the model is computed; naming one that does not apply (``fid`` or the
``samples`` view for a model that is not generative, ``nll`` outside the VAE family) is an error that says why.
On data with known factors (dSprites) the disentanglement metrics are printed too (``--disentanglement``, and
``--prune_threshold`` as the test callback's), and ``--plots`` also writes the latent traversals. ``--samplers`` fits
post-hoc samplers on the training codes, so that deterministic autoencoders get a Frechet distance too. An existing
``--json`` file or picture is replaced only with ``--overwrite`` (an earlier run's pictures of views not drawn now
stay, and are named); the ``--json`` file (strict JSON: a NaN or infinite score is ``null``) and the pictures are
written once everything is computed, all or none, none half-written. Every option is checked before the model is
loaded (names, counts, paths, the ``--classifier`` file), and what depends on the model (views, the pictures it would
replace, metrics that apply, a classifier of the checkpoint's dataset, the disentanglement settings) before any score
is computed.
"""

from __future__ import annotations

import argparse
import errno
import os
import shutil
from pathlib import Path

import torch

from ae_lightning.cli import run_command
from ae_lightning.evaluation import disentanglement, samplers, visualization
from ae_lightning.evaluation import driver as evaluation
from ae_lightning.evaluation.driver import AtLeast
from ae_lightning.evaluation.feature_classifier import (
    check_classifier_data,
    default_classifier_path,
    load_feature_classifier,
)
from ae_lightning.training.fault_tolerance.checkpoint_io import write_atomically
from datamodules import InteractionsDataModule
from datamodules.checks import check_number


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--data_dir", default=None, help="where the data are (default: the checkpoint's)")
    parser.add_argument(
        "--metrics",
        nargs="+",
        default=None,
        choices=evaluation.METRICS,
        metavar="METRIC",
        help=f"metrics (default: all that apply): {', '.join(evaluation.METRICS)}",
    )
    parser.add_argument(
        "--first_stage_metrics",
        nargs="+",
        default=None,
        choices=evaluation.FIRST_STAGE_METRICS,
        metavar="METRIC",
        help=f"tokenizer and codec metrics: {', '.join(evaluation.FIRST_STAGE_METRICS)} (default without --metrics: "
        "those that apply but lpips, rfid and rfid_classifier, which need pretrained weights)",
    )
    parser.add_argument(
        "--rfid_images",
        action=AtLeast,
        least=2,
        what="test images, for a covariance",
        help="test images of rfid (default: all)",
    )
    parser.add_argument(
        "--nll_samples",
        action=AtLeast,
        what="importance samples per image",
        help="importance samples (default: the model's)",
    )
    parser.add_argument(
        "--fid_samples",
        action=AtLeast,
        least=2,
        what="samples, for a covariance",
        help="samples of fid and --samplers (default 10000)",
    )
    parser.add_argument("--classifier", type=Path, default=None, help="feature classifier (default: the cache path)")
    parser.add_argument("--probe_max_train", action=AtLeast, least=2, what="training images, for a classifier")
    parser.add_argument("--plots", type=Path, default=None, help="folder for PNG pictures of the model")
    parser.add_argument(
        "--views",
        nargs="+",
        default=None,
        choices=visualization.VIEWS,
        metavar="VIEW",
        help=f"pictures in --plots (default: all that apply): {', '.join(visualization.VIEWS)}",
    )
    parser.add_argument(
        "--tsne_points",
        action=AtLeast,
        least=2,
        what="test images, for a t-SNE map",
        help="test images of the latent map (default 2000)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None, help="also write the scores to this JSON file")
    parser.add_argument("--overwrite", action="store_true", help="replace the --json file and --plots pictures")
    parser.add_argument(
        "--disentanglement",
        nargs="*",
        default=None,
        choices=[*disentanglement.DISENTANGLEMENT_METRICS, "none"],
        metavar="METRIC",
        help="disentanglement metrics on data with known factors (default there, or the flag alone: all; none "
        f"elsewhere; 'none': off): {', '.join(disentanglement.DISENTANGLEMENT_METRICS)}",
    )
    parser.add_argument(
        "--disentanglement_points",
        action=AtLeast,
        least=10,
        what="codes, for MIG, SAP and DCI",
        help="codes seen by MIG, SAP and DCI (default 10000)",
    )
    parser.add_argument(
        "--prune_threshold",
        type=float,
        default=None,
        help=f"the FactorVAE score's std below which a code dimension counts as collapsed and is left out (default: "
        f"{disentanglement.PRUNE_THRESHOLD}, as disentanglement_lib, for codes on the prior's scale; 0 keeps all)",
    )
    parser.add_argument(
        "--samplers",
        action="store_true",
        help="also fid_gmm and fid_two_stage: the Frechet distance of samples decoded from a Gaussian mixture and a "
        "second VAE fitted on the training codes (any autoencoder; --probe_max_train codes)",
    )
    parser.add_argument(
        "--two_stage_steps",
        action=AtLeast,
        what="training step of the second VAE",
        help="training steps of the second VAE (default 2000)",
    )
    args = parser.parse_args(argv)
    asked, first_stage = set(args.metrics or evaluation.METRICS), set(args.first_stage_metrics or [])
    users = {  # the options that only another one uses: given without it, they would be ignored
        "tsne_points": (args.plots is not None, "--plots"),
        "two_stage_steps": (args.samplers, "--samplers"),
        "rfid_images": ({"rfid", "rfid_classifier"} & first_stage, "rfid or rfid_classifier"),
        "nll_samples": ("nll" in asked, "nll"),
        "fid_samples": ("fid" in asked or args.samplers, "fid or --samplers"),
        "probe_max_train": ({"linear_probe", "knn"} & asked or args.samplers, "linear_probe, knn or --samplers"),
        "classifier": ("fid" in asked or args.samplers or "rfid_classifier" in first_stage, "fid, --samplers or "
                       "rfid_classifier"),
    }  # fmt: skip
    for name, (used, by) in users.items():
        if getattr(args, name) is not None and not used:
            parser.error(f"--{name} {getattr(args, name)}: only {by} uses it; add that or drop --{name}")
    args.tsne_points, args.two_stage_steps = args.tsne_points or 2000, args.two_stage_steps or 2000
    args.fid_samples = args.fid_samples or 10000
    if not 0 <= args.seed < 2**32:  # torch takes more, but the t-SNE map and the samplers' mixtures would refuse it
        parser.error(f"--seed {args.seed}: expected an integer in [0, {2**32 - 1}] (a NumPy and scikit-learn seed)")
    if args.disentanglement and "none" in args.disentanglement and len(args.disentanglement) > 1:
        parser.error(f"--disentanglement {' '.join(args.disentanglement)}: 'none' turns them off; give it alone")
    if args.prune_threshold is not None:
        try:
            check_number("--prune_threshold", args.prune_threshold, "[0, inf)")  # as the callback's prune_threshold
        except ValueError as error:
            parser.error(f"{error} (the std below which a code dimension counts as collapsed; 0 keeps all)")
    # an option of some disentanglement metrics, given where --disentanglement leaves them all out, would be ignored
    uses = {
        "prune_threshold": ("the FactorVAE score", ["factor_vae"], "factor_vae"),
        "disentanglement_points": ("MIG, SAP and DCI", ["mig", "sap", "dci"], "one of mig, sap, dci"),
    }
    for name, (what, metrics, fix) in uses.items():
        if getattr(args, name) is not None and args.disentanglement and not set(metrics) & set(args.disentanglement):
            parser.error(
                f"--{name} applies to {what}, which --disentanglement {' '.join(args.disentanglement)} leaves out; "
                f"add {fix} or drop --{name}"
            )
    if args.data_dir is not None and not Path(args.data_dir).is_dir():
        parser.error(f"--data_dir {args.data_dir}: no such folder; expected the folder the checkpoint's data are in")
    if args.views is not None and args.plots is None:
        parser.error(f"--views {' '.join(args.views)}: the pictures go to a --plots folder; name one")
    if args.json is not None and args.json.is_dir():
        parser.error(f"--json {args.json} is a folder; expected the name of a file")
    if args.json is not None and not args.json.parent.is_dir():
        parser.error(f"--json {args.json}: its folder {args.json.parent} does not exist; create it or name another")
    read = {"checkpoint": args.checkpoint, "classifier": args.classifier}  # --overwrite would destroy them
    for role, path in read.items() if args.json is not None and args.json.exists() else ():
        if path is not None and path.exists() and args.json.samefile(path):
            parser.error(f"--json {args.json} is the {role} {path}, which it would replace; name another file")
    if args.json is not None and args.json.exists() and not args.overwrite:
        parser.error(f"--json {args.json} exists; name another file, or pass --overwrite to replace it")
    if args.plots is not None:
        existing = next(path for path in (args.plots, *args.plots.parents) if path.exists())
        if not existing.is_dir():
            where = "it" if existing == args.plots else existing
            parser.error(f"--plots {args.plots}: {where} is a file; expected a folder (for the pictures)")
        try:  # the views asked for; the others once the model says which it draws (main)
            check_pictures(args.plots, args.views or [], args.overwrite)
        except FileExistsError as error:
            parser.error(str(error))
    # the arguments of scripts/train_feature_classifier.py that train a classifier of these data
    args.data = f"--checkpoint {args.checkpoint}" + (f" --data_dir {args.data_dir}" if args.data_dir else "")
    args.classifier_record = None
    if args.classifier is not None:
        try:
            args.classifier_record = load_feature_classifier(args.classifier, args.data)
        except FileNotFoundError as error:
            parser.error(f"--classifier: {error}")
        except ValueError as error:
            parser.error(f"--classifier {error}")
    return args


def check_pictures(plots: Path, views: list[str], overwrite: bool) -> None:
    """A FileExistsError naming the pictures of ``views`` that ``plots`` holds as folders, or already holds, unless
    ``overwrite``."""
    if folders := [f"{view}.png" for view in views if (plots / f"{view}.png").is_dir()]:
        raise FileExistsError(f"--plots {plots} holds folders named {', '.join(folders)}, where pictures go")
    if (held := [f"{view}.png" for view in views if (plots / f"{view}.png").exists()]) and not overwrite:
        raise FileExistsError(
            f"--plots {plots} already holds {', '.join(held)}; name another folder, or pass --overwrite to replace them"
        )


def write_all(outputs: dict[Path, bytes]) -> None:
    """Write every file of ``outputs`` or none: each to a synced temporary file beside it first, then all renamed
    into place, so that a failed write (a full disk) leaves no output of this run and every old file as it was."""
    staged = {path: path.with_name(f".{path.name}.{os.getpid()}.staged") for path in outputs}
    try:
        for path, temporary in staged.items():
            try:
                write_atomically(temporary, outputs[path])
            except OSError as error:  # named by its hidden staging file: name the output instead
                if error.errno != errno.ENOSPC:
                    raise
                raise OSError(
                    errno.ENOSPC,
                    f"no space left on device while writing {path} ({shutil.disk_usage(path.parent).free / 2**20:.0f} "
                    "MiB free); no output of this run was written and every earlier file is as it was. Free some space",
                ) from error
        for path, temporary in staged.items():
            os.replace(temporary, path)
    finally:
        for temporary in staged.values():
            temporary.unlink(missing_ok=True)


def main(argv: list[str] | None = None) -> dict[str, float]:
    args = parse_args(argv)
    processes = int(os.environ.get("WORLD_SIZE", "1"))
    if processes > 1:  # every process would score the whole test set and write the same files
        raise ValueError(f"WORLD_SIZE {processes}: scripts/evaluate.py scores in one process (on one GPU if there is "
                         "one); run it without torchrun or a multi-task srun")  # fmt: skip
    model, datamodule = evaluation.load_checkpoint(args.checkpoint, args.data_dir)
    if isinstance(datamodule, InteractionsDataModule):
        raise ValueError(
            f"{args.checkpoint} holds a recommender ({type(model).__name__}), which this script does not score: "
            f"`ae-lightning test --config <its run's config.yaml> --ckpt_path {args.checkpoint}` gives its Recall@k "
            "and NDCG@100"
        )
    model.to("cuda" if torch.cuda.is_available() else "cpu")
    if args.views is not None:
        visualization.check_views(model, args.views)
    metrics = args.metrics or [
        name for name in evaluation.METRICS if evaluation.metric_applies(model, datamodule, name)
    ]
    first_stage = args.first_stage_metrics or []
    if args.first_stage_metrics is None and args.metrics is None:
        first_stage = [
            name
            for name in evaluation.FIRST_STAGE_METRICS
            if name not in ("lpips", "rfid", "rfid_classifier") and evaluation.metric_applies(model, datamodule, name)
        ]
    evaluation.check_first_stage_metrics(model, datamodule, first_stage)
    pretrained = evaluation.pretrained_networks(first_stage)  # missing weights: refused before any score
    if args.samplers and len(datamodule.input_shape) != 3:
        raise ValueError(f"--samplers: the Frechet distance compares images, but {type(datamodule).__name__} holds "
                         f"feature vectors of shape {datamodule.input_shape}")  # fmt: skip
    if args.samplers:
        samplers.check_continuous_codes(model)
    has_factors = hasattr(datamodule, "sample_factors")
    traversals = has_factors and disentanglement.has_flat_codes(model)
    if args.plots is not None:  # the pictures of this model and data, refused before any score
        views = args.views or visualization.applicable_views(model)
        check_pictures(args.plots, [*views, *(["traversals"] if traversals else [])], args.overwrite)
    options = {
        f"--{name}": getattr(args, name) for name in ("disentanglement", "prune_threshold", "disentanglement_points")
    }
    given = [option for option, value in options.items() if value not in (None, ["none"])]
    if given and not has_factors:
        raise ValueError(f"{given[0]} needs data with known factors (dSprites), not {type(datamodule).__name__}")
    names = []  # the disentanglement metrics, refused here, before any score, rather than after the others
    if has_factors and args.disentanglement != ["none"]:
        try:
            encode = disentanglement.model_encoder(model)
        except ValueError as error:  # codes these metrics cannot score: an error where they were asked for
            if given:
                raise
            print(f"Disentanglement metrics not computed: {error}")
        else:
            asked = args.disentanglement or list(disentanglement.DISENTANGLEMENT_METRICS)
            names = disentanglement.check_disentanglement_settings(encode, datamodule, asked)
    classifier = None
    if "fid" in metrics or args.samplers or "rfid_classifier" in first_stage:
        if "fid" in metrics:
            evaluation.require_generative(model, "the Frechet distance of samples (fid)")
        record = args.classifier_record or load_feature_classifier(default_classifier_path(datamodule), args.data)
        try:
            check_classifier_data(record, datamodule)
        except ValueError as error:
            option = "--classifier: " if args.classifier else ""
            raise ValueError(
                f"{option}{error} (train one: python scripts/train_feature_classifier.py {args.data})"
            ) from None
        print(f"Feature classifier {record.path}: test accuracy {record.test_accuracy:.4f}")
        classifier = record.network
    scores = evaluation.evaluate(
        model,
        datamodule,
        metrics,
        classifier=classifier,
        nll_samples=args.nll_samples,
        fid_samples=args.fid_samples,
        probe_max_train=args.probe_max_train,
        seed=args.seed,
    )
    if args.samplers:
        train = evaluation.split_loader(datamodule, "train", max_images=args.probe_max_train, seed=args.seed)
        train_codes, _ = evaluation.encode_split(model, train, args.seed)
        real = evaluation.gray_loader(datamodule, "test", datamodule.hparams.classes)
        scores |= samplers.frechet_distances(
            model,
            train_codes,
            classifier,
            real,
            args.fid_samples,
            two_stage_steps=args.two_stage_steps,
            seed=args.seed,
            prior=False,  # the prior's is the fid metric's
        )
    if names:
        threshold = disentanglement.PRUNE_THRESHOLD if args.prune_threshold is None else args.prune_threshold
        scores |= disentanglement.disentanglement_metrics(
            encode,
            datamodule,
            names,
            num_points=args.disentanglement_points or 10000,
            seed=args.seed,
            prune_threshold=threshold,
        )
    if first_stage:
        scores |= evaluation.first_stage_scores(
            model,
            datamodule,
            first_stage,
            classifier=classifier,
            pretrained=pretrained,
            frechet_images=args.rfid_images,
            seed=args.seed,
        )
    width = max(map(len, scores))
    for name, value in scores.items():
        print(f"{name:<{width}}  {value:.6g}")
    pictures = {}
    if args.plots is not None:
        # the latent map's images, and at least the 16 that draw_views' other pictures show, whatever the map's size
        images, labels = evaluation.first_images(datamodule, "test", max(args.tsne_points, 16))
        pictures = visualization.draw_views(
            model,
            images,
            labels,
            args.views,
            latent_map_size=args.tsne_points,
            projection="tsne",
            class_names=datamodule.class_names,
            seed=args.seed,
        )
        if has_factors and not traversals:
            print(f"Latent traversals not drawn: {type(model).__name__}'s codes are not flat [latent_dim]")
        elif traversals:
            factors = datamodule.sample_factors(4, torch.Generator().manual_seed(args.seed))
            pictures["traversals"] = disentanglement.latent_traversals(model, datamodule.images_of(factors))
    # written once everything is computed, all or none, so that a failure leaves no output of this run
    outputs = {} if args.json is None else {args.json: (evaluation.strict_json(scores) + "\n").encode()}
    outputs |= {args.plots / f"{view}.png": visualization.png_bytes(image) for view, image in pictures.items()}
    created = [] if args.plots is None else [path for path in (args.plots, *args.plots.parents) if not path.exists()]
    if args.plots is not None:
        args.plots.mkdir(parents=True, exist_ok=True)
    try:
        write_all(outputs)
    except BaseException:  # all or none: the folders this run made go too
        for folder in created:
            folder.rmdir()
        raise
    if args.plots is not None:  # an earlier run's pictures stay, named so that none reads as this model's
        names = [f"{view}.png" for view in (*visualization.VIEWS, "traversals") if view not in pictures]
        earlier = [name for name in names if (args.plots / name).is_file()]
        verb = "is" if len(earlier) == 1 else "are"
        note = f"; {', '.join(earlier)} there {verb} of an earlier run (not drawn now)" if earlier else ""
        print(f"Pictures ({', '.join(pictures)}) written to {args.plots}{note}")
    return scores


if __name__ == "__main__":
    run_command("evaluate.py", main)
