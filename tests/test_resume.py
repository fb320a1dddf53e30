"""Exact resume: a fit killed with SIGKILL, even while writing a checkpoint, and resumed with ``--ckpt_path last``
ends with the weights and optimizer states of an uninterrupted run, bit for bit."""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import time
import warnings
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from unittest import mock

import lightning as L
import pytest
import torch
from jsonargparse import Namespace
from lightning.pytorch.callbacks import ModelCheckpoint
from tiny_runs import (
    ROOT,
    TrainLossPlateauAutoencoder,
    command,
    last_checkpoint,
    run_cli,
    run_or_fail_if_hung,
    subprocess_env,
    tiny_args,
)
from torch.optim import lr_scheduler

from ae_lightning import AdversarialAutoencoder, Autoencoder
from ae_lightning.cli import ConfigError, _furthest_checkpoint, _searched
from ae_lightning.lightning_internals import stored_loader_states
from ae_lightning.training.fault_tolerance import AtomicCheckpointIO
from ae_lightning.training.resume import OptimizerSettingsOnResume, UnfinishedEpochInCheckpoint, optimizer_settings
from datamodules import MNISTDataModule

EVERY_4 = ["--checkpoint.every_n_train_steps", "4"]
STEPS = 28  # 2 epochs of 14 batches

# Each case: the variant, the fit's extra arguments, the callback that kills the run, the step of the last checkpoint
# it leaves, and the loader position stored in that. With the default checkpointing, killed at the start of step 15,
# it leaves the end-of-epoch checkpoint of step 14. Every 4 steps, it leaves the mid-epoch one of step 20, six batches
# into epoch 1.
END_OF_EPOCH_0 = {"epoch": 0, "batches_done": 14}
MID_EPOCH_1 = {"epoch": 1, "batches_done": 6}
CASES = [
    ("ae", [], ["tiny_runs.KillAtStep", "--trainer.callbacks.step", "15"], 14, END_OF_EPOCH_0),
    # sampling noise and dynamic binarization; killed halfway through writing the last.ckpt of step 24
    ("vae", EVERY_4, ["tiny_runs.KillWhileWriting", "--trainer.callbacks.step", "24"], 20, MID_EPOCH_1),
    # manual optimization, several optimizers
    ("aae", EVERY_4, ["tiny_runs.KillAtStep", "--trainer.callbacks.step", "22"], 20, MID_EPOCH_1),
]


@pytest.mark.parametrize("variant, extra, killer, checkpoint_step, position", CASES, ids=[c[0] for c in CASES])
def test_sigkilled_run_resumes_to_the_uninterrupted_weights(
    variant: str,
    extra: list[str],
    killer: list[str],
    checkpoint_step: int,
    position: dict,
    data_dir: Path,
    tmp_path: Path,
) -> None:
    killed_root, reference_root = tmp_path / "killed", tmp_path / "reference"
    kill = ["--trainer.callbacks+=" + killer[0], *killer[1:]]
    killed = subprocess.Popen(
        command("fit", *tiny_args(variant, data_dir, killed_root, *extra, *kill)),
        env=subprocess_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    reference = run_cli("fit", *tiny_args(variant, data_dir, reference_root, *extra))  # meanwhile, here
    assert isinstance(reference.trainer.strategy.checkpoint_io, AtomicCheckpointIO)
    output, _ = killed.communicate(timeout=240)
    assert killed.returncode == -signal.SIGKILL, output

    interrupted = last_checkpoint(killed_root)  # whole, even where the run died writing the next one
    assert interrupted["global_step"] == checkpoint_step
    (loader,) = stored_loader_states(interrupted)
    assert {key: loader[key] for key in (*position, "seed", "batch_size")} == {**position, "seed": 42, "batch_size": 16}
    assert len(interrupted["random_states"]) == 1
    # the dead writer's half file, under a hidden name that no checkpoint search matches
    assert len(list(killed_root.rglob(".last.ckpt.*.tmp"))) == (killer[0] == "tiny_runs.KillWhileWriting")

    run_cli("fit", *tiny_args(variant, data_dir, killed_root, *extra, "--ckpt_path", "last"))
    resumed, expected = last_checkpoint(killed_root), last_checkpoint(reference_root)
    assert resumed["global_step"] == expected["global_step"] == STEPS
    for name, value in expected["state_dict"].items():
        assert torch.equal(resumed["state_dict"][name], value), f"{name} differs after the resume"
    assert len(resumed["optimizer_states"]) == len(expected["optimizer_states"]) >= (2 if variant == "aae" else 1)
    for got, want in zip(resumed["optimizer_states"], expected["optimizer_states"]):
        for index, state in want["state"].items():
            for key, value in state.items():
                assert torch.equal(got["state"][index][key], value), f"optimizer state {index}/{key} differs"


def test_ckpt_path_last_finds_the_furthest_checkpoint_of_any_version_or_slurm_requeue(tmp_path: Path) -> None:
    config = Namespace(trainer=Namespace(default_root_dir=str(tmp_path)), checkpoint=Namespace(dirpath=None))
    assert _furthest_checkpoint(config) is None  # nothing yet: the run starts from scratch
    older = tmp_path / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt"
    newer = tmp_path / "lightning_logs" / "version_1" / "checkpoints" / "last.ckpt"
    hpc = tmp_path / "hpc_ckpt_1.ckpt"
    for age, (path, step) in enumerate([(hpc, 30), (newer, 30), (older, 40)]):
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"state_dict": {}, "global_step": step, "pytorch-lightning_version": "2.6"}, path)
        os.utime(path, (1_000_000 - 10 * age, 1_000_000 - 10 * age))
    assert _furthest_checkpoint(config) == str(older)  # the furthest state, though written first
    older.write_bytes(b"not a checkpoint")  # unreadable: skipped with a warning
    with pytest.warns(UserWarning, match=f"skipping {older}"):
        assert _furthest_checkpoint(config) == str(hpc)  # the same step: the newest
    hpc.unlink()
    config.checkpoint.dirpath = str(newer.parent)
    assert _furthest_checkpoint(config) == str(newer)


@pytest.mark.parametrize("subcommand", ["validate", "test", "predict"])
def test_ckpt_path_last_without_a_checkpoint_is_refused_outside_fit(
    subcommand: str, data_dir: Path, tmp_path: Path
) -> None:
    # fit starts from scratch; the others would evaluate an untrained model and exit 0.
    root = tmp_path / "run"
    with pytest.raises(FileNotFoundError, match=f"--ckpt_path last: no checkpoint under {root} to {subcommand}"):
        run_cli(subcommand, *tiny_args("ae", data_dir, root, "--ckpt_path", "last"))
    assert not root.exists(), "a refused run wrote files"


