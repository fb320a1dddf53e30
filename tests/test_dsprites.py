"""dSprites drawn from its factors: the grid, the pictures, the splits and batches, and factors outside the grid."""

from __future__ import annotations

import re
from pathlib import Path

import lightning as L
import pytest
import torch

from ae_lightning import BetaTCVAE
from datamodules import DSpritesDataModule
from datamodules.dsprites import FACTORS, NUM_IMAGES, factors_to_index, index_to_factors, render


def factors(**values: int) -> torch.Tensor:
    """One row of grid indices, mid-grid unless given."""
    row = {"shape": 0, "scale": 5, "orientation": 0, "position_x": 16, "position_y": 16} | values
    return torch.tensor([[row[name] for name in FACTORS]])


def center_of_mass(image: torch.Tensor) -> tuple[float, float]:
    rows, cols = image[0].nonzero(as_tuple=True)
    return cols.float().mean().item(), rows.float().mean().item()


def test_the_published_grid_and_its_indices() -> None:
    assert NUM_IMAGES == 737_280 == 3 * 6 * 40 * 32 * 32
    index = torch.tensor([0, 1, 32, 1024, 40 * 1024, NUM_IMAGES - 1])
    grid = index_to_factors(index)
    assert grid[1].tolist() == [0, 0, 0, 0, 1] and grid[2].tolist() == [0, 0, 0, 1, 0]
    assert grid[3].tolist() == [0, 0, 1, 0, 0] and grid[4].tolist() == [0, 1, 0, 0, 0]
    assert grid[-1].tolist() == [2, 5, 39, 31, 31]
    assert torch.equal(factors_to_index(grid), index)


def test_pictures_follow_their_factors() -> None:
    images = render(torch.cat([factors(shape=s) for s in range(3)]))
    assert images.shape == (3, 1, 64, 64) and set(images.unique().tolist()) == {0.0, 1.0}
    areas = images.sum((1, 2, 3))
    assert len(set(areas.tolist())) == 3  # three different shapes
    left, right = render(torch.cat([factors(position_x=0), factors(position_x=31)]))
    assert center_of_mass(right)[0] - center_of_mass(left)[0] == pytest.approx(0.6 * 64, abs=1.0)
    top, bottom = render(torch.cat([factors(position_y=0), factors(position_y=31)]))
    assert center_of_mass(bottom)[1] > center_of_mass(top)[1] + 30
    small, large = render(torch.cat([factors(scale=0), factors(scale=5)])).sum((1, 2, 3))
    assert large / small == pytest.approx(4.0, rel=0.15)  # twice the scale, four times the area
    # an ellipse turned by about 90 degrees: its long axis goes from the columns to the rows
    flat, upright = render(torch.cat([factors(shape=1), factors(shape=1, orientation=10)]))
    assert flat.sum(1).count_nonzero() > upright.sum(1).count_nonzero()
    assert torch.equal(*render(torch.cat([factors(shape=2), factors(shape=2, orientation=39)])))  # 0 and 2 pi
    assert render(torch.tensor([[2, 5, 20, 0, 31]]))[..., [0, -1], :].sum() == 0  # nothing leaves the picture


def test_factors_of_any_integer_dtype_draw_the_same_pictures_and_booleans_are_refused() -> None:
    """Grid indices of int8, int16 or uint8 (compact factor arrays) failed in ``render`` with an IndexError, uint8 taken
    as a mask; booleans passed the check and failed the same way."""
    grid = torch.cat([factors(), factors(shape=2, scale=0, orientation=39, position_x=3, position_y=31)])
    for dtype in (torch.uint8, torch.int8, torch.int16, torch.int32):
        assert torch.equal(render(grid.to(dtype)), render(grid)), dtype
    with pytest.raises(ValueError, match=r"^dSprites factors are integer grid indices, got torch.bool$"):
        render(grid.bool())


