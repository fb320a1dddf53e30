"""The sbatch templates on a real single-node SLURM cluster, started by ``tests/slurm/start_cluster.sh``.

The CPU template runs a 2-task DDP fit through ``srun``; SIGUSR1, as SLURM sends it before the time limit, makes
Lightning write an HPC checkpoint and requeue the job, which resumes from it and finishes under the same W&B run id.

These need root and Debian's slurm packages (the script installs them if missing). Where the cluster cannot start,
they skip, unless ``AE_LIGHTNING_REQUIRE_SLURM=1`` (set by ``.ci/run``), which makes that a failure.
"""

from __future__ import annotations

import csv
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import lightning as L
import pytest
import torch
from conftest import write_dataset
from lightning.pytorch.demos.boring_classes import BoringModel
from test_fault_tolerance_sigterm import SigtermAtBatch
from tiny_runs import ROOT, TINY_MODEL, run_cli, run_subprocess, subprocess_env, tiny_args

from ae_lightning.cli import ConfigError
from ae_lightning.training.fault_tolerance import SlurmRequeue
from ae_lightning.training.fault_tolerance.slurm import hpc_checkpoint_path, hpc_checkpoints

pytestmark = pytest.mark.slurm

REQUIRED = os.environ.get("AE_LIGHTNING_REQUIRE_SLURM") == "1"
START = ROOT / "tests" / "slurm" / "start_cluster.sh"
TEMPLATE = ROOT / "scripts" / "slurm" / "cpu.sbatch"
SEARCH_TEMPLATE = ROOT / "scripts" / "slurm" / "search_array.sbatch"
STEPS_PER_EPOCH = 14  # 220 training images in global batches of 2 ranks x 8
EPOCHS = 3


