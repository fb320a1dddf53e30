"""One test per Lightning internal that ae-lightning uses (see ``ae_lightning/lightning_internals.py``): each fails
with a message naming what changed when a Lightning release changes it."""

from __future__ import annotations

import csv
from pathlib import Path
from types import SimpleNamespace
from unittest import mock

import lightning
import lightning as L
import pytest
import torch
from conftest import write_image_folder
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from torch.utils.data import DataLoader
from vector_quantize_pytorch import VectorQuantize
from vector_quantize_pytorch.vector_quantize_pytorch import Codebook

from ae_lightning.cli import AutoencoderCLI
from ae_lightning.lightning_internals import (
    batches_that_stepped,
    callback_dispatcher,
    cluster_environment,
    enable_version_counter,
    ends_training_epoch,
    every_n_train_steps,
    reopen_stopped_epoch,
    restarts_a_finished_epoch,
    returns_predictions,
    start_next_epoch,
    stored_loader_states,
    uncounted_optimizer_step,
    weighted_batch_size,
    without_cli_hyperparameters,
)
from datamodules.loader import TensorBatchLoader
from datamodules.stream_prepare import prepare_stream
from datamodules.streaming import StreamingDataModule, relocated


def test_model_checkpoint_keeps_every_n_train_steps() -> None:
    assert every_n_train_steps(ModelCheckpoint(every_n_train_steps=7)) == 7
    assert every_n_train_steps(ModelCheckpoint()) == 0


def test_a_changed_model_checkpoint_is_named_in_the_error() -> None:
    class Changed(ModelCheckpoint):
        def __init__(self) -> None:
            super().__init__()
            del self._every_n_train_steps

    with pytest.raises(RuntimeError, match=rf"Lightning {lightning.__version__} changed an internal .*"
                                           r"_every_n_train_steps"):  # fmt: skip
        every_n_train_steps(Changed())


def test_lightning_cli_still_parses_checkpoint_hyperparameters_in_the_step_we_override() -> None:
    class Called(Exception):
        pass

    class Recording(AutoencoderCLI):
        def _parse_ckpt_path(self) -> None:
            raise Called

    args = ["fit", "--config", str(Path(__file__).parents[1] / "configs" / "ae.yaml"), "--ckpt_path", "x.ckpt"]
    try:
        with mock.patch("sys.argv", ["ae-lightning"]):
            Recording(args=args)
    except Called:
        return
    except Exception as error:  # noqa: BLE001 (any other outcome means the override was not reached)
        raise AssertionError(f"LightningCLI did not call _parse_ckpt_path first: {error}") from error
    pytest.fail(
        f"Lightning {lightning.__version__}'s LightningCLI no longer calls _parse_ckpt_path: find where it now merges "
        "a checkpoint's hyperparameters into the config and override that in AutoencoderCLI"
    )


class TwoUncountedSteps(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.layer = torch.nn.Linear(3, 1)

    def training_step(self, batch, batch_idx):
        for _ in range(2):
            self.optimizers().zero_grad()
            self.manual_backward(self.layer(batch[0]).pow(2).mean())
            uncounted_optimizer_step(self.trainer, self.optimizers())

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters())


def quiet_trainer(tmp_path, **kwargs) -> L.Trainer:
    return L.Trainer(accelerator="cpu", **{"logger": False, **kwargs}, enable_checkpointing=False,
                     enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)  # fmt: skip


def test_strategy_optimizer_step_steps_without_counting_a_global_step(tmp_path) -> None:
    model = TwoUncountedSteps()
    before = model.layer.weight.detach().clone()
    loader = TensorBatchLoader(
        torch.rand(12, 3), torch.zeros(12), torch.arange(12), batch_size=4, shuffle=False, seed=0
    )
    trainer = quiet_trainer(tmp_path, max_epochs=1)
    trainer.fit(model, loader)
    assert not torch.equal(before, model.layer.weight), "Strategy.optimizer_step no longer steps the optimizer"
    assert trainer.global_step == 0, (
        f"Lightning {lightning.__version__} counts Strategy.optimizer_step in global_step: the adversarial AE would "
        "count three steps per batch; see ae_lightning/lightning_internals.py"
    )
    assert {int(state["step"]) for state in trainer.optimizers[0].state.values()} == {6}


