"""The ``ae-lightning`` command end to end on tiny data: every config, checkpoints, test, predict, bad input."""

from __future__ import annotations

import gc
import logging
import warnings
import weakref
from argparse import ArgumentError
from pathlib import Path
from unittest import mock

import lightning as L
import numpy as np
import pytest
import torch
from tiny_runs import CONFIGS, ROOT, build_cli, data_args, run_subprocess, tiny_args

from ae_lightning import VAE, Autoencoder
from ae_lightning.cli import AutoencoderCLI, ConfigError, one_line, run_command
from ae_lightning.search import parse_args as search_args
from ae_lightning.search import read_space
from ae_lightning.training.prediction import PredictionWriter
from datamodules import MNISTDataModule


def run_cli(*args: str) -> AutoencoderCLI:
    with mock.patch("sys.argv", ["ae-lightning"]):  # pytest's own arguments are not the CLI's
        return AutoencoderCLI(args=list(args))


def common(data_dir: Path, root: Path) -> list[str]:
    return [
        "--data.data_dir",
        str(data_dir),
        "--trainer.default_root_dir",
        str(root),
        "--trainer.enable_progress_bar",
        "false",
        "--trainer.enable_model_summary",
        "false",
    ]


@pytest.mark.parametrize("config", CONFIGS, ids=[c.stem for c in CONFIGS])
def test_every_config_fits_with_fast_dev_run(config: Path, data_dir: Path, tmp_path: Path) -> None:
    cli = run_cli("fit", "--config", str(config), *common(data_dir, tmp_path / "run")[2:],
                  *data_args(config.stem, data_dir), "--trainer.fast_dev_run", "true",
                  "--trainer.log_every_n_steps", "1")  # fmt: skip
    assert cli.trainer.state.finished
    logged = cli.trainer.callback_metrics
    train_loss = logged.get("train/loss", logged.get("pretrain/rbm1/recon"))  # the deep belief AE starts pretraining
    assert torch.isfinite(train_loss) and torch.isfinite(logged["val/loss"])
    assert not [path for path in (tmp_path / "run").rglob("*") if path.is_file()]  # a dry run writes nothing


@pytest.mark.parametrize("config", CONFIGS, ids=[c.stem for c in CONFIGS])
def test_every_config_trains_with_the_fast_path_stacked(config: Path, data_dir: Path, tmp_path: Path) -> None:
    fast = ["--config", str(ROOT / "configs" / "fast.yaml"), "--trainer.log_every_n_steps", "10"]
    if config.stem == "deep_ae_rbm":  # pretraining and fine-tuning in a training_step of its own
        with pytest.raises(ValueError, match="has a training_step of its own, which cannot take steps_per_batch=10"):
            run_cli("fit", "--config", str(config), *fast, *common(data_dir, tmp_path), "--trainer.max_steps", "20")
        return
    cli = run_cli("fit", "--config", str(config), *fast, *common(data_dir, tmp_path)[2:],
                  *data_args(config.stem, data_dir), "--trainer.max_steps", "20",
                  "--trainer.max_epochs", "-1", "--trainer.limit_val_batches", "1", "--images.every_n_epochs", "0",
                  )  # fmt: skip
    assert cli.trainer.global_step == 20 and torch.isfinite(cli.trainer.callback_metrics["val/loss"])


def test_a_run_in_this_process_leaves_nothing_of_itself_alive_once_the_caller_drops_it(
    data_dir: Path, tmp_path: Path
) -> None:
    # A search (ae_lightning.search) runs its trials in one process: each trial's data and model must go with it.
    cli = run_cli("fit", "--config", str(ROOT / "configs" / "ae.yaml"), *common(data_dir, tmp_path),
                  "--trainer.max_steps", "2", "--trainer.limit_val_batches", "1")  # fmt: skip
    left = [weakref.ref(obj) for obj in (cli, cli.model, cli.datamodule, cli.trainer)]
    del cli
    gc.collect()
    assert [ref() for ref in left] == [None] * 4


def test_an_integer_batch_limit_of_one_is_one_batch(data_dir: Path, tmp_path: Path) -> None:
    """Lightning's ``float | int`` annotation made ``--trainer.limit_val_batches 1`` all batches (1.0)."""
    for value, expected in (("1", 1), ("1.0", 1.0), ("0.5", 0.5), ("3", 3)):
        cli = build(*common(data_dir, tmp_path), "--trainer.limit_val_batches", value,
                    "--trainer.limit_train_batches", value)  # fmt: skip
        assert cli.trainer.limit_val_batches == expected and type(cli.trainer.limit_val_batches) is type(expected)
        assert cli.trainer.limit_train_batches == expected


def test_tensorboard_is_the_default_logger_and_needs_no_save_dir(data_dir: Path, tmp_path: Path) -> None:
    from lightning.pytorch.loggers import TensorBoardLogger

    for extra in ([], ["--trainer.logger", "TensorBoardLogger"]):
        cli = build(*common(data_dir, tmp_path), *extra)
        assert isinstance(cli.trainer.logger, TensorBoardLogger)
        assert Path(cli.trainer.logger.save_dir) == tmp_path


def build(*args: str) -> AutoencoderCLI:
    with mock.patch("sys.argv", ["ae-lightning"]):
        return AutoencoderCLI(args=["--config", str(ROOT / "configs" / "ae.yaml"), *args], run=False)


@pytest.fixture
def trained_vae(data_dir: Path, tmp_path: Path) -> Path:
    """A short real VAE fit; returns its run directory."""
    cli = run_cli(
        "fit",
        "--config",
        "configs/vae.yaml",
        *common(data_dir, tmp_path / "fit"),
        "--trainer.max_epochs",
        "2",
        "--model.init_args.nll_samples",
        "8",
    )
    return Path(cli.trainer.log_dir)


