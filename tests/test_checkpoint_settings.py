"""No setting silently changed by a checkpoint: the run's settings apply where the checkpoint can honour them, and
are refused, naming both values, where it cannot; unreadable checkpoints are errors naming the file."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from unittest import mock

import pytest
import torch
from tiny_runs import run_cli, tiny_args
from torch.optim import lr_scheduler

from ae_lightning.cli import ConfigError
from ae_lightning.training.resume import (
    OptimizerSettingsOnResume,
    check_lr_change,
    check_scheduled_groups,
    check_scheduler_settings,
    optimizer_settings,
)

STEP_CHECKPOINTS = ["--checkpoint.every_n_train_steps", "4", "--checkpoint.monitor", "null",
                    "--checkpoint.save_top_k", "-1", "--checkpoint.filename", "{step}"]  # fmt: skip


@pytest.fixture
def vae_run(data_dir: Path, tmp_path: Path) -> Path:
    """A tiny VAE fit with a mid-epoch checkpoint at step 8; returns that checkpoint."""
    run_cli("fit", *tiny_args("vae", data_dir, tmp_path / "run", *STEP_CHECKPOINTS, "--trainer.max_steps", "8"))
    return next((tmp_path / "run").rglob("step=8.ckpt"))


def test_test_takes_the_runs_evaluation_settings_and_refuses_other_shapes(
    vae_run: Path, data_dir: Path, tmp_path: Path
) -> None:
    with mock.patch("ae_lightning.cli.rank_zero_info") as info:
        evaluation = ["--model.init_args.nll_samples", "3", "--model.init_args.beta", "4"]
        cli = run_cli("test", *tiny_args("vae", data_dir, tmp_path / "t", "--ckpt_path", str(vae_run), *evaluation))
    assert cli.model.nll_samples == 3 and cli.model.beta == 4  # not the checkpoint's 4 and 1
    # named, not silently taken (a resumed fit's likewise): the run's settings that differ from the checkpoint's
    said = " ".join(str(call.args[0]) for call in info.call_args_list)
    assert "trained with beta=1.0 (this run: 4.0), nll_samples=4 (this run: 3)" in said
    with pytest.raises(ValueError, match=r"holds weights that this run's model cannot take .* trained with "
                                         r"latent_dim=4 \(this run: 8\)"):  # fmt: skip
        run_cli("test", *tiny_args("vae", data_dir, tmp_path / "t", "--ckpt_path", str(vae_run),
                                   "--model.init_args.latent_dim", "8"))  # fmt: skip


def test_a_resumed_fit_takes_the_new_learning_rate_and_records_it(
    vae_run: Path, data_dir: Path, tmp_path: Path
) -> None:
    root = tmp_path / "resumed"
    lr = ["--model.init_args.optimizer.init_args.lr", "0.01", "--trainer.max_steps", "10"]
    cli = run_cli("fit", *tiny_args("vae", data_dir, root, "--ckpt_path", str(vae_run), *lr))
    assert cli.trainer.global_step == 10
    assert [group["lr"] for group in cli.trainer.optimizers[0].param_groups] == [0.01]
    assert "lr: 0.01" in next(root.rglob("config.yaml")).read_text()


def test_a_new_learning_rate_on_resume_goes_on_with_the_schedule_and_other_scheduler_settings_are_refused(
    data_dir: Path, tmp_path: Path
) -> None:
    schedule = ["--model.init_args.lr_scheduler", "torch.optim.lr_scheduler.StepLR",
                "--model.init_args.lr_scheduler.init_args.step_size", "1",
                "--model.init_args.lr_scheduler.init_args.gamma", "0.5",
                "--trainer.limit_train_batches", "2"]  # fmt: skip
    lr = "--model.init_args.optimizer.init_args.lr"
    run_cli("fit", *tiny_args("vae", data_dir, tmp_path / "run", *schedule, lr, "0.01"))  # two epochs: 0.01 / 4
    last = next((tmp_path / "run").rglob("last.ckpt"))
    with pytest.raises(ValueError, match=r"StepLR\) was built with gamma=0.5 in the checkpoint's run and with "
                                         r"gamma=0.9 in this one"):  # fmt: skip
        gamma = ["--model.init_args.lr_scheduler.init_args.gamma", "0.9", "--trainer.max_epochs", "3"]
        run_cli("fit", *tiny_args("vae", data_dir, tmp_path / "other", *schedule, lr, "0.01", "--ckpt_path", str(last),
                                  *gamma))  # fmt: skip
    assert not (tmp_path / "other").exists(), "a refused resume left files that look like a run"
    cli = run_cli("fit", *tiny_args("vae", data_dir, tmp_path / "resumed", *schedule, lr, "0.001",
                                    "--ckpt_path", str(last), "--trainer.max_epochs", "3"))  # fmt: skip
    # The third epoch's decay applies to the new base where the schedule stood: 0.001 / 8, not 0.001 / 2.
    assert cli.trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(0.001 / 8)


def sgd() -> torch.optim.Optimizer:
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1, momentum=0.9)


SCHEDULERS = {
    "sequential": lambda o, t=3, m=3: lr_scheduler.SequentialLR(
        o, [lr_scheduler.LinearLR(o, 0.1, total_iters=t), lr_scheduler.CosineAnnealingLR(o, T_max=10)], [m]
    ),
    "plateau": lambda o, patience=10: lr_scheduler.ReduceLROnPlateau(o, patience=patience),
    "warm-restarts": lambda o, t=5: lr_scheduler.CosineAnnealingWarmRestarts(o, T_0=t),
}


@pytest.mark.parametrize(
    "kind, changed, message",
    [
        ("sequential", {"m": 4}, r"milestones=\[3\] in the checkpoint's run and with milestones=\[4\]"),
        ("sequential", {"t": 5}, r"schedulers\[0\].total_iters=3 in the checkpoint's run and with .*total_iters=5"),
        ("plateau", {"patience": 3}, "patience=10 in the checkpoint's run and with patience=3"),
        ("warm-restarts", {"t": 7}, "T_0=5 in the checkpoint's run and with T_0=7"),
    ],
)
def test_a_schedulers_settings_and_its_childrens_are_compared_after_steps_and_changes_refused(
    kind: str, changed: dict, message: str
) -> None:
    trained = SCHEDULERS[kind](sgd())
    for _ in range(5):  # progress (last_epoch, T_cur, best, ...) is not a setting
        trained.optimizer.step()
        trained.step(1.0) if kind == "plateau" else trained.step()
    check_scheduler_settings(0, trained.state_dict(), SCHEDULERS[kind](sgd()))
    with pytest.raises(ValueError, match=message):
        check_scheduler_settings(0, trained.state_dict(), SCHEDULERS[kind](sgd(), **changed))


def test_a_new_lr_is_refused_where_a_schedule_cannot_move_and_one_cycles_max_lr_is_compared() -> None:
    with pytest.raises(ValueError, match=r"lr 0.2 on resume \(the checkpoint's run had 0.1\) cannot move SequentialLR"):
        check_lr_change(0, 0.1, 0.2, [SCHEDULERS["sequential"](sgd())])
    check_lr_change(0, 0.1, 0.2, [lr_scheduler.StepLR(sgd(), 2)])  # rescaled from where it stands

    def one_cycle(max_lr: float) -> torch.optim.Optimizer:
        optimizer = sgd()
        lr_scheduler.OneCycleLR(optimizer, max_lr=max_lr, total_steps=100)
        return optimizer

    stored = one_cycle(1.0).state_dict()["param_groups"]
    check_scheduled_groups(0, stored, one_cycle(1.0))
    with pytest.raises(ValueError, match="scheduler set max_lr=1.0 in the checkpoint's run and max_lr=2.0 in this one"):
        check_scheduled_groups(0, stored, one_cycle(2.0))


@pytest.mark.parametrize(
    "extra, message",
    [
        (
            ["--model.init_args.optimizer", "torch.optim.SGD", "--model.init_args.optimizer.init_args.lr", "0.1"],
            r"optimizer 0 is a torch.optim.adam.Adam, this run's a torch.optim.sgd.SGD",
        ),
        (["--data.batch_size", "32"], r"reached with --data.batch_size 16, this run has 32"),
        (
            ["--data", "FashionMNISTDataModule"],
            r"reached with the training data's content \(fingerprint\) \d+, this run has \d+ \(the checkpoint's "
            r"data: MNIST \(torchvision\); this run's: FashionMNIST \(torchvision\)\)",
        ),
        (["--data.seed", "7"], r"reached with --data.seed 42, this run has 7"),
    ],
    ids=["optimizer-class", "batch-size", "dataset", "data-seed"],
)
def test_a_resumed_fit_refuses_what_the_checkpoints_state_cannot_honour(
    extra: list[str], message: str, vae_run: Path, data_dir: Path, tmp_path: Path
) -> None:
    with pytest.raises(ConfigError, match=message):  # a setting: the command exits with 2
        run_cli("fit", *tiny_args("vae", data_dir, tmp_path / "resumed", "--ckpt_path", str(vae_run), *extra))
    assert not (tmp_path / "resumed").exists(), "a refused resume left files that look like a run"


def test_a_resume_with_other_data_settings_is_refused_before_anything_is_written_where_the_data_are_not_fetched(
    vae_run: Path, tmp_path: Path
) -> None:
    # Data not fetched yet (the README's MNIST run offline, a torchvision set to download): the settings were checked
    # only as the checkpoint loaded, after the logger had written a run folder with its config.
    not_fetched = tmp_path / "not_fetched"
    not_fetched.mkdir()
    with pytest.raises(ConfigError, match=r"reached with --data.seed 42, this run has 7"):
        run_cli("fit", *tiny_args("vae", not_fetched, tmp_path / "resumed", "--ckpt_path", str(vae_run),
                                  "--data.seed", "7"))  # fmt: skip
    assert not (tmp_path / "resumed").exists(), "a refused resume left files that look like a run"
    assert not any(not_fetched.iterdir()), "a refused resume fetched data"


def test_a_fine_tuned_deep_ae_refuses_a_pretraining_schedule_that_would_pretrain_it_again(
    data_dir: Path, tmp_path: Path
) -> None:
    run = ["--model.init_args.hidden_dims", "[16,8]", "--trainer.max_epochs", "4"]  # 3 RBMs x 1 epoch, then fine-tune
    run_cli("fit", *tiny_args("deep_ae_rbm", data_dir, tmp_path / "run", *run))
    checkpoint = next((tmp_path / "run").rglob("last.ckpt"))
    more = ["--trainer.max_epochs", "6", "--ckpt_path", str(checkpoint)]
    with pytest.raises(ValueError, match=r"trained with pretrain='rbm', pretrain_epochs=1 and has reached epoch 3; "
                                         r"this run's pretrain='rbm', pretrain_epochs=3 would give epoch 1 another "
                                         r"phase than it had \(the checkpoint is fine-tuning\)"):  # fmt: skip
        run_cli("fit", *tiny_args("deep_ae_rbm", data_dir, tmp_path / "resumed", *run, *more,
                                  "--model.init_args.pretrain_epochs", "3"))  # fmt: skip
    assert not (tmp_path / "resumed").exists()
    cli = run_cli("fit", *tiny_args("deep_ae_rbm", data_dir, tmp_path / "resumed", *run, *more))  # the same schedule
    assert cli.trainer.current_epoch == 6 and cli.model.unrolled


def test_a_precision_lightning_would_replace_is_refused(data_dir: Path, tmp_path: Path) -> None:
    if torch.cuda.is_available():
        pytest.skip("16-mixed runs as asked on a GPU")
    with pytest.raises(ValueError, match=r"--trainer.precision 16-mixed is not available on CPUAccelerator: Lightning "
                                         r"would train in bf16-mixed instead"):  # fmt: skip
        run_cli("fit", *tiny_args("ae", data_dir, tmp_path, "--trainer.precision", "16-mixed",
                                  "--trainer.accelerator", "cpu"))  # fmt: skip


@pytest.mark.parametrize("damage", ["truncated", "random bytes", "not Lightning", "a directory"])
def test_an_unreadable_checkpoint_is_an_error_naming_it(
    damage: str, vae_run: Path, data_dir: Path, tmp_path: Path
) -> None:
    bad = tmp_path / "bad.ckpt"
    if damage == "truncated":
        bad.write_bytes(vae_run.read_bytes()[: vae_run.stat().st_size // 2])
    elif damage == "random bytes":
        bad.write_bytes(torch.randint(0, 256, (5000,), dtype=torch.uint8).numpy().tobytes())
    elif damage == "not Lightning":
        torch.save({"weights": torch.zeros(2)}, bad)
    else:
        bad.mkdir()
    expected = {"truncated": "is not a readable checkpoint", "random bytes": "is not a readable checkpoint",
                "not Lightning": "is not a Lightning checkpoint", "a directory": "is a directory"}[damage]  # fmt: skip
    with pytest.raises((ValueError, FileNotFoundError), match=f"--ckpt_path {bad} {expected}"):
        run_cli("test", *tiny_args("vae", data_dir, tmp_path / "t", "--ckpt_path", str(bad)))


def test_at_an_epoch_end_another_batch_size_is_taken_but_other_data_are_not(data_dir: Path, tmp_path: Path) -> None:
    run_cli("fit", *tiny_args("ae", data_dir, tmp_path / "run", "--trainer.max_epochs", "1"))
    checkpoint = next((tmp_path / "run").rglob("last.ckpt"))
    more = ["--trainer.max_epochs", "2", "--ckpt_path", str(checkpoint)]
    with pytest.raises(ValueError, match=r"reached with --data.seed 42, this run has 7"):  # another validation split
        run_cli("fit", *tiny_args("ae", data_dir, tmp_path / "seed", *more, "--data.seed", "7"))
    cli = run_cli("fit", *tiny_args("ae", data_dir, tmp_path / "bigger", *more, "--data.batch_size", "32"))
    assert cli.trainer.current_epoch == 2 and cli.trainer.global_step == 14 + 7


def test_a_resume_that_turns_fused_on_places_the_step_counts_where_the_fused_optimizer_needs_them() -> None:
    # A run with an unfused Adam (bf16-mixed, or fused: false) keeps its step counts as such an Adam does: on the CPU,
    # in the default dtype. Resumed with the fused default, the fused kernel needs them float32 on the parameters'
    # device (on CUDA a CPU count is an error); here a float64 count stands for the count in the wrong place.
    weight = torch.nn.Parameter(torch.zeros(3, dtype=torch.float64))
    unfused = torch.optim.Adam([weight], fused=False)
    torch.set_default_dtype(torch.float64)
    try:
        weight.grad = torch.ones_like(weight)
        unfused.step()
    finally:
        torch.set_default_dtype(torch.float32)
    checkpoint: dict = {}
    callback = OptimizerSettingsOnResume()
    callback.on_save_checkpoint(SimpleNamespace(optimizers=[unfused], lr_scheduler_configs=[]), None, checkpoint)
    fused = torch.optim.Adam([weight], fused=True)
    fused.load_state_dict(unfused.state_dict())  # as Lightning restores it
    assert fused.state[weight]["step"].dtype == torch.float64
    callback.on_load_checkpoint(None, None, checkpoint)
    callback.on_train_start(SimpleNamespace(optimizers=[fused], lr_scheduler_configs=[]), None)
    assert fused.param_groups[0]["fused"] is True
    assert fused.state[weight]["step"].dtype == torch.float32
    assert fused.state[weight]["step"].item() == 1


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_a_bf16_mixed_run_resumes_in_32_with_the_fused_optimizer_on_gpu(data_dir: Path, tmp_path: Path) -> None:
    gpu = ["--trainer.accelerator", "gpu", "--trainer.devices", "1", "--trainer.limit_val_batches", "1"]
    run_cli("fit", *tiny_args("ae", data_dir, tmp_path / "run", *gpu, "--trainer.precision", "bf16-mixed",
                              "--trainer.max_steps", "2"))  # fmt: skip
    checkpoint = next((tmp_path / "run").rglob("last.ckpt"))
    cli = run_cli("fit", *tiny_args("ae", data_dir, tmp_path / "resumed", *gpu, "--trainer.max_steps", "4",
                                    "--ckpt_path", str(checkpoint)))  # fmt: skip
    assert cli.trainer.global_step == 4
    assert cli.trainer.optimizers[0].param_groups[0]["fused"] is True


def test_the_resume_callback_refuses_a_new_lr_that_the_schedule_ignores_as_the_command_does() -> None:
    def cyclic(lr: float) -> tuple[torch.optim.Optimizer, lr_scheduler.CyclicLR]:
        optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr, momentum=0.9)
        return optimizer, lr_scheduler.CyclicLR(optimizer, base_lr=0.01, max_lr=0.1)

    callback, (optimizer, scheduler) = OptimizerSettingsOnResume(), cyclic(0.2)
    trainer = SimpleNamespace(optimizers=[optimizer], lr_scheduler_configs=[SimpleNamespace(scheduler=scheduler)])
    callback.on_load_checkpoint(trainer, None, {callback.key: [optimizer_settings(cyclic(0.1)[0])]})
    callback.on_fit_start(trainer, None)
    with pytest.raises(ValueError, match=r"lr 0.2 on resume \(the checkpoint's run had 0.1\) cannot move CyclicLR"):
        callback.on_train_start(trainer, None)


def test_the_resume_callback_refuses_a_group_setting_of_a_new_schedule_before_lightning_restores_the_old() -> None:
    def one_cycle(max_lr: float) -> torch.optim.Optimizer:
        optimizer = sgd()
        lr_scheduler.OneCycleLR(optimizer, max_lr=max_lr, total_steps=100)
        return optimizer

    callback, optimizer = OptimizerSettingsOnResume(), one_cycle(2.0)
    trainer = SimpleNamespace(optimizers=[optimizer])
    callback.on_load_checkpoint(trainer, None, {"optimizer_states": [one_cycle(1.0).state_dict()]})
    with pytest.raises(ValueError, match="scheduler set max_lr=1.0 in the checkpoint's run and max_lr=2.0 in this one"):
        callback.on_fit_start(trainer, None)