class EpochScheduled(L.LightningModule):
    """Automatic optimization with a StepLR stepped every epoch; records, at each training step, batch end and epoch
    end, whether the batch ends its epoch and the scheduler's count."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(3, 1)
        self.seen: list[tuple] = []

    def training_step(self, batch, batch_idx):
        self.seen.append(("step", ends_training_epoch(self.trainer), self.lr_schedulers().last_epoch))
        return self.layer(batch[0]).pow(2).mean()

    def on_train_batch_end(self, outputs, batch, batch_idx) -> None:
        self.seen.append(("batch end", self.lr_schedulers().last_epoch))

    def on_train_epoch_end(self) -> None:
        self.seen.append(("epoch end", ends_training_epoch(self.trainer)))

    def configure_optimizers(self):
        optimizer = torch.optim.SGD(self.parameters(), lr=0.1)
        return {"optimizer": optimizer, "lr_scheduler": torch.optim.lr_scheduler.StepLR(optimizer, 1)}


def test_lightning_steps_epoch_schedulers_after_the_training_step_of_the_batch_that_ends_the_epoch(tmp_path) -> None:
    # Epochs of 3 batches; max_steps stops the run after the first batch of epoch 2.
    model = EpochScheduled()
    loader = TensorBatchLoader(torch.rand(12, 3), torch.zeros(12), torch.arange(12), batch_size=4, shuffle=False,
                               seed=0)  # fmt: skip
    quiet_trainer(tmp_path, max_steps=7).fit(model, loader)
    expected = []
    for epoch, batches in enumerate([3, 3, 1]):
        for batch in range(batches):
            last = batch == 2
            expected += [("step", last, epoch), ("batch end", epoch + last)]
        expected.append(("epoch end", batches == 3))
    assert model.seen == expected, (
        f"Lightning {lightning.__version__} no longer steps epoch schedulers between the training step and the "
        "on_train_batch_end hooks of the batch where the training epoch loop's `_num_ready_batches_reached` holds: "
        "AutoencoderModule.step_epoch_schedulers steps those of manual optimization there; see "
        "ae_lightning/lightning_internals.py"
    )


def test_a_changed_training_epoch_loop_is_named_in_the_error() -> None:
    trainer = SimpleNamespace(fit_loop=SimpleNamespace(epoch_loop=SimpleNamespace()))
    with pytest.raises(RuntimeError, match=rf"Lightning {lightning.__version__} changed .*_num_ready_batches_reached"):
        ends_training_epoch(trainer)


def test_lightning_calls_set_epoch_on_the_loaders_sampler(tmp_path) -> None:
    class Recorder(TensorBatchLoader):
        def set_epoch(self, epoch: int) -> None:
            self.epochs = [*getattr(self, "epochs", []), epoch]
            super().set_epoch(epoch)

    loader = Recorder(torch.rand(12, 3), torch.zeros(12), torch.arange(12), batch_size=4, shuffle=True, seed=0)
    quiet_trainer(tmp_path, max_epochs=3, limit_train_batches=1).fit(TwoUncountedSteps(), loader)
    assert getattr(loader, "epochs", []) == [0, 1, 2], (
        f"Lightning {lightning.__version__} no longer calls set_epoch on a loader's `sampler` at each epoch: "
        "TensorBatchLoader (datamodules/loader.py) must start each epoch some other way"
    )


def test_lightning_writes_a_steps_logs_when_the_batches_that_stepped_plus_one_are_a_multiple_of_the_interval(
    tmp_path,
) -> None:
    class TwoCountedSteps(TwoUncountedSteps):  # global_step runs at twice the batches
        def training_step(self, batch, batch_idx):
            for _ in range(2):
                self.optimizers().zero_grad()
                self.manual_backward(self.layer(batch[0]).pow(2).mean())
                self.optimizers().step()
            self.log("batch", float(batch_idx))

        def on_train_batch_end(self, outputs, batch, batch_idx) -> None:
            self.counts = [*getattr(self, "counts", []), batches_that_stepped(self.trainer)]

    model = TwoCountedSteps()
    loader = TensorBatchLoader(torch.rand(12, 3), torch.zeros(12), torch.arange(12), batch_size=4, shuffle=False,
                               seed=0)  # fmt: skip
    trainer = quiet_trainer(tmp_path, logger=CSVLogger(tmp_path), log_every_n_steps=3, max_epochs=3)
    trainer.fit(model, loader)
    with open(next(tmp_path.rglob("metrics.csv"))) as file:
        written = [float(row["batch"]) for row in csv.DictReader(file) if row["batch"]]
    assert model.counts == list(range(9)), (
        f"Lightning {lightning.__version__}'s training epoch loop no longer counts `_batches_that_stepped` as before: "
        "the fast path decides from it which steps' logs are written; see ae_lightning/lightning_internals.py"
    )
    assert written == [2.0, 2.0, 2.0], "Lightning no longer writes where the batches that stepped + 1 are a multiple"


def test_lightningcli_hands_its_models_settings_to_any_module_built_meanwhile() -> None:
    # Why the prior loads its tokenizer through without_cli_hyperparameters; when this fails, that may go.
    try:
        from lightning.pytorch.core.mixins.hparams_mixin import _given_hyperparameters_context
    except ImportError:
        pytest.fail("Lightning no longer has _given_hyperparameters_context: without_cli_hyperparameters may go")

    class Module(L.LightningModule):
        def __init__(self, width: int = 3) -> None:
            super().__init__()
            self.save_hyperparameters()

    with _given_hyperparameters_context({"depth": 9}, "lightning.pytorch.cli.instantiate_module"):
        leaked = dict(Module().hparams)
        assert leaked.get("depth") == 9 and "width" not in leaked, "Lightning no longer leaks: that helper may go"
        assert dict(without_cli_hyperparameters(Module).hparams) == {"width": 3}


def test_litdata_records_the_stream_location_that_relocated_rewrites(tmp_path: Path) -> None:
    write_image_folder(tmp_path / "images", per_class=20, size=12)
    prepare_stream(str(tmp_path / "images"), str(tmp_path / "stream"), size=8, chunk_size=8)
    loader = StreamingDataModule(str(tmp_path / "stream"), batch_size=4, num_workers=0).train_dataloader()
    loader.set_epoch(0)
    next(iter(loader))
    state = loader.state_dict()["stream"]
    relocated(state, loader.loader.dataset)  # raises naming the keys if litdata's state no longer holds them
    del state["dataset"]["cache_dir_path"]
    with pytest.raises(RuntimeError, match=r"litdata .* changed its loader state.* has no cache_dir_path"):
        relocated(state, loader.loader.dataset)


def test_vector_quantize_codebooks_await_kmeans_behind_their_initted_buffer() -> None:
    quantizer = VectorQuantize(dim=4, codebook_size=8, kmeans_init=True)
    codebooks = [m for m in quantizer.modules() if isinstance(m, Codebook)]
    assert codebooks, "vector-quantize-pytorch no longer builds Codebook modules; see SpatialQuantizer.forward"
    assert all("initted" in dict(m.named_buffers()) and not m.initted for m in codebooks), (
        "vector-quantize-pytorch's Codebook no longer marks a pending k-means init by its initted buffer"
    )
    quantizer.train()(torch.randn(2, 16, 4))
    assert all(m.initted for m in codebooks)  # the first forward initializes, as SpatialQuantizer expects


def test_torch_keeps_forward_hooks_where_has_forward_hooks_reads_them() -> None:
    from torch import nn
    from torch.nn.modules.module import register_module_forward_hook

    from ae_lightning.lightning_internals import has_forward_hooks

    layer = nn.Linear(2, 2)
    assert not has_forward_hooks(layer)
    for register in (layer.register_forward_hook, layer.register_forward_pre_hook, register_module_forward_hook):
        handle = register(lambda *args: None)
        assert has_forward_hooks(layer), f"torch keeps {register.__name__}'s hooks elsewhere now"
        handle.remove()
        assert not has_forward_hooks(layer)


@pytest.mark.parametrize("counter, written", [(True, "last-v1.ckpt"), (False, "last.ckpt")])
def test_model_checkpoint_keeps_enable_version_counter_and_names_its_last_by_it(
    counter: bool, written: str, tmp_path: Path
) -> None:
    from lightning.pytorch.demos.boring_classes import BoringModel

    checkpoint = ModelCheckpoint(dirpath=tmp_path, save_last=True, save_top_k=0, enable_version_counter=counter)
    assert enable_version_counter(checkpoint) is counter
    (tmp_path / "last.ckpt").write_bytes(b"another run's")
    trainer = L.Trainer(accelerator="cpu", logger=False, callbacks=[checkpoint], max_steps=1, limit_val_batches=0,
                        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)  # fmt: skip
    trainer.fit(BoringModel())
    assert checkpoint.last_model_path == str(tmp_path / written), (
        f"Lightning {lightning.__version__} names a ModelCheckpoint(enable_version_counter={counter})'s last file "
        f"{Path(checkpoint.last_model_path).name} beside another run's last.ckpt, not {written}: "
        "last_path (ae_lightning/training/fault_tolerance/checkpoint_io.py) must name it so too"
    )
    changed = ModelCheckpoint()
    del changed._enable_version_counter
    with pytest.raises(RuntimeError, match=rf"Lightning {lightning.__version__} changed .*_enable_version_counter"):
        enable_version_counter(changed)


class SquaresOfUnequalShares(L.LightningModule):
    """Logs each batch's mean of ``i ** 2`` over the samples 0..8, which rank 0 sees as batches of 3 and 2 samples and
    rank 1 as batches of 2 and 2: the exact mean over the samples is 204 / 9."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(1, 1)

    def val_dataloader(self) -> DataLoader:
        rows = [[0, 2, 4], [6, 8]] if self.global_rank == 0 else [[1, 3], [5, 7]]
        return DataLoader([torch.tensor(row) for row in rows], batch_size=None)

    def validation_step(self, batch, batch_idx):
        square = batch.float().square().mean()
        self.log("square", square, batch_size=weighted_batch_size(len(batch)), sync_dist=True)