def test_fit_keeps_last_and_best_checkpoints_that_load_without_the_cli(trained_vae: Path) -> None:
    checkpoints = sorted(p.name for p in (trained_vae / "checkpoints").iterdir())
    assert "last.ckpt" in checkpoints and any(name.startswith("best-") for name in checkpoints)
    assert "data_source: torchvision" in (trained_vae / "hparams.yaml").read_text()
    model = VAE.load_from_checkpoint(trained_vae / "checkpoints" / "last.ckpt", map_location="cpu")
    state = torch.load(trained_vae / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    for name, value in model.state_dict().items():
        torch.testing.assert_close(value, state["state_dict"][name])
    assert model.nll_samples == 8 and model.input_shape == (1, 28, 28)
    assert isinstance(model.posterior(torch.rand(2, 1, 28, 28)), torch.distributions.Normal)
    assert model.decode(torch.randn(3, 20)).shape == (3, 1, 28, 28)


def test_test_reports_nll_and_mse(trained_vae: Path, data_dir: Path, tmp_path: Path) -> None:
    cli = run_cli(
        "test",
        "--config",
        "configs/vae.yaml",
        *common(data_dir, tmp_path / "test"),
        "--ckpt_path",
        str(trained_vae / "checkpoints" / "last.ckpt"),
    )
    metrics = cli.trainer.callback_metrics
    for name in ("test/nll", "test/recon_mse", "test/loss", "test/kl", "test/recon"):
        assert torch.isfinite(metrics[name]), name
    # the bound on -log p(x) is below the negative ELBO (test/loss) on average
    assert metrics["test/nll"] < metrics["test/loss"] + 1.0


def test_printed_table_lists_every_test_metric(trained_vae: Path, data_dir: Path, tmp_path: Path, capsys) -> None:
    cli = run_cli(
        "test",
        "--config",
        "configs/vae.yaml",
        *common(data_dir, tmp_path / "test"),
        "--ckpt_path",
        str(trained_vae / "checkpoints" / "last.ckpt"),
    )
    printed = capsys.readouterr().out
    for name in cli.trainer.callback_metrics:
        assert name in printed


def test_predict_writes_codes_labels_and_errors(trained_vae: Path, data_dir: Path, tmp_path: Path) -> None:
    root = tmp_path / "predict"
    cli = run_cli(
        "predict",
        "--config",
        "configs/vae.yaml",
        *common(data_dir, root),
        "--ckpt_path",
        str(trained_vae / "checkpoints" / "last.ckpt"),
    )
    path = Path(cli.trainer.log_dir) / "predictions.pt"
    assert path.is_relative_to(root)
    predictions = torch.load(path)
    assert predictions["z"].shape == (60, 20)
    assert predictions["label"].tolist() == [i % 10 for i in range(60)]
    assert predictions["index"].tolist() == list(range(60))
    assert predictions["recon_error"].shape == (60,) and (predictions["recon_error"] >= 0).all()
    assert predictions["anomaly_score"].shape == (60,)


def test_the_prediction_writer_joins_a_predict_trainer_alone(trained_vae: Path, data_dir: Path, tmp_path: Path) -> None:
    """Lightning visits every callback on every hook of every training step: fit does without the writer, which acts
    in predict alone, and a predict run has it."""
    fit = run_cli("fit", "--config", "configs/vae.yaml", *common(data_dir, tmp_path / "fit"), "--trainer.fast_dev_run",
                  "true", "--predictions.format", "stream")  # fmt: skip
    assert not any(isinstance(callback, PredictionWriter) for callback in fit.trainer.callbacks)
    last = str(trained_vae / "checkpoints" / "last.ckpt")
    predict = run_cli("predict", "--config", "configs/vae.yaml", *common(data_dir, tmp_path / "predict"),
                      "--ckpt_path", last, "--predictions.format", "stream")  # fmt: skip
    writers = [callback for callback in predict.trainer.callbacks if isinstance(callback, PredictionWriter)]
    assert len(writers) == 1 and writers[0].format == "stream"


def test_predict_can_write_the_codes_as_a_stream(trained_vae: Path, data_dir: Path, tmp_path: Path) -> None:
    """``--predictions.format stream``: the same items as the file, as a litdata stream a downstream model reads."""
    from litdata import StreamingDataset

    args = ["--config", "configs/vae.yaml", "--ckpt_path", str(trained_vae / "checkpoints" / "last.ckpt")]
    args += ["--data.batch_size", "16"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        file = run_cli("predict", *args, *common(data_dir, tmp_path / "file"))
    # Lightning's warnings about what predict does not need (the batches' indices, the checkpoint folder's state)
    noise = ("infer the batch indices", "The dirpath has changed")
    assert not [w for w in caught if any(text in str(w.message) for text in noise)]
    expected = torch.load(Path(file.trainer.log_dir) / "predictions.pt")
    streamed = run_cli("predict", *args, *common(data_dir, tmp_path / "stream"), "--predictions.format", "stream",
                       "--predictions.chunk_bytes", "2kB")  # fmt: skip
    assert streamed.trainer.predict_loop.return_predictions is False  # nothing gathered in memory
    path = Path(streamed.trainer.log_dir) / "predictions"
    assert len(list(path.glob("*.bin"))) > 1 and not list(path.parent.glob(".*partial"))
    items = sorted(StreamingDataset(str(path)), key=lambda item: item["index"])
    assert [item["index"] for item in items] == expected["index"].tolist()
    assert [item["label"] for item in items] == expected["label"].tolist()
    assert torch.equal(torch.stack([item["z"] for item in items]), expected["z"])
    assert torch.tensor([item["recon_error"] for item in items]).allclose(expected["recon_error"])
    with pytest.raises(ValueError, match="--return_predictions true keeps every prediction in memory"):
        run_cli("predict", *args, *common(data_dir, tmp_path / "again"), "--predictions.format", "stream",
                "--return_predictions", "true")  # fmt: skip


def test_missing_checkpoint_is_an_error(data_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nowhere.ckpt does not exist"):
        run_cli("test", "--config", "configs/vae.yaml", *common(data_dir, tmp_path), "--ckpt_path", "nowhere.ckpt")


def test_checkpoint_of_another_model_is_an_error(trained_vae: Path, data_dir: Path, tmp_path: Path) -> None:
    ckpt = trained_vae / "checkpoints" / "last.ckpt"
    with pytest.raises(ValueError, match=r"holds a ae_lightning.VAE checkpoint, but the config's model is "):
        run_cli("test", "--config", "configs/ae.yaml", *common(data_dir, tmp_path), "--ckpt_path", str(ckpt))
    written_by_python = torch.load(ckpt, weights_only=False)  # as a Trainer without the command writes it
    del written_by_python["hyper_parameters"]["_class_path"]
    torch.save(written_by_python, tmp_path / "python.ckpt")
    with pytest.raises(ValueError, match=r"python.ckpt holds a ae_lightning.models.vae.VAE checkpoint, but the config"):
        run_cli("fit", "--config", "configs/ae.yaml", *common(data_dir, tmp_path / "refused"),
                "--ckpt_path", str(tmp_path / "python.ckpt"))  # fmt: skip
    assert not (tmp_path / "refused").exists()
    with pytest.raises(ValueError, match="holds a ae_lightning.models.vae.VAE, not a ae_lightning.models.autoencoder"):
        model = Autoencoder()
        model.on_load_checkpoint(torch.load(ckpt, weights_only=False))
    # the command's checkpoint (it holds the CLI's _class_path) loaded from Python as another variant
    with pytest.raises(ValueError, match="holds a ae_lightning.models.vae.VAE, not a ae_lightning.models.autoencoder"):
        Autoencoder.load_from_checkpoint(ckpt)


def test_settings_a_checkpoints_weights_cannot_take_are_named_when_loading_it(trained_vae: Path) -> None:
    # torch's list of size mismatches named tensors, not the setting that made them differ
    ckpt = trained_vae / "checkpoints" / "last.ckpt"
    match = r"do not fit latent_dim=8 \(the checkpoint's: 20\), hidden_dims=\(64,\) \(the checkpoint's: \[400\]\)"
    with pytest.raises(ValueError, match=match):
        VAE.load_from_checkpoint(ckpt, latent_dim=8, hidden_dims=(64,), beta=2.0)
    assert VAE.load_from_checkpoint(ckpt, hidden_dims=(400,), beta=2.0).beta == 2.0  # settings the weights take


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"latent_dim": 0}, "latent_dim must be an integer >= 1, got 0"),
        ({"beta": -1.0}, "beta must be >= 0, got -1.0"),
        ({"likelihood": "poisson"}, "likelihood must be one of 'bernoulli', 'gaussian', 'continuous_bernoulli', got"),
        ({"hidden_dims": [64, -3]}, r"each of hidden_dims must be an integer >= 1, got \[64, -3\]"),
    ],
)
def test_bad_model_arguments_are_errors(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        VAE(**kwargs)


def test_bad_model_argument_on_the_command_line_fails_before_training(data_dir: Path, tmp_path: Path) -> None:
    with pytest.raises((ValueError, SystemExit)):
        run_cli("fit", "--config", "configs/vae.yaml", *common(data_dir, tmp_path), "--model.init_args.beta", "-2")
    assert not (tmp_path / "lightning_logs").exists()


def test_bernoulli_likelihood_rejects_data_outside_unit_interval() -> None:
    model = VAE(latent_dim=2, hidden_dims=[8])
    batch = (torch.rand(4, 1, 28, 28) * 2 - 0.5, torch.zeros(4, dtype=torch.long), torch.arange(4))
    with pytest.raises(ValueError, match=r"Bernoulli likelihood needs pixels in \[0, 1\].*\[-0\.\d+, 1\.\d+\]"):
        model.training_step(batch, 0)


def test_model_input_shape_must_match_the_data(data_dir: Path, tmp_path: Path) -> None:
    model = Autoencoder(input_shape=(1, 32, 32))
    trainer = L.Trainer(fast_dev_run=True, default_root_dir=tmp_path, logger=False, enable_progress_bar=False)
    with pytest.raises(ValueError, match=r"built for images of shape \(1, 32, 32\).*yields \(1, 28, 28\)"):
        trainer.fit(model, datamodule=MNISTDataModule(data_dir=str(data_dir)))


def test_switching_the_dataset_from_the_command_line(data_dir: Path, tmp_path: Path) -> None:
    cli = run_cli(
        "fit",
        "--config",
        "configs/ae.yaml",
        *common(data_dir, tmp_path),
        "--trainer.fast_dev_run",
        "true",
        "--data",
        "FashionMNISTDataModule",
        "--data.data_dir",
        str(data_dir),
    )
    assert type(cli.datamodule).__name__ == "FashionMNISTDataModule"
    assert cli.datamodule.raw_folder.parent.name == "FashionMNIST"


def test_an_unknown_class_name_lists_the_known_variants_and_help_offers_no_abstract_base(capsys) -> None:
    with pytest.raises(ArgumentError) as refused:
        run_cli("fit", "--model", "VAEE")
    error = str(refused.value)
    assert "--model VAEE is not a known class; the known ones are AdversarialAutoencoder" in error
    assert "VAE" in error.split("known ones are")[1] and "AutoencoderModule" not in error
    with pytest.raises(SystemExit):
        run_cli("fit", "--help")
    help_text = capsys.readouterr().out
    start = help_text.index("known subclasses: ae_lightning.")
    offered = help_text[start : help_text.index(")", start)]
    assert "ae_lightning.VAE" in offered
    for abstract in ("AutoencoderModule", "DeterministicAutoencoder", "RestorationAutoencoder"):
        assert abstract not in offered


@pytest.mark.parametrize(
    "args, status, message",
    [
        (
            ["vae", "--model.init_args.latent_dim", "0"],
            2,
            "--model ae_lightning.VAE: latent_dim must be an integer >= 1",
        ),
        (["vae", "--data.val_fraction", "1"], 2, "--data datamodules.MNISTDataModule: val_fraction must lie in (0, 1)"),
        (
            ["vae", "--model.init_args.optimizer.init_args.lr", "-0.001"],
            2,
            "the model's optimizer or lr_scheduler settings: Invalid learning rate: -0.001",
        ),
        (["tabular_anomaly_ae", "--data.path", "EMPTY"], 1, "empty.npz holds no samples"),
        (
            ["vae", "--model.init_args.likelihood", "bernouli"],
            2,
            "--model ae_lightning.VAE: likelihood: Expected a typing.Literal['bernoulli', 'gaussian', "
            "'continuous_bernoulli']. Got value: bernouli",
        ),
        (["vae", "--trainer.max_epochs", "x"], 2, "--trainer.max_epochs: expected int or NoneType. Got value: x"),
    ],
    ids=["model-setting", "data-setting", "optimizer-setting", "data-file", "model-choice", "trainer-type"],
)
def test_the_command_prints_a_refusal_alone_and_the_traceback_on_request(
    args: list[str], status: int, message: str, tmp_path: Path
) -> None:
    np.savez(tmp_path / "empty.npz", x=np.zeros((0, 4), np.float32), y=np.zeros(0, np.int64))
    config, *args = [arg.replace("EMPTY", str(tmp_path / "empty.npz")) for arg in args]
    fit = ["fit", "--config", f"configs/{config}.yaml", "--trainer.default_root_dir", str(tmp_path), *args]
    result = run_subprocess(*fit)
    assert result.returncode == status, result.stderr[-2000:]
    assert "ae-lightning: error: " in result.stderr and message in result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) <= 6, result.stderr
    assert not list(tmp_path.rglob("config.yaml")), "a refused run wrote its config"
    detailed = run_subprocess(*fit, "--print_traceback")
    assert "Traceback" in detailed.stderr and message.split(": ")[-1] in detailed.stderr


