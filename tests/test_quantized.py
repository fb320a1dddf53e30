"""Quantized and KL first-stage autoencoders: quantizers, codebook health, the perceptual-adversarial recipe, EMA.

The shared suite in ``test_variants.py`` covers shapes, training, checkpoints, test and predict; this file what is
particular to them. Tiny networks and the tiny IDX data of ``conftest.py``, random LPIPS weights, CPU only.
"""

from __future__ import annotations

import itertools
import math
import re
import warnings
from pathlib import Path
from types import SimpleNamespace
from urllib.error import URLError

import lpips
import pytest
import torch
import torchvision
from lightning.pytorch.callbacks import Callback, EMAWeightAveraging, WeightAveraging
from test_variants import make_trainer, tiny_data
from tiny_runs import last_checkpoint, run_cli, tiny_args
from torch import nn
from vector_quantize_pytorch.vector_quantize_pytorch import Codebook

from ae_lightning import KLAutoencoder, QuantizedAutoencoder
from ae_lightning.blocks import losses
from ae_lightning.blocks.discriminators import PatchDiscriminator, min_image_size
from ae_lightning.blocks.perceptual import LPIPSDistance, trunk_weights_path
from ae_lightning.blocks.quantizers import CodebookUsage
from ae_lightning.evaluation import driver as evaluation
from ae_lightning.evaluation.metrics import InceptionFeatures, inception_weights_path
from ae_lightning.models.first_stage import check_discriminator_depth
from ae_lightning.training.callbacks import EMAWeightAveraging as EMAOnTrainingDevice
from ae_lightning.training.callbacks import ImageLogger
from datamodules import MNISTDataModule, TensorBatchLoader

TINY = {"latent_dim": 4, "hidden_dims": [8], "residual_blocks": 1}
ADVERSARIAL = {
    "perceptual_weight": 1.0,
    "perceptual_pretrained": False,
    "adversarial_weight": 0.5,
    "discriminator_channels": 4,
    "discriminator_layers": 1,
}


def offline_alexnet(pretrained: bool = False) -> nn.Module:
    """torchvision's AlexNet as the ``lpips`` package builds it, on a machine without network."""
    if pretrained:
        raise URLError("no network")
    return ALEXNET()


ALEXNET = torchvision.models.alexnet


def quantized(**kwargs) -> QuantizedAutoencoder:
    torch.manual_seed(0)
    codebook = {} if kwargs.get("quantizer") == "fsq" else {"codebook_size": 16}  # FSQ's codebook is its levels'
    return QuantizedAutoencoder(**{**TINY, **codebook, **kwargs})


def images(n: int = 6) -> torch.Tensor:
    return torch.rand(n, 1, 28, 28, generator=torch.Generator().manual_seed(1))


def test_commitment_is_logged_in_training_only_and_the_quantization_error_always() -> None:
    # The quantizer computes no commitment loss in evaluation: val/ and test/commitment read 0 where it was large.
    model = quantized()
    x = images()
    for training in (True, False):
        terms = model.train(training).autoencoder_terms(x)[0]
        assert terms["quantization_error"] > 0
        assert ("commitment" in terms) is training
        if training:
            assert terms["commitment"] > 0


# --- quantizers -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kwargs, levels",
    [({}, 1), ({"quantizer": "fsq", "fsq_levels": [5, 3]}, 1), ({"quantizer": "residual_vq", "num_quantizers": 3}, 3)],
    ids=["vq", "fsq", "residual_vq"],
)
def test_indices_decode_to_the_same_reconstruction(kwargs: dict, levels: int) -> None:
    model = quantized(**kwargs)
    model.train()
    model.loss_terms(images(), None, None)  # k-means initialization of the codebooks
    model.eval()
    x = images()
    indices = model.encode_indices(x)
    size = 15 if kwargs.get("quantizer") == "fsq" else 16
    assert indices.shape == (6, levels, 14, 14) and 0 <= indices.min() and indices.max() < size
    assert indices.dtype == torch.int64  # for every quantizer (the library's FSQ gives int32), in predictions too
    torch.testing.assert_close(model.decode_indices(indices), model(x))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float64], ids=["bf16", "float64"])
@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"quantizer": "fsq", "fsq_levels": [5, 3, 3, 3]},
        {"quantizer": "fsq", "fsq_levels": [5, 3]},
        {"quantizer": "residual_vq", "num_quantizers": 2},
    ],
    ids=["vq", "fsq", "fsq_projected", "residual_vq"],
)
def test_indices_decode_in_the_weights_dtype(kwargs: dict, dtype: torch.dtype) -> None:
    # Under bf16-true or 64-true FSQ's indices decoded to float32 codes, which decode (or the projection from fewer
    # levels than latent_dim) refused: a prior's samples could not become images.
    model = quantized(**kwargs)
    model.loss_terms(images(), None, None)  # k-means initialization of the codebooks
    model = model.eval().to(dtype)
    x = images().to(dtype)
    decoded = model.decode_indices(model.encode_indices(x))
    assert decoded.dtype == dtype
    torch.testing.assert_close(decoded, model(x))


def test_encode_indices_refuses_the_images_encode_refuses_naming_itself() -> None:
    # It used to pass them to the encoder: a bare RuntimeError from a convolution, or an unpacking error.
    model = quantized().eval()
    x = images()
    for bad, message in [
        (x[0], "encode_indices(x) takes images [B, 1, H, W], got a tensor of shape [1, 28, 28]: add the batch"),
        ((x * 255).to(torch.uint8), "but encode_indices(x) holds torch.uint8 images: pass x.float() / 255"),
        (x.double(), "but encode_indices(x) holds torch.float64 images: convert them with x.to(torch.float32)"),
        (x.expand(-1, 3, -1, -1), "encode_indices(x) takes images [B, 1, H, W], got a tensor of shape [6, 3, 28, 28]"),
    ]:
        with pytest.raises(ValueError, match=re.escape(message)):
            model.encode_indices(bad)


@pytest.mark.parametrize(
    "kwargs",
    [{}, {"quantizer": "fsq", "fsq_levels": [5, 3]}, {"quantizer": "residual_vq", "num_quantizers": 2}],
    ids=["vq", "fsq", "residual_vq"],
)
def test_indices_outside_the_codebook_or_of_another_shape_are_refused(kwargs: dict) -> None:
    # The libraries decoded -1 (every quantizer) and FSQ's codebook_size (a code past the last) without a word.
    model = quantized(**kwargs).eval()
    levels, size = model.quantizer.num_codebooks, model.codebook_size
    for bad in (-1, size):
        with pytest.raises(
            ValueError, match=rf"indices must lie in \[0, {size - 1}\] .* got values from {bad} to {bad}"
        ):
            model.decode_indices(torch.full((1, levels, 7, 7), bad))
    for shape, dtype in [
        ((1, levels + 1, 7, 7), torch.long),
        ((levels, 7, 7), torch.long),
        ((1, levels, 7, 7), torch.float),
    ]:
        with pytest.raises(ValueError, match=re.escape(f"integers of shape [B, {levels}, h, w], got {dtype}")):
            model.decode_indices(torch.zeros(shape, dtype=dtype))
    assert model.decode_indices(torch.full((1, levels, 7, 7), size - 1, dtype=torch.int32)).shape == (1, 1, 14, 14)


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int8, torch.int16, torch.int32])
@pytest.mark.parametrize(
    "kwargs",
    [{}, {"quantizer": "fsq", "fsq_levels": [5, 3]}, {"quantizer": "residual_vq", "num_quantizers": 2}],
    ids=["vq", "fsq", "residual_vq"],
)
def test_indices_stored_in_a_smaller_integer_type_decode_as_int64_ones(kwargs: dict, dtype: torch.dtype) -> None:
    # Tokens kept as uint8 (a book of 256 codes or fewer) or int16 were an IndexError of torch's indexing: uint8 reads
    # as a boolean mask, int8 and int16 cannot index at all.
    model = quantized(**kwargs).eval()
    indices = model.encode_indices(images())
    torch.testing.assert_close(model.decode_indices(indices.to(dtype)), model.decode_indices(indices))


