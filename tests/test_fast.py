"""The opt-in fast path (``configs/fast.yaml``: the model's and the datamodule's ``steps_per_batch``): the same
training and checkpoints, and a clear refusal of what it cannot keep exact."""

from __future__ import annotations

import csv
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from tiny_runs import ROOT, last_checkpoint, run_cli, tiny_args
from torch.optim.lr_scheduler import StepLR

from ae_lightning import VAE, AdversarialAutoencoder, AutoDecoder, Autoencoder, DenoisingAutoencoder
from ae_lightning.base import AutoencoderModule
from ae_lightning.cli import ConfigError
from ae_lightning.training.fast import check_resume
from datamodules import MNISTDataModule, TensorBatchLoader
from datamodules.loader import GroupedBatches

TINY = {"hidden_dims": [32, 16], "latent_dim": 4}
VARIANTS = [
    (Autoencoder, {}),
    (VAE, {"nll_samples": 4}),
    (DenoisingAutoencoder, {}),  # random corruption: the same draws in the same order
    (AdversarialAutoencoder, {"discriminator_hidden_dims": [16]}),  # three optimizers, manual optimization either way
    (AutoDecoder, {"inference_steps": 2}),  # per-sample codes looked up by the batch's indices
]
FAST = ["--config", str(ROOT / "configs" / "fast.yaml"), "--fast.steps", "4"]
BATCH_11 = ["--data.batch_size", "11"]  # 220 tiny training images: 20 steps per epoch, a multiple of 4


def fit(cls: type[AutoencoderModule], kwargs: dict, data_dir: Path, root: Path, steps: int = 1, **trainer_kwargs):
    torch.manual_seed(0)
    model = cls(**TINY, **kwargs, steps_per_batch=steps)
    settings = {
        "accelerator": "cpu", "logger": False, "enable_checkpointing": False, "enable_progress_bar": False,
        "enable_model_summary": False, "limit_val_batches": 1, "default_root_dir": root,
    }  # fmt: skip
    trainer = L.Trainer(**{**settings, **trainer_kwargs})
    trainer.fit(model, datamodule=MNISTDataModule(data_dir=str(data_dir), batch_size=11, steps_per_batch=steps))
    return trainer


class IntervalScheduled(Autoencoder):
    """Schedulers of a ``configure_optimizers`` of one's own: one every 3 optimizer steps, one every 2 epochs."""

    def configure_optimizers(self) -> tuple[list, list]:
        optimizer = torch.optim.Adam(self.parameters(), lr=1e-3)
        every_3_steps = {"scheduler": StepLR(optimizer, 1, gamma=0.5), "interval": "step", "frequency": 3}
        return [optimizer], [every_3_steps, {"scheduler": StepLR(optimizer, 1, gamma=0.1), "frequency": 2}]


@pytest.mark.parametrize("cls, kwargs", VARIANTS, ids=[cls.__name__ for cls, _ in VARIANTS])
def test_several_steps_per_batch_train_the_same_weights(
    cls: type[AutoencoderModule], kwargs: dict, data_dir: Path, tmp_path: Path
) -> None:
    # 11 steps: with 4 steps per Lightning batch the third batch holds more steps than max_steps leaves.
    one = fit(cls, kwargs, data_dir, tmp_path / "one", max_steps=11)
    four = fit(cls, kwargs, data_dir, tmp_path / "four", steps=4, max_steps=11)
    assert one.global_step == four.global_step == 11 and four.num_training_batches == 5
    for name, value in one.lightning_module.state_dict().items():
        assert torch.equal(four.lightning_module.state_dict()[name], value), f"{name} differs"


def test_schedulers_step_every_epoch_and_training_matches_over_epochs(data_dir: Path, tmp_path: Path) -> None:
    kwargs = {"lr_scheduler": lambda optimizer: StepLR(optimizer, step_size=1, gamma=0.5)}
    one = fit(Autoencoder, kwargs, data_dir, tmp_path / "one", max_epochs=2)
    five = fit(Autoencoder, kwargs, data_dir, tmp_path / "five", steps=5, max_epochs=2)
    assert one.global_step == five.global_step == 40 and five.num_training_batches == 4
    for trainer in (one, five):
        assert trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(0.25e-3)
    for name, value in one.lightning_module.state_dict().items():
        assert torch.equal(five.lightning_module.state_dict()[name], value), f"{name} differs"


