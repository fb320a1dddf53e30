"""Helpers of the DDP, resume, precision and SLURM tests: tiny runs of ``ae-lightning``, in this process or in
subprocesses, and test-only callbacks that those runs put on their command line (this folder is on their PYTHONPATH):

    ae-lightning fit ... --trainer.callbacks+=tiny_runs.KillAtStep --trainer.callbacks.step 6

``python tests/tiny_runs.py RUNS.json`` runs several ``ae-lightning`` commands in one process (see :func:`main`).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from unittest import mock

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback

from ae_lightning import Autoencoder
from ae_lightning.cli import AutoencoderCLI

ROOT = Path(__file__).parents[1]
# The variant configs of image or vector data; configs/fast.yaml is a profile stacked on one of them, and the
# recommender configs, which read an interactions file, have tests/test_recommender.py.
CONFIGS = sorted(
    path
    for path in (ROOT / "configs").glob("*.yaml")
    if path.stem != "fast" and "InteractionsDataModule" not in path.read_text()
)

# Small networks, 2 epochs of 14 batches on the tiny data set (220 training images), cheap evaluation.
TINY_MODEL = ["--model.init_args.hidden_dims", "[32,16]", "--model.init_args.latent_dim", "4"]
NLL = ["--model.init_args.nll_samples", "4"]
TINY_EXTRA = {
    **dict.fromkeys(("vae", "beta_vae", "cvae", "cifar10_conv_vae", "iwae", "beta_tcvae", "dip_vae", "info_vae"), NLL),
    **dict.fromkeys(("photo_vae_f8_64", "photo_vae_f8_256"), NLL),
    "aae": ["--model.init_args.discriminator_hidden_dims", "[16]"],
    "autodecoder": ["--model.init_args.inference_steps", "2"],
    "deep_ae_rbm": ["--model.init_args.pretrain_epochs", "1"],
    "factor_vae": [*NLL, "--model.init_args.discriminator_hidden_dims", "[16]"],
    "vampprior": [*NLL, "--model.init_args.num_pseudo_inputs", "5"],
    "iaf_vae": [*NLL, "--model.init_args.flow_hidden_dims", "[16]"],
}
# Configs on dSprites, which is drawn from its factors: no data_dir, a small subset of the grid.
DSPRITES_CONFIGS = ("beta_tcvae", "dip_vae", "factor_vae")


def data_args(config: str, data_dir: Path) -> list[str]:
    """The data arguments of ``configs/<config>.yaml`` on the tiny data of ``conftest.data_dir``; for the photo configs
    a folder of 16x16 RGB images written here, and spatial networks small enough for them."""
    if config == "tabular_anomaly_ae":
        return ["--data.path", str(data_dir / "table.npz")]
    if config in DSPRITES_CONFIGS:
        return ["--data.num_samples", "400", "--data.val_fraction", "0.1", "--data.test_fraction", "0.1"]
    if config.startswith("photo_"):
        from conftest import write_image_folder

        folder = write_image_folder(data_dir / "photos", per_class=20, size=16)
        tiny_network = ["--model.init_args.hidden_dims", "[8,8,8,16]"]
        tiny_network += ["--model.init_args.spatial", "{num_res_blocks: 1}"]
        return ["--data.data_dir", str(folder), "--data.image_size", "16", "--data.batch_size", "8", *tiny_network]
    return ["--data.data_dir", str(data_dir)]


def tiny_args(config: str, data_dir: Path, root: Path, *extra: str) -> list[str]:
    """``fit``/``test`` arguments of a tiny run of ``configs/<config>.yaml`` writing under ``root``."""
    trainer = ["--trainer.default_root_dir", str(root), "--trainer.max_epochs", "2"]
    quiet = ["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]
    own = [*TINY_MODEL, *TINY_EXTRA.get(config, []), *data_args(config, data_dir), "--data.batch_size", "16"]
    return ["--config", str(ROOT / "configs" / f"{config}.yaml"), *own, *trainer, *quiet, *extra]


def run_cli(*args: str, run: bool = True) -> AutoencoderCLI:
    """``ae-lightning <args>`` in this process; ``run`` false: its model, datamodule and trainer, not run."""
    with mock.patch("sys.argv", ["ae-lightning"]):  # pytest's own arguments are not the CLI's
        return AutoencoderCLI(args=list(args), run=run)


def build_cli(*args: str) -> AutoencoderCLI:
    """``ae-lightning fit <args>`` built, not run: quicker than :func:`run_cli`, which parses every subcommand."""
    return run_cli(*args, run=False)


def subprocess_env() -> dict[str, str]:
    """This environment, with this folder importable (for the callbacks below) and W&B offline. Without
    ``WANDB_SERVICE`` (a subprocess starts a W&B service of its own, as a user's would) and ``MASTER_PORT`` (a DDP run
    picks a free port of its own, so that two at once do not collide)."""
    path = os.pathsep.join(filter(None, [str(Path(__file__).parent), os.environ.get("PYTHONPATH")]))
    env = {name: value for name, value in os.environ.items() if name not in ("WANDB_SERVICE", "MASTER_PORT")}
    return {**env, "PYTHONPATH": path, "WANDB_MODE": "offline"}


def command(*args: str) -> list[str]:
    """The command line of ``ae-lightning <args>``, for a subprocess."""
    return [sys.executable, "-m", "ae_lightning.cli", *args]


def run_subprocess(*args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    """``ae-lightning <args>`` in a subprocess (DDP launches its other ranks from it); output captured."""
    return subprocess.run(
        command(*args), env=subprocess_env(), capture_output=True, text=True, timeout=timeout, cwd=ROOT
    )


def run_or_fail_if_hung(args: list[str], timeout: float = 240) -> tuple[int, str]:
    """The exit status and output (stderr in stdout) of the command line ``args``, run in a session of its own; the
    test fails with the output if it runs past ``timeout`` seconds, and the session (DDP ranks too) is killed."""
    process = subprocess.Popen(
        args,
        env=subprocess_env(),
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        output, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        import pytest  # not for the runs that import this module for its callbacks

        os.killpg(process.pid, signal.SIGKILL)
        output, _ = process.communicate()
        pytest.fail(f"{' '.join(args[:4])} ... did not end in {timeout} s:\n{output[-5000:]}")
    return process.returncode, output


def last_checkpoint(root: Path) -> dict:
    """The newest ``last.ckpt`` under ``root``, loaded on the CPU."""
    path = max(root.rglob("last.ckpt"), key=lambda p: p.stat().st_mtime)
    return torch.load(path, map_location="cpu", weights_only=True)


class KillAtStep(Callback):
    """SIGKILLs its own process when training is about to run global step ``step``, after the checkpoints due before."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx: int) -> None:
        if trainer.global_step >= self.step:
            os.kill(os.getpid(), signal.SIGKILL)


