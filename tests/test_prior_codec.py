"""The prior over codes and the learned codec: training on frozen codes, sampling, bits, the entropy-coded file.

Tiny tokenizers trained for two steps on the tiny IDX data of ``conftest.py``, CPU only.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from test_quantized import images, quantized
from test_variants import make_trainer, tiny_data

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
        CodePrior.load_from_checkpoint(tmp_path / "prior.ckpt")


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
    other = tiny_prior(tokenizer_path)  # the same tokenizer, an untrained prior
    with pytest.raises(CompressedFileError, match=rf"written with tokenizer {other.fingerprint} and prior \w+; this"):
        decompress(other.eval(), data)
    corrupted = bytearray(data)
    corrupted[-5] ^= 0xFF
    with pytest.raises(CompressedFileError, match="fail its checksum"):
        decompress(trained_prior, bytes(corrupted))


def test_compress_command_round_trip(trained_prior: CodePrior, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from PIL import Image
    from test_evaluation import load_script

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
