"""Lightning's Trainer flags through ``ae-lightning``: each honoured as Lightning documents it, or refused before any
run folder is written, naming the flag."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint, ProgressBar
from tiny_runs import run_cli, tiny_args

from ae_lightning.cli import ConfigError
from ae_lightning.training.callbacks import ImageLogger

BRIEF = ["--trainer.limit_train_batches", "2", "--trainer.limit_val_batches", "1", "--images.every_n_epochs", "0"]


@pytest.mark.parametrize("config", ["ae", "aae"])  # automatic and manual optimization
def test_enable_checkpointing_false_trains_and_writes_no_checkpoint(config: str, data_dir: Path, tmp_path: Path):
    cli = run_cli("fit", *tiny_args(config, data_dir, tmp_path, *BRIEF, "--trainer.enable_checkpointing", "false"))
    assert cli.trainer.state.finished and cli.trainer.global_step == 4
    assert not any(isinstance(c, ModelCheckpoint) for c in cli.trainer.callbacks)
    assert not list(tmp_path.rglob("*.ckpt")) and list(tmp_path.rglob("config.yaml"))


def test_checkpoint_settings_in_a_run_without_checkpointing_are_refused_before_any_file(data_dir: Path, tmp_path):
    extra = ["--trainer.enable_checkpointing", "false", "--checkpoint.save_top_k", "3"]
    with pytest.raises(ConfigError, match=r"--checkpoint.save_top_k 3: a run without checkpointing .* writes none"):
        run_cli("fit", *tiny_args("ae", data_dir, tmp_path / "run", *BRIEF, *extra))
    assert not (tmp_path / "run").exists()


def test_barebones_drops_the_commands_own_logger_checkpoint_and_progress_bar(data_dir: Path, tmp_path: Path):
    extra = ["--trainer.barebones", "true", "--trainer.enable_progress_bar", "null"]
    cli = run_cli("fit", *tiny_args("ae", data_dir, tmp_path, *BRIEF, *extra))
    assert cli.trainer.state.finished and cli.trainer.barebones and cli.trainer.logger is None
    assert not any(isinstance(c, (ModelCheckpoint, ProgressBar)) for c in cli.trainer.callbacks)
    assert not list(tmp_path.rglob("*.ckpt"))


@pytest.mark.parametrize(
    "logger",
    [["--trainer.logger", "CSVLogger"], ["--trainer.logger.version", "3"], ["--trainer.logger", "[CSVLogger]"],
     ["--trainer.logger+=CSVLogger"]],
    ids=["class", "version", "list", "appended"],
)  # fmt: skip
def test_barebones_refuses_a_logger_the_user_chose_before_any_file(logger: list[str], data_dir: Path, tmp_path: Path):
    with pytest.raises(ConfigError, match=r"--trainer.logger .*Logger: --trainer.barebones true runs without a logger"):
        run_cli("fit", *tiny_args("ae", data_dir, tmp_path / "run", *BRIEF, "--trainer.barebones", "true", *logger))
    assert not (tmp_path / "run").exists()


def test_trainer_clipping_of_a_manual_model_is_refused_with_the_models_own_clip_and_algorithm(data_dir, tmp_path):
    clip = ["--trainer.gradient_clip_val", "0.5", "--trainer.gradient_clip_algorithm", "value"]
    message = r"set --model.init_args.gradient_clip_val 0.5 --model.init_args.gradient_clip_algorithm value instead"
    with pytest.raises(ConfigError, match=message):
        run_cli("fit", *tiny_args("aae", data_dir, tmp_path, *BRIEF, *clip))
    assert not any(tmp_path.rglob("config.yaml"))


def test_barebones_leaves_the_commands_pictures_out(data_dir: Path, tmp_path: Path):
    extra = ["--trainer.limit_train_batches", "2", "--trainer.limit_val_batches", "1", "--trainer.barebones", "true",
             "--trainer.enable_progress_bar", "null"]  # fmt: skip
    cli = run_cli("fit", *tiny_args("ae", data_dir, tmp_path, *extra))  # the images section at its defaults
    assert cli.trainer.state.finished and not any(isinstance(c, ImageLogger) for c in cli.trainer.callbacks)
    assert not list(tmp_path.rglob("*.png"))


def test_barebones_refuses_picture_settings_before_any_file(data_dir: Path, tmp_path: Path):
    extra = ["--trainer.barebones", "true", "--images.num_images", "4"]
    with pytest.raises(ConfigError, match=r"--images.num_images 4: a --trainer.barebones true run .* no pictures"):
        run_cli("fit", *tiny_args("ae", data_dir, tmp_path / "run", *extra))
    assert not (tmp_path / "run").exists()


def test_overfit_batches_trains_the_same_first_batches_every_epoch(data_dir: Path, tmp_path: Path) -> None:
    from unittest import mock

    from ae_lightning import Autoencoder

    seen: list[tuple[int, list[int]]] = []

    def record(model, batch, batch_idx) -> None:
        seen.append((model.current_epoch, batch[2].tolist()))

    extra = ["--trainer.overfit_batches", "2", "--trainer.max_epochs", "3", "--images.every_n_epochs", "0"]
    with mock.patch.object(Autoencoder, "on_train_batch_start", record):
        run_cli("fit", *tiny_args("ae", data_dir, tmp_path, *extra))
    first = list(range(16)), list(range(16, 32))  # batches of 16, in split order
    assert seen == [(epoch, rows) for epoch in range(3) for rows in first]


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_an_accelerator_this_machine_lacks_is_refused_in_one_line_before_any_file(data_dir: Path, tmp_path: Path):
    # it was Lightning's MisconfigurationException traceback, with exit status 1
    with pytest.raises(ConfigError, match=r"^--trainer.accelerator gpu, --trainer.devices auto, --trainer.strategy "
                       r"auto: .*--trainer.accelerator cpu runs anywhere"):  # fmt: skip
        run_cli("fit", *tiny_args("ae", data_dir, tmp_path / "run", "--trainer.accelerator", "gpu"))
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "setting, message",
    [
        (["--trainer.max_epochs", "-3"], r"^--trainer.max_epochs -3: `max_epochs` must be .* You passed in -3.$"),
        (["--trainer.strategy", "ddpp"], r"^--trainer.strategy ddpp: You selected an invalid strategy name"),
        (["--trainer.accelerator", "gpuu"], r"^--trainer.accelerator gpuu: You selected an invalid accelerator name"),
        (["--trainer.accelerator", "cpu", "--trainer.devices", "-2"], r"^--trainer.devices -2: `devices` selected "),
        (["--trainer.max_time", "5min"], r"^the Trainer's settings: `Timer\(duration='5min'\)` is not a valid"),
    ],
    ids=["max-epochs", "strategy", "accelerator", "devices", "max-time"],
)
def test_a_trainer_setting_lightning_refuses_is_named_as_a_setting_before_any_file(
    setting: list[str], message: str, data_dir: Path, tmp_path: Path
) -> None:
    # a strategy or accelerator Lightning does not know was printed as bad data (exit status 1) without the option,
    # --trainer.devices -2 was a TypeError's traceback, and --trainer.max_epochs -3 was "the Trainer's settings"
    with pytest.raises(ConfigError, match=message) as refused:
        run_cli("fit", *tiny_args("ae", data_dir, tmp_path / "run", *setting))
    assert "Choose devices" not in str(refused.value)
    assert not (tmp_path / "run").exists()
