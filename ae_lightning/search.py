"""The ``ae-lightning-search`` command: hyperparameter search with Optuna over any config's arguments.

    ae-lightning-search --config configs/vae.yaml --space configs/search/vae.yaml \\
        --storage sqlite:///runs/search/vae.db --n_trials 40 --root runs/search/vae [fit arguments ...]

Each trial is an ``ae-lightning fit`` run in ``<root>/trial-<number>``, in the search's process; the study lives in
``--storage``, shared by workers and resumed by a rerun; ``<root>/best.yaml`` is the best trial's config. How:
``docs/search.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
import functools
import hashlib
import itertools
import json
import logging
import math
import os
import sys
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import optuna
import sqlalchemy
import torch
import yaml
from jsonargparse import get_loader
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger, WandbLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
    check_distribution_compatibility,
)
from optuna.exceptions import ExperimentalWarning
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback, fail_stale_trials
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy.exc import ArgumentError, DatabaseError, IntegrityError, OperationalError, ProgrammingError

from ae_lightning.base import resolve_class_path
from ae_lightning.cli import AutoencoderCLI, ConfigError, logger_class_of, loggers_of, one_line, run_command
from ae_lightning.training.callbacks import run_directory
from ae_lightning.training.fault_tolerance import NonFiniteLossError
from ae_lightning.training.fault_tolerance.checkpoint_io import write_atomically
from datamodules.checks import check_init_arguments, check_number

PRUNERS = {
    # steps are a trial's validations (TrialReporter), its first never pruned
    "median": lambda: optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=0),
    "hyperband": optuna.pruners.HyperbandPruner,
    "none": optuna.pruners.NopPruner,
}
# Trials that count towards --n_trials, with the failed ones whose loss diverged (user attribute ``diverged``).
COUNTED = (TrialState.COMPLETE, TrialState.PRUNED)
_EXPERIMENTAL = r"(RetryHeartbeatStaleTrialCallback|Argument ``heartbeat_interval``|\S*fail_stale_trials) is (an )?exp"
# Fit arguments that the search sets itself for each trial: its folder, checkpoint folder, monitor and mode, resume.
OWN_ARGS = ("trainer.default_root_dir", "checkpoint.dirpath", "checkpoint.monitor", "checkpoint.mode", "ckpt_path")
# The keys of a parameter of each type: any other would be ignored.
RANGE_KEYS = {"type", "low", "high", "log", "step"}
SPEC_KEYS = {"float": RANGE_KEYS, "int": RANGE_KEYS, "categorical": {"type", "choices"}}


def parse_args(argv: list[str] | None = None) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(
        prog="ae-lightning-search",
        description=__doc__.split("\n\n")[0],
        epilog="Other arguments go to every trial's `ae-lightning fit` (e.g. --trainer.max_epochs 5).",
    )
    parser.add_argument(
        "--config", required=True, type=Path, action="append", help="the config each trial fits; repeated: stacked"
    )
    parser.add_argument("--space", required=True, type=Path, help="the search-space YAML (docs/search.md)")
    parser.add_argument("--storage", required=True, help="study storage: sqlite:///path.db or any RDB URL")
    parser.add_argument("--study_name", default=None, help="study name (default: the configs' file names, +-joined)")
    parser.add_argument("--n_trials", type=int, required=True, help="trials of the study in all, across processes")
    parser.add_argument("--root", type=Path, default=None, help="trial folders (default: runs/search/<study>)")
    parser.add_argument("--metric", default=None, help="metric to optimize (default: the space's, or val/loss)")
    parser.add_argument("--direction", choices=["minimize", "maximize"], default=None, help="(default: the space's)")
    parser.add_argument("--pruner", choices=sorted(PRUNERS), default="median")
    parser.add_argument("--sampler_seed", type=int, default=None, help="seed of the TPE sampler (docs/search.md)")
    parser.add_argument("--heartbeat", type=int, default=60, help="seconds between a running trial's heartbeats")
    parser.add_argument("--max_retry", type=int, default=2, help="retries of a trial whose process died (0: none)")
    parser.add_argument("--lock_timeout", type=float, default=60.0, help="seconds to wait for a locked SQLite file")
    args, fit_args = parser.parse_known_args(argv)
    ranges = {"n_trials": "[1, inf)", "heartbeat": "[1, inf)", "lock_timeout": "[0, inf)", "max_retry": "[0, inf)"}
    for option, interval in [*ranges.items(), ("sampler_seed", "[0, 4294967295]")]:  # nan and inf are refused too
        try:
            if (value := getattr(args, option)) is not None:
                check_number(f"--{option}", value, interval, integer=isinstance(value, int))
        except ValueError as error:
            parser.error(str(error))
    args.study_name = args.study_name or "+".join(config.stem for config in args.config)
    args.root = args.root or Path("runs") / "search" / args.study_name
    existing = next(path for path in (args.root, *args.root.absolute().parents) if path.exists())
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):  # else found by a trial, recorded FAIL
        what = "is a file" if not existing.is_dir() else "is a folder this process cannot write in"
        parser.error(f"--root {args.root}: {existing} {what}; expected a folder for the trials' runs (made if missing)")
    return args, fit_args


def read_space(path: Path) -> dict[str, Any]:
    """The search-space file: ``parameters`` (name -> spec), and optionally ``metric`` and ``direction``; a
    ValueError naming the file and parameter of a bad entry (:func:`check_spec`) or a ``metric`` that is no string."""
    if not path.is_file():
        raise FileNotFoundError(f"search space {path} does not exist")
    try:
        space = get_loader("yaml")(path.read_text()) or {}  # as configs are read: 1e-4 is a number, as in YAML 1.2
    except yaml.YAMLError as error:
        raise ValueError(f"search space {path} is not valid YAML: {one_line(str(error))}") from None
    parameters = space.get("parameters") if isinstance(space, dict) else None
    if isinstance(space, dict) and "parameters" in space and not parameters:  # all commented out, or {}
        raise ValueError(f"search space {path}: parameters names no argument to search (name -> {{type, low, high, "
                         f"...}}), got {parameters!r}")  # fmt: skip
    if not isinstance(parameters, dict) or set(space) - {"parameters", "metric", "direction"}:
        got = (
            f"keys {sorted(map(str, space))}" if isinstance(space, dict) else f"a {type(space).__name__} {space!r:.80}"
        )
        raise ValueError(
            f"search space {path}: expected a mapping with 'parameters' (name -> {{type, low, high, ...}}) and "
            f"optionally 'metric' and 'direction'; got {got}"
        )
    if not isinstance(space.get("metric", ""), str) or space.get("metric") == "":
        raise ValueError(
            f"search space {path}: metric must be a metric's name (e.g. val/loss), got {space['metric']!r}"
        )
    if space.get("direction", "minimize") not in ("minimize", "maximize"):
        raise ValueError(f"search space {path}: direction must be minimize or maximize, got {space['direction']!r}")
    for name, spec in space["parameters"].items():
        check_spec(f"search space {path}: {name}", spec)
    return space


def check_spec(where: str, spec: Any) -> None:
    """Raise a ValueError starting with ``where`` unless ``spec`` is a categorical range or a float or int one, with
    only the keys of its type (``SPEC_KEYS``): finite ``low`` < ``high``, a boolean ``log`` (then ``low`` > 0), a
    positive ``step`` (no ``log``) up to ``high - low``."""
    if not isinstance(spec, dict) or spec.get("type") not in ("float", "int", "categorical"):
        raise ValueError(f"{where}: expected {{type: float|int|categorical, ...}}, got {spec!r}")
    if extra := set(map(str, spec)) - SPEC_KEYS[spec["type"]]:
        keys = sorted(SPEC_KEYS[spec["type"]])
        raise ValueError(f"{where}: {sorted(extra)} do not apply to type {spec['type']}, whose keys are {keys}")
    if spec["type"] == "categorical":
        if not isinstance(spec.get("choices"), list) or not spec["choices"]:
            raise ValueError(f"{where}: a categorical parameter needs a non-empty list of choices, got {spec!r}")
        return
    low, high, step = spec.get("low"), spec.get("high"), spec.get("step")
    kind = int if spec["type"] == "int" else (int, float)
    if not isinstance(low, kind) or not isinstance(high, kind) or isinstance(low, bool) or isinstance(high, bool):
        raise ValueError(f"{where}: a {spec['type']} parameter needs {spec['type']} low and high, got {spec!r}")
    if not math.isfinite(low) or not math.isfinite(high):
        raise ValueError(f"{where}: low and high must be finite numbers, got low {low} and high {high}")
    if low > high:
        raise ValueError(f"{where}: the range is inverted, low {low} > high {high}")
    if low == high:
        raise ValueError(f"{where}: the range is empty, low = high = {low}; fix the value in the config instead")
    if not isinstance(spec.get("log", False), bool):
        raise ValueError(f"{where}: log must be true or false (a YAML boolean, unquoted), got {spec['log']!r}")
    if spec.get("log") and low <= 0:
        raise ValueError(f"{where}: a log range needs low > 0, got low {low}")
    if "step" in spec:
        if not isinstance(step, kind) or isinstance(step, bool) or not math.isfinite(step) or step <= 0:
            raise ValueError(f"{where}: step must be a positive finite {spec['type']}, got {step!r}")
        if spec.get("log"):
            raise ValueError(f"{where}: step and log: true exclude each other (a log range has no step); drop one")
        if step > high - low:
            raise ValueError(
                f"{where}: step {step} is larger than the range high - low = {high - low}, which leaves only low; "
                "give a smaller step or a wider range"
            )


def suggest(trial: optuna.Trial, name: str, spec: dict[str, Any]) -> Any:
    """The trial's value of parameter ``name``."""
    if spec["type"] == "categorical":
        return trial.suggest_categorical(name, spec["choices"])
    suggest_number = trial.suggest_int if spec["type"] == "int" else trial.suggest_float
    step = {"step": spec["step"]} if "step" in spec else {}
    return suggest_number(name, spec["low"], spec["high"], log=bool(spec.get("log", False)), **step)


