"""``ae-lightning-search``: the search space's checks, the study storage's checks, and a study that survives
``kill -9`` of its process (tiny trials of configs/ae.yaml on the tiny data the tests write)."""

from __future__ import annotations

import csv
import math
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from unittest import mock

import optuna
import pytest
import torch
import yaml

from ae_lightning import Autoencoder, search
from ae_lightning.cli import AutoencoderCLI, ConfigError

ROOT = Path(__file__).parents[1]
LATENT, DROPOUT = "model.init_args.latent_dim", "model.init_args.dropout"
AE = ROOT / "configs" / "ae.yaml"
SPACE = {
    "metric": "val/loss",
    "parameters": {
        "model.init_args.latent_dim": {"type": "int", "low": 2, "high": 6},
        "model.init_args.dropout": {"type": "float", "low": 0.0, "high": 0.3},
    },
}


def write_space(folder: Path, parameters: dict | None = None) -> Path:
    path = folder / "space.yaml"
    path.write_text(yaml.safe_dump({**SPACE, "parameters": parameters or SPACE["parameters"]}))
    return path


def search_args(tmp_path: Path, data_dir: Path, *extra: str, config: Path = AE) -> list[str]:
    return [
        "--config", str(config), "--space", str(write_space(tmp_path)),
        "--storage", f"sqlite:///{tmp_path / 'study.db'}", "--study_name", "ae", "--root", str(tmp_path / "trials"),
        "--data.data_dir", str(data_dir), "--model.init_args.hidden_dims", "[8]",
        "--trainer.limit_train_batches", "1", "--trainer.limit_val_batches", "1",
        "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
        "--images.every_n_epochs", "0", *extra,
    ]  # fmt: skip


@pytest.mark.parametrize(
    "parameters, message",
    [
        ({"model.init_args.beta": {"type": "float", "low": 0.5, "high": 4.0}}, r"does not have: model.init_args.beta"),
        ({"model.init_args.latent_dim": {"type": "int", "low": 8, "high": 2}}, r"inverted, low 8 > high 2"),
        ({"model.init_args.dropout": {"type": "float", "low": 0.1, "high": 0.1}}, r"empty, low = high = 0.1"),
        ({"model.init_args.dropout": {"type": "float", "low": 0.0, "high": 0.5, "log": True}}, r"log range .* low 0"),
        ({"data.init_args.batch_size": {"type": "categorical", "choices": []}}, r"non-empty list of choices"),
        ({"model.init_args.latent_dim": {"type": "uniform", "low": 1, "high": 2}}, r"type: float\|int\|categorical"),
        ({"model.init_args.latent_dim": {"type": "int", "low": 1.5, "high": 4}}, r"needs int low and high"),
        ({LATENT: {"type": "int", "low": 2, "high": 64, "log": True, "step": 2}}, r"step and log: true exclude"),
        ({LATENT: {"type": "int", "low": 2, "high": 8, "step": 0}}, r"step must be a positive finite int, got 0"),
        ({LATENT: {"type": "int", "low": 2, "high": 8, "step": -2}}, r"step must be a positive finite int, got -2"),
        ({LATENT: {"type": "int", "low": 2, "high": 8, "step": "2"}}, r"step must be a positive finite int, got '2'"),
        ({LATENT: {"type": "int", "low": 2, "high": 8, "step": 2.5}}, r"step must be a positive finite int, got 2.5"),
        ({LATENT: {"type": "int", "low": 0, "high": 10, "step": 20}}, r"step 20 is larger than the range .* = 10"),
        ({DROPOUT: {"type": "float", "low": 0.0, "high": float("inf")}}, r"finite numbers, got low 0.0 and high inf"),
        ({DROPOUT: {"type": "float", "low": float("nan"), "high": 0.5}}, r"finite numbers, got low nan"),
        ({DROPOUT: {"type": "float", "low": 0.1, "high": 0.5, "log": "false"}}, r"log must be true or false.*'false'"),
        ({LATENT: {"type": "int", "low": 8, "high": 64, "choices": [8]}}, r"\['choices'\] do not apply to type int"),
        ({DROPOUT: {"type": "categorical", "choices": [0.1], "log": True}}, r"\['log'\] do not apply to type cat"),
        ({DROPOUT: {"type": "float", "low": 0.1, "high": 0.5, "lg": True}}, r"\['lg'\] do not apply .*'log', 'low'"),
    ],
    ids=[
        "unknown-argument",
        "inverted",
        "empty",
        "log-zero",
        "no-choices",
        "unknown-type",
        "float-bounds-for-int",
        "step-with-log",
        "step-0",
        "step-negative",
        "step-string",
        "step-not-int",
        "step-over-range",
        "high-inf",
        "low-nan",
        "log-string",
        "choices-of-int",  # silently ignored before: trials drew any int in [8, 64]
        "log-of-categorical",
        "unknown-key",
    ],  # fmt: skip
)
def test_bad_search_spaces_are_named(tmp_path: Path, data_dir: Path, parameters: dict, message: str) -> None:
    args = search_args(tmp_path, data_dir, "--n_trials", "1")
    path = write_space(tmp_path, parameters)
    name = next(iter(parameters))
    with pytest.raises(ValueError, match=message) as error:
        search.run(args)
    assert str(path) in str(error.value) and name in str(error.value)
    assert not (tmp_path / "study.db").exists()  # refused before the study is stored


@pytest.mark.parametrize("metric", [3, ["val/loss"], ""])
def test_a_metric_in_the_space_that_is_not_a_name_is_refused(tmp_path: Path, metric) -> None:
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump({**SPACE, "metric": metric}))
    with pytest.raises(
        ValueError, match=rf"search space {path}: metric must be a metric.s name .*got {re.escape(repr(metric))}"
    ):
        search.read_space(path)


@pytest.mark.parametrize("metric", ["train/loss", "test/recon"])
def test_a_metric_no_validation_logs_is_refused_before_the_study_is_stored(
    tmp_path: Path, data_dir: Path, metric: str
) -> None:
    # with --trainer.num_sanity_val_steps 0, train/loss passed as the search metric: trials were valued and pruned by
    # the training loss as it stood at each validation
    args = search_args(tmp_path, data_dir, "--n_trials", "1", "--metric", metric, "--trainer.num_sanity_val_steps", "0")
    with pytest.raises(ConfigError, match=rf"--metric {metric} is not a validation metric: .*e.g. val/loss"):
        search.run(args)
    assert not (tmp_path / "study.db").exists()


@pytest.mark.parametrize(
    "text, message",
    [
        ("parameters:\n  model.init_args.dropout: {type: float, low: 0.0\n", r"is not valid YAML: while parsing"),
        ("- model.init_args.dropout\n", r"expected a mapping with 'parameters' .*got a list"),
        ("dropout\n", r"expected a mapping with 'parameters' .*got a str"),
    ],
    ids=["syntax-error", "list", "scalar"],
)
def test_a_space_file_that_is_no_mapping_is_named(tmp_path: Path, text: str, message: str) -> None:
    # a traceback of the YAML parser, or a TypeError, before
    path = tmp_path / "space.yaml"
    path.write_text(text)
    with pytest.raises(ValueError, match=rf"search space {re.escape(str(path))}:? {message}"):
        search.read_space(path)


def test_unknown_argument_error_suggests_the_close_names(tmp_path: Path, data_dir: Path) -> None:
    write_space(tmp_path, {"model.init_args.latent_dims": {"type": "int", "low": 2, "high": 4}})
    with pytest.raises(ValueError, match=r"latent_dims \(did you mean model.init_args.latent_dim"):
        search.check_names(
            search.read_space(tmp_path / "space.yaml"), tmp_path / "space.yaml", [AE], search.resolve_config([AE], [])
        )


