"""The RBM maths on an RBM small enough to enumerate, and the deep belief autoencoder's pretraining schedule."""

from __future__ import annotations

import itertools
import signal
import subprocess
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import Callback, EarlyStopping
from lightning.pytorch.plugins import MixedPrecision
from test_variants import make_trainer, tiny_data
from tiny_runs import command, last_checkpoint, run_cli, subprocess_env, tiny_args

from ae_lightning import DeepBeliefAutoencoder
from ae_lightning.blocks import rbm
from datamodules import MNISTDataModule

TINY_DBN = {"hidden_dims": [16], "latent_dim": 4}


def tiny_rbm() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    # large weights: the chain mixes slowly, so CD-1 is visibly biased
    shapes = ((3, 4), (4,), (3,))  # float64: sums over 100,000 chains stay exact to float precision
    weight, visible_bias, hidden_bias = (
        torch.randn(*shape, generator=generator, dtype=torch.float64) for shape in shapes
    )
    return 2 * weight, visible_bias, hidden_bias


def exact_statistics(weight: torch.Tensor, visible_bias: torch.Tensor, hidden_bias: torch.Tensor) -> rbm.Statistics:
    """The model's ``<h v^T>``, ``<v>``, ``<h>`` by summing over all 2^4 x 2^3 joint states."""
    v = torch.tensor(list(itertools.product([0.0, 1.0], repeat=4)), dtype=torch.float64)
    h = torch.tensor(list(itertools.product([0.0, 1.0], repeat=3)), dtype=torch.float64)
    energy = -(v @ visible_bias)[:, None] - (h @ hidden_bias)[None, :] - v @ weight.t() @ h.t()
    p = torch.softmax(-energy.flatten(), 0).view(16, 8)
    return rbm.Statistics(torch.einsum("vh,hi,vj->ij", p, h, v), p.sum(1) @ v, p.sum(0) @ h)


DATA = torch.tensor([[0.0, 0, 0, 1], [0, 1, 1, 0], [1, 0, 0, 1], [1, 1, 1, 0], [1, 1, 1, 1]], dtype=torch.float64)


def test_the_exact_gradient_by_enumeration_is_the_free_energy_gradient() -> None:
    weight, visible_bias, hidden_bias = tiny_rbm()
    states = torch.tensor(list(itertools.product([0.0, 1.0], repeat=4)), dtype=torch.float64)
    parameters = [p.clone().requires_grad_() for p in (weight, visible_bias, hidden_bias)]
    log_z = torch.logsumexp(-rbm.free_energy(states, *parameters), 0)
    log_likelihood = (-rbm.free_energy(DATA, *parameters)).mean() - log_z
    gradients = torch.autograd.grad(log_likelihood, parameters)
    data = rbm.statistics(DATA, rbm.hidden_mean(DATA, weight, hidden_bias))
    model = exact_statistics(weight, visible_bias, hidden_bias)
    for gradient, data_term, model_term in zip(gradients, data, model):
        torch.testing.assert_close(gradient, data_term - model_term)


def test_cd_positive_phase_is_the_data_term_and_cd_k_tends_to_the_exact_gradient() -> None:
    weight, visible_bias, hidden_bias = tiny_rbm()
    data_term = rbm.statistics(DATA, rbm.hidden_mean(DATA, weight, hidden_bias))
    exact = [d - m for d, m in zip(data_term, exact_statistics(weight, visible_bias, hidden_bias))]
    chains = DATA.repeat(20_000, 1)  # 100,000 chains: Monte Carlo noise about 0.003
    generator = torch.Generator().manual_seed(0)
    errors = []
    for k in (1, 3, 10, 30):
        update = rbm.contrastive_divergence(chains, weight, visible_bias, hidden_bias, k, generator=generator)
        for positive, expected in zip(update.positive, data_term):
            torch.testing.assert_close(positive, expected)  # exact: no sampling in the positive phase
        errors.append(max((g - e).abs().max().item() for g, e in zip(update.gradient(), exact)))
    assert errors[0] > 0.1 and errors[0] > errors[1] > errors[2], errors
    assert errors[3] < 0.01, errors
    with pytest.raises(ValueError, match=r"k \(Gibbs steps of contrastive divergence\) must be an integer >= 1, got 0"):
        rbm.contrastive_divergence(DATA, weight, visible_bias, hidden_bias, 0)


