"""The autoencoder family: one suite parametrized over every variant, then what is particular to each.

Tiny networks and the tiny IDX data of ``conftest.py`` (220 training images), CPU only.
"""

from __future__ import annotations

import copy
import functools
import math
import re
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import Callback
from torch import nn

from ae_lightning import (
    DIPVAE,
    IAFVAE,
    VAE,
    AdversarialAutoencoder,
    AutoDecoder,
    Autoencoder,
    BetaTCVAE,
    ConditionalVAE,
    ContractiveAutoencoder,
    DeepBeliefAutoencoder,
    DenoisingAutoencoder,
    DropoutAutoencoder,
    FactorVAE,
    InfoVAE,
    KLAutoencoder,
    QuantizedAutoencoder,
    SparseAutoencoder,
    SuperResolutionAutoencoder,
    VampPriorVAE,
)
from ae_lightning.base import AutoencoderModule
from ae_lightning.blocks import losses
from ae_lightning.blocks.networks import ConvEncoder, MLPEncoder
from ae_lightning.models.contractive import encode_with_contraction
from ae_lightning.models.denoising import corrupt
from ae_lightning.models.first_stage import FirstStageAutoencoder
from datamodules import MNISTDataModule

TINY = {"latent_dim": 4, "hidden_dims": [16]}
# f2 spatial codes [4, H / 2, W / 2]
SPATIAL = {"network": "spatial", "hidden_dims": [4, 8], "spatial": {"num_res_blocks": 1}}
VARIANTS = [
    (Autoencoder, {}),
    (VAE, {"nll_samples": 4, "nll_chunk_size": 2}),
    (DenoisingAutoencoder, {"corruption": "gaussian", "corruption_level": 0.3}),
    (DenoisingAutoencoder, {"corruption": "salt_and_pepper", "corruption_level": 0.2}),
    (DropoutAutoencoder, {"input_dropout": 0.2, "dropout": 0.1}),
    (SparseAutoencoder, {"sparsity": "kl", "sparsity_target": 0.1}),
    (SparseAutoencoder, {"sparsity": "l1", "sparsity_weight": 0.1}),
    (ContractiveAutoencoder, {"contractive_weight": 0.1}),
    (ContractiveAutoencoder, {"contractive_weight": 0.1, "network": "conv", "hidden_dims": [4]}),
    (AdversarialAutoencoder, {"discriminator_hidden_dims": [8]}),
    (AdversarialAutoencoder, {"discriminator_hidden_dims": [8], "prior": "mixture", "mixture_components": 3}),
    (AutoDecoder, {"inference_steps": 3}),
    (ConditionalVAE, {"nll_samples": 4, "nll_chunk_size": 2}),
    (ConditionalVAE, {"nll_samples": 4, "nll_chunk_size": 2, "network": "conv", "hidden_dims": [4]}),
    (VAE, {"nll_samples": 4, "nll_chunk_size": 2, "iw_samples": 3}),
    (SuperResolutionAutoencoder, {"scale": 2}),
    (SuperResolutionAutoencoder, {"scale": 4, "network": "conv", "hidden_dims": [4], "reconstruction": "mse"}),
    (DeepBeliefAutoencoder, {"pretrain": "none"}),
    (BetaTCVAE, {"nll_samples": 4, "nll_chunk_size": 2}),
    (DIPVAE, {"nll_samples": 4, "nll_chunk_size": 2, "dip_type": "i"}),
    (DIPVAE, {"nll_samples": 4, "nll_chunk_size": 2, "dip_type": "ii"}),
    (InfoVAE, {"nll_samples": 4, "nll_chunk_size": 2, "kernel": "rbf"}),
    (InfoVAE, {"nll_samples": 4, "nll_chunk_size": 2, "alpha": 1.0, "deterministic": True}),
    (FactorVAE, {"nll_samples": 4, "nll_chunk_size": 2, "discriminator_hidden_dims": [8]}),
    (VampPriorVAE, {"nll_samples": 4, "nll_chunk_size": 2, "num_pseudo_inputs": 3}),
    (VampPriorVAE, {"nll_samples": 4, "nll_chunk_size": 2, "num_pseudo_inputs": 3, "iw_samples": 2}),
    (IAFVAE, {"nll_samples": 4, "nll_chunk_size": 2, "flow_hidden_dims": [8]}),
    (QuantizedAutoencoder, {"codebook_size": 16}),
    (QuantizedAutoencoder, {"quantizer": "fsq", "fsq_levels": [8, 5]}),
    (QuantizedAutoencoder, {"quantizer": "residual_vq", "codebook_size": 8, "num_quantizers": 2}),
    (
        KLAutoencoder,
        {
            "perceptual_weight": 1.0,
            "perceptual_pretrained": False,
            "adversarial_weight": 0.5,
            "discriminator_layers": 1,
        },
    ),
    (Autoencoder, SPATIAL),
    (VAE, {"nll_samples": 4, "nll_chunk_size": 2, **SPATIAL}),
    (VAE, {"nll_samples": 4, "nll_chunk_size": 2, "iw_samples": 3, "likelihood": "gaussian", **SPATIAL}),
    (DenoisingAutoencoder, {"corruption": "masking", "corruption_level": 0.3, **SPATIAL}),
    (SuperResolutionAutoencoder, {"scale": 2, "reconstruction": "mse", **SPATIAL}),
    (SparseAutoencoder, {"sparsity": "kl", "sparsity_target": 0.1, **SPATIAL}),
]
IDS = [f"{cls.__name__}-{i}" for i, (cls, _) in enumerate(VARIANTS)]
# Gray and RGB images, a size no stride-2 convolution halves evenly, and feature vectors.
SHAPES = [(1, 28, 28), (3, 32, 32), (3, 9, 11), (13,)]


