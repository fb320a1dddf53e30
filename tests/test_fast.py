"""The opt-in fast path (``configs/fast.yaml``, :class:`StepsPerBatch`): the same training, the
same logs and checkpoints, and a clear refusal of what it cannot keep exact."""

from __future__ import annotations

import csv
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint, TQDMProgressBar
from tiny_runs import ROOT, run_cli, tiny_args
from torch.optim.lr_scheduler import StepLR

from ae_lightning import VAE, AdversarialAutoencoder, AutoDecoder, Autoencoder, DenoisingAutoencoder
from ae_lightning.base import AutoencoderModule
from ae_lightning.training.fast import GroupedBatches, StepsPerBatch
from datamodules import MNISTDataModule, TensorBatchLoader

TINY = {"hidden_dims": [32, 16], "latent_dim": 4}
VARIANTS = [
    (Autoencoder, {}),
    (VAE, {"nll_samples": 4}),
    (DenoisingAutoencoder, {}),  # random corruption: the same draws in the same order
    (AdversarialAutoencoder, {"discriminator_hidden_dims": [16]}),  # three optimizers, manual optimization either way
    (AutoDecoder, {"inference_steps": 2}),  # per-sample codes looked up by the batch's indices
]
FAST = ["--config", str(ROOT / "configs" / "fast.yaml"), "--fast.steps", "4", "--trainer.log_every_n_steps", "20"]
BATCH_11 = ["--data.batch_size", "11"]  # 220 tiny training images: 20 steps per epoch, a multiple of 4


def fit(cls: type[AutoencoderModule], kwargs: dict, data_dir: Path, root: Path, steps: int = 1, **trainer_kwargs):
    torch.manual_seed(0)
    model = cls(**TINY, **kwargs)
    settings = {
        "accelerator": "cpu", "logger": False, "enable_checkpointing": False, "enable_progress_bar": False,
        "enable_model_summary": False, "limit_val_batches": 1, "default_root_dir": root, "log_every_n_steps": 20,
        "callbacks": [StepsPerBatch(steps)],
    }  # fmt: skip
    trainer = L.Trainer(**{**settings, **trainer_kwargs})
    trainer.fit(model, datamodule=MNISTDataModule(data_dir=str(data_dir), batch_size=11))
    return trainer


@pytest.mark.parametrize("cls, kwargs", VARIANTS, ids=[cls.__name__ for cls, _ in VARIANTS])
def test_several_steps_per_batch_train_the_same_weights(
    cls: type[AutoencoderModule], kwargs: dict, data_dir: Path, tmp_path: Path
) -> None:
    # 11 steps: with 4 steps per Lightning batch the third batch holds more steps than max_steps leaves.
    one = fit(cls, kwargs, data_dir, tmp_path / "one", max_steps=11)
    three = fit(cls, kwargs, data_dir, tmp_path / "three", steps=4, max_steps=11)
    assert one.global_step == three.global_step == 11
    for name, value in one.lightning_module.state_dict().items():
        assert torch.equal(three.lightning_module.state_dict()[name], value), f"{name} differs"
    assert "training_step" not in vars(three.lightning_module)  # the model's own training_step again


def test_schedulers_step_every_epoch_and_training_matches_over_epochs(data_dir: Path, tmp_path: Path) -> None:
    kwargs = {"lr_scheduler": lambda optimizer: StepLR(optimizer, step_size=1, gamma=0.5)}
    one = fit(Autoencoder, kwargs, data_dir, tmp_path / "one", max_epochs=2)
    six = fit(Autoencoder, kwargs, data_dir, tmp_path / "six", steps=5, max_epochs=2)
    assert one.global_step == six.global_step == 40 and six.num_training_batches == 4
    for trainer in (one, six):
        assert trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(0.25e-3)
    for name, value in one.lightning_module.state_dict().items():
        assert torch.equal(six.lightning_module.state_dict()[name], value), f"{name} differs"


@pytest.mark.parametrize("batch_size", ["11", "16"], ids=["epoch-of-20-steps", "epoch-of-14-steps"])
def test_logs_checkpoints_and_progress_count_optimizer_steps(batch_size: str, data_dir: Path, tmp_path: Path) -> None:
    """The same ``metrics.csv`` (steps and values) and checkpoint names with and without the fast path, also where an
    epoch's steps are no multiple of the fast path's 4 (then without step checkpoints)."""
    by_steps = ["--checkpoint.every_n_train_steps", "8", "--trainer.val_check_interval", "8"]
    settings = ["--trainer.logger", "CSVLogger", "--trainer.log_every_n_steps", "6", "--trainer.max_steps", "30",
                "--trainer.limit_val_batches", "1", "--checkpoint.save_top_k", "-1", "--data.batch_size", batch_size,
                *(by_steps if batch_size == "11" else [])]  # fmt: skip
    outputs = {}
    for name, extra in (("default", []), ("fast", FAST)):
        root = tmp_path / name
        run_cli("fit", *tiny_args("ae", data_dir, root, *extra, *settings, "--trainer.logger.save_dir", str(root)))
        with open(next(root.rglob("metrics.csv"))) as file:
            rows = list(csv.DictReader(file))
        outputs[name] = rows, sorted(path.name for path in root.rglob("*.ckpt"))
    rows, checkpoints = outputs["default"]
    assert [row["step"] for row in rows if row["train/loss"]][:4] == ["5", "11", "17", "23"]
    assert len([row for row in rows if row["val/loss"]]) >= 2
    assert outputs["fast"] == outputs["default"]
    assert "last.ckpt" in checkpoints and ("best-epoch=1-step=24.ckpt" in checkpoints) == (batch_size == "11")