# Resuming from any step checkpoint: validation (which draws random numbers in the VAE and AAE) at steps aligned
# with the checkpoints (every 4) or not (every 6) must not shift the training noise.
EXACT_CASES = [
    ("ae", "6", []),
    ("vae", "6", []),
    ("vae", "4", []),
    ("aae", "6", []),
    ("autodecoder", "6", []),
    ("vae", "6", ["--config", str(ROOT / "configs" / "fast.yaml"), "--fast.steps", "2"]),
]


@pytest.mark.parametrize(
    "variant, every, extra", EXACT_CASES, ids=[f"{v}-val{e}{'-fast' if x else ''}" for v, e, x in EXACT_CASES]
)
def test_every_step_checkpoint_resumes_to_the_uninterrupted_weights(
    variant: str, every: str, extra: list[str], data_dir: Path, tmp_path: Path
) -> None:
    settings = [*EVERY_4, "--checkpoint.monitor", "null", "--checkpoint.save_top_k", "-1", "--checkpoint.filename",
                "{step}", "--trainer.val_check_interval", every, "--trainer.limit_val_batches", "2",
                "--trainer.log_every_n_steps", "4", *extra]  # fmt: skip
    run_cli("fit", *tiny_args(variant, data_dir, tmp_path / "reference", *settings))
    saved = {int(path.stem.split("=")[1]): path for path in (tmp_path / "reference").rglob("step=*.ckpt")}
    expected = last_checkpoint(tmp_path / "reference")
    for step in (4, 8, 20):  # the 1st, the 2nd and a later checkpoint, mid-epoch
        root = tmp_path / f"from-{step}"
        run_cli("fit", *tiny_args(variant, data_dir, root, *settings, "--ckpt_path", str(saved[step])))
        resumed = last_checkpoint(root)
        assert resumed["global_step"] == expected["global_step"] == STEPS
        differing = [name for name, value in expected["state_dict"].items()
                     if not torch.equal(resumed["state_dict"][name], value)]  # fmt: skip
        assert not differing, f"resumed from step {step}: {len(differing)} of {len(expected['state_dict'])} differ"


def test_a_checkpoint_write_replaces_the_file_whole_and_clears_dead_writers_files(tmp_path: Path) -> None:
    path = tmp_path / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint({"step": 1}, path)
    dead = tmp_path / ".last.ckpt.12345.tmp"  # as a process killed while writing leaves it
    dead.write_bytes(b"PK\x03\x04")
    AtomicCheckpointIO().save_checkpoint({"step": 2}, path)
    assert torch.load(path, weights_only=True) == {"step": 2}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]


def test_sigterm_writes_the_final_step_and_exits_non_zero(data_dir: Path, tmp_path: Path) -> None:
    slow = [
        "--trainer.max_epochs",
        "50",
        "--trainer.callbacks+=tiny_runs.SlowDown",
        "--trainer.callbacks.seconds",
        "0.05",
    ]
    process = subprocess.Popen(
        command("fit", *tiny_args("ae", data_dir, tmp_path, *slow)),
        env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 200
    while not list(tmp_path.rglob("last.ckpt")) and time.monotonic() < deadline:  # epoch 0 is done
        time.sleep(0.5)
    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=120)
    assert process.returncode == 143, output[-3000:]
    last = last_checkpoint(tmp_path)
    assert (
        last["global_step"] > 14
        and f"wrote {next(tmp_path.rglob('last.ckpt'))} at global step {last['global_step']}" in output
    )


def test_the_final_step_is_saved_when_max_steps_ends_inside_an_epoch(data_dir: Path, tmp_path: Path) -> None:
    limits = ["--trainer.max_steps", "25", "--trainer.max_epochs", "-1", "--trainer.limit_train_batches", "10"]
    run_cli("fit", *tiny_args("ae", data_dir, tmp_path, *limits))
    assert last_checkpoint(tmp_path)["global_step"] == 25


def test_a_final_step_that_ends_an_epoch_leaves_one_last_checkpoint(data_dir: Path, tmp_path: Path) -> None:
    limits = ["--trainer.max_steps", "10", "--trainer.max_epochs", "-1", "--trainer.limit_train_batches", "10"]
    run_cli("fit", *tiny_args("ae", data_dir, tmp_path, *limits))
    assert sorted(path.name for path in tmp_path.rglob("last*.ckpt")) == ["last.ckpt"]
    assert last_checkpoint(tmp_path)["global_step"] == 10


def test_temporary_files_of_dead_writers_are_removed_when_the_run_folder_is_used_again(
    data_dir: Path, tmp_path: Path
) -> None:
    run_cli("fit", *tiny_args("ae", data_dir, tmp_path, "--trainer.max_steps", "2"))
    folder = next(tmp_path.rglob("last.ckpt")).parent
    dead, alive = folder / ".last.ckpt.999999999.tmp", folder / f".best.ckpt.{os.getpid()}.tmp"
    dead.write_bytes(b"PK")
    alive.write_bytes(b"PK")  # a writer that is still running keeps its file
    run_cli("fit", *tiny_args("ae", data_dir, tmp_path, "--trainer.max_steps", "4", "--ckpt_path", "last",
                              "--checkpoint.dirpath", str(folder)))  # fmt: skip
    assert not dead.exists() and alive.exists()
    # without a dirpath the resumed run writes to version_1: the dead writer's file in version_0 goes all the same
    dead = folder / f".last.ckpt.999999999@{socket.gethostname()}.tmp"
    dead.write_bytes(b"PK")
    run_cli("fit", *tiny_args("ae", data_dir, tmp_path, "--trainer.max_steps", "6", "--ckpt_path", "last"))
    assert not dead.exists() and alive.exists() and (folder.parents[1] / "version_1").is_dir()


def test_a_full_disk_names_the_checkpoint_and_keeps_the_previous_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint({"step": 1}, path)

    def disk_full(checkpoint: dict, file) -> None:  # what torch raises when the disk fills during a write
        file.write(b"PK" * 100)
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64 vs 0")

    monkeypatch.setattr(torch, "save", disk_full)
    monkeypatch.setattr(shutil, "disk_usage", lambda folder: shutil._ntuple_diskusage(10**9, 10**9, 0))
    with pytest.raises(OSError, match=rf"no space left on device while writing the checkpoint {path} \(0 MiB free\); "
                                      r"the previous last.ckpt is kept") as error:  # fmt: skip
        AtomicCheckpointIO().save_checkpoint({"step": 2}, path)
    assert error.value.errno == errno.ENOSPC
    assert torch.load(path, weights_only=True) == {"step": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]


