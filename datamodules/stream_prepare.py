"""``ae-lightning-prepare``: an image folder, an array file or a torchvision dataset as a stream of litdata chunks.

    ae-lightning-prepare photos/ data/photos-64 --size 64
    ae-lightning-prepare digits.npz data/digits --labels y
    ae-lightning-prepare torchvision:CIFAR10 s3://bucket/cifar10 --data-dir data

Each split becomes one litdata-optimized folder, beside ``manifest.json`` (``docs/streaming.md``).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import typing
import zlib
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import asdict, dataclass
from fnmatch import fnmatch
from itertools import islice
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor
from torchvision.io import ImageReadMode, encode_jpeg, encode_png
from torchvision.io import decode_image as decode_bytes
from torchvision.transforms.v2 import functional as TF

from datamodules.arrays import SUFFIXES, ArrayDataModule
from datamodules.base import draw_split
from datamodules.checks import (
    OpenUnitInterval,
    PositiveInt,
    Seed,
    byte_count,
    check_arguments,
    check_fits_memory,
    number_type,
)
from datamodules.folder import GRAY_MODES, Alpha, check_test_dir, decode_image, list_images, opaque, own_channels
from datamodules.loader import usable_cpus
from datamodules.stream_store import MANIFEST, SPLITS, StreamLocation, StreamManifest, file_sha256, partial_folder
from datamodules.torchvision_data import TorchvisionDataModule, class_names_of, labels_of, stored_transposed

Encoding = Literal["png", "jpeg", "raw"]
KINDS = {"folder": "an image folder", "array": "a .npy/.npz/.pt array file", "torchvision": "a torchvision dataset"}
JpegQuality = number_type("[1, 100]", integer=True)
AHEAD_PER_THREAD = 4  # records in flight per encoding thread
CHUNK_BYTES = 64_000_000  # litdata's default chunk_bytes ("64MB")
MIN_CHUNKS = 64  # by default, the least chunks of a split of as many samples: DDP ranks x workers read whole chunks
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PUBLISHING = "publishing.json"  # a remote publish's list of the files it may leave (deleted when it is done)


@dataclass
class ImageEncoder:
    """Turns one ``(record, label)`` into a stored item ``{"image": ..., "label": int}`` (run in threads).

    Args:
        kind, payload: ``folder`` (records are file paths; no payload), ``array`` (records are rows of ``payload``, a
            ``[N, C, H, W]`` uint8 tensor) or ``torchvision`` (indices into ``payload``, a torchvision dataset).
        channels, size, encoding, quality, alpha: as :func:`prepare_stream` takes them.
        shape, first: the ``(H, W)`` every image must have (None skips the check), and the image that has it.
    """

    kind: str
    payload: Any
    channels: int
    size: int | None
    encoding: Encoding
    quality: int = 90
    shape: tuple[int, int] | None = None
    alpha: Alpha = "refuse"
    first: str = "the first image"

    def pixels(self, record: Any) -> tuple[Tensor, str]:
        """The record's image as ``[C, H, W]`` uint8, and where it came from."""
        mode = "L" if self.channels == 1 else "RGB"
        if self.kind == "folder":
            return decode_image(record, mode, self.size, self.alpha), record
        if self.kind == "array":
            image = self.payload[record]
            if image.shape[0] != self.channels:
                image = TF.rgb_to_grayscale(image) if self.channels == 1 else image.expand(3, -1, -1)
            where = f"row {record}"
        else:
            where = f"sample {record} of {type(self.payload).__name__}"
            image = TF.pil_to_tensor(opaque(self.payload[record][0], mode, self.alpha, where))
            image = image.transpose(1, 2) if stored_transposed(self.payload) else image
        if self.size is not None:
            image = TF.center_crop(TF.resize(image, self.size, antialias=True), self.size)
        return image.contiguous(), where

    def __call__(self, record: tuple[Any, int]) -> dict[str, Any]:
        source, label = record
        image, where = self.pixels(source)
        if self.shape is not None and tuple(image.shape[1:]) != self.shape:
            raise ValueError(
                f"{where}: an image of {image.shape[2]}x{image.shape[1]}, but {self.first} is {self.shape[1]}x"
                f"{self.shape[0]}; set --size to resize every image to one size"
            )
        if self.encoding == "raw":
            return {"image": image.numpy(), "label": int(label)}
        data = encode_png(image) if self.encoding == "png" else encode_jpeg(image, quality=self.quality)
        return {"image": data.numpy().tobytes(), "label": int(label)}