def test_schedulers_keep_their_interval_and_frequency(data_dir: Path, tmp_path: Path) -> None:
    # the fast path stepped every scheduler once an epoch: the step-interval one never, the other after each epoch
    one = fit(IntervalScheduled, {}, data_dir, tmp_path / "one", max_epochs=2)
    four = fit(IntervalScheduled, {}, data_dir, tmp_path / "four", steps=4, max_epochs=2)
    for trainer in (one, four):  # epochs of 20 steps: 6 steps of the first each epoch, 1 of the second in all
        assert [config.scheduler.last_epoch for config in trainer.lr_scheduler_configs] == [12, 1]
        assert trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(1e-3 * 0.5**12 * 0.1)
    for name, value in one.lightning_module.state_dict().items():
        assert torch.equal(four.lightning_module.state_dict()[name], value), f"{name} differs"


def test_checkpoints_count_optimizer_steps_and_logs_count_lightning_batches(data_dir: Path, tmp_path: Path) -> None:
    """The same checkpoints (names and weights) with and without the fast path; its loggers write every
    ``log_every_n_steps`` Lightning batches (here 2 of 4 steps: every 8 steps) the terms of their last step."""
    settings = ["--trainer.logger", "CSVLogger", "--trainer.max_steps", "30", "--trainer.limit_val_batches", "1",
                "--checkpoint.save_top_k", "-1", "--checkpoint.every_n_train_steps", "8", *BATCH_11]  # fmt: skip
    outputs = {}
    for name, extra in (
        ("default", ["--trainer.log_every_n_steps", "8"]),
        ("fast", [*FAST, "--trainer.log_every_n_steps", "2"]),
    ):
        root = tmp_path / name
        run_cli("fit", *tiny_args("ae", data_dir, root, *extra, *settings, "--trainer.logger.save_dir", str(root)))
        with open(next(root.rglob("metrics.csv"))) as file:
            rows = [row for row in csv.DictReader(file) if row["train/loss"]]
        checkpoints = {path.name: torch.load(path, weights_only=True)["state_dict"] for path in root.rglob("*.ckpt")}
        outputs[name] = rows, checkpoints
    (default_rows, default_checkpoints), (fast_rows, fast_checkpoints) = outputs["default"], outputs["fast"]
    assert "best-epoch=1-step=24.ckpt" in fast_checkpoints and sorted(fast_checkpoints) == sorted(default_checkpoints)
    for name, state in fast_checkpoints.items():
        assert all(torch.equal(value, default_checkpoints[name][key]) for key, value in state.items()), name
    assert [row["step"] for row in default_rows] == ["7", "15", "23"]
    assert [row["step"] for row in fast_rows] == ["1", "3", "5", "7"]  # Lightning batches of 4 steps (the last of 2)
    for mine, theirs in zip(fast_rows, default_rows):
        assert (mine["train/loss"], mine["train/recon"]) == (theirs["train/loss"], theirs["train/recon"])


@pytest.mark.parametrize(
    "option, value, message",
    [
        ("trainer.gradient_clip_val", "1.0", r"--trainer.gradient_clip_val 1.0: the fast path \(--fast.steps 4\)"),
        (
            "trainer.accumulate_grad_batches",
            "2",
            r"--trainer.accumulate_grad_batches 2: the fast path .* no gradient "
            r"clipping or accumulation; train without configs/fast.yaml",
        ),
        ("checkpoint.every_n_train_steps", "6", r"ModelCheckpoint\(every_n_train_steps=6\) saves every 6 optimizer"),
        ("data.batch_size", "16", r"an epoch has 14 optimizer steps, not a multiple of the fast path's 4"),
        ("fast.steps", "0", r"--fast.steps 0: expected an integer >= 1"),
        ("trainer.fast_dev_run", "2", r"fast_dev_run=2 runs 2 optimizer steps on the fast path .* before any valid"),
    ],
)
def test_settings_that_cannot_keep_their_meaning_are_refused(
    option: str, value: str, message: str, data_dir: Path, tmp_path: Path
) -> None:
    every = ["--checkpoint.every_n_train_steps", "8"] if option == "data.batch_size" else []
    with pytest.raises(Exception, match=message):
        run_cli("fit", *tiny_args("ae", data_dir, tmp_path, *BATCH_11, *FAST, *every, f"--{option}", value))
    assert not list(tmp_path.rglob("*.ckpt"))


