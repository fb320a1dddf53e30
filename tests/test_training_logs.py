"""Training terms cost one ``self.log`` per step, yet the loggers get what logging every term at every step gave them:
``log_every_n_steps`` decides, as Lightning documents it."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback, EarlyStopping
from lightning.pytorch.loggers import CSVLogger
from test_variants import TINY
from tiny_runs import run_cli, tiny_args
from torch.utils.data import DataLoader, TensorDataset
from torchmetrics.functional.image import structural_similarity_index_measure

from ae_lightning import VAE, AdversarialAutoencoder, Autoencoder
from ae_lightning.base import AutoencoderModule
from datamodules import MNISTDataModule


class StopAt(Callback):
    """Stops the run in ``on_train_batch_end`` of the batch that reaches ``step`` (as ``max_time`` does)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        if trainer.global_step == self.step:
            trainer.should_stop = True


def counting(cls: type[AutoencoderModule]) -> type[AutoencoderModule]:
    """``cls`` counting its ``self.log`` calls of training terms per step."""

    class Counting(cls):  # type: ignore[misc, valid-type]
        def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
            self.train_logs[len(self.train_logs)] = 0

        def log(self, name: str, *args: Any, **kwargs: Any) -> None:
            if name.startswith("train/"):
                self.train_logs[len(self.train_logs) - 1] += 1
            super().log(name, *args, **kwargs)

    return Counting


def every_term_every_step(cls: type[AutoencoderModule]) -> type[AutoencoderModule]:
    """``cls`` logging each training term at every step: what the loggers got before."""

    class EveryStep(cls):  # type: ignore[misc, valid-type]
        def log_terms(self, terms: dict, stage: Any, batch_size: int) -> None:
            if stage != "train":
                return super().log_terms(terms, stage, batch_size)
            for name, value in terms.items():
                self.log(f"train/{name}", value, prog_bar=name == "loss", on_step=True, on_epoch=False,
                         batch_size=batch_size)  # fmt: skip

    return EveryStep


CASES = {
    "every-3-steps": (VAE, {"nll_samples": 2}, {"log_every_n_steps": 3, "max_steps": 26}),
    # Lightning writes at the multiples of a negative one too (the command refuses it; a Python Trainer takes it)
    "negative": (VAE, {"nll_samples": 2}, {"log_every_n_steps": -3, "max_steps": 26}),
    "accumulating": (VAE, {"nll_samples": 2}, {"log_every_n_steps": 2, "max_steps": 7, "accumulate_grad_batches": 2}),
    "stopped-by-a-callback": (AdversarialAutoencoder, {"discriminator_hidden_dims": [8]},
                              {"log_every_n_steps": 4, "max_steps": 20, "callbacks": [StopAt(10)]}),
    "fast-path": (VAE, {"nll_samples": 2, "steps_per_batch": 3}, {"log_every_n_steps": 2, "max_steps": 40}),
    "fast-path-stopped": (VAE, {"nll_samples": 2, "steps_per_batch": 3},
                          {"log_every_n_steps": 2, "max_steps": 40, "callbacks": [StopAt(15)]}),
}  # fmt: skip


@pytest.mark.parametrize("case", CASES)
def test_metrics_csv_holds_every_term_at_the_steps_log_every_n_steps_names(
    case: str, data_dir: Path, tmp_path: Path
) -> None:
    cls, kwargs, settings = CASES[case]
    written = {}
    for name, model_class in (("default", counting(cls)), ("every term every step", every_term_every_step(cls))):
        torch.manual_seed(0)
        model = model_class(**TINY, **kwargs)
        model.train_logs = {}
        trainer = L.Trainer(
            accelerator="cpu", limit_val_batches=1, enable_progress_bar=False, enable_checkpointing=False,
            enable_model_summary=False, logger=CSVLogger(tmp_path, name=name.replace(" ", "_")), **settings,
        )  # fmt: skip
        steps = kwargs.get("steps_per_batch", 1)
        trainer.fit(model, datamodule=MNISTDataModule(data_dir=str(data_dir), batch_size=11, steps_per_batch=steps))
        with open(next((tmp_path / name.replace(" ", "_")).rglob("metrics.csv"))) as file:
            written[name] = list(csv.DictReader(file))
        if name == "default":
            calls, per_epoch = model.train_logs, trainer.num_training_batches
    rows = written["default"]
    terms = {"loss", "recon", "kl"} if cls is VAE else {"loss", "recon", "d_loss", "g_loss", "d_accuracy"}
    assert {f"train/{term}" for term in terms} <= set(rows[0])
    assert len([row for row in rows if row["train/recon"]]) >= 3
    assert rows == written["every term every step"]
    # One self.log per training batch, and all the terms where logs are written (also on accumulating batches that
    # share the step of a written one: Lightning writes none of those, so they cost but cannot change what is written)
    # and at each epoch's last batch (for callbacks that read them there).
    assert set(calls.values()) == {1, len(terms)}
    if "accumulate_grad_batches" not in settings:
        every_term = {batch for batch, n in calls.items() if n > 1}
        ends = {batch for batch in calls if (batch + 1) % per_epoch == 0}
        assert ends <= every_term
        assert len(every_term - ends) <= len([row for row in rows if row["train/recon"]]) <= len(every_term)


def test_training_terms_can_be_monitored_at_an_epochs_end(data_dir: Path, tmp_path: Path) -> None:
    # with fewer batches an epoch than log_every_n_steps, train/kl never reached callback_metrics: EarlyStopping and
    # ModelCheckpoint monitoring it crashed
    stop = EarlyStopping(monitor="train/kl", check_on_train_epoch_end=True, patience=100)
    trainer = L.Trainer(accelerator="cpu", default_root_dir=tmp_path, max_epochs=2, limit_train_batches=3,
                        limit_val_batches=1, enable_checkpointing=False, enable_progress_bar=False, logger=False,
                        enable_model_summary=False, callbacks=[stop])  # fmt: skip
    trainer.fit(VAE(**TINY, nll_samples=2), datamodule=MNISTDataModule(data_dir=str(data_dir), batch_size=16))
    assert {"train/recon", "train/kl"} <= set(trainer.callback_metrics) and trainer.current_epoch == 2


