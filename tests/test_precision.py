"""Every variant trains a step in every precision: ``32`` and ``bf16-mixed`` on the CPU, ``16-mixed`` on a GPU."""

from __future__ import annotations

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
    cli = build_cli(
        *tiny_args(config, data_dir, tmp_path, *record),
        "--trainer.fast_dev_run",
        "true",
        "--trainer.precision",
        precision,
        "--trainer.accelerator",
        accelerator,
        "--trainer.devices",
        "1",
    )
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    assert cli.trainer.precision == {"32": "32-true"}.get(precision, precision)
    assert torch.isfinite(cli.trainer.callback_metrics["val/loss"])
    record = torch.load(tmp_path / "record" / "rank0.pt", weights_only=True)
    changed = [name for name, value in record["final"].items() if not torch.equal(value, record["initial"][name])]
    assert changed, f"a {precision} step changed no weight"
    for name, value in record["final"].items():
        assert value.dtype in (torch.float32, torch.int64, torch.bool, torch.uint8), f"{name} is {value.dtype}"
        assert torch.isfinite(value.float()).all(), name