def raise_in_a_process(index: int, error: Exception) -> None:
    try:
        raise ValueError("the cause, which the traceback prints first")
    except ValueError as cause:
        raise error from cause


@pytest.mark.parametrize(
    "error, status",
    [(ConfigError("--trainer.fast_dev_run 2: expected 1"), 2), (ValueError("bad data:\nits second line"), 1),
     (FileNotFoundError(2, "No such file or directory", "a.ckpt"), 1), (RuntimeError("a bug"), None)],
    ids=["setting", "data", "file", "not-the-users"],
)  # fmt: skip
def test_a_refusal_in_a_process_that_ddp_spawn_started_is_printed_alone_with_its_status(
    error: Exception, status: int | None, capsys
) -> None:
    # ddp_spawn's processes report an error to the command as torch's ProcessRaisedException, which holds its traceback
    def spawn() -> None:
        torch.multiprocessing.start_processes(raise_in_a_process, args=(error,), nprocs=1, start_method="fork")

    if status is None:
        with pytest.raises(torch.multiprocessing.ProcessRaisedException, match="RuntimeError: a bug"):
            run_command("ae-lightning", spawn)
        return
    with pytest.raises(SystemExit) as exited:
        run_command("ae-lightning", spawn)
    assert exited.value.code == status
    assert capsys.readouterr().err == f"ae-lightning: error: {error}\n(add --print_traceback for the traceback)\n"