# Extending a finished run ("train 30 more steps/epochs") resumes from the final checkpoint of the first command.
EXTEND_CASES = [
    # stopped by max_steps 9 inside epoch 0; step checkpoints (every 4) and validation (every 6) at other steps
    ("vae", ["--trainer.max_steps", "9", "--trainer.max_epochs", "-1"], ["--trainer.max_steps", "20"],
     [*EVERY_4, "--trainer.val_check_interval", "6"]),
    ("ae", ["--trainer.max_steps", "5", "--trainer.max_epochs", "-1"], ["--trainer.max_steps", "20"], []),
    ("ae", ["--trainer.max_epochs", "1"], ["--trainer.max_epochs", "2"], []),
    # from the end of epoch 0, where Lightning (given max_steps) would count that epoch twice and stop an epoch early
    ("ae", ["--trainer.max_epochs", "1"], ["--trainer.max_epochs", "2", "--trainer.max_steps", "100"], []),
    # stopped by max_steps at the end of epoch 0: last.ckpt is written at the batch's end, then again after validation
    ("ae", ["--trainer.max_steps", "10", "--trainer.max_epochs", "-1"], ["--trainer.max_steps", "20"],
     ["--trainer.limit_train_batches", "10"]),
]  # fmt: skip


@pytest.mark.parametrize("variant, first, then, extra", EXTEND_CASES,
                         ids=["vae-steps", "ae-steps", "ae-epochs", "ae-epochs-and-steps",
                              "ae-steps-at-epoch-end"])  # fmt: skip
def test_extending_a_finished_run_trains_on_the_batches_of_an_uninterrupted_one(
    variant: str, first: list[str], then: list[str], extra: list[str], data_dir: Path, tmp_path: Path
) -> None:
    longer = then if "--trainer.max_epochs" in then else [*then, "--trainer.max_epochs", "-1"]
    run_cli("fit", *tiny_args(variant, data_dir, tmp_path / "reference", *extra, *longer))
    run_cli("fit", *tiny_args(variant, data_dir, tmp_path / "extended", *extra, *first))
    run_cli("fit", *tiny_args(variant, data_dir, tmp_path / "extended", *extra, *longer, "--ckpt_path", "last"))
    resumed, expected = last_checkpoint(tmp_path / "extended"), last_checkpoint(tmp_path / "reference")
    assert resumed["global_step"] == expected["global_step"]
    differing = [name for name, value in expected["state_dict"].items()
                 if not torch.equal(resumed["state_dict"][name], value)]  # fmt: skip
    assert not differing, f"{len(differing)} of {len(expected['state_dict'])} weights differ after extending the run"
    for got, want in zip(resumed["optimizer_states"], expected["optimizer_states"]):
        for index, state in want["state"].items():
            for key, value in state.items():
                assert torch.equal(got["state"][index][key], value), f"optimizer state {index}/{key} differs"


@pytest.mark.parametrize("stop", [5, 14], ids=["inside-an-epoch", "at-an-epochs-end"])
def test_a_checkpoint_saved_after_max_steps_stopped_fit_resumes_where_it_stopped(
    stop: int, data_dir: Path, tmp_path: Path
) -> None:
    # Epochs of 14 batches, no validation: the first fit stops at step 5 (inside epoch 0) or 14 (its last batch), and
    # the checkpoint is saved after it ends; at 14 the epoch-end checkpoint of ModelCheckpoint resumes too.
    def fit(max_steps: int, ckpt_path: Path | None = None, *callbacks: L.Callback) -> tuple[L.Trainer, Autoencoder]:
        model = Autoencoder(hidden_dims=[16], latent_dim=4)
        trainer = L.Trainer(accelerator="cpu", max_steps=max_steps, max_epochs=-1, limit_val_batches=0, logger=False,
                            enable_checkpointing=bool(callbacks), enable_progress_bar=False,
                            enable_model_summary=False, default_root_dir=tmp_path,
                            callbacks=[UnfinishedEpochInCheckpoint(), *callbacks])  # fmt: skip
        trainer.fit(model, datamodule=MNISTDataModule(data_dir=str(data_dir), batch_size=16), ckpt_path=ckpt_path)
        return trainer, model

    L.seed_everything(0)
    reference, expected = fit(18)
    L.seed_everything(0)
    fit(stop, None, ModelCheckpoint(tmp_path / "ends", filename="{step}"))[0].save_checkpoint(tmp_path / "stopped.ckpt")
    saved = [tmp_path / "stopped.ckpt", *([tmp_path / "ends" / "step=14.ckpt"] if stop == 14 else [])]
    for path in saved:
        resumed, model = fit(18, path)
        assert resumed.global_step == reference.global_step == 18
        differing = [
            name for name, value in expected.state_dict().items() if not torch.equal(model.state_dict()[name], value)
        ]
        assert not differing, f"{path.name}: {len(differing)} weights differ from the uninterrupted run's"
        assert resumed.current_epoch == reference.current_epoch, f"{path.name}: another number of epochs counted"


def test_the_commands_checkpoint_saved_by_hand_after_max_steps_resumes_where_it_stopped(
    data_dir: Path, tmp_path: Path
) -> None:
    # the command's trainer has the callback: a checkpoint saved from Python after its fit resumes inside the epoch
    steps = ["--trainer.max_epochs", "-1", "--trainer.max_steps"]
    reference = run_cli("fit", *tiny_args("vae", data_dir, tmp_path / "reference", *steps, "20"))
    stopped = run_cli("fit", *tiny_args("vae", data_dir, tmp_path / "extended", *steps, "5"))
    stopped.trainer.save_checkpoint(tmp_path / "by_hand.ckpt")
    extend = ["--ckpt_path", str(tmp_path / "by_hand.ckpt")]
    resumed = run_cli("fit", *tiny_args("vae", data_dir, tmp_path / "extended", *steps, "20", *extend))
    expected = last_checkpoint(tmp_path / "reference")
    assert resumed.trainer.global_step == expected["global_step"] == 20
    assert resumed.trainer.current_epoch == reference.trainer.current_epoch
    differing = [name for name, value in expected["state_dict"].items()
                 if not torch.equal(resumed.model.state_dict()[name].cpu(), value)]  # fmt: skip
    assert not differing, f"{len(differing)} weights differ: the resume skipped batches"