class ConfigOnly(AutoencoderCLI):
    """The command's parser applied to a config, without building anything: what arguments the config has."""

    def instantiate_classes(self) -> None:
        pass


def resolve_config(configs: list[Path], fit_args: list[str]) -> Any:
    """The configs (stacked in order) with the fit arguments, as ``ae-lightning fit`` resolves them (a Namespace)."""
    with mock.patch("sys.argv", ["ae-lightning"]):
        return ConfigOnly(args=[*config_args(configs), *fit_args], run=False).config


def config_args(configs: list[Path]) -> list[str]:
    """``--config <file>`` for each of ``configs``, in order."""
    return [arg for config in configs for arg in ("--config", str(config))]


def check_fit_args(space: dict[str, Any], fit_args: list[str]) -> None:
    """Raise a ConfigError naming a fit argument or a parameter of ``space`` that the search sets itself
    (``OWN_ARGS``), or a fit argument that it searches."""
    given = [arg.removeprefix("--").split("=", 1)[0] for arg in fit_args if arg.startswith("--")]
    for name in [*given, *space["parameters"]]:
        if name in OWN_ARGS:
            raise ConfigError(
                f"{name} is set by the search for each trial (its own folder <root>/trial-<n>, the search metric "
                "and direction, and a resume only for a retry); leave it out of the search's fit arguments and its "
                "search space"
            )
        if name in given and name in space["parameters"]:
            raise ConfigError(f"--{name} is a parameter of the search space: each trial sets it; leave it out")


