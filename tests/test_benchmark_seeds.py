"""The benchmark scripts under `benchmarks/`: what they train, measure and refuse (variants.py: over seeds)."""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import write_dataset, write_image_folder
from test_evaluation import load_script
from tiny_runs import ROOT

from ae_lightning.evaluation import driver as evaluation


def test_benchmark_over_seeds_reports_mean_and_spread(tmp_path: Path) -> None:
    write_dataset(tmp_path / "data", "MNIST")
    rows = load_script("benchmark").main(
        [
            "--configs", "ae", "--seeds", "1", "2", "--epochs", "1", "--metrics", "mse", "psnr",
            "--data", "MNISTDataModule", "--data_dir", str(tmp_path / "data"), "--tsne_points", "40",
            "--output", str(tmp_path / "results.md"), "--root", str(tmp_path / "runs"),
        ]
    )  # fmt: skip
    (row,) = rows
    assert sorted(row.per_seed) == [1, 2]
    first, second = row.per_seed[1]["mse"], row.per_seed[2]["mse"]
    assert first != second  # the seeds train different models
    assert row.scores["mse"] == statistics.fmean([first, second])
    assert row.spread["mse"] == statistics.stdev([first, second]) > 0
    report = (tmp_path / "results.md").read_text()
    assert "2 seeds (1, 2)" in report
    assert f"{row.scores['mse']:.4f} ± {row.spread['mse']:.4f}" in report
    saved = json.loads((tmp_path / "results" / "results.json").read_text())
    assert saved["seeds"] == [1, 2] and set(saved["variants"][0]["scores_per_seed"]) == {"1", "2"}
    pictures = saved["variants"][0]["pictures"].values()  # relative to the file (they were to the repository)
    assert pictures and all((tmp_path / "results" / path).is_file() for path in pictures)
    assert sorted(path.name for path in (tmp_path / "runs" / "ae").iterdir()) == ["seed-1", "seed-2"]


def test_every_config_by_default_leaves_out_by_name_those_the_data_cannot_build(tmp_path: Path) -> None:
    # The README's command (no --configs) was refused before training: configs/ holds fast.yaml, an overlay without a
    # model, and the f8 photo configs, whose sides must divide by 8, which no MNIST-family data build; and the tabular
    # config's test_fraction stopped it at that config's fit, after the configs before it had trained.
    configs = tmp_path / "configs"
    configs.mkdir()
    for name in ("ae", "fast", "photo_ae_f8_64", "tabular_anomaly_ae"):
        shutil.copy(Path(__file__).resolve().parents[1] / "configs" / f"{name}.yaml", configs)
    write_dataset(tmp_path / "data", "MNIST")
    rows = load_script("benchmark").main(
        [
            "--config_dir", str(configs), "--epochs", "1", "--metrics", "mse", "--data_dir", str(tmp_path / "data"),
            "--tsne_points", "20", "--output", str(tmp_path / "results.md"), "--root", str(tmp_path / "runs"),
        ]
    )  # fmt: skip
    assert [row.name for row in rows] == ["ae"] and rows[0].scores["mse"] > 0
    left_out = json.loads((tmp_path / "results" / "results.json").read_text())["left_out"]
    assert sorted(left_out) == ["fast", "photo_ae_f8_64", "tabular_anomaly_ae"]
    assert "divisible by 8" in left_out["photo_ae_f8_64"] and "test_fraction=0.3" in left_out["tabular_anomaly_ae"]
    report = (tmp_path / "results.md").read_text()
    assert "**Partial" not in report and "- **Left out** (they do not build with this data): `fast`: " in report
    with pytest.raises(ValueError, match=r"config fast \(.*fast.yaml\) does not build with these settings: "):
        load_script("benchmark").main(["--configs", str(configs / "fast.yaml"), "--metrics", "mse", "--data_dir",
                                       str(tmp_path / "data"), "--output", str(tmp_path / "named.md"), "--root",
                                       str(tmp_path / "named")])  # fmt: skip
    assert not (tmp_path / "named").exists()


