"""The fast path changes nothing a user relies on: profiling on request, CUDA detection, module attributes, batches on
the device, compiled networks' checkpoints; and the speed benchmark writes its table."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from lightning.pytorch.profilers import SimpleProfiler
from tiny_runs import ROOT, build_cli, last_checkpoint, tiny_args
from torch import nn

from ae_lightning import Autoencoder
from ae_lightning import overhead as overhead_module
from ae_lightning.overhead import NoProfiler, skip_nvml_check_without_nvml
from datamodules import FashionMNISTDataModule


def test_the_command_uses_the_cheap_profiler_unless_one_is_asked_for(data_dir: Path, tmp_path: Path) -> None:
    assert isinstance(build_cli(*tiny_args("ae", data_dir, tmp_path)).trainer.profiler, NoProfiler)
    asked = build_cli(*tiny_args("ae", data_dir, tmp_path, "--trainer.profiler", "simple"))
    assert isinstance(asked.trainer.profiler, SimpleProfiler)


def test_no_profiler_context_runs_the_block_and_lets_errors_through() -> None:
    ran = []
    with NoProfiler().profile("step"):
        ran.append(True)
    assert ran == [True]
    with pytest.raises(KeyError), NoProfiler().profile("step"):
        raise KeyError("inside")


@pytest.mark.parametrize("nvml_loads", [True, False])
def test_nvml_check_is_dropped_only_where_nvml_is_missing(nvml_loads: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    def load(name: str):
        if not nvml_loads:
            raise OSError(f"{name}: cannot open shared object file")
        return object()

    monkeypatch.setenv("PYTORCH_NVML_BASED_CUDA_CHECK", "1")
    monkeypatch.setattr(torch.backends.cuda, "is_built", lambda: True)
    monkeypatch.setattr(overhead_module.ctypes, "CDLL", load)
    assert skip_nvml_check_without_nvml() is (not nvml_loads)
    assert ("PYTORCH_NVML_BASED_CUDA_CHECK" in os.environ) is nvml_loads


def test_cuda_detection_answers_the_same_without_the_nvml_check(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTORCH_NVML_BASED_CUDA_CHECK", "1")
    with_check = torch.cuda.is_available()
    monkeypatch.delenv("PYTORCH_NVML_BASED_CUDA_CHECK")
    assert torch.cuda.is_available() == with_check


def test_module_attributes_still_register_weights_next_to_the_cheap_hook_name() -> None:
    model = Autoencoder(hidden_dims=[8], latent_dim=2)
    model._current_fx_name = "training_step"
    model.head = nn.Linear(2, 3)
    model.scale = nn.Parameter(torch.ones(1))
    assert model._current_fx_name == "training_step"
    assert {"head.weight", "head.bias", "scale"} <= set(model.state_dict())
    assert "_current_fx_name" not in dict(model.named_modules())


def test_batches_already_on_the_device_pass_through_and_others_are_moved() -> None:
    datamodule = FashionMNISTDataModule()
    batch = (torch.rand(2, 1, 28, 28), torch.zeros(2, dtype=torch.long), torch.arange(2))
    assert datamodule.transfer_batch_to_device(batch, torch.device("cpu"), 0) is batch
    moved = datamodule.transfer_batch_to_device(list(batch), torch.device("cpu"), 0)
    assert all(torch.equal(a, b) for a, b in zip(moved, batch))
    meta = datamodule.transfer_batch_to_device(batch, torch.device("meta"), 0)
    assert all(item.device.type == "meta" for item in meta)
    group = [batch, batch]  # the batches of a model with steps_per_batch 2
    assert datamodule.transfer_batch_to_device(group, torch.device("cpu"), 0) is group
    moved_group = datamodule.transfer_batch_to_device(group, torch.device("meta"), 0)
    assert [item.device.type for step_batch in moved_group for item in step_batch] == ["meta"] * 6


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
    x = cli.datamodule.splits["val"][0][:4].unsqueeze(1).float() / 255
    torch.testing.assert_close(eager(x), cli.model.eval()(x), rtol=1e-4, atol=1e-5)


def run_benchmark(data_dir: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    command = [
        sys.executable, str(ROOT / "scripts" / "benchmark_speed.py"), "--data-dir", str(data_dir),
        "--batch-sizes", "8", "16", "--steps", "4", "--segments", "2", "--warmup", "2", "--devices", "cpu",
        "--steps-per-batch", "2",
        "--out", str(out), *extra,
    ]  # fmt: skip
    return subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=ROOT)


@pytest.mark.parametrize(
    "trainer", [[], ["--bare", "--phases", "--steps-per-batch", "1"]], ids=["command", "bare-phases-one-step"]
)
def test_speed_benchmark_writes_a_table_of_all_three_pipelines_and_keeps_an_existing_file(
    trainer: list[str], data_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "speed.md"
    result = run_benchmark(data_dir, out, *trainer)
    assert result.returncode == 0, result.stderr[-3000:]
    cells = r" \| ".join([r"([\d,.]+)"] * 5)
    rows = re.findall(r"^\| cpu \| (\d+) \| " + cells + r" \|$", out.read_text(), re.MULTILINE)
    assert [row[0] for row in rows] == ["8", "16"]
    for row in rows:
        assert all(float(cell.replace(",", "")) > 0 for cell in row[1:])
    written = out.read_text()
    assert ("Where a training step's time goes" in written) == ("--phases" in trainer)
    trained_by = "bare Lightning Trainer" if "--bare" in trainer else "ae-lightning"
    assert f"| hand-written loop | {trained_by} | ratio |" in written
    assert f"`configs/ae.yaml` with steps_per_batch {1 if '--bare' in trainer else 2} (optimizer steps" in written
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
    result = run_benchmark(data_dir, tmp_path / "speed.md", "--steps-per-batch", "3")
    assert result.returncode != 0
    assert "--steps 4 and --warmup 2 must be multiples of the model's steps_per_batch 3" in result.stderr
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