@pytest.mark.parametrize("kwargs", [{}, {"quantizer": "residual_vq", "num_quantizers": 2}], ids=["vq", "residual_vq"])
def test_evaluation_never_initializes_or_changes_the_codebook(kwargs: dict) -> None:
    # The library's k-means initialization ran on any forward: an eval-mode encode rewrote a fresh model's codebook.
    model = quantized(**kwargs).eval()
    before = {name: value.clone() for name, value in model.state_dict().items()}
    with torch.no_grad():
        model.encode_indices(images())
        model.autoencoder_terms(images())
    for name, value in model.state_dict().items():
        assert torch.equal(value, before[name]), f"evaluation changed {name}"
    model.train().loss_terms(images(), None, None)  # the first training batch initializes
    initted = [value for name, value in model.state_dict().items() if name.endswith("initted")]
    assert len(initted) == (2 if kwargs else 1) and all(initted)


def test_the_first_training_batch_not_the_sanity_check_initializes_the_codebook(data_dir: Path, tmp_path: Path) -> None:
    model = quantized()
    codebook = model.quantizer.quantizer._codebook
    seen = {}

    class Watch(Callback):
        def on_sanity_check_end(self, trainer, module) -> None:
            seen["after the sanity check"] = bool(codebook.initted)

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
            seen.setdefault("after the first training batch", bool(codebook.initted))

    make_trainer(tmp_path, limit_train_batches=1, callbacks=[Watch()]).fit(model, datamodule=tiny_data(data_dir))
    assert seen == {"after the sanity check": False, "after the first training batch": True}


def test_dead_code_threshold_is_compared_with_ema_cluster_sizes_that_count_vectors() -> None:
    # dead_code_threshold is a count of vectors: k-means initialization gives each code the vectors of its cluster, and
    # the EMA keeps the sizes summing to a step's vectors. vector-quantize-pytorch 1.34 started the sizes at 0 and made
    # the threshold a fraction of the mean size (pyproject.toml keeps it below 1.34).
    model = quantized(dead_code_threshold=0.0)
    model.train().loss_terms(images(), None, None)
    sizes = model.quantizer.quantizer._codebook.cluster_size
    vectors = 6 * 14 * 14  # the codes of six 28x28 images at f=2
    assert sizes.sum().item() == pytest.approx(vectors, rel=1e-4), "the EMA cluster sizes do not count the vectors"


@pytest.mark.parametrize("kwargs", [{"kmeans_init": False}, {"quantizer": "residual_vq", "num_quantizers": 2}])
def test_synchronizing_the_codebook_keeps_its_state_and_draws_no_random_numbers(kwargs: dict) -> None:
    # Under DDP configure_model rebuilds the library's quantizer with sync_codebook (tests/test_ddp.py runs it).
    model = quantized(**kwargs)
    model.train().loss_terms(images(), None, None)  # a codebook with a state of its own
    before = {name: value.clone() for name, value in model.state_dict().items()}
    model.configure_model()  # one process: nothing to synchronize
    assert not model.quantizer.sync_codebook
    random_state = torch.get_rng_state()
    model.quantizer.synchronize_codebook()
    assert torch.equal(torch.get_rng_state(), random_state)
    assert model.quantizer.sync_codebook
    assert all(codebook.use_ddp for codebook in model.modules() if isinstance(codebook, Codebook))
    state = model.state_dict()
    assert state.keys() == before.keys()
    for name, value in before.items():
        assert state[name].dtype == value.dtype and torch.equal(state[name], value), name


def test_vq_gradients_pass_straight_through_to_the_encoder() -> None:
    model = quantized(commitment_weight=0.0)
    model.train()
    model.loss_terms(images(), None, None)["loss"].backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.encoder.parameters())


def test_codebook_usage_counts_codes() -> None:
    usage = CodebookUsage(codebook_size=4, num_codebooks=2)
    # level 0 uses codes 0 and 1 equally (perplexity 2); level 1 uses code 3 only (perplexity 1)
    usage.update(torch.tensor([[[[0, 1]], [[3, 3]]]]))
    usage.update(torch.tensor([[[[1, 0]], [[3, 3]]]]))
    stats = usage.compute()
    assert stats["codes_used"].item() == pytest.approx((2 / 4 + 1 / 4) / 2)
    assert stats["perplexity"].item() == pytest.approx((2 + 1) / 2)
    assert stats["dead_codes"].item() == 2 + 3


def test_validation_logs_codebook_health(data_dir: Path, tmp_path: Path) -> None:
    model = quantized()
    trainer = make_trainer(tmp_path)
    trainer.fit(model, datamodule=tiny_data(data_dir))
    metrics = trainer.callback_metrics
    used, perplexity, dead = (metrics[f"val/{name}"].item() for name in ("codes_used", "perplexity", "dead_codes"))
    assert 0 < used <= 1 and 1 <= perplexity <= 16 and dead == pytest.approx(16 * (1 - used))
    trainer.test(model, datamodule=tiny_data(data_dir), verbose=False)
    assert trainer.callback_metrics["test/bits_per_pixel"].item() == pytest.approx(14 * 14 * 4 / (28 * 28))


def test_codebook_usage_counts_the_validation_codes_alone_not_the_pictures_drawn(
    data_dir: Path, tmp_path: Path
) -> None:
    # The image logger encodes the first validation images again to draw them; the logged figures must be those of
    # the validation batches' codes, whether pictures are drawn or not.
    names = ("codes_used", "perplexity", "dead_codes")
    logged = {}
    for draws in (False, True):
        model = quantized()
        callbacks = [ImageLogger(views=["reconstructions"], num_images=8)] if draws else []
        trainer = make_trainer(tmp_path / f"draws={draws}", limit_val_batches=2, callbacks=callbacks)
        trainer.fit(model, datamodule=tiny_data(data_dir))
        logged[draws] = {name: trainer.callback_metrics[f"val/{name}"].item() for name in names}
    assert list((tmp_path / "draws=True" / "images").glob("reconstructions-*.png"))
    data = tiny_data(data_dir)
    data.setup("fit")
    with torch.no_grad():
        codes = torch.cat(
            [model.eval().encode_indices(x).flatten() for x, *_ in itertools.islice(data.val_dataloader(), 2)]
        )
    counts = torch.bincount(codes, minlength=16).double()
    frequencies = counts[counts > 0] / counts.sum()
    perplexity = math.exp(-(frequencies * frequencies.log()).sum().item())
    by_hand = {
        "codes_used": (counts > 0).sum().item() / 16,
        "perplexity": perplexity,
        "dead_codes": (counts == 0).sum().item(),
    }
    assert logged[False] == pytest.approx(by_hand, rel=1e-5)
    assert logged[True] == pytest.approx(by_hand, rel=1e-5)


