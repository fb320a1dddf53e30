"""Post-hoc samplers: fitted on codes, they reproduce the codes' distribution, and give a plain autoencoder samples
whose Frechet distance the driver computes."""

from __future__ import annotations

import math
import re
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from ae_lightning import VAE, Autoencoder, ConditionalVAE
from ae_lightning.evaluation import driver
from ae_lightning.evaluation.samplers import (
    GaussianMixtureSampler,
    PosthocGenerator,
    TwoStageSampler,
    frechet_distances,
)
from datamodules.loader import TensorBatchLoader


class FirstPixels(torch.nn.Module):
    """A stand-in feature classifier: the first three pixels are the features."""

    num_features = 3

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1)[:, :3]


def correlated_codes(n: int = 2000) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    mean = torch.tensor([3.0, -1.0])
    covariance = torch.tensor([[1.0, 0.8], [0.8, 1.0]])
    codes = mean + torch.randn(n, 2, generator=generator) @ torch.linalg.cholesky(covariance).T
    return codes, mean, covariance


def test_gaussian_mixture_sampler_reproduces_clusters() -> None:
    generator = torch.Generator().manual_seed(0)
    centres = torch.tensor([[-5.0, 0.0], [5.0, 0.0]])
    codes = centres[torch.arange(1000) % 2] + 0.1 * torch.randn(1000, 2, generator=generator)
    samples = GaussianMixtureSampler(components=2).fit(codes).sample(500)
    nearest = torch.cdist(samples, centres).min(1)
    assert nearest.values.max() < 0.6 and nearest.indices.float().mean().item() == pytest.approx(0.5, abs=0.1)
    assert (nearest.indices[:250] == 0).float().mean() < 0.8  # samples come shuffled, not grouped by component
    with pytest.raises(ValueError, match="covariance_type must be one of 'full', 'tied', 'diag', 'spherical', got 'x'"):
        GaussianMixtureSampler(covariance_type="x")
    with pytest.raises(RuntimeError, match="fit the sampler"):
        GaussianMixtureSampler().sample(2)


def test_a_mixture_seed_that_scikit_learn_refuses_is_refused_when_the_sampler_is_made() -> None:
    # seed 2**32 was taken, then the fit failed inside scikit-learn naming GaussianMixture's random_state
    with pytest.raises(ValueError, match=r"^seed must be an integer in \[0, 4294967295\], got 4294967296$"):
        GaussianMixtureSampler(2, seed=2**32)
    assert GaussianMixtureSampler(2, seed=2**32 - 1).fit(correlated_codes(20)[0]).sample(3).shape == (3, 2)


def test_two_stage_sampler_learns_a_correlated_gaussian() -> None:
    codes, mean, covariance = correlated_codes()
    sampler = TwoStageSampler(2, hidden_dims=[32], steps=600, lr=3e-3).fit(codes)
    samples = sampler.sample(4000)
    torch.testing.assert_close(samples.mean(0), mean, atol=0.15, rtol=0)
    torch.testing.assert_close(torch.cov(samples.T), covariance, atol=0.2, rtol=0)
    assert sampler.log_gamma.exp() < 0.9  # the second stage's variance shrinks from its start at 1


def test_a_two_stage_sampler_fitted_again_on_the_same_codes_is_the_same_sampler() -> None:
    # the second fit went on from the first one's weights and sample stream: other samples from the same seed and codes
    codes = correlated_codes()[0]
    sampler, fresh = (TwoStageSampler(2, hidden_dims=[8], steps=20) for _ in range(2))
    first = sampler.fit(codes).sample(16)
    torch.testing.assert_close(sampler.fit(codes).sample(16), first, rtol=0, atol=0)
    torch.testing.assert_close(fresh.fit(codes).sample(16), first, rtol=0, atol=0)


@pytest.mark.parametrize(
    "make", [lambda: GaussianMixtureSampler(2), lambda: TwoStageSampler(2, [4], steps=2)], ids=["mixture", "two_stage"]
)
def test_samplers_refuse_codes_they_cannot_fit_and_sampling_before_a_fit(make) -> None:
    # The two-stage VAE fitted NaN codes, or a single code, into NaN samples, and sampled unfitted; the mixture failed
    # inside scikit-learn, and sample(0) named the number of components as the bad count; codes that require grad
    # (model.encode's) failed in both fits.
    with pytest.raises(RuntimeError, match="fit the sampler on codes before sampling"):
        make().sample(2)
    codes = torch.randn(20, 2)
    codes[3, 1] = math.nan
    with pytest.raises(ValueError, match=r"^1 of 20 codes hold NaN or inf \(a diverged model\?\)"):
        make().fit(codes)
    for shape in ((1, 2), (20, 2, 3, 3), (20,)):
        with pytest.raises(
            ValueError, match=rf"fits codes \[N, (D|2)\] with N >= 2 .* of shape {re.escape(str(shape))}$"
        ):
            make().fit(torch.randn(shape))
    assert make().fit(torch.randn(20, 2, requires_grad=True)).sample(0).shape == (0, 2)  # codes as encode gives them
    with pytest.raises(ValueError, match=r"sample\(n=-1\)"):
        make().fit(torch.randn(20, 2)).sample(-1)