def test_a_datamodule_without_data_dir_is_refused_naming_the_dsprites_benchmark(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"--data DSpritesDataModule takes no data_dir: .*disentanglement.py --part"):
        load_script("benchmark").main(["--configs", "beta_tcvae", "--data", "DSpritesDataModule",
                                       "--output", str(tmp_path / "results.md"), "--root", str(tmp_path)])  # fmt: skip
    assert not list(tmp_path.iterdir())


def test_the_benchmark_follows_keyword_arguments_passed_on_to_the_datamodule_that_takes_data_dir() -> None:
    # DSpritesDataModule passes its **kwargs on to ImageDataModule, which takes no data_dir: it was let through, then
    # refused by a TypeError
    from datamodules import DSpritesDataModule, MNISTDataModule

    class Forwarding(MNISTDataModule):
        def __init__(self, **kwargs) -> None:
            super().__init__(**kwargs)

    def takes_data_dir(cls: type) -> bool:
        return "data_dir" in evaluation.init_parameters(cls)

    assert takes_data_dir(Forwarding) and takes_data_dir(MNISTDataModule) and not takes_data_dir(DSpritesDataModule)


def test_a_folder_of_unlabelled_images_is_benchmarked_and_auroc_on_it_refused(tmp_path: Path) -> None:
    folder = write_image_folder(tmp_path / "photos", classes=(), per_class=48, size=12)
    common = [
        "--configs", "ae", "--epochs", "1", "--data", "ImageFolderDataModule", "--data_dir", str(folder),
        "--tsne_points", "20", "--output", str(tmp_path / "results.md"), "--root", str(tmp_path / "runs"),
    ]  # fmt: skip
    with pytest.raises(ValueError, match=r"--metrics auroc holds out classes, but --data ImageFolderDataModule has no"):
        load_script("benchmark").main([*common, "--metrics", "auroc"])
    (row,) = load_script("benchmark").main([*common, "--metrics", "mse"])
    assert row.scores["mse"] > 0 and (tmp_path / "results.md").is_file()