def check_names(space: dict[str, Any], space_path: Path, configs: list[Path], parsed: Any) -> None:
    """Raise a ValueError naming each space parameter that the config (``parsed``) lacks, and a ConfigError for a
    checkpoint folder or W&B run set in it, which all trials would share."""
    known, named = [key for key in parsed.keys() if not key.startswith("__")], " + ".join(map(str, configs))
    # an argument of a class that the space draws (optimizer.init_args.momentum) is checked with each choice instead
    missing = [name for name in space["parameters"] if name not in parsed and not drawn_owners(space, name)]
    if missing:
        hints = [f"{name} (did you mean {', '.join(difflib.get_close_matches(name, known, 3, 0.5)) or '?'})"
                 for name in missing]  # fmt: skip
        raise ValueError(
            f"search space {space_path} names arguments that {named} does not have: {'; '.join(hints)}. Names are "
            "the config's keys as `ae-lightning fit` takes them, e.g. model.init_args.beta"
        )
    if parsed.get("checkpoint.dirpath"):
        raise ConfigError(
            f"checkpoint.dirpath {parsed['checkpoint.dirpath']} (of {named} or the fit arguments) would be the "
            "checkpoint folder of every trial; leave it unset: each trial keeps its checkpoints in its own folder"
        )
    root = os.path.normpath(parsed.trainer.get("default_root_dir") or ".")  # where the command puts logs by default
    for logger in loggers_of(parsed):
        init_args = getattr(logger, "init_args", None) or {}
        run = next((key for key in ("id", "version") if init_args.get(key) is not None), None)
        if run and str(logger.class_path).endswith("WandbLogger"):
            raise ConfigError(
                f"trainer.logger {logger.class_path} {run} {init_args[run]!r} (of {named} or the fit arguments) would "
                "be the W&B run of every trial; leave it unset: each trial logs a run of its own"
            )
        save_dir = init_args.get("save_dir")
        in_root = logger_class_of(getattr(logger, "class_path", None), CSVLogger, TensorBoardLogger, WandbLogger)
        if in_root and save_dir is not None and os.path.normpath(str(save_dir)) != root:
            raise ConfigError(
                f"trainer.logger {logger.class_path} save_dir {save_dir!r} (of {named} or the fit arguments; a "
                "WandbLogger's dir too) would hold the runs of every trial, checkpoints included, outside the trial's "
                "folder <root>/trial-<n>, where a retry looks for them to resume; leave it unset: each trial logs "
                "into its own folder under --root"
            )


def drawn_owners(space: dict[str, Any], name: str) -> list[str]:
    """The categorical parameters of ``space`` that hold parameter ``name`` (``model.init_args.optimizer`` holds
    ``model.init_args.optimizer.init_args.lr``): classes drawn per trial, whose arguments differ by choice."""
    return [key for key, spec in space["parameters"].items() if name.startswith(f"{key}.") and "choices" in spec]


def check_values(space: dict[str, Any], space_path: Path, configs: list[Path], fit_args: list[str]) -> None:
    """Raise a ConfigError naming the first choice, ``low`` or ``high`` (a float range's as a float) of the space that
    a trial drawing it would refuse: by the command's parser, the model's or datamodule's signature, or the optimizer;
    an argument of a drawn class (:func:`drawn_owners`) with each choice of that class."""
    parameters = space["parameters"]
    for name, spec in parameters.items():
        if spec["type"] == "categorical":
            values = [(f"choice {value!r}", value) for value in spec["choices"]]
        else:  # as a trial draws them: a float range draws 2.0 for low 2
            kind = float if spec["type"] == "float" else int
            values = [(f"{bound} {kind(spec[bound])!r}", kind(spec[bound])) for bound in ("low", "high")]
        owners = [[(owner, choice) for choice in parameters[owner]["choices"]] for owner in drawn_owners(space, name)]
        for drawn, (which, value) in itertools.product(itertools.product(*owners), values):
            trials = "".join(f" with {key} {choice}" for key, choice in drawn)
            drawn_args = [f"--{key}={_cli_value(choice)}" for key, choice in drawn]
            try:  # parsed as a trial's fit parses it (not seeded: only checked)
                given = [*fit_args, "--seed_everything=false", *drawn_args, f"--{name}={_cli_value(value)}"]
                check_argument(resolve_config(configs, given), name)
            except (argparse.ArgumentError, ValueError) as error:
                message = one_line(str(error)) if isinstance(error, argparse.ArgumentError) else error
                raise ConfigError(
                    f"search space {space_path}: {name}: {which} would be refused by every trial that draws it"
                    f"{trials}: {message}"
                ) from None