def test_numbers_in_exponent_notation_are_numbers_as_in_configs(tmp_path: Path) -> None:
    # PyYAML's YAML 1.1 reads 1e-4 as the string '1e-4'; the configs' reader (jsonargparse's) reads a number
    path = tmp_path / "space.yaml"
    path.write_text("parameters:\n  model.init_args.dropout: {type: float, low: 1e-4, high: 5E-1, log: true}\n")
    spec = search.read_space(path)["parameters"][DROPOUT]
    assert (spec["low"], spec["high"]) == (1e-4, 0.5)


def open_study(tmp_path: Path, data_dir: Path, *extra: str, config: Path = AE) -> optuna.Study:
    args, fit_args = search.parse_args(search_args(tmp_path, data_dir, "--n_trials", "1", *extra, config=config))
    space = search.read_space(args.space)
    settings = search.fit_settings(search.resolve_config(args.config, fit_args), space)
    return search.open_study(args, space, "minimize", "val/loss", settings)


def test_a_trials_value_is_its_best_validation_those_it_inherited_from_a_dead_run_included(
    tmp_path: Path, data_dir: Path
) -> None:
    # A retry resumes in a new version folder, whose checkpoint callback knows only the validations after the kill.
    args, fit_args = search.parse_args(search_args(tmp_path, data_dir, "--n_trials", "1", "--trainer.max_epochs", "1"))
    space = search.read_space(args.space)
    study = open_study(tmp_path, data_dir, "--trainer.max_epochs", "1")
    trial = study.ask()
    trial.report(-1.0, step=0)  # as a retry inherits it: a validation of the dead run, better than any to come
    assert search.objective(trial, args, space, "val/loss", fit_args) == -1.0
    trial = study.ask()
    value = search.objective(trial, args, space, "val/loss", fit_args)
    assert value == study.trials[-1].intermediate_values[1] > 0  # one run: its validation at step 1


def test_a_trial_without_validation_says_so(tmp_path: Path, data_dir: Path) -> None:
    # The run stops at its first step, before the end of its 3-batch epoch, where it would validate.
    args = search_args(tmp_path, data_dir, "--n_trials", "1", "--trainer.limit_train_batches", "3")
    with pytest.raises(ValueError, match="trial 0 ran no validation, so it has no val/loss: give its fit a validation"):
        search.run([*args, "--trainer.max_steps", "1"])


def test_a_metric_the_trials_do_not_log_is_named_before_training_and_can_be_corrected(
    tmp_path: Path, data_dir: Path
) -> None:
    args = search_args(tmp_path, data_dir, "--n_trials", "1", "--trainer.max_epochs", "1")
    with pytest.raises(ValueError, match=r"the search metric val/los \(--metric.* logs: .*val/loss"):
        search.run([*args, "--metric", "val/los"])
    (failed,) = trials(f"sqlite:///{tmp_path / 'study.db'}")
    assert failed.state == optuna.trial.TrialState.FAIL and not failed.intermediate_values
    assert not list((tmp_path / "trials").glob("**/*.ckpt"))  # refused at the sanity check, before training
    study = search.run([*args, "--metric", "val/loss"])  # the corrected command is not refused
    assert study.user_attrs["metric"] == "val/loss" and study.trials[-1].state == optuna.trial.TrialState.COMPLETE
    with pytest.raises(ValueError, match=r"belongs to another search: metric 'val/loss' \(this run: 'val/recon'\)"):
        search.run([*args, "--metric", "val/recon"])  # once a trial validated its metric, the study keeps it


def test_a_study_of_another_config_is_refused(tmp_path: Path, data_dir: Path) -> None:
    open_study(tmp_path, data_dir)
    other = ROOT / "configs" / "dropout_ae.yaml"
    with pytest.raises(ValueError, match=r"study 'ae' in sqlite:///.* belongs to another search: config .*ae.yaml"):
        open_study(tmp_path, data_dir, config=other)


def test_a_study_of_other_fit_settings_is_refused_naming_them(tmp_path: Path, data_dir: Path) -> None:
    open_study(tmp_path, data_dir, "--trainer.max_epochs", "1")
    with pytest.raises(ValueError, match=r"belongs to another search: fit settings model.init_args.reconstruction "
                       r"'bce' \(this run: 'mse'\); trainer.max_epochs 1 \(this run: 3\)\. Resume"):  # fmt: skip
        open_study(tmp_path, data_dir, "--trainer.max_epochs", "3", "--model.init_args.reconstruction", "mse")
    open_study(tmp_path, data_dir, "--trainer.max_epochs", "1")  # the same settings open it
    # the config file edited in place, at the same path
    config, folder = tmp_path / "ae.yaml", tmp_path / "edited"
    config.write_text(AE.read_text())
    folder.mkdir()
    open_study(folder, data_dir, config=config)
    config.write_text(AE.read_text().replace("reconstruction: bce", "reconstruction: mse"))
    with pytest.raises(ValueError, match=r"settings model.init_args.reconstruction 'bce' \(this run: 'mse'\)\. Resume"):
        open_study(folder, data_dir, config=config)


def test_a_study_stored_without_its_fit_settings_opens_and_records_them(tmp_path: Path, data_dir: Path) -> None:
    old = optuna.create_study(storage=f"sqlite:///{tmp_path / 'study.db'}", study_name="ae")
    identity = {"config": str(AE.resolve()), "space": search._digest(SPACE["parameters"]), "metric": "val/loss"}
    for key, value in identity.items():  # as the search wrote them before it recorded the fit settings
        old.set_user_attr(key, value)
    assert open_study(tmp_path, data_dir, "--trainer.max_epochs", "1").user_attrs["settings"]["trainer.max_epochs"] == 1
    with pytest.raises(ValueError, match=r"trainer.max_epochs 1 \(this run: 2\)"):
        open_study(tmp_path, data_dir, "--trainer.max_epochs", "2")


def draws(folder: Path, data_dir: Path) -> list:
    """The first parameter values that a process opening ``folder``'s study with --sampler_seed 0 draws."""
    folder.mkdir(exist_ok=True)
    study = open_study(folder, data_dir, "--sampler_seed", "0")
    trial = study.ask()
    values = [search.suggest(trial, name, spec) for name, spec in SPACE["parameters"].items()]
    study.tell(trial, 1.0)
    return values


def test_a_seeded_search_is_reproducible_but_reruns_and_array_tasks_draw_other_values(
    tmp_path: Path, data_dir: Path, monkeypatch
) -> None:
    monkeypatch.delenv("SLURM_ARRAY_TASK_ID", raising=False)
    first = draws(tmp_path / "a", data_dir)
    assert draws(tmp_path / "b", data_dir) == first  # a fresh search with the same seed
    assert draws(tmp_path / "a", data_dir) != first  # a rerun of the first search
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "1")
    task_1 = draws(tmp_path / "c", data_dir)
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "2")
    assert len({str(first), str(task_1), str(draws(tmp_path / "d", data_dir))}) == 3  # array tasks, each its own


def test_a_new_trial_refuses_a_folder_that_holds_an_earlier_run(tmp_path: Path, data_dir: Path) -> None:
    search.run(search_args(tmp_path, data_dir, "--n_trials", "1", "--trainer.max_epochs", "1"))
    (tmp_path / "study.db").unlink()  # a new study, whose trial 0 would resume the old trial 0
    with pytest.raises(ValueError, match=r"trial-0, the folder of new trial 0, already holds a run .* another --root"):
        search.run(search_args(tmp_path, data_dir, "--n_trials", "1", "--trainer.max_epochs", "2"))


