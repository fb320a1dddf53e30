"""The ``ae-lightning`` command: LightningCLI with the project's links, checkpointing and prediction writer.

Models and datamodules are chosen by import path (``class_path: ae_lightning.VAE``) or by class name
(``--model VAE``, ``--data FashionMNISTDataModule``).
"""

from __future__ import annotations

import contextlib
import contextvars
import difflib
import importlib
import inspect
import logging
import multiprocessing
import os
import pydoc
import re
import sys
import traceback
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import lightning
import torch
import yaml
from jsonargparse import ArgumentError, ArgumentParser, lazy_instance
from jsonargparse.typing import class_from_function
from lightning.fabric.plugins.environments import SLURMEnvironment
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import ProgressBar
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback
from lightning.pytorch.core.hooks import DataHooks
from lightning.pytorch.loggers import CSVLogger, Logger, TensorBoardLogger, WandbLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.plugins.io import CheckpointIO
from lightning.pytorch.strategies import StrategyRegistry
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from lightning.pytorch.utilities.exceptions import MisconfigurationException, SIGTERMException
from torch.multiprocessing import ProcessRaisedException
from torch.optim.lr_scheduler import ReduceLROnPlateau

import datamodules
from ae_lightning import _EXPORTS
from ae_lightning import lightning_internals as internals
from ae_lightning.base import AutoencoderModule, resolve_class_path, same_setting
from ae_lightning.blocks.perceptual import weights_from_checkpoint
from ae_lightning.checks import ConfigError
from ae_lightning.training import fast
from ae_lightning.training.callbacks import (
    ClosingProgressBar,
    ImageLogger,
    LoggerRunInCheckpoint,
    SaveConfigToRun,
    check_image_loggers,
)
from ae_lightning.training.fault_tolerance import (
    AtomicCheckpointIO,
    NonFiniteLossError,
    RandomStateCheckpoint,
    RunCheckpoint,
    SigtermCheckpoint,
    SlurmRequeue,
    non_finite_guard,
)
from ae_lightning.training.fault_tolerance.checkpoint_io import read_checkpoint, remove_dead_writers_files
from ae_lightning.training.fault_tolerance.sigterm import SIGTERM_EXIT_CODE
from ae_lightning.training.fault_tolerance.slurm import hpc_checkpoints
from ae_lightning.training.prediction import PredictionWriter
from ae_lightning.training.resume import OptimizerSettingsOnResume, UnfinishedEpochInCheckpoint, check_optimizers_resume
from datamodules.base import ImageDataModule

# Registers the variants for ``--model <ClassName>`` and the datamodules for ``--data <ClassName>``.
for _module in sorted({*_EXPORTS.values(), *datamodules._EXPORTS.values()}):
    importlib.import_module(_module)
# Lightning's older spellings of a precision and the setting each stands for.
_PRECISION_ALIASES = {"16": "16-mixed", "bf16": "bf16-mixed", "32": "32-true", "64": "64-true"}
DEVICE_SETTINGS = ("accelerator", "devices", "strategy")  # named when Lightning finds no such devices here
PROGRESS_BAR_REFRESH_STEPS = 25  # the command's default bar redraws every 25 steps, Lightning's every step
# The ``checkpoint`` section's settings that differ from ModelCheckpoint's: the best by val/loss, and last.ckpt.
CHECKPOINT_DEFAULTS = {"monitor": "val/loss", "mode": "min", "save_last": True, "filename": "best-{epoch}-{step}"}
# A logger's ``save_dir`` that stands for the run's ``default_root_dir``.
ROOT_DIR = "<default_root_dir>"
# A logger's setting that stands for its class's own default: the default logger's ``name``, which jsonargparse keeps
# when another logger class is chosen (a W&B run would be named after TensorBoard's folder, ``lightning_logs``).
OWN_DEFAULT = "<the logger's own default>"
# The ``nonfinite`` section's class, made here rather than by Lightning inside ``lightning.pytorch.cli`` (where only the
# process that built the parser has it), so that the processes ``ddp_spawn`` starts unpickle the command.
NonFiniteGuardSettings = class_from_function(non_finite_guard, name="NonFiniteGuardSettings")


class CommandTrainer(Trainer):
    """Lightning's Trainer with the ``limit_*_batches`` typed integer-first, so that the command reads ``1`` as one
    batch and ``1.0`` as all of them, as Lightning documents (its own ``float | int`` annotation reads both as 1.0)."""

    def __init__(
        self,
        *args: Any,
        limit_train_batches: int | float | None = None,
        limit_val_batches: int | float | None = None,
        limit_test_batches: int | float | None = None,
        limit_predict_batches: int | float | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            *args,
            limit_train_batches=limit_train_batches,
            limit_val_batches=limit_val_batches,
            limit_test_batches=limit_test_batches,
            limit_predict_batches=limit_predict_batches,
            **kwargs,
        )


class EndsSpawnedProcessGroup(Callback):
    """Destroys the process group as a run ends in a process that multiprocessing started (``ddp_spawn``'s)."""

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        spawned = multiprocessing.parent_process() is not None
        if spawned and torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