def test_a_plain_autoencoder_generates_through_a_sampler_and_gets_frechet_distances() -> None:
    torch.manual_seed(0)
    model = Autoencoder(input_shape=(1, 8, 8), latent_dim=2, hidden_dims=[8]).eval()
    images = torch.rand(64, 1, 8, 8)
    codes = model.encode(images).detach()
    generator = PosthocGenerator(model, GaussianMixtureSampler(2).fit(codes))
    assert generator.sample(5).shape == (5, 1, 8, 8)
    classifier = FirstPixels()
    real = TensorBatchLoader((images * 255).to(torch.uint8), torch.zeros(64, dtype=torch.long), torch.arange(64),
                             batch_size=32, shuffle=False, seed=0)  # fmt: skip
    scores = frechet_distances(model, codes, classifier, real, num_samples=64, components=2, two_stage_steps=20)
    assert set(scores) == {"fid_gmm", "fid_two_stage"} and all(math.isfinite(v) and v >= 0 for v in scores.values())
    assert not model.training  # was left in training mode (dropout on in its next encode)
    assert math.isfinite(driver.frechet_distance(generator, classifier, real, 64))


@pytest.mark.parametrize("make", [lambda: GaussianMixtureSampler(2), lambda: TwoStageSampler(5, steps=2)])
def test_a_sampler_fitted_on_codes_of_another_size_is_refused_naming_both_sizes(make) -> None:
    # another model's codes (5 numbers) went to this model's decoder (2): torch's "shape '[3, 2]' is invalid"
    model = Autoencoder(input_shape=(1, 8, 8), latent_dim=2, hidden_dims=[8]).eval()
    generator = PosthocGenerator(model, make().fit(torch.randn(20, 5)))
    with pytest.raises(ValueError, match=re.escape("draws codes of 5 numbers, but Autoencoder's codes [2] hold 2")):
        generator.sample(3)


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16], ids=["64-true", "bf16-true"])
def test_a_sampler_generates_through_a_model_in_float64_or_bfloat16(dtype: torch.dtype) -> None:
    # the sampler's float32 codes went to the decoder of a 64-true or bf16-true model, which refused them
    torch.manual_seed(0)
    model = Autoencoder(input_shape=(1, 8, 8), latent_dim=2, hidden_dims=[8]).eval()
    codes = model.encode(torch.rand(64, 1, 8, 8)).detach()
    expected = PosthocGenerator(model, GaussianMixtureSampler(2).fit(codes)).sample(5)
    samples = PosthocGenerator(model.to(dtype), GaussianMixtureSampler(2).fit(codes)).sample(5)
    assert samples.dtype == dtype
    torch.testing.assert_close(samples.float(), expected, atol=0.02, rtol=0)


def test_a_sampler_generates_for_spatial_codes_and_for_a_conditional_model_with_its_classes_in_turn() -> None:
    torch.manual_seed(0)
    spatial = VAE(input_shape=(1, 16, 16), network="spatial", hidden_dims=[4, 8], latent_dim=2,
                  spatial={"num_res_blocks": 1}).eval()  # fmt: skip
    codes = spatial.encode(torch.rand(32, 1, 16, 16)).detach().flatten(1)  # as driver.encode_split gives them
    assert PosthocGenerator(spatial, GaussianMixtureSampler(2).fit(codes)).sample(3).shape == (3, 1, 16, 16)
    cvae = ConditionalVAE(input_shape=(1, 8, 8), latent_dim=2, hidden_dims=[8], num_classes=3).eval()
    codes = torch.randn(6, 2)
    fixed = SimpleNamespace(sample=lambda n: codes[:n])  # a sampler whose draw is known
    expected = cvae.decode(codes, torch.tensor([0, 1, 2, 0, 1, 2]))
    torch.testing.assert_close(PosthocGenerator(cvae, fixed).sample(6), expected)
    # the FID gives it the real images' labels, as it gives the model's own sample (a CVAE of classes 1 and 2 here)
    labels = torch.tensor([1, 2, 2, 1, 2, 2])
    real = TensorBatchLoader(torch.zeros(6, 1, 8, 8, dtype=torch.uint8), labels, torch.arange(6), batch_size=6,
                             shuffle=False, seed=0, resumable=False)  # fmt: skip
    decoded = []
    cvae.decode = lambda z, y=None: decoded.append(y) or torch.zeros(len(z), 1, 8, 8)  # records the labels
    driver.frechet_distance(PosthocGenerator(cvae, fixed), FirstPixels(), real, num_samples=6)
    assert torch.equal(decoded[0], labels)


