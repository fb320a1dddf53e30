"""SIGTERM during ``fit``: the run saves ``last.ckpt`` and exits with status 143 wherever the signal finds it (a
training step, a validation), alone and under DDP; before the first step (setup, a checkpoint's restore, the sanity
check) it exits 143 writing nothing."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import pytest
import torch
from conftest import write_image_folder
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.demos.boring_classes import BoringModel
from tiny_runs import (
    ROOT,
    TINY_MODEL,
    command,
    last_checkpoint,
    run_cli,
    run_or_fail_if_hung,
    subprocess_env,
    tiny_args,
)

from ae_lightning.training.fault_tolerance import SigtermCheckpoint
from datamodules.stream_prepare import prepare_stream

STEPS = 28  # 2 epochs of 14 batches


class SigtermInValidation(Callback):
    """Sends SIGTERM to its own process in the first validation batch after global step ``step``; ``step`` -1: in the
    sanity check.

    Args:
        step: the global step after which the validation is signalled.
    """

    def __init__(self, step: int) -> None:
        self.step = step
        self.sent = False

    def on_validation_batch_start(self, trainer: L.Trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        in_sanity_check = self.step < 0
        if not self.sent and trainer.sanity_checking == in_sanity_check and trainer.global_step >= self.step:
            self.sent = True
            os.kill(os.getpid(), signal.SIGTERM)


class SigtermAtBatch(Callback):
    """Sends SIGTERM (or ``signum``) to its own process at the start of epoch 0's training batch ``batch``.

    Args:
        batch: the batch index in epoch 0.
        signum: the signal.
    """

    def __init__(self, batch: int, signum: int = int(signal.SIGTERM)) -> None:
        self.batch, self.signum = batch, signum

    def on_train_batch_start(self, trainer: L.Trainer, pl_module, batch, batch_idx: int) -> None:
        if trainer.current_epoch == 0 and batch_idx == self.batch:
            os.kill(os.getpid(), self.signum)


class SigtermRankZeroAtStep(Callback):
    """On rank 0 only, sends SIGTERM to its own process at the start of global step ``step``; every rank writes the
    exit status of the exception that ends its fit to ``<folder>/rank<R>.exit``.

    Args:
        step: the global step at whose start rank 0 is signalled.
        folder: where to write.
    """

    def __init__(self, step: int, folder: str) -> None:
        self.step = step
        self.folder = Path(folder)

    def on_train_batch_start(self, trainer: L.Trainer, pl_module, batch, batch_idx: int) -> None:
        if trainer.global_rank == 0 and trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGTERM)

    def on_exception(self, trainer: L.Trainer, pl_module, exception: BaseException) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        code = exception.code if isinstance(exception, SystemExit) else repr(exception)
        (self.folder / f"rank{trainer.global_rank}.exit").write_text(str(code))


class WaitForSigtermAtStep(Callback):
    """At the start of global step ``step``, writes the file ``ready`` and waits (at most 30 s) until the run's
    :class:`SigtermCheckpoint` has noted a SIGTERM, which the test sends meanwhile.

    Args:
        step: the global step at whose start it waits.
        ready: the file it writes.
    """

    def __init__(self, step: int, ready: str) -> None:
        self.step = step
        self.ready = Path(ready)

    def on_train_batch_start(self, trainer: L.Trainer, pl_module, batch, batch_idx: int) -> None:
        if trainer.global_step != self.step:
            return
        (sigterm,) = (callback for callback in trainer.callbacks if isinstance(callback, SigtermCheckpoint))
        self.ready.write_text(str(os.getpid()))
        deadline = time.monotonic() + 30
        while not sigterm.signalled(trainer) and time.monotonic() < deadline:
            time.sleep(0.05)


class SigtermFrom(BoringModel):
    """Sends SIGTERM to its own process from its hook ``hook``: ``configure_model`` runs after every callback's
    ``setup`` and before Lightning installs its SIGTERM handler, ``train_dataloader`` (without a sanity check) after.

    Args:
        hook: ``configure_model`` or ``train_dataloader``.
    """

    def __init__(self, hook: str) -> None:
        super().__init__()
        self.hook = hook

    def configure_model(self) -> None:
        self._signal("configure_model")

    def train_dataloader(self):
        self._signal("train_dataloader")
        return super().train_dataloader()

    def _signal(self, hook: str) -> None:
        if hook == self.hook:
            os.kill(os.getpid(), signal.SIGTERM)


def _signalled(step: int) -> list[str]:
    return [
        "--trainer.callbacks+=test_fault_tolerance_sigterm.SigtermInValidation",
        "--trainer.callbacks.step",
        str(step),
    ]


def test_sigterm_during_validation_saves_and_resumes_to_the_uninterrupted_weights(
    data_dir: Path, tmp_path: Path
) -> None:
    handler = signal.getsignal(signal.SIGTERM)
    with pytest.raises(SystemExit) as exited:  # in epoch 0's validation, after its last step (14): saved after step 15
        run_cli("fit", *tiny_args("ae", data_dir, tmp_path / "signalled", *_signalled(14)))
    assert exited.value.code == 143
    assert signal.getsignal(signal.SIGTERM) == handler  # this process's handler is back
    assert last_checkpoint(tmp_path / "signalled")["global_step"] == 15

    run_cli("fit", *tiny_args("ae", data_dir, tmp_path / "signalled", "--ckpt_path", "last"))
    run_cli("fit", *tiny_args("ae", data_dir, tmp_path / "reference"))
    resumed, expected = last_checkpoint(tmp_path / "signalled"), last_checkpoint(tmp_path / "reference")
    assert resumed["global_step"] == expected["global_step"] == STEPS
    for name, value in expected["state_dict"].items():
        assert torch.equal(resumed["state_dict"][name], value), f"{name} differs after the resume"


def test_a_vae_with_loader_workers_resumes_a_sigterm_checkpoint_to_the_uninterrupted_weights(
    data_dir: Path, tmp_path: Path
) -> None:
    # Saved one step into epoch 1: the resumed run starts its loader's workers again there, which must not draw from
    # the random generators that the checkpoint restored (the VAE's noise), as torch's DataLoader does by default.
    workers = ["--data.num_workers", "1", "--images.every_n_epochs", "0"]
    with pytest.raises(SystemExit):
        run_cli("fit", *tiny_args("vae", data_dir, tmp_path / "signalled", *workers, *_signalled(14)))
    assert last_checkpoint(tmp_path / "signalled")["global_step"] == 15
    run_cli("fit", *tiny_args("vae", data_dir, tmp_path / "signalled", *workers, "--ckpt_path", "last"))
    run_cli("fit", *tiny_args("vae", data_dir, tmp_path / "reference", *workers))
    resumed, expected = last_checkpoint(tmp_path / "signalled"), last_checkpoint(tmp_path / "reference")
    assert resumed["global_step"] == expected["global_step"] == STEPS
    for name, value in expected["state_dict"].items():
        assert torch.equal(resumed["state_dict"][name], value), f"{name} differs after the resume"


@pytest.mark.parametrize("when", ["training", "validation"])
def test_sigterm_under_gradient_accumulation_saves_at_the_end_of_an_optimizer_step_and_resumes_exactly(
    when: str, data_dir: Path, tmp_path: Path
) -> None:
    # 14 batches per epoch in steps of 4, 4, 4 and 2: a signal at batch 5, or in epoch 0's validation (then batch 0 of
    # epoch 1 is next), finds a step half accumulated, whose gradients no checkpoint holds; it is saved after the step.
    accumulate = ["--trainer.accumulate_grad_batches", "4"]
    if when == "training":
        signalled = [f"--trainer.callbacks+={__name__}.SigtermAtBatch", "--trainer.callbacks.batch", "5"]
    else:
        signalled = _signalled(4)
    with pytest.raises(SystemExit) as exited:
        run_cli("fit", *tiny_args("ae", data_dir, tmp_path / "signalled", *accumulate, *signalled))
    assert exited.value.code == 143
    saved = last_checkpoint(tmp_path / "signalled")
    assert saved["global_step"] == {"training": 2, "validation": 5}[when]

    run_cli("fit", *tiny_args("ae", data_dir, tmp_path / "signalled", *accumulate, "--ckpt_path", "last"))
    run_cli("fit", *tiny_args("ae", data_dir, tmp_path / "reference", *accumulate))
    resumed, expected = last_checkpoint(tmp_path / "signalled"), last_checkpoint(tmp_path / "reference")
    assert resumed["global_step"] == expected["global_step"] == 8
    for name, value in expected["state_dict"].items():
        assert torch.equal(resumed["state_dict"][name], value), f"{name} differs after the resume"


def test_sigterm_during_the_sanity_check_exits_143_writing_nothing(data_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as exited:
        run_cli("fit", *tiny_args("ae", data_dir, tmp_path, *_signalled(-1)))
    assert exited.value.code == 143
    assert not list(tmp_path.rglob("*.ckpt"))


def test_sigterm_without_a_last_checkpoint_says_that_nothing_was_saved(data_dir: Path, tmp_path: Path) -> None:
    signalled = ["--trainer.callbacks+=test_fault_tolerance_sigterm.SigtermAtBatch", "--trainer.callbacks.batch", "3"]
    with pytest.warns(UserWarning, match="SIGTERM at global step 4: no ModelCheckpoint keeps a last checkpoint"):
        with pytest.raises(SystemExit) as exited:
            run_cli("fit", *tiny_args("ae", data_dir, tmp_path, *signalled, "--checkpoint.save_last", "false"))
    assert exited.value.code == 143
    assert not list(tmp_path.rglob("last*.ckpt"))


def test_sigterm_under_ddp_saves_once_agreed_and_every_rank_exits_143(data_dir: Path, tmp_path: Path) -> None:
    # Only rank 0 gets the signal, at step 8 (epoch 1; 7 steps per epoch): the ranks agree at step 10
    # (check_every_n_steps) and save together.
    assert SigtermCheckpoint().check_every_n_steps == 10
    ddp = ["--trainer.strategy", "ddp", "--trainer.accelerator", "cpu", "--trainer.devices", "2"]
    signal_rank_zero = [f"--trainer.callbacks+={__name__}.SigtermRankZeroAtStep", "--trainer.callbacks.step", "8",
                        "--trainer.callbacks.folder", str(tmp_path / "exits")]  # fmt: skip
    returncode, output = run_or_fail_if_hung(
        command("fit", *tiny_args("ae", data_dir, tmp_path, *ddp, *signal_rank_zero))
    )
    assert returncode == 143, output[-5000:]
    assert {path.name: path.read_text() for path in (tmp_path / "exits").iterdir()} == {
        "rank0.exit": "143",
        "rank1.exit": "143",
    }, output[-5000:]
    (last,) = tmp_path.rglob("last.ckpt")
    assert torch.load(last, weights_only=True)["global_step"] == 10
    assert output.count("SIGTERM: wrote") == 1, output[-5000:]


@pytest.mark.parametrize("hook", ["configure_model", "train_dataloader"])
def test_sigterm_before_the_first_step_exits_143_and_keeps_the_checkpoint_it_resumes_from(
    hook: str, tmp_path: Path
) -> None:
    def trainer(epochs: int) -> L.Trainer:
        callbacks = [SigtermCheckpoint(), ModelCheckpoint(dirpath=tmp_path, save_last=True)]
        return L.Trainer(max_epochs=epochs, limit_train_batches=4, limit_val_batches=2, num_sanity_val_steps=0,
                         callbacks=callbacks, logger=False, enable_progress_bar=False,
                         enable_model_summary=False)  # fmt: skip

    trainer(1).fit(BoringModel())
    written = {path.name: path.read_bytes() for path in tmp_path.iterdir()}
    heard = []
    previous = signal.signal(signal.SIGTERM, handler := lambda signum, frame: heard.append(signum))
    try:
        with pytest.raises(SystemExit) as exited:
            trainer(2).fit(SigtermFrom(hook), ckpt_path=tmp_path / "last.ckpt")
        assert signal.getsignal(signal.SIGTERM) is handler  # this process's handler is back
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert exited.value.code == 143
    assert heard == [signal.SIGTERM]  # and heard the signal
    assert {path.name: path.read_bytes() for path in tmp_path.iterdir()} == written  # nothing trained, nothing written


def test_sigterm_beside_lightnings_own_model_checkpoint_writes_the_last_file_that_lightning_would_name(
    tmp_path: Path,
) -> None:
    (tmp_path / "last.ckpt").write_bytes(b"another run's")  # a plain ModelCheckpoint goes on with last-v1.ckpt
    checkpoint = ModelCheckpoint(dirpath=tmp_path, save_last=True, save_top_k=0)
    trainer = L.Trainer(max_epochs=1, limit_train_batches=4, limit_val_batches=0, logger=False,
                        callbacks=[SigtermCheckpoint(), checkpoint, SigtermAtBatch(1)], enable_progress_bar=False,
                        enable_model_summary=False)  # fmt: skip
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: None)
    try:
        with pytest.raises(SystemExit) as exited:
            trainer.fit(BoringModel())
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert exited.value.code == 143
    assert (tmp_path / "last.ckpt").read_bytes() == b"another run's"
    assert checkpoint.last_model_path == str(tmp_path / "last-v1.ckpt")
    assert torch.load(tmp_path / "last-v1.ckpt", weights_only=True)["global_step"] == 2


# Fits in one process with SIGTERM's default action, as a search runs its trials: the first fit is signalled in its last
# validation, when no training step is left.
FITS_IN_ONE_PROCESS = """
import sys
import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.demos.boring_classes import BoringModel
from ae_lightning.training.fault_tolerance import SigtermCheckpoint
from test_fault_tolerance_sigterm import SigtermInValidation

