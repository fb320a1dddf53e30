"""The VAEs of issue 26: their loss terms against values worked out by hand or in closed form, and what each model
promises beyond the shared suite of ``test_variants.py``."""

from __future__ import annotations

import math
import re
import warnings
from functools import partial
from pathlib import Path

import lightning as L
import pytest
import torch
import yaml
from torch.distributions import Categorical, Independent, MixtureSameFamily, Normal
from torch.utils.data import DataLoader, TensorDataset

from ae_lightning import DIPVAE, IAFVAE, VAE, BetaTCVAE, ConditionalVAE, FactorVAE, InfoVAE, VampPriorVAE
from ae_lightning.blocks import divergences, losses
from ae_lightning.blocks.flows import MADE, IAFStep, InverseAutoregressiveFlow

TINY = {"latent_dim": 4, "hidden_dims": [16], "input_shape": (1, 8, 8)}


# --- total correlation (Chen et al. 2018) ---------------------------------------------------------------------------
def test_total_correlation_of_identical_posteriors_is_the_log_dataset_size_closed_form() -> None:
    # Every posterior the same: log q(z_i) = log q(z_i | x) + log M - log(N M) = log q(z_i | x) - log N, and each
    # marginal likewise, so mi = log N, tc = (D - 1) log N and dwkl = E[sum_d log q(z_d | x)] - log N - E[log p(z)].
    torch.manual_seed(0)
    m, d, n = 6, 3, 1000
    mu, logvar = torch.full((m, d), 0.3), torch.full((m, d), math.log(0.25))
    z = mu + 0.5 * torch.randn(m, d)
    terms = divergences.total_correlation_terms(z, mu, logvar, dataset_size=n)
    assert terms["mi"].item() == pytest.approx(math.log(n), rel=1e-5)
    assert terms["tc"].item() == pytest.approx((d - 1) * math.log(n), rel=1e-5)
    log_q = Normal(mu, 0.5).log_prob(z).sum(-1)
    expected_dwkl = (log_q - d * math.log(n) - Normal(0.0, 1.0).log_prob(z).sum(-1)).mean()
    assert terms["dwkl"].item() == pytest.approx(expected_dwkl.item(), rel=1e-5)


def test_total_correlation_terms_sum_to_the_monte_carlo_kl() -> None:
    # mi + tc + dwkl = E[log q(z | x) - log p(z)] exactly, whatever the posteriors
    torch.manual_seed(1)
    mu, logvar = torch.randn(8, 5), torch.randn(8, 5) * 0.3
    z = mu + torch.randn(8, 5) * torch.exp(0.5 * logvar)
    terms = divergences.total_correlation_terms(z, mu, logvar, dataset_size=100)
    expected = (Normal(mu, torch.exp(0.5 * logvar)).log_prob(z).sum(-1) - Normal(0.0, 1.0).log_prob(z).sum(-1)).mean()
    torch.testing.assert_close(terms["mi"] + terms["tc"] + terms["dwkl"], expected)


def test_far_apart_posteriors_have_mutual_information_log_nm() -> None:
    # each code's density comes from its own posterior only: log q(z_i) = log q(z_i | x_i) - log(N M)
    mu = torch.tensor([[0.0, 0.0], [100.0, 100.0], [-100.0, 100.0]])
    logvar = torch.full((3, 2), math.log(0.01))
    terms = divergences.total_correlation_terms(mu.clone(), mu, logvar, dataset_size=10)
    assert terms["mi"].item() == pytest.approx(math.log(30), rel=1e-5)


def test_stratified_total_correlation_is_exact_when_the_batch_is_the_dataset() -> None:
    # N = M: every posterior of the dataset is in the batch, so q(z_i) = mean_j q(z_i | x_j) exactly
    torch.manual_seed(2)
    mu, logvar = torch.randn(5, 3), torch.randn(5, 3) * 0.3
    z = mu + torch.randn(5, 3) * torch.exp(0.5 * logvar)
    terms = divergences.total_correlation_terms(z, mu, logvar, dataset_size=5, estimator="mss")
    posteriors = Normal(mu[None], torch.exp(0.5 * logvar[None]))  # [1, M, D] against codes [M, 1, D]
    log_q_z = posteriors.log_prob(z[:, None]).sum(-1).logsumexp(1) - math.log(5)
    log_marginals = (posteriors.log_prob(z[:, None]).logsumexp(1) - math.log(5)).sum(-1)
    torch.testing.assert_close(terms["tc"], (log_q_z - log_marginals).mean())
    torch.testing.assert_close(terms["mi"], (Normal(mu, torch.exp(0.5 * logvar)).log_prob(z).sum(-1) - log_q_z).mean())


