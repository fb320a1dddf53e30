"""The auto-decoder's per-sample codes and the conditional VAE's labels, beyond the shared variant suite."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from lightning.pytorch.core.saving import load_hparams_from_yaml
from lightning.pytorch.loggers import CSVLogger
from test_variants import make_trainer

from ae_lightning import VAE, AutoDecoder, ConditionalVAE
from datamodules import MNISTDataModule

TINY = {"latent_dim": 4, "hidden_dims": [16]}


@pytest.mark.parametrize(
    "indices, named",
    [
        (
            torch.tensor([-1, 2]),
            r"sample index -1 \(torch.int64\)",
        ),  # the negative index, not the largest
        (torch.tensor([1, 4]), r"sample index 4 \(torch.int64\)"),
        (torch.tensor([0.0, 2.0]), r"sample index 2.0 \(torch.float32\)"),  # not an integer: no code to look up
    ],
)
def test_autodecoder_training_indices_outside_its_codes_are_an_error_naming_the_bad_one(indices, named) -> None:
    model = AutoDecoder(**TINY, num_codes=4).train()
    with pytest.raises(ValueError, match=rf"{named}, but AutoDecoder has num_codes=4 codes, for the integers 0..3"):
        model.loss_terms(torch.rand(2, 1, 28, 28), torch.zeros(2, dtype=torch.long), indices)


def test_codes_trained_on_one_split_are_not_fit_on_another_split_of_the_same_size(
    data_dir: Path, tmp_path: Path
) -> None:
    # Another --data.seed draws another training split of the same size: code i would train on another image i.
    def data(seed: int) -> MNISTDataModule:
        return MNISTDataModule(data_dir=str(data_dir), batch_size=16, seed=seed)

    def model() -> AutoDecoder:
        return AutoDecoder(**TINY, inference_steps=1)

    first = make_trainer(tmp_path)
    first.fit(model(), datamodule=data(42))
    first.save_checkpoint(checkpoint := tmp_path / "codes.ckpt")  # at the end of an epoch
    refused = r"trained on \(MNIST \(torchvision\), seed 42, 220 images, .*seed 7, 220 images, .*--data.seed 42"
    with pytest.raises(ValueError, match=refused):
        make_trainer(tmp_path, max_epochs=2).fit(model(), datamodule=data(7), ckpt_path=checkpoint)
    with pytest.raises(ValueError, match=refused):  # the weights loaded, then trained further
        make_trainer(tmp_path).fit(AutoDecoder.load_from_checkpoint(checkpoint), datamodule=data(7))
    resumed = make_trainer(tmp_path, max_epochs=2)
    resumed.fit(model(), datamodule=data(42), ckpt_path=checkpoint)  # the same split: an exact resume
    assert resumed.current_epoch == 2


def test_autodecoder_encode_refuses_images_of_another_dtype_than_its_weights() -> None:
    # As its docstring says and every variant's encode does: float64 images were fitted silently, in float32 codes.
    model = AutoDecoder(**TINY, num_codes=4).eval()
    refused = r"AutoDecoder has torch.float32 weights, but encode\(x\) holds torch.float64 images: convert them"
    with pytest.raises(ValueError, match=refused):
        model.encode(torch.rand(3, 1, 28, 28, dtype=torch.float64))
    assert model.double().encode(torch.rand(3, 1, 28, 28, dtype=torch.float64), steps=1).dtype == torch.float64


def test_the_number_of_codes_taken_from_the_data_is_in_hparams_yaml_and_the_checkpoint(
    data_dir: Path, tmp_path: Path
) -> None:
    # hparams.yaml said num_codes: null: Lightning writes it from hparams_initial, after setup counted the images.
    trainer = make_trainer(tmp_path, logger=CSVLogger(tmp_path), enable_checkpointing=True)
    trainer.fit(AutoDecoder(**TINY, inference_steps=1), datamodule=MNISTDataModule(data_dir=str(data_dir)))
    assert load_hparams_from_yaml(Path(trainer.logger.log_dir) / "hparams.yaml")["num_codes"] == 220
    loaded = AutoDecoder.load_from_checkpoint(trainer.checkpoint_callback.best_model_path)  # without the data
    assert loaded.num_codes == 220 and loaded.hparams.num_codes == 220 and loaded.codes.weight.shape == (220, 4)


@pytest.mark.parametrize("labels", [None, [], 3, torch.tensor([], dtype=torch.long)], ids=repr)
def test_a_conditional_vae_draws_zero_images_as_the_vae_does(labels) -> None:
    # sample(0, y=[]) was refused: torch.as_tensor([]) is float32, which the labels' check took for class values.
    empty = VAE(**TINY).sample(0)
    assert empty.shape == (0, 1, 28, 28)
    assert ConditionalVAE(**TINY).sample(0, labels).shape == empty.shape


def test_cvae_encode_and_decode_take_labels_as_sample_does_with_the_same_messages() -> None:
    model = ConditionalVAE(**TINY).eval()
    x, z = torch.rand(3, 1, 28, 28), torch.randn(3, 4)
    for labels in ([1, 2, 1], (1, 2, 1)):
        torch.testing.assert_close(model.encode(x, labels), model.encode(x, torch.tensor([1, 2, 1])))
        torch.testing.assert_close(model.decode(z, labels), model.decode(z, torch.tensor([1, 2, 1])))
    torch.testing.assert_close(model.decode(z, 7), model.decode(z, torch.full((3,), 7)))  # one label for all
    refused = [
        ([1, 2], r"one for all or one per image: 3 images \(or codes\), got 2 labels"),
        (["one", "two", "three"], r"needs labels y: 3 integers or one for all"),
        ([1.5, 2.0, 3.0], r"one integer class per image, a tensor \[3\]; got a torch.float32 tensor of shape \[3\]"),
        ([0, 1, 12], r"labels must lie in 0\.\.9 \(num_classes=10\), got labels from 0 to 12"),
    ]
    for labels, message in refused:
        for call, data in ((model.encode, x), (model.decode, z), (model.sample, 3)):
            with pytest.raises(ValueError, match=message):
                call(data, labels)