def test_the_final_checkpoint_is_written_with_an_explicit_weights_only(data_dir: Path, tmp_path: Path) -> None:
    records: list[str] = []
    handler = logging.Handler(logging.INFO)
    handler.emit = lambda record: records.append(record.getMessage())  # type: ignore[method-assign]
    logger = logging.getLogger("lightning.pytorch")
    level, logger.level = logger.level, logging.INFO
    logger.addHandler(handler)
    try:  # a step checkpoint at 4, so that the final step 5 is written by the run's last-checkpoint logic
        run_cli("fit", *tiny_args("ae", data_dir, tmp_path, *EVERY_4, "--checkpoint.monitor", "null",
                                  "--trainer.max_steps", "5"))  # fmt: skip
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    assert any("max_steps=5" in message for message in records)  # the handler sees Lightning's messages
    assert not [message for message in records if "`weights_only` was not set" in message]
    assert last_checkpoint(tmp_path)["global_step"] == 5


def test_a_resumed_run_keeps_the_best_of_the_whole_run_as_its_best(data_dir: Path, tmp_path: Path) -> None:
    run_cli("fit", *tiny_args("ae", data_dir, tmp_path))  # version_0
    first = torch.load(next(tmp_path.rglob("best-*.ckpt")), weights_only=False)
    earlier_best = first["callbacks"][next(k for k in first["callbacks"] if k.startswith("RunCheckpoint"))]
    # resumed into version_1 with a learning rate that makes every later epoch worse
    worse = ["--trainer.max_epochs", "4", "--ckpt_path", "last", "--model.init_args.optimizer.init_args.lr", "5"]
    cli = run_cli("fit", *tiny_args("ae", data_dir, tmp_path, *worse))
    callback = cli.trainer.checkpoint_callback
    assert cli.trainer.current_epoch == 4 and callback.best_model_score > 0
    assert callback.best_model_path == earlier_best["best_model_path"]  # version_0's, still on disk
    assert float(callback.best_model_score) == float(earlier_best["best_model_score"])
    assert not list((tmp_path / "lightning_logs" / "version_1").rglob("best-*.ckpt"))  # nothing worse kept as best


def test_a_second_model_checkpoint_does_not_stop_the_final_step_from_being_saved(
    data_dir: Path, tmp_path: Path
) -> None:
    snapshots = ["--trainer.callbacks+=ModelCheckpoint", "--trainer.callbacks.every_n_train_steps", "5",
                 "--trainer.callbacks.dirpath", str(tmp_path / "snapshots")]  # fmt: skip
    limits = ["--trainer.max_steps", "25", "--trainer.max_epochs", "-1"]
    run_cli("fit", *tiny_args("ae", data_dir, tmp_path / "run", *limits, *snapshots))
    assert last_checkpoint(tmp_path / "run")["global_step"] == 25  # the other callback saved step 25 too


def test_a_fresh_run_sharing_the_checkpoint_folder_keeps_the_other_runs_last(data_dir: Path, tmp_path: Path) -> None:
    shared = ["--checkpoint.dirpath", str(tmp_path / "checkpoints")]
    run_cli("fit", *tiny_args("ae", data_dir, tmp_path / "a", *shared, "--trainer.max_epochs", "1"))
    cli = run_cli("fit", *tiny_args("ae", data_dir, tmp_path / "b", *shared, "--trainer.max_steps", "5"))
    steps = {path.name: torch.load(path, weights_only=True)["global_step"] for path in tmp_path.rglob("last*.ckpt")}
    assert steps == {"last.ckpt": 14, "last-v1.ckpt": 5}  # as Lightning's own save_last versions it
    assert cli.trainer.checkpoint_callback.last_model_path == str(tmp_path / "checkpoints" / "last-v1.ckpt")


def _step_lr(gamma: float) -> list[str]:
    scheduler = {"class_path": "torch.optim.lr_scheduler.StepLR", "init_args": {"step_size": 1, "gamma": gamma}}
    return ["--model.init_args.lr_scheduler", json.dumps(scheduler)]


def test_a_slurm_hpc_checkpoint_is_checked_like_any_other_on_resume(
    data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run_cli("fit", *tiny_args("ae", data_dir, tmp_path, "--trainer.max_epochs", "1", *_step_lr(0.5)))
    for number in (2, 10):  # Lightning resumes from the highest number, hpc_ckpt_10
        shutil.copy(next(tmp_path.rglob("last.ckpt")), tmp_path / f"hpc_ckpt_{number}.ckpt")
    (tmp_path / "hpc_ckpt_2.ckpt").write_bytes(b"not a checkpoint")
    changed = tiny_args("ae", data_dir, tmp_path, "--trainer.max_epochs", "2", *_step_lr(0.9))
    with pytest.raises(ConfigError, match="gamma=0.5 in the checkpoint's run and with gamma=0.9"):
        run_cli("fit", *changed, "--ckpt_path", "hpc")
    # Under SLURM, Lightning resumes from hpc_ckpt_<n> by itself when no --ckpt_path is given.
    for name in ("NTASKS", "JOB_ID", "NODEID", "PROCID", "LOCALID", "NTASKS_PER_NODE"):
        monkeypatch.setenv(f"SLURM_{name}", "1" if name.startswith("NTASKS") else "0")
    monkeypatch.setenv("SLURM_JOB_NAME", "train")
    monkeypatch.setenv("SLURM_NODELIST", "localhost")
    with pytest.raises(ConfigError, match="gamma=0.5 in the checkpoint's run and with gamma=0.9"):
        run_cli("fit", *changed)


def test_ckpt_path_hpc_without_an_hpc_checkpoint_is_refused(data_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=f"--ckpt_path hpc: no hpc_ckpt_<n>.ckpt in {tmp_path}"):
        run_cli("fit", *tiny_args("ae", data_dir, tmp_path, "--ckpt_path", "hpc"))


@pytest.mark.parametrize(
    "change, lrs",
    [(["--model.init_args.code_lr", "0.05"], [0.001, 0.05]),  # the decoder's lr stays
     (["--model.init_args.optimizer.init_args.lr", "0.002"], [0.002, 0.01])],  # the codes' own lr stays
    ids=["code_lr", "optimizer lr"],
)  # fmt: skip
def test_a_resumed_auto_decoder_takes_each_param_groups_own_new_lr(
    change: list[str], lrs: list[float], data_dir: Path, tmp_path: Path
) -> None:
    run_cli("fit", *tiny_args("autodecoder", data_dir, tmp_path / "run", "--trainer.max_epochs", "1"))
    last = next((tmp_path / "run").rglob("last.ckpt"))
    cli = run_cli("fit", *tiny_args("autodecoder", data_dir, tmp_path / "resumed", *change, "--ckpt_path", str(last)))
    assert [group["lr"] for group in cli.trainer.optimizers[0].param_groups] == pytest.approx(lrs)


def _two_groups(decoder_lr: float, code_lr: float, weight_decay: float = 0.0) -> torch.optim.Optimizer:
    params = [torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))]
    groups = [{"params": params[:1]}, {"params": params[1:], "lr": code_lr}]
    return torch.optim.Adam(groups, lr=decoder_lr, weight_decay=weight_decay)