def test_stratified_sampling_finds_the_closed_form_terms_weighted_sampling_is_offset_from() -> None:
    # Means from N(0, (1 - s^2) C), posteriors N(mu, s^2 I), a dataset of 10^6: the codes' distribution q(z) is the
    # Gaussian N(0, S), S = (1 - s^2) C + s^2 I, of unit variances, so tc = (sum_d log S_dd - log det S) / 2,
    # mi = (log det S - D log s^2) / 2 and dwkl = 0. MWS's terms are offset by log N, (D - 1) log N and -D log N.
    generator = torch.Generator().manual_seed(0)
    d, m, n, s = 3, 256, 10**6, 0.5
    correlation = torch.tensor([[1.0, 0.6, 0.3], [0.6, 1.0, 0.0], [0.3, 0.0, 1.0]])
    covariance = (1 - s**2) * correlation + s**2 * torch.eye(d)
    closed_form = {
        "mi": 0.5 * (torch.logdet(covariance) - d * math.log(s**2)).item(),  # 1.934
        "tc": 0.5 * (covariance.diagonal().log().sum() - torch.logdet(covariance)).item(),  # 0.146
        "dwkl": 0.0,
    }
    offsets = {"mi": math.log(n), "tc": (d - 1) * math.log(n), "dwkl": -d * math.log(n)}
    scale, logvar = torch.linalg.cholesky((1 - s**2) * correlation), torch.full((m, d), 2 * math.log(s))
    estimates = {name: partial(divergences.total_correlation_terms, estimator=name) for name in ("mws", "mss")}
    found = {estimator: {name: 0.0 for name in closed_form} for estimator in estimates}
    for _ in range(8):
        mu = torch.randn(m, d, generator=generator) @ scale.T
        z = mu + s * torch.randn(m, d, generator=generator)
        for estimator, estimate in estimates.items():
            for name, value in estimate(z, mu, logvar, n).items():
                found[estimator][name] += value.item() / 8
    assert found["mss"] == pytest.approx(closed_form, abs=0.1)
    assert found["mws"] == pytest.approx({name: closed_form[name] + offsets[name] for name in offsets}, abs=0.2)


def test_beta_tcvae_trains_on_and_logs_the_chosen_estimator() -> None:
    x, labels, indices = batch(16)
    estimates = {name: partial(divergences.total_correlation_terms, estimator=name) for name in ("mws", "mss")}
    for estimator, estimate in estimates.items():
        torch.manual_seed(0)
        model = BetaTCVAE(**TINY, dataset_size=1000, estimator=estimator)
        torch.manual_seed(1)
        terms = model.loss_terms(x, labels, indices)
        mu, logvar = model.posterior_parameters(x)
        torch.manual_seed(1)
        expected = estimate(mu + torch.randn_like(mu) * torch.exp(0.5 * logvar), mu, logvar, 1000)
        torch.testing.assert_close({name: terms[name] for name in expected}, expected)
        weighted = terms["mi"] + 6.0 * terms["tc"] + terms["dwkl"]
        torch.testing.assert_close(terms["loss"], terms["recon"] + model.kl_weight() * weighted)


@pytest.mark.parametrize("estimator", ["MWS", "stratified"])
def test_total_correlation_terms_refuse_an_unknown_estimator(estimator: str) -> None:
    # any other name than "mws" was taken as minibatch-stratified sampling
    z = torch.randn(4, 3)
    with pytest.raises(ValueError, match=f"estimator must be 'mws' or 'mss', got '{estimator}'"):
        divergences.total_correlation_terms(z, z, torch.zeros(4, 3), 100, estimator)


def test_beta_tcvae_trained_on_plain_loaders_takes_their_dataset_size() -> None:
    # dataset_size None with data not from a datamodule: N was silently the batch size (16), not the 64 samples
    data = TensorDataset(torch.rand(64, 1, 8, 8), torch.zeros(64), torch.arange(64))
    trainer = partial(L.Trainer, max_steps=1, logger=False, enable_progress_bar=False, enable_model_summary=False,
                      enable_checkpointing=False, accelerator="cpu")  # fmt: skip
    model = BetaTCVAE(**TINY, estimator="mss")
    trainer().fit(model, DataLoader(data, batch_size=16))
    assert model.dataset_size == 64

    class Stream(torch.utils.data.IterableDataset):
        def __iter__(self):
            return iter(data)

    with pytest.raises(ValueError, match="cannot read the training set's size from DataLoader: set dataset_size"):
        trainer().fit(BetaTCVAE(**TINY), DataLoader(Stream(), batch_size=16))


