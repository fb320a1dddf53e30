"""Speed work changes nothing a user relies on: the environment, batches on the device, compiled networks'
checkpoints; and the speed benchmark writes its table."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tiny_runs import ROOT, build_cli, last_checkpoint, tiny_args

from ae_lightning import Autoencoder
from datamodules import FashionMNISTDataModule


def test_importing_the_package_leaves_the_environment_alone() -> None:
    # Lightning itself sets PYTORCH_NVML_BASED_CUDA_CHECK when imported: compare after importing it.
    code = ("import os, lightning.pytorch; before = dict(os.environ); import ae_lightning, ae_lightning.cli; "
            "print(before == dict(os.environ))")  # fmt: skip
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert result.stdout.strip() == "True", result.stderr[-2000:]


def test_batches_already_on_the_device_pass_through_and_others_are_moved() -> None:
    datamodule = FashionMNISTDataModule()
    batch = (torch.rand(2, 1, 28, 28), torch.zeros(2, dtype=torch.long), torch.arange(2))
    assert datamodule.transfer_batch_to_device(batch, torch.device("cpu"), 0) is batch
    moved = datamodule.transfer_batch_to_device(list(batch), torch.device("cpu"), 0)
    assert all(torch.equal(a, b) for a, b in zip(moved, batch))
    meta = datamodule.transfer_batch_to_device(batch, torch.device("meta"), 0)
    assert all(item.device.type == "meta" for item in meta)


@pytest.mark.slow
def test_compiled_networks_train_and_write_checkpoints_that_load_into_an_eager_model(
    data_dir: Path, tmp_path: Path
) -> None:
    cli = build_cli(*tiny_args("ae", data_dir, tmp_path, "--model.init_args.compile_networks", "true",
                               "--trainer.max_epochs", "1"))  # fmt: skip
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    assert all(hasattr(network, "_compiled_call_impl") for network in cli.model.networks())
    state = last_checkpoint(tmp_path)["state_dict"]
    assert not any("_orig_mod" in name for name in state)
    eager = Autoencoder(hidden_dims=[32, 16], latent_dim=4)
    eager.load_state_dict(state)
    x = cli.datamodule.splits["val"][0][:4].float() / 255
    torch.testing.assert_close(eager(x), cli.model.eval()(x), rtol=1e-4, atol=1e-5)


def run_benchmark(data_dir: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    command = [
        sys.executable, str(ROOT / "benchmarks" / "speed.py"), "--data-dir", str(data_dir),
        "--batch-sizes", "8", "16", "--steps", "4", "--segments", "2", "--warmup", "2", "--devices", "cpu",
        "--fast-steps", "2",
        "--out", str(out), *extra,
    ]  # fmt: skip
    return subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=ROOT)


@pytest.mark.parametrize(
    "trainer", [[], ["--bare", "--phases", "--fast-steps", "1"]], ids=["command", "bare-phases-one-step"]
)
def test_speed_benchmark_writes_a_table_of_all_three_pipelines_and_keeps_an_existing_file(
    trainer: list[str], data_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "speed.md"
    result = run_benchmark(data_dir, out, *trainer)
    assert result.returncode == 0, result.stderr[-3000:]
    rate, ratio = r"([\d,.]+)", r"([\d.]+) \([\d.]+-[\d.]+\)"  # a ratio carries its interquartile range
    cells = r" \| ".join([rate, rate, ratio, rate, ratio])
    rows = re.findall(r"^\| cpu \| (\d+) \| " + cells + r" \|$", out.read_text(), re.MULTILINE)
    assert [row[0] for row in rows] == ["8", "16"]
    for row in rows:
        assert all(float(cell.replace(",", "")) > 0 for cell in row[1:])
    written = out.read_text()
    assert ("Where a training step's time goes" in written) == ("--phases" in trainer)
    trained_by = "bare Lightning Trainer" if "--bare" in trainer else "ae-lightning"
    assert f"| hand-written loop | {trained_by} | ratio |" in written
    assert f"`configs/ae.yaml` with fast.steps {1 if '--bare' in trainer else 2} (optimizer steps" in written
    again = run_benchmark(data_dir, out)
    assert again.returncode != 0 and f"--out {out} exists" in again.stderr
    assert out.read_text() == written


def test_speed_benchmark_phases_split_each_step_into_arithmetic_and_the_rest(data_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "speed.md"
    result = run_benchmark(data_dir, out, "--phases")
    assert result.returncode == 0, result.stderr[-3000:]
    cells = r" \| ".join([r"([\d,.]+)"] * 3)
    rows = re.findall(r"^\| cpu \| (\d+) \| ([a-z -]+) \| " + cells + r" \| ([\d,.-]*) \|$", out.read_text(), re.M)
    assert sorted((batch, name) for batch, name, *_ in rows) == [
        (batch, name) for batch in ("16", "8") for name in ("ae-lightning", "hand-written", "torchvision")
    ]
    for _, name, step, arithmetic, rest, excess in rows:
        step, arithmetic, rest = (float(cell.replace(",", "")) for cell in (step, arithmetic, rest))
        assert 0 < arithmetic < step  # every pipeline's forward and backward were timed, and they are part of a step
        assert 0 < rest < step
        assert (excess == "") == (name == "hand-written")


def test_speed_benchmark_refuses_segments_that_end_inside_a_lightning_batch(data_dir: Path, tmp_path: Path) -> None:
    result = run_benchmark(data_dir, tmp_path / "speed.md", "--fast-steps", "3")
    assert result.returncode != 0
    assert "--steps 4 and --warmup 2 must be multiples of --fast-steps 3" in result.stderr
    assert not (tmp_path / "speed.md").exists()


def test_speed_benchmark_phases_refuse_a_gpu_whose_kernels_it_cannot_time(data_dir: Path, tmp_path: Path) -> None:
    result = run_benchmark(data_dir, tmp_path / "speed.md", "--phases", "--devices", "cuda")
    assert result.returncode != 0
    assert "--phases times the CPU's work and needs --devices cpu, got --devices cuda" in result.stderr
    assert not (tmp_path / "speed.md").exists()


def test_speed_benchmark_refuses_a_model_the_reference_loop_cannot_train(data_dir: Path, tmp_path: Path) -> None:
    result = run_benchmark(data_dir, tmp_path / "speed.md", "--config", str(ROOT / "configs" / "aae.yaml"))
    assert result.returncode != 0
    assert "AdversarialAutoencoder trains with several optimizers" in result.stderr
    assert not (tmp_path / "speed.md").exists()


def test_speed_benchmark_times_a_whole_epoch_of_fit_with_validation(data_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "epoch.md"
    result = run_benchmark(data_dir, out, "--batch-sizes", "--epoch")  # the last --batch-sizes wins: none
    assert result.returncode == 0, result.stderr[-3000:]
    written = out.read_text()
    assert "| device | batch |" not in written  # no batch sizes: no throughput table
    # the tiny dataset's 240 training images: 220 to train on and 20 held out for validation, all in the epoch
    found = re.search(
        r"^VAE epoch \(`configs/vae.yaml`, batch 128, cpu, precision 32\): ([\d.]+) s for 240 images \(220 training "
        r"and 20 validation, .*\), of which the training pass took ([\d.]+) s \(([\d,]+) images/s\)",
        written,
        re.MULTILINE,
    )
    assert found, written
    epoch, training, rate = (float(value.replace(",", "")) for value in found.groups())
    assert 0 < training < epoch
    assert 220 / (training + 0.0005) <= rate + 0.5 and rate - 0.5 <= 220 / (training - 0.0005)  # seconds to 3 places


def test_speed_benchmark_refuses_to_run_with_nothing_to_measure(data_dir: Path, tmp_path: Path) -> None:
    result = run_benchmark(data_dir, tmp_path / "speed.md", "--batch-sizes")
    assert result.returncode != 0
    assert "nothing to measure: give --batch-sizes, --nll or --epoch" in result.stderr
    assert not (tmp_path / "speed.md").exists()
