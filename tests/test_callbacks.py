"""The image callback: what it draws, where it sends it (TensorBoard-style logger or PNG files), when, from YAML."""

from __future__ import annotations

import contextlib
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from unittest import mock

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import Callback, EarlyStopping
from lightning.pytorch.callbacks import EMAWeightAveraging as LightningEMA
from lightning.pytorch.loggers import CSVLogger, Logger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torchvision.io import read_image

from ae_lightning import VAE, Autoencoder, MultVAE
from ae_lightning.cli import AutoencoderCLI, ConfigError
from ae_lightning.evaluation import visualization
from ae_lightning.training.callbacks import EMAWeightAveraging, ImageLogger
from datamodules import InteractionsDataModule, MNISTDataModule

ALL_VIEWS = {"reconstructions", "samples", "interpolations", "latent_map"}


def fit(model: L.LightningModule, data_dir: Path, root: Path, epochs: int, callback: ImageLogger, **trainer: Any):
    trainer = L.Trainer(
        max_epochs=epochs,
        default_root_dir=root,
        callbacks=[callback],
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        **trainer,
    )
    trainer.fit(model, datamodule=MNISTDataModule(data_dir=str(data_dir), batch_size=128))
    return trainer


def png_views(folder: Path) -> dict[str, list[int]]:
    """view -> epochs of the PNG files the callback wrote."""
    written: dict[str, list[int]] = {}
    for path in sorted(folder.glob("*.png")):
        view, epoch = path.stem.split("-epoch=")
        written.setdefault(view, []).append(int(epoch.split("-")[0]))
    return written


def test_without_an_image_logger_pngs_go_to_the_run_directory_every_n_epochs(data_dir: Path, tmp_path: Path) -> None:
    torch.manual_seed(0)
    trainer = fit(
        VAE(latent_dim=4, hidden_dims=[32]), data_dir, tmp_path, 3, ImageLogger(every_n_epochs=2),
        logger=CSVLogger(tmp_path),
    )  # fmt: skip
    images = Path(trainer.log_dir) / "images"
    # epoch index 1 is the 2nd epoch; index 2 the last one, which always draws
    assert png_views(images) == {view: [1, 2] for view in ALL_VIEWS}
    grid = read_image(str(next(images.glob("reconstructions-epoch=2-*.png"))))
    assert grid.shape == (3, 4 * 30 + 2, 8 * 30 + 2)  # 16 images: 2 x (a row of inputs, a row of reconstructions)
    interpolations = read_image(str(next(images.glob("interpolations-epoch=2-*.png"))))
    assert interpolations.shape == (3, 6 * 30 + 2, 10 * 30 + 2)  # 6 pairs: both images and 8 steps each
    latent_map = read_image(str(next(images.glob("latent_map-epoch=2-*.png"))))
    assert latent_map.shape[0] == 3 and latent_map.float().std() > 0


def test_a_model_that_cannot_sample_gets_no_samples_and_naming_them_is_an_error(data_dir: Path, tmp_path: Path) -> None:
    fit(Autoencoder(latent_dim=2, hidden_dims=[32]), data_dir, tmp_path, 1, ImageLogger(), logger=False)
    assert set(png_views(tmp_path / "images")) == ALL_VIEWS - {"samples"}  # no logger: under default_root_dir
    with pytest.raises(ValueError, match="'samples' view needs a generative model, but Autoencoder is not one"):
        fit(Autoencoder(), data_dir, tmp_path / "again", 1, ImageLogger(views=["samples"]), logger=False)


class RecordingWriter:
    """Stands in for TensorBoard's SummaryWriter (TensorBoard itself is optional)."""

    def __init__(self) -> None:
        self.images: list[tuple[str, torch.Tensor, int]] = []

    def add_image(self, tag: str, image: torch.Tensor, global_step: int) -> None:
        self.images.append((tag, image, global_step))


class TensorBoardLikeLogger(Logger):
    name, version = "tb", 0

    def __init__(self) -> None:
        super().__init__()
        self._writer = RecordingWriter()

    @property
    def experiment(self) -> RecordingWriter:
        return self._writer

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        pass

    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        pass