# --- DIP-VAE --------------------------------------------------------------------------------------------------------
def test_dip_regularizer_hand_values() -> None:
    # means (1, 1) and (-1, -1): covariance [[1, 1], [1, 1]] (divided by M = 2)
    mu, logvar = torch.tensor([[1.0, 1.0], [-1.0, -1.0]]), torch.full((2, 2), math.log(3.0))
    # i: off-diagonal 1^2 + 1^2 = 2, diagonal (1 - 1)^2 = 0
    assert divergences.dip_regularizer(mu, logvar, "i", 10.0, 100.0).item() == pytest.approx(20.0)
    # ii: the mean variance 3 joins the diagonal: 2 * (4 - 1)^2 = 18
    assert divergences.dip_regularizer(mu, logvar, "ii", 10.0, 1.0).item() == pytest.approx(20.0 + 18.0)
    with pytest.raises(ValueError, match="dip_type must be 'i' or 'ii', got 'iii'"):
        divergences.dip_regularizer(mu, logvar, "iii", 1.0, 1.0)


# --- MMD ------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kernel, scale, cross", [("imq", 1.0, 0.5), ("imq", 3.0, 0.75), ("rbf", 2.0, math.exp(-0.5))])
def test_mmd_hand_value(kernel: str, scale: float, cross: float) -> None:
    # x = {0, 0}, y = {1, 1} in 1-D: within-sample kernels are k(0) = 1, across k(1) = cross; MMD^2 = 2 - 2 cross
    x, y = torch.zeros(2, 1), torch.ones(2, 1)
    value = divergences.maximum_mean_discrepancy(x, y, kernel, scale)
    assert value.item() == pytest.approx(2 - 2 * cross)


def test_mmd_tells_shifted_from_matching_samples() -> None:
    generator = torch.Generator().manual_seed(0)
    prior = torch.randn(400, 3, generator=generator)
    same = divergences.maximum_mean_discrepancy(torch.randn(400, 3, generator=generator), prior)
    shifted = divergences.maximum_mean_discrepancy(torch.randn(400, 3, generator=generator) + 1.0, prior)
    assert abs(same.item()) < 0.01 < shifted.item()
    with pytest.raises(ValueError, match="at least 2 samples on each side, got 1 and 400"):
        divergences.maximum_mean_discrepancy(prior[:1], prior)
    with pytest.raises(ValueError, match="kernel must be 'rbf' or 'imq', got 'cauchy'"):
        divergences.maximum_mean_discrepancy(prior, prior, "cauchy")


# --- mixture prior --------------------------------------------------------------------------------------------------
def test_gaussian_mixture_log_prob_matches_closed_form_and_torch() -> None:
    z = torch.tensor([[0.5, -1.0]])
    # one component N(0, diag(1, 4)): by hand -0.5 (0.25 + 1/4 + log 4 + 2 log 2 pi)
    one = divergences.gaussian_mixture_log_prob(z, torch.zeros(1, 2), torch.tensor([[0.0, math.log(4.0)]]))
    assert one.item() == pytest.approx(-0.5 * (0.25 + 0.25 + math.log(4) + 2 * math.log(2 * math.pi)))
    torch.manual_seed(0)
    means, logvars, points = torch.randn(7, 3), torch.randn(7, 3) * 0.5, torch.randn(5, 4, 3)
    mixture = MixtureSameFamily(
        Categorical(logits=torch.zeros(7)), Independent(Normal(means, torch.exp(0.5 * logvars)), 1)
    )
    torch.testing.assert_close(divergences.gaussian_mixture_log_prob(points, means, logvars), mixture.log_prob(points))
    # sharp components far from the origin, under bf16 autocast and in chunks: as float64's value
    means, logvars = torch.randn(500, 50, dtype=torch.float64) + 3, torch.rand(500, 50, dtype=torch.float64) * -14
    points = means[:40] + 0.01 * torch.randn(40, 50, dtype=torch.float64)
    exact = MixtureSameFamily(
        Categorical(logits=torch.zeros(500, dtype=torch.float64)), Independent(Normal(means, (0.5 * logvars).exp()), 1)
    ).log_prob(points)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = divergences.gaussian_mixture_log_prob(points.float(), means.float(), logvars.float())
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), exact, atol=1e-2, rtol=1e-5)  # expanded in bf16: 1e5 nats off; float32: 14


def test_permute_dims_shuffles_each_dimension_separately() -> None:
    z = torch.arange(200.0).reshape(100, 2)
    z[:, 1] = z[:, 0]  # two identical dimensions
    permuted = divergences.permute_dims(z, torch.Generator().manual_seed(0))
    for d in range(2):  # each column keeps its values
        assert torch.equal(permuted[:, d].sort().values, z[:, d].sort().values)
    assert (permuted[:, 0] != permuted[:, 1]).float().mean() > 0.9  # the pairing is broken