@pytest.mark.parametrize(
    "row, message",
    [
        ({"orientation": 40}, r"dSprites factor orientation=40 \(row 0\) is outside the grid: orientation takes 0..39"),
        ({"shape": 3}, r"dSprites factor shape=3 \(row 0\) is outside the grid: shape takes 0..2"),
        ({"position_y": -1}, r"dSprites factor position_y=-1 .* position_y takes 0..31"),
    ],
)
def test_a_factor_outside_the_grid_is_refused_naming_it(row: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        render(factors(**row))
    with pytest.raises(ValueError, match=message):
        factors_to_index(factors(**row))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"fixed_factors": {"scale": 6}}, r"dSprites factor scale=6 is outside the grid: scale takes 0..5"),
        ({"fixed_factors": {"colour": 0}}, r"fixed_factors names 'colour', which is not a dSprites factor"),
        ({"num_samples": 1_000_000}, r"num_samples must be an integer in \[3, 737280\], got 1000000"),
        ({"fixed_factors": {"shape": 2}, "num_samples": 300_000}, r"num_samples must be an integer in \[3, 245760\]"),
        ({"val_fraction": 0.6, "test_fraction": 0.5}, r"val_fraction \+ test_fraction must be < 1"),
        ({"test_fraction": None}, r"test_fraction must lie in \(0, 1\), got None"),  # a TypeError from adding None
        ({"fixed_factors": {"shape": 2}, "classes": [0]}, r"fixes shape=2, which classes \[0\] leave out"),
    ],
)
def test_bad_settings_are_refused_naming_them(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        DSpritesDataModule(**kwargs)


def test_classes_that_leave_a_split_empty_are_named() -> None:
    data = DSpritesDataModule(num_samples=20, val_fraction=0.05, test_fraction=0.05, classes=[2], seed=0)
    with pytest.raises(ValueError, match=r"classes \[2\] leave the (validation|training) split empty \(num_samples 20"):
        data.setup("fit")


def test_splits_cover_the_grid_without_overlap() -> None:
    data = DSpritesDataModule(val_fraction=0.01, test_fraction=0.02)
    data.setup()
    sizes = {split: data.split_size(split) for split in ("train", "val", "test")}
    assert sum(sizes.values()) == NUM_IMAGES and sizes["val"] == 7373 and sizes["test"] == 14746
    every = torch.cat(list(data.grid_indices.values()))
    assert len(every.unique()) == NUM_IMAGES
    hearts = DSpritesDataModule(fixed_factors={"shape": 2}, num_samples=500)
    assert (hearts.factors("train")[:, 0] == 2).all() and hearts.factors("train").shape == (490, 5)


def test_batches_are_the_pictures_of_the_split_factors() -> None:
    data = DSpritesDataModule(batch_size=32, num_samples=400, val_fraction=0.1, test_fraction=0.1)
    x, labels, indices = next(iter(data.train_dataloader()))
    assert x.shape == (32, 1, 64, 64) and labels.dtype == torch.int64
    grid = data.factors("train")[indices]
    assert torch.equal(labels, grid[:, 0])  # the label is the shape
    assert torch.equal(x, render(grid))
    first, again = next(iter(data.test_dataloader())), next(iter(data.test_dataloader()))
    assert torch.equal(first[0], again[0])  # evaluation batches repeat
    # A first test batch samples the grid (several shapes), not the first shape at its smallest scales.
    eight = DSpritesDataModule(batch_size=8, num_samples=400, val_fraction=0.1, test_fraction=0.1)
    shapes = eight.factors("test")[next(iter(eight.test_dataloader()))[2]][:, 0]
    assert len(shapes.unique()) > 1, shapes


def test_a_model_trains_and_tests_on_it(tmp_path: Path) -> None:
    torch.manual_seed(0)
    data = DSpritesDataModule(batch_size=16, num_samples=200, val_fraction=0.1, test_fraction=0.1)
    model = BetaTCVAE(input_shape=data.input_shape, latent_dim=4, hidden_dims=[16], nll_samples=2)
    trainer = L.Trainer(
        accelerator="cpu", max_epochs=1, limit_train_batches=3, limit_val_batches=1, limit_test_batches=1,
        logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        default_root_dir=tmp_path,
    )  # fmt: skip
    trainer.fit(model, datamodule=data)
    assert model.dataset_size == 160  # read from the training split
    trainer.test(model, datamodule=data, verbose=False)
    assert torch.isfinite(trainer.callback_metrics["test/tc"])


def test_ae_lightning_test_reports_disentanglement_on_dsprites(tmp_path: Path) -> None:
    from tiny_runs import run_cli

    ckpt_args = ["--config", "configs/beta_tcvae.yaml", "--data.num_samples", "300", "--data.val_fraction", "0.1",
                 "--data.test_fraction", "0.1", "--model.init_args.hidden_dims", "[16]", "--model.init_args.latent_dim",
                 "3", "--model.init_args.nll_samples", "2", "--trainer.default_root_dir", str(tmp_path),
                 "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
                 "--trainer.callbacks.num_points", "300", "--trainer.callbacks.num_votes", "20"]  # fmt: skip
    fit = run_cli("fit", *ckpt_args, "--trainer.max_steps", "3")
    checkpoint = next(Path(fit.trainer.log_dir).rglob("*.ckpt"))
    tested = run_cli("test", *ckpt_args, "--ckpt_path", str(checkpoint))
    logged = tested.trainer.callback_metrics
    for name in ("mig", "sap", "dci_disentanglement", "dci_completeness", "dci_informativeness", "beta_vae"):
        assert 0 <= logged[f"test/{name}"] <= 1, name
    assert (Path(tested.trainer.log_dir) / "traversals.png").is_file()


def test_evaluate_script_reports_disentanglement_and_draws_traversals(tmp_path: Path, monkeypatch) -> None:
    import importlib.util

    from tiny_runs import ROOT, run_cli

    fit = run_cli("fit", "--config", "configs/dip_vae.yaml", "--data.num_samples", "300", "--data.val_fraction", "0.1",
                  "--data.test_fraction", "0.1", "--data.classes", "[1, 2]", "--model.init_args.hidden_dims", "[16]",
                  "--model.init_args.latent_dim", "3", "--trainer.default_root_dir", str(tmp_path),
                  "--trainer.max_steps", "2", "--trainer.enable_progress_bar", "false")  # fmt: skip
    assert (fit.datamodule.factors("train")[:, 0] > 0).all() and (fit.datamodule.factors("test")[:, 0] == 0).any()
    checkpoint = next(Path(fit.trainer.log_dir).rglob("*.ckpt"))
    spec = importlib.util.spec_from_file_location("evaluate", ROOT / "scripts" / "evaluate.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    scores = script.main([str(checkpoint), "--metrics", "mse", "--disentanglement", "mig", "dci",
                          "--disentanglement_points", "300", "--plots", str(tmp_path / "pictures"),
                          "--views", "reconstructions", "--tsne_points", "8"])  # fmt: skip
    assert set(scores) == {"mse", "mig", "dci_disentanglement", "dci_completeness", "dci_informativeness"}
    assert (tmp_path / "pictures" / "traversals.png").is_file()
    common = [str(checkpoint), "--metrics", "mse", "--disentanglement_points", "300"]
    assert {"mig", "sap", "dci_disentanglement"} <= set(script.main([*common, "--disentanglement"]))  # the flag alone
    assert set(script.main([*common[:-2], "--disentanglement", "none"])) == {"mse"}  # no points: no metric uses them
    # fid needs a feature classifier of these data: the error's command trains it where the script looks for it.
    monkeypatch.setenv("AE_LIGHTNING_CACHE", str(tmp_path / "cache"))
    fid = [str(checkpoint), "--metrics", "fid", "--fid_samples", "40", "--disentanglement", "none"]
    with pytest.raises(FileNotFoundError) as error:
        script.main(fid)
    hint = re.search(r"`python scripts/train_feature_classifier.py (.*)`", str(error.value)).group(1).split()
    spec = importlib.util.spec_from_file_location("train", ROOT / "scripts" / "train_feature_classifier.py")
    train = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(train)
    assert train.main([*hint, "--epochs", "1", "--accelerator", "cpu"]).dataset == "dSprites"
    assert set(script.main(fid)) == {"fid"}