def test_a_float_batch_size_logs_the_exact_mean_over_ranks_with_unequal_shares(tmp_path) -> None:
    from tiny_runs import EndsProcessGroup

    trainer = quiet_trainer(tmp_path, devices=2, strategy="ddp_spawn", use_distributed_sampler=False,
                            callbacks=[EndsProcessGroup()])  # fmt: skip
    (logged,) = trainer.validate(SquaresOfUnequalShares())
    assert logged["square"] == pytest.approx(204 / 9, rel=1e-6), (
        f"Lightning {lightning.__version__} logs {logged['square']}, not the mean 22.667 over the samples of two ranks "
        "of 5 and 4 samples, for a term logged with a float batch_size and sync_dist: weighted_batch_size "
        "(ae_lightning/lightning_internals.py) must give the val/test terms' weights some other way"
    )


class Counting(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(3, 1)

    def training_step(self, batch, batch_idx):
        return self.layer(batch[0]).pow(2).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_lightning_restarts_a_finished_epoch_under_max_steps_and_stops_an_epoch_early(tmp_path) -> None:
    # Epochs of 3 batches; checkpoints at the end of epoch 0 and in the middle of epoch 1.
    images = torch.rand(12, 3)

    def loader():
        return TensorBatchLoader(images, torch.zeros(12), torch.arange(12), batch_size=4, shuffle=False, seed=0)

    ends = ModelCheckpoint(tmp_path / "ends", every_n_epochs=1, save_top_k=-1, filename="{step}")
    steps = ModelCheckpoint(tmp_path / "steps", every_n_train_steps=2, save_top_k=-1, filename="{step}")
    trainer = L.Trainer(accelerator="cpu", max_epochs=3, max_steps=100, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, callbacks=[ends, steps], default_root_dir=tmp_path)  # fmt: skip
    trainer.fit(Counting(), loader())
    assert trainer.global_step == 9
    epoch_end, mid_epoch = tmp_path / "ends" / "step=3.ckpt", tmp_path / "steps" / "step=4.ckpt"
    assert restarts_a_finished_epoch(torch.load(epoch_end, weights_only=False))
    assert not restarts_a_finished_epoch(torch.load(mid_epoch, weights_only=False))
    assert not restarts_a_finished_epoch({})
    reached = {}
    for name, path in (("epoch end", epoch_end), ("mid epoch", mid_epoch)):
        resumed = quiet_trainer(tmp_path, max_epochs=3, max_steps=100)
        resumed.fit(Counting(), loader(), ckpt_path=path)
        reached[name] = resumed.global_step
    assert reached["mid epoch"] == 9
    assert reached["epoch end"] < 9, (
        f"Lightning {lightning.__version__} no longer stops a run resumed from an epoch-end checkpoint with max_steps "
        f"and max_epochs an epoch early (steps reached from it: {reached['epoch end']}, 9 uninterrupted): "
        "AutoencoderCLI._check_resume refuses that resume, see ae_lightning/lightning_internals.py"
    )


def test_a_changed_checkpoint_epoch_progress_is_named_in_the_error() -> None:
    with pytest.raises(RuntimeError, match=rf"Lightning {lightning.__version__} changed .*epoch_progress"):
        restarts_a_finished_epoch({"loops": {"fit_loop": {}}})


class Recording(Counting):
    def __init__(self) -> None:
        super().__init__()
        self.indices: list[list[int]] = []

    def training_step(self, batch, batch_idx):
        self.indices.append(batch[2].tolist())
        return super().training_step(batch, batch_idx)


def test_lightning_closes_the_epoch_that_max_steps_stops_and_a_reopened_one_resumes_inside_it(tmp_path) -> None:
    # Epochs of 3 batches; fit stops at step 2, inside epoch 0, and the checkpoint is written after fit returned.
    images = torch.rand(12, 3)

    def loader():
        return TensorBatchLoader(images, torch.zeros(12), torch.arange(12), batch_size=4, shuffle=True, seed=0)

    uninterrupted, reference = Recording(), quiet_trainer(tmp_path, max_steps=5)
    reference.fit(uninterrupted, loader())
    stopped, finished = quiet_trainer(tmp_path, max_steps=2), quiet_trainer(tmp_path, max_steps=3)
    stopped.fit(Counting(), loader())
    finished.fit(Counting(), loader())
    stopped.save_checkpoint(tmp_path / "closed.ckpt")
    finished.save_checkpoint(tmp_path / "finished.ckpt")
    checkpoint = torch.load(tmp_path / "closed.ckpt", weights_only=False)
    assert reopen_stopped_epoch(stopped, checkpoint)
    assert not reopen_stopped_epoch(stopped, checkpoint)  # open now
    torch.save(checkpoint, tmp_path / "reopened.ckpt")
    assert not reopen_stopped_epoch(finished, torch.load(tmp_path / "finished.ckpt", weights_only=False))  # it ended
    assert not reopen_stopped_epoch(stopped, {})
    seen, epochs = resumed_runs(tmp_path, loader, ("closed", "reopened"))
    assert seen["closed"] != uninterrupted.indices[2:], (
        f"Lightning {lightning.__version__} now resumes a checkpoint written after max_steps stopped fit inside an "
        "epoch at the next batch of that epoch: UnfinishedEpochInCheckpoint (ae_lightning/training/resume.py) and "
        "reopen_stopped_epoch (ae_lightning/lightning_internals.py) are no longer needed"
    )
    expected = (uninterrupted.indices[2:], reference.current_epoch)
    assert (seen["reopened"], epochs["reopened"]) == expected, (
        f"Lightning {lightning.__version__} resumes a checkpoint that reopen_stopped_epoch marked unfinished at other "
        f"batches (indices {seen['reopened']}, epoch {epochs['reopened']}) than the uninterrupted run's steps 3 to 5 "
        f"({expected[0]}, epoch {expected[1]}): see reopen_stopped_epoch in ae_lightning/lightning_internals.py"
    )
    with pytest.raises(RuntimeError, match=rf"Lightning {lightning.__version__} changed .*epoch_progress"):
        reopen_stopped_epoch(stopped, {"loops": {"fit_loop": {}}})


def resumed_runs(tmp_path, loader, names: tuple[str, ...]) -> tuple[dict[str, list], dict[str, int]]:
    """The batches (their indices) and the last epoch of a fit to step 5 resumed from each ``<name>.ckpt``."""
    seen, epochs = {}, {}
    for name in names:
        resumed, trainer = Recording(), quiet_trainer(tmp_path, max_steps=5)
        trainer.fit(resumed, loader(), ckpt_path=tmp_path / f"{name}.ckpt")
        seen[name], epochs[name] = resumed.indices, trainer.current_epoch
    return seen, epochs


def test_lightning_miscounts_an_epoch_ended_by_max_steps_and_one_marked_as_the_next_epochs_start_resumes_there(
    tmp_path,
) -> None:
    # Epochs of 3 batches, no validation; fit stops at step 3, epoch 0's last batch, and the checkpoint is written after
    # fit returned.
    images = torch.rand(12, 3)

    def loader():
        return TensorBatchLoader(images, torch.zeros(12), torch.arange(12), batch_size=4, shuffle=True, seed=0)

    uninterrupted, reference = Recording(), quiet_trainer(tmp_path, max_steps=5)
    reference.fit(uninterrupted, loader())
    ended, stopped = quiet_trainer(tmp_path, max_steps=3), quiet_trainer(tmp_path, max_steps=2)
    ended.fit(Counting(), loader())
    stopped.fit(Counting(), loader())
    ended.save_checkpoint(tmp_path / "ended.ckpt")
    checkpoint = torch.load(tmp_path / "ended.ckpt", weights_only=False)
    assert not start_next_epoch(stopped, torch.load(tmp_path / "ended.ckpt", weights_only=False))  # inside an epoch
    assert start_next_epoch(ended, checkpoint)
    assert not start_next_epoch(ended, checkpoint)  # marked now
    assert not restarts_a_finished_epoch(checkpoint)
    assert not start_next_epoch(ended, {})
    torch.save(checkpoint, tmp_path / "next.ckpt")
    seen, epochs = resumed_runs(tmp_path, loader, ("ended", "next"))
    assert seen["ended"] != uninterrupted.indices[3:], (
        f"Lightning {lightning.__version__} now resumes a checkpoint written after max_steps ended fit at an epoch's "
        "last batch at the next epoch's first batch: start_next_epoch (ae_lightning/lightning_internals.py) and its "
        "call in UnfinishedEpochInCheckpoint (ae_lightning/training/resume.py) are no longer needed"
    )
    expected = (uninterrupted.indices[3:], reference.current_epoch)
    assert (seen["next"], epochs["next"]) == expected, (
        f"Lightning {lightning.__version__} resumes a checkpoint that start_next_epoch marked at other batches "
        f"(indices {seen['next']}, epoch {epochs['next']}) than the uninterrupted run's steps 4 and 5 ({expected[0]}, "
        f"epoch {expected[1]}): see start_next_epoch in ae_lightning/lightning_internals.py"
    )
    with pytest.raises(RuntimeError, match=rf"Lightning {lightning.__version__} changed .*epoch_progress"):
        start_next_epoch(ended, {"loops": {"fit_loop": {}}})


class Validated(Counting):
    def __init__(self) -> None:
        super().__init__()
        self.validated_epochs: list[int] = []

    def validation_step(self, batch, batch_idx) -> None:
        pass

    def on_validation_end(self) -> None:
        self.validated_epochs.append(self.current_epoch)


def test_lightning_skips_the_epoch_end_validation_when_resuming_at_the_epochs_last_batch(tmp_path) -> None:
    images = torch.rand(12, 3)

    def loader():
        return TensorBatchLoader(images, torch.zeros(12), torch.arange(12), batch_size=4, shuffle=False, seed=0)

    steps = ModelCheckpoint(tmp_path / "steps", every_n_train_steps=3, save_top_k=-1, filename="{step}")
    settings = {"max_epochs": 3, "num_sanity_val_steps": 0}
    L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False, callbacks=[steps],
              default_root_dir=tmp_path, **settings).fit(Validated(), loader(), loader())  # fmt: skip
    resumed = Validated()
    quiet_trainer(tmp_path, **settings).fit(resumed, loader(), loader(), ckpt_path=tmp_path / "steps" / "step=3.ckpt")
    assert resumed.validated_epochs == [1, 2], (
        f"Lightning {lightning.__version__} no longer skips the validation of the epoch whose last batch a resumed "
        f"checkpoint was written at (validated epochs {resumed.validated_epochs}): "
        "AutoencoderModule.on_load_checkpoint warns that it does; see ae_lightning/lightning_internals.py"
    )


