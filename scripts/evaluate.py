"""Score one checkpoint of ``ae-lightning fit`` with the benchmark's metrics, and optionally save its pictures.

    python scripts/evaluate.py runs/vae/lightning_logs/version_0/checkpoints/last.ckpt --metrics mse ssim nll fid
    python scripts/evaluate.py <ckpt> --data_dir ../shared/data --plots runs/vae/pictures --views samples latent_map

The model and its datamodule are rebuilt from the checkpoint (``--data_dir`` says where the data are now). Without
``--metrics`` every metric that applies to the model is computed; naming one that does not apply (``fid`` or the
``samples`` view for a model that is not generative, ``nll`` outside the VAE family) is an error that says why.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from torchvision.utils import save_image

from ae_lightning.evaluation import driver as evaluation
from ae_lightning.evaluation import visualization
from ae_lightning.evaluation.feature_classifier import default_classifier_path, load_feature_classifier


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--data_dir", default=None, help="where the data are (default: the checkpoint's)")
    parser.add_argument(
        "--metrics", nargs="+", default=None, help=f"metrics (default: all that apply): {', '.join(evaluation.METRICS)}"
    )
    parser.add_argument(
        "--first_stage_metrics",
        nargs="+",
        default=None,
        help=f"tokenizer and codec metrics: {', '.join(evaluation.FIRST_STAGE_METRICS)} (default without --metrics: "
        "those that apply but lpips, which needs torchvision's AlexNet weights)",
    )
    parser.add_argument("--nll_samples", type=int, default=None, help="importance samples (default: the model's)")
    parser.add_argument("--fid_samples", type=int, default=10000)
    parser.add_argument("--classifier", type=Path, default=None, help="feature classifier (default: the cache path)")
    parser.add_argument("--probe_max_train", type=int, default=None)
    parser.add_argument("--plots", type=Path, default=None, help="folder for PNG pictures of the model")
    parser.add_argument(
        "--views", nargs="+", default=None, help=f"pictures (default: all that apply): {', '.join(visualization.VIEWS)}"
    )
    parser.add_argument("--tsne_points", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None, help="also write the scores to this JSON file")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, float]:
    args = parse_args(argv)
    if args.metrics is not None:
        evaluation.check_metric_names(args.metrics)
    model, datamodule = evaluation.load_checkpoint(args.checkpoint, args.data_dir)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model.to(device)
    if args.views is not None:
        visualization.check_views(model, args.views)
    metrics = args.metrics or [
        name for name in evaluation.METRICS if evaluation.metric_applies(model, datamodule, name)
    ]
    classifier = None
    if "fid" in metrics:
        evaluation.require_generative(model, "the Frechet distance of samples (fid)")
        record = load_feature_classifier(args.classifier or default_classifier_path(datamodule))
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
    first_stage = args.first_stage_metrics
    if first_stage is None and args.metrics is None:
        first_stage = [
            name
            for name in evaluation.FIRST_STAGE_METRICS
            if name != "lpips" and evaluation.metric_applies(model, datamodule, name)
        ]
    if first_stage:
        scores |= evaluation.first_stage_scores(model, datamodule, first_stage)
    width = max(map(len, scores))
    for name, value in scores.items():
        print(f"{name:<{width}}  {value:.6g}")
    if args.json is not None:
        args.json.write_text(json.dumps(scores, indent=2) + "\n")
    if args.plots is not None:
        images, labels = evaluation.first_images(datamodule, "test", args.tsne_points)
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
        args.plots.mkdir(parents=True, exist_ok=True)
        for view, image in pictures.items():
            save_image(image, args.plots / f"{view}.png")
        print(f"Pictures ({', '.join(pictures)}) written to {args.plots}")
    return scores


if __name__ == "__main__":
    main()