@pytest.mark.parametrize(
    "extra",
    [
        ["--checkpoint.dirpath", "{tmp}/ckpts"],
        ["--trainer.default_root_dir={tmp}/mine"],
        ["--checkpoint.monitor", "val/recon"],
        ["--checkpoint.mode", "max"],
        ["--model.init_args.latent_dim", "3"],
        ["config"],
        ["--trainer.logger", '{{"class_path": "lightning.pytorch.loggers.WandbLogger", "init_args": {{"id": "r"}}}}'],
        # before: every trial's run and checkpoints in one folder; a retry found no checkpoint and started afresh
        ["--trainer.logger", "TensorBoardLogger", "--trainer.logger.save_dir", "{tmp}/logs"],
        ["--trainer.logger", "WandbLogger", "--trainer.logger.dir", "{tmp}/logs", "--trainer.logger.offline", "true"],
    ],
    ids=[
        "dirpath",
        "root-dir",
        "monitor",
        "mode",
        "searched",
        "dirpath-in-config",
        "wandb-run-id",
        "logger-save-dir",
        "wandb-dir",
    ],
)
def test_settings_the_search_sets_itself_are_refused_by_name(tmp_path: Path, data_dir: Path, extra: list) -> None:
    config = AE
    if extra == ["config"]:  # a checkpoint folder in the config: all trials would share it
        config = tmp_path / "ae.yaml"
        config.write_text(AE.read_text() + f"checkpoint:\n  dirpath: {tmp_path / 'ckpts'}\n")
        extra = []
    extra = [arg.format(tmp=tmp_path) for arg in extra]
    name = extra[0].removeprefix("--").split("=")[0] if extra else "checkpoint.dirpath"
    with pytest.raises(ValueError, match=rf"{name} .*(set by the search|parameter of the search|every trial)"):
        search.run(
            search_args(tmp_path, data_dir, "--n_trials", "1", "--trainer.max_epochs", "1", *extra, config=config)
        )
    assert not any((tmp_path / name).exists() for name in ("trials", "ckpts", "mine", "logs"))


@pytest.mark.parametrize("name, choice", [("checkpoint.mode", "max"), ("trainer.default_root_dir", "/tmp/mine")])
def test_a_setting_the_search_sets_itself_is_refused_as_a_parameter_of_the_space(
    tmp_path: Path, data_dir: Path, name: str, choice: str
) -> None:
    # before: the search's own --checkpoint.mode min came after the drawn max; the trial recorded max and ran min
    args = search_args(tmp_path, data_dir, "--n_trials", "1", "--trainer.max_epochs", "1")
    write_space(tmp_path, {DROPOUT: {"type": "float", "low": 0.0, "high": 0.3}, name: {"type": "categorical",
                "choices": [choice]}})  # fmt: skip
    with pytest.raises(search.ConfigError, match=rf"^{re.escape(name)} is set by the search .* its search space"):
        search.run(args)
    assert not (tmp_path / "study.db").exists()


def test_a_retry_killed_before_its_first_checkpoint_runs_in_its_own_folder(tmp_path: Path, data_dir: Path) -> None:
    extra = ("--trainer.max_epochs", "1", "--trainer.logger", "false")  # the run's config.yaml right in its folder
    args, fit_args = search.parse_args(search_args(tmp_path, data_dir, "--n_trials", "1", *extra))
    study = open_study(tmp_path, data_dir, *extra)
    folder = tmp_path / "trials" / "trial-0"
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text("# the dead run's\n")
    retry = study.ask()
    retry.set_user_attr("folder", str(folder))  # as a retry inherits it from the dead trial
    assert search.objective(retry, args, search.read_space(args.space), "val/loss", fit_args) > 0
    assert "the dead run's" not in (folder / "config.yaml").read_text()


def test_a_diverging_trial_fails_and_the_search_goes_on(tmp_path: Path, data_dir: Path, caplog) -> None:
    lr = "model.init_args.optimizer.init_args.lr"
    args = search_args(tmp_path, data_dir, "--n_trials", "2", "--trainer.max_epochs", "2", "--pruner", "none")
    write_space(tmp_path, {lr: {"type": "float", "low": 1e-4, "high": 1e30, "log": True}})
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 'study.db'}", study_name="ae")
    study.enqueue_trial({lr: 1e30})  # diverges
    study.enqueue_trial({lr: 1e-3})
    study = search.run(args)
    first, second = study.trials
    assert first.state == optuna.trial.TrialState.FAIL and "not finite" in first.user_attrs["diverged"]
    assert "Trial 0 failed" in caplog.text and "NonFiniteLossError" in caplog.text
    assert second.state == optuna.trial.TrialState.COMPLETE and len(study.trials) == 2  # it counts as a finished trial


class NonFiniteValidation(Autoencoder):
    """Trains as the plain AE; its validation's ``val/loss`` is NaN (weights gone NaN after the guard's last check)."""

    def validation_step(self, batch, batch_idx: int) -> None:
        self.log("val/loss", torch.tensor(float("nan")))


def test_a_trial_whose_validations_are_never_finite_fails_as_diverged_and_the_search_goes_on(
    tmp_path: Path, data_dir: Path
) -> None:
    args = search_args(tmp_path, data_dir, "--n_trials", "2", "--model", f"{__name__}.NonFiniteValidation")
    study = search.run(args)  # before, the first trial's ValueError stopped the search
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.FAIL] * 2
    assert all("val/loss was not finite at any validation" in t.user_attrs["diverged"] for t in study.trials)


def test_a_locked_storage_is_named(tmp_path: Path, data_dir: Path) -> None:
    open_study(tmp_path, data_dir)
    holder = sqlite3.connect(tmp_path / "study.db")
    holder.execute("BEGIN EXCLUSIVE")  # another process in the middle of a long write
    try:
        with pytest.raises(ValueError, match=r"study storage sqlite:///.*study.db is locked: .* --lock_timeout 0.2"):
            open_study(tmp_path, data_dir, "--lock_timeout", "0.2")
    finally:
        holder.rollback()
        holder.close()


def test_a_storage_locked_during_a_trial_is_named(tmp_path: Path, data_dir: Path, monkeypatch) -> None:
    holder = sqlite3.connect(tmp_path / "study.db")

    class LockingReporter(search.TrialReporter):  # another process takes the write lock as the trial validates
        def on_validation_end(self, trainer, pl_module) -> None:
            if not trainer.sanity_checking and not holder.in_transaction:
                holder.execute("BEGIN EXCLUSIVE")
            super().on_validation_end(trainer, pl_module)

    monkeypatch.setattr(search, "TrialReporter", LockingReporter)
    try:
        with pytest.raises(ValueError, match=r"study storage sqlite:///.*study.db is locked: .* --lock_timeout 0.2"):
            search.run(search_args(tmp_path, data_dir, "--n_trials", "1", "--trainer.max_epochs", "1",
                                   "--lock_timeout", "0.2"))  # fmt: skip
    finally:
        holder.rollback()
        holder.close()
    assert [t.state for t in trials(f"sqlite:///{tmp_path / 'study.db'}")] == [optuna.trial.TrialState.RUNNING]


# the last: a file that is not a database (here the search space, as with --space and --storage swapped)
@pytest.mark.parametrize(
    "storage",
    ["{tmp}/study.db", "postgresql://user@localhost:1/db", "nosuchdb://host/db", "sqlite:///{tmp}/space.yaml"],
)
def test_a_storage_that_is_not_a_usable_url_is_named(tmp_path: Path, data_dir: Path, storage: str) -> None:
    storage = storage.format(tmp=tmp_path)
    args = search_args(tmp_path, data_dir, "--n_trials", "1")
    args[args.index("--storage") + 1] = storage
    with pytest.raises(ValueError, match=rf"{re.escape(storage)} (is not a database URL.*expected sqlite:///path.db"
                       r".*postgresql://user@host/db|cannot be opened)"):  # fmt: skip
        search.run(args)
    assert not (tmp_path / "study.db").exists() and not (tmp_path / "trials").exists()  # nothing written