class RecordBar(Callback):
    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        bar = trainer.progress_bar_callback
        self.seen = (type(bar).__name__, bar.total_train_batches, bar.train_progress_bar.n)


def test_progress_bar_counts_steps(data_dir: Path, tmp_path: Path) -> None:
    record = RecordBar()
    fit(Autoencoder, {}, data_dir, tmp_path, steps=4, max_epochs=1, enable_progress_bar=True,
        callbacks=[StepsPerBatch(4), TQDMProgressBar(refresh_rate=3), record])  # fmt: skip
    assert record.seen == ("StepsProgressBar", 20, 20)


@pytest.mark.parametrize(
    "option, value, message",
    [
        ("gradient_clip_val", "1.0", r"--trainer.gradient_clip_val 1.0 needs Lightning's automatic optimization"),
        ("accumulate_grad_batches", "2", r"--trainer.accumulate_grad_batches 2 needs Lightning's automatic"),
        ("fast_dev_run", "true", r"--trainer.fast_dev_run runs a few Lightning batches, each 4 optimizer steps"),
        ("limit_train_batches", "0.5", r"--trainer.limit_train_batches 0.5 is a fraction of an epoch"),
        ("log_every_n_steps", "3", r"--trainer.log_every_n_steps 3 is less than a Lightning batch .*steps=4"),
        ("val_check_interval", "6", r"--trainer.val_check_interval 6 counts optimizer steps"),
        ("checkpoint.every_n_train_steps", "6", r"ModelCheckpoint\(every_n_train_steps=6\) saves every 6 steps"),
        (
            "data.batch_size",
            "16",
            r"an epoch has 14 steps, which ModelCheckpoint\(every_n_train_steps\) and "
            r"val_check_interval need, not a multiple of 4",
        ),
    ],
)
def test_settings_that_cannot_keep_their_meaning_are_refused(
    option: str, value: str, message: str, data_dir: Path, tmp_path: Path
) -> None:
    option = option if "." in option else f"trainer.{option}"
    every = ["--checkpoint.every_n_train_steps", "8", "--trainer.val_check_interval", "8"]
    every = every if option == "data.batch_size" else []
    with pytest.raises(ValueError, match=message):
        run_cli("fit", *tiny_args("ae", data_dir, tmp_path, *BATCH_11, *FAST, *every, f"--{option}", value))
    assert not list(tmp_path.rglob("*.ckpt"))


def test_a_resume_between_multiples_is_refused(data_dir: Path, tmp_path: Path) -> None:
    run_cli("fit", *tiny_args("ae", data_dir, tmp_path, *BATCH_11, *FAST, "--trainer.max_steps", "6"))
    last = next(tmp_path.rglob("last.ckpt"))
    with pytest.raises(ValueError, match=r"the run resumes at step 6, not a multiple of 4"):
        run_cli("fit", *tiny_args("ae", data_dir, tmp_path, *BATCH_11, *FAST, "--ckpt_path", str(last)))


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


def test_bad_steps_is_an_error_naming_it() -> None:
    for bad in (0, -2, 1.5, True):
        with pytest.raises(ValueError, match=f"steps must be an integer >= 1, got {bad!r}"):
            StepsPerBatch(bad)


def test_step_checkpoints_on_multiples_are_all_written(data_dir: Path, tmp_path: Path) -> None:
    saved = ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=8, save_top_k=-1, filename="{step}")
    torch.manual_seed(0)
    trainer = L.Trainer(
        accelerator="cpu", max_steps=40, logger=False, enable_progress_bar=False, limit_val_batches=0,
        log_every_n_steps=20, callbacks=[saved, StepsPerBatch(4)], default_root_dir=tmp_path,
    )  # fmt: skip
    trainer.fit(Autoencoder(**TINY), datamodule=MNISTDataModule(data_dir=str(data_dir), batch_size=11))
    assert sorted(int(path.stem.split("=")[1]) for path in tmp_path.glob("step=*.ckpt")) == list(range(8, 41, 8))