def test_lightning_keeps_a_loaders_state_where_stored_loader_states_reads_it_and_restores_it(tmp_path) -> None:
    # Epochs of 3 batches; a checkpoint after batch 2 of epoch 0. TensorBatchLoader is no DataLoader: Lightning
    # saves and restores it through its state_dict / load_state_dict alone.
    images = torch.rand(12, 3)

    class Recorder(TensorBatchLoader):
        def load_state_dict(self, state) -> None:
            self.loaded = [*getattr(self, "loaded", []), dict(state)]
            super().load_state_dict(state)

    def loader():
        return Recorder(images, torch.zeros(12), torch.arange(12), batch_size=4, shuffle=True, seed=0)

    steps = ModelCheckpoint(tmp_path / "steps", every_n_train_steps=2, save_top_k=-1, filename="{step}")
    L.Trainer(accelerator="cpu", max_epochs=2, logger=False, enable_progress_bar=False, enable_model_summary=False,
              callbacks=[steps], default_root_dir=tmp_path).fit(Counting(), loader())  # fmt: skip
    checkpoint = torch.load(tmp_path / "steps" / "step=2.ckpt", weights_only=False)
    states = stored_loader_states(checkpoint)
    assert [(state.get("epoch"), state.get("batches_done")) for state in states] == [(0, 2)], (
        f"Lightning {lightning.__version__} no longer keeps the training loader's state_dict under "
        f"loops/fit_loop/state_dict/combined_loader (found {states}): the command's resume check reads it there; see "
        "stored_loader_states in ae_lightning/lightning_internals.py"
    )
    resumed = loader()
    quiet_trainer(tmp_path, max_epochs=2).fit(Counting(), resumed, ckpt_path=tmp_path / "steps" / "step=2.ckpt")
    assert getattr(resumed, "loaded", []) == states, (
        f"Lightning {lightning.__version__} no longer hands a resumed loader (no DataLoader) its stored state through "
        "load_state_dict: TensorBatchLoader (datamodules/loader.py) would restart its epoch"
    )
    assert stored_loader_states({}) == []
    with pytest.raises(RuntimeError, match=rf"Lightning {lightning.__version__} changed .*loops/fit_loop/state_dict"):
        stored_loader_states({"loops": {"fit_loop": {}}})