def test_a_setting_lightning_refuses_as_it_runs_is_printed_alone_as_a_setting(
    data_dir: Path, tmp_path: Path, capsys
) -> None:
    # Lightning's MisconfigurationException for a checkpoint monitor that no metric has was a traceback (exit status 1)
    one_batch = ["--trainer.max_epochs", "1", "--trainer.limit_train_batches", "1", "--trainer.limit_val_batches", "1"]
    args = tiny_args("ae", data_dir, tmp_path, "--checkpoint.monitor", "val/los", *one_batch)
    with mock.patch("sys.argv", ["ae-lightning", "fit", *args]), pytest.raises(SystemExit) as exited:
        run_command("ae-lightning", AutoencoderCLI)
    error = capsys.readouterr().err
    assert exited.value.code == 2 and "Traceback" not in error
    assert error.startswith("ae-lightning: error: `ModelCheckpoint(monitor='val/los')` could not find the monitored")


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["--model.init_args.latent_dimm", "3"], "--model ae_lightning.VAE: Option 'latent_dimm' is not accepted"),
        (["--data.batch_size", "abc"], "--data datamodules.MNISTDataModule: batch_size: Not of type int >= 1: invalid "
                                       "literal for int() with base 10: 'abc'"),
        (["--nosuch", "1"], "unrecognized arguments: --nosuch 1"),
        (["--model.init_args.lr_scheduler", "torch.optim.lr_scheduler.StepLR",
          "--model.init_args.lr_scheduler.init_args.gamma", "x"],
         "--model ae_lightning.VAE: lr_scheduler: gamma: Expected a float. Got value: x"),
        (["--model.init_args.encoder", "torch.nn.Linear", "--model.init_args.encoder.init_args.in_featurez", "3"],
         "--model ae_lightning.VAE: encoder: torch.nn.Linear: Option 'in_featurez' is not accepted"),
    ],
    ids=["unknown-argument", "not-an-integer", "unknown-option", "scheduler-argument", "encoder-argument"],
)  # fmt: skip
def test_a_value_the_parser_rejects_is_one_line_naming_the_argument(
    argv: list[str], expected: str, tmp_path: Path
) -> None:
    assert refused_in_one_line(argv, tmp_path).startswith(expected)


def refused_in_one_line(argv: list[str], tmp_path: Path, typo_yaml: str = "") -> str:
    """The parser's refusal of ``fit --config configs/vae.yaml <argv>`` on one line; MISSPELLED_YAML in ``argv`` names
    a file that holds ``typo_yaml``."""
    (tmp_path / "typo.yaml").write_text(typo_yaml)
    argv = [arg.replace("MISSPELLED_YAML", str(tmp_path / "typo.yaml")) for arg in argv]
    with pytest.raises(ArgumentError) as refused:
        run_cli("fit", "--config", "configs/vae.yaml", *argv)
    return one_line(str(refused.value))


@pytest.mark.parametrize(
    "argv, hint",
    [
        (["--trainer.max_epohcs", "1"], "did you mean --trainer.max_epochs?"),
        (["--modle.init_args.latent_dim", "3"], "did you mean --model.init_args.latent_dim?"),
        (["--model.init_args.latent_dimm", "3"], "did you mean 'latent_dim'?"),
        (["--model.init_args.optimizer.init_args.lrr", "0.1"], "did you mean 'lr'?"),
        (["--trainer.callbacks+=EarlyStopping", "--trainer.callbacks.monitr", "val/loss"], "did you mean 'monitor'?"),
        (["--config", "MISSPELLED_YAML"], "did you mean 'checkpoint.monitor'?"),
        (["--nosuch", "1"], None),
        (["--prnt_config"], None),  # not --config
    ],
    ids=["trainer-key", "section", "model-argument", "optimizer-argument", "callback-argument", "yaml-key", "none",
         "not-close"],
)  # fmt: skip
def test_a_misspelled_key_is_refused_with_the_known_one_it_resembles(
    argv: list[str], hint: str | None, tmp_path: Path
) -> None:
    message = refused_in_one_line(argv, tmp_path, "checkpoint:\n  monitr: val/recon\n")
    assert message.endswith(hint) if hint else "did you mean" not in message, message