def test_a_resume_with_another_number_of_param_groups_is_refused_naming_both() -> None:
    callback = OptimizerSettingsOnResume()
    trainer = SimpleNamespace(optimizers=[torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))])])
    callback.on_load_checkpoint(trainer, None, {"optimizer_states": [{"param_groups": [{}, {}]}]})
    # a ConfigError (the command exits with 2) also where it refuses while the run starts (the auto-decoder's codes)
    with pytest.raises(ConfigError, match="optimizer 0 \\(Adam\\) has 1 param groups in this run and had 2 in the"):
        callback.on_fit_start(trainer, None)


def test_a_checkpoint_recording_only_the_defaults_applies_a_new_default_to_the_groups_that_follow_it() -> None:
    before = optimizer_settings(_two_groups(1e-3, 0.01))
    before.pop("groups")  # as checkpoints written before groups were recorded
    callback, optimizer = OptimizerSettingsOnResume(), _two_groups(2e-3, 0.01, weight_decay=0.1)
    trainer = SimpleNamespace(optimizers=[optimizer], lr_scheduler_configs=[])
    callback.on_load_checkpoint(trainer, None, {callback.key: [before]})
    callback.on_fit_start(trainer, None)
    for group, lr in zip(optimizer.param_groups, [1e-3, 0.01]):  # as Lightning restores the checkpoint's groups
        group.update(lr=lr, weight_decay=0.0)
    callback.on_train_start(trainer, None)
    assert [(group["lr"], group["weight_decay"]) for group in optimizer.param_groups] == [(2e-3, 0.1), (0.01, 0.1)]


def test_a_run_without_the_version_counter_overwrites_the_shared_folders_last_as_lightning_does(
    data_dir: Path, tmp_path: Path
) -> None:
    shared = ["--checkpoint.dirpath", str(tmp_path / "checkpoints")]
    run_cli("fit", *tiny_args("ae", data_dir, tmp_path / "a", *shared, "--trainer.max_epochs", "1"))
    overwrite = ["--checkpoint.enable_version_counter", "false", "--trainer.max_steps", "5"]
    cli = run_cli("fit", *tiny_args("ae", data_dir, tmp_path / "b", *shared, *overwrite))
    steps = {path.name: torch.load(path, weights_only=True)["global_step"] for path in tmp_path.rglob("last*.ckpt")}
    assert steps == {"last.ckpt": 5}  # ModelCheckpoint(enable_version_counter=False) overwrites: no last-v1.ckpt
    assert cli.trainer.checkpoint_callback.last_model_path == str(tmp_path / "checkpoints" / "last.ckpt")