def check_argument(parsed: Any, name: str) -> None:
    """Raise the ValueError of the model's or datamodule's signature for its argument ``name`` whose value in
    ``parsed`` it refuses, or torch's for an optimizer's, by building the optimizer on one parameter."""
    owner, _, argument = name.rpartition(".init_args.")
    class_path = parsed.get(f"{owner}.class_path") if owner and "." not in argument else None
    cls = resolve_class_path(class_path) if isinstance(class_path, str) else None
    if cls is not None and owner in ("model", "data"):
        check_init_arguments(cls, {argument: parsed[name]})
    elif isinstance(cls, type) and issubclass(cls, torch.optim.Optimizer):
        init_args = parsed.get(f"{owner}.init_args")
        cls([torch.zeros(1, requires_grad=True)], **(init_args.as_dict() if init_args else {}))


def probe_trainer(parsed: Any) -> Trainer | None:
    """A Trainer of the config's accelerator, devices, num_nodes and strategy alone, built quietly, to tell how many
    processes a trial would train in; None if one of them, or plugins, is given as a class (the trial checks then)."""
    settings = {key: parsed.trainer.get(key) for key in ("accelerator", "devices", "num_nodes", "strategy")}
    if parsed.trainer.get("plugins") or not all(isinstance(value, (str, int, list)) for value in settings.values()):
        return None
    logger = logging.getLogger("lightning.pytorch")
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return Trainer(**settings, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                           enable_model_summary=False)  # fmt: skip
    finally:
        logger.setLevel(level)


def check_one_process(trainer: Trainer) -> None:
    """Raise a ConfigError naming ``--trainer.devices``, ``--trainer.num_nodes`` and ``--trainer.strategy`` if
    ``trainer`` would train in several processes (a trial runs in the search's process)."""
    if trainer.world_size > 1:
        raise ConfigError(
            f"each trial would train in {trainer.world_size} processes: {trainer.num_devices} devices "
            f"(--trainer.devices; auto takes every GPU) on {trainer.num_nodes} node(s) (--trainer.num_nodes) with "
            f"{type(trainer.strategy).__name__} (--trainer.strategy). The search runs a trial in its own process and "
            "cannot start its others (Lightning would re-run the search's command line for them): give each trial one "
            "process (--trainer.devices 1 --trainer.num_nodes 1), and use several GPUs with one search worker per GPU "
            "on the same --storage (CUDA_VISIBLE_DEVICES=<i> ae-lightning-search ...) or the tasks of "
            "scripts/slurm/search_array.sbatch"
        )


def fit_settings(parsed: Any, space: dict[str, Any]) -> dict[str, Any]:
    """Every resolved fit setting (dotted name -> value) but the searched ones, ``OWN_ARGS`` and the config's path."""
    skip = (*space["parameters"], *OWN_ARGS, "config")
    flat: dict[str, Any] = {}

    def walk(value: Any, prefix: str) -> None:
        if isinstance(value, dict) and value:
            for key, item in value.items():
                walk(item, f"{prefix}.{key}" if prefix else key)
        elif not any(prefix == name or prefix.startswith(name + ".") for name in skip):
            flat[prefix] = value

    walk(json.loads(json.dumps(parsed.as_dict(), default=str)), "")
    return flat


