"""The Python API as a notebook uses it, without the command: importing the packages, a plain Lightning ``Trainer``
(its default logger and checkpoint callback) on every stage, checkpoints loaded back, and the README's Python
snippets run as written."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
import yaml
from conftest import write_dataset
from lightning.pytorch.callbacks import WeightAveraging
from torch import nn
from torch.optim.swa_utils import get_ema_avg_fn
from torch.utils.data import DataLoader, TensorDataset

from ae_lightning import (
    IAFVAE,
    VAE,
    AdversarialAutoencoder,
    AutoDecoder,
    Autoencoder,
    AutoencoderModule,
    CodePrior,
    ConditionalVAE,
    DeepBeliefAutoencoder,
    DropoutAutoencoder,
    KLAutoencoder,
    MultDAE,
    MultVAE,
    QuantizedAutoencoder,
    SparseAutoencoder,
)
from ae_lightning.evaluation.disentanglement import has_flat_codes
from ae_lightning.training.prediction import PredictionWriter
from datamodules import ArrayDataModule, MNISTDataModule

ROOT = Path(__file__).parents[1]
TINY = {"latent_dim": 4, "hidden_dims": [16]}
QUIET = {"accelerator": "cpu", "enable_progress_bar": False, "enable_model_summary": False, "logger": False}

# Run in a fresh interpreter: the libraries the exports need are imported first, then every export of both packages;
# importing them must leave the process's settings as they were and import neither W&B nor Optuna.
IMPORT_STATE = """
import logging, os, random, sys, warnings
import numpy as np, torch, lightning.pytorch, torchmetrics, torchvision, matplotlib, sklearn, pandas, litdata, lpips
import vector_quantize_pytorch, jsonargparse

def state():
    loggers = {name: (logger.level, list(logger.handlers), logger.propagate, logger.disabled)
               for name, logger in logging.Logger.manager.loggerDict.items() if isinstance(logger, logging.Logger)}
    return {"environment": dict(os.environ), "warning filters": list(warnings.filters), "loggers": loggers,
            "root logger": (logging.root.level, list(logging.root.handlers)),
            "torch generator": torch.random.get_rng_state().tolist(),
            "numpy generator": np.random.get_state()[1].tolist(),
            "python generator": random.getstate(), "threads": torch.get_num_threads(),
            "default dtype": torch.get_default_dtype(), "matmul precision": torch.get_float32_matmul_precision(),
            "deterministic": torch.are_deterministic_algorithms_enabled(), "grad": torch.is_grad_enabled()}

before = state()
import ae_lightning, datamodules
for package in (ae_lightning, datamodules):
    for name in package.__all__:
        getattr(package, name)