class AutoencoderCLI(LightningCLI):
    """LightningCLI for the autoencoder family: sections ``checkpoint``, ``predictions``, ``images``, ``nonfinite`` and
    ``--fast.steps``, fault tolerance, ``--ckpt_path last``/``hpc``, early refusals (docs/internals.md)."""

    _start_again = False  # whether ``fit --ckpt_path last`` found no checkpoint of the run its logger names
    _checkpoint: dict[str, Any] | None = None  # what --ckpt_path holds

    def __init__(self, **kwargs) -> None:
        self._parsers: list[LightningArgumentParser] = []  # the subcommands', whose keys a misspelled one is matched to
        kwargs.setdefault("save_config_kwargs", {"overwrite": False})
        kwargs.setdefault("save_config_callback", SaveConfigToRun)
        # Callbacks in ``trainer_defaults`` are added to every trainer, whatever --trainer.callbacks says.
        callbacks = [RandomStateCheckpoint(), SlurmRequeue(), SigtermCheckpoint(), OptimizerSettingsOnResume(),
                     UnfinishedEpochInCheckpoint(), LoggerRunInCheckpoint(), EndsSpawnedProcessGroup()]  # fmt: skip
        kwargs.setdefault("trainer_defaults", {"callbacks": callbacks})
        kwargs.setdefault("seed_everything_default", 42)
        kwargs.setdefault("trainer_class", CommandTrainer)
        settings = {"subclass_mode_model": True, "subclass_mode_data": True, "auto_configure_optimizers": False}
        # A context of its own, which the parser does not outlive (docs/internals.md); known noise silenced in it alone.
        with warnings.catch_warnings(), _quiet_known_noise():
            contextvars.copy_context().run(super().__init__, AutoencoderModule, ImageDataModule, **settings, **kwargs)

    def init_parser(self, **kwargs: Any) -> LightningArgumentParser:
        # A bad value raises (run_command prints it as one error) instead of printing the whole usage and exiting.
        kwargs.setdefault("exit_on_error", False)
        return super().init_parser(**kwargs)

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        self._parsers.append(parser)
        parser.link_arguments("data.input_shape", "model.init_args.input_shape", apply_on="instantiate")
        # Sections, not callback keys: instantiate_trainer adds each only where it acts (none of checkpoint beside
        # --trainer.enable_checkpointing false, which Lightning refuses; no pictures beside --trainer.barebones true).
        parser.add_class_arguments(RunCheckpoint, "checkpoint", fail_untyped=False, sub_configs=True)
        parser.set_defaults({f"checkpoint.{key}": value for key, value in CHECKPOINT_DEFAULTS.items()})
        # Lightning's default logger, made explicit so that ``--trainer.logger TensorBoardLogger`` needs no save_dir.
        parser.set_defaults({"trainer.logger": lazy_instance(TensorBoardLogger, save_dir=ROOT_DIR, name=OWN_DEFAULT)})
        parser.add_class_arguments(PredictionWriter, "predictions", fail_untyped=False, sub_configs=True)
        parser.add_class_arguments(ImageLogger, "images", fail_untyped=False, sub_configs=True)
        parser.add_lightning_class_args(NonFiniteGuardSettings, "nonfinite")
        # The fast path (configs/fast.yaml, docs/speed.md): the datamodule groups batches, the model steps through them.
        parser.add_argument("--fast.steps", type=int | None, default=None, help="optimizer steps per Lightning "
                            "batch (the fast path, docs/speed.md), an integer >= 1, set as the model's and the "
                            "datamodule's steps_per_batch; 1 trains as Lightning does; null leaves them as "
                            "configured")  # fmt: skip

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        argv = sys.argv[1:] if args is None else args
        given = _appended_loggers_in_root(argv) if isinstance(argv, (list, tuple)) else argv
        if isinstance(given, (list, tuple)) and {"-h", "--help"} & set(given):
            _help_with_classes(parser, list(given))
        try:
            if given is argv:
                super().parse_arguments(parser, args)
            else:
                self.config = parser.parse_args(given)
        except ArgumentError as error:
            if unknown_class := _known_class_like(str(error)) or _help_class_like(parser, given, str(error)):
                raise ArgumentError(None, unknown_class) from error
            if (hint := _known_key_like(str(error), self._parsers)) is None:
                raise
            raise ArgumentError(None, f"{one_line(str(error))}; did you mean {hint}?") from error
        seed = _run_config(self.config).get("seed_everything")
        if not isinstance(seed, bool) and isinstance(seed, int) and not 0 <= seed < 2**32:  # NumPy's seeds
            raise ConfigError(f"--seed_everything {seed}: expected an integer in [0, 2**32), true (a random seed) or "
                              "false (no seeding)")  # fmt: skip
        # Resolved before --ckpt_path is, which looks in the run folder that the logger's settings name.
        self._logger_settings_given = _logger_defaults(_run_config(self.config))
        _warn_left_out_settings(_run_config(self.config))

    def instantiate_classes(self) -> None:
        # A model resumed or evaluated from --ckpt_path takes every weight from it, LPIPS's too: build it without
        # downloading them (a requeued job may run without network); the strict load refuses a checkpoint without them.
        try:
            with weights_from_checkpoint() if self._checkpoint is not None else contextlib.nullcontext():
                super().instantiate_classes()
        except ConfigError:  # names its setting already
            raise
        except (ValueError, MisconfigurationException) as error:
            config = _run_config(self.config)
            refused = _refused_section_setting(config, error)
            if refused is not None:  # a section's setting (ModelCheckpoint refuses with a MisconfigurationException)
                raise ConfigError(f"{refused}: {error}") from error
            cause = error
            while cause.__cause__ is not None:
                cause = cause.__cause__
            if not isinstance(error, ValueError) or cause is error:
                raise
            # jsonargparse wraps a constructor's error in "Does not validate against any of the Union subtypes ...":
            # name the section and the class, then the constructor's own message.
            found = re.search(r"class_path='([^']+)'", str(error))
            where = found.group(1) if found else "a class of the config"
            for section in ("model", "data"):
                if found and (config.get(section) or {}).get("class_path") == where:
                    where = f"--{section} {where}"
            raise ConfigError(f"{where}: {cause}") from cause

    def before_instantiate_classes(self) -> None:
        _fast_path(_run_config(self.config), fit=self.subcommand in ("fit", None))
        for i, log_dir in _one_version_per_folder(_run_config(self.config)).items():
            self._logger_settings_given.setdefault(i, {})["version"] = None  # the run's config.yaml names none
            # CSVLogger's warning that the folder, which its sibling logger just made, holds files
            warnings.filterwarnings("ignore", re.escape(f"Experiment logs directory {log_dir} exists and is not"))
        if self.subcommand == "predict":
            _streamed_predictions(self.config.predict)

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        section, parsed = _run_config(self.config_init), _run_config(self.config)
        config = section["trainer"]
        kwargs["plugins"] = plugins = _as_list(config.get("plugins"))
        if not any(isinstance(plugin, CheckpointIO) for plugin in plugins):  # unless they name a checkpoint writer
            plugins.append(AtomicCheckpointIO())
        kwargs["callbacks"] = callbacks = _as_list(config.get("callbacks"))
        # Lightning's barebones mode runs without checkpoints, logger and progress bar: the command adds none of its
        # own (its default logger, checkpoint section, bar and pictures); one the user chose is refused.
        barebones = bool(config.get("barebones"))
        if barebones and config.get("logger") not in (None, False):
            if not _is_default_logger(parsed, getattr(self, "_logger_settings_given", {})):
                chosen = ", ".join(getattr(logger, "class_path", str(logger)) for logger in loggers_of(parsed))
                raise ConfigError(f"--trainer.logger {chosen}: --trainer.barebones true runs without a logger; drop "
                                  "one of the two")  # fmt: skip
            kwargs["logger"] = False
        if barebones or config.get("enable_checkpointing") is False:
            why = "a run without checkpointing (--trainer.enable_checkpointing false or --trainer.barebones true)"
            _check_section_unset(parsed, "checkpoint", RunCheckpoint, f"{why} writes none", CHECKPOINT_DEFAULTS)
        else:
            callbacks.append(section["checkpoint"])
        # Lightning calls every callback on every hook: the prediction writer joins only a trainer that may predict.
        if self.subcommand in (None, "predict"):
            callbacks.append(section["predictions"])
        bar = config.get("enable_progress_bar") is not False and not barebones
        if bar and not any(isinstance(c, ProgressBar) for c in callbacks):
            callbacks.append(ClosingProgressBar(refresh_rate=PROGRESS_BAR_REFRESH_STEPS))
        if not barebones:
            callbacks.append(section["images"])
        elif parsed.images.every_n_epochs != 0:  # 0 turns the section off, which agrees with barebones
            why = "a --trainer.barebones true run logs nothing and draws no pictures"
            _check_section_unset(parsed, "images", ImageLogger, why, {})
        if self.subcommand in (None, "fit"):  # refused here, before the Trainer and its logger write any file
            with _settings_refused():
                check_image_loggers(callbacks)
        unused = f"{config.get('strategy')}_find_unused_parameters_true"  # of each of Lightning's DDP strategies
        if getattr(self.model, "partial_backward", False) and unused in StrategyRegistry:
            # DDP takes a backward that reaches only part of the weights (an adversarial phase) only then.
            kwargs["strategy"] = unused
        try:
            trainer = super().instantiate_trainer(**kwargs)
        except ConfigError:
            raise
        except (MisconfigurationException, ValueError, TypeError) as error:  # no GPU here; max_epochs -3; strategy ddpp
            devices = ("accelerator", "device", "gpu", "cuda", "mps", "tpu", "strategy", "num_nodes")
            if isinstance(error, MisconfigurationException) and any(word in str(error).lower() for word in devices):
                given = ", ".join(f"--trainer.{key} {config.get(key)}" for key in DEVICE_SETTINGS)
                raise ConfigError(f"{given}: {error} Choose devices this machine has (--trainer.accelerator cpu runs "
                                  "anywhere)") from error  # fmt: skip
            named = _setting_named("trainer", dict(parsed.trainer.items()), str(error)) or "the Trainer's settings"
            raise ConfigError(f"{named}: {error}") from error
        requested = config.get("precision")
        if requested is not None and _PRECISION_ALIASES.get(str(requested), str(requested)) != trainer.precision:
            raise ConfigError(
                f"--trainer.precision {requested} is not available on {type(trainer.accelerator).__name__}: Lightning "
                f"would train in {trainer.precision} instead. Set --trainer.precision {trainer.precision} to train "
                "that way, or run on a CUDA GPU"
            )
        if trainer.precision == "16-true":
            raise ConfigError(
                "--trainer.precision 16-true keeps the weights and the optimizer's state in float16, where Adam's eps "
                "(1e-8) is 0 and a training turns to NaN within steps; use 16-mixed (CUDA), bf16-mixed or bf16-true"
            )
        self._refuse_an_earlier_runs_folder(trainer)
        for callback in trainer.callbacks:
            if isinstance(callback, SaveConfigCallback):
                callback.config = _as_given(callback.config, getattr(self, "_logger_settings_given", {}))
        return trainer

    def _refuse_an_earlier_runs_folder(self, trainer: Trainer) -> None:
        """Refuse a new run in an earlier run's folder, but for a resumed ``fit`` or one that ``--ckpt_path last``
        starts again; neither over a CSVLogger's ``metrics.csv``."""
        resumed = self.subcommand == "fit" and self.config.fit.get("ckpt_path")
        if resumed or self._start_again:
            for csv_logger in [logger for logger in trainer.loggers if isinstance(logger, CSVLogger)]:
                path = Path(csv_logger.log_dir) / ExperimentWriter.NAME_METRICS_FILE
                if path.is_file():
                    what = "resumed fit" if resumed else "fit (--ckpt_path last found no checkpoint: a new start)"
                    raise ConfigError(
                        f"{path} exists: CSVLogger would delete it as this {what} starts logging (it cannot append); "
                        "log into a new folder with another --trainer.logger.version (or none) and --ckpt_path "
                        f"{self.config.fit.ckpt_path or 'last'}"
                    )
            if resumed:
                return
        logger = trainer.logger
        if isinstance(logger, WandbLogger) and (logger.version is None or self.subcommand != "fit"):
            return  # a new W&B run writes into a new folder; evaluating may log into a given run (SaveConfigToRun)
        for callback in trainer.callbacks:
            if not isinstance(callback, SaveConfigCallback) or callback.overwrite:
                continue
            if isinstance(logger, WandbLogger):  # a W&B run id given anew
                path = SaveConfigToRun.run_folder(logger, trainer) / callback.config_filename
            elif callback.save_to_log_dir:
                path = Path(trainer.log_dir or ".") / callback.config_filename
            else:
                continue
            if path.is_file() and self._start_again:  # a run that died before its first checkpoint (a SLURM requeue)
                rank_zero_info(f"--ckpt_path last: the run in {path.parent} has no checkpoint yet: starting it again "
                               f"from scratch, over its {path.name}")  # fmt: skip
                callback.overwrite = True
            elif path.is_file():
                advice = "give the logger another version (or none) or" if trainer.logger else "give"
                raise ConfigError(
                    f"{path} exists: this {self.subcommand or 'run'} would write into the folder of an earlier run, "
                    f"whose logs and config it would overwrite; {advice} another --trainer.default_root_dir"
                )

    def _parse_ckpt_path(self) -> None:
        # Unlike LightningCLI's, keeps the user's model settings (docs/internals.md); the weights are checked later.
        subcommand = self.config.get("subcommand")
        config = self.config[subcommand] if subcommand else None
        ckpt_path = config.get("ckpt_path") if config else None
        if ckpt_path == "best":  # Lightning's best of an earlier fit of this Trainer, which a new command has not run
            raise ConfigError(
                f"--ckpt_path best: this {subcommand} runs in a new Trainer, which knows no best checkpoint "
                "(Lightning's best is that of an earlier fit in the same process); give the run's best checkpoint,"
                " <run>/checkpoints/best-epoch=...-step=....ckpt, or last"
            )
        if ckpt_path == "last":
            ckpt_path = config.ckpt_path = _furthest_checkpoint(config)
            named = ckpt_path is None and _named_run(config) is not None
            self._start_again = named and subcommand == "fit"
            if ckpt_path is None and subcommand != "fit":
                advice = "name the trained run (its id or version)" if named else (
                    "give the trained run's folder as --trainer.default_root_dir")  # fmt: skip
                raise FileNotFoundError(f"--ckpt_path last: no checkpoint {_searched(config)[2]} to "
                                        f"{subcommand}; {advice} or its checkpoint as --ckpt_path")  # fmt: skip
            if ckpt_path is None:
                rank_zero_warn(f"--ckpt_path last: no checkpoint {_searched(config)[2]} yet, starting from scratch")
        elif ckpt_path == "hpc" or (subcommand and ckpt_path is None and SLURMEnvironment.detect()):
            # Lightning's choice (``hpc``, which it also makes for no --ckpt_path under SLURM), made here so that the
            # checkpoint is checked below and by the resume checks like any other.
            root = config.trainer.get("default_root_dir") or "."
            if numbered := hpc_checkpoints(root):
                given = "--ckpt_path hpc" if ckpt_path else "no --ckpt_path under SLURM (Lightning's hpc)"
                ckpt_path = config.ckpt_path = str(numbered[max(numbered)])
                rank_zero_info(f"{given}: using {ckpt_path}")
            elif ckpt_path == "hpc":
                raise FileNotFoundError(
                    f"--ckpt_path hpc: no hpc_ckpt_<n>.ckpt in {root}; give the run's folder as "
                    "--trainer.default_root_dir or its checkpoint as --ckpt_path"
                )
        if subcommand == "fit" and ckpt_path:  # a resumed run may write its config where it wrote it before
            self.save_config_kwargs = {**self.save_config_kwargs, "overwrite": True}
        if ckpt_path and ckpt_path not in ("last", "best", "registry"):  # else Lightning resolves it
            self._checkpoint = read_checkpoint(ckpt_path)
            # The command's config names the class as it was given; the model writes its class into any checkpoint.
            hyperparameters = self._checkpoint.get("hyper_parameters", {})
            stored_class = hyperparameters.get("_class_path") or self._checkpoint.get("ae_lightning_class")
            wanted = config.model.class_path
            if stored_class and resolve_class_path(stored_class) is not resolve_class_path(wanted):
                raise ConfigError(
                    f"--ckpt_path {ckpt_path} holds a {stored_class} checkpoint, but the config's model is {wanted}; "
                    "use that model's config or a checkpoint of this model"
                )
            if subcommand == "fit":
                _continue_wandb_run(config, self._checkpoint)

    def _check_checkpoint_fits(self) -> None:
        """Refuse model settings that the checkpoint's weights contradict, naming both values; name those that differ
        from the checkpoint's run and that this run's model takes (they apply from here on)."""
        if (checkpoint := self._checkpoint) is None:
            return
        weights, built = self.model.upgrade_weights(checkpoint.get("state_dict", {})), self.model.state_dict()
        # Weights only in the checkpoint may belong to a module the model builds later (the auto-decoder's codes).
        mismatched = sorted(
            name for name in built if name not in weights or tuple(weights[name].shape) != tuple(built[name].shape)
        )
        stored = {k: v for k, v in checkpoint.get("hyper_parameters", {}).items() if not k.startswith("_")}
        mine = dict(self.model.hparams)
        differing = [f"{name}={stored[name]!r} (this run: {mine.get(name)!r})" for name in stored
                     if name in mine and not same_setting(stored[name], mine[name])]  # fmt: skip
        path = self.config[self.subcommand].ckpt_path
        if not mismatched:
            if differing:
                given = f"this {self.subcommand} uses the values this run was given"
                rank_zero_info(f"--ckpt_path {path} was trained with {', '.join(differing)}: {given}")
            return
        raise ValueError(
            f"--ckpt_path {path} holds weights that this run's model cannot take ({', '.join(mismatched[:3])} differ)"
            + (f"; the checkpoint was trained with {', '.join(differing)}" if differing else "")
            + ". Set those values, or pass the run's own config.yaml with --config"
        )

    def _check_resume(self, configured: Any) -> None:
        """Refuse a resume that the checkpoint's progress, optimizers or schedulers (``configured``) cannot honour."""
        if (checkpoint := self._checkpoint) is None:
            return
        max_steps, max_epochs = self.trainer.max_steps, self.trainer.max_epochs
        if max_steps != -1 and max_epochs not in (None, -1) and internals.restarts_a_finished_epoch(checkpoint):
            raise ConfigError(
                f"--ckpt_path {self.config.fit.ckpt_path} was written at the end of an epoch without the command's "
                "UnfinishedEpochInCheckpoint, and this run sets both "
                f"--trainer.max_steps {max_steps} and --trainer.max_epochs {max_epochs}: Lightning "
                f"{lightning.__version__} restarts a finished epoch when max_steps is set and counts it twice, so the "
                "run would stop one epoch early (docs/internals.md); give --trainer.max_epochs -1 to stop at "
                "max_steps, or --trainer.max_steps -1 to stop at max_epochs"
            )
        self.model.check_resume(checkpoint)
        if (loader_states := internals.stored_loader_states(checkpoint)) and hasattr(self.datamodule, "check_resume"):
            self.datamodule.check_resume(loader_states[0], world_size=self.trainer.world_size)
        if configured is not None:  # else checked when training starts
            optimizers, scheduler_configs = internals.optimizers_and_schedulers(configured)
            check_optimizers_resume(checkpoint, optimizers, [config.get("scheduler") for config in scheduler_configs])

    def _check_optimizers(self) -> Any:
        """Refuse optimizer settings that torch refuses and a ``ReduceLROnPlateau`` that no validation steps; warn of an
        lr of 0. Returns what ``configure_optimizers`` returned, or None where it needs the running Trainer."""
        try:
            configured = self.model.configure_optimizers()
        except ValueError as error:  # e.g. torch's "Invalid learning rate: -0.001"
            raise ConfigError(f"the model's optimizer or lr_scheduler settings: {error}") from error
        except (RuntimeError, AttributeError):  # optimizers that need the running Trainer, or what ``setup`` builds
            return None  # (the auto-decoder's codes): checked when it runs them
        optimizers, scheduler_configs = internals.optimizers_and_schedulers(configured)
        # A ReduceLROnPlateau steps on val/loss under manual optimization (``on_train_epoch_end``), on its monitor else.
        manual = not self.model.automatic_optimization
        if any(isinstance(config.get("scheduler"), ReduceLROnPlateau)
               and (manual or str(config.get("monitor", "")).startswith("val/"))
               for config in scheduler_configs):  # fmt: skip
            # Lightning's choice of validation data: the datamodule's val_dataloader, or the model's without one.
            source = self.datamodule if self.datamodule is not None else self.model
            val_data = type(source).val_dataloader is not DataHooks.val_dataloader
            self.model.plateau_validation_epochs(self.trainer, val_data=val_data)
        for optimizer in optimizers:
            # A scheduler (which marks each group's ``initial_lr``) may raise an lr of 0, e.g. CyclicLR's base_lr.
            if all(group["lr"] == 0 and "initial_lr" not in group for group in optimizer.param_groups):
                name = type(optimizer).__name__
                rank_zero_warn(f"{name}'s lr is 0 in every parameter group: its weights will not train")
        return configured

    def _check_run(self, fit: bool) -> None:
        """Refuse, before the run creates any file, settings that the checkpoint, the networks, the data or the fast
        path contradict, and a stream whose splits this run cannot read."""
        with _settings_refused():
            self.model.check_given_networks()
            if self.datamodule is not None:  # first: data the weights were not trained on name what differs
                self.model.check_data(self.datamodule, self.subcommand, self._checkpoint)
            self._check_checkpoint_fits()
            if fit:
                self._check_resume(self._check_optimizers())
            if fit:
                self._check_trainer_settings()
                fast.check_fit(self.trainer, self.model.steps_per_batch, self.datamodule)
        if hasattr(self.datamodule, "check_splits"):  # bad data, not settings
            self.datamodule.check_splits(self.subcommand, trainer=self.trainer)

    def _check_trainer_settings(self) -> None:
        """Refuse a negative ``log_every_n_steps``, and the Trainer's gradient clipping or accumulation for a model that
        optimizes manually, naming the model's own clipping if it has one."""
        name, trainer = type(self.model).__name__, self.trainer
        if trainer.log_every_n_steps < 0:
            raise ConfigError(f"--trainer.log_every_n_steps {trainer.log_every_n_steps}: expected 0 (no step logs) "
                              "or more")  # fmt: skip
        if self.model.automatic_optimization:
            return
        if trainer.gradient_clip_val:
            own = "gradient_clip_val" in self.model.hparams
            algorithm = trainer.gradient_clip_algorithm  # None, Lightning's "norm", unless given
            by = f" --model.init_args.gradient_clip_algorithm {algorithm.value}" if algorithm else ""
            advice = (f"set --model.init_args.gradient_clip_val {trainer.gradient_clip_val}{by} instead" if own
                      else "it has no gradient clipping of its own")  # fmt: skip
            raise ConfigError(f"--trainer.gradient_clip_val {trainer.gradient_clip_val}: {name} steps its optimizers "
                              f"itself (manual optimization), where the Trainer clips nothing; {advice}")  # fmt: skip
        if trainer.accumulate_grad_batches > 1:
            raise ConfigError(f"--trainer.accumulate_grad_batches {trainer.accumulate_grad_batches}: {name} steps its "
                              "optimizers itself (manual optimization), where the Trainer accumulates nothing; raise "
                              "--data.batch_size instead")  # fmt: skip

    def before_fit(self) -> None:
        self._check_run(fit=True)
        # Lightning's count of modules in eval mode at the start of training: those the model's own train() holds
        # there (a frozen LPIPS network, a prior's tokenizer) are no news; any more are, and the warning stays.
        held = _held_in_eval(self.model)
        warnings.filterwarnings("ignore", rf"Found {held} module\(s\) in eval mode", module=r"lightning\.pytorch\.loop")

    def _before_evaluation(self) -> None:
        self._check_run(fit=False)
        if self.subcommand == "predict" and not self.trainer.fast_dev_run:  # before the run's config is written
            self.config_init.predict.predictions.target(self.trainer, new=True)
        if self.config[self.subcommand].get("ckpt_path") is None:  # Lightning evaluates the model as it was built
            rank_zero_warn(
                f"{self.subcommand} without --ckpt_path evaluates the weights that the config builds, not a trained "
                "run's; give --ckpt_path last (the newest run under --trainer.default_root_dir) or a checkpoint file"
            )
        # Lightning restores the checkpoint's ModelCheckpoint state for evaluation too, which writes no checkpoint:
        # its warning that the run's checkpoint folder differs from the checkpoint's is noise here.
        warnings.filterwarnings("ignore", "The dirpath has changed from", module=r"lightning\.pytorch\.callbacks")

    before_validate = before_test = before_predict = _before_evaluation