def test_loggers_with_add_image_get_the_images_and_no_pngs_are_written(data_dir: Path, tmp_path: Path) -> None:
    logger = TensorBoardLikeLogger()
    fit(VAE(latent_dim=4, hidden_dims=[32]), data_dir, tmp_path, 2, ImageLogger(views=["samples"]), logger=logger)
    # at the steps Lightning logs each epoch's val metrics at (2 batches an epoch: 1 and 3), not global_step's 2, 4
    assert [(tag, step) for tag, _, step in logger.experiment.images] == [("images/samples", 1), ("images/samples", 3)]
    image = logger.experiment.images[0][1]
    assert image.shape == (3, 8 * 30 + 2, 8 * 30 + 2) and 0 <= image.min() and image.max() <= 1
    assert not list(tmp_path.rglob("*.png"))


def test_images_leave_the_training_randomness_alone(data_dir: Path, tmp_path: Path) -> None:
    weights = []
    for every_n_epochs in (0, 1):  # 0 disables the callback
        torch.manual_seed(0)
        model = VAE(latent_dim=4, hidden_dims=[32])
        fit(model, data_dir, tmp_path / str(every_n_epochs), 2, ImageLogger(every_n_epochs), logger=False)
        weights.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    torch.testing.assert_close(weights[0], weights[1])
    assert (tmp_path / "1" / "images").is_dir() and not (tmp_path / "0" / "images").exists()


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"views": ["recon"]}, r"each of views must be one of 'reconstructions', 'samples', .* got \['recon'\]"),
        ({"every_n_epochs": -1}, "every_n_epochs must be an integer >= 0, got -1"),
        ({"interpolation_steps": 1}, "interpolation_steps must be an integer >= 2, got 1"),
        ({"num_images": 0}, "num_images must be an integer >= 1, got 0"),
    ],
)
def test_bad_arguments_are_errors(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ImageLogger(**kwargs)


def test_a_picture_whose_write_fails_midway_leaves_no_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # the PNG went straight to its final name: a kill or a full disk mid-write left a truncated picture there
    from PIL import Image

    def save_half(image, fp, *args, **kwargs):
        with open(fp, "wb") if isinstance(fp, (str, Path)) else contextlib.nullcontext(fp) as file:
            file.write(b"\x89PNG\r\n\x1a\n half")
        raise OSError("No space left on device")

    monkeypatch.setattr(Image.Image, "save", save_half)
    logger = ImageLogger()
    logger.image_dir = tmp_path / "images"
    with pytest.raises(OSError, match="No space left"):
        logger.log_image(SimpleNamespace(loggers=[]), "images/samples", torch.rand(3, 8, 8), step=1, epoch=0,
                         logged_at=1)  # fmt: skip
    assert not [path for path in tmp_path.rglob("*") if path.is_file()]


def test_drawing_before_any_validation_names_what_is_missing() -> None:
    # torch.cat's "expected a non-empty list of Tensors" before
    with pytest.raises(ValueError, match=r"ImageLogger 'images' has no validation images to draw: .* after one has"):
        ImageLogger().draw(Autoencoder(latent_dim=2, hidden_dims=[8]))


def run_cli(*args: str) -> AutoencoderCLI:
    with mock.patch("sys.argv", ["ae-lightning"]):
        return AutoencoderCLI(args=list(args))


def test_the_command_draws_images_by_default_and_takes_more_image_loggers_from_yaml(
    data_dir: Path, tmp_path: Path
) -> None:
    common = ["--data.data_dir", str(data_dir), "--trainer.max_epochs", "1", "--trainer.enable_progress_bar", "false"]
    cli = run_cli("fit", "--config", "configs/vae.yaml", *common, "--trainer.default_root_dir", str(tmp_path / "a"))
    # TensorBoard, the default logger, takes the pictures.
    events = EventAccumulator(str(cli.trainer.log_dir))
    events.Reload()
    assert {tag.split("/")[-1] for tag in events.Tags()["images"]} == ALL_VIEWS
    image_steps = {event.step for tag in events.Tags()["images"] for event in events.Images(tag)}
    assert image_steps == {event.step for event in events.Scalars("val/loss")}  # pictures beside their epoch's metrics
    csv_logger = ["--trainer.logger", "CSVLogger", "--trainer.logger.save_dir", str(tmp_path / "csv")]
    cli = run_cli("fit", "--config", "configs/vae.yaml", *common, *csv_logger)
    assert set(png_views(Path(cli.trainer.log_dir) / "images")) == ALL_VIEWS  # a logger without images: PNG files

    config = tmp_path / "latent_only.yaml"
    config.write_text(
        "trainer:\n"
        "  callbacks:\n"
        "    - class_path: ae_lightning.training.callbacks.ImageLogger\n"
        "      init_args: {views: [latent_map], latent_map_size: 10}\n"
    )
    cli = run_cli(
        "fit", "--config", "configs/ae.yaml", "--config", str(config), *common,
        "--trainer.default_root_dir", str(tmp_path / "b"), "--images.every_n_epochs", "0", *csv_logger,
    )  # fmt: skip
    assert set(png_views(Path(cli.trainer.log_dir) / "images")) == {"latent_map"}

    cli = run_cli("fit", "--config", "configs/ae.yaml", *common[:2], "--trainer.fast_dev_run", "true",
                  "--trainer.default_root_dir", str(tmp_path / "c"))  # fmt: skip
    assert not list((tmp_path / "c").rglob("*.png"))  # nothing is drawn in fast_dev_run


@pytest.mark.parametrize("settings", [[], ["--trainer.callbacks.every_n_epochs", "2"]], ids=["same", "other"])
def test_the_command_refuses_two_image_loggers_of_one_name_before_any_run_file(
    data_dir: Path, tmp_path: Path, settings: list[str]
) -> None:
    """Beside the ``images`` section, with the same settings (which Lightning refuses with a traceback) or others."""
    root = tmp_path / "refused"
    with pytest.raises(ValueError, match="^2 ImageLoggers are named 'images', so they would overwrite") as e:
        run_cli("fit", "--config", "configs/ae.yaml", "--data.data_dir", str(data_dir), "--trainer.max_epochs", "1",
                "--trainer.default_root_dir", str(root), "--trainer.callbacks+=ImageLogger", *settings)  # fmt: skip
    assert not root.exists()
    assert e.type is ConfigError  # a refused setting: the command exits with 2


def test_the_command_refuses_an_image_logger_before_weight_averaging_before_any_run_file(
    data_dir: Path, tmp_path: Path
) -> None:
    root, ema = tmp_path / "refused", "--trainer.callbacks+=ae_lightning.training.callbacks.EMAWeightAveraging"
    with pytest.raises(ConfigError, match="ImageLogger 'own' comes before EMAWeightAveraging among the trainer's"):
        run_cli("fit", "--config", "configs/ae.yaml", "--data.data_dir", str(data_dir), "--trainer.max_epochs", "1",
                "--trainer.default_root_dir", str(root), "--trainer.callbacks+=ImageLogger",
                "--trainer.callbacks.name", "own", ema)  # fmt: skip
    assert not root.exists()


class StopAtStep(Callback):
    """Stops the run within an epoch, after global step ``step``, as ``max_time`` does."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        trainer.should_stop = trainer.should_stop or trainer.global_step == self.step


def fit_autoencoder(data_dir: Path, batch_size: int = 128, latent_dim: int = 2, **trainer: Any) -> L.Trainer:
    """A small plain autoencoder fitted on the tiny data (220 training images, 20 validation images)."""
    trainer = L.Trainer(enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False, **trainer)
    data = MNISTDataModule(data_dir=str(data_dir), batch_size=batch_size)
    trainer.fit(Autoencoder(latent_dim=latent_dim, hidden_dims=[16]), datamodule=data)
    return trainer


@pytest.mark.parametrize(
    "ended_by, expected",
    [
        ({"max_epochs": 3}, ["epoch=2-step=6"]),
        ({"max_epochs": -1, "max_steps": 6}, ["epoch=2-step=6"]),  # Lightning sets max_epochs to -1 for max_steps
        ({"max_epochs": 3, "callbacks": [EarlyStopping("val/loss", stopping_threshold=1e9)]}, ["epoch=0-step=2"]),
        ({"max_epochs": -1, "max_steps": 5}, ["epoch=2-step=5"]),  # no validation after step 4: the model as it ends
        ({"max_epochs": 3, "callbacks": [StopAtStep(3)]}, ["epoch=1-step=3"]),  # Lightning validates where it stops
    ],
    ids=["max_epochs", "max_steps", "early_stopping", "max_steps_within_an_epoch", "stopped_within_an_epoch"],
)
def test_the_run_s_last_validation_is_drawn_whatever_ends_the_run(
    ended_by: dict, expected: list[str], data_dir: Path, tmp_path: Path
) -> None:
    # 2 batches an epoch; every_n_epochs 5 is never due within these runs, so only the end draws.
    pictures = ImageLogger(every_n_epochs=5, views=["latent_map"], latent_map_size=10)
    settings = {**ended_by, "callbacks": [pictures, *ended_by.get("callbacks", [])]}
    trainer = fit_autoencoder(data_dir, default_root_dir=tmp_path, logger=CSVLogger(tmp_path), **settings)
    written = sorted(path.name for path in (Path(trainer.log_dir) / "images").glob("*.png"))
    assert written == [f"latent_map-{name}.png" for name in expected]


def test_the_last_validation_drawn_at_the_end_lines_up_with_its_metrics(data_dir: Path, tmp_path: Path) -> None:
    logger = TensorBoardLikeLogger()
    pictures = ImageLogger(every_n_epochs=5, views=["latent_map"])
    fit_autoencoder(data_dir, default_root_dir=tmp_path, logger=logger, callbacks=[pictures], max_steps=4)
    # the second validation's metrics are logged at step 3 (see test_loggers_with_add_image_get_the_images_...)
    assert [(tag, step) for tag, _, step in logger.experiment.images] == [("images/latent_map", 3)]


def test_two_image_loggers_keep_their_own_pictures_under_their_own_names(data_dir: Path, tmp_path: Path) -> None:
    big, small = ImageLogger(views=["latent_map"]), ImageLogger(views=["latent_map"], latent_map_size=5, name="small")
    trainer = fit_autoencoder(data_dir, max_epochs=1, default_root_dir=tmp_path, logger=CSVLogger(tmp_path),
                              callbacks=[big, small])  # fmt: skip
    maps = {name: list((Path(trainer.log_dir) / name).glob("*.png")) for name in ("images", "small")}
    assert [len(paths) for paths in maps.values()] == [1, 1]
    assert not torch.equal(read_image(str(maps["images"][0])), read_image(str(maps["small"][0])))  # 20 codes, 5 codes
    logger = TensorBoardLikeLogger()
    two = [ImageLogger(views=["latent_map"]), ImageLogger(views=["latent_map"], name="small")]
    fit_autoencoder(data_dir, max_epochs=1, default_root_dir=tmp_path / "tb", logger=logger, callbacks=two)
    assert sorted(tag for tag, _, _ in logger.experiment.images) == ["images/latent_map", "small/latent_map"]
    with pytest.raises(ValueError, match="2 ImageLoggers are named 'images', so they would overwrite each other's"):
        same = [ImageLogger(), ImageLogger(views=["latent_map"])]
        fit_autoencoder(data_dir, max_epochs=1, default_root_dir=tmp_path / "same", logger=False, callbacks=same)
    assert not (tmp_path / "same" / "images").exists()
    with pytest.raises(ValueError, match="name must be a folder name of letters, digits.*got '../up'"):
        ImageLogger(name="../up")


def test_a_latent_map_needs_two_images_refused_up_front_or_skipped_once(
    data_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with pytest.raises(ValueError, match="latent_map_size must be an integer >= 2, got 1"):
        ImageLogger(latent_map_size=1)
    # A validation pass that yields one image: the fit goes on, with the other pictures and one notice (codes of more
    # than 2 dimensions: PCA's).
    with caplog.at_level("INFO"):
        trainer = fit_autoencoder(
            data_dir, batch_size=1, latent_dim=4, max_epochs=2, limit_train_batches=2, limit_val_batches=1,
            default_root_dir=tmp_path, logger=False, callbacks=[ImageLogger()],
        )  # fmt: skip
    assert trainer.current_epoch == 2
    assert png_views(tmp_path / "images") == {"reconstructions": [0, 1]}  # interpolations too need two images
    notices = [r.message for r in caplog.records if "latent map needs at least 2 validation images" in r.message]
    assert notices == ["ImageLogger: the latent map needs at least 2 validation images, got 1; it is not drawn"]


def test_batches_without_labels_get_an_unlabeled_latent_map(tmp_path: Path) -> None:
    """Mult-VAE's batches carry each user's held-out clicks ``[B, I]`` where images carry labels."""
    lines = [f"u{user},{item},5" for user in range(90) for item in range(user % 7, 60, 5)]
    (tmp_path / "ratings.csv").write_text("\n".join(lines) + "\n")
    data = InteractionsDataModule(str(tmp_path / "ratings.csv"), val_users=20, test_users=20, batch_size=32)
    data.setup("fit")
    trainer = L.Trainer(max_epochs=1, default_root_dir=tmp_path, logger=False, callbacks=[ImageLogger()],
                        enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False)  # fmt: skip
    trainer.fit(MultVAE(input_shape=data.input_shape, latent_dim=4, hidden_dims=[8]), datamodule=data)
    assert png_views(tmp_path / "images") == {"latent_map": [0]}


@pytest.mark.parametrize("name", ["images", "maps"])
def test_a_resume_that_changes_the_views_keeps_the_count_of_validations(
    name: str, data_dir: Path, tmp_path: Path
) -> None:
    """every_n_epochs 2 over 6 epochs draws epochs 1, 3, 5 (the last), also when resumed after 3 with other views."""

    def fit_to(epochs: int, pictures: ImageLogger, checkpoint: Path | None = None) -> L.Trainer:
        trainer = L.Trainer(max_epochs=epochs, default_root_dir=tmp_path, logger=CSVLogger(tmp_path),
                            callbacks=[pictures], enable_progress_bar=False, enable_model_summary=False)  # fmt: skip
        data = MNISTDataModule(data_dir=str(data_dir), batch_size=128)
        trainer.fit(Autoencoder(latent_dim=2, hidden_dims=[16]), datamodule=data, ckpt_path=checkpoint)
        return trainer

    fit_to(3, ImageLogger(every_n_epochs=2, name=name))
    checkpoint = next(tmp_path.rglob("*.ckpt"))
    trainer = fit_to(6, ImageLogger(every_n_epochs=2, views=["latent_map"], name=name), checkpoint)
    assert png_views(Path(trainer.log_dir) / name) == {"latent_map": [3, 5]}


def test_the_reconstruction_grid_shows_all_num_images_the_last_row_filled_with_white() -> None:
    torch.manual_seed(0)
    images = torch.rand(12, 1, 28, 28)
    images[11] = 0  # the 12th: black
    grid = visualization.draw_views(
        Autoencoder(latent_dim=2, hidden_dims=[8]), images, torch.zeros(12, dtype=torch.long), ["reconstructions"],
        num_images=12, nrow=8,
    )["reconstructions"]  # fmt: skip
    assert grid.shape == (3, 4 * 30 + 2, 8 * 30 + 2)  # 2 rows of inputs, each above its reconstructions
    assert (grid[:, 62:90, 92:120] == 0).all()  # the 12th input: 2nd row of inputs, 4th place
    assert (grid[:, 62:90, 152:240] == 1).all() and (grid[:, 92:120, 152:240] == 1).all()  # 4 empty places, white


@pytest.mark.parametrize(
    "ended_by", [{"max_epochs": 1}, {"max_epochs": -1, "max_steps": 8}], ids=["at_validation", "at_train_end"]
)
def test_with_weight_averaging_the_pictures_show_the_average_that_validation_saw(
    ended_by: dict, data_dir: Path, tmp_path: Path
) -> None:
    # the command's order: the config's callbacks (the photo configs' EMA), then the images section
    logger, pictures = TensorBoardLikeLogger(), ImageLogger(every_n_epochs=5, views=["reconstructions"])
    torch.manual_seed(0)
    trainer = fit_autoencoder(data_dir, default_root_dir=tmp_path, logger=logger,
                              callbacks=[EMAWeightAveraging(decay=0.99), pictures], **ended_by)  # fmt: skip
    # the run's last validation ends it (2 batches an epoch), so after fit the model holds the average it validated
    [(_, logged, _)] = logger.experiment.images
    torch.testing.assert_close(logged, pictures.draw(trainer.lightning_module)["reconstructions"], rtol=0, atol=0)
    with pytest.raises(ValueError, match="ImageLogger 'images' comes before EMAWeightAveraging among the trainer's"):
        fit_autoencoder(data_dir, max_epochs=1, default_root_dir=tmp_path / "refused", logger=False,
                        callbacks=[ImageLogger(), LightningEMA()])  # fmt: skip


def ema_fit(data_dir: Path, callback: Callback, accelerator: str = "cpu") -> tuple[Autoencoder, L.Trainer]:
    torch.manual_seed(0)
    model = Autoencoder(latent_dim=2, hidden_dims=[16])
    trainer = L.Trainer(
        max_epochs=2,
        accelerator=accelerator,
        devices=1,
        callbacks=[callback],
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
    )
    trainer.fit(model, datamodule=MNISTDataModule(data_dir=str(data_dir), batch_size=64))
    return model, trainer


def test_the_projects_ema_averages_as_lightnings_does(data_dir: Path) -> None:
    # the project's EMAWeightAveraging differs from Lightning's only in where it keeps the average
    ours, _ = ema_fit(data_dir, EMAWeightAveraging(decay=0.9))
    lightnings, _ = ema_fit(data_dir, LightningEMA(decay=0.9))
    trained, _ = ema_fit(data_dir, Callback())
    for name, value in lightnings.state_dict().items():
        assert torch.equal(ours.state_dict()[name], value), name
    assert any(not torch.equal(trained.state_dict()[name], value) for name, value in ours.state_dict().items())


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_the_ema_average_is_kept_on_the_training_gpu(data_dir: Path) -> None:
    # Lightning's builds it in setup, before the model moves: on the CPU, updated from a copy of every weight per step
    callback = EMAWeightAveraging(decay=0.9)
    ema_fit(data_dir, callback, accelerator="gpu")
    assert {p.device.type for p in callback._average_model.parameters()} == {"cuda"}


def test_a_hung_run_fails_its_test_with_its_output_and_its_whole_session_is_killed(tmp_path: Path) -> None:
    # tiny_runs.run_or_fail_if_hung, which the DDP and SIGTERM tests use: a hung run's other ranks must not outlive it.
    from tiny_runs import run_or_fail_if_hung

    pid_file = tmp_path / "child.pid"
    with pytest.raises(pytest.fail.Exception, match="did not end in 2 s:\nstarted"):
        run_or_fail_if_hung(["bash", "-c", f"sleep 60 & echo $! > {pid_file}; echo started; wait"], timeout=2)
    status = Path(f"/proc/{pid_file.read_text().strip()}/status")
    assert not status.exists() or "zombie" in status.read_text()


@pytest.mark.parametrize("channels", [2, 4, 5])
def test_images_of_other_than_1_or_3_channels_are_drawn_as_their_channels_side_by_side_in_gray(
    channels: int, tmp_path: Path
) -> None:
    # 2 channels became a gray PNG with transparency, 4 an RGBA one, 5 a TypeError from PIL
    images = torch.arange(channels).div(channels - 1).view(1, channels, 1, 1).expand(4, channels, 6, 6)
    model = Autoencoder(input_shape=(channels, 6, 6), latent_dim=2, hidden_dims=[8])
    pictures = visualization.draw_views(model, images, torch.zeros(4, dtype=torch.long), num_images=1)
    for view, picture in pictures.items():
        gray = view == "latent_map" or ((picture[0] == picture[1]).all() and (picture[0] == picture[2]).all())
        assert picture.shape[0] == 3 and gray, view
        visualization.save_png(picture, tmp_path / f"{view}.png")
        assert read_image(str(tmp_path / f"{view}.png")).shape == picture.shape, view
    grid = pictures["reconstructions"]
    assert grid.shape[2] == 2 + channels * 6 + 2  # one image: its channels side by side
    for channel in range(channels):
        assert (grid[:, 2:8, 2 + 6 * channel : 8 + 6 * channel] == channel / (channels - 1)).all()
