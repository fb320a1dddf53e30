"""Spatial codes: the ResNet encoder/decoder of ``network: spatial``, its sizes, and the variants and pictures on it.

The shared variant suite (``test_variants.py``) runs the spatial variants too; these are what is particular to them.
Tiny networks (a few channels, one ResNet block per level) on 16x16 images, CPU only.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import write_image_folder
from test_variants import make_trainer
from torch import Tensor, nn
from torch.distributions import Normal, kl_divergence

from ae_lightning import VAE, Autoencoder, KLAutoencoder
from ae_lightning.blocks.spatial import SpatialDecoder, SpatialEncoder
from ae_lightning.evaluation.driver import encode_split
from ae_lightning.evaluation.visualization import VIEWS, applicable_views, draw_views
from ae_lightning.training.callbacks import ImageLogger
from datamodules import ImageFolderDataModule
from datamodules.loader import TensorBatchLoader

F4 = {"network": "spatial", "hidden_dims": [4, 8, 8], "latent_dim": 2, "spatial": {"num_res_blocks": 1}}


def spatial_model(cls: type = Autoencoder, size: int = 16, **kwargs) -> Autoencoder | VAE:
    torch.manual_seed(0)
    return cls(**{**F4, "input_shape": (3, size, size), **kwargs})


def rgb(n: int, height: int, width: int | None = None) -> Tensor:
    return torch.rand(n, 3, height, width or height, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("levels, factor", [(3, 4), (4, 8), (5, 16)], ids=["f4", "f8", "f16"])
def test_codes_are_height_and_width_over_f(levels: int, factor: int) -> None:
    channels = [4] * (levels - 1) + [8]
    encoder = SpatialEncoder(3, channels, out_channels=2, num_res_blocks=1)
    decoder = SpatialDecoder(2, channels, out_channels=3, num_res_blocks=1)
    z = encoder(rgb(2, 32, 64))
    assert z.shape == (2, 2, 32 // factor, 64 // factor)
    assert decoder(z).shape == (2, 3, 32, 64)
    model = Autoencoder(input_shape=(3, 32, 32), network="spatial", hidden_dims=channels, latent_dim=2)
    assert model.latent_shape == (2, 32 // factor, 32 // factor)
    assert model.encode(rgb(2, 32)).shape == (2, *model.latent_shape)


def test_sizes_not_divisible_by_f_are_refused_naming_the_size_and_f() -> None:
    f8 = {**F4, "hidden_dims": [4, 4, 4, 8]}
    with pytest.raises(ValueError, match=r"downsampling factor f=8 .* got an image of 20x20"):
        Autoencoder(input_shape=(3, 20, 20), **f8)
    model = spatial_model()
    with pytest.raises(ValueError, match=r"downsampling factor f=4 .* got an image of 18x24"):
        model.encode(rgb(1, 18, 24))
    with pytest.raises(ValueError, match=r"a spatial network needs images .* \(13,\) \(feature vectors\)"):
        Autoencoder(input_shape=(13,), **F4)


@pytest.mark.parametrize(
    "variant", ["ContractiveAutoencoder", "AdversarialAutoencoder", "AutoDecoder", "ConditionalVAE"]
)
def test_variants_with_flat_codes_refuse_spatial_networks(variant: str) -> None:
    import ae_lightning

    with pytest.raises(ValueError, match=rf"{variant} cannot use network: spatial: .*; use network: mlp or conv"):
        getattr(ae_lightning, variant)(input_shape=(3, 16, 16), **F4)
    with pytest.raises(ValueError, match=r"DeepBeliefAutoencoder takes only network='mlp', got 'spatial'"):
        ae_lightning.DeepBeliefAutoencoder(input_shape=(3, 16, 16), **F4)


def test_spatial_settings_without_a_spatial_network_are_an_error() -> None:
    with pytest.raises(ValueError, match=r"\{'num_res_blocks': 1\} are for network: spatial, not 'conv'"):
        Autoencoder(input_shape=(3, 16, 16), network="conv", hidden_dims=[4], spatial={"num_res_blocks": 1})


def photo_folder(root: Path) -> ImageFolderDataModule:
    folder = write_image_folder(root / "photos", per_class=24, size=16)
    return ImageFolderDataModule(str(folder), image_size=16, batch_size=8)


@pytest.mark.parametrize("cls", [Autoencoder, VAE], ids=["ae", "vae"])
def test_trained_on_16x16_it_encodes_and_decodes_64x64(cls: type, tmp_path: Path) -> None:
    model = spatial_model(cls)
    pictures = ImageLogger(num_images=4, num_samples=4, num_interpolations=2, interpolation_steps=3, nrow=4)
    make_trainer(tmp_path, callbacks=[pictures]).fit(model, datamodule=photo_folder(tmp_path))
    drawn = {path.name.partition("-")[0] for path in (tmp_path / "images").glob("*.png")}
    assert drawn == set(applicable_views(model))
    model.eval()
    with torch.no_grad():
        z = model.encode(rgb(2, 64))
        decoded = model.decode(z)
        reconstruction = model(rgb(1, 64, 32))
    assert z.shape == (2, 2, 16, 16) and decoded.shape == (2, 3, 64, 64)
    assert torch.isfinite(decoded).all() and decoded.min() >= 0 and decoded.max() <= 1
    assert reconstruction.shape == (1, 3, 64, 32)
    if cls is VAE:  # prior codes of latent_shape: images of the training size
        assert model.sample(3).shape == (3, 3, 16, 16)


class FixedPosterior(nn.Module):
    """An encoder whose posterior is the same N(mu, std^2) for every code element, at every position."""

    def __init__(self, channels: int, factor: int, mu: float, std: float) -> None:
        super().__init__()
        self.channels, self.factor, self.mu, self.logvar = channels, factor, mu, 2 * torch.tensor(std).log().item()

    def forward(self, x: Tensor) -> Tensor:
        shape = (len(x), self.channels, x.shape[2] // self.factor, x.shape[3] // self.factor)
        return torch.cat([torch.full(shape, self.mu), torch.full(shape, self.logvar)], 1)


def test_vae_kl_is_summed_over_every_code_element() -> None:
    model = spatial_model(VAE)
    model.encoder = FixedPosterior(channels=2, factor=4, mu=0.7, std=0.4)
    labels, indices = torch.zeros(3), torch.arange(3)
    kl_16 = model.loss_terms(rgb(3, 16), labels, indices)["kl"]
    kl_16x32 = model.loss_terms(rgb(3, 16, 32), labels, indices)["kl"]
    kl_32 = model.loss_terms(rgb(3, 32), labels, indices)["kl"]
    per_element = kl_divergence(Normal(0.7, 0.4), Normal(0.0, 1.0))
    torch.testing.assert_close(kl_16, 2 * 4 * 4 * per_element)  # codes [2, 4, 4]
    torch.testing.assert_close(kl_16x32, 2 * kl_16)
    torch.testing.assert_close(kl_32, 4 * kl_16)


def test_a_short_training_run_reduces_the_loss(tmp_path: Path) -> None:
    model = spatial_model(reconstruction="mse", optimizer=lambda params: torch.optim.Adam(params, lr=3e-3))
    data = photo_folder(tmp_path)
    trainer = make_trainer(tmp_path, max_epochs=6, limit_train_batches=None, limit_val_batches=None)
    (before,) = trainer.validate(model, datamodule=data, verbose=False)
    trainer.fit(model, datamodule=data)
    (after,) = trainer.validate(model, datamodule=data, verbose=False)
    assert after["val/loss"] < 0.8 * before["val/loss"]  # the images are mostly pixel noise, which no code keeps


def test_every_picture_and_the_probes_take_spatial_codes() -> None:
    model = spatial_model(VAE)
    images, labels = rgb(12, 16), torch.arange(12) % 3
    pictures = draw_views(
        model, images, labels, VIEWS, num_images=4, num_samples=4, nrow=4, num_interpolations=2, interpolation_steps=3
    )
    assert set(pictures) == set(VIEWS)
    for name, picture in pictures.items():
        assert picture.dim() == 3 and picture.shape[0] == 3 and torch.isfinite(picture).all(), name
    # two pairs of 16x16 images, three codes between each pair: rows of 5 images with 2-pixel gaps
    assert pictures["interpolations"].shape == (3, 2 + 2 * 18, 2 + 5 * 18)
    codes, _ = encode_split(
        model, TensorBatchLoader(images, labels, torch.arange(12), batch_size=5, shuffle=False, seed=0)
    )
    assert codes.shape == (12, 2 * 4 * 4)  # flattened, for the linear probe and k-NN


def test_the_kl_autoencoders_code_std_is_over_all_the_test_codes_whatever_the_batch_size(tmp_path: Path) -> None:
    # It was the mean of each batch's std: 0.004 at batch size 1 for codes whose std is 0.26 (a scale factor 65
    # times too large), because one image's codes vary less than the codes of different images.
    encoder = nn.Sequential(nn.AvgPool2d(2), nn.Conv2d(3, 4, 1, bias=False))  # means: brightness
    nn.init.constant_(encoder[1].weight, 1 / 3)
    model = KLAutoencoder(latent_dim=2, hidden_dims=[8], residual_blocks=1, input_shape=(3, 16, 16), encoder=encoder)
    x = (torch.linspace(0.1, 0.9, 8).view(8, 1, 1, 1) + 0.05 * rgb(8, 16)).clamp(0, 1)  # photos of 8 brightnesses
    with torch.no_grad():
        expected = model.encode(x).std(correction=0).item()
    for batch_size in (1, 3, 8):
        loader = TensorBatchLoader(x, torch.zeros(8), torch.arange(8), batch_size=batch_size, shuffle=False, seed=0)
        trainer = make_trainer(tmp_path, limit_val_batches=None, limit_test_batches=None)
        (tested,) = trainer.test(model, dataloaders=loader, verbose=False)
        (validated,) = trainer.validate(model, dataloaders=loader, verbose=False)
        assert tested["test/code_std"] == pytest.approx(expected, rel=1e-5), batch_size
        assert validated["val/code_std"] == pytest.approx(expected, rel=1e-5), batch_size