@pytest.mark.parametrize(
    "setting",
    [
        ["--trainer.fast_dev_run", "2"],
        ["--checkpoint.every_n_train_steps", "6"],
        ["--trainer.callbacks+=lightning.pytorch.callbacks.EMAWeightAveraging"],
    ],
    ids=["fast_dev_run", "every_n_train_steps", "weight-averaging"],
)
def test_the_commands_fast_path_settings_are_refused_as_settings_before_any_file(
    setting: list[str], data_dir: Path, tmp_path: Path
) -> None:
    # A ConfigError: ae-lightning prints it with exit status 2 (a setting), under DDP once, before any process starts
    with pytest.raises(ConfigError):
        run_cli("fit", *tiny_args("ae", data_dir, tmp_path / "run", *BATCH_11, *FAST, *setting))
    assert not (tmp_path / "run").exists()


def test_an_epoch_that_is_no_multiple_of_the_groups_is_refused_as_a_setting(data_dir: Path, tmp_path: Path) -> None:
    # found only once the loader is built, inside the run, but a setting all the same: the command exits with 2
    every = ["--checkpoint.every_n_train_steps", "8", "--data.batch_size", "16"]
    with pytest.raises(ConfigError, match="an epoch has 14 optimizer steps, not a multiple of the fast path's 4"):
        run_cli("fit", *tiny_args("ae", data_dir, tmp_path, *FAST, *every))
    assert not list(tmp_path.rglob("*.ckpt"))


class ValidationSteps(Callback):
    def __init__(self) -> None:
        self.steps: list[int] = []  # the global step of each validation of fit

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.steps += [] if trainer.sanity_checking else [trainer.global_step]


@pytest.mark.parametrize(
    "settings, steps, validated",
    [({"limit_train_batches": 3, "val_check_interval": 2, "max_epochs": 1}, 12, [8]), ({"fast_dev_run": True}, 1, [1])],
    ids=["limit_train_batches-val_check_interval", "fast_dev_run"],
)
def test_integer_batch_settings_count_lightning_batches(
    settings: dict, steps: int, validated: list[int], data_dir: Path, tmp_path: Path
) -> None:
    validations = ValidationSteps()
    trainer = fit(Autoencoder, {}, data_dir, tmp_path, steps=4, callbacks=[validations], **settings)
    assert trainer.global_step == steps and validations.steps == validated


def test_a_model_and_a_datamodule_that_group_differently_are_refused(data_dir: Path, tmp_path: Path) -> None:
    trainer = L.Trainer(accelerator="cpu", max_steps=2, logger=False, enable_checkpointing=False)
    with pytest.raises(ValueError, match=r"the model has steps_per_batch=4 and MNISTDataModule steps_per_batch=1"):
        trainer.fit(Autoencoder(**TINY, steps_per_batch=4), datamodule=MNISTDataModule(data_dir=str(data_dir)))


def test_weight_averaging_is_refused_on_the_fast_path(data_dir: Path, tmp_path: Path) -> None:
    # Lightning's WeightAveraging updates at each Lightning batch's end: once per 4 optimizer steps here
    ema = ["--trainer.callbacks+=lightning.pytorch.callbacks.EMAWeightAveraging"]
    refused = "EMAWeightAveraging averages the weights once per Lightning batch.*; remove it, or train without the fast"
    with pytest.raises(ValueError, match=refused):
        run_cli("fit", *tiny_args("ae", data_dir, tmp_path, *BATCH_11, *FAST, *ema))