def test_a_run_given_an_earlier_runs_folder_is_refused_before_it_touches_its_logs(
    data_dir: Path, tmp_path: Path
) -> None:
    # Lightning's CSVLogger deleted the earlier run's metrics.csv before LightningCLI refused its config.yaml.
    logger = ["--trainer.logger", "CSVLogger", "--trainer.logger.save_dir", str(tmp_path / "logs")]
    run_cli(
        "fit",
        *tiny_args("ae", data_dir, tmp_path, *logger, "--trainer.max_steps", "2", "--trainer.log_every_n_steps", "1"),
    )
    folder = tmp_path / "logs" / "lightning_logs" / "version_0"
    before = {path.name: path.read_bytes() for path in folder.iterdir() if path.is_file()}
    assert "metrics.csv" in before and "config.yaml" in before
    checkpoint = str(next(folder.rglob("last.ckpt")))
    for subcommand, extra in (("fit", []), ("test", ["--ckpt_path", checkpoint])):
        again = tiny_args("ae", data_dir, tmp_path, *logger, "--trainer.logger.version", "0", *extra)
        with pytest.raises(ValueError, match=f"{folder / 'config.yaml'} exists: this {subcommand} would write into"):
            run_cli(subcommand, *again)
    assert {path.name: path.read_bytes() for path in folder.iterdir() if path.is_file()} == before
    # Without a logger the run's folder is the root dir itself, which is all there is to change.
    alone = tiny_args("ae", data_dir, tmp_path / "alone", "--trainer.logger", "false", "--ckpt_path", checkpoint)
    run_cli("test", *alone)
    with pytest.raises(ValueError, match=r"would overwrite; give another --trainer.default_root_dir$"):
        run_cli("test", *alone)


def test_a_runs_saved_config_given_another_root_dir_logs_there(data_dir: Path, tmp_path: Path) -> None:
    # The saved config pinned the logger's save_dir, so the new run logged into the old run's folder.
    run_cli("fit", *tiny_args("ae", data_dir, tmp_path / "first", "--trainer.max_steps", "1"))
    saved = tmp_path / "first" / "lightning_logs" / "version_0" / "config.yaml"
    run_cli("fit", "--config", str(saved), "--trainer.default_root_dir", str(tmp_path / "second"))
    assert (tmp_path / "second" / "lightning_logs" / "version_0" / "config.yaml").is_file()
    assert [path.name for path in (tmp_path / "first" / "lightning_logs").iterdir()] == ["version_0"]


def test_predict_under_fast_dev_run_writes_no_predictions(data_dir: Path, tmp_path: Path) -> None:
    run_cli("fit", *tiny_args("ae", data_dir, tmp_path / "fit", "--trainer.max_steps", "1"))
    checkpoint = str(next((tmp_path / "fit").rglob("last.ckpt")))
    root = tmp_path / "predict"
    for format in ("file", "stream"):
        dry_run = ("--trainer.fast_dev_run", "true", "--predictions.format", format)
        run_cli("predict", *tiny_args("ae", data_dir, root, "--ckpt_path", checkpoint, *dry_run))
        assert not list(root.rglob("predictions*")) and not list(root.rglob(".predictions*"))
    # and nothing is left to refuse a real run into the same root
    cli = run_cli("predict", *tiny_args("ae", data_dir, root, "--ckpt_path", checkpoint, "--trainer.logger", "false"))
    assert len(torch.load(Path(cli.trainer.default_root_dir) / "predictions.pt")["index"]) == 60


# --- evaluation metrics against a hand computation ----------------------------------------------------------------


def test_test_image_metrics_under_bf16_true_are_the_means_of_the_models_own_reconstructions() -> None:
    # bf16-true casts the whole module, the metrics' running sums too, and its steps round their inputs to bfloat16:
    # over 2,048 images test/psnr read 10.5625 for 10.632, test/recon_bce 0.7188 (0.6989 with float32 sums) for 0.698.
    generator = torch.Generator().manual_seed(0)
    x = (torch.randint(0, 256, (2048, 1, 28, 28), generator=generator) / 255).float()
    loader = DataLoader(TensorDataset(x, torch.zeros(2048, dtype=torch.long), torch.arange(2048)), batch_size=64)
    torch.manual_seed(0)
    model = Autoencoder(**TINY)
    trainer = L.Trainer(accelerator="cpu", precision="bf16-true", logger=False, enable_progress_bar=False,
                        enable_model_summary=False)  # fmt: skip
    logged = trainer.test(model, loader, verbose=False)[0]
    with torch.no_grad():  # the bfloat16 model's reconstructions of the bfloat16 images, scored in float64
        images = x.bfloat16()
        reconstructions = torch.cat([model(batch) for batch in images.split(64)]).double()
    squared_errors = (reconstructions - images.double()).pow(2).flatten(1)
    expected = {
        "recon_mse": squared_errors.mean(),
        "recon_bce": F.binary_cross_entropy(reconstructions, images.double()),
        "psnr": (-10 * squared_errors.mean(1).log10()).mean(),
        "ssim": structural_similarity_index_measure(reconstructions.float(), images.float(), data_range=1.0),
    }
    assert {name: logged[f"test/{name}"] for name in expected} == pytest.approx(
        {name: float(value) for name, value in expected.items()}, rel=1e-4
    )