def _help_with_classes(parser: LightningArgumentParser, argv: list[str]) -> None:
    """``--help``: the command's help, then the arguments of the model and datamodule classes that the other arguments
    choose (jsonargparse's help lists those of a subclass only for ``--model.help <class>``); exits."""
    try:  # unvalidated: ``--model VAE --help`` lacks the required --data
        others = [arg for arg in argv if arg not in ("-h", "--help") and arg.split("=")[0] != "--print_config"]
        config = internals.parse_unvalidated(parser, others)
    except (ArgumentError, ValueError):  # no subcommand, or a bad argument: the help alone
        return
    with contextlib.suppress(SystemExit):
        parser.parse_args(argv)
    subcommand = [config.subcommand] if config.get("subcommand") else []  # none where the CLI runs no subcommand
    for section in ("model", "data"):
        if class_path := _run_config(config).get(f"{section}.class_path"):
            with contextlib.suppress(SystemExit):
                parser.parse_args([*subcommand, f"--{section}.help", class_path])
    sys.exit(0)


def _held_in_eval(model: torch.nn.Module) -> int:
    """How many of ``model``'s modules its own ``train()`` leaves in eval mode; every module's mode is restored."""
    modes = [(module, module.training) for module in model.modules()]
    model.train()
    held = sum(not module.training for module, _ in modes)
    for module, mode in modes:
        module.training = mode
    return held