def test_gaussian_hidden_units_are_linear_with_unit_variance() -> None:
    weight, visible_bias, hidden_bias = tiny_rbm()
    mean = rbm.hidden_mean(DATA, weight, hidden_bias, "gaussian")
    torch.testing.assert_close(mean, DATA @ weight.t() + hidden_bias)
    samples = rbm.sample_hidden(mean.repeat(20_000, 1), "gaussian", torch.Generator().manual_seed(0))
    assert (samples - mean.repeat(20_000, 1)).std().item() == pytest.approx(1.0, abs=0.01)
    # exp(-F(v)) is exp(-E(v, h)) integrated over h (up to a constant): here by quadrature, one hidden unit at a time
    h = torch.linspace(-40, 40, 200_001, dtype=torch.float64)
    pre = DATA @ weight.t() + hidden_bias  # [B, H]
    log_integrals = torch.trapezoid((pre[..., None] * h - 0.5 * h * h).exp(), h).log().sum(1)
    integrated = -(DATA @ visible_bias) - log_integrals
    free_energy = rbm.free_energy(DATA, weight, visible_bias, hidden_bias, "gaussian")
    torch.testing.assert_close(free_energy - free_energy[0], integrated - integrated[0])


def deterministic_recon_error(model: DeepBeliefAutoencoder, v: torch.Tensor) -> float:
    layer = model.rbm_layers()[0]
    reconstruction = rbm.visible_mean(
        rbm.hidden_mean(v, layer.weight, layer.bias), layer.weight, model.visible_biases[0]
    )
    return (v - reconstruction).pow(2).sum(1).mean().item()


def test_pretraining_lowers_the_rbm_reconstruction_error(data_dir: Path, tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = DeepBeliefAutoencoder(**TINY_DBN, pretrain_epochs=3)
    data = tiny_data(data_dir)
    data.setup("fit")
    v = data.splits["val"][0][:64].flatten(1).float() / 255
    before = deterministic_recon_error(model, v)
    trainer = make_trainer(tmp_path, max_epochs=3, limit_train_batches=None)
    trainer.fit(model, datamodule=data)
    assert trainer.global_step == 3 * 14 and not model.unrolled  # three epochs of RBM 1, one step per batch
    with torch.no_grad():
        after = deterministic_recon_error(model, v)
    assert after < 0.6 * before, (before, after)
    assert torch.isfinite(trainer.callback_metrics["pretrain/rbm1/free_energy"])
    assert "train/loss" not in trainer.callback_metrics and "pretrain/rbm2/recon" not in trainer.callback_metrics


class RecordUnrolling(Callback):
    """Keeps the weights at the end of the last pretraining epoch and at the first fine-tuning batch."""

    def __init__(self, pretraining_epochs: int) -> None:
        self.pretraining_epochs = pretraining_epochs
        self.pretrained: dict[str, torch.Tensor] = {}
        self.unrolled: dict[str, torch.Tensor] = {}

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.current_epoch == self.pretraining_epochs - 1:
            self.pretrained = {k: v.clone() for k, v in pl_module.state_dict().items()}

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx: int) -> None:
        if trainer.current_epoch == self.pretraining_epochs and batch_idx == 0:
            self.unrolled = {k: v.clone() for k, v in pl_module.state_dict().items()}


