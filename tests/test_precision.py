"""Every variant trains a step and tests in every precision: ``32`` and ``bf16-mixed`` on the CPU, ``16-mixed`` on a
GPU."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from tiny_runs import CONFIGS, build_cli, tiny_args

GPU = pytest.mark.skipif(not torch.cuda.is_available(), reason="16-mixed needs CUDA")
PRECISIONS = [
    pytest.param("32", "cpu", id="32"),
    pytest.param("bf16-mixed", "cpu", id="bf16-mixed"),
    pytest.param("16-mixed", "gpu", id="16-mixed", marks=[pytest.mark.gpu, GPU]),
]


@pytest.mark.parametrize("precision, accelerator", PRECISIONS)
@pytest.mark.parametrize("config", [c.stem for c in CONFIGS])
def test_a_training_step_in_each_precision_changes_weights_and_keeps_them_float32(
    config: str, precision: str, accelerator: str, data_dir: Path, tmp_path: Path
) -> None:
    record = ["--trainer.callbacks+=tiny_runs.RecordRank", "--trainer.callbacks.folder", str(tmp_path / "record")]
    # fp16's gradient scaler skips the steps whose gradients overflow while it halves its scale from 2**16, as
    # PyTorch documents: 32 steps leave it room to find its scale, the other precisions update at the first step.
    steps = ["--trainer.max_steps", "32", "--trainer.max_epochs", "-1", "--trainer.limit_val_batches", "1"]
    cli = build_cli(
        *tiny_args(config, data_dir, tmp_path, *record),
        *(steps if precision == "16-mixed" else ["--trainer.fast_dev_run", "true"]),
        "--trainer.precision",
        precision,
        "--trainer.accelerator",
        accelerator,
        "--trainer.devices",
        "1",
    )
    if config == "deep_ae_rbm" and precision == "16-mixed":  # its RBM updates are not gradient steps
        with pytest.raises(ValueError, match="RBM pretraining has no gradient scaler: use 32 or bf16-mixed"):
            cli.trainer.fit(cli.model, datamodule=cli.datamodule)
        return
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    assert cli.trainer.precision == {"32": "32-true"}.get(precision, precision)
    assert torch.isfinite(cli.trainer.callback_metrics["val/loss"])
    record = torch.load(tmp_path / "record" / "rank0.pt", weights_only=True)
    changed = [name for name, value in record["final"].items() if not torch.equal(value, record["initial"][name])]
    assert changed, f"a {precision} step changed no weight"
    for name, value in record["final"].items():
        assert value.dtype in (torch.float32, torch.int64, torch.bool, torch.uint8), f"{name} is {value.dtype}"
        assert torch.isfinite(value.float()).all(), name
    # ``ae-lightning test`` in the same precision: its metrics in float32, whatever the autocast region refuses
    results = cli.trainer.test(cli.model, datamodule=cli.datamodule, verbose=False)
    assert results and all(math.isfinite(value) for value in results[0].values()), results