def test_codebook_usage_costs_no_encode_of_its_own(data_dir: Path, tmp_path: Path) -> None:
    # The usage count encoded each validation and test batch once more than the loss did (and the test rate once more).
    def encodes(model: KLAutoencoder | QuantizedAutoencoder, run: str) -> int:
        calls = []
        model.encoder.register_forward_hook(lambda *_: calls.append(1))
        getattr(make_trainer(tmp_path, limit_val_batches=2, limit_test_batches=2), run)(
            model, datamodule=tiny_data(data_dir), verbose=False
        )
        return len(calls)

    assert encodes(quantized(), "validate") == 2  # one per batch: the loss's
    assert encodes(quantized(), "test") == encodes(KLAutoencoder(**TINY), "test")  # no more than a model without codes


def forward_counts(model: nn.Module, *names: str) -> dict[str, int]:
    """Calls of each named network's forward from now on (a forward hook on each)."""
    counts = dict.fromkeys(names, 0)
    for name in names:
        getattr(model, name).register_forward_hook(lambda *_, name=name: counts.update({name: counts[name] + 1}))
    return counts


@pytest.mark.parametrize("cls", [QuantizedAutoencoder, KLAutoencoder])
def test_a_test_batch_is_encoded_and_decoded_once_and_scored_as_before(
    cls: type, data_dir: Path, tmp_path: Path
) -> None:
    # The test step encoded and decoded each batch three times, for its loss, the reconstruction metrics and ms_ssim
    # and lpips, each time to the same reconstruction.
    from ae_lightning.evaluation.metrics import ReconstructionMetrics

    torch.manual_seed(0)
    model = cls(**TINY, **ADVERSARIAL)  # LPIPS and a discriminator: every test term
    counts = forward_counts(model, "encoder", "decoder")
    data = tiny_data(data_dir)
    trainer = make_trainer(tmp_path, limit_test_batches=1)
    trainer.test(model, datamodule=data, verbose=False)
    assert counts == {"encoder": 1, "decoder": 1}
    x = next(iter(data.test_dataloader()))[0]
    model.eval()
    with torch.no_grad():
        terms = {**model.loss_terms(x, None, None), **model.test_metrics(x), **ReconstructionMetrics()(model(x), x)}
    assert {"lpips", "ms_ssim", "g_loss", "d_loss", "psnr", "recon_mse"} <= set(terms)
    for name, value in terms.items():
        torch.testing.assert_close(trainer.callback_metrics[f"test/{name}"], value, msg=name)


@pytest.mark.parametrize("kwargs", [{}, {"quantizer": "residual_vq", "num_quantizers": 2}], ids=["vq", "residual_vq"])
def test_predict_encodes_and_decodes_each_batch_once_to_the_same_outputs(kwargs: dict) -> None:
    # Predict encoded each batch three times (the codes, the anomaly score's reconstruction, the indices) and decoded
    # it twice.
    model = quantized(**kwargs)
    model.train().loss_terms(images(), None, None)  # k-means initialization
    model.eval()
    x, labels, index = images(), torch.zeros(6, dtype=torch.long), torch.arange(6)
    counts = forward_counts(model, "encoder", "decoder")
    with torch.no_grad():
        predicted = model.predict_step((x, labels, index), 0)
        assert counts == {"encoder": 1, "decoder": 1}
        expected = {"z": model.encode(x), "label": labels, "index": index,
                    "recon_error": losses.mean_squared_error(model.decode(model.encode(x)), x),
                    "anomaly_score": model.anomaly_score(x), "indices": model.encode_indices(x)}  # fmt: skip
    assert list(predicted) == list(expected)
    for name, value in expected.items():
        torch.testing.assert_close(predicted[name], value, msg=name)

    class Scored(QuantizedAutoencoder):  # a variant's own anomaly score is still the one predicted
        def anomaly_score(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
            return x.sum((1, 2, 3))

    scored = Scored(**TINY, codebook_size=16).eval()
    torch.testing.assert_close(scored.predict_step((x, labels, index), 0)["anomaly_score"], x.sum((1, 2, 3)))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"codebook_size": 1}, "codebook_size must be an integer >= 2, got 1"),
        ({"quantizer": "fsq", "fsq_levels": [8, 1]}, r"each of fsq_levels must be an integer >= 3, got \[8, 1\]"),
        ({"quantizer": "fsq", "fsq_levels": []}, r"fsq_levels must name at least one level, got \[\]"),
        (
            {"quantizer": "fsq", "fsq_levels": [1024, 1024, 3]},
            r"fsq_levels \[1024, 1024, 3\] make a codebook of 3145728",
        ),
        ({"quantizer": "residual_vq", "num_quantizers": 0}, "num_quantizers must be an integer >= 1, got 0"),
        ({"quantizer": "lfq"}, "quantizer must be one of 'vq', 'fsq', 'residual_vq', got 'lfq'"),
        ({"input_shape": (1, 28, 30), "hidden_dims": [8, 8, 8]}, "image size 28x30 is not divisible by .* factor 8"),
        ({"network": "mlp"}, "network must be one of 'conv', got 'mlp'"),
        (  # vqgan_f8's PatchGAN on 16 px images crashed in a convolution at disc_start
            {**ADVERSARIAL, "input_shape": (1, 16, 16), "hidden_dims": [8], "discriminator_layers": 3},
            r"discriminator_layers=3 needs images of at least 24x24 pixels, but the image size is 16x16; set "
            "discriminator_layers to 2 or less, or use larger images",
        ),
    ],
)
def test_quantizer_settings_that_cannot_work_are_refused(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        quantized(**kwargs)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"quantizer": "fsq", "codebook_size": 64}, "codebook_size=64 has no effect with quantizer 'fsq' "
         r"\(only 'vq' or 'residual_vq' reads it\): leave codebook_size at its default 512, or set quantizer to"),
        ({"quantizer": "fsq", "dead_code_threshold": 0.0}, "dead_code_threshold=0.0 has no effect with"),
        ({"quantizer": "fsq", "kmeans_init": False}, "kmeans_init=False has no effect with quantizer 'fsq'"),
        ({"num_quantizers": 8}, r"num_quantizers=8 has no effect with quantizer 'vq' \(only 'residual_vq' reads it\)"),
        ({"fsq_levels": [5, 5]}, r"fsq_levels=\[5, 5\] has no effect with quantizer 'vq' \(only 'fsq' reads it\)"),
        ({"quantizer": "residual_vq", "fsq_levels": [3]}, "fsq_levels=.3. has no effect with quantizer 'residual_vq'"),
    ],
)  # fmt: skip
def test_a_setting_the_quantizer_does_not_read_is_refused_not_ignored(kwargs: dict, message: str) -> None:
    # fsq with codebook_size 64 used to train on its levels' 1000 codes without a word
    with pytest.raises(ValueError, match=message):
        quantized(**kwargs)
    # the defaults, as configs/vqvae.yaml sets them, go with any quantizer: the yaml stacks with quantizer fsq
    defaults = {"codebook_size": 512, "fsq_levels": (8, 5, 5, 5), "kmeans_init": True}
    assert quantized(quantizer="fsq", **defaults).codebook_size == 1000