def build(cls: type[AutoencoderModule], kwargs: dict) -> AutoencoderModule:
    torch.manual_seed(0)
    return cls(**{**TINY, **kwargs})


def for_shape(cls: type[AutoencoderModule], kwargs: dict, shape: tuple[int, ...]) -> dict:
    """The variant's arguments for data of ``shape``: on vectors, the Gaussian or squared error (pixels' Bernoulli
    likelihood and salt and pepper mean nothing there)."""
    kwargs = {**kwargs, "input_shape": shape}
    if len(shape) == 1:
        if issubclass(cls, VAE):
            kwargs |= {"likelihood": "gaussian"}
        elif not issubclass(cls, FirstStageAutoencoder):  # whose default is the squared error already
            kwargs |= {"reconstruction": "mse"}
        if kwargs.get("corruption") == "salt_and_pepper":
            kwargs["corruption"] = "masking"
    return kwargs


def refusal(cls: type[AutoencoderModule], kwargs: dict, shape: tuple[int, ...]) -> str | None:
    """The error a variant gives, before training, for data it cannot take; None where it takes them."""
    network = kwargs.get("network", "mlp")
    if len(shape) == 1 and issubclass(cls, FirstStageAutoencoder):
        return r"a conv network needs images .* \(13,\) \(feature vectors\): use network: mlp"
    if len(shape) == 1 and network != "mlp":
        return rf"a {network} network needs images .* \(13,\) \(feature vectors\): use network: mlp"
    if network == "spatial" and (shape[1] % 2 or shape[2] % 2):
        return rf"downsampling factor f=2 .* got an image of {shape[1]}x{shape[2]}"
    if len(shape) == 1 and cls in (SuperResolutionAutoencoder, DeepBeliefAutoencoder):
        return r"got input_shape \(13,\) \(feature vectors\): use another variant for vectors"
    if issubclass(cls, FirstStageAutoencoder) and (shape[1] % 2 or shape[2] % 2):
        return rf"the image size {shape[1]}x{shape[2]} is not divisible by the downsampling factor 2"
    scale = kwargs.get("scale")
    if cls is SuperResolutionAutoencoder and (shape[1] % scale or shape[2] % scale):
        return rf"scale={scale} must divide the image size {shape[1]}x{shape[2]}"
    return None


def label_kwargs(model: AutoencoderModule, labels: torch.Tensor) -> dict:
    """The labels argument of the public API (which only the conditional variant needs)."""
    return {"y": labels}


def make_trainer(root: Path, **kwargs) -> L.Trainer:
    settings = {
        "accelerator": "cpu",
        "max_epochs": 1,
        "limit_train_batches": 2,
        "limit_val_batches": 1,
        "log_every_n_steps": 1,
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "default_root_dir": root,
    }
    return L.Trainer(**{**settings, **kwargs})


def tiny_data(data_dir: Path) -> MNISTDataModule:
    return MNISTDataModule(data_dir=str(data_dir), batch_size=16)