def unavailable(reason: str) -> None:
    if REQUIRED:
        pytest.fail(f"SLURM is required here (AE_LIGHTNING_REQUIRE_SLURM=1) but {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def slurm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """The environment of a running single-node cluster (``SLURM_CONF`` set), stopped after the module."""
    if os.name != "posix" or os.geteuid() != 0:
        unavailable("the test cluster needs root")
    state = tmp_path_factory.mktemp("slurm")
    try:
        started = subprocess.run(["bash", str(START), str(state)], capture_output=True, text=True, timeout=600)
    except (OSError, subprocess.TimeoutExpired) as error:
        unavailable(f"start_cluster.sh failed: {error}")
    if started.returncode != 0:
        unavailable(f"start_cluster.sh failed:\n{started.stderr[-3000:]}")
    # The jobs run `ae-lightning` of this Python's environment, as from a shell where it is activated.
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    env = {**subprocess_env(), "SLURM_CONF": started.stdout.strip().splitlines()[-1], "PATH": path}
    yield env
    subprocess.run(["bash", str(START), "stop", str(state)], timeout=60)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("slurm-data"), "MNIST")


def submit(env: dict[str, str], run_dir: Path, logger: str, *fit_args: str, sbatch_args: tuple[str, ...] = ()) -> str:
    """Submit the CPU template for a tiny fit of the plain autoencoder (2 ranks unless ``sbatch_args`` override the
    template's resources); returns the job id."""
    job_env = {**env, "CONFIG": "configs/ae.yaml", "RUN_DIR": str(run_dir), "LOGGER": logger}
    output = f"--output={run_dir}/slurm-%j.out"
    command = ["sbatch", "--parsable", output, *sbatch_args, str(TEMPLATE), *TINY_MODEL, *fit_args]
    submitted = subprocess.run(command, env=job_env, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert submitted.returncode == 0, submitted.stderr
    return submitted.stdout.strip().split(";")[0]


def job(env: dict[str, str], job_id: str) -> dict[str, str]:
    """``scontrol show job`` as a dict (JobState, Restarts, ExitCode, ...)."""
    shown = subprocess.run(["scontrol", "-o", "show", "job", job_id], env=env, capture_output=True, text=True)
    return dict(field.split("=", 1) for field in shown.stdout.split() if "=" in field)


def wait_until(condition, timeout: float, what: str, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            text = log.read_text() if log.exists() else "(no job output)"
            pytest.fail(f"timed out waiting for {what}; job output:\n{text[-5000:]}")
        time.sleep(1)


def finished(env: dict[str, str], job_id: str) -> bool:
    return job(env, job_id).get("JobState") in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL")


def fit_args(data_dir: Path, epochs: int, *extra: str) -> list[str]:
    return [
        "--data.data_dir",
        str(data_dir),
        "--data.batch_size",
        "8",
        "--trainer.max_epochs",
        str(epochs),
        "--trainer.enable_progress_bar",
        "false",
        "--trainer.enable_model_summary",
        "false",
        "--trainer.log_every_n_steps",
        "1",
        *extra,
    ]


@pytest.fixture(scope="module")
def uninterrupted(slurm: dict[str, str], data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The run folder of a job of the CPU template that trains for EPOCHS epochs without interruption."""
    run_dir = tmp_path_factory.mktemp("uninterrupted")
    job_id = submit(slurm, run_dir, "csv", *fit_args(data_dir, EPOCHS))
    log = run_dir / f"slurm-{job_id}.out"
    wait_until(lambda: finished(slurm, job_id), 300, f"job {job_id}", log)
    assert job(slurm, job_id)["JobState"] == "COMPLETED", log.read_text()[-5000:]
    return run_dir


def test_the_next_hpc_checkpoint_follows_the_ones_ckpt_path_hpc_resumes_from(tmp_path: Path) -> None:
    # Only hpc_ckpt_<ASCII digits>.ckpt are HPC checkpoints, for the requeue that names the next one and for
    # --ckpt_path hpc that resumes the newest: no other file moves the count on, and none stops the requeue.
    for name in ("hpc_ckpt_2.ckpt", "hpc_ckpt_x_7.ckpt", "hpc_ckpt_\u00b3.ckpt", "hpc_ckpt_7b.ckpt"):
        (tmp_path / name).touch()
    assert hpc_checkpoints(tmp_path) == {2: tmp_path / "hpc_ckpt_2.ckpt"}
    assert hpc_checkpoint_path(tmp_path) == tmp_path / "hpc_ckpt_3.ckpt"
    assert hpc_checkpoint_path(tmp_path / "new") == tmp_path / "new" / "hpc_ckpt_1.ckpt"


def test_cpu_template_trains_with_two_slurm_ranks(uninterrupted: Path) -> None:
    output = next(uninterrupted.glob("slurm-*.out")).read_text()
    # Lightning found the SLURM environment: the two srun tasks are the two DDP ranks.
    assert "GLOBAL_RANK: 0, MEMBER: 1/2" in output and "GLOBAL_RANK: 1, MEMBER: 2/2" in output
    assert "no checkpoint under" in output  # --ckpt_path last on a first start: from scratch
    checkpoint = torch.load(next(uninterrupted.rglob("last.ckpt")), map_location="cpu", weights_only=True)
    assert checkpoint["global_step"] == EPOCHS * STEPS_PER_EPOCH
    assert len(checkpoint["random_states"]) == 2
    with open(next(uninterrupted.rglob("metrics.csv"))) as file:
        rows = list(csv.DictReader(file))
    val_losses = [float(row["val/loss"]) for row in rows if row.get("val/loss")]
    assert len(val_losses) == EPOCHS and all(loss == loss for loss in val_losses)  # one per epoch, not NaN
    assert val_losses[-1] < val_losses[0]


class ReportCpus(L.Callback):
    """Prints how many CPUs this training process, and so its data loader workers, may run on."""

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        print(f"rank {trainer.global_rank} may use {len(os.sched_getaffinity(0))} CPUs", flush=True)


def test_a_task_may_use_the_cpus_per_task_the_job_asked_for(
    slurm: dict[str, str], data_dir: Path, tmp_path: Path
) -> None:
    # From Slurm 22.05 srun does not take --cpus-per-task from the job: on a cluster that binds tasks to cores (as
    # the test cluster does) each task was bound to one CPU, whatever the job asked for.
    report = ["--trainer.callbacks+=test_slurm.ReportCpus", "--trainer.limit_train_batches", "1"]
    resources = ("--ntasks-per-node=1", "--cpus-per-task=2")
    job_id = submit(slurm, tmp_path, "csv", *fit_args(data_dir, 1, *report), sbatch_args=resources)
    log = tmp_path / f"slurm-{job_id}.out"
    wait_until(lambda: finished(slurm, job_id), 300, f"job {job_id}", log)
    assert job(slurm, job_id)["JobState"] == "COMPLETED", log.read_text()[-5000:]
    assert re.findall(r"rank 0 may use (\d+) CPUs", log.read_text()) == ["2"]


def test_a_search_task_may_use_the_cpus_per_task_the_job_asked_for(
    slurm: dict[str, str], data_dir: Path, tmp_path: Path
) -> None:
    pytest.importorskip("optuna")
    space = tmp_path / "space.yaml"
    space.write_text("metric: val/loss\nparameters:\n  model.init_args.latent_dim: {type: int, low: 2, high: 6}\n")
    job_env = {**slurm, "CONFIG": "configs/ae.yaml", "SPACE": str(space), "N_TRIALS": "1", "ROOT": str(tmp_path)}
    resources = ["--gpus-per-task=0", "--ntasks=1", "--cpus-per-task=2"]  # the template asks for a GPU
    trial = [*fit_args(data_dir, 1, "--trainer.limit_train_batches", "1"), "--trainer.callbacks+=test_slurm.ReportCpus"]
    command = ["sbatch", "--parsable", f"--output={tmp_path}/slurm-%j.out", *resources, str(SEARCH_TEMPLATE), *trial]
    submitted = subprocess.run(command, env=job_env, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert submitted.returncode == 0, submitted.stderr
    job_id = submitted.stdout.strip().split(";")[0]
    log = tmp_path / f"slurm-{job_id}.out"
    wait_until(lambda: finished(slurm, job_id), 300, f"job {job_id}", log)
    assert job(slurm, job_id)["JobState"] == "COMPLETED", log.read_text()[-5000:]
    assert re.findall(r"rank 0 may use (\d+) CPUs", log.read_text()) == ["2"]


def test_sigusr1_checkpoints_requeues_and_the_job_resumes_to_the_uninterrupted_weights(
    slurm: dict[str, str], data_dir: Path, uninterrupted: Path, tmp_path: Path
) -> None:
    slow = ["--trainer.callbacks+=tiny_runs.SlowDown", "--trainer.callbacks.seconds", "0.2"]  # time to signal it
    job_id = submit(slurm, tmp_path, "wandb", *fit_args(data_dir, EPOCHS, *slow))
    log = tmp_path / f"slurm-{job_id}.out"
    # Signal once training is under way: after the first epoch's checkpoint.
    wait_until(lambda: any(tmp_path.rglob("last.ckpt")), 300, "the first checkpoint", log)
    signalled = subprocess.run(["scancel", "--signal=USR1", job_id], env=slurm, capture_output=True, text=True)
    assert signalled.returncode == 0, signalled.stderr
    requeued = lambda: job(slurm, job_id).get("Restarts") == "1" and job(slurm, job_id)["JobState"] == "PENDING"  # noqa: E731
    wait_until(requeued, 120, "the requeue", log)
    # SLURM holds a requeued job back for two minutes (its BeginTime); a test need not wait for that. But slurmd refuses
    # a credential made in the second it revoked the first start's ("Job credential revoked", the job FAILED): now+2.
    subprocess.run(["scontrol", "update", f"JobId={job_id}", "StartTime=now+2"], env=slurm, capture_output=True)
    wait_until(lambda: finished(slurm, job_id), 300, f"job {job_id} after its requeue", log)

    output = log.read_text()  # both starts: the template appends
    assert job(slurm, job_id)["JobState"] == "COMPLETED", output[-5000:]
    assert job(slurm, job_id)["Restarts"] == "1"
    assert "SLURM's signal 10 came" in output and f"requeued SLURM job {job_id}" in output
    hpc = tmp_path / "hpc_ckpt_1.ckpt"
    saved_step = torch.load(hpc, map_location="cpu", weights_only=True)["global_step"]
    assert 0 < saved_step < EPOCHS * STEPS_PER_EPOCH
    second_start = output.split(f"job {job_id}, start 2")[1]
    resumed = re.search(r"Restoring states from the checkpoint path at (\S+)", second_start)
    assert resumed and Path(resumed[1]).resolve() == hpc.resolve(), second_start[-3000:]
    # Written at a step boundary with the loader position and each rank's generators, the HPC checkpoint resumes
    # exactly: the requeued job ends with the uninterrupted job's weights.
    final = torch.load(next(tmp_path.rglob("last.ckpt")), map_location="cpu", weights_only=True)
    expected = torch.load(next(uninterrupted.rglob("last.ckpt")), map_location="cpu", weights_only=True)
    assert final["global_step"] == expected["global_step"] == EPOCHS * STEPS_PER_EPOCH
    for name, value in expected["state_dict"].items():
        assert torch.equal(final["state_dict"][name], value), f"{name} differs from the uninterrupted job's"
    # The requeued job logged to the same W&B run: both starts' offline runs carry the id from the job id.
    runs = sorted(path.name for path in (tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 2 and all(name.endswith(f"-slurm-aelightning-{job_id}") for name in runs), runs


class FailingIn(BoringModel):
    """Raises from its hook ``hook``: ``on_fit_start`` runs before Lightning takes note of the process's signal
    handlers (to put them back when fit ends), ``training_step`` after.

    Args:
        hook: ``on_fit_start`` or ``training_step``.
    """

    def __init__(self, hook: str) -> None:
        super().__init__()
        self.hook = hook

    def on_fit_start(self) -> None:
        self._fail("on_fit_start")

    def training_step(self, batch, batch_idx: int):
        self._fail("training_step")
        return super().training_step(batch, batch_idx)

    def _fail(self, hook: str) -> None:
        if hook == self.hook:
            raise RuntimeError(f"failed in {hook}")


def _fit_under_slurm(model: L.LightningModule, callback: SlurmRequeue, root: Path) -> None:
    trainer = L.Trainer(default_root_dir=root, max_epochs=1, limit_train_batches=2, limit_val_batches=0,
                        callbacks=[callback], logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False)  # fmt: skip
    trainer.fit(model)


@pytest.fixture
def requeue_signal_heard(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[object, list[int]]]:
    """A single SLURM task (SlurmRequeue is active) whose requeue signal SIGUSR1 has a handler that records it: the
    handler and what it heard."""
    for name in ("NTASKS", "JOB_ID", "NODEID", "PROCID", "LOCALID", "NTASKS_PER_NODE"):
        monkeypatch.setenv(f"SLURM_{name}", "1" if name.startswith("NTASKS") else "0")
    monkeypatch.setenv("SLURM_JOB_NAME", "train")
    monkeypatch.setenv("SLURM_NODELIST", "localhost")
    heard: list[int] = []
    previous = signal.signal(signal.SIGUSR1, handler := lambda signum, frame: heard.append(signum))
    yield handler, heard
    signal.signal(signal.SIGUSR1, previous)


@pytest.mark.parametrize("hook", ["on_fit_start", "training_step"])
def test_after_a_failed_fit_the_requeue_signal_goes_to_the_handler_it_had_before(
    hook: str, requeue_signal_heard: tuple[object, list[int]], tmp_path: Path
) -> None:
    handler, heard = requeue_signal_heard
    with pytest.raises(RuntimeError, match=f"failed in {hook}"):
        _fit_under_slurm(FailingIn(hook), SlurmRequeue(), tmp_path)
    os.kill(os.getpid(), signal.SIGUSR1)
    assert heard == [signal.SIGUSR1]
    assert signal.getsignal(signal.SIGUSR1) is handler


def test_a_fit_after_a_failed_one_puts_the_requeue_signals_handler_back(
    requeue_signal_heard: tuple[object, list[int]], tmp_path: Path
) -> None:
    handler, heard = requeue_signal_heard
    callback = SlurmRequeue()
    with pytest.raises(RuntimeError, match="failed in training_step"):
        _fit_under_slurm(FailingIn("training_step"), callback, tmp_path)
    _fit_under_slurm(BoringModel(), callback, tmp_path)  # the same callback again, as in a notebook
    assert signal.getsignal(signal.SIGUSR1) is handler
    os.kill(os.getpid(), signal.SIGUSR1)
    assert heard == [signal.SIGUSR1]


def test_a_requeued_job_that_died_before_its_first_checkpoint_starts_its_wandb_run_again(
    data_dir: Path, tmp_path: Path
) -> None:
    pytest.importorskip("wandb")
    # Each start of the job: scripts/slurm/fit.sh's W&B logger, its run id from the job id, and --ckpt_path last.
    logger = ["--trainer.logger", "WandbLogger", "--trainer.logger.init_args.id", "slurm-cluster-7",
              "--trainer.logger.init_args.project", "ae-lightning", "--trainer.logger.init_args.save_dir",
              str(tmp_path), "--trainer.logger.dict_kwargs.resume", "allow"]  # fmt: skip
    start = ["fit", *tiny_args("ae", data_dir, tmp_path, *logger, "--trainer.max_epochs", "1", "--ckpt_path", "last")]
    kill = ["--trainer.callbacks+=tiny_runs.KillAtStep", "--trainer.callbacks.step", "2"]  # a node failure in epoch 0
    first = run_subprocess(*start, *kill)
    assert first.returncode == -signal.SIGKILL, first.stderr[-3000:]
    run = tmp_path / "ae-lightning" / "slurm-cluster-7"
    config = (run / "config.yaml").read_text()
    assert not list(tmp_path.rglob("*.ckpt"))
    with pytest.raises(ConfigError, match=f"{run / 'config.yaml'} exists: this fit would write into the folder of an"):
        run_cli(*start[:-2])  # a new fit, not a requeue, of the same run is refused as before
    assert (run / "config.yaml").read_text() == config

    requeued = run_subprocess(*start)
    assert requeued.returncode == 0, requeued.stderr[-3000:]
    assert f"the run in {run} has no checkpoint yet: starting it again from scratch" in requeued.stderr
    checkpoint = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert checkpoint["global_step"] == 14  # one epoch of 220 training images in batches of 16
    assert "KillAtStep" not in (run / "config.yaml").read_text()  # the config of the start that trained


def test_a_named_csv_version_left_without_a_checkpoint_is_not_started_again_over_its_metrics(
    data_dir: Path, tmp_path: Path
) -> None:
    run = tmp_path / "lightning_logs" / "version_0"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text("an earlier start's config\n")
    (run / "metrics.csv").write_text("step,train/loss\n0,0.7\n")  # CSVLogger would delete it
    start = tiny_args("ae", data_dir, tmp_path, "--trainer.logger", "CSVLogger", "--trainer.logger.version", "0")
    with pytest.raises(ConfigError, match=rf"{run / 'metrics.csv'} exists: .*another --trainer.logger.version"):
        run_cli("fit", *start, "--ckpt_path", "last")
    assert (run / "metrics.csv").read_text() == "step,train/loss\n0,0.7\n"


class ValidatedEpochs(BoringModel):
    """A BoringModel that records the epochs it validated, on training data whose samples are all the same (so that
    a resume's weights do not depend on the position of its loader, which cannot resume its position)."""

    def __init__(self) -> None:
        super().__init__()
        self.validated: list[int] = []

    def train_dataloader(self) -> torch.utils.data.DataLoader:
        return torch.utils.data.DataLoader(torch.ones(64, 32), batch_size=2)

    def on_validation_epoch_end(self) -> None:
        if not self.trainer.sanity_checking:
            self.validated.append(self.current_epoch)


def test_the_requeue_signal_in_an_epochs_last_batch_checkpoints_after_its_validation(
    requeue_signal_heard: tuple[object, list[int]], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # A checkpoint at an epoch's last batch precedes the epoch's validation, which a resume from it skips: what val/loss
    # drives (a ReduceLROnPlateau, EarlyStopping, the best checkpoint) would miss that epoch's value.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "scontrol").write_text('#!/bin/sh\necho "$@" > "$(dirname "$0")/called"\n')
    (bin_dir / "scontrol").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")

    def fit(model: ValidatedEpochs, *callbacks: L.Callback, ckpt_path: Path | None = None) -> None:
        trainer = L.Trainer(default_root_dir=tmp_path, max_epochs=3, limit_train_batches=4, limit_val_batches=2,
                            callbacks=list(callbacks), logger=False, enable_checkpointing=False,
                            enable_progress_bar=False, enable_model_summary=False)  # fmt: skip
        trainer.fit(model, ckpt_path=ckpt_path)

    L.seed_everything(0)
    fit(uninterrupted := ValidatedEpochs())
    L.seed_everything(0)
    with pytest.raises(SystemExit) as exited:
        fit(interrupted := ValidatedEpochs(), SlurmRequeue(), SigtermAtBatch(3, signal.SIGUSR1))  # epoch 0's last batch
    assert exited.value.code == 0 and (bin_dir / "called").read_text().split() == ["requeue", "0"]
    fit(resumed := ValidatedEpochs(), ckpt_path=tmp_path / "hpc_ckpt_1.ckpt")
    assert interrupted.validated + resumed.validated == uninterrupted.validated == [0, 1, 2]
    for name, value in uninterrupted.state_dict().items():
        assert torch.equal(resumed.state_dict()[name], value), f"{name} differs from the uninterrupted run's"


@pytest.mark.parametrize(
    "plugin, owned",
    [({"auto_requeue": False}, None), ({"requeue_signal": signal.SIGHUP}, signal.SIGHUP), ({}, signal.SIGUSR1)],
    ids=["no_auto_requeue", "sighup", "default"],
)
def test_a_single_task_honours_the_slurm_plugin_it_was_given(
    plugin: dict, owned: int | None, requeue_signal_heard: tuple[object, list[int]], tmp_path: Path
) -> None:
    # One process built a default SLURMEnvironment of its own: it took SIGUSR1 with auto_requeue=False, and SIGUSR1
    # rather than the plugin's requeue_signal.
    from lightning.fabric.plugins.environments import SLURMEnvironment

    seen: list[int | None] = []

    class SignalOwned(L.Callback):
        def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
            seen.append(requeue._signum)

    requeue = SlurmRequeue()
    trainer = L.Trainer(default_root_dir=tmp_path, max_epochs=1, limit_train_batches=1, limit_val_batches=0,
                        callbacks=[requeue, SignalOwned()], plugins=[SLURMEnvironment(**plugin)], logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)  # fmt: skip
    trainer.fit(BoringModel())
    assert seen == [owned]
