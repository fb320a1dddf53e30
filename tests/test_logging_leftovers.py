"""Logging settings the command honours or refuses: a WandbLogger's ``dir``, name and ``resume``, the image schedule on
runs that validate every n epochs, the prediction stream's ``chunk_bytes``."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest
import yaml
from lightning.pytorch.loggers import WandbLogger
from tiny_runs import build_cli, run_cli, tiny_args

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
