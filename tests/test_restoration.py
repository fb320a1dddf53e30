"""Restoration variants on the shared base: super-resolution's degradation, metrics and pictures."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import pytest
import torch
from lightning.pytorch.callbacks import Callback
from test_variants import images, make_trainer
from torch.utils.data import DataLoader, TensorDataset

from ae_lightning import DenoisingAutoencoder, SuperResolutionAutoencoder
from ae_lightning.evaluation import visualization
from ae_lightning.evaluation.metrics import PSNR_CAP_DB
from ae_lightning.models.superresolution import bicubic_upsample, downsample

TINY = {"latent_dim": 4, "hidden_dims": [16]}


def test_downsampling_averages_blocks_and_the_input_is_the_bicubic_upsampling() -> None:
    x = torch.arange(16.0).view(1, 1, 4, 4) / 16
    expected = torch.tensor([[0 + 1 + 4 + 5, 2 + 3 + 6 + 7], [8 + 9 + 12 + 13, 10 + 11 + 14 + 15]]) / 64
    torch.testing.assert_close(downsample(x, 2), expected.view(1, 1, 2, 2))
    model = SuperResolutionAutoencoder(**TINY, scale=4)
    x, _ = images(3)
    degraded = model.degrade(x)
    assert degraded.shape == x.shape and degraded.min() >= 0 and degraded.max() <= 1
    torch.testing.assert_close(degraded, bicubic_upsample(downsample(x, 4), 4))
    # each 4x4 block of the input holds one low-resolution pixel's information: a constant image survives it
    torch.testing.assert_close(model.degrade(torch.full((1, 1, 28, 28), 0.3)), torch.full((1, 1, 28, 28), 0.3))
    assert (degraded - x).abs().mean() > 0.05


def logged_metrics(
    model: DenoisingAutoencoder | SuperResolutionAutoencoder, x: torch.Tensor
) -> dict[str, torch.Tensor]:
    """A test batch's logged terms but the loss."""
    terms = model.test_terms(x, torch.zeros(len(x)), torch.arange(len(x)))[0]
    return {name: value for name, value in terms.items() if name not in ("loss", "recon")}


def test_test_metrics_compare_output_and_bicubic_baseline_with_the_original() -> None:
    model = SuperResolutionAutoencoder(**TINY, scale=2)
    x, _ = images(8)
    metrics = logged_metrics(model, x)
    assert set(metrics) == {"psnr_superres", "ssim_superres", "psnr_bicubic", "ssim_bicubic"}
    bicubic = bicubic_upsample(downsample(x, 2), 2)
    expected = (-10 * torch.log10((bicubic - x).pow(2).flatten(1).mean(1))).mean()
    torch.testing.assert_close(metrics["psnr_bicubic"], expected)
    restored = model(bicubic)
    torch.testing.assert_close(
        metrics["psnr_superres"], (-10 * torch.log10((restored - x).pow(2).flatten(1).mean(1))).mean()
    )
    # the denoising AE reports through the same code under its own names
    assert set(logged_metrics(DenoisingAutoencoder(**TINY), x)) == {
        "psnr_denoised",
        "ssim_denoised",
        "psnr_noisy",
        "ssim_noisy",
    }


@pytest.mark.parametrize("corruption", ["gaussian", "masking", "salt_and_pepper"])
def test_denoising_test_metrics_are_the_same_whatever_the_batch_size_or_the_model(
    corruption: str, tmp_path: Path
) -> None:
    # Before, a test batch's noise came from a generator seeded by the batch's number: test/psnr_noisy moved with the
    # batch size (and the number of GPUs), and the same image got other noise in another batch.
    x, labels = images(48)
    data = TensorDataset(x, labels, torch.arange(48))
    small, large = (DenoisingAutoencoder(latent_dim=4, hidden_dims=[h], corruption=corruption) for h in (16, 32))
    results = []
    for model, batch_size in ((small, 8), (small, 48), (large, 12)):
        trainer = make_trainer(tmp_path)
        results.append(trainer.test(model, DataLoader(data, batch_size=batch_size), verbose=False)[0])
    noisy = [result["test/psnr_noisy"] for result in results]
    assert noisy[0] == pytest.approx(noisy[1], abs=1e-4) and noisy[0] == pytest.approx(noisy[2], abs=1e-4)
    assert results[0]["test/ssim_noisy"] == pytest.approx(results[1]["test/ssim_noisy"], abs=1e-4)
    assert results[0]["test/psnr_denoised"] == pytest.approx(results[1]["test/psnr_denoised"], abs=1e-4)
    model = DenoisingAutoencoder(**TINY, corruption=corruption)
    first, again = model.degrade(x[:4], torch.arange(4)), model.degrade(x[2:4], torch.arange(2, 4))
    torch.testing.assert_close(first[2:], again)  # an image's copy is its own, whatever else the batch holds
    other_index = model.degrade(x[:1], torch.tensor([1]))  # the index, not the image, picks the noise
    assert not torch.equal(first[:1], other_index) and not torch.equal(model.degrade(x[:4]), first)  # training: fresh