# --- IAF ------------------------------------------------------------------------------------------------------------
def test_made_is_autoregressive() -> None:
    torch.manual_seed(0)
    made = MADE(5, [16, 16])
    z = torch.randn(5)
    jacobian_m = torch.autograd.functional.jacobian(lambda t: made(t)[0], z)
    jacobian_s = torch.autograd.functional.jacobian(lambda t: made(t)[1], z)
    upper = torch.ones(5, 5).triu()  # output i may depend on inputs j < i only
    assert (jacobian_m * upper).abs().max() == 0 and (jacobian_s * upper).abs().max() == 0
    assert (jacobian_m.tril(-1) != 0).any()


@pytest.mark.parametrize("steps", [1, 2, 3])
def test_iaf_log_det_matches_the_jacobian(steps: int) -> None:
    torch.manual_seed(0)
    flow = InverseAutoregressiveFlow(4, steps, [12])
    for step in flow.steps:  # away from the identity
        torch.nn.init.normal_(step.made.net[-1].weight, std=0.5)
    z = torch.randn(4)
    jacobian = torch.autograd.functional.jacobian(lambda t: flow(t)[0], z)
    _, log_det = flow(z)
    assert log_det.item() == pytest.approx(torch.linalg.slogdet(jacobian)[1].item(), abs=1e-5)
    assert isinstance(flow.steps[0], IAFStep)


def test_a_new_flow_is_one_scaling_of_every_code_whatever_the_context() -> None:
    torch.manual_seed(0)
    flow = InverseAutoregressiveFlow(4, 3, [12], forget_bias=1.5, context_dim=3)
    z, context = torch.randn(5, 4), torch.randn(5, 3)
    out, log_det = flow(z, context)
    gate = torch.sigmoid(torch.tensor(1.5))
    torch.testing.assert_close(out, gate**3 * z)
    torch.testing.assert_close(log_det, torch.full((5,), 3 * 4 * gate.log().item()))


def test_a_flow_with_context_is_each_images_own_and_its_log_det_still_matches_the_jacobian() -> None:
    torch.manual_seed(0)
    flow = InverseAutoregressiveFlow(4, 2, [12], context_dim=3)
    for step in flow.steps:  # away from the identity
        torch.nn.init.normal_(step.made.net[-1].weight, std=0.5)
    z, context = torch.randn(4), torch.randn(3)
    jacobian = torch.autograd.functional.jacobian(lambda t: flow(t, context)[0], z)
    out, log_det = flow(z, context)
    assert log_det.item() == pytest.approx(torch.linalg.slogdet(jacobian)[1].item(), abs=1e-5)
    assert not torch.allclose(out, flow(z, torch.randn(3))[0])  # another image's context, another flow
    made = flow.steps[0].made  # still autoregressive in z
    jacobian_m = torch.autograd.functional.jacobian(lambda t: made(t, context)[0], z)
    assert (jacobian_m * torch.ones(4, 4).triu()).abs().max() == 0
    with pytest.raises(ValueError, match="this MADE takes a context vector"):
        made(z)


def test_the_iaf_encoder_learns_from_its_sample_not_through_the_flows_context() -> None:
    torch.manual_seed(0)
    model = IAFVAE(**TINY)
    x = batch(4)[0]
    mu, logvar = model.posterior_parameters(x)
    _, log_det = model.posterior_flow(torch.zeros_like(mu), mu, logvar)  # the flow's own terms, at z = 0
    assert torch.autograd.grad(log_det.sum(), [mu, logvar], allow_unused=True) == (None, None)  # none via the context
    recon, kl = model.elbo_terms(x)
    (recon + kl).mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.encoder.parameters())
    assert all(p.grad is not None for p in model.flow.parameters())


def test_the_iaf_kl_is_the_closed_form_at_the_identity_flow_and_the_sampled_kl_with_less_noise_elsewhere() -> None:
    torch.manual_seed(0)
    model = IAFVAE(**TINY, forget_bias=50.0)  # gates at 1: z_T = z_0 whatever the MADEs say
    for step in model.flow.steps:
        torch.nn.init.zeros_(step.made.net[-1].weight)
    x = batch(4)[0]
    mu, logvar = model.posterior_parameters(x)
    for _ in range(3):  # every draw, not only on average
        torch.testing.assert_close(model.elbo_terms(x)[1], model.kl_divergence(mu, logvar))
    # Away from the identity, the same expectation as log q(z_T | x) - log p(z_T), with a smaller spread where the
    # code is informative (here every image's posterior N(1, 0.1^2), as a trained encoder's active dimensions).
    model = IAFVAE(**TINY)
    for step in model.flow.steps:
        torch.nn.init.normal_(step.made.net[-1].weight, std=0.05)
    last = [m for m in model.encoder.modules() if isinstance(m, torch.nn.Linear)][-1]
    torch.nn.init.zeros_(last.weight)
    last.bias.data = torch.tensor([1.0] * 4 + [math.log(0.01)] * 4)
    many = batch(1)[0].expand(20000, -1, -1, -1)
    with torch.no_grad():
        kl = model.elbo_terms(many)[1]
        mu, logvar = model.posterior_parameters(many[:1])
        _, log_p, log_q = model.log_densities(many[:1], mu, logvar, 20000)
    plain = (log_q - log_p).flatten()
    assert abs(kl.mean() - plain.mean()) < 4 * (plain.std() / math.sqrt(len(plain)))
    assert kl.std() < 0.5 * plain.std()