def test_a_storage_under_a_file_is_named(tmp_path: Path, data_dir: Path) -> None:
    # before: `[Errno 17] File exists: '.../space.yaml'`, naming neither --storage nor what was expected
    args = search_args(tmp_path, data_dir, "--n_trials", "1")
    args[args.index("--storage") + 1] = storage = f"sqlite:///{tmp_path / 'space.yaml' / 'study.db'}"
    with pytest.raises(ValueError, match=rf"study storage {re.escape(storage)} cannot be opened: its folder "
                       rf"{re.escape(str(tmp_path / 'space.yaml'))} cannot be made"):  # fmt: skip
        search.run(args)


def test_a_sqlite_url_that_names_its_driver_is_made_in_its_folder(tmp_path: Path, data_dir: Path) -> None:
    # before: sqlite+pysqlite:/// was not taken for a SQLite file, whose folder the search makes: "unable to open"
    args, fit_args = search.parse_args(search_args(tmp_path, data_dir, "--n_trials", "1"))
    args.storage = f"sqlite+pysqlite:///{tmp_path / 'new' / 'study.db'}"
    settings = search.fit_settings(search.resolve_config(args.config, fit_args), search.read_space(args.space))
    search.open_study(args, search.read_space(args.space), "minimize", "val/loss", settings)
    assert (tmp_path / "new" / "study.db").is_file()


def test_a_read_only_storage_is_named(tmp_path: Path, data_dir: Path) -> None:
    # before: Optuna's StorageInternalError traceback, "invalid data in the commit, e.g. exceeding max length"
    path = tmp_path / "study.db"
    optuna.create_study(storage=f"sqlite:///{path}", study_name="other")
    path.chmod(0o444)
    if os.geteuid() == 0:  # root writes a file of any mode, but not an immutable one
        if subprocess.run(["chattr", "+i", str(path)], capture_output=True).returncode != 0:
            pytest.skip("root writes any file here, and chattr +i is not available")
    try:
        with pytest.raises(ValueError, match=r"study storage sqlite:///.*study.db cannot be used: attempt to write a "
                           r"readonly database \(the search records every trial in it"):  # fmt: skip
            open_study(tmp_path, data_dir)
    finally:
        if os.geteuid() == 0:
            subprocess.run(["chattr", "-i", str(path)], check=True)


def test_a_root_this_process_cannot_write_in_is_refused_before_the_study_is_stored(
    tmp_path: Path, data_dir: Path, capsys
) -> None:
    # before: the study recorded a failed trial 0, then stopped with `[Errno 13] Permission denied: '.../locked/trials'`
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    if os.geteuid() == 0 and subprocess.run(["chattr", "+i", str(locked)], capture_output=True).returncode != 0:
        pytest.skip("root writes in any folder here, and chattr +i is not available")
    try:
        with pytest.raises(SystemExit):
            search.run([*search_args(tmp_path, data_dir, "--n_trials", "1"), "--root", str(locked / "trials")])
    finally:
        if os.geteuid() == 0:
            subprocess.run(["chattr", "-i", str(locked)], check=True)
        locked.chmod(0o755)
    assert f"--root {locked / 'trials'}: {locked} is a folder this process cannot write in" in capsys.readouterr().err
    assert not (tmp_path / "study.db").exists()


FOREIGN_TABLES = {
    "studies-of-its-own": "CREATE TABLE studies (id INTEGER PRIMARY KEY, title TEXT, owner TEXT)",
    "other-tables": "CREATE TABLE people (name TEXT)",
}


@pytest.mark.parametrize("scheme", ["sqlite", "sqlite+pysqlite"])  # the second: checked since stop 63
@pytest.mark.parametrize("schema", FOREIGN_TABLES.values(), ids=FOREIGN_TABLES)
def test_another_programs_sqlite_database_is_refused_and_left_unchanged(
    tmp_path: Path, data_dir: Path, schema: str, scheme: str
) -> None:
    # Optuna added its tables to the file, then failed with a raw StorageInternalError on a `studies` of other columns
    path = tmp_path / "theirs.db"
    with sqlite3.connect(path) as db:
        db.execute(schema)
        db.execute(f"INSERT INTO {schema.split()[2]} VALUES ({', '.join(['1'] * (schema.count(',') + 1))})")
    db.close()
    before = path.read_bytes()
    args = search_args(tmp_path, data_dir, "--n_trials", "1")
    args[args.index("--storage") + 1] = f"{scheme}:///{path}"
    table = schema.split()[2]
    storage = re.escape(f"{scheme}:///{path}")
    with pytest.raises(ValueError, match=rf"study storage {storage} is not an Optuna study storage: .*holds tables "
                       rf"that are not Optuna.s: {table} \("):  # fmt: skip
        search.run(args)
    assert path.read_bytes() == before and not (tmp_path / "trials").exists()


def test_a_storage_of_another_optuna_version_is_named_with_optunas_way_to_upgrade_it(
    tmp_path: Path, data_dir: Path
) -> None:
    optuna.create_study(storage=f"sqlite:///{tmp_path / 'study.db'}", study_name="ae")
    with sqlite3.connect(tmp_path / "study.db") as db:
        db.execute("UPDATE alembic_version SET version_num = 'v3.0.0.d'")  # as an older Optuna left it
    db.close()
    with pytest.raises(ValueError, match=r"study storage sqlite:///.*study.db cannot be opened: The runtime optuna "
                       r"version .* optuna storage upgrade"):  # fmt: skip  # a RuntimeError's traceback before
        open_study(tmp_path, data_dir)


def test_a_storage_whose_tables_another_worker_is_creating_opens(tmp_path: Path, data_dir: Path) -> None:
    # Optuna creates its tables one by one: a worker opening the file in between finds some, not yet version_info
    optuna.create_study(storage=f"sqlite:///{tmp_path / 'whole.db'}")
    with sqlite3.connect(tmp_path / "whole.db") as whole:
        (created,) = whole.execute("SELECT sql FROM sqlite_master WHERE name = 'studies'").fetchone()
    whole.close()
    with sqlite3.connect(tmp_path / "study.db") as partial:
        partial.execute(created)
    partial.close()
    assert open_study(tmp_path, data_dir).user_attrs["metric"] == "val/loss"


@pytest.mark.parametrize("within_epochs", [False, True], ids=["epoch-end", "val-check-interval"])
def test_trials_are_pruned_at_their_validations(tmp_path: Path, data_dir: Path, monkeypatch, within_epochs) -> None:
    # a pruner that stops every trial at its first chance: its second validation (step 2), also within an epoch
    monkeypatch.setitem(search.PRUNERS, "always", lambda: optuna.pruners.ThresholdPruner(upper=0.0))
    extra = ["--trainer.limit_train_batches", "3", "--trainer.val_check_interval", "1"] if within_epochs else []
    study = search.run(search_args(tmp_path, data_dir, "--n_trials", "2", "--pruner", "always",
                                    "--trainer.max_epochs", "5", *extra))  # fmt: skip
    pruned = study.get_trials(states=(optuna.trial.TrialState.PRUNED,))
    assert len(pruned) == 2 and all(list(t.intermediate_values) == [1, 2] for t in pruned)
    assert not (tmp_path / "trials" / "best.yaml").exists()  # no finished trial to write


