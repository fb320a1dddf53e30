"""Several optimizer steps per Lightning batch (``steps_per_batch``): the same training, fewer Lightning batches."""

from __future__ import annotations

import math
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from tiny_runs import build_cli, tiny_args
from torch.optim.lr_scheduler import StepLR

from ae_lightning import VAE, AdversarialAutoencoder, AutoDecoder, Autoencoder, DenoisingAutoencoder
from ae_lightning.base import AutoencoderModule
from datamodules import MNISTDataModule, TensorBatchLoader

TINY = {"hidden_dims": [32, 16], "latent_dim": 4}
VARIANTS = [
    (Autoencoder, {}),
    (VAE, {"nll_samples": 4}),
    (DenoisingAutoencoder, {}),  # random corruption: the same draws in the same order
    (AdversarialAutoencoder, {"discriminator_hidden_dims": [16]}),  # three optimizers, manual optimization either way
    (AutoDecoder, {"inference_steps": 2}),  # per-sample codes looked up by the batch's indices
]


def fit(cls: type[AutoencoderModule], kwargs: dict, data_dir: Path, root: Path, **trainer_kwargs) -> L.Trainer:
    torch.manual_seed(0)
    model = cls(**TINY, **kwargs)
    trainer = L.Trainer(
        accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, limit_val_batches=1, default_root_dir=root, **trainer_kwargs,
    )  # fmt: skip
    trainer.fit(model, datamodule=MNISTDataModule(data_dir=str(data_dir), batch_size=16))
    return trainer


@pytest.mark.parametrize("cls, kwargs", VARIANTS, ids=[cls.__name__ for cls, _ in VARIANTS])
def test_several_steps_per_batch_train_the_same_weights(
    cls: type[AutoencoderModule], kwargs: dict, data_dir: Path, tmp_path: Path
) -> None:
    # 11 steps of 16 images: with 4 steps per Lightning batch the third batch holds more steps than max_steps leaves.
    one = fit(cls, kwargs, data_dir, tmp_path / "one", max_steps=11)
    four = fit(cls, {**kwargs, "steps_per_batch": 4}, data_dir, tmp_path / "four", max_steps=11)
    assert one.global_step == four.global_step == 11
    for name, value in one.lightning_module.state_dict().items():
        assert torch.equal(four.lightning_module.state_dict()[name], value), f"{name} differs"


def test_schedulers_step_every_epoch_and_training_matches_over_epochs(data_dir: Path, tmp_path: Path) -> None:
    kwargs = {"lr_scheduler": lambda optimizer: StepLR(optimizer, step_size=1, gamma=0.5)}
    one = fit(Autoencoder, kwargs, data_dir, tmp_path / "one", max_epochs=2)
    four = fit(Autoencoder, {**kwargs, "steps_per_batch": 4}, data_dir, tmp_path / "four", max_epochs=2)
    steps_per_epoch = math.ceil(216 / 16)  # 240 tiny images, 10% held out for validation
    assert one.global_step == four.global_step == 2 * steps_per_epoch
    assert four.num_training_batches == math.ceil(steps_per_epoch / 4)
    for trainer in (one, four):
        assert trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(0.25e-3)
    for name, value in one.lightning_module.state_dict().items():
        assert torch.equal(four.lightning_module.state_dict()[name], value), f"{name} differs"


def test_loader_groups_the_same_batches_and_resumes_with_another_group_size() -> None:
    images = torch.arange(40 * 4, dtype=torch.uint8).reshape(40, 2, 2)

    def loader(steps_per_batch: int) -> TensorBatchLoader:
        return TensorBatchLoader(images, torch.zeros(40), torch.arange(40), 6, True, 0, steps_per_batch=steps_per_batch)

    single = [index.tolist() for _, _, index in loader(1)]  # 7 batches: 6 of 6 images and one of 4
    grouped = loader(3)
    groups = list(grouped)
    assert [len(group) for group in groups] == [3, 3, 1] and len(grouped) == 3
    assert [index.tolist() for group in groups for _, _, index in group] == single

    partway = loader(3)
    iterator = iter(partway)
    next(iterator)
    state = partway.state_dict()
    assert state["batches_done"] == 3  # batches, not groups
    resumed = loader(2)
    resumed.load_state_dict(state)
    assert [index.tolist() for group in resumed for _, _, index in group] == single[3:]


def test_bad_steps_per_batch_is_an_error_naming_it() -> None:
    for bad in (0, -2, 1.5, True):
        with pytest.raises(ValueError, match=f"steps_per_batch must be a positive integer, got {bad!r}"):
            Autoencoder(steps_per_batch=bad)


@pytest.mark.parametrize(
    "every, message",
    [
        (6, r"every_n_train_steps=6\) saves when the global step is a multiple of 6, but with steps_per_batch=4"),
        # 14 steps per epoch (216 images, batch 16): after an epoch the step goes 14, 18, 22, 26, missing 16 and 24
        (8, r"advances 4 at a time within epochs of 14 steps .* Set steps_per_batch to a divisor of 2, e.g. 1"),
    ],
)
def test_step_checkpoints_that_the_step_would_jump_over_are_refused(
    every: int, message: str, data_dir: Path, tmp_path: Path
) -> None:
    model = Autoencoder(**TINY, steps_per_batch=4)
    trainer = L.Trainer(
        accelerator="cpu", max_steps=40, logger=False, enable_progress_bar=False, default_root_dir=tmp_path,
        callbacks=[ModelCheckpoint(dirpath=tmp_path / "checkpoints", every_n_train_steps=every)],
    )  # fmt: skip
    with pytest.raises(ValueError, match=message):
        trainer.fit(model, datamodule=MNISTDataModule(data_dir=str(data_dir), batch_size=16))
    assert trainer.global_step == 0 and not (tmp_path / "checkpoints").exists()


def test_step_checkpoints_on_multiples_of_steps_per_batch_are_all_written(data_dir: Path, tmp_path: Path) -> None:
    model = Autoencoder(**TINY, steps_per_batch=2)  # 2 divides 4 and the 14 steps of an epoch
    saved = ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=4, save_top_k=-1, filename="{step}")
    trainer = L.Trainer(
        accelerator="cpu", max_steps=28, logger=False, enable_progress_bar=False, limit_val_batches=0,
        callbacks=[saved], default_root_dir=tmp_path,
    )  # fmt: skip
    trainer.fit(model, datamodule=MNISTDataModule(data_dir=str(data_dir), batch_size=16))
    assert sorted(int(path.stem.split("=")[1]) for path in tmp_path.glob("step=*.ckpt")) == list(range(4, 29, 4))


def test_cli_names_the_setting_that_rules_out_gradient_clipping(data_dir: Path, tmp_path: Path) -> None:
    for option, value in (("gradient_clip_val", "1.0"), ("accumulate_grad_batches", "2")):
        with pytest.raises(ValueError, match=rf"--trainer.{option} {value} needs one optimizer step per Lightning "
                           r"batch, but the model takes steps_per_batch=10: set --model.init_args.steps_per_batch 1"):
            build_cli(*tiny_args("ae", data_dir, tmp_path, f"--trainer.{option}", value))
    clipped = build_cli(*tiny_args("ae", data_dir, tmp_path, "--trainer.gradient_clip_val", "1.0",
                                   "--model.init_args.steps_per_batch", "1"))  # fmt: skip
    assert clipped.model.automatic_optimization and clipped.trainer.gradient_clip_val == 1.0