def test_the_iaf_posterior_is_no_normal_and_is_not_passed_off_as_one() -> None:
    # posterior(x) gave the Gaussian before the flow as "q(z | x)": its entropy 4.0 nats where the model's is -3.8
    model = IAFVAE(**TINY, flow_hidden_dims=[8])
    with pytest.raises(NotImplementedError, match="IAFVAE's posterior q\\(z \\| x\\) is the flow of a Normal"):
        model.posterior(batch(2)[0])


def test_an_iaf_checkpoint_without_the_flow_context_is_refused_by_name_and_loads_without_it(tmp_path: Path) -> None:
    old = IAFVAE(**TINY, flow_context=False)
    trainer = L.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False, max_epochs=0)
    trainer.strategy.connect(old)
    path = tmp_path / "old.ckpt"
    trainer.save_checkpoint(path)
    checkpoint = torch.load(path, weights_only=False)
    del checkpoint["hyper_parameters"]["flow_context"]  # as an earlier release saved it: no context, no masks
    checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if not k.endswith(".mask")}
    torch.save(checkpoint, path)
    with pytest.raises(ValueError, match="trained before the flow took the encoder's context.*flow_context=False"):
        IAFVAE.load_from_checkpoint(path)
    loaded = IAFVAE.load_from_checkpoint(path, flow_context=False)
    x = batch(4)[0]
    torch.testing.assert_close(loaded.eval().encode(x), old.eval().encode(x))


def test_the_context_reaches_every_output_of_a_made_and_a_checkpoint_keeps_the_masks_it_was_trained_with(
    tmp_path: Path,
) -> None:
    torch.manual_seed(0)
    made, z = MADE(4, [12, 12], context_dim=3), torch.randn(4)
    first = torch.autograd.functional.jacobian(lambda c: made(z, c)[0][0], torch.randn(3))
    assert first.abs().sum() > 0  # output 1 sees no code element, but the context
    # A context checkpoint of the release that saved no masks (its MADEs masked as MADEs without a context) loads with
    # those masks, so that it computes what it was trained to.
    old = IAFVAE(**TINY, flow_context=True)
    for step in old.flow.steps:
        for mine, legacy in zip(step.made.net, MADE(old.latent_dim, old.hparams.flow_hidden_dims).net):
            if hasattr(mine, "mask"):
                mine.mask.copy_(legacy.mask)
    trainer = L.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False, max_epochs=0)
    trainer.strategy.connect(old)
    path = tmp_path / "old.ckpt"
    trainer.save_checkpoint(path)
    checkpoint = torch.load(path, weights_only=False)
    checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if not k.endswith(".mask")}
    torch.save(checkpoint, path)
    x = batch(4)[0]
    torch.testing.assert_close(IAFVAE.load_from_checkpoint(path).eval().encode(x), old.eval().encode(x))
    assert not torch.allclose(
        IAFVAE(**TINY, flow_context=True).flow.steps[0].made.net[0].mask, old.flow.steps[0].made.net[0].mask
    )


# --- the models -----------------------------------------------------------------------------------------------------
def batch(n: int = 16) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(2)
    return (
        (torch.rand(n, 1, 8, 8, generator=generator) > 0.5).float(),
        torch.zeros(n, dtype=torch.long),
        torch.arange(n),
    )


def test_beta_tcvae_with_unit_weights_is_the_vae_in_expectation() -> None:
    torch.manual_seed(0)
    model = BetaTCVAE(**TINY, tc_weight=1.0, dataset_size=50)
    x, labels, indices = batch(64)
    terms = model.loss_terms(x, labels, indices)
    assert {"mi", "tc", "dwkl", "kl", "recon"} <= set(terms)
    decomposed = terms["mi"] + terms["tc"] + terms["dwkl"]
    assert decomposed.item() == pytest.approx(terms["kl"].item(), rel=0.3)