for fit in range(2):
    print(f"fit {fit} starts", flush=True)
    callbacks = [SigtermCheckpoint(), ModelCheckpoint(save_last=True), SigtermInValidation(step=4)]
    trainer = L.Trainer(default_root_dir=f"{sys.argv[1]}/fit{fit}", max_epochs=1, limit_train_batches=4,
                        limit_val_batches=2, callbacks=callbacks, logger=False, enable_progress_bar=False)
    trainer.fit(BoringModel())
"""


def test_sigterm_when_no_training_step_is_left_ends_the_process_once_the_run_is_saved(tmp_path: Path) -> None:
    process = subprocess.run([sys.executable, "-c", FITS_IN_ONE_PROCESS, str(tmp_path)], env=subprocess_env(),
                             capture_output=True, text=True, timeout=120)  # fmt: skip
    output = process.stdout + process.stderr
    assert process.returncode == 143, output[-5000:]
    assert "fit 1 starts" not in output  # the process did not go on as if the signal had not come
    assert torch.load(tmp_path / "fit0" / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 4


@pytest.mark.parametrize("data", ["in-memory", "stream"])
def test_sigterm_to_the_process_group_leaves_the_loader_workers_running_until_the_run_saves_and_exits_143(
    data: str, data_dir: Path, tmp_path: Path
) -> None:
    # ``scancel``, SLURM's time limit and ``timeout`` signal every process of the job, the data loader's workers too.
    step, ready, root = 3, tmp_path / "ready", tmp_path / "run"
    wait = [f"--trainer.callbacks+={__name__}.WaitForSigtermAtStep", "--trainer.callbacks.step", str(step),
            "--trainer.callbacks.ready", str(ready), "--trainer.max_epochs", "100"]  # fmt: skip
    if data == "in-memory":
        args = tiny_args("ae", data_dir, root, "--data.num_workers", "1", *wait)
    else:
        write_image_folder(tmp_path / "images", per_class=40, size=16)
        prepare_stream(str(tmp_path / "images"), str(tmp_path / "stream"), size=16, chunk_size=16, num_workers=1)
        stream = ["--data", "StreamingDataModule", "--data.input_dir", str(tmp_path / "stream"), "--data.num_workers",
                  "2", "--data.batch_size", "8", "--images.every_n_epochs", "0"]  # fmt: skip
        args = ["--config", str(ROOT / "configs" / "ae.yaml"), *TINY_MODEL, *stream, "--trainer.default_root_dir",
                str(root), "--trainer.enable_progress_bar", "false", *wait]  # fmt: skip
    process = subprocess.Popen(command("fit", *args), env=subprocess_env(), stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, start_new_session=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while not ready.exists() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert ready.exists(), "the run did not reach the signalled step"
        os.killpg(process.pid, signal.SIGTERM)  # from outside the run, as a scheduler sends it
        output, _ = process.communicate(timeout=60)
    except (AssertionError, subprocess.TimeoutExpired):
        os.killpg(process.pid, signal.SIGKILL)
        output, _ = process.communicate()
        pytest.fail(f"the run did not reach step {step} or hung after the signal:\n{output[-5000:]}")
    assert process.returncode == 143, output[-5000:]
    assert last_checkpoint(root)["global_step"] == step + 1, output[-5000:]
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # the workers end with the run: none is left behind
        try:
            os.killpg(process.pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        pytest.fail("the run's data loader workers outlived it")


# Loader workers signalled with the job, some of them still starting: they go on serving batches; at exit, with an
# iterator still open, the interpreter ends them with its own SIGTERM, which they obey (or the process would hang).
SIGNALLED_WORKERS = """
import signal, time
from torch.utils.data import DataLoader
from datamodules.loader import WorkerSignals, worker_batches