def test_validation_scores_each_image_on_its_own_fixed_noise_while_training_noise_stays_fresh(tmp_path: Path) -> None:
    # The validation noise was drawn from the step, batch and rank: with frozen weights val/loss moved between epochs
    # (548.091, then 548.043), so ModelCheckpoint(monitor="val/loss") compared epochs on different noise.
    x, labels = images(32)
    data = TensorDataset(x, labels, torch.arange(32))
    losses = []

    class RecordValLoss(Callback):
        def on_validation_epoch_end(self, trainer, pl_module) -> None:
            if not trainer.sanity_checking:
                losses.append(trainer.callback_metrics["val/loss"].item())

    model = DenoisingAutoencoder(**TINY, optimizer=partial(torch.optim.SGD, lr=0.0))  # the weights stay as they are
    trainer = make_trainer(tmp_path, max_epochs=3, limit_val_batches=None, callbacks=[RecordValLoss()])
    trainer.fit(model, DataLoader(data, batch_size=8), DataLoader(data, batch_size=8))
    (whole,) = make_trainer(tmp_path).validate(model, DataLoader(data, batch_size=32), verbose=False)
    assert losses == [losses[0]] * 3 and whole["val/loss"] == pytest.approx(losses[0], rel=1e-6)  # any batch size
    training = model.train().loss_terms(x, labels, torch.arange(32))["loss"]
    assert training != model.loss_terms(x, labels, torch.arange(32))["loss"]  # training draws fresh noise


def test_the_picture_grid_shows_inputs_outputs_and_originals() -> None:
    model = SuperResolutionAutoencoder(**TINY, scale=2)
    x, labels = images(8)
    grid = visualization.draw_views(model, x, labels, ["reconstructions"], num_images=8, nrow=8)["reconstructions"]
    assert grid.shape == (3, 2 + 3 * 30, 2 + 8 * 30)  # three rows of 28x28 images with 2-pixel gaps
    top, middle, bottom = (grid[0, 2 + 30 * row : 30 * (row + 1), 2:30] for row in range(3))
    torch.testing.assert_close(top, model.degrade(x[:1])[0, 0])
    torch.testing.assert_close(bottom, x[0, 0])
    torch.testing.assert_close(middle, model(model.degrade(x[:1]))[0, 0].detach())


def test_an_image_the_degradation_leaves_exact_caps_its_psnr_rather_than_making_the_mean_infinite() -> None:
    # A constant image survives bicubic down- and up-sampling exactly: psnr_bicubic was +inf for the whole batch.
    model = SuperResolutionAutoencoder(**TINY, scale=2)
    x, _ = images(4)
    x[0] = 0.3
    bicubic = model.degrade(x)
    others = -10 * torch.log10((bicubic[1:] - x[1:]).pow(2).flatten(1).mean(1))
    expected = (PSNR_CAP_DB + others.sum()) / 4
    torch.testing.assert_close(logged_metrics(model, x)["psnr_bicubic"], expected)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"scale": 1}, "scale must be an integer >= 2, got 1"),
        ({"scale": 2.0}, "scale must be an integer >= 2, got 2.0"),
        ({"scale": 3}, "scale=3 must divide the image size 28x28"),
    ],
)
def test_bad_scale_is_an_error_naming_it(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SuperResolutionAutoencoder(**TINY, **kwargs)


@pytest.mark.parametrize(
    "shape, scale, fix",
    [
        ((1, 9, 9), 2, "use a scale that divides both: 3, 9"),
        ((3, 12, 18), 4, "use a scale that divides both: 2, 3, 6"),
        ((3, 7, 9), 2, r"no scale >= 2 divides both 7 and 9: resize the images .* \(e.g. 8x10\)"),
    ],
)
def test_a_scale_that_does_not_divide_the_images_is_refused_naming_the_scales_that_do(
    shape: tuple[int, ...], scale: int, fix: str
) -> None:
    size = "x".join(map(str, shape[1:]))
    with pytest.raises(ValueError, match=rf"^scale={scale} must divide the image size {size}; {fix}$"):
        SuperResolutionAutoencoder(**TINY, input_shape=shape, scale=scale)


@pytest.mark.parametrize("side", [4, 5])
def test_test_reports_ssim_on_images_too_small_for_the_11_pixel_window(side: int, tmp_path: Path) -> None:
    torch.manual_seed(0)
    x = torch.rand(8, 1, side, side)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, torch.zeros(8), torch.arange(8)), 4)
    model = DenoisingAutoencoder(input_shape=(1, side, side), latent_dim=2, hidden_dims=[8])
    (results,) = make_trainer(tmp_path).test(model, loader, verbose=False)
    for name in ("test/ssim", "test/ssim_denoised", "test/ssim_noisy"):
        assert -1 <= results[name] <= 1, name


