"""Logging settings the command honours or refuses: a WandbLogger's ``dir``, name and ``resume``, the image schedule on
runs that validate every n epochs, the prediction stream's ``chunk_bytes``; the warnings and lines a run shows."""

from __future__ import annotations

import inspect
import re
import socket
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
import yaml
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import WandbLogger
from litdata import StreamingDataset
from tiny_runs import build_cli, run_cli, tiny_args
from torch.utils.data import DataLoader, TensorDataset

from ae_lightning import Autoencoder
from ae_lightning.cli import ConfigError
from ae_lightning.training.prediction import PredictionWriter

QUICK = ["--trainer.limit_train_batches", "2", "--trainer.limit_val_batches", "2"]


def test_a_wandb_loggers_dir_is_where_its_run_goes(data_dir: Path, tmp_path: Path, monkeypatch) -> None:
    wandb = pytest.importorskip("wandb")
    for name, value in {"WANDB_MODE": "offline", "WANDB_DIR": str(tmp_path / "env"), "WANDB_SILENT": "true"}.items():
        monkeypatch.setenv(name, value)
    logger = ["--trainer.logger", "WandbLogger", "--trainer.logger.project", "p"]
    root, chosen = tmp_path / "root", tmp_path / "chosen"
    cli = run_cli("fit", *tiny_args("ae", data_dir, root, *logger, "--trainer.logger.dir", str(chosen), *QUICK))
    run_dir = Path(cli.trainer.logger.experiment.dir).parent
    wandb.finish()
    assert run_dir.parent == chosen / "wandb" and not (root / "wandb").exists()
    run_folder = chosen / "p" / cli.trainer.logger.version  # config and checkpoints beside it, as with save_dir
    assert (run_folder / "checkpoints" / "last.ckpt").is_file() and (run_folder / "config.yaml").is_file()
    with pytest.raises(ConfigError, match=rf"--trainer.logger.save_dir {tmp_path / 'a'} and --trainer.logger.dir"):
        build_cli(*tiny_args("ae", data_dir, root, *logger, "--trainer.logger.save_dir", str(tmp_path / "a"),
                             "--trainer.logger.dir", str(tmp_path / "b")))  # fmt: skip


def wandb_logger_args(form: str, folder: Path, **init_args: str) -> list[str]:
    """A WandbLogger with ``init_args`` on the command line or in a config file written into ``folder``."""
    init_args = {"project": "p", **init_args}
    if form == "command line":
        options = [arg for key, value in init_args.items() for arg in (f"--trainer.logger.{key}", value)]
        return ["--trainer.logger", "WandbLogger", *options]
    folder.mkdir(parents=True)
    logger = {"class_path": "WandbLogger", "init_args": init_args}
    (folder / "logger.yaml").write_text(yaml.safe_dump({"trainer": {"logger": logger}}))
    return ["--config", str(folder / "logger.yaml")]


@pytest.mark.parametrize("form", ["command line", "config file"])
def test_a_wandb_run_has_wandbs_defaults_where_not_given_and_the_users_settings_where_given(
    data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, form: str
) -> None:
    """Not the default TensorBoard logger's ``name: lightning_logs``, which jsonargparse keeps when the class changes,
    nor ``resume: None`` over Lightning's ``allow`` (``_wandb_init`` holds what the logger passes to ``wandb.init``)."""
    wandb = pytest.importorskip("wandb")
    for name, value in {"WANDB_MODE": "offline", "WANDB_DIR": str(tmp_path / "env"), "WANDB_SILENT": "true"}.items():
        monkeypatch.setenv(name, value)
    logger = wandb_logger_args(form, tmp_path / "plain")
    cli = run_cli("fit", *tiny_args("ae", data_dir, tmp_path / "run", *logger, "--trainer.max_epochs", "1", *QUICK))
    run_name = cli.trainer.logger.experiment.name
    wandb.finish()
    assert run_name != "lightning_logs" and cli.trainer.logger._wandb_init["name"] is None
    assert cli.trainer.logger._wandb_init["resume"] == "allow"
    parameters = inspect.signature(WandbLogger).parameters.items()
    defaults = {k: p.default for k, p in parameters if k not in ("save_dir", "project", "kwargs")}
    init_args = cli.config.fit.trainer.logger.init_args
    assert {k: init_args[k] for k in defaults} == defaults  # nothing else of TensorBoard's settings either
    logger = wandb_logger_args(form, tmp_path / "given", name="lightning_logs", resume="must")
    passed = build_cli(*tiny_args("ae", data_dir, tmp_path / "given", *logger)).trainer.logger._wandb_init
    assert (passed["name"], passed["resume"]) == ("lightning_logs", "must")