def decode(stored: Any, channels: int) -> Tensor:
    """The ``[C, H, W]`` uint8 pixels of a stored image (PNG or JPEG bytes, or the array itself); a ValueError for a
    PNG whose chunks fail their CRC check, a RuntimeError for another image that does not decode."""
    if isinstance(stored, np.ndarray):
        return torch.from_numpy(stored)
    if stored[:8] == PNG_SIGNATURE:
        check_png_crcs(stored)
    mode = ImageReadMode.GRAY if channels == 1 else ImageReadMode.RGB
    return decode_bytes(torch.frombuffer(bytearray(stored), dtype=torch.uint8), mode=mode)


def check_png_crcs(data: bytes) -> None:
    """Raise a ValueError at the first chunk of the PNG ``data`` whose CRC does not match its bytes."""
    view, position = memoryview(data), len(PNG_SIGNATURE)
    while position < len(data):
        length = int.from_bytes(view[position : position + 4], "big")
        end = position + 8 + length  # the chunk's length and type, its data, then its CRC
        if end + 4 > len(data) or zlib.crc32(view[position + 4 : end]) != int.from_bytes(view[end : end + 4], "big"):
            kind = bytes(view[position + 4 : position + 8]).decode("latin-1")
            raise ValueError(f"its PNG chunk {kind!r} at byte {position} is cut short or fails its CRC check")
        position = end + 4


def check_applicable(source: str, encoding: str, options: dict[str, Any]) -> None:
    """Raise a ValueError naming the first given option of ``options`` (command-line name: value, None where not
    given) that does not apply to ``source`` or ``encoding``, and would be ignored."""
    kind = source_kind(source)

    def only(applies: str) -> str | bool:
        return kind != applies and f"applies to {KINDS[applies]} only; the source {source} is {KINDS[kind]}"

    reasons = {
        "--test-dir": only("folder"),
        "--labels": only("array"),
        "--key": only("array"),
        "--dataset-kwargs": only("torchvision"),
        "--quality": encoding != "jpeg" and f"applies to --encoding jpeg, not {encoding}",
        "--data-dir": kind != "torchvision" and f"applies to a torchvision source, not {KINDS[kind]}",
        "--alpha": kind == "array" and f"applies to image files and torchvision datasets, not {KINDS[kind]}",
        "--test-fraction": (kind == "torchvision" or options.get("--test-dir") is not None)
        and "holds out a test split from a source without one; this source has its test split",
    }
    for option, reason in reasons.items():
        if options.get(option) is not None and reason:
            raise ValueError(f"{option} {options[option]} {reason}")


def source_kind(source: str) -> Literal["torchvision", "array", "folder"]:
    """What ``source`` is: ``torchvision:<Class>``, a ``.npy``/``.npz``/``.pt`` array file, or else an image folder."""
    if source.startswith("torchvision:"):
        return "torchvision"
    return "array" if Path(source).suffix in SUFFIXES else "folder"


