"""``ae-lightning-prepare``'s output rules: what it refuses before any work, and what a failed or killed prepare
leaves behind (see also tests/test_streaming.py)."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from conftest import write_image_folder
from PIL import Image
from test_streaming import FolderBucket, fake_bucket

from ae_lightning.evaluation.feature_classifier import check_classifiable
from datamodules import StreamingDataModule, stream_prepare
from datamodules.stream_prepare import prepare_stream
from datamodules.stream_store import StreamLocation, read_manifest


def test_a_remote_prefix_holding_another_datasets_files_is_written_over_only_with_overwrite(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bucket = FolderBucket(tmp_path / "bucket")
    monkeypatch.setattr(StreamLocation, "_provider", lambda self: bucket)
    images = write_image_folder(tmp_path / "images", per_class=6, size=8)
    theirs = tmp_path / "bucket" / "b" / "data" / "train"
    theirs.mkdir(parents=True)
    (theirs / "index.json").write_text("their index")
    (theirs / "chunk-0-0.bin").write_text("their chunk")
    message = "s3://b/data holds s3://b/data/train/index.json, s3://b/data/train/chunk-0-0.bin but no manifest.json"
    with pytest.raises(FileExistsError, match=re.escape(message) + ".* without --overwrite"):
        prepare_stream(str(images), "s3://b/data", chunk_size=4)
    assert [(theirs / name).read_text() for name in ("index.json", "chunk-0-0.bin")] == ["their index", "their chunk"]
    prepare_stream(str(images), "s3://b/data", chunk_size=4, overwrite=True)  # e.g. an interrupted upload of ours
    assert read_manifest(StreamLocation("s3://b/data")).counts["train"] == 10


def test_a_leftover_of_a_killed_replace_neither_breaks_an_overwrite_nor_is_lost(tmp_path: Path) -> None:
    images = write_image_folder(tmp_path / "images", per_class=6, size=8)
    output, old = tmp_path / "stream", tmp_path / ".stream.old"
    prepare_stream(str(images), str(output), chunk_size=4)
    # killed while deleting the stream it replaced: the new stream is in place, the old one half deleted
    (old / "train").mkdir(parents=True)
    (old / "train" / "chunk-0-1.bin").write_text("left")
    replaced = prepare_stream(str(images), str(output), chunk_size=2, overwrite=True)
    assert read_manifest(StreamLocation(str(output))).fingerprint == replaced.fingerprint
    assert sorted(p.name for p in tmp_path.iterdir()) == ["images", "stream"]
    # killed between the two renames: the only stream is in .stream.old, so it is named before any work
    os.replace(output, old)
    with pytest.raises(FileExistsError, match=re.escape(f"{old} holds the stream that a prepare of {output} was")):
        prepare_stream(str(images), str(output), chunk_size=2, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".stream.old", "images"]
    assert (old / "manifest.json").is_file()


def test_an_output_that_cannot_be_renamed_into_place_is_refused_before_any_work(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    images = write_image_folder(tmp_path / "images", per_class=6, size=8)
    (tmp_path / "here").mkdir()
    monkeypatch.chdir(tmp_path / "here")
    with pytest.raises(ValueError, match=re.escape(f"output . is or holds the current folder {tmp_path / 'here'}")):
        prepare_stream(str(images), ".", chunk_size=4)
    assert not any((tmp_path / "here").iterdir())
    mount = tmp_path / "mnt"
    mount.mkdir()
    monkeypatch.setattr(os.path, "ismount", lambda path: Path(path) == mount)
    with pytest.raises(ValueError, match=re.escape(f"output {mount} is a mount point")):
        prepare_stream(str(images), str(mount), chunk_size=4)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["here", "images", "mnt"]


def test_a_prepare_that_fails_on_bad_input_leaves_no_staging_folder(tmp_path: Path) -> None:
    images = write_image_folder(tmp_path / "images", per_class=6, size=8)
    (images / "dog" / "zzz.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match=re.escape(f"{images / 'dog' / 'zzz.png'} is not an image PIL can read")):
        prepare_stream(str(images), str(tmp_path / "stream"), chunk_size=4)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["images"]  # no .stream.partial
    with pytest.raises(FileNotFoundError, match="does not exist; write it with ae-lightning-prepare"):
        read_manifest(StreamLocation(str(tmp_path / "stream")))


def test_a_failed_prepare_removes_the_folders_it_made_for_the_output_and_keeps_those_of_a_published_one(
    tmp_path: Path,
) -> None:
    # the bad image is found after the staging folder's parents were made: they were left behind, empty
    images = write_image_folder(tmp_path / "images", per_class=6, size=8)
    (images / "dog" / "zzz.png").write_bytes(b"not a png")
    output = tmp_path / "runs" / "streams" / "photos"
    with pytest.raises(ValueError, match="zzz.png is not an image PIL can read"):
        prepare_stream(str(images), str(output), chunk_size=4)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["images"]
    (images / "dog" / "zzz.png").unlink()
    prepare_stream(str(images), str(output), chunk_size=4)
    assert sorted(p.name for p in output.parent.iterdir()) == ["photos"]


def test_a_size_whose_images_cannot_fit_in_memory_is_refused_before_any_image_is_resized(tmp_path: Path) -> None:
    # --size 100000 (a typo for 1000) got the process killed for memory at its first resize
    images = write_image_folder(tmp_path / "images", per_class=6, size=8)
    with pytest.raises(ValueError, match=r"--size 100000: 5 images in flight need about .* choose a smaller --size"):
        prepare_stream(str(images), str(tmp_path / "stream"), size=100_000, num_workers=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["images"]


def test_an_output_inside_the_source_is_refused_naming_both(tmp_path: Path) -> None:
    images = write_image_folder(tmp_path / "images", per_class=6, size=8)
    tests = write_image_folder(tmp_path / "tests", per_class=2, size=8)
    for output, test_dir in ((images / "stream", None), (tests / "stream", str(tests))):
        with pytest.raises(FileExistsError, match=re.escape(f"output {output} is inside the source {output.parent}")):
            prepare_stream(str(images), str(output), test_dir=test_dir, chunk_size=4)
    assert sorted(p.name for p in images.iterdir()) == sorted(p.name for p in tests.iterdir()) == ["cat", "dog"]


def test_an_output_holding_the_torchvision_data_dir_is_refused_before_any_download(tmp_path: Path) -> None:
    # publishing renames the stream's folder into place: over the dataset's files it had just read or downloaded
    for output in (tmp_path / "data", tmp_path):
        with pytest.raises(FileExistsError, match=re.escape(f"output {output} holds --data-dir {tmp_path / 'data'}")):
            prepare_stream("torchvision:MNIST", str(output), data_dir=str(tmp_path / "data"))
    assert not list(tmp_path.iterdir())


def installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # its parent package is missing too
        return False


@pytest.mark.skipif(installed("google.cloud.storage"), reason="needs google-cloud-storage absent")
def test_a_remote_uri_whose_client_library_is_missing_is_refused_naming_the_package_before_any_work(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # litdata raised a bare ModuleNotFoundError at the first read or write: after the images were encoded
    images = write_image_folder(tmp_path / "images", per_class=6, size=8)
    monkeypatch.setattr(stream_prepare, "_records", lambda *args: pytest.fail("the source was read before the refusal"))
    message = re.escape(
        "stream gs://bucket/photos: gs:// URIs are read and written with google-cloud-storage, which is not "
        "installed; pip install google-cloud-storage"
    )
    with pytest.raises(ModuleNotFoundError, match=message):
        prepare_stream(str(images), "gs://bucket/photos", overwrite=True)
    with pytest.raises(ModuleNotFoundError, match=message):
        StreamingDataModule("gs://bucket/photos")


def test_a_remote_overwrite_leaves_exactly_the_new_stream_deleting_the_old_files_once_it_is_complete(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the old stream's chunks that the new one did not overwrite were left under the prefix
    bucket = fake_bucket(tmp_path, monkeypatch)
    images = write_image_folder(tmp_path / "images", per_class=10, size=8)
    prefix = tmp_path / "bucket" / "b" / "photos"

    def files() -> set[str]:
        return {path.relative_to(prefix).as_posix() for path in prefix.rglob("*") if path.is_file()}

    old = prepare_stream(str(images), "s3://b/photos", chunk_size=2)
    assert len(old.chunks["train"]) == 8
    # cut short after the new train/index.json (2 chunks) replaced the old one (8): only the record names the rest
    bucket.uploads_left = 6  # the record, then test/ (a chunk and its index), then train/ (2 chunks and the index)
    with pytest.raises(ConnectionError, match="connection reset"):
        prepare_stream(str(images), "s3://b/photos", chunk_size=8, overwrite=True)
    assert len(json.loads((prefix / "train" / "index.json").read_text())["chunks"]) == 2
    assert files() >= {f"train/{name}" for name in old.chunks["train"]}  # nothing deleted before a new stream exists
    bucket.uploads_left, bucket.log = None, []
    new = prepare_stream(str(images), "s3://b/photos", chunk_size=8, overwrite=True)
    named = [f"{split}/{name}" for split, chunks in new.chunks.items() for name in [*chunks, "index.json"]]
    assert files() == {"manifest.json", *named}
    assert read_manifest(StreamLocation("s3://b/photos")).fingerprint == new.fingerprint
    manifest_up = bucket.log.index(("upload", "b/photos/manifest.json"))
    deleted = [key for action, key in bucket.log[manifest_up:] if action == "delete"]
    assert {f"b/photos/train/chunk-0-{i}.bin" for i in range(2, 8)} <= set(deleted)
    assert all(action == "upload" for action, key in bucket.log[:manifest_up] if key != "b/photos/manifest.json")
    assert not any((tmp_path / "tmp").iterdir())


def test_a_stream_of_a_labelled_array_file_has_labels_named_by_number(tmp_path: Path) -> None:
    # the labels were stored but the manifest named no classes: the FID classifier refused the stream as unlabelled
    images = np.random.default_rng(0).integers(0, 256, (40, 8, 8), dtype=np.uint8)
    np.savez(tmp_path / "data.npz", x=images, y=np.arange(40) % 3)
    prepare_stream(str(tmp_path / "data.npz"), str(tmp_path / "labelled"), labels="y", channels=1, chunk_size=8)
    labelled = StreamingDataModule(str(tmp_path / "labelled"), num_workers=0)
    assert labelled.has_labels and labelled.class_names == ["0", "1", "2"]
    check_classifiable(labelled)
    np.save(tmp_path / "plain.npy", images)
    prepare_stream(str(tmp_path / "plain.npy"), str(tmp_path / "unlabelled"), channels=1, chunk_size=8)
    assert not StreamingDataModule(str(tmp_path / "unlabelled"), num_workers=0).has_labels


def test_a_refused_prepare_prints_its_message_alone_unless_the_traceback_is_asked_for(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the command printed a traceback for every refusal, unlike ae-lightning and the scripts
    monkeypatch.delenv("AE_LIGHTNING_TRACEBACK", raising=False)
    argv = [str(tmp_path / "photos"), str(tmp_path / "stream")]
    with pytest.raises(SystemExit) as exited:
        stream_prepare.main(argv)
    message = f"source {tmp_path / 'photos'} is no folder: expected an image folder, an array file"
    assert exited.value.code == 1
    assert capsys.readouterr().err.startswith(f"ae-lightning-prepare: error: {message}")
    with pytest.raises(FileNotFoundError, match=re.escape(message)):
        stream_prepare.main([*argv, "--print_traceback"])


def test_gray_sources_are_stored_gray_unless_channels_says_otherwise_and_colour_stays_colour(tmp_path: Path) -> None:
    # --channels defaulted to 3: a folder of gray PNGs (or a gray array) was stored, and trained, as three equal
    # channels
    gray = write_image_folder(tmp_path / "gray", per_class=6, size=8, mode="L")
    np.save(tmp_path / "gray.npy", np.zeros((12, 8, 8), np.uint8))
    for source in (gray, tmp_path / "gray.npy"):
        assert prepare_stream(str(source), str(tmp_path / f"{source.name}-1"), chunk_size=4).channels == 1
        assert prepare_stream(str(source), str(tmp_path / f"{source.name}-3"), channels=3, chunk_size=4).channels == 3
    Image.new("RGB", (8, 8), (200, 10, 10)).save(gray / "dog" / "red.png")  # one colour image among gray ones
    assert prepare_stream(str(gray), str(tmp_path / "mixed"), chunk_size=4).channels == 3


def test_a_second_prepare_of_the_same_output_is_refused_while_the_first_one_writes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the second deleted the first one's staging folder as "what a killed prepare left": both failed, or the first
    # replaced the second's stream without --overwrite
    images = write_image_folder(tmp_path / "images", per_class=8, size=8)
    writing, resume = threading.Event(), threading.Event()
    write_split = stream_prepare._write_split

    def paused(*args, **kwargs):
        writing.set()
        resume.wait(60)
        return write_split(*args, **kwargs)

    monkeypatch.setattr(stream_prepare, "_write_split", paused)
    with ThreadPoolExecutor(1) as pool:
        first = pool.submit(prepare_stream, str(images), str(tmp_path / "stream"), chunk_size=4)
        try:
            assert writing.wait(60)
            monkeypatch.setattr(stream_prepare, "_write_split", write_split)
            with pytest.raises(FileExistsError, match=r"another ae-lightning-prepare is writing .*stream"):
                prepare_stream(str(images), str(tmp_path / "stream"), chunk_size=2)
        finally:
            resume.set()
        assert first.result(60).counts == read_manifest(StreamLocation(str(tmp_path / "stream"))).counts
    assert sorted(path.name for path in tmp_path.iterdir()) == ["images", "stream"]


def test_a_labels_array_of_another_length_than_the_images_is_refused_naming_both_counts(tmp_path: Path) -> None:
    # 30 labels for 40 images: the 10 images without a label were left out of the stream without a word
    np.savez(tmp_path / "digits.npz", x=np.zeros((40, 8, 8), np.uint8), y=np.arange(30) % 3)
    message = f"{tmp_path / 'digits.npz'} [y]: 30 labels for the 40 samples of {tmp_path / 'digits.npz'}"
    with pytest.raises(ValueError, match=re.escape(message)):
        prepare_stream(str(tmp_path / "digits.npz"), str(tmp_path / "stream"), labels="y", chunk_size=4)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["digits.npz"]


def test_overwrite_refuses_a_stream_folder_that_also_holds_other_files_and_keeps_them(tmp_path: Path) -> None:
    # --overwrite replaced the whole folder: a README or a run saved inside the stream's folder was deleted
    images = write_image_folder(tmp_path / "images", per_class=6, size=8)
    first = prepare_stream(str(images), str(tmp_path / "stream"), chunk_size=4)
    (tmp_path / "stream" / "README.txt").write_text("where these came from")
    (tmp_path / "stream" / "train" / "notes.txt").write_text("notes")
    stream = tmp_path / "stream"
    message = (
        f"{stream} holds {stream / 'README.txt'}, {stream / 'train' / 'notes.txt'} beside the stream; --overwrite "
        "replaces a stream and nothing else: move them out of it"
    )
    with pytest.raises(FileExistsError, match=re.escape(message)):
        prepare_stream(str(images), str(tmp_path / "stream"), chunk_size=2, overwrite=True)
    assert (tmp_path / "stream" / "README.txt").read_text() == "where these came from"
    assert read_manifest(StreamLocation(str(tmp_path / "stream"))).fingerprint == first.fingerprint
    for name in ("README.txt", "train/notes.txt"):
        (tmp_path / "stream" / name).unlink()
    second = prepare_stream(str(images), str(tmp_path / "stream"), chunk_size=2, overwrite=True)
    assert read_manifest(StreamLocation(str(tmp_path / "stream"))).fingerprint == second.fingerprint


def test_an_unreachable_remote_output_is_refused_before_any_work_with_overwrite_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # with --overwrite the bucket was first contacted after every image had been encoded
    bucket = fake_bucket(tmp_path, monkeypatch)

    def unreachable(uri: str) -> bool:
        raise OSError("Unable to locate credentials")

    monkeypatch.setattr(bucket, "exists", unreachable)
    monkeypatch.setattr(stream_prepare, "_records", lambda *args: pytest.fail("the source was read before the refusal"))
    images = write_image_folder(tmp_path / "images", per_class=6, size=8)
    message = "stream s3://b/photos: could not reach s3://b/photos/manifest.json (Unable to locate credentials)"
    for overwrite in (False, True):
        with pytest.raises(ConnectionError, match=re.escape(message)):
            prepare_stream(str(images), "s3://b/photos", chunk_size=4, overwrite=overwrite)


def test_a_file_uri_names_the_local_folder_for_prepare_and_reading(tmp_path: Path) -> None:
    # file:///abs/path (as fsspec and litdata's "local:" users write it) was refused as an unknown scheme
    images = write_image_folder(tmp_path / "images", per_class=6, size=8)
    manifest = prepare_stream(str(images), (tmp_path / "stream").as_uri(), chunk_size=4)
    assert (tmp_path / "stream" / "manifest.json").is_file()
    dm = StreamingDataModule(f"file://localhost{tmp_path / 'stream'}", num_workers=0)
    assert dm.input_shape == (3, 8, 8) and not dm.location.is_remote
    dm.setup("fit")
    assert len(next(iter(dm.val_dataloader()))[0]) == manifest.counts["val"]
    with pytest.raises(ValueError, match=r"stream file://host/data: a file:// URI names a folder of this machine"):
        StreamingDataModule("file://host/data")


def test_images_of_another_size_name_the_first_image_they_differ_from(tmp_path: Path) -> None:
    images = write_image_folder(tmp_path / "images", per_class=6, size=8)
    Image.new("RGB", (9, 7)).save(images / "dog" / "005.png")
    # the first image of the (shuffled) train split, which the others must match, was not named: "the first is 8x8"
    with pytest.raises(ValueError, match=r"dog/005.png: an image of 9x7, but .*images/\w+/\d+.png is 8x8; set --size"):
        prepare_stream(str(images), str(tmp_path / "stream"), chunk_size=4)


IGNORED_BY_PYTHON_CALLERS = [  # the command refused them; prepare_stream recorded or dropped them without effect
    ("images", {"quality": 50}, "--quality 50 applies to --encoding jpeg, not png"),
    ("x.npy", {"alpha": "white"}, "--alpha white applies to image files and torchvision datasets, not a .npy"),
    ("images", {"data_dir": "data"}, "--data-dir data applies to a torchvision source, not an image folder"),
    ("images/cat", {"test_dir": "images/dog", "test_fraction": 0.3}, "--test-fraction 0.3 holds out a test split from"),
]


@pytest.mark.parametrize("source, options, message", IGNORED_BY_PYTHON_CALLERS, ids=lambda x: str(x)[:20])
def test_an_option_that_does_not_apply_to_the_source_is_refused_for_python_callers_too(
    tmp_path: Path, source: str, options: dict, message: str
) -> None:
    write_image_folder(tmp_path / "images", per_class=12, size=4)
    np.save(tmp_path / "x.npy", np.zeros((24, 4, 4, 3), np.uint8))
    options = {key: str(tmp_path / value) if key == "test_dir" else value for key, value in options.items()}
    with pytest.raises(ValueError, match=re.escape(message)):
        prepare_stream(tmp_path / source, tmp_path / "stream", **options)
    assert not (tmp_path / "stream").exists()


def test_the_default_num_workers_are_the_cpus_this_process_may_use_not_the_machines(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a SLURM job given 2 of a node's 64 CPUs ran 64 threads, each with 4 images decoded at full size in flight
    monkeypatch.setattr(os, "cpu_count", lambda: 64)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    used = {}

    def capture(**arguments):
        used.update(arguments)
        raise ValueError("captured")

    monkeypatch.setattr(stream_prepare, "prepare_stream", capture)
    with pytest.raises(SystemExit):
        stream_prepare.main([str(write_image_folder(tmp_path / "images")), str(tmp_path / "stream")])
    assert used["num_workers"] == 2