def test_a_resume_between_multiples_is_refused(data_dir: Path, tmp_path: Path) -> None:
    run_cli("fit", *tiny_args("ae", data_dir, tmp_path, *BATCH_11, *FAST, "--trainer.max_steps", "6"))
    last = next(tmp_path.rglob("last.ckpt"))
    with pytest.raises(ValueError, match=r"the run resumes at step 6, not a multiple of the fast path's 4"):
        run_cli("fit", *tiny_args("ae", data_dir, tmp_path, *BATCH_11, *FAST, "--ckpt_path", str(last)))


def test_a_run_whose_epoch_is_no_multiple_of_its_steps_resumes_exactly(data_dir: Path, tmp_path: Path) -> None:
    # 14 steps per epoch, in Lightning batches of 4, 4, 4 and 2: the checkpoints at the epoch's end (step 14) and one
    # Lightning batch into the next epoch (step 18) are at no multiple of 4; both were refused
    quick = [*FAST, "--images.every_n_epochs", "0", "--trainer.limit_val_batches", "1"]
    run_cli("fit", *tiny_args("ae", data_dir, tmp_path / "reference", *quick))
    expected = last_checkpoint(tmp_path / "reference")
    for stop in ("--trainer.max_epochs=1", "--trainer.max_steps=18"):
        run_cli("fit", *tiny_args("ae", data_dir, tmp_path / stop, *quick, stop))
        last = str(next((tmp_path / stop).rglob("last.ckpt")))
        run_cli("fit", *tiny_args("ae", data_dir, tmp_path / f"{stop}-resumed", *quick, "--ckpt_path", last))
        resumed = last_checkpoint(tmp_path / f"{stop}-resumed")
        assert resumed["global_step"] == expected["global_step"] == 28
        for name, value in expected["state_dict"].items():
            assert torch.equal(resumed["state_dict"][name], value), f"{name} differs after {stop}"


def test_a_resume_across_the_fast_path_is_refused(data_dir: Path, tmp_path: Path) -> None:
    run_cli("fit", *tiny_args("ae", data_dir, tmp_path, *BATCH_11, *FAST, "--trainer.max_steps", "8"))
    last = str(next(tmp_path.rglob("last.ckpt")))
    for other in ([], [*FAST, "--fast.steps", "2"]):
        with pytest.raises(ValueError, match=r"trained with fast.steps=4 and this run has fast.steps=[12]: resume "
                           r"with --fast.steps 4"):  # fmt: skip
            run_cli("fit", *tiny_args("ae", data_dir, tmp_path, *BATCH_11, *other, "--ckpt_path", last))
    resumed = run_cli("fit", *tiny_args("ae", data_dir, tmp_path, *BATCH_11, *FAST, "--ckpt_path", last,
                                        "--trainer.max_steps", "12"))  # fmt: skip
    assert resumed.trainer.global_step == 12
    tested = run_cli("test", *tiny_args("ae", data_dir, tmp_path / "test", *BATCH_11, "--ckpt_path", last))
    assert torch.isfinite(tested.trainer.callback_metrics["test/loss"])  # evaluation needs no fast path


def test_fast_steps_1_turns_off_the_fast_path_of_a_fast_runs_config(data_dir: Path, tmp_path: Path) -> None:
    # the run's config.yaml records fast.steps 4 and both steps_per_batch 4; --fast.steps 1 kept the 4 (10 in the
    # config) and trained on the fast path
    run_cli("fit", *tiny_args("ae", data_dir, tmp_path / "fast", *BATCH_11, *FAST, "--trainer.max_steps", "4"))
    recorded = str(next((tmp_path / "fast").rglob("config.yaml")))
    plain = run_cli("fit", "--config", recorded, "--fast.steps", "1", "--trainer.default_root_dir",
                    str(tmp_path / "plain"))  # fmt: skip
    assert plain.model.steps_per_batch == plain.datamodule.hparams.steps_per_batch == 1
    assert plain.model.automatic_optimization and plain.trainer.global_step == 4