def _records(
    kind: str, source: str, test_dir: str | None, labels: str | None, key: str | None, data_dir: str, kwargs: dict
) -> tuple[Any, dict[str, list[tuple[Any, int]]], list[str] | None]:
    """The source's payloads, ``(record, label)`` lists of its train (and test) parts, and class names."""
    if kind == "torchvision":
        module = TorchvisionDataModule(source.split(":", 1)[1], data_dir=data_dir, dataset_kwargs=kwargs)
        module.prepare_data()
        payloads = {part: module._open(part, download=False) for part in ("train", "test")}
        parts = {part: list(enumerate(labels_of(data, f"{source} {part}").tolist())) for part, data in payloads.items()}
        return payloads, parts, class_names_of(payloads["train"])
    path = Path(source)
    if kind == "array":
        arrays = ArrayDataModule(str(path), labels=labels, key=key).arrays  # checked: one label per image, ...
        images, targets = arrays.train
        if images.ndim != 4:
            raise ValueError(f"{source} holds feature vectors {tuple(images.shape)}; a stream holds images")
        return {"train": images}, {"train": list(enumerate(targets.tolist()))}, None
    if not path.is_dir():
        raise FileNotFoundError(
            f"source {source} is no folder: expected an image folder, an array file ({'/'.join(SUFFIXES)}) or "
            "torchvision:<Class>"
        )
    files, targets, names = list_images(path)
    parts = {"train": list(zip(files, targets))}
    if test_dir is not None:
        if not Path(test_dir).is_dir():
            raise FileNotFoundError(f"--test-dir {test_dir} is no folder: expected the folder of the test images")
        check_test_dir(path, Path(test_dir), "--test-dir", "--test-fraction")
        test_files, test_targets, _ = list_images(Path(test_dir), names, test=True)
        parts["test"] = list(zip(test_files, test_targets))
    return {}, parts, names


