"""DDP on the CPU: 2 processes (gloo) train every kind of variant through the CLI.

Each rank sees a disjoint shard of the data, the ranks end with identical weights, the auto-decoder's per-sample
codes are updated exactly where some rank saw their sample, and test metrics reduced across ranks equal those of
one process on the same data; the vector-quantized tokenizers' codebooks learn from every rank's codes.
"""

from __future__ import annotations

import atexit
import csv
import json
import pickle
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
from tiny_runs import (
    ROOT,
    EndsProcessGroup,
    build_cli,
    last_checkpoint,
    run_cli,
    run_or_fail_if_hung,
    run_subprocess,
    subprocess_env,
    tiny_args,
)

DDP = ["--trainer.strategy", "ddp", "--trainer.accelerator", "cpu", "--trainer.devices", "2"]
VARIANTS = ["ae", "vae", "aae", "autodecoder", "deep_ae_rbm", "deep_ae_finetune", "iwae"]
# Runs named apart from their config: (config, extra arguments). The deep AE's own run only pretrains (its first RBM
# takes the one epoch); this one fine-tunes, under manual optimization, from the first step.
CONFIG_OF = {"deep_ae_finetune": ("deep_ae_rbm", ["--model.init_args.pretrain", "none"])}
TRAIN_SIZE = 220  # the tiny data set's training split
# The auto-decoder trains 3 steps on global batches of 2 x 16 images only, so that some codes are never seen.
AUTODECODER_BATCHES = 3


