"""Bad input to the datamodules found by using them as a user would (sessions 57 and 58)."""

from __future__ import annotations

import functools
import gzip
import json
import shutil
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from conftest import write_image_folder
from filelock import FileLock
from jsonargparse import ArgumentParser
from lightning.pytorch.core.saving import save_hparams_to_yaml
from torchvision.datasets import QMNIST

from datamodules import (
    ArrayDataModule,
    ImageFolderDataModule,
    InteractionsDataModule,
    MNISTDataModule,
    StreamingDataModule,
    TorchvisionDataModule,
    stream_prepare,
)
from datamodules.stream_prepare import prepare_stream
from datamodules.stream_store import StreamLocation, StreamManifest, read_manifest


def _ratings(path: Path, separator: str = ",") -> Path:
    """Twelve users with 4 to 7 rated items each, under a header."""
    lines = ["user,item,rating".replace(",", separator)]
    rows = [(user, item, 1 + item % 5) for user in range(12) for item in range(4 + user % 4)]
    lines += [separator.join(map(str, row)) for row in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_a_min_user_items_no_user_reaches_is_named_with_the_most_a_user_has(tmp_path: Path) -> None:
    # it was "val_users=0.1 of the 0 users of ... who can be drawn is 0 users: give a larger fraction, or a count"
    data = InteractionsDataModule(str(_ratings(tmp_path / "r.csv")), min_user_items=8)
    with pytest.raises(ValueError, match=r"r.csv: no user has min_user_items=8 interactions \(the most a user has is "
                       r"7\): lower min_user_items"):  # fmt: skip
        data.setup()
    rated = InteractionsDataModule(str(_ratings(tmp_path / "r.csv")), min_user_items=4, min_rating=4)
    with pytest.raises(ValueError, match=r"no user has min_user_items=4 interactions rated at least min_rating=4 "
                       r"\(the most a user has is 2\)"):  # fmt: skip
        rated.setup()


def test_a_file_of_another_separator_is_refused_naming_the_separators_read(tmp_path: Path) -> None:
    data = InteractionsDataModule(str(_ratings(tmp_path / "r.csv", separator=";")))
    with pytest.raises(ValueError, match=r"r.csv line 1: 'user;item;rating' has one field; expected user, item\[, "
                       r"rating\] separated by tabs, commas, '::' or spaces"):  # fmt: skip
        data.setup()


def test_classes_given_as_a_tuple_are_written_to_hparams_yaml_as_a_list_safe_load_reads(
    data_dir: Path, tmp_path: Path
) -> None:
    # it was "!!python/tuple [0, 1]", which yaml.safe_load refuses (ConstructorError)
    data = MNISTDataModule(data_dir=str(data_dir), classes=(0, 1))
    save_hparams_to_yaml(tmp_path / "hparams.yaml", data.hparams)
    assert yaml.safe_load((tmp_path / "hparams.yaml").read_text())["classes"] == [0, 1]


def test_a_manifest_count_of_the_wrong_type_is_named_with_its_file_key_and_value(tmp_path: Path) -> None:
    # it was "TypeError: '<' not supported between instances of 'str' and 'int'", from the first check of the split
    counts = {"train": "99", "val": 9, "test": 12}
    manifest = StreamManifest(16, 16, 3, "png", counts, {split: {} for split in counts}, fingerprint="0" * 64)
    (tmp_path / "manifest.json").write_text(json.dumps(asdict(manifest)))
    for split in counts:
        (tmp_path / split).mkdir()
        (tmp_path / split / "index.json").write_text("{}")
    with pytest.raises(ValueError, match=r"manifest.json: counts.train is '99', expected an integer >= 0; prepare"):
        StreamingDataModule(str(tmp_path)).setup()


@pytest.mark.parametrize("build", [MNISTDataModule, lambda root: TorchvisionDataModule("MNIST", data_dir=root)])
def test_a_truncated_idx_file_in_a_read_only_data_dir_is_named(
    build: Callable[[str], Any], data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # it was the download lock's "cannot take the download lock of data_dir": torchvision's reshape error made the
    # split count as missing. No lock can be taken in a read-only folder (faked: root writes into read-only folders).
    def refuse(*args: Any, **kwargs: Any) -> None:
        raise PermissionError(13, "Permission denied", str(data_dir / ".lock"))

    monkeypatch.setattr(FileLock, "acquire", refuse)
    path = data_dir / "MNIST" / "raw" / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(ValueError, match=r"train-images-idx3-ubyte is truncated or corrupt: it has \d+ bytes, but"):
        data = build(str(data_dir))
        data.prepare_data()
        data.setup()


def _write_qmnist(root: Path, n_train: int = 40, n_test: int = 20) -> Path:
    """A tiny QMNIST in ``root/QMNIST/raw``: its labels are 32-bit rows of 8 columns (class, NIST writer, ...)."""
    raw = root / "QMNIST" / "raw"
    raw.mkdir(parents=True)
    for part, n in (("train", n_train), ("test", n_test)):
        labels = np.stack([np.arange(n) % 10, *([1000 + np.arange(n)] * 7)], axis=1).astype(">i4")
        images = np.random.default_rng(n).integers(0, 256, (n, 28, 28), dtype=np.uint8)
        for name, array, code in (("images-idx3-ubyte", images, 8), ("labels-idx2-int", labels, 12)):
            shape = b"".join(int(size).to_bytes(4, "big") for size in array.shape)
            (raw / f"qmnist-{part}-{name}").write_bytes(bytes((0, 0, code, array.ndim)) + shape + array.tobytes())
    return raw


def test_qmnist_trains_on_the_class_column_of_its_labels_and_a_truncated_label_file_is_named(tmp_path: Path) -> None:
    # it was "labels must be a 1-D integer array, got torch.int64 (40, 8)"; a truncated label file, torch's "buffer
    # length (1282 bytes) after offset (12 bytes) must be a multiple of element size (4)", naming no file
    raw = _write_qmnist(tmp_path)
    data = TorchvisionDataModule("QMNIST", data_dir=str(tmp_path), val_fraction=0.25)
    data.setup()
    assert data.arrays.train[1].tolist() == [i % 10 for i in range(40)]
    assert data.arrays.test[1].tolist() == [i % 10 for i in range(20)]
    labels = raw / "qmnist-train-labels-idx2-int"
    labels.write_bytes(labels.read_bytes()[:-10])
    refusal = r"qmnist-train-labels-idx2-int is truncated or corrupt: it has 1282 bytes, but its header \(shape \(40, 8"
    with pytest.raises(ValueError, match=refusal):
        TorchvisionDataModule("QMNIST", data_dir=str(tmp_path)).setup()


def test_a_link_to_a_folder_that_holds_it_is_refused_naming_it(tmp_path: Path) -> None:
    # it was 246 images from 6 files (os.walk follows the loop until the path is too long), cat/up/dog/... as cats
    root = write_image_folder(tmp_path / "photos", per_class=3)
    (root / "cat" / "up").symlink_to(root)
    refusal = r"photos/cat/up is a link to .*photos, a folder that holds it: .*; remove the link"
    with pytest.raises(ValueError, match=refusal):
        ImageFolderDataModule(str(root)).setup()
    (root / "cat" / "up").unlink()
    (root / "cat" / "more").symlink_to(root / "dog")  # a link elsewhere is followed, as torchvision follows it
    ImageFolderDataModule(str(root), val_fraction=0.2, test_fraction=0.2).setup()


def test_a_test_path_holding_every_user_is_refused_naming_it(tmp_path: Path) -> None:
    # MovieLens-100K's ua.base/ua.test: it was "val_users=0.1 of the 0 users of ua.base who can be drawn is 0 users:
    # give a larger fraction, or a count", a fix that cannot help
    lines = _ratings(tmp_path / "r.csv").read_text().splitlines()[1:]
    (tmp_path / "ua.base").write_text("".join(f"{line}\n" for k, line in enumerate(lines) if k % 4))
    (tmp_path / "ua.test").write_text("".join(f"{line}\n" for k, line in enumerate(lines) if k % 4 == 0))
    data = InteractionsDataModule(str(tmp_path / "ua.base"), test_path=str(tmp_path / "ua.test"), min_user_items=3)
    with pytest.raises(
        ValueError,
        match=r"every user of .*ua.base with min_user_items=3 interactions is a test user of "
        r".*ua.test, but validation users are drawn from the others: give a test_path that holds some",
    ):
        data.setup()


def test_a_stream_published_while_a_second_prepare_encodes_is_not_replaced_without_overwrite(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # two prepares of one new output: the second passed the check before any work while the first still wrote, then
    # took the lock once the first had published, and replaced its stream without --overwrite
    images = write_image_folder(tmp_path / "images", per_class=6, size=8)
    first = prepare_stream(str(images), str(tmp_path / "first"), chunk_size=4)
    write_split = stream_prepare._write_split

    def first_publishes(*args: Any, **kwargs: Any) -> Any:
        if not (tmp_path / "stream").exists():
            shutil.copytree(tmp_path / "first", tmp_path / "stream")
        return write_split(*args, **kwargs)

    monkeypatch.setattr(stream_prepare, "_write_split", first_publishes)
    with pytest.raises(FileExistsError, match=r"stream holds a stream already; pass --overwrite to replace it"):
        prepare_stream(str(images), str(tmp_path / "stream"), chunk_size=2)
    assert read_manifest(StreamLocation(str(tmp_path / "stream"))).fingerprint == first.fingerprint
    assert sorted(path.name for path in tmp_path.iterdir()) == ["first", "images", "stream"]


def test_a_torchvision_dataset_reads_each_split_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # it read each split twice: once in prepare_data to see whether it was there, again in load_arrays
    _write_qmnist(tmp_path)
    opened: list[bool] = []
    init = QMNIST.__init__

    @functools.wraps(init)  # the datamodule reads its signature
    def counting_init(self: QMNIST, *args: Any, **kwargs: Any) -> None:
        opened.append(kwargs.get("train"))
        init(self, *args, **kwargs)

    monkeypatch.setattr(QMNIST, "__init__", counting_init)
    data = TorchvisionDataModule("QMNIST", data_dir=str(tmp_path), val_fraction=0.25)
    data.prepare_data()
    data.setup()
    assert sorted(opened) == [False, True]


def _refuse_locks(monkeypatch: pytest.MonkeyPatch) -> None:
    """No lock can be taken, as in a read-only folder (faked: root writes into read-only folders)."""

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(FileLock, "acquire", refuse)


def test_a_corrupt_cifar_file_in_a_read_only_data_dir_is_named(data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # it was "cannot take the download lock of data_dir": the file torchvision would download again was not named
    _refuse_locks(monkeypatch)
    batch = data_dir / "cifar-10-batches-py" / "data_batch_2"
    batch.write_bytes(batch.read_bytes()[:-1])
    with pytest.raises(ValueError, match=r"data_batch_2 is not the published file \(its MD5 sum is not \w+"):
        TorchvisionDataModule("CIFAR10", data_dir=str(data_dir)).prepare_data()
    shutil.rmtree(data_dir / "cifar-10-batches-py")
    (data_dir / "cifar-10-python.tar.gz").write_bytes(b"not the archive")
    with pytest.raises(ValueError, match=r"cifar-10-python.tar.gz is not the published file \(its MD5"):
        TorchvisionDataModule("CIFAR10", data_dir=str(data_dir)).prepare_data()


@pytest.mark.parametrize("build", [MNISTDataModule, lambda root: TorchvisionDataModule("MNIST", data_dir=root)])
def test_mnist_given_only_as_archives_in_a_read_only_data_dir_is_named(
    build: Callable[[str], Any], data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # it was "cannot take the download lock of data_dir", naming neither the archives nor what to do with them
    _refuse_locks(monkeypatch)
    for path in sorted((data_dir / "MNIST" / "raw").iterdir()):
        with gzip.open(f"{path}.gz", "wb") as archive:
            archive.write(path.read_bytes())
        path.unlink()
    with pytest.raises(ValueError, match=r"raw/train-images-idx3-ubyte.gz (is compressed|is not the published file)"):
        data = build(str(data_dir))
        data.prepare_data()
        data.setup()


def test_qmnist_compat_false_is_refused_naming_the_setting(tmp_path: Path) -> None:
    # it was accepted, and the model trained on the class column all the same
    _write_qmnist(tmp_path)
    with pytest.raises(ValueError, match=r"dataset_kwargs compat=False of QMNIST"):
        TorchvisionDataModule("QMNIST", data_dir=str(tmp_path), dataset_kwargs={"compat": False})
    TorchvisionDataModule("QMNIST", data_dir=str(tmp_path), dataset_kwargs={"compat": True}).setup()


def test_a_fraction_of_users_given_to_the_command_is_dumped_as_given_not_as_0() -> None:
    # the dump (config.yaml, and the command's own reparse) wrote --data.test_users 0.2 as 0, refused as "got 0"
    parser = ArgumentParser(exit_on_error=False)
    parser.add_class_arguments(InteractionsDataModule, "data")
    config = parser.parse_args(["--data.path", "r.csv", "--data.val_users", "3", "--data.test_users", "0.2"])
    dumped = yaml.safe_load(parser.dump(config))["data"]
    assert (dumped["val_users"], dumped["test_users"]) == (3, 0.2)


def test_classes_absent_from_the_data_are_named_with_the_file_not_its_hash(tmp_path: Path) -> None:
    # it was "classes [2] do not occur in the files-6388642f training data"
    np.save(tmp_path / "x.npy", np.zeros((12, 4, 4), dtype=np.uint8))
    np.save(tmp_path / "y.npy", np.arange(12) % 2)
    data = ArrayDataModule(str(tmp_path / "x.npy"), labels=str(tmp_path / "y.npy"), classes=[2])
    with pytest.raises(
        ValueError, match=r"classes \[2\] do not occur in the training data of \S+x.npy \(labels: \[0, 1\]"
    ):
        data.setup()


def test_a_stream_given_as_a_path_object_is_prepared_and_read(tmp_path: Path) -> None:
    # they were "AttributeError: 'PosixPath' object has no attribute 'startswith'" and "TypeError: argument of type
    # 'PosixPath' is not iterable"; the other datamodules take a Path
    np.save(tmp_path / "x.npy", np.arange(12 * 16, dtype=np.uint8).reshape(12, 4, 4))
    np.save(tmp_path / "y.npy", np.arange(12) % 2)
    prepare_stream(tmp_path / "x.npy", tmp_path / "stream", labels=tmp_path / "y.npy")
    data = StreamingDataModule(tmp_path / "stream", num_workers=0)
    data.setup("fit")
    assert data.input_shape == (1, 4, 4) and data.hparams.input_dir == str(tmp_path / "stream")