def prepare_stream(
    source: str,
    output: str,
    size: PositiveInt | None = None,
    channels: Literal[1, 3] | None = None,
    alpha: Alpha | None = None,
    encoding: Encoding = "png",
    quality: JpegQuality | None = None,
    val_fraction: OpenUnitInterval = 1 / 12,
    test_fraction: OpenUnitInterval | None = None,
    test_dir: str | None = None,
    labels: str | None = None,
    key: str | None = None,
    data_dir: str | None = None,
    dataset_kwargs: dict[str, Any] | None = None,
    seed: Seed = 42,
    chunk_bytes: str | int | None = None,
    chunk_size: PositiveInt | None = None,
    num_workers: PositiveInt = 1,
    overwrite: bool = False,
    storage_options: dict[str, Any] | None = None,
) -> StreamManifest:
    """Write ``source`` as a stream at ``output`` (a folder or an object-store URI) and return its manifest.

    Args:
        source: an image folder (flat, or a subfolder per class), a ``.npy``/``.npz``/``.pt`` file of images, or
            ``torchvision:<Class>``.
        output: the stream's folder, or an ``s3://``/``gs://`` URI.
        size: side of the square stored images; None keeps the sources' (common) size.
        channels: 1 (gray) or 3 (RGB); None: 1 when every source image is gray (its PIL mode, or its array), else 3.
        alpha: an image with transparent pixels is refused (``refuse``, None) or composited over ``white`` or ``black``.
        encoding, quality: ``png``, ``jpeg`` (of JPEG quality ``quality``, None: 90) or ``raw``.
        val_fraction: share of the training pool held out as validation split (seeded, stratified).
        test_fraction, test_dir: share held out as test split (None: 0.1) if the source has none; a folder's test set.
        labels, key: an array source's labels (a key or a file) and data key, as ``ArrayDataModule`` takes them.
        data_dir, dataset_kwargs: a torchvision source's root (None: ``data``) and extra arguments.
        seed: seed of the split draws and of the train split's stored (shuffled) order.
        chunk_bytes, chunk_size: litdata's chunk limit in bytes (``16MB``) or samples; neither: default_chunk_size.
        num_workers: threads decoding and encoding the images.
        overwrite: replace a stream already at ``output`` (nothing else).
        storage_options: the object store client's options.
    """
    check_arguments(locals(), prepare_stream)
    # pathlib.Paths from Python callers, as the datamodules take them
    source, output, test_dir, labels = (path and os.fspath(path) for path in (source, output, test_dir, labels))
    if chunk_bytes is not None and chunk_size is not None:
        raise ValueError(f"chunk_bytes {chunk_bytes!r} and chunk_size {chunk_size} exclude each other: set one")
    chunk_bytes = None if chunk_bytes is None else byte_count(chunk_bytes)
    kind = source_kind(source)
    given = {"--test-dir": test_dir, "--labels": labels, "--key": key, "--dataset-kwargs": dataset_kwargs,
             "--quality": quality, "--data-dir": data_dir, "--alpha": alpha,
             "--test-fraction": test_fraction}  # fmt: skip
    check_applicable(source, encoding, given)
    alpha, quality, test_fraction = alpha or "refuse", quality or 90, test_fraction or 0.1
    data_dir = data_dir or "data"
    location = StreamLocation(output, storage_options)
    data = Path(data_dir).expanduser().resolve()
    if kind == "torchvision" and not location.is_remote and Path(location.uri).resolve() in (data, *data.parents):
        raise FileExistsError(  # publishing the stream would replace the folder holding the dataset's files
            f"output {output} holds --data-dir {data_dir}, where {source} is read (or downloaded to); write the "
            "stream elsewhere"
        )
    sources = [source] if test_dir is None else [source, test_dir]
    _check_free(location, overwrite, sources)
    with _staging_folder(location) as staging:
        payloads, parts, class_names = _records(kind, source, test_dir, labels, key, data_dir, dataset_kwargs or {})
        labelled = [label for records in parts.values() for _, label in records if label >= 0]
        if class_names is None and labelled:  # labels without names (array files, some torchvision sets): numbered
            class_names = [str(label) for label in range(max(labelled) + 1)]
        train = parts["train"]
        targets = torch.tensor([label for _, label in train])
        splits: dict[str, tuple[str, list[tuple[Any, int]]]] = {}
        if "test" in parts:
            splits["test"] = ("test", parts["test"])
        else:
            pool, held = draw_split(targets, test_fraction, seed, "test", "--test-fraction", {"train": source})
            splits["test"] = ("train", [train[i] for i in held.tolist()])
            train, targets = [train[i] for i in pool.tolist()], targets[pool]
        kept, drawn = draw_split(targets, val_fraction, seed, "val", "--val-fraction", {"train": source})
        # litdata shuffles chunks and a window of samples only: the train split is stored in a seeded random order
        kept = kept[torch.randperm(len(kept), generator=torch.Generator().manual_seed(seed))]
        splits["train"] = ("train", [train[i] for i in kept.tolist()])
        splits["val"] = ("train", [train[i] for i in drawn.tolist()])
        if channels is None:  # 1 when every source image is gray (a torchvision dataset's first, by its PIL mode)
            if kind == "array":
                channels = int(payloads["train"].shape[1])
            elif kind == "torchvision":
                channels = 1 if payloads["train"][0][0].mode in GRAY_MODES else 3
            else:
                channels = own_channels([record for records in parts.values() for record, _ in records])
        if size is not None:  # each record in flight: its pixels as uint8 and as the float32 copy of the resize
            in_flight = AHEAD_PER_THREAD * num_workers + 1
            check_fits_memory(in_flight * 5 * channels * size * size, f"--size {size}: {in_flight} images in flight",
                              "choose a smaller --size or fewer --num-workers")  # fmt: skip
        probe = ImageEncoder(kind, payloads.get("train"), channels, size, "raw", alpha=alpha)
        image, first = probe.pixels(splits["train"][1][0][0])
        height, width = shape = tuple(image.shape[1:])
        pixels = int(channels * height * width)
        test_share = None if "test" in parts else test_fraction
        settings = {"size": size, "channels": channels, "encoding": encoding, "quality": quality, "seed": seed,
                    "val_fraction": val_fraction, "test_fraction": test_share}  # fmt: skip
        # a refusing prepare stores what it stored before alpha existed, and keeps its fingerprint
        if alpha != "refuse":
            settings["alpha"] = alpha
        chunks: dict[str, dict[str, dict[str, Any]]] = {}
        for split in SPLITS:
            part, records = splits[split]
            encoder = ImageEncoder(kind, payloads.get(part), channels, size, encoding, quality, shape, alpha, first)
            samples = chunk_size if chunk_size or chunk_bytes else default_chunk_size(len(records), pixels, encoding)
            chunks[split] = _write_split(encoder, records, staging / split, chunk_bytes, samples, num_workers)
        fingerprint = hashlib.sha256(json.dumps([settings, chunks], sort_keys=True).encode()).hexdigest()
        manifest = StreamManifest(
            height=int(height),
            width=int(width),
            channels=channels,
            encoding=encoding,
            counts={split: len(records) for split, (_, records) in splits.items()},
            chunks=chunks,
            class_names=class_names,
            fingerprint=fingerprint,
            source=source,
            settings=settings,
        )
        (staging / MANIFEST).write_text(json.dumps(asdict(manifest), indent=1, sort_keys=True))
        _check_free(location, overwrite, sources)  # again: a prepare that held the lock first may have published
        _publish(staging, location)
    return manifest