def test_a_dsprites_run_resumes_and_refuses_a_resume_on_other_data_settings(tmp_path: Path) -> None:
    from tiny_runs import run_cli, tiny_args

    from ae_lightning.cli import ConfigError

    args = tiny_args("beta_tcvae", tmp_path / "unused", tmp_path / "run", "--trainer.limit_val_batches", "1",
                     "--images.every_n_epochs", "0")  # fmt: skip
    run_cli("fit", *args, "--trainer.max_steps", "3")
    checkpoint = next((tmp_path / "run").rglob("last.ckpt"))
    resumed = run_cli("fit", *args, "--trainer.max_steps", "6", "--ckpt_path", str(checkpoint))
    assert resumed.trainer.global_step == 6
    for setting, message in [
        (["--data.seed", "7"], r"reached with --data.seed 42, this run has 7"),
        (["--data.num_samples", "500"], r"reached with the number of training samples 320, this run has 400"),
        (["--data.fixed_factors", "{shape: 1}"], r"training data's content \(fingerprint\) \d+, this run has \d+"),
    ]:
        with pytest.raises(ConfigError, match=message):
            run_cli("fit", *args, *setting, "--trainer.max_steps", "6", "--ckpt_path", str(checkpoint))


@pytest.mark.parametrize(
    ("fixed_factors", "latent_dim", "metric", "message"),
    [
        ({"shape": 0, "scale": 5, "orientation": 0, "position_x": 16}, 3, "beta_vae",
         "beta_vae .* needs >= 2 varying factors; here only position_y varies .*fixed_factors"),
        ({"shape": 2}, 1, "mig", "MIG compares the two most informative code dimensions: it needs >= 2, got 1"),
    ],
)  # fmt: skip
def test_the_disentanglement_callback_refuses_what_it_cannot_compute_before_the_test_loop(
    tmp_path: Path, fixed_factors: dict, latent_dim: int, metric: str, message: str
) -> None:
    from lightning.pytorch.callbacks import Callback

    from ae_lightning import VAE
    from ae_lightning.training.disentanglement import DisentanglementMetrics

    class CountBatches(Callback):
        batches = 0

        def on_test_batch_start(self, *args: object) -> None:
            self.batches += 1

    counter = CountBatches()
    metrics = DisentanglementMetrics([metric], num_points=100, num_votes=10, traversal_images=0)
    trainer = L.Trainer(
        accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
        default_root_dir=tmp_path, callbacks=[metrics, counter],
    )  # fmt: skip
    model = VAE(input_shape=(1, 64, 64), latent_dim=latent_dim, hidden_dims=[8])
    data = DSpritesDataModule(num_samples=32, fixed_factors=fixed_factors, val_fraction=0.1, test_fraction=0.1)
    with pytest.raises(ValueError, match=message):
        trainer.test(model, datamodule=data, verbose=False)
    assert counter.batches == 0  # refused before the test loop, whose results would otherwise be lost