def _run_config(config: Any) -> Any:
    """The section of ``config`` (parsed or instantiated) for the command's subcommand; ``config`` without one."""
    subcommand = config.get("subcommand")
    return config[subcommand] if subcommand else config


def _warn_left_out_settings(config: Any) -> None:
    """Warn of a config file's ``model`` or ``data`` settings that the section's class, given elsewhere (``--data
    StreamingDataModule``), does not take: jsonargparse leaves them out without a word."""
    for path in filter(None, config.get("config") or []):  # None: a config given as a string
        sections = yaml.safe_load(path.read_text()) or {}
        for section in ("model", "data"):
            given, final = sections.get(section), config.get(section)
            if not isinstance(given, dict) or "class_path" not in given or final is None:
                continue
            if resolve_class_path(str(given["class_path"])) is resolve_class_path(final.class_path):
                continue
            left_out = [f"{key}={value!r}" for key, value in (given.get("init_args") or {}).items()
                        if key not in (final.get("init_args") or {})]  # fmt: skip
            if left_out:
                rank_zero_warn(f"--{section} {final.class_path} takes no {', '.join(left_out)} of {path.relative}'s "
                               f"{section} section ({given['class_path']}): left out")  # fmt: skip


def _refused_section_setting(config: Any, error: Exception) -> str | None:
    """``--<section>.<key> <value>`` (or ``--<section>``) of the section whose class refused it with ``error``, found
    in the traceback, the key by its name in the message; None for an error of no section."""
    classes = {"checkpoint": RunCheckpoint, "predictions": PredictionWriter, "images": ImageLogger}
    for frame, _ in traceback.walk_tb(error.__traceback__):
        own = frame.f_locals.get("self")
        section = "nonfinite" if frame.f_code is non_finite_guard.__code__ else next(
            (name for name, cls in classes.items() if isinstance(own, cls)), None)  # fmt: skip
        if section is not None:
            return _setting_named(section, dict(config[section].items()), str(error)) or f"--{section}"
    return None


