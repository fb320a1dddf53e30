"""Speed work changes nothing a user relies on: the environment, batches on the device, compiled networks'
checkpoints; and the speed benchmark writes its table."""

from __future__ import annotations

import functools
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import lightning as L
import pytest
import torch
from lightning.pytorch.plugins import FSDPPrecision, MixedPrecision
from test_benchmark_outputs import killed_while_writing
from tiny_runs import ROOT, build_cli, last_checkpoint, tiny_args

from ae_lightning import AutoDecoder, Autoencoder
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
    group = [batch, batch]  # the fast path's Lightning batch
    assert datamodule.transfer_batch_to_device(group, torch.device("cpu"), 0) is group
    meta_group = datamodule.transfer_batch_to_device(group, torch.device("meta"), 0)
    assert all(item.device.type == "meta" for one in meta_group for item in one)
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


def import_benchmark() -> ModuleType:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import speed
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    return speed


def run_benchmark(data_dir: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    command = [
        sys.executable, str(ROOT / "benchmarks" / "speed.py"), "--data-dir", str(data_dir), "--batch-sizes", "8",
        "--short", "2", "--long", "12", "--rounds", "2", "--devices", "cpu", "--out", str(out), *extra,
    ]  # fmt: skip
    return subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=ROOT)


def test_speed_benchmark_writes_a_table_of_every_pipeline_against_the_pytorch_loop(
    data_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "speed.md"
    result = run_benchmark(data_dir, out, "--flush-denormal")
    assert result.returncode == 0, result.stderr[-3000:]
    written = out.read_text()
    assert "torch threads, denormals flushed" in written
    header = "| PyTorch loop, images/s | LightningModule: images/s | ratio | LightningModule, bare: images/s | ratio "
    header += "| LightningModule, manual: images/s | ratio "
    assert header + "| ae-lightning fit: images/s | ratio | fast path: images/s | ratio |" in written
    # Runs this short time mostly noise, which may even be negative: the test checks the table, not the machine.
    rate, ratio = r"(-?[\d,.]+)", r"(-?[\d.]+) \((-?[\d.]+)-(-?[\d.]+)\)"  # a ratio carries its range over rounds
    rows = re.findall(r"^\| cpu \| (\d+) \| " + r" \| ".join([rate] + [rate, ratio] * 5) + r" \|$", written, re.M)
    assert [row[0] for row in rows] == ["8"], written
    for row in rows:
        for middle, low, high in (row[i : i + 3] for i in (3, 7, 11, 15, 19)):
            assert float(low) <= float(middle) <= float(high)
    pairs = [("ae-lightning fit", "LightningModule"), ("ae-lightning fit", "LightningModule, bare"),
             ("fast path", "LightningModule, manual")]  # fmt: skip
    for ours, name in pairs:  # each path against its own minimal reference, read off directly
        found = re.search(rf"cpu, batch 8: `{ours}` over `{name}`: {ratio}$", written, re.M)
        assert found and float(found[2]) <= float(found[1]) <= float(found[3]), written
    assert "2 interleaved rounds" in written
    again = run_benchmark(data_dir, out)
    assert again.returncode != 0 and f"--out {out} exists" in again.stderr
    assert out.read_text() == written
    unknown = run_benchmark(data_dir, tmp_path / "other.md", "--devices", "foo")  # was a traceback
    assert unknown.returncode == 2 and "--devices: invalid choice: 'foo'" in unknown.stderr


def test_every_benchmark_pipeline_starts_from_the_weights_of_its_round_seed(data_dir: Path, tmp_path: Path) -> None:
    # A CPU step's cost depends on the weights' history (Adam slows several-fold on denormals), so the benchmark's
    # rounds compare pipelines started alike: the references seed torch, the command takes --seed_everything.
    speed = import_benchmark()
    args = ["--config", str(ROOT / "configs" / "ae.yaml"), "--data", "FashionMNISTDataModule", "--data.data_dir",
            str(data_dir), "--trainer.default_root_dir", str(tmp_path)]  # fmt: skip
    for seed in (0, 3):
        ours = build_cli(*args, "--seed_everything", str(seed)).model
        torch.manual_seed(seed)
        reference = speed.network()
        pairs = list(zip(ours.parameters(), reference.parameters(), strict=True))
        assert len(pairs) == 12 and all(torch.equal(a, b) for a, b in pairs)


def test_the_minimal_lightning_modules_take_the_steps_asked_for_with_or_without_lists_of_batches() -> None:
    speed = import_benchmark()
    images = torch.rand(50, 1, 28, 28)  # 7 batches of 8 an epoch: lists of 3 end an epoch with a shorter one
    for group in (0, 3):
        assert speed.lightning_module(images, 8, 17, seed=0, bare=True, group=group) == 17


def test_speed_benchmark_replaces_its_table_whole(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # a run killed while writing --out left it half-written
    speed, out = import_benchmark(), tmp_path / "speed.md"
    out.write_text("an earlier run's")
    monkeypatch.setattr(speed, "table", lambda args: ["| a table |"])  # what it measures is not the point here
    monkeypatch.setattr(sys, "argv", ["speed.py", "--devices", "cpu", "--out", str(out), "--overwrite"])
    with killed_while_writing(tmp_path):
        speed.main()
    assert out.read_text() == "an earlier run's" and list(tmp_path.iterdir()) == [out]
    speed.main()
    assert out.read_text() == "| a table |\n"


def test_speed_benchmark_refuses_runs_whose_difference_is_no_step(data_dir: Path, tmp_path: Path) -> None:
    result = run_benchmark(data_dir, tmp_path / "speed.md", "--long", "2")
    assert result.returncode != 0
    assert "--long 2 must be more steps than --short 2" in result.stderr
    assert not (tmp_path / "speed.md").exists()


def test_the_optimizer_is_fused_where_pytorch_has_it_and_an_explicit_choice_stands(
    data_dir: Path, tmp_path: Path
) -> None:
    def optimizer(**kwargs) -> torch.optim.Optimizer:
        return Autoencoder(hidden_dims=[8], latent_dim=2, **kwargs).configure_optimizers()["optimizer"]

    assert optimizer().defaults["fused"] is True  # Adam, the default, on the CPU
    assert optimizer(optimizer=functools.partial(torch.optim.SGD, lr=0.1)).defaults["fused"] is True
    assert optimizer(optimizer=lambda p: torch.optim.SGD(p, lr=0.1)).defaults["fused"] is None  # takes no `fused`
    for choice in ({"fused": False}, {"foreach": False}, {"foreach": True}):
        chosen = optimizer(optimizer=functools.partial(torch.optim.Adam, **choice)).defaults
        assert {name: chosen[name] for name in choice} == choice and not chosen["fused"]
    assert optimizer(optimizer=torch.optim.RMSprop).defaults["foreach"] is None  # no fused variant: PyTorch's choice
    # From the command line, where jsonargparse passes every argument of the optimizer's signature.
    for extra, fused in (([], True), (["--model.init_args.optimizer.init_args.foreach", "false"], None)):
        cli = build_cli(*tiny_args("ae", data_dir, tmp_path, "--model.init_args.optimizer", "torch.optim.Adam", *extra))
        assert cli.model.configure_optimizers()["optimizer"].defaults["fused"] is fused


def test_every_parameter_group_of_the_fused_optimizer_is_fused() -> None:
    # A GPU run under 16-mixed found the codes' group left unfused while the optimizer counted as fused.
    optimizer = AutoDecoder(hidden_dims=[8], latent_dim=2, num_codes=4).configure_optimizers()["optimizer"]
    assert [group["fused"] for group in optimizer.param_groups] == [True, True]
    assert optimizer.param_groups[1]["lr"] == 0.01  # the codes' own rate
    # Groups whose parameters come as iterators (module.parameters()) keep them through both builds.
    model = Autoencoder(hidden_dims=[8], latent_dim=2)
    groups = [{"params": model.decoder.parameters()}, {"params": model.encoder.parameters(), "lr": 0.01}]
    optimizer = model.build_optimizer(groups, torch.optim.Adam, None)["optimizer"]
    assert [(len(g["params"]), g["fused"]) for g in optimizer.param_groups] == [(4, True), (4, True)]


@pytest.mark.parametrize("precision", ["bf16-mixed", "16-mixed"])
def test_under_mixed_precision_the_default_optimizer_is_one_lightning_clips(
    precision: str, data_dir: Path, tmp_path: Path
) -> None:
    # Lightning refuses to clip a fused optimizer's gradients under mixed precision (found on a GPU under 16-mixed,
    # whose gradient scaler the CPU's stands in for here).
    plugin = MixedPrecision(precision, "cpu", scaler=torch.amp.GradScaler("cpu") if precision == "16-mixed" else None)
    trainer = L.Trainer(
        accelerator="cpu", plugins=[plugin], gradient_clip_val=1.0, max_steps=2, limit_val_batches=0, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, default_root_dir=tmp_path,
    )  # fmt: skip
    model = Autoencoder(hidden_dims=[8], latent_dim=2)
    trainer.fit(model, datamodule=FashionMNISTDataModule(data_dir=str(data_dir), batch_size=16))
    assert trainer.global_step == 2
    assert not trainer.optimizers[0].defaults["fused"]


@pytest.mark.parametrize("config", ["superres_ae", "iwae"])
def test_the_config_adam_is_fused_in_32_and_clipped_under_bf16_mixed(
    config: str, data_dir: Path, tmp_path: Path
) -> None:
    # An explicit `fused: true` in the config made Lightning refuse the Trainer's gradient clipping under bf16-mixed.
    cli = build_cli(*tiny_args(config, data_dir, tmp_path / "32"))
    assert cli.model.configure_optimizers()["optimizer"].defaults["fused"] is True
    mixed = ["--trainer.precision", "bf16-mixed", "--trainer.gradient_clip_val", "1", "--trainer.fast_dev_run", "true"]
    cli = build_cli(*tiny_args(config, data_dir, tmp_path / "bf16", *mixed))
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    assert cli.trainer.global_step == 1 and not cli.trainer.optimizers[0].defaults["fused"]


def test_under_fsdp_mixed_precision_the_default_optimizer_is_not_fused_either() -> None:
    # FSDP's precision plugin is no MixedPrecision, and with a fused optimizer it skips unscaling before clipping.
    for plugin, fused in ((FSDPPrecision("bf16-mixed"), None), (FSDPPrecision("32-true"), True)):
        model = Autoencoder(hidden_dims=[8], latent_dim=2)
        model.trainer = L.Trainer(accelerator="cpu", plugins=[plugin], logger=False)
        assert model.configure_optimizers()["optimizer"].defaults["fused"] is fused, plugin.precision


@pytest.mark.parametrize(("reconstruction", "input_shape"), [("bce", (1, 6, 6)), ("mse", (1, 6, 6)), ("mse", (5,))])
def test_the_fused_training_loss_is_the_batch_mean_of_the_per_sample_loss(
    reconstruction: str, input_shape: tuple[int, ...]
) -> None:
    # Training takes the batch mean in one fused reduction (fewer kernels per step); scores stay per sample.
    model = Autoencoder(hidden_dims=[8], latent_dim=2, input_shape=input_shape, reconstruction=reconstruction)
    x = torch.rand(7, *input_shape)
    logits = model.decoder_logits(model.encode(x))
    per_sample = model.reconstruction_loss(logits, x)
    assert per_sample.shape == (7,)
    torch.testing.assert_close(model.mean_reconstruction_loss(logits, x), per_sample.mean())