@pytest.mark.parametrize("cls", [QuantizedAutoencoder, KLAutoencoder], ids=["vq", "kl"])
def test_images_whose_size_f_does_not_divide_are_refused_not_shrunk(cls: type) -> None:
    # The stride-2 convolutions floored such sizes: a 100x100 image came back as a 96x96 reconstruction.
    kwargs = {**TINY, "hidden_dims": [4, 4, 4]} | ({"codebook_size": 16} if cls is QuantizedAutoencoder else {})
    with pytest.raises(ValueError, match=r"image size 100x100 is not divisible by .* factor 8 .*\(e\.g\. 96x96\)"):
        cls(input_shape=(3, 100, 100), **kwargs)
    torch.manual_seed(0)
    model = cls(input_shape=(3, 32, 32), **kwargs).eval()
    assert model(torch.rand(1, 3, 64, 48)).shape == (1, 3, 64, 48)  # any size f divides
    for call in (model.encode, model, lambda x: model.autoencoder_terms(x)):
        with pytest.raises(ValueError, match=r"image size 60x68 is not divisible by .* factor 8 .*\(e\.g\. 56x64\)"):
            call(torch.rand(1, 3, 60, 68))


def test_networks_come_from_the_builders_or_are_given_and_labels_are_ignored() -> None:
    class TransposedDecoder(QuantizedAutoencoder):
        def build_decoder(self) -> nn.Module:
            return nn.ConvTranspose2d(self.latent_dim, 1, 2, stride=2)

    model = TransposedDecoder(**TINY, codebook_size=16).eval()
    assert isinstance(model.decoder, nn.ConvTranspose2d)
    assert model(images()).shape == (6, 1, 28, 28)
    given = nn.Conv2d(1, 4, 2, stride=2)
    model = quantized(encoder=given, kmeans_init=False).eval()
    assert model.encoder is given
    assert model.encode(images()).shape == (6, 4, 14, 14)
    labels = torch.arange(6)
    torch.testing.assert_close(model(images(), labels), model(images()))
    assert set(model.test_metrics(images(), labels)) == {"bits_per_pixel", "ms_ssim"}
    # Its latent_shape is its codes' shape, and probing the given network leaves the codebook's k-means init to data.
    probed = quantized(encoder=nn.Conv2d(1, 4, 2, stride=2))
    assert probed.latent_shape == (4, 14, 14) == tuple(probed.encode(images()).shape[1:])
    probed = quantized(encoder=nn.Conv2d(1, 4, 2, stride=2))
    before = {name: value.clone() for name, value in probed.state_dict().items()}
    probed.check_given_networks()
    assert all(torch.equal(value, probed.state_dict()[name]) for name, value in before.items())


def test_a_given_encoder_of_another_factor_than_hidden_dims_sets_the_rate(tmp_path: Path) -> None:
    # hidden_dims [8]: f = 2, codes 14x14; the given encoder has f = 4: codes 7x7, 49 * 4 bits per 784 pixels
    model = quantized(encoder=nn.Conv2d(1, 4, 4, stride=4), decoder=nn.ConvTranspose2d(4, 1, 4, stride=4))
    data = torch.utils.data.TensorDataset(images(), torch.zeros(6, dtype=torch.long), torch.arange(6))
    (result,) = make_trainer(tmp_path).test(model, torch.utils.data.DataLoader(data, batch_size=3), verbose=False)
    assert model.latent_shape == (4, 7, 7) == tuple(model.encode(images()).shape[1:])
    assert result["test/bits_per_pixel"] == pytest.approx(49 * 4 / 784)  # was 196 * 4 / 784, hidden_dims' f


def test_ms_ssim_takes_the_scales_of_the_scored_images_size() -> None:
    model = quantized(input_shape=(1, 64, 64)).eval()  # 3 scales at 64 px; 16 px images allow one
    assert 0 < model.test_metrics(torch.rand(2, 1, 16, 16))["ms_ssim"] <= 1  # was a torchmetrics ValueError


# --- adversarial losses ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("layers", [0, 1, 2, 3])
def test_the_patchgan_takes_images_down_to_its_minimum_size_and_smaller_ones_are_refused(layers: int) -> None:
    smallest = min_image_size(layers)
    discriminator = PatchDiscriminator(1, 4, layers).train()  # GroupNorm needs two values per group in training
    assert discriminator(torch.rand(2, 1, smallest, smallest + 5)).ndim == 4
    check_discriminator_depth(layers, (smallest, smallest + 5))
    with pytest.raises(RuntimeError):
        discriminator(torch.rand(2, 1, smallest - 1, 64))
    with pytest.raises(ValueError, match=rf"discriminator_layers={layers} needs images of at least {smallest}x"):
        check_discriminator_depth(layers, (64, smallest - 1))


def test_adversarial_losses_match_hand_values() -> None:
    real, fake = torch.tensor([2.0, 0.5]), torch.tensor([-2.0, 0.0])
    # hinge: relu(1 - real) = [0, 0.5], relu(1 + fake) = [0, 1]
    assert losses.hinge_discriminator_loss(real, fake).item() == pytest.approx(0.5 * (0.25 + 0.5))
    expected = 0.5 * (math.log1p(math.exp(-2)) + math.log1p(math.exp(-0.5))) / 2
    expected += 0.5 * (math.log1p(math.exp(-2)) + math.log(2)) / 2
    assert losses.non_saturating_discriminator_loss(real, fake).item() == pytest.approx(expected)
    assert losses.generator_adversarial_loss(fake, "hinge").item() == pytest.approx(1.0)
    with pytest.raises(ValueError, match="got 'wasserstein'"):
        losses.generator_adversarial_loss(fake, "wasserstein")


def test_adaptive_weight_is_the_ratio_of_gradient_norms() -> None:
    w = torch.tensor([3.0, 4.0], requires_grad=True)
    # grad of (w . w) is 2w (norm 10); grad of 5 sum(w) is [5, 5] (norm 5 sqrt 2)
    weight = losses.adaptive_adversarial_weight((w * w).sum(), 5 * w.sum(), w)
    assert weight.item() == pytest.approx(10 / (5 * math.sqrt(2) + 1e-4))
    assert not weight.requires_grad
    assert losses.adaptive_adversarial_weight(1e9 * (w * w).sum(), w.sum(), w, max_weight=7.0).item() == 7.0