after = state()
new_loggers = {name: value for name, value in after["loggers"].items() if name not in before["loggers"]}
after["loggers"] = {name: value for name, value in after["loggers"].items() if name in before["loggers"]}
changed = [key for key in before if before[key] != after[key]]
changed += [f"logger {name}" for name, (level, handlers, _, off) in new_loggers.items() if level or handlers or off]
changed += [name for name in ("wandb", "optuna") if name in sys.modules]
print(changed)
"""


def test_importing_the_packages_and_every_export_changes_no_global_setting() -> None:
    result = subprocess.run([sys.executable, "-c", IMPORT_STATE], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]", result.stdout + result.stderr


def test_importing_the_packages_alone_imports_neither_torch_nor_lightning() -> None:
    code = "import sys, ae_lightning, datamodules; print(sorted({'torch', 'lightning'} & set(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert result.stdout.strip() == "[]", result.stdout + result.stderr


# --- a plain Trainer --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "cls, kwargs",
    [(Autoencoder, {}), (VAE, {"nll_samples": 4}), (AdversarialAutoencoder, {"discriminator_hidden_dims": [8]})],
    ids=["automatic", "vae", "manual"],
)
def test_a_plain_trainer_runs_every_stage_and_its_checkpoint_loads_back(
    cls: type, kwargs: dict, data_dir: Path, tmp_path: Path
) -> None:
    torch.manual_seed(0)
    model, data = cls(**TINY, **kwargs), MNISTDataModule(data_dir=str(data_dir), batch_size=16)
    trainer = L.Trainer(default_root_dir=tmp_path, accelerator="cpu", max_epochs=1, limit_train_batches=2,
                        limit_val_batches=1, limit_test_batches=1, limit_predict_batches=2, enable_progress_bar=False,
                        enable_model_summary=False)  # fmt: skip
    trainer.fit(model, datamodule=data)
    assert trainer.global_step == 2 and "val/loss" in trainer.callback_metrics
    (validated,) = trainer.validate(model, datamodule=data, verbose=False)
    (tested,) = trainer.test(model, datamodule=data, verbose=False)
    assert {"val/loss", "val/recon"} <= set(validated) and {"test/loss", "test/recon_mse"} <= set(tested)
    predictions = trainer.predict(model, datamodule=data)  # Lightning's list of per-batch outputs
    assert isinstance(predictions, list) and len(predictions) == 2
    assert predictions[0]["z"].shape == (16, 4) and predictions[0]["index"].tolist() == list(range(16))
    # Readable by other tools: input_shape's default tuple was written as !!python/tuple, which safe_load refused.
    hparams = yaml.safe_load((Path(trainer.logger.log_dir) / "hparams.yaml").read_text())
    assert hparams["latent_dim"] == 4 and hparams["input_shape"] == [1, 28, 28]

    best = trainer.checkpoint_callback.best_model_path
    loaded = cls.load_from_checkpoint(best).eval()
    assert loaded.input_shape == (1, 28, 28)
    resumed = L.Trainer(default_root_dir=tmp_path, max_epochs=2, limit_train_batches=2, limit_val_batches=1, **QUIET)
    resumed.fit(cls(**TINY, **kwargs), datamodule=data, ckpt_path=best)
    assert resumed.global_step == 4
    rebuilt = cls(**loaded.hparams)
    rebuilt.load_state_dict(loaded.state_dict())
    x = torch.rand(3, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    model.eval()
    for other in (loaded, rebuilt.eval()):
        assert torch.equal(other(x), model(x)) and torch.equal(other.encode(x), model.encode(x))


# --- the README's snippets --------------------------------------------------------------------------------------------
def python_snippets(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, flags=re.DOTALL)


def test_the_readmes_checkpoint_snippets_run_as_written(data_dir: Path, tmp_path: Path, monkeypatch) -> None:
    snippets = [code for code in python_snippets((ROOT / "README.md").read_text()) if "load_from_checkpoint" in code]
    assert len(snippets) == 2, "a new snippet that loads a checkpoint: check it here too"
    monkeypatch.chdir(tmp_path)
    for code in snippets:
        name = re.search(r"from ae_lightning import (\w+)", code).group(1)
        path = re.search(r'load_from_checkpoint\("([^"]+)"\)', code).group(1)
        extra = {"AutoDecoder": {"inference_steps": 2}, "VAE": {"nll_samples": 4}}[name]
        model = {"AutoDecoder": AutoDecoder, "VAE": VAE}[name](**TINY, **extra)
        quiet = {"enable_progress_bar": False, "enable_model_summary": False, "enable_checkpointing": False}
        trainer = L.Trainer(accelerator="cpu", max_steps=2, limit_val_batches=0, logger=False, **quiet)
        trainer.fit(model, datamodule=MNISTDataModule(data_dir=str(data_dir), batch_size=16))
        Path(path).parent.mkdir(parents=True)
        trainer.save_checkpoint(path)
        generator = torch.Generator().manual_seed(0)
        namespace = {"images": torch.rand(3, 1, 28, 28, generator=generator)}
        namespace["new_images"] = namespace["images"].clone()
        decoder_before = {key: value.clone() for key, value in model.decoder.state_dict().items()}
        exec(code, namespace)  # noqa: S102 - the README's own code
        if name == "VAE":  # what the comments say
            assert namespace["z"].shape == (3, 4)
            assert namespace["images"].shape == (3, 1, 28, 28)
            assert 0 <= namespace["images"].min() and namespace["images"].max() <= 1
            assert namespace["samples"].shape == (16, 1, 28, 28)
            assert isinstance(namespace["q"], torch.distributions.Normal) and namespace["q"].mean.shape == (3, 4)
        else:
            assert namespace["z"].shape == (3, 4) and namespace["reconstructions"].shape == (3, 1, 28, 28)
            for key, value in namespace["model"].decoder.state_dict().items():
                assert torch.equal(value, decoder_before[key]), f"encode changed the decoder's {key}"


def test_a_stream_of_predictions_refuses_a_predict_that_also_keeps_them_all_in_memory(
    data_dir: Path, tmp_path: Path
) -> None:
    # Before, Lightning's default return_predictions=True also gathered every prediction in memory beside the stream,
    # which exists for splits larger than memory (the command sets it to false; the docstring says the writer needs it).
    writer = PredictionWriter(format="stream")
    root = tmp_path / "run"
    trainer = L.Trainer(default_root_dir=root, limit_predict_batches=2, callbacks=[writer], **QUIET)
    model, data = Autoencoder(**TINY), MNISTDataModule(data_dir=str(data_dir), batch_size=16)
    with pytest.raises(ValueError, match=r"format='stream'.* return_predictions is True.*return_predictions=False"):
        trainer.predict(model, datamodule=data)
    assert not root.exists() or not any(root.iterdir())  # refused before anything was written
    assert trainer.predict(model, datamodule=data, return_predictions=False) is None
    assert [path.name for path in root.iterdir()] == ["predictions"] and writer.path.is_dir()


# --- arguments, batches and checkpoints from Python -------------------------------------------------------------------
def saved_without_trainer(model: L.LightningModule, path: Path) -> Path:
    trainer = L.Trainer(default_root_dir=path.parent, max_steps=0, enable_checkpointing=False, **QUIET)
    trainer.strategy.connect(model)
    trainer.save_checkpoint(path)
    return path


@pytest.fixture
def prior(tmp_path: Path) -> CodePrior:
    tokenizer = QuantizedAutoencoder(latent_dim=4, hidden_dims=[8, 8], codebook_size=16)  # 7x7 codes
    path = saved_without_trainer(tokenizer, tmp_path / "tokenizer.ckpt")
    return CodePrior(str(path), embed_dim=16, num_layers=1, num_heads=2).eval()


def test_a_priors_latent_shape_is_the_shape_of_its_tokens(prior: CodePrior) -> None:
    assert tuple(prior.encode(torch.rand(2, 1, 28, 28)).shape[1:]) == prior.latent_shape == (49,)
    assert not has_flat_codes(prior)  # token indices: no latent traversals of them


@pytest.mark.parametrize("n", [-1, 2.5, "3"])
@pytest.mark.parametrize("cls", [VAE, AdversarialAutoencoder, CodePrior])
def test_sample_names_a_bad_count(cls: type, n: object, request: pytest.FixtureRequest) -> None:
    model = request.getfixturevalue("prior") if cls is CodePrior else cls(**TINY)
    with pytest.raises(ValueError, match=rf"sample\(n={re.escape(repr(n))}\): n, the number of images, must be an"):
        model.sample(n)
    assert model.sample(np.int64(2)).shape == (2, 1, 28, 28)  # a NumPy count is a count


@pytest.mark.parametrize("cls", [VAE, AdversarialAutoencoder, CodePrior])
def test_an_unconditional_models_sample_refuses_labels(cls: type, request: pytest.FixtureRequest) -> None:
    # Before, sample(n, y) of a model that is not conditional ignored y: images of any class, without a word.
    model = request.getfixturevalue("prior") if cls is CodePrior else cls(**TINY).eval()
    with pytest.raises(ValueError, match=r"sample\(n=2, y=\.\.\.\): .* this model is not conditional: leave y out"):
        model.sample(2, torch.tensor([3, 3]))
    assert model.sample(2).shape == (2, 1, 28, 28)


def test_paths_may_be_pathlib_paths_and_are_recorded_as_strings(tmp_path: Path) -> None:
    np.save(tmp_path / "x.npy", np.zeros((20, 4, 4), np.uint8))
    np.save(tmp_path / "y.npy", np.arange(20) % 2)
    data = ArrayDataModule(path=tmp_path / "x.npy", labels=tmp_path / "y.npy", batch_size=4)
    data.setup("fit")
    assert data.hparams.path == str(tmp_path / "x.npy") and data.hparams.labels == str(tmp_path / "y.npy")
    torch.save(dict(data.hparams), tmp_path / "hparams.pt")
    torch.load(tmp_path / "hparams.pt", weights_only=True)  # torch's default, and how the command reads checkpoints


def test_numpy_numbers_are_taken_and_stored_as_python_numbers(tmp_path: Path) -> None:
    model = VAE(latent_dim=np.int64(4), hidden_dims=[np.int64(16)], beta=np.float32(2.0))
    assert (type(model.hparams.latent_dim), type(model.hparams.hidden_dims[0]), type(model.hparams.beta)) == (
        int, int, float)  # fmt: skip
    data = MNISTDataModule(batch_size=np.int64(32))
    torch.save({"model": dict(model.hparams), "data": dict(data.hparams)}, tmp_path / "hparams.pt")
    torch.load(tmp_path / "hparams.pt", weights_only=True)
    # and what loggers write (hparams.yaml, from Lightning's hparams_initial): no NumPy or pathlib types either
    initial = MNISTDataModule(data_dir=tmp_path, batch_size=np.int64(8)).hparams_initial
    assert (type(initial["data_dir"]), type(initial["batch_size"]), type(model.hparams_initial["beta"])) == (
        str, int, float)  # fmt: skip


@pytest.mark.parametrize("cls", [Autoencoder, AutoencoderModule, CodePrior])
def test_a_checkpoint_loaded_by_another_variants_class_is_refused_naming_both(cls: type, tmp_path: Path) -> None:
    # Before, the other class's __init__ failed on the VAE's hyperparameters, naming neither class: "got an unexpected
    # keyword argument 'likelihood'" (the abstract base: "Can't instantiate abstract class").
    path = saved_without_trainer(VAE(**TINY), tmp_path / "vae.ckpt")
    with pytest.raises(ValueError, match=r"holds a ae_lightning.models.vae.VAE, not a .*: load it with VAE.load_from_"):
        cls.load_from_checkpoint(path)
    assert type(VAE.load_from_checkpoint(path)) is VAE


def test_an_autodecoders_numpy_num_codes_is_stored_as_a_python_int_and_its_checkpoint_loads(tmp_path: Path) -> None:
    # Before, num_codes=np.int64(5) stayed a NumPy number in the checkpoint's hyperparameters, which
    # load_from_checkpoint (torch.load with weights_only=True) then refused to unpickle.
    model = AutoDecoder(**TINY, num_codes=np.int64(5))
    loaded = AutoDecoder.load_from_checkpoint(saved_without_trainer(model, tmp_path / "codes.ckpt"))
    assert loaded.num_codes == 5 and torch.equal(loaded.codes.weight, model.codes.weight)
    assert type(model.hparams.num_codes) is int


@pytest.mark.parametrize("stage", ["fit", "validate", "test", "predict"])
@pytest.mark.parametrize("cls", [Autoencoder, AdversarialAutoencoder, QuantizedAutoencoder, DeepBeliefAutoencoder])
def test_batches_without_indices_are_refused_naming_the_layout(cls: type, stage: str, tmp_path: Path) -> None:
    pairs = DataLoader(TensorDataset(torch.rand(8, 1, 28, 28), torch.zeros(8, dtype=torch.long)), batch_size=4)
    trainer = L.Trainer(default_root_dir=tmp_path, max_steps=1, enable_checkpointing=False, **QUIET)
    with pytest.raises(ValueError, match=r"take batches \(images, labels, indices\).* got a list of 2 items"):
        getattr(trainer, stage)(cls(**TINY), pairs)


def test_a_checkpoint_of_given_networks_asks_for_them(tmp_path: Path) -> None:
    def networks() -> dict[str, nn.Module]:
        return {"encoder": nn.Sequential(nn.Flatten(), nn.Linear(784, 4)),
                "decoder": nn.Sequential(nn.Linear(4, 784), nn.Unflatten(1, (1, 28, 28)))}  # fmt: skip

    model = Autoencoder(latent_dim=4, **networks()).eval()
    path = saved_without_trainer(model, tmp_path / "given.ckpt")
    with pytest.raises(ValueError, match=r"given encoder and decoder.*load_from_checkpoint\(path, encoder=\.\.\., "):
        Autoencoder.load_from_checkpoint(path)
    x = torch.rand(2, 1, 28, 28)
    assert torch.equal(Autoencoder.load_from_checkpoint(path, **networks()).eval()(x), model(x))  # given again: loads


# --- a user's own loaders ---------------------------------------------------------------------------------------------
def own_loader(x: torch.Tensor) -> DataLoader:
    return DataLoader(TensorDataset(x, torch.zeros(len(x), dtype=torch.long), torch.arange(len(x))), batch_size=4)


IMAGES = torch.rand(8, 1, 28, 28, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize(
    "x, message",
    [
        (
            (IMAGES * 255).to(torch.uint8),
            r"has torch.float32 weights, but the \w+ batch holds torch.uint8 images: pass x",
        ),
        (
            IMAGES.double(),
            r"has torch.float32 weights, but the \w+ batch holds torch.float64 images: convert them with",
        ),
        (IMAGES * 255, r"takes images of pixels in \[0, 1\] .*, but the \w+ batch holds values in \[0.0\d+, 25\d"),
        (IMAGES.masked_fill(IMAGES > 0.9, float("nan")), r"images of pixels in \[0, 1\].* holds NaN or infinite"),
        (torch.full((8, 13), float("inf")), r"takes feature vectors of finite values, but the \w+ batch holds NaN or"),
    ],
    ids=["uint8", "float64", "0-255", "nan", "vectors-inf"],
)
@pytest.mark.parametrize("stage", ["fit", "predict"])
def test_own_batches_of_another_dtype_or_range_are_refused_naming_them(x, message: str, stage: str) -> None:
    # Before, uint8 and float64 images failed deep in torch ("mat1 and mat2 must have the same dtype"), and images in
    # [0, 255] or NaN trained without a word (a binary cross-entropy of -300,000).
    model = Autoencoder(input_shape=tuple(x.shape[1:]), reconstruction="mse" if x.dim() == 2 else "bce", **TINY)
    trainer = L.Trainer(max_steps=1, limit_val_batches=0, enable_checkpointing=False, **QUIET)
    with pytest.raises(ValueError, match=message):
        getattr(trainer, stage)(model, own_loader(x))


def test_each_stage_checks_its_own_first_batch() -> None:
    # Before, only the model's first batch ever was checked: the sanity check's validation batch, so a training loader
    # of another shape failed deep in torch, and a model fitted on good data tested images in [0, 255] unchecked.
    trainer = L.Trainer(max_steps=1, limit_val_batches=1, enable_checkpointing=False, **QUIET)
    with pytest.raises(ValueError, match=r"expects images of shape \(1, 28, 28\), got a batch of shape \(4, 1, 27, 27"):
        trainer.fit(Autoencoder(**TINY), own_loader(IMAGES[..., :27, :27]), own_loader(IMAGES))
    model = Autoencoder(**TINY)
    trainer.fit(model, own_loader(IMAGES), own_loader(IMAGES))
    with pytest.raises(ValueError, match=r"the test batch holds values in \[0.0\d+, 25\d"):
        trainer.test(model, own_loader(IMAGES * 255), verbose=False)
    with pytest.raises(ValueError, match=r"the predict batch holds torch.uint8 images: pass x.float\(\) / 255"):
        trainer.predict(model, own_loader((IMAGES * 255).to(torch.uint8)))
    (tested,) = trainer.test(model, own_loader(IMAGES), verbose=False)  # good data still pass
    assert torch.isfinite(torch.tensor(tested["test/loss"]))


# --- direct calls -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "call, message",
    [
        (lambda m: m.encode((IMAGES * 255).to(torch.uint8)), r"has torch.float32 weights, but encode\(x\) holds "
         r"torch.uint8 images: pass x.float\(\) / 255"),
        (lambda m: m(IMAGES.double()), r"but forward\(x\) holds torch.float64 images: convert them with x.to\(torch.f"),
        (lambda m: m.posterior(IMAGES[..., :27, :27]), r"VAE.posterior\(x\) takes images \[B, 1, 28, 28\], got a "
         r"tensor of shape \[8, 1, 27, 27\]$"),
        (lambda m: m.encode(IMAGES[0]), r"got a tensor of shape \[1, 28, 28\]: add the batch dimension, x\[None\]"),
        (lambda m: m.decode(torch.zeros(2, 4).double()), r"but decode\(z\) holds torch.float64 codes: convert them"),
        (lambda m: m.decode(torch.zeros(2, 5)), r"VAE.decode\(z\) takes codes \[B, 4\], got a tensor of shape \[2, 5"),
        (lambda m: m.importance_weighted_nll(IMAGES.numpy(), 2), r"takes a tensor of images \[B, 1, 28, 28\], got a n"),
    ],
    ids=["uint8", "float64", "size", "no-batch", "float64-codes", "code-size", "numpy"],
)  # fmt: skip
def test_direct_calls_with_another_dtype_or_shape_are_refused_naming_them(call, message: str) -> None:
    # Before, each failed deep in torch ("mat1 and mat2 must have the same dtype, but got Byte and Float"), and an
    # image without its batch dimension was taken as a batch of one 28x28 image.
    model = VAE(**TINY).eval()
    with pytest.raises(ValueError, match=message):
        call(model)
    with torch.autocast("cpu", torch.bfloat16):  # autocast's bfloat16 codes still decode
        assert model(IMAGES).shape == IMAGES.shape


def a_prior(tmp_path: Path) -> CodePrior:
    tokenizer = QuantizedAutoencoder(latent_dim=4, hidden_dims=[8, 8], codebook_size=16)
    return CodePrior(str(saved_without_trainer(tokenizer, tmp_path / "tokenizer.ckpt")), embed_dim=16, num_layers=1,
                     num_heads=2)  # fmt: skip


@pytest.mark.parametrize(
    "build",
    [
        lambda _: SparseAutoencoder(**TINY),
        lambda _: DropoutAutoencoder(**TINY),
        lambda _: IAFVAE(**TINY),
        lambda _: KLAutoencoder(latent_dim=4, hidden_dims=[8], residual_blocks=1, input_shape=(3, 16, 16)),
        lambda _: MultVAE(input_shape=(20,), **TINY),
        lambda _: MultDAE(input_shape=(20,), **TINY),
        a_prior,
        lambda _: AutoDecoder(**TINY, num_codes=4, inference_steps=2),
    ],
    ids=["sparse", "dropout", "iaf", "kl-f", "mult-vae", "mult-dae", "prior", "autodecoder"],
)
def test_variants_with_an_encode_of_their_own_refuse_another_dtype_or_shape(build, tmp_path: Path) -> None:
    # Before, these encodes skipped the base's check: float64 images failed deep in torch, an image without its batch
    # dimension was taken as a batch.
    model = build(tmp_path).eval()
    x = torch.rand(2, *model.input_shape)
    with pytest.raises(ValueError, match=r"weights, but encode\(x\) holds torch.float64 .*: convert them with x.to"):
        model.encode(x.double())
    with pytest.raises(ValueError, match=r"\.encode\(x\) takes .*: add the batch dimension, x\[None\]"):
        model.encode(x[0])
    assert model.encode(x).shape[0] == 2


def test_a_fit_from_python_resumed_on_other_data_is_refused(tmp_path: Path) -> None:
    # Before, Lightning restores no loader position from a checkpoint written at an epoch's end, so nothing compared
    # the data: the run went on training on other images without a word (the command refused it).
    for name, seed in (("a", 0), ("b", 5)):
        write_dataset(tmp_path / name, "MNIST", seed=seed)

    def fit(data: str, epochs: int, ckpt_path: Path | None = None) -> L.Trainer:
        trainer = L.Trainer(
            max_epochs=epochs, limit_train_batches=2, limit_val_batches=0, enable_checkpointing=False, **QUIET
        )
        datamodule = MNISTDataModule(data_dir=str(tmp_path / data), batch_size=16)
        trainer.fit(Autoencoder(**TINY), datamodule=datamodule, ckpt_path=ckpt_path)
        return trainer

    fit("a", 1).save_checkpoint(tmp_path / "a.ckpt")
    with pytest.raises(ValueError, match=r"reached with the training data's content \(fingerprint\) \d+, this run has"):
        fit("b", 2, tmp_path / "a.ckpt")
    assert fit("a", 2, tmp_path / "a.ckpt").global_step == 4  # its own data resume


@pytest.mark.parametrize(
    "y",
    [
        [1, 2, 3],
        2,
        np.int64(2),
        np.array([1, 2, 3], dtype=np.int32),
        torch.tensor([1, 2, 3], dtype=torch.uint8),
        np.array([1, 2, 3], dtype=np.uint32),
    ],
    ids=["list", "int", "numpy-int", "int32-array", "uint8-tensor", "uint32-array"],
)
def test_a_conditional_vaes_labels_in_any_integer_form_reach_every_method(y) -> None:
    # Before, int32 and uint8 labels failed in one_hot ("only applicable to index tensor of type LongTensor"), uint32
    # in the range check ("min_all" not implemented for 'UInt32'), and importance_weighted_nll took lists and ints to
    # y.repeat ("'list' object has no attribute 'repeat'").
    model, x = ConditionalVAE(**TINY).eval(), IMAGES[:3]
    labels = torch.as_tensor(y, dtype=torch.long).expand(3)
    assert torch.equal(model(x, y), model(x, labels))
    torch.manual_seed(0)
    nll = model.importance_weighted_nll(x, 4, y)
    torch.manual_seed(0)
    assert torch.equal(nll, model.importance_weighted_nll(x, 4, labels))


class LateSWA(WeightAveraging):  # Lightning's documented way to start averaging later: SWA from the second step
    def should_update(self, step_idx: int | None = None, epoch_idx: int | None = None) -> bool:
        return step_idx is not None and step_idx >= 1


@pytest.mark.parametrize(
    "callback, refused",
    [
        (LateSWA(), True),
        (WeightAveraging(avg_fn=get_ema_avg_fn(0.9)), False),
        (WeightAveraging(use_buffers=False), False),
    ],
    ids=["swa-subclass", "ema-avg-fn", "no-buffers"],
)
def test_weight_averaging_of_the_vq_codebooks_bool_flag_is_refused_only_where_it_subtracts(
    callback: WeightAveraging, refused: bool
) -> None:
    # Before, a subclass of WeightAveraging escaped the check (NotImplementedError "Subtraction ... with two bool
    # tensors" at its second update), and an averaging function or use_buffers=False, which trains, was refused.
    model = QuantizedAutoencoder(latent_dim=4, hidden_dims=[8, 8], codebook_size=16)
    trainer = L.Trainer(max_steps=3, limit_val_batches=0, enable_checkpointing=False, callbacks=[callback], **QUIET)
    if refused:
        with pytest.raises(ValueError, match=r"LateSWA \(a WeightAveraging\) cannot average quantizer 'vq'.*use EMA"):
            trainer.fit(model, own_loader(IMAGES))
        return
    trainer.fit(model, own_loader(IMAGES))
    assert trainer.global_step == 3
