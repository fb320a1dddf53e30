"""The base's contract: networks from builder methods or given modules, labels as arguments, constraints declared in
the signatures, checkpoints of the previous layout, and the one-way dependency of ``datamodules`` on nothing of ours."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
from tiny_runs import ROOT, run_cli, tiny_args
from torch import nn
from torch.optim.lr_scheduler import ReduceLROnPlateau
from torch.utils.data import DataLoader, TensorDataset

from ae_lightning import VAE, AutoDecoder, Autoencoder, ConditionalVAE, DeepBeliefAutoencoder, DropoutAutoencoder
from ae_lightning.blocks.networks import MLPDecoder, MLPEncoder
from datamodules import MNISTDataModule

TINY = {"latent_dim": 4, "hidden_dims": [16]}


class Recorder(MLPEncoder):
    """An encoder that counts its calls: the model must use the module it was given."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls = getattr(self, "calls", 0) + 1
        return super().forward(x)


def test_a_given_encoder_and_decoder_are_used_and_none_is_built_beside_them() -> None:
    encoder, decoder = Recorder((1, 28, 28), [8], 2 * 4), MLPDecoder(4, [8], (1, 28, 28))
    model = VAE(**TINY, encoder=encoder, decoder=decoder)
    assert model.encoder is encoder and model.decoder is decoder
    assert {name.split(".")[0] for name, _ in model.named_parameters()} == {"encoder", "decoder"}
    terms = model.loss_terms(torch.rand(3, 1, 28, 28), torch.zeros(3), torch.arange(3))
    assert encoder.calls == 1 and torch.isfinite(terms["loss"])
    assert "encoder" not in model.hparams  # saved with the weights; load_from_checkpoint takes it again


def test_a_given_network_that_is_no_module_instance_is_refused_naming_it() -> None:
    # A decoder's bound method fit the shapes, and its weights, not the model's, went untrained and unsaved
    decoder = MLPDecoder(4, [8], (1, 28, 28))
    fix = r"pass a module instance, decoder=MyNetwork\(...\)"
    with pytest.raises(ValueError, match=rf"Autoencoder's decoder must be an nn.Module, .* got a method: {fix}"):
        Autoencoder(**TINY, decoder=decoder.forward)
    with pytest.raises(ValueError, match=rf"VAE's decoder must be an nn.Module, .* got the class MLPDecoder: {fix}"):
        VAE(**TINY, decoder=MLPDecoder)
    with pytest.raises(ValueError, match=r"VAE's encoder must be an nn.Module, .* got a dict: .* \(class_path is for"):
        VAE(**TINY, encoder={"class_path": "ae_lightning.blocks.networks.MLPEncoder"})
    assert Autoencoder(**TINY, decoder=decoder).decoder is decoder


def test_a_variant_changes_its_networks_in_the_builders_and_builds_nothing_it_discards() -> None:
    assert VAE(**TINY).encoder(torch.rand(2, 1, 28, 28)).shape == (2, 8)  # mean and log-variance
    assert AutoDecoder(**TINY).encoder is None
    cvae = ConditionalVAE(**TINY, num_classes=3)
    assert cvae.encoder[1].in_features == 28 * 28 + 3 and cvae.decoder[0].in_features == 4 + 3
    deep = DeepBeliefAutoencoder(**TINY)
    assert [type(m) for m in deep.encoder] == [nn.Flatten, nn.Linear, nn.Sigmoid, nn.Linear]
    with pytest.raises(ValueError, match="takes only encoder=None"):
        DeepBeliefAutoencoder(**TINY, encoder=nn.Identity())


def test_a_given_encoder_comes_from_yaml_and_the_checkpoint_rebuilds_it(data_dir: Path, tmp_path: Path) -> None:
    encoder = '{"class_path": "ae_lightning.blocks.networks.MLPEncoder", "init_args": {"input_shape": [1, 28, 28], ' \
              '"hidden_dims": [7], "out_dim": 4}}'  # fmt: skip
    extra = ["--model.init_args.encoder", encoder, "--trainer.max_steps", "2"]
    cli = run_cli("fit", *tiny_args("ae", data_dir, tmp_path, *extra))
    assert cli.model.encoder[1].out_features == 7  # not the config's hidden_dims [32, 16]
    loaded = Autoencoder.load_from_checkpoint(next(tmp_path.rglob("last.ckpt")))
    assert loaded.encoder[1].out_features == 7
    x = torch.rand(2, 1, 28, 28)
    torch.testing.assert_close(loaded.eval()(x), cli.model.eval()(x))