def test_a_lightning_module_outside_a_trainer_raises_a_runtime_error_for_its_trainer() -> None:
    # AutoencoderModule (on_load_checkpoint, on_save_checkpoint, ...) and MultVAE tell a module loaded by
    # load_from_checkpoint from one that a Trainer runs by this RuntimeError.
    try:
        trainer = Counting().trainer
    except RuntimeError:
        return
    pytest.fail(
        f"Lightning {lightning.__version__} gives a LightningModule outside a Trainer the trainer {trainer!r} instead "
        "of raising a RuntimeError: replace the `except RuntimeError` around `self.trainer` in ae_lightning/base.py "
        "and ae_lightning/models/recommender.py"
    )


def test_a_tqdm_bar_never_opened_raises_a_type_error() -> None:
    from lightning.pytorch.callbacks import TQDMProgressBar

    bar = TQDMProgressBar()
    for name in ("train_progress_bar", "val_progress_bar", "test_progress_bar", "predict_progress_bar"):
        with pytest.raises(TypeError):
            getattr(bar, name)
            pytest.fail(
                f"Lightning {lightning.__version__}'s TQDMProgressBar.{name} no longer raises a TypeError before it is "
                "opened: ClosingProgressBar.on_exception (ae_lightning/training/callbacks.py) would fail in its place"
            )