def default_chunk_size(samples: int, pixels: int, encoding: Encoding) -> int:
    """Samples per chunk when neither a chunk size nor a chunk byte limit is given (docs/streaming.md, "Chunks"):
    ``samples // MIN_CHUNKS``, but no more than 64 MB hold of images of ``pixels`` values at their largest."""
    largest = (1 if encoding == "raw" else 2) * pixels + 1024
    return max(1, min(samples // MIN_CHUNKS, CHUNK_BYTES // largest))


def ordered_map(pool: Executor, fn: Callable[[Any], Any], items: Iterable[Any], ahead: int) -> Iterator[Any]:
    """``fn`` over ``items`` in ``pool``, in order, with at most ``ahead`` items submitted and not yet consumed
    (``Executor.map`` submits them all at once); those not consumed are cancelled when the iterator is closed."""
    items = iter(items)
    pending = deque(pool.submit(fn, item) for item in islice(items, max(1, ahead)))
    try:
        while pending:
            yield pending.popleft().result()
            pending.extend(pool.submit(fn, item) for item in islice(items, 1))
    finally:
        for future in pending:
            future.cancel()


def _write_split(
    encoder: Callable[[Any], dict],
    records: Iterable,
    folder: Path,
    chunk_bytes: int | None,
    chunk_size: int | None,
    num_threads: int,
) -> dict[str, dict[str, Any]]:
    """Encode ``records`` in threads and write them in order (one writer: the layout does not depend on the threads)
    as one litdata-optimized folder; returns each chunk file's size in bytes and sha256, by name."""
    from litdata.streaming.writer import BinaryWriter

    folder.mkdir(parents=True)
    writer = BinaryWriter(str(folder), chunk_size=chunk_size, chunk_bytes=chunk_bytes)  # at most one of them set
    with ThreadPoolExecutor(num_threads) as pool:
        for index, item in enumerate(ordered_map(pool, encoder, records, AHEAD_PER_THREAD * num_threads)):
            writer[index] = item
    writer.done()
    writer.merge()
    paths = [folder / chunk["filename"] for chunk in json.loads((folder / "index.json").read_text())["chunks"]]
    return {path.name: {"bytes": path.stat().st_size, "sha256": file_sha256(path)} for path in paths}


def _replaced_folder(path: Path) -> Path:
    """Where a local publish moves the stream it replaces while it renames the new one into place."""
    return path.parent / f".{path.name}.old"


@contextlib.contextmanager
def _staging_folder(location: StreamLocation) -> Iterator[Path]:
    """An empty folder to write the stream in, removed on exit unless published: a temporary one for a remote output;
    ``.<name>.partial`` beside a local one, emptied of a killed prepare's files and locked (``flock``) meanwhile (the
    folders made for it are removed too where nothing was published in them)."""
    if location.is_remote:
        with tempfile.TemporaryDirectory(prefix="stream-", ignore_cleanup_errors=True) as folder:
            yield Path(folder)
        return
    import fcntl  # POSIX only: the rest of the package imports on any system

    folder = partial_folder(Path(location.uri).resolve())
    made = [path for path in folder.parents if not path.exists()]  # deepest first
    try:
        folder.mkdir(parents=True, exist_ok=True)
        handle = os.open(folder, os.O_RDONLY)
        try:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise FileExistsError(
                    f"another ae-lightning-prepare is writing {location.uri} (in {folder}); wait for it to finish, or "
                    "write this stream elsewhere"
                ) from None
            for leftover in folder.iterdir():
                if leftover.is_dir() and not leftover.is_symlink():
                    shutil.rmtree(leftover)
                else:
                    leftover.unlink()
            try:
                yield folder
            finally:  # after a publish the name is gone, or is another prepare's folder
                with contextlib.suppress(OSError):
                    if os.path.samestat(os.fstat(handle), folder.stat()):
                        shutil.rmtree(folder)
        finally:
            os.close(handle)
    finally:
        for path in made:
            with contextlib.suppress(OSError):  # not empty: the stream was published there
                path.rmdir()


def _check_free(location: StreamLocation, overwrite: bool, sources: list[str]) -> None:
    """Refuse, before any work, an output that would destroy anything but a stream (docs/streaming.md), or hold, be
    or lie inside one of the ``sources``, or could not be renamed into place."""
    if location.is_remote:
        streamed = location.exists(MANIFEST)  # also with --overwrite: an unreachable bucket is named before any work
        if overwrite:
            return
        if streamed:
            raise FileExistsError(f"{location.uri} holds a stream already; pass --overwrite to replace it")
        # the objects a prepare writes over (litdata names a split's first chunk chunk-0-0.bin)
        written = [(split, name) for split in SPLITS for name in ("index.json", "chunk-0-0.bin")]
        found = [location.join(*parts) for parts in written if location.exists(*parts)]
        if found:
            raise FileExistsError(
                f"{location.uri} holds {', '.join(found)} but no {MANIFEST}: another dataset, or a stream whose upload "
                "was interrupted; refusing to write over them without --overwrite"
            )
        return
    path = Path(location.uri).resolve()
    for source in (source for source in sources if not source.startswith("torchvision:")):
        source_path = Path(source).resolve()
        if path in (source_path, *source_path.parents):
            raise FileExistsError(f"output {location.uri} holds the source {source}; write the stream elsewhere")
        if source_path in path.parents:
            raise FileExistsError(
                f"output {location.uri} is inside the source {source}, which it would become part of; write the stream "
                "elsewhere"
            )
    cwd, mount = Path.cwd().resolve(), os.path.ismount(path)
    if mount or path == cwd or path in cwd.parents:
        what = "a mount point" if mount else f"or holds the current folder {cwd}"
        raise ValueError(
            f"output {location.uri} is {what}, and a stream is published by renaming its folder into place: give a "
            "folder inside it, or run from another folder"
        )
    old = _replaced_folder(path)
    if old.exists() and not path.exists():
        raise FileExistsError(
            f"{old} holds the stream that a prepare of {location.uri} was replacing when it stopped: move it back to "
            f"{path}, or delete it"
        )
    if not path.exists() or (path.is_dir() and not any(path.iterdir())):
        return
    if not (path / MANIFEST).is_file():
        what = "and is not empty" if path.is_dir() else "but a file"
        raise FileExistsError(
            f"output {location.uri} is not a stream (no {MANIFEST}) {what}; refusing to replace it, even with "
            "--overwrite: give a new or empty folder"
        )
    if not overwrite:
        raise FileExistsError(f"{location.uri} holds a stream already; pass --overwrite to replace it")
    others = []  # what the stream folder holds beside its manifest and its splits' index.json and chunks
    for entry in sorted(path.iterdir()):
        if entry.name in SPLITS and entry.is_dir() and not entry.is_symlink():
            files = sorted(entry.iterdir())
            stream = [f for f in files if f.is_file() and (f.name == "index.json" or fnmatch(f.name, "chunk-*.bin"))]
            others += [str(file) for file in files if file not in stream]
        elif entry.name != MANIFEST:
            others.append(str(entry))
    if others:
        raise FileExistsError(
            f"{location.uri} holds {', '.join(others[:3])}{', ...' if len(others) > 3 else ''} beside the stream; "
            "--overwrite replaces a stream and nothing else: move them out of it"
        )


def _publish(staging: Path, location: StreamLocation) -> None:
    """Make the staged stream visible at once: a rename, or uploads with the manifest last (docs/streaming.md,
    "Publishing")."""
    if not location.is_remote:
        target = Path(location.uri).resolve()
        if target.exists():
            old = _replaced_folder(target)
            if old.exists():  # left by a prepare killed while it deleted the stream it had replaced by ``target``
                shutil.rmtree(old)
            os.replace(target, old)
            os.replace(staging, target)
            shutil.rmtree(old)
        else:
            os.replace(staging, target)
        return
    new = sorted(path.relative_to(staging).as_posix() for path in staging.rglob("*") if path.is_file())
    # recorded before anything is replaced: what may be left under the prefix if this is cut short
    replaced = sorted(_stream_files(location) | set(new))
    (staging / PUBLISHING).write_text(json.dumps({"files": replaced}))
    location.upload(str(staging / PUBLISHING), PUBLISHING)
    if location.exists(MANIFEST):
        location.delete(MANIFEST)
    for name in [*(name for name in new if name != MANIFEST), MANIFEST]:
        location.upload(str(staging / name), *name.split("/"))
    for name in sorted(set(replaced) - set(new)):
        location.delete(*name.split("/"))
    location.delete(PUBLISHING)


def _stream_files(location: StreamLocation) -> set[str]:
    """The files under a remote ``location`` that its manifest, each split's ``index.json`` and an interrupted
    publish's record name (a file that is not JSON names none)."""

    def read(*parts: str) -> dict[str, Any]:
        try:
            found = json.loads(location.read_text(*parts)) if location.exists(*parts) else {}
        except ValueError:
            found = {}
        return found if isinstance(found, dict) else {}

    files = set(read(PUBLISHING).get("files", ()))
    listed = read(MANIFEST).get("chunks", {})
    for split in SPLITS:
        chunks = [chunk.get("filename") for chunk in read(split, "index.json").get("chunks", ())]
        files |= {f"{split}/{name}" for name in [*listed.get(split, ()), *chunks] if name}
    return files


def _option(name: str, parse: Callable[[str], Any] = int) -> Callable[[str], Any]:
    """An argparse type: ``parse``, then :func:`prepare_stream`'s constraint on its argument ``name``."""

    def convert(text: str) -> Any:
        try:
            value = parse(text)
            check_arguments({name: value}, prepare_stream)
        except ValueError as error:
            if not str(error).startswith(f"{name} "):  # no number at all: argparse says "invalid int value: 'x'"
                raise
            raise argparse.ArgumentTypeError(str(error).removeprefix(f"{name} ")) from None
        return value

    convert.__name__ = parse.__name__
    return convert


def _mapping(text: str) -> dict[str, Any]:
    """An argparse type: a YAML (or JSON) mapping, e.g. ``{split: balanced}``."""
    import yaml

    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        value = None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a mapping such as '{{split: balanced}}', got {text!r}")
    return value


def main(argv: list[str] | None = None) -> None:
    """The ``ae-lightning-prepare`` command (see the module docstring)."""
    parser = argparse.ArgumentParser(prog="ae-lightning-prepare", description=__doc__.split("\n")[0])
    parser.add_argument("source", help="image folder, .npy/.npz/.pt file, or torchvision:<Class>")
    parser.add_argument("output", help="the stream's folder or s3:// / gs:// URI")
    parser.add_argument("--size", type=_option("size"), help="side of the square stored images (default: the sources')")
    parser.add_argument("--channels", type=int, choices=(1, 3), help="1 (gray) or 3 (RGB) (default: 1 when every "
                        "source image is gray, else 3)")  # fmt: skip
    parser.add_argument("--alpha", choices=typing.get_args(Alpha), help="an image with transparent pixels: refuse it "
                        "(default), or composite it over a white or black background")  # fmt: skip
    parser.add_argument("--encoding", default="png", choices=typing.get_args(Encoding))
    parser.add_argument("--quality", type=_option("quality"), help="JPEG quality, 1-100 (default 90)")
    parser.add_argument("--val-fraction", type=_option("val_fraction", float), default=1 / 12)
    parser.add_argument("--test-fraction", type=_option("test_fraction", float), help="for sources without a test "
                        "split (default 0.1)")  # fmt: skip
    parser.add_argument("--test-dir", help="a folder source's test folder")
    parser.add_argument("--labels", help="an array source's labels: a key of the file, or a second file")
    parser.add_argument("--key", help="an array source's data key")
    parser.add_argument("--data-dir", help="a torchvision source's root (default: data)")
    parser.add_argument("--dataset-kwargs", type=_mapping, help="a torchvision source's further arguments, e.g. "
                        "'{split: balanced}' for EMNIST")  # fmt: skip
    parser.add_argument("--seed", type=_option("seed"), default=42)
    parser.add_argument("--chunk-bytes", type=_option("chunk_bytes", byte_count), help="bytes per chunk, e.g. 16MB "
                        "(default: a split in at least 64 chunks, of at most 64MB)")  # fmt: skip
    parser.add_argument("--chunk-size", type=_option("chunk_size"), help="samples per chunk (instead of --chunk-bytes)")
    parser.add_argument("--num-workers", type=_option("num_workers"), default=usable_cpus(), help="threads "
                        "decoding and encoding the images (default: the CPUs this process may use)")  # fmt: skip
    parser.add_argument("--overwrite", action="store_true")
    parser.add_argument("--print_traceback", action="store_true", help="show where a refusal came from")
    args = parser.parse_args(argv)
    if args.chunk_bytes is not None and args.chunk_size is not None:
        parser.error(f"--chunk-bytes {args.chunk_bytes} and --chunk-size exclude each other: set one")
    try:
        check_applicable(args.source, args.encoding, {f"--{k.replace('_', '-')}": v for k, v in vars(args).items()})
    except ValueError as error:
        parser.error(str(error))
    try:
        manifest = prepare_stream(**{k: v for k, v in vars(args).items() if v is not None and k != "print_traceback"})
    except (ValueError, OSError, ImportError) as error:  # a refusal or bad input: its message alone, as ae-lightning
        if args.print_traceback or os.environ.get("AE_LIGHTNING_TRACEBACK") == "1":
            raise
        parser.exit(1, f"{parser.prog}: error: {error}\n(add --print_traceback for the traceback)\n")
    counts = ", ".join(f"{split} {manifest.counts[split]} in {len(manifest.chunks[split])} chunks" for split in SPLITS)
    chunking = f"by default: at least {MIN_CHUNKS} a split (one a sample below that), of at most 64MB each"
    if args.chunk_size or args.chunk_bytes:
        chunking = f"--chunk-size {args.chunk_size}" if args.chunk_size else f"--chunk-bytes {args.chunk_bytes}"
    print(
        f"wrote {args.output}: {manifest.channels}x{manifest.height}x{manifest.width} {manifest.encoding} images "
        f"({counts}; {chunking}); fingerprint {manifest.fingerprint[:16]}"
    )


if __name__ == "__main__":
    main()
