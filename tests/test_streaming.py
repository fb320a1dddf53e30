"""Streams: ``ae-lightning-prepare`` and ``StreamingDataModule`` on tiny image folders the tests write.

The resume tests check the two traps of litdata under Lightning: a loader position that is not restored when a
datamodule resumes (litData #775; Lightning restores loader states only inside an epoch), and one skipped when
``configure_optimizers`` reads ``trainer.estimated_stepping_batches`` (Lightning #20550).
"""

from __future__ import annotations

import copy
import json
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import numpy as np
import pytest
import torch
from conftest import write_image_folder
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from litdata import StreamingDataLoader, StreamingDataset
from test_evaluation import load_script
from tiny_runs import (
    ROOT,
    TINY_MODEL,
    EndsProcessGroup,
    command,
    last_checkpoint,
    run_cli,
    run_subprocess,
    subprocess_env,
)

from ae_lightning.evaluation import driver as evaluation
from ae_lightning.lightning_internals import stored_loader_states
from datamodules import StreamingDataModule, stream_prepare
from datamodules.stream_prepare import _write_split, decode, prepare_stream
from datamodules.stream_store import StreamLocation, read_manifest
from datamodules.streaming import EvaluationShard, ImageStream, StreamLoader

TRAIN_BATCHES = 7  # 99 training images of the 120 (12 test, 9 val), batches of 16