class KillWhileWriting(Callback):
    """SIGKILLs its own process halfway through writing the checkpoint ``<name>`` of global step ``step``."""

    def __init__(self, step: int, name: str = "last.ckpt") -> None:
        self.step = step
        self.name = name

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        writer = trainer.strategy.checkpoint_io
        save = writer.save_checkpoint

        def save_or_die(checkpoint: dict, path, storage_options=None) -> None:
            if Path(path).name == self.name and checkpoint["global_step"] == self.step:
                torch.save = _save_half_and_die
            save(checkpoint, path, storage_options)

        writer.save_checkpoint = save_or_die


def _save_half_and_die(checkpoint: dict, file) -> None:
    file.write(b"PK\x03\x04" + bytes(100_000))  # the start of a zip archive, as torch.save writes, and no end
    file.flush()
    os.kill(os.getpid(), signal.SIGKILL)


class StepsOfBatch(Callback):
    """Notes the global step at each training batch's start: a batch took ``trainer.global_step - batch_start_step``
    optimizer steps (a model's ``steps_per_batch``, fewer where ``max_steps`` cut its list short)."""

    batch_start_step = 0

    def on_train_batch_start(self, trainer: L.Trainer, *args) -> None:
        self.batch_start_step = trainer.global_step


class RecordRank(StepsOfBatch):
    """Writes ``<folder>/rank<R>.pt`` at the end of fit: this rank's initial and final weights, and the sample
    indices of every training batch it trained on (one per optimizer step)."""

    def __init__(self, folder: str) -> None:
        self.folder = Path(folder)
        self.indices: list[list[int]] = []
        self.initial: dict[str, torch.Tensor] = {}

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.initial = _cpu_state(pl_module)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx) -> None:
        step_batches = batch if isinstance(batch, list) else [batch]  # steps_per_batch > 1: a list of batches
        for step_batch in step_batches[: trainer.global_step - self.batch_start_step]:
            self.indices.append(step_batch[2].tolist())

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        record = {"indices": self.indices, "initial": self.initial, "final": _cpu_state(pl_module)}
        torch.save(record, self.folder / f"rank{trainer.global_rank}.pt")