@pytest.mark.parametrize(
    "argv, refused, known",
    [
        (["--model.class_path", "ae_lightning.Vea"], "--model ae_lightning.Vea", "VAE"),
        (["--model", "Vea"], "--model Vea", "VAE"),
        (["--config", "MISSPELLED_YAML"], "--model ae_lightning.VEA", "VAE"),
        (["--data.class_path", "datamodules.FashionMNISTDatamodule"], "--data datamodules.FashionMNISTDatamodule",
         "FashionMNISTDataModule"),
        (["--trainer.logger", "CSVLoger"], "--trainer.logger CSVLoger", "CSVLogger"),
        (["--trainer.logger+=CSVLoger"], "--trainer.logger CSVLoger", "CSVLogger"),
        (["--trainer.callbacks+=EarlyStoping"], "--trainer.callbacks EarlyStoping", "EarlyStopping"),
        (["--model.init_args.optimizer", "torch.optim.Adamm"], "--model.init_args.optimizer torch.optim.Adamm", "Adam"),
        (["--model.init_args.lr_scheduler", "StepRL"], "--model.init_args.lr_scheduler StepRL", "StepLR"),
        (["--model.init_args.encoder", "torch.nn.Lineer"], "--model.init_args.encoder torch.nn.Lineer", None),
        (["--model.help", "VAEE"], "--model.help VAEE", "VAE"),
        (["--data.help=MNISTDataModul"], "--data.help MNISTDataModul", "MNISTDataModule"),
        (["--trainer.logger.help", "CSVLoger"], "--trainer.logger.help CSVLoger", "CSVLogger"),
    ],
    ids=["model-path", "model-name", "yaml", "data", "logger", "appended-logger", "callback", "optimizer", "scheduler",
         "encoder", "model-help", "data-help", "logger-help"],
)  # fmt: skip
def test_a_misspelled_class_name_is_refused_with_the_known_classes_and_the_closest(
    argv: list[str], refused: str, known: str | None, tmp_path: Path
) -> None:
    # jsonargparse said "expected dot import path string: CSVLoger or collections.abc.Iterable or bool or NoneType"
    message = refused_in_one_line(argv, tmp_path, "model:\n  class_path: ae_lightning.VEA\n")
    assert message.startswith(f"{refused} is not a known class; "), message
    closest = known or "Linear"  # torch.nn.Module has too many subclasses to list: the closest alone
    assert message.endswith(f"; did you mean {closest}?"), message
    if known and "known subclasses of" not in message:  # listed unless more than 50 (earlier test modules add some)
        assert "the known ones are " in message and f" {known}," in message, message
    assert "NoneType" not in message and "Union" not in message


def test_an_appended_logger_writes_into_the_runs_root_as_one_given_in_place_of_the_default(
    data_dir: Path, tmp_path: Path
) -> None:
    # --trainer.logger CSVLogger took the default logger's save_dir; --trainer.logger+=CSVLogger asked for one
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

    replaced = build(*common(data_dir, tmp_path), "--trainer.logger", "CSVLogger").trainer.loggers
    appended = build(*common(data_dir, tmp_path), "--trainer.logger+=CSVLogger").trainer.loggers
    assert [type(logger) for logger in replaced] == [CSVLogger]
    assert [type(logger) for logger in appended] == [TensorBoardLogger, CSVLogger]
    assert {Path(logger.save_dir) for logger in [*replaced, *appended]} == {tmp_path}
    own = build(*common(data_dir, tmp_path), "--trainer.logger+", "CSVLogger", "--trainer.logger.save_dir",
                str(tmp_path / "csv")).trainer.loggers  # fmt: skip
    assert [Path(logger.save_dir) for logger in own] == [tmp_path, tmp_path / "csv"]


