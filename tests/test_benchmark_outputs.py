"""Benchmark and report scripts as a user runs them: they never replace an earlier run's files unless told to
(``--overwrite``), never leave one half-written, and name bad settings and missing data or classifiers before anything
trains."""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from unittest import mock

import pytest
import torch
from conftest import write_dataset
from PIL import Image
from test_evaluation import KilledWhileWriting, load_script, refused

from ae_lightning import Autoencoder
from datamodules import MNISTDataModule


@contextlib.contextmanager
def killed_while_writing(folder: Path) -> Iterator[None]:
    """The process is killed at the first write to a file under ``folder``, which keeps half of that write."""
    real_open = open

    def killed_open(file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        opened = real_open(file, mode, *args, **kwargs)
        inside = isinstance(file, str | os.PathLike) and Path(file).resolve().is_relative_to(folder.resolve())
        return KilledWhileWriting(opened) if "w" in mode and inside else opened

    with mock.patch("io.open", killed_open), mock.patch("builtins.open", killed_open), pytest.raises(KeyboardInterrupt):
        yield


def earlier(path: Path, text: str = "an earlier run's") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


# Each command also names missing data or a tiny size, so that without the check it fails (or ends) at once.
TINY_SPATIAL = "--networks spatial --spatial-dims 8 16 32 --train-images 4 --test-images 2 --steps 0 --data-dir {out}/x"
REFUSED = "name another folder, or pass --overwrite to replace its"


@pytest.mark.parametrize(
    ("script", "argv", "target", "message"),
    [
        ("spatial_quality", f"{TINY_SPATIAL} --skip fashion --picture {{out}}/pic.png", "pic.png",
         "--picture {out}/pic.png exists; name another file, or pass --overwrite to replace it"),
        ("benchmark", "--configs ae --metrics nope --output {out}/results.md", "results.md",
         "{out}/results.md exists: an earlier run's; name another --output (and --plots), or pass --overwrite"),
        ("benchmark", "--configs ae vae --metrics nope --output {out}/results.md", "results/vae_samples.png",
         "{out}/results/vae_samples.png exists: an earlier run's; name another --output (and --plots), or pass "),
        ("rate_distortion", "--photos {out}/x --out {out}", "results.json",
         "--out {out} holds an earlier run's results.json; " + REFUSED),
        ("rate_distortion", "--points 4:64 --photos {out}/x --out {out}", "f4_k64/prior.ckpt",
         "--out {out} holds an earlier run's f4_k64/prior.ckpt; " + REFUSED),
        ("family_report", "iwae superres --iw-samples 5 --data_dir {out}/x --out {out}", "iwae_k5/final_state.pt",
         "--out {out} holds an earlier run's iwae_k5/final_state.pt; " + REFUSED),
        ("family_report", "deep_ae --only-2d --data_dir {out}/x --out {out}", "pca_2d_map_mnist.png",
         "--out {out} holds an earlier run's pca_2d_map_mnist.png; " + REFUSED),
        ("own_data_demo", "--only digits_vae --epochs 1 --out {out}", "pictures/digits_vae_samples.png",
         "--out {out} holds the results of an earlier digits_vae run; name another folder, or pass --overwrite"),
        ("adversarial_sharpness", "--data_dir {out}/x --steps 1 --disc_start 0 --out {out}", "sharpness.png",
         "--out {out} holds an earlier run ({out}/sharpness.png): name another folder"),
    ],
)  # fmt: skip
def test_an_earlier_runs_file_is_refused_before_anything_runs_and_kept(
    script: str, argv: str, target: str, message: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "out"
    kept = earlier(out / target)
    error = refused(load_script(script), argv.format(out=out).split(), capsys)
    assert error.startswith(message.format(out=out))
    assert kept.read_text() == "an earlier run's"
    assert [path for path in tmp_path.rglob("*") if path.is_file()] == [kept]  # nothing else written


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ("--output {out}/results", "--output {out}/results and its plots folder {out}/results are one path: name "
                                   "another --plots, or give --output a suffix (results.md)"),
        ("--output {out}/a.md --plots {out}/a.md", "--output {out}/a.md and its plots folder {out}/a.md are one path: "
                                                   "name another --plots"),
        ("--output {out}/a.md --plots {out}/notes.txt", "--plots {out}/notes.txt is a file; name a folder"),
    ],
)  # fmt: skip
def test_the_benchmark_refuses_a_plots_folder_it_could_not_make_before_anything_trains(
    argv: str, message: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    # --output without .md made the default plots folder the table's own path: the first variant trained, then
    # writing the table over the folder of its pictures failed (IsADirectoryError).
    kept = earlier(tmp_path / "notes.txt", "mine")
    argv = ["--configs", "ae", "--metrics", "nope", *argv.format(out=tmp_path).split()]  # unchecked: ends at once
    assert refused(load_script("benchmark"), argv, capsys).startswith(message.format(out=tmp_path))
    assert [path for path in tmp_path.rglob("*")] == [kept] and kept.read_text() == "mine"


def test_family_report_refuses_a_data_dir_without_the_mnist_test_set_before_anything_runs(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    # deep_ae copies <data_dir>/mnist-t10k/: without it the sections before it trained (38 minutes of IWAE), then the
    # run stopped on a FileNotFoundError traceback, leaving a half-made mnist_sample/ in --out.
    earlier(tmp_path / "data" / "mnist-t10k" / "t10k-images-idx3-ubyte")
    argv = ["deep_ae", "--data_dir", str(tmp_path / "data"), "--out", str(tmp_path / "out")]
    error = refused(load_script("family_report"), argv, capsys)
    missing = tmp_path / "data" / "mnist-t10k" / "t10k-labels-idx1-ubyte"
    assert error.startswith(f"--data_dir {tmp_path / 'data'} has no {missing}: deep_ae tests on the official MNIST")
    assert not (tmp_path / "out").exists()


def test_overwrite_or_another_run_of_the_folder_is_not_refused(tmp_path: Path) -> None:
    earlier(tmp_path / "results.md")
    earlier(tmp_path / "results" / "results.json")
    variants = load_script("benchmark").parse_args(["--output", str(tmp_path / "results.md"), "--overwrite"])
    assert variants.overwrite and variants.plots == tmp_path / "results"
    earlier(tmp_path / "rd" / "f8_k64" / "tokenizer.ckpt")  # --reuse reads it: not an output
    load_script("rate_distortion").parse_args(["--points", "8:64", "--out", str(tmp_path / "rd"), "--reuse"])
    earlier(tmp_path / "rd" / "results.json")
    assert load_script("rate_distortion").parse_args(["--out", str(tmp_path / "rd"), "--reuse", "--overwrite"]).reuse


def test_rate_distortion_refuses_a_point_given_twice(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    # it trained the point twice into one folder and reported it twice
    argv = ["--points", "8:64", "4:64", "8:64", "--out", str(tmp_path / "rd")]
    assert refused(load_script("rate_distortion"), argv, capsys).startswith("--points 8:64 is given twice")


def test_own_data_demo_refuses_an_unknown_run_and_saves_each_finished_run(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    demo = load_script("own_data_demo")
    error = refused(demo, ["--only", "digits", "--out", str(tmp_path)], capsys)
    assert error.startswith("argument --only: invalid choice: 'digits' (choose from")
    assert not list(tmp_path.iterdir())

    def train_and_test(name: str, *args: Any) -> dict[str, float]:
        if name == "breast_cancer_ae":
            raise KeyboardInterrupt  # killed in the last run
        return {"test/loss": 1.0}

    with mock.patch.object(demo, "train_and_test", train_and_test), pytest.raises(KeyboardInterrupt):
        demo.main(["--out", str(tmp_path)])
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved == {"digits_vae": {"test/loss": 1.0}, "patches_conv_vae": {"test/loss": 1.0}}
    error = refused(demo, ["--out", str(tmp_path)], capsys)
    assert error.startswith(f"--out {tmp_path} holds the results of an earlier digits_vae, patches_conv_vae run")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ("--skip photos --data-dir {out}/x", "--picture {out}/pic.png shows the spatial network on the photos: it "
                                             "needs the photos (no --skip photos) and --networks spatial"),
        (f"{TINY_SPATIAL} --networks conv --skip fashion", "--picture {out}/pic.png shows the spatial network on "),
    ],
)  # fmt: skip
def test_spatial_quality_refuses_a_picture_it_would_not_draw(
    argv: str, message: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    argv = [*argv.format(out=tmp_path).split(), "--picture", str(tmp_path / "pic.png")]
    error = refused(load_script("spatial_quality"), argv, capsys)
    assert error.startswith(message.format(out=tmp_path))


def test_spatial_quality_writes_its_picture_whole_into_a_new_folder_or_over_an_old_one_with_overwrite(
    tmp_path: Path,
) -> None:
    script = load_script("spatial_quality")
    tiny = ["--skip", "fashion", "--networks", "spatial", "--spatial-dims", "8", "16", "32", "--train-images", "4",
            "--test-images", "2", "--steps", "0"]  # fmt: skip
    script.main([*tiny, "--picture", str(tmp_path / "new" / "pic.png")])  # its folder is made, not a crash
    assert Image.open(tmp_path / "new" / "pic.png").size == (1034, 518)
    earlier(tmp_path / "pic.png")
    argv = [*tiny, "--picture", str(tmp_path / "pic.png"), "--overwrite"]
    with killed_while_writing(tmp_path):
        script.main(argv)
    assert (tmp_path / "pic.png").read_text() == "an earlier run's"  # not half a picture
    assert sorted(path.name for path in tmp_path.iterdir()) == ["new", "pic.png"]
    script.main(argv)
    assert Image.open(tmp_path / "pic.png").format == "PNG"


def test_the_latent_maps_size_leaves_the_benchmarks_other_pictures_as_they_are(data_dir: Path, tmp_path: Path) -> None:
    # --tsne_points 4 drew 4 reconstructions and 2 interpolated pairs instead of 16 and 6
    script, pictures = load_script("benchmark"), {}
    torch.manual_seed(0)
    model, mnist = Autoencoder(latent_dim=2, hidden_dims=[8]), MNISTDataModule(data_dir=str(data_dir))
    for points in (4, 40):
        args = SimpleNamespace(tsne_points=points, seed=0, plots=tmp_path / str(points))
        with mock.patch.object(script.visualization, "draw_views", wraps=script.visualization.draw_views) as drawn:
            saved = script.save_pictures(model, mnist, args, "ae")
        pictures[points] = [Path(saved[view]).read_bytes() for view in ("reconstructions", "interpolations")]
        assert drawn.call_args.kwargs["title"] == f"ae: t-SNE of {points} test codes"
    assert pictures[4] == pictures[40]


def test_the_disentanglement_benchmark_replaces_its_traversal_pictures_whole(tmp_path: Path) -> None:
    # a run killed while saving a picture left it half-written
    script = load_script("disentanglement")
    picture = earlier(tmp_path / "vae.png")
    argv = ["--part", "mig", "--seeds", "0", "--steps", "1", "--points", "10", "--latent_dim", "2", "--hidden_dims",
            "8", "--root", str(tmp_path)]  # fmt: skip
    with killed_while_writing(tmp_path):
        script.main(argv)
    assert picture.read_text() == "an earlier run's" and list(tmp_path.iterdir()) == [picture]
    script.main(argv)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["beta_tcvae.png", "factor_vae.png", "vae.png"]
    assert Image.open(picture).format == "PNG"


def test_the_disentanglement_benchmark_dates_its_output_in_utc_as_it_says(
    capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch, data_dir: Path
) -> None:
    script = load_script("disentanglement")
    monkeypatch.setattr(script, "gap_part", lambda args: {})  # the header only: nothing trains
    monkeypatch.setenv("TZ", "Pacific/Kiritimati")  # UTC+14: the local date and hour differ from UTC's
    time.tzset()
    try:
        before = datetime.datetime.now(datetime.timezone.utc)
        script.main(["--part", "gap", "--data_dir", str(data_dir)])  # not ../shared/data: a clone elsewhere
        after = datetime.datetime.now(datetime.timezone.utc)
    finally:
        monkeypatch.undo()
        time.tzset()
    stamp = capsys.readouterr().out.splitlines()[1].rsplit(", ", 1)[1]
    assert stamp in {moment.strftime("%Y-%m-%d %H:%M UTC") for moment in (before, after)}


@pytest.mark.parametrize(
    "script, argv, message",
    [("own_data_demo", ["--epochs", "-1"], "--epochs -1: expected at least 1"),
     ("family_report", ["iwae", "--epochs", "-1"], "--epochs -1: expected at least 1"),
     ("family_report", ["deep_ae", "--mnist-pretrain-epochs", "-2"], "--mnist-pretrain-epochs -2: expected at least 0"),
     ("train_feature_classifier", ["--epochs", "0"], "--epochs 0: expected at least 1")],
    ids=["own_data_demo", "family_report", "family_report-pretrain", "train_feature_classifier"],
)  # fmt: skip
def test_the_scripts_refuse_a_count_of_epochs_they_cannot_train_as_settings_before_anything_runs(
    script: str, argv: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    # own_data_demo wrote its data and failed naming an option the user never gave, family_report trained forever
    # (max_epochs -1), train_feature_classifier exited 1 after announcing 0 epochs
    out = ["--output", str(tmp_path / "out" / "c.pt")] if script == "train_feature_classifier" else []
    out = out or ["--out", str(tmp_path / "out")]
    with pytest.raises(SystemExit) as exited:
        load_script(script).main([*argv, *out])
    assert exited.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_own_data_demo_runs_from_any_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # It named its configs relative to the working folder: run from anywhere but the checkout, the first run stopped
    # on a jsonargparse traceback, "File does not exist: '<cwd>/configs/tabular_anomaly_ae.yaml'".
    monkeypatch.chdir(tmp_path)
    load_script("own_data_demo").main(["--only", "breast_cancer_ae", "--epochs", "1", "--out", "out"])
    scores = json.loads((tmp_path / "out" / "results.json").read_text())["breast_cancer_ae"]
    assert 0 <= scores["test/auroc"] <= 1 and scores["train_size"] > 0


def mnist_test_set(data_dir: Path) -> Path:
    """``data_dir`` with the (tiny) MNIST test set that family_report's deep_ae reads, in ``mnist-t10k/``."""
    (data_dir / "mnist-t10k").mkdir(parents=True)
    for path in (write_dataset(data_dir / "tiny", "MNIST") / "MNIST" / "raw").glob("t10k-*"):
        path.rename(data_dir / "mnist-t10k" / path.name)
    return data_dir


def test_family_report_trains_the_mnist_deep_ae_without_pretraining_when_asked(tmp_path: Path) -> None:
    # --mnist-pretrain-epochs 0 (accepted: no RBM pretraining) was read as "not given": the run pretrained each RBM
    # for --pretrain-epochs epochs.
    mnist_test_set(tmp_path / "data")
    argv = ["deep_ae", "--only-2d", "--smoke", "--mnist-epochs", "1", "--mnist-pretrain-epochs", "0",
            "--pretrain-epochs", "1", "--data_dir", str(tmp_path / "data"), "--out", str(tmp_path / "out")]  # fmt: skip
    load_script("family_report").main(argv)
    assert json.loads((tmp_path / "out" / "deep_ae.json").read_text())["rbm_2d_mnist"]["epochs"] == 1


def test_adversarial_sharpness_names_a_missing_classifier_of_its_data_before_anything_trains(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # It trained both arms (1,500 steps each by default), then stopped on the missing classifier, advising a command
    # that trains one on MNIST; the rerun was refused, --out holding the arms.
    monkeypatch.setenv("AE_LIGHTNING_CACHE", str(tmp_path / "cache"))
    data = write_dataset(tmp_path / "data", "FashionMNIST")
    argv = ["--data_dir", str(data), "--out", str(tmp_path / "out"), "--steps", "2", "--disc_start", "1"]
    train = rf"train_feature_classifier.py --data FashionMNISTDataModule --data_dir {data} --output {tmp_path}/cache/"
    with pytest.raises(
        FileNotFoundError, match=rf"^no feature classifier at .*; train one with `python scripts/{train}"
    ):
        load_script("adversarial_sharpness").main(argv)
    assert not (tmp_path / "out").exists()


def test_spatial_quality_names_missing_fashion_mnist_before_anything_trains(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    # The photos trained first, then torchvision's RuntimeError traceback ("Dataset not found. You can use
    # download=True") ended the run.
    argv = TINY_SPATIAL.format(out=tmp_path).split()
    with pytest.raises(FileNotFoundError, match=rf"^--data-dir {tmp_path}/x holds no Fashion-MNIST: expected "):
        load_script("spatial_quality").main(argv)
    assert "| photos |" not in capsys.readouterr().out


def test_the_disentanglement_benchmark_names_missing_fashion_mnist_before_the_dsprites_runs(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    # --part both trained and scored every dSprites model over every seed, then found no Fashion-MNIST.
    argv = ["--part", "both", "--seeds", "0", "--steps", "1", "--points", "10", "--hidden_dims", "8",
            "--data_dir", str(tmp_path / "x"), "--root", str(tmp_path / "runs")]  # fmt: skip
    with pytest.raises(FileNotFoundError, match=rf"Put the uncompressed IDX files .* in {tmp_path}/x/FashionMNIST/raw"):
        load_script("disentanglement").main(argv)
    assert "MIG" not in capsys.readouterr().out and not (tmp_path / "runs").exists()


def test_gpu_check_takes_no_arguments_and_refuses_an_earlier_runs_folder(tmp_path: Path) -> None:
    # `--help` started the whole check (its arguments were ignored), and a second run into the same OUT failed its
    # rate_distortion, codec and speed checks on the first run's files.
    script = Path(__file__).resolve().parents[1] / "scripts" / "gpu_check.sh"
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"  # this environment's python
    env = {**os.environ, "PATH": path, "OUT": str(tmp_path / "out")}
    helped = subprocess.run(["bash", str(script), "--help"], capture_output=True, text=True, env=env, timeout=60)
    assert helped.returncode == 0 and "bash scripts/gpu_check.sh" in helped.stdout
    assert not (tmp_path / "out").exists()
    earlier = tmp_path / "out" / "speed-128.md"
    earlier.parent.mkdir()
    earlier.write_text("an earlier run's")
    refused = subprocess.run(["bash", str(script)], capture_output=True, text=True, env=env, timeout=60)
    assert refused.returncode == 2 and f"{tmp_path / 'out'} holds an earlier run; set OUT" in refused.stderr
    assert list((tmp_path / "out").iterdir()) == [earlier] and earlier.read_text() == "an earlier run's"


def test_family_report_names_missing_fashion_mnist_before_the_mnist_runs(tmp_path: Path) -> None:
    # deep_ae trained its MNIST runs, then stopped on a FileNotFoundError traceback at the first Fashion-MNIST run.
    argv = ["deep_ae", "--smoke", "--epochs", "1", "--pretrain-epochs", "0", "--data_dir",
            str(mnist_test_set(tmp_path / "data")), "--out", str(tmp_path / "out")]  # fmt: skip
    with pytest.raises(FileNotFoundError, match=f"in {tmp_path}/data/FashionMNIST/raw, or point data_dir at"):
        load_script("family_report").main(argv)
    assert not (tmp_path / "out").exists()