def test_dip_vae_lambda_d_defaults_follow_the_paper() -> None:
    assert DIPVAE(**TINY, dip_type="i", lambda_od=5.0).lambda_d == 50.0
    assert DIPVAE(**TINY, dip_type="ii", lambda_od=5.0).lambda_d == 5.0


def test_info_vae_weights_and_wae_code() -> None:
    model = InfoVAE(**TINY, alpha=1.0, lambda_weight=10.0, deterministic=True)
    x, labels, indices = batch()
    torch.manual_seed(0)
    terms = model.loss_terms(x, labels, indices)
    # alpha = 1: no KL in the loss, the MMD weighted by lambda
    torch.testing.assert_close(terms["loss"], terms["recon"] + 10.0 * terms["mmd"])
    mu = model.posterior_parameters(x)[0]
    torch.testing.assert_close(terms["recon"], -model.log_likelihood(model.decoder(mu), x).mean())


def test_the_wae_anomaly_score_is_the_reconstruction_of_its_code_not_sampling_noise() -> None:
    # The WAE never trains the posterior's variance, so the sampled negative ELBO (the VAE's score) ranked images by
    # noise: after 300 steps on Fashion-MNIST two draws of the same 200 images had a rank correlation of 0.4.
    model = InfoVAE(**TINY, alpha=1.0, deterministic=True).eval()
    x = batch()[0]
    scores = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        scores.append(model.anomaly_score(x))
    torch.testing.assert_close(scores[0], scores[1])
    torch.testing.assert_close(scores[0], -model.log_likelihood(model.decoder(model.encode(x)), x))


