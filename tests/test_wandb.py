"""``--trainer.logger WandbLogger`` in offline mode: hyperparameters, metrics, images and the config reach the run."""

from __future__ import annotations

import json
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