def test_the_unrolled_decoder_starts_from_the_transposed_pretrained_weights(data_dir: Path, tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = DeepBeliefAutoencoder(**TINY_DBN, pretrain_epochs=1)
    x = torch.rand(5, 1, 28, 28)
    record = RecordUnrolling(pretraining_epochs=2)
    trainer = make_trainer(tmp_path, max_epochs=3, limit_train_batches=3, callbacks=[record])
    trainer.fit(model, datamodule=tiny_data(data_dir))
    pretrained, unrolled = record.pretrained, record.unrolled
    assert not pretrained["unrolled"] and unrolled["unrolled"] and model.unrolled
    # encoder.1/.3 are the RBMs' weights; decoder.0 mirrors encoder.3 and decoder.2 mirrors encoder.1
    for encoder, decoder, visible in (
        ("encoder.3", "decoder.0", "visible_biases.1"),
        ("encoder.1", "decoder.2", "visible_biases.0"),
    ):
        torch.testing.assert_close(unrolled[f"{decoder}.weight"], pretrained[f"{encoder}.weight"].t(), rtol=0, atol=0)
        torch.testing.assert_close(unrolled[f"{decoder}.bias"], pretrained[visible], rtol=0, atol=0)
        assert torch.equal(unrolled[f"{encoder}.weight"], pretrained[f"{encoder}.weight"])
        assert not torch.equal(model.state_dict()[f"{decoder}.weight"], unrolled[f"{decoder}.weight"])  # fine-tuned
    tied = DeepBeliefAutoencoder(**TINY_DBN, pretrain_epochs=1)
    tied.load_state_dict(pretrained)
    untied = DeepBeliefAutoencoder(**TINY_DBN, pretrain_epochs=1)
    untied.load_state_dict(pretrained)
    untied.unroll()
    torch.testing.assert_close(untied(x), tied(x))  # unrolling changes no output


def test_a_run_killed_mid_pretraining_resumes_exactly(data_dir: Path, tmp_path: Path) -> None:
    # 3 RBMs (784-32-16-4) of one epoch each, then one fine-tuning epoch; 14 steps per epoch. Killed at the start of
    # step 22, the run leaves the checkpoint of step 20, six batches into RBM 2's epoch.
    extra = ["--trainer.max_epochs", "4", "--checkpoint.every_n_train_steps", "4"]
    killed_root, reference_root = tmp_path / "killed", tmp_path / "reference"
    kill = ["--trainer.callbacks+=tiny_runs.KillAtStep", "--trainer.callbacks.step", "22"]
    killed = subprocess.Popen(
        command("fit", *tiny_args("deep_ae_rbm", data_dir, killed_root, *extra, *kill)),
        env=subprocess_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    run_cli("fit", *tiny_args("deep_ae_rbm", data_dir, reference_root, *extra))
    output, _ = killed.communicate(timeout=240)
    assert killed.returncode == -signal.SIGKILL, output
    interrupted = last_checkpoint(killed_root)
    assert interrupted["global_step"] == 20 and interrupted["epoch"] == 1
    assert not interrupted["state_dict"]["unrolled"]
    run_cli("fit", *tiny_args("deep_ae_rbm", data_dir, killed_root, *extra, "--ckpt_path", "last"))
    resumed, expected = last_checkpoint(killed_root), last_checkpoint(reference_root)
    assert resumed["global_step"] == expected["global_step"] == 56
    for name, value in expected["state_dict"].items():
        assert torch.equal(resumed["state_dict"][name], value), f"{name} differs after the resume"
    assert len(resumed["optimizer_states"]) == 2
    for got, want in zip(resumed["optimizer_states"], expected["optimizer_states"]):
        for index, state in want["state"].items():
            for key, value in state.items():
                assert torch.equal(got["state"][index][key], value), f"optimizer state {index}/{key} differs"


def test_a_datamodule_grouping_batches_for_the_fast_path_is_refused_naming_both_values(
    data_dir: Path, tmp_path: Path
) -> None:
    data = MNISTDataModule(data_dir=str(data_dir), batch_size=16, steps_per_batch=2)
    message = "the model has steps_per_batch=1 and MNISTDataModule steps_per_batch=2"
    with pytest.raises(ValueError, match=message):
        make_trainer(tmp_path).fit(DeepBeliefAutoencoder(**TINY_DBN, pretrain_epochs=1), datamodule=data)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"network": "conv"}, "takes only network='mlp', got 'conv'"),
        ({"dropout": 0.2}, "takes only dropout=0.0, got 0.2"),
        ({"pretrain": "dbn"}, "pretrain must be one of 'rbm', 'none', got 'dbn'"),
        ({"cd_steps": 0}, "cd_steps must be an integer >= 1, got 0"),
        ({"pretrain_epochs": -1}, "pretrain_epochs must be an integer >= 0, got -1"),
        ({"pretrain_lr": 0.0}, "pretrain_lr must be > 0, got 0.0"),
        ({"pretrain_momentum": 1.0}, r"pretrain_momentum must lie in \[0, 1\), got 1.0"),
    ],
)
def test_bad_arguments_are_errors_naming_the_value(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        DeepBeliefAutoencoder(**{**TINY_DBN, **kwargs})


def test_early_stopping_is_refused_while_pretraining_remains_and_taken_for_the_fine_tuning(
    data_dir: Path, tmp_path: Path
) -> None:
    # val/loss rises while RBM 1 pretrains here, so EarlyStopping(patience=2) stopped the run before any fine-tuning
    torch.manual_seed(0)
    model, data = DeepBeliefAutoencoder(**TINY_DBN, pretrain_epochs=1), tiny_data(data_dir)
    stopper = EarlyStopping("val/loss", patience=2)
    with pytest.raises(ValueError, match=r"EarlyStopping\(monitor='val/loss'\) would count the RBM pretraining epochs"):
        make_trainer(tmp_path, max_epochs=4, callbacks=[stopper]).fit(model, datamodule=data)
    pretrained = make_trainer(tmp_path, max_epochs=2, enable_checkpointing=True)
    pretrained.fit(model, datamodule=data)  # the remedy the message names: pretrain, then resume with the callback
    tuned = make_trainer(tmp_path, max_epochs=4, callbacks=[EarlyStopping("val/loss", patience=2)])
    tuned.fit(model, datamodule=data, ckpt_path=next(tmp_path.rglob("*.ckpt")))
    assert tuned.current_epoch == 4 and model.unrolled


def test_a_second_fit_of_a_fine_tuned_model_is_refused_rather_than_pretraining_it_again(
    data_dir: Path, tmp_path: Path
) -> None:
    # A second fit started at epoch 0 and ran CD steps on the fine-tuned encoder instead of fine-tuning it
    model = DeepBeliefAutoencoder(**TINY_DBN, pretrain_epochs=1)
    trainer = make_trainer(tmp_path, max_epochs=3, limit_val_batches=0)  # 2 RBMs, then 1 fine-tuning epoch
    trainer.fit(model, datamodule=tiny_data(data_dir))
    trainer.save_checkpoint(tmp_path / "tuned.ckpt")
    weights = {name: value.clone() for name, value in model.state_dict().items()}
    with pytest.raises(ValueError, match=r"fine-tuned, but the fit starts at epoch 0, which pretrains RBM 1"):
        make_trainer(tmp_path, limit_val_batches=0).fit(model, datamodule=tiny_data(data_dir))
    assert all(torch.equal(weights[name], value) for name, value in model.state_dict().items())
    tuned = DeepBeliefAutoencoder.load_from_checkpoint(tmp_path / "tuned.ckpt", pretrain_epochs=0)
    trainer = make_trainer(tmp_path, limit_val_batches=0)
    trainer.fit(tuned, datamodule=tiny_data(data_dir))  # the fix the message names: fine-tuning only
    logged = trainer.callback_metrics
    assert "train/loss" in logged and not any(name.startswith("pretrain") for name in logged)


def test_16_mixed_is_refused_while_pretraining_remains_and_taken_for_the_fine_tuning(
    data_dir: Path, tmp_path: Path
) -> None:
    # The CD updates set gradients that fp16's scaler would unscale; the fine-tuning steps through it as any model does.
    # A resume into the fine-tuning under 16-mixed was refused too, although no pretraining epoch remained.
    def fp16() -> MixedPrecision:  # Lightning's plugin with a CPU GradScaler takes the GPU's fp16 path
        return MixedPrecision("16-mixed", "cpu", torch.amp.GradScaler("cpu"))

    torch.manual_seed(0)
    model, data = DeepBeliefAutoencoder(**TINY_DBN, pretrain_epochs=1), tiny_data(data_dir)
    initial = {name: p.detach().clone() for name, p in model.named_parameters()}
    refused = r"RBM pretraining has no gradient scaler: .* for its epochs 0-1; 16-mixed fine-tunes: .* \(max_epochs 2\)"
    with pytest.raises(ValueError, match=refused):
        make_trainer(tmp_path, max_epochs=3, plugins=[fp16()]).fit(model, datamodule=data)
    assert all(torch.equal(p, initial[name]) for name, p in model.named_parameters())  # refused before any step
    make_trainer(tmp_path, max_epochs=2, enable_checkpointing=True).fit(model, datamodule=data)  # the 2 RBMs, in 32
    tuned = make_trainer(tmp_path, max_epochs=3, plugins=[fp16()])
    tuned.fit(model, datamodule=data, ckpt_path=next(tmp_path.rglob("*.ckpt")))
    assert tuned.precision == "16-mixed" and tuned.current_epoch == 3 and model.unrolled
    assert torch.isfinite(tuned.callback_metrics["train/loss"]) and torch.isfinite(tuned.callback_metrics["val/loss"])


def test_the_fine_tuning_plateau_steps_on_fine_tuning_validations_only(data_dir: Path, tmp_path: Path) -> None:
    # 2 RBMs of one epoch each, validation every 2 epochs: epochs 1 (pretraining) and 3 (fine-tuning) validate. The
    # plateau stepped at the end of fine-tuning epoch 2, which did not validate, on the tied stack's epoch-1 val/loss.
    def plateau(optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.ReduceLROnPlateau:
        return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, patience=0)

    torch.manual_seed(0)
    model = DeepBeliefAutoencoder(**TINY_DBN, pretrain_epochs=1, lr_scheduler=plateau)
    trainer = make_trainer(tmp_path, max_epochs=4, check_val_every_n_epoch=2)
    trainer.fit(model, datamodule=tiny_data(data_dir))
    scheduler = trainer.lr_scheduler_configs[0].scheduler
    assert scheduler.last_epoch == 1  # once, on epoch 3's val/loss
    assert scheduler.best == pytest.approx(float(trainer.callback_metrics["val/loss"]))


class StepScheduled(DeepBeliefAutoencoder):
    """The fine-tuning scheduler stepped every optimizer step (``interval: step``)."""

    def configure_optimizers(self) -> list[dict]:
        configured = super().configure_optimizers()
        configured[0]["lr_scheduler"]["interval"] = "step"
        return configured


class RecordLearningRates(Callback):
    def __init__(self) -> None:
        self.rates: list[tuple[int, float]] = []

    def on_train_batch_end(self, trainer: L.Trainer, *args: object) -> None:
        self.rates.append((trainer.current_epoch, trainer.optimizers[0].param_groups[0]["lr"]))


def test_a_step_interval_scheduler_steps_with_each_fine_tuning_step_only(data_dir: Path, tmp_path: Path) -> None:
    def halving(optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.StepLR:
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)

    torch.manual_seed(0)
    model, recorder = StepScheduled(**TINY_DBN, pretrain_epochs=1, lr_scheduler=halving), RecordLearningRates()
    make_trainer(tmp_path, max_epochs=3, callbacks=[recorder]).fit(model, datamodule=tiny_data(data_dir))
    # epochs 0 and 1 pretrain the two RBMs: the fine-tuning lr stays; epoch 2 fine-tunes: it halves at each step
    assert recorder.rates == [(0, 1e-3), (0, 1e-3), (1, 1e-3), (1, 1e-3), (2, 5e-4), (2, 2.5e-4)]


class EveryTwoEpochs(DeepBeliefAutoencoder):
    """The fine-tuning scheduler stepped every second epoch (``frequency: 2``)."""

    def configure_optimizers(self) -> list[dict]:
        configured = super().configure_optimizers()
        configured[0]["lr_scheduler"]["frequency"] = 2
        return configured


class RecordEpochLearningRates(Callback):
    def __init__(self) -> None:
        self.rates: list[float] = []

    def on_train_epoch_start(self, trainer: L.Trainer, *args: object) -> None:
        self.rates.append(trainer.optimizers[0].param_groups[0]["lr"])


def test_an_epoch_scheduler_frequency_counts_fine_tuning_epochs(data_dir: Path, tmp_path: Path) -> None:
    def halving(optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.StepLR:
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)

    torch.manual_seed(0)
    # 3 RBMs of one epoch each (an odd number of pretraining epochs), then 4 fine-tuning epochs
    model = EveryTwoEpochs(hidden_dims=[16, 8], latent_dim=4, pretrain_epochs=1, lr_scheduler=halving)
    recorder = RecordEpochLearningRates()
    make_trainer(tmp_path, max_epochs=7, limit_train_batches=1, callbacks=[recorder]).fit(model, tiny_data(data_dir))
    # as Lightning's frequency 2: a step after fine-tuning epochs 2 and 4, none after 1 and 3
    assert recorder.rates == pytest.approx([1e-3] * 5 + [5e-4] * 2)


def test_gaussian_hidden_units_draw_the_same_noise_at_every_precision() -> None:
    # the noise was drawn in the units' dtype: float64 draws of a seed are other numbers than float32's
    mean = torch.rand(8, 6, generator=torch.Generator().manual_seed(0))
    draws = {}
    for dtype in (torch.float32, torch.float64, torch.bfloat16):
        draws[dtype] = rbm.sample_hidden(mean.to(dtype), "gaussian", torch.Generator().manual_seed(1))
        assert draws[dtype].dtype == dtype
    torch.testing.assert_close(draws[torch.float64], draws[torch.float32].double())
    torch.testing.assert_close(draws[torch.bfloat16].float(), draws[torch.float32], atol=0.05, rtol=0)


@pytest.mark.parametrize(
    "stored, resumed, fix",
    [
        ({"pretrain": "rbm", "pretrain_epochs": 1}, {"pretrain": "none"}, "pretrain='rbm', pretrain_epochs=1"),
        ({"pretrain": "none", "pretrain_epochs": 1}, {"pretrain": "rbm", "pretrain_epochs": 1}, "pretrain='none'"),
        ({"pretrain": "rbm", "pretrain_epochs": 1}, {"pretrain": "rbm", "pretrain_epochs": 2}, "pretrain_epochs=1"),
    ],
)
def test_a_resume_refused_for_another_schedule_names_the_settings_that_continue_it(
    stored: dict, resumed: dict, fix: str
) -> None:
    # The fix named was always pretrain_epochs=<the checkpoint's>: after a change of pretrain, the run's own value.
    checkpoint = {"hyper_parameters": stored, "epoch": 1}
    with pytest.raises(ValueError, match=rf"another phase than it had .* Resume with {fix}, or start afresh"):
        DeepBeliefAutoencoder(**TINY_DBN, **resumed).check_resume(checkpoint)