def trials(storage: str) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name="ae", storage=storage).get_trials(deepcopy=False)


def test_a_killed_study_resumes_and_retries_the_dead_trial(tmp_path: Path, data_dir: Path) -> None:
    command = [sys.executable, "-m", "ae_lightning.search", *search_args(tmp_path, data_dir)]
    command += ["--n_trials", "3", "--heartbeat", "1", "--pruner", "none", "--trainer.max_epochs", "30"]
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    try:
        # kill -9 once trial 0 is complete and trial 1 is running with a checkpoint written
        while time.monotonic() < deadline and process.poll() is None:
            # read the study only once the search made it (a reader that came first would race it creating the tables)
            started = (tmp_path / "trials" / "trial-0").exists()
            states = [t.state for t in trials(storage)] if started else []
            checkpoints = list((tmp_path / "trials" / "trial-1").glob("**/last.ckpt"))
            if states[:2] == [optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.RUNNING] and checkpoints:
                break
            time.sleep(0.2)
        assert process.poll() is None, "the search ended before it could be killed mid-trial"
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
    finally:
        if process.poll() is None:
            process.kill()
    before = trials(storage)
    assert [t.state for t in before[:2]] == [optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.RUNNING]
    time.sleep(2.5)  # the dead trial's heartbeat is stale after 2 heartbeats
    installed = [str(Path(sys.executable).parent / "ae-lightning-search"), *command[3:]]  # as users run it
    rerun = subprocess.run(installed, cwd=ROOT, env=env, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr[-2000:]

    after = trials(storage)
    assert after[0].state == optuna.trial.TrialState.COMPLETE and after[0].value == before[0].value  # kept
    assert after[1].state == optuna.trial.TrialState.FAIL  # the dead process's trial
    retry = next(t for t in after[2:] if t.params == after[1].params)
    assert retry.state == optuna.trial.TrialState.COMPLETE
    assert retry.user_attrs["folder"] == str(tmp_path / "trials" / "trial-1")  # resumed in the dead trial's folder
    # Its value is the best validation of the whole trial, those before the kill included.
    assert before[1].intermediate_values and before[1].intermediate_values.items() <= retry.intermediate_values.items()
    assert retry.value == min(retry.intermediate_values.values())
    assert len(list((tmp_path / "trials" / "trial-1" / "lightning_logs").iterdir())) == 2
    counted = [t for t in after if t.state in search.COUNTED]
    assert len(counted) == 3

    best = tmp_path / "trials" / "best.yaml"
    config = yaml.safe_load(best.read_text())
    best_trial = min(counted, key=lambda t: t.value)
    assert config["model"]["init_args"]["latent_dim"] == best_trial.params["model.init_args.latent_dim"]
    assert config["trainer"]["default_root_dir"] == str(tmp_path / "trials" / "best") and config["ckpt_path"] is None
    with mock.patch("sys.argv", ["ae-lightning"]):
        cli = AutoencoderCLI(args=["fit", "--config", str(best), "--trainer.max_epochs", "1"])
    assert cli.trainer.global_step == 1 and cli.trainer.log_dir.startswith(str(tmp_path / "trials" / "best"))


def test_workers_of_one_study_run_n_trials_in_all(tmp_path: Path, data_dir: Path) -> None:
    # another worker's trial is running: one trial is left to start here, not two
    other = optuna.create_study(study_name="ae", storage=f"sqlite:///{tmp_path / 'study.db'}")
    other.ask()
    study = search.run(search_args(tmp_path, data_dir, "--n_trials", "2"))
    assert [t.state for t in study.get_trials()] == [optuna.trial.TrialState.RUNNING, optuna.trial.TrialState.COMPLETE]
    assert study.best_trial.number == 1 and (tmp_path / "trials" / "best.yaml").exists()


def test_workers_in_other_folders_with_a_relative_root_find_each_others_trials(
    tmp_path: Path, data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # --root trials, as given to workers started in two folders: the second read the first's best trial's config
    # relative to its own folder, and stopped with "No such file or directory" instead of writing best.yaml
    args = [*search_args(tmp_path, data_dir), "--root", "trials", "--trainer.max_epochs", "1"]
    for folder, n_trials in (("a", "1"), ("b", "2")):
        (tmp_path / folder).mkdir()
        monkeypatch.chdir(tmp_path / folder)
        study = search.run([*args, "--n_trials", n_trials])
    assert [t.user_attrs["folder"] for t in study.trials] == [str(tmp_path / "a" / "trials" / "trial-0"),
                                                              str(tmp_path / "b" / "trials" / "trial-1")]  # fmt: skip
    best = yaml.safe_load((tmp_path / "b" / "trials" / "best.yaml").read_text())
    assert best["trainer"]["default_root_dir"] == str(tmp_path / "b" / "trials" / "best")
    assert best["model"]["init_args"]["latent_dim"] == study.best_trial.params[LATENT]


DEAD_WORKER = """
import sys, time, optuna
storage = optuna.storages.RDBStorage(sys.argv[1], heartbeat_interval=1)
optuna.create_study(study_name="ae", storage=storage).optimize(lambda trial: time.sleep(1.5) or print(flush=True)
                                                               or time.sleep(600))
"""


def test_a_trial_whose_process_died_is_retried_even_by_a_rerun_before_its_heartbeat_stopped(
    tmp_path: Path, data_dir: Path
) -> None:
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    worker = subprocess.Popen([sys.executable, "-c", DEAD_WORKER, storage], stdout=subprocess.PIPE, text=True)
    try:
        worker.stdout.readline()  # its trial is running, with a heartbeat
    finally:
        worker.kill()
        worker.wait()
    args = search_args(tmp_path, data_dir, "--n_trials", "1", "--heartbeat", "3")
    # its heartbeat is fresh: the trial may still be running, so no other trial starts in its place
    assert [t.state for t in search.run(args).get_trials()] == [optuna.trial.TrialState.RUNNING]
    time.sleep(6)  # then stale
    study = search.run(args)
    assert [t.state for t in study.get_trials()] == [optuna.trial.TrialState.FAIL, optuna.trial.TrialState.COMPLETE]
    assert optuna.storages.RetryFailedTrialCallback.retried_trial_number(study.trials[1]) == 0


def test_stacked_configs_reach_every_trial_in_order_and_identify_the_study(tmp_path: Path, data_dir: Path) -> None:
    # as with `ae-lightning fit --config a.yaml --config b.yaml`: later files override earlier ones
    override = tmp_path / "mse.yaml"
    override.write_text("trainer:\n  max_epochs: 1\nmodel:\n  init_args:\n    reconstruction: mse\n")
    args = search_args(tmp_path, data_dir, "--n_trials", "1", "--config", str(override))
    study = search.run(args)
    saved = yaml.safe_load(Path(study.best_trial.user_attrs["config_file"]).read_text())
    assert saved["model"]["class_path"] == "ae_lightning.Autoencoder"  # from ae.yaml
    assert saved["model"]["init_args"]["reconstruction"] == "mse" and saved["trainer"]["max_epochs"] == 1
    assert study.user_attrs["config"] == [str(AE.resolve()), str(override.resolve())]
    assert study.user_attrs["settings"]["model.init_args.reconstruction"] == "mse"
    best = yaml.safe_load((tmp_path / "trials" / "best.yaml").read_text())
    assert best["model"]["init_args"]["reconstruction"] == "mse"
    # the study belongs to both files: ae.yaml alone, or another file under mse.yaml, is another search
    with pytest.raises(ValueError, match=r"search: config \[.*ae.yaml', '.*mse.yaml'\] \(this run: '.*ae.yaml'\)"):
        open_study(tmp_path, data_dir, "--trainer.max_epochs", "1", "--model.init_args.reconstruction", "mse")
    with pytest.raises(ValueError, match=r"/ae.yaml', '.*mse.yaml'\] \(this run: \[.*/dropout_ae.yaml', '.*mse"):
        open_study(tmp_path, data_dir, "--config", str(override), config=ROOT / "configs" / "dropout_ae.yaml")
    default = search.parse_args(["--config", str(AE), "--config", str(override), "--space", "s.yaml", "--storage",
                                 "sqlite:///s.db", "--n_trials", "1"])[0]  # fmt: skip
    assert default.study_name == "ae+mse" and default.root == Path("runs/search/ae+mse")


@pytest.mark.parametrize(
    "option, value",
    [("--lock_timeout", "-1"), ("--lock_timeout", "nan"), ("--max_retry", "-3"), ("--sampler_seed", "-5"),
     ("--sampler_seed", str(2**32))],
)  # fmt: skip
def test_bad_search_options_are_refused_by_name_before_anything_runs(
    tmp_path: Path, data_dir: Path, capsys, option: str, value: str
) -> None:
    with pytest.raises(SystemExit):
        search.run(search_args(tmp_path, data_dir, "--n_trials", "1", option, value))
    assert re.search(rf"error: {option} must be .*, got {value}", capsys.readouterr().err)
    assert not (tmp_path / "study.db").exists() and not (tmp_path / "trials").exists()


@pytest.mark.parametrize(
    "parameters, message",
    [
        ({"model.init_args.reconstruction": {"type": "categorical", "choices": ["bce", "msee"]}},
         r"choice 'msee' would be refused .*reconstruction: Expected a typing.Literal\['bce', 'mse'\]"),
        ({LATENT: {"type": "int", "low": 0, "high": 4}}, r"low 0 would be refused .*latent_dim must be .*>= 1, got 0"),
        ({DROPOUT: {"type": "float", "low": 0.0, "high": 1.0}}, r"high 1.0 would be refused .*dropout must lie in \[0"),
        ({"data.init_args.batch_size": {"type": "categorical", "choices": [8, 0]}}, r"choice 0 .*batch_size must be"),
        ({LATENT: {"type": "categorical", "choices": [4, "four"]}}, r"choice 'four' would .*latent_dim: .*'four'"),
        ({"model.init_args.optimizer.init_args.lr": {"type": "float", "low": -1.0, "high": 0.01}},
         r"low -1.0 would be refused .*Invalid learning rate: -1.0"),
        # a float range draws floats, 2.0 for low 2: every trial failed on "latent_dim: Not of type int"
        ({LATENT: {"type": "float", "low": 2, "high": 6}}, r"low 2.0 would be refused .*latent_dim: Not of type int"),
    ],
    ids=["choice-not-in-literal", "low-below-range", "high-above-range", "datamodule-choice", "unparsable-choice",
         "optimizer-lr", "float-range-of-an-int"],
)  # fmt: skip
def test_choices_and_bounds_a_trial_would_refuse_are_named_before_the_study_is_stored(
    tmp_path: Path, data_dir: Path, parameters: dict, message: str
) -> None:
    args = search_args(tmp_path, data_dir, "--n_trials", "1", "--trainer.max_epochs", "1")
    path = write_space(tmp_path, parameters)
    with pytest.raises(search.ConfigError, match=message) as error:
        search.run(args)
    assert str(error.value).startswith(f"search space {path}: {next(iter(parameters))}: ")
    assert not (tmp_path / "study.db").exists()  # the corrected space starts the study afresh


MOMENTUM, OPTIMIZER = "model.init_args.optimizer.init_args.momentum", "model.init_args.optimizer"


def test_an_argument_of_a_drawn_class_is_checked_with_each_choice_before_the_study_is_stored(
    tmp_path: Path, data_dir: Path
) -> None:
    # momentum checked with the config's optimizer alone (SGD) passed; the first trial to draw Adam stopped the search
    # with "Option 'momentum' is not accepted", the study kept its completed trials, locked to this space
    sgd = tmp_path / "sgd.yaml"
    sgd.write_text("model:\n  init_args:\n    optimizer: {class_path: torch.optim.SGD, init_args: {lr: 0.01}}\n")
    args = search_args(tmp_path, data_dir, "--n_trials", "3", "--trainer.max_epochs", "1", "--config", str(sgd))
    space = {MOMENTUM: {"type": "float", "low": 0.0, "high": 0.9}, OPTIMIZER: {"type": "categorical",
             "choices": ["torch.optim.SGD", "torch.optim.Adam"]}}  # fmt: skip
    path = write_space(tmp_path, space)
    message = f"search space {path}: {MOMENTUM}: low 0.0 would be refused by every trial that draws it with {OPTIMIZER}"
    with pytest.raises(search.ConfigError, match=rf"^{re.escape(message)} torch.optim.Adam: .*'momentum' is not acce"):
        search.run(args)
    assert not (tmp_path / "study.db").exists()


def test_an_argument_that_every_drawn_class_takes_is_searched_though_the_configs_class_lacks_it(
    tmp_path: Path, data_dir: Path
) -> None:
    # Adam (configs/ae.yaml's) has no momentum: the space was refused ("does not have"), and a trial given momentum
    # before the class (the space's order) was refused by the parser
    space = {MOMENTUM: {"type": "float", "low": 0.0, "high": 0.9}, OPTIMIZER: {"type": "categorical",
             "choices": ["torch.optim.SGD", "torch.optim.RMSprop"]}}  # fmt: skip
    args = search_args(tmp_path, data_dir, "--n_trials", "2", "--trainer.max_epochs", "1")
    (tmp_path / "space.yaml").write_text(yaml.safe_dump({"parameters": space}, sort_keys=False))  # momentum first
    study = search.run(args)
    for trial in study.trials:
        saved = yaml.safe_load(Path(trial.user_attrs["config_file"]).read_text())["model"]["init_args"]["optimizer"]
        assert trial.state == optuna.trial.TrialState.COMPLETE and saved["class_path"] == trial.params[OPTIMIZER]
        assert saved["init_args"]["momentum"] == trial.params[MOMENTUM]


def test_a_study_whose_trials_all_failed_before_validating_takes_the_corrected_search(
    tmp_path: Path, data_dir: Path, capsys
) -> None:
    # a fit setting that only the model's constructor refuses: five stride-2 convolutions shrink 28x28 to nothing
    args = search_args(tmp_path, data_dir, "--n_trials", "1", "--trainer.max_epochs", "1",
                       "--model.init_args.network", "conv")  # fmt: skip
    with pytest.raises(search.ConfigError, match="stride-2 convolutions"):
        search.run([*args, "--model.init_args.hidden_dims", "[4,4,4,4,4,4]"])
    (failed,) = trials(f"sqlite:///{tmp_path / 'study.db'}")
    assert failed.state == optuna.trial.TrialState.FAIL
    write_space(tmp_path, {LATENT: {"type": "int", "low": 2, "high": 5}})  # the space corrected too
    study = search.run([*args, "--model.init_args.hidden_dims", "[4,4]"])
    assert "none of its 1 trials validated its metric (all failed), so it takes" in capsys.readouterr().out
    assert study.trials[-1].state == optuna.trial.TrialState.COMPLETE
    assert study.user_attrs["settings"]["model.init_args.hidden_dims"] == [4, 4]
    assert study.user_attrs["space"] == search._digest({LATENT: {"type": "int", "low": 2, "high": 5}})
    # once a trial validated, the study keeps its search
    with pytest.raises(ValueError, match=r"belongs to another search: fit settings model.init_args.hidden_dims"):
        search.run([*args, "--model.init_args.hidden_dims", "[4]"])


def test_a_corrected_space_that_optuna_cannot_take_in_the_same_study_is_named(tmp_path: Path, data_dir: Path) -> None:
    widths = "model.init_args.hidden_dims"
    args, fit_args = search.parse_args(search_args(tmp_path, data_dir, "--n_trials", "1"))
    settings = search.fit_settings(search.resolve_config(args.config, fit_args), search.read_space(args.space))
    old = {"parameters": {widths: {"type": "categorical", "choices": ["[8]", "[4,4,4,4,4,4]"]}}}
    study = search.open_study(args, old, "minimize", "val/loss", settings)
    trial = study.ask()
    search.suggest(trial, widths, old["parameters"][widths])
    study.tell(trial, state=optuna.trial.TrialState.FAIL)  # as a trial the model refused
    new = {"parameters": {widths: {"type": "categorical", "choices": ["[8]", "[4,4]"]}}}
    with pytest.raises(ValueError, match=rf"failed trials drew {widths} from CategoricalDistribution.*cannot change"):
        search.open_study(args, new, "minimize", "val/loss", settings)
    assert study.user_attrs["space"] == search._digest(old["parameters"])  # kept


def test_trials_of_several_processes_are_refused_before_the_study_is_stored(tmp_path: Path, data_dir: Path) -> None:
    # Lightning's DDP launcher starts a trial's other processes by re-running the command line (which is the search's)
    args = search_args(tmp_path, data_dir, "--n_trials", "1", "--trainer.max_epochs", "1")
    installed = str(Path(sys.executable).parent / "ae-lightning-search")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    command = [installed, *args, "--trainer.accelerator", "cpu", "--trainer.devices", "2", "--trainer.strategy", "ddp"]
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr[-2000:]
    expected = (r"error: each trial would train in 2 processes: 2 devices \(--trainer.devices.*--trainer.num_nodes"
                r".*DDPStrategy \(--trainer.strategy\).*--trainer.devices 1 .*search_array.sbatch")  # fmt: skip
    assert re.search(expected, result.stderr), result.stderr[-2000:]
    assert not (tmp_path / "study.db").exists() and not (tmp_path / "trials").exists()


def test_a_trial_of_several_processes_fails_without_starting_them(tmp_path: Path, data_dir: Path) -> None:
    # The trial's own check, for a trainer that the search could not tell before it opened the study: the trial is
    # FAIL, never left RUNNING. In a process of its own, as a trial that started others would end its process.
    args = search_args(tmp_path, data_dir, "--n_trials", "1", "--trainer.max_epochs", "1")
    script = f"""
import sys
from ae_lightning import search
args, fit_args = search.parse_args({args!r})
space = search.read_space(args.space)
settings = search.fit_settings(search.resolve_config(args.config, fit_args), space)
study = search.open_study(args, space, "minimize", "val/loss", settings)
many = [*fit_args, "--trainer.accelerator", "cpu", "--trainer.devices", "2", "--trainer.strategy", "ddp"]
try:
    study.optimize(lambda trial: search.objective(trial, args, space, "val/loss", many))
except search.ConfigError as error:
    sys.exit(str(error))
"""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=300)  # fmt: skip
    assert result.returncode == 1 and "each trial would train in 2 processes" in result.stderr, result.stderr[-2000:]
    assert [t.state for t in trials(f"sqlite:///{tmp_path / 'study.db'}")] == [optuna.trial.TrialState.FAIL]
    assert not list((tmp_path / "trials").glob("**/*.ckpt"))


def test_trials_of_other_batch_sizes_are_compared_at_their_validations_and_pruned(
    tmp_path: Path, data_dir: Path
) -> None:
    # 220 training images: 14 steps per epoch at batch size 16, 10 at 24; the trials share no global step
    lr, batch = "model.init_args.optimizer.init_args.lr", "data.init_args.batch_size"
    args = search_args(tmp_path, data_dir, "--n_trials", "3", "--trainer.max_epochs", "3",
                       "--trainer.limit_train_batches", "1.0", "--pruner", "median")  # fmt: skip
    write_space(tmp_path, {lr: {"type": "float", "low": 1e-9, "high": 1e-1, "log": True},
                           batch: {"type": "categorical", "choices": [16, 24]}})  # fmt: skip
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 'study.db'}", study_name="ae")
    study.enqueue_trial({lr: 1e-2, batch: 16})
    study.enqueue_trial({lr: 1e-2, batch: 16})
    study.enqueue_trial({lr: 1e-9, batch: 24})  # learns nothing: worse than the median at every validation
    study = search.run(args)
    states = [t.state for t in study.trials]
    assert states == [optuna.trial.TrialState.COMPLETE] * 2 + [optuna.trial.TrialState.PRUNED]
    assert list(study.trials[0].intermediate_values) == [1, 2, 3]
    assert list(study.trials[2].intermediate_values) == [1, 2]  # pruned at its second validation