def open_study(
    args: argparse.Namespace, space: dict[str, Any], direction: str, metric: str, settings: dict[str, Any]
) -> optuna.Study:
    """Create or load the study, with heartbeats and retries of dead trials; a ValueError naming the storage and what
    differs if it is locked or holds this study for another config path, space, metric or fit ``settings``, unless
    every trial failed before validating (then it takes this run's). The sampler's seed: ``docs/search.md``."""
    engine = {"connect_args": {"timeout": args.lock_timeout}} if args.storage.startswith("sqlite") else {}
    if (path := sqlite_file(args.storage)) is not None:
        folder = path.parent
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as error:  # a file where a folder of the path should be
            raise StorageError(
                f"study storage {args.storage} cannot be opened: its folder {folder} cannot be made ({error.strerror}:"
                f" {error.filename}); expected sqlite:///path.db in a folder that exists or can be made"
            ) from None
    configs = [str(config.resolve()) for config in args.config]
    # one config is stored as its path alone, as studies were before configs could be stacked
    identity = {"config": configs[0] if len(configs) == 1 else configs, "space": _digest(space["parameters"]),
                "metric": metric}  # fmt: skip
    with storage_errors(args):
        try:
            check_optuna_tables(args, engine)
            storage = _rdb_storage(args, engine)
        except (ArgumentError, ImportError) as error:  # not a URL, an unknown dialect, or its driver is missing
            raise StorageError(
                f"--storage {args.storage} is not a database URL that can be opened here ({error}); expected "
                "sqlite:///path.db (e.g. sqlite:///runs/search/study.db) or a database server's URL, such as "
                "postgresql://user@host/db, with its driver installed"
            ) from None
        except DatabaseError as error:  # also a file that is not a database
            if "locked" in str(error):
                raise
            raise StorageError(f"study storage {args.storage} cannot be opened: {error.orig}") from None
        except RuntimeError as error:  # Optuna's: a storage of another Optuna version, and how to upgrade it
            raise StorageError(f"study storage {args.storage} cannot be opened: {error}") from None
        study = optuna.create_study(
            storage=storage, study_name=args.study_name, direction=direction, load_if_exists=True
        )
        stored = study.user_attrs
        # A new study, or one that another worker is recording key by key: record what is missing, settings first.
        if all(stored.get(key, value) == value for key, value in identity.items()):
            if "settings" not in stored and stored.keys() >= identity.keys():
                print(
                    f"study {args.study_name!r} was stored without its fit settings; recording this run's", flush=True
                )
            for key, value in {"settings": settings, **identity}.items():
                if key not in stored:
                    study.set_user_attr(key, value)
            stored = {"settings": settings, **identity, **stored}
        differs = {key: f"{key} {stored.get(key)!r} (this run: {identity[key]!r})" for key in identity
                   if stored.get(key) != identity[key]}  # fmt: skip
        old, unset = stored.get("settings", settings), "(unset)"
        changed = [f"{key} {old.get(key, unset)!r} (this run: {settings.get(key, unset)!r})"
                   for key in sorted({*old, *settings}) if old.get(key, unset) != settings.get(key, unset)]  # fmt: skip
        if changed:
            more = f" and {len(changed) - 8} more" if changed[8:] else ""
            differs["settings"] = f"fit settings {'; '.join(changed[:8])}{more}"
        fail_stale_trials(study)  # a dead process's trials become FAIL, their retries WAITING
        trials = study.get_trials(deepcopy=False)
        # A study whose every trial failed before validating (none diverged) takes the corrected search; the retries
        # queued for them (a first trial stopped by Ctrl-C or scancel) are dropped, not resumed with other settings.
        retries = [t for t in trials if t.state == TrialState.WAITING and "folder" in t.user_attrs]
        unmeasured = all(t.state == TrialState.FAIL or t in retries for t in trials) and not any(
            t.intermediate_values or "diverged" in t.user_attrs for t in trials
        )
        if differs and "config" not in differs and trials and unmeasured:
            check_distributions(args, space, trials)
            failed = len(trials) - len(retries)
            print(f"study {args.study_name!r}: none of its {failed} trials validated its metric (all failed), so it "
                  f"takes this run's search: {'; '.join(differs.values())}", flush=True)  # fmt: skip
            for key, value in {**identity, "settings": settings}.items():
                study.set_user_attr(key, value)
            with warnings.catch_warnings():  # that a trial asked for outside optimize() has no heartbeat
                warnings.filterwarnings("ignore", "Heartbeat of storage", UserWarning)
                for _ in retries:
                    study.tell(study.ask(), state=TrialState.FAIL)  # ask takes a waiting trial first
            differs = {}
        if differs:
            raise ValueError(
                f"study {args.study_name!r} in {args.storage} belongs to another search: "
                f"{'; '.join(differs.values())}. Resume it with its own config, search space, metric and fit "
                "arguments, or give another --study_name or --storage"
            )
        if study.direction.name.lower() != direction:
            raise ValueError(
                f"study {args.study_name!r} in {args.storage} is set to {study.direction.name.lower()}, not {direction}"
            )
        seed = args.sampler_seed
        task = os.environ.get("SLURM_ARRAY_TASK_ID")
        if seed is not None and (trials or task is not None):
            seed = int(hashlib.sha256(json.dumps([seed, len(trials), task]).encode()).hexdigest()[:8], 16)
        study.sampler, study.pruner = optuna.samplers.TPESampler(seed=seed), PRUNERS[args.pruner]()
        return study


def check_optuna_tables(args: argparse.Namespace, engine: dict[str, Any]) -> None:
    """Raise a StorageError naming a SQLite file of ``--storage`` that holds tables other than Optuna's (another
    program's database), before Optuna adds its own (docs/search.md)."""
    if (path := sqlite_file(args.storage)) is None:
        return
    found, optuna_tables = _tables(sqlalchemy.create_engine(args.storage, **engine)), _optuna_tables()
    if found.get("version_info") == optuna_tables["version_info"]:
        return
    foreign = [
        f"{name} ({', '.join(columns)})" for name, columns in found.items() if optuna_tables.get(name) != columns
    ]
    if foreign:
        raise StorageError(
            f"study storage {args.storage} is not an Optuna study storage: {path} "
            f"holds tables that are not Optuna's: {'; '.join(foreign)}. It was left unchanged; give --storage a new "
            "file or one that a search made (sqlite:///path.db)"
        )


def sqlite_file(storage: str) -> Path | None:
    """The file of a SQLite ``storage`` URL (``sqlite:///path.db``, also with its driver: ``sqlite+pysqlite:///``);
    None for another database, an in-memory one, or no URL (refused when the storage is opened)."""
    try:
        url = sqlalchemy.make_url(storage)
    except (ArgumentError, ValueError):
        return None
    return Path(url.database) if url.get_backend_name() == "sqlite" and url.database else None


@functools.cache
def _optuna_tables() -> dict[str, list[str]]:
    """The tables that this Optuna version makes in a new storage, with their columns."""
    return _tables(RDBStorage("sqlite://").engine)