class HandlersSeen(L.Callback):
    """Records the SIGTERM and SIGUSR1 handlers at the hooks around which SigtermCheckpoint and SlurmRequeue hand their
    signals to Lightning and take them back."""

    def __init__(self) -> None:
        import signal

        self.seen: dict[str, tuple] = {}
        self.signals = (signal.SIGTERM, signal.SIGUSR1)

    def _record(self, hook: str) -> None:
        import signal

        self.seen[hook] = tuple(signal.getsignal(signum) for signum in self.signals)

    def setup(self, trainer, pl_module, stage) -> None:
        self._record("setup")

    def on_fit_start(self, trainer, pl_module) -> None:
        self._record("on_fit_start")

    def on_sanity_check_start(self, trainer, pl_module) -> None:
        self._record("on_sanity_check_start")

    def on_train_start(self, trainer, pl_module) -> None:
        self._record("on_train_start")


def test_lightning_installs_its_sigterm_handler_after_on_fit_start_and_puts_back_the_one_it_found(
    tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import signal

    from lightning.pytorch.demos.boring_classes import BoringModel

    # A single SLURM task with auto-requeue (SLURMEnvironment's default), as in tests/test_slurm.py.
    for name in ("NTASKS", "JOB_ID", "NODEID", "PROCID", "LOCALID", "NTASKS_PER_NODE"):
        monkeypatch.setenv(f"SLURM_{name}", "1" if name.startswith("NTASKS") else "0")
    monkeypatch.setenv("SLURM_JOB_NAME", "train")
    monkeypatch.setenv("SLURM_NODELIST", "localhost")

    def mine(signum, frame) -> None:
        pass

    previous = [signal.signal(signum, mine) for signum in (signal.SIGTERM, signal.SIGUSR1)]
    try:
        seen = HandlersSeen()
        trainer = L.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                            enable_model_summary=False, max_steps=1, limit_val_batches=1, num_sanity_val_steps=1,
                            callbacks=[seen], default_root_dir=tmp_path)  # fmt: skip
        trainer.fit(BoringModel())
        after = (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGUSR1))
    finally:
        for signum, handler in zip((signal.SIGTERM, signal.SIGUSR1), previous):
            signal.signal(signum, handler)
    sigterm = {hook: handlers[0] is mine for hook, handlers in seen.seen.items()}
    assert sigterm == {"setup": True, "on_fit_start": True, "on_sanity_check_start": False, "on_train_start": False}, (
        f"Lightning {lightning.__version__} no longer installs its SIGTERM handler between the on_fit_start hooks and "
        f"the sanity check (whether the handler was still this process's at each hook: {sigterm}): SigtermCheckpoint "
        "(ae_lightning/training/fault_tolerance/sigterm.py) hands SIGTERM back in on_fit_start and takes it again there"
    )
    assert after == (mine, mine), (
        f"Lightning {lightning.__version__} no longer puts back the SIGTERM handler it found when fit ends: "
        "AgreedSignal (ae_lightning/training/fault_tolerance/agreement.py) relies on it after a failed fit"
    )
    assert all(handlers[1] is mine for handlers in seen.seen.values()), (
        f"Lightning {lightning.__version__} now replaces an installed SLURM requeue signal handler (SIGUSR1): "
        "SlurmRequeue (ae_lightning/training/fault_tolerance/slurm.py) installs its handler first for Lightning to "
        "leave it alone"
    )