def test_a_given_network_that_does_not_fit_is_refused_naming_the_shapes_before_the_run_writes_files(
    data_dir: Path, tmp_path: Path
) -> None:
    # A VAE of latent_dim 4 needs 8 outputs: the mean and the log-variance. Of 7, the mean would take 4, the
    # log-variance 3, which only the reparameterization of the first training step would find.
    for width in (4, 7):
        expected = rf"given encoder of VAE do not fit: .*the encoder's output has shape \[2, {width}\], VAE needs " \
                   r"\[2, 8\]: the mean and log-variance"  # fmt: skip
        with pytest.raises(ValueError, match=expected):
            VAE(**TINY, encoder=MLPEncoder((1, 28, 28), [8], width)).check_given_networks()
    flat = nn.Sequential(nn.Linear(4, 8), nn.Linear(8, 784))  # no Unflatten: [B, 784], not images
    with pytest.raises(ValueError, match=r"given decoder of VAE .*reconstructions have shape \[2, 784\], VAE needs "
                                         r"\[2, 1, 28, 28\]"):  # fmt: skip
        VAE(**TINY, decoder=flat).check_given_networks()
    pair = nn.Sequential(nn.Flatten(), nn.Linear(784, 4), nn.Unflatten(1, (4,)))
    pair.forward = lambda x: (nn.Sequential.forward(pair, x), None)  # an encoder returning (codes, extra)
    with pytest.raises(ValueError, match=r"given encoder of Autoencoder .*encode returns a tuple, not a tensor"):
        Autoencoder(**TINY, encoder=pair).check_given_networks()
    lazy = VAE(**TINY, encoder=nn.Sequential(nn.Flatten(), nn.LazyLinear(8)))
    lazy.check_given_networks()  # a lazy module takes its shapes, as at the first batch
    assert lazy.encoder[1].weight.shape == (8, 784)
    linear = '{"class_path": "torch.nn.Linear", "init_args": {"in_features": 784, "out_features": 8}}'
    with pytest.raises(ValueError, match=r"given encoder of VAE do not fit: two inputs \[2, 1, 28, 28\] .*mat1"):
        run_cli("fit", *tiny_args("vae", data_dir, tmp_path / "run", "--model.init_args.encoder", linear))
    assert not (tmp_path / "run").exists(), "a refused run left files"
    odd = '{"class_path": "ae_lightning.blocks.networks.MLPEncoder", "init_args": {"input_shape": [1, 28, 28], ' \
          '"hidden_dims": [8], "out_dim": 7}}'  # fmt: skip
    with pytest.raises(ValueError, match=r"the encoder's output has shape \[2, 7\], VAE needs \[2, 8\]"):
        run_cli("fit", *tiny_args("vae", data_dir, tmp_path / "odd", "--model.init_args.encoder", odd))
    assert not (tmp_path / "odd").exists(), "a refused run left files"


@pytest.mark.parametrize("dtype, precision", [(torch.float64, "64-true"), (torch.bfloat16, "bf16-true")])
def test_given_networks_of_a_model_already_in_a_true_precision_fit(dtype: torch.dtype, precision: str) -> None:
    # Before, the check of given networks fed them float32 zeros: a model cast before fit (or a checkpoint loaded with
    # them, then cast) was refused as "the given encoder of VAE do not fit: ... mat1 and mat2 must have the same dtype".
    model = VAE(**TINY, encoder=MLPEncoder((1, 28, 28), [8], 8), decoder=MLPDecoder(4, [8], (1, 28, 28))).to(dtype)
    data = TensorDataset(torch.rand(4, 1, 28, 28, dtype=dtype), torch.zeros(4, dtype=torch.long), torch.arange(4))
    trainer = L.Trainer(max_steps=1, precision=precision, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)  # fmt: skip
    trainer.fit(model, DataLoader(data, batch_size=4))
    assert trainer.global_step == 1 and model.encoder[1].weight.dtype == dtype