def _tables(engine: sqlalchemy.Engine) -> dict[str, list[str]]:
    """The tables of ``engine``'s database with their columns; the engine disposed of."""
    try:
        inspector = sqlalchemy.inspect(engine)
        return {
            name: [column["name"] for column in inspector.get_columns(name)] for name in inspector.get_table_names()
        }
    finally:
        engine.dispose()


def _rdb_storage(args: argparse.Namespace, engine: dict[str, Any], tries: int = 10) -> RDBStorage:
    """The study storage, with heartbeats and retries of dead trials; a worker that loses the race to create its
    tables tries again."""
    for attempt in itertools.count():
        try:
            return RDBStorage(
                args.storage,
                engine_kwargs=engine,
                heartbeat_interval=args.heartbeat,
                grace_period=2 * args.heartbeat,
                heartbeat_stale_trial_callback=_retry(args),
            )
        except (IntegrityError, OperationalError, ProgrammingError) as error:
            if attempt == tries - 1 or not (isinstance(error, IntegrityError) or "already exists" in str(error)):
                raise
            time.sleep(0.2 * (attempt + 1))


def check_distributions(args: argparse.Namespace, space: dict[str, Any], trials: list[FrozenTrial]) -> None:
    """Raise a ValueError naming a parameter of ``space`` that the ``trials`` drew in a way Optuna cannot change."""
    for name, spec in space["parameters"].items():
        if spec["type"] == "categorical":
            new: BaseDistribution = CategoricalDistribution(spec["choices"])
        else:
            kind = IntDistribution if spec["type"] == "int" else FloatDistribution
            new = kind(spec["low"], spec["high"], log=bool(spec.get("log", False)))
        for old in (trial.distributions[name] for trial in trials if name in trial.distributions):
            try:
                check_distribution_compatibility(old, new)
            except ValueError as error:
                raise ValueError(
                    f"study {args.study_name!r} in {args.storage}: its failed trials drew {name} from {old}, which "
                    f"Optuna cannot change to {new} within a study ({error}); keep {name} as it was, or give another "
                    "--study_name or --storage"
                ) from None


class StorageError(ValueError):
    """The study storage cannot be used, named with the way out."""


@contextlib.contextmanager
def storage_errors(args: argparse.Namespace) -> Iterator[None]:
    """Turn an error caused by the storage's database (an ``OperationalError`` in its chain: a locked, read-only or
    broken file) into a :class:`StorageError` naming the storage, and ``--lock_timeout`` where it is locked."""
    try:
        yield
    except StorageError:
        raise
    except Exception as error:
        cause: BaseException | None = error
        while cause is not None and not isinstance(cause, OperationalError):
            cause = cause.__cause__ or cause.__context__
        if cause is None:
            raise
        if "locked" not in str(cause):  # e.g. Optuna's StorageInternalError for a read-only file
            raise StorageError(
                f"study storage {args.storage} cannot be used: {cause.orig} (the search records every trial in it: "
                "it must be a database this process can read and write, a SQLite file in a writable folder)"
            ) from error
        raise StorageError(
            f"study storage {args.storage} is locked: another process has held its write lock for more than "
            f"--lock_timeout {args.lock_timeout} s. Wait for it, raise --lock_timeout, or use a server database "
            "(postgresql://...) for many workers; a trial that the lock stopped is retried by a later run"
        ) from error


def _digest(parameters: dict[str, Any]) -> str:
    return hashlib.sha1(json.dumps(parameters, sort_keys=True).encode()).hexdigest()[:12]


class TrialReporter(Callback):
    """A trial's pruning (docs/search.md): a ConfigError after a validation that did not log ``metric``; else the value
    reported at the trial's count of validations (kept in checkpoints), from the second on pruned if the pruner says."""

    def __init__(self, trial: optuna.Trial, metric: str) -> None:
        self.trial, self.metric, self.validations = trial, metric, 0

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        score = trainer.callback_metrics.get(self.metric)
        if score is None:
            logged = ", ".join(sorted(trainer.callback_metrics)) or "nothing"
            raise ConfigError(
                f"the search metric {self.metric} (--metric, or the search space's metric:) is not among the metrics "
                f"the trials' validation logs: {logged}"
            )
        if trainer.sanity_checking:
            return
        self.validations += 1
        self.trial.report(float(score), step=self.validations)
        if self.validations > 1 and self.trial.should_prune():
            raise optuna.TrialPruned(f"trial {self.trial.number} pruned at its validation {self.validations}")

    def state_dict(self) -> dict[str, Any]:
        return {"validations": self.validations}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.validations = state_dict["validations"]


class TrialCLI(AutoencoderCLI):
    """The ``fit`` command with ``callback`` first among its one-process trainer's; a ``retry`` (a dead trial's number)
    keeps a CSVLogger's ``metrics.csv``, which the logger would delete, as ``metrics-before-trial-<retry>.csv``."""

    def __init__(self, callback: Any, retry: int | None = None, **kwargs: Any) -> None:
        self.extra_callback, self.retry = callback, retry
        super().__init__(**kwargs)

    def instantiate_trainer(self, **kwargs: Any) -> Any:
        loggers = loggers_of(self.config_init.fit) if self.retry is not None else []
        for logger in [item for item in loggers if isinstance(item, CSVLogger)]:
            path = Path(logger.log_dir) / ExperimentWriter.NAME_METRICS_FILE
            if path.is_file():  # the dead run's: the resumed fit refuses to start over it
                path.rename(path.with_name(f"{path.stem}-before-trial-{self.retry}{path.suffix}"))
        trainer = super().instantiate_trainer(**kwargs)
        check_one_process(trainer)
        # first: a checkpoint written as a validation ends must hold the count of validations that includes it
        trainer.callbacks.insert(0, self.extra_callback)
        return trainer