def test_the_predict_loop_keeps_return_predictions_where_returns_predictions_reads_it(tmp_path) -> None:
    from lightning.pytorch.demos.boring_classes import BoringModel

    class Seen(Callback):
        def __init__(self) -> None:
            self.returned: list[bool] = []

        def on_predict_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
            self.returned.append(returns_predictions(trainer))

    seen = Seen()
    trainer = L.Trainer(default_root_dir=tmp_path, limit_predict_batches=1, callbacks=[seen], logger=False,
                        enable_progress_bar=False, enable_model_summary=False)  # fmt: skip
    trainer.predict(BoringModel())
    trainer.predict(BoringModel(), return_predictions=False)
    assert seen.returned == [True, False]


def test_a_single_process_trainer_keeps_the_cluster_environment_it_was_given() -> None:
    # What Lightning's SLURM signal handler reads: a plugin's auto_requeue and requeue_signal, one process's too.
    from lightning.fabric.plugins.environments import LightningEnvironment, SLURMEnvironment

    given = SLURMEnvironment(auto_requeue=False)
    assert cluster_environment(L.Trainer(accelerator="cpu", devices=1, plugins=[given], logger=False)) is given
    assert isinstance(cluster_environment(L.Trainer(accelerator="cpu", devices=1, logger=False)), LightningEnvironment)