def _setting_named(section: str, settings: dict[str, Any], message: str) -> str | None:
    """``--<section>.<key> <value>`` of the setting of ``settings`` that ``message`` names first; None for none."""
    named = [(found.start(), key) for key in settings if (found := re.search(rf"\b{re.escape(key)}\b", message))]
    return f"--{section}.{min(named)[1]} {settings[min(named)[1]]}" if named else None


@contextlib.contextmanager
def _settings_refused() -> Iterator[None]:
    """The checks' ValueErrors as :class:`ConfigError`: settings that the checkpoint or the networks contradict."""
    try:
        yield
    except ConfigError:
        raise
    except ValueError as error:
        raise ConfigError(str(error)) from error


def _appended_loggers_in_root(argv: list[str] | tuple[str, ...]) -> list[str] | tuple[str, ...]:
    """``argv`` with ``--trainer.logger.save_dir`` :data:`ROOT_DIR` after each ``--trainer.logger+=<Logger>`` whose
    class takes a ``save_dir`` (one given after it applies); ``argv`` if unchanged."""
    given, args = [], iter(argv)
    for arg in args:
        given.append(arg)
        if arg == "--trainer.logger+":
            value = next(args, "")
            given.append(value)
        elif arg.startswith("--trainer.logger+="):
            value = arg.partition("=")[2]
        else:
            continue
        found = resolve_class_path(value) if "." in value else next(
            (cls for cls in _concrete_subclasses(Logger) if cls.__name__ == value), None)  # fmt: skip
        if isinstance(found, type) and "save_dir" in inspect.signature(found).parameters:
            given += ["--trainer.logger.save_dir", ROOT_DIR]
    return given if len(given) > len(argv) else argv


# jsonargparse's wording of the errors that the command rewrites (tests/test_cli.py names any that changes): an argument
# a class does not take, an option the command does not have, a class name that resolves to no class; the lines that
# enclose a value's error (its option, its class, the types the option takes) and those about a Union's other members.
UNKNOWN_ARGUMENT = re.compile(r"Option '([^']+)' is not accepted(\.|$)", re.M)
UNKNOWN_OPTION = re.compile(r"does not accept option '([^']+)'|unrecognized arguments: .*?--([\w.]+)")
UNKNOWN_CLASS = re.compile(
    r"Expected a dot import path string: (?P<name>\S+)|module '[^']+' has no attribute '[^']+'(\. Got value: "
    r"(?P<value>\S+))?|(?P<why>No module named '[^']+')"
)
UNKNOWN_HELP_CLASS = re.compile(r"--(?P<key>[\w.]+)\.help: Expected a dot import path string: (?P<name>\S+)")
_ENCLOSING = re.compile(
    r'Parser key "(?P<key>[^"]+)":|Problem with given class_path \'(?P<path>[^\']+)\':'
    r"|(?:Subtypes: |Type )(?P<types>.*?)(?: expects a function or a callable class: |$)"
)
_UNION_LINES = re.compile(r"Does not validate|Errors:|Given value|Expected a (<class ')?NoneType|Expected a path but")
MAX_LISTED = 50  # known classes named in an error; more (torch.nn.Module's) only yield the closest


def _refusal(message: str) -> tuple[list[tuple[str, str]], list[str]]:
    """jsonargparse's error ``message`` read as its first refusal of a value: what encloses it, outermost first, as
    ``(kind, text)`` with kind ``key`` (an option), ``path`` (a class) or ``types`` (those the option takes), and
    its lines; no lines where it holds none (the lines about a Union's other members refuse nothing)."""
    enclosing: list[tuple[int, str, str]] = []
    cause: list[str] = []
    cause_depth = 0
    for line in filter(str.strip, message.splitlines()):
        depth = len(line) - len(line.lstrip(" -"))  # a block's lines are indented under the line that opens it
        text = _ENCLOSING.sub("", line.strip().removeprefix("- ")).strip()
        if cause:  # the refusal's lines go on at its depth
            if depth < cause_depth or _ENCLOSING.search(line) or _UNION_LINES.match(text):
                break
            cause.append(text)
            continue
        # A Union's Subtypes line encloses the lines of its errors, which follow at its own depth.
        enclosing = [(d, kind, text) for d, kind, text in enclosing if d < depth or (d, kind) == (depth, "types")]
        enclosing += [(depth, found.lastgroup, found[found.lastgroup]) for found in _ENCLOSING.finditer(line)]
        if text and not _UNION_LINES.match(text):
            cause, cause_depth = [text], depth
    return [(kind, text) for _, kind, text in enclosing], cause