def objective(
    trial: optuna.Trial, args: argparse.Namespace, space: dict[str, Any], metric: str, fit_args: list[str]
) -> float:
    """Fit the config with the trial's values in ``<root>/trial-<number>``; the best ``metric`` of its validations.
    A ConfigError if a new trial's folder holds something; only a retry resumes there. A diverging loss
    (:class:`NonFiniteLossError`) is raised with the trial's user attribute ``diverged`` set to its message."""
    values = {name: suggest(trial, name, spec) for name, spec in space["parameters"].items()}
    # A retry inherits the dead trial's user attributes: it continues in its folder, from its last checkpoint.
    retry = "folder" in trial.user_attrs
    folder = Path(trial.user_attrs.get("folder", args.root / f"trial-{trial.number}"))
    if not retry and folder.exists() and any(folder.iterdir()):
        raise ConfigError(
            f"{folder}, the folder of new trial {trial.number}, already holds a run (of another study, or of one "
            f"whose storage is gone, with --root {args.root}); remove or move it, or give another --root"
        )
    mode = "min" if trial.study.direction == optuna.study.StudyDirection.MINIMIZE else "max"
    cli_args = [
        "fit", *config_args(args.config), *fit_args,
        *(f"--{name}={_cli_value(value)}" for name, value in sorted(values.items())),  # a drawn class before its args
        "--trainer.default_root_dir", str(folder),
        "--checkpoint.monitor", metric, "--checkpoint.mode", mode,
        *(["--ckpt_path", "last"] if retry else []),
    ]  # fmt: skip
    trial.set_user_attr("folder", str(folder))
    overwrite = {"save_config_kwargs": {"overwrite": True}} if retry else {}
    wandb_run = _wandb_run()
    try:
        with mock.patch("sys.argv", ["ae-lightning"]):  # the CLI must read only these arguments
            cli = TrialCLI(TrialReporter(trial, metric), trial.number if retry else None, args=cli_args, **overwrite)
    except NonFiniteLossError as error:
        trial.set_user_attr("diverged", str(error))
        raise
    except SystemExit:  # SIGTERM or SLURM's requeue signal, after the trial's checkpoint: the next run resumes it
        trial.study.tell(trial, state=TrialState.FAIL)
        _retry(args)(trial.study, _frozen(trial))
        raise
    finally:  # W&B keeps one run per process, which the next trial's WandbLogger would log into
        if _wandb_run() not in (None, wandb_run):
            sys.modules["wandb"].finish(exit_code=int(sys.exc_info()[0] not in (None, optuna.TrialPruned)))
    trial.set_user_attr("config_file", str(run_directory(cli.trainer) / "config.yaml"))  # saved by SaveConfigToRun
    # A retry's checkpoint callback knows only the validations after its resume; it inherits the earlier reports.
    best = getattr(cli.trainer.checkpoint_callback, "best_model_score", None)
    reported = _frozen(trial).intermediate_values
    values = [v for v in [*reported.values(), *([float(best)] if best is not None else [])] if math.isfinite(v)]
    if not values:
        logged = sorted(name for name in cli.trainer.callback_metrics if name.startswith("val/"))
        if not logged:
            raise ValueError(
                f"trial {trial.number} ran no validation, so it has no {metric}: give its fit a validation (more "
                "--trainer.max_steps or --trainer.max_epochs, or a smaller --trainer.val_check_interval)"
            )
        if metric in logged:  # validated, never to a finite value: the trial diverged, as a non-finite loss does
            message = f"trial {trial.number}'s {metric} was not finite at any validation"
            trial.set_user_attr("diverged", message)
            raise NonFiniteLossError(message)
        raise ValueError(f"trial {trial.number} logged no finite {metric}; its validation logged {', '.join(logged)}")
    return min(values) if mode == "min" else max(values)


def _frozen(trial: optuna.Trial) -> FrozenTrial:
    """The trial as its study stores it."""
    return next(t for t in trial.study.get_trials(deepcopy=False) if t.number == trial.number)


def _retry(args: argparse.Namespace) -> RetryHeartbeatStaleTrialCallback:
    """Optuna's retry of a trial that stopped before its end: the same values, user attributes and reports."""
    return RetryHeartbeatStaleTrialCallback(args.max_retry, inherit_intermediate_values=True)


def _wandb_run() -> Any:
    """W&B's run of this process, if any (None when W&B is not imported)."""
    return getattr(sys.modules.get("wandb"), "run", None)