@pytest.mark.parametrize("every", [1, 2], ids=["every-epoch", "every-2nd-epoch"])
def test_a_resumed_trial_counts_its_validations_on(tmp_path: Path, data_dir: Path, every: int) -> None:
    # validating every 2nd epoch, Lightning writes last.ckpt as the validation ends, not at the epoch's end
    extra = ("--trainer.max_epochs", str(every), "--trainer.limit_train_batches", "2",  # 2 steps per epoch
             "--trainer.check_val_every_n_epoch", str(every))  # fmt: skip
    args, fit_args = search.parse_args(search_args(tmp_path, data_dir, "--n_trials", "1", *extra))
    space = search.read_space(args.space)
    study = open_study(tmp_path, data_dir, *extra)
    first = study.ask()
    search.objective(first, args, space, "val/loss", fit_args)  # its validation 1, then last.ckpt
    study.enqueue_trial(study.trials[0].params, user_attrs={"folder": study.trials[0].user_attrs["folder"]})
    retry = study.ask()  # as Optuna retries a trial whose process died: its values, its folder
    longer = [*fit_args, "--trainer.max_epochs", str(3 * every)]
    search.objective(retry, args, space, "val/loss", longer)  # resumes after validation 1
    assert list(study.trials[-1].intermediate_values) == [2, 3]