def images(n: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return torch.rand(n, 1, 28, 28, generator=generator), torch.arange(n) % 10


# --- the suite over every variant -----------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", SHAPES, ids=lambda shape: "x".join(map(str, shape)))
@pytest.mark.parametrize("cls, kwargs", VARIANTS, ids=IDS)
def test_public_api_shapes(cls: type[AutoencoderModule], kwargs: dict, shape: tuple[int, ...]) -> None:
    refused = refusal(cls, kwargs, shape)
    if refused:
        with pytest.raises(ValueError, match=refused):
            build(cls, for_shape(cls, kwargs, shape))
        return
    model = build(cls, for_shape(cls, kwargs, shape)).eval()
    x, labels = torch.rand(5, *shape, generator=torch.Generator().manual_seed(1)), torch.arange(5) % 10
    bounded = len(shape) == 3  # images in [0, 1]; vectors unbounded
    extra = label_kwargs(model, labels)
    z = model.encode(x, **extra)
    assert z.shape[:2] == (5, 4)  # [B, latent_dim], or [B, latent_dim, h, w] for spatial codes
    if kwargs.get("network") == "spatial":
        assert z.shape == (5, 4, shape[1] // 2, shape[2] // 2)
    decoded = model.decode(z, **extra)
    assert decoded.shape == (5, *shape) and (not bounded or (0 <= decoded.min() and decoded.max() <= 1))
    assert model(x, **extra).shape == (5, *shape)
    terms = model.loss_terms(x, labels, torch.arange(5)) if not isinstance(model, AutoDecoder) else None
    if terms is not None:
        assert all(torch.isfinite(value) for value in terms.values()), terms
    if model.is_generative:
        samples = model.sample(3)
        assert samples.shape == (3, *shape) and (not bounded or (0 <= samples.min() and samples.max() <= 1))
        assert not samples.requires_grad  # as torch's Distribution.sample
    else:
        with pytest.raises(NotImplementedError):
            model.sample(3)


@pytest.mark.parametrize("cls, kwargs", VARIANTS, ids=IDS)
def test_training_updates_every_parameter_and_checkpoint_round_trips(
    cls: type[AutoencoderModule], kwargs: dict, data_dir: Path, tmp_path: Path
) -> None:
    model = build(cls, kwargs)
    trainer = make_trainer(tmp_path)
    trainer.fit(model, datamodule=tiny_data(data_dir))
    before = build(cls, kwargs).state_dict()  # the same seed: the initial parameters
    metrics = trainer.callback_metrics
    assert torch.isfinite(metrics["train/loss"]) and torch.isfinite(metrics["val/loss"])
    assert trainer.global_step == 2
    for name, parameter in model.named_parameters():
        if name in before and parameter.requires_grad:  # an auto-decoder's codes are built in setup; LPIPS is frozen
            assert not torch.equal(parameter.detach(), before[name]), f"{name} did not change"

    path = tmp_path / "model.ckpt"
    trainer.save_checkpoint(path)
    loaded = cls.load_from_checkpoint(path)
    assert type(loaded) is cls
    for name, value in model.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[name], value)
    x, labels = images()
    model.eval()
    loaded.eval()
    extra = label_kwargs(model, labels)
    torch.testing.assert_close(loaded(x, **extra), model(x, **extra))


@pytest.mark.parametrize("cls, kwargs", VARIANTS, ids=IDS)
def test_test_and_predict_steps_run(cls: type[AutoencoderModule], kwargs: dict, data_dir: Path, tmp_path: Path) -> None:
    model = build(cls, kwargs)
    data = tiny_data(data_dir)
    trainer = make_trainer(tmp_path, limit_test_batches=1, limit_predict_batches=1)
    trainer.test(model, datamodule=data, verbose=False)
    assert torch.isfinite(trainer.callback_metrics["test/loss"])
    (predictions,) = trainer.predict(model, datamodule=data)
    assert predictions["z"].shape[:2] == (16, 4) and torch.isfinite(predictions["recon_error"]).all()


@pytest.mark.parametrize("data", ["rgb_folder", "vectors"])
@pytest.mark.parametrize("cls, kwargs", VARIANTS, ids=IDS)
def test_training_and_test_on_own_data(cls: type[AutoencoderModule], kwargs: dict, data: str, tmp_path: Path) -> None:
    datamodule = own_data(data, tmp_path)
    datamodule.setup("fit")
    refused = refusal(cls, kwargs, datamodule.input_shape)
    if refused:
        with pytest.raises(ValueError, match=refused):
            build(cls, for_shape(cls, kwargs, datamodule.input_shape))
        return
    model = build(cls, for_shape(cls, kwargs, datamodule.input_shape))
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    trainer = make_trainer(tmp_path, limit_test_batches=1)
    trainer.fit(model, datamodule=datamodule)
    assert trainer.global_step == 2 and torch.isfinite(trainer.callback_metrics["val/loss"])
    assert any(not torch.equal(p.detach(), before[name]) for name, p in model.named_parameters() if name in before)
    trainer.test(model, datamodule=datamodule, verbose=False)
    assert torch.isfinite(trainer.callback_metrics["test/loss"]) and torch.isfinite(
        trainer.callback_metrics["test/recon_mse"]
    )


def own_data(kind: str, root: Path) -> L.LightningDataModule:
    """A tiny RGB PNG folder (3x10x10, two classes) or tiny standardized feature vectors (13 features, 3 classes)."""
    import numpy as np
    from conftest import write_image_folder

    from datamodules import ArrayDataModule, ImageFolderDataModule

    if kind == "rgb_folder":
        return ImageFolderDataModule(str(write_image_folder(root / "images", per_class=20, size=10)), batch_size=8)
    rng = np.random.default_rng(0)
    np.savez(root / "table.npz", x=rng.normal(size=(60, 13)).astype(np.float32), y=np.arange(60) % 3)
    return ArrayDataModule(str(root / "table.npz"), labels="y", standardize=True, batch_size=8)


# --- losses and corruption ------------------------------------------------------------------------------------------
def test_kl_divergence_bernoulli_matches_hand_value() -> None:
    # 0.5 ln(0.5 / 0.25) + 0.5 ln(0.5 / 0.75) = 0.5 ln(4 / 3)
    value = losses.kl_divergence_bernoulli(0.5, torch.tensor([0.25]))
    assert value.item() == pytest.approx(0.5 * math.log(4 / 3))
    assert losses.kl_divergence_bernoulli(0.1, torch.full((3, 7), 0.1)).abs().max() < 1e-6
    assert losses.kl_divergence_bernoulli(0.1, torch.tensor([[0.1, 0.3]])).shape == (1,)


def test_corruptions() -> None:
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(64, 1, 28, 28, generator=generator) * 0.8 + 0.1  # no pixel is exactly 0 or 1
    torch.testing.assert_close(corrupt(x, "gaussian", 0.0), x)
    noisy = corrupt(x, "gaussian", 0.5, generator)
    assert noisy.min() >= 0 and noisy.max() <= 1 and (noisy - x).abs().mean() > 0.1
    masked = corrupt(x, "masking", 0.3, generator)
    assert (masked == 0).float().mean().item() == pytest.approx(0.3, abs=0.01)
    assert torch.equal(masked[masked != 0], x[masked != 0])
    salted = corrupt(x, "salt_and_pepper", 0.2, generator)
    hit = salted != x
    assert hit.float().mean().item() == pytest.approx(0.2, abs=0.01)
    assert ((salted[hit] == 0) | (salted[hit] == 1)).all()
    assert (salted[hit] == 1).float().mean().item() == pytest.approx(0.5, abs=0.03)
    with pytest.raises(ValueError, match="corruption must be one of .*, got 'gausian'"):  # was salt and pepper
        corrupt(x, "gausian", 0.2)


def bar_images(n: int, seed: int) -> torch.Tensor:
    """``[n, 1, 8, 8]`` images of one bright horizontal and one bright vertical bar: data with little freedom."""
    generator = torch.Generator().manual_seed(seed)
    rows, columns = torch.randint(8, (2, n), generator=generator)
    x = torch.zeros(n, 1, 8, 8)
    x[torch.arange(n), 0, rows, :] = 1.0
    x[torch.arange(n), 0, :, columns] = 1.0
    return x


def train_briefly(model: AutoencoderModule, x: torch.Tensor, steps: int = 300) -> AutoencoderModule:
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    labels, indices = torch.zeros(len(x)), torch.arange(len(x))
    for step in range(steps):
        batch = x[(step * 32) % len(x) :][:32]
        optimizer.zero_grad()
        model.loss_terms(batch, labels[: len(batch)], indices[: len(batch)])["loss"].backward()
        optimizer.step()
    return model.eval()


def test_a_denoising_autoencoder_restores_corrupted_images_better_than_a_plain_one() -> None:
    # A code wide enough to copy its input: the plain autoencoder copies the holes too, the denoising one fills them.
    settings = {"input_shape": (1, 8, 8), "latent_dim": 32, "hidden_dims": [128]}
    train, test = bar_images(512, seed=0), bar_images(128, seed=1)
    torch.manual_seed(0)
    denoising = train_briefly(DenoisingAutoencoder(**settings, corruption="masking", corruption_level=0.5), train)
    torch.manual_seed(0)
    plain = train_briefly(Autoencoder(**settings), train)
    torch.manual_seed(2)
    noisy = denoising.corrupt(test)
    with torch.no_grad():
        denoised_error = (denoising(noisy) - test).pow(2).mean().item()
        plain_error = (plain(noisy) - test).pow(2).mean().item()
        metrics = denoising.test_terms(test, torch.zeros(len(test)), torch.arange(len(test)))[0]
    assert denoised_error < 0.7 * plain_error, (denoised_error, plain_error)  # measured: 0.019 and 0.035
    assert set(metrics) == {"loss", "recon", "psnr_denoised", "ssim_denoised", "psnr_noisy", "ssim_noisy"}
    assert metrics["psnr_denoised"] > metrics["psnr_noisy"] + 3  # dB: the gain of denoising is reported
    assert metrics["ssim_denoised"] > metrics["ssim_noisy"]


def test_dropout_autoencoder_drops_input_in_training_only() -> None:
    model = build(DropoutAutoencoder, {"input_dropout": 0.5, "dropout": 0.0})
    x, _ = images()
    model.eval()
    torch.testing.assert_close(model.encode(x), model.encoder(x))
    model.train()
    assert not torch.allclose(model.encode(x), model.encoder(x))


@pytest.mark.parametrize("sparsity", ["kl", "l1"])
def test_the_sparsity_penalty_makes_the_codes_sparse(sparsity: str) -> None:
    settings = {"input_shape": (1, 8, 8), "latent_dim": 16, "hidden_dims": [64], "sparsity": sparsity}
    train = bar_images(512, seed=0)
    activations = {}
    for weight in (0.0, 1.0):
        torch.manual_seed(0)
        model = train_briefly(SparseAutoencoder(**settings, sparsity_weight=weight, sparsity_target=0.05), train)
        with torch.no_grad():
            z = model.encode(train)
            terms = model.loss_terms(train, torch.zeros(len(train)), torch.arange(len(train)))
        assert sparsity == "l1" or ((z > 0).all() and (z < 1).all())  # the KL penalty's units are probabilities
        torch.testing.assert_close(terms["mean_activation"], z.abs().mean())
        activations[weight] = z.abs().mean().item()
    assert activations[1.0] < 0.5 * activations[0.0], activations
    if sparsity == "kl":  # the mean activation moves to the target
        assert abs(activations[1.0] - 0.05) < abs(activations[0.0] - 0.05)


# --- contractive ----------------------------------------------------------------------------------------------------
def jacobian_norms(encoder: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Per image, ``||J||_F^2`` from ``torch.autograd.functional.jacobian``."""
    norms = []
    for image in x:
        jacobian = torch.autograd.functional.jacobian(lambda t: encoder(t.unsqueeze(0)).squeeze(0), image)
        norms.append(jacobian.pow(2).sum())
    return torch.stack(norms)


class CenteredSequential(nn.Sequential):
    """A Sequential with a forward of its own: its inputs mapped to [-1, 1] first."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(2 * x - 1)


class ScaledLinear(nn.Linear):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 3 * super().forward(x)


def with_hook(encoder: nn.Module) -> nn.Module:
    encoder.register_forward_hook(lambda module, inputs, output: output.tanh())
    return encoder


@pytest.mark.parametrize(
    "encoder",
    [
        MLPEncoder((1, 6, 6), [8, 5], 3),  # ReLU, closed form
        nn.Sequential(nn.Flatten(), nn.Linear(36, 7), nn.Sigmoid(), nn.Linear(7, 3), nn.Tanh()),  # closed form
        nn.Sequential(nn.Flatten(), nn.Linear(36, 3)),  # linear: the same norm for every image
        ConvEncoder((1, 6, 6), [4], 3),  # torch.func fallback
        # not what the closed form computes: torch.func fallback
        CenteredSequential(nn.Flatten(), nn.Linear(36, 7), nn.Tanh(), nn.Linear(7, 3)),
        nn.Sequential(nn.Flatten(), ScaledLinear(36, 7), nn.Tanh(), nn.Linear(7, 3)),
        with_hook(nn.Sequential(nn.Flatten(), nn.Linear(36, 7), nn.Tanh(), nn.Linear(7, 3))),
    ],
    ids=["relu-mlp", "sigmoid-tanh-mlp", "linear", "conv", "own-forward", "own-layer-forward", "forward-hook"],
)
def test_contractive_penalty_matches_autograd_jacobian(encoder: nn.Module) -> None:
    torch.manual_seed(0)
    x = torch.rand(6, 1, 6, 6)
    z, penalty = encode_with_contraction(encoder, x)
    torch.testing.assert_close(z, encoder(x))
    torch.testing.assert_close(penalty, jacobian_norms(encoder, x), rtol=1e-4, atol=1e-6)


def test_contractive_penalty_gram_route_and_gradient() -> None:
    # a batch large enough that the closed form goes through W_1 W_1^T; gradients agree with the autodiff route
    torch.manual_seed(0)
    encoder = MLPEncoder((1, 28, 28), [16, 8], 3)
    x = torch.rand(64, 1, 28, 28)
    _, penalty = encode_with_contraction(encoder, x)
    torch.testing.assert_close(penalty[:3], jacobian_norms(encoder, x[:3]), rtol=1e-4, atol=1e-6)
    fallback = nn.Sequential(nn.Identity(), *encoder)  # not a chain the closed form recognizes
    assert torch.allclose(encode_with_contraction(fallback, x)[1], penalty, rtol=1e-4)
    closed = torch.autograd.grad(penalty.sum(), encoder[1].weight)[0]
    autodiff = torch.autograd.grad(encode_with_contraction(fallback, x)[1].sum(), encoder[1].weight)[0]
    torch.testing.assert_close(closed, autodiff, rtol=1e-4, atol=1e-6)


# --- adversarial ----------------------------------------------------------------------------------------------------
AAE_TINY = {**TINY, "discriminator_hidden_dims": [8]}


def parameters_of(module: nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in module.named_parameters()}


def changed(before: dict[str, torch.Tensor], module: nn.Module) -> bool:
    return any(not torch.equal(before[name], p) for name, p in module.named_parameters())


def test_aae_steps_every_optimizer_every_batch_and_counts_batches(data_dir: Path, tmp_path: Path) -> None:
    model = AdversarialAutoencoder(**AAE_TINY)
    trainer = make_trainer(tmp_path, limit_train_batches=3)
    trainer.fit(model, datamodule=tiny_data(data_dir))
    assert trainer.global_step == 3  # batches, not optimizer steps
    owners = [
        [*model.encoder.parameters(), *model.decoder.parameters()],  # reconstruction phase
        list(model.discriminator.parameters()),  # discriminator phase
        list(model.encoder.parameters()),  # generator phase
    ]
    assert len(trainer.optimizers) == 3
    for optimizer, parameters in zip(trainer.optimizers, owners):
        assert [id(p) for p in optimizer.param_groups[0]["params"]] == [id(p) for p in parameters]
        assert {optimizer.state[p]["step"].item() for p in parameters} == {3}  # one step per batch
    for name in ("train/recon", "train/d_loss", "train/g_loss", "train/d_accuracy", "train/loss"):
        assert torch.isfinite(trainer.callback_metrics[name]), name


def test_aae_phases_touch_only_their_own_networks(data_dir: Path, tmp_path: Path) -> None:
    model = AdversarialAutoencoder(**AAE_TINY)
    seen = []

    def watch(phase_name: str, moves: set[str]) -> None:
        phase = getattr(model, phase_name)

        def watched(*args):
            before = {part: parameters_of(getattr(model, part)) for part in ("encoder", "decoder", "discriminator")}
            result = phase(*args)
            moved = {part for part, params in before.items() if changed(params, getattr(model, part))}
            assert moved == moves, f"{phase_name} changed {moved}, expected {moves}"
            seen.append(phase_name)
            return result

        setattr(model, phase_name, watched)

    watch("reconstruction_phase", {"encoder", "decoder"})
    watch("discriminator_phase", {"discriminator"})
    watch("generator_phase", {"encoder"})
    make_trainer(tmp_path).fit(model, datamodule=tiny_data(data_dir))
    assert seen == ["reconstruction_phase", "discriminator_phase", "generator_phase"] * 2


def test_aae_trains_under_bf16_mixed_on_cpu(data_dir: Path, tmp_path: Path) -> None:
    model = AdversarialAutoencoder(**AAE_TINY)
    before = {part: parameters_of(getattr(model, part)) for part in ("encoder", "decoder", "discriminator")}
    trainer = make_trainer(tmp_path, precision="bf16-mixed")
    trainer.fit(model, datamodule=tiny_data(data_dir))
    for name in ("train/recon", "train/d_loss", "train/g_loss", "val/loss"):
        assert torch.isfinite(trainer.callback_metrics[name]), name
    for part, params in before.items():
        assert changed(params, getattr(model, part)), part
        assert all(torch.isfinite(p).all() for p in getattr(model, part).parameters())


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_aae_trains_under_16_mixed_on_gpu(data_dir: Path, tmp_path: Path) -> None:
    model = AdversarialAutoencoder(**AAE_TINY, gradient_clip_val=1.0)
    trainer = make_trainer(tmp_path, accelerator="gpu", devices=1, precision="16-mixed", limit_train_batches=5)
    trainer.fit(model, datamodule=tiny_data(data_dir))
    assert trainer.global_step == 5
    for name in ("train/recon", "train/d_loss", "train/g_loss", "val/loss"):
        assert torch.isfinite(trainer.callback_metrics[name]), name


def test_aae_clips_every_step_by_hand(data_dir: Path, tmp_path: Path) -> None:
    # plain SGD with lr 1: a step moves each parameter tensor by its (clipped) gradient
    clip = 1e-4
    model = AdversarialAutoencoder(
        **AAE_TINY,
        optimizer=lambda params: torch.optim.SGD(params, lr=1.0),
        discriminator_optimizer=lambda params: torch.optim.SGD(params, lr=1.0),
        gradient_clip_val=clip,
        gradient_clip_algorithm="value",
    )
    before = {part: parameters_of(getattr(model, part)) for part in ("encoder", "decoder", "discriminator")}
    make_trainer(tmp_path, limit_train_batches=1, limit_val_batches=0).fit(model, datamodule=tiny_data(data_dir))
    for part, params in before.items():
        for name, p in getattr(model, part).named_parameters():
            # at most two steps (the encoder's reconstruction and generator steps) of at most ``clip`` each
            assert (p.detach() - params[name]).abs().max() <= 2 * clip + 1e-7, f"{part}.{name}"
        assert changed(params, getattr(model, part))


class OptimizerStateAtStart(Callback):
    """Keeps copies of every optimizer's and scheduler's state when training starts (right after a restore)."""

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.optimizers = [copy.deepcopy(opt.state_dict()) for opt in trainer.optimizers]
        self.schedulers = [copy.deepcopy(config.scheduler.state_dict()) for config in trainer.lr_scheduler_configs]
        self.global_step = trainer.global_step


def aae_with_schedulers() -> AdversarialAutoencoder:
    def step_lr(optimizer):
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)

    torch.manual_seed(0)
    return AdversarialAutoencoder(**AAE_TINY, lr_scheduler=step_lr, discriminator_lr_scheduler=step_lr)


def test_aae_checkpoint_restores_both_optimizers_and_schedulers_exactly(data_dir: Path, tmp_path: Path) -> None:
    model = aae_with_schedulers()
    trainer = make_trainer(tmp_path, max_epochs=2, limit_train_batches=3)
    trainer.fit(model, datamodule=tiny_data(data_dir))
    path = tmp_path / "aae.ckpt"
    trainer.save_checkpoint(path)
    saved = torch.load(path, weights_only=False)
    assert len(saved["optimizer_states"]) == 3 and len(saved["lr_schedulers"]) == 3
    assert saved["lr_schedulers"][0]["last_epoch"] == 2  # stepped once per epoch
    assert saved["optimizer_states"][0]["param_groups"][0]["lr"] == pytest.approx(1e-3 * 0.25)

    watcher = OptimizerStateAtStart()
    resumed = make_trainer(tmp_path, max_epochs=3, limit_train_batches=3, callbacks=[watcher])
    resumed.fit(aae_with_schedulers(), datamodule=tiny_data(data_dir), ckpt_path=path)
    assert watcher.global_step == 6
    for restored, stored in zip(watcher.optimizers, saved["optimizer_states"]):
        assert restored["param_groups"] == stored["param_groups"]
        assert restored["state"].keys() == stored["state"].keys()
        for key in stored["state"]:
            for name, value in stored["state"][key].items():
                torch.testing.assert_close(restored["state"][key][name], value, rtol=0, atol=0)
    assert watcher.schedulers == saved["lr_schedulers"]
    assert resumed.global_step == 9


def test_aae_mixture_prior_samples_cluster_at_the_component_means() -> None:
    model = AdversarialAutoencoder(
        **{**AAE_TINY, "latent_dim": 2}, prior="mixture", mixture_components=10, mixture_radius=4.0, mixture_std=0.1
    )
    means = model.mixture_means
    assert means.shape == (10, 2)
    torch.testing.assert_close(means.norm(dim=1), torch.full((10,), 4.0))
    z = model.sample_prior(2000)
    nearest = torch.cdist(z, means).min(1)
    assert nearest.values.max() < 0.7  # within 7 std of a mean
    assert len(nearest.indices.unique()) == 10


@pytest.mark.parametrize("prior", ["normal", "mixture"])
def test_aae_prior_draws_and_test_metrics_are_the_same_in_every_precision(prior: str, tmp_path: Path) -> None:
    # randn draws other numbers in float64 (and at some sizes in bfloat16) from one seed: under 64-true the same weights
    # gave other samples and another test/d_loss and test/d_accuracy (0.790 and 0.273 for 0.799 and 0.281).
    torch.manual_seed(0)
    model = AdversarialAutoencoder(**AAE_TINY, prior=prior, mixture_components=3)
    x = torch.rand(64, 1, 28, 28)
    data = torch.utils.data.TensorDataset(x, torch.zeros(64, dtype=torch.long), torch.arange(64))
    loader = torch.utils.data.DataLoader(data, batch_size=32)
    results = {
        precision: make_trainer(tmp_path, precision=precision).test(copy.deepcopy(model), loader, verbose=False)[0]
        for precision in ("32", "64-true")
    }
    assert results["64-true"] == pytest.approx(results["32"], rel=1e-5)
    torch.manual_seed(1)
    expected = model.sample_prior(15)
    for dtype in (torch.float64, torch.bfloat16):
        torch.manual_seed(1)
        codes = copy.deepcopy(model).to(dtype).sample_prior(15)
        assert codes.dtype == dtype
        torch.testing.assert_close(codes.float(), expected, rtol=1e-2, atol=1e-2)


# --- auto-decoder ---------------------------------------------------------------------------------------------------
@pytest.fixture
def trained_autodecoder(data_dir: Path, tmp_path: Path) -> AutoDecoder:
    torch.manual_seed(0)
    model = AutoDecoder(**TINY, inference_steps=3)
    make_trainer(tmp_path, max_epochs=2, limit_train_batches=1.0, limit_val_batches=0).fit(
        model, datamodule=tiny_data(data_dir)
    )
    return model.eval()


def test_autodecoder_takes_num_codes_from_the_training_split(trained_autodecoder: AutoDecoder) -> None:
    assert trained_autodecoder.num_codes == 220 == trained_autodecoder.hparams.num_codes
    assert trained_autodecoder.codes.weight.shape == (220, 4)


def test_autodecoder_codes_of_unseen_images_improve_with_inference_steps(trained_autodecoder: AutoDecoder) -> None:
    x, _ = images(8)
    model = trained_autodecoder
    losses_by_steps = [model.code_loss(model.encode(x, steps=steps), x).mean().item() for steps in (0, 5, 50)]
    assert losses_by_steps[0] > losses_by_steps[1] > losses_by_steps[2]


def test_autodecoder_inference_leaves_the_decoder_alone(trained_autodecoder: AutoDecoder) -> None:
    model = trained_autodecoder
    before = parameters_of(model.decoder)
    model.decoder.zero_grad(set_to_none=True)
    x, _ = images(8)
    with torch.inference_mode():  # as in Lightning's validation, test and predict loops
        z = model.encode(x, steps=10)
    assert z.shape == (8, 4) and not z.requires_grad
    assert not changed(before, model.decoder)
    assert all(p.grad is None for p in model.decoder.parameters())


class FreshCodeFits(Callback):
    """At each validation, the ``val/recon`` of codes fitted anew to the decoder of the moment, and the one logged."""

    def __init__(self) -> None:
        self.fresh: list[float] = []
        self.logged: list[float] = []

    def on_validation_batch_start(self, trainer: L.Trainer, model: AutoDecoder, batch, batch_idx: int) -> None:
        x = batch[0]
        z = model.fit_codes(x, model.inference_steps)
        self.fresh.append(model.mean_reconstruction_loss(model.decoder(z), x).item())

    def on_validation_end(self, trainer: L.Trainer, model: AutoDecoder) -> None:
        self.logged.append(trainer.callback_metrics["val/recon"].item())


def test_autodecoder_codes_are_fitted_to_the_decoder_of_the_moment(tmp_path: Path) -> None:
    # The default (fused) Adam updates the decoder without bumping the parameters' version counters.
    torch.manual_seed(0)
    x = torch.rand(32, 1, 8, 8)
    data = torch.utils.data.TensorDataset(x, torch.zeros(32, dtype=torch.long), torch.arange(32))
    adam = functools.partial(torch.optim.Adam, lr=0.02)
    model = AutoDecoder(input_shape=(1, 8, 8), latent_dim=3, hidden_dims=[16], num_codes=32, inference_steps=5,
                        optimizer=adam)  # fmt: skip
    optimizer = model.configure_optimizers()["optimizer"]
    assert optimizer.defaults["fused"]
    before = model.eval().encode(x[:8])
    model.train().loss_terms(x[:8], None, torch.arange(8))["loss"].backward()
    optimizer.step()
    after = model.eval().encode(x[:8])
    assert not torch.equal(before, after)
    torch.testing.assert_close(after, model.fit_codes(x[:8], model.inference_steps))
    # In a fit: each epoch's val/recon is that of codes fitted to that epoch's decoder.
    fits = FreshCodeFits()
    loader = torch.utils.data.DataLoader
    make_trainer(tmp_path, max_epochs=3, limit_train_batches=None, num_sanity_val_steps=0, callbacks=[fits]).fit(
        model.train(), loader(data, batch_size=8), loader(data, batch_size=16)
    )
    assert len(fits.logged) == 3 and len(set(fits.fresh)) == 3
    assert fits.logged == pytest.approx(fits.fresh, rel=1e-5)


def test_autodecoder_fits_each_test_and_predict_batch_once(tmp_path: Path) -> None:
    torch.manual_seed(0)
    x = torch.rand(12, 1, 8, 8)
    data = torch.utils.data.TensorDataset(x, torch.zeros(12, dtype=torch.long), torch.arange(12))
    model = AutoDecoder(input_shape=(1, 8, 8), latent_dim=3, hidden_dims=[16], num_codes=12, inference_steps=2)
    fitted = []
    fit_codes = model.fit_codes
    model.fit_codes = lambda images, steps: fitted.append(len(images)) or fit_codes(images, steps)
    trainer, loader = make_trainer(tmp_path), torch.utils.data.DataLoader(data, batch_size=4)
    trainer.test(model, loader, verbose=False)
    trainer.predict(model, loader)
    assert fitted == [4] * 6
    model.encode(x[:4])
    model.encode(x[:4])
    assert fitted == [4] * 8  # outside a batch, every call fits


def test_autodecoder_num_codes_must_match_the_training_set(data_dir: Path, tmp_path: Path) -> None:
    model = AutoDecoder(**TINY, num_codes=7)
    with pytest.raises(ValueError, match=r"num_codes=7 codes, but the training set of MNISTDataModule has 220 images"):
        make_trainer(tmp_path).fit(model, datamodule=tiny_data(data_dir))


def test_autodecoder_checkpoint_with_other_number_of_codes_is_an_error(trained_autodecoder: AutoDecoder) -> None:
    checkpoint = {"state_dict": {"codes.weight": torch.zeros(5, 4)}}
    with pytest.raises(ValueError, match=r"checkpoint holds 5 codes, but this AutoDecoder has num_codes=220"):
        trained_autodecoder.on_load_checkpoint(checkpoint)


# --- conditional VAE ------------------------------------------------------------------------------------------------
def test_cvae_samples_and_decodes_per_label() -> None:
    model = build(ConditionalVAE, {}).eval()
    samples = model.sample(4, y=torch.tensor([3, 3, 7, 7]))
    assert samples.shape == (4, 1, 28, 28)
    z = torch.randn(1, 4).expand(2, 4)
    decoded = model.decode(z, y=torch.tensor([0, 1]))
    assert not torch.allclose(decoded[0], decoded[1])  # the same code, two labels: two images
    with pytest.raises(ValueError, match="needs labels"):
        model.encode(images()[0])
    with pytest.raises(ValueError, match=r"labels must lie in 0\.\.9 \(num_classes=10\), got labels from 0 to 12"):
        model.sample(2, y=torch.tensor([0, 12]))
    # Labels that do not name one class per image are refused, not repeated, cut or broadcast.
    x = images(6)[0]
    with pytest.raises(ValueError, match=r"one per image: 4 images \(or codes\), got 2 labels"):
        model.decode(torch.randn(4, 4), y=torch.tensor([7, 3]))
    with pytest.raises(ValueError, match=r"one per image: 6 images \(or codes\), got 3 labels"):
        model.encode(x, y=torch.tensor([0, 1, 2]))
    for bad, found in [(torch.tensor([2.7] * 6), "torch.float32 tensor of shape [6]"),
                       (torch.ones(6, 1, dtype=torch.long), "torch.int64 tensor of shape [6, 1]"),
                       (torch.ones(6, dtype=torch.bool), "torch.bool"), ([0.5] * 6, "torch.float32")]:  # fmt: skip
        with pytest.raises(ValueError, match=rf"one integer class per image, a tensor \[6\]; got .*{re.escape(found)}"):
            model.encode(x, y=bad)


def test_cvae_importance_weighted_bound_is_conditioned() -> None:
    model = build(ConditionalVAE, {"nll_samples": 6, "nll_chunk_size": 3}).eval()
    x, labels = images(4)
    nll = model.importance_weighted_nll(x, y=labels)
    assert nll.shape == (4,) and torch.isfinite(nll).all()
    assert not torch.allclose(nll, model.importance_weighted_nll(x, y=(labels + 1) % 10))


# --- bad input ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "cls, kwargs, message",
    [
        (
            DenoisingAutoencoder,
            {"corruption": "gaussian", "corruption_level": -0.1},
            "gaussian noise std must be >= 0, got -0.1",
        ),
        (DenoisingAutoencoder, {"corruption": "masking", "corruption_level": 1.0}, r"masking fraction .* got 1.0"),
        (DenoisingAutoencoder, {"corruption": "salt_and_pepper", "corruption_level": -0.2}, r"got -0.2"),
        (DenoisingAutoencoder, {"corruption": "blur"}, "got 'blur'"),
        (DropoutAutoencoder, {"input_dropout": 1.0}, r"input_dropout must lie in \[0, 1\), got 1.0"),
        (DropoutAutoencoder, {"dropout": -0.1}, r"dropout must lie in \[0, 1\), got -0.1"),
        (SparseAutoencoder, {"sparsity_target": 0.0}, r"sparsity_target must lie in \(0, 1\), got 0.0"),
        (SparseAutoencoder, {"sparsity_target": 1.5}, r"sparsity_target must lie in \(0, 1\), got 1.5"),
        (SparseAutoencoder, {"sparsity_weight": -1.0}, "sparsity_weight must be >= 0, got -1.0"),
        (ContractiveAutoencoder, {"contractive_weight": -0.5}, "contractive_weight must be >= 0, got -0.5"),
        (  # torch.func failed at the first training step: "attempted to call in-place operation (aten::add_.Tensor)"
            ContractiveAutoencoder,
            {"encoder": nn.Sequential(nn.Flatten(), nn.Linear(784, 16), nn.BatchNorm1d(16), nn.Linear(16, 4))},
            "the encoder's BatchNorm1d '2' normalizes by the statistics of the whole batch .* use LayerNorm",
        ),
        (
            AdversarialAutoencoder,
            {"prior": "mixture", "mixture_components": 0},
            "mixture_components must be an integer >= 1, got 0",
        ),
        (AdversarialAutoencoder, {"adversarial_weight": -1.0}, "adversarial_weight must be >= 0, got -1.0"),
        (AutoDecoder, {"code_prior_weight": -0.1}, "code_prior_weight must be >= 0, got -0.1"),
        (AutoDecoder, {"num_codes": 0}, "num_codes must be an integer >= 1, got 0"),
        (ConditionalVAE, {"num_classes": 0}, "num_classes must be an integer >= 1, got 0"),
    ],
)
def test_bad_arguments_are_errors_naming_the_value(cls: type, kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        cls(**{**TINY, **kwargs})


@pytest.mark.parametrize("name", ["AdversarialAutoencoder", "DeepBeliefAutoencoder"])
def test_a_gradient_clip_algorithm_that_no_clip_value_reads_is_refused(name: str) -> None:
    # accepted, and no step clipped: the variants optimize manually and clip only by their own gradient_clip_val
    import ae_lightning

    cls = getattr(ae_lightning, name)
    with pytest.raises(ValueError, match=r"gradient_clip_algorithm='value' has no effect without gradient_clip_val"):
        cls(input_shape=(1, 28, 28), hidden_dims=(8,), latent_dim=2, gradient_clip_algorithm="value")
    model = cls(
        input_shape=(1, 28, 28), hidden_dims=(8,), latent_dim=2, gradient_clip_val=1.0, gradient_clip_algorithm="value"
    )
    assert (model.gradient_clip_val, model.gradient_clip_algorithm) == (1.0, "value")
