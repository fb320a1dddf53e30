"""Where a prepared stream lives: a local folder or an object-store URI, its manifest, and the checks on both.

A stream holds ``manifest.json`` (written last) and one litdata-optimized folder per split (``docs/streaming.md``).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import tempfile
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MANIFEST = "manifest.json"
SPLITS = ("train", "val", "test")
# the module that litdata's storage provider of each scheme imports, and the package that installs it
CLIENTS = {"s3": ("boto3", "boto3"), "gs": ("google.cloud.storage", "google-cloud-storage"), "r2": ("boto3", "boto3")}
FORMAT_VERSION = 1


@dataclass
class StreamManifest:
    """What ``ae-lightning-prepare`` wrote: every stored image's shape and ``encoding`` (``png``, ``jpeg``, ``raw``),
    the samples (``counts``) and each chunk's size in ``bytes`` and ``sha256`` (``chunks``) per split, each label's
    name (None: unlabelled, labels -1), the ``source`` prepared, and a sha256 over the settings and the chunks'
    sha256 (``fingerprint``: the stream's content and layout)."""

    height: int
    width: int
    channels: int
    encoding: str
    counts: dict[str, int]
    chunks: dict[str, dict[str, dict[str, Any]]]
    class_names: list[str] | None = None
    fingerprint: str = ""
    source: str = ""
    format_version: int = FORMAT_VERSION
    settings: dict[str, Any] = field(default_factory=dict)


class StreamLocation:
    """A local folder (``~`` expanded; also as a ``file://`` URI) or an ``s3://``/``gs://`` URI prefix, read through
    litdata's storage providers with the client's ``storage_options``; a ValueError for an unknown scheme, a
    ModuleNotFoundError naming the ``pip install`` of a scheme's missing client library."""

    def __init__(self, uri: str | os.PathLike, storage_options: dict[str, Any] | None = None) -> None:
        uri = os.fspath(uri)  # a pathlib.Path from Python callers, as the other datamodules take
        if uri.startswith("file://"):  # RFC 8089: file:///path or file://localhost/path, a folder of this machine
            parsed = urllib.parse.urlsplit(uri)
            if parsed.netloc not in ("", "localhost"):
                raise ValueError(
                    f"stream {uri}: a file:// URI names a folder of this machine (file:///<path>), not of "
                    f"{parsed.netloc}"
                )
            uri = urllib.request.url2pathname(parsed.path)
        self.is_remote = "://" in uri
        # a local folder's ~ expanded, as torchvision expands its root: a YAML config is no shell
        uri = uri if self.is_remote else os.path.expanduser(uri)
        self.uri = uri.rstrip("/") or uri  # the root folder "/" stays itself
        self.storage_options = storage_options or {}
        kinds = f"a local folder or an {', '.join(f'{known}://<bucket>' for known in CLIENTS)} URI"
        if not uri:
            raise ValueError(f"stream '': expected {kinds}")
        if not self.is_remote:
            return
        scheme, bucket = uri.split("://", 1)
        if scheme not in CLIENTS:
            raise ValueError(f"stream {uri}: unknown scheme {scheme}://; a stream is {kinds}")
        if not bucket.strip("/"):
            raise ValueError(f"stream {uri}: no bucket; expected {scheme}://<bucket>[/<prefix>]")
        module, package = CLIENTS[scheme]
        try:
            installed = importlib.util.find_spec(module) is not None
        except ModuleNotFoundError:  # a parent package (``google``) is missing
            installed = False
        if not installed:  # litdata would raise a bare ModuleNotFoundError at the first read or write
            raise ModuleNotFoundError(
                f"stream {uri}: {scheme}:// URIs are read and written with {package}, which is not installed; "
                f"pip install {package}"
            )

    def join(self, *parts: str) -> str:
        return "/".join([self.uri, *parts]) if self.is_remote else str(Path(self.uri, *parts))

    def _provider(self) -> Any:
        from litdata.streaming.fs_provider import GCPFsProvider, R2FsProvider, S3FsProvider

        scheme = self.uri.split("://", 1)[0]
        provider = {"s3": S3FsProvider, "gs": GCPFsProvider, "r2": R2FsProvider}[scheme]
        options = self.storage_options
        if scheme == "s3" and "config" not in options:
            # not litdata's 1000 retries: the checks before training should say at once that a bucket is unreachable
            from botocore.config import Config

            options = {"config": Config(retries={"max_attempts": 2, "mode": "standard"}, connect_timeout=10), **options}
        return provider(storage_options=options)

    def _remote(self, action: str, call: Any, *args: Any) -> Any:
        try:
            return call(*args)
        except Exception as error:  # botocore, obstore and google clients raise their own error types
            reason = " ".join(str(error).split())[:300] or type(error).__name__
            raise ConnectionError(
                f"stream {self.uri}: could not {action} ({reason}); check the URI's spelling, the credentials and the "
                "endpoint (storage_options)"
            ) from error

    def exists(self, *parts: str) -> bool:
        if not self.is_remote:
            return Path(self.join(*parts)).exists()
        return bool(self._remote(f"reach {self.join(*parts)}", self._provider().exists, self.join(*parts)))

    def read_text(self, *parts: str) -> str:
        if not self.is_remote:
            return Path(self.join(*parts)).read_text()
        with tempfile.TemporaryDirectory() as folder:
            local = os.path.join(folder, parts[-1])
            self._remote(f"read {self.join(*parts)}", self._provider().download_file, self.join(*parts), local)
            return Path(local).read_text()

    def upload(self, local: str, *parts: str) -> None:
        self._remote(f"write {self.join(*parts)}", self._provider().upload_file, local, self.join(*parts))

    def delete(self, *parts: str) -> None:
        """Delete a remote object (every object whose key starts with it: litdata's providers delete by prefix)."""
        self._remote(f"delete {self.join(*parts)}", self._provider().delete_file_or_directory, self.join(*parts))


def partial_folder(path: Path) -> Path:
    """Where a local prepare writes before it publishes ``path`` by renaming."""
    return path.parent / f".{path.name}.partial"


def read_manifest(location: StreamLocation) -> StreamManifest:
    """The manifest of the stream at ``location``; a FileNotFoundError for no stream or an interrupted prepare there,
    a ValueError for an unreadable manifest, a ConnectionError for an object store that cannot be reached."""
    uri = location.uri
    if not location.is_remote:
        path = Path(uri)
        if not path.exists():
            partial = partial_folder(path)
            if partial.exists():
                raise FileNotFoundError(
                    f"stream {uri} does not exist: a prepare of it was interrupted and left {partial} half-written; "
                    "run ae-lightning-prepare again (it starts that folder afresh)"
                )
            raise FileNotFoundError(f"stream {uri} does not exist; write it with ae-lightning-prepare")
    if not location.exists(MANIFEST):
        written = [split for split in SPLITS if location.exists(split, "index.json")]
        if written:
            raise FileNotFoundError(
                f"stream {uri} has no {MANIFEST} but holds the split(s) {', '.join(written)}: its prepare was "
                "interrupted before it finished; run ae-lightning-prepare again"
            )
        raise FileNotFoundError(f"{location.join(MANIFEST)} does not exist: {uri} is not a prepared stream")
    where = location.join(MANIFEST)
    try:
        manifest = StreamManifest(**json.loads(location.read_text(MANIFEST)))
    except (json.JSONDecodeError, TypeError) as error:
        raise ValueError(f"{where} is not a stream manifest ({error})") from error
    if manifest.format_version != FORMAT_VERSION:
        raise ValueError(
            f"{where} has format version {manifest.format_version}; this ae-lightning reads version {FORMAT_VERSION}: "
            "prepare the stream again"
        )
    counts = manifest.counts if isinstance(manifest.counts, dict) else {}
    numbers = {"height": manifest.height, "width": manifest.width, "channels": manifest.channels}
    for key, value in {**numbers, **{f"counts.{split}": counts.get(split) for split in SPLITS}}.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ValueError(f"{where}: {key} is {value!r}, expected an integer >= 0; prepare the stream again")
    return manifest


def check_chunks(location: StreamLocation, manifest: StreamManifest, split: str, content: bool = False) -> None:
    """Raise naming the missing ``index.json`` or the first chunk of a local ``split`` that is missing or has another
    size (``content``: or sha256) than recorded; remote chunks are checked when litdata downloads them."""
    if location.is_remote:
        return
    folder = Path(location.join(split))
    sizes = {path.name: path.stat().st_size for path in folder.iterdir()} if folder.is_dir() else {}
    if "index.json" not in sizes:  # e.g. a copy cut short: rsync copies a split's chunk-*.bin before its index.json
        index = location.join(split, "index.json")
        raise FileNotFoundError(f"{index} is missing from stream {location.uri}; copy or prepare the stream again")
    for name, expected in manifest.chunks[split].items():
        path = location.join(split, name)
        if name not in sizes:
            raise FileNotFoundError(f"chunk {path} is missing from stream {location.uri}; prepare the stream again")
        if sizes[name] != expected["bytes"]:
            raise ValueError(
                f"chunk {path} is corrupt: {sizes[name]} bytes, the manifest records {expected['bytes']}; prepare the "
                "stream again"
            )
        if content and file_sha256(Path(path)) != expected["sha256"]:
            raise ValueError(
                f"chunk {path} is corrupt: its content differs from the sha256 in {MANIFEST}; prepare the stream again"
            )


def file_sha256(path: Path) -> str:
    with open(path, "rb") as file:
        return hashlib.file_digest(file, "sha256").hexdigest()


__all__ = ["MANIFEST", "SPLITS", "StreamLocation", "StreamManifest", "check_chunks", "read_manifest"]
