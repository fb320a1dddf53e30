"""The compression command as a user runs it: images of other sizes, targets a format cannot hold, existing outputs.

The tiny gray prior of ``test_prior_codec.py`` (tiles of 28x28), CPU only.
"""

from __future__ import annotations

import tracemalloc
from pathlib import Path
from unittest import mock

import pytest
import torch
from test_evaluation import load_script, refused
from test_prior_codec import tokenizer_path, trained_prior  # noqa: F401 (fixtures)

from ae_lightning import CodePrior, codec
from ae_lightning.codec import compress


def test_decode_to_a_format_that_cannot_hold_the_images_size_is_named_not_a_traceback(
    trained_prior: CodePrior,  # noqa: F811
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # WebP holds at most 16383 pixels a side: Pillow's ValueError came as a traceback after the whole decode
    monkeypatch.setattr(codec, "TILES_PER_GROUP", 1024)  # one group of tiles: fewer passes of the prior
    script, prior = load_script("compress"), str(tmp_path / "prior.ckpt")  # the prior written by the fixture
    (tmp_path / "wide.aelc").write_bytes(compress(trained_prior, torch.rand(1, 2, 16400)))
    argv = ["decode", prior, str(tmp_path / "wide.aelc"), str(tmp_path / "wide.webp"), "--device", "cpu"]
    message = refused(script, argv, capsys)
    assert message.startswith(f"target {tmp_path / 'wide.webp'}: "), message
    assert "16383" in message and message.endswith("the decoded image is 16400x2; name a .png or .tiff target")
    assert not (tmp_path / "wide.webp").exists()
    real = script.image_bytes

    def as_if_65536_wide(image: torch.Tensor, suffix: str) -> bytes:  # the check before decoding writes 1x1
        return real(image if image.shape[2] == 1 else torch.zeros(1, 1, 2**16), suffix)

    with mock.patch.object(script, "image_bytes", as_if_65536_wide):  # GIF, TGA, PCX: Pillow's OverflowError
        message = refused(script, [*argv[:3], str(tmp_path / "wide.gif"), *argv[4:]], capsys)
    assert (
        message == f"target {tmp_path / 'wide.gif'}: int too big to convert; the decoded image is 16400x2; name "
        "a .png or .tiff target"
    )


def test_a_header_whose_fingerprints_are_not_hex_is_corrupted_not_of_another_model(
    trained_prior: CodePrior,  # noqa: F811
) -> None:
    # a damaged fingerprint byte (bcdcb#08...) read as a file of another model: "decode it with that one"
    data = bytearray(compress(trained_prior, torch.rand(1, 28, 28, generator=torch.Generator().manual_seed(0))))
    for offset in (5, 20, 36):  # in the tokenizer's fingerprint, in it, in the prior's
        damaged = bytes(data[:offset]) + b"#" + bytes(data[offset + 1 :])
        with pytest.raises(codec.CompressedFileError) as refused_file:
            codec.decompress(trained_prior, damaged, name="f.aelc")
        assert str(refused_file.value).startswith("f.aelc has a corrupted header: its model fingerprints "), offset


def test_decode_refuses_a_large_foreign_file_without_reading_it_into_memory(
    trained_prior: CodePrior,  # noqa: F811
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
) -> None:
    # a video given to decode by mistake was read whole into memory before its first bytes were looked at
    script, foreign = load_script("compress"), tmp_path / "video.mp4"
    with foreign.open("wb") as file:  # sparse: 256 MiB that take no disk
        file.write(b"\x00\x00\x00\x18ftypmp42")
        file.truncate(2**28)
    argv = ["decode", str(tmp_path / "prior.ckpt"), str(foreign), str(tmp_path / "out.png"), "--device", "cpu"]
    tracemalloc.start()
    try:
        message = refused(script, argv, capsys)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert message == f"{foreign} is not an ae-lightning compressed file (no AELC header)"
    assert peak < 2**26, f"{peak / 2**20:.0f} MiB held to refuse it"