def test_evaluate_script_gives_a_plain_autoencoder_frechet_distances_through_samplers(
    data_dir: Path, tmp_path: Path
) -> None:
    import importlib.util

    from tiny_runs import ROOT, run_cli, tiny_args

    from ae_lightning.evaluation.feature_classifier import train_feature_classifier
    from datamodules import MNISTDataModule

    fit = run_cli("fit", *tiny_args("ae", data_dir, tmp_path / "run", "--trainer.max_epochs", "1"))
    checkpoint = next(Path(fit.trainer.log_dir).rglob("*.ckpt"))
    classifier = train_feature_classifier(
        MNISTDataModule(data_dir=str(data_dir)), tmp_path / "classifier.pt", epochs=1, accelerator="cpu",
        progress_bar=False,
    )  # fmt: skip
    spec = importlib.util.spec_from_file_location("evaluate", ROOT / "scripts" / "evaluate.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    scores = script.main([str(checkpoint), "--metrics", "mse", "--samplers", "--classifier", str(classifier.path),
                          "--fid_samples", "60", "--probe_max_train", "100", "--two_stage_steps", "30"])  # fmt: skip
    assert set(scores) == {"mse", "fid_gmm", "fid_two_stage"}
    assert all(math.isfinite(value) and value >= 0 for value in scores.values())


def test_samplers_benchmark_checks_its_counts_and_scores_each_run_in_its_own_dataset_s_features(
    data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    import importlib.util

    from tiny_runs import ROOT, run_cli, tiny_args

    from ae_lightning.evaluation import feature_classifier as features

    spec = importlib.util.spec_from_file_location("samplers_benchmark", ROOT / "benchmarks" / "samplers.py")
    benchmark = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(benchmark)
    root = tmp_path / "runs"
    for flag, value in (("--samples", "1"), ("--train_codes", "0"), ("--two_stage_steps", "0")):
        with pytest.raises(SystemExit):
            benchmark.parse_args(["--root", str(root), "--variants", "ae", flag, value])
        assert f"{flag} {value}: expected at least" in capsys.readouterr().err
    run_cli("fit", *tiny_args("ae", data_dir, root / "digits", "--trainer.max_epochs", "1"))
    run_cli("fit", *tiny_args("ae", data_dir, root / "fashion", "--trainer.max_epochs", "1", "--data",
                              "datamodules.FashionMNISTDataModule"))  # fmt: skip
    monkeypatch.setenv("AE_LIGHTNING_CACHE", str(tmp_path / "cache"))
    classifiers = {}
    for variant, width in (("digits", 16), ("fashion", 24)):  # a classifier of each dataset, told apart by width
        _, datamodule = driver.load_checkpoint(next((root / variant).rglob("last.ckpt")))
        network = features.ClassifierCNN(num_features=width).eval()
        record = features.ClassifierRecord(network, features.default_classifier_path(datamodule), 0.5,
                                           datamodule.dataset_name, datamodule.data_source, 240, 1, 0)  # fmt: skip
        features.save_feature_classifier(record)
        classifiers[variant] = record.path
    used = []

    def frechet_distances(model, codes, classifier, *args, **kwargs) -> dict[str, float]:
        used.append(classifier.num_features)
        return {"fid_gmm": 1.0}

    monkeypatch.setattr(benchmark.samplers, "frechet_distances", frechet_distances)
    settings = ["--root", str(root), "--variants", "fashion", "digits", "--train_codes", "40", "--samples", "20"]
    benchmark.main(settings)
    assert used == [24, 16]  # each run in its own dataset's features
    with pytest.raises(ValueError, match=r"--classifier: .*digits.*last.ckpt: the feature classifier .* was trained on "
                                         r"FashionMNIST, but the data are MNIST"):  # fmt: skip
        benchmark.main([*settings, "--classifier", str(classifiers["fashion"])])
    assert used == [24, 16]  # refused before any fit