def test_numpy_numbers_are_taken_as_fixed_factors() -> None:
    """As every datamodule takes NumPy numbers: ``shape=np.int64(2)`` was refused as "outside the grid 0..2"."""
    import numpy as np

    data = DSpritesDataModule(fixed_factors={"shape": np.int64(2)}, num_samples=50, val_fraction=0.1, test_fraction=0.1)
    assert data.hparams.fixed_factors == {"shape": 2} and (data.factors("train")[:, 0] == 2).all()


def test_fractions_that_leave_no_training_image_are_named() -> None:
    data = DSpritesDataModule(num_samples=3, val_fraction=0.5, test_fraction=0.4)
    message = r"val_fraction and test_fraction leave the training split empty \(num_samples 3, val_fraction 0.5, test"
    with pytest.raises(ValueError, match=message):
        data.setup("fit")


ONE_IMAGE = r"^fixed_factors .* leave only 1 of the grid.s images, but training, validation and test need one each"


@pytest.mark.parametrize(
    "fixed_factors, num_samples, message",
    [
        ({"shape": 1.0}, None, r"^dSprites factor shape=1.0 is not an integer grid index: shape takes 0..2$"),
        ({"position_x": "3"}, None, r"^dSprites factor position_x='3' is not an integer grid index: position_x takes"),
        ({"scale": True}, None, r"^dSprites factor scale=True is not an integer grid index: scale takes 0..5$"),
        (dict.fromkeys(FACTORS, 0), None, ONE_IMAGE),
        (dict.fromkeys(FACTORS, 0), 3, ONE_IMAGE),
    ],
)
def test_fixed_factors_refused_for_what_is_wrong_with_them(
    fixed_factors: dict, num_samples: int | None, message: str
) -> None:
    """A value inside the grid but not an integer (1.0, '3', True) was refused as "outside the grid: shape takes
    0..2"; all five factors fixed (one image) as "num_samples must be an integer in [3, 1]", or when the splits were
    drawn as "val_fraction and test_fraction leave the training split empty: use smaller fractions"."""
    with pytest.raises(ValueError, match=message):
        DSpritesDataModule(fixed_factors=fixed_factors, num_samples=num_samples).setup("fit")


def test_evaluate_script_refuses_disentanglement_points_that_no_metric_would_use(tmp_path: Path, capsys) -> None:
    from unittest import mock

    from test_evaluation import load_script, refused

    from ae_lightning import VAE
    from ae_lightning.evaluation import driver as evaluation
    from datamodules import MNISTDataModule

    script, checkpoint = load_script("evaluate"), str(tmp_path / "run.ckpt")
    with mock.patch.object(evaluation, "load_checkpoint", side_effect=AssertionError("loaded the checkpoint")):
        for chosen in ("beta_vae factor_vae", "none"):
            message = refused(script, [checkpoint, "--disentanglement_points", "300", "--disentanglement",
                                       *chosen.split()], capsys)  # fmt: skip
            assert message == (
                f"--disentanglement_points applies to MIG, SAP and DCI, which --disentanglement "
                f"{chosen} leaves out; add one of mig, sap, dci or drop --disentanglement_points"
            )
    mnist = MNISTDataModule(data_dir=str(tmp_path))
    with (
        mock.patch.object(evaluation, "load_checkpoint", return_value=(VAE(latent_dim=2, hidden_dims=[4]), mnist)),
        mock.patch.object(evaluation, "evaluate", side_effect=AssertionError("scored")),
        pytest.raises(ValueError, match=re.escape("--disentanglement_points needs data with known factors (dSprites)")),
    ):
        script.main([checkpoint, "--metrics", "mse", "--disentanglement_points", "300"])