def test_factor_vae_discriminator_learns_a_correlated_code(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = FactorVAE(**TINY, discriminator_hidden_dims=[32])
    optimizer = torch.optim.Adam(model.discriminator.parameters(), lr=1e-2)
    shared = torch.randn(256, 1)
    z = torch.cat([shared, shared, torch.randn(256, 2)], 1)  # dimensions 0 and 1 equal: high total correlation
    for _ in range(200):
        optimizer.zero_grad()
        d_loss, _ = model.discriminator_terms(z)
        d_loss.backward()
        optimizer.step()
    _, accuracy = model.discriminator_terms(z)
    assert accuracy > 0.8
    assert model.discriminator(z).mean() > 1.0  # the total-correlation estimate is clearly positive


def test_vampprior_prior_is_the_mixture_of_pseudo_input_posteriors() -> None:
    torch.manual_seed(0)
    model = VampPriorVAE(**TINY, num_pseudo_inputs=3)
    means, logvars = model.posterior_parameters(model.pseudo_input_images())
    z = torch.randn(5, 4)
    components = Normal(means, torch.exp(0.5 * logvars)).log_prob(z[:, None, :]).sum(-1)  # [5, 3]
    expected = torch.logsumexp(components, 1) - math.log(3)
    torch.testing.assert_close(model.prior_log_prob(z), expected)
    assert model.pseudo_input_images().min() >= 0 and model.pseudo_input_images().max() <= 1


def test_vampprior_importance_weighted_nll_at_one_sample_is_the_negative_elbo() -> None:
    # K = 1: the bound is the single-sample negative ELBO, the same draw as the anomaly score's (the IAF's ELBO
    # estimate has a lower-noise KL, equal in expectation: tested above)
    model = VampPriorVAE(**TINY, num_pseudo_inputs=3).eval()
    x, labels, indices = batch(4)
    torch.manual_seed(5)
    nll = model.importance_weighted_nll(x, num_samples=1)
    torch.manual_seed(5)
    torch.testing.assert_close(nll, model.anomaly_score(x))


@pytest.mark.parametrize(
    "cls, kwargs, message",
    [
        (BetaTCVAE, {"iw_samples": 3}, "BetaTCVAE trains on its own objective, not on the IWAE bound: iw_samples must"),
        (BetaTCVAE, {"tc_weight": -1.0}, "tc_weight must be >= 0, got -1.0"),
        (BetaTCVAE, {"dataset_size": 0}, "dataset_size must be an integer >= 1, got 0"),
        (BetaTCVAE, {"estimator": "iwae"}, "estimator must be one of 'mws', 'mss', got 'iwae'"),
        (DIPVAE, {"dip_type": "iii"}, "dip_type must be one of 'i', 'ii', got 'iii'"),
        (DIPVAE, {"lambda_od": -1.0}, "lambda_od must be >= 0, got -1.0"),
        (InfoVAE, {"alpha": 1.5}, r"alpha must be <= 1, got 1.5"),
        (InfoVAE, {"deterministic": True}, "set alpha: 1 \\(the WAE-MMD\\), got alpha=0.0"),
        (InfoVAE, {"kernel": "cauchy"}, "kernel must be one of 'rbf', 'imq', got 'cauchy'"),
        (InfoVAE, {"alpha": -5.0, "lambda_weight": 2.0}, "MMD weight alpha \\+ lambda_weight - 1 must be >= 0"),
        (FactorVAE, {"tc_weight": -2.0}, "tc_weight must be >= 0, got -2.0"),
        (FactorVAE, {"discriminator_hidden_dims": [0]}, "discriminator_hidden_dims"),
        (VampPriorVAE, {"num_pseudo_inputs": 0}, "num_pseudo_inputs must be an integer >= 1, got 0"),
        (IAFVAE, {"flow_steps": 0}, "flow_steps must be an integer >= 1, got 0"),
        # was "a MADE that takes a context needs at least one hidden layer (hidden_dims is empty)": not the setting
        (IAFVAE, {"flow_hidden_dims": []}, "flow_hidden_dims is empty, but the flow's steps take the context"),
    ],
)
def test_bad_arguments_are_errors_naming_the_value(cls: type, kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        cls(**{**TINY, **kwargs})


def test_standard_normal_helpers_agree() -> None:
    z = torch.randn(3, 4)
    torch.testing.assert_close(
        divergences.gaussian_log_density(z, torch.zeros(()), torch.zeros(())).sum(-1),
        losses.standard_normal_log_prob(z),
    )


def test_a_warmed_up_vae_is_evaluated_on_its_full_objective(data_dir: Path, tmp_path: Path) -> None:
    # val/loss used the warm-up's weight, so that a ModelCheckpoint on it favoured early, lightly weighted steps, and
    # test/loss was the reconstruction alone (a test run starts at step 0).
    from tiny_runs import run_cli, tiny_args

    args = tiny_args(
        "beta_vae", data_dir, tmp_path, "--trainer.max_epochs", "2", "--trainer.enable_progress_bar", "false"
    )
    cli = run_cli("fit", *args)
    assert 0 < cli.trainer.global_step < cli.model.kl_warmup_steps  # still warming up
    val = cli.trainer.callback_metrics
    torch.testing.assert_close(val["val/loss"], val["val/recon"] + 4.0 * val["val/kl"])
    (test,) = cli.trainer.test(cli.model, datamodule=cli.datamodule, verbose=False)
    assert test["test/loss"] == pytest.approx(test["test/recon"] + 4.0 * test["test/kl"], rel=1e-5)


def test_a_fit_that_ends_before_the_kl_warm_up_does_is_warned_with_the_weight_it_reaches() -> None:
    # max_steps 4 < kl_warmup_steps 10: the beta-VAE trained at most at 0.3 x beta, silently (a "beta-VAE" whose KL
    # came out above the VAE's)
    data = DataLoader(TensorDataset(torch.rand(8, 1, 8, 8), torch.arange(8) % 3, torch.arange(8)), batch_size=2)
    model = VAE(**TINY, beta=4.0, kl_warmup_steps=10)
    trainer = L.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False, max_steps=4,
                        enable_model_summary=False)  # fmt: skip
    message = "ends (max_steps 4) before the KL warm-up does (kl_warmup_steps 10): the KL weight reaches only 1.2 (0.3"
    with pytest.warns(UserWarning, match=re.escape(message)):
        trainer.fit(model, data)


@pytest.mark.parametrize("cls", [VAE, BetaTCVAE])  # BetaTCVAE's on_train_start skipped the VAE's
def test_a_fit_whose_epochs_end_before_the_kl_warm_up_does_is_warned_too(cls: type[VAE]) -> None:
    # 2 epochs of 4 batches, 8 steps < kl_warmup_steps 10: only a max_steps was checked, and every shipped config
    # sets max_epochs (configs/beta_vae.yaml for 1 epoch trained a "beta-VAE" at a tenth of beta, silently).
    data = DataLoader(TensorDataset(torch.rand(8, 1, 8, 8), torch.arange(8) % 3, torch.arange(8)), batch_size=2)
    model = cls(**TINY, beta=4.0, kl_warmup_steps=10)
    trainer = L.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False, max_epochs=2,
                        enable_model_summary=False)  # fmt: skip
    message = "ends (after 8 steps, max_epochs 2) before the KL warm-up does (kl_warmup_steps 10): the KL weight "
    with pytest.warns(UserWarning, match=re.escape(message + "reaches only 2.8 (0.7")):
        trainer.fit(model, data)
    longer = L.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False, max_epochs=3,
                       enable_model_summary=False)  # fmt: skip
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*KL warm-up.*")
        longer.fit(cls(**TINY, beta=4.0, kl_warmup_steps=10), data)  # 12 steps: warmed up