@pytest.fixture(scope="module")
def ddp_runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One 2-process DDP launch that fits every variant for an epoch, then tests the plain autoencoder."""
    from conftest import write_dataset

    root = tmp_path_factory.mktemp("ddp")
    data_dir = write_dataset(root / "data", "MNIST")
    runs = []
    for variant in VARIANTS:
        folder = str(root / variant / "ranks")
        record = ["--trainer.callbacks+=tiny_runs.RecordRank", "--trainer.callbacks.folder", folder]
        limit = ["--trainer.max_steps", str(AUTODECODER_BATCHES)] if variant == "autodecoder" else []
        config, extra = CONFIG_OF.get(variant, (variant, []))
        args = [*DDP, *record, *limit, *extra, "--trainer.max_epochs", "1"]
        runs.append(["fit", *tiny_args(config, data_dir, root / variant, *args)])
    fitted = root / "ae" / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt"
    csv_logger = ["--trainer.logger", "CSVLogger", "--trainer.logger.save_dir", str(root / "ae-test")]
    runs.append(["test", *tiny_args("ae", data_dir, root / "ae-test", *DDP, *csv_logger, "--ckpt_path", str(fitted))])
    stream = ["--predictions.format", "stream", "--predictions.chunk_bytes", "4kB", "--ckpt_path", str(fitted)]
    runs.append(["predict", *tiny_args("ae", data_dir, root / "ae-predict", *DDP, *stream)])
    launch(runs, root / "runs.json", timeout=400)
    (root / "data_dir").write_text(str(data_dir))
    return root


def launch(runs: list[list[str]], runs_file: Path, timeout: float) -> str:
    """Run the ``ae-lightning`` argument lists ``runs`` in one process (the first DDP run starts the other rank, which
    then goes through all of them too: see ``tiny_runs.main``); their output, or fail the test with it if one fails."""
    runs_file.write_text(json.dumps(runs))
    returncode, output = run_or_fail_if_hung(
        [sys.executable, str(ROOT / "tests" / "tiny_runs.py"), str(runs_file)], timeout=timeout
    )
    assert returncode == 0, output[-5000:]
    return output


def ranks(root: Path, variant: str) -> list[dict]:
    return [torch.load(root / variant / "ranks" / f"rank{r}.pt", weights_only=True) for r in range(2)]


@pytest.mark.parametrize("variant", VARIANTS)
def test_ranks_train_disjoint_shards_to_identical_weights(ddp_runs: Path, variant: str) -> None:
    rank0, rank1 = ranks(ddp_runs, variant)
    seen0 = [i for batch in rank0["indices"] for i in batch]
    seen1 = [i for batch in rank1["indices"] for i in batch]
    assert len(rank0["indices"]) == len(rank1["indices"])  # DDP needs the same number of steps on every rank
    assert not set(seen0) & set(seen1)
    assert len(set(seen0)) == len(seen0) and len(set(seen1)) == len(seen1)
    if variant != "autodecoder":
        assert sorted(seen0 + seen1) == list(range(TRAIN_SIZE))  # together one whole epoch
    for name, value in rank0["final"].items():
        assert torch.equal(value, rank1["final"][name]), f"{name} differs between the ranks"
    changed = [name for name, value in rank0["final"].items() if not torch.equal(value, rank0["initial"][name])]
    assert changed, "training changed no weight"
    checkpoint = last_checkpoint(ddp_runs / variant)
    for name, value in rank0["final"].items():
        assert torch.equal(checkpoint["state_dict"][name], value), name
    assert len(checkpoint["random_states"]) == 2  # each rank's generators, for an exact resume


def test_autodecoder_codes_change_exactly_where_some_rank_saw_their_sample(ddp_runs: Path) -> None:
    rank0, rank1 = ranks(ddp_runs, "autodecoder")
    initial, final = rank0["initial"]["codes.weight"], rank0["final"]["codes.weight"]
    assert final.shape[0] == TRAIN_SIZE
    seen = {rank: {i for batch in record["indices"] for i in batch} for rank, record in enumerate([rank0, rank1])}
    assert len(seen[0]) == len(seen[1]) == AUTODECODER_BATCHES * 16
    changed = {i for i in range(TRAIN_SIZE) if not torch.equal(final[i], initial[i])}
    # Gradients are averaged across ranks, so a code moves on every rank when any rank saw its sample, and a code
    # no rank saw keeps its initial value (zero gradient, zero Adam moments).
    assert changed == seen[0] | seen[1]
    assert torch.equal(rank1["final"]["codes.weight"], final)
    assert torch.equal(last_checkpoint(ddp_runs / "autodecoder")["state_dict"]["codes.weight"], final)


def test_test_metrics_reduced_across_ranks_equal_one_process(ddp_runs: Path) -> None:
    with open(ddp_runs / "ae-test" / "lightning_logs" / "version_0" / "metrics.csv") as file:
        rows = list(csv.DictReader(file))
    under_ddp = {
        name: float(value) for row in rows for name, value in row.items() if name.startswith("test/") and value
    }
    data_dir = Path((ddp_runs / "data_dir").read_text())
    fitted = ddp_runs / "ae" / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt"
    single = run_cli("test", *tiny_args("ae", data_dir, ddp_runs / "single", "--ckpt_path", str(fitted)))
    one_process = {name: value.item() for name, value in single.trainer.callback_metrics.items()}
    assert {"test/loss", "test/recon", "test/recon_mse"} <= set(under_ddp)
    assert set(under_ddp) == {name for name in one_process if name.startswith("test/")}
    for name, value in under_ddp.items():
        assert value == pytest.approx(one_process[name], rel=1e-5), name


def test_ranks_predict_into_one_stream_of_every_image_once(ddp_runs: Path) -> None:
    from litdata import StreamingDataset

    stream = next((ddp_runs / "ae-predict").rglob("predictions"))
    items = sorted(StreamingDataset(str(stream)), key=lambda item: item["index"])
    data_dir = Path((ddp_runs / "data_dir").read_text())
    fitted = ddp_runs / "ae" / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt"
    single = run_cli("predict", *tiny_args("ae", data_dir, ddp_runs / "single-predict", "--ckpt_path", str(fitted)))
    expected = torch.load(Path(single.trainer.log_dir) / "predictions.pt")
    assert [item["index"] for item in items] == expected["index"].tolist()  # each image once, none padded in
    assert torch.allclose(torch.stack([item["z"] for item in items]), expected["z"], atol=1e-6)
    assert {path.name.split("-")[1] for path in stream.glob("chunk-*.bin")} == {"0", "1"}  # both ranks wrote


def test_ranks_predict_into_the_folder_of_a_wandb_run_given_no_id(tmp_path: Path) -> None:
    # Such a run has its id only in rank 0, where W&B started it: rank 1 used to write into <project>/None, and
    # rank 0 waited for ever for rank 1's part of the stream.
    from conftest import write_dataset
    from litdata import StreamingDataset

    data_dir = write_dataset(tmp_path / "data", "MNIST")
    logger = ["--trainer.logger", "WandbLogger", "--trainer.logger.project", "p", "--trainer.logger.save_dir",
              str(tmp_path / "wandb")]  # fmt: skip
    predict = ["predict", *tiny_args("ae", data_dir, tmp_path, *DDP, *logger)]
    output = launch([predict, [*predict, "--predictions.format", "stream"]], tmp_path / "runs.json", timeout=150)
    written = {path.name: path for path in (tmp_path / "wandb" / "p").glob("*/predictions*")}
    assert sorted(written) == ["predictions", "predictions-rank0.pt", "predictions-rank1.pt"]
    assert written["predictions-rank0.pt"].parent == written["predictions-rank1.pt"].parent  # the run's folder
    shares = [torch.load(written[f"predictions-rank{rank}.pt"])["index"] for rank in range(2)]
    assert sorted(torch.cat(shares).tolist()) == list(range(60))
    assert sorted(item["index"] for item in StreamingDataset(str(written["predictions"]))) == list(range(60))
    for rank, share in enumerate(shares):  # each process names its own file
        assert f"Predictions for {len(share)} images written to {written[f'predictions-rank{rank}.pt']}" in output


@pytest.mark.parametrize("strategy", ["ddp", "ddp_spawn"])
@pytest.mark.parametrize("variant, finds_unused", [("aae", True), ("ae", False)])
def test_ddp_looks_for_unused_parameters_only_for_partial_backward_passes(
    variant: str, finds_unused: bool, strategy: str, tmp_path: Path
) -> None:
    # The adversarial AE's discriminator and generator phases reach only part of the weights; the other variants'
    # backward passes, several per Lightning batch with steps_per_batch 10, reach all of them. Under ddp_spawn the
    # adversarial AE's first step failed with DDP's "parameters that were not used in producing the loss".
    cli = build_cli(*tiny_args(variant, tmp_path / "data", tmp_path, *DDP, "--trainer.strategy", strategy))
    assert cli.trainer.strategy._ddp_kwargs.get("find_unused_parameters", False) is finds_unused
    assert cli.trainer.strategy._start_method == ("spawn" if strategy == "ddp_spawn" else "popen")


def test_codebooks_learn_from_every_rank(tmp_path: Path) -> None:
    # VQ with k-means initialization and no dead-code replacement: after k-means (its cluster sizes count the vectors)
    # the EMA keeps the cluster sizes summing to the vectors of a step, those of both ranks when the updates are
    # reduced across them. Residual VQ with dead-code replacement: the replacement vectors are drawn alike too.
    from conftest import write_dataset

    data_dir = write_dataset(tmp_path / "data", "FashionMNIST")
    short = ["--trainer.max_steps", "3", "--trainer.limit_val_batches", "0", "--model.init_args.codebook_size", "16"]
    quantizers = {
        "vq": ["--model.init_args.dead_code_threshold", "0"],
        "residual_vq": ["--model.init_args.quantizer", "residual_vq", "--model.init_args.num_quantizers", "2"],
    }
    runs = []
    for name, extra in quantizers.items():
        record = ["--trainer.callbacks+=tiny_runs.RecordCodebooks", "--trainer.callbacks.folder", str(tmp_path / name)]
        runs.append(["fit", *tiny_args("vqvae", data_dir, tmp_path / name, *DDP, *short, *extra, *record)])
    launch(runs, tmp_path / "runs.json", timeout=200)
    for name in quantizers:
        rank0, rank1 = (torch.load(tmp_path / name / f"rank{r}.pt", weights_only=True) for r in range(2))
        assert len(rank0) == len(rank1) == 3
        for step, (record0, record1) in enumerate(zip(rank0, rank1)):
            for buffer in ("cluster_size", "embed"):  # before the next forward broadcasts rank 0's buffers
                for level, (value0, value1) in enumerate(zip(record0[buffer], record1[buffer])):
                    assert torch.equal(value0, value1), f"{name}: {buffer} of codebook {level} at step {step}"
            if name == "vq":
                both = record0["vectors"] + record1["vectors"]
                assert record0["cluster_size"][0].sum().item() == pytest.approx(both, rel=1e-4), f"step {step}"


SPAWN = ["--trainer.strategy", "ddp_spawn", "--trainer.accelerator", "cpu", "--trainer.devices", "2"]


@pytest.fixture(scope="module")
def spawn_trainer(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """The pickled trainer of ``ae-lightning fit`` under ddp_spawn, as it is sent to the processes it starts."""
    root = tmp_path_factory.mktemp("spawn")
    cli = build_cli(*tiny_args("vae", root / "data", root, *SPAWN))
    return pickle.dumps(cli.trainer)  # its callbacks hold the parser, whose signatures hold the number types


def test_ddp_spawn_can_pickle_the_command_for_its_processes(spawn_trainer: bytes) -> None:
    trainer = pickle.loads(spawn_trainer)
    assert type(trainer.strategy).__name__ == "DDPStrategy" and trainer.num_devices == 2


def test_a_process_that_ddp_spawn_starts_can_unpickle_the_command(spawn_trainer: bytes) -> None:
    # What a spawned process does: import the command's module (its __main__), then unpickle what it was sent.
    code = "import pickle, sys, lightning, ae_lightning.cli; print(type(pickle.loads(sys.stdin.buffer.read())).__mro__)"
    result = subprocess.run([sys.executable, "-c", code], input=spawn_trainer, capture_output=True, cwd=ROOT,
                            env=subprocess_env(), timeout=300)  # fmt: skip
    assert result.returncode == 0 and "lightning.pytorch.trainer.trainer.Trainer" in result.stdout.decode(), (
        result.stderr.decode()[-3000:]
    )


class ProcessGroupAtExit(L.Callback):
    """Writes ``<folder>/rank<R>``: whether the process group of the process that ran rank R was alive at its exit."""

    def __init__(self, folder: str) -> None:
        self.folder = folder

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        Path(self.folder).mkdir(parents=True, exist_ok=True)
        alive = Path(self.folder) / f"rank{trainer.global_rank}"
        atexit.register(lambda: alive.write_text(str(torch.distributed.is_initialized())))


def test_the_processes_that_ddp_spawn_starts_end_their_process_group_before_they_exit(tmp_path: Path) -> None:
    # a process that exited with its gloo group alive aborted about 1 time in 8 ("terminate called without an active
    # exception"), and the command failed with it
    from conftest import write_dataset

    record = ["--trainer.callbacks+=test_ddp.ProcessGroupAtExit", "--trainer.callbacks.folder", str(tmp_path / "pg")]
    args = tiny_args("ae", write_dataset(tmp_path / "data", "MNIST"), tmp_path, *SPAWN, *record)
    result = run_subprocess("fit", *args, "--trainer.max_steps", "2", "--trainer.limit_val_batches", "1")
    assert result.returncode == 0, result.stderr[-3000:]
    assert [(tmp_path / "pg" / f"rank{rank}").read_text() for rank in range(2)] == ["False", "False"]


def test_test_terms_of_a_split_shared_unequally_by_the_ranks_equal_one_process(tmp_path: Path) -> None:
    # 9 test samples on 2 ranks: shares of 5 and 4. Each term is the mean over the 9, as in one process.
    from ae_lightning import Autoencoder
    from datamodules import ArrayDataModule

    torch.save(torch.rand(40, 6, generator=torch.Generator().manual_seed(0)), tmp_path / "x.pt")
    data = ArrayDataModule(str(tmp_path / "x.pt"), val_fraction=0.23, test_fraction=0.225, batch_size=4)
    model = Autoencoder(input_shape=[6], hidden_dims=[8], latent_dim=2, reconstruction="mse")

    def test(**kwargs) -> dict[str, float]:
        trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
                            default_root_dir=tmp_path, **kwargs)  # fmt: skip
        return trainer.test(model, datamodule=data)[0]

    under_ddp = test(strategy="ddp_spawn", devices=2, callbacks=[EndsProcessGroup()])
    one_process = test(devices=1)
    assert data.split_size("test") == 9
    assert {"test/loss", "test/recon", "test/recon_mse"} <= set(under_ddp) == set(one_process)
    for name, value in under_ddp.items():
        assert value == pytest.approx(one_process[name], rel=1e-6), name


def test_a_split_too_small_for_the_processes_is_refused_before_the_run_writes_its_config(tmp_path: Path) -> None:
    # 240 training images, val_fraction 0.004: a validation split of 1 image for 2 processes. It was refused by the
    # loader in each process, after the run had written config.yaml and hparams.yaml as if it had trained.
    from conftest import write_dataset

    args = tiny_args("ae", write_dataset(tmp_path / "data", "MNIST"), tmp_path / "run", *DDP, "--data.val_fraction",
                     "0.004", "--trainer.max_epochs", "1")  # fmt: skip
    result = run_subprocess("fit", *args)
    assert result.returncode == 1, result.stderr[-3000:]
    assert result.stderr.count("the val split of 1 samples cannot be shared by 2 processes") == 1, result.stderr
    assert "a larger --data.val_fraction" in result.stderr
    assert not (tmp_path / "run").exists()


def test_the_split_check_reads_only_data_that_need_no_prepare_data_and_skips_splits_not_read(tmp_path: Path) -> None:
    # What the command asks before it starts the processes: an MNIST that prepare_data has not fetched yet is not
    # read (it would fall back to the offline sample without a download tried); a split Lightning never reads
    # (limit_val_batches 0) may be smaller than the processes.
    from datamodules import ArrayDataModule, MNISTDataModule

    torch.save(torch.rand(40, 6, generator=torch.Generator().manual_seed(0)), tmp_path / "x.pt")

    def trainer(**kwargs) -> L.Trainer:  # not run: no process is started
        return L.Trainer(strategy="ddp", accelerator="cpu", devices=2, logger=False, **kwargs)

    data = ArrayDataModule(str(tmp_path / "x.pt"), val_fraction=0.03, test_fraction=0.1)
    with pytest.raises(ValueError, match=r"the val split of 1 samples cannot be shared by 2 processes"):
        data.check_splits("fit", trainer())
    data.check_splits("fit", trainer(limit_val_batches=0))
    data.check_splits("test", trainer())
    data.check_splits("predict", trainer())
    with pytest.raises(ValueError, match=r"the test split of 1 samples cannot be shared by 2 processes"):
        ArrayDataModule(str(tmp_path / "x.pt"), test_fraction=0.03).check_splits("predict", trainer())
    not_fetched = MNISTDataModule(data_dir=str(tmp_path / "empty"))
    not_fetched.check_splits("fit", trainer())
    assert not not_fetched.prepared and not not_fetched.splits


def test_test_metrics_under_ddp_spawn_equal_one_process(tmp_path: Path) -> None:
    # The processes that ddp_spawn starts on the CPU got the model's tensors in memory shared between them: both ranks
    # added into the same metric states, and test/recon_mse came out twice the one-process value.
    from conftest import write_dataset

    data_dir = write_dataset(tmp_path / "data", "MNIST")
    csv_logger = ["--trainer.logger", "CSVLogger", "--trainer.logger.save_dir", str(tmp_path / "spawn")]
    result = run_subprocess("test", *tiny_args("ae", data_dir, tmp_path / "spawn", *SPAWN, *csv_logger))
    assert result.returncode == 0, result.stderr[-3000:]
    with open(tmp_path / "spawn" / "lightning_logs" / "version_0" / "metrics.csv") as file:
        under_spawn = {name: float(value) for row in csv.DictReader(file) for name, value in row.items()
                       if name.startswith("test/") and value}  # fmt: skip
    single = run_cli("test", *tiny_args("ae", data_dir, tmp_path / "single"))
    one_process = {name: value.item() for name, value in single.trainer.callback_metrics.items()}
    assert {"test/loss", "test/recon_mse", "test/psnr"} <= set(under_spawn)
    for name, value in under_spawn.items():
        assert value == pytest.approx(one_process[name], rel=1e-5), name
