"""Every variant trains a step and tests in every precision: ``32`` and ``bf16-mixed`` on the CPU, ``16-mixed`` on a
GPU; the models with several optimizers step each through fp16's gradient scaler; the variants with their own numerics
also in ``64-true`` and ``bf16-true``; predictions are written in dtypes numpy reads."""

from __future__ import annotations

import copy
import functools
import math
from pathlib import Path
from typing import Any
from unittest import mock

import lightning as L
import numpy as np
import pytest
import torch
from lightning.pytorch.plugins import MixedPrecision
from tiny_runs import CONFIGS, build_cli, last_checkpoint, run_cli, tiny_args
from torch.utils.data import DataLoader, TensorDataset

from ae_lightning import VAE, AdversarialAutoencoder, AutoDecoder, KLAutoencoder
from ae_lightning.blocks import losses
from ae_lightning.cli import ConfigError

GPU = pytest.mark.skipif(not torch.cuda.is_available(), reason="16-mixed needs CUDA")
PRECISIONS = [
    pytest.param("32", "cpu", id="32"),
    pytest.param("bf16-mixed", "cpu", id="bf16-mixed"),
    pytest.param("16-mixed", "gpu", id="16-mixed", marks=[pytest.mark.gpu, GPU]),
]


@pytest.mark.parametrize("precision, accelerator", PRECISIONS)
@pytest.mark.parametrize("config", [c.stem for c in CONFIGS])
def test_a_training_step_in_each_precision_changes_weights_and_keeps_them_float32(
    config: str, precision: str, accelerator: str, data_dir: Path, tmp_path: Path
) -> None:
    record = ["--trainer.callbacks+=tiny_runs.RecordRank", "--trainer.callbacks.folder", str(tmp_path / "record")]
    # fp16's gradient scaler skips the steps whose gradients overflow while it halves its scale from 2**16, as
    # PyTorch documents: 32 steps leave it room to find its scale, the other precisions update at the first step.
    steps = ["--trainer.max_steps", "32", "--trainer.max_epochs", "-1", "--trainer.limit_val_batches", "1"]
    cli = build_cli(
        *tiny_args(config, data_dir, tmp_path, *record),
        *(steps if precision == "16-mixed" else ["--trainer.fast_dev_run", "true"]),
        "--trainer.precision",
        precision,
        "--trainer.accelerator",
        accelerator,
        "--trainer.devices",
        "1",
    )
    if config == "deep_ae_rbm" and precision == "16-mixed":  # its RBM updates are not gradient steps
        with pytest.raises(ValueError, match="RBM pretraining has no gradient scaler: use 32 or bf16-mixed"):
            cli.trainer.fit(cli.model, datamodule=cli.datamodule)
        return
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    assert cli.trainer.precision == {"32": "32-true"}.get(precision, precision)
    assert torch.isfinite(cli.trainer.callback_metrics["val/loss"])
    record = torch.load(tmp_path / "record" / "rank0.pt", weights_only=True)
    changed = [name for name, value in record["final"].items() if not torch.equal(value, record["initial"][name])]
    assert changed, f"a {precision} step changed no weight"
    for name, value in record["final"].items():
        assert value.dtype in (torch.float32, torch.int64, torch.bool, torch.uint8), f"{name} is {value.dtype}"
        assert torch.isfinite(value.float()).all(), name
    # ``ae-lightning test`` in the same precision: its metrics in float32, whatever the autocast region refuses
    results = cli.trainer.test(cli.model, datamodule=cli.datamodule, verbose=False)
    assert results and all(math.isfinite(value) for value in results[0].values()), results


# One of each code path with numerics of its own: the importance-weighted bound (decoded batches of samples, the IAF's
# flow, the VampPrior's mixture), RBM pretraining's CD statistics, codes fitted by the auto-decoder, prior samples in
# the validation's pictures, and the disentanglement metrics' encoder and latent traversals at test.
TRUE_PRECISIONS = {"64-true": torch.float64, "bf16-true": torch.bfloat16}


