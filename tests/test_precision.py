"""Every variant trains a step and tests in every precision: ``32`` and ``bf16-mixed`` on the CPU, ``16-mixed`` on a
GPU; the models with several optimizers step each through fp16's gradient scaler."""

from __future__ import annotations

import functools
import math
from pathlib import Path
from typing import Any
from unittest import mock

import lightning as L
import pytest
import torch
from lightning.pytorch.plugins import MixedPrecision
from tiny_runs import CONFIGS, build_cli, tiny_args
from torch.utils.data import DataLoader, TensorDataset

from ae_lightning import AdversarialAutoencoder, KLAutoencoder
from ae_lightning.blocks import losses

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