@pytest.mark.parametrize(
    "cls, kwargs, old_name",
    [
        (ConditionalVAE, {}, lambda name: name.replace("coder.", "coder.network.")),
        (ConditionalVAE, {"network": "conv", "hidden_dims": [4]}, lambda n: n.replace("coder.", "coder.network.")),
        (DropoutAutoencoder, {}, lambda name: name.replace("encoder.", "encoder.1.")),
        (DropoutAutoencoder, {"network": "conv", "hidden_dims": [4]}, lambda n: n.replace("encoder.", "encoder.1.")),
    ],
    ids=["cvae-mlp", "cvae-conv", "dropout-mlp", "dropout-conv"],
)  # fmt: skip
def test_a_checkpoint_of_the_previous_layout_loads_with_the_same_outputs(cls, kwargs, old_name, tmp_path: Path) -> None:
    # The previous release wrapped these networks (CVAE: a module holding the labels; dropout AE: Sequential(Dropout,
    # encoder)), so its weight names carried one more level.
    torch.manual_seed(0)
    model = cls(**{**TINY, **kwargs}).eval()
    old_weights = {old_name(name): value for name, value in model.state_dict().items()}
    assert old_weights.keys() != model.state_dict().keys()
    path = tmp_path / "old.ckpt"
    checkpoint = {"state_dict": old_weights, "hyper_parameters": dict(model.hparams)}
    torch.save({**checkpoint, "pytorch-lightning_version": "2.6.0"}, path)
    loaded = cls.load_from_checkpoint(path).eval()
    x, y = torch.rand(3, 1, 28, 28), torch.tensor([1, 2, 3])
    torch.testing.assert_close(loaded(x, y), model(x, y))


def test_labels_are_arguments_of_encode_decode_and_sample() -> None:
    model = ConditionalVAE(**TINY).eval()
    x, y = torch.rand(2, 1, 28, 28), torch.tensor([0, 1])
    assert not torch.allclose(model.encode(x, y), model.encode(x, 1 - y))
    with pytest.raises(ValueError, match="needs labels: pass y"):
        model.encode(x)
    plain = VAE(**TINY).eval()
    torch.testing.assert_close(plain.encode(x, y), plain.encode(x))  # an unconditional model ignores them


def test_sample_takes_a_list_of_labels_or_one_label_for_all_and_refuses_others_naming_the_shape() -> None:
    model = ConditionalVAE(**TINY).eval()
    torch.manual_seed(0)
    expected = model.sample(3, torch.tensor([1, 1, 1]))
    for labels in ([1, 1, 1], torch.tensor(1), 1):
        torch.manual_seed(0)
        torch.testing.assert_close(model.sample(3, labels), expected)
    refused = [
        ([1, 2], r"sample\(n=3\): the labels y must be one for all or one per image: 3 images \(or codes\), got 2"),
        ([1.0, 2.0, 3.0], r"one integer class per image, a tensor \[3\]; got a torch.float32 tensor of shape \[3\]"),
        (torch.tensor([[1], [2], [3]]), r"a tensor \[3\]; got a torch.int64 tensor of shape \[3, 1\]"),
        (["one", "two", "three"], r"sample\(n=3\) needs labels y: 3 integers or one for all"),
    ]
    for labels, message in refused:
        with pytest.raises(ValueError, match=message):
            model.sample(3, labels)


@pytest.mark.parametrize(
    "cls, kwargs, message",
    [
        (VAE, {"latent_dim": 0}, "latent_dim must be an integer >= 1, got 0"),
        (VAE, {"gaussian_std": -1.0}, "gaussian_std must be > 0 or one of 'learned', 'learned_per_pixel', got -1.0"),
        (Autoencoder, {"network": "rnn"}, "network must be one of 'mlp', 'conv', 'spatial', got 'rnn'"),
        (MNISTDataModule, {"val_fraction": 1.0}, r"val_fraction must lie in \(0, 1\), got 1.0"),
        (MNISTDataModule, {"binarize": "yes"}, "binarize must be one of 'none', 'dynamic', 'static', got 'yes'"),
    ],
)
def test_a_constraint_in_the_signature_holds_for_python_callers(cls, kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=f"^{message}$"):
        cls(**kwargs)


def test_help_shows_the_ranges_and_choices_of_the_signatures() -> None:
    result = subprocess.run([sys.executable, "-m", "ae_lightning.cli", "fit", "--model.help", "VAE"],
                            capture_output=True, text=True, cwd=ROOT, timeout=300)  # fmt: skip
    assert result.returncode == 0, result.stderr
    help_text = " ".join(result.stdout.split())
    assert "(type: float >= 0, default: 1.0)" in help_text  # beta
    assert "(type: int >= 1, default: 20)" in help_text  # latent_dim
    assert "Literal['bernoulli', 'gaussian', 'continuous_bernoulli']" in help_text