def test_several_loggers_of_one_folder_write_one_run_into_one_version_unless_given_versions(
    data_dir: Path, tmp_path: Path
) -> None:
    # TensorBoard and the checkpoints went to version_0, metrics.csv to version_1 (each logger numbered its own)
    both = [*common(data_dir, tmp_path), "--trainer.logger+=CSVLogger", "--trainer.log_every_n_steps", "1"]
    run = ["--trainer.max_steps", "2", "--trainer.limit_val_batches", "1"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(2):  # a second run into the same root takes the next version, one for both loggers again
            run_cli("fit", "--config", str(ROOT / "configs" / "ae.yaml"), *both, *run)
    runs = tmp_path / "lightning_logs"
    assert sorted(path.name for path in runs.iterdir()) == ["version_0", "version_1"]
    for version in runs.iterdir():
        assert {"metrics.csv", "config.yaml", "hparams.yaml"} <= {path.name for path in version.iterdir()}
        assert (version / "checkpoints" / "last.ckpt").is_file() and next(version.glob("events.out.tfevents.*"))
        assert "version: 0" not in (version / "config.yaml").read_text()  # the run's config names no version
    assert not [w for w in caught if "exists and is not empty" in str(w.message)]
    given = build(*both, "--trainer.logger.version", "7").trainer.loggers  # the CSV logger's: both keep their own
    assert [Path(logger.log_dir).name for logger in given] == ["version_2", "version_7"]


def test_evaluating_without_a_checkpoint_warns_that_the_weights_are_the_configs_untrained_ones(
    data_dir: Path, tmp_path: Path
) -> None:
    # validate, test and predict scored the randomly initialized model without a word
    args = [
        "--config",
        str(ROOT / "configs" / "ae.yaml"),
        *common(data_dir, tmp_path),
        "--trainer.limit_val_batches",
        "1",
    ]
    with pytest.warns(UserWarning, match=r"validate without --ckpt_path evaluates the weights that the config builds"):
        run_cli("validate", *args)


def test_the_hints_read_the_wording_of_jsonargparses_errors(tmp_path: Path) -> None:
    """The hints of misspelled keys and class names read jsonargparse's errors: a release that words them otherwise
    fails here, naming the wording the command expects, instead of the hints silently going."""
    from importlib.metadata import version

    from jsonargparse import ActionConfigFile, ArgumentParser
    from lightning.pytorch.loggers import Logger

    from ae_lightning.base import AutoencoderModule
    from ae_lightning.cli import UNKNOWN_ARGUMENT, UNKNOWN_CLASS, UNKNOWN_OPTION, _known_class_like, _known_key_like

    fit = ArgumentParser(exit_on_error=False)
    fit.add_argument("--config", action=ActionConfigFile)
    fit.add_argument("--max_epochs", type=int)
    fit.add_argument("--logger", type=Logger | None)
    fit.add_subclass_arguments(AutoencoderModule, "model", required=False, fail_untyped=False)
    parser = ArgumentParser(exit_on_error=False)
    parser.add_subcommands().add_subcommand("fit", fit)
    (tmp_path / "typo.yaml").write_text("max_epohcs: 3\n")
    model = ["--model", "Autoencoder"]
    cases = [
        (["--max_epohcs", "1"], UNKNOWN_OPTION, "--max_epochs"),
        (["--config", str(tmp_path / "typo.yaml")], UNKNOWN_OPTION, "'max_epochs'"),
        ([*model, "--model.init_args.latent_dimm", "2"], UNKNOWN_ARGUMENT, "'latent_dim'"),
        (["--logger", "CSVLoger"], UNKNOWN_CLASS, "CSVLogger"),
        (["--logger", "lightning.pytorch.loggers.CSVLoger"], UNKNOWN_CLASS, "CSVLogger"),
        (["--logger", "nosuch.CSVLogger"], UNKNOWN_CLASS, "CSVLogger"),
        ([*model, "--model.init_args.optimizer", "torch.optim.Adamm"], UNKNOWN_CLASS, "Adam"),
    ]
    for argv, wording, hint in cases:
        with pytest.raises(ArgumentError) as raised:
            parser.parse_args(["fit", *argv])
        message = str(raised.value)
        assert wording.search(message), (
            f"jsonargparse {version('jsonargparse')} words its error for {argv} otherwise than ae_lightning.cli "
            f"expects ({wording.pattern!r}): {message}"
        )
        said = _known_class_like(message) if wording is UNKNOWN_CLASS else _known_key_like(message, [fit])
        assert said is not None and said.endswith(hint if wording is not UNKNOWN_CLASS else f"did you mean {hint}?")


def test_a_new_variant_needs_only_its_module_and_its_config(data_dir: Path, tmp_path: Path, monkeypatch) -> None:
    """A variant is a module with ``loss_terms`` and a config naming it: fit, test and reloading need nothing else
    (inside the package, one line in ``ae_lightning._EXPORTS`` adds the short name ``ae_lightning.<Class>``)."""
    (tmp_path / "l1_variant.py").write_text(
        "from ae_lightning import DeterministicAutoencoder\n\n\n"
        "class L1Autoencoder(DeterministicAutoencoder):\n"
        "    def loss_terms(self, x, labels, indices):\n"
        "        recon = (self.decode(self.encode(x)) - x).abs().flatten(1).sum(1).mean()\n"
        "        return {'loss': recon, 'recon': recon}\n"
    )
    config = tmp_path / "l1.yaml"
    config.write_text(
        "model:\n  class_path: l1_variant.L1Autoencoder\n  init_args: {latent_dim: 4, hidden_dims: [16]}\n"
        "data:\n  class_path: datamodules.MNISTDataModule\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    args = ["--config", str(config), *common(data_dir, tmp_path / "run")]
    fit = run_cli("fit", *args, "--trainer.max_steps", "4", "--trainer.max_epochs", "-1")
    assert type(fit.model).__name__ == "L1Autoencoder" and fit.trainer.global_step == 4
    tested = run_cli("test", *args, "--ckpt_path", "last", "--trainer.limit_test_batches", "1")
    x = next(iter(tested.datamodule.test_dataloader()))[0]
    with torch.no_grad():  # the variant's own loss, with the checkpoint's weights
        l1 = (tested.model.decode(tested.model.encode(x)) - x).abs().flatten(1).sum(1).mean()
    assert type(tested.model).__name__ == "L1Autoencoder"
    assert torch.allclose(tested.trainer.callback_metrics["test/loss"], l1)


CYCLIC = "{class_path: torch.optim.lr_scheduler.CyclicLR, init_args: {base_lr: 0.0, max_lr: 0.01, step_size_up: 4}}"


@pytest.mark.parametrize(
    "lr, scheduler, warns",
    [("0", [], True), ("0.001", [], False), ("0", ["--model.init_args.lr_scheduler", CYCLIC], False)],
)
def test_an_lr_of_zero_everywhere_is_warned_of_before_training(
    lr: str, scheduler: list[str], warns: bool, data_dir: Path, tmp_path: Path
) -> None:
    args = ["--config", "configs/ae.yaml", *common(data_dir, tmp_path), "--model.init_args.optimizer.init_args.lr", lr]
    args += scheduler  # a scheduler that raises the lr from 0
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run_cli("fit", *args, "--trainer.max_steps", "1", "--trainer.limit_val_batches", "0")
    said = [str(warning.message) for warning in caught if "will not train" in str(warning.message)]
    assert said == (["Adam's lr is 0 in every parameter group: its weights will not train"] if warns else [])


def test_the_command_leaves_the_callers_warning_and_logging_filters_as_they_were(data_dir: Path, tmp_path) -> None:
    warning_filters = list(warnings.filters)
    logger_filters = {name: list(logging.getLogger(name).filters) for name in ("lightning.pytorch", "lightning")}
    run_cli("fit", "--config", "configs/ae.yaml", *common(data_dir, tmp_path), "--trainer.fast_dev_run", "true")
    assert warnings.filters == warning_filters
    assert {name: list(logging.getLogger(name).filters) for name in logger_filters} == logger_filters


@pytest.mark.parametrize(
    "config, setting, message",
    [
        ("aae", ["--trainer.gradient_clip_val", "1.5"], r"--trainer.gradient_clip_val 1.5: AdversarialAutoencoder "
         r"steps its optimizers itself .* set --model.init_args.gradient_clip_val 1.5 instead"),
        ("factor_vae", ["--trainer.gradient_clip_val", "1"], r"FactorVAE .* it has no gradient clipping of its own"),
        ("aae", ["--trainer.accumulate_grad_batches", "2"], r"--trainer.accumulate_grad_batches 2: .* accumulates "
         r"nothing; raise --data.batch_size instead"),
        ("ae", ["--trainer.log_every_n_steps", "-1"], r"--trainer.log_every_n_steps -1: expected 0 \(no step logs\)"),
    ],
    ids=["aae-clip", "factor-vae-clip", "aae-accumulate", "negative-log-interval"],
)  # fmt: skip
def test_trainer_settings_a_run_cannot_honour_are_refused_before_any_file(
    config: str, setting: list[str], message: str, data_dir: Path, tmp_path: Path
) -> None:
    with pytest.raises(ConfigError, match=message):
        run_cli("fit", *tiny_args(config, data_dir, tmp_path, *setting))
    assert not any(tmp_path.rglob("config.yaml"))


@pytest.mark.parametrize(
    "setting, message",
    [(["--trainer.limit_val_batches", "0"], r"ReduceLROnPlateau steps on val/loss after each validation, but "
                                            r"--trainer.limit_val_batches 0 runs none"),
     (["--trainer.check_val_every_n_epoch", "null", "--trainer.val_check_interval", "2"],
      r"--trainer.check_val_every_n_epoch null validates every val_check_interval \(2\) batches instead"),
     (["--trainer.check_val_every_n_epoch", "2", "--trainer.max_epochs", "1"], None)],
    ids=["no-validation", "validation-by-steps", "validation-by-epochs"],
)  # fmt: skip
def test_a_plateau_scheduler_no_validation_steps_is_refused_before_any_file(
    setting: list[str], message: str | None, data_dir: Path, tmp_path: Path
) -> None:
    plateau = ["--model.init_args.lr_scheduler", "torch.optim.lr_scheduler.ReduceLROnPlateau"]
    args = tiny_args("ae", data_dir, tmp_path / "run", *plateau, *setting)
    if message is None:  # validation after some epochs steps it: the run trains
        run_cli("fit", *args)
        assert any((tmp_path / "run").rglob("config.yaml"))
        return
    with pytest.raises(ConfigError, match=message):
        run_cli("fit", *args)
    assert not (tmp_path / "run").exists()  # no run folder, config.yaml or logs of the refused run


def test_a_plateau_of_the_users_own_on_a_training_metric_trains_without_validation(data_dir: Path, tmp_path: Path):
    own = ["--model", "tiny_runs.TrainLossPlateauAutoencoder", "--trainer.limit_val_batches", "0"]
    run_cli("fit", *tiny_args("ae", data_dir, tmp_path, *own, "--trainer.max_epochs", "2"))
    assert any(tmp_path.rglob("config.yaml")) and any(tmp_path.rglob("*.ckpt"))


@pytest.mark.parametrize(
    "setting, message",
    [
        (["--checkpoint.save_top_k", "-5"], "--checkpoint.save_top_k -5: Invalid value for save_top_k=-5"),
        (["--checkpoint.mode", "maxx"], "--checkpoint.mode maxx: `mode` can be min, max but got maxx"),
        (["--images.nrow", "0"], "--images.nrow 0: nrow must be an integer >= 1, got 0"),
        (["--images.every_n_epochs", "-1"], "--images.every_n_epochs -1: every_n_epochs must be an integer >= 0"),
        (["--nonfinite.max_skipped", "2"], r"--nonfinite.max_skipped 2.0: max_skipped must lie in \[0, 1\)"),
        (["--predictions.chunk_bytes", "0"], "--predictions.chunk_bytes 0: chunk_bytes must be a positive number"),
    ],
    ids=["checkpoint-top-k", "checkpoint-mode", "images-nrow", "images-every", "nonfinite-share", "chunk-bytes"],
)
def test_a_sections_setting_its_class_refuses_names_the_option_as_typed_before_any_file(
    setting: list[str], message: str, data_dir: Path, tmp_path: Path
) -> None:
    # A ConfigError: ae-lightning prints it alone with exit status 2 (a setting), not a traceback or status 1.
    with pytest.raises(ConfigError, match=f"^{message}"):
        build(*common(data_dir, tmp_path / "run"), *setting)
    assert not (tmp_path / "run").exists()


def test_a_seed_numpy_cannot_take_is_refused_naming_the_option() -> None:
    # Lightning's seed_everything raised "-1 is not in bounds, numpy accepts ...", printed as bad data (exit status 1)
    for seed in ("-1", str(2**32)):
        with pytest.raises(ConfigError, match=rf"^--seed_everything {seed}: expected an integer in \[0, 2\*\*32\)"):
            build("--seed_everything", seed)
    assert build("--seed_everything", str(2**32 - 1)).config.seed_everything == 2**32 - 1


def test_fast_steps_below_one_is_refused_naming_the_option(capsys) -> None:
    # the refusal named --data's steps_per_batch, which the user never typed
    with pytest.raises(ConfigError, match=r"^--fast.steps 0: expected an integer >= 1"):
        build("--fast.steps", "0")
    with pytest.raises(SystemExit):
        build("--help")
    assert "an integer >= 1" in " ".join(capsys.readouterr().out.split("--fast.steps STEPS")[2].split())


@pytest.mark.parametrize("subcommand", ["test", "fit"])
def test_ckpt_path_best_is_refused_with_what_to_give_before_any_file(
    subcommand: str, data_dir: Path, tmp_path: Path
) -> None:
    # Lightning's "best" is the best of an earlier fit of the same Trainer: a new command has none.
    with pytest.raises(ConfigError, match=r"^--ckpt_path best: this .* new Trainer, which knows no best checkpoint"):
        run_cli(subcommand, "--config", "configs/ae.yaml", *common(data_dir, tmp_path / "run"), "--ckpt_path", "best")
    assert not (tmp_path / "run").exists()


def test_a_stream_missing_a_chunk_of_the_split_a_run_reads_is_refused_before_the_run_writes_anything(
    tmp_path: Path,
) -> None:
    # found by the datamodule's setup, after Lightning's logger had made the run's version_0 folder
    from conftest import write_image_folder

    from datamodules.stream_prepare import prepare_stream

    write_image_folder(tmp_path / "images", per_class=12, size=12)
    prepare_stream(str(tmp_path / "images"), str(tmp_path / "stream"), size=12, chunk_size=4, num_workers=1)
    chunk = tmp_path / "stream" / "val" / "chunk-0-0.bin"
    chunk.unlink()
    root = tmp_path / "run"
    args = ["--config", str(ROOT / "configs" / "ae.yaml"), "--model.init_args.hidden_dims", "[8]", "--data",
            "StreamingDataModule", "--data.input_dir", str(tmp_path / "stream"), "--trainer.default_root_dir",
            str(root), "--trainer.max_epochs", "1", "--trainer.enable_progress_bar", "false"]  # fmt: skip
    for subcommand in ("fit", "validate"):
        with pytest.raises(FileNotFoundError, match=f"chunk {chunk} is missing from stream"):
            run_cli(subcommand, *args)
        assert not root.exists(), subcommand
    run_cli("test", *args)  # the test split is whole
    assert root.exists()


@pytest.mark.parametrize(
    "text", ["parameters:\n  # model.init_args.beta: {type: float, low: 1, high: 4}\n", "parameters: {}"]
)
def test_a_search_space_without_parameters_is_refused_saying_so(tmp_path: Path, text: str) -> None:
    (tmp_path / "space.yaml").write_text(text)
    with pytest.raises(ValueError, match="space.yaml: parameters names no argument to search"):
        read_space(tmp_path / "space.yaml")


@pytest.mark.parametrize("root", ["file", "file/studies"])
def test_a_search_root_that_is_a_file_is_refused_before_the_study_is_opened(
    tmp_path: Path, capsys: pytest.CaptureFixture, root: str
) -> None:
    (tmp_path / "file").write_text("")
    args = ["--config", "c.yaml", "--space", "s.yaml", "--storage", "sqlite:///s.db", "--n_trials", "1"]
    with pytest.raises(SystemExit):
        search_args([*args, "--root", str(tmp_path / root)])
    assert f"--root {tmp_path / root}: {tmp_path / 'file'} is a file; expected a folder" in capsys.readouterr().err


def test_ckpt_path_last_without_a_checkpoint_outside_fit_is_refused_without_saying_it_starts_from_scratch(
    data_dir: Path, tmp_path: Path
) -> None:
    with warnings.catch_warnings(record=True) as caught, pytest.raises(FileNotFoundError, match="no checkpoint"):
        warnings.simplefilter("always")
        run_cli("test", *tiny_args("ae", data_dir, tmp_path / "run", "--ckpt_path", "last"))
    assert not [str(w.message) for w in caught if "starting from scratch" in str(w.message)]


def test_ckpt_path_last_without_a_checkpoint_starts_a_fit_from_scratch_saying_where_it_searched(
    data_dir: Path, tmp_path: Path
) -> None:
    with pytest.warns(UserWarning, match=rf"--ckpt_path last: no checkpoint under {tmp_path / 'run'} yet, starting"):
        run_cli("fit", *tiny_args("ae", data_dir, tmp_path / "run", "--ckpt_path", "last"))
    assert list((tmp_path / "run").rglob("last.ckpt"))


@pytest.mark.parametrize(
    ("chosen", "listed"),
    [
        (["--config", str(ROOT / "configs" / "vae.yaml")], ["--model.latent_dim", "--model.beta", "--data.batch_size"]),
        (["--model", "VAE"], ["--model.latent_dim", "--model.beta"]),  # no datamodule yet: the model's alone
        (["--data", "MNISTDataModule"], ["--data.batch_size"]),
        (["--config", str(ROOT / "configs" / "ae.yaml"), "--print_config"], ["--model.latent_dim"]),  # help, no config
    ],
)
def test_help_after_a_config_lists_the_arguments_of_its_model_and_datamodule(
    capsys: pytest.CaptureFixture, chosen: list[str], listed: list[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        run_cli("fit", *chosen, "--help")
    printed = capsys.readouterr().out
    assert exited.value.code == 0 and "--trainer.max_epochs" in printed  # the command's own help, then the classes'
    assert all(name in printed for name in listed), [name for name in listed if name not in printed]


def test_a_predict_into_a_wandb_run_with_predictions_is_refused_before_it_writes_its_config(
    data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    wandb = pytest.importorskip("wandb")
    for name, value in {"WANDB_MODE": "offline", "WANDB_DIR": str(tmp_path), "WANDB_SILENT": "true"}.items():
        monkeypatch.setenv(name, value)
    run_cli("fit", *tiny_args("ae", data_dir, tmp_path, "--trainer.max_epochs", "1"))
    checkpoint = str(next(tmp_path.rglob("last.ckpt")))
    logger = ["--trainer.logger", "WandbLogger", "--trainer.logger.project", "p", "--trainer.logger.id", "codes"]
    predict = ["predict", *tiny_args("ae", data_dir, tmp_path, *logger, "--ckpt_path", checkpoint)]
    run_cli(*predict)
    wandb.finish()
    run_folder = tmp_path / "p" / "codes"
    before = sorted(path.name for path in run_folder.iterdir())
    with pytest.raises(FileExistsError, match=f"{run_folder / 'predictions.pt'} already exists"):
        run_cli(*predict)
    wandb.finish()
    assert sorted(path.name for path in run_folder.iterdir()) == before  # no config-predict-v1.yaml


def test_the_optimizers_and_schedulers_are_read_as_lightning_reads_them(monkeypatch: pytest.MonkeyPatch) -> None:
    from lightning.pytorch.core import optimizer

    from ae_lightning.lightning_internals import optimizers_and_schedulers

    weight = torch.nn.Parameter(torch.zeros(1))
    first, second = torch.optim.SGD([weight], lr=0.1), torch.optim.Adam([weight])
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(first)
    step = torch.optim.lr_scheduler.StepLR(second, 1)
    # a top-level monitor (Lightning's single-dict form) is the scheduler's
    assert optimizers_and_schedulers({"optimizer": first, "lr_scheduler": plateau, "monitor": "val/loss"}) == (
        [first],
        [{"scheduler": plateau, "monitor": "val/loss"}],
    )
    both = [{"optimizer": first}, {"optimizer": second, "lr_scheduler": {"scheduler": step, "interval": "step"}}]
    assert optimizers_and_schedulers(both) == ([first, second], [{"scheduler": step, "interval": "step"}])
    assert optimizers_and_schedulers(([first, second], [step]))[1] == [{"scheduler": step, "monitor": None}]
    assert optimizers_and_schedulers(None) == ([], [])  # Lightning runs with no optimizer
    monkeypatch.delattr(optimizer, "_configure_optimizers")
    with pytest.raises(RuntimeError, match=r"changed an internal .*_configure_optimizers"):
        optimizers_and_schedulers(first)


def test_the_prediction_writer_says_where_its_predictions_go_and_refuses_a_taken_path(tmp_path: Path) -> None:
    # The command asks the writer, before it writes the run's config, whether the predictions' path is free.
    trainer = L.Trainer(default_root_dir=tmp_path, logger=False, enable_progress_bar=False)
    writer = PredictionWriter(filename="codes.pt")
    assert writer.target(trainer) == tmp_path / "codes.pt"
    (tmp_path / "codes.pt").write_bytes(b"")
    with pytest.raises(FileExistsError, match=f"{tmp_path / 'codes.pt'} already exists"):
        writer.target(trainer, new=True)


def test_config_settings_that_a_class_given_on_the_command_line_does_not_take_are_named(
    data_dir: Path, tmp_path: Path
) -> None:
    # jsonargparse leaves them out without a word: configs/cvae.yaml's binarize: dynamic under --data
    # StreamingDataModule trained the Bernoulli VAE on gray pixels
    message = r"--model ae_lightning.Autoencoder takes no likelihood='bernoulli', beta=1.0, .*vae.yaml's model section"
    with pytest.warns(UserWarning, match=message + r" \(ae_lightning.VAE\): left out"):
        build_cli(*tiny_args("vae", data_dir, tmp_path), "--model", "Autoencoder")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        build_cli(*tiny_args("vae", data_dir, tmp_path))
    assert not [warning for warning in caught if "left out" in str(warning.message)]
