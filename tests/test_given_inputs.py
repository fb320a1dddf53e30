"""Bad input to the conditional VAE, the auto-decoder and given networks is refused with a message naming it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from test_variants import make_trainer

from ae_lightning import AutoDecoder, Autoencoder, ConditionalVAE, DropoutAutoencoder
from ae_lightning.blocks.networks import MLPDecoder, MLPEncoder
from datamodules import ArrayDataModule

TINY = {"latent_dim": 4, "hidden_dims": [16]}


@pytest.mark.parametrize(
    "images, steps, message",
    [
        (torch.rand(3, 28, 28), None, r"takes images \[B, 1, 28, 28\], got a tensor of shape \[3, 28, 28\]: add the"),
        (torch.rand(3, 1, 32, 32), None, r"got a tensor of shape \[3, 1, 32, 32\]$"),
        (torch.zeros(3, 1, 28, 28, dtype=torch.uint8), None, r"float images in \[0, 1\], got a torch.uint8"),
        (torch.rand(3, 1, 28, 28), -3, "steps must be an integer >= 0, got -3"),
        (torch.rand(3, 1, 28, 28), 2.5, "steps must be an integer >= 0, got 2.5"),
    ],
)
def test_autodecoder_encode_refuses_other_images_and_bad_steps_naming_them(images, steps, message) -> None:
    model = AutoDecoder(**TINY, num_codes=4).eval()
    with pytest.raises(ValueError, match=message):
        model.encode(images, steps=steps)
    assert model.encode(torch.rand(3, 1, 28, 28), steps=0).shape == (3, 4)


def test_cvae_sample_refuses_a_bad_count_and_non_integer_labels_naming_them() -> None:
    model = ConditionalVAE(**TINY).eval()
    for n in (-1, 2.0, True):
        with pytest.raises(ValueError, match=rf"sample\(n={n!r}\): n, the number of images, must be an integer >= 0"):
            model.sample(n)
    with pytest.raises(ValueError, match=r"sample\(n=2\) needs integer class labels y, got 2.5 \(torch.float32\)"):
        model.sample(2, y=2.5)
    with pytest.raises(ValueError, match=r"sample\(n=2\) needs integer class labels y, got True \(torch.bool\)"):
        model.sample(2, y=True)
    torch.manual_seed(1)
    samples = model.sample(3, y=7)  # one label for all: decoded with that label
    torch.manual_seed(1)
    torch.testing.assert_close(samples, model.decode(model.sample_prior(3), torch.full((3,), 7)))
    assert model.sample(np.int64(2)).shape == (2, 1, 28, 28)


def test_hidden_dropout_that_given_networks_cannot_take_is_refused() -> None:
    encoder, decoder = MLPEncoder((1, 28, 28), [16], 4), MLPDecoder(4, [16], (1, 28, 28))
    with pytest.raises(ValueError, match=r"dropout=0.3 .* networks Autoencoder builds, but the given encoder is used"):
        Autoencoder(**TINY, dropout=0.3, encoder=encoder)
    with pytest.raises(ValueError, match=r"dropout=0.5 adds dropout .* but the given encoder and decoder are used"):
        DropoutAutoencoder(**TINY, dropout=0.5, encoder=encoder, decoder=decoder)
    with pytest.raises(ValueError, match=r"dropout=0.2 .* but the given decoder is used unchanged"):
        DropoutAutoencoder(**TINY, decoder=decoder)  # the default dropout
    model = DropoutAutoencoder(**TINY, dropout=0.0, input_dropout=0.5, encoder=encoder, decoder=decoder)
    assert isinstance(model.input_dropout, torch.nn.Dropout) and model.input_dropout.p == 0.5


def test_cvae_warns_when_the_training_split_has_fewer_classes_than_num_classes(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    np.save(tmp_path / "x.npy", (rng.random((60, 8, 8)) * 255).astype(np.uint8))
    np.save(tmp_path / "y.npy", np.arange(60) % 3)
    data = ArrayDataModule(path=str(tmp_path / "x.npy"), labels=str(tmp_path / "y.npy"), batch_size=8)
    model = ConditionalVAE(input_shape=(1, 8, 8), num_classes=10, nll_samples=2, **TINY)
    with pytest.warns(UserWarning, match=r"num_classes=10, but the train split holds only the labels 0, 1, 2: "):
        make_trainer(tmp_path, max_steps=1, limit_val_batches=0).fit(model, datamodule=data)