@pytest.mark.parametrize("precision", TRUE_PRECISIONS)
@pytest.mark.parametrize("config", ["aae", "autodecoder", "deep_ae_rbm", "factor_vae", "iaf_vae", "vae", "vampprior"])
def test_a_fit_validation_and_test_in_a_true_precision_keep_the_weights_in_it(
    config: str, precision: str, data_dir: Path, tmp_path: Path
) -> None:
    # ``64-true`` and ``bf16-true`` cast the weights and the batches (Lightning's DoublePrecision and HalfPrecision);
    # the callbacks that draw pictures and score codes get neither cast.
    record = ["--trainer.callbacks+=tiny_runs.RecordRank", "--trainer.callbacks.folder", str(tmp_path / "record")]
    steps = ["--trainer.max_steps", "2", "--trainer.max_epochs", "-1", "--trainer.limit_val_batches", "1"]
    steps += ["--trainer.val_check_interval", "2", "--trainer.check_val_every_n_epoch", "null"]
    cli = build_cli(*tiny_args(config, data_dir, tmp_path, *record), *steps, "--trainer.precision", precision,
                    "--trainer.accelerator", "cpu")  # fmt: skip
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    record = torch.load(tmp_path / "record" / "rank0.pt", weights_only=True)
    floats = {name: value for name, value in record["final"].items() if value.is_floating_point()}
    assert {value.dtype for value in floats.values()} == {TRUE_PRECISIONS[precision]}
    assert any(not torch.equal(value, record["initial"][name]) for name, value in floats.items())
    results = cli.trainer.test(cli.model, datamodule=cli.datamodule, verbose=False)
    assert results and all(math.isfinite(value) for value in results[0].values()), results


def test_16_true_is_refused_before_any_file(data_dir: Path, tmp_path: Path) -> None:
    # Adam's eps 1e-8 is 0 in float16: a 16-true run trained into NaN within two steps
    with pytest.raises(ConfigError, match="--trainer.precision 16-true keeps the weights .* in float16"):
        run_cli("fit", *tiny_args("ae", data_dir, tmp_path / "run", "--trainer.precision", "16-true"))
    assert not (tmp_path / "run").exists()


def test_a_64_true_run_resumes_on_its_float64_weights_exactly(data_dir: Path, tmp_path: Path) -> None:
    # Lightning loads a checkpoint's weights before it converts the model to float64: they went through float32, and
    # the resumed run ended 1e-8 away from the uninterrupted one.
    steps = ["--trainer.max_epochs", "-1", "--trainer.limit_val_batches", "1", "--trainer.precision", "64-true"]
    run_cli("fit", *tiny_args("vae", data_dir, tmp_path / "straight", *steps, "--trainer.max_steps", "4"))
    part = tiny_args("vae", data_dir, tmp_path / "part", *steps)
    run_cli("fit", *part, "--trainer.max_steps", "2")
    run_cli("fit", *part, "--trainer.max_steps", "4", "--ckpt_path", str(next((tmp_path / "part").rglob("last.ckpt"))))
    straight, resumed = last_checkpoint(tmp_path / "straight"), last_checkpoint(tmp_path / "part")
    assert resumed["global_step"] == straight["global_step"] == 4
    for name, value in straight["state_dict"].items():
        assert value.dtype != torch.float32 and torch.equal(resumed["state_dict"][name], value), name


@pytest.mark.parametrize("dtype", TRUE_PRECISIONS.values(), ids=TRUE_PRECISIONS)
@pytest.mark.parametrize(
    "cls, kwargs",
    [
        (AutoDecoder, {"inference_steps": 2}),
        (AdversarialAutoencoder, {"prior": "normal"}),
        (AdversarialAutoencoder, {"prior": "mixture"}),
        (VAE, {}),
    ],
    ids=["autodecoder", "adversarial_normal", "adversarial_mixture", "vae"],
)
def test_a_model_in_a_true_precision_encodes_decodes_and_samples_in_it(
    cls: type, kwargs: dict, dtype: torch.dtype
) -> None:
    # What the picture callbacks do at a 64-true or bf16-true validation's end, outside Lightning's step (where the
    # default dtype is the precision's): codes the autodecoder fits and prior samples in float32 met float64 weights.
    torch.manual_seed(0)
    model = cls(latent_dim=4, hidden_dims=[16], **kwargs).to(dtype).eval()
    z = model.encode(torch.rand(3, 1, 28, 28, dtype=dtype))
    assert z.dtype == dtype and model.decode(z).dtype == dtype
    if model.is_generative:
        assert model.sample(2).dtype == dtype


@pytest.mark.parametrize(
    "method, dtype", [("bfloat16", torch.bfloat16), ("half", torch.float16), ("double", torch.float64)]
)
def test_a_model_cast_by_a_dtype_method_takes_batches_of_that_dtype_and_names_it(
    method: str, dtype: torch.dtype
) -> None:
    # Before, model.bfloat16() left model.dtype float32: bfloat16 images were refused as not float32, float32 ones
    # passed the check and failed in the first layer.
    model = getattr(VAE(latent_dim=4, hidden_dims=[16]), method)().eval()
    assert model.dtype == dtype
    assert model.decode(model.encode(torch.rand(3, 1, 28, 28, dtype=dtype))).dtype == model.sample(2).dtype == dtype
    with pytest.raises(ValueError, match=rf"has {dtype} weights, but encode\(x\) holds torch.float32 images"):
        model.encode(torch.rand(3, 1, 28, 28))