@pytest.mark.parametrize("form", ["command line", "config file"])
def test_a_wandb_save_dir_the_user_gives_is_where_it_writes_and_its_own_dot_is_the_run_root(
    data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, form: str
) -> None:
    """``.``, WandbLogger's own default (which a ``.`` given cannot be told from), writes under ``default_root_dir``, as
    a WandbLogger given none does; any other value is where it writes (``./``: the current folder)."""
    pytest.importorskip("wandb")
    for name, value in {"WANDB_MODE": "offline", "WANDB_DIR": str(tmp_path / "env"), "WANDB_SILENT": "true"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.chdir(tmp_path)
    for i, (save_dir, expected) in enumerate(((".", str(tmp_path / "root")), ("./", "./"), ("logs", "logs"))):
        logger = wandb_logger_args(form, tmp_path / f"config-{i}", save_dir=save_dir)
        cli = build_cli(*tiny_args("ae", data_dir, tmp_path / "root", *logger))
        assert cli.trainer.logger.save_dir == expected, save_dir


def drawn_epochs(root: Path) -> list[int]:
    """The epochs (0-based) of the reconstruction PNGs written under ``root``."""
    return sorted(int(path.stem.split("-epoch=")[1].split("-")[0]) for path in root.rglob("reconstructions-*.png"))


@pytest.mark.parametrize("every_n_epochs, drawn", [(2, [3]), (3, [3])])
def test_pictures_come_after_every_nth_validation_and_the_last_when_validation_skips_epochs(
    data_dir: Path, tmp_path: Path, every_n_epochs: int, drawn: list[int]
) -> None:
    """Validating every 2nd of 5 epochs (epochs 1 and 3, 0-based): the 2nd validation is both every 2nd and the last;
    with every 3rd, the last validation, epoch 3, still draws although no epoch 2 or 4 validates."""
    args = ["--trainer.logger", "false", "--trainer.check_val_every_n_epoch", "2", "--trainer.max_epochs", "5"]
    args += ["--images.every_n_epochs", str(every_n_epochs), "--images.views", "[reconstructions]", *QUICK]
    run_cli("fit", *tiny_args("ae", data_dir, tmp_path, *args))
    assert drawn_epochs(tmp_path) == drawn


def test_the_image_schedule_counts_on_across_a_resume(data_dir: Path, tmp_path: Path) -> None:
    args = ["--trainer.logger", "false", "--images.every_n_epochs", "3", "--images.views", "[reconstructions]", *QUICK]
    run_cli("fit", *tiny_args("ae", data_dir, tmp_path, *args, "--trainer.max_epochs", "2"))
    run_cli("fit", *tiny_args("ae", data_dir, tmp_path, *args, "--trainer.max_epochs", "5", "--ckpt_path", "last"))
    assert drawn_epochs(tmp_path) == [1, 2, 4]  # the last of the first run, the 3rd validation, the last


@pytest.mark.parametrize("chunk_bytes", ["lots", "-5MB", 0, "0MB", "0.0001kB", "1e400MB", "64 parsecs", -3])
def test_a_bad_chunk_bytes_is_refused_when_the_writer_is_built(chunk_bytes: object) -> None:
    expected = rf"chunk_bytes must be a positive number of bytes, .*\(64MB\), got {re.escape(repr(chunk_bytes))}"
    with pytest.raises(ValueError, match=expected):
        PredictionWriter(format="stream", chunk_bytes=chunk_bytes)


def test_chunk_bytes_from_the_command_is_checked_up_front_and_may_be_an_integer(data_dir: Path, tmp_path: Path) -> None:
    stream = ["--predictions.format", "stream"]
    with pytest.raises(ValueError, match="chunk_bytes must be a positive number of bytes, .* got '-5MB'"):
        build_cli(*tiny_args("ae", data_dir, tmp_path / "refused", *stream, "--predictions.chunk_bytes=-5MB"))
    assert not (tmp_path / "refused").exists()
    run_cli("fit", *tiny_args("ae", data_dir, tmp_path / "fit", "--trainer.max_epochs", "1", *QUICK))
    checkpoint = next((tmp_path / "fit").rglob("last.ckpt"))
    cli = run_cli("predict", *tiny_args("ae", data_dir, tmp_path / "predict", *stream, "--predictions.chunk_bytes",
                                        "2000", "--ckpt_path", str(checkpoint)))  # fmt: skip
    written = Path(cli.trainer.log_dir) / "predictions"
    assert len(list(written.glob("chunk-*.bin"))) > 1  # 2000 bytes, as litdata reads an int


# --- warnings about the framework's own choices are not shown; those about the user's are -------------------------


class EvalModeEncoder(Callback):
    """Puts the model's encoder in eval mode before training: a setting of the user's, which Lightning warns of."""

    def setup(self, trainer, pl_module, stage: str) -> None:
        pl_module.encoder.eval()


def shown_warnings(*args: str) -> list[str]:
    """The warnings ``ae-lightning <args>`` shows (all of them, as a user's shell would, however often)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run_cli(*args)
    return [str(w.message) for w in caught]


def test_the_photo_recipe_warns_of_none_of_its_own_choices(tmp_path: Path) -> None:
    """LPIPS held in eval mode, torchvision's ``pretrained=`` that lpips passes, EMA beside the model's
    ``configure_model`` and a checkpoint evaluated outside fit: no warning of them in ``fit`` and ``test``."""
    from conftest import write_image_folder
    from tiny_runs import ROOT

    photos = write_image_folder(tmp_path / "photos", per_class=4, size=16)
    args = ["--config", str(ROOT / "configs" / "photos" / "kl_f8.yaml"), "--data.init_args.data_dir", str(photos),
            "--data.init_args.image_size", "16", "--data.init_args.batch_size", "4", "--model.init_args.hidden_dims",
            "[8,8]", "--model.init_args.residual_blocks", "1", "--model.init_args.discriminator_layers", "1",
            "--model.init_args.discriminator_channels", "4", "--trainer.enable_progress_bar", "false",
            "--model.init_args.perceptual_pretrained", "false", "--trainer.default_root_dir", str(tmp_path),
            ]  # fmt: skip
    shown = shown_warnings("fit", *args, "--trainer.max_steps", "1", "--trainer.limit_val_batches", "0")
    (checkpoint,) = tmp_path.rglob("last.ckpt")
    shown += shown_warnings("test", *args, "--ckpt_path", str(checkpoint), "--trainer.limit_test_batches", "1")
    noise = re.compile(r"in eval mode|WeightAveraging|'pretrained' is deprecated|other than a weight enum")
    assert [message for message in shown if noise.search(message)] == []


def test_a_module_the_user_left_in_eval_mode_is_still_warned_of(data_dir: Path, tmp_path: Path) -> None:
    args = tiny_args("ae", data_dir, tmp_path, "--trainer.max_epochs", "1", *QUICK, "--trainer.logger", "false",
                     "--trainer.callbacks+=test_logging_leftovers.EvalModeEncoder")  # fmt: skip
    assert any(re.match(r"Found \d+ module\(s\) in eval mode", message) for message in shown_warnings("fit", *args))


def test_a_search_shows_no_optuna_experimental_warnings(data_dir: Path, tmp_path: Path) -> None:
    """The heartbeats and retries of dead trials are the search's own choice of Optuna features."""
    from optuna.exceptions import ExperimentalWarning

    from ae_lightning import search

    space = tmp_path / "space.yaml"
    space.write_text(
        yaml.safe_dump({"parameters": {"model.init_args.latent_dim": {"type": "int", "low": 2, "high": 4}}})
    )
    args = ["--config", str(Path(__file__).parents[1] / "configs" / "ae.yaml"), "--space", str(space), "--storage",
            f"sqlite:///{tmp_path / 'study.db'}", "--root", str(tmp_path / "trials"), "--n_trials", "1",
            "--data.data_dir", str(data_dir), "--model.init_args.hidden_dims", "[8]", "--trainer.max_epochs", "1",
            *QUICK, "--trainer.enable_progress_bar", "false", "--images.every_n_epochs", "0"]  # fmt: skip
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        search.run(args)
    assert [str(w.message) for w in caught if issubclass(w.category, ExperimentalWarning)] == []


def test_a_recommenders_predict_counts_users_not_images(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from test_recommender import write_interactions
    from tiny_runs import ROOT

    path = write_interactions(tmp_path / "ratings.csv", header="userId,movieId,rating,timestamp")
    args = ["--config", str(ROOT / "configs" / "mult_vae.yaml"), "--data.path", str(path), "--data.val_users", "20",
            "--data.test_users", "20", "--model.init_args.latent_dim", "4", "--model.init_args.hidden_dims", "[8]",
            "--trainer.default_root_dir", str(tmp_path), "--trainer.enable_progress_bar", "false"]  # fmt: skip
    run_cli("fit", *args, "--trainer.max_epochs", "1")
    (checkpoint,) = tmp_path.rglob("last.ckpt")
    cli = run_cli("predict", *args, "--ckpt_path", str(checkpoint))
    assert f"Predictions for 20 users written to {cli.trainer.log_dir}" in capsys.readouterr().out


class PredictIntoTheSameFolder(Callback):
    """After the first predict batch, runs a whole second predict into the same folder (two runs of one filename)."""

    def __init__(self, predict: Any) -> None:
        self.predict, self.done = predict, False

    def on_predict_batch_end(self, *args: Any) -> None:
        if not self.done:
            self.done = True
            self.predict()


@pytest.mark.parametrize("format", ["file", "stream"])
def test_two_predicts_of_one_filename_at_once_keep_the_first_written_and_refuse_the_other(
    format: str, tmp_path: Path
) -> None:
    # the second deleted the first's stream staging folder: FileNotFoundError '.predictions.partial/chunk-0-0.bin'
    data = TensorDataset(torch.rand(32, 1, 8, 8), torch.zeros(32, dtype=torch.long), torch.arange(32))
    model = Autoencoder(input_shape=(1, 8, 8), latent_dim=2, hidden_dims=[8])

    def predict(batch_size: int, *callbacks: Callback) -> None:
        trainer = L.Trainer(default_root_dir=tmp_path, logger=False, callbacks=[PredictionWriter(format=format),
                            *callbacks], enable_progress_bar=False, enable_model_summary=False)  # fmt: skip
        trainer.predict(model, DataLoader(data, batch_size=batch_size), return_predictions=False)

    host = socket.gethostname()
    dead, running = (
        tmp_path / f".predictions.{2**22 + 1}@{host}.0.partial",
        tmp_path / f".predictions.1@{host}.0.partial",
    )
    for folder in (dead, running) if format == "stream" else ():  # a killed predict's, one still writing (pid 1)
        folder.mkdir()
    with pytest.raises(FileExistsError, match="already exists; predictions are never overwritten"):
        predict(8, PredictIntoTheSameFolder(lambda: predict(4)))
    written = tmp_path / ("predictions" if format == "stream" else "predictions.pt")
    if format == "stream":
        assert not dead.exists() and running.is_dir()
        running.rmdir()
        assert len(StreamingDataset(str(written))) == 32
    else:
        assert len(torch.load(written)["index"]) == 32
    assert [path.name for path in tmp_path.iterdir()] == [written.name]  # no staging folder or temporary file left