class TwoGroupAutoencoder(Autoencoder):
    """The plain AE with, given ``decoder_lr``, its decoder in a param group of its own, under a SequentialLR (whose
    schedule a new lr cannot move): what a user's ``configure_optimizers`` may build."""

    def __init__(self, decoder_lr: float | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.decoder_lr = decoder_lr

    def configure_optimizers(self) -> Any:
        groups = [{"params": list(self.encoder.parameters())}, {"params": list(self.decoder.parameters()),
                                                                "lr": self.decoder_lr}]  # fmt: skip
        optimizer = torch.optim.Adam(groups if self.decoder_lr else self.parameters(), lr=1e-3)
        warm_up = [lr_scheduler.LinearLR(optimizer, 0.5, total_iters=1), lr_scheduler.ConstantLR(optimizer, 1.0)]
        return {"optimizer": optimizer, "lr_scheduler": lr_scheduler.SequentialLR(optimizer, warm_up, [1])}


@pytest.mark.parametrize(
    "decoder_lr, message",
    [("0.02", r"optimizer 0: lr 0.02 on resume \(the checkpoint's run had 0.01\) cannot move SequentialLR"),
     ("null", r"optimizer 0 \(Adam\) has 1 param groups in this run and had 2 in the checkpoint's run")],
    ids=["a group's lr", "the number of groups"],
)  # fmt: skip
def test_a_resume_refused_for_a_param_groups_settings_writes_nothing(
    decoder_lr: str, message: str, data_dir: Path, tmp_path: Path
) -> None:
    model = ["--model", f"{__name__}.TwoGroupAutoencoder", "--model.init_args.decoder_lr"]
    run_cli("fit", *tiny_args("ae", data_dir, tmp_path / "run", *model, "0.01", "--trainer.max_epochs", "1"))
    last = next((tmp_path / "run").rglob("last.ckpt"))
    with pytest.raises(ConfigError, match=message):  # a setting: the command exits with 2
        run_cli("fit", *tiny_args("ae", data_dir, tmp_path / "resumed", *model, decoder_lr, "--ckpt_path", str(last)))
    assert not (tmp_path / "resumed").exists(), "a refused resume left files that look like a run"


def _scheduler(argument: str, name: str, **init_args: float) -> list[str]:
    scheduler = {"class_path": f"torch.optim.lr_scheduler.{name}", "init_args": init_args}
    return [f"--model.init_args.{argument}", json.dumps(scheduler)]


def _schedules(checkpoint: dict) -> tuple[list[float], list[dict]]:
    """Every param group's lr and every lr scheduler's state in ``checkpoint``."""
    lrs = [group["lr"] for state in checkpoint["optimizer_states"] for group in state["param_groups"]]
    return lrs, checkpoint["lr_schedulers"]


# Epochs of 4 batches. Models that optimize manually step their epoch schedulers themselves (the AAE's on both its
# optimizers); under either optimization the model steps the ReduceLROnPlateau it built on val/loss. Each case: the
# variant, its settings, how far the reference runs (max_steps, or the given settings), and where the interrupted run's
# checkpoint comes from: a step checkpoint of the reference, or the last.ckpt of a first run to the given max_steps
# (or with the given settings).
MANUAL_SCHEDULES = [*_scheduler("lr_scheduler", "StepLR", step_size=1, gamma=0.5),
                    *_scheduler("discriminator_lr_scheduler", "ExponentialLR", gamma=0.3)]  # fmt: skip
FOUR_BATCHES = ["--trainer.limit_train_batches", "4", "--trainer.limit_val_batches", "1", "--trainer.max_epochs", "-1"]
STEP_FILES = ["--checkpoint.monitor", "null", "--checkpoint.save_top_k", "-1", "--checkpoint.filename", "{step}"]
PLATEAUS = [*_scheduler("lr_scheduler", "ReduceLROnPlateau", patience=0),
            *_scheduler("discriminator_lr_scheduler", "ReduceLROnPlateau", patience=0, factor=0.3)]  # fmt: skip
# A threshold no val/loss meets: each step halves the lr
HALVING_PLATEAU = _scheduler("lr_scheduler", "ReduceLROnPlateau", patience=0, factor=0.5, threshold=10.0)
SCHEDULER_CASES = [
    # written at the end of epoch 0's last batch, before its validation: the resumed run starts epoch 1
    ("aae", [*MANUAL_SCHEDULES, *STEP_FILES, "--checkpoint.every_n_train_steps", "4"], 10, "step=4.ckpt"),
    ("ae", [*_step_lr(0.5), "--config", str(ROOT / "configs" / "fast.yaml"), "--fast.steps", "2", *STEP_FILES,
            "--checkpoint.every_n_train_steps", "8"], 20, "step=8.ckpt"),
    ("deep_ae_rbm", [*_step_lr(0.5), "--model.init_args.pretrain", "none", *STEP_FILES,
                     "--checkpoint.every_n_train_steps", "4"], 10, "step=4.ckpt"),  # its own training_step
    # written at epoch 0's end, after its validation: with max_steps, the resumed run repeats on_train_epoch_end
    ("aae", MANUAL_SCHEDULES, 12, 4),
    # validation every 2nd epoch: last.ckpt is written when it ends, before the ReduceLROnPlateau's step on its val/loss
    ("aae", [*PLATEAUS, "--trainer.check_val_every_n_epoch", "2"], 16, 8),
    # Automatic optimization, where Lightning steps a ReduceLROnPlateau after the epoch's checkpoints, and never in the
    # first epoch of a resumed run that restarts inside it (a mid-epoch checkpoint, or any with max_steps)
    ("ae", HALVING_PLATEAU, ["--trainer.max_epochs", "3"], ["--trainer.max_epochs", "1"]),
    ("ae", HALVING_PLATEAU, 12, 4),
    ("ae", [*HALVING_PLATEAU, "--trainer.check_val_every_n_epoch", "2"], 16, 8),
    ("ae", [*HALVING_PLATEAU, *STEP_FILES, "--checkpoint.every_n_train_steps", "2"], 12, "step=6.ckpt"),
]  # fmt: skip


@pytest.mark.parametrize(
    "variant, settings, until, interrupted",
    SCHEDULER_CASES,
    ids=["aae-last-batch", "fast-last-batch", "deep-belief-last-batch", "aae-epoch-end-max-steps", "aae-plateau",
         "ae-plateau-epoch-end", "ae-plateau-epoch-end-max-steps", "ae-plateau-validation-end", "ae-plateau-mid-epoch"],
)  # fmt: skip
def test_a_model_resumes_its_lr_schedulers_exactly(
    variant: str, settings: list[str], until: int | list[str], interrupted: str | int | list[str], data_dir: Path,
    tmp_path: Path
) -> None:  # fmt: skip
    def fit(root: str, until: int | list[str], *extra: str) -> None:
        until = ["--trainer.max_steps", str(until)] if isinstance(until, int) else until
        run_cli("fit", *tiny_args(variant, data_dir, tmp_path / root, *FOUR_BATCHES, "--images.every_n_epochs", "0",
                                  *settings, *until, *extra))  # fmt: skip

    fit("reference", until)
    if isinstance(interrupted, str):
        checkpoint = next((tmp_path / "reference").rglob(interrupted))
    else:
        fit("first", interrupted)
        checkpoint = next((tmp_path / "first").rglob("last.ckpt"))
    fit("resumed", until, "--ckpt_path", str(checkpoint))
    resumed, expected = last_checkpoint(tmp_path / "resumed"), last_checkpoint(tmp_path / "reference")
    assert resumed["global_step"] == expected["global_step"], "the resumed run ended elsewhere"
    lrs, schedulers = _schedules(resumed)
    expected_lrs, expected_schedulers = _schedules(expected)
    assert lrs == expected_lrs, f"resumed from {checkpoint.name}: lrs {lrs}, uninterrupted {expected_lrs}"
    assert schedulers == expected_schedulers, f"resumed from {checkpoint.name}: the schedulers' states differ"


def test_a_second_fit_of_a_manually_optimizing_model_steps_its_schedulers_from_its_first_epoch(
    data_dir: Path, tmp_path: Path
) -> None:
    # What the epochs stepped so far (kept for a resume) is the first fit's: the second starts at epoch 0 again.
    model = AdversarialAutoencoder(hidden_dims=[16], latent_dim=4, discriminator_hidden_dims=[8],
                                   lr_scheduler=lambda optimizer: lr_scheduler.StepLR(optimizer, 1))  # fmt: skip
    for fit in ("first", "second"):
        trainer = L.Trainer(accelerator="cpu", max_epochs=1, limit_train_batches=2, limit_val_batches=0, logger=False,
                            enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                            default_root_dir=tmp_path)  # fmt: skip
        trainer.fit(model, datamodule=MNISTDataModule(data_dir=str(data_dir), batch_size=16))
        assert trainer.lr_scheduler_configs[0].scheduler.last_epoch == 1, f"the {fit} fit's epoch"


def test_a_users_own_plateau_on_another_metric_keeps_lightnings_steps(data_dir: Path, tmp_path: Path) -> None:
    # The model steps on val/loss only the ReduceLROnPlateau it built: Lightning steps this one on train/loss, once an
    # epoch, although the run validates.
    model = TrainLossPlateauAutoencoder(hidden_dims=[16], latent_dim=4)
    trainer = L.Trainer(accelerator="cpu", max_epochs=2, limit_train_batches=2, limit_val_batches=1, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        default_root_dir=tmp_path)  # fmt: skip
    trainer.fit(model, datamodule=MNISTDataModule(data_dir=str(data_dir), batch_size=16))
    assert trainer.lr_scheduler_configs[0].scheduler.last_epoch == 2


def test_ckpt_path_last_with_a_named_logger_version_searches_only_that_runs_checkpoints(tmp_path: Path) -> None:
    logger = Namespace(class_path="lightning.pytorch.loggers.CSVLogger",
                       init_args=Namespace(save_dir=str(tmp_path), name="logs", version=0))  # fmt: skip
    config = Namespace(trainer=Namespace(default_root_dir=str(tmp_path), logger=logger), checkpoint=Namespace())
    own, other = (tmp_path / "logs" / f"version_{v}" / "checkpoints" / "last.ckpt" for v in (0, 1))
    hpc_of_other, hpc_of_own = tmp_path / "hpc_ckpt_1.ckpt", tmp_path / "hpc_ckpt_2.ckpt"
    for path, step, version in [(own, 10, "version_0"), (other, 40, "version_1"), (hpc_of_other, 50, "version_1")]:
        path.parent.mkdir(parents=True, exist_ok=True)
        run = {"class_path": "lightning.pytorch.loggers.CSVLogger", "name": "logs", "version": version}
        torch.save({"state_dict": {}, "global_step": step, "pytorch-lightning_version": "2.6",
                    "ae_lightning_logger_run": run}, path)  # fmt: skip
    assert _furthest_checkpoint(config) == str(own)  # not the further checkpoints of version_1
    shutil.copy(own, hpc_of_own)
    os.utime(hpc_of_own, (2_000_000_000, 2_000_000_000))
    assert _furthest_checkpoint(config) == str(hpc_of_own)  # a SLURM requeue checkpoint of this run
    logger.init_args.version = 2
    assert _furthest_checkpoint(config) is None  # version_2 has none yet: fit warns naming where it searched
    assert _searched(config)[2].startswith(f"in {tmp_path / 'logs' / 'version_2' / 'checkpoints'} ")


def test_a_resumed_fit_into_its_own_csv_version_is_refused_before_it_deletes_the_metrics(
    data_dir: Path, tmp_path: Path
) -> None:
    short = ["--trainer.limit_train_batches", "2", "--trainer.limit_val_batches", "1", "--trainer.logger", "CSVLogger"]
    run_cli("fit", *tiny_args("ae", data_dir, tmp_path, *short, "--trainer.logger.version", "0",
                              "--trainer.max_epochs", "1"))  # fmt: skip
    metrics = tmp_path / "lightning_logs" / "version_0" / "metrics.csv"
    before = metrics.read_text()
    resume = tiny_args("ae", data_dir, tmp_path, *short)
    with pytest.raises(ConfigError, match=rf"{metrics} exists: CSVLogger would delete .*--trainer.logger.version"):
        run_cli("fit", *resume, "--trainer.logger.version", "0", "--ckpt_path", "last")
    assert metrics.read_text() == before
    # The advice: the next part logs into a version of its own, resuming the first part's checkpoint.
    checkpoint = str(metrics.parent / "checkpoints" / "last.ckpt")
    resumed = run_cli("fit", *resume, "--trainer.logger.version", "1", "--ckpt_path", checkpoint)
    assert resumed.trainer.global_step == 4
    assert metrics.read_text() == before and (tmp_path / "lightning_logs" / "version_1" / "metrics.csv").is_file()


def test_a_resume_from_a_finished_epoch_with_max_steps_and_max_epochs_is_refused_before_any_file(
    data_dir: Path, tmp_path: Path
) -> None:
    # Lightning 2.6 restarts the finished epoch under max_steps and counts it twice: the run stopped an epoch early.
    # The command's own checkpoints mark the next epoch's start (UnfinishedEpochInCheckpoint); Lightning's do not.
    finished = run_cli("fit", *tiny_args("ae", data_dir, tmp_path / "run", "--trainer.max_epochs", "1"))
    trainer, lightnings = finished.trainer, tmp_path / "lightnings.ckpt"
    trainer.callbacks = [c for c in trainer.callbacks if not isinstance(c, UnfinishedEpochInCheckpoint)]
    trainer.save_checkpoint(lightnings)
    then = ["--trainer.max_epochs", "2", "--trainer.max_steps", "100", "--ckpt_path", str(lightnings)]
    with pytest.raises(ConfigError, match=r"--trainer.max_steps 100 and --trainer.max_epochs 2: .* stop one epoch "
                       r"early .*--trainer.max_epochs -1 .* or --trainer.max_steps -1"):  # fmt: skip
        run_cli("fit", *tiny_args("ae", data_dir, tmp_path / "resumed", *then))
    assert not (tmp_path / "resumed").exists(), "a refused resume left files that look like a run"


def test_resuming_at_an_epochs_last_batch_warns_that_its_validation_is_skipped(data_dir: Path, tmp_path: Path) -> None:
    # the resumed run silently lost epoch 0's validation, and with it a ReduceLROnPlateau step (lr 5e-4 for 2.5e-4)
    settings = [*FOUR_BATCHES, *HALVING_PLATEAU, *STEP_FILES, "--checkpoint.every_n_train_steps", "2",
                "--trainer.max_steps", "8", "--images.every_n_epochs", "0"]  # fmt: skip
    run_cli("fit", *tiny_args("ae", data_dir, tmp_path / "reference", *settings))
    steps = {step: next((tmp_path / "reference").rglob(f"step={step}.ckpt")) for step in (2, 4)}
    with pytest.warns(UserWarning, match=r"end of epoch 0's last training batch, before that epoch's validation"):
        run_cli("fit", *tiny_args("ae", data_dir, tmp_path / "at-epoch-end", *settings, "--ckpt_path", str(steps[4])))
    # a mid-epoch checkpoint, and the command's default last.ckpt, written at the epoch's end after its validation
    default = [*FOUR_BATCHES, *HALVING_PLATEAU, "--trainer.max_steps", "8", "--images.every_n_epochs", "0"]
    run_cli("fit", *tiny_args("ae", data_dir, tmp_path / "default", *default))
    last = next((tmp_path / "default").rglob("last.ckpt"))
    for name, path in (("mid-epoch", steps[2]), ("after-validation", last)):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            extra = ["--trainer.max_steps", "12", "--ckpt_path", str(path)]
            run_cli("fit", *tiny_args("ae", data_dir, tmp_path / name, *settings, *extra))
        assert not [w for w in caught if "before that epoch's validation" in str(w.message)], name


def test_the_last_checkpoint_of_a_run_whose_last_epoch_was_not_its_best_resumes_without_a_false_warning(
    data_dir: Path, tmp_path: Path
) -> None:
    # last.ckpt, written when training ended (Lightning had moved to the next epoch), was marked as written before the
    # last epoch's validation, and resuming from it warned to resume from last.ckpt instead.
    short = ["--trainer.limit_train_batches", "2", "--trainer.limit_val_batches", "1", "--checkpoint.mode", "max"]
    run_cli("fit", *tiny_args("ae", data_dir, tmp_path / "run", *short))
    assert [path.name for path in (tmp_path / "run").rglob("best-*.ckpt")] == ["best-epoch=0-step=2.ckpt"]
    last = next((tmp_path / "run").rglob("last.ckpt"))
    assert "ae_lightning_unvalidated_epoch" not in torch.load(last, weights_only=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run_cli("fit", *tiny_args("ae", data_dir, tmp_path / "run", *short, "--trainer.max_epochs", "3",
                                  "--ckpt_path", str(last)))  # fmt: skip
    assert not [w for w in caught if "before that epoch's validation" in str(w.message)]


def test_step_checkpoints_before_the_first_validation_keep_a_twice_killed_run_going(
    data_dir: Path, tmp_path: Path
) -> None:
    # Lightning defers a step checkpoint while its monitor (val/loss) is not logged yet: in epoch 0, and in a resumed
    # run until its first validation. The run's ``last`` cannot wait: a run killed there had nothing to resume from.
    killed, reference = tmp_path / "killed", tmp_path / "reference"
    for kill_at, saved in ((10, 8), (14, 12)):  # both inside epoch 0 (14 batches), the second in the resumed run
        resume = ["--ckpt_path", "last"] if kill_at == 14 else []
        kill = ["--trainer.callbacks+=tiny_runs.KillAtStep", "--trainer.callbacks.step", str(kill_at)]
        status, output = run_or_fail_if_hung(
            command("fit", *tiny_args("ae", data_dir, killed, *EVERY_4, *resume, *kill))
        )
        assert status == -signal.SIGKILL, output
        found = list(killed.rglob("last.ckpt"))
        assert found, f"killed at step {kill_at}: no last.ckpt was written"
        assert last_checkpoint(killed)["global_step"] == saved
    for root, resume in ((killed, ["--ckpt_path", "last"]), (reference, [])):
        run_cli("fit", *tiny_args("ae", data_dir, root, *EVERY_4, *resume))
    resumed, expected = (last_checkpoint(root)["state_dict"] for root in (killed, reference))
    assert [name for name, value in expected.items() if not torch.equal(resumed[name], value)] == []
    assert last_checkpoint(killed)["global_step"] == STEPS


def test_a_finished_runs_last_checkpoint_holds_its_last_validation_when_step_checkpoints_divide_the_epoch(
    data_dir: Path, tmp_path: Path
) -> None:
    # With every_n_train_steps dividing the epoch, the final last.ckpt was the one of the last batch, before the last
    # validation: extending the finished run skipped that validation and warned to resume from last.ckpt instead.
    short = ["--trainer.limit_train_batches", "2", "--trainer.limit_val_batches", "1", *EVERY_4[:1], "2"]
    run_cli("fit", *tiny_args("ae", data_dir, tmp_path / "run", *short))
    last = next((tmp_path / "run").rglob("last.ckpt"))
    assert "ae_lightning_unvalidated_epoch" not in torch.load(last, weights_only=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        extend = ["--trainer.max_epochs", "3", "--ckpt_path", str(last)]
        run_cli("fit", *tiny_args("ae", data_dir, tmp_path / "run", *short, *extend))
    assert not [w for w in caught if "before that epoch's validation" in str(w.message)]


def test_a_run_resumed_without_the_checkpoints_lr_scheduler_trains_at_its_own_lr(data_dir: Path, tmp_path: Path):
    # it trained on at the lr the checkpoint's schedule had decayed to (1e-5), its config saying lr 0.001, no scheduler
    run_cli("fit", *tiny_args("ae", data_dir, tmp_path / "run", *_step_lr(0.1)))  # 2 epochs: lr 1e-3 -> 1e-5
    last = next((tmp_path / "run").rglob("last.ckpt"))
    assert torch.load(last, weights_only=False)["optimizer_states"][0]["param_groups"][0]["lr"] == pytest.approx(1e-5)
    with mock.patch("ae_lightning.training.resume.rank_zero_info") as info:
        cli = run_cli("fit", *tiny_args("ae", data_dir, tmp_path / "resumed", "--trainer.max_epochs", "3",
                                        "--ckpt_path", str(last)))  # fmt: skip
    assert [group["lr"] for group in cli.trainer.optimizers[0].param_groups] == [0.001]
    info.assert_any_call("optimizer 0: lr is 0.001 from here on: this run has no lr scheduler (the checkpoint's run's "
                         "had brought it to 1e-05)")  # fmt: skip


def test_a_resume_with_another_lr_scheduler_class_is_refused_naming_both(data_dir: Path, tmp_path: Path) -> None:
    # CosineAnnealingLR took StepLR's state (step_size, gamma and all) and went on from its decayed lr, silently
    run_cli("fit", *tiny_args("ae", data_dir, tmp_path / "run", "--trainer.max_epochs", "1", *_step_lr(0.1)))
    last = next((tmp_path / "run").rglob("last.ckpt"))
    cosine = {"class_path": "torch.optim.lr_scheduler.CosineAnnealingLR", "init_args": {"T_max": 10}}
    resumed = tiny_args("ae", data_dir, tmp_path / "resumed", "--model.init_args.lr_scheduler", json.dumps(cosine))
    expected = "lr scheduler 0 is a torch.optim.lr_scheduler.StepLR, this run's a torch.optim.lr_scheduler.CosineAnneal"
    with pytest.raises(ConfigError, match=expected):
        run_cli("fit", *resumed, "--ckpt_path", str(last))
    assert not (tmp_path / "resumed").exists()
