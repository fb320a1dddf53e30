"""The prior over codes and the learned codec: training on frozen codes, sampling, bits, the entropy-coded file.

Tiny tokenizers trained for two steps on the tiny IDX data of ``conftest.py``, CPU only.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import torch
from test_quantized import images, quantized
from test_variants import make_trainer, tiny_data
from tiny_runs import run_cli, tiny_args

from ae_lightning import CodePrior, codec
from ae_lightning.codec import CompressedFileError, compress, decompress


# --- the prior over codes -------------------------------------------------------------------------------------------
@pytest.fixture
def tokenizer_path(data_dir: Path, tmp_path: Path) -> Path:
    model = quantized(hidden_dims=[8, 8])  # 7x7 codes
    trainer = make_trainer(tmp_path / "tokenizer", limit_val_batches=0)
    trainer.fit(model, datamodule=tiny_data(data_dir))
    trainer.save_checkpoint(tmp_path / "tokenizer.ckpt")
    return tmp_path / "tokenizer.ckpt"


def tiny_prior(path: Path) -> CodePrior:
    torch.manual_seed(0)
    return CodePrior(str(path), embed_dim=16, num_layers=1, num_heads=2)


def test_prior_trains_on_frozen_codes_samples_and_reports_bits(
    tokenizer_path: Path, data_dir: Path, tmp_path: Path
) -> None:
    prior = tiny_prior(tokenizer_path)
    tokenizer_before = {name: value.clone() for name, value in prior.tokenizer.state_dict().items()}
    trainer = make_trainer(tmp_path, limit_test_batches=1)
    trainer.fit(prior, datamodule=tiny_data(data_dir))
    for name, value in prior.tokenizer.state_dict().items():
        assert torch.equal(value, tokenizer_before[name]), f"the frozen tokenizer's {name} changed"
    trainer.test(prior, datamodule=tiny_data(data_dir), verbose=False)
    bits = trainer.callback_metrics["test/bits_per_image"].item()
    assert 0 < bits < 2 * 49 * math.log2(16)  # well under twice a uniform code of 49 tokens of 4 bits
    assert trainer.callback_metrics["test/bits_per_pixel"].item() == pytest.approx(bits / 784, rel=1e-5)
    prior.eval()
    assert prior.sample(2).shape == (2, 1, 28, 28)
    with pytest.raises(ValueError, match="temperature must be > 0, got 0"):
        prior.sample(1, temperature=0)
    x = images(3)
    tokens = prior.encode(x)
    assert tokens.shape == (3, 49)
    # the chain rule: the sequence's probability is the product of the next-token probabilities
    chained = sum(
        prior.next_token_probabilities(tokens, i).gather(1, tokens[:, i : i + 1]).log().squeeze(1) for i in range(49)
    )
    torch.testing.assert_close(-chained.float(), prior.token_nll(tokens), rtol=1e-4, atol=1e-3)


def test_prior_refuses_another_tokenizers_codes(tokenizer_path: Path, data_dir: Path, tmp_path: Path) -> None:
    prior = tiny_prior(tokenizer_path)
    trainer = make_trainer(tmp_path / "prior", limit_val_batches=0)
    trainer.fit(prior, datamodule=tiny_data(data_dir))
    trainer.save_checkpoint(tmp_path / "prior.ckpt")
    other = quantized(hidden_dims=[8, 8], ema_decay=0.5)  # another tokenizer of the same shapes
    make_trainer(tmp_path / "other", limit_val_batches=0).fit(other, datamodule=tiny_data(data_dir))
    with pytest.raises(ValueError, match=rf"models the codes of tokenizer {prior.fingerprint} .* is tokenizer"):
        prior.check_tokenizer(other)
    torch.save(torch.load(tokenizer_path, weights_only=False) | {"state_dict": other.state_dict()}, tokenizer_path)
    with pytest.raises(ValueError, match=rf"trained on the codes of tokenizer {prior.fingerprint}, but .* now holds"):
        CodePrior.load_from_checkpoint(tmp_path / "prior.ckpt", tokenizer=str(tokenizer_path))  # read when named


def test_prior_names_a_tokenizer_file_that_is_no_checkpoint(tokenizer_path: Path, tmp_path: Path) -> None:
    # It was torch's "A load persistent id instruction was encountered ...", naming no file.
    (tmp_path / "photo.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(64))
    (tmp_path / "cut.ckpt").write_bytes(tokenizer_path.read_bytes()[:1000])
    for name in ("photo.png", "cut.ckpt"):
        with pytest.raises(ValueError, match=rf"tokenizer \S*{name} is not a readable checkpoint \(truncated or"):
            tiny_prior(tmp_path / name)


def test_prior_config_trains_on_a_vqvae_run_through_the_command(data_dir: Path, tmp_path: Path) -> None:
    # The command builds the prior inside LightningCLI's instantiation, which once gave the tokenizer loaded there the
    # prior's hyperparameters (network: mlp) and refused it.
    short = ["--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2", "--trainer.limit_val_batches", "1"]
    run_cli("fit", *tiny_args("vqvae", data_dir, tmp_path / "vqvae", *short))
    tokenizer = tmp_path / "vqvae" / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt"  # as the config says
    tiny_prior_args = ["--model.init_args.embed_dim", "16", "--model.init_args.num_layers", "1"]
    tiny_prior_args += ["--model.init_args.num_heads", "2", "--model.init_args.tokenizer", str(tokenizer)]
    cli = run_cli("fit", *tiny_args("second_stage/prior", data_dir, tmp_path / "prior", *short, *tiny_prior_args))
    stored = torch.load(tokenizer, map_location="cpu", weights_only=False)["hyper_parameters"]
    assert cli.model.tokenizer.hparams["network"] == stored["network"] == "conv"
    assert list(cli.model.tokenizer.hparams["hidden_dims"]) == list(stored["hidden_dims"]) == [32, 16]
    assert cli.trainer.global_step == 2
    prior_checkpoint = tmp_path / "prior" / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt"
    assert CodePrior.load_from_checkpoint(prior_checkpoint).fingerprint == cli.model.fingerprint


def test_the_priors_token_codes_get_no_views_of_continuous_codes(tokenizer_path: Path) -> None:
    from ae_lightning.evaluation import visualization

    prior = tiny_prior(tokenizer_path)
    assert visualization.applicable_views(prior) == ["reconstructions", "samples"]  # the image logger's default
    with pytest.raises(ValueError, match=r"the views interpolations draw continuous codes, but CodePrior's codes are"):
        visualization.check_views(prior, ["samples", "interpolations"])


def test_post_hoc_samplers_refuse_the_priors_token_codes(tokenizer_path: Path) -> None:
    # evaluate.py --samplers fitted a Gaussian mixture on token indices, then failed in the quantizer (an IndexError).
    from ae_lightning.evaluation.samplers import GaussianMixtureSampler, PosthocGenerator, frechet_distances

    prior = tiny_prior(tokenizer_path)
    message = "post-hoc samplers fit a density on continuous codes, but CodePrior's codes are token indices"
    with pytest.raises(ValueError, match=message):
        frechet_distances(prior, prior.encode(torch.rand(4, 1, 28, 28)).float(), None, None, num_samples=2)
    with pytest.raises(ValueError, match=message):
        PosthocGenerator(prior, GaussianMixtureSampler(2))


def test_prior_samples_at_a_low_temperature_the_most_probable_tokens(tokenizer_path: Path) -> None:
    # p ** (1 / T) underflowed to zeros at T = 0.01, and torch.multinomial refused the distribution.
    prior = tiny_prior(tokenizer_path).eval()
    tokens = prior.sample_tokens(2, temperature=1e-3)
    for position in range(prior.num_tokens):  # the greedy limit: each token the most probable given those before
        assert torch.equal(tokens[:, position], prior.next_token_probabilities(tokens, position).argmax(-1))


def test_prior_samples_an_empty_batch_as_other_models_do(tokenizer_path: Path) -> None:
    # sample(0) failed in the quantizer libraries' reshape of an empty batch; the VAE's returns [0, C, H, W]
    prior = tiny_prior(tokenizer_path).eval()
    assert prior.sample(0).shape == (0, *prior.sample(1).shape[1:])


def test_prior_names_tokens_it_cannot_take(tokenizer_path: Path) -> None:
    # decode's 48 tokens died in a reshape ("shape '[1, 7, 7, 1]' is invalid"), token_nll's float ones in the
    # embedding; token K, the start token, was taken by logits as a code without a word.
    prior = tiny_prior(tokenizer_path).eval()
    tokens = prior.sample_tokens(2)
    expected = r"takes int64 tokens \[B, 49\] in \[0, 15\], got "
    for bad, found in (
        (tokens[:, :48], r"a torch.int64 tensor of shape \[2, 48\]"),
        (tokens[0], r"a torch.int64 tensor of shape \[49\]"),
        (tokens.float(), r"a torch.float32 tensor of shape \[2, 49\]"),
        (tokens.clone().fill_(16), "values from 16 to 16"),
        (tokens.clone().fill_(-1), "values from -1 to -1"),
    ):
        with pytest.raises(ValueError, match=r"CodePrior.decode\(tokens\) " + expected + found):
            prior.decode(bad)
        with pytest.raises(ValueError, match=r"CodePrior.token_nll\(tokens\) " + expected + found):
            prior.token_nll(bad)
        if "values" not in found:  # logits reads no values (the training step calls it): dtype and shape only
            with pytest.raises(ValueError, match=r"CodePrior.logits\(tokens\) " + expected + found):
                prior.logits(bad)
    assert prior.decode(tokens).shape == (2, 1, 28, 28) and prior.token_nll(tokens).shape == (2,)


@pytest.mark.parametrize("precision", ["bf16-true", "64-true"])
def test_a_prior_trained_in_bfloat16_or_float64_saves_resumes_loads_and_codes(
    precision: str, tokenizer_path: Path, data_dir: Path, tmp_path: Path
) -> None:
    # The fingerprints hashed each tensor through numpy: under bf16-true saving the checkpoint died ("Got unsupported
    # ScalarType BFloat16"), and compress too; a 64-true checkpoint's float64 tokenizer was taken for another one.
    prior = tiny_prior(tokenizer_path)
    trainer = make_trainer(tmp_path / "prior", limit_train_batches=1, limit_val_batches=0, precision=precision)
    trainer.fit(prior, datamodule=tiny_data(data_dir))
    trainer.save_checkpoint(tmp_path / "prior.ckpt")
    resumed = make_trainer(tmp_path / "resumed", limit_train_batches=1, limit_val_batches=0, precision=precision)
    resumed.fit(tiny_prior(tokenizer_path), datamodule=tiny_data(data_dir), ckpt_path=tmp_path / "prior.ckpt")
    loaded = CodePrior.load_from_checkpoint(tmp_path / "prior.ckpt").eval()
    assert loaded.dtype == torch.float32 and loaded.fingerprint == prior.fingerprint  # the same values
    image = torch.rand(1, 30, 30, generator=torch.Generator().manual_seed(10))
    for model in (prior.eval(), loaded):
        assert decompress(model, compress(model, image)).shape == (1, 30, 30)


# --- the codec ------------------------------------------------------------------------------------------------------
@pytest.fixture
def trained_prior(tokenizer_path: Path, data_dir: Path, tmp_path: Path) -> CodePrior:
    prior = tiny_prior(tokenizer_path)
    trainer = make_trainer(tmp_path / "prior", limit_val_batches=0)
    trainer.fit(prior, datamodule=tiny_data(data_dir))
    trainer.save_checkpoint(tmp_path / "prior.ckpt")
    return prior.eval()


def test_codec_round_trips_the_codes_bit_exactly(trained_prior: CodePrior) -> None:
    image = torch.rand(1, 40, 61, generator=torch.Generator().manual_seed(3))  # 2 x 3 tiles of 28x28, padded
    data = compress(trained_prior, image)
    decoded = decompress(trained_prior, data)
    assert decoded.shape == (1, 40, 61)
    # the decoder's image is the tokenizer's reconstruction of the tiles: the codes came back exactly
    tiles = torch.nn.functional.pad(image[None], (0, 84 - 61, 0, 56 - 40), mode="replicate")[0]
    expected = torch.cat(
        [
            torch.cat([trained_prior(tiles[None, :, r : r + 28, c : c + 28])[0] for c in (0, 28, 56)], 2)
            for r in (0, 28)
        ],
        1,
    )
    torch.testing.assert_close(decoded, expected[:, :40, :61])
    # the file's size is the codes' information content under the prior, plus the header and a few words
    tile_batch = tiles.unfold(1, 28, 28).unfold(2, 28, 28).permute(1, 2, 0, 3, 4).reshape(6, 1, 28, 28)
    bits = trained_prior.bits_per_image(tile_batch)
    payload_bits = 8 * (len(data) - codec._HEADER.size)
    assert 0 <= payload_bits - bits.sum().item() < 96  # the range coder's last words and rounded probabilities


def test_codec_refuses_truncated_foreign_and_other_models_files(
    trained_prior: CodePrior, tokenizer_path: Path, data_dir: Path, tmp_path: Path
) -> None:
    data = compress(trained_prior, torch.rand(1, 28, 28, generator=torch.Generator().manual_seed(4)))
    with pytest.raises(CompressedFileError, match=r"photo.aelc is truncated: its header promises \d+ bytes, it has"):
        decompress(trained_prior, data[:-4], name="photo.aelc")
    with pytest.raises(CompressedFileError, match="not an ae-lightning compressed file"):
        decompress(trained_prior, b"\x89PNG" + data[4:])
    # cut inside the header: its magic is there, so it was called "not an ae-lightning compressed file"
    with pytest.raises(CompressedFileError, match=r"photo.aelc is truncated: it has 30 bytes, less than the 59 of"):
        decompress(trained_prior, data[:30], name="photo.aelc")
    other = tiny_prior(tokenizer_path)  # the same tokenizer, an untrained prior
    with pytest.raises(CompressedFileError, match=rf"written with tokenizer {other.fingerprint} and prior \w+; this"):
        decompress(other.eval(), data)
    corrupted = bytearray(data)
    corrupted[-5] ^= 0xFF
    with pytest.raises(CompressedFileError, match="fail its checksum"):
        decompress(trained_prior, bytes(corrupted))


def test_codec_runs_the_tokenizer_on_groups_of_tiles_not_the_whole_image(
    trained_prior: CodePrior, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The tokenizer encoded and decoded every tile of an image in one batch: memory grew with the photograph.
    image = torch.rand(1, 40, 61, generator=torch.Generator().manual_seed(3))  # 6 tiles
    reference = decompress(trained_prior, compress(trained_prior, image))
    batches = []
    for network in (trained_prior.tokenizer.encoder, trained_prior.tokenizer.decoder):
        network.register_forward_hook(lambda module, inputs, output: batches.append(len(inputs[0])))
    monkeypatch.setattr(codec, "TILES_PER_GROUP", 4)
    data = compress(trained_prior, image)
    decoded = decompress(trained_prior, data)
    assert batches == [4, 2, 4, 2]  # encoder, then decoder: groups of 4 tiles
    torch.testing.assert_close(decoded, reference)  # the same codes, and images


def test_codec_refuses_a_corrupted_header(tokenizer_path: Path) -> None:
    # The header's sizes were unchecked: height 41 decoded to a 41-row image, height 80 crashed in a reshape.
    prior = tiny_prior(tokenizer_path).eval()
    data = compress(prior, torch.rand(1, 40, 61, generator=torch.Generator().manual_seed(5)))
    fields = list(codec._HEADER.unpack_from(data))  # ..., channels, height, width, tiles, words, checksum

    def corrupted(index: int, value: int) -> bytes:
        return codec._HEADER.pack(*fields[:index], value, *fields[index + 1 :]) + data[codec._HEADER.size :]

    for index, value in ((5, 41), (6, 60), (6, 57), (9, fields[9] ^ 1)):  # sizes the tile count allows; the CRC
        with pytest.raises(CompressedFileError, match="the header or the codes decoded from f.aelc fail its checksum"):
            decompress(prior, corrupted(index, value), name="f.aelc")
    for index, value in ((4, 3), (5, 80), (5, 0), (7, 2**31), (7, 5)):  # channels, height, tiles the model denies
        with pytest.raises(CompressedFileError, match=r"f.aelc has a corrupted header: it describes a \d+x\d+x\d+ "):
            decompress(prior, corrupted(index, value), name="f.aelc")
    # huge sizes that agree with each other: decoding read on past the payload's end, keeping the codes of billions
    # of tiles before the checksum; now refused before any code is decoded
    rows, cols = -(-(2**32 - 1) // 28), 27
    huge = codec._HEADER.pack(*fields[:5], 2**32 - 1, 28 * cols, rows * cols, *fields[8:]) + data[codec._HEADER.size :]
    message = rf"f.aelc has a corrupted header: it describes a 1x4294967295x756 image in {rows * cols} tiles, \d+ "
    with mock.patch.object(prior, "next_token_probabilities", side_effect=AssertionError("decoding")):
        with pytest.raises(CompressedFileError, match=message + r"codes, more than its payload of \d+ bytes can hold"):
            decompress(prior, huge, name="f.aelc")
    with pytest.raises(CompressedFileError, match=r"format version 1; this code reads version 2 \(the format changed"):
        decompress(prior, corrupted(1, 1))
    assert decompress(prior, data).shape == (1, 40, 61)


def test_codec_runs_a_prior_left_in_training_mode_in_eval_mode(tokenizer_path: Path) -> None:
    # A prior with dropout left in training mode (as after trainer.fit) once wrote files nothing could decode.
    torch.manual_seed(0)
    prior = CodePrior(str(tokenizer_path), embed_dim=16, num_layers=1, num_heads=2, dropout=0.5).train()
    image = torch.rand(1, 28, 28, generator=torch.Generator().manual_seed(6))
    data = compress(prior, image)
    assert prior.training and not prior.tokenizer.training  # the modes are restored, the frozen tokenizer's too
    torch.testing.assert_close(decompress(prior, data), decompress(prior.eval(), data))
    assert not prior.training
    prior.train()
    decompress(prior, data)
    assert prior.training and prior.transformer.training and not prior.tokenizer.training


def test_compress_command_round_trip(trained_prior: CodePrior, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from PIL import Image
    from test_evaluation import load_script, refused

    script = load_script("compress")
    checkpoint = str(tmp_path / "prior.ckpt")  # written by the fixture
    Image.fromarray((torch.rand(30, 30) * 255).byte().numpy()).save(tmp_path / "in.png")
    script.main(["encode", checkpoint, str(tmp_path / "in.png"), str(tmp_path / "in.aelc"), "--device", "cpu"])
    script.main(["decode", checkpoint, str(tmp_path / "in.aelc"), str(tmp_path / "out.png"), "--device", "cpu"])
    printed = capsys.readouterr().out.splitlines()
    size = (tmp_path / "in.aelc").stat().st_size
    assert printed[0].startswith(f"encoded 30x30 image: {size} bytes, {8 * size / 900:.4f} bits per pixel")
    with Image.open(tmp_path / "out.png") as image:
        assert image.size == (30, 30)
    # existing outputs: refused, untouched, unless --overwrite; a failed write keeps the old file
    Image.fromarray((torch.rand(20, 20) * 255).byte().numpy()).save(tmp_path / "other.png")
    encoded, decoded = (tmp_path / "in.aelc").read_bytes(), (tmp_path / "out.png").read_bytes()
    encode = ["encode", checkpoint, str(tmp_path / "other.png"), str(tmp_path / "in.aelc"), "--device", "cpu"]
    decode = ["decode", checkpoint, str(tmp_path / "in.aelc"), str(tmp_path / "out.png"), "--device", "cpu"]
    for argv in (encode, decode):
        message = f"target {argv[3]} exists; name another file, or pass --overwrite to replace it"
        assert refused(script, argv, capsys) == message
    assert (tmp_path / "in.aelc").read_bytes() == encoded and (tmp_path / "out.png").read_bytes() == decoded
    with mock.patch("os.fsync", side_effect=OSError(28, "No space left on device")), pytest.raises(OSError):
        script.main([*encode, "--overwrite"])
    assert (tmp_path / "in.aelc").read_bytes() == encoded
    script.main([*encode, "--overwrite"])
    script.main([*decode, "--overwrite"])
    assert (tmp_path / "in.aelc").read_bytes() != encoded
    with Image.open(tmp_path / "out.png") as image:
        assert image.size == (20, 20)
    assert not [path.name for path in tmp_path.iterdir() if path.name.endswith(".tmp")]


def test_compress_command_names_each_bad_input(
    trained_prior: CodePrior, tokenizer_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from PIL import Image
    from test_evaluation import load_script, refused

    script = load_script("compress")
    prior, image, missing = tmp_path / "prior.ckpt", tmp_path / "in.png", tmp_path / "missing"
    Image.fromarray((torch.rand(28, 28) * 255).byte().numpy()).save(image)
    (tmp_path / "text.png").write_text("not an image")
    ramp = np.linspace(0, 65535, 28 * 28).reshape(28, 28).astype(np.uint16)
    Image.fromarray(ramp).save(tmp_path / "deep.png")  # Pillow's convert("L") clipped it to a white image
    (tmp_path / "in.aelc").write_bytes(compress(trained_prior, torch.rand(1, 28, 28)))
    expected_prior = "expected a CodePrior checkpoint (trained with configs/second_stage/prior.yaml)"
    cases = {
        ("encode", prior, tmp_path / "deep.png", tmp_path / "x.aelc"):
            f"source {tmp_path / 'deep.png'} is a 16-bit image (PIL mode I;16); image folders hold 8-bit images, and "
            "converting would clip it: convert it to 8 bits per channel first",
        ("encode", prior, tmp_path / "text.png", tmp_path / "x.aelc"):
            f"source {tmp_path / 'text.png'} is not an image PIL can read (cannot identify image file "
            f"{str(tmp_path / 'text.png')!r})",
        ("encode", prior, missing / "in.png", tmp_path / "x.aelc"):
            f"source {missing / 'in.png'} does not exist (or is not a file); expected an image",
        ("encode", prior, image, missing / "x.aelc"):
            f"target {missing / 'x.aelc'}: its folder {missing} does not exist; create it first",
        ("decode", prior, image, tmp_path / "x.png"):
            f"{image} is not an ae-lightning compressed file (no AELC header)",
        ("decode", prior, tmp_path / "in.aelc", tmp_path / "x.aelc"):
            f"target {tmp_path / 'x.aelc'}: expected an image name whose suffix Pillow can write (.png, .bmp, ...)",
        ("encode", prior, image, tmp_path / "x.png"):  # was written, as a .png no viewer could open
            f"target {tmp_path / 'x.png'}: an image name (PNG) for the compressed file; name it .aelc",
        ("decode", prior, tmp_path / "in.aelc", tmp_path / "x.ico"):  # was a 32x32 icon of the 28x28 image
            f"target {tmp_path / 'x.ico'}: Pillow writes ICO files as icons of fixed sizes, not the image at its own "
            "size; expected an image name such as .png, .bmp, .tiff or .webp",
        ("decode", prior, tmp_path / "in.aelc", tmp_path / "x.icns"):  # a 1024x1024 icon
            f"target {tmp_path / 'x.icns'}: Pillow writes ICNS files as icons of fixed sizes, not the image at its "
            "own size; expected an image name such as .png, .bmp, .tiff or .webp",
        ("encode", tokenizer_path, image, tmp_path / "x.aelc"):
            f"prior {tokenizer_path} holds ae_lightning.models.quantized.QuantizedAutoencoder; {expected_prior}",
        ("encode", image, image, tmp_path / "x.aelc"):  # then torch's reason, and what is expected
            f"prior {image} is not a readable checkpoint (truncated or corrupt?): ",
        ("encode", missing / "prior.ckpt", image, tmp_path / "x.aelc"):
            f"prior {missing / 'prior.ckpt'} does not exist (or is not a file); {expected_prior}",
    }  # fmt: skip
    for argv, message in cases.items():
        said = refused(script, [*map(str, argv), "--device", "cpu"], capsys)
        assert said == message or (message.endswith(": ") and said.startswith(message)), argv
    assert not [path for path in tmp_path.iterdir() if path.stem == "x"]


def test_compress_command_never_writes_over_its_source_or_prior(
    trained_prior: CodePrior, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    # encode photo.png photo.png --overwrite replaced the photograph by its lossy compressed file
    from PIL import Image
    from test_evaluation import load_script, refused

    script = load_script("compress")
    prior, image = tmp_path / "prior.ckpt", tmp_path / "in.png"
    Image.fromarray((torch.rand(28, 28) * 255).byte().numpy()).save(image)
    script.main(["encode", str(prior), str(image), str(tmp_path / "in.aelc"), "--device", "cpu"])
    (tmp_path / "link.png").symlink_to(image)
    kept = {path: path.read_bytes() for path in (prior, image, tmp_path / "in.aelc")}
    cases = {
        ("encode", prior, image, image): f"target {image} is the source {image}; name another file to write",
        ("encode", prior, image, tmp_path / "link.png"): f"target {tmp_path / 'link.png'} is the source {image}; ",
        ("encode", prior, image, prior): f"target {prior} is the prior {prior}; name another file to write",
        ("decode", prior, tmp_path / "in.aelc", tmp_path / "in.aelc"): f"target {tmp_path / 'in.aelc'} is the source",
    }
    for argv, message in cases.items():
        assert refused(script, [*map(str, argv), "--device", "cpu", "--overwrite"], capsys).startswith(message), argv
    assert {path: path.read_bytes() for path in kept} == kept


# --- a prior checkpoint holds its tokenizer; corrupted payloads; the command's up-front checks --------------------
def test_a_prior_checkpoint_encodes_and_decodes_without_its_tokenizers_checkpoint(
    data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    # The prior loaded its tokenizer from the path recorded at training (relative to the working folder), so its
    # files could not be decoded from another folder, or once the vqvae run was moved or trained again.
    from PIL import Image
    from test_evaluation import load_script

    short = ["--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2", "--trainer.limit_val_batches", "0"]
    monkeypatch.chdir(tmp_path)
    run_cli("fit", *tiny_args("vqvae", data_dir, Path("vqvae"), *short))
    tiny_prior_args = ["--model.init_args.embed_dim", "16", "--model.init_args.num_layers", "1"]
    tiny_prior_args += ["--model.init_args.num_heads", "2", "--model.init_args.tokenizer"]
    tiny_prior_args += ["vqvae/lightning_logs/version_0/checkpoints/last.ckpt"]
    run_cli("fit", *tiny_args("second_stage/prior", data_dir, Path("prior"), *short, *tiny_prior_args))
    checkpoint = str(tmp_path / "prior" / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt")
    Image.fromarray((torch.rand(30, 40) * 255).byte().numpy()).save(tmp_path / "in.png")
    script = load_script("compress")
    script.main(["encode", checkpoint, "in.png", "in.aelc", "--device", "cpu"])
    script.main(["decode", checkpoint, "in.aelc", "before.png", "--device", "cpu"])
    (tmp_path / "vqvae").rename(tmp_path / "moved")  # the tokenizer's run is gone from where the prior recorded it
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    script.main(["decode", checkpoint, "../in.aelc", "after.png", "--device", "cpu"])
    assert (tmp_path / "elsewhere" / "after.png").read_bytes() == (tmp_path / "before.png").read_bytes()
    prior = CodePrior.load_from_checkpoint(checkpoint)
    tokenizer = tmp_path / "moved" / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt"
    prior.check_tokenizer(CodePrior.load_from_checkpoint(checkpoint, tokenizer=str(tokenizer)).tokenizer)
    assert prior.hparams.tokenizer == "vqvae/lightning_logs/version_0/checkpoints/last.ckpt"  # where it came from


def test_a_prior_checkpoint_of_an_earlier_release_still_reads_its_tokenizer_or_says_why_not(
    trained_prior: CodePrior, tokenizer_path: Path, tmp_path: Path
) -> None:
    old = torch.load(tmp_path / "prior.ckpt", weights_only=False)
    del old["ae_lightning_tokenizer_record"]  # what checkpoints held before
    torch.save(old, tmp_path / "old.ckpt")
    assert CodePrior.load_from_checkpoint(tmp_path / "old.ckpt").fingerprint == trained_prior.fingerprint
    tokenizer_path.rename(tmp_path / "moved.ckpt")
    message = (
        f"{tmp_path / 'old.ckpt'} was saved before prior checkpoints held their tokenizer's settings, so it needs the "
        f"tokenizer checkpoint it was trained on, {tokenizer_path} (relative to the working folder), which does not "
        "exist: load it from the folder it was trained in, or pass tokenizer=<that checkpoint>"
    )
    with pytest.raises(FileNotFoundError) as error:
        CodePrior.load_from_checkpoint(tmp_path / "old.ckpt")
    assert str(error.value) == message
    loaded = CodePrior.load_from_checkpoint(tmp_path / "old.ckpt", tokenizer=str(tmp_path / "moved.ckpt"))
    assert loaded.fingerprint == trained_prior.fingerprint


def test_a_prior_checkpoint_and_a_new_priors_tokenizer_checkpoint_are_each_read_once(
    trained_prior: CodePrior, tokenizer_path: Path, tmp_path: Path
) -> None:
    # Loading a prior read its checkpoint twice (to rebuild the tokenizer, then Lightning), and a new prior its
    # tokenizer's checkpoint twice (to check its class and keep its record, then to load it).
    import builtins

    def opened(path: Path, build):
        with mock.patch("builtins.open", wraps=builtins.open) as opens:
            built = build()
        return built, sum(1 for call in opens.call_args_list if call.args and str(call.args[0]) == str(path))

    loaded, reads = opened(tmp_path / "prior.ckpt", lambda: CodePrior.load_from_checkpoint(tmp_path / "prior.ckpt"))
    assert reads == 1
    new, reads = opened(tokenizer_path, lambda: tiny_prior(tokenizer_path))
    assert reads == 1
    with open(tmp_path / "prior.ckpt", "rb") as file:
        from_file = CodePrior.load_from_checkpoint(file)
    expected = trained_prior.state_dict()
    for prior in (loaded, from_file):
        assert prior.state_dict().keys() == expected.keys()
        assert all(torch.equal(value, expected[name]) for name, value in prior.state_dict().items())
        assert prior.tokenizer_record == trained_prior.tokenizer_record
    assert new.fingerprint == trained_prior.fingerprint and new.tokenizer_record == trained_prior.tokenizer_record


def test_a_files_tokenizer_fingerprint_is_of_the_weights_that_coded_it(tokenizer_path: Path) -> None:
    # The fingerprint was taken from the tokenizer file when the prior was built, whatever weights it later held.
    from ae_lightning.models.prior import tokenizer_fingerprint

    prior, original = tiny_prior(tokenizer_path).eval(), tiny_prior(tokenizer_path).eval()
    torch.manual_seed(1)
    other = quantized(hidden_dims=[8, 8])
    prior.tokenizer.load_state_dict(other.state_dict())
    data = compress(prior, torch.rand(1, 28, 28, generator=torch.Generator().manual_seed(7)))
    written, used = codec._HEADER.unpack_from(data)[2].decode(), tokenizer_fingerprint(other)
    assert written == used == prior.fingerprint != original.fingerprint
    with pytest.raises(CompressedFileError, match=rf"written with tokenizer {used} and prior \w+; this model is "
                       rf"tokenizer {original.fingerprint} and prior"):  # fmt: skip
        decompress(original, data)


def test_codec_refuses_a_payload_the_range_coder_cannot_decode(
    trained_prior: CodePrior, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    # constriction's AssertionError escaped decompress, and compress.py printed a traceback (exit status 1).
    from test_evaluation import load_script, refused

    data = compress(trained_prior, torch.rand(1, 28, 56, generator=torch.Generator().manual_seed(8)))
    corrupted = data[: codec._HEADER.size] + b"\xff" * (len(data) - codec._HEADER.size)  # no range coder state
    message = (
        f"the codes of {tmp_path / 'f.aelc'} cannot be decoded (AssertionError: Tried to decode from compressed data "
        "that is invalid for the employed entropy model.): the file is corrupted, or the prior's probabilities differ "
        "from the encoder's (decode at the same precision, on the same kind of device and software, as the encoder)"
    )
    with pytest.raises(CompressedFileError) as error:
        decompress(trained_prior, corrupted, name=str(tmp_path / "f.aelc"))
    assert str(error.value) == message
    (tmp_path / "f.aelc").write_bytes(corrupted)
    script = load_script("compress")
    argv = ["decode", str(tmp_path / "prior.ckpt"), str(tmp_path / "f.aelc"), str(tmp_path / "f.png")]
    assert refused(script, [*argv, "--device", "cpu"], capsys) == message
    assert not (tmp_path / "f.png").exists()


def test_compress_command_refuses_a_bad_device_and_a_folder_target_up_front(
    trained_prior: CodePrior, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    # Both ended in tracebacks: the device when the prior loaded, the folder after the image was encoded.
    from PIL import Image
    from test_evaluation import load_script, refused

    script = load_script("compress")
    prior, image = str(tmp_path / "prior.ckpt"), str(tmp_path / "in.png")
    Image.fromarray((torch.rand(28, 28) * 255).byte().numpy()).save(image)
    absent_gpu = "cuda" if not torch.cuda.is_available() else f"cuda:{torch.cuda.device_count()}"
    with mock.patch.object(script, "load_prior", side_effect=AssertionError("loaded before the device was checked")):
        for device in ("foo", absent_gpu, "meta"):
            said = refused(script, ["encode", prior, image, str(tmp_path / "x.aelc"), "--device", device], capsys)
            assert said.startswith(f"--device {device}: ")
            assert said.endswith("; expected cpu, or cuda (cuda:<index>) on a machine with that GPU")
    (tmp_path / "folder.aelc").mkdir()
    argv = ["encode", prior, image, str(tmp_path / "folder.aelc"), "--device", "cpu", "--overwrite"]
    assert refused(script, argv, capsys) == f"target {tmp_path / 'folder.aelc'} is a folder; name the file to write"
    assert not list((tmp_path / "folder.aelc").iterdir()) and not list(tmp_path.glob("*.tmp"))


def test_compress_command_names_the_channels_of_a_model_it_cannot_read_or_write_images_for(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    # A model of 2 or 4 channels: encode read an RGB file and died in a traceback ("the model codes images of 4
    # channels, got an image of 3"); decode into a .jpg decoded the whole file, then Pillow's OSError escaped.
    import lightning as L
    from PIL import Image
    from test_evaluation import load_script, refused

    script = load_script("compress")
    tokenizer = quantized(hidden_dims=[8, 8], input_shape=(2, 28, 28))
    trainer = L.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False, accelerator="cpu")
    trainer.strategy.connect(tokenizer)
    trainer.save_checkpoint(tmp_path / "tokenizer.ckpt")
    prior = tiny_prior(tmp_path / "tokenizer.ckpt").eval()
    Image.fromarray((torch.rand(28, 28, 3) * 255).byte().numpy()).save(tmp_path / "in.png")
    (tmp_path / "in.aelc").write_bytes(compress(prior, torch.rand(2, 28, 28)))  # from Python, as it must be
    checkpoint = str(tmp_path / "prior.ckpt")  # never read: load_prior is given the prior

    def command(name: str, source: str, target: str) -> list[str]:
        return [name, checkpoint, str(tmp_path / source), str(tmp_path / target), "--device", "cpu"]

    with mock.patch.object(script, "load_prior", return_value=prior):
        assert refused(script, command("encode", "in.png", "x.aelc"), capsys) == (
            f"prior {checkpoint} codes images of 2 channels; encode reads image files as gray (1) or RGB (3): give it "
            "the tensor from Python (ae_lightning.codec.compress)"
        )
        with mock.patch.object(script, "decompress", side_effect=AssertionError("decoded first")):
            assert refused(script, command("decode", "in.aelc", "x.jpg"), capsys) == (
                f"target {tmp_path / 'x.jpg'}: cannot write mode LA as JPEG (prior {checkpoint} decodes images of 2 "
                "channels)"
            )
        script.main(command("decode", "in.aelc", "x.png"))
    with Image.open(tmp_path / "x.png") as image:
        assert image.mode == "LA" and image.size == (28, 28)
    assert not (tmp_path / "x.aelc").exists() and not (tmp_path / "x.jpg").exists()


def test_compress_command_refuses_transparent_pixels_or_composites_them_as_alpha_says(
    trained_prior: CodePrior, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from PIL import Image
    from test_evaluation import load_script, refused

    script = load_script("compress")
    checkpoint, source = str(tmp_path / "prior.ckpt"), tmp_path / "icon.png"  # the prior written by the fixture
    gray, alpha = np.full((28, 28), 200, np.uint8), np.full((28, 28), 255, np.uint8)
    alpha[:14] = 0  # the top half transparent, over stored gray 200
    Image.fromarray(np.stack([gray, alpha], -1), mode="LA").save(source)
    encode = ["encode", checkpoint, str(source), str(tmp_path / "icon.aelc"), "--device", "cpu"]
    said = refused(script, encode, capsys)
    assert said.startswith(f"source {source} has transparent pixels") and "--alpha of" in said and "compress" in said
    assert not (tmp_path / "icon.aelc").exists()
    assert script.load_image(source, 1, "black")[0, :14].eq(0).all()  # composited over the background asked for
    assert script.load_image(source, 1, "white")[0, :14].eq(1).all()
    script.main([*encode, "--alpha", "white"])
    assert (tmp_path / "icon.aelc").is_file()
    decode = ["decode", checkpoint, str(tmp_path / "icon.aelc"), str(tmp_path / "out.png"), "--device", "cpu"]
    message = "--alpha white applies to the image that encode reads; decode takes no --alpha"
    assert refused(script, [*decode, "--alpha", "white"], capsys) == message  # was silently ignored
    assert not (tmp_path / "out.png").exists()


def test_compress_refuses_a_tensor_that_is_not_one_float_image_in_0_1(tokenizer_path: Path) -> None:
    # torchvision's read_image (uint8) failed inside the encoder's conv ("Input type (unsigned char) and bias type");
    # its .float() (values 0..255) and NaN were compressed without a word into files of garbage images.
    prior = tiny_prior(tokenizer_path).eval()
    image = torch.rand(1, 30, 30, generator=torch.Generator().manual_seed(9))
    shape = r"compress takes one image \[C, H, W\] of floats in \[0, 1\], got a torch"
    for bad, message in (
        ((image * 255).byte(), shape + r".uint8 tensor of shape \(1, 30, 30\)"),
        (image[None], shape + r".float32 tensor of shape \(1, 1, 30, 30\)"),
        (image[:, :0], shape + r".float32 tensor of shape \(1, 0, 30\)"),
        (image * 255, r"compress takes pixels in \[0, 1\], got values in \[0.\d+, 25\d.?\d*\]"),
        (image.clone().fill_(float("nan")), r"compress takes pixels in \[0, 1\], got values in \[nan, nan\]"),
    ):
        with pytest.raises(ValueError, match=message):
            compress(prior, bad)
    assert compress(prior, image.double()) == compress(prior, image)  # float64 pixels: the same file


def test_rate_distortion_refuses_qualities_pillow_would_relabel_and_photos_it_cannot_crop(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    # --jpeg_qualities -1 wrote Pillow's default quality 75 as the row of quality -1 (101: quality 100); --webp 101
    # ended in Pillow's "invalid configuration"; --photos missing, empty or of 20x20 icons in tracebacks after --out
    # was made (the icons' in "random_ expects 'from' to be less than 'to'"); --points 8:64 64:8 trained the first
    # point, then died building the second's autoencoder ("not divisible by the downsampling factor 64").
    from PIL import Image
    from test_evaluation import load_script, refused

    (tmp_path / "empty").mkdir()
    (tmp_path / "icons").mkdir()
    Image.new("RGB", (20, 40)).save(tmp_path / "icons" / "a.png")
    out = tmp_path / "rd"
    cases = {
        "--jpeg_qualities 50 -1": "--jpeg_qualities -1: expected qualities from 1 to 100",
        "--jpeg_qualities 101": "--jpeg_qualities 101: expected qualities from 1 to 100",
        "--webp_qualities 0 101": "--webp_qualities 101: expected qualities from 0 to 100",
        f"--photos {tmp_path / 'missing'}": f"--photos {tmp_path / 'missing'}: expected a folder holding .jpg, .jpeg ",
        f"--photos {tmp_path / 'empty'}": f"--photos {tmp_path / 'empty'}: expected a folder holding .jpg, .jpeg or ",
        f"--photos {tmp_path / 'icons'}": f"--photos: {tmp_path / 'icons' / 'a.png'} is 20x40; expected at least 32x32",
        "--points 8:64 64:8": "argument --points: '64:8': expected factor:codebook_size, the factor a power of 2 "
        "from 2 to 32 (the tiles are 32x32) and at least 2 codes",
    }
    for argv, message in cases.items():
        said = refused(load_script("rate_distortion"), [*argv.split(), "--steps", "1", "--out", str(out)], capsys)
        assert said.startswith(message), argv
    assert not out.exists()


def test_codec_names_the_dtype_when_a_file_is_decoded_by_the_same_prior_cast_to_another(
    trained_prior: CodePrior,
) -> None:
    # A user who casts the prior that wrote a file to bfloat16 decodes with "another model": the message says why.
    data = compress(trained_prior, torch.rand(1, 28, 28, generator=torch.Generator().manual_seed(5)))
    rounded = copy.deepcopy(trained_prior).to(torch.bfloat16)
    expected = r"this model is tokenizer \w+ and prior \w+, in torch.bfloat16: decode it with that one, in the dtype"
    with pytest.raises(CompressedFileError, match=expected + r" that wrote it \(a copy cast to another dtype"):
        decompress(rounded, data)