def _known_class_like(message: str) -> str | None:
    """jsonargparse's error ``message`` for a class name that resolves to no class, as ``--<option> <name> is not a
    known class; the known ones are ...; did you mean <closest>?``; None for another error or no known class."""
    enclosing, cause = _refusal(message)
    found = UNKNOWN_CLASS.search(cause[0]) if cause else None
    keys = [text for kind, text in enclosing if kind == "key"]
    paths = [text for kind, text in enclosing if kind == "path"]
    if found is None or not keys or not (found["name"] or found["value"] or paths):
        return None
    name = found["name"] or found["value"] or paths[-1]
    # The classes of the types that the innermost option takes, not a factory's arguments (``Callable[[Iterable],
    # Optimizer]``), nor Iterable's.
    innermost = max(i for i, (kind, _) in enumerate(enclosing) if kind == "key")
    types = " ".join(text for kind, text in enclosing[innermost:] if kind == "types")
    type_paths = re.findall(r"[A-Za-z_]\w*(?:\.\w+)+", re.sub(r"Callable\[\[[^\]]*\], ", "Callable[", types))
    bases = [cls for cls in map(resolve_class_path, type_paths) if isinstance(cls, type)]
    bases = [cls for cls in bases if cls.__module__ != "collections.abc"]
    # Neither private nor local classes, nor the classes of jsonargparse's lazy_instance defaults.
    known = {cls.__name__ for base in bases for cls in _concrete_subclasses(base) if "<locals>" not in cls.__qualname__}
    known = sorted({name for name in known if not name.startswith(("_", "LazyInstance_"))}, key=str.lower)
    if not known:
        return None
    lowered = {cls.lower(): cls for cls in known}
    closest = difflib.get_close_matches(name.rpartition(".")[2].lower(), lowered, n=1, cutoff=0.6)
    listed = f"the known ones are {', '.join(known)}" if len(known) <= MAX_LISTED else (
        f"expected one of the {len(known)} known subclasses of {', '.join(cls.__name__ for cls in bases)}")  # fmt: skip
    return (f"--{'.init_args.'.join(keys)} {name} is not a known class" + (f" ({found['why']})" if found["why"] else "")
            + f"; {listed} (or give an import path such as mypackage.MyClass)"
            + (f"; did you mean {lowered[closest[0]]}?" if closest else ""))  # fmt: skip


def _help_class_like(parser: LightningArgumentParser, argv: Any, message: str) -> str | None:
    """jsonargparse's error ``message`` for ``--<option>.help <name>`` of a name that resolves to no class, worded as
    :func:`_known_class_like` words ``--<option> <name>``; None for another error."""
    found = UNKNOWN_HELP_CLASS.match(message)
    if found is None:
        return None
    subcommand = [argv[0]] if isinstance(argv, (list, tuple)) and argv and not argv[0].startswith("-") else []
    try:
        parser.parse_args([*subcommand, f"--{found['key']}", found["name"]])
    except ArgumentError as error:
        known = _known_class_like(str(error))
        return known and known.replace(f"--{found['key']} ", f"--{found['key']}.help ", 1)
    return None


def _known_key_like(message: str, parsers: list[LightningArgumentParser]) -> str | None:
    """The known key closest to the one that jsonargparse's error ``message`` refuses as unknown: an argument of the
    class the refusal names, or an option of the command (``parsers``: its subcommands'); None where none is close."""
    enclosing, cause = _refusal(message)
    if cause and (found := UNKNOWN_ARGUMENT.search(cause[0])):  # an argument of the innermost class
        paths = [text for kind, text in enclosing if kind == "path"] + re.findall(r"class_path='([^']+)'", cause[0])
        name, option = found.group(1), False
        try:  # the class's arguments, as jsonargparse reads its signature
            known = ArgumentParser(exit_on_error=False).add_class_arguments(
                resolve_class_path(paths[-1]), fail_untyped=False
            )
        except (ValueError, TypeError, IndexError):  # no class, or one whose signature jsonargparse cannot read
            known = []
    elif found := UNKNOWN_OPTION.search(message):
        known = [key for parser in parsers for key in parser.get_defaults().keys()]
        name, option = found.group(1) or found.group(2), found.group(2) is not None  # typed as --<name>
    else:
        return None
    # The first part of the dotted name that no known key has, replaced by the closest part a known key has there.
    parts, paths = name.split("."), [key.split(".") for key in known]
    for i, part in enumerate(parts):
        there = {path[i] for path in paths if len(path) > i and path[:i] == parts[:i]}
        if part not in there:
            closest = difflib.get_close_matches(part, there, n=1, cutoff=0.75)  # --prnt_config is not --config
            key = ".".join([*parts[:i], *closest, *parts[i + 1 :]])
            return (f"--{key}" if option else f"'{key}'") if closest else None
    return None


def _concrete_subclasses(base: type) -> Iterator[type]:
    for cls in base.__subclasses__():
        yield from _concrete_subclasses(cls)
        if not inspect.isabstract(cls):
            yield cls


# Messages that say nothing about the user's run, each filtered by its text and the module that issues it.
_NOISE = [
    (r"`isinstance\(treespec, LeafSpec\)` is deprecated", r"lightning\.pytorch\.utilities\._pytree"),
    (r"The `srun` command is available on your system but is not used", r"lightning\.fabric\.plugins\.environments"),
    (r"The number of training batches \(\d+\) is smaller than the logging interval", r"lightning\.pytorch\.loops"),
    (r"(Lightning c|C)ouldn't infer the (batch )?indices fetched", r"lightning\.pytorch\.loops"),  # 2.5 and 2.6
    (r"Using ModelCheckpoint with manual optimization and every_n_train_steps", r"lightning\.pytorch\.callbacks"),
    # configure_model compiles or syncs codebooks, it shards nothing; test and predict evaluate the checkpoint's average
    (r"You're using the WeightAveraging callback with a model that overrides", r"lightning\.pytorch\.callbacks"),
    (r"You're using the WeightAveraging callback, but loading a checkpoint", r"lightning\.pytorch\.callbacks"),
]


@contextlib.contextmanager
def _quiet_known_noise() -> Iterator[None]:
    """Ignore the known noise (inside ``warnings.catch_warnings``) and Lightning's logged tips in the context."""
    for message, module in _NOISE:
        warnings.filterwarnings("ignore", message=message, module=module)

    def not_a_tip(record: logging.LogRecord) -> bool:  # a filter of this context's own, removed as it ends
        return "Tip: For seamless cloud logging" not in record.getMessage()  # Lightning's "💡 Tip: ..." adverts

    with contextlib.ExitStack() as filters:
        for name in ("lightning.pytorch.utilities.rank_zero", "lightning.pytorch"):
            logging.getLogger(name).addFilter(not_a_tip)
            filters.callback(logging.getLogger(name).removeFilter, not_a_tip)
        yield


def _furthest_checkpoint(config: Any) -> str | None:
    """``--ckpt_path last``: the furthest trained (global step, then newest) ``last*.ckpt`` of this run's folder, or
    SLURM ``hpc_ckpt_*.ckpt``; None when there is none yet (docs/fault_tolerance.md)."""
    root = Path(config.trainer.get("default_root_dir") or ".")
    folders, run, _ = _searched(config)
    for folder in [root, *folders]:  # temporary files of writers killed mid-write, in any earlier version's folder
        if folder.is_dir():
            remove_dead_writers_files(folder)
    lasts = [path for folder in folders for path in folder.glob("last*.ckpt")]
    hpc = list(hpc_checkpoints(root).values())

    def read(path: Path) -> tuple[int, float, tuple[str, str] | None]:
        try:
            checkpoint = read_checkpoint(path)
        except ValueError as error:
            rank_zero_warn(f"--ckpt_path last: skipping {path}: {error}")
            return -1, path.stat().st_mtime, None
        run_of = checkpoint.get(LoggerRunInCheckpoint.key)
        return int(checkpoint["global_step"]), path.stat().st_mtime, run_of and (run_of["name"], run_of["version"])

    progress = {path: read(path) for path in [*lasts, *hpc]}
    if run is not None:  # the root's HPC checkpoints recorded as another run's are not this run's
        progress = {path: p for path, p in progress.items() if path not in hpc or p[2] in (None, run[1:])}
    if not progress:
        return None
    chosen = max(progress, key=lambda path: progress[path][:2])
    rank_zero_info(f"--ckpt_path last: {chosen} (global step {progress[chosen][0]})")
    return str(chosen)