@pytest.mark.parametrize("output", ["file", "stream"])
@pytest.mark.parametrize("precision", ["bf16-mixed", "bf16-true"])
def test_predictions_of_a_bfloat16_run_are_float32_that_numpy_reads(
    precision: str, output: str, data_dir: Path, tmp_path: Path
) -> None:
    # numpy has no bfloat16: ``predictions["z"].numpy()`` raised "Got unsupported ScalarType BFloat16".
    cli = run_cli("predict", *tiny_args("ae", data_dir, tmp_path), "--trainer.precision", precision,
                  "--trainer.limit_predict_batches", "2", "--predictions.format", output)  # fmt: skip
    path = Path(cli.trainer.log_dir)
    if output == "file":
        predictions = torch.load(path / "predictions.pt", weights_only=True)
        assert predictions["z"].shape == (32, 4)
    else:
        from litdata import StreamingDataset

        predictions = {"z": torch.stack([item["z"] for item in StreamingDataset(str(path / "predictions"))])}
    for key, value in predictions.items():
        assert value.dtype in (torch.float32, torch.int64), f"{key} is {value.dtype}"
        assert np.isfinite(value.numpy()).all(), key


AAE = {"hidden_dims": [16], "discriminator_hidden_dims": [8]}
PATCHGAN = {"hidden_dims": [8], "residual_blocks": 1, "adversarial_weight": 0.5, "discriminator_layers": 1}


@pytest.mark.parametrize(
    "cls, kwargs, optimizers",
    [(AdversarialAutoencoder, AAE, 3), (KLAutoencoder, PATCHGAN, 2)],
    ids=["adversarial_ae", "first_stage_with_discriminator"],
)
def test_each_manual_step_goes_through_the_fp16_gradient_scaler_once_and_clips_unscaled_gradients(
    cls: type, kwargs: dict, optimizers: int, tmp_path: Path
) -> None:
    # Lightning runs fp16 only on GPUs, but its MixedPrecision plugin with a CPU GradScaler takes the same path: every
    # optimizer's step (the counted one and the uncounted ones) unscales, clips, steps and updates the scale once.
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8)  # no overflow, so that every step is taken
    calls = []
    for name in ("unscale_", "step", "update"):
        method = getattr(scaler, name)
        setattr(scaler, name, functools.partial(_record, calls, name, method))
    torch.manual_seed(0)
    model = cls(latent_dim=4, input_shape=(1, 16, 16), gradient_clip_val=1e-3, **kwargs)
    norms = []  # the gradient norm of each optimizer when it steps

    class WatchSteps(L.Callback):
        def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
            for i, optimizer in enumerate(trainer.optimizers):
                optimizer.register_step_pre_hook(lambda opt, *_, i=i: norms.append((i, _gradient_norm(opt))))

    x = torch.rand(8, 1, 16, 16)
    loader = DataLoader(TensorDataset(x, torch.zeros(8, dtype=torch.long), torch.arange(8)), batch_size=4)
    trainer = L.Trainer(accelerator="cpu", max_steps=2, plugins=[MixedPrecision("16-mixed", "cpu", scaler)],
                        callbacks=[WatchSteps()], logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=tmp_path)  # fmt: skip
    trainer.fit(model, loader)
    assert trainer.precision == "16-mixed" and trainer.global_step == 2
    per_batch = [call for i in range(optimizers) for call in (("unscale_", i), ("step", i), ("update", None))]
    optimizer_ids = {id(optimizer): i for i, optimizer in enumerate(trainer.optimizers)}
    assert [(name, optimizer_ids.get(target)) for name, target in calls] == per_batch * 2
    # Clipped to 1e-3 after unscaling: clipping the scaled gradients would leave 1e-3 / 256 once unscaled.
    assert [i for i, _ in norms] == list(range(optimizers)) * 2
    assert all(norm == pytest.approx(1e-3, rel=1e-3) for _, norm in norms), norms


def _record(calls: list, name: str, method: Any, *args: Any, **kwargs: Any) -> Any:
    calls.append((name, id(args[0]) if args else None))
    return method(*args, **kwargs)


def _gradient_norm(optimizer: torch.optim.Optimizer) -> float:
    grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])).item()


