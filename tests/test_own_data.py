"""Bring your own data: image folders, array files and torchvision datasets, and the checks on what they hold.

Every file is written by the test itself, tiny and in its real format (PNG, .npy/.npz/.pt, CIFAR-10's pickled
batches, SVHN's .mat).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import trust_tiny_cifar10, write_cifar10, write_idx, write_image_folder, write_svhn
from PIL import Image
from tiny_runs import ROOT, subprocess_env
from torchvision.datasets import CIFAR10, SVHN, ImageFolder

from datamodules import (
    ArrayDataModule,
    ImageFolderDataModule,
    InteractionsDataModule,
    MNISTDataModule,
    StreamingDataModule,
    TorchvisionDataModule,
)
from datamodules.base import UNLABELED
from datamodules.stream_prepare import prepare_stream


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


@pytest.fixture
def cifar_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    return trust_tiny_cifar10(write_cifar10(tmp_path / "cifar"), monkeypatch)


def first_batch(dm) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    dm.setup()
    return next(iter(dm.train_dataloader()))


# --- image folders --------------------------------------------------------------------------------------------------
def test_image_folder_labels_as_torchvision_image_folder(tmp_path: Path) -> None:
    root = write_image_folder(tmp_path / "pets", classes=("dog", "cat"), per_class=12, size=12)
    dm = ImageFolderDataModule(str(root), batch_size=8, val_fraction=0.25, test_fraction=0.25)
    assert dm.input_shape == (3, 12, 12) and dm.class_names == ["cat", "dog"]
    x, labels, indices = first_batch(dm)
    assert x.shape == (8, 3, 12, 12) and x.dtype == torch.float32 and 0 <= x.min() and x.max() <= 1
    reference = ImageFolder(str(root))
    assert dm.arrays.train[1].tolist() == reference.targets
    # the first reference image, decoded by torchvision's class, is the first row of the pool
    first = torch.from_numpy(np.array(reference[0][0])).permute(2, 0, 1)
    assert torch.equal(dm.arrays.train[0][0], first)
    assert (dm.split_size("train"), dm.split_size("val"), dm.split_size("test")) == (
        14,
        4,
        6,
    )  # 6 of 24 held out, then round(0.25 * 18) = 4
    assert set(dm.splits["test"][1].tolist()) == {0, 1}  # stratified


def test_image_folder_resizes_converts_and_reads_a_test_folder(tmp_path: Path) -> None:
    root = write_image_folder(tmp_path / "train", size=20)
    test = write_image_folder(tmp_path / "test", per_class=3, size=9)
    dm = ImageFolderDataModule(str(root), image_size=8, channels=1, test_dir=str(test), batch_size=4)
    assert dm.input_shape == (1, 8, 8)
    x, _, _ = first_batch(dm)
    assert x.shape == (4, 1, 8, 8) and dm.split_size("test") == 6


def test_flat_folder_has_no_labels(tmp_path: Path) -> None:
    root = write_image_folder(tmp_path / "flat", classes=(), per_class=20, size=8)
    dm = ImageFolderDataModule(str(root), batch_size=4)
    _, labels, _ = first_batch(dm)
    assert (labels == UNLABELED).all() and not dm.has_labels and dm.class_names is None


@pytest.mark.parametrize("train_classes, test_classes, message", [
    (("cat", "dog"), (), r"test has no class subfolders, but the training folder has the classes \['cat', 'dog'\]"),
    ((), ("cat", "dog"), r"test has the classes \['cat', 'dog'\], but the training folder is flat \(no classes\)"),
], ids=["flat-test", "flat-training"])  # fmt: skip
def test_a_test_folder_must_have_the_training_folders_layout(train_classes, test_classes, message, tmp_path) -> None:
    root = write_image_folder(tmp_path / "train", classes=train_classes, size=8)
    test = write_image_folder(tmp_path / "test", classes=test_classes, per_class=3, size=8)
    with pytest.raises(ValueError, match=message):
        ImageFolderDataModule(str(root), test_dir=str(test), batch_size=4).setup()
    with pytest.raises(ValueError, match=message):  # a stream of the same folders
        prepare_stream(str(root), str(tmp_path / "stream"), test_dir=str(test))


def test_hidden_files_and_folders_are_no_classes_or_images_for_the_datamodule_or_the_stream(tmp_path: Path) -> None:
    # what a notebook or a Mac leaves in a photo folder: checkpoint and thumbnail folders, AppleDouble "._" files
    root = write_image_folder(tmp_path / "pets", per_class=10, size=8)
    _png(root / ".ipynb_checkpoints" / "000-checkpoint.png", (8, 8))
    _png(root / "dog" / ".thumbnails" / "000.png", (4, 4))
    (root / "cat" / "._000.png").write_bytes(b"Mac OS X resource fork, not an image")
    dm = ImageFolderDataModule(str(root), batch_size=4)
    assert dm.class_names == ["cat", "dog"] and dm.arrays.train[1].tolist() == [0] * 10 + [1] * 10
    manifest = prepare_stream(str(root), str(tmp_path / "stream"), val_fraction=0.2, test_fraction=0.2)
    assert manifest.class_names == ["cat", "dog"] and sum(manifest.counts.values()) == 20
    flat = write_image_folder(tmp_path / "flat", classes=(), per_class=10, size=8)
    (flat / ".ipynb_checkpoints").mkdir()
    (flat / "._003.png").write_bytes(b"Mac OS X resource fork, not an image")
    assert len(ImageFolderDataModule(str(flat)).arrays.train[0]) == 10
    manifest = prepare_stream(str(flat), str(tmp_path / "flat-stream"), val_fraction=0.2, test_fraction=0.2)
    assert manifest.class_names is None and sum(manifest.counts.values()) == 10


def test_a_gray_folder_is_gray_in_memory_and_in_its_stream_unless_channels_says_otherwise(tmp_path: Path) -> None:
    # channels defaulted to 3 in memory, ae-lightning-prepare to the source's: one folder, two input shapes
    gray = write_image_folder(tmp_path / "gray", per_class=6, size=8, mode="L")
    prepare_stream(str(gray), str(tmp_path / "stream"), num_workers=1)
    memory, stream = ImageFolderDataModule(str(gray)), StreamingDataModule(str(tmp_path / "stream"), num_workers=0)
    assert memory.input_shape == stream.input_shape == (1, 8, 8)
    memory.setup("test")
    images, _, _ = next(iter(stream.test_dataloader()))
    assert torch.equal(memory.splits["test"][0], (images * 255).round().to(torch.uint8))
    # given: a checkpoint's channels 3 (its run's default) reads the folder as three equal channels, as it trained
    assert ImageFolderDataModule(str(gray), channels=3, image_size=8).input_shape == (3, 8, 8)
    _png(gray / "dog" / "colour.png", (8, 8))  # one colour image among them: RGB, as the stream would hold
    assert ImageFolderDataModule(str(gray), image_size=8).input_shape == (3, 8, 8)


def test_gray_palette_images_are_gray_in_memory_and_in_the_stream(tmp_path: Path) -> None:
    # PNGs of a palette of grays (mode P, as quantizers and some editors save gray images) were read as RGB
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (6, 8, 8), dtype=np.uint8)
    for i, image in enumerate(pixels):
        (tmp_path / "gray").mkdir(exist_ok=True)
        Image.fromarray(image).convert("P").save(tmp_path / "gray" / f"{i}.png")
    assert Image.open(tmp_path / "gray" / "0.png").mode == "P"
    memory = ImageFolderDataModule(str(tmp_path / "gray"), val_fraction=0.2, test_fraction=0.2)
    prepare_stream(str(tmp_path / "gray"), str(tmp_path / "stream"), num_workers=1, val_fraction=0.2)
    assert memory.input_shape == StreamingDataModule(str(tmp_path / "stream")).input_shape == (1, 8, 8)
    memory.setup()
    decoded = torch.cat([images for images, _ in memory.splits.values()])
    assert sorted(map(bytes, decoded.flatten(1).numpy())) == sorted(map(bytes, pixels.reshape(6, -1)))
    Image.new("RGB", (8, 8), (200, 10, 10)).convert("P").save(tmp_path / "gray" / "red.png")  # a palette in colour
    assert ImageFolderDataModule(str(tmp_path / "gray")).input_shape[0] == 3


def test_phone_photos_are_read_upright_as_their_exif_orientation_says(tmp_path: Path) -> None:
    # stored 16 wide and 8 high, dark left half; EXIF orientation 6: viewers turn it 90 degrees clockwise, so that it
    # shows 8 wide and 16 high with the dark half on top
    pixels = np.full((8, 16, 3), 255, np.uint8)
    pixels[:, :8] = 0
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation
    (tmp_path / "photos").mkdir()
    for i in range(10):
        Image.fromarray(pixels).save(tmp_path / "photos" / f"IMG_{i:04d}.jpg", exif=exif.tobytes(), quality=95)

    def upright(images: torch.Tensor) -> bool:
        return images.shape[-2:] == (16, 8) and images[:, :, :8].max() < 60 and images[:, :, 8:].min() > 195

    assert upright(ImageFolderDataModule(str(tmp_path / "photos")).arrays.train[0])
    prepare_stream(str(tmp_path / "photos"), str(tmp_path / "stream"), val_fraction=0.2, test_fraction=0.2)
    val = StreamingDataModule(str(tmp_path / "stream"), batch_size=4, num_workers=0).val_dataloader()
    assert upright(next(iter(val))[0] * 255)


def _icon(path: Path, mode: str, hidden: int) -> None:
    """An 8x8 icon: the top half transparent over the colour ``hidden`` (the same look for any ``hidden``), the bottom
    half opaque gray 200 but for pixel (7, 0), gray 200 at alpha 128 (none in a palette image)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if mode == "P":
        icon = Image.new("P", (8, 8), 1)
        icon.putpalette([hidden, 255 - hidden, hidden // 2, 200, 200, 200])
        icon.paste(0, (0, 0, 8, 4))
        icon.save(path, transparency=0)
        return
    rgb, alpha = np.full((8, 8, 3), 200, np.uint8), np.full((8, 8), 255, np.uint8)
    rgb[:4], alpha[:4], alpha[7, 0] = (hidden, 255 - hidden, hidden // 2), 0, 128
    Image.fromarray(np.dstack([rgb[..., :1] if mode == "LA" else rgb, alpha]), mode).save(path)


@pytest.mark.parametrize("mode, channels", [("RGBA", 3), ("LA", 1), ("P", 3)])
def test_transparent_pixels_are_refused_or_composited_as_alpha_says_in_the_folder_and_the_stream(
    mode: str, channels: int, tmp_path: Path
) -> None:
    # ten icons that look alike but hide other colours under their transparent pixels: read without the alpha, they
    # trained on the hidden colours
    for i in range(10):
        _icon(tmp_path / "icons" / f"{i:02d}.png", mode, 25 * i)
    first = tmp_path / "icons" / "00.png"
    with pytest.raises(ValueError, match=rf"{first} has transparent pixels.*set alpha to 'white' or 'black'"):
        ImageFolderDataModule(str(tmp_path / "icons"), channels=channels).setup()
    with pytest.raises(ValueError, match=r"icons/0\d.png has transparent pixels.*--alpha of ae-lightning-prepare"):
        prepare_stream(str(tmp_path / "icons"), str(tmp_path / "refused"), channels=channels)
    assert not (tmp_path / "refused").exists() and not (tmp_path / ".refused.partial").exists()
    for background, level in (("white", 255), ("black", 0)):
        expected = torch.full((channels, 8, 8), 200.0)
        expected[:, :4] = level
        if mode != "P":
            expected[:, 7, 0] = (200 * 128 + level * 127) / 255  # "over": 200 at alpha 128/255 on the background
        images = ImageFolderDataModule(str(tmp_path / "icons"), channels=channels, alpha=background).arrays.train[0]
        assert images.shape == (10, channels, 8, 8) and (images.float() - expected).abs().max() <= 1, background
        stream = tmp_path / f"stream-{background}"
        manifest = prepare_stream(str(tmp_path / "icons"), str(stream), channels=channels, alpha=background,
                                  val_fraction=0.2, test_fraction=0.2)  # fmt: skip
        assert manifest.settings["alpha"] == background
        val = StreamingDataModule(str(stream), channels=channels, batch_size=2, num_workers=0).val_dataloader()
        assert (next(iter(val))[0] * 255 - expected).abs().max() <= 1, background


def test_opaque_images_with_an_alpha_channel_or_a_transparent_colour_read_as_before(tmp_path: Path) -> None:
    pixels = np.random.default_rng(0).integers(0, 256, (6, 6, 3), dtype=np.uint8)
    (tmp_path / "images").mkdir()
    for i in range(5):
        Image.fromarray(pixels).save(tmp_path / "images" / f"rgb-{i}.png")
        Image.fromarray(np.dstack([pixels, np.full((6, 6), 255, np.uint8)]), "RGBA").save(
            tmp_path / "images" / f"rgba-{i}.png"
        )
    palette = Image.new("P", (6, 6), 1)
    palette.putpalette([0, 0, 0, 90, 80, 70])
    palette.save(tmp_path / "images" / "z-palette.png", transparency=0)  # index 0 is transparent, but no pixel uses it
    images = ImageFolderDataModule(str(tmp_path / "images")).arrays.train[0]  # alpha: refuse, and nothing to refuse
    assert (images[:10] == torch.from_numpy(pixels).permute(2, 0, 1)).all()
    assert images[10].flatten(1).T.unique(dim=0).tolist() == [[90, 80, 70]]
    manifest = prepare_stream(str(tmp_path / "images"), str(tmp_path / "stream"), val_fraction=0.2, test_fraction=0.2)
    assert sum(manifest.counts.values()) == 11 and "alpha" not in manifest.settings


# --- array files ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "layout, make",
    [
        ("NHW uint8", lambda rng: rng.integers(0, 256, (30, 9, 7), dtype=np.uint8)),
        ("NHWC uint8", lambda rng: rng.integers(0, 256, (30, 9, 7, 3), dtype=np.uint8)),
        ("NCHW float", lambda rng: rng.random((30, 3, 9, 7), dtype=np.float32)),
    ],
)
def test_array_file_image_layouts(layout: str, make, tmp_path: Path) -> None:
    data = make(np.random.default_rng(0))
    np.save(tmp_path / "x.npy", data)
    dm = ArrayDataModule(str(tmp_path / "x.npy"), batch_size=5)
    channels = 1 if data.ndim == 3 else 3
    assert dm.input_shape == (channels, 9, 7)
    stored = dm.arrays.train[0]
    expected = torch.from_numpy(data)
    if layout == "NHW uint8":
        expected = expected.unsqueeze(1)
    elif layout == "NHWC uint8":
        expected = expected.permute(0, 3, 1, 2)
    else:
        expected = (expected * 255).round().to(torch.uint8)
    assert torch.equal(stored, expected)


def test_array_labels_from_a_key_or_a_second_file(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 256, (40, 8, 8), dtype=np.uint8), np.arange(40) % 4
    np.savez(tmp_path / "d.npz", images=x, targets=y)
    by_key = ArrayDataModule(str(tmp_path / "d.npz"), labels="targets")
    assert by_key.arrays.train[1].tolist() == y.tolist()
    torch.save({"x": torch.from_numpy(x)}, tmp_path / "d.pt")
    np.save(tmp_path / "y.npy", y)
    by_file = ArrayDataModule(str(tmp_path / "d.pt"), labels=str(tmp_path / "y.npy"))
    assert torch.equal(by_file.arrays.train[0], by_key.arrays.train[0])
    assert by_file.arrays.train[1].tolist() == y.tolist()


def test_array_labels_from_an_npz_file_of_one_array(tmp_path: Path) -> None:
    """An ``.npz`` labels file (``np.savez("y.npz", y=y)``) loads as a dict: its one array is the labels."""
    y = np.arange(40) % 4
    np.save(tmp_path / "x.npy", np.random.default_rng(0).integers(0, 256, (40, 8, 8), dtype=np.uint8))
    np.savez(tmp_path / "y.npz", y=y)
    dm = ArrayDataModule(str(tmp_path / "x.npy"), labels=str(tmp_path / "y.npz"))
    assert dm.arrays.train[1].tolist() == y.tolist()
    np.savez(tmp_path / "two.npz", y=y, z=y)
    with pytest.raises(ValueError, match=r"two.npz holds the arrays \['y', 'z'\]; a labels file holds one array"):
        ArrayDataModule(str(tmp_path / "x.npy"), labels=str(tmp_path / "two.npz")).setup()


def test_a_labels_key_the_data_file_lacks_is_named_as_the_labels_setting(tmp_path: Path) -> None:
    """``labels: Y`` for an .npz holding x and y was refused as "name the data with key", naming another setting."""
    np.savez(tmp_path / "d.npz", x=np.zeros((10, 4, 4), np.uint8), y=np.arange(10) % 2)
    with pytest.raises(ValueError, match=r"labels='Y' is neither a key of .*d.npz \(it holds \['x', 'y'\]\) nor a "):
        ArrayDataModule(str(tmp_path / "d.npz"), labels="Y").setup()
    np.save(tmp_path / "x.npy", np.zeros((10, 4, 4), np.uint8))
    with pytest.raises(ValueError, match=r"labels='y' is neither a key of .*x.npy nor a .npy/.npz/.pt file"):
        ArrayDataModule(str(tmp_path / "x.npy"), labels="y").setup()


def test_vectors_standardized_with_training_statistics_only(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    vectors = rng.normal(5.0, 3.0, (200, 6)).astype(np.float32)
    vectors[:, 2] = 1.0  # a constant feature: shifted, not divided by 0
    np.save(tmp_path / "v.npy", vectors)
    dm = ArrayDataModule(str(tmp_path / "v.npy"), standardize=True, batch_size=16)
    assert dm.input_shape == (6,)
    x, _, _ = first_batch(dm)
    assert x.shape == (16, 6)
    train, val = dm.splits["train"][0], dm.splits["val"][0]
    torch.testing.assert_close(train.mean(0), torch.zeros(6), atol=1e-5, rtol=0)
    torch.testing.assert_close(train[:, [0, 1, 3, 4, 5]].std(0), torch.ones(5), atol=1e-5, rtol=0)
    assert (val.mean(0).abs() > 1e-3).any()  # val's own statistics were not used
    assert torch.isfinite(train).all()


@pytest.mark.parametrize("standardize", [True, False])
def test_tensors_saved_with_requires_grad_are_read_as_plain_data(standardize: bool, tmp_path: Path) -> None:
    # embeddings saved from a model's output without no_grad: standardized, the second training step raised "Trying to
    # backward through the graph a second time"; else every step computed and kept a gradient of the whole data
    torch.save({"x": torch.randn(40, 6, requires_grad=True), "y": torch.arange(40) % 2}, tmp_path / "e.pt")
    dm = ArrayDataModule(str(tmp_path / "e.pt"), labels="y", standardize=standardize, batch_size=8)
    dm.setup("fit")
    weight = torch.nn.Parameter(torch.ones(6))
    for x, _, _ in dm.train_dataloader():
        assert not x.requires_grad
        (x * weight).pow(2).sum().backward()
    assert not any(images.requires_grad for images, _ in dm.splits.values())


def test_binarize_and_standardize_are_refused_where_they_mean_nothing(tmp_path: Path) -> None:
    np.save(tmp_path / "v.npy", np.zeros((20, 4), np.float32))
    with pytest.raises(ValueError, match=r"binarize: dynamic applies to images.*vectors of shape \(4,\)"):
        ArrayDataModule(str(tmp_path / "v.npy"), binarize="dynamic").setup()
    np.save(tmp_path / "i.npy", np.zeros((20, 4, 4), np.uint8))
    with pytest.raises(ValueError, match=r"standardize applies to feature vectors.*i.npy holds images"):
        ArrayDataModule(str(tmp_path / "i.npy"), standardize=True).setup()


# --- torchvision datasets -------------------------------------------------------------------------------------------
def test_cifar10_from_its_real_file_format(cifar_root: Path) -> None:
    dm = TorchvisionDataModule("CIFAR10", data_dir=str(cifar_root), batch_size=4, val_fraction=0.25)
    dm.prepare_data()  # the files are there: nothing to download
    assert dm.input_shape == (3, 32, 32) and dm.class_names[:2] == ["airplane", "automobile"]
    x, _, _ = first_batch(dm)
    assert x.shape == (4, 3, 32, 32)
    assert (dm.split_size("train") + dm.split_size("val"), dm.split_size("test")) == (20, 10)
    reference = CIFAR10(str(cifar_root), train=False)
    assert torch.equal(dm.splits["test"][0], torch.from_numpy(reference.data).permute(0, 3, 1, 2))


def test_svhn_from_its_real_file_format(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = write_svhn(tmp_path / "svhn")
    split_list = {
        part: [url, name, md5(root / name)] for part, (url, name, _) in SVHN.split_list.items() if part != "extra"
    }
    monkeypatch.setattr(SVHN, "split_list", split_list)
    dm = TorchvisionDataModule("SVHN", data_dir=str(root), batch_size=4, val_fraction=0.25)
    assert dm.input_shape == (3, 32, 32)
    dm.setup()
    assert dm.split_size("test") == 6 and sorted(dm.splits["test"][1].tolist()) == [0, 1, 2, 3, 4, 5]


def test_torchvision_offline_error_says_which_files_go_where(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(CIFAR10, "url", "http://127.0.0.1:9/cifar-10-python.tar.gz")  # fails fast
    dm = TorchvisionDataModule("CIFAR10", data_dir=str(tmp_path / "cifar"))
    with pytest.raises(FileNotFoundError, match=r"data_batch_1.*test_batch.*batches.meta.*cifar-10-batches-py"):
        dm.prepare_data()
    assert not (tmp_path / "cifar").exists()  # the failed download leaves no empty folders behind


def test_unknown_torchvision_dataset_is_an_error() -> None:
    with pytest.raises(ValueError, match="'CIFAR11' is not a torchvision dataset class"):
        TorchvisionDataModule("CIFAR11")
    # an import path that does not import was a bare ModuleNotFoundError or AttributeError naming no setting
    with pytest.raises(ValueError, match=r"dataset 'my_data.Faces' cannot be imported \(No module named 'my_data'\)"):
        TorchvisionDataModule("my_data.Faces")
    with pytest.raises(ValueError, match=r"dataset 'torchvision.datasets.Cifar10' cannot be imported \(.*'Cifar10'"):
        TorchvisionDataModule("torchvision.datasets.Cifar10")


def test_emnist_offline_error_names_its_archive_and_where_it_goes(tmp_path: Path, monkeypatch) -> None:
    """The error said "Put its files in <data_dir>/EMNIST/raw", naming none; the archive put there is read offline."""
    from torchvision.datasets import EMNIST

    monkeypatch.setattr(EMNIST, "url", "http://127.0.0.1:9/gzip.zip")  # fails fast
    dm = TorchvisionDataModule("EMNIST", data_dir=str(tmp_path), dataset_kwargs={"split": "letters"})
    raw = tmp_path / "EMNIST" / "raw"
    with pytest.raises(FileNotFoundError, match=rf"Put its files \(gzip.zip\) in {raw} as torchvision's EMNIST"):
        dm.prepare_data()
    import gzip
    import zipfile

    images = np.random.default_rng(0).integers(0, 256, (20, 28, 28), dtype=np.uint8)
    raw.mkdir(parents=True)
    with zipfile.ZipFile(raw / "gzip.zip", "w") as archive:  # as NIST publishes it: gzip/<file>.gz
        for part in ("train", "test"):
            for kind, array in (("images-idx3", images), ("labels-idx1", np.arange(20) % 26 + 1)):
                write_idx(tmp_path / "idx", array)
                archive.writestr(
                    f"gzip/emnist-letters-{part}-{kind}-ubyte.gz", gzip.compress((tmp_path / "idx").read_bytes())
                )
    monkeypatch.setattr(EMNIST, "md5", md5(raw / "gzip.zip"))
    dm.prepare_data()
    assert torch.equal(dm.arrays.train[0][:, 0], torch.from_numpy(images).transpose(1, 2))


# --- issue 15: evaluation passes and the offline fallback -----------------------------------------------------------
def test_evaluation_loaders_always_start_at_their_first_batch(data_dir: Path) -> None:
    dm = MNISTDataModule(data_dir=str(data_dir), batch_size=8)
    dm.setup()
    train, val = dm.train_dataloader(), dm.val_dataloader()
    for loader in (val, dm.test_dataloader()):
        iterator = iter(loader)
        next(iterator), next(iterator)  # a sanity check's two batches
        assert next(iter(loader))[2].tolist() == list(range(8))
    iterator = iter(train)
    next(iterator)
    assert train.state_dict()["batches_done"] == 1  # only the training loader carries a position


def test_offline_fallback_test_and_val_splits_mix_classes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from torchvision.datasets import MNIST

    monkeypatch.setattr(MNIST, "mirrors", ["http://127.0.0.1:9/"])
    dm = MNISTDataModule(data_dir=str(tmp_path), batch_size=16)
    with pytest.warns(UserWarning):
        dm.prepare_data()
    dm.setup()
    for split in ("val", "test"):
        labels = dm.splits[split][1]
        assert len(set(labels[:16].tolist())) >= 5, split  # the first grid shows many digits
        counts = torch.bincount(labels, minlength=10)
        assert counts.max() - counts.min() <= 1, split  # stratified


# --- bad input ------------------------------------------------------------------------------------------------------
def _png(path: Path, size: tuple[int, int]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (10, 20, 30)).save(path)


def _folder_empty(tmp: Path):
    (tmp / "empty").mkdir()
    return ImageFolderDataModule(str(tmp / "empty"))


def _folder_corrupt(tmp: Path):
    write_image_folder(tmp / "f", per_class=3, size=8)
    (tmp / "f" / "cat" / "broken.png").write_bytes(b"not a png at all")
    return ImageFolderDataModule(str(tmp / "f"))


def _folder_two_sizes(tmp: Path):
    _png(tmp / "f" / "a.png", (8, 8))
    _png(tmp / "f" / "b.png", (10, 6))
    return ImageFolderDataModule(str(tmp / "f"))


def _folder_broken_link(tmp: Path):
    write_image_folder(tmp / "f", classes=(), per_class=3, size=8)
    (tmp / "f" / "gone.png").symlink_to(tmp / "moved.png")  # a flat folder skipped it: trained without a word
    return ImageFolderDataModule(str(tmp / "f"))


def _sparse(tmp: Path):
    torch.save(torch.eye(10).to_sparse(), tmp / "x.pt")
    return ArrayDataModule(str(tmp / "x.pt"))


def _array(tmp: Path, data: np.ndarray, **kwargs):
    np.save(tmp / "x.npy", data)
    return ArrayDataModule(str(tmp / "x.npy"), **kwargs)


def _labels_too_short(tmp: Path):
    np.save(tmp / "y.npy", np.arange(9))
    return _array(tmp, np.zeros((10, 4), np.float32), labels=str(tmp / "y.npy"))


def _nan(tmp: Path):
    data = np.zeros((10, 4), np.float32)
    data[7, 2] = np.nan
    return _array(tmp, data)


def _pt_tuple(tmp: Path):
    torch.save((torch.zeros(10, 4, 4, dtype=torch.uint8), torch.zeros(10, dtype=torch.int64)), tmp / "pair.pt")
    return ArrayDataModule(str(tmp / "pair.pt"))


def _folder_16_bit(tmp: Path):
    write_image_folder(tmp / "f", per_class=3, size=8)
    Image.fromarray(np.full((8, 8), 40_000, np.uint16)).save(tmp / "f" / "cat" / "deep.png")  # PIL mode I;16
    return ImageFolderDataModule(str(tmp / "f"), channels=1)


def _folder_huge(tmp: Path, monkeypatch: pytest.MonkeyPatch):
    for i in range(3):  # 4000x4000 photographs would need 48 MB each decoded; their headers are what is read
        _png(tmp / "f" / f"{i}.png", (4000, 4000))
    monkeypatch.setattr(os, "sysconf", lambda name: {"SC_PAGE_SIZE": 4096, "SC_PHYS_PAGES": 2**16}[name])  # 256 MiB
    return ImageFolderDataModule(str(tmp / "f"))


def _array_beyond_memory(tmp: Path, monkeypatch: pytest.MonkeyPatch, dtype=np.uint8, suffix: str = ".npy"):
    data = np.zeros((4_000, 28, 28), dtype)  # 3.1 MB as uint8: 16 MB with the loaders' float copies
    if suffix == ".npy":
        np.save(tmp / "x.npy", data)
    else:
        np.savez(tmp / "x.npz", x=data)
    monkeypatch.setattr(os, "sysconf", lambda name: {"SC_PAGE_SIZE": 4096, "SC_PHYS_PAGES": 2**12}[name])  # 16 MiB
    return ArrayDataModule(str(tmp / f"x{suffix}"))


def _idx_pair(tmp: Path, n_images: int, n_labels: int, labels_value: int = 0, size: int = 28, part: str = "train"):
    root = tmp / "data"
    from conftest import write_dataset

    write_dataset(root, "MNIST", n_train=40, n_test=20)
    raw = root / "MNIST" / "raw"
    write_idx(raw / f"{part}-images-idx3-ubyte", np.zeros((n_images, size, size)))
    write_idx(raw / f"{part}-labels-idx1-ubyte", np.full(n_labels, labels_value))
    return MNISTDataModule(data_dir=str(root))


def _idx_directory(tmp: Path):
    dm = _idx_pair(tmp, 40, 40)
    path = dm.raw_folder / "t10k-images-idx3-ubyte"
    path.unlink()
    path.mkdir()
    return dm


BAD_INPUTS = [
    ("empty folder", _folder_empty, r"empty holds no images"),
    ("corrupt file", _folder_corrupt, r"broken.png is not an image PIL can read"),
    ("broken link", _folder_broken_link, r"gone.png is not an image PIL can read \(\[Errno 2\] No such file"),
    (
        "test folder is the training folder",  # tested on what it trained on
        lambda tmp: ImageFolderDataModule(str(write_image_folder(tmp / "f")), test_dir=str(tmp / "f" / ".." / "f")),
        r"test_dir .*f is the training folder .*f: the model would be tested on the images it trained on; .* leave "
        "test_dir unset to hold out test_fraction",
    ),
    ("sparse tensor", _sparse, r"x.pt: a torch.sparse_coo tensor; expected a numeric array of dense values"),
    ("two sizes", _folder_two_sizes, r"different sizes, e\.g\. .*a.png \(8x8\) and .*b.png \(10x6\); set image_size"),
    ("wrong rank", lambda tmp: _array(tmp, np.zeros((2, 3, 4, 5, 6), np.uint8)), r"x.npy: an array of rank 5"),
    ("NaN", _nan, r"x.npy: sample 7 holds NaN or infinite values"),
    ("inf", lambda tmp: _array(tmp, np.array([[0.0], [np.inf]], np.float32)), r"sample 1 holds NaN or infinite"),
    (
        "float64 vectors beyond float32",  # they trained as inf
        lambda tmp: _array(tmp, np.array([[0.0, 1.0], [2.0, 3.0], [1e300, 0.0]])),
        r"x.npy: sample 2 holds NaN or infinite values \(or values beyond float32's range",
    ),
    ("a .pt tuple", _pt_tuple, r"pair.pt holds a tuple; expected one tensor or a dict of them"),
    (
        "float images outside [0, 1]",
        lambda tmp: _array(tmp, np.full((4, 5, 5), 2.0, np.float32)),
        r"float images must lie in \[0, 1\].*\[2, 2\]",
    ),
    ("labels too short", _labels_too_short, r"y.npy: 9 labels for the 10 samples of .*x.npy"),
    (
        "channels",
        lambda tmp: ImageFolderDataModule(str(tmp), channels=4),
        r"channels must be one of 1, 3, got 4",
    ),
    (
        "too many IDX labels",
        lambda tmp: _idx_pair(tmp, 40, 50),
        r"train-labels-idx1-ubyte holds 50 labels, but .* 40 images",
    ),
    ("too few IDX labels", lambda tmp: _idx_pair(tmp, 40, 30), r"holds 30 labels, but .* 40 images"),
    (
        "label outside classes",
        lambda tmp: _idx_pair(tmp, 40, 40, labels_value=12),
        r"train-labels-idx1-ubyte: label 12 is not one of the dataset's classes \(labels 0..9\)",
    ),
    (
        "32x32 test file",
        lambda tmp: _idx_pair(tmp, 20, 20, size=32, part="t10k"),
        r"t10k-images-idx3-ubyte holds 32x32 images, expected 28x28",
    ),
    ("directory for a file", _idx_directory, r"t10k-images-idx3-ubyte is a directory, expected an IDX file"),
    (
        "IDX count 0",
        lambda tmp: _idx_pair(tmp, 0, 0),
        r"train-images-idx3-ubyte holds no samples: the count in its header is 0",
    ),
    (
        "data_dir the dataset's own folder",
        lambda tmp: MNISTDataModule(data_dir=str(_idx_pair(tmp, 40, 40).raw_folder)),
        r"data_dir .*data/MNIST/raw is a folder of MNIST's own, .* set data_dir to .*data$",
    ),
    ("16-bit PNG", _folder_16_bit, r"deep.png is a 16-bit image \(PIL mode I;16\).*convert it to 8 bits"),
    ("empty array file", lambda tmp: _array(tmp, np.zeros((0, 4), np.float32)), r"x.npy holds no samples"),
    (
        "huge images without image_size",
        _folder_huge,
        r"3 images of 4000x4000 .* need about 0.7 GB of memory, .* set --data.image_size",
    ),
    (
        "array beyond memory",
        _array_beyond_memory,
        r"the 4000 samples of .*x.npy held in memory .* need about 0.0 GB of memory, more than half of this machine's "
        r"0 GB: write the images as a stream with ae-lightning-prepare",
    ),
    (
        "float images beyond memory",
        lambda tmp, monkeypatch: _array_beyond_memory(tmp, monkeypatch, np.float32),
        r"x.npy: converting \(4000, 28, 28\) torch.float32 values would need about .* store the images as uint8",
    ),
    (
        ".npz beyond memory",
        lambda tmp, monkeypatch: _array_beyond_memory(tmp, monkeypatch, np.float32, ".npz"),
        r"x.npz's arrays, read whole, need about .* save the images as a .npy file \(read memory-mapped\)",
    ),
    (
        "empty val split",
        lambda tmp: _array(tmp, np.zeros((100, 3), np.float32), val_fraction=0.0001),
        r"val_fraction=0.0001 of 90 samples .*x.npy\) leaves the val split empty",
    ),
]


@pytest.mark.parametrize("make, message", [case[1:] for case in BAD_INPUTS], ids=[case[0] for case in BAD_INPUTS])
def test_bad_input_is_an_error_before_training(
    make, message: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(ValueError, match=message):
        (make(tmp_path, monkeypatch) if "monkeypatch" in make.__code__.co_varnames else make(tmp_path)).setup()


def test_a_uint8_npy_stays_on_disk_until_used_so_a_stream_can_be_prepared_from_one_larger_than_memory(
    tmp_path: Path,
) -> None:
    # np.load read the whole file: preparing a stream from a .npy larger than memory was killed for lack of memory
    path = tmp_path / "x.npy"
    np.lib.format.open_memmap(path, "w+", np.uint8, (500_000, 28, 28)).flush()  # 392 MB (sparse on disk)
    script = (
        "import resource, sys\n"
        "from datamodules.stream_prepare import _records\n"
        "peak = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024\n"
        "before = peak()\n"
        "payloads, parts, _ = _records('array', sys.argv[1], None, None, None, 'data', {})\n"
        "print(tuple(payloads['train'].shape), (peak() - before) / 1e6)\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", script, str(path)], capture_output=True, text=True, cwd=ROOT, env=subprocess_env()
    )
    shape, grown = run.stdout.split(")")
    assert shape == "(500000, 1, 28, 28" and float(grown) < 100, run.stdout + run.stderr  # MB


def test_16_bit_pngs_would_have_been_clipped(tmp_path: Path) -> None:
    """What the refusal prevents: PIL's conversion of a 16-bit image to 8 bits clips instead of scaling."""
    path = tmp_path / "deep.png"
    Image.fromarray(np.full((4, 4), 40_000, np.uint16)).save(path)
    with Image.open(path) as image:
        assert np.asarray(image.convert("L")).max() == 255  # 40,000 / 65,535 would be 156


def test_a_network_too_large_for_the_input_is_refused_before_any_allocation() -> None:
    from ae_lightning import Autoencoder

    with pytest.raises(ValueError, match=r"mlp network on inputs of shape \(3, 4000, 4000\) needs about 98 GB .*"
                                         r"--data.image_size 64"):  # fmt: skip
        Autoencoder(input_shape=(3, 4000, 4000), hidden_dims=[256, 64])


def test_model_whose_input_shape_disagrees_with_the_data_is_an_error(tmp_path: Path) -> None:
    import lightning as L

    from ae_lightning import Autoencoder

    root = write_image_folder(tmp_path / "f", size=8)
    trainer = L.Trainer(
        accelerator="cpu",
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    with pytest.raises(
        ValueError, match=r"built for images of shape \(1, 28, 28\), but ImageFolderDataModule yields \(3, 8, 8\)"
    ):
        trainer.fit(Autoencoder(latent_dim=2, hidden_dims=[4]), datamodule=ImageFolderDataModule(str(root)))
    torch.save(torch.rand(40, 6), tmp_path / "x.pt")  # click or feature vectors are no images
    with pytest.raises(
        ValueError, match=r"built for feature vectors of shape \(5,\), but ArrayDataModule yields \(6,\)"
    ):
        model = Autoencoder(input_shape=(5,), latent_dim=2, reconstruction="mse")
        trainer.fit(model, datamodule=ArrayDataModule(str(tmp_path / "x.pt")))


# --- the command line -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("module", ["ImageFolderDataModule", "ArrayDataModule"])
def test_own_data_on_top_of_a_shipped_config(module: str, tmp_path: Path) -> None:
    from tiny_runs import run_cli

    if module == "ImageFolderDataModule":
        root = write_image_folder(tmp_path / "photos", per_class=15, size=20)
        data = ["--data.data_dir", str(root), "--data.image_size", "16", "--data.channels", "3"]
        shape = (3, 16, 16)
    else:
        np.save(tmp_path / "x.npy", np.random.default_rng(0).integers(0, 256, (40, 8, 8), dtype=np.uint8))
        np.save(tmp_path / "y.npy", np.arange(40) % 4)
        data = ["--data.path", str(tmp_path / "x.npy"), "--data.labels", str(tmp_path / "y.npy")]
        shape = (1, 8, 8)
    cli = run_cli(
        "fit", "--config", "configs/ae.yaml", "--data", module, *data, "--trainer.fast_dev_run", "true",
        "--trainer.default_root_dir", str(tmp_path / "run"), "--trainer.enable_progress_bar", "false",
    )  # fmt: skip
    assert cli.model.input_shape == shape and type(cli.datamodule).__name__ == module
    assert torch.isfinite(cli.trainer.callback_metrics["val/loss"])


# --- models on own data ---------------------------------------------------------------------------------------------
def _trainer(root: Path, **kwargs):
    import lightning as L

    settings = dict(accelerator="cpu", max_epochs=1, limit_train_batches=2, limit_val_batches=2, logger=False,
                    enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                    default_root_dir=root)  # fmt: skip
    return L.Trainer(**{**settings, **kwargs})


def test_vectors_draw_only_the_latent_map_and_refuse_image_views(tmp_path: Path) -> None:
    from ae_lightning import Autoencoder
    from ae_lightning.training.callbacks import ImageLogger

    np.savez(
        tmp_path / "t.npz", x=np.random.default_rng(0).normal(size=(80, 5)).astype(np.float32), y=np.arange(80) % 2
    )
    data = ArrayDataModule(str(tmp_path / "t.npz"), labels="y", batch_size=16)
    model = Autoencoder(input_shape=(5,), latent_dim=2, hidden_dims=[8], reconstruction="mse")
    _trainer(tmp_path, callbacks=[ImageLogger(latent_map_size=20)]).fit(model, datamodule=data)
    assert [p.name.split("-")[0] for p in (tmp_path / "images").glob("*.png")] == ["latent_map"]
    explicit = ImageLogger(views=["reconstructions", "latent_map"])
    with pytest.raises(
        ValueError, match=r"reconstructions are pictures of images, but Autoencoder models feature vectors"
    ):
        _trainer(tmp_path, callbacks=[explicit]).fit(model, datamodule=data)


def test_conditional_vae_refuses_data_without_labels(tmp_path: Path) -> None:
    from ae_lightning import ConditionalVAE

    root = write_image_folder(tmp_path / "flat", classes=(), per_class=20, size=8)
    model = ConditionalVAE(input_shape=(3, 8, 8), latent_dim=2, hidden_dims=[8])
    with pytest.raises(
        ValueError, match=r"labels 0..9 \(num_classes\), but the train split's labels range over -1..-1"
    ):
        _trainer(tmp_path).fit(model, datamodule=ImageFolderDataModule(str(root)))


def test_a_missing_data_path_leaves_no_run_folder(tmp_path: Path) -> None:
    from tiny_runs import run_cli

    missing = tmp_path / "photos"  # a config that sets image_size reads no image before the trainer starts
    args = ["--config", "configs/photo_ae_f8_64.yaml", "--data.init_args.data_dir", str(missing)]
    with pytest.raises(ValueError, match=f"--data datamodules.ImageFolderDataModule: {missing} does not exist"):
        run_cli("fit", *args, "--trainer.default_root_dir", str(tmp_path))
    assert [path.name for path in tmp_path.iterdir()] == []
    # the configs' relative data/photos/train: named with the folder it was looked for in
    with pytest.raises(ValueError, match=f"data/photos/train does not exist in the working folder {Path.cwd()}$"):
        run_cli("fit", "--config", "configs/photo_ae_f8_64.yaml", "--trainer.default_root_dir", str(tmp_path))


@pytest.mark.parametrize(
    "config",
    ["photos/kl_f8", "photos/vqgan_f8", "photo_ae_f8_64", "photo_ae_f8_256", "photo_vae_f8_64", "photo_vae_f8_256"],
)
def test_the_photo_configs_train_on_the_photo_sets_training_crops_alone(
    config: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # kl_f8 and vqgan_f8 read data/photos, whose train/ and heldout/ became two classes: held-out photos trained on.
    import yaml
    from tiny_runs import ROOT

    data = yaml.safe_load((ROOT / "configs" / f"{config}.yaml").read_text())["data"]
    assert data["class_path"] == "datamodules.ImageFolderDataModule"
    photos = tmp_path / "data" / "photos"  # as scripts/make_photo_set.py data/photos writes it
    write_image_folder(photos / "train", classes=(), per_class=6, size=8)  # pixels < 100
    (photos / "heldout").mkdir()
    for i in range(2):
        Image.new("RGB", (8, 8), (250, 250, 250)).save(photos / "heldout" / f"{i:03d}.png")
    (photos / "photos.json").write_text("{}")
    monkeypatch.chdir(tmp_path)
    arrays = ImageFolderDataModule(**data["init_args"]).arrays
    images, labels = arrays.train
    assert arrays.class_names is None and (labels == UNLABELED).all() and len(images) == 6
    assert images.max() < 150  # no held-out (white) image among them
    if arrays.test is not None:  # the held-out photographs, if the config tests on them
        assert len(arrays.test[0]) == 2 and arrays.test[0].min() > 200


@pytest.mark.parametrize("setting", ["data_dir", "test_dir", "path", "labels", "interactions", "test_path"])
def test_a_missing_data_path_is_named_as_the_datamodule_is_built(setting: str, tmp_path: Path) -> None:
    # On construction, so that every process of a DDP run stops (Lightning runs prepare_data on one process per node).
    photos = write_image_folder(tmp_path / "photos", per_class=2, size=8)
    table, ratings = tmp_path / "table.npz", tmp_path / "ratings.csv"
    np.savez(table, x=np.zeros((4, 3), np.float32))
    ratings.write_text("1,10,4\n")
    missing = tmp_path / "missing"
    build = {
        "data_dir": lambda: ImageFolderDataModule(str(missing)),
        "test_dir": lambda: ImageFolderDataModule(str(photos), test_dir=str(missing)),
        "path": lambda: ArrayDataModule(str(missing) + ".npz"),
        "labels": lambda: ArrayDataModule(str(table), labels=str(missing) + ".npy"),
        "interactions": lambda: InteractionsDataModule(str(missing) + ".csv"),
        "test_path": lambda: InteractionsDataModule(str(ratings), test_path=str(missing) + ".csv"),
    }
    with pytest.raises(FileNotFoundError, match=f"^{missing}(.npz|.npy|.csv)? does not exist$"):
        build[setting]()


# --- issue s54: a job's memory limit, EMNIST's splits, paths under ~, big-endian arrays -------------------------------
@pytest.mark.parametrize("version", ["v1", "v2"])
def test_the_memory_check_counts_the_memory_limit_of_the_jobs_cgroup(
    version: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A SLURM job's --mem (or a container's limit) caps a process below its machine's memory in a cgroup: on a 512 GB
    node the check let a 20 GB array through to a job allowed 16 GB, which the kernel then killed without a message."""
    import datamodules.checks as checks

    monkeypatch.setattr(os, "sysconf", lambda name: {"SC_PAGE_SIZE": 4096, "SC_PHYS_PAGES": 125_000_000}[name])
    job = "slurm/uid_1/job_1" if version == "v1" else "system.slice/slurmstepd.scope/job_1"
    root, name = (tmp_path / "memory", "memory.limit_in_bytes") if version == "v1" else (tmp_path, "memory.max")
    (root / job / "step_0").mkdir(parents=True)
    (root / job / name).write_text(f"{16 * 10**9}\n")
    (root / job / "step_0" / name).write_text("9223372036854771712\n" if version == "v1" else "max\n")  # no limit
    proc = tmp_path / "cgroup"
    proc.write_text(f"4:memory:/{job}/step_0\n1:cpu:/\n" if version == "v1" else f"0::/{job}/step_0\n")
    monkeypatch.setattr(checks, "PROC_CGROUP", proc, raising=False)
    monkeypatch.setattr(checks, "CGROUP_ROOT", tmp_path, raising=False)
    with pytest.raises(ValueError, match=r"images need about 20.0 GB of memory, more than half of the 16 GB this "
                       r"process may use \(its cgroup's memory limit"):  # fmt: skip
        checks.check_fits_memory(20 * 10**9, "images", "use a stream")
    checks.check_fits_memory(7 * 10**9, "images", "use a stream")  # within half of the job's memory
    (root / job / name).write_text("max\n" if version == "v2" else "9223372036854771712\n")  # a job without a limit
    checks.check_fits_memory(200 * 10**9, "images", "use a stream")


def test_each_emnist_split_is_its_own_dataset_for_the_feature_classifier(tmp_path: Path) -> None:
    """EMNIST's letters (27 classes) and digits (10) were both ``EMNIST``: one cached feature classifier, and the
    Frechet distance of letters computed with the digits' classifier without a word."""
    from ae_lightning.evaluation.feature_classifier import (
        ClassifierCNN,
        ClassifierRecord,
        check_classifier_data,
        default_classifier_path,
    )

    build = {split: TorchvisionDataModule("EMNIST", data_dir=str(tmp_path), dataset_kwargs={"split": split})
             for split in ("letters", "digits")}  # fmt: skip
    assert default_classifier_path(build["letters"]) != default_classifier_path(build["digits"])
    digits = build["digits"]
    record = ClassifierRecord(ClassifierCNN((1, 28, 28), 10), tmp_path / "c.pt", 0.9, digits.dataset_name,
                              digits.data_source, 40, 1, 0)  # fmt: skip
    with pytest.raises(ValueError, match=r"trained on EMNIST-split=digits, but the data are EMNIST-split=letters"):
        check_classifier_data(record, build["letters"])
    assert TorchvisionDataModule("CIFAR10", data_dir=str(tmp_path)).dataset_name == "CIFAR10"
    # a setting's value holding a slash names one file in the cache folder, not a path below it
    slashed = SimpleNamespace(dataset_name="LSUN-classes=['a/b_train']", data_source="torchvision")
    assert default_classifier_path(slashed).parent == default_classifier_path(digits).parent


def test_own_data_paths_under_home_as_a_yaml_config_writes_them(tmp_path: Path, monkeypatch) -> None:
    """``data_dir: ~/photos`` in a config (no shell expands it) was refused as not existing, though MNIST's and a
    torchvision dataset's ``data_dir: ~/data`` read the files there."""
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.chdir(write_image_folder(tmp_path / "photos", per_class=6, size=8))  # no folder named "~" here
    write_image_folder(tmp_path / "heldout", per_class=6, size=8)
    folder = ImageFolderDataModule("~/photos", test_dir="~/heldout", batch_size=4)
    folder.setup()
    assert folder.split_size("test") == 12 and folder.dataset_name == "photos"
    np.save(tmp_path / "x.npy", np.zeros((12, 4, 4), np.uint8))
    np.save(tmp_path / "y.npy", np.arange(12) % 2)
    arrays = ArrayDataModule("~/x.npy", labels="~/y.npy", batch_size=4)
    arrays.setup()
    assert arrays.dataset_name == "x" and arrays.arrays.train[1].tolist() == [0, 1] * 6


def test_big_endian_arrays_are_read_as_their_values(tmp_path: Path) -> None:
    """A big-endian array (astropy's FITS images, another machine's files) failed in torch ("given numpy array has
    byte order different from the native byte order"), naming no file."""
    images = np.arange(12 * 16).reshape(12, 4, 4) % 256
    np.save(tmp_path / "x.npy", images.astype(">u2"))
    np.save(tmp_path / "v.npy", images.reshape(12, 16).astype(">f8") / 7)
    np.save(tmp_path / "y.npy", (np.arange(12) % 3).astype(">i4"))
    dm = ArrayDataModule(str(tmp_path / "x.npy"), labels=str(tmp_path / "y.npy"))
    assert torch.equal(dm.arrays.train[0][:, 0], torch.from_numpy(images.astype(np.uint8)))
    assert dm.arrays.train[1].tolist() == [0, 1, 2] * 4
    vectors = ArrayDataModule(str(tmp_path / "v.npy")).arrays.train[0]
    assert torch.allclose(vectors, torch.from_numpy(images.reshape(12, 16) / 7).float())


def test_numpy_values_of_the_python_api_are_taken_or_refused_naming_the_argument(tmp_path: Path) -> None:
    # Labels picked with NumPy (np.unique(y)) and sizes computed with it reach the datamodule as NumPy values.
    np.save(tmp_path / "x.npy", np.random.default_rng(0).random((60, 4)).astype(np.float32))
    np.save(tmp_path / "y.npy", np.arange(60) % 3)
    files = {"path": str(tmp_path / "x.npy"), "labels": str(tmp_path / "y.npy")}
    given = ArrayDataModule(
        **files, classes=list(np.array([0, 1])), batch_size=np.int64(8), val_fraction=np.float32(0.25)
    )
    plain = ArrayDataModule(**files, classes=[0, 1], batch_size=8, val_fraction=0.25)
    given.setup("fit")
    plain.setup("fit")
    assert given.hparams.classes == [0, 1] and type(given.hparams.batch_size) is int
    assert set(given.splits["train"][1].tolist()) == {0, 1}
    assert given.split_size("train") == plain.split_size("train")
    refused = [
        (np.array([0, 1]), r"classes must be a sequence \(list or tuple\), got array\(\[0, 1\]\)"),
        (1, "classes must be a sequence"),
        ([0.0, 1.0], r"each of classes must be an integer >= 0, got \[0.0, 1.0\]"),
    ]
    for classes, expected in refused:
        with pytest.raises(ValueError, match=expected):
            ArrayDataModule(**files, classes=classes)
