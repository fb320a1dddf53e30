"""The disentanglement metrics behave as their definitions promise: codes that are the factors score high, codes
that mix or ignore them score low; and they come out of ``ae-lightning test`` on dSprites."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ae_lightning import VAE
from ae_lightning.evaluation import disentanglement as metrics
from datamodules import DSpritesDataModule
from datamodules.dsprites import FACTORS


def factor_codes(n: int = 3000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    factors = np.stack([rng.integers(0, size, n) for size in (3, 6, 10)], axis=1)
    return factors.astype(float), factors


def test_mig_is_one_for_the_factors_and_near_zero_for_noise() -> None:
    codes, factors = factor_codes()
    assert metrics.mutual_information_gap(codes, factors) > 0.95
    noise = np.random.default_rng(1).normal(size=codes.shape)
    assert metrics.mutual_information_gap(noise, factors) < 0.05
    # each factor copied into two code dimensions: no gap, whatever the information
    assert metrics.mutual_information_gap(np.concatenate([codes, codes], 1), factors) < 0.05
    with pytest.raises(ValueError, match="it needs >= 2, got 1"):
        metrics.mutual_information_gap(codes[:, :1], factors)


def test_dci_and_sap_of_the_factors_and_of_noise() -> None:
    codes, factors = factor_codes()
    good = metrics.dci(codes[:2400], factors[:2400], codes[2400:], factors[2400:])
    assert good["dci_disentanglement"] > 0.9 and good["dci_completeness"] > 0.9 and good["dci_informativeness"] > 0.95
    noise = np.random.default_rng(1).normal(size=codes.shape)
    bad = metrics.dci(noise[:2400], factors[:2400], noise[2400:], factors[2400:])
    assert bad["dci_disentanglement"] < 0.2 and bad["dci_informativeness"] < 0.5
    mixed = codes @ np.random.default_rng(2).normal(size=(3, 3))  # every code sees every factor
    assert metrics.dci(mixed[:2400], factors[:2400], mixed[2400:], factors[2400:])["dci_disentanglement"] < 0.6
    assert metrics.separated_attribute_predictability(codes[:2400], factors[:2400], codes[2400:], factors[2400:]) > 0.3
    sap_noise = metrics.separated_attribute_predictability(noise[:2400], factors[:2400], noise[2400:], factors[2400:])
    assert sap_noise < 0.05


class FactorsAsImages:
    """A toy source whose 'images' are the factors themselves, so an encoder can read them off."""

    factor_names = ("a", "b", "c")

    def sample_factors(self, n: int, generator: torch.Generator) -> torch.Tensor:
        return torch.stack([torch.randint(size, (n,), generator=generator) for size in (3, 6, 10)], 1)

    def images_of(self, factors: torch.Tensor) -> torch.Tensor:
        return factors.float()


def test_beta_vae_and_factor_vae_scores() -> None:
    source, generator = FactorsAsImages(), torch.Generator().manual_seed(0)
    identity = lambda x: x.double().numpy()  # noqa: E731 - the codes are the factors
    assert metrics.beta_vae_score(identity, source, generator, num_train=200, num_eval=100) > 0.95
    assert metrics.factor_vae_score(identity, source, generator, num_train=200, num_eval=100) > 0.95
    constant = lambda x: np.random.default_rng(0).normal(size=(len(x), 3))  # noqa: E731 - codes ignore the image
    assert metrics.factor_vae_score(constant, source, generator, num_train=200, num_eval=150) < 0.6


def test_every_metric_of_a_model_on_dsprites_and_its_traversals() -> None:
    torch.manual_seed(0)
    data = DSpritesDataModule(fixed_factors={"shape": 2})
    model = VAE(input_shape=(1, 64, 64), latent_dim=3, hidden_dims=[16])
    scores = metrics.disentanglement_metrics(metrics.model_encoder(model), data, num_points=600, num_votes=40)
    assert set(scores) == {"beta_vae", "factor_vae", "mig", "sap", "dci_disentanglement", "dci_completeness",
                           "dci_informativeness"}  # fmt: skip
    assert all(0 <= value <= 1 for value in scores.values()), scores
    assert (data.sample_factors(50, torch.Generator())[:, FACTORS.index("shape")] == 2).all()
    with pytest.raises(ValueError, match="unknown disentanglement metric 'mig2'; they are beta_vae"):
        metrics.disentanglement_metrics(metrics.model_encoder(model), data, ["mig2"])
    picture = metrics.latent_traversals(model, data.images_of(data.sample_factors(2, torch.Generator())), steps=5)
    # 2 images x 3 code dimensions rows of 5 pictures of 64x64, 2 pixels of padding around each
    assert picture.shape == (3, 6 * 66 + 2, 5 * 66 + 2) and 0 <= picture.min() and picture.max() <= 1


def test_spatial_codes_are_scored_flattened_and_their_traversals_refused() -> None:
    torch.manual_seed(0)
    data = DSpritesDataModule(fixed_factors={"shape": 2})
    model = VAE(input_shape=(1, 64, 64), network="spatial", hidden_dims=[4, 4, 4, 4], latent_dim=1,
                spatial={"num_res_blocks": 1})  # fmt: skip
    encode = metrics.model_encoder(model)
    assert encode(data.images_of(data.sample_factors(3, torch.Generator()))).shape == (3, 8 * 8)
    assert 0 <= metrics.disentanglement_metrics(encode, data, ["mig"], num_points=200)["mig"] <= 1
    assert not metrics.has_flat_codes(model) and metrics.has_flat_codes(VAE(latent_dim=2, hidden_dims=[4]))
    with pytest.raises(ValueError, match=r"flat codes \[latent_dim\]; VAE's codes have shape \[1, 8, 8\]"):
        metrics.latent_traversals(model, data.images_of(data.sample_factors(1, torch.Generator())))


def test_dci_of_a_disentangled_noisy_code_is_near_one() -> None:
    """Five of ten codes are the dSprites-sized factors (grid indices) plus 0.01 noise, the others pure noise: each
    factor lives in one code, so DCI disentanglement and completeness are ~1 (the forests must not spread importance
    onto the noise codes)."""
    rng, sizes = np.random.default_rng(0), np.array([3, 6, 40, 32, 32])
    factors = rng.integers(0, sizes, (3000, 5))
    codes = np.concatenate([factors + 0.01 * rng.normal(size=factors.shape), rng.normal(size=(3000, 5))], 1)
    scores = metrics.dci(codes[:2400], factors[:2400], codes[2400:], factors[2400:])
    assert scores["dci_disentanglement"] > 0.99 and scores["dci_completeness"] > 0.99, scores


def test_a_metric_does_not_depend_on_which_others_are_asked_for() -> None:
    """BetaVAE and FactorVAE draw from their own generators: alone or after others, the same seed, the same score."""
    source, q = FactorsAsImages(), np.linalg.qr(np.random.default_rng(0).normal(size=(3, 3)))[0]

    def mixed(images: torch.Tensor) -> np.ndarray:  # entangled, noisy codes: scores well away from 0 and 1
        noise = np.random.default_rng(int(images.sum())).normal(size=(len(images), 3))
        return images.double().numpy() @ q + 3.0 * noise

    def scores(names: list[str]) -> dict[str, float]:
        return metrics.disentanglement_metrics(mixed, source, names, num_points=500, num_votes=30, seed=0)

    alone = {name: scores([name])[name] for name in ("beta_vae", "factor_vae", "mig")}
    assert scores(["mig", "beta_vae", "factor_vae"]) == alone