def test_the_adaptive_weight_under_fp16_takes_the_gradients_of_the_scaled_losses(tmp_path: Path) -> None:
    # The per-pixel gradients of a 256 px image's mean loss fall below fp16's range unless scaled, as the scaler scales
    # the step's own backward; the ratio of the two scaled norms is the weight, the scale cancels.
    torch.manual_seed(0)
    model = KLAutoencoder(
        latent_dim=4, input_shape=(3, 256, 256), discriminator_channels=4, **{**PATCHGAN, "hidden_dims": [8, 8]}
    )
    x = torch.rand(16, 3, 256, 256)
    weights = {}
    for name, dtype in (("fp32", None), ("fp16", torch.half)):
        torch.manual_seed(1)
        with torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None):
            terms, reconstruction = model.autoencoder_terms(x)
            g_loss = losses.generator_adversarial_loss(model.discriminator(reconstruction), "hinge")
        weight = functools.partial(losses.adaptive_adversarial_weight, terms["loss"], g_loss, model.last_layer_weight())
        weights[name] = [weight(loss_scale=scale).item() for scale in (None, torch.tensor(2.0**10), torch.tensor(2e30))]
    exact = weights["fp32"][0]
    assert weights["fp32"][1] == pytest.approx(exact, rel=1e-5)
    assert weights["fp16"][1] == pytest.approx(exact, rel=0.01)
    assert abs(weights["fp16"][0] / exact - 1) > 0.1  # unscaled, fp16 loses them
    assert weights["fp16"][2] == 0.0  # an overflowing scale (a step the scaler skips) gives no adversarial term
    # In training, the model passes its scaler's current scale
    scales = []

    def recording(*args: Any, loss_scale: torch.Tensor | None = None, **kwargs: Any) -> torch.Tensor:
        scales.append(loss_scale)
        return weight_of(*args, loss_scale=loss_scale, **kwargs)

    weight_of, scaler = losses.adaptive_adversarial_weight, torch.amp.GradScaler("cpu", init_scale=2.0**8)
    small = KLAutoencoder(latent_dim=4, input_shape=(1, 16, 16), **PATCHGAN)
    loader = DataLoader(TensorDataset(torch.rand(4, 1, 16, 16), torch.zeros(4, dtype=torch.long), torch.arange(4)))
    for plugins, expected in (([MixedPrecision("16-mixed", "cpu", scaler)], [2.0**8]), ([], [None])):
        scales.clear()
        trainer = L.Trainer(accelerator="cpu", max_steps=1, plugins=plugins, logger=False, enable_checkpointing=False,
                            enable_progress_bar=False, enable_model_summary=False,
                            default_root_dir=tmp_path)  # fmt: skip
        with mock.patch.object(losses, "adaptive_adversarial_weight", recording):
            trainer.fit(small, loader)
        assert [None if s is None else s.item() for s in scales] == expected


@pytest.mark.parametrize("likelihood", ["gaussian", "continuous_bernoulli"])
def test_bf16_true_scores_the_same_weights_as_float32_does(likelihood: str, tmp_path: Path) -> None:
    # Per-pixel log-densities rounded to bfloat16 are biased alike over many similar pixels: test/nll and test/loss of
    # a sharp continuous-Bernoulli model moved by about 3% (2% for the Gaussian) on Fashion-MNIST under bf16-true.
    generator = torch.Generator().manual_seed(0)
    x = torch.zeros(64, 1, 28, 28)
    x[:, :, 6:22, 8:20] = (torch.randint(150, 256, (64, 1, 16, 12), generator=generator) / 255).float()
    torch.manual_seed(0)
    model = VAE(latent_dim=4, hidden_dims=[32], likelihood=likelihood, nll_samples=8, nll_chunk_size=8)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(40):  # sharp reconstructions: large logits, as a trained model's
        loss = model.loss_terms(x, None, None)["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    loader = DataLoader(TensorDataset(x, torch.zeros(64, dtype=torch.long), torch.arange(64)), batch_size=32)
    scores = {}
    for precision in ("32", "bf16-true"):
        trainer = L.Trainer(accelerator="cpu", precision=precision, logger=False, enable_progress_bar=False,
                            enable_model_summary=False, default_root_dir=tmp_path)  # fmt: skip
        scores[precision] = trainer.test(copy.deepcopy(model), loader, verbose=False)[0]
    for name in ("test/nll", "test/loss", "test/recon"):
        assert scores["bf16-true"][name] == pytest.approx(scores["32"][name], rel=1e-3), name