@pytest.fixture(scope="module")
def stream(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("stream")
    write_image_folder(root / "images", per_class=60, size=20)
    prepare_stream(str(root / "images"), str(root / "stream"), size=16, chunk_size=16, num_workers=2)
    return root / "stream"


def test_prepare_writes_seeded_splits_that_the_datamodule_serves_as_batches(stream: Path) -> None:
    manifest = json.loads((stream / "manifest.json").read_text())
    assert manifest["counts"] == {"train": 99, "val": 9, "test": 12}
    assert (manifest["height"], manifest["width"], manifest["channels"]) == (16, 16, 3)
    assert manifest["class_names"] == ["cat", "dog"]
    dm = StreamingDataModule(str(stream), image_size=12, batch_size=16, num_workers=0)
    assert dm.input_shape == (3, 12, 12)
    dm.setup("fit")
    loader = dm.train_dataloader()
    assert len(loader) == TRAIN_BATCHES
    epochs = []
    for epoch in (0, 1):
        loader.set_epoch(epoch)
        batches = list(loader)
        x, labels, indices = batches[0]
        assert x.shape == (16, 3, 12, 12) and x.dtype == torch.float32 and 0 <= x.min() and x.max() <= 1
        assert labels.dtype == torch.int64 and set(labels.tolist()) <= {0, 1}
        epochs.append(torch.cat([index for _, _, index in batches]))
        assert sorted(epochs[-1].tolist()) == list(range(99))  # one pass over the split
    assert not torch.equal(epochs[0], epochs[1])  # reshuffled
    # validation: every image whole (centre crop), in stored order, no flip
    x, labels, indices = next(iter(dm.val_dataloader()))
    assert indices.tolist() == list(range(9)) and torch.equal(x, next(iter(dm.val_dataloader()))[0])


def test_training_batches_of_a_class_folder_stream_mix_the_classes(tmp_path: Path) -> None:
    # the train split is stored in a seeded random order: litdata's chunk-and-window shuffle alone, over chunks of
    # one class each, gave batches of one or two classes
    classes = ("a", "b", "c", "d")
    write_image_folder(tmp_path / "images", classes=classes, per_class=16, size=8)
    prepare_stream(str(tmp_path / "images"), str(tmp_path / "stream"), chunk_size=8, encoding="raw")
    loader = StreamingDataModule(str(tmp_path / "stream"), batch_size=8, num_workers=0, hflip=False)
    distinct = [len(set(labels.tolist())) for _, labels, _ in loader.train_dataloader()]
    assert sum(distinct) / len(distinct) >= 3, distinct  # a uniform shuffle: 3.6 classes in a batch of 8


def test_prepare_takes_records_only_a_bounded_window_ahead_of_the_writer_and_keeps_their_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Executor.map submitted every record at once (a Future per image, ~2 GB for ImageNet) before writing any
    from litdata.streaming.writer import BinaryWriter

    written, ahead = [], []
    setitem = BinaryWriter.__setitem__
    monkeypatch.setattr(BinaryWriter, "__setitem__", lambda self, i, item: (written.append(i), setitem(self, i, item)))

    def records():
        for i in range(60):
            ahead.append(i + 1 - len(written))  # taken and not yet written, counting this one
            yield i, i % 3

    def encoder(record):
        time.sleep(0.002 * (record[0] % 3))  # results finish out of order
        return {"image": np.full((1, 2, 2), record[0], np.uint8), "label": record[1]}

    _write_split(encoder, records(), tmp_path / "split", None, 16, num_threads=2)
    assert max(ahead) == 2 * stream_prepare.AHEAD_PER_THREAD, ahead
    stored = StreamingDataset(str(tmp_path / "split"))
    items = [stored[i] for i in range(60)]
    assert [(int(item["image"][0, 0, 0]), item["label"]) for item in items] == [(i, i % 3) for i in range(60)]


def test_a_checkpoint_trained_on_a_stream_is_scored_and_pictured_from_the_stream(
    stream: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AE_LIGHTNING_CACHE", str(tmp_path / "cache"))
    run_cli("fit", *_stream_args(stream, tmp_path, "--trainer.max_epochs", "1", "--data.num_workers", "0"))
    checkpoint = next(tmp_path.rglob("last.ckpt"))
    model, dm = evaluation.load_checkpoint(checkpoint)
    # the driver reads the stream in stored order, centre-cropped; a subset is seeded and kept in order
    everything = torch.cat([index for _, _, index in evaluation.split_loader(dm, "test", batch_size=5)])
    assert everything.tolist() == list(range(12))
    subset = [
        torch.cat([i for _, _, i in evaluation.split_loader(dm, "train", max_images=10, seed=s)]) for s in (0, 0, 1)
    ]
    assert len(subset[0]) == 10 and torch.equal(subset[0], subset[1]) and not torch.equal(subset[0], subset[2])
    assert subset[0].tolist() == sorted(subset[0].tolist())
    x, _ = evaluation.first_images(dm, "test", 4)
    assert x.shape == (4, 3, 12, 12)
    scores = load_script("evaluate").main([str(checkpoint), "--plots", str(tmp_path / "plots"), "--tsne_points", "12"])
    assert {"mse", "psnr", "ssim", "linear_probe", "knn"} <= set(scores)
    assert all(torch.isfinite(torch.tensor(value)) for value in scores.values())
    assert (tmp_path / "plots" / "reconstructions.png").is_file()
    # a labelled stream trains the feature classifier of the Frechet distances, found by evaluate.py by default
    trained = load_script("train_feature_classifier").main(
        ["--data", "StreamingDataModule", "--input_dir", str(stream), "--image_size", "12", "--epochs", "1"]
    )
    assert trained.network.input_shape == (3, 12, 12) and trained.train_images == 99
    scores = load_script("evaluate").main(
        [str(checkpoint), "--metrics", "mse", "--first_stage_metrics", "rfid_classifier"]
    )
    assert scores["rfid_classifier"] > 0


def test_augmentation_depends_on_seed_epoch_and_sample_only(stream: Path) -> None:
    def by_index(num_workers: int, epoch: int) -> dict[int, torch.Tensor]:
        loader = StreamingDataModule(str(stream), image_size=12, batch_size=16, num_workers=num_workers)
        loader = loader.train_dataloader()
        loader.set_epoch(epoch)
        return {int(i): image for x, _, indices in loader for i, image in zip(indices, x)}

    in_process, workers = by_index(0, 0), by_index(2, 0)
    assert all(torch.equal(in_process[i], workers[i]) for i in in_process)
    next_epoch = by_index(0, 1)
    assert sum(not torch.equal(in_process[i], next_epoch[i]) for i in in_process) > 50  # new crops and flips


# --- bad input ------------------------------------------------------------------------------------------------------
def test_a_stream_read_at_another_resolution_or_channel_count_is_refused(stream: Path) -> None:
    with pytest.raises(ValueError, match=r"holds 16x16 images .*manifest.json.*resolution=32"):
        _ = StreamingDataModule(str(stream), resolution=32).input_shape
    with pytest.raises(ValueError, match=r"holds 3-channel images .*channels=1"):
        _ = StreamingDataModule(str(stream), channels=1).input_shape
    with pytest.raises(ValueError, match=r"image_size=24 crops .* 16x16 images"):
        _ = StreamingDataModule(str(stream), image_size=24).input_shape
    assert StreamingDataModule(str(stream), image_size=24, augment="resize").input_shape == (3, 24, 24)


def test_a_folder_too_large_for_memory_even_at_its_image_size_is_refused_pointing_at_a_stream(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the memory guard of the in-memory folder datamodule used to be skipped whenever image_size was set
    from datamodules import ImageFolderDataModule

    write_image_folder(tmp_path / "images", per_class=12, size=8)
    needed = 24 * 3 * 32 * 32 * (1 + 4)  # 24 images resized to 32x32: uint8 pixels and the loaders' float copy
    pages = needed // 4096  # a machine with about that much memory: more than half of it is needed
    monkeypatch.setattr("os.sysconf", lambda name: {"SC_PAGE_SIZE": 4096, "SC_PHYS_PAGES": pages}[name])
    folder = ImageFolderDataModule(str(tmp_path / "images"), image_size=32, num_workers=0)
    with pytest.raises(ValueError, match=r"24 images resized to image_size=32 .* more than half .*: set a smaller "
                       r"--data.image_size, or write them as a stream with ae-lightning-prepare"):  # fmt: skip
        folder.setup("fit")
    ImageFolderDataModule(str(tmp_path / "images"), image_size=8, num_workers=0).setup("fit")  # 16 times less: fits


BAD_PREPARE_OPTIONS = [
    (["--size", "0"], "argument --size: must be an integer >= 1, got 0"),
    (["--encoding", "jpeg", "--quality", "101"], "argument --quality: must be an integer in [1, 100], got 101"),
    (["--quality", "50"], "--quality 50 applies to --encoding jpeg, not png"),
    (["--val-fraction", "1.5"], "argument --val-fraction: must lie in (0, 1), got 1.5"),
    (["--test-fraction", "-0.1"], "argument --test-fraction: must lie in (0, 1), got -0.1"),
    (["--test-dir", "{tmp}", "--test-fraction", "0.2"], "--test-fraction 0.2 holds out a test split from a source"),
    (["--seed", "-1"], "argument --seed: must be an integer in [0, 4294967295], got -1"),
    (["--chunk-bytes", "64 parsecs"], "argument --chunk-bytes: must be a positive number of bytes, alone or with"),
    (["--chunk-size", "0"], "argument --chunk-size: must be an integer >= 1, got 0"),
    (["--chunk-size", "4", "--chunk-bytes", "1MB"], "--chunk-bytes 1000000 and --chunk-size exclude each other"),
    (["--num-workers", "-2"], "argument --num-workers: must be an integer >= 1, got -2"),
    (["--test-dir", "{tmp}/missing"], "--test-dir {tmp}/missing is no folder: expected the folder of the test"),
    (["--labels", "y"], "--labels y applies to a .npy/.npz/.pt array file only; the source {tmp}/images is an"),
    (["--data-dir", "{tmp}"], "--data-dir {tmp} applies to a torchvision source, not an image folder"),
    (["--dataset-kwargs", "[letters]"], "argument --dataset-kwargs: expected a mapping such as '{{split: balanced}}'"),
    (["--dataset-kwargs", "{{split: letters}}"], "--dataset-kwargs {{'split': 'letters'}} applies to a torchvision"),
    (["--test-dir", "{tmp}/images"], "--test-dir {tmp}/images is the training folder {tmp}/images: the model would"),
]


@pytest.mark.parametrize("options, message", BAD_PREPARE_OPTIONS, ids=[" ".join(o) for o, _ in BAD_PREPARE_OPTIONS])
def test_a_bad_prepare_option_is_refused_naming_the_option_the_value_and_what_is_expected(
    tmp_path: Path, capsys: pytest.CaptureFixture, options: list[str], message: str
) -> None:
    write_image_folder(tmp_path / "images", per_class=6, size=4)
    argv = [str(tmp_path / "images"), str(tmp_path / "stream"), *(option.format(tmp=tmp_path) for option in options)]
    with pytest.raises((SystemExit, ValueError, FileNotFoundError)) as refused:
        stream_prepare.main(argv)
    refusal = capsys.readouterr().err if refused.type is SystemExit else str(refused.value)  # argparse's, or raised
    assert message.format(tmp=tmp_path) in refusal
    assert not (tmp_path / "stream").exists()


def test_a_bad_alpha_is_refused_and_a_torchvision_sample_with_transparent_pixels_is_treated_as_a_file_is(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from PIL import Image

    from datamodules import ImageFolderDataModule

    images = write_image_folder(tmp_path / "images", per_class=6, size=4)
    with pytest.raises(ValueError, match=r"alpha must be one of 'refuse', 'white', 'black', got 'grey'"):
        prepare_stream(str(images), str(tmp_path / "stream"), alpha="grey")
    with pytest.raises(ValueError, match=r"alpha must be one of 'refuse', 'white', 'black', got 'grey'"):
        ImageFolderDataModule(str(images), alpha="grey")
    np.save(tmp_path / "x.npy", np.zeros((12, 4, 4, 3), np.uint8))
    for source, alpha, refusal in (
        (images, "grey", "argument --alpha: invalid choice: 'grey' (choose from "),
        (tmp_path / "x.npy", "white", "--alpha white applies to image files and torchvision datasets"),
    ):
        with pytest.raises(SystemExit):
            stream_prepare.main([str(source), str(tmp_path / "stream"), "--alpha", alpha])
        assert refusal in capsys.readouterr().err
    assert not (tmp_path / "stream").exists()
    # a torchvision dataset's PIL image (e.g. from its own files) goes through the same check as an image file
    icon = Image.new("RGBA", (4, 4), (9, 99, 199, 0))
    icon.paste((10, 20, 30, 255), (0, 2, 4, 4))
    with pytest.raises(ValueError, match=r"sample 0 of list has transparent pixels"):
        stream_prepare.ImageEncoder("torchvision", [(icon, 0)], 3, None, "raw")((0, 0))
    stored = stream_prepare.ImageEncoder("torchvision", [(icon, 0)], 3, None, "raw", alpha="white")((0, 0))["image"]
    expected = np.full((3, 4, 4), 255, np.uint8)
    expected[:, 2:] = np.array([10, 20, 30])[:, None, None]
    assert np.array_equal(stored, expected)


def test_prepare_checks_python_callers_alike_and_takes_chunk_bytes_with_or_without_a_unit(tmp_path: Path) -> None:
    write_image_folder(tmp_path / "images", per_class=6, size=4)
    with pytest.raises(ValueError, match=r"size must be an integer >= 1, got 0"):
        prepare_stream(str(tmp_path / "images"), str(tmp_path / "stream"), size=0)
    with pytest.raises(ValueError, match=r"chunk_bytes '1MB' and chunk_size 4 exclude each other: set one"):
        prepare_stream(str(tmp_path / "images"), str(tmp_path / "stream"), chunk_bytes="1MB", chunk_size=4)
    for chunk_bytes in ("1000", "1.5kb"):  # litdata's parser refused a number without a unit
        stream_prepare.main([str(tmp_path / "images"), str(tmp_path / chunk_bytes), "--chunk-bytes", chunk_bytes])
        assert read_manifest(StreamLocation(str(tmp_path / chunk_bytes))).counts == {"train": 10, "val": 1, "test": 1}


def test_overwrite_replaces_only_a_stream_never_the_source_or_other_files(tmp_path: Path) -> None:
    images = write_image_folder(tmp_path / "work" / "images", per_class=12, size=8)
    (tmp_path / "work" / "notes.txt").write_text("thesis")
    for output in (tmp_path / "work", images):
        with pytest.raises(FileExistsError, match=re.escape(f"output {output} holds the source {images}")):
            prepare_stream(str(images), str(output), chunk_size=8, overwrite=True)
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("thesis")
    with pytest.raises(FileExistsError, match=re.escape(f"output {other} is not a stream (no manifest.json)")):
        prepare_stream(str(images), str(other), chunk_size=8, overwrite=True)
    assert (tmp_path / "work" / "notes.txt").read_text() == (other / "notes.txt").read_text() == "thesis"
    assert len(list(images.rglob("*.png"))) == 24
    # an empty folder is written; a stream is replaced with --overwrite only
    (tmp_path / "empty").mkdir()
    first = prepare_stream(str(images), str(tmp_path / "empty"), chunk_size=8)
    with pytest.raises(FileExistsError, match="holds a stream already; pass --overwrite"):
        prepare_stream(str(images), str(tmp_path / "empty"), chunk_size=4)
    second = prepare_stream(str(images), str(tmp_path / "empty"), chunk_size=4, overwrite=True)
    assert first.fingerprint != second.fingerprint == StreamingDataModule(str(tmp_path / "empty")).manifest.fingerprint


def test_make_photo_set_replaces_only_a_photo_set_and_a_stream_it_wrote(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    script = load_script("make_photo_set")
    photos = write_image_folder(tmp_path / "photos", classes=(), per_class=4, size=20)
    monkeypatch.setattr(script, "find_photos", lambda install: sorted(photos.glob("*.png")))
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "thesis.txt").write_text("thesis")

    def run(out: Path, *stream: str) -> None:
        monkeypatch.setattr("sys.argv", ["make_photo_set.py", str(out), "--crop", "8", "--crops-per-photo", "6",
                                         "--photo-side", "16", *stream])  # fmt: skip
        script.main()

    with pytest.raises(SystemExit, match=re.escape(f"{notes} is not a photo set written by this script")):
        run(notes)
    with pytest.raises(FileExistsError, match=re.escape(f"output {notes} is not a stream")):
        run(tmp_path / "set", "--stream", str(notes))
    assert (notes / "thesis.txt").read_text() == "thesis"
    run(tmp_path / "set", "--stream", str(tmp_path / "set" / "stream"))  # a photo set and its stream: written again
    assert len(list((tmp_path / "set" / "train").glob("*.png"))) == 18
    assert StreamingDataModule(str(tmp_path / "set" / "stream")).manifest.counts["test"] == 6


def test_a_missing_or_corrupt_chunk_is_named(stream: Path, tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(stream, copy)
    chunk = copy / "train" / "chunk-0-2.bin"
    data = chunk.read_bytes()
    chunk.write_bytes(data[:-10])
    with pytest.raises(ValueError, match=f"chunk {chunk} is corrupt: {len(data) - 10} bytes"):
        StreamingDataModule(str(copy)).setup("fit")
    chunk.write_bytes(data[:-10] + bytes(10))  # same size, other content: found by hashing
    StreamingDataModule(str(copy)).setup("fit")
    with pytest.raises(ValueError, match=f"chunk {chunk} is corrupt: its content differs"):
        StreamingDataModule(str(copy), verify_chunks=True).setup("fit")
    chunk.unlink()
    with pytest.raises(FileNotFoundError, match=f"chunk {chunk} is missing"):
        StreamingDataModule(str(copy)).setup("fit")
    StreamingDataModule(str(copy)).setup("test")  # the test split is whole


def _first_val_batch_refusal(where: Path) -> str:
    """What reading the first validation batch of the stream at ``where`` raised, read in a forked process: a crash
    of the reader fails the assertion instead of the test run."""
    import multiprocessing

    def read(out: str) -> None:
        try:
            next(iter(StreamingDataModule(str(where), num_workers=0).val_dataloader()))
            Path(out).write_text("read without error")
        except Exception as error:  # noqa: BLE001 - the test compares the type and message
            Path(out).write_text(f"{type(error).__name__}: {error}")

    out = where.parent / "refusal.txt"
    child = multiprocessing.get_context("fork").Process(target=read, args=(str(out),))
    child.start()
    child.join(60)
    assert child.exitcode == 0, f"the reader died (exit code {child.exitcode})"
    return out.read_text()


def test_a_chunk_damaged_in_place_is_named_when_read_not_a_crash(stream: Path, tmp_path: Path) -> None:
    # a chunk of the recorded size with other bytes (caught at setup by verify_chunks only): torchvision's PNG decoder
    # killed the reader with a segmentation fault on a damaged image, and a damaged sample table gave a bare
    # struct.error, neither naming the split or the sample
    shutil.copytree(stream, tmp_path / "copy")
    chunk = tmp_path / "copy" / "val" / "chunk-0-0.bin"
    data = chunk.read_bytes()
    idat = data.index(b"IDAT")  # the first image's pixel data
    chunk.write_bytes(data[: idat + 20] + b"\xff" * 8 + data[idat + 28 :])
    assert re.fullmatch(
        rf"ValueError: {re.escape(str(tmp_path / 'copy' / 'val'))}: sample 0 is not a readable image \(.*CRC.*\); "
        r"corrupt chunk.*",
        _first_val_batch_refusal(tmp_path / "copy"),
    )
    chunk.write_bytes(data[:8] + b"\xff" * 8 + data[16:])  # the offsets of the chunk's first samples
    refusal = _first_val_batch_refusal(tmp_path / "copy")
    assert refusal.startswith(f"ValueError: {tmp_path / 'copy' / 'val'}: sample 0 could not be read from its chunk ")


def test_a_split_without_its_index_is_named_at_setup(stream: Path, tmp_path: Path) -> None:
    # a copy cut short (rsync copies a split's chunks before its index.json) passed setup, then failed in litdata when
    # validation began, with a hint at litdata.complete_dataset
    shutil.copytree(stream, tmp_path / "copy")
    index = tmp_path / "copy" / "val" / "index.json"
    index.unlink()
    with pytest.raises(FileNotFoundError, match=re.escape(f"{index} is missing from stream {tmp_path / 'copy'}")):
        StreamingDataModule(str(tmp_path / "copy")).setup("fit")


def test_a_misspelt_or_unreachable_uri_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError, match=r"stream s4://bucket/photos: unknown scheme s4://"):
        StreamingDataModule("s4://bucket/photos")
    with pytest.raises(ValueError, match=r"stream s3://: no bucket; expected s3://<bucket>\[/<prefix>\]"):
        StreamingDataModule("s3://")  # was a KeyError at the first read
    with pytest.raises(ValueError, match=r"stream '': expected a local folder or an s3://<bucket>"):
        StreamingDataModule("")  # was the current folder
    assert StreamLocation("/").join("train") == "/train"  # was train, under the current folder
    with pytest.raises(FileNotFoundError, match=f"stream {tmp_path / 'photso'} does not exist"):
        _ = StreamingDataModule(str(tmp_path / "photso")).input_shape
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")  # any credentials: the endpoint answers no one
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    unreachable = StreamingDataModule("s3://bucket/photos", storage_options={"endpoint_url": "http://127.0.0.1:9"})
    with pytest.raises(ConnectionError, match=r"stream s3://bucket/photos: could not reach"):
        _ = unreachable.input_shape


def test_a_stream_under_the_home_folder_is_found_from_a_config(
    stream: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # input_dir: ~/streams/photos in a YAML config (no shell expands it) was refused as a stream that does not exist,
    # where every other datamodule expands ~ as torchvision does
    shutil.copytree(stream, tmp_path / "streams" / "photos")
    monkeypatch.setenv("HOME", str(tmp_path))
    dm = StreamingDataModule("~/streams/photos", image_size=12, num_workers=0)
    assert dm.input_shape == (3, 12, 12) and dm.hparams.input_dir == "~/streams/photos"
    dm.setup("fit")
    assert len(next(iter(dm.val_dataloader()))[0]) == 9


class FolderBucket:
    """An object store's provider (litdata's interface) over a local folder; uploads fail after ``uploads_left``.
    ``log`` lists the uploads and deletions, as ``("upload" | "delete", path under the bucket)``."""

    def __init__(self, root: Path) -> None:
        self.root, self.uploads_left, self.log = root, None, []

    def local(self, uri: str) -> Path:
        return self.root / uri.split("://", 1)[1]

    def exists(self, uri: str) -> bool:
        return self.local(uri).exists()

    def upload_file(self, local: str, uri: str) -> None:
        if self.uploads_left == 0:
            raise OSError("connection reset")
        self.uploads_left = None if self.uploads_left is None else self.uploads_left - 1
        self.local(uri).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(local, self.local(uri))
        self.log.append(("upload", uri.split("://", 1)[1]))

    def download_file(self, uri: str, local: str) -> None:
        shutil.copy(self.local(uri), local)

    def delete_file_or_directory(self, uri: str) -> None:
        # as litdata's providers: every object whose key starts with ``uri`` (none is no error)
        key = uri.split("://", 1)[1]
        for path in [path for path in self.root.rglob("*") if path.is_file()]:
            if path.relative_to(self.root).as_posix().startswith(key):
                path.unlink()
        self.log.append(("delete", key))


def fake_bucket(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FolderBucket:
    """A :class:`FolderBucket` under ``tmp_path`` that every remote stream reads and writes, with temporary files
    under ``tmp_path/tmp``."""
    bucket = FolderBucket(tmp_path / "bucket")
    monkeypatch.setattr(StreamLocation, "_provider", lambda self: bucket)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    return bucket


def test_an_interrupted_remote_overwrite_reads_as_interrupted_and_leaves_no_staging_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the old manifest stayed while the new chunks were uploaded: a half-replaced stream read as complete
    bucket = fake_bucket(tmp_path, monkeypatch)
    write_image_folder(tmp_path / "images", per_class=10, size=20)
    prepare_stream(str(tmp_path / "images"), "s3://b/photos", size=16, chunk_size=8)
    bucket.uploads_left = 3
    with pytest.raises(ConnectionError, match="connection reset"):
        prepare_stream(str(tmp_path / "images"), "s3://b/photos", size=12, chunk_size=4, overwrite=True)
    with pytest.raises(FileNotFoundError, match="its prepare was interrupted"):
        read_manifest(StreamLocation("s3://b/photos"))
    assert not any((tmp_path / "tmp").iterdir())  # the staging folder is gone
    bucket.uploads_left = None
    prepare_stream(str(tmp_path / "images"), "s3://b/photos", size=12, chunk_size=4, overwrite=True)
    assert read_manifest(StreamLocation("s3://b/photos")).height == 12


def test_an_interrupted_prepare_is_detected_and_named(stream: Path, tmp_path: Path) -> None:
    import shutil

    # a local prepare killed before it published: only the staging folder exists
    (tmp_path / ".photos.partial" / "train").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match=r"prepare of it was interrupted and left .*\.photos\.partial"):
        _ = StreamingDataModule(str(tmp_path / "photos")).input_shape
    # an upload cut short: splits without the manifest, which is written last
    shutil.copytree(stream, tmp_path / "uploaded")
    (tmp_path / "uploaded" / "manifest.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"no manifest.json but holds the split\(s\) train, val, test"):
        _ = StreamingDataModule(str(tmp_path / "uploaded")).input_shape
    # preparing again replaces what the interrupted one left
    write_image_folder(tmp_path / "images", per_class=20, size=16)
    prepare_stream(str(tmp_path / "images"), str(tmp_path / "photos"), chunk_size=8)
    assert StreamingDataModule(str(tmp_path / "photos")).input_shape == (3, 16, 16)
    assert not (tmp_path / ".photos.partial").exists()


def test_resuming_on_another_dataset_is_refused_naming_both_fingerprints(stream: Path, tmp_path: Path) -> None:
    write_image_folder(tmp_path / "images", per_class=20, size=16)
    prepare_stream(str(tmp_path / "images"), str(tmp_path / "other"), chunk_size=8)
    saved = StreamingDataModule(str(stream)).state_dict()
    other = StreamingDataModule(str(tmp_path / "other"))
    theirs, ours = saved["fingerprint"], other.manifest.fingerprint
    refusal = f"fingerprint {theirs}, but {tmp_path / 'other'} has fingerprint {ours}"
    with pytest.raises(ValueError, match=refusal):
        other.load_state_dict(saved)
    with pytest.raises(ValueError, match=refusal):  # the command's check, before the run creates anything
        other.check_resume({"fingerprint": theirs}, world_size=1)


def test_resuming_a_checkpoint_of_in_memory_data_on_a_stream_names_that_data(stream: Path, tmp_path: Path) -> None:
    # the refusal called the in-memory loader's checksum the fingerprint of a stream
    from datamodules import ImageFolderDataModule

    images = ImageFolderDataModule(str(write_image_folder(tmp_path / "images", per_class=6, size=8)), batch_size=4)
    images.setup("fit")
    position = images.train_dataloader().state_dict()
    refusal = f"trained on in-memory data {position['source']}, but {stream} has fingerprint"
    with pytest.raises(ValueError, match=re.escape(refusal)):
        StreamingDataModule(str(stream)).check_resume(position, world_size=1)


def test_a_batch_size_that_leaves_ddp_ranks_no_batch_is_refused(stream: Path) -> None:
    # litdata gives each DDP rank whole batches of its share only: 2 x 64 > 99 samples left both ranks empty
    def setup(batch_size: int) -> None:
        dm = StreamingDataModule(str(stream), batch_size=batch_size)
        dm.trainer = SimpleNamespace(world_size=2, global_rank=0, loggers=[])
        dm.setup("fit")

    with pytest.raises(ValueError, match=r"--data.batch_size 64 x 2 processes exceeds the 99 samples of the train"):
        setup(64)
    setup(49)


@pytest.mark.parametrize(
    "subcommand, data, refusal",
    [
        ("fit", ["--data.batch_size", "64"], "--data.batch_size 64 x 2 processes exceeds the 99 samples"),
        ("validate", ["--data.input_dir", "small"], "small/val) of 1 samples cannot be shared by 2 processes"),
        ("test", ["--data.input_dir", "small"], "small/test) of 1 samples cannot be shared by 2 processes"),
    ],
)
def test_a_stream_that_ddp_processes_cannot_share_is_refused_before_the_run_writes_anything(
    stream: Path, tmp_path: Path, subcommand: str, data: list[str], refusal: str
) -> None:
    # refused in ``setup`` alone, these left an empty version_0 behind (and ddp_spawn ran its processes first)
    if "small" in data:  # 12 images: train 10, val 1, test 1
        write_image_folder(tmp_path / "images", classes=(), per_class=12, size=12)
        prepare_stream(str(tmp_path / "images"), str(tmp_path / "small"), num_workers=1)
        data = ["--data.input_dir", str(tmp_path / "small")]
    root = tmp_path / "run"
    args = [*_stream_args(stream, root, *data), "--trainer.strategy", "ddp_spawn", "--trainer.devices", "2",
            "--trainer.accelerator", "cpu", "--data.num_workers", "0"]  # fmt: skip
    with pytest.raises(ValueError, match=re.escape(refusal)):
        run_cli(subcommand, *args)
    assert not root.exists()


def test_a_split_the_trainer_never_reads_is_not_refused_for_ddp(stream: Path) -> None:
    # fit --trainer.limit_val_batches 0 on 10 processes was refused for its 9 val samples, a split it never reads
    dm = StreamingDataModule(str(stream), batch_size=4)
    for limit, stage in ((0, "fit"), (0.0, "validate")):
        dm.trainer = SimpleNamespace(world_size=10, global_rank=0, loggers=[], limit_val_batches=limit)
        dm.setup(stage)
    dm.trainer = None  # the command's check, before Lightning attaches the trainer
    dm.check_splits("fit", trainer=SimpleNamespace(world_size=10, limit_val_batches=0))
    for stage, limits in (("fit", {"limit_test_batches": 0}), ("test", {"limit_val_batches": 0})):  # others read
        with pytest.raises(ValueError, match=r"the (val|test) split \(\S+\) of (9|12) samples cannot be shared by 20"):
            dm.check_splits(stage, trainer=SimpleNamespace(world_size=20, **limits))


class EvaluationRecorder(L.LightningModule):
    """Writes the sample indices of each batch this rank reads from the val, test and predict loaders to
    ``<out>/<rank>.json``."""

    def __init__(self, out: str) -> None:
        super().__init__()
        self.out, self.net, self.val = out, torch.nn.Linear(1, 1), []

    def validation_step(self, batch, batch_idx: int) -> None:
        self.val.append(batch[2].tolist())

    def on_validation_epoch_end(self) -> None:
        dm = self.trainer.datamodule
        loaders = {"test": dm.test_dataloader(), "predict": dm.predict_dataloader()}
        read = {"val": self.val, **{split: [i.tolist() for _, _, i in loader] for split, loader in loaders.items()}}
        Path(self.out, f"{self.global_rank}.json").write_text(json.dumps(read))


def test_ddp_evaluation_reads_every_sample_once_in_as_many_batches_on_every_rank(stream: Path, tmp_path: Path) -> None:
    # litdata's len() of a split under DDP is one rank's share: the ranks read only the first ~half of each split
    dm = StreamingDataModule(str(stream), batch_size=4, num_workers=0, hflip=False, predict_split="train")
    trainer = L.Trainer(
        accelerator="cpu", devices=2, strategy="ddp_spawn", logger=False, enable_progress_bar=False,
        enable_model_summary=False, default_root_dir=tmp_path, callbacks=[EndsProcessGroup()],
    )  # fmt: skip
    trainer.validate(EvaluationRecorder(str(tmp_path)), datamodule=dm)
    ranks = [json.loads((tmp_path / f"{rank}.json").read_text()) for rank in (0, 1)]
    for split, size in {"val": 9, "test": 12, "predict": 99}.items():
        batches = [read[split] for read in ranks]
        assert len(batches[0]) == len(batches[1]) and all(map(len, batches[0] + batches[1])), split
        assert sorted(sum(batches[0] + batches[1], [])) == list(range(size)), split


def test_evaluation_shards_run_as_many_batches_on_every_rank_and_refuse_fewer_samples_than_processes(
    stream: Path,
) -> None:
    dm = StreamingDataModule(str(stream), num_workers=0)
    dataset = ImageStream(dm.location, "val", dm.manifest, None, shuffle=False, seed=0)
    # 9 samples in batches of 2 on 2 ranks: 5 / 4 samples, dealt one at a time they would take 3 / 2 batches
    shards = [EvaluationShard(dataset, rank, 2, batch_size=2) for rank in (0, 1)]
    assert [[len(batch) for batch in shard.batches] for shard in shards] == [[2, 3], [2, 2]]
    assert sorted(shards[0].rows + shards[1].rows) == list(range(9))
    with pytest.raises(ValueError, match=r"val\) of 9 samples cannot be shared by 10 processes, .* at most 9 process"):
        EvaluationShard(dataset, 0, 10, batch_size=2)


def test_a_ddp_train_split_whose_chunk_outgrows_an_epoch_is_refused_naming_the_chunks_and_the_fix(
    stream: Path, tmp_path: Path
) -> None:
    # litdata leaves out the tail of its chunk order under DDP: with one chunk, the same 19 of 99 samples every epoch
    write_image_folder(tmp_path / "images", per_class=60, size=20)
    prepare_stream(str(tmp_path / "images"), str(tmp_path / "one-chunk"), size=16, chunk_bytes="64MB")

    def setup(where: Path, world_size: int, batch_size: int) -> None:
        dm = StreamingDataModule(str(where), batch_size=batch_size, num_workers=2)
        dm.trainer = SimpleNamespace(world_size=world_size, global_rank=0, loggers=[])
        dm.setup("fit")

    refusal = (
        r"stored in 1 chunk\(s\) \(read by 2 processes x 2 worker\(s\)\), and chunk chunk-0-0.bin holds 99 samples, "
        r"more than the 80 that --data.batch_size 10 x 2 processes train .* leaves out the last 19 sample\(s\) .* "
        r"so 19 sample\(s\) of that chunk would be left out of every epoch. .*ae-lightning-prepare --chunk-size 20"
    )
    with pytest.raises(ValueError, match=refusal):
        setup(tmp_path / "one-chunk", 2, 10)
    setup(tmp_path / "one-chunk", 3, 11)  # 3 x 11 divides 99: nothing is left out
    setup(stream, 2, 10)  # chunks of 16: the samples left out change from epoch to epoch


def test_a_small_split_prepared_with_the_default_chunking_trains_under_ddp(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    # the default was litdata's 64MB chunks: one chunk of 99 samples, which DDP on 2 processes was refused
    write_image_folder(tmp_path / "images", per_class=60, size=20)
    stream_prepare.main([str(tmp_path / "images"), str(tmp_path / "stream"), "--size", "16"])
    dm = StreamingDataModule(str(tmp_path / "stream"), batch_size=10, num_workers=2)
    dm.trainer = SimpleNamespace(world_size=2, global_rank=0, loggers=[])
    dm.setup("fit")
    assert "(train 99 in 99 chunks, val 9 in 9 chunks, test 12 in 12 chunks; by default: at least 64 a split" in (
        capsys.readouterr().out
    )
    # a split of 6,400 samples in 64 chunks of 100; larger images: chunks of at most 64 MB at twice the raw size
    assert stream_prepare.default_chunk_size(6400, 3 * 16 * 16, "png") == 100
    assert stream_prepare.default_chunk_size(10**6, 3 * 256 * 256, "png") == 162  # 64e6 / (2 x 196,608 + 1,024)
    assert stream_prepare.default_chunk_size(10**6, 3 * 256 * 256, "raw") == 323  # 64e6 / (196,608 + 1,024)


def test_cache_dir_and_storage_options_are_refused_for_a_local_stream(stream: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=rf"cache_dir='{tmp_path}' applies to an s3://, gs:// or r2:// stream; "):
        StreamingDataModule(str(stream), cache_dir=str(tmp_path))
    with pytest.raises(ValueError, match=rf"storage_options=.*nowhere.* applies to .* {stream} is a local folder"):
        StreamingDataModule(str(stream), storage_options={"endpoint_url": "http://nowhere:1"})
    StreamingDataModule("s3://bucket/photos", cache_dir=str(tmp_path), storage_options={"endpoint_url": "http://x:1"})


def test_verify_chunks_is_refused_for_a_remote_stream_it_cannot_hash(tmp_path: Path) -> None:
    # it hashed local chunks only: on an s3:// stream the setting did nothing, without a word
    with pytest.raises(ValueError, match=r"verify_chunks hashes a local stream's chunks; s3://bucket/photos is remote"):
        StreamingDataModule("s3://bucket/photos", verify_chunks=True, cache_dir=str(tmp_path))


@pytest.mark.parametrize("setting, value, expected", [("seed", -1, "an integer in [0, 4294967295]"),
                                                      ("resolution", 0, "an integer >= 1")])  # fmt: skip
def test_a_seed_or_resolution_out_of_range_is_refused_when_the_datamodule_is_built(
    tmp_path: Path, setting: str, value: int, expected: str
) -> None:
    # a negative seed passed every check and failed at the first training batch, in litdata's shuffle, unnamed
    with pytest.raises(ValueError, match=re.escape(f"{setting} must be {expected}, got {value}")):
        StreamingDataModule(str(tmp_path), **{setting: value})


def test_a_resume_keeps_the_batch_size_inside_the_checkpoints_epoch_and_frees_it_at_its_end(stream: Path) -> None:
    def loader(batch_size: int) -> StreamLoader:
        return StreamingDataModule(str(stream), image_size=12, batch_size=batch_size, num_workers=0).train_dataloader()

    saved = loader(16)
    saved.set_epoch(0)
    batches = iter(saved)
    for _ in range(3):
        next(batches)
    with pytest.raises(ValueError, match="reached with --data.batch_size 16, this run has 64"):
        loader(64).load_state_dict(saved.state_dict())  # 3 of 7 batches: the larger batch would skip the rest
    list(batches)
    resumed, fresh = loader(8), loader(8)  # at the epoch's end, the next epoch starts afresh with any batch size
    resumed.load_state_dict(saved.state_dict())
    for epoch_loader in (resumed, fresh):
        epoch_loader.set_epoch(1)
    indices = [torch.cat([i for _, _, i in epoch_loader]) for epoch_loader in (resumed, fresh)]
    assert len(indices[0]) == 99 and torch.equal(indices[0], indices[1])


def test_a_position_resumes_on_a_copy_of_the_stream_and_a_changed_seed_inside_an_epoch_is_refused(
    stream: Path, tmp_path: Path
) -> None:
    # litdata refused a position saved under another input_dir (or cache_dir: a new SLURM job's) mid-run, and a
    # changed seed with its own message
    shutil.copytree(stream, tmp_path / "copy")

    def loader(where: Path, seed: int = 42) -> StreamLoader:
        module = StreamingDataModule(str(where), image_size=12, batch_size=16, num_workers=0, seed=seed)
        return module.train_dataloader()

    saved = loader(stream)
    saved.set_epoch(0)
    batches = iter(saved)
    for _ in range(3):
        next(batches)
    state = copy.deepcopy(saved.state_dict())
    rest = torch.cat([i for _, _, i in batches])
    moved = loader(tmp_path / "copy")
    moved.load_state_dict(state)
    moved.set_epoch(0)
    assert torch.equal(torch.cat([i for _, _, i in moved]), rest)
    refusal = "reached with --data.seed 42, this run has 7"
    with pytest.raises(ValueError, match=refusal):
        loader(stream, seed=7).load_state_dict(state)
    with pytest.raises(ValueError, match=refusal):  # the command's check, before the run creates anything
        StreamingDataModule(str(stream), batch_size=16, seed=7).check_resume(state, world_size=1)


# --- resuming: the litdata traps -------------------------------------------------------------------------------------
class IndexRecorder(L.LightningModule):
    """A linear autoencoder that records the sample indices it trains on; optionally a step-count schedule.

    Args:
        one_cycle: schedule the learning rate with ``OneCycleLR`` over ``trainer.estimated_stepping_batches``.
    """

    def __init__(self, one_cycle: bool = False) -> None:
        super().__init__()
        self.net = torch.nn.Linear(3 * 12 * 12, 3 * 12 * 12)
        self.one_cycle = one_cycle
        self.seen: list[list[int]] = []

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        x, _, indices = batch
        self.seen.append(indices.tolist())
        return torch.nn.functional.mse_loss(self.net(x.flatten(1)), x.flatten(1))

    def configure_optimizers(self):
        optimizer = torch.optim.SGD(self.parameters(), lr=0.01)
        if not self.one_cycle:
            return optimizer
        total = self.trainer.estimated_stepping_batches  # builds the training loader before the checkpoint loads
        return [optimizer], [torch.optim.lr_scheduler.OneCycleLR(optimizer, 0.1, total_steps=total)]


class Interrupted(Exception):
    pass


class StopAt(Callback):
    """Interrupts training at the start of global step ``step``, after the checkpoints of the steps before."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        if trainer.global_step >= self.step:
            raise Interrupted


class PlainItems(StreamingDataset):
    """Stream items as ``(image, label, index)``, read by litdata's own dataset and loader (as its README shows)."""

    def __getitem__(self, index):
        stored = super().__getitem__(index)
        return decode(stored["image"], 3)[:, :12, :12].float() / 255, stored["label"], index.index


class PlainLitdata(L.LightningDataModule):
    """litdata's loader returned as it is, to show that the tests meet the traps."""

    def __init__(self, stream: Path) -> None:
        super().__init__()
        self.stream = stream

    def train_dataloader(self) -> StreamingDataLoader:
        return StreamingDataLoader(PlainItems(str(self.stream / "train"), shuffle=True, seed=42), batch_size=16)


def _fit(datamodule, tmp_path: Path, one_cycle: bool, stop: int | None = None, ckpt: Path | None = None) -> list:
    model = IndexRecorder(one_cycle)
    callbacks = [ModelCheckpoint(tmp_path, save_last=True, every_n_train_steps=1, save_top_k=0)]
    callbacks += [StopAt(stop)] if stop is not None else []
    trainer = L.Trainer(
        max_epochs=2, callbacks=callbacks, logger=False, enable_progress_bar=False, enable_model_summary=False,
        num_sanity_val_steps=0, limit_val_batches=0, default_root_dir=tmp_path,
    )  # fmt: skip
    torch.manual_seed(0)
    if stop is None:
        trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt)
    else:
        with pytest.raises(Interrupted):
            trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt)
    return model.seen


# Stopped at step 5 the last checkpoint is mid-epoch (5 of 7 batches); at step 7, at the epoch's end, where Lightning
# does not restore loader states at all.
@pytest.mark.parametrize("one_cycle", [False, True], ids=["constant-lr", "one-cycle-lr"])
@pytest.mark.parametrize("stop", [5, 7], ids=["mid-epoch", "epoch-end"])
def test_a_resumed_datamodule_continues_at_the_next_sample(stream: Path, tmp_path: Path, one_cycle, stop) -> None:
    def module() -> StreamingDataModule:
        return StreamingDataModule(str(stream), image_size=12, batch_size=16, num_workers=0)

    reference = _fit(module(), tmp_path / "reference", one_cycle)
    assert len(reference) == 2 * TRAIN_BATCHES
    _fit(module(), tmp_path / "stopped", one_cycle, stop=stop)
    resumed = _fit(module(), tmp_path / "resumed", one_cycle, ckpt=tmp_path / "stopped" / "last.ckpt")
    assert resumed == reference[stop:]
    # The same resume with litdata's loader returned as it is loses the position: Lightning skips its restore when
    # configure_optimizers built the loader early.
    if one_cycle and stop == 5:
        plain = _fit(PlainLitdata(stream), tmp_path / "plain", one_cycle)
        _fit(PlainLitdata(stream), tmp_path / "plain-stopped", one_cycle, stop=stop)
        stopped = tmp_path / "plain-stopped" / "last.ckpt"
        plain_resumed = _fit(PlainLitdata(stream), tmp_path / "plain-resumed", one_cycle, ckpt=stopped)
        assert plain_resumed != plain[stop:], "the trap is gone upstream: the datamodule's own restore may go"


def test_an_epoch_ended_by_limit_train_batches_resumes_afresh_with_another_batch_size(
    stream: Path, tmp_path: Path
) -> None:
    # limit_train_batches ends Lightning's epoch after 3 of the loader's 7 batches: the checkpoint is at an epoch's end
    def fit(batch_size: int, epochs: int, root: Path, ckpt: Path | None = None) -> list:
        model = IndexRecorder()
        trainer = L.Trainer(
            max_epochs=epochs, limit_train_batches=3, limit_val_batches=0, logger=False, enable_progress_bar=False,
            enable_model_summary=False, callbacks=[ModelCheckpoint(root, save_last=True, save_top_k=0)],
        )  # fmt: skip
        datamodule = StreamingDataModule(str(stream), image_size=12, batch_size=batch_size, num_workers=0)
        trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt)
        return model.seen

    fit(16, 1, tmp_path / "first")
    state = stored_loader_states(torch.load(tmp_path / "first" / "last.ckpt", weights_only=False))[0]
    StreamingDataModule(str(stream), batch_size=8, seed=7).check_resume(state, world_size=1)  # the command's check
    resumed = fit(8, 2, tmp_path / "resumed", ckpt=tmp_path / "first" / "last.ckpt")
    assert resumed == fit(8, 2, tmp_path / "fresh")[3:]


# --- resuming after kill -9, with workers and with DDP ranks ----------------------------------------------------------
def _stream_args(stream: Path, root: Path, *extra: str) -> list[str]:
    return [
        "--config", str(ROOT / "configs" / "ae.yaml"), *TINY_MODEL, "--data", "StreamingDataModule",
        "--data.input_dir", str(stream), "--data.image_size", "12", "--data.batch_size", "16",
        "--trainer.default_root_dir", str(root), "--trainer.max_epochs", "2", "--trainer.enable_progress_bar", "false",
        "--trainer.enable_model_summary", "false", *extra,
    ]  # fmt: skip


def test_a_run_extended_from_its_last_checkpoint_at_an_epochs_end_trains_the_next_epochs_batches(
    stream: Path, tmp_path: Path
) -> None:
    # last.ckpt written after the epoch's validation: Lightning resumes it announcing the epoch after next.
    steps = ["--trainer.max_epochs", "-1", "--trainer.max_steps"]
    run_cli("fit", *_stream_args(stream, tmp_path / "reference", *steps, str(2 * TRAIN_BATCHES)))
    run_cli("fit", *_stream_args(stream, tmp_path / "extended", *steps, str(TRAIN_BATCHES)))
    run_cli("fit", *_stream_args(stream, tmp_path / "extended", *steps, str(2 * TRAIN_BATCHES), "--ckpt_path", "last"))
    resumed, expected = last_checkpoint(tmp_path / "extended"), last_checkpoint(tmp_path / "reference")
    assert resumed["global_step"] == expected["global_step"] == 2 * TRAIN_BATCHES
    for name, value in expected["state_dict"].items():
        assert torch.equal(resumed["state_dict"][name], value), f"{name} differs after extending the run"


DDP = ["--trainer.strategy", "ddp", "--trainer.accelerator", "cpu", "--trainer.devices", "2"]
# (extra arguments, checkpoint interval, step at whose start the run dies, steps in all): with 2 workers the epochs
# have 7 batches and the run dies after the checkpoint of step 12, 5 batches into epoch 1; with 2 ranks, litdata deals
# each 48 images (3 batches), and the run dies after the checkpoint of step 4, 1 batch into epoch 1.
KILL_CASES = {
    "2-workers": (["--data.num_workers", "2"], 4, 13, 2 * TRAIN_BATCHES),
    "2-ddp-ranks": ([*DDP, "--data.num_workers", "1"], 2, 5, 6),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", list(KILL_CASES))
def test_a_sigkilled_streaming_run_resumes_to_the_uninterrupted_weights(stream: Path, tmp_path: Path, case) -> None:
    extra, every, kill_step, steps = KILL_CASES[case]
    # The timeouts leave headroom for a loaded 2-core CI machine: two runs with 2 ranks and their workers share it (a
    # case that takes 40 s alone once ran past 400 s there).
    extra = [*extra, "--checkpoint.every_n_train_steps", str(every)]
    kill = ["--trainer.callbacks+=tiny_runs.KillAtStep", "--trainer.callbacks.step", str(kill_step)]
    killed = subprocess.Popen(
        command("fit", *_stream_args(stream, tmp_path / "killed", *extra, *kill)), env=subprocess_env(), cwd=ROOT,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )  # fmt: skip
    if "--trainer.strategy" in extra:
        reference = run_subprocess("fit", *_stream_args(stream, tmp_path / "reference", *extra), timeout=900)
        assert reference.returncode == 0, reference.stdout[-3000:] + reference.stderr[-3000:]
    else:
        run_cli("fit", *_stream_args(stream, tmp_path / "reference", *extra))
    output, _ = killed.communicate(timeout=900)
    assert killed.returncode == -signal.SIGKILL, output[-3000:]
    assert last_checkpoint(tmp_path / "killed")["global_step"] == kill_step - 1

    resume = ["--ckpt_path", "last"]
    if "--trainer.strategy" in extra:
        resumed_run = run_subprocess("fit", *_stream_args(stream, tmp_path / "killed", *extra, *resume), timeout=900)
        assert resumed_run.returncode == 0, resumed_run.stdout[-3000:] + resumed_run.stderr[-3000:]
    else:
        run_cli("fit", *_stream_args(stream, tmp_path / "killed", *extra, *resume))
    resumed, expected = last_checkpoint(tmp_path / "killed"), last_checkpoint(tmp_path / "reference")
    assert resumed["global_step"] == expected["global_step"] == steps
    for name, value in expected["state_dict"].items():
        assert torch.equal(resumed["state_dict"][name], value), f"{name} differs after the resume"


def test_an_output_that_is_a_file_is_refused_as_a_file(tmp_path: Path) -> None:
    # an empty file was refused as "not empty"
    images = write_image_folder(tmp_path / "images", per_class=12, size=8)
    for name, text in (("empty.bin", ""), ("notes.txt", "thesis")):
        (tmp_path / name).write_text(text)
        expected = f"output {tmp_path / name} is not a stream (no manifest.json) but a file; refusing to replace it"
        with pytest.raises(FileExistsError, match=re.escape(expected)):
            prepare_stream(str(images), str(tmp_path / name), chunk_size=8, overwrite=True)
        assert (tmp_path / name).read_text() == text


KILLED_WITH_WORKERS = """
import multiprocessing, os, signal, sys
from datamodules.streaming import StreamingDataModule
if __name__ == "__main__":
    dm = StreamingDataModule(sys.argv[1], image_size=12, batch_size=16, num_workers=2)
    dm.setup("fit")
    batches = [iter(dm.train_dataloader()), iter(dm.val_dataloader())]  # both loaders' workers running
    for loader in batches:
        next(loader)
    print(*(process.pid for process in multiprocessing.active_children()), flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
"""


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="looks the workers up in /proc")
def test_the_stream_workers_of_a_process_killed_by_sigkill_end_with_it(stream: Path, tmp_path: Path) -> None:
    # Workers started from a fork server (tried against a rare fork hang, docs/internals.md) outlived a SIGKILLed run
    # for good: torch's watchdog watches the worker's parent, the fork server, which lives while its workers do.
    script = tmp_path / "killed.py"
    script.write_text(KILLED_WITH_WORKERS)
    with (tmp_path / "out").open("w") as out:  # a file, not a pipe: the workers hold their copy open
        run = subprocess.run([sys.executable, str(script), str(stream)], stdout=out, stderr=subprocess.STDOUT,
                             cwd=ROOT, env=subprocess_env(), timeout=300, stdin=subprocess.DEVNULL)  # fmt: skip
    output = (tmp_path / "out").read_text()
    assert run.returncode == -signal.SIGKILL, output[-2000:]
    workers = [int(pid) for pid in output.split()]
    assert len(workers) >= 2
    deadline = time.monotonic() + 60  # torch's watchdog looks every 5 s
    while any(Path(f"/proc/{pid}").exists() for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not [pid for pid in workers if Path(f"/proc/{pid}").exists()], "workers outlived the killed process"