def test_lightnings_loops_dispatch_callback_hooks_through_the_dispatcher_that_callback_dispatcher_gives(
    tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # benchmarks/hook_cost.py times this dispatcher as the cost of each callback hook of a training step.
    from lightning.pytorch.demos.boring_classes import BoringModel

    class Seen(Callback):
        def __init__(self) -> None:
            self.calls: list[tuple] = []

        def on_before_zero_grad(self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer) -> None:
            self.calls.append((trainer, pl_module, optimizer))

    seen = Seen()
    trainer = quiet_trainer(tmp_path, max_steps=1, limit_val_batches=0, callbacks=[seen])
    dispatch = callback_dispatcher()
    with mock.patch("lightning.pytorch.trainer.call._call_callback_hooks", wraps=dispatch) as dispatched:
        trainer.fit(BoringModel())
    hooks = [called.args[1] for called in dispatched.call_args_list]
    assert "on_before_zero_grad" in hooks and len(seen.calls) == 1, (
        f"Lightning {lightning.__version__}'s loops no longer call the callback hooks through "
        f"lightning.pytorch.trainer.call._call_callback_hooks (it dispatched {hooks}): benchmarks/hook_cost.py times "
        "it; see callback_dispatcher in ae_lightning/lightning_internals.py"
    )
    dispatch(trainer, "on_before_zero_grad", "optimizer")
    assert seen.calls[1] == (trainer, trainer.lightning_module, "optimizer")
    monkeypatch.delattr("lightning.pytorch.trainer.call._call_callback_hooks")
    with pytest.raises(RuntimeError, match=rf"Lightning {lightning.__version__} changed .*_call_callback_hooks"):
        callback_dispatcher()


def test_weight_averaging_keeps_the_settings_that_averages_buffers_by_subtraction_reads() -> None:
    from lightning.pytorch.callbacks import EMAWeightAveraging, WeightAveraging
    from torch.optim.swa_utils import get_ema_avg_fn

    from ae_lightning.lightning_internals import averages_buffers_by_subtraction

    assert averages_buffers_by_subtraction(WeightAveraging())
    assert not averages_buffers_by_subtraction(WeightAveraging(use_buffers=False))
    assert not averages_buffers_by_subtraction(WeightAveraging(avg_fn=get_ema_avg_fn()))
    assert not averages_buffers_by_subtraction(EMAWeightAveraging())
    changed = WeightAveraging()
    del changed._kwargs
    with pytest.raises(RuntimeError, match=r"changed an internal .*WeightAveraging no longer keeps"):
        averages_buffers_by_subtraction(changed)


def test_jsonargparse_parses_without_validation_where_parse_unvalidated_asks_it() -> None:
    from jsonargparse import ArgumentParser

    from ae_lightning.lightning_internals import parse_unvalidated

    parser = ArgumentParser(exit_on_error=False)
    parser.add_argument("--model", required=True)
    parser.add_argument("--data", required=True)
    with pytest.raises(Exception, match="data"):
        parser.parse_args(["--model", "VAE"])
    assert parse_unvalidated(parser, ["--model", "VAE"]).model == "VAE"