def test_disentanglement_trains_a_fraction_of_an_epoch_past_the_first_and_names_the_test_images_it_scored(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    write_dataset(tmp_path / "data", "FashionMNIST")  # 220 training images: 2 batches of 128; 60 test images
    argv = ["--part", "nll", "--models", "vae", "--epochs", "1.5", "--nll_samples", "2", "--test_images", "1000",
            "--data_dir", str(tmp_path / "data"), "--root", str(tmp_path / "runs")]  # fmt: skip
    load_script("disentanglement").main(argv)
    out = capsys.readouterr().out
    assert "(3 steps," in out  # 1.5 epochs of 2 batches, not 2 whole epochs
    assert "1.5 epochs, K = 2, 60 test images" in out  # what was scored, not what was asked


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--epochs", "0"], "--epochs 0.0: expected a number of epochs above 0"),
        (["--models", "vea"], "--models vea: unknown; the models are vae, "),
        (["--nll_samples", "0"], "--nll_samples 0: expected at least 1"),
        (["--part", "mig", "--steps", "1", "--points", "9"], "--points 9: expected at least 10"),  # MIG's least
    ],
)
def test_disentanglement_refuses_a_bad_setting_by_name_before_training(
    argv: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    with pytest.raises(SystemExit):
        load_script("disentanglement").main(["--part", "nll", "--models", "vae", "--data_dir", str(tmp_path / "none"),
                                             *argv, "--root", str(tmp_path / "runs")])  # fmt: skip
    assert message in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_the_speed_benchmarks_measure_as_many_images_as_asked_after_a_run_that_asked_for_more(tmp_path: Path) -> None:
    data_speed, own_data_speed = load_script("data_speed"), load_script("own_data_speed")
    for count in (5, 3):
        folder = data_speed.write_pngs(tmp_path / "ds", "png18", count, 18)
        assert len(list((folder / "all").glob("*.png"))) == count
        folder = own_data_speed.write_pngs(tmp_path / "od", count)
        assert len(list(folder.glob("*.png"))) == count


@pytest.mark.parametrize(
    "argv, status, message",
    [(["--dataset", "Nope"], 1, "contractive_epoch.py: error: unknown datamodule 'Nope'; the datamodules are "),
     (["--repeats", "0"], 2, "contractive_epoch.py: error: --repeats 0: expected at least 1")],
)  # fmt: skip
def test_contractive_epoch_refuses_a_bad_setting_in_one_line(
    argv: list[str], status: int, message: str, tmp_path: Path
) -> None:
    # An unknown --dataset ended on an AttributeError traceback; --repeats 0 read the data, then failed on min([]).
    command = [sys.executable, str(ROOT / "benchmarks" / "contractive_epoch.py"), "--data_dir", str(tmp_path), *argv]
    ran = subprocess.run(command, capture_output=True, text=True, timeout=240)
    assert ran.returncode == status and message in ran.stderr and "Traceback" not in ran.stderr, ran.stderr[-2000:]


def test_adversarial_sharpness_refuses_an_earlier_runs_folder_and_a_term_that_never_starts(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    script = load_script("adversarial_sharpness")
    (tmp_path / "runs" / "without").mkdir(parents=True)
    common = ["--data_dir", str(tmp_path / "none"), "--steps", "2", "--disc_start", "1"]
    for argv, message in (
        (["--out", str(tmp_path / "runs")], "holds an earlier run"),
        (["--out", str(tmp_path / "new"), "--disc_start", "2"], "--disc_start 2 must be below --steps 2"),
    ):
        with pytest.raises(SystemExit):
            script.main([*common, *argv])
        assert message in capsys.readouterr().err
    assert sorted(path.name for path in tmp_path.iterdir()) == ["runs"]
    monkeypatch.chdir(tmp_path)  # the runs start in the repository: relative paths are the caller's
    args = script.parse_args(["--data_dir", "data", "--out", "sharp"])
    assert args.out == tmp_path / "sharp" and args.data_dir == str(tmp_path / "data")


@pytest.mark.parametrize("points", [["3:16"], ["8"], ["8:1"]])
def test_rate_distortion_refuses_a_point_it_cannot_train_as_named(
    points: list[str], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    argv = ["--points", *points, "--steps", "1", "--prior_steps", "1", "--jpeg_qualities", "50", "--webp_qualities",
            "50", "--out", str(tmp_path / "rd")]  # fmt: skip
    with pytest.raises(SystemExit):
        load_script("rate_distortion").main(argv)
    assert f"{points[0]!r}: expected factor:codebook_size, the factor a power of 2" in capsys.readouterr().err
    assert not (tmp_path / "rd").exists()


def test_the_benchmark_refuses_a_count_it_cannot_evaluate_before_anything_trains(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    write_dataset(tmp_path / "data", "MNIST")
    argv = ["--configs", "ae", "--metrics", "mse", "--data_dir", str(tmp_path / "data"), "--tsne_points", "0",
            "--output", str(tmp_path / "results.md"), "--root", str(tmp_path / "runs")]  # fmt: skip
    with pytest.raises(SystemExit):
        load_script("benchmark").main(argv)
    assert "--tsne_points 0: expected at least 1" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize(
    "given, message",
    [(["--configs", "ae", "--seed", "3", "--seeds", "1", "2"], "--seed 3 and --seeds 1 2: give one of the two"),
     (["--configs", "ae", "OTHER/ae.yaml"], "their runs and rows would share the name 'ae'")],
    ids=["seed-and-seeds", "two-configs-of-one-name"],
)  # fmt: skip
def test_the_benchmark_refuses_settings_it_would_ignore_before_anything_trains(
    given: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    write_dataset(tmp_path / "data", "MNIST")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "ae.yaml").write_text((ROOT / "configs" / "ae.yaml").read_text())
    given = [arg.replace("OTHER", str(tmp_path / "other")) for arg in given]
    argv = [*given, "--metrics", "mse", "--data_dir", str(tmp_path / "data"), "--output", str(tmp_path / "results.md"),
            "--root", str(tmp_path / "runs")]  # fmt: skip
    with pytest.raises((SystemExit, ValueError)) as refused:
        load_script("benchmark").main(argv)
    assert message in capsys.readouterr().err + str(refused.value)
    assert not (tmp_path / "runs").exists()


def test_the_recommender_benchmark_prints_the_readmes_table_and_refuses_repeated_seeds(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    rng = np.random.default_rng(0)
    lines = [f"{user}\t{item}\t5" for user in range(60) for item in rng.choice(30, size=8, replace=False)]
    (tmp_path / "ratings.tsv").write_text("\n".join(lines) + "\n")
    common = ["--path", str(tmp_path / "ratings.tsv"), "--configs", "mult_dae", "--epochs", "1", "--val_users", "10",
              "--test_users", "10", "--root", str(tmp_path / "runs")]  # fmt: skip
    with pytest.raises(SystemExit):
        load_script("recommender").main([*common, "--seeds", "1", "1"])
    assert "--seeds and --configs must be distinct, got [1, 1]" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()
    load_script("recommender").main([*common, "--seeds", "1"])
    table = capsys.readouterr().out.split("| ranking |")[1]
    assert table.startswith(" Recall@20 | Recall@50 | NDCG@100 |")  # README's columns
    assert "\n| Mult-DAE | " in table and "\n| popularity | " in table


def test_vqvae_seeds_refuses_an_earlier_runs_folder_and_names_a_failed_fit(tmp_path: Path) -> None:
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "vqvae_seeds.sh"
    (tmp_path / "vq" / "conv-ae-14-seed1").mkdir(parents=True)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    done = subprocess.run(["bash", str(script), str(tmp_path / "none"), str(tmp_path / "vq"), "3", "0", "1"],
                          capture_output=True, text=True, cwd=tmp_path, env=env)  # fmt: skip
    assert done.returncode == 2 and f"{tmp_path / 'vq' / 'conv-ae-14-seed1'} exists" in done.stderr
    assert sorted(path.name for path in (tmp_path / "vq").iterdir()) == ["conv-ae-14-seed1"]
    done = subprocess.run(["bash", str(script), str(tmp_path / "none"), str(tmp_path / "new"), "3", "0"],
                          capture_output=True, text=True, cwd=tmp_path, env=env)  # fmt: skip
    assert done.returncode == 1 and "vqvae seed 0: fit failed: ae-lightning: error: FashionMNIST" in done.stderr


def test_a_kl_warm_up_that_outlasts_the_budget_is_named_in_the_report(tmp_path: Path) -> None:
    # configs/vampprior.yaml warms the KL up over 5,000 steps: the 3-epoch table scored it at 0.26 x beta, unsaid
    write_dataset(tmp_path / "data", "MNIST")
    (row,) = load_script("benchmark").main(
        [
            "--configs", "beta_vae", "--epochs", "1", "--metrics", "mse", "--data", "MNISTDataModule",
            "--data_dir", str(tmp_path / "data"), "--tsne_points", "40", "--output", str(tmp_path / "results.md"),
            "--root", str(tmp_path / "runs"),
        ]
    )  # fmt: skip
    steps = torch.load(next((tmp_path / "runs").rglob("last.ckpt")), weights_only=False)["global_step"]
    assert row.kl_weight_reached == (steps - 1) / 1000  # configs/beta_vae.yaml's kl_warmup_steps
    unfinished = f"`beta_vae` ({(steps - 1) / 1000:.2f} x beta) at the last step"
    assert f"**KL warm-up unfinished** in this budget (the config's `kl_warmup_steps`): {unfinished}" in (
        (tmp_path / "results.md").read_text()
    )
