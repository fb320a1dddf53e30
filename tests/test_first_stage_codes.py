"""The first-stage autoencoders (KL-f8, VQGAN recipe) as a latent diffusion user relies on them: codes from
``encode`` in either mode, and the codes' scale for a diffusion model. Tiny networks, random LPIPS, CPU only."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from test_variants import make_trainer

from ae_lightning import KLAutoencoder, QuantizedAutoencoder
from datamodules import TensorBatchLoader

TINY = {"latent_dim": 4, "hidden_dims": [8], "residual_blocks": 1, "input_shape": (3, 16, 16)}
RECIPE = {"perceptual_weight": 1.0, "perceptual_pretrained": False, "adversarial_weight": 0.5,
          "discriminator_channels": 4, "discriminator_layers": 1}  # fmt: skip


def test_encode_in_training_mode_gives_the_evaluation_codes_and_changes_no_state() -> None:
    # A model is in training mode when built and after trainer.fit: encode must still be the posterior's mean (the
    # KL) and the nearest codes without a k-means initialization or EMA update of the codebook (VQ).
    x = torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    kl = KLAutoencoder(**TINY, **RECIPE)
    mean = kl.encoder(x).chunk(2, dim=1)[0]
    torch.testing.assert_close(kl.encode(x), mean)
    torch.testing.assert_close(kl(x), kl.decode(mean))
    vq = QuantizedAutoencoder(**TINY, codebook_size=16)
    before = {name: value.clone() for name, value in vq.state_dict().items()}
    training_codes, training_indices = vq.encode(x), vq.encode_indices(x)
    assert [name for name, value in vq.state_dict().items() if not torch.equal(value, before[name])] == []
    for model in (kl, vq):
        modes = {name: module.training for name, module in model.named_modules()}
        model.encode(x)
        assert {name: module.training for name, module in model.named_modules()} == modes  # modes restored
    assert kl.training and not kl.perceptual.lpips.training  # LPIPS stays a fixed metric
    torch.testing.assert_close(training_codes, vq.eval().encode(x))
    assert torch.equal(training_indices, vq.encode_indices(x))


def test_the_kl_autoencoder_reports_the_std_of_its_codes_for_a_diffusion_models_scale_factor(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = KLAutoencoder(**TINY)
    x = torch.rand(8, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    labels = torch.zeros(8, dtype=torch.long)
    loader = TensorBatchLoader(x, labels, torch.arange(8), batch_size=8, shuffle=False, seed=0)
    trainer = make_trainer(tmp_path, limit_train_batches=1, limit_val_batches=0)
    trainer.fit(model, train_dataloaders=loader)
    assert trainer.callback_metrics["train/code_std"] > 0  # of the posterior samples the decoder took
    (tested,) = trainer.test(model, dataloaders=loader, verbose=False)
    with torch.no_grad():
        codes = model.encode(x)  # what predict writes as z, and a diffusion model would be trained on
    assert tested["test/code_std"] == pytest.approx(codes.std(correction=0).item(), rel=1e-5)
