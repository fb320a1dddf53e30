"""``--trainer.logger WandbLogger`` in offline mode: hyperparameters, metrics, images and the config reach the run."""

from __future__ import annotations

import json
import logging
import struct
import time
from pathlib import Path
from unittest import mock

import pytest
import torch
from tiny_runs import run_cli, tiny_args

from ae_lightning.cli import AutoencoderCLI, ConfigError

wandb = pytest.importorskip("wandb")
from wandb.proto import wandb_internal_pb2  # noqa: E402


def read_wandb_records(path: Path) -> list:
    """The protobuf records of a ``run-<id>.wandb`` file.

    The file is W&B's write-ahead log: a 7-byte header (``:W&B``, magic, version), then 32 KiB blocks of chunks,
    each with a 7-byte header (CRC-32, little-endian length, type: 1 full, 2 first, 3 middle, 4 last).
    """
    data = path.read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B run file"
    block, position, pending, records = 32768, 7, b"", []
    while position + 7 <= len(data):
        room = block - position % block
        if room < 7:  # a block's tail too short for a chunk header is padding
            position += room
            continue
        _, length, kind = struct.unpack("<IHB", data[position : position + 7])
        if length == 0 and kind == 0:
            position += room
            continue
        if position + 7 + length > len(data):  # a chunk still being written
            break
        pending += data[position + 7 : position + 7 + length]
        position += 7 + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records


def finished_run_records(run_dir: Path, timeout: float = 60.0) -> list:
    """The run's records once its ``exit`` record is on disk: W&B's service may flush after ``wandb.finish`` returns."""
    deadline = time.monotonic() + timeout
    while True:
        files = list(run_dir.glob("run-*.wandb"))
        records = read_wandb_records(files[0]) if files and files[0].stat().st_size > 7 else []
        if any(record.WhichOneof("record_type") == "exit" for record in records) or time.monotonic() > deadline:
            return records
        time.sleep(0.2)


def uploaded_files(records: list) -> set[str]:
    """The run's files named in its ``files`` records: those W&B uploads, not all that lie in its ``files/`` folder."""
    return {
        item.path for record in records if record.WhichOneof("record_type") == "files" for item in record.files.files
    }