class SlowToStart(WorkerSignals):
    def __call__(self, worker_id):
        print("starting", flush=True)
        time.sleep(1)
        super().__call__(worker_id)

noted = set()
for signum in (signal.SIGTERM, signal.SIGUSR1):
    signal.signal(signum, lambda signum, frame: noted.add(signum))
loader = DataLoader(range(40), batch_size=1, num_workers=2, worker_init_fn=SlowToStart())
print("batches:", sum(1 for _ in worker_batches(loader)), "signals noted:", len(noted), flush=True)
open_at_exit = worker_batches(loader)
next(open_at_exit)
"""


def test_loader_workers_outlive_the_jobs_signals_even_while_starting_and_end_with_their_process() -> None:
    process = subprocess.Popen([sys.executable, "-c", SIGNALLED_WORKERS], env=subprocess_env(), cwd=ROOT, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
    try:
        assert process.stdout.readline() == "starting\n"
        for signum in (signal.SIGUSR1, signal.SIGTERM):
            os.killpg(process.pid, signum)
        output, _ = process.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        output, _ = process.communicate()
        pytest.fail(f"the process hung at its exit:\n{output[-5000:]}")
    assert process.returncode == 0, output[-5000:]
    assert "batches: 40 signals noted: 2" in output, output[-5000:]


# Python 3.14's default start method on Linux: workers are forked by a fork server, started when first needed and kept
# for the whole program. A fork server started while ``worker_batches`` holds the job's signals would keep them blocked
# in every process it starts later, which ``terminate()`` would no longer end. ae_lightning imports litdata, whose
# import-time Lock has started Python's resource tracker already.
FORK_SERVER_AFTER_A_LOADER = """
import multiprocessing, time
from multiprocessing import resource_tracker
from torch.utils.data import DataLoader
from datamodules.loader import WorkerSignals, worker_batches