@pytest.mark.parametrize("corruption", ["gaussian", "masking", "salt_and_pepper"])
def test_the_denoising_test_loss_and_psnr_score_the_same_noisy_images(corruption: str, tmp_path: Path) -> None:
    # One image, squared error: test/loss is its summed squared error, 784 * 10^(-PSNR / 10) of the same output.
    x, labels = images(1)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, labels, torch.arange(1)))
    model = DenoisingAutoencoder(**TINY, reconstruction="mse", corruption=corruption, corruption_level=0.4)
    (results,) = make_trainer(tmp_path).test(model, loader, verbose=False)
    assert results["test/loss"] == pytest.approx(784 * 10 ** (-results["test/psnr_denoised"] / 10), rel=1e-4)


@pytest.mark.parametrize("cls", [DenoisingAutoencoder, SuperResolutionAutoencoder])
def test_bf16_mixed_scores_the_degraded_images_as_32_does(cls: type, tmp_path: Path) -> None:
    # The degraded images are the same float32 images in both: their PSNR and SSIM must not move with the precision
    # (SSIM ran its convolutions in bf16 under autocast: ssim_bicubic moved 0.001 here, ssim_denoised 0.13 on photos).
    x = torch.rand(16, 1, 28, 28, generator=torch.Generator().manual_seed(0)).pow(3)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, torch.zeros(16), torch.arange(16)), 8)
    model, scores = cls(**TINY), {}
    for precision in ("32", "bf16-mixed"):
        (scores[precision],) = make_trainer(tmp_path, precision=precision).test(model, loader, verbose=False)
    for metric in ("psnr", "ssim"):
        name = f"test/{metric}_{cls.degraded_name}"
        assert scores["bf16-mixed"][name] == pytest.approx(scores["32"][name], rel=1e-5), name


@pytest.mark.parametrize("corruption", ["gaussian", "masking", "salt_and_pepper"])
def test_a_test_images_noisy_copy_is_the_same_in_every_precision(corruption: str) -> None:
    # The noise was drawn in the images' dtype: under bf16-true (or 64-true) the same index gave other noise, so
    # test/psnr_noisy moved with the precision (0.0868 against 0.0940 in test/mse_noisy at 32 and bf16-true).
    model = DenoisingAutoencoder(**TINY, corruption=corruption)
    x, indices = images(8)[0], torch.arange(8)
    reference = model.degrade(x, indices)
    for dtype in (torch.bfloat16, torch.float64):
        noisy = model.degrade(x.to(dtype), indices)
        assert noisy.dtype == dtype
        torch.testing.assert_close(noisy.float(), reference, atol=0.02 if dtype == torch.bfloat16 else 1e-6, rtol=0)


@pytest.mark.parametrize("corruption, values", [("masking", [0.0]), ("salt_and_pepper", [0.0, 1.0])])
def test_masking_and_salt_and_pepper_hit_the_given_fraction_of_whole_colour_pixels(
    corruption: str, values: list[float]
) -> None:
    # "the fraction of pixels hit": per channel value it was 1 - 0.7^3 = 66% of the pixels, in colours, at level 0.3
    model = DenoisingAutoencoder(input_shape=(3, 32, 32), corruption=corruption, corruption_level=0.3, **TINY)
    torch.manual_seed(0)
    noisy = model.corrupt(torch.full((64, 3, 32, 32), 0.5))
    hit = noisy.ne(0.5).any(1)
    assert hit.float().mean().item() == pytest.approx(0.3, abs=0.01)
    assert noisy.permute(0, 2, 3, 1)[hit].unique(dim=0).tolist() == [[v, v, v] for v in values]


@pytest.mark.parametrize(
    "corruption, level, message",
    [
        ("gaussian", -0.1, "gaussian noise std must be >= 0, got -0.1"),
        ("masking", 1.0, r"masking fraction must lie in \[0, 1\), got 1.0"),
        ("salt_and_pepper", -0.2, r"salt_and_pepper fraction must lie in \[0, 1\), got -0.2"),
    ],
)
def test_a_bad_corruption_level_is_refused_naming_the_setting(corruption: str, level: float, message: str) -> None:
    # The message named "masking fraction", which no setting is called: the user sets corruption_level
    with pytest.raises(ValueError, match=rf"^corruption_level: the {message}$"):
        DenoisingAutoencoder(**TINY, corruption=corruption, corruption_level=level)