def _named_run(config: Any) -> tuple[Path, str, str] | None:
    """``(checkpoints folder, name, version)`` of the run folder ``<save_dir>/<name>/<version>`` that the first
    logger's settings name (:func:`_names_a_run`); None where no run is named."""
    logger = loggers_of(config)[0]  # Lightning's ``trainer.logger``, in whose run folder the checkpoints go
    logger_class = logger_class_of(getattr(logger, "class_path", None), CSVLogger, TensorBoardLogger, WandbLogger)
    if logger_class is None or not _names_a_run(logger.get("init_args") or {}):
        return None
    built = logger_class(**logger.init_args.as_dict())  # for its name, save_dir and version as the run will have them
    version = built.version if isinstance(built.version, str) else f"version_{built.version}"
    root = config.trainer.get("default_root_dir") or "."
    return Path(str(built.save_dir or root)) / str(built.name) / version / "checkpoints", str(built.name), version


def _names_a_run(init_args: Any) -> bool:
    """Whether a logger's settings name its run: a ``version`` (TensorBoard, CSV, W&B) or a W&B ``id``."""
    return any(init_args.get(key) is not None for key in ("version", "id"))


def _searched(config: Any) -> tuple[list[Path], tuple[Path, str, str] | None, str]:
    """Where :func:`_furthest_checkpoint` looks: the folders, the run the logger names, and the place in words."""
    root = config.trainer.get("default_root_dir") or "."
    dirpath = config.checkpoint.get("dirpath") if config.get("checkpoint") else None
    if dirpath:
        return [Path(dirpath)], None, f"in {dirpath}"
    run = _named_run(config)
    if run is None:  # <root>/checkpoints without a logger, <root>/<name>/<version>/checkpoints with one
        folders = [Path(root, "checkpoints"), *Path(root).glob("*/checkpoints"), *Path(root).glob("*/*/checkpoints")]
        return folders, None, f"under {root}"
    init_args = loggers_of(config)[0].init_args
    key = "version" if init_args.get("version") is not None else "id"
    return [run[0]], run, f"in {run[0]} (the run that --trainer.logger.{key} {init_args[key]} names)"


def _continue_wandb_run(config: Any, checkpoint: dict[str, Any]) -> None:
    """Give the WandbLoggers of a resumed fit that name no run the ids of the W&B runs that wrote the checkpoint
    (:class:`LoggerRunInCheckpoint`), the i-th W&B logger the i-th run, each where it logs to that run's project."""
    recorded = checkpoint.get(LoggerRunInCheckpoint.wandb_key)
    if recorded is None:  # checkpoints written before 2026-12-06 record the first logger's run only
        first = checkpoint.get(LoggerRunInCheckpoint.key) or {}
        recorded = [first] if first and logger_class_of(first["class_path"], WandbLogger) else []
    loggers = [logger for logger in loggers_of(config) if hasattr(logger, "class_path")]
    wandb_loggers = [logger for logger in loggers if logger_class_of(logger.class_path, WandbLogger)]
    for logger, run in zip(wandb_loggers, recorded):
        init_args = logger.get("init_args")
        if init_args is None or _names_a_run(init_args):
            continue  # the user's choice of run
        project, run_id = resolve_class_path(logger.class_path)(**init_args.as_dict()).name, run["version"]
        if project != run["name"]:
            rank_zero_info(f"--ckpt_path {config.ckpt_path} was written by W&B run {run_id} of project {run['name']}; "
                           f"this fit logs to project {project}, as a new run")  # fmt: skip
            continue
        init_args.id = run_id
        other = "--trainer.logger.id" if len(loggers) == 1 else f"the WandbLogger of project {project} an id"
        rank_zero_info(f"--ckpt_path {config.ckpt_path}: continuing its W&B run {run_id} (project {project}); "
                       f"give {other} to log to another run")  # fmt: skip


def logger_class_of(class_path: str | None, *bases: type) -> type | None:
    """The class that ``class_path`` names if it subclasses one of ``bases``; else None."""
    found = resolve_class_path(class_path) if class_path else None
    return found if isinstance(found, type) and issubclass(found, bases) else None


def _fast_path(config: Any, fit: bool) -> None:
    """``--fast.steps`` N (configs/fast.yaml) as the model's and the datamodule's ``steps_per_batch`` (1 turns the fast
    path off); a ``fit`` with the trainer's gradient clipping or accumulation is refused."""
    steps = config.get("fast.steps")
    if steps is None or config.get("data") is None or config.get("model") is None:
        return
    if steps < 1:
        raise ConfigError(f"--fast.steps {steps}: expected an integer >= 1 (1 trains without the fast path)")
    if steps == 1:
        for section in (config.data, config.model):
            if (section.get("init_args") or {}).get("steps_per_batch", 1) != 1:
                section.init_args.steps_per_batch = 1
        return
    trainer = config.get("trainer") or {}
    for name, off in (("gradient_clip_val", (None, 0)), ("accumulate_grad_batches", (1,))):
        value = trainer.get(name, off[0])
        if fit and value not in off:  # what Lightning's manual optimization refuses
            raise ConfigError(f"--trainer.{name} {value}: the fast path (--fast.steps {steps}) steps the optimizer "
                              "itself under manual optimization, which has no gradient clipping or accumulation; "
                              "train without configs/fast.yaml to use it")  # fmt: skip
    data_class = resolve_class_path(config.data.class_path)
    parameters = inspect.signature(data_class).parameters.values() if data_class is not None else []
    if data_class is not None and not any(p.name == "steps_per_batch" or p.kind is p.VAR_KEYWORD for p in parameters):
        raise ConfigError(f"--fast.steps {steps}: {data_class.__name__} takes no steps_per_batch (its training loader "
                          "cannot be grouped); train without configs/fast.yaml")  # fmt: skip
    config.data.init_args.steps_per_batch = steps
    config.model.init_args.steps_per_batch = steps


def _streamed_predictions(config: Any) -> None:
    """Under ``--predictions.format stream``, ``return_predictions`` defaults to false; an explicit true is refused."""
    if config.get("predictions.format") != "stream":
        return
    if config.get("return_predictions") is True:
        raise ConfigError(
            "--return_predictions true keeps every prediction in memory, which --predictions.format stream exists to "
            "avoid: leave it unset (false) or use --predictions.format file"
        )
    config.return_predictions = False


def _logger_defaults(config: Any) -> dict[int, dict[str, Any]]:
    """Resolve in ``config`` the loggers' settings that stand for a default (:data:`ROOT_DIR`, :data:`OWN_DEFAULT`,
    a WandbLogger's ``dir`` or default ``save_dir``; both ``dir`` and ``save_dir`` are refused) and drop extra keyword
    arguments left None. Returns the settings each logger (by position) had before (:func:`_as_given`)."""
    root = config.trainer.get("default_root_dir") or "."
    given: dict[int, dict[str, Any]] = {}
    for i, logger in enumerate(loggers_of(config)):
        init_args = logger.get("init_args") if hasattr(logger, "class_path") else None
        if init_args is None:
            continue
        given[i] = {}
        parameters = inspect.signature(resolve_class_path(logger.class_path)).parameters
        for key, value in list(init_args.items()):
            if value == OWN_DEFAULT:
                given[i][key] = value
            if key in parameters and value == OWN_DEFAULT:
                init_args[key] = parameters[key].default
            elif key not in parameters and value in (None, OWN_DEFAULT):  # an extra keyword argument left unset
                del init_args[key]
        save_dir = init_args.get("save_dir")
        if not logger.class_path.endswith("WandbLogger"):
            if save_dir == ROOT_DIR:
                given[i]["save_dir"], init_args.save_dir = save_dir, root
            continue
        # "." is WandbLogger's default, ROOT_DIR the command's default logger's, which jsonargparse carries over
        default = save_dir in (None, ".", ROOT_DIR)
        if init_args.get("dir") and not default:
            raise ConfigError(f"--trainer.logger.save_dir {save_dir} and --trainer.logger.dir {init_args.dir}: "
                              "WandbLogger writes its run into one folder; give only save_dir")  # fmt: skip
        if default:
            given[i]["save_dir"], init_args.save_dir = save_dir, init_args.get("dir") or root
    return given