# --- the perceptual-adversarial recipe ------------------------------------------------------------------------------
@pytest.mark.parametrize("cls", [QuantizedAutoencoder, KLAutoencoder])
def test_recipe_steps_each_network_once_per_batch(cls: type, data_dir: Path, tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = cls(**TINY, **ADVERSARIAL)
    lpips_before = [p.detach().clone() for p in model.perceptual.parameters()]
    trainer = make_trainer(tmp_path, limit_train_batches=3)
    trainer.fit(model, datamodule=tiny_data(data_dir))
    assert trainer.global_step == 3  # batches, not optimizer steps
    autoencoder, discriminator = trainer.optimizers
    assert {autoencoder.state[p]["step"].item() for p in model.decoder.parameters()} == {3}
    assert {discriminator.state[p]["step"].item() for p in model.discriminator.parameters()} == {3}
    assert not any(p in autoencoder.state for p in model.discriminator.parameters())
    assert all(torch.equal(a, b) for a, b in zip(lpips_before, model.perceptual.parameters()))
    for name in ("train/g_loss", "train/d_loss", "train/adaptive_weight", "train/perceptual", "val/loss"):
        assert torch.isfinite(trainer.callback_metrics[name]), name


def test_no_adversarial_term_or_discriminator_step_before_disc_start(data_dir: Path, tmp_path: Path) -> None:
    model = quantized(**ADVERSARIAL, disc_start=2)
    before = [p.detach().clone() for p in model.discriminator.parameters()]
    logged = []

    class Watch(Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            logged.append(set(outputs))
            moved = any(not torch.equal(a, b) for a, b in zip(before, pl_module.discriminator.parameters()))
            assert moved == (trainer.global_step > 2), trainer.global_step

    make_trainer(tmp_path, limit_train_batches=3, limit_val_batches=0, callbacks=[Watch()]).fit(
        model, datamodule=tiny_data(data_dir)
    )
    assert ["g_loss" in terms for terms in logged] == [False, False, True]


def test_disc_start_beyond_the_run_is_warned(data_dir: Path, tmp_path: Path) -> None:
    model = quantized(**ADVERSARIAL, disc_start=10)
    with pytest.warns(UserWarning, match=r"disc_start=10 is at or beyond the run's 2 steps"):
        make_trainer(tmp_path, limit_val_batches=0).fit(model, datamodule=tiny_data(data_dir))


@pytest.mark.parametrize("disc_start, warned", [(3, False), (4, True)])
def test_disc_start_is_compared_with_the_optimizer_steps_of_the_fast_path(
    disc_start: int, warned: bool, data_dir: Path, tmp_path: Path
) -> None:
    model = quantized(**ADVERSARIAL, disc_start=disc_start, steps_per_batch=2)
    data = MNISTDataModule(data_dir=str(data_dir), batch_size=8, steps_per_batch=2)
    trainer = make_trainer(tmp_path, limit_val_batches=0)  # 2 batches of 2 optimizer steps each
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(model, datamodule=data)
    messages = [str(w.message) for w in caught if "disc_start" in str(w.message)]
    assert trainer.global_step == 4
    assert messages == ([f"disc_start={disc_start} is at or beyond the run's 4 steps: the discriminator never trains "
                         "and no adversarial term applies; lower disc_start"] if warned else [])  # fmt: skip


class PixelShuffleDecoder(nn.Module):
    """Codes to pixel logits with no weight of two or more dimensions: one learned scale."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(1))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return nn.functional.pixel_shuffle(z, 2) * self.scale


@pytest.mark.parametrize("decoder", ["frozen", "no_kernel"])
def test_an_adaptive_weight_without_a_trainable_last_layer_is_refused_when_training_starts(
    decoder: str, data_dir: Path, tmp_path: Path
) -> None:
    # It failed at the first step from disc_start (5000 in configs/photos/vqgan_f8.yaml), with an IndexError or
    # autograd's RuntimeError on a weight that does not require grad.
    given = {"decoder": PixelShuffleDecoder()} if decoder == "no_kernel" else {}
    model = quantized(**ADVERSARIAL, **given, disc_start=1)
    if decoder == "frozen":
        model.decoder.requires_grad_(False)
    found = "no weight of two or more dimensions" if decoder == "no_kernel" else "frozen"
    with pytest.raises(ValueError, match=rf"adaptive_weight compares .* decoder's last layer, but .*{found}.*"
                                         r"set adaptive_weight: false"):  # fmt: skip
        make_trainer(tmp_path, limit_val_batches=0).fit(model, datamodule=tiny_data(data_dir))
    assert model.global_step == 0


def test_the_recipe_with_a_discriminator_clips_both_networks_gradients(data_dir: Path, tmp_path: Path) -> None:
    def sgd(parameters):
        return torch.optim.SGD(parameters, lr=1.0)

    clipped = {"gradient_clip_val": 1e-6, "gradient_clip_algorithm": "value"}
    model = quantized(**ADVERSARIAL, **clipped, optimizer=sgd, discriminator_optimizer=sgd)
    networks = {"decoder": model.decoder, "discriminator": model.discriminator}
    before = {name: [p.detach().clone() for p in net.parameters()] for name, net in networks.items()}
    make_trainer(tmp_path, limit_train_batches=1, limit_val_batches=0).fit(model, datamodule=tiny_data(data_dir))
    for name, net in networks.items():
        moved = torch.cat([(p.detach() - b).abs().flatten() for p, b in zip(net.parameters(), before[name])])
        assert 0 < moved.max() <= 1.1e-6, name  # one SGD step of lr 1 on gradients clipped to 1e-6 (float32 rounding)
    with pytest.raises(ValueError, match=r"gradient_clip_val=1e-06 clips .* set --trainer.gradient_clip_val"):
        quantized(**clipped)  # no discriminator: the Trainer steps the optimizer and clips


@pytest.mark.parametrize(
    "kwargs, remedy",
    [
        ({}, "set --trainer.gradient_clip_val and --trainer.gradient_clip_algorithm"),
        (ADVERSARIAL, "set gradient_clip_val"),
    ],
    ids=["trainer_steps", "discriminator"],
)
def test_a_gradient_clip_algorithm_without_a_clip_value_is_refused_not_ignored(kwargs: dict, remedy: str) -> None:
    # Nothing read it: without a discriminator the Trainer clips (by its own algorithm), with one nothing is clipped.
    message = rf"gradient_clip_algorithm='value' has no effect without gradient_clip_val .*{remedy}.*, or leave"
    with pytest.raises(ValueError, match=rf"{message} gradient_clip_algorithm at its default 'norm'"):
        quantized(**kwargs, gradient_clip_algorithm="value")


@pytest.mark.parametrize("adversarial, option", [(True, "--model.init_args"), (False, "--trainer")])
def test_a_non_finite_loss_names_the_gradient_clipping_the_model_takes(
    adversarial: bool, option: str, tmp_path: Path
) -> None:
    from ae_lightning.training.fault_tolerance import NonFiniteLossError, non_finite_guard

    model = KLAutoencoder(**TINY, **(ADVERSARIAL if adversarial else {}), input_shape=(1, 16, 16))
    with torch.no_grad():
        model.decoder.last_layer.bias.fill_(float("nan"))  # non-finite reconstructions and loss
    x, labels = torch.rand(4, 1, 16, 16), torch.zeros(4, dtype=torch.long)
    loader = TensorBatchLoader(x, labels, torch.arange(4), batch_size=4, shuffle=False, seed=0)
    trainer = make_trainer(tmp_path, limit_train_batches=1, limit_val_batches=0, callbacks=[non_finite_guard()])
    with pytest.raises(NonFiniteLossError, match=rf"clip gradients \({option}.gradient_clip_val\)"):
        trainer.fit(model, train_dataloaders=loader)


def test_a_resumed_vqvae_run_ends_with_the_codebook_of_an_uninterrupted_one(data_dir: Path, tmp_path: Path) -> None:
    # The EMA codebook (embed, embed_avg, cluster_size, initted) is in buffers, k-means initialization and dead-code
    # replacement (hundreds of codes at every step of this run) draw from the global generator: all must resume.
    settings = ["--checkpoint.every_n_train_steps", "4", "--checkpoint.monitor", "null", "--checkpoint.save_top_k",
                "-1", "--checkpoint.filename", "{step}", "--trainer.val_check_interval", "6",
                "--trainer.limit_val_batches", "2", "--images.every_n_epochs", "0"]  # fmt: skip
    run_cli("fit", *tiny_args("vqvae", data_dir, tmp_path / "reference", *settings))
    step_8 = next((tmp_path / "reference").rglob("step=8.ckpt"))
    run_cli("fit", *tiny_args("vqvae", data_dir, tmp_path / "resumed", *settings, "--ckpt_path", str(step_8)))
    expected, resumed = last_checkpoint(tmp_path / "reference"), last_checkpoint(tmp_path / "resumed")
    assert resumed["global_step"] == expected["global_step"] == 28
    assert any(name.endswith("_codebook.cluster_size") for name in expected["state_dict"])
    differing = [name for name, value in expected["state_dict"].items()
                 if not torch.equal(resumed["state_dict"][name], value)]  # fmt: skip
    assert not differing, f"{differing} differ after the resume"


def test_ema_weights_are_validated_and_saved(data_dir: Path, tmp_path: Path) -> None:
    model = quantized(**ADVERSARIAL)
    seen = {}

    class Watch(Callback):
        def on_validation_epoch_start(self, trainer, pl_module) -> None:
            seen["validated"] = pl_module.decoder.last_layer.weight.detach().clone()

    trainer = make_trainer(
        tmp_path, limit_train_batches=4, callbacks=[EMAWeightAveraging(decay=0.5), Watch()], enable_checkpointing=True
    )
    trainer.fit(model, datamodule=tiny_data(data_dir))
    (path,) = (tmp_path / "checkpoints").glob("*.ckpt")  # saved by ModelCheckpoint during training
    saved = torch.load(path, weights_only=False)
    name = "decoder.3.weight"  # the last layer of the default decoder with one downsampling step
    assert model.decoder.last_layer.weight is model.get_parameter(name)
    averaged, current = saved["state_dict"][name], saved["current_model_state"][name]
    assert not torch.equal(averaged, current)  # the average is not the last step's weights
    torch.testing.assert_close(averaged, seen["validated"])  # the validated weights were the average
    torch.testing.assert_close(model.get_parameter(name).detach(), averaged)  # and are the model's after fit
    loaded = QuantizedAutoencoder.load_from_checkpoint(path)
    torch.testing.assert_close(loaded.get_parameter(name).detach(), averaged)


def test_kl_autoencoder_encodes_the_mean_and_weighs_the_kl_per_pixel_value() -> None:
    torch.manual_seed(0)
    model = KLAutoencoder(**TINY, kl_weight=0.5).eval()
    x = images()
    h = model.encoder(x)
    torch.testing.assert_close(model.encode(x), h[:, :4])
    terms = model.loss_terms(x, None, None)
    torch.testing.assert_close(terms["loss"], terms["recon"] + 0.5 * terms["kl"] / (28 * 28))
    assert terms["kl"] > 0
    # RGB: the pixel loss averages C * H * W values, and so does the KL's weight (latent diffusion's ratio)
    rgb = KLAutoencoder(**TINY, kl_weight=0.5, input_shape=(3, 16, 16)).eval()
    terms = rgb.loss_terms(torch.rand(2, 3, 16, 16), None, None)
    torch.testing.assert_close(terms["loss"], terms["recon"] + 0.5 * terms["kl"] / (3 * 16 * 16))
    checkpoint = {"state_dict": rgb.state_dict()}
    rgb.on_save_checkpoint(checkpoint)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        rgb.on_load_checkpoint(checkpoint)
    del checkpoint["ae_lightning_kl_per"]  # a checkpoint of an earlier release
    with pytest.warns(UserWarning, match=r"KL divided by H \* W .* set kl_weight to 3 times its value \(1.5\)"):
        rgb.on_load_checkpoint(checkpoint)


def test_lpips_random_weights_and_offline_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    distance = LPIPSDistance(pretrained=False)
    x = images(2)
    assert torch.allclose(distance(x, x), torch.zeros(2), atol=1e-6) and (distance(x, 1 - x).abs() > 1e-4).all()
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    path = trunk_weights_path("alex")
    assert path == tmp_path / "hub" / "checkpoints" / "alexnet-owt-7be5be79.pth"

    def offline(*args, **kwargs):
        raise URLError("no network")

    monkeypatch.setattr(lpips.pretrained_networks.tv, "alexnet", offline)  # where the lpips package downloads it
    with pytest.raises(FileNotFoundError, match=rf"alexnet-owt-7be5be79.pth.*put it at {path}"):
        LPIPSDistance("alex", pretrained=True)


def test_lpips_without_pretrained_weights_is_still_a_distance() -> None:
    # A random trunk, but the calibrated (non-negative) linear layers: descent on it brings images together.
    g = torch.Generator().manual_seed(1)
    for seed in range(3):
        torch.manual_seed(seed)
        distance = LPIPSDistance(pretrained=False)
        x, y = torch.rand(2, 4, 3, 16, 16, generator=g)
        assert (distance(x, y) > 0).all() and torch.equal(distance(x, x), torch.zeros(4))


def test_the_first_stage_test_metrics_are_the_same_under_autocast() -> None:
    # MS-SSIM ran its convolutions in bfloat16 under bf16-mixed: 0.063 for the same reconstructions' 0.038 in 32
    model = KLAutoencoder(**{**TINY, "input_shape": (3, 16, 16)}, perceptual_weight=1.0, perceptual_pretrained=False)
    x = torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    reconstruction = (x + 0.1 * torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(1))).clamp(0, 1)
    plain = model.test_metrics(x, reconstruction=reconstruction)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = model.test_metrics(x, reconstruction=reconstruction)
    assert set(plain) == {"ms_ssim", "lpips"}
    for name, value in plain.items():
        assert mixed[name].dtype == torch.float32 and mixed[name].item() == pytest.approx(value.item(), rel=1e-6), name


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"disc_start": 100}, "disc_start=100 has no effect with adversarial_weight=0"),
        ({"discriminator_layers": 2}, "discriminator_layers=2 has no effect with adversarial_weight=0"),
        ({"adversarial_loss": "non_saturating"}, "adversarial_loss='non_saturating' has no effect with adversarial_"),
        ({"perceptual_network": "vgg"}, "perceptual_network='vgg' has no effect with perceptual_weight=0"),
    ],
)
def test_a_discriminator_or_lpips_setting_without_its_weight_is_refused_not_ignored(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        quantized(**kwargs)
    assert quantized(**{**ADVERSARIAL, **kwargs}).discriminator  # read with both weights above 0


def test_the_perceptual_recipe_trains_and_tests_in_bf16_true(data_dir: Path, tmp_path: Path) -> None:
    # README: bf16-true is a supported precision; LPIPS's weights are then bfloat16 and must take its inputs.
    model = quantized(**ADVERSARIAL)
    trainer = make_trainer(tmp_path, precision="bf16-true", limit_train_batches=1, limit_test_batches=1)
    trainer.fit(model, datamodule=tiny_data(data_dir))
    assert torch.isfinite(trainer.callback_metrics["train/perceptual"])
    (results,) = trainer.test(model, datamodule=tiny_data(data_dir), verbose=False)
    assert math.isfinite(results["test/lpips"]) and results["test/lpips"] > 0


@pytest.mark.parametrize("channels", [2, 4])
def test_a_perceptual_loss_on_images_lpips_cannot_take_is_refused_when_built(channels: int) -> None:
    with pytest.raises(ValueError, match=rf"perceptual_weight=1.0 needs gray or RGB .* have {channels} channels"):
        quantized(perceptual_weight=1.0, perceptual_pretrained=False, input_shape=(channels, 16, 16))
    assert quantized(input_shape=(channels, 16, 16)).encode(torch.rand(1, channels, 16, 16)).shape == (1, 4, 8, 8)


def test_a_corrupt_lpips_trunk_file_is_named_as_unreadable_not_missing(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    path = trunk_weights_path("alex")
    path.parent.mkdir(parents=True)
    path.write_bytes(b"PK\x03\x04 an interrupted copy")
    with pytest.raises(FileNotFoundError, match=rf"{path} exists but cannot be read .* replace it with https://"):
        LPIPSDistance("alex", pretrained=True)


@pytest.mark.parametrize(
    "content", [b"<html><body>404 Not Found</body></html>\n", b""], ids=["an HTML page", "an empty file"]
)
def test_an_lpips_trunk_file_that_is_no_checkpoint_is_named_as_corrupt(
    content: bytes, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # What a proxy or an interrupted copy leaves: torch.load raised UnpicklingError or EOFError, naming no file or fix.
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    path = trunk_weights_path("alex")
    path.parent.mkdir(parents=True)
    path.write_bytes(content)
    url = "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth"
    with pytest.raises(
        FileNotFoundError, match=rf"{path} exists but cannot be read \(a corrupt file, .*{url}.*put it at"
    ):
        LPIPSDistance("alex", pretrained=True)


def test_the_command_shows_the_offline_lpips_message(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from conftest import write_image_folder
    from tiny_runs import ROOT, build_cli

    from ae_lightning.cli import ConfigError

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    monkeypatch.setattr(lpips.pretrained_networks.tv, "alexnet", offline_alexnet)
    photos = write_image_folder(tmp_path / "photos", per_class=4, size=16)
    config = str(ROOT / "configs" / "photos" / "kl_f8.yaml")
    args = ["--config", config, "--data.init_args.data_dir", str(photos), "--model.init_args.hidden_dims", "[8,8]"]
    with pytest.raises(ConfigError, match=rf"KLAutoencoder: LPIPS \(alex\) .*put it at {trunk_weights_path('alex')}"):
        build_cli(*args, "--trainer.default_root_dir", str(tmp_path / "run"))


def test_a_checkpoint_with_pretrained_lpips_loads_offline(
    monkeypatch: pytest.MonkeyPatch, data_dir: Path, tmp_path: Path
) -> None:
    # Loading once downloaded the LPIPS trunk the checkpoint holds: no tokenizer, prior or codec without network.
    from ae_lightning import CodePrior

    model = quantized(hidden_dims=[8, 8], perceptual_weight=1.0, perceptual_pretrained=False)
    trainer = make_trainer(tmp_path, limit_train_batches=1, limit_val_batches=0)
    trainer.fit(model, datamodule=tiny_data(data_dir))
    trainer.save_checkpoint(tmp_path / "tokenizer.ckpt")
    checkpoint = torch.load(tmp_path / "tokenizer.ckpt", weights_only=False)
    checkpoint["hyper_parameters"]["perceptual_pretrained"] = True  # as a machine with the weights wrote it
    torch.save(checkpoint, tmp_path / "tokenizer.ckpt")

    def offline(pretrained: bool = False) -> nn.Module:  # the untrained network, but no download
        if pretrained:
            raise URLError("no network")
        return alexnet()

    alexnet = torchvision.models.alexnet
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    monkeypatch.setattr(lpips.pretrained_networks.tv, "alexnet", offline)
    loaded = QuantizedAutoencoder.load_from_checkpoint(tmp_path / "tokenizer.ckpt")
    assert loaded.hparams.perceptual_pretrained
    for name, value in model.perceptual.state_dict().items():
        assert torch.equal(loaded.perceptual.state_dict()[name], value), name
    CodePrior(str(tmp_path / "tokenizer.ckpt"), embed_dim=16, num_layers=1, num_heads=2)
    with pytest.raises(FileNotFoundError, match="alexnet-owt-7be5be79.pth"):  # a new model still needs the weights
        QuantizedAutoencoder(**{**TINY, "perceptual_weight": 1.0, "perceptual_pretrained": True})


@pytest.mark.parametrize("subcommand", ["test", "predict"])
def test_the_command_evaluates_a_checkpoint_offline_with_its_lpips_weights(
    subcommand: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from conftest import write_image_folder
    from tiny_runs import ROOT, run_cli

    photos = write_image_folder(tmp_path / "photos", per_class=4, size=16)
    args = ["--config", str(ROOT / "configs" / "photos" / "kl_f8.yaml"), "--data.init_args.data_dir", str(photos),
            "--data.init_args.image_size", "16", "--data.init_args.batch_size", "4", "--model.init_args.hidden_dims",
            "[8,8]", "--model.init_args.residual_blocks", "1", "--model.init_args.discriminator_layers", "1",
            "--model.init_args.discriminator_channels", "4", "--trainer.enable_progress_bar", "false"]  # fmt: skip
    trained = run_cli("fit", *args, "--model.init_args.perceptual_pretrained", "false", "--trainer.max_steps", "1",
                      "--trainer.limit_val_batches", "0", "--trainer.default_root_dir", str(tmp_path))  # fmt: skip
    (checkpoint,) = tmp_path.rglob("last.ckpt")

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    monkeypatch.setattr(lpips.pretrained_networks.tv, "alexnet", offline_alexnet)
    cli = run_cli(subcommand, *args, "--ckpt_path", str(checkpoint), "--trainer.limit_test_batches", "1",
                  "--trainer.limit_predict_batches", "1", "--trainer.default_root_dir", str(tmp_path))  # fmt: skip
    assert cli.model.hparams.perceptual_pretrained  # the config's setting, served by the checkpoint's weights
    for name, value in trained.model.perceptual.state_dict().items():
        assert torch.equal(cli.model.perceptual.state_dict()[name], value), name


def test_the_command_resumes_a_run_offline_with_its_lpips_weights(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # A SLURM requeue on a node without network: resuming downloaded the LPIPS trunk that the checkpoint holds.
    from conftest import write_image_folder
    from tiny_runs import ROOT, run_cli

    from ae_lightning.cli import ConfigError

    photos = write_image_folder(tmp_path / "photos", per_class=4, size=16)
    args = ["--config", str(ROOT / "configs" / "photos" / "kl_f8.yaml"), "--data.init_args.data_dir", str(photos),
            "--data.init_args.image_size", "16", "--data.init_args.batch_size", "4", "--model.init_args.hidden_dims",
            "[8,8]", "--model.init_args.residual_blocks", "1", "--model.init_args.discriminator_layers", "1",
            "--model.init_args.discriminator_channels", "4", "--trainer.enable_progress_bar", "false",
            "--trainer.limit_val_batches", "0", "--trainer.default_root_dir", str(tmp_path / "run")]  # fmt: skip
    trained = run_cli("fit", *args, "--model.init_args.perceptual_pretrained", "false", "--trainer.max_steps", "1")
    (checkpoint,) = (tmp_path / "run").rglob("last.ckpt")

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    monkeypatch.setattr(lpips.pretrained_networks.tv, "alexnet", offline_alexnet)
    cli = run_cli("fit", *args, "--ckpt_path", str(checkpoint), "--trainer.max_steps", "2")
    assert cli.trainer.global_step == 2 and cli.model.hparams.perceptual_pretrained
    for name, value in trained.model.perceptual.state_dict().items():  # up to the EMA's rounding
        torch.testing.assert_close(cli.model.perceptual.state_dict()[name], value, msg=name)
    # A checkpoint without them is refused, not resumed with a random trunk.
    state = torch.load(checkpoint, weights_only=False)
    state["state_dict"] = {name: value for name, value in state["state_dict"].items() if "perceptual" not in name}
    torch.save(state, tmp_path / "without_lpips.ckpt")
    with pytest.raises(ConfigError, match=r"without_lpips.ckpt holds weights that this run's model cannot take "
                                          r"\(perceptual\.lpips\."):  # fmt: skip
        run_cli("fit", *args, "--ckpt_path", str(tmp_path / "without_lpips.ckpt"), "--trainer.max_steps", "3")


# --- evaluation -----------------------------------------------------------------------------------------------------
def test_evaluation_reports_codebook_usage_rate_and_ms_ssim() -> None:
    model = quantized(hidden_dims=[8, 8])
    model.loss_terms(images(), None, None)  # k-means initialization
    model.eval()
    x = images(8)
    labels = torch.zeros(8, dtype=torch.long)
    loader = TensorBatchLoader(x, labels, torch.arange(8), batch_size=3, shuffle=False, seed=0)
    data = SimpleNamespace(input_shape=(1, 28, 28))
    assert all(evaluation.metric_applies(model, data, name) for name in evaluation.CODE_METRICS)
    scores = evaluation.code_scores(model, loader)
    used = len(model.encode_indices(x).unique())
    assert scores["codes_used"] == pytest.approx(used / 16) and scores["dead_codes"] == 16 - used
    assert scores["bpp"] == pytest.approx(7 * 7 * 4 / 784)  # 49 codes of log2(16) bits per 28x28 image
    (ms_ssim,) = evaluation.perceptual_scores(model, loader, ["ms_ssim"]).values()
    assert 0 < ms_ssim < 1
    terms = model.test_metrics(x)
    assert set(terms) == {"ms_ssim", "bits_per_pixel"} and 0 < terms["ms_ssim"] < 1


def test_the_rate_is_reported_exactly_under_bf16_true() -> None:
    # test/bits_per_pixel is exact arithmetic; it was made a bfloat16 tensor of the images' dtype (1.7656 for 1.7692).
    model = quantized(quantizer="fsq", fsq_levels=[5, 3, 3, 3]).eval().to(torch.bfloat16)  # 135 codes
    rate = model.test_metrics(images().to(torch.bfloat16))["bits_per_pixel"]
    assert rate.item() == pytest.approx(14 * 14 * math.log2(135) / (28 * 28), rel=1e-6)


def test_the_rate_is_logged_exactly_by_a_bf16_true_test(tmp_path: Path) -> None:
    # bf16-true runs test_step with bfloat16 as torch's default dtype, which rounded the logged rate (1.7656 for 1.7692)
    model, x, labels = quantized(quantizer="fsq", fsq_levels=[5, 3, 3, 3]), images(4), torch.zeros(4, dtype=torch.long)
    loader = TensorBatchLoader(x, labels, torch.arange(4), batch_size=2, shuffle=False, seed=0)
    (results,) = make_trainer(tmp_path, precision="bf16-true").test(model, loader, verbose=False)
    assert results["test/bits_per_pixel"] == pytest.approx(14 * 14 * math.log2(135) / (28 * 28), rel=1e-6)


def test_reconstruction_fid_grows_with_the_reconstruction_error_and_names_missing_inception_weights(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    class Blur(nn.Module):  # reconstructs each image as itself plus a chosen amount of noise
        def __init__(self, noise: float) -> None:
            super().__init__()
            self.noise, self.weight = noise, nn.Parameter(torch.zeros(1))

        device = property(lambda self: self.weight.device)

        def forward(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
            return (x + self.noise * torch.randn_like(x)).clamp(0, 1)

    class Pooled(nn.Module):  # a feature network of the right interface, small enough for 49 features
        num_features = 49

        def features(self, x: torch.Tensor) -> torch.Tensor:
            return nn.functional.adaptive_avg_pool2d(x, 7).flatten(1)

    x = images(64)
    loader = TensorBatchLoader(x, torch.zeros(64, dtype=torch.long), torch.arange(64), batch_size=16, shuffle=False,
                               seed=0)  # fmt: skip
    torch.manual_seed(0)
    distances = [evaluation.reconstruction_frechet_distance(Blur(noise), Pooled(), loader) for noise in (0, 0.1, 0.5)]
    assert distances[0] == pytest.approx(0, abs=1e-6) and 0 < distances[1] < distances[2]
    features = InceptionFeatures(pretrained=False).features(x[:2])  # the real network and resizing, random weights
    assert features.shape == (2, 2048) and torch.isfinite(features).all()
    data = SimpleNamespace(input_shape=(1, 28, 28))
    with pytest.raises(ValueError, match="rfid_classifier needs the feature classifier"):
        evaluation.first_stage_scores(quantized(), data, ["rfid_classifier"])
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    path = inception_weights_path()
    assert path == tmp_path / "hub" / "checkpoints" / "inception_v3_google-0cc3c7bd.pth"

    def offline(*args, **kwargs):
        raise URLError("no network")

    monkeypatch.setattr(torchvision.models, "inception_v3", offline)
    with pytest.raises(FileNotFoundError, match=rf"inception_v3_google-0cc3c7bd.pth.*put it at {path}"):
        InceptionFeatures()


# --- the configs that need photos (and pretrained LPIPS weights) ----------------------------------------------------
@pytest.mark.parametrize("config", ["vqgan_f8", "kl_f8"])
def test_photo_configs_fit_on_a_tiny_folder_with_random_lpips(config: str, tmp_path: Path) -> None:
    from conftest import write_image_folder
    from tiny_runs import ROOT, run_cli

    photos = write_image_folder(tmp_path / "photos", per_class=4, size=16)
    cli = run_cli(
        "fit",
        "--config",
        str(ROOT / "configs" / "photos" / f"{config}.yaml"),
        "--data.init_args.data_dir",
        str(photos),
        "--data.init_args.image_size",
        "16",
        "--data.init_args.batch_size",
        "4",
        "--model.init_args.hidden_dims",
        "[8,8,8]",
        "--model.init_args.perceptual_pretrained",
        "false",
        "--model.init_args.disc_start",
        "0",
        "--model.init_args.discriminator_channels",
        "4",
        "--model.init_args.discriminator_layers",
        "1",
        "--trainer.default_root_dir",
        str(tmp_path / "run"),
        "--trainer.fast_dev_run",
        "true",
        "--trainer.enable_progress_bar",
        "false",
    )
    logged = cli.trainer.callback_metrics
    assert (
        cli.trainer.global_step == 1 and torch.isfinite(logged["train/g_loss"]) and torch.isfinite(logged["val/loss"])
    )
    assert any(type(callback) is EMAOnTrainingDevice for callback in cli.trainer.callbacks)  # the config's class


@pytest.mark.parametrize("quantizer", ["vq", "fsq"])
def test_weight_averaging_that_cannot_average_the_codebook_flag_is_refused(
    quantizer: str, data_dir: Path, tmp_path: Path
) -> None:
    # Lightning's WeightAveraging (SWA) subtracts every buffer: the EMA codebook's bool initted failed at the second
    # update with "Subtraction ... with two bool tensors is not supported"; FSQ has no such buffer and trains.
    model = quantized(quantizer=quantizer)
    trainer = make_trainer(tmp_path, limit_train_batches=2, limit_val_batches=0, callbacks=[WeightAveraging()])
    if quantizer == "fsq":
        trainer.fit(model, datamodule=tiny_data(data_dir))
        assert trainer.global_step == 2
        return
    with pytest.raises(ValueError, match=r"WeightAveraging cannot average quantizer 'vq'.*use EMAWeightAveraging"):
        trainer.fit(model, datamodule=tiny_data(data_dir))