def test_a_retry_resumes_into_a_csv_logger_of_a_fixed_version_and_keeps_the_dead_runs_metrics(
    tmp_path: Path, data_dir: Path
) -> None:
    # CSVLogger deletes the metrics.csv it finds: the resumed fit refused the retry, which failed (its trial lost)
    extra = ("--trainer.max_epochs", "1", "--trainer.logger", "CSVLogger", "--trainer.logger.version", "run")
    args, fit_args = search.parse_args(search_args(tmp_path, data_dir, "--n_trials", "1", *extra))
    space = search.read_space(args.space)
    study = open_study(tmp_path, data_dir, *extra)
    search.objective(study.ask(), args, space, "val/loss", fit_args)  # the run that died after its epoch 0
    dead = study.trials[0]
    study.enqueue_trial(dead.params, user_attrs={"folder": dead.user_attrs["folder"]})
    retry = study.ask()  # as Optuna retries a trial whose process died: its values, its folder
    value = search.objective(retry, args, space, "val/loss", [*fit_args, "--trainer.max_epochs", "2"])
    assert math.isfinite(value)
    run = Path(dead.user_attrs["folder"]) / "lightning_logs" / "run"
    epochs = {name: {row["epoch"] for row in csv.DictReader((run / name).open())}
              for name in ("metrics.csv", f"metrics-before-trial-{retry.number}.csv")}  # fmt: skip
    assert epochs == {"metrics.csv": {"1"}, f"metrics-before-trial-{retry.number}.csv": {"0"}}