def _one_version_per_folder(config: Any) -> dict[int, str]:
    """Give the CSV and TensorBoard loggers of ``config`` that share a folder ``<save_dir>/<name>``, none of them given
    a ``version``, one version: that folder's next free one. Returns each such logger's position and run folder."""
    built = {}  # as Lightning builds them, for their folder and next version (built loggers write nothing yet)
    for i, logger in enumerate(loggers_of(config)):
        if logger_class := logger_class_of(getattr(logger, "class_path", None), CSVLogger, TensorBoardLogger):
            built[i] = logger_class(**(logger.get("init_args") or {}))
    given: dict[int, str] = {}
    for folder in {logger.root_dir for logger in built.values()}:
        shared = [i for i, logger in built.items() if logger.root_dir == folder]
        if len(shared) > 1 and all(loggers_of(config)[i].init_args.get("version") is None for i in shared):
            for i in shared:
                loggers_of(config)[i].init_args.version = built[shared[0]].version
                given[i] = os.path.join(folder, f"version_{built[shared[0]].version}")
    return given


def loggers_of(config: Any) -> list[Any]:
    loggers = config.trainer.get("logger")
    return loggers if isinstance(loggers, list) else [loggers]


def _as_given(config: Any, given: dict[int, dict[str, Any]]) -> Any:
    """A copy of ``config`` whose loggers have the settings they were given before :func:`_logger_defaults`."""
    config = config.clone()
    for i, logger in enumerate(loggers_of(config)):
        for key, value in given.get(i, {}).items():
            logger.init_args[key] = value
    return config


def _is_default_logger(config: Any, given: dict[int, dict[str, Any]]) -> bool:
    """Whether the trainer's logger is the command's default: a TensorBoardLogger given none of its own arguments
    (``given``: the defaults that :func:`_logger_defaults` resolved; SummaryWriter's extra arguments are not read)."""
    logger = config.trainer.get("logger")
    if not hasattr(logger, "class_path") or resolve_class_path(logger.class_path) is not TensorBoardLogger:
        return False
    parameters = inspect.signature(TensorBoardLogger).parameters
    own = [key for key in parameters if key not in ("name", "save_dir", "kwargs")]
    return given.get(0, {}).keys() >= {"name", "save_dir"} and all(
        logger.init_args.get(key) == parameters[key].default for key in own
    )


def _check_section_unset(config: Any, section: str, cls: type, why: str, defaults: dict[str, Any]) -> None:
    """Refuse the first setting of the config ``section`` of ``cls``'s arguments that differs from ``defaults``, else
    from ``cls``'s own defaults: the run, ``why``, does without the section."""
    defaults = {**{name: p.default for name, p in inspect.signature(cls).parameters.items()}, **defaults}
    for key, value in config[section].items():
        if value != defaults.get(key):
            raise ConfigError(f"--{section}.{key} {value}: {why}; drop one of the two")


def _as_list(value: Any) -> list[Any]:
    """A Trainer argument's ``callbacks`` or ``plugins`` as a new list (empty for None)."""
    return [] if value is None else list(value) if isinstance(value, (list, tuple)) else [value]


# Errors that say what is wrong with the user's settings (exit status 2; MisconfigurationException: one that Lightning
# refuses as it runs, a checkpoint monitor that no metric has), data or files (1; OSError: missing, unreadable or
# unwritable files); the command prints them without a traceback.
_SETTINGS_ERRORS = (ConfigError, ArgumentError, MisconfigurationException)
_USER_ERRORS = (*_SETTINGS_ERRORS, ValueError, OSError, NonFiniteLossError)
TRACEBACK_FLAG = "--print_traceback"


def run_command(prog: str, command: Callable[[], object]) -> None:
    """Run ``command``: a refused setting or bad data (also in a ``ddp_spawn`` process) prints ``<prog>: error:
    <message>`` alone, exit status 2 for settings, 1 for data and files, 143 for a SIGTERM that Lightning's loops
    stopped at; ``--print_traceback`` (or ``AE_LIGHTNING_TRACEBACK=1``) shows the traceback instead."""
    if TRACEBACK_FLAG in sys.argv:
        sys.argv.remove(TRACEBACK_FLAG)
        os.environ["AE_LIGHTNING_TRACEBACK"] = "1"  # DDP's processes run this command again: they inherit it
    try:
        command()
    except SIGTERMException:  # Lightning's, at an evaluation's batch: exit as a process the signal ended, as fit does
        sys.exit(SIGTERM_EXIT_CODE)
    except Exception as error:
        raised, message = _raised_in_process(error) or (type(error), str(error))
        if os.environ.get("AE_LIGHTNING_TRACEBACK") == "1" or not issubclass(raised, _USER_ERRORS):
            raise
        message = one_line(message) if issubclass(raised, ArgumentError) else message
        sys.stderr.write(f"{prog}: error: {message}\n(add {TRACEBACK_FLAG} for the traceback)\n")
        sys.exit(2 if issubclass(raised, _SETTINGS_ERRORS) else 1)


def _raised_in_process(error: Exception) -> tuple[type, str] | None:
    """The class and message of the error that a process ``ddp_spawn`` (or ``ddp_fork``) started raised, read from its
    traceback, which torch's ``ProcessRaisedException`` passes on as text; None for any other error."""
    if not isinstance(error, ProcessRaisedException):
        return None
    # The last traceback of the chain: its frames' lines are indented, then come "<class>: <message>" and its lines.
    lines = str(error).rpartition("Traceback (most recent call last):\n")[2].splitlines()
    start = next((i for i, line in enumerate(lines) if line and not line[0].isspace()), None)
    if start is None:
        return None
    name, _, first = lines[start].partition(": ")
    raised = pydoc.locate(name)
    if not isinstance(raised, type) or not issubclass(raised, Exception):
        return None
    return raised, "\n".join([first, *lines[start + 1 :]])


def one_line(message: str) -> str:
    """jsonargparse's error for a value on one line, without the members of a Union that were not meant (a class's
    error reads ``--model <class>: <argument>: ...: <what was wrong>``)."""
    message = re.sub(r"<class '([^']+)'>", r"\1", message)
    enclosing, cause = _refusal(message)
    names = [text for kind, text in enclosing if kind != "types"]
    if cause and len(names) > 1 and [kind for kind, _ in enclosing if kind != "types"][:2] == ["key", "path"]:
        causes = "; ".join(re.sub(r"\. Got value: Namespace\(.*$", "", line) for line in cause)
        message = f"--{names[0]} {names[1]}: {''.join(f'{name}: ' for name in names[2:])}{causes}"
    elif (key := re.match(r'Parser key "([^"]+)":', message)) and "Union subtypes" in message:
        value = re.search(r"Given value: (.*)", message)
        expected = " or ".join(re.sub(r"^Expected an? ", "", e) for e in re.findall(r"^\s*- (.*)$", message, re.M))
        message = f"--{key.group(1)}: expected {expected}. Got value: {value.group(1) if value else '?'}"
    else:
        message = re.sub(r'Parser key "([^"]+)":', r"--\1:", message)
    return " ".join(message.split())


def main() -> None:
    """``ae-lightning`` (see :func:`run_command`)."""
    run_command("ae-lightning", AutoencoderCLI)


if __name__ == "__main__":
    main()