class RecordCodebooks(Callback):
    """Writes ``<folder>/rank<R>.pt`` at the end of fit: after every training batch (one optimizer step), this rank's
    ``cluster_size`` and ``embed`` buffers of each library codebook, and the number of code vectors it quantized."""

    def __init__(self, folder: str) -> None:
        self.folder = Path(folder)
        self.steps: list[dict] = []

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx) -> None:
        from vector_quantize_pytorch.vector_quantize_pytorch import Codebook

        codebooks = [module for module in pl_module.modules() if isinstance(module, Codebook)]
        height, width = pl_module.latent_shape[1:]
        record = {"vectors": batch[0].shape[0] * height * width}
        for name in ("cluster_size", "embed"):
            record[name] = [getattr(codebook, name).detach().cpu().clone() for codebook in codebooks]
        self.steps.append(record)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        torch.save(self.steps, self.folder / f"rank{trainer.global_rank}.pt")


def _cpu_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: value.detach().cpu().clone() for name, value in module.state_dict().items()}


class SlowDown(StepsOfBatch):
    """Sleeps ``seconds`` per optimizer step after every training batch, so that a test can signal a run while it is
    still training."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx) -> None:
        time.sleep(self.seconds * (trainer.global_step - self.batch_start_step))


class PoisonedAutoencoder(Autoencoder):
    """The plain autoencoder, with a NaN training ``loss`` (``recon`` stays finite) at the global steps
    ``poisoned_steps``."""

    def __init__(self, poisoned_steps: list[int] | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        self.poisoned_steps = set(poisoned_steps or [])

    def loss_terms(self, x: torch.Tensor, labels: torch.Tensor, indices: torch.Tensor) -> dict[str, torch.Tensor]:
        terms = super().loss_terms(x, labels, indices)
        if self.training and self.trainer.global_step in self.poisoned_steps:
            terms["loss"] = terms["loss"] * float("nan")
        return terms


class TrainLossPlateauAutoencoder(Autoencoder):
    """The plain autoencoder, its lr stepped by a ``ReduceLROnPlateau`` on ``train/loss`` (a user's own optimizers)."""

    def configure_optimizers(self) -> dict:
        optimizer = torch.optim.Adam(self.parameters(), lr=1e-3)
        plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": plateau, "monitor": "train/loss"}}


def main(runs_file: str) -> None:
    """Run each argument list of the JSON list in ``runs_file`` as one ``ae-lightning`` command, in order. Under DDP
    the first run launches the other ranks with this command line, and each rank goes through all runs: one start of
    the ranks (most of a tiny run's time) for several runs."""
    for args in json.loads(Path(runs_file).read_text()):
        AutoencoderCLI(args=args)  # with this script's own sys.argv, which DDP's launcher repeats for the ranks


class EndsProcessGroup(Callback):
    """Destroys the process group as a run ends. A ddp_spawn process that exits with it alive aborts now and then
    ("terminate called without an active exception": torch 2.14's gloo, a plain LightningModule too, about 1 exit in
    8 here), after its results are in; the tests of in-process ddp_spawn runs give their trainers this."""

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
