"""``benchmarks/variants.py --seeds``: each config trained once per seed, every metric as mean ± std."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest
from conftest import write_dataset, write_image_folder
from test_evaluation import load_script


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
    assert sorted(path.name for path in (tmp_path / "runs" / "ae").iterdir()) == ["seed-1", "seed-2"]


def test_a_datamodule_without_data_dir_is_refused_naming_the_dsprites_benchmark(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"--data DSpritesDataModule takes no data_dir: .*disentanglement.py --part"):
        load_script("benchmark").main(["--configs", "beta_tcvae", "--data", "DSpritesDataModule",
                                       "--output", str(tmp_path / "results.md"), "--root", str(tmp_path)])  # fmt: skip
    assert not list(tmp_path.iterdir())


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
