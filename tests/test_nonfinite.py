"""The non-finite guard: a diverging run stops with an error naming the step and the terms, or skips such batches;
either way no checkpoint is ever written from non-finite weights."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import Callback
from tiny_runs import ROOT, PoisonedAutoencoder, build_cli, command, last_checkpoint, subprocess_env, tiny_args

from ae_lightning.training.fault_tolerance import NonFiniteLossError, SkipNonFinite, non_finite_guard
from datamodules import MNISTDataModule

DIVERGING_SGD = json.dumps({"class_path": "torch.optim.SGD", "init_args": {"lr": 1e6}})
# One optimizer step per Lightning batch (the configs take 10), so that the guard sees each step's terms, and a
# checkpoint after every step, so that the last one written before the failure is the step before it.
ONE_STEP: list[str] = []
EVERY_STEP = [*ONE_STEP, "--checkpoint.every_n_train_steps", "1", "--checkpoint.monitor", "null"]
POISONED = ["--model.class_path", "tiny_runs.PoisonedAutoencoder", "--model.init_args.poisoned_steps", "[3,5]"]


class NaNBatchAtStep(Callback):
    """Fills the images of the training batch of global step ``step`` with NaN, as a corrupt sample would.

    Args:
        step: the global step whose batch is poisoned.
    """

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer: L.Trainer, pl_module, batch, batch_idx: int) -> None:
        if trainer.global_step == self.step:
            batch[0].fill_(float("nan"))


def fit(*args: str):
    cli = build_cli(*args)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    return cli


def assert_finite_weights(checkpoint: dict) -> None:
    for name, value in checkpoint["state_dict"].items():
        assert torch.isfinite(value.float()).all(), f"{name} is not finite in the checkpoint"


@pytest.mark.parametrize("variant", ["ae", "aae"])  # automatic and manual optimization
def test_diverging_learning_rate_stops_training_naming_the_step_and_terms(
    variant: str, data_dir: Path, tmp_path: Path
) -> None:
    diverging = ["--model.init_args.optimizer", DIVERGING_SGD, *EVERY_STEP]
    with pytest.raises(NonFiniteLossError) as error:
        fit(*tiny_args(variant, data_dir, tmp_path, *diverging))
    found = re.search(r"at global step (\d+) \(epoch 0, batch \d+\): ([a-z_, ]+) (is|are) not finite", str(error.value))
    assert found, str(error.value)
    assert "loss" in found[2].split(", ")
    last = last_checkpoint(tmp_path)
    assert last["global_step"] == int(found[1]) >= 1  # the last step before the bad one, and not the bad one
    assert_finite_weights(last)


def test_deferred_check_names_the_first_bad_step_and_keeps_the_last_good_checkpoint(
    data_dir: Path, tmp_path: Path
) -> None:
    # As on a GPU: the device-side record is read only every 10 steps, and before each checkpoint is written.
    deferred = ["--nonfinite.check_every_n_steps", "10", *EVERY_STEP]
    with pytest.raises(NonFiniteLossError) as error:
        fit(*tiny_args("ae", data_dir, tmp_path, *POISONED, *deferred))
    assert re.search(
        r"at global step 3 \(epoch 0, batch 3\): loss is not finite \(loss=nan, recon=\d", str(error.value)
    )
    assert error.traceback[-2].name == "on_save_checkpoint"  # read when the checkpoint due after step 3 was saved
    last = last_checkpoint(tmp_path)
    assert last["global_step"] == 3  # written before step 3; the save after it raised instead of writing NaN weights
    assert_finite_weights(last)


def test_skip_leaves_weights_and_optimizer_untouched_on_bad_batches_and_counts_them(
    data_dir: Path, tmp_path: Path
) -> None:
    cli = fit(*tiny_args("ae", data_dir, tmp_path, *POISONED, *ONE_STEP, "--nonfinite.action", "skip"))
    assert cli.trainer.state.finished and cli.trainer.global_step == 28
    assert cli.trainer.callback_metrics["train/skipped_steps"] == 2
    last = last_checkpoint(tmp_path)
    assert_finite_weights(last)
    # Adam counts the steps it took per parameter: the two poisoned batches were not among them.
    steps = {int(state["step"]) for state in last["optimizer_states"][0]["state"].values()}
    assert steps == {26}
    assert last["callbacks"]["NonFiniteGuard"]["skipped_steps"] == 2


def test_skip_puts_back_the_buffers_that_a_bad_batchs_forward_pass_changed(data_dir: Path, tmp_path: Path) -> None:
    # The VQ-VAE's EMA codebook is a set of buffers that its forward pass updates: a NaN batch made them NaN.
    nan_batch = [f"--trainer.callbacks+={__name__}.NaNBatchAtStep", "--trainer.callbacks.step", "3"]
    short = ["--trainer.max_epochs", "1", "--images.every_n_epochs", "0", "--nonfinite.action", "skip"]
    cli = fit(*tiny_args("vqvae", data_dir, tmp_path, *short, *nan_batch))
    assert cli.trainer.state.finished and cli.trainer.callback_metrics["train/skipped_steps"] == 1
    for name, value in cli.model.state_dict().items():
        assert not value.is_floating_point() or torch.isfinite(value).all(), f"{name} is not finite"
    assert torch.isfinite(cli.trainer.callback_metrics["val/loss"])


def test_guard_rejects_unknown_actions() -> None:
    with pytest.raises(ValueError, match="action must be one of 'error', 'skip', got 'ignore'"):
        non_finite_guard(action="ignore")


def test_skip_fails_when_an_epoch_skips_more_than_max_skipped(data_dir: Path, tmp_path: Path) -> None:
    every_step_of_epoch_0 = ["--model.init_args.poisoned_steps", json.dumps(list(range(14)))]
    with pytest.raises(NonFiniteLossError, match=r"14 of the 14 optimizer steps of epoch 0 .* max_skipped=0.5"):
        fit(*tiny_args("ae", data_dir, tmp_path, *POISONED, *every_step_of_epoch_0, "--nonfinite.action", "skip"))


def test_a_non_finite_val_loss_is_never_the_best_checkpoint() -> None:
    from ae_lightning.training.fault_tolerance import RunCheckpoint

    checkpoint = RunCheckpoint(monitor="val/loss", save_top_k=1)
    for value in (float("nan"), float("inf")):
        assert checkpoint.check_monitor_top_k(None, torch.tensor(value)) is False


def test_save_top_k_minus_one_still_saves_every_checkpoint_on_a_non_finite_val_loss() -> None:
    from ae_lightning.training.fault_tolerance import RunCheckpoint

    checkpoint = RunCheckpoint(monitor="val/loss", save_top_k=-1)  # Lightning's "all models are saved"
    for value in (float("nan"), float("inf")):
        assert checkpoint.check_monitor_top_k(None, torch.tensor(value)) is True


def test_the_command_error_of_a_failing_run_starts_a_line_after_the_progress_bar(
    data_dir: Path, tmp_path: Path
) -> None:
    args = tiny_args("ae", data_dir, tmp_path, *POISONED, "--model.init_args.poisoned_steps", "[17]")
    args[args.index("--trainer.enable_progress_bar") + 1] = "true"
    # stdout (the bar) and stderr (the error) in one pipe, as in a terminal or a job's log
    done = subprocess.run(command("fit", *args), env=subprocess_env(), stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=240)  # fmt: skip
    assert done.returncode == 1
    assert "Epoch 1" in done.stdout
    assert "\nae-lightning: error: non-finite training loss at global step 17" in done.stdout, done.stdout[-600:]


def test_skip_counts_optimizer_steps_under_gradient_accumulation(data_dir: Path, tmp_path: Path) -> None:
    every_step = ["--model.init_args.poisoned_steps", json.dumps(list(range(14))), "--trainer.max_epochs", "1"]
    accumulate = ["--trainer.accumulate_grad_batches", "4", "--nonfinite.action", "skip"]
    with pytest.raises(NonFiniteLossError, match=r"4 of the 4 optimizer steps of epoch 0 .* max_skipped=0.5"):
        fit(*tiny_args("ae", data_dir, tmp_path, *POISONED, *every_step, *accumulate))


def test_skip_counts_optimizer_steps_on_the_fast_path(data_dir: Path, tmp_path: Path) -> None:
    fast = ["--config", str(ROOT / "configs" / "fast.yaml"), "--fast.steps", "2"]
    five_of_14 = ["--model.init_args.poisoned_steps", "[0,3,6,9,12]", "--trainer.max_epochs", "1"]
    cli = fit(*tiny_args("ae", data_dir, tmp_path, *fast, *POISONED, *five_of_14, "--nonfinite.action", "skip"))
    assert cli.trainer.global_step == 14 and cli.trainer.callback_metrics["train/skipped_steps"] == 5


def test_skip_keeps_its_epochs_counts_across_a_mid_epoch_resume() -> None:
    before = SkipNonFinite(max_skipped=0.5)
    before.on_train_epoch_start(SimpleNamespace(current_epoch=1), None)
    before._epoch_skipped, before._epoch_steps = 6, 7  # 6 of the 7 steps so far of epoch 1 skipped
    resumed = SkipNonFinite(max_skipped=0.5)
    resumed.load_state_dict(before.state_dict())
    trainer = SimpleNamespace(current_epoch=1)
    resumed.on_train_epoch_start(trainer, None)
    resumed._epoch_steps += 3  # 3 more steps after the resume: 6 of 10 skipped, 0 of 3 without the saved counts
    with pytest.raises(NonFiniteLossError, match="6 of the 10 optimizer steps of epoch 1"):
        resumed.on_train_epoch_end(trainer, SimpleNamespace(log=lambda *args: None))
    resumed.on_train_epoch_start(SimpleNamespace(current_epoch=2), None)  # the next epoch counts anew
    assert (resumed._epoch_skipped, resumed._epoch_steps) == (0, 0)


def test_a_guard_used_again_for_another_fit_counts_its_steps_anew(data_dir: Path) -> None:
    guard = SkipNonFinite(max_skipped=0.5)
    quiet = {"accelerator": "cpu", "logger": False, "enable_checkpointing": False, "enable_progress_bar": False}

    def fit_poisoned(steps: list[int]) -> L.Trainer:  # one epoch of 4 optimizer steps, ``steps`` of them skipped
        trainer = L.Trainer(max_epochs=1, limit_train_batches=4, limit_val_batches=0, callbacks=[guard], **quiet)
        model = PoisonedAutoencoder(poisoned_steps=steps, latent_dim=4, hidden_dims=[16])
        trainer.fit(model, datamodule=MNISTDataModule(data_dir=str(data_dir), batch_size=16))
        return trainer

    assert fit_poisoned([0, 1]).callback_metrics["train/skipped_steps"] == 2
    assert fit_poisoned([]).callback_metrics["train/skipped_steps"] == 0  # not the first fit's 2
    with pytest.raises(NonFiniteLossError, match="3 of the 4 optimizer steps of epoch 0"):  # not 5 of 12, below 0.5
        fit_poisoned([0, 1, 2])
