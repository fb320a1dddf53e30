"""A training set of crops of real photographs, and a held-out set from other photographs, all available offline.

Sources: the nature photographs of Debian's ``mate-backgrounds`` (its ``abstract``/``desktop`` renders are left out),
the photographs bundled with scikit-image and scikit-learn (drawings, charts, scans and synthetic images left out) and
those of Debian's ``lomiri-wallpapers-16.04`` and ``-20.04`` (their renders left out). Whole photographs are held out,
so no held-out crop shares a pixel with a training crop.

    python scripts/make_photo_set.py data/photos --crop 256 --crops-per-photo 40 --install
    python scripts/make_photo_set.py data/photos --crop 256 --stream data/photos-64 --stream-size 64

Writes ``<out>/train/*.png``, ``<out>/heldout/*.png`` and ``<out>/photos.json`` (which photograph went where), and
with ``--stream`` a stream of them (``ae-lightning-prepare``, the held-out crops as its test split). The set is written
to ``.<out>.partial`` beside ``<out>`` and moved into place when complete, so an interrupted run leaves no partial set.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from ae_lightning.evaluation.driver import AtLeast
from datamodules.loader import usable_cpus

MATE_NATURE = Path("/usr/share/backgrounds/mate/nature")
# scikit-image's bundled photographs (its other images are drawings, scans, microscopy or synthetic).
SKIMAGE_PHOTOS = ["astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "motorcycle_left.png",
                  "motorcycle_right.png", "hubble_deep_field.jpg"]  # fmt: skip
# The photographs of lomiri-wallpapers-16.04 and -20.04 (their other files, umang, Fossa, Infinite-Sea and
# Painting-Colors, are renders), listed last so that the earlier sources keep their places in the split.
LOMIRI = Path("/usr/share/backgrounds")
LOMIRI_PHOTOS = {
    "lomiri-wallpapers-16.04": [
        "Bridge_by_Sander_Klootwijk.jpg", "Dragonfly_by_Bolly.jpg", "Picture_0B_by_freespace.jpg",
        "Picture_1A_by_freespace.jpg", "Wine_by_Jakkub_Mede.jpg", "aitzgorri_by_Aitzol_Berasategi.jpg",
        "analogpattern_by_Peter_Nerlich.jpg", "free_by_Peter_Nerlich.jpg", "friends_by_Aitzol_Berasategi.jpg",
        "greentock_by_Peter_Nerlich.jpg", "life_by_Aitzol_Berasategi.jpg", "picosdeeuropa_by_Aitzol_Berasategi.jpg",
        "seeding_by_Clements_Engelhardt.jpg", "sunset_by_Aitzol_Berasategi.jpg",
    ],
    "lomiri-wallpapers-20.04": ["Kleiber_by_Lukas_Baubkus.jpg"],
}  # fmt: skip
HELD_OUT_EVERY = 4  # every 4th photograph of the sorted list is held out


def install(missing_apt: list[str], missing_pip: list[str], run: bool) -> None:
    """Install the missing packages, or exit with the commands that would."""
    commands = []
    if missing_apt:
        commands += [["apt-get", "update"], ["apt-get", "install", "-y", *missing_apt]]
    if missing_pip:
        commands.append([sys.executable, "-m", "pip", "install", *missing_pip])
    if not commands:
        return
    if not run:
        listed = "\n  ".join(" ".join(c) for c in commands)
        sys.exit(f"missing photo sources; install them with\n  {listed}\nor pass --install")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in commands:
        subprocess.run(command, check=True, env=env)


def find_photos(run_install: bool) -> list[Path]:
    missing_apt = [] if MATE_NATURE.is_dir() else ["mate-backgrounds"]
    missing_apt += [package for package, names in LOMIRI_PHOTOS.items() if not (LOMIRI / names[0]).is_file()]
    missing_pip = [] if importlib.util.find_spec("skimage") else ["scikit-image"]
    install(missing_apt, missing_pip, run_install)
    import skimage
    import sklearn.datasets

    photos = sorted(MATE_NATURE.glob("*.jpg")) + sorted(MATE_NATURE.glob("*.png"))
    photos += [Path(skimage.__file__).parent / "data" / name for name in SKIMAGE_PHOTOS]
    photos += sorted((Path(sklearn.datasets.__file__).parent / "images").glob("*.jpg"))  # china.jpg, flower.jpg
    photos += [LOMIRI / name for names in LOMIRI_PHOTOS.values() for name in names]
    missing = [str(path) for path in photos if not path.is_file()]
    if missing:  # another package version: the split would shift silently
        sys.exit(f"listed photographs not found: {', '.join(missing)}; this script names the files it expects")
    return photos


def crops(path: Path, crop: int, count: int, side: int, rng: np.random.Generator) -> list[Image.Image]:
    """``count`` random ``crop``-pixel squares of the photograph at ``path``, its shorter side scaled to ``side``."""
    with Image.open(path) as image:
        image = image.convert("RGB")
    scale = max(side, crop) / min(image.size)
    image = image.resize((round(image.width * scale), round(image.height * scale)), Image.Resampling.LANCZOS)
    out = []
    for _ in range(count):
        left = int(rng.integers(0, image.width - crop + 1))
        top = int(rng.integers(0, image.height - crop + 1))
        out.append(image.crop((left, top, left + crop, top + crop)))
    return out


def check_photo_set(out: Path) -> None:
    """Exit naming ``out`` if it is a non-empty folder without ``photos.json``, i.e. not a photo set to replace."""
    if out.exists() and not (out / "photos.json").is_file() and (not out.is_dir() or any(out.iterdir())):
        sys.exit(
            f"{out} is not a photo set written by this script (no photos.json) and is not empty: give a new folder"
        )


def replace_photo_set(partial: Path, out: Path) -> None:
    """Move the complete set written at ``partial`` to ``out``: its ``train/``, ``heldout/`` and, last, its marker
    ``photos.json`` replace an earlier run's (anything else at ``out`` stays); ``partial`` is removed."""
    out.mkdir(parents=True, exist_ok=True)
    for part in ("train", "heldout"):
        if (out / part).exists():  # a folder cannot be renamed over a non-empty one: move the old one aside first
            os.replace(out / part, partial / f"old-{part}")
        os.replace(partial / part, out / part)
    os.replace(partial / "photos.json", out / "photos.json")
    shutil.rmtree(partial)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out", help="folder to write")
    parser.add_argument("--crop", action=AtLeast, default=256, help="side of the square crops")
    parser.add_argument("--crops-per-photo", action=AtLeast, default=40)
    parser.add_argument("--photo-side", action=AtLeast, default=768, help="shorter side each photo is scaled to first")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--install", action="store_true", help="apt-get/pip install missing photo sources")
    parser.add_argument(
        "--stream", help="also write a stream of the crops here (a folder or s3:// URI); replaces a stream only"
    )
    parser.add_argument("--stream-size", action=AtLeast, help="side of the stream's stored images (default: --crop)")
    args = parser.parse_args(argv)
    if args.stream_size is not None and not args.stream:
        parser.error(f"--stream-size {args.stream_size} sizes the stream's images: give --stream too")

    photos = find_photos(args.install)
    out = Path(args.out)
    check_photo_set(out)
    # Written next to out and moved into place when complete: an interrupted run leaves no partial set at out, and
    # an earlier set stays whole until then. A killed run's leftover is removed here.
    partial = out.resolve().with_name(f".{out.resolve().name}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    try:
        rng = np.random.default_rng(args.seed)
        record = {"train": [], "heldout": []}
        for part in record:
            (partial / part).mkdir(parents=True)
        for i, photo in enumerate(photos):
            part = "heldout" if i % HELD_OUT_EVERY == HELD_OUT_EVERY - 1 else "train"
            for j, image in enumerate(crops(photo, args.crop, args.crops_per_photo, args.photo_side, rng)):
                image.save(partial / part / f"{photo.stem}-{j:03d}.png")
            record[part].append(str(photo))
        (partial / "photos.json").write_text(json.dumps(record, indent=1))
        replace_photo_set(partial, out)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    print(f"{out}: {len(record['train'])} photos for training, {len(record['heldout'])} held out, "
          f"{args.crops_per_photo} crops of {args.crop}px each")  # fmt: skip
    if args.stream:
        from datamodules.stream_prepare import prepare_stream

        manifest = prepare_stream(
            str(out / "train"), args.stream, size=args.stream_size or args.crop, test_dir=str(out / "heldout"),
            overwrite=True, num_workers=usable_cpus(),  # replaces a stream only (see prepare_stream)
        )  # fmt: skip
        print(f"stream {args.stream}: {manifest.counts}, fingerprint {manifest.fingerprint[:16]}")


if __name__ == "__main__":
    main()