def _open_at_once(barrier, argv: list[str], results) -> None:
    args, fit_args = search.parse_args(argv)
    space = search.read_space(args.space)
    settings = search.fit_settings(search.resolve_config(args.config, fit_args), space)
    barrier.wait()
    try:
        search.open_study(args, space, "minimize", "val/loss", settings)
        results.put("opened")
    except Exception as error:
        results.put(f"{type(error).__name__}: {error}")


def test_workers_that_open_a_new_storage_at_once_all_open_it(tmp_path: Path, data_dir: Path) -> None:
    # the tasks of `sbatch --array`, started together on a new storage, race Optuna's creation of its tables
    import multiprocessing

    argv = [*search_args(tmp_path, data_dir), "--n_trials", "2"]
    context = multiprocessing.get_context("fork")  # forked after the imports, released together
    barrier, results = context.Barrier(6), context.Queue()
    workers = [context.Process(target=_open_at_once, args=(barrier, argv, results)) for _ in range(6)]
    for worker in workers:
        worker.start()
    outcomes = [results.get(timeout=120) for _ in workers]
    for worker in workers:
        worker.join()
    assert outcomes == ["opened"] * 6
    assert len(optuna.get_all_study_summaries(f"sqlite:///{tmp_path / 'study.db'}")) == 1


def test_trials_that_log_to_wandb_each_have_their_own_run(tmp_path: Path, data_dir: Path, monkeypatch) -> None:
    wandb = pytest.importorskip("wandb")
    for name, value in {"WANDB_MODE": "offline", "WANDB_SILENT": "true", "WANDB_CONSOLE": "off"}.items():
        monkeypatch.setenv(name, value)
    args = search_args(tmp_path, data_dir, "--n_trials", "2", "--trainer.max_epochs", "1", "--pruner", "none",
                       "--trainer.logger", "WandbLogger", "--trainer.logger.offline", "true")  # fmt: skip
    try:
        study = search.run(args)
    finally:
        wandb.finish()
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.COMPLETE] * 2
    runs = [list((tmp_path / "trials" / f"trial-{n}" / "wandb").glob("offline-run-*")) for n in (0, 1)]
    assert all(len(run) == 1 for run in runs) and runs[0][0].name[-8:] != runs[1][0].name[-8:]
    best = yaml.safe_load((tmp_path / "trials" / "best.yaml").read_text())  # the best trial's config, read from its run
    latent = best["model"]["init_args"]["latent_dim"]
    assert latent == study.best_trial.params[LATENT] and best["trainer"]["logger"]["class_path"].endswith("WandbLogger")


def test_trials_without_checkpoints_are_valued_by_their_validations(tmp_path: Path, data_dir: Path) -> None:
    # a search that keeps no checkpoints (disk space): the trial's value is its best reported validation
    study = search.run(search_args(tmp_path, data_dir, "--n_trials", "1", "--trainer.max_epochs", "2",
                                   "--trainer.enable_checkpointing", "false"))  # fmt: skip
    (trial,) = study.trials
    assert trial.state == optuna.trial.TrialState.COMPLETE and list(trial.intermediate_values) == [1, 2]
    assert trial.value == min(trial.intermediate_values.values())
    assert not list((tmp_path / "trials").glob("**/*.ckpt")) and (tmp_path / "trials" / "best.yaml").exists()


def test_a_study_that_another_worker_is_recording_opens(tmp_path: Path, data_dir: Path) -> None:
    # a worker that opened the new study a moment earlier has recorded part of what identifies it, key by key
    first = optuna.create_study(storage=f"sqlite:///{tmp_path / 'study.db'}", study_name="ae")
    first.set_user_attr("config", str(AE.resolve()))
    study = open_study(tmp_path, data_dir, "--trainer.max_epochs", "1")
    assert study.user_attrs["metric"] == "val/loss" and study.user_attrs["settings"]["trainer.max_epochs"] == 1
    with pytest.raises(ValueError, match=r"trainer.max_epochs 1 \(this run: 2\)"):
        open_study(tmp_path, data_dir, "--trainer.max_epochs", "2")


def test_a_trial_stopped_by_sigterm_is_retried_at_once_by_the_next_run(tmp_path: Path, data_dir: Path) -> None:
    # A preempted search: its trial saved last.ckpt and the process exited 143, the trial left RUNNING; a rerun within
    # two heartbeats (a requeued job) took it for running elsewhere, started nothing and exited 0, the study unfinished.
    signalled = ["--trainer.callbacks+=test_fault_tolerance_sigterm.SigtermAtBatch", "--trainer.callbacks.batch", "0"]
    extra = ("--trainer.max_epochs", "2", "--trainer.limit_train_batches", "2", *signalled)  # 2 steps per epoch
    args = search_args(tmp_path, data_dir, "--n_trials", "1", *extra)
    with pytest.raises(SystemExit) as exited:
        search.run(args)
    assert exited.value.code == 143
    study = search.run(args)
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.FAIL, optuna.trial.TrialState.COMPLETE]
    stopped, retry = study.trials
    assert retry.params == stopped.params and retry.user_attrs["folder"] == stopped.user_attrs["folder"]
    runs = sorted((Path(retry.user_attrs["folder"]) / "lightning_logs").iterdir())
    assert [torch.load(run / "checkpoints" / "last.ckpt")["global_step"] for run in runs] == [1, 4]  # resumed
    assert list(retry.intermediate_values) == [1, 2]


def test_a_study_whose_first_trial_was_stopped_before_validating_takes_the_corrected_search(
    tmp_path: Path, data_dir: Path, capsys
) -> None:
    # The usual way to correct a search is to stop its first trial (Ctrl-C, scancel). The retry queued at once locked
    # the study to the stopped run's settings: "belongs to another search: fit settings trainer.callbacks ..."
    signalled = ["--trainer.callbacks+=test_fault_tolerance_sigterm.SigtermAtBatch", "--trainer.callbacks.batch", "0"]
    args = search_args(tmp_path, data_dir, "--n_trials", "1", "--trainer.max_epochs", "1",
                       "--trainer.num_sanity_val_steps", "0", "--trainer.limit_train_batches", "2")  # fmt: skip
    with pytest.raises(SystemExit):
        search.run([*args, *signalled])
    study = search.run(args)
    assert "none of its 1 trials validated its metric (all failed), so it takes" in capsys.readouterr().out
    stopped, retry, new = study.trials  # the retry of the stopped run dropped, not resumed with other settings
    assert [t.state.name for t in study.trials] == ["FAIL", "FAIL", "COMPLETE"]
    assert retry.user_attrs["folder"] == stopped.user_attrs["folder"] != new.user_attrs["folder"]


def test_a_best_trial_whose_run_folder_is_gone_is_named_with_its_values(tmp_path: Path, data_dir: Path) -> None:
    # a node-local --root or a clean-up: the search ended with a bare "No such file or directory: .../config.yaml"
    study = search.run(search_args(tmp_path, data_dir, "--n_trials", "1", "--trainer.max_epochs", "1"))
    shutil.rmtree(tmp_path / "trials" / "trial-0")
    latent_dim = study.best_trial.params[LATENT]
    message = (rf"the best trial of study 'ae' \(trial 0, value .*\) saved its config in .*trial-0.*config.yaml, which "
               rf"is gone: best.yaml is not written; its values: .*--{LATENT}={latent_dim}")  # fmt: skip
    with pytest.raises(FileNotFoundError, match=message):
        search.write_best_config(study, tmp_path / "trials")