# The VAE and the variants whose loss weighs the KL (and regularizers) otherwise than the ELBO.
ELBO_VARIANTS = [(VAE, {}), (ConditionalVAE, {}), (BetaTCVAE, {}), (DIPVAE, {}), (InfoVAE, {}),
                 (FactorVAE, {"discriminator_hidden_dims": [8]}), (VampPriorVAE, {"num_pseudo_inputs": 3}),
                 (IAFVAE, {"flow_hidden_dims": [8]})]  # fmt: skip


@pytest.mark.parametrize("cls, kwargs", ELBO_VARIANTS, ids=[cls.__name__ for cls, _ in ELBO_VARIANTS])
def test_validation_and_test_log_the_negative_elbo_that_beta_does_not_weigh(cls, kwargs: dict, tmp_path: Path) -> None:
    # The same weights evaluated at beta 0.25 and 4: val/loss and test/loss differ, neg_elbo = recon + kl does not.
    data = DataLoader(TensorDataset(torch.rand(8, 1, 8, 8), torch.arange(8) % 3, torch.arange(8)), batch_size=4)
    metrics = {}
    for beta in (0.25, 4.0):
        torch.manual_seed(0)
        model = cls(**TINY, **kwargs, beta=beta, nll_samples=2)
        trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
                            default_root_dir=tmp_path)  # fmt: skip
        (val,) = trainer.validate(model, data, verbose=False)
        (test,) = trainer.test(model, data, verbose=False)
        metrics[beta] = {**val, **test}
    for stage in ("val", "test"):
        for logged in metrics.values():
            assert logged[f"{stage}/neg_elbo"] == pytest.approx(logged[f"{stage}/recon"] + logged[f"{stage}/kl"])
        assert metrics[0.25][f"{stage}/neg_elbo"] == pytest.approx(metrics[4.0][f"{stage}/neg_elbo"])
        assert metrics[0.25][f"{stage}/loss"] != pytest.approx(metrics[4.0][f"{stage}/loss"])


def test_the_shipped_vae_search_scores_its_beta_trials_on_the_negative_elbo() -> None:
    space = yaml.safe_load((Path(__file__).parents[1] / "configs" / "search" / "vae.yaml").read_text())
    assert "model.init_args.beta" in space["parameters"] and space["metric"] == "val/neg_elbo"


@pytest.mark.parametrize(
    "likelihood, std", [("bernoulli", "learned_per_pixel"), ("bernoulli", "learned"), ("continuous_bernoulli", 0.5)]
)
def test_a_gaussian_std_with_another_likelihood_is_refused_naming_both(likelihood: str, std) -> None:
    with pytest.raises(
        ValueError, match=re.escape(f"gaussian_std {std!r} is for likelihood: gaussian, not {likelihood}")
    ):
        VAE(**TINY, likelihood=likelihood, gaussian_std=std)


@pytest.mark.parametrize("cls", [BetaTCVAE, DIPVAE, FactorVAE, InfoVAE])
def test_a_subclass_decoder_logits_is_what_the_regularized_variants_train_on(cls: type[VAE]) -> None:
    class Shifted(cls):  # a researcher's output layer on top of the decoder, as a conditional model's would be
        def decoder_logits(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
            return self.decoder(z) + 3.0

    torch.manual_seed(0)
    extra = {"alpha": 1.0, "deterministic": True} if cls is InfoVAE else {}
    model = Shifted(**TINY, **extra).eval()
    x = batch(8)[0]
    torch.manual_seed(1)
    mu, logvar = model.posterior_parameters(x)
    z = mu if cls is InfoVAE else losses.reparameterize(mu, logvar)
    expected = -model.log_likelihood(model.decoder_logits(z), x).mean()
    torch.manual_seed(1)
    torch.testing.assert_close(model.loss_terms(x, batch(8)[1], batch(8)[2])["recon"], expected)


@pytest.mark.parametrize("cls, kwargs", ELBO_VARIANTS, ids=[cls.__name__ for cls, _ in ELBO_VARIANTS])
def test_samples_of_the_prior_carry_no_autograd_graph_in_either_mode(cls, kwargs: dict) -> None:
    # sample(n) kept the decoder's (and VampPrior's encoder's) activations for a backward pass nobody runs: memory
    # grew with n, and samples.numpy() was refused ("Can't call numpy() on Tensor that requires grad").
    model = cls(**TINY, **kwargs)
    for mode in (True, False):
        samples = model.train(mode).sample(5)
        assert samples.shape == (5, 1, 8, 8) and not samples.requires_grad and samples.grad_fn is None
        samples.numpy()
    if cls is ConditionalVAE:
        assert not model.sample(5, [1, 2, 3, 4, 5]).requires_grad