def _cli_value(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def write_best_config(study: optuna.Study, root: Path) -> Path | None:
    """``<root>/best.yaml``: the best trial's saved config, set to train afresh in ``<root>/best``."""
    try:
        best = study.best_trial
    except ValueError:  # no trial completed yet
        return None
    values = ", ".join(f"{name}={value}" for name, value in best.params.items())
    try:
        config = yaml.safe_load(Path(best.user_attrs["config_file"]).read_text())
    except FileNotFoundError as error:  # its run folder was removed (a node-local --root, a clean-up)
        arguments = " ".join(f"--{name}={value}" for name, value in best.params.items())
        raise FileNotFoundError(
            f"the best trial of study {study.study_name!r} (trial {best.number}, value {best.value:.6g}) saved its "
            f"config in {best.user_attrs['config_file']}, which is gone: best.yaml is not written; its values: "
            f"{arguments}"
        ) from error
    config["ckpt_path"] = None
    # The trial's folder, wherever it appears (root dir, logger, checkpoint folder), becomes the new run's.
    config = _replace_prefix(config, best.user_attrs["folder"], str(root / "best"))
    path = root / "best.yaml"
    header = (
        f"# The best trial of study {study.study_name!r}: trial {best.number}, value {best.value:.6g}\n"
        f"# ({values}). Trained in {best.user_attrs['folder']}; train it afresh with\n"
        f"#   ae-lightning fit --config {path}\n"
    )
    root.mkdir(parents=True, exist_ok=True)
    write_atomically(path, (header + yaml.safe_dump(config, sort_keys=False)).encode())  # workers may write it at once
    return path


def _replace_prefix(value: Any, old: str, new: str) -> Any:
    if isinstance(value, dict):
        return {key: _replace_prefix(item, old, new) for key, item in value.items()}
    if isinstance(value, list):
        return [_replace_prefix(item, old, new) for item in value]
    if isinstance(value, str) and (value == old or value.startswith(old + "/")):
        return new + value[len(old) :]
    return value


def finished(study: optuna.Study) -> int:
    """The study's trials that count towards ``--n_trials``: complete, pruned, or failed by a diverging loss."""
    trials = study.get_trials(deepcopy=False, states=(*COUNTED, TrialState.FAIL))
    return sum(t.state in COUNTED or "diverged" in t.user_attrs for t in trials)


def run_trials(study: optuna.Study, args: argparse.Namespace, objective: Any) -> None:
    """Run trials of ``objective`` while the study's counted trials (:func:`finished`) and those running elsewhere fall
    short of ``--n_trials``, retrying dead ones first; print what is left to others, if anything."""
    while (done := finished(study)) < args.n_trials:
        fail_stale_trials(study)  # a dead process's trials become FAIL, their retries WAITING (taken first)
        running = [t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))]
        if done + len(running) >= args.n_trials:
            print(f"study {args.study_name!r}: {done} of {args.n_trials} trials done, and trials {running} running in "
                  "other processes; none left to start here. If a process died, a rerun retries its trial once its "
                  f"heartbeat is {2 * args.heartbeat} s old", flush=True)  # fmt: skip
            return
        study.optimize(objective, n_trials=1, catch=(NonFiniteLossError,))


def run(argv: list[str] | None = None) -> optuna.Study:
    """The search the command line's (or ``argv``'s) arguments ask for, its study once done. A trial whose loss
    diverges is recorded as failed and the search goes on; other errors (a bad space, setting, metric or storage) stop
    it, those of the space and settings before the study is opened."""
    args, fit_args = parse_args(sys.argv[1:] if argv is None else argv)
    # Trials record their folders in the study: a rerun or worker in another folder must find them, and add its own.
    args.root = args.root.absolute()
    space = read_space(args.space)
    metric = args.metric or space.get("metric", "val/loss")
    if metric.startswith(("train/", "test/")):  # a fit's training metrics stand at their last step at a validation
        raise ConfigError(f"--metric {metric} is not a validation metric: trials are compared by what their validation "
                          "logs (--metric or the search space's metric:), e.g. val/loss")  # fmt: skip
    direction = args.direction or space.get("direction", "minimize")
    check_fit_args(space, fit_args)
    parsed = resolve_config(args.config, fit_args)
    check_names(space, args.space, args.config, parsed)
    check_values(space, args.space, args.config, fit_args)
    if (trainer := probe_trainer(parsed)) is not None:
        check_one_process(trainer)
    with warnings.catch_warnings(), storage_errors(args):  # a storage locked during a trial
        # Optuna calls the heartbeats and retries of dead trials that the search uses experimental: not the user's
        warnings.filterwarnings("ignore", _EXPERIMENTAL, ExperimentalWarning, r"ae_lightning\.search|optuna\.")
        study = open_study(args, space, direction, metric, fit_settings(parsed, space))
        done = finished(study)
        if done < args.n_trials:
            print(f"study {args.study_name!r}: {done} of {args.n_trials} trials done; running the rest", flush=True)
            run_trials(study, args, lambda trial: objective(trial, args, space, metric, fit_args))
        path = write_best_config(study, args.root)
        states = [trial.state for trial in study.get_trials(deepcopy=False)]
        counts = ", ".join(f"{states.count(state)} {state.name.lower()}" for state in TrialState if state in states)
        print(f"study {args.study_name!r}: {counts}", flush=True)
        if path is not None:
            print(f"best trial {study.best_trial.number}: {metric} {study.best_value:.6g}, {study.best_params}; {path}")
    return study


def main() -> None:
    """``ae-lightning-search``: exit status 0 once the study is done; an error prints its message alone."""
    run_command("ae-lightning-search", run)


if __name__ == "__main__":
    main()