def test_datamodules_import_nothing_of_ae_lightning() -> None:
    code = "import sys, datamodules; print(sorted(m for m in sys.modules if m.startswith('ae_lightning')))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert result.stdout.strip() == "[]", result.stdout + result.stderr


def test_importing_one_variant_imports_no_other_variant_and_no_datamodule() -> None:
    code = ("import sys, ae_lightning.models.vae; print(sorted(m for m in sys.modules if m.startswith("
            "('ae_lightning.models.', 'datamodules.', 'litdata'))))")  # fmt: skip
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)
    imported = "['ae_lightning.models.vae', 'datamodules.checks', 'datamodules.lazy']"
    assert result.stdout.strip() == imported, result.stdout + result.stderr


def fit_with_plateau(data_dir: Path, root: Path, steps: int, **trainer_kwargs) -> L.Trainer:
    """5 epochs of 4 Lightning batches of an autoencoder with a ReduceLROnPlateau (``steps`` optimizer steps each)."""
    model = Autoencoder(**TINY, steps_per_batch=steps, lr_scheduler=lambda optimizer: ReduceLROnPlateau(optimizer))
    settings = {"accelerator": "cpu", "logger": False, "enable_checkpointing": False, "enable_progress_bar": False,
                "enable_model_summary": False, "max_epochs": 5, "limit_train_batches": 4, "limit_val_batches": 1,
                "num_sanity_val_steps": 0, "default_root_dir": root}  # fmt: skip
    trainer = L.Trainer(**{**settings, **trainer_kwargs})
    trainer.fit(model, datamodule=MNISTDataModule(data_dir=str(data_dir), batch_size=11, steps_per_batch=steps))
    return trainer


@pytest.mark.parametrize("steps", [1, 4], ids=["lightning", "fast-path"])
def test_a_plateau_scheduler_steps_after_each_epoch_that_validates_and_only_then(
    steps: int, data_dir: Path, tmp_path: Path
) -> None:
    # Validation every 2nd epoch of 5: after epochs 1 and 3. Lightning would otherwise look for val/loss after epoch 0
    # and fail; the fast path would step again after epochs 2 and 4 on the val/loss of the epoch before.
    trainer = fit_with_plateau(data_dir, tmp_path, steps, check_val_every_n_epoch=2)
    assert trainer.current_epoch == 5
    assert trainer.lr_scheduler_configs[0].scheduler.last_epoch == 2  # one step per validation


@pytest.mark.parametrize(
    "settings, message",
    [({"limit_val_batches": 0}, r"ReduceLROnPlateau steps on val/loss after each validation, but "
                                r"--trainer.limit_val_batches 0 runs none"),
     ({"check_val_every_n_epoch": None, "val_check_interval": 2},
      r"--trainer.check_val_every_n_epoch null validates every val_check_interval \(2\) batches instead")],
    ids=["no-validation", "validation-by-steps"],
)  # fmt: skip
def test_a_plateau_scheduler_without_validation_after_epochs_is_refused_naming_the_setting(
    settings: dict, message: str, data_dir: Path, tmp_path: Path
) -> None:
    with pytest.raises(ValueError, match=message):
        fit_with_plateau(data_dir, tmp_path, 1, **settings)


@pytest.mark.parametrize("cls", [Autoencoder, VAE])
def test_predict_encodes_each_batch_once_unless_the_variant_scores_anomalies_its_own_way(cls: type) -> None:
    # predict encoded and decoded each batch twice: for the codes and again for the default anomaly score
    from test_quantized import forward_counts

    from ae_lightning.blocks import losses

    model = cls(**TINY).eval()
    x, labels, index = torch.rand(5, 1, 28, 28), torch.zeros(5, dtype=torch.long), torch.arange(5)
    counts = forward_counts(model, "encoder", "decoder")
    with torch.no_grad():
        predicted = model.predict_step((x, labels, index), 0)
        own = cls.anomaly_score is not Autoencoder.anomaly_score  # the VAE's: the negative ELBO, from a sampled code
        assert counts == ({"encoder": 2, "decoder": 2} if own else {"encoder": 1, "decoder": 1})
        torch.testing.assert_close(predicted["recon_error"], losses.mean_squared_error(model(x), x))
        if not own:
            torch.testing.assert_close(predicted["anomaly_score"], losses.mean_squared_error(model(x), x))