def test_a_wandb_run_gets_hyperparameters_metrics_images_and_config(
    data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in {"WANDB_MODE": "offline", "WANDB_DIR": str(tmp_path), "WANDB_SILENT": "true"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("WANDB_CONSOLE", "off")
    root = tmp_path / "runs"
    args = [
        "fit", "--config", "configs/vae.yaml",
        "--data.data_dir", str(data_dir), "--trainer.default_root_dir", str(root),
        "--trainer.max_epochs", "2", "--trainer.log_every_n_steps", "1", "--trainer.enable_progress_bar", "false",
        "--trainer.logger", "WandbLogger", "--trainer.logger.project", "ae-lightning-test",
        "--images.views", "[reconstructions, samples]",
    ]  # fmt: skip
    with mock.patch("sys.argv", ["ae-lightning"]):
        cli = AutoencoderCLI(args=args)
    run_dir = Path(cli.trainer.logger.experiment.dir).parent
    wandb.finish()

    assert run_dir.parent == root / "wandb"  # without save_dir, W&B writes under default_root_dir
    assert not (root / "config.yaml").exists()  # so a second run in the same root does not collide with it
    run_folder = root / "ae-lightning-test" / cli.trainer.logger.version  # the documented layout
    assert (run_folder / "checkpoints" / "last.ckpt").is_file()
    assert "latent_dim: 20" in (run_folder / "config.yaml").read_text()
    assert "latent_dim: 20" in (run_dir / "files" / "ae_lightning_config.yaml").read_text()
    own = run_dir / "files" / "config.yaml"
    assert not own.exists() or "ckpt_path" not in own.read_text()  # W&B's own config.yaml is W&B's
    images = sorted((run_dir / "files" / "media" / "images").rglob("*.png"))
    assert {path.name.split("_")[0] for path in images} == {"reconstructions", "samples"}
    assert len(images) == 4 and all(path.stat().st_size > 100 for path in images)  # 2 views x 2 epochs

    records = finished_run_records(run_dir)
    config = {
        item.key: json.loads(item.value_json)
        for record in records
        if record.WhichOneof("record_type") == "config"
        for item in record.config.update
    }
    assert config["latent_dim"] == 20 and config["beta"] == 1.0 and config["binarize"] == "dynamic"
    logged = {
        item.key or "/".join(item.nested_key)
        for record in records
        if record.WhichOneof("record_type") == "history"
        for item in record.history.item
    }
    assert {"train/loss", "train/kl", "val/loss", "val/recon", "epoch", "trainer/global_step"} <= logged
    assert any(key.startswith("images/reconstructions") for key in logged)
    assert any(key.startswith("images/samples") for key in logged)
    assert "ae_lightning_config.yaml" in uploaded_files(records)  # W&B (and `wandb sync`) upload only these


def test_a_new_fit_with_the_id_of_an_earlier_wandb_run_is_refused_before_it_overwrites_anything(
    data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in {"WANDB_MODE": "offline", "WANDB_DIR": str(tmp_path), "WANDB_SILENT": "true"}.items():
        monkeypatch.setenv(name, value)
    logger = ["--trainer.logger", "WandbLogger", "--trainer.logger.project", "p", "--trainer.logger.id", "fixedid"]
    run_cli("fit", *tiny_args("ae", data_dir, tmp_path, *logger, "--trainer.max_epochs", "1"))
    wandb.finish()
    config = tmp_path / "p" / "fixedid" / "config.yaml"
    before = config.read_text()
    with pytest.raises(ConfigError, match=rf"{config} exists: this fit would write into the folder of an earlier run"):
        run_cli("fit", *tiny_args("ae", data_dir, tmp_path, *logger, "--trainer.max_epochs", "2"))
    assert config.read_text() == before
    run_cli("fit", *tiny_args("ae", data_dir, tmp_path, *logger, "--trainer.max_epochs", "2", "--ckpt_path", "last"))
    wandb.finish()  # a resume continues the run, and its config
    assert "max_epochs: 2" in config.read_text()


def test_predict_with_wandb_writes_into_the_runs_own_folder_and_never_over_an_earlier_one(
    data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in {"WANDB_MODE": "offline", "WANDB_DIR": str(tmp_path), "WANDB_SILENT": "true"}.items():
        monkeypatch.setenv(name, value)
    run_cli("fit", *tiny_args("ae", data_dir, tmp_path, "--trainer.max_epochs", "1"))
    checkpoint = next(tmp_path.rglob("last.ckpt"))
    logger = ["--trainer.logger", "WandbLogger", "--trainer.logger.project", "p", "--trainer.logger.id", "codes"]
    predict = ["predict", *tiny_args("ae", data_dir, tmp_path, *logger, "--ckpt_path", str(checkpoint))]
    run_cli(*predict)
    wandb.finish()
    written = tmp_path / "p" / "codes" / "predictions.pt"
    assert torch.load(written)["z"].shape[0] > 0 and not (tmp_path / "predictions.pt").exists()
    with pytest.raises(FileExistsError, match=f"{written} already exists; predictions are never overwritten"):
        run_cli(*predict)
    wandb.finish()


@pytest.fixture
def offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in {"WANDB_MODE": "offline", "WANDB_DIR": str(tmp_path), "WANDB_SILENT": "true"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("WANDB_CONSOLE", "off")


SHORT = ["--trainer.limit_train_batches", "2", "--trainer.limit_val_batches", "1"]
IN_P = ["--trainer.logger", "WandbLogger", "--trainer.logger.project", "p"]


def test_ckpt_path_last_with_a_wandb_id_resumes_that_runs_own_checkpoint_not_another_runs(
    offline: None, data_dir: Path, tmp_path: Path
) -> None:
    def fit(run_id: str, epochs: int, *extra: str) -> AutoencoderCLI:
        args = tiny_args("ae", data_dir, tmp_path, *IN_P, *SHORT, "--trainer.logger.id", run_id)
        cli = run_cli("fit", *args, "--trainer.max_epochs", str(epochs), *extra)
        wandb.finish()
        return cli

    fit("a", 2)  # run a is further than run b
    fit("b", 1)
    resumed = fit("b", 2, "--ckpt_path", "last")
    assert resumed.config.fit.ckpt_path == str(tmp_path / "p" / "b" / "checkpoints" / "last.ckpt")
    assert resumed.trainer.logger.version == "b"
    # A named run without a checkpoint is said to be one, rather than evaluated from another run's.
    c = tmp_path / "p" / "c" / "checkpoints"
    validate = tiny_args("ae", data_dir, tmp_path, *IN_P, "--trainer.logger.id", "c", "--ckpt_path", "last")
    with pytest.raises(FileNotFoundError, match=f"--ckpt_path last: no checkpoint in {c} .*--trainer.logger.id c"):
        run_cli("validate", *validate)


def test_a_resumed_fit_given_no_id_continues_the_checkpoints_wandb_run_and_an_explicit_id_is_honoured(
    offline: None, data_dir: Path, tmp_path: Path
) -> None:
    first = run_cli("fit", *tiny_args("ae", data_dir, tmp_path, *IN_P, *SHORT, "--trainer.max_epochs", "1"))
    run_id = first.trainer.logger.version
    wandb.finish()
    resumed = run_cli("fit", *tiny_args("ae", data_dir, tmp_path, *IN_P, *SHORT, "--ckpt_path", "last"))
    wandb.finish()
    assert resumed.trainer.logger.version == run_id
    assert [path.name for path in (tmp_path / "p").iterdir()] == [run_id]  # one run folder, one W&B run
    assert f"id: {run_id}" in (tmp_path / "p" / run_id / "config.yaml").read_text()
    assert torch.load(tmp_path / "p" / run_id / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 4
    checkpoint = str(tmp_path / "p" / run_id / "checkpoints" / "last.ckpt")
    other = ["--trainer.logger.id", "other", "--trainer.max_epochs", "3", "--ckpt_path", checkpoint]
    elsewhere = run_cli("fit", *tiny_args("ae", data_dir, tmp_path, *IN_P, *SHORT, *other))
    wandb.finish()
    assert elsewhere.trainer.logger.version == "other"


def test_evaluating_into_a_wandb_training_run_keeps_its_config_and_saves_its_own_beside_it(
    offline: None, data_dir: Path, tmp_path: Path
) -> None:
    logger = [*IN_P, "--trainer.logger.id", "myrun"]
    run_cli("fit", *tiny_args("ae", data_dir, tmp_path, *logger, *SHORT, "--trainer.max_epochs", "1"))
    wandb.finish()
    folder = tmp_path / "p" / "myrun"
    before = (folder / "config.yaml").read_text()
    evaluate = [*logger, "--ckpt_path", str(folder / "checkpoints" / "last.ckpt"), "--trainer.limit_test_batches", "1"]
    tests = []
    for batch_size in ("32", "8"):
        tests.append(run_cli("test", *tiny_args("ae", data_dir, tmp_path, *evaluate, "--data.batch_size", batch_size)))
        files = Path(tests[-1].trainer.logger.experiment.dir)
        wandb.finish()
    assert (folder / "config.yaml").read_text() == before  # the training run's config stays what it trained with
    assert "batch_size: 32" in (folder / "config-test.yaml").read_text()
    assert "batch_size: 8" in (folder / "config-test-v1.yaml").read_text()  # a second test overwrites nothing
    assert "batch_size: 8" in (files / "ae_lightning_config-test-v1.yaml").read_text()


def csv_then_wandb(tmp_path: Path) -> Path:
    """A config of two loggers: a CSV logger, then a WandbLogger of project p."""
    loggers = tmp_path / "loggers.yaml"
    loggers.write_text(
        "trainer:\n  logger:\n"
        f"    - {{class_path: CSVLogger, init_args: {{save_dir: {tmp_path / 'csv'}}}}}\n"
        "    - {class_path: WandbLogger, init_args: {project: p}}\n"
    )
    return loggers


def test_a_wandb_logger_after_another_gets_the_config_among_its_uploaded_files(
    offline: None, data_dir: Path, tmp_path: Path
) -> None:
    loggers = csv_then_wandb(tmp_path)
    cli = run_cli(
        "fit", *tiny_args("ae", data_dir, tmp_path, *SHORT, "--config", str(loggers), "--trainer.max_epochs", "1")
    )
    run_dir = Path(cli.trainer.loggers[1].experiment.dir).parent
    wandb.finish()
    assert "latent_dim: 4" in (Path(cli.trainer.log_dir) / "config.yaml").read_text()  # the first logger's folder
    assert "latent_dim: 4" in (run_dir / "files" / "ae_lightning_config.yaml").read_text()
    assert "ae_lightning_config.yaml" in uploaded_files(finished_run_records(run_dir))


def test_a_resumed_fit_continues_the_wandb_run_of_a_wandb_logger_after_another(
    offline: None, data_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    loggers = csv_then_wandb(tmp_path)
    args = tiny_args("ae", data_dir, tmp_path, *SHORT, "--config", str(loggers))
    first = run_cli("fit", *args, "--trainer.max_epochs", "1")
    run_id, checkpoint = first.trainer.loggers[1].version, first.trainer.checkpoint_callback.last_model_path
    wandb.finish()
    with caplog.at_level(logging.INFO):
        resumed = run_cli("fit", *args, "--trainer.max_epochs", "2", "--ckpt_path", checkpoint)
    wandb.finish()
    assert resumed.trainer.loggers[1].version == run_id
    assert resumed.trainer.global_step == 4
    # The way out it names works for a logger in a list (--trainer.logger.id is for a single logger).
    assert f"continuing its W&B run {run_id} (project p); give the WandbLogger of project p an id to" in caplog.text


def test_test_with_wandb_writes_the_latent_traversals_into_the_runs_own_folder(
    data_dir: Path, tmp_path: Path, offline: None
) -> None:
    # They went to the W&B save_dir, <root>/traversals.png, shared by every run there: each test overwrote the last's.
    callback = ["--trainer.callbacks+=ae_lightning.training.disentanglement.DisentanglementMetrics",
                "--trainer.callbacks.metrics", "[mig]", "--trainer.callbacks.num_points", "100",
                "--trainer.callbacks.traversal_images", "1"]  # fmt: skip
    args = tiny_args("beta_tcvae", data_dir, tmp_path, *IN_P, "--trainer.logger.id", "t", *callback)
    run_cli("test", *args, "--trainer.limit_test_batches", "1")
    wandb.finish()
    assert (tmp_path / "p" / "t" / "traversals.png").is_file() and not (tmp_path / "traversals.png").exists()