multiprocessing.set_start_method("forkserver")
resource_tracker.ensure_running()
loader = DataLoader(range(4), batch_size=1, num_workers=1, worker_init_fn=WorkerSignals())
print("batches:", sum(1 for _ in worker_batches(loader)), flush=True)
later = multiprocessing.Process(target=time.sleep, args=(60,))
later.start()
later.terminate()
later.join(20)
print("ended by terminate():", not later.is_alive(), flush=True)
later.kill()
"""


@pytest.mark.skipif(not hasattr(signal, "sigwaitinfo"), reason="the workers keep torch's handling")
def test_processes_of_a_fork_server_first_used_by_a_loader_still_end_on_sigterm() -> None:
    process = subprocess.run([sys.executable, "-c", FORK_SERVER_AFTER_A_LOADER], env=subprocess_env(), cwd=ROOT,
                             capture_output=True, text=True, timeout=120)  # fmt: skip
    output = process.stdout + process.stderr
    assert "batches: 4\nended by terminate(): True" in output, output[-5000:]


class SigtermAtTestBatch(Callback):
    """Sends SIGTERM to its own process at the start of test batch 1."""

    def on_test_batch_start(self, trainer: L.Trainer, pl_module, batch, batch_idx: int, dataloader_idx=0) -> None:
        if batch_idx == 1:
            os.kill(os.getpid(), signal.SIGTERM)


def test_a_sigterm_during_test_exits_143_as_during_fit(tmp_path: Path) -> None:
    # Lightning's evaluation loop stops on SIGTERM with a SystemExit of no code: the command exited 0, as if it had
    # tested, with no results.
    from ae_lightning.cli import run_command

    trainer = L.Trainer(default_root_dir=tmp_path, limit_test_batches=4, callbacks=[SigtermAtTestBatch()], logger=False,
                        enable_progress_bar=False, enable_model_summary=False)  # fmt: skip
    with pytest.raises(SystemExit) as exited:
        run_command("ae-lightning", lambda: trainer.test(BoringModel(), verbose=False))
    assert exited.value.code == 143


class SigtermAtPredictBatch(Callback):
    """Sends SIGTERM to its own process at the start of predict batch ``batch``.

    Args:
        batch: the batch index.
    """

    def __init__(self, batch: int) -> None:
        self.batch = batch

    def on_predict_batch_start(self, trainer: L.Trainer, pl_module, batch, batch_idx: int, dataloader_idx=0) -> None:
        if batch_idx == self.batch:
            os.kill(os.getpid(), signal.SIGTERM)


@pytest.mark.parametrize("format", ["file", "stream"])
def test_a_sigterm_during_predict_exits_143_writing_no_predictions(format: str, data_dir: Path, tmp_path: Path) -> None:
    # Lightning's predict loop never checks the signal its handler notes: predict ran to its end and exited 0.
    signalled = [f"--trainer.callbacks+={__name__}.SigtermAtPredictBatch", "--trainer.callbacks.batch", "1"]
    args = tiny_args("ae", data_dir, tmp_path, *signalled, "--predictions.format", format)
    with pytest.raises(SystemExit) as exited:
        run_cli("predict", *args, "--trainer.limit_predict_batches", "3", "--trainer.logger", "false")
    assert exited.value.code == 143
    # the run's config alone: no predictions, whole or partial
    assert sorted(path.name for path in tmp_path.iterdir()) == ["config.yaml", "data"]


class SigtermRankOneOnceRankZeroIsDone(Callback):
    """Rank 0 notes the end of its predict batch ``batch`` (its last) in ``<folder>/rank0.done``; rank 1, at the start
    of its batch ``batch``, waits for that note (at most 60 s), gives rank 0 5 s more (to write its predictions, if it
    would), then sends SIGTERM to its own process.

    Args:
        batch: the batch index.
        folder: where rank 0 notes that it is done.
    """

    def __init__(self, batch: int, folder: str) -> None:
        self.batch = batch
        self.done = Path(folder) / "rank0.done"

    def on_predict_batch_start(self, trainer: L.Trainer, pl_module, batch, batch_idx: int, dataloader_idx=0) -> None:
        if trainer.global_rank == 1 and batch_idx == self.batch:
            deadline = time.monotonic() + 60
            while not self.done.exists() and time.monotonic() < deadline:
                time.sleep(0.05)
            time.sleep(5)
            os.kill(os.getpid(), signal.SIGTERM)

    def on_predict_batch_end(self, trainer: L.Trainer, pl_module, outputs, batch, batch_idx: int, dataloader_idx=0):
        if trainer.global_rank == 0 and batch_idx == self.batch:
            self.done.parent.mkdir(parents=True, exist_ok=True)
            self.done.touch()


@pytest.mark.parametrize("format", ["file", "stream"])
def test_a_sigterm_during_a_ddp_predict_leaves_no_predictions(format: str, data_dir: Path, tmp_path: Path) -> None:
    # Rank 0 had finished its batches when rank 1 was signalled in its last: rank 0 wrote predictions-rank0.pt and the
    # run exited 143.
    ddp = ["--trainer.strategy", "ddp", "--trainer.accelerator", "cpu", "--trainer.devices", "2"]
    signalled = [f"--trainer.callbacks+={__name__}.SigtermRankOneOnceRankZeroIsDone", "--trainer.callbacks.batch", "1",
                 "--trainer.callbacks.folder", str(tmp_path / "notes")]  # fmt: skip
    args = tiny_args("ae", data_dir, tmp_path / "run", *ddp, *signalled, "--predictions.format", format)
    returncode, output = run_or_fail_if_hung(command("predict", *args, "--trainer.logger", "false"))
    assert returncode == 143, output[-5000:]
    assert sorted(path.name for path in (tmp_path / "run").iterdir()) == ["config.yaml"], output[-5000:]