def test_grouped_batches_are_the_same_batches_and_resume_with_another_group_size() -> None:
    images = torch.arange(40 * 4, dtype=torch.uint8).reshape(40, 2, 2)

    def loader() -> TensorBatchLoader:
        return TensorBatchLoader(images, torch.zeros(40), torch.arange(40), 6, True, 0)

    single = [index.tolist() for _, _, index in loader()]  # 7 batches: 6 of 6 images and one of 4
    grouped = GroupedBatches(loader(), 3)
    groups = list(grouped)
    assert [len(group) for group in groups] == [3, 3, 1] and len(grouped) == 3
    assert [index.tolist() for group in groups for _, _, index in group] == single

    partway = GroupedBatches(loader(), 3)
    next(iter(partway))
    state = partway.state_dict()
    assert state["batches_done"] == 3  # batches, not groups
    resumed = GroupedBatches(loader(), 2)
    resumed.load_state_dict(state)
    assert [index.tolist() for group in resumed for _, _, index in group] == single[3:]


def test_step_checkpoints_on_multiples_are_all_written(data_dir: Path, tmp_path: Path) -> None:
    saved = ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=8, save_top_k=-1, filename="{step}")
    torch.manual_seed(0)
    trainer = L.Trainer(
        accelerator="cpu", max_steps=40, logger=False, enable_progress_bar=False, limit_val_batches=0,
        callbacks=[saved], default_root_dir=tmp_path,
    )  # fmt: skip
    datamodule = MNISTDataModule(data_dir=str(data_dir), batch_size=11, steps_per_batch=4)
    trainer.fit(Autoencoder(**TINY, steps_per_batch=4), datamodule=datamodule)
    assert sorted(int(path.stem.split("=")[1]) for path in tmp_path.glob("step=*.ckpt")) == list(range(8, 41, 8))


def test_a_checkpoint_of_the_previous_fast_path_resumes_only_with_its_steps() -> None:
    previous = {"global_step": 8, "hyper_parameters": {}, "callbacks": {"StepsPerBatch{'steps': 4}": {"steps": 4}}}
    check_resume(previous, 4)
    with pytest.raises(ValueError, match=r"trained with fast.steps=4 and this run has fast.steps=1"):
        check_resume(previous, 1)


def test_a_datamodule_with_a_training_loader_of_its_own_is_refused_by_the_command() -> None:
    from jsonargparse import Namespace

    from ae_lightning.cli import _fast_path

    data = Namespace(class_path="datamodules.StreamingDataModule", init_args=Namespace())
    config = Namespace(fast=Namespace(steps=4), data=data, model=Namespace(class_path="ae_lightning.VAE", init_args={}))
    with pytest.raises(ConfigError, match=r"--fast.steps 4: StreamingDataModule takes no steps_per_batch"):
        _fast_path(config, fit=True)


def test_a_grouped_position_is_at_an_epochs_end_after_the_lightning_batches_the_trainer_takes_not_before() -> None:
    # limit_train_batches counts Lightning batches (lists of 3 here): 2 of them end the epoch after 6 of the 10 batches,
    # where another batch size may resume; after 3 batches the position is inside the epoch and must not be taken
    images = torch.zeros(40, 1, 2, 2, dtype=torch.uint8)

    def loader(batch_size: int) -> TensorBatchLoader:
        trainer = type("LimitedTrainer", (), {"num_training_batches": 2})()
        return TensorBatchLoader(images, torch.zeros(40), torch.arange(40), batch_size, True, 0, trainer=trainer)

    grouped, batches = GroupedBatches(loader(4), 3), []
    for group in grouped:
        batches += group
        if len(batches) == 3:
            with pytest.raises(ValueError, match=r"--data.batch_size 4, this run has 5"):
                loader(5).load_state_dict(grouped.state_dict())
        if len(batches) == 6:
            break
    assert grouped.state_dict()["epoch_batches"] == 6
    loader(5).load_state_dict(grouped.state_dict())  # the next epoch starts afresh
