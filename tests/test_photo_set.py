"""``scripts/make_photo_set.py``: the photo set it writes, on photographs the test draws (no packages installed)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).parents[1]


def load_script():
    spec = importlib.util.spec_from_file_location("make_photo_set", ROOT / "scripts" / "make_photo_set.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_photos(folder: Path, n: int) -> list[Path]:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    paths = [folder / f"photo{i}.png" for i in range(n)]
    for path in paths:
        Image.fromarray(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)).save(path)
    return paths


def run(script, monkeypatch: pytest.MonkeyPatch, out: Path) -> None:
    monkeypatch.setattr(sys, "argv", ["make_photo_set.py", str(out), "--crop", "16", "--crops-per-photo", "2"])
    script.main()


def photo_set(out: Path) -> dict[str, list[str]]:
    return {part: sorted(path.name for path in (out / part).iterdir()) for part in ("train", "heldout")}


def test_an_interrupted_run_leaves_no_partial_photo_set_and_a_rerun_writes_it_whole(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # It wrote into out directly, photos.json last: Ctrl-C left a partial train/ that the rerun refused and the
    # image-folder datamodule trained on.
    script = load_script()
    photos = write_photos(tmp_path / "photographs", 8)  # every 4th held out: 6 for training, 2 held out
    monkeypatch.setattr(script, "find_photos", lambda run_install: photos)
    crops, calls = script.crops, []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 5:
            raise KeyboardInterrupt
        return crops(*args, **kwargs)

    out = tmp_path / "data" / "photos"
    monkeypatch.setattr(script, "crops", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run(script, monkeypatch, out)
    assert not out.exists() and [path.name for path in (tmp_path / "data").iterdir()] == []

    # A run killed outright (no cleanup) leaves its temporary folder: the rerun neither refuses nor reads it.
    leftover = tmp_path / "data" / ".photos.partial" / "train"
    leftover.mkdir(parents=True)
    Image.new("RGB", (16, 16)).save(leftover / "stale-000.png")
    monkeypatch.setattr(script, "crops", crops)
    run(script, monkeypatch, out)
    written = photo_set(out)
    assert written == {
        "train": [f"photo{i}-{j:03d}.png" for i in (0, 1, 2, 4, 5, 6) for j in range(2)],
        "heldout": [f"photo{i}-{j:03d}.png" for i in (3, 7) for j in range(2)],
    }
    assert json.loads((out / "photos.json").read_text())["heldout"] == [str(photos[3]), str(photos[7])]
    assert sorted(path.name for path in (tmp_path / "data").iterdir()) == ["photos"]

    # Interrupting a rerun keeps the earlier set whole.
    (out / "notes.txt").write_text("mine")
    calls.clear()
    monkeypatch.setattr(script, "crops", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run(script, monkeypatch, out)
    assert photo_set(out) == written and (out / "photos.json").is_file() and (out / "notes.txt").is_file()
    monkeypatch.setattr(script, "crops", crops)
    run(script, monkeypatch, out)  # and a complete rerun replaces it, leaving the rest of the folder
    assert photo_set(out) == written and (out / "notes.txt").read_text() == "mine"
    assert sorted(path.name for path in (tmp_path / "data").iterdir()) == ["photos"]


@pytest.mark.parametrize(
    "options, message",
    [(["--crop", "0"], "--crop 0: expected at least 1"),
     (["--crops-per-photo", "0"], "--crops-per-photo 0: expected at least 1"),
     (["--photo-side", "-1"], "--photo-side -1: expected at least 1"),
     (["--stream", "stream", "--stream-size", "0"], "--stream-size 0: expected at least 1"),
     (["--stream-size", "64"], "--stream-size 64 sizes the stream's images: give --stream too")],
)  # fmt: skip
def test_a_bad_size_or_count_is_refused_before_anything_is_installed_or_written(
    options: list[str], message: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, tmp_path: Path
) -> None:
    # It asked to install the photo sources first, then crashed in Pillow (--crop 0), wrote empty folders
    # (--crops-per-photo 0), or ignored the value (--photo-side below --crop, --stream-size without --stream).
    script = load_script()
    photos = write_photos(tmp_path / "photographs", 4)
    monkeypatch.setattr(script, "find_photos", lambda run_install: photos)
    monkeypatch.chdir(tmp_path)  # where a relative --stream would be written
    monkeypatch.setattr(sys, "argv", ["make_photo_set.py", "out", *options])
    with pytest.raises(SystemExit) as exited:
        script.main()
    assert exited.value.code == 2 and f"error: {message}" in capsys.readouterr().err
    assert [path.name for path in tmp_path.iterdir()] == ["photographs"]
    assert sorted(path.name for path in tmp_path.iterdir()) == ["photographs"]
